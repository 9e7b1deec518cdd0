//! Support of the code `#[metabridge::service]` generates (reached as
//! `metabridge::__private`); not an API.

pub use crate::args::Bin;
use crate::{Args, CallError};

/// How the macro builds a service without `fn new`: `Default`, with a
/// message that says what to add when there is none.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no constructor for `#[metabridge::service]`",
    label = "add `pub fn new(..) -> Self` to the `#[metabridge::service]` impl block, or implement `Default` for `{Self}`"
)]
pub trait DefaultConstructor: Sized {
    /// `Default::default()`.
    fn construct() -> Self;
}

impl<T: Default> DefaultConstructor for T {
    fn construct() -> Self {
        T::default()
    }
}

/// A type an endpoint or constructor parameter can have: one that
/// deserializes, with a message that says so when it does not.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a `#[metabridge::service]`: arguments are deserialized from MessagePack",
    label = "`{Self}` does not implement `serde::Deserialize`",
    note = "derive it: `#[derive(serde::Deserialize)]` on `{Self}` (with serde's `derive` feature), or take a type that implements it"
)]
pub trait Param: Sized {
    /// Binds the next parameter, named `name`.
    fn next(args: &mut Args<'_>, name: &str) -> Result<Self, CallError>;
}

impl<T: serde::de::DeserializeOwned> Param for T {
    #[inline]
    fn next(args: &mut Args<'_>, name: &str) -> Result<Self, CallError> {
        args.next(name)
    }
}

/// Asks the service to build the instance of `client`'s constructor
/// arguments now, so that a failing constructor fails `connect`. A
/// service that does not know the request (the original Python one)
/// answers `NotFound`: then the first call will tell.
pub fn construct(client: &crate::Client) -> crate::Result<()> {
    match client.call::<crate::rmpv::Value>(crate::dispatch::CONSTRUCT_ENDPOINT, ()) {
        Err(crate::Error::Remote { kind, .. }) if kind == "NotFound" => Ok(()),
        other => other.map(drop),
    }
}
