//! Procedural macros of MetaBridge: `#[service]`, `#[function]` and `#[endpoint]`.
//!
//! Use them through the core crate, which re-exports them: `metabridge::service`,
//! `metabridge::function`, `metabridge::endpoint`. The expansion only calls the core
//! crate's builder API (`metabridge::Service`); it holds no runtime logic.
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod client;
mod expand;
mod parse;

/// Turns an inherent `impl` block into a MetaBridge service.
///
/// Arguments: `name = "..."` (required), `host = "..."`, `port = N` and `logger = true` (optional; see `ServiceConfig::logger`).
///
/// Inside the block:
/// - methods marked `#[metabridge::function]` are endpoints under their own name;
/// - methods marked `#[metabridge::endpoint("name")]` are endpoints under `name`, and
///   also under their own name (an alias);
/// - endpoints take `&self` (use interior mutability for state), may be `async`, take
///   parameters of deserializable types and return a serializable value or a
///   `Result<T, E>` (an `Err(e)` becomes a remote error carrying `E`'s type name and
///   `e.to_string()`);
/// - `fn new(..) -> Self` is the constructor, whose arguments clients give when they
///   connect; without one the service is built with `Default::default()`;
/// - other items are left as they are.
///
/// The macro adds `Type::service() -> metabridge::Service<Type>` (the definition),
/// `Type::run()` (start in a background daemon process) and `Type::serve()` (serve in
/// this process), and a typed client `TypeClient` with `connect(<new's arguments>)` and,
/// for each endpoint name that is a Rust identifier, a blocking method and an
/// `<name>_async` twin. In the client, `String` parameters are taken as `&str`, bytes
/// parameters (`Vec<u8>`, `Bytes`, `Box<[u8]>`) as `&[u8]`, and `Result<T, E>` returns
/// become `metabridge::Result<T>`.
///
/// # Example
///
/// ```ignore
/// pub struct DemoService {
///     greeting: String,
/// }
///
/// #[metabridge::service(name = "demo-service")]
/// impl DemoService {
///     pub fn new(greeting: String) -> Self {
///         DemoService { greeting }
///     }
///
///     /// Exposed as "hello" and as "home".
///     #[metabridge::endpoint("hello")]
///     pub fn home(&self) -> String {
///         self.greeting.clone()
///     }
///
///     #[metabridge::function]
///     pub async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///
///     #[metabridge::function]
///     pub fn parse(&self, s: String) -> Result<i64, std::num::ParseIntError> {
///         s.parse()
///     }
/// }
///
/// fn main() -> metabridge::Result<()> {
///     let daemon = DemoService::run()?;
///     let client = DemoServiceClient::connect("hi")?;
///     assert_eq!(client.hello()?, "hi");
///     assert_eq!(client.add(2, 3)?, 5);
///     assert!(client.parse("x").is_err());
///     client.close();
///     drop(daemon);
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::service(attr.into(), item.into()).into()
}

/// Marks a method of a `#[metabridge::service]` impl block as an endpoint exposed
/// under the method's own name.
///
/// It is read and removed by `#[metabridge::service]`; anywhere else it is an error.
///
/// ```ignore
/// #[metabridge::service(name = "counter")]
/// impl Counter {
///     #[metabridge::function]
///     pub fn get(&self) -> u64 {
///         self.value.load(std::sync::atomic::Ordering::Relaxed)
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn function(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::misplaced("function", attr.into(), item.into()).into()
}

/// Marks a method of a `#[metabridge::service]` impl block as an endpoint exposed
/// under the given name, and also under the method's own name.
///
/// It is read and removed by `#[metabridge::service]`; anywhere else it is an error.
///
/// ```ignore
/// #[metabridge::service(name = "counter")]
/// impl Counter {
///     /// Callable as "current" and as "get".
///     #[metabridge::endpoint("current")]
///     pub fn get(&self) -> u64 {
///         self.value.load(std::sync::atomic::Ordering::Relaxed)
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn endpoint(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::misplaced("endpoint", attr.into(), item.into()).into()
}
