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

pub(crate) const OPTIONS: &[&str] = &["name", "executor", "retries", "delay", "backoff", "timeout"];

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
}

/// Sets an option once; a second setting of the same key is an error on it.
fn set_once<T>(
    slot: &mut Option<Setting<T>>,
    key: &syn::Ident,
    value: Option<(T, Span)>,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.add(key.span(), format_args!("duplicate option `{key}`"));
    } else if let Some((value, value_span)) = value {
        *slot = Some(Setting {
            value,
            key: key.span(),
            value_span,
        });
    }
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
    for meta in metas {
        let Meta::NameValue(MetaNameValue { path, value, .. }) = meta else {
            let key = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let hint = if OPTIONS.contains(&key.as_str()) {
                format!("option `{key}` needs a value: `{key} = …`")
            } else {
                unknown_option_message(&key)
            };
            errors.add(meta.span(), hint);
            continue;
        };
        let Some(key) = path.get_ident() else {
            errors.add(path.span(), "expected an option name such as `retries`");
            continue;
        };
        let span = value.span();
        match key.to_string().as_str() {
            "name" => {
                let value = string(&value, "name", errors).and_then(|name| {
                    if name.trim().is_empty() {
                        errors.add(span, "`name` cannot be empty");
                        None
                    } else {
                        Some(name)
                    }
                });
                set_once(&mut args.name, key, value.map(|v| (v, span)), errors);
            }
            "executor" => {
                let value = string(&value, "executor", errors).and_then(|text| match text.as_str() {
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
                set_once(&mut args.executor, key, value.map(|v| (v, span)), errors);
            }
            "retries" => {
                let value = match literal(&value) {
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
                set_once(&mut args.retries, key, value.map(|v| (v, span)), errors);
            }
            "delay" | "timeout" => {
                let which = if key == "delay" { "delay" } else { "timeout" };
                let value = string(&value, which, errors)
                    .and_then(|text| duration(&text, which, span, errors));
                let slot = if which == "delay" {
                    &mut args.delay
                } else {
                    &mut args.timeout
                };
                set_once(slot, key, value.map(|v| (v, span)), errors);
            }
            "backoff" => {
                let value = match literal(&value) {
                    Some(Lit::Float(float)) => float.base10_parse::<f64>().ok(),
                    Some(Lit::Int(int)) => int.base10_parse::<f64>().ok(),
                    _ => None,
                };
                let value = match value {
                    Some(factor) if factor.is_finite() && factor >= 1.0 => Some(factor),
                    Some(factor) => {
                        errors.add(
                            span,
                            format_args!("`backoff` must be at least 1.0, got {factor}; the wait between retries may only grow"),
                        );
                        None
                    }
                    None => {
                        errors.add(span, "`backoff` must be a number, as in `backoff = 2.0`");
                        None
                    }
                };
                set_once(&mut args.backoff, key, value.map(|v| (v, span)), errors);
            }
            other => errors.add(key.span(), unknown_option_message(other)),
        }
    }
    args
}

fn unknown_option_message(key: &str) -> String {
    let expected = OPTIONS
        .iter()
        .map(|o| format!("`{o}`"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("unknown option `{key}`; expected one of {expected}")
}

fn literal(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

fn string(expr: &Expr, key: &str, errors: &mut Errors) -> Option<String> {
    match literal(expr) {
        Some(Lit::Str(text)) => Some(LitStr::value(text)),
        _ => {
            errors.add(
                expr.span(),
                format_args!("`{key}` must be a string literal, as in `{key} = \"…\"`"),
            );
            None
        }
    }
}

fn duration(text: &str, key: &str, span: Span, errors: &mut Errors) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if key == "timeout" && d.is_zero() => {
            errors.add(span, "`timeout` must be greater than zero");
            None
        }
        Ok(d) => Some(d),
        Err(error) => {
            errors.add(
                span,
                format_args!("invalid duration `{text}` for `{key}`: {error}; write it as in \"500ms\", \"30s\" or \"2m\""),
            );
            None
        }
    }
}
