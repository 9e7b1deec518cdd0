//! The peers comparison: one request/reply — `get("mundo!")` answering
//! `"Olá, mundo!"` — between two real processes, over raw sockets, tarpc,
//! ipc-channel, iceoryx2 and MetaBridge, with the same loop for each.
//!
//! ```text
//! cargo run --release -p metabridge-peers -- [--quick] [--pin split|same] [--json]
//! ```
//!
//! Each peer is this binary executed again with `METABRIDGE_PEERS_ROLE`
//! naming its role; MetaBridge's daemon is started by `Service::run()`.
//! `--pin split` puts this process on vCPU 0 and the peer (every thread)
//! on vCPU 1, `--pin same` both on vCPU 0; by default the kernel chooses.

mod common;
mod iox;
mod ipc;
mod mb;
mod raw;
mod tarpc_peer;

#[path = "../../../examples/service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use common::{Measurement, Placement, Settings, ARG_ENV, ROLE_ENV};
use std::path::PathBuf;
use std::time::Duration;

/// The private `METABRIDGE_HOME` of a run (also where the socket peers
/// bind), removed at the end, on panic too.
struct Home(PathBuf);

impl Home {
    fn create() -> std::io::Result<Home> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = PathBuf::from(format!(
            "/dev/shm/metabridge-peers-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Home(dir))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // iceoryx2's shared-memory files of this run (see iox::file_prefix).
        let prefix = iox::file_prefix(std::process::id());
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// A re-executed peer process: serve in `role`, then exit.
fn peer_main(role: &str) -> ! {
    // Never outlive the benchmark.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number, touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let arg = std::env::var(ARG_ENV).unwrap_or_default();
    let result: Result<(), String> = match role {
        "raw-uds" => raw::peer_uds(&arg).map_err(|e| e.to_string()),
        "raw-tcp" => raw::peer_tcp().map_err(|e| e.to_string()),
        "raw-tokio-tcp" => raw::peer_tokio_tcp().map_err(|e| e.to_string()),
        "tarpc" => tarpc_peer::peer(&arg).map_err(|e| e.to_string()),
        "ipc-channel" => ipc::peer(&arg),
        "iceoryx2-busy" => iox::peer(&arg, iox::Wait::Busy).map_err(|e| e.to_string()),
        "iceoryx2-event" => iox::peer(&arg, iox::Wait::Event).map_err(|e| e.to_string()),
        other => Err(format!("unknown role {other:?}")),
    };
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("peer {role}: {e}");
            std::process::exit(1)
        }
    }
}

fn parse_args() -> Result<Settings, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut quick = false;
    let mut json = false;
    let mut placement = Placement::Unpinned;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let pin = if arg == "--pin" {
            i += 1;
            Some(args.get(i).map(String::as_str).unwrap_or(""))
        } else {
            arg.strip_prefix("--pin=")
        };
        match (arg, pin) {
            (_, Some("split")) => placement = Placement::Split,
            (_, Some("same")) => placement = Placement::Same,
            (_, Some(other)) => return Err(format!("--pin takes split or same, not {other:?}")),
            ("--quick", _) => quick = true,
            ("--json", _) => json = true,
            (other, _) => {
                return Err(format!(
                    "unknown argument {other:?}; usage: [--quick] [--pin split|same] [--json]"
                ))
            }
        }
        i += 1;
    }
    Ok(Settings {
        warmup: 5_000,
        iterations: if quick { 20_000 } else { 100_000 },
        cap: if quick {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(20)
        },
        placement,
        json,
    })
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn report(s: &Settings, results: &[Measurement], notes: &[String]) {
    if s.json {
        for m in results {
            println!(
                r#"{{"system":"{}","placement":"{}","p50_ns":{},"p99_ns":{},"calls_per_s":{:.0}}}"#,
                m.system,
                s.placement.name(),
                m.percentile(0.5),
                m.percentile(0.99),
                m.calls_per_s()
            );
        }
        for m in results.iter().filter(|m| m.capped) {
            eprintln!(
                "note: {} stopped by the {:?} time cap after {} of {} calls",
                m.system,
                s.cap,
                m.samples.len(),
                s.iterations
            );
        }
        for n in notes {
            eprintln!("note: {n}");
        }
        return;
    }
    let base = results.iter().find(|m| m.system == "metabridge-shm");
    let (b50, b99, brate) = base
        .map(|b| {
            (
                b.percentile(0.5) as f64,
                b.percentile(0.99) as f64,
                b.calls_per_s(),
            )
        })
        .unwrap_or((0.0, 0.0, 0.0));
    println!();
    println!(
        "get(\"mundo!\") -> \"Olá, mundo!\" between two processes; placement: {}; {} round trips after {} warm-up",
        s.placement.describe(),
        s.iterations,
        s.warmup
    );
    println!(
        "ratios vs metabridge-shm: p50 and p99 = peer / metabridge-shm (above 1: MetaBridge faster); calls/s = metabridge-shm / peer"
    );
    println!(
        "{:<16} {:>9} {:>8} {:>10} {:>10} {:>11} {:>7} {:>7} {:>9}",
        "system",
        "placement",
        "calls",
        "p50 ns",
        "p99 ns",
        "calls/s",
        "p50 x",
        "p99 x",
        "calls/s x"
    );
    for m in results {
        let (p50, p99, rate) = (m.percentile(0.5), m.percentile(0.99), m.calls_per_s());
        println!(
            "{:<16} {:>9} {:>7}{} {:>10} {:>10} {:>11.0} {:>7} {:>7} {:>9}",
            m.system,
            s.placement.name(),
            m.samples.len(),
            if m.capped { "*" } else { " " },
            p50,
            p99,
            rate,
            ratio(p50 as f64, b50),
            ratio(p99 as f64, b99),
            ratio(brate, rate),
        );
    }
    if results.iter().any(|m| m.capped) {
        println!(
            "* stopped by the {:?} time cap before {} calls",
            s.cap, s.iterations
        );
    }
    for n in notes {
        println!("note: {n}");
    }
}

fn main() {
    // A re-executed MetaBridge daemon (when `run` is called from a
    // multi-threaded process) serves here and never returns.
    if std::env::var_os(metabridge::DAEMON_ENV).is_some() {
        let e = service_daemon::start().err();
        eprintln!("metabridge daemon: {e:?}");
        std::process::exit(1);
    }
    if let Ok(role) = std::env::var(ROLE_ENV) {
        peer_main(&role);
    }
    let s = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let home = match Home::create() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot create a private METABRIDGE_HOME under /dev/shm: {e}");
            std::process::exit(1);
        }
    };
    // Still single-threaded: nothing reads the environment concurrently.
    std::env::set_var("METABRIDGE_HOME", &home.0);
    if !s.json {
        eprintln!(
            "placement: {}; {} calls per system after {} warm-up; METABRIDGE_HOME={}",
            s.placement.name(),
            s.iterations,
            s.warmup,
            home.0.display()
        );
    }

    let mut results: Vec<Measurement> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let iox_base = format!("metabridge-peers/{}", std::process::id());
    // MetaBridge first, while this process is single-threaded, so `run`
    // forks rather than re-executing.
    type Bench<'a> = Box<dyn FnOnce() -> Result<Vec<Measurement>, String> + 'a>;
    let benches: Vec<(&str, Bench)> = vec![
        (
            "metabridge",
            Box::new(|| mb::bench(&s).map(|(a, b)| vec![a, b])),
        ),
        (
            "raw-uds",
            Box::new(|| raw::bench_uds(&s, &home.0).map(|m| vec![m])),
        ),
        ("raw-tcp", Box::new(|| raw::bench_tcp(&s).map(|m| vec![m]))),
        (
            "raw-tokio-tcp",
            Box::new(|| raw::bench_tokio_tcp(&s).map(|m| vec![m])),
        ),
        (
            "iceoryx2-busy",
            Box::new(|| {
                iox::bench(&s, &format!("{iox_base}/busy"), iox::Wait::Busy).map(|m| vec![m])
            }),
        ),
        (
            "iceoryx2-event",
            Box::new(|| {
                iox::bench(&s, &format!("{iox_base}/event"), iox::Wait::Event).map(|m| vec![m])
            }),
        ),
        ("ipc-channel", Box::new(|| ipc::bench(&s).map(|m| vec![m]))),
        (
            "tarpc",
            Box::new(|| tarpc_peer::bench(&s, &home.0).map(|m| vec![m])),
        ),
    ];
    for (name, bench) in benches {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(bench)) {
            Ok(Ok(ms)) => results.extend(ms),
            Ok(Err(e)) => notes.push(format!("{name} left out: {e}")),
            Err(_) => notes.push(format!("{name} left out: it panicked (see above)")),
        }
    }
    report(&s, &results, &notes);
    drop(home);
}
