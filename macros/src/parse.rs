//! Parsing and validation: the `#[service(..)]` arguments, the marker attributes
//! on methods, and the shape of endpoint methods and of the constructor.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, Meta,
    Pat, PathArguments, ReturnType, Signature, Type,
};

/// Most parameters an endpoint may take: the core implements `IntoArgs` for tuples up to 12.
pub const MAX_ENDPOINT_PARAMS: usize = 12;

/// Associated functions that `#[service]` generates on the service type.
const GENERATED_FNS: [&str; 3] = ["service", "run", "serve"];

/// The arguments of `#[metabridge::service(name = "..", host = "..", port = N, logger = B,
/// tls(cert = "..", key = ".."))]`.
pub struct ServiceArgs {
    /// The service name, used by the server and by `connect`.
    pub name: LitStr,
    /// `host = ".."`, if given.
    pub host: Option<LitStr>,
    /// `port = N`, if given (checked to fit in a `u16`).
    pub port: Option<LitInt>,
    /// `logger = true|false`, if given.
    pub logger: Option<syn::LitBool>,
    /// `tls(cert = "..", key = "..", client_ca = "..")`, if given.
    pub tls: Option<TlsArgs>,
    /// `mesh = ".."`: seed endpoints or a mesh configuration file (needs
    /// the metabridge-mesh crate).
    pub mesh: Option<LitStr>,
}

/// The PEM files of `tls(cert = "..", key = "..", client_ca = "..")`
/// (`client_ca` optional).
pub struct TlsArgs {
    pub cert: LitStr,
    pub key: LitStr,
    pub client_ca: Option<LitStr>,
}

impl TlsArgs {
    fn parse(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<TlsArgs> {
        let (mut cert, mut key, mut client_ca) = (None, None, None);
        meta.parse_nested_meta(|inner| {
            let key_name = inner.path.get_ident().map(|i| i.unraw().to_string());
            let slot = match key_name.as_deref() {
                Some("cert") => &mut cert,
                Some("key") => &mut key,
                Some("client_ca") => &mut client_ca,
                _ => {
                    return Err(inner.error(format!(
                        "unknown `tls` key `{}`; expected `cert`, `key` or `client_ca`",
                        path_to_string(&inner.path)
                    )))
                }
            };
            let name = key_name.unwrap_or_default();
            if slot.is_some() {
                return Err(inner.error(format!("duplicate `tls` key `{name}`")));
            }
            let lit: LitStr = inner.value()?.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!(
                        "expected a PEM file's path: `{name} = \"/etc/my-service/{name}.pem\"`"
                    ),
                )
            })?;
            if lit.value().is_empty() {
                return Err(syn::Error::new_spanned(
                    &lit,
                    format!("`{name}` must not be empty"),
                ));
            }
            *slot = Some(lit);
            Ok(())
        })?;
        let missing = |what: &str| {
            meta.error(format!(
                "`tls` needs `cert` and `key`: write `tls(cert = \"cert.pem\", key = \"key.pem\")` \
                 (`{what}` is missing)"
            ))
        };
        Ok(TlsArgs {
            cert: cert.ok_or_else(|| missing("cert"))?,
            key: key.ok_or_else(|| missing("key"))?,
            client_ca,
        })
    }
}

impl ServiceArgs {
    /// Parses the attribute's argument tokens.
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut name: Option<LitStr> = None;
        let mut host: Option<LitStr> = None;
        let mut port: Option<LitInt> = None;
        let mut logger: Option<syn::LitBool> = None;
        let mut tls: Option<TlsArgs> = None;
        let mut mesh: Option<LitStr> = None;
        let parser = syn::meta::parser(|meta| {
            let key = meta.path.get_ident().map(|i| i.unraw().to_string());
            match key.as_deref() {
                Some("name") | Some("host") => {
                    let key = key.as_deref().unwrap_or_default();
                    let slot = if key == "name" { &mut name } else { &mut host };
                    if slot.is_some() {
                        return Err(meta.error(format!("duplicate key `{key}`")));
                    }
                    let lit: LitStr = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            format!("expected a string literal: `{key} = \"...\"`"),
                        )
                    })?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!("`{key}` must not be empty"),
                        ));
                    }
                    if key == "name" {
                        if let Some(problem) = service_name_problem(&lit.value()) {
                            return Err(syn::Error::new_spanned(
                                &lit,
                                format!("invalid service name: {problem}"),
                            ));
                        }
                    }
                    *slot = Some(lit);
                    Ok(())
                }
                Some("port") => {
                    if port.is_some() {
                        return Err(meta.error("duplicate key `port`"));
                    }
                    let lit: LitInt = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(e.span(), "expected an integer literal: `port = 9000`")
                    })?;
                    lit.base10_parse::<u16>().map_err(|_| {
                        syn::Error::new_spanned(&lit, "`port` must be an integer from 0 to 65535")
                    })?;
                    port = Some(LitInt::new(lit.base10_digits(), lit.span()));
                    Ok(())
                }
                Some("logger") => {
                    if logger.is_some() {
                        return Err(meta.error("duplicate key `logger`"));
                    }
                    let lit: syn::LitBool = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(e.span(), "expected `logger = true` or `logger = false`")
                    })?;
                    logger = Some(lit);
                    Ok(())
                }
                Some("mesh") => {
                    if mesh.is_some() {
                        return Err(meta.error("duplicate key `mesh`"));
                    }
                    let lit: LitStr = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "expected a string literal: `mesh = \"tcp/10.0.0.1:7447\"` (seed \
                             endpoints) or `mesh = \"/etc/metabridge/mesh.json5\"` (a file)",
                        )
                    })?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new_spanned(&lit, "`mesh` must not be empty"));
                    }
                    mesh = Some(lit);
                    Ok(())
                }
                Some("tls") => {
                    if tls.is_some() {
                        return Err(meta.error("duplicate key `tls`"));
                    }
                    tls = Some(TlsArgs::parse(&meta)?);
                    Ok(())
                }
                _ => Err(meta.error(format!(
                    "unknown attribute key `{}`; expected `name`, `host`, `port`, `logger`, `tls` or `mesh`",
                    path_to_string(&meta.path)
                ))),
            }
        });
        parser.parse2(tokens)?;
        let name = name.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing service name: write `#[metabridge::service(name = \"my-service\")]`",
            )
        })?;
        Ok(ServiceArgs {
            name,
            host,
            port,
            logger,
            tls,
            mesh,
        })
    }
}

/// What is wrong with a service name: the rule of
/// `metabridge::validate_service_name`, from the crate both share.
pub use metabridge_names::service_name_problem;

/// Whether `ty` is `Blob` (`metabridge::Blob`): bytes read in place, which
/// a typed client takes as `&[u8]`.
pub fn is_blob(ty: &Type) -> bool {
    matches!(peel(ty), Type::Path(p) if p.qself.is_none()
        && p.path.segments.last().is_some_and(|s| s.ident == "Blob" && s.arguments.is_none()))
}

/// The `T` of an `Option<T>` parameter (which a caller may leave out).
pub fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = peel(ty) else {
        return None;
    };
    let last = p.path.segments.last()?;
    match (&last.arguments, p.qself.is_none() && last.ident == "Option") {
        (PathArguments::AngleBracketed(a), true) if a.args.len() == 1 => match &a.args[0] {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a parameter or result of type `ty` travels as MessagePack bin:
/// `Vec<u8>`, `Box<[u8]>`, `Bytes` (e.g. `bytes::Bytes`), `&[u8]`, `&Vec<u8>`.
pub fn is_bytes(ty: &Type) -> bool {
    let is_u8 =
        |t: &Type| matches!(peel(t), Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8"));
    match peel(ty) {
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            match (&last.arguments, last.ident.to_string().as_str()) {
                (PathArguments::None, "Bytes") => true,
                (PathArguments::AngleBracketed(a), "Vec" | "Box") if a.args.len() == 1 => {
                    match (&a.args[0], last.ident == "Vec") {
                        (GenericArgument::Type(t), true) => is_u8(t),
                        (GenericArgument::Type(t), false) => {
                            matches!(peel(t), Type::Slice(s) if is_u8(&s.elem))
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        }
        Type::Reference(r) => match peel(&r.elem) {
            Type::Slice(s) => is_u8(&s.elem),
            other => is_bytes(other),
        },
        _ => false,
    }
}

/// One parameter of an endpoint or of the constructor.
pub struct Param {
    /// The parameter's identifier (any `mut` dropped).
    pub ident: Ident,
    /// Its declared type.
    pub ty: Type,
}

impl Param {
    /// The name the argument travels under (raw identifiers lose their `r#`).
    pub fn wire_name(&self) -> LitStr {
        LitStr::new(&self.ident.unraw().to_string(), self.ident.span())
    }
}

/// What an endpoint method returns.
pub enum Output {
    /// Nothing: `()` or no return type.
    Unit,
    /// A plain value.
    Value(Type),
    /// A `Result`-like type (last path segment `Result`): `Err` becomes a remote error.
    /// `ok` is its first type argument, `err` its second if written (`io::Result<T>`
    /// names none).
    Result {
        /// The success type.
        ok: Type,
        /// The error type, when the return type names it.
        err: Option<Box<Type>>,
        /// The span of the whole declared return type.
        span: Span,
    },
}

/// An endpoint: a `#[function]` or `#[endpoint("..")]` method.
pub struct Endpoint {
    /// The Rust method.
    pub method: Ident,
    /// The primary endpoint name.
    pub name: LitStr,
    /// The method's own name when `#[endpoint("..")]` chose another primary name.
    pub alias: Option<LitStr>,
    /// Marked `idempotent`: clients of several replicas may retry it.
    pub idempotent: bool,
    /// Its parameters, after `&self`.
    pub params: Vec<Param>,
    /// Its return type.
    pub output: Output,
    /// The `async` keyword's span, for an async method.
    pub asyncness: Option<Span>,
    /// Its doc comments (copied to the client).
    pub docs: Vec<Attribute>,
}

/// How the service value is built.
pub enum Constructor {
    /// A `fn new(..) -> Self`.
    New {
        /// Its parameters, sent by name by `connect`.
        params: Vec<Param>,
        /// The `new` identifier (for spans).
        ident: Ident,
    },
    /// No `new`: `<Self as Default>::default()`.
    Default,
}

/// Everything the expansion needs from an annotated impl block.
pub struct ServiceDef {
    /// The attribute's arguments.
    pub args: ServiceArgs,
    /// The identifier of the service type (last path segment).
    pub type_ident: Ident,
    /// The constructor.
    pub ctor: Constructor,
    /// The endpoints, in source order.
    pub endpoints: Vec<Endpoint>,
}

/// Collects several errors so the user sees them all at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// `Err` with every error pushed, or `Ok(value)` if none was.
    pub fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// Which marker attribute a method carries.
enum Marker {
    /// `#[function]` (or `#[function(idempotent)]`): exposed under its own name.
    Function { idempotent: bool },
    /// `#[endpoint("name")]` (or `#[endpoint("name", idempotent)]`).
    Endpoint { name: LitStr, idempotent: bool },
}

/// Whether `attr` is one of ours: `function` / `endpoint`, bare or as `metabridge::..`.
/// Returns which one.
pub fn marker_kind(attr: &Attribute) -> Option<&'static str> {
    let path = attr.path();
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let last = match segs.as_slice() {
        [last] if path.leading_colon.is_none() => last,
        [krate, last] if krate == "metabridge" => last,
        _ => return None,
    };
    match last.as_str() {
        "function" => Some("function"),
        "endpoint" => Some("endpoint"),
        _ => None,
    }
}

/// The argument that `#[service]` gives the short forms `#[function]` / `#[endpoint]`
/// it leaves in place: the standalone macros then expand to the item unchanged.
pub const INSIDE_SERVICE: &str = "__metabridge_inside_service";

/// Removes our marker attributes from `attrs`, returning them.
///
/// A short form (`#[function]`, `#[endpoint("x")]`) is replaced by
/// `#[function(__metabridge_inside_service)]`, which expands to nothing: that keeps
/// the user's `use metabridge::function;` in use (no `unused_imports` warning), and
/// without such an import rustc reports the unknown attribute as usual.
fn take_markers(attrs: &mut Vec<Attribute>) -> Vec<Attribute> {
    let mut ours = Vec::new();
    for attr in std::mem::take(attrs) {
        if marker_kind(&attr).is_none() {
            attrs.push(attr);
            continue;
        }
        if attr.path().segments.len() == 1 {
            let (pound, path) = (&attr.pound_token, attr.path());
            let inside = Ident::new(INSIDE_SERVICE, Span::call_site());
            attrs.push(syn::parse_quote_spanned!(pound.span=> #[#path(#inside)]));
        }
        ours.push(attr);
    }
    ours
}

/// Interprets the marker attributes of one method (at most one is allowed).
fn parse_markers(markers: &[Attribute], errors: &mut Errors) -> Option<Marker> {
    let mut found: Option<Marker> = None;
    for attr in markers {
        let marker = match marker_kind(attr) {
            Some("function") => match &attr.meta {
                Meta::Path(_) => Marker::Function { idempotent: false },
                Meta::List(list) if is_idempotent(&list.tokens) => {
                    Marker::Function { idempotent: true }
                }
                _ => {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        "`#[metabridge::function]` takes no arguments but `idempotent`; to choose \
                         the endpoint's name write `#[metabridge::endpoint(\"name\")]`",
                    ));
                    continue;
                }
            },
            _ => match parse_endpoint_name(attr) {
                Ok((name, idempotent)) => Marker::Endpoint { name, idempotent },
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
        };
        if found.is_some() {
            errors.push(syn::Error::new_spanned(
                attr,
                "a method takes only one `#[metabridge::function]` or `#[metabridge::endpoint(..)]`",
            ));
        } else {
            found = Some(marker);
        }
    }
    found
}

/// Whether `tokens` are exactly `idempotent`.
fn is_idempotent(tokens: &TokenStream) -> bool {
    let mut it = tokens.clone().into_iter();
    matches!((it.next(), it.next()), (Some(TokenTree::Ident(i)), None) if i == "idempotent")
}

/// Parses `#[endpoint("name")]` or `#[endpoint("name", idempotent)]`:
/// the name, and whether it is marked idempotent.
pub fn parse_endpoint_name(attr: &Attribute) -> syn::Result<(LitStr, bool)> {
    const USAGE: &str = "expected the endpoint's name as a string literal: \
                         `#[metabridge::endpoint(\"name\")]`";
    let list = match &attr.meta {
        Meta::List(list) => list,
        other => return Err(syn::Error::new_spanned(other, USAGE)),
    };
    let lit = (|input: syn::parse::ParseStream| {
        if !input.peek(LitStr) {
            return Err(input.error(USAGE));
        }
        let lit: LitStr = input.parse()?;
        let mut idempotent = false;
        if input.peek(syn::Token![,]) {
            input.parse::<syn::Token![,]>()?;
            let word: Ident = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "after the endpoint's name only `idempotent` may follow",
                )
            })?;
            if word != "idempotent" {
                return Err(syn::Error::new(
                    word.span(),
                    "after the endpoint's name only `idempotent` may follow: \
                     `#[metabridge::endpoint(\"name\", idempotent)]`",
                ));
            }
            idempotent = true;
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the endpoint's name"));
        }
        Ok((lit, idempotent))
    })
    .parse2(list.tokens.clone())
    .map_err(|e| {
        // An empty `#[endpoint()]` reports at the end of the (empty) input: point at the attribute.
        if list.tokens.is_empty() {
            syn::Error::new_spanned(attr, USAGE)
        } else {
            e
        }
    })?;
    if lit.0.value().is_empty() {
        return Err(syn::Error::new_spanned(
            &lit.0,
            "the endpoint's name must not be empty",
        ));
    }
    Ok(lit)
}

/// `true` if `tokens` contain the `impl` keyword anywhere (an `impl Trait` type).
pub fn contains_impl_trait(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == "impl",
        TokenTree::Group(g) => contains_impl_trait(g.stream()),
        _ => false,
    })
}

/// Strips parentheses and invisible groups around a type.
pub fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => peel(&p.elem),
        Type::Group(g) => peel(&g.elem),
        other => other,
    }
}

/// The typed parameters of `sig` (after the receiver), checked to be plain identifiers
/// with concrete types.
fn parse_params(sig: &Signature, errors: &mut Errors) -> Vec<Param> {
    let mut params = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pt) = input else { continue };
        let mut ok = true;
        if contains_impl_trait(quote::ToTokens::to_token_stream(&pt.ty)) {
            errors.push(syn::Error::new_spanned(
                &pt.ty,
                "`impl Trait` parameters are not supported: arguments are deserialized, \
                 so give the parameter a concrete type",
            ));
            ok = false;
        } else if let Type::Reference(r) = peel(&pt.ty) {
            let owned = match peel(&r.elem) {
                Type::Path(p) if p.path.is_ident("str") => "`String`".to_owned(),
                Type::Slice(s) => {
                    let elem = &s.elem;
                    format!("`Vec<{}>`", quote::quote!(#elem))
                }
                other => format!("`{}`", quote::quote!(#other)),
            };
            errors.push(syn::Error::new_spanned(
                &pt.ty,
                format!(
                    "parameters must be owned types, since arguments are deserialized: \
                     take {owned} instead"
                ),
            ));
            ok = false;
        }
        let ident = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => Some(pi.ident.clone()),
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "parameters must be plain identifiers (arguments are sent by name)",
                ));
                None
            }
        };
        if let (Some(ident), true) = (ident, ok) {
            params.push(Param {
                ident,
                ty: (*pt.ty).clone(),
            });
        }
    }
    params
}

/// Rejects generic parameters and `where` clauses on `sig`.
fn check_not_generic(sig: &Signature, what: &str, errors: &mut Errors) {
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("{what} cannot be generic: the types of remote arguments must be known"),
        ));
    } else if let Some(w) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            w,
            format!("{what} cannot have a `where` clause"),
        ));
    }
}

/// Classifies a return type.
pub fn parse_output(ret: &ReturnType) -> syn::Result<Output> {
    let ty = match ret {
        ReturnType::Default => return Ok(Output::Unit),
        ReturnType::Type(_, ty) => ty,
    };
    if contains_impl_trait(quote::ToTokens::to_token_stream(ty)) {
        return Err(syn::Error::new_spanned(
            ty,
            "endpoints cannot return `impl Trait`: the client needs a concrete type to deserialize",
        ));
    }
    match peel(ty) {
        Type::Tuple(t) if t.elems.is_empty() => Ok(Output::Unit),
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last();
            if let Some(seg) = last.filter(|s| s.ident == "Result") {
                if let PathArguments::AngleBracketed(args) = &seg.arguments {
                    if let Some(GenericArgument::Type(ok)) = args.args.first() {
                        let err = match args.args.iter().nth(1) {
                            Some(GenericArgument::Type(e)) => Some(Box::new(e.clone())),
                            _ => None,
                        };
                        return Ok(Output::Result {
                            ok: ok.clone(),
                            err,
                            span: ty.span(),
                        });
                    }
                }
            }
            Ok(Output::Value((**ty).clone()))
        }
        _ => Ok(Output::Value((**ty).clone())),
    }
}

/// Checks that `new`'s return type is `Self` or the service type.
fn returns_self(ret: &ReturnType, type_ident: &Ident) -> bool {
    let ReturnType::Type(_, ty) = ret else {
        return false;
    };
    match peel(ty) {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Self" || s.ident == *type_ident),
        _ => false,
    }
}

/// The service type's identifier: the last segment of the impl's self type.
fn type_ident(imp: &ItemImpl) -> syn::Result<Ident> {
    match peel(&imp.self_ty) {
        Type::Path(p) if p.qself.is_none() => match p.path.segments.last() {
            Some(seg) if seg.arguments.is_empty() => Ok(seg.ident.clone()),
            Some(seg) => Err(syn::Error::new_spanned(
                &seg.arguments,
                "`#[metabridge::service]` does not support generic service types",
            )),
            None => Err(syn::Error::new_spanned(
                &imp.self_ty,
                "expected a type name",
            )),
        },
        other => Err(syn::Error::new_spanned(
            other,
            "`#[metabridge::service]` must be on an `impl` block of a named struct or enum",
        )),
    }
}

/// Analyzes one endpoint method.
fn parse_endpoint(f: &ImplItemFn, marker: Marker, errors: &mut Errors) -> Option<Endpoint> {
    let sig = &f.sig;
    let mut errs = Errors::default();
    match sig.receiver() {
        Some(r) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(r) => errs.push(syn::Error::new_spanned(
            r,
            "endpoints take &self; use interior mutability for state",
        )),
        None => errs.push(syn::Error::new_spanned(
            &sig.ident,
            "endpoints take &self; use interior mutability for state \
             (this method has no receiver)",
        )),
    }
    check_not_generic(sig, "endpoint methods", &mut errs);
    if let Some(u) = &sig.unsafety {
        errs.push(syn::Error::new_spanned(
            u,
            "endpoint methods cannot be `unsafe`",
        ));
    }
    if let Some(v) = &sig.variadic {
        errs.push(syn::Error::new_spanned(
            v,
            "endpoint methods cannot be variadic",
        ));
    }
    let params = parse_params(sig, &mut errs);
    if sig.inputs.len() > MAX_ENDPOINT_PARAMS + 1 {
        errs.push(syn::Error::new_spanned(
            &sig.inputs,
            format!("endpoints take at most {MAX_ENDPOINT_PARAMS} parameters besides &self"),
        ));
    }
    let output = parse_output(&sig.output).map_err(|e| errs.push(e)).ok();
    let failed = errs.0.is_some();
    if let Some(e) = errs.0 {
        errors.push(e);
    }
    if failed {
        return None;
    }
    let own = LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span());
    let (name, alias, idempotent) = match marker {
        Marker::Function { idempotent } => (own, None, idempotent),
        Marker::Endpoint { name, idempotent } if name.value() == own.value() => {
            (name, None, idempotent)
        }
        Marker::Endpoint { name, idempotent } => (name, Some(own), idempotent),
    };
    Some(Endpoint {
        method: sig.ident.clone(),
        name,
        alias,
        idempotent,
        params,
        output: output?,
        asyncness: sig.asyncness.map(|a| a.span()),
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

/// Analyzes the constructor `fn new`.
fn parse_constructor(f: &ImplItemFn, type_ident: &Ident, errors: &mut Errors) -> Constructor {
    let sig = &f.sig;
    if let Some(r) = sig.receiver() {
        errors.push(syn::Error::new_spanned(
            r,
            "the constructor `new` cannot take `self`: write `fn new(..) -> Self`",
        ));
    }
    if let Some(a) = &sig.asyncness {
        errors.push(syn::Error::new_spanned(
            a,
            "the constructor `new` cannot be async",
        ));
    }
    check_not_generic(sig, "the constructor `new`", errors);
    if !returns_self(&sig.output, type_ident) {
        let msg = format!("the constructor `new` must return `Self` (or `{type_ident}`)");
        match &sig.output {
            ReturnType::Type(_, ty) => errors.push(syn::Error::new_spanned(ty, msg)),
            ReturnType::Default => errors.push(syn::Error::new_spanned(&sig.ident, msg)),
        }
    }
    Constructor::New {
        params: parse_params(sig, errors),
        ident: sig.ident.clone(),
    }
}

/// Parses the service: strips the marker attributes from `imp` (always, so that the
/// impl can be emitted even on error) and analyzes its methods.
pub fn parse_service(attr: TokenStream, imp: &mut ItemImpl) -> syn::Result<ServiceDef> {
    let mut errors = Errors::default();
    let args = ServiceArgs::parse(attr).map_err(|e| errors.push(e)).ok();
    if let Some(u) = &imp.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "expected an inherent impl block",
        ));
    }
    if !imp.generics.params.is_empty() || imp.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &imp.generics,
            "`#[metabridge::service]` does not support generic service types",
        ));
    }
    let type_ident = type_ident(imp).map_err(|e| errors.push(e)).ok();

    let mut ctor = Constructor::Default;
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for item in &mut imp.items {
        let (attrs, f) = match item {
            ImplItem::Fn(f) => (take_markers(&mut f.attrs), Some(&*f)),
            ImplItem::Const(c) => (take_markers(&mut c.attrs), None),
            ImplItem::Type(t) => (take_markers(&mut t.attrs), None),
            ImplItem::Macro(m) => (take_markers(&mut m.attrs), None),
            _ => (Vec::new(), None),
        };
        let Some(f) = f else {
            for a in attrs {
                errors.push(syn::Error::new_spanned(
                    a,
                    "`#[metabridge::function]` and `#[metabridge::endpoint]` go on methods",
                ));
            }
            continue;
        };
        let name = f.sig.ident.unraw().to_string();
        if GENERATED_FNS.contains(&name.as_str()) {
            errors.push(syn::Error::new_spanned(
                &f.sig.ident,
                format!(
                    "`{name}` is generated by `#[metabridge::service]`; rename this method \
                     (to keep the endpoint's name, write `#[metabridge::endpoint(\"{name}\")]`)"
                ),
            ));
        }
        match parse_markers(&attrs, &mut errors) {
            Some(marker) => {
                if let Some(ep) = parse_endpoint(f, marker, &mut errors) {
                    endpoints.push(ep);
                }
            }
            None if attrs.is_empty() && name == "new" => {
                if let Some(ti) = &type_ident {
                    ctor = parse_constructor(f, ti, &mut errors);
                }
            }
            None => {}
        }
    }
    check_duplicate_names(&endpoints, &mut errors);
    let (Some(args), Some(type_ident)) = (args, type_ident) else {
        // The reason was pushed to `errors`.
        return Err(errors.0.unwrap_or_else(|| {
            syn::Error::new(Span::call_site(), "invalid `#[metabridge::service]`")
        }));
    };
    errors.finish(ServiceDef {
        args,
        type_ident,
        ctor,
        endpoints,
    })
}

/// Rejects two endpoints (or an endpoint and an alias) with the same name.
fn check_duplicate_names(endpoints: &[Endpoint], errors: &mut Errors) {
    let mut seen: Vec<&LitStr> = Vec::new();
    for ep in endpoints {
        for lit in std::iter::once(&ep.name).chain(ep.alias.as_ref()) {
            if seen.iter().any(|s| s.value() == lit.value()) {
                errors.push(syn::Error::new_spanned(
                    lit,
                    format!("duplicate endpoint name `{}`", lit.value()),
                ));
            } else {
                seen.push(lit);
            }
        }
    }
}

/// A path as written, for messages.
fn path_to_string(path: &syn::Path) -> String {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segs.join("::")
}

/// The span of the item's "name" (keyword through identifier), for the
/// not-an-inherent-impl error.
pub fn item_head(item: &syn::Item) -> TokenStream {
    use quote::quote;
    match item {
        syn::Item::Impl(i) => match &i.trait_ {
            Some((bang, path, for_)) => quote!(#bang #path #for_),
            None => quote!(impl),
        },
        syn::Item::Fn(f) => {
            let (fn_token, ident) = (&f.sig.fn_token, &f.sig.ident);
            quote!(#fn_token #ident)
        }
        syn::Item::Struct(s) => {
            let (kw, ident) = (&s.struct_token, &s.ident);
            quote!(#kw #ident)
        }
        syn::Item::Enum(e) => {
            let (kw, ident) = (&e.enum_token, &e.ident);
            quote!(#kw #ident)
        }
        syn::Item::Trait(t) => {
            let (kw, ident) = (&t.trait_token, &t.ident);
            quote!(#kw #ident)
        }
        syn::Item::Mod(m) => {
            let (kw, ident) = (&m.mod_token, &m.ident);
            quote!(#kw #ident)
        }
        other => quote::ToTokens::to_token_stream(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    fn args(t: TokenStream) -> syn::Result<ServiceArgs> {
        ServiceArgs::parse(t)
    }

    #[test]
    fn service_args() {
        let a = args(quote!(name = "demo", host = "0.0.0.0", port = 9000)).unwrap();
        assert_eq!(a.name.value(), "demo");
        assert_eq!(a.host.unwrap().value(), "0.0.0.0");
        assert_eq!(a.port.unwrap().base10_parse::<u16>().unwrap(), 9000);
        let a = args(quote!(name = "x")).unwrap();
        assert!(a.host.is_none() && a.port.is_none());
    }

    #[test]
    fn service_args_errors() {
        let err = |t| args(t).err().expect("should fail").to_string();
        assert!(err(quote!()).contains("missing service name"));
        assert!(err(quote!(host = "h")).contains("missing service name"));
        assert!(err(quote!(name = "a", nme = "b")).contains("unknown attribute key `nme`"));
        assert!(err(quote!(name = "a", name = "b")).contains("duplicate key `name`"));
        assert!(err(quote!(name = 3)).contains("string literal"));
        assert!(err(quote!(name = "a", port = 70000)).contains("0 to 65535"));
        assert!(err(quote!(name = "")).contains("must not be empty"));
    }

    #[test]
    fn service_names() {
        for bad in [
            "a/b",
            "..",
            " x",
            "a\u{0}b",
            &"n".repeat(65),
            "a\u{200B}b",
            "a\u{202E}b",
            "\u{FEFF}a",
        ] {
            let e = args(quote!(name = #bad)).err().expect(bad).to_string();
            assert!(e.starts_with("invalid service name: "), "{bad:?}: {e}");
        }
        assert!(args(quote!(name = "serviço-1.0")).is_ok());
        assert!(service_name_problem(&"n".repeat(64)).is_none());
    }

    #[test]
    fn bytes_types() {
        for ty in [
            quote!(Vec<u8>),
            quote!(std::vec::Vec<u8>),
            quote!(bytes::Bytes),
            quote!(Box<[u8]>),
            quote!(&[u8]),
            quote!(&'static [u8]),
            quote!(&Vec<u8>),
        ] {
            assert!(is_bytes(&syn::parse2(ty.clone()).unwrap()), "{ty}");
        }
        for ty in [
            quote!(Vec<u16>),
            quote!(String),
            quote!(Option<Vec<u8>>),
            quote!([u8; 4]),
        ] {
            assert!(!is_bytes(&syn::parse2(ty.clone()).unwrap()), "{ty}");
        }
    }

    #[test]
    fn markers() {
        let a: Attribute = parse_quote!(#[metabridge::function]);
        assert_eq!(marker_kind(&a), Some("function"));
        let a: Attribute = parse_quote!(#[endpoint("x")]);
        assert_eq!(marker_kind(&a), Some("endpoint"));
        let a: Attribute = parse_quote!(#[other::endpoint("x")]);
        assert_eq!(marker_kind(&a), None);
        let a: Attribute = parse_quote!(#[doc = "x"]);
        assert_eq!(marker_kind(&a), None);
    }

    #[test]
    fn endpoint_names() {
        let a: Attribute = parse_quote!(#[endpoint("teste")]);
        assert_eq!(parse_endpoint_name(&a).unwrap().0.value(), "teste");
        let a: Attribute = syn::parse_quote!(#[endpoint("teste", idempotent)]);
        assert!(parse_endpoint_name(&a).unwrap().1);
        let a: Attribute = syn::parse_quote!(#[endpoint("teste", cached)]);
        assert!(parse_endpoint_name(&a).is_err());
        for a in [
            parse_quote!(#[endpoint]),
            parse_quote!(#[endpoint()]),
            parse_quote!(#[endpoint(teste)]),
            parse_quote!(#[endpoint = "x"]),
            parse_quote!(#[endpoint("a", "b")]),
            parse_quote!(#[endpoint("")]),
        ] {
            assert!(parse_endpoint_name(&a).is_err());
        }
    }

    #[test]
    fn outputs() {
        assert!(matches!(parse_output(&parse_quote!()), Ok(Output::Unit)));
        assert!(matches!(
            parse_output(&parse_quote!(-> ())),
            Ok(Output::Unit)
        ));
        assert!(matches!(
            parse_output(&parse_quote!(-> String)),
            Ok(Output::Value(_))
        ));
        match parse_output(&parse_quote!(-> std::result::Result<i64, E>)) {
            Ok(Output::Result { ok, .. }) => assert_eq!(quote!(#ok).to_string(), "i64"),
            _ => panic!("expected Result"),
        }
        match parse_output(&parse_quote!(-> io::Result<Vec<u8>>)) {
            Ok(Output::Result { ok, .. }) => assert_eq!(quote!(#ok).to_string(), "Vec < u8 >"),
            _ => panic!("expected Result"),
        }
        assert!(parse_output(&parse_quote!(-> impl Serialize)).is_err());
    }

    #[test]
    fn impl_trait_detection() {
        assert!(contains_impl_trait(quote!(impl Display)));
        assert!(contains_impl_trait(quote!(Vec<impl Display>)));
        assert!(!contains_impl_trait(quote!(Vec<String>)));
    }

    fn service(attr: TokenStream, imp: ItemImpl) -> (syn::Result<ServiceDef>, ItemImpl) {
        let mut imp = imp;
        let r = parse_service(attr, &mut imp);
        (r, imp)
    }

    #[test]
    fn full_service() {
        let (def, imp) = service(
            quote!(name = "demo-service"),
            parse_quote! {
                impl DemoService {
                    pub fn new(mut argumento: String) -> Self { DemoService { argumento } }
                    /// Home.
                    #[metabridge::endpoint("teste")]
                    pub fn home(&self) -> String { unreachable!("test input: parsed, never compiled") }
                    #[function]
                    pub async fn soma(&self, a: i64, b: i64) -> String { unreachable!("test input: parsed, never compiled") }
                    #[metabridge::function]
                    pub fn parse(&self, s: String) -> Result<i64, std::num::ParseIntError> { unreachable!("test input: parsed, never compiled") }
                    fn helper(&self) {}
                }
            },
        );
        let def = def.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(def.type_ident, "DemoService");
        match &def.ctor {
            Constructor::New { params, .. } => {
                assert_eq!(params.len(), 1);
                assert_eq!(params[0].ident, "argumento");
            }
            Constructor::Default => panic!("expected new"),
        }
        let names: Vec<_> = def.endpoints.iter().map(|e| e.name.value()).collect();
        assert_eq!(names, ["teste", "soma", "parse"]);
        assert_eq!(def.endpoints[0].alias.as_ref().unwrap().value(), "home");
        assert_eq!(def.endpoints[0].docs.len(), 1);
        assert!(def.endpoints[1].asyncness.is_some());
        assert!(matches!(def.endpoints[2].output, Output::Result { .. }));
        // The marker attributes are gone, the rest stays.
        let text = quote!(#imp).to_string();
        assert!(!text.contains("metabridge ::"), "{text}");
        // The short form stays, marked so that it expands to nothing.
        assert!(
            text.contains("# [function (__metabridge_inside_service)]"),
            "{text}"
        );
        assert_eq!(text.matches("function").count(), 1, "{text}");
        assert!(text.contains("doc"), "{text}");
    }

    #[test]
    fn no_new_means_default() {
        let (def, _) = service(
            quote!(name = "x"),
            parse_quote!(impl X { #[function] fn a(&self) {} }),
        );
        assert!(matches!(def.unwrap().ctor, Constructor::Default));
    }

    fn error_of(attr: TokenStream, imp: ItemImpl) -> String {
        match service(attr, imp).0 {
            Ok(_) => panic!("should fail"),
            Err(e) => e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn method_errors() {
        let n = quote!(name = "x");
        let cases: Vec<(ItemImpl, &str)> = vec![
            (
                parse_quote!(impl X { #[function] fn a(self) {} }),
                "endpoints take &self",
            ),
            (
                parse_quote!(impl X { #[function] fn a(&mut self) {} }),
                "endpoints take &self",
            ),
            (
                parse_quote!(impl X { #[function] fn a() {} }),
                "endpoints take &self",
            ),
            (
                parse_quote!(impl X { #[function] fn a<T>(&self, t: T) {} }),
                "cannot be generic",
            ),
            (
                parse_quote!(impl X { #[function] fn a(&self, t: impl Tr) {} }),
                "`impl Trait`",
            ),
            (
                parse_quote!(impl X { #[function] fn a(&self, (a, b): (u8, u8)) {} }),
                "plain identifiers",
            ),
            (
                parse_quote!(impl X { #[function] fn a(&self, _: u8) {} }),
                "plain identifiers",
            ),
            (
                parse_quote!(impl X { #[endpoint] fn a(&self) {} }),
                "string literal",
            ),
            (
                parse_quote!(impl X { #[function("b")] fn a(&self) {} }),
                "takes no arguments",
            ),
            (
                parse_quote!(impl X { #[function] fn a(&self) {} #[endpoint("a")] fn b(&self) {} }),
                "duplicate endpoint name `a`",
            ),
            (
                parse_quote!(impl X { #[endpoint("z")] fn a(&self) {} #[function] fn a2(&self) {} #[endpoint("a")] fn b(&self) {} }),
                "duplicate endpoint name `a`",
            ),
            (
                parse_quote!(impl X { fn new() -> u32 { 0 } }),
                "must return `Self`",
            ),
            (parse_quote!(impl X { fn new() {} }), "must return `Self`"),
            (
                parse_quote!(impl X { #[function] fn run(&self) {} }),
                "`run` is generated",
            ),
            (
                parse_quote!(impl X { #[function] #[function] fn a(&self) {} }),
                "only one",
            ),
            (
                parse_quote!(impl X { #[function] const A: u8 = 0; }),
                "go on methods",
            ),
            (
                parse_quote!(
                    impl<T> X<T> {}
                ),
                "generic service types",
            ),
        ];
        for (imp, want) in cases {
            let shown = quote!(#imp).to_string();
            let got = error_of(n.clone(), imp);
            assert!(got.contains(want), "{shown}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn new_returning_the_type_is_fine() {
        let (def, _) = service(
            quote!(name = "x"),
            parse_quote!(impl X { fn new(a: u8) -> X { X } }),
        );
        assert!(matches!(def.unwrap().ctor, Constructor::New { .. }));
    }

    #[test]
    fn all_errors_are_reported() {
        let got = error_of(
            quote!(),
            parse_quote!(impl X { #[function] fn a(self) {} #[function] fn b<T>(&self) {} }),
        );
        assert!(got.contains("missing service name"), "{got}");
        assert!(got.contains("&self"), "{got}");
        assert!(got.contains("generic"), "{got}");
    }
}
