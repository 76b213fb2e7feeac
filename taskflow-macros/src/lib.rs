//! The attributes of taskflow: `#[task]` and `#[taskflow::main]`.
//!
//! Use them through the `taskflow` crate (`taskflow::task`, `taskflow::main`);
//! the code they generate names only `::taskflow::__private` paths.
//!
//! This file only dispatches: `args` parses the attribute's options, `item`
//! parses the function into a typed model, `expand` generates code from the
//! model. Every diagnostic is a `syn::Error` spanned on the token at fault.

use proc_macro::TokenStream;

mod args;
mod expand;
mod item;
mod main_fn;

/// Declares a task. See the `taskflow` crate's documentation.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::task(attr.into(), item.into()).into()
}

/// Enters worker mode, then runs the `async fn main` on a tokio runtime. See
/// the `taskflow` crate's documentation.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    main_fn::main(attr.into(), item.into()).into()
}
