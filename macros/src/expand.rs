//! The server side of `#[service]`: the cleaned impl block plus `service()`, `run()`
//! and `serve()`, which describe the service through the core crate's builder API.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemImpl};

use crate::client;
use crate::parse::{self, Constructor, Endpoint, Output, Param, ServiceDef};

/// Expands `#[metabridge::service(attr)] item`.
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(e) => {
            let e = e.to_compile_error();
            return quote!(#e #item);
        }
    };
    let mut imp = match item {
        Item::Impl(imp) if imp.trait_.is_none() => imp,
        other => {
            let e = syn::Error::new_spanned(
                parse::item_head(&other),
                "`#[metabridge::service]` must be on an inherent impl block: `impl MyService { .. }`",
            )
            .to_compile_error();
            return quote!(#e #other);
        }
    };
    match parse::parse_service(attr, &mut imp) {
        Ok(def) => {
            let server = server(&def, &imp);
            let client = client::client(&def);
            quote!(#imp #server #client)
        }
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#imp #e)
        }
    }
}

/// Hygienic names of the closures' parameters: they cannot clash with the user's.
pub struct Locals {
    /// The service value.
    pub s: Ident,
    /// The `Args` reader.
    pub args: Ident,
    /// The `Reply` writer.
    pub out: Ident,
}

impl Locals {
    fn new() -> Self {
        let id = |n: &str| Ident::new(n, Span::mixed_site());
        Locals {
            s: id("__s"),
            args: id("__args"),
            out: id("__out"),
        }
    }
}

/// `let p: T = <T as Param>::next(__args, "p")?;` for each parameter
/// (`__args.next_bytes::<T>("p")`, for bytes; `__args.next_optional::<T>("p")` for an
/// `Option<T>`, `None` when left out), then `__args.finish(&[..])?;`. An error
/// goes through `__args.explain(e, &[..])`, which names a misspelt keyword argument: on
/// the error path only.
///
/// The binding is spanned at the parameter's type, so that a type that does not
/// deserialize is reported there, with the message of `metabridge::__private::Param`.
fn read_args(params: &[Param], args: &Ident) -> TokenStream {
    let names: Vec<_> = params.iter().map(Param::wire_name).collect();
    let lets = params.iter().map(|p| {
        let (id, ty, name) = (&p.ident, &p.ty, p.wire_name());
        let next = if parse::is_bytes(ty) {
            quote_spanned!(ty.span()=> #args.next_bytes::<#ty>(#name))
        } else if let Some(inner) = parse::option_inner(ty) {
            // Left out by the caller: None.
            quote_spanned!(ty.span()=> #args.next_optional::<#inner>(#name))
        } else {
            quote_spanned!(ty.span()=> <#ty as ::metabridge::__private::Param>::next(#args, #name))
        };
        quote! {
            let #id: #ty = match #next {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => {
                    return ::core::result::Result::Err(#args.explain(e, &[#(#names),*]));
                }
            };
        }
    });
    quote! {
        #(#lets)*
        #args.finish(&[#(#names),*])?;
    }
}

/// `require_endpoint_error::<E>();` spanned at the user's error type, so that an error
/// type without `Display` is reported there, with the message of
/// `metabridge::__private::EndpointError`.
fn require_error(err: Option<&syn::Type>) -> TokenStream {
    match err {
        Some(e) => {
            quote_spanned!(e.span()=> ::metabridge::__private::require_endpoint_error::<#e>();)
        }
        None => TokenStream::new(),
    }
}

/// The value an endpoint answers with: `&value`, or `&Bin(&value)` for bytes (and for
/// a `Result`, the result with its `Ok` wrapped).
fn answer(ty: &syn::Type, value: &Ident, result: bool, span: Span) -> TokenStream {
    match (parse::is_bytes(ty), result) {
        (false, false) => quote_spanned!(span=> &#value),
        (false, true) => quote_spanned!(span=> #value),
        (true, false) => quote_spanned!(span=> &::metabridge::Bin(&#value)),
        (true, true) => quote_spanned!(span=> #value.map(::metabridge::Bin)),
    }
}

/// `.constructor_params(&[..]).constructor(|__args| ..)`.
fn constructor(def: &ServiceDef, ty: &syn::Type, l: &Locals) -> TokenStream {
    let args = &l.args;
    let (read, value, names) = match &def.ctor {
        Constructor::New { params, ident } => {
            let ids = params.iter().map(|p| &p.ident);
            (
                read_args(params, args),
                quote!(#ty::#ident(#(#ids),*)),
                params.iter().map(Param::wire_name).collect(),
            )
        }
        // Spanned at the type: a type without `Default` is told to add `new`.
        Constructor::Default => (
            read_args(&[], args),
            quote_spanned!(ty.span()=> <#ty as ::metabridge::__private::DefaultConstructor>::construct()),
            Vec::new(),
        ),
    };
    quote! {
        .constructor_params(&[#(#names),*])
        .constructor(|#args: &mut ::metabridge::Args<'_>| {
            #read
            ::core::result::Result::Ok(#value)
        })
    }
}

/// `ident` with mixed-site hygiene, but reported at `span` in error messages.
fn located(ident: &Ident, span: Span) -> Ident {
    Ident::new(&ident.to_string(), Span::mixed_site().located_at(span))
}

/// `.endpoint(..)` or `.endpoint_async(..)`, then `.alias(..)` if any.
///
/// The call and the encoding of its value are spanned at the method's return type, so
/// that a return type that is not `Serialize` (or an error type that is not `Display`)
/// is reported there.
fn endpoint(ep: &Endpoint, ty: &syn::Type, l: &Locals) -> TokenStream {
    let Locals { s, args, out } = l;
    let (method, name) = (&ep.method, &ep.name);
    let read = read_args(&ep.params, args);
    let ids = ep.params.iter().map(|p| &p.ident);
    let span = match &ep.output {
        Output::Unit => method.span(),
        Output::Value(rt) => rt.span(),
        Output::Result { span, .. } => *span,
    };
    let (s_at, out_at) = (located(s, span), located(out, span));
    // A call-site-hygiene local, so that the argument expressions below lie entirely in
    // the user's context and rustc reports a missing `Serialize`/`Display` at `span`.
    // (It cannot capture anything: it is bound after the call that uses the parameters.)
    let value = Ident::new("__metabridge_value", span);
    let call = quote_spanned!(span=> #s_at.#method(#(#ids),*));
    let registration = match ep.asyncness {
        None => {
            let reply = match &ep.output {
                Output::Unit => quote_spanned!(span=> #call; ::metabridge::Reply::ok(#out_at, &())),
                Output::Value(rt) => {
                    let answer = answer(rt, &value, false, span);
                    quote_spanned! {span=>
                        let #value = #call;
                        ::metabridge::Reply::ok(#out_at, #answer)
                    }
                }
                Output::Result { ok, err, .. } => {
                    let answer = answer(ok, &value, true, span);
                    let check = require_error(err.as_deref());
                    quote_spanned! {span=>
                        #check
                        let #value = #call;
                        ::metabridge::__private::answer_result(#out_at, #answer, |e| {
                            #[allow(unused_imports)]
                            use ::metabridge::__private::{EncodesErrorData as _, NoErrorData as _};
                            (&::metabridge::__private::ErrorData(e)).data()
                        })
                    }
                }
            };
            quote! {
                .endpoint(#name, |#s: &#ty, #args: &mut ::metabridge::Args<'_>, #out: &mut ::metabridge::Reply<'_>| {
                    #read
                    #reply
                })
            }
        }
        Some(async_span) => {
            let reply = match &ep.output {
                Output::Unit => {
                    quote_spanned!(span=> #call.await; ::metabridge::Reply::encode_ok(&()))
                }
                Output::Value(rt) => {
                    let answer = answer(rt, &value, false, span);
                    quote_spanned! {span=>
                        let #value = #call.await;
                        ::metabridge::Reply::encode_ok(#answer)
                    }
                }
                Output::Result { ok, err, .. } => {
                    let answer = answer(ok, &value, true, span);
                    let check = require_error(err.as_deref());
                    quote_spanned! {span=>
                        #check
                        let #value = #call.await;
                        ::metabridge::__private::encode_answer_result(#answer, |e| {
                            #[allow(unused_imports)]
                            use ::metabridge::__private::{EncodesErrorData as _, NoErrorData as _};
                            (&::metabridge::__private::ErrorData(e)).data()
                        })
                    }
                }
            };
            let fut = quote_spanned! {async_span=>
                ::std::boxed::Box::pin(async move { #reply }) as ::metabridge::EndpointFuture
            };
            quote! {
                .endpoint_async(#name, |#s: ::std::sync::Arc<#ty>, #args: &mut ::metabridge::Args<'_>| {
                    #read
                    ::core::result::Result::Ok(#fut)
                })
            }
        }
    };
    // Parameter names, for tools (`metabridge endpoints`); before the
    // alias, which copies them.
    let wire_names = ep.params.iter().map(Param::wire_name);
    let params = quote!(.params(#name, &[#(#wire_names),*]));
    let alias = ep.alias.as_ref().map(|alias| quote!(.alias(#alias, #name)));
    let idempotent = ep.idempotent.then(|| {
        let alias = ep.alias.as_ref().map(|alias| quote!(.idempotent(#alias)));
        quote!(.idempotent(#name) #alias)
    });
    quote!(#registration #params #alias #idempotent)
}

/// The generated `impl Type { fn service(); fn run(); fn serve() }`.
fn server(def: &ServiceDef, imp: &ItemImpl) -> TokenStream {
    let ty = &imp.self_ty;
    let l = Locals::new();
    let name = &def.args.name;
    let host = def.args.host.as_ref().map(|h| quote!(.host(#h)));
    let port = def.args.port.as_ref().map(|p| quote!(.port(#p)));
    let logger = def.args.logger.as_ref().map(|b| quote!(.logger(#b)));
    let tls = def.args.tls.as_ref().map(|t| {
        let (cert, key) = (&t.cert, &t.key);
        let client_ca = match &t.client_ca {
            Some(ca) => quote!(::core::option::Option::Some(::std::path::PathBuf::from(#ca))),
            None => quote!(::core::option::Option::None),
        };
        quote!(.tls(::metabridge::TlsFiles {
            cert: ::std::path::PathBuf::from(#cert),
            key: ::std::path::PathBuf::from(#key),
            client_ca: #client_ca,
        }))
    });
    // The mesh crate is the user's dependency, not ours: without it the
    // path below fails to resolve, at the attribute.
    let mesh = def.args.mesh.as_ref().map(|m| {
        quote_spanned!(m.span()=> .announce(::metabridge_mesh::MeshAnnouncer::from_setting(#m)))
    });
    let ctor = constructor(def, ty, &l);
    let endpoints = def.endpoints.iter().map(|ep| endpoint(ep, ty, &l));
    let service_doc = format!(
        "The MetaBridge definition of the `{}` service (generated by `#[metabridge::service]`).",
        name.value()
    );
    quote! {
        #[allow(dead_code, clippy::self_named_constructors, clippy::missing_errors_doc)]
        impl #ty {
            #[doc = #service_doc]
            pub fn service() -> ::metabridge::Service<#ty> {
                ::metabridge::Service::<#ty>::new(#name)
                    #host
                    #port
                    #logger
                    #tls
                    #ctor
                    #(#endpoints)*
                    #mesh
            }

            /// Starts the service in a background daemon process (generated by `#[metabridge::service]`).
            pub fn run() -> ::metabridge::Result<::metabridge::DaemonHandle> {
                ::metabridge::run(Self::service())
            }

            /// Serves the service in the current process until it is stopped (generated by `#[metabridge::service]`).
            pub fn serve() -> ::metabridge::Result<()> {
                ::metabridge::serve(Self::service())
            }
        }
    }
}

/// The standalone `#[function]` / `#[endpoint]`: only valid inside a `#[service]` impl,
/// which removes them (or, for the short forms, marks them with `INSIDE_SERVICE`) before
/// they expand, so reaching here unmarked is an error.
pub fn misplaced(which: &str, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut attr = attr.into_iter();
    if let (Some(proc_macro2::TokenTree::Ident(i)), None) = (attr.next(), attr.next()) {
        if i == parse::INSIDE_SERVICE {
            return item;
        }
    }
    let msg = format!(
        "`#[metabridge::{which}]` must be on a method inside a `#[metabridge::service]` impl block"
    );
    let e = syn::Error::new(Span::call_site(), msg).to_compile_error();
    let mut out = e;
    item.to_tokens(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(attr: TokenStream, item: TokenStream) -> String {
        service(attr, item).to_string()
    }

    fn squash(s: &str) -> String {
        s.split_whitespace().collect()
    }

    #[test]
    fn demo_expansion() {
        let out = squash(&expand(
            quote!(name = "demo-service", port = 9000),
            quote! {
                impl DemoService {
                    pub fn new(argumento: String) -> Self { DemoService { argumento } }
                    #[metabridge::endpoint("teste")]
                    pub fn home(&self) -> String { unreachable!("test input: parsed, never compiled") }
                    #[metabridge::function]
                    pub fn get(&self, outro_argumento: String) -> String { unreachable!("test input: parsed, never compiled") }
                    #[metabridge::function]
                    pub async fn soma(&self, a: i64, b: i64) -> String { unreachable!("test input: parsed, never compiled") }
                    #[metabridge::function]
                    pub fn parse(&self, s: String) -> Result<i64, std::num::ParseIntError> { unreachable!("test input: parsed, never compiled") }
                    #[function]
                    pub fn ping(&self) {}
                    fn helper(&self) {}
                }
            },
        ));
        for want in [
            "::metabridge::Service::<DemoService>::new(\"demo-service\").port(9000).constructor_params(&[\"argumento\"]).constructor(",
            "let argumento : String = match <String as ::metabridge::__private::Param>::next(__args, \"argumento\") { ::core::result::Result::Ok(v) => v, ::core::result::Result::Err(e) => { return ::core::result::Result::Err(__args.explain(e, &[\"argumento\"])); } };",
            "__args.finish(&[\"argumento\"])?;::core::result::Result::Ok(DemoService::new(argumento))",
            ".endpoint(\"teste\",|__s:&DemoService,__args:&mut::metabridge::Args<'_>,__out:&mut::metabridge::Reply<'_>|{__args.finish(&[])?;let __metabridge_value=__s.home();::metabridge::Reply::ok(__out,&__metabridge_value)}).params(\"teste\",&[]).alias(\"home\",\"teste\")",
            "let __metabridge_value=__s.get(outro_argumento);::metabridge::Reply::ok(__out,&__metabridge_value)",
            ".endpoint_async(\"soma\",|__s:::std::sync::Arc<DemoService>,",
            "::core::result::Result::Ok(::std::boxed::Box::pin(async move{let __metabridge_value=__s.soma(a,b).await;::metabridge::Reply::encode_ok(&__metabridge_value)})as::metabridge::EndpointFuture)",
            "::metabridge::__private::require_endpoint_error::<std::num::ParseIntError>();let __metabridge_value=__s.parse(s);::metabridge::__private::answer_result(__out,__metabridge_value,|e|",
            "__s.ping();::metabridge::Reply::ok(__out,&())",
            "pubfnrun()->::metabridge::Result<::metabridge::DaemonHandle>{::metabridge::run(Self::service())}",
            "pubfnserve()->::metabridge::Result<()>{::metabridge::serve(Self::service())}",
            "fnhelper(&self){}",
        ] {
            assert!(out.contains(&squash(want)), "missing {want}\nin {out}");
        }
        assert!(!out.contains("metabridge::function"), "{out}");
        assert!(!out.contains(".host("), "{out}");
    }

    #[test]
    fn default_constructor_and_host() {
        let out = squash(&expand(
            quote!(name = "x", host = "0.0.0.0"),
            quote!(impl X { #[function] async fn a(&self) -> Result<(), E> { Ok(()) } }),
        ));
        assert!(out.contains(".host(\"0.0.0.0\")"), "{out}");
        assert!(
            out.contains(".constructor_params(&[]).constructor(|__args:&mut::metabridge::Args<'_>|{__args.finish(&[])?;::core::result::Result::Ok(<Xas::metabridge::__private::DefaultConstructor>::construct())"),
            "{out}"
        );
        assert!(
            out.contains("let__metabridge_value=__s.a().await;::metabridge::__private::encode_answer_result(__metabridge_value,|e|"),
            "{out}"
        );
    }

    #[test]
    fn bytes_travel_as_bin() {
        let out = squash(&expand(
            quote!(name = "b"),
            quote! {
                impl B {
                    #[function] fn put(&self, data: Vec<u8>, b: bytes::Bytes) -> usize { 0 }
                    #[function] fn get(&self) -> Vec<u8> { Vec::new() }
                    #[function] fn view(&self) -> &[u8] { &[] }
                    #[function] async fn fetch(&self) -> Result<Box<[u8]>, E> { Ok(Box::default()) }
                    #[function] fn list(&self, v: Vec<u16>) -> Vec<u32> { v }
                }
            },
        ));
        for want in [
            "letdata:Vec<u8>=match__args.next_bytes::<Vec<u8>>(\"data\"){",
            "letb:bytes::Bytes=match__args.next_bytes::<bytes::Bytes>(\"b\"){",
            "return::core::result::Result::Err(__args.explain(e,&[\"data\",\"b\"]));",
            "let__metabridge_value=__s.get();::metabridge::Reply::ok(__out,&::metabridge::Bin(&__metabridge_value))",
            "let__metabridge_value=__s.view();::metabridge::Reply::ok(__out,&::metabridge::Bin(&__metabridge_value))",
            "::metabridge::__private::encode_answer_result(__metabridge_value.map(::metabridge::Bin),|e|",
            "letv:Vec<u16>=match<Vec<u16>as::metabridge::__private::Param>::next(__args,\"v\"){",
            "let__metabridge_value=__s.list(v);::metabridge::Reply::ok(__out,&__metabridge_value)",
            "self.client.call::<usize>(\"put\",(::metabridge::Bin(data),::metabridge::Bin(b),))",
            "self.client.call::<::metabridge::Bin<Vec<u8>>>(\"get\",()).map(|b|b.0)",
            "self.client.call::<::metabridge::Bin<::std::vec::Vec<u8>>>(\"view\",()).map(|b|b.0)",
            "self.client.call_fallible_with::<::metabridge::Bin<Box<[u8]>>,E>(\"fetch\",(),",
            ".decoder()}).map(|b|b.0)",
        ] {
            assert!(out.contains(&squash(want)), "missing {want}\nin {out}");
        }
    }

    #[test]
    fn errors_keep_the_cleaned_item() {
        let out = expand(quote!(), quote!(impl X { #[function] fn a(&self) {} }));
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("missing service name"), "{out}");
        assert!(!out.contains("metabridge :: function"), "{out}");
        assert!(
            out.contains("# [function (__metabridge_inside_service)]"),
            "{out}"
        );
        assert!(out.contains("fn a"), "{out}");
    }

    #[test]
    fn not_an_impl() {
        let out = expand(
            quote!(name = "x"),
            quote!(
                struct X;
            ),
        );
        assert!(out.contains("must be on an inherent impl block"), "{out}");
        assert!(out.contains("struct X"), "{out}");
        let out = expand(quote!(name = "x"), quote!(impl T for X {}));
        assert!(out.contains("must be on an inherent impl block"), "{out}");
    }

    #[test]
    fn misplaced_marker() {
        let out = misplaced(
            "function",
            quote!(),
            quote!(
                fn a() {}
            ),
        )
        .to_string();
        assert!(out.contains("`#[metabridge::function]` must be on a method inside a `#[metabridge::service]` impl block"));
        assert!(out.contains("fn a"));
        let inside = misplaced(
            "endpoint",
            quote!(__metabridge_inside_service),
            quote!(
                fn a() {}
            ),
        );
        assert_eq!(
            inside.to_string(),
            quote!(
                fn a() {}
            )
            .to_string()
        );
    }
}
