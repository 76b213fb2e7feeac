//! The function under `#[task]`, parsed into the model that expansion reads.
//!
//! A task's parameters are either arguments (data, sent at enqueue) or
//! resources (`Resource<T>`, injected when it runs). Everything that cannot
//! cross a process boundary or be stored is refused here, each with a span on
//! the offending token and the fix in the message.
//!
//! Only the signature is parsed: the body stays tokens, so a body that does
//! not parse (a syntax error the compiler reports itself, or syntax newer
//! than `syn`) still yields a task and no second error. An item that is not
//! a function at all is one error on its keyword; the caller re-emits the
//! item as written beside it, so the rest of the crate still sees it.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Item, Pat, PathArguments, ReturnType, Signature,
    Type, Visibility,
};

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
    /// The type as declared, `()` when there is none.
    pub(crate) declared: Type,
    /// The span to blame for output errors.
    pub(crate) span: Span,
    /// Whether it is a `Result` whose `Err` fails the attempt.
    pub(crate) fallible: bool,
    /// The task's output: the `Ok` type of a `Result`, else the declared type.
    pub(crate) output: Type,
}

/// A function as written, its body left unparsed.
pub(crate) struct UserFn {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) sig: Signature,
    /// The body, braces included.
    pub(crate) body: Group,
}

impl Parse for UserFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        if input.cursor().group(Delimiter::Brace).is_none() {
            return Err(input.error("expected the function's body, `{ … }`"));
        }
        let body = input.parse()?;
        Ok(UserFn {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

impl UserFn {
    /// Parses the item under `attribute`, which `goes_on` a kind of
    /// function. `Err` is the one error to report: what the item is instead,
    /// on its keyword, or where it stops parsing.
    pub(crate) fn parse_under(
        tokens: TokenStream,
        attribute: &str,
        goes_on: &str,
    ) -> syn::Result<UserFn> {
        let unreadable = match syn::parse2::<UserFn>(tokens.clone()) {
            Ok(function) => return Ok(function),
            Err(error) => error,
        };
        if let Some((what, blame)) = syn::parse2::<Item>(tokens)
            .ok()
            .as_ref()
            .and_then(item_kind)
        {
            return Err(syn::Error::new_spanned(
                blame,
                format_args!("{attribute} goes on {goes_on}, not {what}"),
            ));
        }
        // A function whose signature `syn` cannot read: one error where it
        // stops, saying whose it is.
        Err(syn::Error::new(
            unreadable.span(),
            format_args!("{attribute} cannot read this function: {unreadable}"),
        ))
    }
}

/// What an item other than a function is, and the tokens that say so.
fn item_kind(item: &Item) -> Option<(&'static str, TokenStream)> {
    fn blame(keyword: impl ToTokens, ident: impl ToTokens) -> TokenStream {
        let mut tokens = keyword.into_token_stream();
        ident.to_tokens(&mut tokens);
        tokens
    }
    Some(match item {
        Item::Const(c) => ("a `const`", blame(c.const_token, &c.ident)),
        Item::Enum(e) => ("an enum", blame(e.enum_token, &e.ident)),
        Item::ExternCrate(e) => ("an `extern crate`", blame(e.extern_token, e.crate_token)),
        Item::ForeignMod(f) => ("an `extern` block", blame(&f.abi, TokenStream::new())),
        Item::Impl(i) => ("an `impl` block", blame(i.impl_token, &i.self_ty)),
        Item::Macro(m) => ("a macro invocation", blame(&m.mac.path, m.mac.bang_token)),
        Item::Mod(m) => ("a module", blame(m.mod_token, &m.ident)),
        Item::Static(s) => ("a `static`", blame(s.static_token, &s.ident)),
        Item::Struct(s) => ("a struct", blame(s.struct_token, &s.ident)),
        Item::Trait(t) => ("a trait", blame(t.trait_token, &t.ident)),
        Item::TraitAlias(t) => ("a trait alias", blame(t.trait_token, &t.ident)),
        Item::Type(t) => ("a type alias", blame(t.type_token, &t.ident)),
        Item::Union(u) => ("a union", blame(u.union_token, &u.ident)),
        Item::Use(u) => (
            "a `use` declaration",
            blame(u.use_token, TokenStream::new()),
        ),
        _ => return None,
    })
}

/// The task function, validated.
pub(crate) struct TaskFn {
    pub(crate) item: UserFn,
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

/// Parses the function; `None`, with the reasons in `errors`, when it is not
/// one or its signature cannot be a task. The caller emits the item as
/// written either way.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Option<TaskFn> {
    let item = match UserFn::parse_under(tokens, "#[task]", "a `fn` or `async fn`") {
        Ok(item) => item,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    // Signature problems are kept apart: they mean no companion is emitted.
    let errors_out = errors;
    let errors = &mut Errors::default();
    let sig = &item.sig;

    if !sig.generics.params.is_empty() {
        errors.add_spanned(
            &sig.generics,
            "a task cannot be generic: it is registered and run by name, with concrete types; declare one task per type, each calling a generic function",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        errors.add_spanned(
            where_clause,
            "a task cannot have a `where` clause: its types are concrete; remove the clause",
        );
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
    let mut arguments = 0;
    for (index, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(receiver) => errors.add_spanned(
                receiver,
                "a task cannot be a method: `self` cannot be stored or sent to a worker; make it a free function and pass the data it needs as arguments",
            ),
            FnArg::Typed(typed) => {
                check_type(&typed.ty, Position::Argument, errors);
                // The generated code binds each argument under a name of its
                // own, with mixed-site hygiene: it neither sees nor shadows
                // the user's names, and lints (`non_snake_case`, clippy's
                // `used_underscore_binding` for `_unused`) treat it as the
                // macro's code, not the user's.
                let binding = Ident::new(&format!("__arg{index}"), Span::mixed_site());
                let name = match &*typed.pat {
                    Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                        pat.ident.unraw().to_string()
                    }
                    _ => format!("argument {}", index + 1),
                };
                let ty = (*typed.ty).clone();
                params.push(match resource_inner(&ty) {
                    Some(inner) => Param::Resource {
                        binding,
                        inner: inner.clone(),
                        ty,
                    },
                    None => {
                        arguments += 1;
                        if arguments == MAX_ARGUMENTS + 1 {
                            errors.add_spanned(
                                typed,
                                format_args!("a task takes at most {MAX_ARGUMENTS} arguments; gather them in a struct that derives `Serialize` and `Deserialize`"),
                            );
                        }
                        Param::Argument { binding, name, ty }
                    }
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
            check_type(ty, Position::Output, errors);
            let declared = (**ty).clone();
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
        Some(TaskFn {
            is_async,
            async_span,
            params,
            returns,
            item,
        })
    } else {
        errors_out.extend(std::mem::take(errors));
        None
    }
}

/// The most arguments a task takes: serde implements its traits for tuples of
/// up to 16, and the arguments travel as one tuple.
const MAX_ARGUMENTS: usize = 16;

/// Where a type appears, for the messages.
#[derive(Clone, Copy)]
enum Position {
    Argument,
    Output,
}

/// Refuses types that cannot be sent or stored: borrowed and `impl Trait`.
fn check_type(ty: &Type, position: Position, errors: &mut Errors) {
    struct Check<'e> {
        position: Position,
        errors: &'e mut Errors,
    }
    impl syn::visit::Visit<'_> for Check<'_> {
        fn visit_type_reference(&mut self, reference: &syn::TypeReference) {
            let owned = match &*reference.elem {
                Type::Path(p) if p.path.is_ident("str") => "`String`".to_owned(),
                Type::Path(p) if p.path.is_ident("Path") => "`PathBuf`".to_owned(),
                Type::Slice(slice) => format!("`Vec<{}>`", slice.elem.to_token_stream()),
                other => format!("`{}`", other.to_token_stream()),
            };
            let message = match self.position {
                Position::Argument => format!(
                    "a task cannot take a reference: its arguments are stored and sent as data, so they must be owned; take {owned}"
                ),
                Position::Output => format!(
                    "a task cannot return a reference: its output is stored and sent as data, so it must be owned; return {owned}"
                ),
            };
            self.errors.add_spanned(reference, message);
        }
        fn visit_type_impl_trait(&mut self, impl_trait: &syn::TypeImplTrait) {
            let message = match self.position {
                Position::Argument => {
                    "a task cannot take `impl Trait`: its arguments are decoded into one concrete type; name the type, as in `String`"
                }
                Position::Output => {
                    "a task cannot return `impl Trait`: its output is decoded into one concrete type; name the type"
                }
            };
            self.errors.add_spanned(impl_trait, message);
        }
        fn visit_lifetime(&mut self, lifetime: &syn::Lifetime) {
            if lifetime.ident != "static" {
                self.errors.add(
                    lifetime.span(),
                    "a task cannot borrow: its arguments and output are stored and sent as data, so they must be owned (`'static`)",
                );
            }
        }
    }
    syn::visit::Visit::visit_type(&mut Check { position, errors }, ty);
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

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn errors_of(tokens: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        let parsed = parse(tokens, &mut errors);
        assert_eq!(parsed.is_none(), !errors.is_empty());
        errors.messages()
    }

    #[test]
    fn every_signature_mistake_is_reported_at_once() {
        let messages = errors_of(quote! {
            fn f<T>(&self, a: &str, b: impl Clone) -> &'static [u8] { &[] }
        });
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages[0].starts_with("a task cannot be generic"));
        assert!(messages[1].starts_with("a task cannot be a method"));
        assert!(messages[2].ends_with("take `String`"));
        assert!(messages[3].starts_with("a task cannot take `impl Trait`"));
        assert!(messages[4].ends_with("return `Vec<u8>`"));
    }

    #[test]
    fn resources_are_not_arguments() {
        let mut errors = Errors::default();
        let Some(task) = parse(
            quote!(
                async fn f(db: taskflow::Resource<Db>, id: u64) -> io::Result<u64> {
                    Ok(id)
                }
            ),
            &mut errors,
        ) else {
            panic!("{:?}", errors.messages());
        };
        assert!(task.is_async);
        assert_eq!(task.resources().count(), 1);
        let names: Vec<_> = task.arguments().map(|(_, name, _)| name).collect();
        assert_eq!(names, ["id"]);
        assert!(task.returns.fallible);
        assert_eq!(task.returns.output.to_token_stream().to_string(), "u64");
    }

    #[test]
    fn more_than_sixteen_arguments_are_refused() {
        let args = (0..17).map(|i| quote::format_ident!("a{i}"));
        let messages = errors_of(quote!(fn f(#(#args: u8),*) {}));
        assert_eq!(messages.len(), 1);
        assert!(messages[0].starts_with("a task takes at most 16 arguments"));
    }
}
