//! Times the pieces of one call in-process (no transport): a probe for
//! where the RPC layer's nanoseconds go. `cargo run --release --example dispatch_probe`

#[path = "service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use std::time::Instant;

fn time(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<40} {:>7.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}

fn main() {
    let d = metabridge::local::LocalDispatcher::new(service_daemon::Service::service());
    let ctor = metabridge::envelope::encode_ctor(
        &[0x90],
        &[
            0x81, 0xa9, b'a', b'r', b'g', b'u', b'm', b'e', b'n', b't', b'o', 0xa5, b'O', b'l',
            0xc3, 0xa1, b',',
        ],
    );
    let mut req = Vec::new();
    let args = metabridge::to_msgpack(&("mundo!",)).unwrap();
    metabridge::envelope::encode_call(&mut req, "get", &args, &[0x80], &ctor, None);
    let mut out = Vec::new();
    d.handle(&req, &mut out);
    assert_eq!(
        metabridge::envelope::decode_result::<String>(&out).unwrap(),
        "Olá, mundo!"
    );
    let n = 2_000_000;
    time("dispatch: handle(get) whole", n, || {
        d.handle(&req, &mut out)
    });
    time("envelope: decode_request", n, || {
        std::hint::black_box(metabridge::envelope::decode_request(&req).unwrap());
    });
    let mut buf = Vec::with_capacity(256);
    time("client: encode args + call envelope", n, || {
        buf.clear();
        let mut a = Vec::with_capacity(64);
        metabridge::IntoArgs::encode_args(&("mundo!",), &mut a).unwrap();
        metabridge::envelope::encode_call(&mut buf, "get", &a, &[0x80], &ctor, None);
    });
    time("client: decode_result::<String>", n, || {
        std::hint::black_box(metabridge::envelope::decode_result::<String>(&out).unwrap());
    });
    time("encode_ok(String)", n, || {
        buf.clear();
        metabridge::envelope::encode_ok(&mut buf, "Olá, mundo!").unwrap();
    });
    time("format! of the endpoint", n, || {
        std::hint::black_box(format!(
            "{} {}",
            std::hint::black_box("Olá,"),
            std::hint::black_box("mundo!")
        ));
    });
    time("current_cpu()", n, || {
        std::hint::black_box(metabridge_shm::current_cpu());
    });
    time("Instant::now()", n, || {
        std::hint::black_box(Instant::now());
    });
}
