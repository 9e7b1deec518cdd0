//! Out-of-line byte strings over a real channel pair (both ends in this
//! process): placed by `Bin`, resolved by `Bin` straight from the pool,
//! put back in line for types that do not know the pool.

use super::*;
use crate::Bin;
use metabridge_shm::{Channel, ChannelConfig};
use std::os::fd::AsFd;

fn pair() -> (Channel, Channel) {
    let config = ChannelConfig {
        capacity: 64 * 1024,
        pool: 8 << 20,
        ..Default::default()
    };
    let (a, fd) = Channel::create_memfd(&config).unwrap();
    let b = Channel::from_fd(fd.as_fd(), &config).unwrap();
    (a, b)
}

/// Encodes `value` with `a`'s pool lent; returns the bytes and whether
/// anything went to the pool.
fn encode(a: &Channel, value: &impl serde::Serialize) -> (Vec<u8>, bool) {
    let mut writer = a.pool_writer();
    with_outbound(&mut writer, || rmp_serde::to_vec(value).unwrap())
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Image {
    width: u32,
    #[serde(with = "crate::bytes")]
    pixels: Vec<u8>,
    name: String,
}

#[test]
fn large_bytes_go_out_of_line_and_come_back_straight_from_the_pool() {
    let (a, b) = pair();
    let pixels: Vec<u8> = (0..1 << 20).map(|i| (i * 31) as u8).collect();
    let image = Image {
        width: 512,
        pixels: pixels.clone(),
        name: "x".into(),
    };
    let (bytes, placed) = encode(&a, &image);
    assert!(placed);
    assert!(
        bytes.len() < 100,
        "only the location travels: {} bytes",
        bytes.len()
    );
    let reader = b.pool_reader().unwrap();
    let back: Image = with_inbound(Some(&reader), || decode(&bytes)).unwrap();
    assert_eq!(back, image);
    // The same through rmpv, which does not know the pool: put in line.
    let value: rmpv::Value = with_inbound(Some(&reader), || decode(&bytes)).unwrap();
    // (rmp_serde writes a struct as an array of its fields.)
    let rmpv::Value::Array(fields) = value else {
        panic!("not an array")
    };
    assert!(fields[1] == rmpv::Value::Binary(pixels.clone()));
    // And as the raw bytes a later decoder gets.
    let raw = with_inbound(Some(&reader), || inline(&bytes)).unwrap();
    let again: Image = rmp_serde::from_slice(&raw).unwrap();
    assert_eq!(again, image);
}

#[test]
fn small_bytes_and_unlent_encodes_stay_in_line() {
    let (a, _b) = pair();
    let (bytes, placed) = encode(&a, &Bin(vec![7u8; THRESHOLD - 1]));
    assert!(!placed);
    assert_eq!(bytes[0], 0xc5, "bin 16");
    let big = Bin(vec![7u8; THRESHOLD]);
    let plain = rmp_serde::to_vec(&big).unwrap();
    assert_eq!(plain[0], 0xc6, "bin 32 without a lent pool");
}

#[test]
fn an_out_of_line_value_without_a_pool_is_an_error_not_a_misread() {
    let (a, _b) = pair();
    let (bytes, placed) = encode(&a, &Bin(vec![1u8; THRESHOLD]));
    assert!(placed);
    let err = rmp_serde::from_slice::<Bin<Vec<u8>>>(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("outside a shared-memory message"),
        "{err}"
    );
}

#[test]
fn hostile_locations_are_errors() {
    let (_a, b) = pair();
    let reader = b.pool_reader().unwrap();
    let ext = |offset: u64, len: u64, tag: u8| {
        let mut v = vec![0xd8, tag];
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    };
    for (what, bytes) in [
        ("outside the pool", ext(8 << 20, 8, 77)),
        ("misaligned", ext(3, 8, 77)),
        ("overflowing", ext(u64::MAX - 7, 16, 77)),
        ("another ext type", ext(0, 8, 5)),
    ] {
        let r = with_inbound(Some(&reader), || decode::<Bin<Vec<u8>>>(&bytes));
        assert!(r.is_err(), "{what}: {r:?}");
        let raw = with_inbound(Some(&reader), || inline(&bytes));
        if what != "another ext type" {
            assert!(raw.is_err(), "{what}: inlined");
        }
    }
    // Type 77 in another ext encoding is a location all the same, and a
    // malformed one: never data for a type that does not resolve it.
    let mut other = vec![0xc7, 16, 77];
    other.extend_from_slice(&[0; 16]);
    let short = [0xd5, 77, 0, 0];
    for bytes in [&other[..], &short[..]] {
        let value = with_inbound(Some(&reader), || decode::<rmpv::Value>(bytes));
        assert!(
            !matches!(value, Ok(rmpv::Value::Ext(77, _))),
            "{bytes:?} read as data: {value:?}"
        );
    }
    // A truncated ext, and nesting deeper than the input could hold.
    let mut short = ext(0, 8, 77);
    short.truncate(10);
    assert!(with_inbound(Some(&reader), || decode::<Bin<Vec<u8>>>(&short)).is_err());
    let lying = [0xdd, 0xff, 0xff, 0xff, 0xff];
    assert!(scan(&lying, &mut |_, _, _| Ok(())).is_err());
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct BlobImage {
    width: u32,
    pixels: crate::Blob,
}

/// A `Blob` field resolves to a lent block, read in place; a small one, or
/// one decoded without a pool, owns its bytes; a `Blob` placed again from a
/// lent block travels out of line like any bytes.
#[test]
fn a_blob_reads_its_bytes_in_place() {
    let (a, b) = pair();
    let pixels: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
    let image = BlobImage {
        width: 2,
        pixels: crate::Blob::from(pixels.clone()),
    };
    let (bytes, placed) = encode(&a, &image);
    assert!(placed);
    let reader = b.pool_reader().unwrap();
    let back: BlobImage = with_inbound(Some(&reader), || decode(&bytes)).unwrap();
    assert!(back.pixels.is_lent());
    assert!(back.pixels == pixels);
    // Sent on from where it lies: copied once into b's own pool.
    let (again, placed) = encode(&b, &back);
    assert!(placed && again.len() < 100);
    let there: BlobImage = with_inbound(a.pool_reader().as_ref(), || decode(&again)).unwrap();
    assert!(there.pixels.is_lent() && there.pixels == pixels);
    // Without a pool (TCP), or small: owned.
    let plain = rmp_serde::to_vec(&image).unwrap();
    let owned: BlobImage = decode(&plain).unwrap();
    assert!(!owned.pixels.is_lent() && owned.pixels == pixels);
    let small = BlobImage {
        width: 1,
        pixels: crate::Blob::from(&b"tiny"[..]),
    };
    let (bytes, placed) = encode(&a, &small);
    assert!(!placed);
    let back: BlobImage = with_inbound(Some(&reader), || decode(&bytes)).unwrap();
    assert!(!back.pixels.is_lent() && back.pixels == b"tiny".to_vec());
}
