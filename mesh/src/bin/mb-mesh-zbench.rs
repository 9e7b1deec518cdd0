//! Zenoh's own query/reply, for comparison with a mesh call in
//! BENCHMARKS.md: `mb-mesh-zbench serve <listen-endpoint>` answers queries
//! on `bench/echo` with their payload; `mb-mesh-zbench call
//! <connect-endpoint> <calls>` sends 64-byte queries one after another
//! and prints `p50_us p99_us calls_per_s`.

use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut config = zenoh::Config::default();
    let set = |c: &mut zenoh::Config, k: &str, v: &str| c.insert_json5(k, v).expect(k);
    set(&mut config, "mode", "\"peer\"");
    set(&mut config, "scouting/multicast/enabled", "false");
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            set(
                &mut config,
                "listen/endpoints",
                &format!("[\"{}\"]", args[2]),
            );
            let session = zenoh::open(config).await.expect("open");
            let _q = session
                .declare_queryable("bench/echo")
                .callback(|q| {
                    let body = q
                        .payload()
                        .map(|p| p.to_bytes().to_vec())
                        .unwrap_or_default();
                    zenoh::Wait::wait(q.reply("bench/echo", body)).ok();
                })
                .await
                .expect("queryable");
            println!("ready");
            std::future::pending::<()>().await;
        }
        Some("call") => {
            set(
                &mut config,
                "connect/endpoints",
                &format!("[\"{}\"]", args[2]),
            );
            let calls: usize = args[3].parse().expect("calls");
            let session = zenoh::open(config).await.expect("open");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let payload = vec![7u8; 64];
            let mut lat = Vec::with_capacity(calls);
            let t0 = Instant::now();
            for i in 0..calls + 2000 {
                let t = Instant::now();
                let replies = session
                    .get("bench/echo")
                    .payload(payload.clone())
                    .await
                    .expect("get");
                let reply = replies.recv_async().await.expect("a reply");
                assert_eq!(reply.result().expect("ok").payload().len(), 64);
                if i >= 2000 {
                    lat.push(t.elapsed());
                }
            }
            let total = t0.elapsed();
            lat.sort();
            let p = |q: f64| {
                lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6
            };
            println!(
                "{:.1} {:.1} {:.0}",
                p(0.5),
                p(0.99),
                (calls + 2000) as f64 / total.as_secs_f64()
            );
        }
        _ => {
            eprintln!("usage: mb-mesh-zbench serve <listen> | call <connect> <calls>");
            std::process::exit(2);
        }
    }
}
