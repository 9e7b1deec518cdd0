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

/// What reading a process's stat file told us.
enum StatRead {
    Found(ProcStat),
    /// The kernel says there is no such process (ENOENT, ESRCH).
    NoSuchProcess,
    /// We could not tell: out of file descriptors, memory, permissions, or
    /// an unreadable file. Never a reason to call a process dead.
    Unknown,
}

fn read_stat(pid: u32) -> StatRead {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map_or(StatRead::Unknown, StatRead::Found),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => StatRead::NoSuchProcess,
            _ => StatRead::Unknown,
        },
    }
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
        let start_time = match read_stat(pid) {
            StatRead::Found(s) => s.start_time,
            _ => 0,
        };
        ProcessIdentity { pid, start_time }
    }

    /// The process with this pid now, if any (`None` also when it cannot
    /// be read).
    pub fn of_pid(pid: u32) -> Option<ProcessIdentity> {
        match read_stat(pid) {
            StatRead::Found(s) => Some(ProcessIdentity {
                pid,
                start_time: s.start_time,
            }),
            _ => None,
        }
    }

    /// False only when this process is known to be gone: the kernel has no
    /// such pid (ESRCH, ENOENT), it is a zombie, or the pid now belongs to
    /// another process (its start time differs).
    ///
    /// Anything we cannot read (no file descriptors left, say) counts as
    /// alive: calling a live service dead would make us delete its registry
    /// entry or drop its channels, while calling a dead one alive only
    /// delays noticing until the next check.
    pub fn is_alive(&self) -> bool {
        if self.pid == 0 || self.pid > i32::MAX as u32 {
            return false;
        }
        // Signal 0 checks existence without a file descriptor.
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        if nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH) {
            return false;
        }
        match read_stat(self.pid) {
            StatRead::Found(stat) => {
                stat.start_time == self.start_time && stat.state != b'Z' && stat.state != b'X'
            }
            StatRead::NoSuchProcess => false,
            StatRead::Unknown => true,
        }
    }

    /// True when this process is known to be gone; see [`is_alive`](Self::is_alive).
    pub fn is_dead(&self) -> bool {
        !self.is_alive()
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
