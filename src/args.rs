//! Arguments: binding a request's positional and keyword arguments to an
//! endpoint's parameters (server side), and encoding them (client side).

use crate::error::{CallError, Error, Result};
use crate::msgpack::{array_header, map_header, read_str, split_value};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The arguments of one call, bound parameter by parameter.
///
/// Generated code calls [`next`](Args::next) once per parameter, in order,
/// then [`finish`](Args::finish). A parameter takes the next positional
/// argument if one is left, else the keyword argument of its name, as
/// Python binds them. Every mismatch is a `TypeError` naming the endpoint
/// and the parameter; nothing panics.
///
/// ```
/// use metabridge::Args;
/// // get("mundo!") as the client sends it: args ["mundo!"], kwargs {}
/// let args = [0x91, 0xa6, b'm', b'u', b'n', b'd', b'o', b'!'];
/// let mut a = Args::new("get", &args, &[0x80]).unwrap();
/// let word: String = a.next("outro_argumento").unwrap();
/// a.finish(&["outro_argumento"]).unwrap();
/// assert_eq!(word, "mundo!");
/// ```
pub struct Args<'a> {
    endpoint: &'a str,
    positional: &'a [u8],
    positional_left: u32,
    given: u32,
    kwargs: &'a [u8],
    kwargs_count: u32,
    kwargs_used: u32,
}

impl<'a> Args<'a> {
    /// Wraps a raw array of positional and a raw map of keyword arguments.
    #[inline]
    pub fn new(endpoint: &'a str, args: &'a [u8], kwargs: &'a [u8]) -> Result<Args<'a>, CallError> {
        let (given, positional) = array_header(args)
            .ok_or_else(|| CallError::new("ProtocolError", "args must be an array"))?;
        let (kwargs_count, kwargs) = map_header(kwargs)
            .ok_or_else(|| CallError::new("ProtocolError", "kwargs must be a map"))?;
        Ok(Args {
            endpoint,
            positional,
            positional_left: given,
            given,
            kwargs,
            kwargs_count,
            kwargs_used: 0,
        })
    }

    /// Takes every argument left, unbound, for a host that binds them
    /// itself (the Python package calls `f(*args, **kwargs)`): the number
    /// of positional arguments left and their concatenated MessagePack
    /// values, then the number of keyword arguments and their
    /// concatenated key/value pairs. Afterwards nothing is left to bind.
    ///
    /// ```
    /// use metabridge::Args;
    /// let mut a = Args::new("f", &[0x92, 1, 2], &[0x80]).unwrap();
    /// assert_eq!(a.take_raw(), (2, &[1u8, 2][..], 0, &[][..]));
    /// ```
    pub fn take_raw(&mut self) -> (u32, &'a [u8], u32, &'a [u8]) {
        let taken = (
            self.positional_left,
            self.positional,
            self.kwargs_count,
            self.kwargs,
        );
        self.positional_left = 0;
        self.positional = &[];
        self.kwargs_used = self.kwargs_count;
        taken
    }

    /// The error to report for `error`, an error of [`next`](Args::next),
    /// given the names of all the parameters: more positional arguments
    /// than parameters, or a keyword argument that names none of them (or
    /// one given twice), is reported first (`takes 1 positional argument
    /// but 2 were given`, `got an unexpected keyword argument 'nmae'`), as
    /// Python does, rather than the parameter it failed to fill. Generated code calls it
    /// on the error path only, so binding costs nothing more.
    ///
    /// ```
    /// use metabridge::{Args, CallArgs};
    /// let a = CallArgs::new().kwarg("nmae", "x").unwrap();
    /// let (args, kwargs) = (a.encoded_args(), a.encoded_kwargs());
    /// let mut bound = Args::new("greet", &args, &kwargs).unwrap();
    /// let e = bound.next::<String>("name").unwrap_err();
    /// let e = bound.explain(e, &["name"]);
    /// assert_eq!(e.message, "greet() got an unexpected keyword argument 'nmae'");
    /// ```
    pub fn explain(&self, error: CallError, params: &[&str]) -> CallError {
        if self.given as usize > params.len() {
            return self.too_many_positional(params);
        }
        if self.kwargs_count == 0 {
            return error;
        }
        self.stray_kwarg(params).unwrap_or(error)
    }

    /// `f() takes 1 positional argument but 2 were given`, as Python says.
    fn too_many_positional(&self, params: &[&str]) -> CallError {
        CallError::type_error(format!(
            "{}() takes {} positional argument{} but {} were given",
            self.endpoint,
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            self.given
        ))
    }

    /// The first keyword argument that names no parameter in `params`, if
    /// any (and the first repeated one otherwise).
    fn stray_kwarg(&self, params: &[&str]) -> Option<CallError> {
        let mut rest = self.kwargs;
        let mut seen: Vec<&str> = Vec::new();
        for _ in 0..self.kwargs_count {
            let (key, after) = read_str(rest)?;
            if !params.contains(&key) {
                return Some(CallError::type_error(format!(
                    "{}() got an unexpected keyword argument '{key}'",
                    self.endpoint
                )));
            }
            if seen.contains(&key) {
                return Some(CallError::type_error(format!(
                    "{}() got multiple values for keyword argument '{key}'",
                    self.endpoint
                )));
            }
            seen.push(key);
            rest = split_value(after).ok()?.1;
        }
        None
    }

    fn find_kwarg(&self, name: &str) -> Result<Option<&'a [u8]>, CallError> {
        let mut rest = self.kwargs;
        for _ in 0..self.kwargs_count {
            let (key, after) = read_str(rest).ok_or_else(|| {
                CallError::type_error(format!(
                    "{}(): keyword names must be strings",
                    self.endpoint
                ))
            })?;
            let (value, after) =
                split_value(after).map_err(|e| CallError::new("ProtocolError", e.to_string()))?;
            if key == name {
                return Ok(Some(value));
            }
            rest = after;
        }
        Ok(None)
    }

    /// Binds the next parameter, named `param`, as a `T`.
    pub fn next<T: DeserializeOwned>(&mut self, param: &str) -> Result<T, CallError> {
        let keyword = if self.kwargs_count > 0 {
            self.find_kwarg(param)?
        } else {
            None
        };
        let raw = if self.positional_left > 0 {
            if keyword.is_some() {
                return Err(CallError::type_error(format!(
                    "{}() got multiple values for argument '{param}'",
                    self.endpoint
                )));
            }
            let (value, rest) = split_value(self.positional)
                .map_err(|e| CallError::new("ProtocolError", e.to_string()))?;
            self.positional = rest;
            self.positional_left -= 1;
            value
        } else if let Some(value) = keyword {
            self.kwargs_used += 1;
            value
        } else {
            return Err(CallError::type_error(format!(
                "{}() missing required argument '{param}'",
                self.endpoint
            )));
        };
        crate::out_of_line::decode(raw).map_err(|e| self.invalid::<T>(param, raw, e))
    }

    /// Binds the next parameter, named `param`, an optional one: `None`
    /// when the caller left it out (no positional argument left for it and
    /// no keyword argument of its name), as when it passed nil. What
    /// `#[metabridge::service]` binds an `Option<T>` parameter with.
    ///
    /// ```
    /// use metabridge::{Args, CallArgs};
    /// let a = CallArgs::new().arg(7).unwrap();
    /// let (args, kwargs) = (a.encoded_args(), a.encoded_kwargs());
    /// let mut bound = Args::new("resize", &args, &kwargs).unwrap();
    /// assert_eq!(bound.next::<u32>("side").unwrap(), 7);
    /// assert_eq!(bound.next_optional::<u32>("max_side").unwrap(), None);
    /// bound.finish(&["side", "max_side"]).unwrap();
    /// ```
    pub fn next_optional<T: DeserializeOwned>(
        &mut self,
        param: &str,
    ) -> Result<Option<T>, CallError> {
        if self.positional_left == 0
            && (self.kwargs_count == 0 || self.find_kwarg(param)?.is_none())
        {
            return Ok(None);
        }
        self.next::<Option<T>>(param)
    }

    /// Binds the next parameter, named `param`, as bytes: a MessagePack
    /// bin (what Python's `bytes` and [`Bin`] encode to) or, from older
    /// clients, an array of integers 0-255.
    pub fn next_bytes<T: From<Vec<u8>>>(&mut self, param: &str) -> Result<T, CallError> {
        self.next::<Bin<Vec<u8>>>(param)
            .map(|b| T::from(b.0))
            .map_err(|mut e| {
                e.message = e.message.replace("a Bin<Vec<u8>>", "bytes");
                e
            })
    }

    /// The error of argument `param`, whose bytes `raw` did not decode as
    /// a `T`: what was expected, what came, and the decoder's detail
    /// (rmp's "wrong msgpack marker" put in words).
    fn invalid<T>(&self, param: &str, raw: &[u8], e: rmp_serde::decode::Error) -> CallError {
        use rmp_serde::decode::Error as E;
        let detail = match e {
            E::TypeMismatch(marker) => {
                let mut found = [0u8; 1];
                found[0] = marker.to_u8();
                match raw.first() == Some(&found[0]) {
                    true => String::new(),
                    // The mismatch is inside the value (a field, an element).
                    false => format!(
                        " (inside it, {} where another type was expected)",
                        crate::msgpack::describe(&found)
                    ),
                }
            }
            other => format!(": {other}"),
        };
        CallError::type_error(format!(
            "{}(): argument '{param}' must be {}, got {}{detail}",
            self.endpoint,
            with_article(&user_type_name::<T>()),
            crate::msgpack::describe(raw),
        ))
    }

    /// The arguments as received (positional count and bytes after the
    /// array header, keyword count and bytes after the map header), for
    /// the call log.
    pub(crate) fn raw_parts(&self) -> (u32, &'a [u8], u32, &'a [u8]) {
        (
            self.positional_left,
            self.positional,
            self.kwargs_count,
            self.kwargs,
        )
    }

    /// Checks that no argument was left over. `params` are the names of
    /// all the parameters, for the message.
    pub fn finish(&self, params: &[&str]) -> Result<(), CallError> {
        if self.positional_left > 0 {
            return Err(self.too_many_positional(params));
        }
        if self.kwargs_used < self.kwargs_count {
            let mut rest = self.kwargs;
            for _ in 0..self.kwargs_count {
                let Some((key, after)) = read_str(rest) else {
                    break;
                };
                if !params.contains(&key) {
                    return Err(CallError::type_error(format!(
                        "{}() got an unexpected keyword argument '{key}'",
                        self.endpoint
                    )));
                }
                rest = split_value(after).map(|(_, r)| r).unwrap_or(&[]);
            }
            if let Some(stray) = self.stray_kwarg(params) {
                return Err(stray);
            }
            return Err(CallError::type_error(format!(
                "{}(): unexpected keyword arguments",
                self.endpoint
            )));
        }
        Ok(())
    }
}

/// `a Thumb`, `an i64`: a type name with its indefinite article.
fn with_article(name: &str) -> String {
    let vowel = name.chars().next().is_some_and(|c| "aeioAEIO".contains(c));
    format!("{} {name}", if vowel { "an" } else { "a" })
}

/// A type's name as its user writes it: every path shortened to its last
/// segment (`alloc::vec::Vec<alloc::string::String>` → `Vec<String>`).
pub(crate) fn user_type_name<T: ?Sized>() -> String {
    shorten_type_name(std::any::type_name::<T>())
}

fn shorten_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            segment.clear(); // a module path: keep only what follows
        } else if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else {
            out.push_str(&segment);
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(&segment);
    out
}

/// Bytes as MessagePack bin, the encoding of Python's `bytes`: wraps any
/// `T: AsRef<[u8]>` to serialize it as bin (not as an array of integers,
/// serde's default for `Vec<u8>`), and deserializes into any
/// `T: From<Vec<u8>>` from a bin, a str's bytes, or an array of integers.
///
/// `#[metabridge::service]` wraps parameters and results of type
/// `Vec<u8>`, `&[u8]` and `Bytes` in it by itself, on both sides; use it
/// with the dynamic client:
///
/// ```
/// use metabridge::Bin;
/// let encoded = metabridge::to_msgpack(&Bin(vec![1u8, 2, 3])).unwrap();
/// assert_eq!(encoded, [0xc4, 3, 1, 2, 3]); // bin 8, length 3
/// let back: Bin<Vec<u8>> = rmp_serde::from_slice(&encoded).unwrap();
/// assert_eq!(back.0, [1, 2, 3]);
/// let old: Bin<Vec<u8>> = rmp_serde::from_slice(&[0x93, 1, 2, 3]).unwrap();
/// assert_eq!(old.0, [1, 2, 3]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bin<T>(pub T);

impl<T: AsRef<[u8]>> Serialize for Bin<T> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> std::result::Result<Z::Ok, Z::Error> {
        serialize_bytes(self.0.as_ref(), s)
    }
}

/// Bytes as bin, or out of line in a shared-memory call's payload pool
/// (see `out_of_line`) when they are large and a pool is lent.
pub(crate) fn serialize_bytes<Z: serde::Serializer>(
    bytes: &[u8],
    s: Z,
) -> std::result::Result<Z::Ok, Z::Error> {
    match crate::out_of_line::place(bytes) {
        Some(location) => s.serialize_newtype_struct(
            rmp_serde::MSGPACK_EXT_STRUCT_NAME,
            &(crate::out_of_line::EXT_TYPE, PlainBin(&location)),
        ),
        None => s.serialize_bytes(bytes),
    }
}

/// Bytes as bin, always (an ext value's payload).
struct PlainBin<'a>(&'a [u8]);

impl Serialize for PlainBin<'_> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> std::result::Result<Z::Ok, Z::Error> {
        s.serialize_bytes(self.0)
    }
}

/// The parts of a MessagePack ext value (type, payload), as rmp_serde
/// hands them to a newtype visitor.
struct ExtParts;

impl<'de> serde::de::Visitor<'de> for ExtParts {
    type Value = (i8, Vec<u8>);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a MessagePack ext value")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(i8, Vec<u8>), A::Error> {
        use serde::de::Error;
        let tag: i8 = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("an ext value without its type"))?;
        let data: Bin<Vec<u8>> = seq
            .next_element()?
            .ok_or_else(|| A::Error::custom("an ext value without its payload"))?;
        Ok((tag, data.0))
    }
}

impl<'de, T: From<Vec<u8>>> serde::Deserialize<'de> for Bin<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_bytes(d, crate::out_of_line::resolve).map(|v: Vec<u8>| Bin(T::from(v)))
    }
}

/// Bytes from a bin, a str's bytes, an array of integers, or an
/// out-of-line byte string, which `resolve_ext(type, payload)` reads.
pub(crate) fn deserialize_bytes<'de, D, T>(
    d: D,
    resolve_ext: fn(i8, &[u8]) -> std::result::Result<T, String>,
) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<Vec<u8>>,
{
    struct Visitor<T>(fn(i8, &[u8]) -> std::result::Result<T, String>);
    impl<'de, T: From<Vec<u8>>> serde::de::Visitor<'de> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes (a bin, or an array of integers 0-255)")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<T, E> {
            Ok(T::from(v.to_vec()))
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<T, E> {
            Ok(T::from(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<T, E> {
            Ok(T::from(v.as_bytes().to_vec()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<T, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(T::from(v))
        }
        /// An ext value: rmp_serde's form of an out-of-line byte string.
        fn visit_newtype_struct<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<T, D::Error> {
            use serde::de::Error;
            let (tag, data) = d.deserialize_tuple(2, ExtParts)?;
            (self.0)(tag, &data).map_err(D::Error::custom)
        }
    }
    d.deserialize_byte_buf(Visitor(resolve_ext))
}

/// `#[serde(with = "metabridge::bytes")]` for a bytes field of your own
/// struct: it travels as MessagePack bin (Python's `bytes`), like
/// [`Bin`], instead of serde's default for `Vec<u8>`, an array of
/// integers that is several times larger and ten times slower to encode
/// and decode. Works for any field type that is `AsRef<[u8]>` and
/// `From<Vec<u8>>` (`Vec<u8>`, `Box<[u8]>`, `bytes::Bytes`).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Image {
///     width: u32,
///     #[serde(with = "metabridge::bytes")]
///     pixels: Vec<u8>,
/// }
/// let image = Image { width: 2, pixels: vec![1, 2, 3, 4] };
/// let encoded = metabridge::to_msgpack(&image).unwrap();
/// assert!(encoded.ends_with(&[0xc4, 4, 1, 2, 3, 4])); // bin 8, length 4
/// let back: Image = rmp_serde::from_slice(&encoded).unwrap();
/// assert_eq!(back, image);
/// ```
pub mod bytes {
    use super::Bin;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the field as bin (out of line in a shared-memory call when
    /// large, as [`Bin`] does).
    pub fn serialize<T: AsRef<[u8]>, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_bytes(value.as_ref(), s)
    }

    /// Reads the field from a bin (or a str's bytes, or an array of
    /// integers, as [`Bin`] does).
    pub fn deserialize<'de, T: From<Vec<u8>>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        Bin::<T>::deserialize(d).map(|b| b.0)
    }
}

/// Positional arguments a client can pass: tuples of serializable values
/// (up to 12), `()` for none, or a `Vec` of dynamic [`rmpv::Value`]s.
///
/// ```
/// use metabridge::IntoArgs;
/// let mut buf = Vec::new();
/// (10, 20).encode_args(&mut buf).unwrap();
/// assert_eq!(buf, [0x92, 10, 20]);
/// ```
pub trait IntoArgs {
    /// Appends the arguments to `buf` as one MessagePack array.
    fn encode_args(&self, buf: &mut Vec<u8>) -> Result<()>;

    /// How many bytes [`encode_args`](Self::encode_args) writes, counted
    /// without copying any and at most up to [`LARGE_ARGS`] (0 when
    /// unknown): an async call encodes arguments this large off the
    /// runtime's worker threads.
    fn encoded_len_hint(&self) -> usize {
        0
    }
}

/// Arguments of at least this many encoded bytes are large: an async call
/// encodes them off the runtime's worker threads.
pub const LARGE_ARGS: usize = 256 << 10;

/// A writer that only counts what it is given, up to [`LARGE_ARGS`]
/// (then it refuses, ending the walk: the count is "large").
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 >= LARGE_ARGS {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The MessagePack length of `value`, up to [`LARGE_ARGS`]: a walk of the
/// value that copies no bytes and stops once it is large.
fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut count = ByteCount(0);
    let _ = value.serialize(&mut rmp_serde::Serializer::new(&mut count).with_struct_map());
    count.0.min(LARGE_ARGS)
}

pub(crate) fn encode_value<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<()> {
    value
        .serialize(&mut rmp_serde::Serializer::new(buf).with_struct_map())
        .map_err(|source| {
            Error::Protocol(crate::ProtocolError::Encode {
                what: "argument",
                source,
            })
        })
}

impl IntoArgs for () {
    fn encode_args(&self, buf: &mut Vec<u8>) -> Result<()> {
        buf.push(0x90);
        Ok(())
    }
}

impl IntoArgs for Vec<rmpv::Value> {
    fn encode_args(&self, buf: &mut Vec<u8>) -> Result<()> {
        let _ = rmp::encode::write_array_len(buf, self.len() as u32);
        for v in self {
            rmpv::encode::write_value(buf, v)
                .map_err(|e| Error::Protocol(crate::ProtocolError::EncodeValue(e)))?;
        }
        Ok(())
    }
}

macro_rules! tuple_args {
    ($n:expr; $($name:ident . $idx:tt),+) => {
        impl<$($name: Serialize),+> IntoArgs for ($($name,)+) {
            fn encode_args(&self, buf: &mut Vec<u8>) -> Result<()> {
                let _ = rmp::encode::write_array_len(buf, $n);
                $(encode_value(buf, &self.$idx)?;)+
                Ok(())
            }

            fn encoded_len_hint(&self) -> usize {
                0 $(+ encoded_len(&self.$idx))+
            }
        }
    };
}
tuple_args!(1; A.0);
tuple_args!(2; A.0, B.1);
tuple_args!(3; A.0, B.1, C.2);
tuple_args!(4; A.0, B.1, C.2, D.3);
tuple_args!(5; A.0, B.1, C.2, D.3, E.4);
tuple_args!(6; A.0, B.1, C.2, D.3, E.4, F.5);
tuple_args!(7; A.0, B.1, C.2, D.3, E.4, F.5, G.6);
tuple_args!(8; A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7);
tuple_args!(9; A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8);
tuple_args!(10; A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9);
tuple_args!(11; A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9, K.10);
tuple_args!(12; A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9, K.10, L.11);

/// Positional and keyword arguments built one by one, for calls whose
/// shape is known only at run time (and for constructor arguments).
///
/// ```
/// use metabridge::CallArgs;
/// let a = CallArgs::new().arg(10).unwrap().kwarg("b", 20).unwrap();
/// assert_eq!(a.positional_len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallArgs {
    args: Vec<u8>,
    args_len: u32,
    kwargs: Vec<u8>,
    kwargs_len: u32,
}

impl CallArgs {
    /// No arguments.
    pub fn new() -> CallArgs {
        CallArgs::default()
    }

    /// Adds a positional argument.
    pub fn arg<T: Serialize>(mut self, value: T) -> Result<CallArgs> {
        encode_value(&mut self.args, &value)?;
        self.args_len += 1;
        Ok(self)
    }

    /// Adds a keyword argument.
    pub fn kwarg<T: Serialize>(mut self, name: &str, value: T) -> Result<CallArgs> {
        let _ = rmp::encode::write_str(&mut self.kwargs, name);
        encode_value(&mut self.kwargs, &value)?;
        self.kwargs_len += 1;
        Ok(self)
    }

    /// Number of positional arguments.
    pub fn positional_len(&self) -> usize {
        self.args_len as usize
    }

    /// The raw array of positional arguments.
    pub fn encoded_args(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.args.len() + 5);
        let _ = rmp::encode::write_array_len(&mut out, self.args_len);
        out.extend_from_slice(&self.args);
        out
    }

    /// The raw map of keyword arguments.
    pub fn encoded_kwargs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.kwargs.len() + 5);
        let _ = rmp::encode::write_map_len(&mut out, self.kwargs_len);
        out.extend_from_slice(&self.kwargs);
        out
    }
}

/// Encodes one value as MessagePack (for building raw arguments).
pub fn to_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_value(&mut buf, value)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(args: &CallArgs) -> (Vec<u8>, Vec<u8>) {
        (args.encoded_args(), args.encoded_kwargs())
    }

    #[test]
    fn positional_then_keyword() {
        let (a, k) = bind(&CallArgs::new().arg(1).unwrap().kwarg("b", "two").unwrap());
        let mut args = Args::new("f", &a, &k).unwrap();
        assert_eq!(args.next::<i64>("a").unwrap(), 1);
        assert_eq!(args.next::<String>("b").unwrap(), "two");
        args.finish(&["a", "b"]).unwrap();
    }

    #[test]
    fn every_mismatch_is_a_type_error_naming_endpoint_and_parameter() {
        let (a, k) = bind(&CallArgs::new().arg("x").unwrap());
        let e = Args::new("soma", &a, &k)
            .unwrap()
            .next::<i64>("a")
            .unwrap_err();
        assert_eq!(e.kind, "TypeError");
        assert!(
            e.message.contains("soma") && e.message.contains("'a'"),
            "{e}"
        );

        let (a, k) = bind(&CallArgs::new());
        let e = Args::new("soma", &a, &k)
            .unwrap()
            .next::<i64>("a")
            .unwrap_err();
        assert!(e.message.contains("missing required argument 'a'"), "{e}");

        let (a, k) = bind(&CallArgs::new().arg(1).unwrap().arg(2).unwrap());
        let mut args = Args::new("one", &a, &k).unwrap();
        args.next::<i64>("x").unwrap();
        assert!(args
            .finish(&["x"])
            .unwrap_err()
            .message
            .contains("takes 1 positional argument but 2"));

        let (a, k) = bind(&CallArgs::new().kwarg("zzz", 1).unwrap());
        let args = Args::new("f", &a, &k).unwrap();
        assert!(args
            .finish(&[])
            .unwrap_err()
            .message
            .contains("unexpected keyword argument 'zzz'"));

        let (a, k) = bind(&CallArgs::new().arg(1).unwrap().kwarg("x", 1).unwrap());
        let mut args = Args::new("f", &a, &k).unwrap();
        assert!(args
            .next::<i64>("x")
            .unwrap_err()
            .message
            .contains("multiple values"));
    }

    #[test]
    fn a_misspelt_keyword_is_named_before_the_parameter_it_missed() {
        let (a, k) = bind(
            &CallArgs::new()
                .kwarg("a", 1)
                .unwrap()
                .kwarg("bb", 2)
                .unwrap(),
        );
        let mut args = Args::new("f", &a, &k).unwrap();
        assert_eq!(args.next::<i64>("a").unwrap(), 1);
        let e = args.next::<i64>("b").unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
        let e = args.explain(e, &["a", "b"]);
        assert_eq!(e.message, "f() got an unexpected keyword argument 'bb'");
        // Nothing stray: the error stays.
        let (a, k) = bind(&CallArgs::new().kwarg("a", 1).unwrap());
        let mut args = Args::new("f", &a, &k).unwrap();
        args.next::<i64>("a").unwrap();
        let e = args.next::<i64>("b").unwrap_err();
        assert_eq!(
            args.explain(e, &["a", "b"]).message,
            "f() missing required argument 'b'"
        );
        // A keyword given twice.
        let (a, k) = bind(
            &CallArgs::new()
                .kwarg("a", 1)
                .unwrap()
                .kwarg("a", 2)
                .unwrap(),
        );
        let mut args = Args::new("f", &a, &k).unwrap();
        args.next::<i64>("a").unwrap();
        assert_eq!(
            args.finish(&["a"]).unwrap_err().message,
            "f() got multiple values for keyword argument 'a'"
        );
    }

    #[test]
    fn type_names_are_written_as_users_write_them() {
        assert_eq!(user_type_name::<String>(), "String");
        assert_eq!(
            user_type_name::<std::collections::HashMap<String, Vec<Option<u8>>>>(),
            "HashMap<String, Vec<Option<u8>>>"
        );
        assert_eq!(
            user_type_name::<(i64, &str, [u16; 2])>(),
            "(i64, &str, [u16; 2])"
        );
        let (a, k) = bind(&CallArgs::new().arg(1).unwrap());
        let e = Args::new("f", &a, &k)
            .unwrap()
            .next::<Vec<String>>("v")
            .unwrap_err();
        assert!(
            e.message
                .starts_with("f(): argument 'v' must be a Vec<String>, got an integer"),
            "{e}"
        );
        let e = Args::new("f", &a, &k)
            .unwrap()
            .next_bytes::<Vec<u8>>("v")
            .unwrap_err();
        assert!(
            e.message
                .starts_with("f(): argument 'v' must be bytes, got an integer"),
            "{e}"
        );
    }

    /// A value of the wrong shape is named as what came, in words, beside
    /// what was expected: never rmp's bare "wrong msgpack marker".
    #[test]
    fn a_mistyped_argument_says_what_was_expected_and_what_came() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Thumb {
            side: u32,
        }
        let text = |args: CallArgs, f: &dyn Fn(&mut Args<'_>) -> CallError| {
            let (a, k) = bind(&args);
            f(&mut Args::new("describe", &a, &k).unwrap()).message
        };
        let m = text(CallArgs::new().arg("abcd").unwrap(), &|a| {
            a.next::<Thumb>("thumb").unwrap_err()
        });
        assert!(
            m.starts_with("describe(): argument 'thumb' must be a Thumb, got a string of 4 bytes"),
            "{m}"
        );
        assert!(!m.contains("marker"), "{m}");
        let mut map = std::collections::HashMap::new();
        map.insert("a", "oops");
        let m = text(CallArgs::new().arg(map).unwrap(), &|a| {
            a.next::<std::collections::HashMap<String, u32>>("sizes")
                .unwrap_err()
        });
        assert!(
            m.starts_with(
                "describe(): argument 'sizes' must be a HashMap<String, u32>, got a map of 1 entry"
            ),
            "{m}"
        );
        assert!(!m.contains("marker"), "{m}");
        let m = text(CallArgs::new().arg(vec![1, 2, 3]).unwrap(), &|a| {
            a.next::<Thumb>("thumb").unwrap_err()
        });
        assert!(m.contains("got an array of 3 elements"), "{m}");
        // Too many positional arguments are named as such, even when an
        // extra one is also of the wrong type for the parameter it lands on.
        let (a, k) = bind(
            &CallArgs::new()
                .arg(1)
                .unwrap()
                .arg("x")
                .unwrap()
                .arg(3)
                .unwrap(),
        );
        let mut bound = Args::new("pair", &a, &k).unwrap();
        let first: u32 = bound.next("a").unwrap();
        assert_eq!(first, 1);
        let e = bound.next::<u32>("b").unwrap_err();
        let e = bound.explain(e, &["a", "b"]);
        assert_eq!(
            e.message,
            "pair() takes 2 positional arguments but 3 were given"
        );
    }

    #[test]
    fn tuples_encode_as_arrays() {
        let mut buf = Vec::new();
        ("a", 1u8, true).encode_args(&mut buf).unwrap();
        assert_eq!(buf, [0x93, 0xa1, b'a', 1, 0xc3]);
        buf.clear();
        ().encode_args(&mut buf).unwrap();
        assert_eq!(buf, [0x90]);
    }
}
