//! Is the peer process still the one that attached? By pid and start time.
//!
//! A pid alone is not an identity: after a crash the kernel may hand the same
//! pid to an unrelated process. The start time (in clock ticks since boot,
//! field 22 of `/proc/<pid>/stat`) never repeats for one pid within a boot,
//! so the pair names one process for its whole life.

use std::fs;

/// One process, named so that a reused pid is not mistaken for it.
///
/// ```
/// let me = metabridge_shm::ProcessIdentity::current();
/// assert!(me.is_alive());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot, as `/proc/<pid>/stat` reports it.
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says of a process.
struct ProcStat {
    state: u8,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the fields we need. The command name (field 2) may itself contain
/// spaces and parentheses, so fields are counted from the *last* `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // After the state (field 3) come fields 4..; start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl ProcessIdentity {
    /// The calling process.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        let start_time = read_stat(pid).map(|s| s.start_time).unwrap_or(0);
        ProcessIdentity { pid, start_time }
    }

    /// The process with this pid now, if any.
    pub fn of_pid(pid: u32) -> Option<ProcessIdentity> {
        read_stat(pid).map(|s| ProcessIdentity {
            pid,
            start_time: s.start_time,
        })
    }

    /// True while this very process exists and has not exited.
    ///
    /// A zombie (exited, not yet reaped by its parent) counts as dead: it
    /// will never answer again. A pid now used by another process counts
    /// as dead too, because its start time differs.
    pub fn is_alive(&self) -> bool {
        if self.pid == 0 {
            return false;
        }
        match read_stat(self.pid) {
            Some(stat) => {
                stat.start_time == self.start_time && stat.state != b'Z' && stat.state != b'X'
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_name_with_parentheses_and_spaces() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert!(parse_stat("").is_none());
        assert!(parse_stat("12 (x) R 1 2").is_none());
        assert!(
            parse_stat("12 (x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 notanumber")
                .is_none()
        );
    }

    #[test]
    fn current_process_is_alive_and_a_dead_pid_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let other = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !other.is_alive(),
            "same pid, other start time: a reused pid"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of_pid(child.id());
        child.wait().unwrap();
        if let Some(id) = id {
            assert!(!id.is_alive());
        }
    }
}
