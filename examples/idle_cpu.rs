//! CPU used by an idle connected client and by its idle service.
//!
//! `cargo run --release --example idle_cpu [seconds]`: starts the demo
//! daemon, connects, calls once (so a channel is open and both sides have
//! gone through their spin budgets), then idles and reports the CPU time
//! each process used, from /proc/<pid>/stat (utime + stime).

#[path = "service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use std::time::{Duration, Instant};

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn main() -> metabridge::Result<()> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let daemon = service_daemon::Service::run()?;
    let client = service_daemon::ServiceClient::connect("Olá,")?;
    assert_eq!(client.get("mundo!")?, "Olá, mundo!");
    std::thread::sleep(Duration::from_millis(200));
    let hz = 100.0; // USER_HZ on Linux
    let (c0, s0, t0) = (
        cpu_ticks(std::process::id()),
        cpu_ticks(daemon.pid()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(seconds));
    let (c1, s1, t1) = (
        cpu_ticks(std::process::id()),
        cpu_ticks(daemon.pid()),
        Instant::now(),
    );
    let wall = (t1 - t0).as_secs_f64();
    let pct = |ticks: u64| ticks as f64 / hz / wall * 100.0;
    println!("idle for {wall:.1} s with one open shared-memory channel:");
    println!(
        "  client  process: {:.2}% of one CPU ({} ticks)",
        pct(c1 - c0),
        c1 - c0
    );
    println!(
        "  service process: {:.2}% of one CPU ({} ticks)",
        pct(s1 - s0),
        s1 - s0
    );
    assert_eq!(client.get("ainda")?, "Olá, ainda");
    client.close();
    daemon.stop()?;
    Ok(())
}
