//! Fuzz target `pool_location`: messages that refer to a payload pool, as
//! a peer can write them: any MessagePack, with out-of-line locations
//! (`fixext 16` of type 77) anywhere, pointing anywhere.
//!
//! Input: the first byte picks how many bytes (0 to 255 × 1 KiB) the
//! "peer" placed at its pool's start (a real channel pair, both ends here,
//! with a 1 MiB pool and a 1 MiB message limit); the rest is the message.
//! Invariants beyond "no crash":
//! 1. every location outside the rules (misaligned, outside the pool,
//!    longer than the limit, or no pool lent) is an error, never an access
//!    (AddressSanitizer and the allocation limit watch the rest);
//! 2. when the message can be put in line, the copy holds no out-of-line
//!    value any more, and decoding the message straight (as `rmpv::Value`,
//!    which does not resolve them, and as bytes, which does) gives what
//!    decoding the copy gives: no type reads a location as data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge::__fuzz as f;
use metabridge::Bin;
use metabridge_shm::{Channel, ChannelConfig, PoolReader};
use std::os::fd::AsFd;
use std::sync::{Mutex, OnceLock};

struct Pair {
    // Kept: the reader's mapping lives as long as the channel halves.
    writer_side: Channel,
    _reader_side: Channel,
    reader: PoolReader,
}

fn pair() -> &'static Mutex<Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let config = ChannelConfig {
            capacity: 4096,
            pool: 1 << 20,
            max_message: 1 << 20,
            ..Default::default()
        };
        let (a, fd) = Channel::create_memfd(&config).expect("channel");
        let b = Channel::from_fd(fd.as_fd(), &config).expect("peer");
        let reader = b.pool_reader().expect("a pool");
        Mutex::new(Pair {
            writer_side: a,
            _reader_side: b,
            reader,
        })
    })
}

fn encoded(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("encode to a vector");
    out
}

fn has_out_of_line(v: &rmpv::Value) -> bool {
    match v {
        rmpv::Value::Ext(t, _) => *t == f::OUT_OF_LINE_EXT,
        rmpv::Value::Array(items) => items.iter().any(has_out_of_line),
        rmpv::Value::Map(kv) => kv
            .iter()
            .any(|(k, v)| has_out_of_line(k) || has_out_of_line(v)),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&placed_kib, message)) = data.split_first() else {
        return;
    };
    let pair = pair().lock().unwrap_or_else(|p| p.into_inner());
    let mut writer = pair.writer_side.pool_writer().expect("a pool");
    let placed: Vec<u8> = (0..placed_kib as usize * 1024).map(|i| i as u8).collect();
    if !placed.is_empty() {
        assert_eq!(writer.place(&placed), Some((0, placed.len() as u64)));
    }
    writer.finish_message();
    // Without a pool lent, a location is never resolved.
    if let Ok(b) = rmp_serde::from_slice::<Bin<Vec<u8>>>(message) {
        let _ = b;
    }
    f::with_pool(&pair.reader, || {
        let inlined = f::inline_out_of_line(message);
        let as_value = f::decode_resolving::<rmpv::Value>(message);
        let as_bytes = f::decode_resolving::<Bin<Vec<u8>>>(message);
        if let Ok(copy) = inlined {
            let copy_value = rmpv::decode::read_value(&mut &copy[..]);
            if let Ok(v) = &copy_value {
                assert!(
                    !has_out_of_line(v),
                    "an out-of-line value survived inlining"
                );
            }
            let straight: Result<rmpv::Value, _> = rmp_serde::from_slice(&copy);
            match (&as_value, &straight) {
                // Compared encoded: a NaN is not equal to itself.
                (Ok(a), Ok(b)) => assert_eq!(
                    encoded(a),
                    encoded(b),
                    "rmpv::Value read a location as data"
                ),
                (Ok(_), Err(_)) => panic!("decoded straight but not from the in-line copy"),
                _ => {}
            }
            let copy_bytes = rmp_serde::from_slice::<Bin<Vec<u8>>>(&copy);
            if let (Ok(a), Ok(b)) = (&as_bytes, &copy_bytes) {
                assert!(a.0 == b.0, "bytes differ from the in-line copy");
            }
        }
    });
});
