//! The typed client that `#[service]` generates next to the service: `<Type>Client`,
//! with `connect(<constructor args>)` and one blocking and one async method per
//! endpoint name that is a Rust identifier.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, LitStr, Type};

use crate::parse::{
    is_blob, is_bytes, peel, Constructor, Endpoint, Errors, Output, Param, ServiceDef,
};

/// Methods every generated client has; endpoints cannot take these names.
const RESERVED: [&str; 6] = [
    "connect",
    "builder",
    "from_client",
    "client",
    "close",
    "with_timeout",
];

/// `true` for `String` (any path ending in a bare `String` segment).
fn is_string(ty: &Type) -> bool {
    match peel(ty) {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "String" && s.arguments.is_empty()),
        _ => false,
    }
}

/// How a parameter appears in the client: `String` becomes `&str`, bytes (`Vec<u8>`,
/// `Bytes`, `Box<[u8]>`, `&Vec<u8>`, `Blob`) become `&[u8]` (a caller lends its buffer
/// rather than giving it away), the rest is as declared.
fn param_type(ty: &Type) -> TokenStream {
    if is_string(ty) {
        quote!(&str)
    } else if is_bytes(ty) || is_blob(ty) {
        quote!(&[u8])
    } else {
        quote!(#ty)
    }
}

/// The expression that passes a parameter to `call_async`, which needs `'static` arguments
/// (bytes wrapped in `Bin`, to travel as MessagePack bin).
fn owned_arg(p: &Param) -> TokenStream {
    let id = &p.ident;
    let bytes = is_bytes(&p.ty) || is_blob(&p.ty);
    let owned = if is_string(&p.ty) || bytes || matches!(peel(&p.ty), Type::Reference(_)) {
        quote!(::std::borrow::ToOwned::to_owned(#id))
    } else {
        quote!(#id)
    };
    if bytes {
        quote!(::metabridge::Bin(#owned))
    } else {
        owned
    }
}

/// The expression that passes a parameter to `call` (bytes wrapped in `Bin`).
fn arg(p: &Param) -> TokenStream {
    let id = &p.ident;
    if is_bytes(&p.ty) || is_blob(&p.ty) {
        quote!(::metabridge::Bin(#id))
    } else {
        quote!(#id)
    }
}

/// The owned type a client receives for a value the server returns: `&str` → `String`,
/// `&[T]` → `Vec<T>`, `&T` → `T`; anything else unchanged.
fn owned_type(ty: &Type) -> Type {
    match peel(ty) {
        Type::Reference(r) => match peel(&r.elem) {
            Type::Path(p) if p.path.is_ident("str") => syn::parse_quote!(::std::string::String),
            Type::Slice(s) => {
                let elem = &s.elem;
                syn::parse_quote!(::std::vec::Vec<#elem>)
            }
            other => owned_type(other),
        },
        _ => ty.clone(),
    }
}

/// What a client method returns inside `metabridge::Result<..>`.
fn return_type(output: &Output) -> Type {
    match output {
        Output::Unit => syn::parse_quote!(()),
        Output::Value(ty) => owned_type(ty),
        Output::Result { ok, .. } => owned_type(ok),
    }
}

/// Whether the endpoint answers with bytes (decoded through `Bin`).
fn returns_bytes(output: &Output) -> bool {
    match output {
        Output::Unit => false,
        Output::Value(ty) | Output::Result { ok: ty, .. } => is_bytes(ty),
    }
}

/// The client method names of one endpoint: its primary name when that is an
/// identifier, and the method's own name when it differs.
fn method_names(ep: &Endpoint) -> Vec<(Ident, &LitStr)> {
    let mut names = Vec::new();
    match &ep.alias {
        None => names.push((ep.method.clone(), &ep.name)),
        Some(alias) => {
            if let Ok(ident) = syn::parse_str::<Ident>(&ep.name.value()) {
                names.push((Ident::new(&ident.to_string(), ep.name.span()), &ep.name));
            }
            names.push((ep.method.clone(), alias));
        }
    }
    names
}

/// Doc attributes for a client method.
fn docs(ep: &Endpoint, service: &LitStr, is_async: bool) -> TokenStream {
    let mut first = format!(
        "Calls the `{}` endpoint of `{}`",
        ep.name.value(),
        service.value()
    );
    if let Some(alias) = &ep.alias {
        first.push_str(&format!(" (also exposed as `{}`)", alias.value()));
    }
    first.push_str(if is_async {
        " without blocking."
    } else {
        ", blocking until it replies."
    });
    let user = &ep.docs;
    if user.is_empty() {
        quote!(#[doc = #first])
    } else {
        quote!(#[doc = #first] #[doc = ""] #(#user)*)
    }
}

/// The blocking and async client methods of one endpoint name.
fn methods(ep: &Endpoint, ident: &Ident, service: &LitStr) -> TokenStream {
    let name = &ep.name;
    let ret = return_type(&ep.output);
    let params = ep.params.iter().map(|p| {
        let (id, ty) = (&p.ident, param_type(&p.ty));
        quote!(#id: #ty)
    });
    let params: Vec<_> = params.collect();
    let ids = ep.params.iter().map(arg);
    let owned = ep.params.iter().map(owned_arg);
    let async_ident = format_ident!("{}_async", ident.unraw(), span = ident.span());
    let (sync_doc, async_doc) = (docs(ep, service, false), docs(ep, service, true));
    // Type errors (a return type that is not `Deserialize`, a parameter that is not
    // `Serialize`) are reported at the user's types rather than at the attribute.
    let ret_span = match &ep.output {
        Output::Unit => ident.span(),
        Output::Value(ty) | Output::Result { ok: ty, .. } => ty.span(),
    };
    let args_span = ep.params.first().map_or(ident.span(), |p| p.ty.span());
    let args = quote_spanned!(args_span=> (#(#ids,)*));
    let owned = quote_spanned!(args_span=> (#(#owned,)*));
    let infer = quote_spanned!(args_span=> _);
    // The wire type of the result, and how to unwrap it.
    let (wire, unwrap) = if returns_bytes(&ep.output) {
        (
            quote_spanned!(ret_span=> ::metabridge::Bin<#ret>),
            quote!(.map(|b| b.0)),
        )
    } else {
        (quote_spanned!(ret_span=> #ret), TokenStream::new())
    };
    // An endpoint whose return type names its error type `E` answers
    // `Result<T, Failure<E>>`: its error decoded as an `E` when `E` is
    // `Deserialize` (chosen where `E` is known, see `ErrorDecoder`).
    let (result, call, call_async) = match &ep.output {
        Output::Result { err: Some(err), .. } => {
            let err = owned_type(err);
            let decoder = quote_spanned! {err.span()=> {
                #[allow(unused_imports)]
                use ::metabridge::__private::{DecodesError as _, NoErrorDecoder as _};
                (&::metabridge::__private::ErrorDecoder::<#err>::new()).decoder()
            }};
            (
                quote!(::core::result::Result<#ret, ::metabridge::Failure<#err>>),
                quote_spanned!(ret_span=> self.client.call_fallible_with::<#wire, #err>(#name, #args, #decoder) #unwrap),
                quote_spanned!(ret_span=> self.client.call_fallible_async::<#wire, #err, #infer>(#name, #owned, #decoder).await #unwrap),
            )
        }
        _ => (
            quote!(::metabridge::Result<#ret>),
            quote_spanned!(ret_span=> self.client.call::<#wire>(#name, #args) #unwrap),
            quote_spanned!(ret_span=> self.client.call_async::<#wire, #infer>(#name, #owned).await #unwrap),
        ),
    };
    quote! {
        #sync_doc
        pub fn #ident(&self #(, #params)*) -> #result {
            #call
        }

        #async_doc
        pub async fn #async_ident(&self #(, #params)*) -> #result {
            #call_async
        }
    }
}

/// The generated `<Type>Client` struct and its impl.
pub fn client(def: &ServiceDef) -> TokenStream {
    match client_inner(def) {
        Ok(tokens) => tokens,
        Err(e) => e.to_compile_error(),
    }
}

fn client_inner(def: &ServiceDef) -> syn::Result<TokenStream> {
    let service = &def.args.name;
    let client = format_ident!("{}Client", def.type_ident, span = def.type_ident.span());

    let mut errors = Errors::default();
    let mut used: Vec<String> = RESERVED.iter().map(|s| s.to_string()).collect();
    let mut all_methods = Vec::new();
    for ep in &def.endpoints {
        for (ident, lit) in method_names(ep) {
            let plain = ident.unraw().to_string();
            let twin = format!("{plain}_async");
            if let Some(taken) = [&plain, &twin].into_iter().find(|n| used.contains(n)) {
                let why = if RESERVED.contains(&taken.as_str()) {
                    format!("`{client}::{taken}` is a method every generated client has")
                } else {
                    format!("another endpoint already gives `{client}` a method `{taken}`")
                };
                errors.push(syn::Error::new(
                    lit.span(),
                    format!(
                        "endpoint `{}` cannot get a client method: {why}; rename it",
                        lit.value()
                    ),
                ));
                continue;
            }
            used.push(plain);
            used.push(twin);
            all_methods.push(methods(ep, &ident, service));
        }
    }
    errors.finish(())?;

    let (connect_params, kwargs, connect_args): (Vec<_>, Vec<_>, Vec<_>) = match &def.ctor {
        Constructor::New { params, .. } => (
            params
                .iter()
                .map(|p| {
                    let (id, ty) = (&p.ident, param_type(&p.ty));
                    quote!(#id: #ty)
                })
                .collect(),
            params
                .iter()
                .map(|p| {
                    let (value, name) = (arg(p), p.wire_name());
                    quote!(.kwarg(#name, #value))
                })
                .collect(),
            params.iter().map(|p| p.ident.clone()).collect(),
        ),
        Constructor::Default => (Vec::new(), Vec::new(), Vec::new()),
    };
    let struct_doc = format!(
        "Typed client of the `{}` service (generated by `#[metabridge::service]`).",
        service.value()
    );
    let connect_doc = if connect_params.is_empty() {
        format!(
            "Connects to `{}` and has its (shared) instance built: a constructor that fails \
             fails here.",
            service.value()
        )
    } else {
        format!(
            "Connects to `{}`, giving the constructor's arguments (sent by name), and has the \
             instance of these arguments built: a constructor that fails fails here.",
            service.value()
        )
    };
    let field = Ident::new("client", Span::call_site());
    Ok(quote! {
        #[doc = #struct_doc]
        #[derive(Clone)]
        #[allow(dead_code)]
        pub struct #client {
            #field: ::metabridge::Client,
        }

        #[allow(
            dead_code,
            clippy::too_many_arguments,
            clippy::missing_errors_doc,
            clippy::must_use_candidate
        )]
        impl #client {
            #[doc = #connect_doc]
            pub fn connect(#(#connect_params),*) -> ::metabridge::Result<Self> {
                Self::builder(#(#connect_args),*).connect()
            }

            /// The same connection with options first (`.timeout(..)`, `.transport(..)`,
            /// `.at(..)`, ...), then `.connect()`.
            pub fn builder(#(#connect_params),*) -> ::metabridge::TypedConnect<Self> {
                ::metabridge::TypedConnect::new(
                    ::metabridge::connect(#service) #(#kwargs)*,
                    Self::from_client,
                )
            }

            /// Wraps a connection opened with `metabridge::connect`.
            pub fn from_client(client: ::metabridge::Client) -> Self {
                Self { #field: client }
            }

            /// The untyped connection, e.g. for `call` with a name chosen at run time.
            pub fn client(&self) -> &::metabridge::Client {
                &self.#field
            }

            /// The same connection, each call of the handle returned allowed
            /// `timeout` in place of the client's (see `metabridge::Client::with_timeout`).
            pub fn with_timeout(&self, timeout: ::std::time::Duration) -> Self {
                Self { #field: self.#field.with_timeout(timeout) }
            }

            /// Closes the connection.
            pub fn close(self) {
                self.#field.close()
            }

            #(#all_methods)*
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_service;
    use syn::parse_quote;

    fn client_of(imp: syn::ItemImpl) -> String {
        let mut imp = imp;
        let def = parse_service(quote!(name = "demo-service"), &mut imp).unwrap();
        client(&def).to_string().split_whitespace().collect()
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect()
    }

    #[test]
    fn demo_client() {
        let out = client_of(parse_quote! {
            impl DemoService {
                pub fn new(argumento: String, n: u32) -> Self { Self { argumento, n } }
                #[metabridge::endpoint("teste")]
                pub fn home(&self) -> String { String::new() }
                #[metabridge::function]
                pub fn get(&self, outro_argumento: String) -> String { outro_argumento }
                #[metabridge::function]
                pub async fn soma(&self, a: i64, b: i64) -> String { (a + b).to_string() }
                #[metabridge::function]
                pub fn parse(&self, s: String) -> Result<i64, std::num::ParseIntError> { s.parse() }
                #[function]
                pub fn ping(&self) {}
                #[function]
                pub fn name(&self) -> &str { unreachable!("test input: parsed, never compiled") }
                #[endpoint("with-dash")]
                pub fn dashed(&self) -> Vec<u8> { unreachable!("test input: parsed, never compiled") }
            }
        });
        for want in [
            "pub struct DemoServiceClient { client : :: metabridge :: Client , }",
            "pub fn connect (argumento : & str , n : u32) -> :: metabridge :: Result < Self > { Self :: builder (argumento , n) . connect () }",
            "pub fn builder (argumento : & str , n : u32) -> :: metabridge :: TypedConnect < Self > { :: metabridge :: TypedConnect :: new (:: metabridge :: connect (\"demo-service\") . kwarg (\"argumento\" , argumento) . kwarg (\"n\" , n) , Self :: from_client ,) }",
            "pub fn teste (& self) -> :: metabridge :: Result < String > { self . client . call :: < String > (\"teste\" , ()) }",
            "pub fn home (& self) -> :: metabridge :: Result < String > { self . client . call :: < String > (\"teste\" , ()) }",
            "pub async fn home_async (& self) -> :: metabridge :: Result < String > { self . client . call_async :: < String , _ > (\"teste\" , ()) . await }",
            "pub fn get (& self , outro_argumento : & str) -> :: metabridge :: Result < String > { self . client . call :: < String > (\"get\" , (outro_argumento ,)) }",
            "pub async fn get_async (& self , outro_argumento : & str) -> :: metabridge :: Result < String > { self . client . call_async :: < String , _ > (\"get\" , (:: std :: borrow :: ToOwned :: to_owned (outro_argumento) ,)) . await }",
            "pub fn soma (& self , a : i64 , b : i64) -> :: metabridge :: Result < String > { self . client . call :: < String > (\"soma\" , (a , b ,)) }",
            // An endpoint that names its error type: the error comes back as that type.
            "pub fn parse (& self , s : & str) -> :: core :: result :: Result < i64 , :: metabridge :: Failure < std :: num :: ParseIntError > > { self . client . call_fallible_with :: < i64 , std :: num :: ParseIntError > (\"parse\" , (s ,) ,",
            "pub fn ping (& self) -> :: metabridge :: Result < () >",
            "pub fn name (& self) -> :: metabridge :: Result < :: std :: string :: String >",
            "pub fn dashed (& self) -> :: metabridge :: Result < Vec < u8 > > { self . client . call :: < :: metabridge :: Bin < Vec < u8 > > > (\"with-dash\" , ()) . map (| b | b . 0) }",
        ] {
            assert!(out.contains(&squash(want)), "missing {want}\nin {out}");
        }
        assert!(!out.contains("with_dash"), "{out}");
    }

    #[test]
    fn no_constructor() {
        let out = client_of(parse_quote!(impl X {}));
        assert!(
            out.contains(&squash("pub fn connect () -> :: metabridge :: Result < Self > { Self :: builder () . connect () }"))
                && out.contains(&squash("pub fn builder () -> :: metabridge :: TypedConnect < Self > { :: metabridge :: TypedConnect :: new (:: metabridge :: connect (\"demo-service\") , Self :: from_client ,) }")),
            "{out}"
        );
    }

    #[test]
    fn client_name_clashes() {
        for imp in [
            parse_quote!(impl X { #[function] fn close(&self) {} }),
            parse_quote!(impl X { #[endpoint("connect")] fn a(&self) {} }),
            parse_quote!(impl X { #[function] fn a(&self) {} #[function] fn a_async(&self) {} }),
        ] {
            let out = client_of(imp);
            assert!(out.contains("compile_error"), "{out}");
            assert!(out.contains("cannotgetaclientmethod"), "{out}");
        }
    }

    #[test]
    fn owned_types() {
        let t = |ty: Type| {
            let o = owned_type(&ty);
            quote!(#o).to_string()
        };
        assert_eq!(t(parse_quote!(&str)), ":: std :: string :: String");
        assert_eq!(t(parse_quote!(&[u8])), ":: std :: vec :: Vec < u8 >");
        assert_eq!(t(parse_quote!(&Foo)), "Foo");
        assert_eq!(t(parse_quote!(Foo)), "Foo");
    }
}
