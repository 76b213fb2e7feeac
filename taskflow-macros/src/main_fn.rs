//! `#[taskflow::main]`: enter worker mode, then run the async body on a tokio
//! runtime, as `#[tokio::main]` would.
//!
//! Worker mode must be entered before any user code runs: a worker process
//! is this same binary, and it must never reach the application's body.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta, Token};

use crate::args::Errors;
use crate::item::UserFn;

pub(crate) fn main(attr: TokenStream, tokens: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    // As for `#[task]`: an item that is not a function goes out as written,
    // beside the one error, and a body is never parsed, so its own syntax
    // errors are the compiler's alone.
    let item = match UserFn::parse_under(tokens.clone(), "#[taskflow::main]", "`async fn main`") {
        Ok(item) => item,
        Err(error) => {
            errors.push(error);
            let errors = errors.into_tokens();
            return quote! { #tokens #errors };
        }
    };
    let mut resources = None;
    let mut current_thread = false;
    let mut worker_threads = None;
    match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr) {
        Err(error) => errors.push(error),
        Ok(metas) => {
            for meta in metas {
                let Meta::NameValue(pair) = &meta else {
                    errors.add(
                        meta.span(),
                        "expected `resources = path`, `flavor = \"…\"` or `worker_threads = n`",
                    );
                    continue;
                };
                let key = pair
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match (key.as_str(), &pair.value) {
                    ("resources", Expr::Path(path)) => resources = Some(path.clone()),
                    ("resources", other) => errors.add(
                        other.span(),
                        "`resources` names a function `fn(&mut taskflow::Resources)` that builds each worker's resources",
                    ),
                    ("flavor", Expr::Lit(ExprLit { lit: Lit::Str(flavor), .. })) => match flavor.value().as_str() {
                        "multi_thread" => current_thread = false,
                        "current_thread" => current_thread = true,
                        other => errors.add(
                            flavor.span(),
                            format_args!("unknown flavor `{other}`; expected `multi_thread` or `current_thread`"),
                        ),
                    },
                    ("worker_threads", Expr::Lit(ExprLit { lit: Lit::Int(literal), .. })) => match literal.base10_parse::<usize>() {
                        Ok(n) if n > 0 => worker_threads = Some((n, literal.span())),
                        _ => errors.add(literal.span(), "`worker_threads` must be at least 1"),
                    },
                    _ => errors.add(
                        pair.path.span(),
                        format_args!("unknown option `{key}`; expected `resources`, `flavor` or `worker_threads`"),
                    ),
                }
            }
        }
    }
    if item.sig.asyncness.is_none() {
        errors.add(
            item.sig.fn_token.span,
            "#[taskflow::main] goes on an `async fn`",
        );
    }
    if !item.sig.inputs.is_empty() {
        errors.add(item.sig.inputs.span(), "`main` takes no arguments");
    }
    if let (true, Some((_, span))) = (current_thread, worker_threads) {
        errors.add(
            span,
            "`worker_threads` needs the `multi_thread` flavor; remove it or `flavor = \"current_thread\"`",
        );
    }

    let private = quote!(::taskflow::__private);
    let enter = match &resources {
        Some(path) => quote!(#private::enter_worker_mode_with(#path);),
        None => quote!(#private::enter_worker_mode();),
    };
    let mut builder = if current_thread {
        quote!(#private::tokio::runtime::Builder::new_current_thread())
    } else {
        quote!(#private::tokio::runtime::Builder::new_multi_thread())
    };
    if let Some((n, _)) = worker_threads {
        builder.extend(quote!(.worker_threads(#n)));
    }
    let UserFn {
        attrs,
        vis,
        mut sig,
        body: block,
    } = item;
    sig.asyncness = None;
    let errors = errors.into_tokens();
    quote! {
        #(#attrs)*
        #vis #sig {
            #enter
            let body = async move #block;
            #[allow(clippy::expect_used)]
            #builder
                .enable_all()
                .build()
                .expect("cannot start the tokio runtime")
                .block_on(body)
        }
        #errors
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn an_item_that_is_not_a_function_goes_out_as_written_beside_one_error() {
        let item = quote!(
            struct App;
        );
        let out = super::main(quote!(), item.clone()).to_string();
        assert!(out.starts_with(&item.to_string()), "{out}");
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(
            out.contains("#[taskflow::main] goes on `async fn main`, not a struct"),
            "{out}"
        );
    }

    #[test]
    fn a_body_is_not_parsed_so_its_syntax_errors_are_left_to_the_compiler() {
        let out = super::main(
            quote!(),
            quote!(
                async fn main() {
                    let y = ;
                }
            ),
        )
        .to_string();
        assert!(out.contains("async move { let y = ; }"), "{out}");
        assert!(out.contains("enter_worker_mode"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }
}
