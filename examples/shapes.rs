//! Fixture of tests/daemon_shapes.rs: `metabridge::run` from programs of
//! every shape.
//!
//! `shapes <mode> <name>` starts service `<name>` with `run` and prints
//! `daemon <pid>` (or `error <message>` if `run` failed), then obeys one
//! line of standard input: `stop` (stops the daemon through its handle,
//! prints `stopped`), `detach` (detaches it, prints `detached`, exits: the
//! daemon must outlive this process) or `exit` / end of input (exits at
//! once, the handle never dropped: the daemon must then end with this
//! process).
//!
//! Modes: `plain` (a plain `main`), `tokio-multi` (`#[tokio::main]`),
//! `tokio-current` (`#[tokio::main(flavor = "current_thread")]`), `thread`
//! (`run` from a spawned thread that then exits; prints `thread-exited`
//! once it has), `library` / `library-hang` (a multi-threaded host whose
//! `main` reaches `run` only when its input says `start`: a re-executed
//! copy reads no such line and exits, or waits forever), and `serve-tokio`
//! (`metabridge::serve` inside `#[tokio::main]`, until SIGTERM).

use std::io::{BufRead, Write};

#[derive(Default)]
pub struct Shape;

#[metabridge::service(name = "shape")]
impl Shape {
    #[metabridge::function]
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn read_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim().to_string()
}

fn start(name: &str) -> Option<metabridge::DaemonHandle> {
    match metabridge::run(Shape::service().rename(name)) {
        Ok(handle) => {
            say(&format!("daemon {}", handle.pid()));
            Some(handle)
        }
        Err(e) => {
            say(&format!("error {e}"));
            None
        }
    }
}

/// Obeys the test's command, then exits.
fn finish(handle: Option<metabridge::DaemonHandle>) -> ! {
    match (read_line().as_str(), handle) {
        ("stop", Some(h)) => {
            h.stop().expect("stop");
            say("stopped");
        }
        ("detach", Some(h)) => {
            h.detach();
            say("detached");
        }
        _ => {}
    }
    // Skips destructors: the handle is never dropped.
    std::process::exit(0)
}

#[tokio::main]
async fn tokio_multi(name: String) {
    let handle = start(&name);
    finish(handle)
}

#[tokio::main(flavor = "current_thread")]
async fn tokio_current(name: String) {
    let handle = start(&name);
    finish(handle)
}

#[tokio::main]
async fn serve_tokio(name: String) {
    if let Err(e) = metabridge::serve(Shape::service().rename(&name)) {
        eprintln!("shapes: {e}");
        std::process::exit(1);
    }
}

/// What a library would do: start its service when asked to.
mod library {
    pub fn start_service(name: &str) -> Option<metabridge::DaemonHandle> {
        super::start(name)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let name = args.get(2).cloned().unwrap_or_else(|| "shape".into());
    match mode.as_str() {
        "plain" => {
            let handle = start(&name);
            finish(handle)
        }
        "tokio-multi" => tokio_multi(name),
        "tokio-current" => tokio_current(name),
        "serve-tokio" => serve_tokio(name),
        "thread" => {
            let spawned = std::thread::spawn(move || start(&name));
            let handle = spawned.join().expect("the thread that called run");
            say("thread-exited");
            finish(handle)
        }
        "library" | "library-hang" => {
            // A host that already runs threads of its own.
            let _host = std::thread::spawn(|| loop {
                std::thread::park();
            });
            if read_line() != "start" {
                if mode == "library-hang" {
                    loop {
                        std::thread::park();
                    }
                }
                std::process::exit(0);
            }
            let handle = library::start_service(&name);
            finish(handle)
        }
        _ => {
            eprintln!("usage: shapes <plain|tokio-multi|tokio-current|thread|library|library-hang|serve-tokio> <name>");
            std::process::exit(64);
        }
    }
}
