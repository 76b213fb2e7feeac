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

/// Declares a task: the function stays as written, and a companion of the
/// same name offers `NAME`, `enqueue(args…)` and `call(args…)`. The
/// `taskflow` crate's documentation is a runnable tour.
///
/// # Options
///
/// Each is `key = literal`, at most once; `#[task]` alone takes every
/// default.
///
/// | option | value | default |
/// | --- | --- | --- |
/// | `name` | the name it is registered under, `"billing::send_invoice"` | `module_path!()::fn_name` |
/// | `executor` | `"async"`, `"thread"` or `"process"` | `"async"` for an `async fn`, `"thread"` for a plain `fn` |
/// | `retries` | attempts after the first, `3` | `0` |
/// | `delay` | the wait before the first retry, `"500ms"`, `"1m 30s"` | none |
/// | `backoff` | the factor on the wait before each further retry, at least `1.0` | `1.0` |
/// | `timeout` | the limit on one attempt, `"30s"`; not on a thread task | none |
/// | `persist` | `true`: with a task store, its PENDING tasks are requeued at start | `false` |
/// | `requeue_on_interrupt` | `true`: with a task store, it runs again when an instance died while running it (idempotent work only) | `false` |
/// | `queue` | the queue its calls wait in, `"emails"`: not empty, at most 128 bytes, no control characters; a call's `.queue(..)` overrides it | `"default"` |
/// | `priority` | its calls' priority in their queue, an `i16` such as `5` or `-5`, higher first; a call's `.priority(..)` overrides it | `0` |
/// | `every` | a recurring task: a tick every period, `"5m"`, aligned on the Unix epoch, at least `"10ms"` | none |
/// | `cron` | a recurring task: a cron expression, `"0 9 * * MON-FRI"` (five fields, or six with seconds first) | none |
/// | `timezone` | the IANA time zone `cron` is read in, `"Europe/Paris"` | `"UTC"` |
/// | `run_on_start` | `true`: when an instance starts, fire the current period's tick if it has not fired | `false` |
/// | `catch_up` | ticks missed while no instance ran: `"one"` fires the latest once, `"skip"` none | `"one"` |
///
/// A task with `every` or `cron` takes no arguments (`Resource<T>`
/// parameters are fine): each tick enqueues it with none. Schedule calls
/// with arguments at run time with `TaskManager::add_schedule`.
///
/// Mistakes are compile errors on the token at fault, all reported at once;
/// the function and its companion are still emitted with defaults, so call
/// sites keep compiling while the attribute is fixed.
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
