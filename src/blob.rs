//! [`Blob`]: bytes a shared-memory call hands over without copying them.

use std::sync::Arc;

/// Bytes that a shared-memory call delivers in place: a `Blob` parameter
/// or result of 64 KiB or more arriving through shared memory is read
/// straight from the sender's payload pool, with no copy, for as long as
/// the `Blob` (or a clone of it) lives; dropping the last one gives the
/// block back to the sender. Anywhere else (TCP, small values, a process
/// already holding [`LENT_CAP`](metabridge_shm::LENT_CAP) bytes lent, or a
/// channel holding its 128 blocks) it owns a `Vec<u8>`, copied once as
/// [`Bin`](crate::Bin) is.
///
/// It travels as MessagePack bin (Python's `bytes`), like `Bin`, so a
/// `Blob` endpoint serves the original protocol's clients unchanged. Use
/// it where you read the bytes and let go (hash them, decode an image,
/// write them to a file); a `Vec<u8>` parameter costs one copy more. A
/// block kept lent holds pool pages of the sender, which it cannot give
/// back: keep bytes for long with [`into_vec`](Blob::into_vec). Typed
/// clients take a `Blob` parameter as `&[u8]`.
///
/// Nothing can change the bytes under a `Blob`: a lent block is
/// unwritable in every mapping of it while it is lent (ARCHITECTURE.md,
/// trust).
///
/// ```
/// use metabridge::Blob;
/// let b = Blob::from(vec![1u8, 2, 3]);
/// assert_eq!(&b[..], [1, 2, 3]);
/// assert!(!b.is_lent());
/// let encoded = metabridge::to_msgpack(&b).unwrap();
/// assert_eq!(encoded, [0xc4, 3, 1, 2, 3]); // bin 8, length 3
/// let back: Blob = rmp_serde::from_slice(&encoded).unwrap();
/// assert_eq!(back, b);
/// assert_eq!(back.into_vec(), [1, 2, 3]);
/// ```
#[derive(Clone)]
pub struct Blob(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    Lent(Arc<metabridge_shm::LentBlock>),
}

impl Blob {
    /// An empty blob.
    pub fn new() -> Blob {
        Blob(Repr::Owned(Vec::new()))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Lent(b) => b.as_slice(),
        }
    }

    /// Whether the bytes are read in place from the sender's pool (rather
    /// than owned).
    pub fn is_lent(&self) -> bool {
        matches!(self.0, Repr::Lent(_))
    }

    /// The bytes as a vector: no copy if owned, one copy if lent (which
    /// gives the block back, unless a clone still holds it).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Lent(b) => b.as_slice().to_vec(),
        }
    }

    pub(crate) fn lent(block: metabridge_shm::LentBlock) -> Blob {
        Blob(Repr::Lent(Arc::new(block)))
    }
}

impl Default for Blob {
    fn default() -> Blob {
        Blob::new()
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(Repr::Owned(v))
    }
}

impl From<&[u8]> for Blob {
    fn from(v: &[u8]) -> Blob {
        Blob(Repr::Owned(v.to_vec()))
    }
}

impl From<Blob> for Vec<u8> {
    fn from(b: Blob) -> Vec<u8> {
        b.into_vec()
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Blob {}

impl PartialEq<[u8]> for Blob {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for Blob {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == &other[..]
    }
}

impl std::hash::Hash for Blob {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("len", &self.len())
            .field("lent", &self.is_lent())
            .finish()
    }
}

impl serde::Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::args::serialize_bytes(self.as_slice(), s)
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        crate::args::deserialize_bytes(d, crate::out_of_line::resolve_lent)
    }
}
