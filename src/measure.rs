//! Measurement helpers the tools share: CPU pinning, durations on the
//! command line, percentiles of sorted samples and of an HDR histogram,
//! and latencies written for people. The `metabridge` tool
//! (`metabridge bench`, `metabridge stats`) and the `bench` and `scaling`
//! examples use this one module; it exists with the `cli` feature and is
//! not part of the runtime's API (no stability promise).

/// Pins every thread of `pid` (0: this process) to `cpu`.
pub fn pin_process(pid: u32, cpu: usize) {
    let pid = if pid == 0 { std::process::id() } else { pid };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        crate::platform::pin_thread(tid, cpu);
    }
}

/// The `p` quantile (0..=1) of sorted samples; 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The argument after `flag` on the command line, if any.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Latencies in nanoseconds, in an HDR histogram (3 significant digits,
/// 1 ns to 1 hour): what `bench`, `scaling` and `metabridge bench` report
/// percentiles from.
pub struct Latencies(hdrhistogram::Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
        )
    }
}

impl Latencies {
    /// Records one duration, in ns (clamped into the histogram's range).
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }
    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }
    /// The `q` quantile (0..=1), in ns; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }
    /// The largest value, in ns.
    pub fn max(&self) -> u64 {
        self.0.max()
    }
    /// The mean, in ns.
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }
}

/// `512 ns`, `3.2 µs`, `1.50 ms`, `2.00 s`.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// A duration on the command line: `250ms`, `2s`, `1.5s`, `100us`, `1m`,
/// or plain seconds (`3`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 2s, 1m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        "m" | "min" => n * 60.0,
        other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    // `try_`: a value past `Duration::MAX` is an error, not a panic.
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("invalid duration {s:?}: too long"))
}
