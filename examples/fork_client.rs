//! A client used across `fork()`, for the fork-safety tests (tests/fork.rs).
//!
//! `fork_client calls <service> <children> <calls> <budget-secs>` connects
//! to the fixture service `<service>` (examples/test_service.rs, constructor
//! arguments `("fork:", 1)`) in `$METABRIDGE_HOME`, calls it from a few
//! threads (so that its pool holds several channels or sockets), forks
//! `<children>` children, and then every process, parent and children at
//! once, makes `<calls>` calls of `echo` (from two threads) with an
//! argument unique to it (pid, thread, index), checking that each reply is
//! its own. The transport is the
//! one `METABRIDGE_TRANSPORT` names. Each child drops its client at the end
//! (which must leave the parent's channels alone); the parent then calls
//! again with the same client. It prints one `report` line per process and
//! a `summary` line, and exits 0 only if nothing went wrong.
//!
//! `fork_client daemon <service>` starts a service of its own with
//! `metabridge::run`, forks a child that drops its copy of the
//! `DaemonHandle` (which must not stop the parent's daemon), and checks in
//! the parent that the daemon still runs and answers.
//!
//! The program forks only while it runs one thread (checked), as a
//! preloading server or `multiprocessing` with `fork` does.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// What one process saw.
#[derive(Default)]
struct Tally {
    calls: usize,
    wrong: usize,
    errors: usize,
    first_wrong: Option<String>,
    first_error: Option<String>,
}

impl Tally {
    fn line(&self, role: &str) -> String {
        format!(
            "report role={role} pid={} calls={} wrong={} errors={} first_wrong={:?} first_error={:?}\n",
            std::process::id(),
            self.calls,
            self.wrong,
            self.errors,
            self.first_wrong.as_deref().unwrap_or(""),
            self.first_error.as_deref().unwrap_or(""),
        )
    }
}

/// `calls` echo calls of values unique to this process, within `budget`.
fn hammer(client: &metabridge::Client, tag: &str, calls: usize, budget: Duration) -> Tally {
    let start = Instant::now();
    let mut t = Tally::default();
    for i in 0..calls {
        if start.elapsed() > budget {
            break;
        }
        let mine = format!("{tag}-{}-{i}", std::process::id());
        t.calls += 1;
        match client.call::<String>("echo", (mine.as_str(),)) {
            Ok(reply) if reply == format!("fork:{mine}") => {}
            Ok(reply) => {
                t.wrong += 1;
                t.first_wrong
                    .get_or_insert_with(|| format!("sent {mine:?}, got {reply:?}"));
            }
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    t
}

/// The same from `threads` threads at once (`calls` in all): in a child,
/// they meet the inherited connection together.
fn hammer_threads(
    client: &metabridge::Client,
    tag: &str,
    calls: usize,
    threads: usize,
    budget: Duration,
) -> Tally {
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let running: Vec<_> = (0..threads)
            .map(|k| {
                let n = calls / threads + usize::from(k < calls % threads);
                s.spawn(move || hammer(client, &format!("{tag}{k}"), n, budget))
            })
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Tally::default();
    for t in tallies {
        all.calls += t.calls;
        all.wrong += t.wrong;
        all.errors += t.errors;
        all.first_wrong = all.first_wrong.or(t.first_wrong);
        all.first_error = all.first_error.or(t.first_error);
    }
    all
}

fn threads_now() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn fork() -> Option<nix::unistd::Pid> {
    // A joined thread may still be listed for a moment (the kernel wakes
    // the joiner before it has removed the task).
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_now() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(threads_now(), 1, "fork_client forks only with one thread");
    let _ = std::io::stdout().flush();
    // SAFETY: this process runs one thread (checked just above), so the
    // child holds no lock of a thread that does not exist in it.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => None,
        nix::unistd::ForkResult::Parent { child } => Some(child),
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    (r.into(), w.into())
}

fn connect(name: &str) -> metabridge::Client {
    metabridge::connect(name)
        .arg("fork:")
        .arg(1)
        .timeout(Duration::from_secs(5))
        .open()
        .unwrap_or_else(|e| {
            eprintln!("fork_client: connect: {e}");
            std::process::exit(3)
        })
}

fn calls(name: &str, children: usize, calls: usize, budget: Duration) -> i32 {
    let client = connect(name);
    // Calls from a few threads at once, so that the pool holds several
    // channels (or sockets) when the process forks; the threads are joined
    // before.
    std::thread::scope(|s| {
        for k in 0..4 {
            let client = &client;
            s.spawn(move || {
                let t = hammer(client, &format!("warm{k}"), 200, budget);
                assert_eq!(
                    (t.wrong, t.errors),
                    (0, 0),
                    "before the fork: {}",
                    t.line("warm")
                );
            });
        }
    });
    let opened = client.open_channels();
    let (report_r, mut report_w) = pipe();
    let (mut gate_r, gate_w) = pipe();
    let mut pids = Vec::new();
    for _ in 0..children {
        match fork() {
            None => {
                drop(gate_w);
                drop(report_r);
                // Wait until every child exists, so that all run at once.
                let _ = gate_r.read(&mut [0u8; 1]);
                let t = hammer_threads(&client, "child", calls, 2, budget);
                // Dropping the inherited client must not close, or mark
                // closed, the channels of the parent.
                drop(client);
                let _ = report_w.write_all(t.line("child").as_bytes());
                std::process::exit(0);
            }
            Some(pid) => pids.push(pid),
        }
    }
    drop(gate_w);
    drop(gate_r);
    let mine = hammer_threads(&client, "parent", calls, 2, budget);
    drop(report_w);
    let mut failed_children = 0;
    for pid in pids {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
            other => {
                failed_children += 1;
                eprintln!("fork_client: child {pid}: {other:?}");
            }
        }
    }
    let mut reports = String::new();
    let _ = { report_r }.read_to_string(&mut reports);
    // After the children are gone: the parent's client still works.
    let after = hammer(&client, "after", calls.min(1000), budget);
    let mut out = String::new();
    out += &mine.line("parent");
    out += &reports;
    out += &after.line("after");
    let (mut wrong, mut errors, mut short) = (mine.wrong, mine.errors, 0);
    let mut seen = 0;
    for line in reports.lines() {
        seen += 1;
        let field = |k: &str| -> usize {
            line.split(' ')
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        wrong += field("wrong=");
        errors += field("errors=");
        if field("calls=") < calls {
            short += 1;
        }
    }
    if mine.calls < calls {
        short += 1;
    }
    out += &format!(
        "summary channels_before_fork={opened} wrong={wrong} errors={errors} \
         after_wrong={} after_errors={} reports={seen}/{children} short={short} \
         failed_children={failed_children}\n",
        after.wrong, after.errors
    );
    print!("{out}");
    let clean = wrong == 0
        && errors == 0
        && after.wrong == 0
        && after.errors == 0
        && seen == children
        && short == 0
        && failed_children == 0
        && after.calls == calls.min(1000);
    i32::from(!clean)
}

fn daemon(name: &str) -> i32 {
    use metabridge::{Args, Reply, Service};
    let service = Service::<String>::new(name)
        .constructor(|a: &mut Args<'_>| {
            let prefix: String = a.next("prefix")?;
            let _scale: i64 = a.next("scale")?;
            a.finish(&["prefix", "scale"])?;
            Ok(prefix)
        })
        .endpoint(
            "echo",
            |prefix: &String, a: &mut Args<'_>, out: &mut Reply<'_>| {
                let text: String = a.next("text")?;
                a.finish(&["text"])?;
                out.ok(&format!("{prefix}{text}"))
            },
        );
    let handle = metabridge::run(service).unwrap_or_else(|e| {
        eprintln!("fork_client: run: {e}");
        std::process::exit(3)
    });
    let client = connect(name);
    let before = hammer(&client, "before", 10, Duration::from_secs(30));
    match fork() {
        None => {
            // The child's copy of the handle: dropping it must not stop the
            // daemon of the parent; nor may its copy of the client close the
            // parent's channels.
            drop(handle);
            drop(client);
            std::process::exit(0);
        }
        Some(pid) => {
            let status = nix::sys::wait::waitpid(pid, None);
            let running = handle.is_running();
            let after = hammer(&client, "after", 100, Duration::from_secs(30));
            println!(
                "daemon child={status:?} running_after_child={running} before_errors={} \
                 after_wrong={} after_errors={} first_error={:?}",
                before.errors + before.wrong,
                after.wrong,
                after.errors,
                after.first_error.as_deref().unwrap_or("")
            );
            let clean = running
                && before.errors + before.wrong == 0
                && after.wrong + after.errors == 0
                && after.calls == 100;
            client.close();
            let _ = handle.stop();
            i32::from(!clean)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let code = match args.get(1).map(String::as_str) {
        Some("calls") if args.len() == 6 => calls(
            &args[2],
            number(3),
            number(4),
            Duration::from_secs(number(5) as u64),
        ),
        Some("daemon") if args.len() == 3 => daemon(&args[2]),
        _ => usage(),
    };
    std::process::exit(code);
}

fn usage() -> ! {
    eprintln!(
        "usage: fork_client calls <service> <children> <calls> <budget-secs> | daemon <service>"
    );
    std::process::exit(64)
}
