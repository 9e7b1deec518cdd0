//! Support of the code `#[metabridge::service]` generates (reached as
//! `metabridge::__private`); not an API.

pub use crate::args::Bin;
use crate::{Args, CallError};

/// For the Python package's own MessagePack codec: copies large `bytes`
/// into the payload pool lent to this thread (a shared-memory reply being
/// encoded), returning the 16-byte location to write as a `fixext 16` of
/// type [`OUT_OF_LINE_EXT`]; `None`: write them as bin.
pub fn place_out_of_line(bytes: &[u8]) -> Option<[u8; 16]> {
    crate::out_of_line::place(bytes)
}

/// The ext type of an out-of-line byte string.
pub const OUT_OF_LINE_EXT: i8 = crate::out_of_line::EXT_TYPE;

/// Byte strings at least this long go out of line (when a pool is lent).
pub const OUT_OF_LINE_THRESHOLD: usize = crate::out_of_line::THRESHOLD;

/// Whether the encoded value `raw` holds out-of-line byte strings of a
/// pool lent to this thread (then decode it now, not after the call).
pub fn holds_out_of_line(raw: &[u8]) -> bool {
    crate::out_of_line::holds(raw)
}

/// For the Python package's codec: the length of the out-of-line byte
/// string an ext value of type `tag` with payload `data` stands for,
/// checked against the pool lent to this thread (inside it, at most the
/// channel's `max_message`), so that the caller may allocate it.
pub fn out_of_line_len(tag: i8, data: &[u8]) -> Result<u64, String> {
    crate::out_of_line::checked_len(tag, data)
}

/// Copies the out-of-line byte string of `data` (an ext value of type
/// `tag`) into `dst`, whose length [`out_of_line_len`] gave.
pub fn read_out_of_line(tag: i8, data: &[u8], dst: &mut [u8]) -> Result<(), String> {
    crate::out_of_line::read_into(tag, data, dst)
}

/// For the Python package's codec: the out-of-line byte string of `data`
/// (an ext value of type `tag`) as a [`Blob`](crate::Blob), read in place
/// from the pool lent to this thread when it can be held, else copied.
pub fn lend_out_of_line(tag: i8, data: &[u8]) -> Result<crate::Blob, String> {
    crate::out_of_line::resolve_lent(tag, data)
}

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
