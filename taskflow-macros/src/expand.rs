//! Code generation for `#[task]`, from the typed model of [`crate::args`] and
//! [`crate::item`].
//!
//! The user's function is emitted exactly as written. Beside it, in the type
//! namespace under the same name, goes the companion module: `NAME`,
//! `enqueue`, `call`, the registry entry and its type-erased entry point. With
//! bad options the companion is still emitted, with defaults, so call sites keep
//! compiling while the user fixes the attribute.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};

use crate::args::{self, Errors, ExecutorKind, TaskArgs};
use crate::item::{self, TaskFn};

pub(crate) fn task(attr: TokenStream, tokens: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(attr, &mut errors);
    let task = match item::parse(tokens, &mut errors) {
        Ok(task) => task,
        Err(item) => {
            let errors = errors.into_tokens();
            return quote! { #item #errors };
        }
    };
    let executor = resolve_executor(&args, &task, &mut errors);
    let companion = companion(&args, &task, executor);
    let item = &task.item;
    let errors = errors.into_tokens();
    quote! {
        #item
        #companion
        #errors
    }
}

/// The executor the task runs on, checked against the function's kind.
fn resolve_executor(args: &TaskArgs, task: &TaskFn, errors: &mut Errors) -> ExecutorKind {
    let implied = if task.is_async {
        ExecutorKind::Async
    } else {
        ExecutorKind::Thread
    };
    let executor = match &args.executor {
        None => implied,
        Some(chosen) => {
            match (chosen.value, task.is_async) {
                (ExecutorKind::Thread, true) => errors.add(
                    chosen.value_span,
                    "executor `thread` runs plain functions, but this one is `async`; remove `async` or use `executor = \"async\"`",
                ),
                (ExecutorKind::Async, false) => errors.add(
                    chosen.value_span,
                    "executor `async` runs `async fn`s, but this one is a plain `fn`; make it `async` or use `executor = \"thread\"`",
                ),
                _ => {}
            }
            chosen.value
        }
    };
    if let (ExecutorKind::Thread, Some(timeout)) = (executor, &args.timeout) {
        errors.add(
            timeout.key,
            "`timeout` cannot apply to a thread task: a running thread cannot be preempted; make the task `async`, or use `executor = \"process\"` for a hard timeout",
        );
    }
    executor
}

fn companion(args: &TaskArgs, task: &TaskFn, executor: ExecutorKind) -> TokenStream {
    let item = &task.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let private = quote!(::taskflow::__private);

    let name = match &args.name {
        Some(name) => {
            let value = &name.value;
            quote!(#value)
        }
        None => quote!(::core::module_path!()),
    };
    let executor_variant = match executor {
        ExecutorKind::Async => quote!(Async),
        ExecutorKind::Thread => quote!(Thread),
        ExecutorKind::Process => quote!(Process),
    };

    let defaults = {
        let mut defaults = quote!(#private::TaskDefaults::DEFAULT);
        if let Some(retries) = &args.retries {
            let n = retries.value;
            defaults.extend(quote!(.retries(#n)));
        }
        if let Some(delay) = &args.delay {
            let nanos = duration_nanos(delay.value);
            defaults.extend(quote!(.delay(::core::time::Duration::from_nanos(#nanos))));
        }
        if let Some(backoff) = &args.backoff {
            let factor = backoff.value;
            defaults.extend(quote!(.backoff(#factor)));
        }
        if let Some(timeout) = &args.timeout {
            let nanos = duration_nanos(timeout.value);
            defaults.extend(quote!(.timeout(::core::time::Duration::from_nanos(#nanos))));
        }
        defaults
    };

    let returns = &task.returns;
    let output = &returns.output;
    let arg_bindings: Vec<_> = task.arguments().map(|(binding, _, _)| binding).collect();
    let arg_names: Vec<_> = task.arguments().map(|(_, name, _)| name).collect();
    let arg_types: Vec<_> = task.arguments().map(|(_, _, ty)| ty).collect();
    let resource_bindings: Vec<_> = task.resources().map(|(binding, _, _)| binding).collect();
    let resource_inners: Vec<_> = task.resources().map(|(_, inner, _)| inner).collect();
    let all_bindings: Vec<_> = task.params.iter().map(item::Param::binding).collect();

    let call_user = quote!(super::#ident(#(#all_bindings),*));
    let finish = if returns.fallible {
        quote!(#private::fallible)
    } else {
        quote!(#private::output)
    };
    let (body_variant, body_fn) = if task.is_async {
        let boxed = quote_spanned! {task.async_span=>
            ::std::boxed::Box::pin(async move { #finish(#call_user.await) })
        };
        (
            quote!(Async),
            quote! {
                fn __body(
                    __bytes: &[u8],
                    __resources: &#private::Resources,
                ) -> ::core::result::Result<#private::AttemptFuture, #private::TaskError> {
                    let (#(#arg_bindings,)*): (#(#arg_types,)*) = #private::decode_args(__bytes)?;
                    #( let #resource_bindings = #private::resource::<#resource_inners>(__resources)?; )*
                    ::core::result::Result::Ok(#boxed)
                }
            },
        )
    } else {
        (
            quote!(Blocking),
            quote! {
                fn __body(
                    __bytes: &[u8],
                    __resources: &#private::Resources,
                ) -> ::core::result::Result<#private::Output, #private::TaskError> {
                    let (#(#arg_bindings,)*): (#(#arg_types,)*) = #private::decode_args(__bytes)?;
                    #( let #resource_bindings = #private::resource::<#resource_inners>(__resources)?; )*
                    #finish(#call_user)
                }
            },
        )
    };

    // Each bound asserted on its own type, so the error lands on the user's
    // token rather than inside generated code.
    let mut checks = TokenStream::new();
    for ty in &arg_types {
        checks.extend(quote_spanned!(span_of(ty)=> #private::assert_argument::<#ty>();));
    }
    for (_, inner, ty) in task.resources() {
        checks.extend(quote_spanned!(span_of(ty)=> #private::assert_resource::<#inner>();));
    }
    let declared = &returns.declared;
    if returns.fallible {
        checks.extend(quote_spanned!(returns.span=> #private::assert_fallible::<#declared>();));
    }
    checks.extend(quote_spanned!(returns.span=> #private::assert_output::<#output>();));

    let doc_mod = format!(
        "Companion of the task [`{ident}`]({ident}()): [`enqueue`](self::enqueue) it, or build a [`call`](self::call) with options."
    );
    let entry = format_ident!("__ENTRY");

    quote! {
        #[doc = #doc_mod]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            /// The name the task is registered under.
            pub const NAME: &str = #name;

            /// Enqueues the task on the installed default manager.
            ///
            /// # Errors
            ///
            /// When no manager is installed, it has shut down, it lacks a
            /// resource the task takes, or an argument cannot be encoded.
            pub fn enqueue(#(#arg_bindings: #arg_types),*) -> ::core::result::Result<::taskflow::TaskHandle<#output>, ::taskflow::Error> {
                call(#(#arg_bindings),*).enqueue()
            }

            /// A call of the task with per-call options; finish it with
            /// `enqueue()` or `enqueue_on(&manager)`.
            pub fn call(#(#arg_bindings: #arg_types),*) -> ::taskflow::TaskCall<#output> {
                let mut __args = #private::ArgsWriter::new();
                #( __args.push(#arg_names, &#arg_bindings); )*
                #private::new_call(&#entry, __args)
            }

            #[doc(hidden)]
            pub static #entry: #private::TaskEntry = #private::TaskEntry::new(
                NAME,
                #private::Executor::#executor_variant,
                #private::Body::#body_variant(__body),
                #private::encode_output::<#output>,
            )
            .with_defaults(#defaults)
            .with_location(#private::Location {
                path: ::core::module_path!(),
                file: ::core::file!(),
                line: ::core::line!(),
            })
            .with_resources(&[#( #private::ResourceKey::of::<#resource_inners>() ),*]);

            #body_fn

            #private::inventory::submit! { #private::Registration(&#entry) }

            #[allow(dead_code)]
            fn __assert_types() {
                #checks
            }
        }
    }
}

fn span_of(ty: &syn::Type) -> Span {
    syn::spanned::Spanned::span(ty)
}

fn duration_nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
