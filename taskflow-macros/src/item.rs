//! The function under `#[task]`, parsed into the model that expansion reads.
//!
//! A task's parameters are either arguments (data, sent at enqueue) or
//! resources (`Resource<T>`, injected when it runs). Everything that cannot
//! cross a process boundary or be stored is refused here, each with a span on
//! the offending token and the fix in the message.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::Errors;

/// One parameter of the task function.
pub(crate) enum Param {
    /// Data passed at enqueue.
    Argument {
        binding: Ident,
        name: String,
        ty: Type,
    },
    /// `Resource<T>`, injected at run time.
    Resource {
        binding: Ident,
        inner: Type,
        ty: Type,
    },
}

impl Param {
    pub(crate) fn binding(&self) -> &Ident {
        match self {
            Param::Argument { binding, .. } | Param::Resource { binding, .. } => binding,
        }
    }
}

/// What the function returns.
pub(crate) struct Returns {
    /// The type as declared, `()` when there is none; paths rebased for the
    /// companion module.
    pub(crate) declared: Type,
    /// The span to blame for output errors.
    pub(crate) span: Span,
    /// Whether it is a `Result` whose `Err` fails the attempt.
    pub(crate) fallible: bool,
    /// The task's output: the `Ok` type of a `Result`, else the declared type.
    pub(crate) output: Type,
}

/// The task function, validated.
pub(crate) struct TaskFn {
    pub(crate) item: ItemFn,
    pub(crate) is_async: bool,
    pub(crate) async_span: Span,
    pub(crate) params: Vec<Param>,
    pub(crate) returns: Returns,
}

impl TaskFn {
    pub(crate) fn arguments(&self) -> impl Iterator<Item = (&Ident, &str, &Type)> {
        self.params.iter().filter_map(|p| match p {
            Param::Argument { binding, name, ty } => Some((binding, name.as_str(), ty)),
            Param::Resource { .. } => None,
        })
    }

    pub(crate) fn resources(&self) -> impl Iterator<Item = (&Ident, &Type, &Type)> {
        self.params.iter().filter_map(|p| match p {
            Param::Resource { binding, inner, ty } => Some((binding, inner, ty)),
            Param::Argument { .. } => None,
        })
    }
}

/// Parses the function. `Err` carries the function as written (so it can still
/// be emitted) when its signature cannot be a task.
pub(crate) fn parse(
    tokens: TokenStream,
    errors: &mut Errors,
) -> Result<TaskFn, Option<Box<ItemFn>>> {
    let item: ItemFn = match syn::parse2(tokens) {
        Ok(item) => item,
        Err(_) => {
            errors.add(
                Span::call_site(),
                "#[task] applies to a function: `fn` or `async fn`",
            );
            return Err(None);
        }
    };
    // Signature problems are kept apart: they mean no companion is emitted.
    let errors_out = errors;
    let errors = &mut Errors::default();
    let sig = &item.sig;

    if !sig.generics.params.is_empty() {
        errors.add(
            sig.generics.span(),
            "a task cannot be generic: the runtime calls it by name with concrete types; write a non-generic wrapper for each type",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.add(where_clause.span(), "a task cannot have a `where` clause");
    }
    if let Some(token) = &sig.constness {
        errors.add(token.span, "a task cannot be a `const fn`");
    }
    if let Some(token) = &sig.unsafety {
        errors.add(token.span, "a task cannot be an `unsafe fn`: the runtime calls it with no one to uphold its contract");
    }
    if let Some(abi) = &sig.abi {
        errors.add(abi.span(), "a task cannot declare an ABI");
    }
    if let Some(variadic) = &sig.variadic {
        errors.add(variadic.span(), "a task cannot be variadic");
    }

    let mut params = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(receiver) => errors.add(
                receiver.span(),
                "a task cannot be a method: `self` cannot be sent to a worker or stored; make it a free function and pass the data it needs as arguments",
            ),
            FnArg::Typed(typed) => {
                check_type(&typed.ty, errors);
                let (binding, name) = match &*typed.pat {
                    Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                        (Ident::new(&format!("__arg_{}", pat.ident), pat.ident.span()), pat.ident.to_string())
                    }
                    other => (Ident::new(&format!("__arg{index}"), other.span()), format!("argument {}", index + 1)),
                };
                let ty = rebase(&typed.ty);
                params.push(match resource_inner(&ty) {
                    Some(inner) => Param::Resource {
                        binding,
                        inner: inner.clone(),
                        ty,
                    },
                    None => Param::Argument { binding, name, ty },
                });
            }
        }
    }

    let returns = match &sig.output {
        ReturnType::Default => Returns {
            declared: syn::parse_quote!(()),
            span: sig.ident.span(),
            fallible: false,
            output: syn::parse_quote!(()),
        },
        ReturnType::Type(_, ty) => {
            check_type(ty, errors);
            let declared = rebase(ty);
            let ok = result_ok_type(&declared);
            Returns {
                span: ty.span(),
                fallible: ok.is_some(),
                output: ok.unwrap_or_else(|| declared.clone()),
                declared,
            }
        }
    };

    if errors.is_empty() {
        let is_async = sig.asyncness.is_some();
        let async_span = sig.asyncness.map_or(sig.fn_token.span, |t| t.span);
        Ok(TaskFn {
            is_async,
            async_span,
            params,
            returns,
            item,
        })
    } else {
        errors_out.extend(std::mem::take(errors));
        Err(Some(Box::new(item)))
    }
}

/// Refuses types that cannot be sent or stored: borrowed and `impl Trait`.
fn check_type(ty: &Type, errors: &mut Errors) {
    struct Check<'e> {
        errors: &'e mut Errors,
    }
    impl syn::visit::Visit<'_> for Check<'_> {
        fn visit_type_reference(&mut self, reference: &syn::TypeReference) {
            let owned = match &*reference.elem {
                Type::Path(p) if p.path.is_ident("str") => "`String`".to_owned(),
                Type::Slice(slice) => format!("`Vec<{}>`", slice.elem.to_token_stream()),
                other => format!("`{}`", other.to_token_stream()),
            };
            self.errors.add(
                reference.and_token.span,
                format_args!("a task cannot take a reference: its arguments are sent as data and must be owned; use {owned}"),
            );
        }
        fn visit_type_impl_trait(&mut self, impl_trait: &syn::TypeImplTrait) {
            self.errors.add(
                impl_trait.impl_token.span,
                "a task cannot take or return `impl Trait`: the runtime needs a concrete type to decode; name the type",
            );
        }
        fn visit_lifetime(&mut self, lifetime: &syn::Lifetime) {
            if lifetime.ident != "static" {
                self.errors.add(
                    lifetime.span(),
                    "a task cannot borrow: its arguments and output must be owned (`'static`)",
                );
            }
        }
    }
    syn::visit::Visit::visit_type(&mut Check { errors }, ty);
}

/// `T` when `ty` is written `Resource<T>` (by any path ending in `Resource`).
fn resource_inner(ty: &Type) -> Option<&Type> {
    let segment = last_segment(ty)?;
    if segment.ident != "Resource" {
        return None;
    }
    match &segment.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first() {
            Some(GenericArgument::Type(inner)) => Some(inner),
            _ => None,
        },
        _ => None,
    }
}

/// The `Ok` type of a return type written as a `Result`: the first type
/// argument of any path ending in `Result` (`Result<T, E>`, `io::Result<T>`,
/// `anyhow::Result<T>`). A bare `Result` alias with no arguments yields the
/// projection through `Fallible`, which the runtime's trait resolves.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let segment = last_segment(ty)?;
    if segment.ident != "Result" {
        return None;
    }
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(ok) => Some(ok.clone()),
            _ => None,
        }),
        PathArguments::None => {
            Some(syn::parse_quote!(<#ty as ::taskflow::__private::Fallible>::Ok))
        }
        PathArguments::Parenthesized(_) => None,
    }
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// The type as seen from the companion module, one level down: `self::X`
/// becomes `super::X` and `super::X` becomes `super::super::X`.
fn rebase(ty: &Type) -> Type {
    struct Rebase;
    impl VisitMut for Rebase {
        fn visit_path_mut(&mut self, path: &mut syn::Path) {
            if path.leading_colon.is_none()
                && let Some(first) = path.segments.first_mut()
            {
                if first.ident == "self" {
                    first.ident = Ident::new("super", first.ident.span());
                } else if first.ident == "super" {
                    path.segments.insert(
                        0,
                        syn::PathSegment::from(Ident::new("super", Span::call_site())),
                    );
                }
            }
            syn::visit_mut::visit_path_mut(self, path);
        }
    }
    let mut ty = ty.clone();
    Rebase.visit_type_mut(&mut ty);
    ty
}
