//! Code generation for `#[task]`, from the typed model of [`crate::args`] and
//! [`crate::item`].
//!
//! The user's function is emitted exactly as written. Beside it, in the type
//! namespace under the same name, goes the companion: a unit-like type whose
//! associated items are `NAME`, `enqueue` and `call`, so `name::enqueue(…)`
//! reads as a path. Its impl, the registry entry and the type-erased entry
//! point sit in an anonymous `const` beside the function, which works the
//! same at module level and inside a function body (a test, a doctest). With
//! bad options the companion is still emitted, with defaults, so call sites
//! keep compiling while the user fixes the attribute.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};

use crate::args::{self, CatchUpKind, Errors, ExecutorKind, TaskArgs};
use crate::item::{self, TaskFn};

pub(crate) fn task(attr: TokenStream, tokens: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(attr, &mut errors);
    // The user's item goes out as written in every case, as tokio's macros
    // do: even when it is not a function or cannot be a task, the rest of
    // the crate (and an IDE) still sees it, so no error cascades from it.
    let Some(task) = item::parse(tokens.clone(), &mut errors) else {
        let errors = errors.into_tokens();
        return quote! { #tokens #errors };
    };
    let executor = resolve_executor(&args, &task, &mut errors);
    let schedule = schedule(&args, &task, &mut errors);
    let companion = companion(&args, &task, executor, schedule);
    let errors = errors.into_tokens();
    quote! {
        #tokens
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

/// The schedule entry of a task declared with `every` or `cron`, checked
/// against the other options and the function: a scheduled task takes no
/// arguments, since each tick enqueues it with none. Empty when there is
/// no schedule, or it cannot be one.
fn schedule(args: &TaskArgs, task: &TaskFn, errors: &mut Errors) -> TokenStream {
    let private = quote!(::taskflow::__private);
    let declared = match (&args.every, &args.cron) {
        (Some(_), Some(cron)) => {
            errors.add(
                cron.key,
                "`cron` and `every` cannot both be set: a task has one schedule; keep one, or add another schedule at run time with `TaskManager::add_schedule`",
            );
            None
        }
        (Some(every), None) => Some((every.key, None)),
        (None, Some(cron)) => Some((cron.key, Some(cron))),
        (None, None) => None,
    };
    if let Some(zone) = args.timezone.as_ref().filter(|_| !args.given("cron")) {
        errors.add(
            zone.key,
            "`timezone` applies to a `cron` schedule (an `every` period is the same in every zone); add `cron = \"…\"` or remove `timezone`",
        );
    }
    let Some((key, cron)) = declared else {
        if args.given("every") || args.given("cron") {
            // Refused already, on its value.
            return TokenStream::new();
        }
        for (option, set) in [
            ("run_on_start", args.run_on_start.as_ref().map(|s| s.key)),
            ("catch_up", args.catch_up.as_ref().map(|s| s.key)),
        ] {
            if let Some(span) = set {
                errors.add(
                    span,
                    format_args!("`{option}` applies to a scheduled task; add `every = \"5m\"` or `cron = \"0 9 * * *\"`, or remove `{option}`"),
                );
            }
        }
        return TokenStream::new();
    };
    let option = if cron.is_some() { "cron" } else { "every" };
    let mut takes_arguments = false;
    for (_, name, ty) in task.arguments() {
        takes_arguments = true;
        errors.add_spanned(
            ty,
            format_args!("a task with `{option}` takes no arguments, but it has `{name}`: each tick enqueues it with none; remove it (a `Resource<T>` parameter is fine), or schedule calls with arguments at run time with `TaskManager::add_schedule`"),
        );
    }
    if takes_arguments {
        let _ = key;
        return TokenStream::new();
    }
    let mut entry = match (cron, &args.every) {
        (Some(cron), _) => {
            let expression = &cron.value;
            let zone = args
                .timezone
                .as_ref()
                .map_or_else(|| "UTC".to_owned(), |zone| zone.value.clone());
            quote!(#private::ScheduleEntry::cron(&__ENTRY, #expression, #zone))
        }
        (None, Some(every)) => {
            let millis = u64::try_from(every.value.as_millis()).unwrap_or(u64::MAX);
            quote!(#private::ScheduleEntry::every(&__ENTRY, #millis))
        }
        (None, None) => return TokenStream::new(),
    };
    if let Some(run) = &args.run_on_start {
        let run = run.value;
        entry.extend(quote!(.run_on_start(#run)));
    }
    if let Some(catch_up) = &args.catch_up {
        let variant = match catch_up.value {
            CatchUpKind::One => quote!(One),
            CatchUpKind::Skip => quote!(Skip),
        };
        entry.extend(quote!(.catch_up(#private::CatchUp::#variant)));
    }
    quote! { #private::inventory::submit! { #entry } }
}

fn companion(
    args: &TaskArgs,
    task: &TaskFn,
    executor: ExecutorKind,
    schedule: TokenStream,
) -> TokenStream {
    let item = &task.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let private = quote!(::taskflow::__private);

    let name = match &args.name {
        Some(name) => {
            let value = &name.value;
            quote!(#value)
        }
        None => {
            let fn_name = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
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
        if let Some(persist) = &args.persist {
            let flag = persist.value;
            defaults.extend(quote!(.persist(#flag)));
        }
        if let Some(requeue) = &args.requeue_on_interrupt {
            let flag = requeue.value;
            defaults.extend(quote!(.requeue_on_interrupt(#flag)));
        }
        if let Some(queue) = &args.queue {
            let name = &queue.value;
            defaults.extend(quote!(.queue(#name)));
        }
        if let Some(priority) = &args.priority {
            let n = priority.value;
            defaults.extend(quote!(.priority(#n)));
        }
        defaults
    };

    let returns = &task.returns;
    let output = &returns.output;
    let declared = &returns.declared;
    let arg_bindings: Vec<_> = task.arguments().map(|(binding, _, _)| binding).collect();
    let arg_names: Vec<_> = task.arguments().map(|(_, name, _)| name).collect();
    let arg_types: Vec<_> = task.arguments().map(|(_, _, ty)| ty).collect();
    let resource_inners: Vec<_> = task.resources().map(|(_, inner, _)| inner).collect();
    let all_bindings: Vec<_> = task.params.iter().map(item::Param::binding).collect();

    // Every bound on the user's types is required once, in `__args`,
    // `__returns`, `__finish` and `__body`'s resource lookups, with the user's
    // type tokens as generic arguments: an unmet bound is one error on the
    // user's type, and the rest of the companion (`__signature` included),
    // which goes through what those return, adds none.
    let args_fn = format_ident!("args{}", arg_types.len());
    let finish = if returns.fallible {
        // Spelled out rather than `#private` so every token of the check
        // carries the return type's span, and so does its error.
        let check =
            quote_spanned!(returns.span=> ::taskflow::__private::fallible::<#declared, #output>);
        quote!(__returns().finish(#check(__value)?))
    } else {
        quote!(__returns().finish(__value))
    };
    let call_user = quote!(#ident(#(#all_bindings),*));
    let (body_variant, body_output, run) = if task.is_async {
        let boxed = quote_spanned! {task.async_span=>
            ::std::boxed::Box::pin(async move { __finish(#call_user.await) })
        };
        (
            quote!(Async),
            quote!(#private::AttemptFuture),
            quote!(::core::result::Result::Ok(#boxed)),
        )
    } else {
        (
            quote!(Blocking),
            quote!(#private::Output),
            quote!(__finish(#call_user)),
        )
    };
    let resource_lookups = task.resources().map(|(binding, inner, ty)| {
        let lookup = quote_spanned!(span_of(ty)=> #private::resource::<#inner>);
        quote!(let #binding = #lookup(__resources)?;)
    });

    let doc = format!(
        "Companion of the task [`{ident}`](fn@{ident}): [`enqueue`]({ident}::enqueue) it, or build a [`call`]({ident}::call) with options."
    );
    let fn_name = ident.to_string();

    // A type, not a module, under the function's name: its impl sits in an
    // anonymous const beside the function, so a task declared inside a
    // function body (a test, a doctest, `main`) sees the same items the
    // function does, and the helpers stay out of the user's namespace.
    quote! {
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #ident {
            _private: (),
        }

        const _: () = {
            static __ENTRY: #private::TaskEntry = #private::TaskEntry::new(
                #ident::NAME,
                #private::Executor::#executor_variant,
                #private::Body::#body_variant(__body),
                __encode_output,
                __signature,
            )
            .with_defaults(#defaults)
            .with_location(#private::Location {
                path: ::core::concat!(::core::module_path!(), "::", #fn_name),
                file: ::core::file!(),
                line: ::core::line!(),
            })
            .with_resources(&[#( #private::ResourceKey::of::<#resource_inners>() ),*])
            .with_arguments_json(__arguments_json);

            impl #ident {
                /// The name the task is registered under.
                pub const NAME: &'static str = #name;

                /// Enqueues the task on the installed default manager.
                ///
                /// # Errors
                ///
                /// When no manager is installed, it has shut down, it lacks a
                /// resource the task takes, or an argument cannot be encoded.
                pub fn enqueue(#(#arg_bindings: #arg_types),*) -> ::core::result::Result<::taskflow::TaskHandle<#output>, ::taskflow::Error> {
                    Self::call(#(#arg_bindings),*).enqueue()
                }

                /// A call of the task with per-call options; finish it with
                /// `enqueue()` or `enqueue_on(&manager)`.
                pub fn call(#(#arg_bindings: #arg_types),*) -> ::taskflow::TaskCall<#output> {
                    #private::new_call(&__ENTRY, __args().write(&(#(#arg_bindings,)*)))
                }
            }

            fn __args() -> #private::Args<(#(#arg_types,)*)> {
                #private::#args_fn::<#(#arg_types),*>(&[#(#arg_names),*])
            }

            fn __returns() -> #private::Returns<#output> {
                #private::returns::<#output>()
            }

            fn __finish(__value: #declared) -> ::core::result::Result<#private::Output, #private::TaskError> {
                #finish
            }

            fn __encode_output(__output: &(dyn ::core::any::Any + ::core::marker::Send)) -> ::core::result::Result<::std::vec::Vec<u8>, #private::CodecError> {
                __returns().encode(__output)
            }

            // The admin's view of a stored call: decoded with the same
            // types `__args` proves the bounds of, keyed by the same names.
            fn __arguments_json(__bytes: &[u8]) -> ::core::result::Result<::std::string::String, #private::CodecError> {
                __args().json(__bytes)
            }

            // What the worker handshake compares: the same types `__args`
            // and `__returns` prove the bounds of, named by them.
            fn __signature() -> #private::Signature {
                #private::Signature::new(__args().type_name(), __returns().type_name())
            }

            fn __body(
                __bytes: &[u8],
                __resources: &#private::Resources,
            ) -> ::core::result::Result<#body_output, #private::TaskError> {
                let (#(#arg_bindings,)*) = __args().read(__bytes)?;
                #( #resource_lookups )*
                #run
            }

            #private::inventory::submit! { #private::Registration(&__ENTRY) }
            #schedule
        };
    }
}

fn span_of(ty: &syn::Type) -> Span {
    syn::spanned::Spanned::span(ty)
}

fn duration_nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn bad_options_still_emit_the_function_and_its_companion() {
        let out = super::task(
            quote!(retry = 3),
            quote!(
                async fn ping() {}
            ),
        )
        .to_string();
        assert!(out.contains("async fn ping ()"), "{out}");
        assert!(out.contains("struct ping"), "{out}");
        assert!(out.contains("impl ping"), "{out}");
        assert!(out.contains("compile_error"), "{out}");
    }

    #[test]
    fn queue_and_priority_become_defaults() {
        let out = super::task(
            quote!(queue = "emails", priority = -5),
            quote!(
                async fn ping() {}
            ),
        )
        .to_string();
        assert!(out.contains(". queue (\"emails\")"), "{out}");
        // Outside a compiler a negative literal prints as two tokens.
        assert!(
            out.replace("- ", "-").contains(". priority (-5i16)"),
            "{out}"
        );
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn an_item_that_is_not_a_function_goes_out_as_written_beside_one_error() {
        let item = quote!(
            #[derive(Debug)]
            pub struct Point {
                x: u32,
            }
        );
        let out = super::task(quote!(), item.clone()).to_string();
        assert!(out.starts_with(&item.to_string()), "{out}");
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(
            out.contains("#[task] goes on a `fn` or `async fn`, not a struct"),
            "{out}"
        );
    }

    #[test]
    fn a_body_is_not_parsed_so_its_syntax_errors_are_left_to_the_compiler() {
        let out = super::task(
            quote!(),
            quote!(
                fn broken(x: u32) -> u32 {
                    let y = ;
                    x
                }
            ),
        )
        .to_string();
        assert!(out.contains("let y = ;"), "{out}");
        assert!(out.contains("impl broken"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn arguments_are_bound_under_generated_names() {
        let out = super::task(
            quote!(),
            quote!(
                fn f(_unused: u32, _: String, mut n: u8) {}
            ),
        )
        .to_string();
        for generated in ["__arg0 : u32", "__arg1 : String", "__arg2 : u8"] {
            assert!(out.contains(generated), "{generated} in {out}");
        }
        // The user's names appear in the function as written and as the
        // names decoding errors cite, never as the companion's bindings.
        assert_eq!(out.matches("_unused").count(), 2, "{out}");
        assert!(
            out.contains("\"_unused\" , \"argument 2\" , \"n\""),
            "{out}"
        );
    }

    #[test]
    fn a_bad_signature_still_emits_the_function() {
        let out = super::task(
            quote!(),
            quote!(
                fn first<T>(v: Vec<T>) {}
            ),
        )
        .to_string();
        assert!(out.contains("fn first < T >"), "{out}");
        assert!(!out.contains("mod first"), "{out}");
        assert!(out.contains("compile_error"), "{out}");
    }
}
