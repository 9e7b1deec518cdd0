//! Micro benchmarks of the pieces of one call, in-process: the envelope
//! codecs, the whole dispatch of `get` (instance cache hit and miss) and a
//! send + receive through one shared-memory ring.
//!
//! ```text
//! cargo bench -p metabridge-bench --bench micro            # about 40 s
//! cargo bench -p metabridge-bench --bench micro -- --quick # a few seconds
//! cargo bench -p metabridge-bench --bench micro -- ring    # only the ring benchmarks
//! ```

#[path = "../../../examples/service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use metabridge::envelope;
use metabridge::local::LocalDispatcher;
use metabridge::IntoArgs;
use metabridge_shm::{Channel, ChannelConfig};
use std::hint::black_box;
use std::time::Duration;

/// The constructor section of the demo client: `[]` and `{"argumento": arg}`.
fn ctor_of(argumento: &str) -> Vec<u8> {
    let kwargs: std::collections::BTreeMap<&str, &str> = [("argumento", argumento)].into();
    envelope::encode_ctor(&[0x90], &metabridge::to_msgpack(&kwargs).unwrap())
}

/// The request the typed client sends for `get(who)`.
fn get_request(argumento: &str, who: &str) -> Vec<u8> {
    let mut args = Vec::new();
    (who,).encode_args(&mut args).unwrap();
    let mut req = Vec::new();
    envelope::encode_call(&mut req, "get", &args, &[0x80], &ctor_of(argumento), None);
    req
}

fn envelopes(c: &mut Criterion) {
    let ctor = ctor_of("Olá,");
    let mut g = c.benchmark_group("envelope");

    let mut args = Vec::with_capacity(64);
    let mut req = Vec::with_capacity(256);
    g.bench_function("encode_call get(\"mundo!\")", |b| {
        b.iter(|| {
            args.clear();
            req.clear();
            black_box(("mundo!",)).encode_args(&mut args).unwrap();
            envelope::encode_call(&mut req, "get", &args, &[0x80], black_box(&ctor), None);
            black_box(&req);
        })
    });

    let request = get_request("Olá,", "mundo!");
    g.bench_function("decode_request", |b| {
        b.iter(|| black_box(envelope::decode_request(black_box(&request)).unwrap()))
    });

    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_ok String", |b| {
        b.iter(|| {
            out.clear();
            envelope::encode_ok(&mut out, black_box("Olá, mundo!")).unwrap();
            black_box(&out);
        })
    });

    let mut reply = Vec::new();
    envelope::encode_ok(&mut reply, "Olá, mundo!").unwrap();
    g.bench_function("decode_result::<String>", |b| {
        b.iter(|| black_box(envelope::decode_result::<String>(black_box(&reply)).unwrap()))
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");

    // Every request has the same constructor arguments: an LRU hit.
    let d = LocalDispatcher::new(service_daemon::Service::service());
    let req = get_request("Olá,", "mundo!");
    let mut out = Vec::with_capacity(256);
    d.handle(&req, &mut out);
    assert_eq!(
        envelope::decode_result::<String>(&out).unwrap(),
        "Olá, mundo!"
    );
    g.bench_function("get (instance cache hit)", |b| {
        b.iter(|| {
            out.clear();
            d.handle(black_box(&req), &mut out);
            black_box(&out);
        })
    });

    // A cache of one instance and a different constructor argument on
    // each call: every call decodes the arguments, constructs an instance
    // and evicts the previous one.
    let d = LocalDispatcher::new(
        service_daemon::Service::service().configure(|c| c.cache_capacity = 1),
    );
    let reqs: Vec<Vec<u8>> = (0..16)
        .map(|i| get_request(&format!("Olá {i:02},"), "mundo!"))
        .collect();
    d.handle(&reqs[3], &mut out);
    assert_eq!(
        envelope::decode_result::<String>(&out).unwrap(),
        "Olá 03, mundo!"
    );
    let mut i = 0;
    g.bench_function("get (instance cache miss)", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            out.clear();
            d.handle(black_box(&reqs[i]), &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    let config = ChannelConfig {
        dir: std::env::temp_dir(),
        ..ChannelConfig::default()
    };
    let name = format!("mb-micro-bench-{}", std::process::id());
    let mut a = Channel::create(&name, &config).expect("create channel");
    // Opening claims the second side and unlinks the file.
    let mut b = Channel::open(&name, &config).expect("open channel");

    let mut g = c.benchmark_group("ring");
    for (label, len) in [("send+recv 64 B", 64usize), ("send+recv 64 KiB", 64 << 10)] {
        let msg = vec![0xa5u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(label, |bench| {
            bench.iter(|| {
                a.send(black_box(&msg)).unwrap();
                let m = b.recv().unwrap();
                black_box(m.len());
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = envelopes, dispatch, ring
}
criterion_main!(benches);
