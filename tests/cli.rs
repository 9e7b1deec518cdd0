//! The `metabridge` tool, run as a real binary against real services
//! (each test its own `METABRIDGE_HOME`; every process killed and reaped
//! even when a test fails). Outputs and exit codes only, no timing.

mod common;

use common::TestEnv;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `metabridge ARGS` in the test's home.
fn mb(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metabridge"))
        .args(args)
        .env("METABRIDGE_HOME", &env.home)
        .env_remove("METABRIDGE_TRANSPORT")
        .env_remove("METABRIDGE_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the metabridge binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both outputs when it differs.
fn code(o: &Output, expected: i32) {
    assert_eq!(
        o.status.code(),
        Some(expected),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn call_prints_the_result_as_one_line_of_json() {
    let mut env = TestEnv::new("cli-call");
    env.start_service("cli-call", &[]);
    let ctor = ["--ctor", r#"["p:", 2]"#];

    let o = mb(
        &env,
        &[&["call", "cli-call", "echo", r#"["mundo!"]"#], &ctor[..]].concat(),
    );
    code(&o, 0);
    assert_eq!(stdout(&o), "\"p:mundo!\"\n");

    // Keyword arguments, and constructor arguments by keyword.
    let o = mb(
        &env,
        &[
            "call",
            "cli-call",
            "scaled",
            "--kwargs",
            r#"{"x": 21}"#,
            "--ctor",
            r#"{"prefix": "", "scale": 2}"#,
        ],
    );
    code(&o, 0);
    assert_eq!(stdout(&o), "42\n");

    // An `Option` parameter left out is None.
    let o = mb(
        &env,
        &[&["call", "cli-call", "describe", "[5]"], &ctor[..]].concat(),
    );
    code(&o, 0);
    assert_eq!(stdout(&o), "\"side 5, max None\"\n");

    // Bytes: {"$bytes": base64} in JSON, or raw; read back the same way,
    // so a printed result can be sent as it is.
    let o = mb(
        &env,
        &[&["call", "cli-call", "bytes", "[3]"], &ctor[..]].concat(),
    );
    code(&o, 0);
    assert_eq!(stdout(&o), "{\"$bytes\":\"AAEC\"}\n");
    for transport in ["shm", "tcp"] {
        let o = mb(
            &env,
            &[
                &["call", "cli-call", "echo_bytes", r#"[{"$bytes": "aGk="}]"#],
                &ctor[..],
                &["--transport", transport],
            ]
            .concat(),
        );
        code(&o, 0);
        assert_eq!(stdout(&o), "{\"$bytes\":\"aGk=\"}\n", "over {transport}");
    }
    let o = mb(
        &env,
        &[
            &["call", "cli-call", "echo_bytes", r#"[{"$bytes": "a"}]"#],
            &ctor[..],
        ]
        .concat(),
    );
    code(&o, 2);
    assert!(stderr(&o).contains("not standard base64"), "{}", stderr(&o));
    let o = mb(
        &env,
        &[
            &[
                "call",
                "cli-call",
                "echo",
                r#"["x"]"#,
                "--transport",
                "pigeon",
            ],
            &ctor[..],
        ]
        .concat(),
    );
    code(&o, 2);
    assert!(stderr(&o).contains("pigeon"), "{}", stderr(&o));
    let o = mb(
        &env,
        &[&["call", "cli-call", "bytes", "[3]", "--raw"], &ctor[..]].concat(),
    );
    code(&o, 0);
    assert_eq!(o.stdout, vec![0u8, 1, 2]);

    // The token the service published is used without being given; over
    // TCP at an explicit address too, with the token given.
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("cli-call")
        .unwrap();
    let token = entry.token.clone().expect("a published token");
    let at = [
        "--at",
        entry.tcp.as_str(),
        "--token",
        token.as_str(),
        "--timeout",
        "20s",
    ];
    let o = mb(
        &env,
        &[
            &["call", "cli-call", "echo", r#"["tcp"]"#],
            &ctor[..],
            &at[..],
        ]
        .concat(),
    );
    code(&o, 0);
    assert_eq!(stdout(&o), "\"p:tcp\"\n");
}

#[test]
fn call_failures_say_what_failed_and_exit_non_zero() {
    let mut env = TestEnv::new("cli-fail");
    env.start_service("cli-fail", &[]);
    let ctor = ["--ctor", r#"["p:", 2]"#];

    // A remote error: its kind and message on stderr, exit 1.
    let o = mb(
        &env,
        &[&["call", "cli-fail", "nope", "[]"], &ctor[..]].concat(),
    );
    code(&o, 1);
    assert!(stderr(&o).contains("NotFound"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    // Wrong types.
    let o = mb(
        &env,
        &[&["call", "cli-fail", "scaled", r#"["ten"]"#], &ctor[..]].concat(),
    );
    code(&o, 1);
    assert!(stderr(&o).contains("TypeError"), "{}", stderr(&o));

    // An endpoint's own error (Result::Err).
    let o = mb(
        &env,
        &[&["call", "cli-fail", "check", "[-1]"], &ctor[..]].concat(),
    );
    code(&o, 1);
    assert!(stderr(&o).contains("Refused"), "{}", stderr(&o));

    // An unknown service is named.
    let o = mb(&env, &["call", "no-such-service", "echo", "[]"]);
    code(&o, 1);
    assert!(stderr(&o).contains("no-such-service"), "{}", stderr(&o));

    // Bad command lines: exit 2.
    let o = mb(&env, &["call", "cli-fail", "echo", "[1,"]);
    code(&o, 2);
    assert!(stderr(&o).contains("not valid JSON"), "{}", stderr(&o));
    let o = mb(&env, &["call", "cli-fail", "echo", r#"{"a": 1}"#]);
    code(&o, 2);
    assert!(stderr(&o).contains("JSON array"), "{}", stderr(&o));
    let o = mb(&env, &["call", "cli-fail", "echo", "[]", "--kwargs", "[1]"]);
    code(&o, 2);
    assert!(stderr(&o).contains("JSON object"), "{}", stderr(&o));
    let o = mb(&env, &["call", "cli-fail", "echo", "[]", "--ctor", "{"]);
    code(&o, 2);
    let o = mb(
        &env,
        &["call", "cli-fail", "echo", "[]", "--timeout", "soon"],
    );
    code(&o, 2);
    let o = mb(&env, &["call"]);
    code(&o, 2);
    let o = mb(&env, &["frobnicate"]);
    code(&o, 2);
}

#[test]
fn every_command_has_help_and_completions_are_generated() {
    let env = TestEnv::new("cli-help");
    for cmd in [
        "list",
        "call",
        "endpoints",
        "stats",
        "gc",
        "bench",
        "completions",
    ] {
        let o = mb(&env, &[cmd, "--help"]);
        code(&o, 0);
        assert!(
            stdout(&o).contains("Usage: metabridge"),
            "{cmd}: {}",
            stdout(&o)
        );
    }
    let o = mb(&env, &["completions", "bash"]);
    code(&o, 0);
    assert!(stdout(&o).contains("_metabridge"));
    let o = mb(&env, &["completions", "no-shell"]);
    code(&o, 2);
}

#[test]
fn endpoints_lists_parameter_names() {
    let mut env = TestEnv::new("cli-eps");
    env.start_service("cli-eps", &[]);
    let o = mb(&env, &["endpoints", "cli-eps"]);
    code(&o, 0);
    let out = stdout(&o);
    for line in [
        "echo(text)",
        "scaled(x)",
        "sleep_ms(ms)",
        "renamed()",
        "original()",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    let o = mb(&env, &["endpoints", "cli-eps", "--json"]);
    code(&o, 0);
    let v = json(&o);
    let echo = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "echo")
        .unwrap();
    assert_eq!(echo["params"], serde_json::json!(["text"]));
    let o = mb(&env, &["endpoints", "missing"]);
    code(&o, 1);
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
}

#[test]
fn stats_counts_calls_and_errors_exactly() {
    let mut env = TestEnv::new("cli-stats");
    env.start_service("cli-stats", &[]);
    let client = env.connect("cli-stats").arg("s:").arg(3).open().unwrap();
    for i in 0..7 {
        let _: String = client.call("echo", (format!("{i}"),)).unwrap();
    }
    for _ in 0..2 {
        // Wrong argument type: counted as an error of `scaled`.
        assert!(client.call::<i64>("scaled", ("x",)).is_err());
    }
    let _: i64 = client.call("scaled", (5,)).unwrap();
    // Refused before any endpoint: counted as an error of the service.
    assert!(client.call::<i64>("no_such_endpoint", ()).is_err());
    client.close();

    let o = mb(&env, &["stats", "cli-stats", "--json"]);
    code(&o, 0);
    let v = json(&o);
    assert_eq!(v["service"], "cli-stats");
    assert_eq!(v["calls"], 10);
    assert_eq!(v["errors"], 3);
    assert_eq!(v["refused"], 1);
    assert_eq!(v["in_flight"], 0);
    let ep = |name: &str| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (ep("echo")["calls"].clone(), ep("echo")["errors"].clone()),
        (7.into(), 0.into())
    );
    assert_eq!(
        (
            ep("scaled")["calls"].clone(),
            ep("scaled")["errors"].clone()
        ),
        (3.into(), 2.into())
    );
    assert_eq!(ep("pid")["calls"], 0);
    // The first call of each endpoint is timed.
    assert!(ep("echo")["p50_ns"].as_u64().unwrap() > 0);
    assert!(ep("pid")["p50_ns"].is_null());

    // The table, and --watch with a bounded count.
    let o = mb(&env, &["stats", "cli-stats"]);
    code(&o, 0);
    assert!(
        stdout(&o).contains("10 calls, 3 errors (1 refused before an endpoint)"),
        "{}",
        stdout(&o)
    );
    let echo_row = stdout(&o)
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>();
    assert_eq!(&echo_row[..4], &["echo", "7", "0", "0"]);
    let o = mb(
        &env,
        &[
            "stats",
            "cli-stats",
            "--watch",
            "--count",
            "2",
            "--interval",
            "50ms",
            "--json",
        ],
    );
    code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 2);
    let o = mb(&env, &["stats", "absent"]);
    code(&o, 1);
    assert!(stderr(&o).contains("absent"));
}

#[test]
fn list_shows_live_and_stale_services_and_gc_removes_the_stale() {
    let mut env = TestEnv::new("cli-list");
    let live = env.start_service("cli-live", &[]);
    let dead = env.start_service("cli-dead", &[]);
    let client = env.connect("cli-live").arg("l:").arg(1).open().unwrap();
    for _ in 0..3 {
        let _: String = client.call("echo", ("x",)).unwrap();
    }
    client.close();
    common::sigkill(dead);
    assert!(env.wait_exit(dead, Duration::from_secs(20)).is_none()); // killed: no code

    let o = mb(&env, &["list", "--json"]);
    code(&o, 0);
    let v = json(&o);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    let l = row("cli-live");
    assert_eq!(l["pid"], live);
    assert_eq!(l["state"], "live");
    assert_eq!(l["calls"], 3);
    assert_eq!(l["errors"], 0);
    assert!(l["uptime_secs"].is_u64());
    assert!(l["transports"]["tcp"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(l["transports"]["shm"].as_str().unwrap().ends_with(".sock"));
    assert!(l["endpoints"].as_array().unwrap().contains(&"echo".into()));
    let d = row("cli-dead");
    assert_eq!(d["state"], "stale");
    assert!(d["calls"].is_null());

    let o = mb(&env, &["list"]);
    code(&o, 0);
    let table = stdout(&o);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cli-dead") && l.contains("stale")),
        "{table}"
    );

    let o = mb(&env, &["gc"]);
    code(&o, 0);
    let report = stdout(&o);
    assert!(
        report.contains(&format!(
            "removed: registry entry \"cli-dead\" of dead process {dead}"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("cli-dead-{dead}.sock")),
        "{report}"
    );
    assert!(
        report.contains(&format!("kept: service \"cli-live\" (pid {live}): running")),
        "{report}"
    );
    let o = mb(&env, &["list", "--json"]);
    let v = json(&o);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let o = mb(&env, &["gc", "--json"]);
    code(&o, 0);
    assert_eq!(json(&o)["removed"], serde_json::json!([]));
}

#[test]
fn list_of_an_empty_home_says_so() {
    let env = TestEnv::new("cli-empty");
    let o = mb(&env, &["list"]);
    code(&o, 0);
    assert!(stdout(&o).contains("no services"), "{}", stdout(&o));
    let o = mb(&env, &["list", "--json"]);
    code(&o, 0);
    assert_eq!(json(&o), serde_json::json!([]));
}

#[test]
fn bench_reports_percentiles_and_throughput() {
    let mut env = TestEnv::new("cli-bench");
    env.start_service("cli-bench", &[]);
    let o = mb(
        &env,
        &[
            "bench",
            "cli-bench",
            "echo",
            r#"["b"]"#,
            "--ctor",
            r#"["p", 1]"#,
            "--clients",
            "2",
            "--duration",
            "300ms",
            "--json",
        ],
    );
    code(&o, 0);
    let v = json(&o);
    let calls = v["calls"].as_u64().unwrap();
    assert!(calls > 0, "{v}");
    assert_eq!(v["errors"], 0);
    assert_eq!(v["clients"], 2);
    assert!(v["p50_ns"].as_u64().unwrap() > 0);
    assert!(v["p99_ns"].as_u64().unwrap() >= v["p50_ns"].as_u64().unwrap());
    // The service counted at least those calls (plus warm-up and trial).
    let o = mb(&env, &["stats", "cli-bench", "--json"]);
    let s = json(&o);
    assert!(s["calls"].as_u64().unwrap() >= calls, "{s} vs {calls}");

    // A wrong call fails at once with its error.
    let o = mb(
        &env,
        &["bench", "cli-bench", "nope", "--ctor", r#"["p", 1]"#],
    );
    code(&o, 1);
    assert!(stderr(&o).contains("NotFound"), "{}", stderr(&o));
}

#[test]
fn the_logger_logs_start_calls_and_stop_on_the_parents_stderr_or_a_file() {
    let env = TestEnv::new("cli-log");
    let out = env
        .command(common::TEST_SERVICE)
        .args(["logged", "cli-logged"])
        .env_remove("RUST_LOG")
        .env_remove("METABRIDGE_LOG_FILE")
        .output()
        .unwrap();
    code(&out, 0);
    assert_eq!(stdout(&out), "log:hello\nlog:tcp\n");
    let log = stderr(&out);
    for needle in [
        "started: pid",
        "client connected",
        "echo(\"hello\") -> \"log:hello\"",
        "client disconnected: shared-memory channel closed",
        "client connected (TCP)",
        "echo(\"tcp\") -> \"log:tcp\"",
        "stopped",
    ] {
        assert!(log.contains(needle), "{needle:?} in:\n{log}");
    }

    let file = env.home.join("service.log");
    let out = env
        .command(common::TEST_SERVICE)
        .args(["logged", "cli-logged-file"])
        .env("FIXTURE_LOG_FILE", &file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    code(&out, 0);
    assert!(!stderr(&out).contains("started: pid"), "{}", stderr(&out));
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(log.contains("echo(\"hello\")"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn stats_shows_calls_in_flight_sync_and_async() {
    let mut env = TestEnv::new("cli-flight");
    env.start_service("cli-flight", &[]);
    let client = env.connect("cli-flight").arg("f:").arg(1).open().unwrap();
    let (held, slow) = (client.clone(), client.clone());
    let holder = std::thread::spawn(move || held.call::<bool>("hold", ()).unwrap());
    let sleeper = std::thread::spawn(move || slow.call::<String>("later", (8_000u64,)).unwrap());
    // Poll until both calls are in progress (the deadline only bounds how
    // long a failure takes to show).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let in_flight = |v: &serde_json::Value, name: &str| {
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["in_flight"]
            .as_u64()
            .unwrap()
    };
    loop {
        let v = json(&mb(&env, &["stats", "cli-flight", "--json"]));
        if in_flight(&v, "hold") == 1 && in_flight(&v, "later") == 1 {
            assert_eq!(v["in_flight"], 2);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw both calls: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(client.call::<bool>("release", ()).unwrap());
    assert!(holder.join().unwrap());
    assert_eq!(sleeper.join().unwrap(), "f:after 8000 ms");
    let v = json(&mb(&env, &["stats", "cli-flight", "--json"]));
    assert_eq!(v["in_flight"], 0, "{v}");
    assert_eq!((in_flight(&v, "hold"), in_flight(&v, "later")), (0, 0));
    assert_eq!(v["calls"], 3, "{v}");
}

/// A duration flag of 0 (or one that rounds to 0, or too long to be a
/// deadline) is a bad command line, exit 2 with the flag named: not an
/// I/O error from deep inside, nor a panic, nor a `--watch` loop that
/// never sleeps.
#[test]
fn zero_or_unrepresentable_durations_are_usage_errors() {
    let mut env = TestEnv::new("cli-durations");
    env.start_service("cli-durations", &[]);
    let call = [
        "call",
        "cli-durations",
        "echo",
        r#"["x"]"#,
        "--ctor",
        r#"["p", 1]"#,
    ];
    let bench = [
        "bench",
        "cli-durations",
        "echo",
        r#"["x"]"#,
        "--ctor",
        r#"["p", 1]"#,
    ];
    let stats = ["stats", "cli-durations", "--watch", "--count", "2"];
    for (cmd, flag) in [
        (&call[..], "--timeout"),
        (&bench[..], "--timeout"),
        (&bench[..], "--duration"),
        (&stats[..], "--interval"),
    ] {
        for value in ["0s", "0", "0ms", "0.1ns", "99999999999999999999999s"] {
            let o = mb(&env, &[cmd, &[flag, value]].concat());
            code(&o, 2);
            let err = stderr(&o);
            assert!(err.contains(flag), "{cmd:?} {flag} {value}: {err}");
            assert!(!err.contains("I/O error"), "{cmd:?} {flag} {value}: {err}");
            assert!(!err.contains("panicked"), "{cmd:?} {flag} {value}: {err}");
            assert!(
                stdout(&o).is_empty(),
                "{cmd:?} {flag} {value}: {}",
                stdout(&o)
            );
        }
    }
    let o = mb(&env, &[&call[..], &["--timeout", "0s"]].concat());
    assert!(stderr(&o).contains("more than 0"), "{}", stderr(&o));
    // A small positive value is still fine.
    let o = mb(&env, &[&call[..], &["--timeout", "5s"]].concat());
    code(&o, 0);
    assert_eq!(stdout(&o), "\"px\"\n");
}
