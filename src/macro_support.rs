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

/// The error type of an endpoint: one that can be sent as text, with a
/// message that says so when it cannot.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of a `#[metabridge::service]` endpoint: its callers get its text",
    label = "`{Self}` does not implement `std::fmt::Display`",
    note = "implement `Display` for `{Self}` (thiserror's `#[error(..)]` does), or map the error into a type that does"
)]
pub trait EndpointError: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> EndpointError for T {}

/// Checks, at the user's error type, that it can be an endpoint's error.
pub fn require_endpoint_error<E: EndpointError + ?Sized>() {}

/// An endpoint's error on its way out: its type name, its text, and its
/// value as data when its type is `Serialize` (see [`ErrorData`]).
pub fn endpoint_error<E: EndpointError>(e: &E, data: Option<Vec<u8>>) -> CallError {
    let error = CallError::from_error(e);
    match data {
        Some(data) => error.with_data(data),
        None => error,
    }
}

/// Answers with the value of `Ok`, or the error of `Err` with its data
/// (`data` is `|e| (&ErrorData(e)).data()`, written where `E` is known).
pub fn answer_result<T: serde::Serialize, E: EndpointError>(
    out: &mut crate::Reply<'_>,
    result: Result<T, E>,
    data: impl FnOnce(&E) -> Option<Vec<u8>>,
) -> Result<(), CallError> {
    match result {
        Ok(v) => out.ok(&v),
        Err(e) => Err(endpoint_error(&e, data(&e))),
    }
}

/// [`answer_result`] for an `async` endpoint: the encoded answer.
pub fn encode_answer_result<T: serde::Serialize, E: EndpointError>(
    result: Result<T, E>,
    data: impl FnOnce(&E) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, CallError> {
    match result {
        Ok(v) => crate::Reply::encode_ok(&v),
        Err(e) => Err(endpoint_error(&e, data(&e))),
    }
}

/// An endpoint's error, for choosing how to send it: `(&ErrorData(&e)).data()`
/// is its MessagePack encoding when its type is `Serialize`
/// ([`EncodesErrorData`]), else `None` ([`NoErrorData`]). The choice is made
/// by method resolution where the type is known (autoref specialization:
/// the `Serialize` impl is on `ErrorData`, the fallback on `&ErrorData`).
pub struct ErrorData<'a, E>(pub &'a E);

/// The `Serialize` case of [`ErrorData`].
pub trait EncodesErrorData {
    /// The error value, encoded.
    fn data(&self) -> Option<Vec<u8>>;
}

impl<E: serde::Serialize> EncodesErrorData for ErrorData<'_, E> {
    fn data(&self) -> Option<Vec<u8>> {
        crate::args::to_msgpack(self.0).ok()
    }
}

/// The fallback of [`ErrorData`]: no data.
pub trait NoErrorData {
    /// `None`.
    fn data(&self) -> Option<Vec<u8>>;
}

impl<E> NoErrorData for &ErrorData<'_, E> {
    fn data(&self) -> Option<Vec<u8>> {
        None
    }
}

/// How a typed client decodes an endpoint's error type `E` from the data
/// of a remote error: `(&ErrorDecoder::<E>::new()).decoder()` decodes when
/// `E` is `Deserialize` ([`DecodesError`]), else never ([`NoErrorDecoder`]),
/// chosen as for [`ErrorData`].
pub struct ErrorDecoder<E>(std::marker::PhantomData<fn() -> E>);

impl<E> ErrorDecoder<E> {
    /// The chooser.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ErrorDecoder(std::marker::PhantomData)
    }
}

/// The `Deserialize` case of [`ErrorDecoder`].
pub trait DecodesError<E> {
    /// A decoder of the error's data.
    fn decoder(&self) -> fn(&[u8]) -> Option<E>;
}

impl<E: serde::de::DeserializeOwned> DecodesError<E> for ErrorDecoder<E> {
    fn decoder(&self) -> fn(&[u8]) -> Option<E> {
        |data| rmp_serde::from_slice(data).ok()
    }
}

/// The fallback of [`ErrorDecoder`]: the error stays a remote error.
pub trait NoErrorDecoder<E> {
    /// A decoder that never decodes.
    fn decoder(&self) -> fn(&[u8]) -> Option<E>;
}

impl<E> NoErrorDecoder<E> for &ErrorDecoder<E> {
    fn decoder(&self) -> fn(&[u8]) -> Option<E> {
        |_| None
    }
}
