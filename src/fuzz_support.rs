//! Thin wrappers over crate-private decoders, for the cargo-fuzz targets in
//! `fuzz/` (which can only reach public items; reached as
//! `metabridge::__fuzz`). Not a stable API: names and signatures follow the
//! internals and may change in any release.

/// The byte length of the one MessagePack value at the start of `buf`
/// (`msgpack::value_len`, the skipper every request decode relies on).
pub fn value_len(buf: &[u8]) -> crate::Result<usize> {
    crate::msgpack::value_len(buf)
}

/// `msgpack::array_header`: element count and the bytes after the header.
pub fn array_header(buf: &[u8]) -> Option<(u32, &[u8])> {
    crate::msgpack::array_header(buf)
}

/// `msgpack::map_header`: entry count and the bytes after the header.
pub fn map_header(buf: &[u8]) -> Option<(u32, &[u8])> {
    crate::msgpack::map_header(buf)
}

/// `msgpack::read_str`: a UTF-8 string and the bytes after it.
pub fn read_str(buf: &[u8]) -> Option<(&str, &[u8])> {
    crate::msgpack::read_str(buf)
}

/// Runs `f` with `reader` lent as the pool of the message being decoded
/// (`out_of_line::with_inbound`).
pub fn with_pool<R>(reader: &metabridge_shm::PoolReader, f: impl FnOnce() -> R) -> R {
    crate::out_of_line::with_inbound(Some(reader), f)
}

/// `out_of_line::decode`: `raw` as `T`, out-of-line byte strings resolved.
pub fn decode_resolving<T: serde::de::DeserializeOwned>(
    raw: &[u8],
) -> Result<T, rmp_serde::decode::Error> {
    crate::out_of_line::decode(raw)
}

/// `out_of_line::inline`: `raw` with its out-of-line byte strings in line.
pub fn inline_out_of_line(raw: &[u8]) -> Result<Vec<u8>, String> {
    crate::out_of_line::inline(raw)
}

/// The ext type of an out-of-line byte string.
pub const OUT_OF_LINE_EXT: i8 = crate::out_of_line::EXT_TYPE;
