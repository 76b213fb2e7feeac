//! The options of `#[task(...)]`.
//!
//! Every option is `key = literal`. Independent mistakes are collected so the
//! user sees all of them at once; each is spanned on the key or value at fault.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, MetaNameValue, Token};

pub(crate) const OPTIONS: &[&str] = &[
    "name",
    "executor",
    "retries",
    "delay",
    "backoff",
    "timeout",
    "persist",
    "requeue_on_interrupt",
];

/// Where a task runs, as written in `executor = "…"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ExecutorKind {
    Async,
    Thread,
    Process,
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

/// Parses the attribute's tokens. Options that fail are left unset and the
/// failures returned beside, so expansion can go on with defaults.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> TaskArgs {
    let mut args = TaskArgs::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(metas) => metas,
        Err(error) => {
            errors.push(error);
            return args;
        }
    };
    let mut seen = Vec::new();
    for meta in metas {
        let Meta::NameValue(MetaNameValue { path, value, .. }) = meta else {
            let key = meta
                .path()
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
            errors.add(meta.path().span(), hint);
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
            "persist" | "requeue_on_interrupt" => {
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
                let slot = if which == "persist" {
                    &mut args.persist
                } else {
                    &mut args.requeue_on_interrupt
                };
                *slot = setting(key, flag, span);
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
        "persist" | "requeue_on_interrupt" => "true",
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
fn similar_option(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    OPTIONS
        .iter()
        .map(|&option| {
            let stem = option.trim_end_matches("ies");
            let related =
                key.contains(option) || option.contains(key.as_str()) || key.starts_with(stem);
            let distance = if related {
                0
            } else {
                edit_distance(&key, option)
            };
            (distance, option)
        })
        .filter(|&(distance, option)| distance <= 2.min(option.len() / 3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, option)| option)
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
                "delay" | "timeout" => "a duration string",
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
    }

    #[test]
    fn unknown_options_get_the_nearest_known_one() {
        assert_eq!(similar_option("retry"), Some("retries"));
        assert_eq!(similar_option("max_retries"), Some("retries"));
        assert_eq!(similar_option("timout"), Some("timeout"));
        assert_eq!(similar_option("exector"), Some("executor"));
        assert_eq!(similar_option("Delay"), Some("delay"));
        assert_eq!(similar_option("priority"), None);
        assert_eq!(
            parse_err(quote!(priority = 1)),
            [
                "unknown option `priority`; expected one of `name`, `executor`, `retries`, `delay`, `backoff`, `timeout`, `persist`, `requeue_on_interrupt`"
            ]
        );
    }
}
