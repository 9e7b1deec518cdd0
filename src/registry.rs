//! The registry: a memory-mapped table of the live services of this user.
//!
//! One file, `$METABRIDGE_HOME/registry` (mode 0600, in a 0700 directory),
//! holds [`SLOTS`] fixed slots. Each slot is a seqlock: a sequence word
//! (odd while a writer is inside) and a MessagePack-encoded [`Entry`] in
//! atomic words.
//!
//! - **Readers take no lock.** They copy a slot and retry if its sequence
//!   moved. A slot whose sequence stays odd belongs to a writer that died
//!   mid-write; the reader notices that no writer holds the lock (a
//!   non-blocking shared `flock`) and skips the torn slot instead of
//!   waiting.
//! - **Writers** (register, unregister, reclaim) serialize on an exclusive
//!   `flock` of the file, which the kernel releases when a process dies, so
//!   a dead writer never blocks anyone. A writer that finds an odd
//!   sequence repairs the slot.
//! - **Staleness.** An entry records its process's pid and start time; an
//!   entry whose process is gone is stale: lookups report it as
//!   [`Error::ServiceNotFound`] with the reason, and reclaim the slot.

use crate::error::{Error, Result};
use memmap2::{MmapOptions, MmapRaw};
use metabridge_shm::ProcessIdentity;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Number of slots in the table.
pub const SLOTS: usize = 256;
const SLOT_WORDS: usize = 256;
const SLOT_BYTES: usize = SLOT_WORDS * 8;
/// Payload bytes of a slot: the words after the sequence and length.
const PAYLOAD_WORDS: usize = SLOT_WORDS - 2;
const FILE_LEN: usize = SLOTS * SLOT_BYTES;

/// One live service, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Service name.
    pub name: String,
    /// Process serving it.
    pub pid: u32,
    /// That process's start time (clock ticks after boot).
    pub start_time: u64,
    /// Seconds since the Unix epoch when it registered.
    pub registered_at: u64,
    /// Unix socket where shared-memory channels are set up.
    pub control_socket: String,
    /// Name of the doorbell segment its workers sleep on.
    pub doorbells: String,
    /// Directory of its shared-memory segments.
    pub shm_dir: String,
    /// TCP address (`host:port`).
    pub tcp: String,
    /// Sorted endpoint names (may be cut short to fit a slot).
    pub endpoints: Vec<String>,
    /// Whether clients must present a token.
    pub token_required: bool,
}

impl Entry {
    /// The process that registered this entry.
    pub fn process(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// `$METABRIDGE_HOME`, or `/dev/shm/metabridge-<uid>`.
pub fn home_dir() -> PathBuf {
    match std::env::var_os("METABRIDGE_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(format!("/dev/shm/metabridge-{}", nix::unistd::getuid())),
    }
}

/// Creates the home directory (mode 0700) if needed.
pub fn ensure_home(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 && meta.uid() == nix::unistd::getuid().as_raw() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

use std::os::unix::fs::MetadataExt;

/// An open registry table.
///
/// ```
/// let home = std::env::temp_dir().join(format!("mb-doc-registry-{}", std::process::id()));
/// let reg = metabridge::registry::Registry::open(&home).unwrap();
/// assert!(matches!(reg.lookup("nothing"), Err(metabridge::Error::ServiceNotFound { .. })));
/// # std::fs::remove_dir_all(&home).unwrap();
/// ```
pub struct Registry {
    file: File,
    map: MmapRaw,
    dir: PathBuf,
}

// SAFETY: the mapping is accessed only through atomics (see `word`).
unsafe impl Send for Registry {}
// SAFETY: as above.
unsafe impl Sync for Registry {}

/// Holds the exclusive writer lock; released on drop (or by the kernel).
struct WriteLock<'a>(&'a File);

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        flock(self.0, libc::LOCK_UN);
    }
}

impl Registry {
    /// Opens (creating if needed) the registry in `dir`.
    pub fn open(dir: &Path) -> Result<Registry> {
        ensure_home(dir)?;
        let path = dir.join("registry");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if file.metadata()?.len() < FILE_LEN as u64 {
            // Growing with zeros is idempotent; zero is an empty slot.
            let lock = Self::lock_file(&file)?;
            if file.metadata()?.len() < FILE_LEN as u64 {
                file.set_len(FILE_LEN as u64)?;
            }
            drop(lock);
        }
        let map = MmapOptions::new().len(FILE_LEN).map_raw(&file)?;
        Ok(Registry {
            file,
            map,
            dir: dir.to_owned(),
        })
    }

    /// The directory of this registry.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_file(file: &File) -> Result<WriteLock<'_>> {
        if !flock(file, libc::LOCK_EX) {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(WriteLock(file))
    }

    fn word(&self, slot: usize, i: usize) -> &AtomicU64 {
        assert!(slot < SLOTS && i < SLOT_WORDS);
        // SAFETY: in bounds of the FILE_LEN-byte mapping (asserted), 8-byte
        // aligned (page-aligned base, 8-byte words); the table is only ever
        // accessed through these atomics, by every process.
        unsafe { &*(self.map.as_ptr().add(slot * SLOT_BYTES + i * 8) as *const AtomicU64) }
    }

    /// Reads slot `slot`: `Ok(None)` if empty, `Err(())` if torn (a writer
    /// died inside it) or undecodable.
    fn read_slot(&self, slot: usize) -> Result<Option<Entry>, ()> {
        let mut spins = 0u32;
        loop {
            // Acquire: pairs with the writer's final Release increment; the
            // words read below are at least as new as that write.
            let s1 = self.word(slot, 0).load(Ordering::Acquire);
            if s1 & 1 == 1 {
                spins += 1;
                if spins > 1000 {
                    if self.no_writer() {
                        return Err(());
                    }
                    spins = 0;
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
                continue;
            }
            let len = self.word(slot, 1).load(Ordering::Relaxed) as usize;
            if len == 0 {
                return Ok(None);
            }
            if len > PAYLOAD_WORDS * 8 {
                return Err(());
            }
            let mut bytes = Vec::with_capacity(len.div_ceil(8) * 8);
            for i in 0..len.div_ceil(8) {
                bytes.extend_from_slice(
                    &self.word(slot, 2 + i).load(Ordering::Relaxed).to_le_bytes(),
                );
            }
            // Acquire fence: orders the data loads above before the second
            // sequence load, so a writer that started meanwhile is seen.
            fence(Ordering::Acquire);
            if self.word(slot, 0).load(Ordering::Relaxed) != s1 {
                continue;
            }
            bytes.truncate(len);
            return rmp_serde::from_slice(&bytes).map(Some).map_err(|_| ());
        }
    }

    /// True if no process holds the writer lock right now.
    fn no_writer(&self) -> bool {
        if flock(&self.file, libc::LOCK_SH | libc::LOCK_NB) {
            flock(&self.file, libc::LOCK_UN);
            true
        } else {
            false
        }
    }

    /// Writes slot `slot` (the writer lock is held); `None` empties it.
    fn write_slot(&self, _lock: &WriteLock<'_>, slot: usize, entry: Option<&Entry>) -> Result<()> {
        let bytes = match entry {
            Some(e) => encode_entry(e)?,
            None => Vec::new(),
        };
        let seq = self.word(slot, 0);
        let s = seq.load(Ordering::Relaxed);
        // Make the sequence odd (if a dead writer left it odd, keep it so).
        let odd = if s & 1 == 1 { s } else { s + 1 };
        seq.store(odd, Ordering::Relaxed);
        // Release fence: the odd sequence is visible before any data word
        // changes, so a reader that sees new data also sees it odd (or a
        // later value) and retries.
        fence(Ordering::Release);
        self.word(slot, 1)
            .store(bytes.len() as u64, Ordering::Relaxed);
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(slot, 2 + i)
                .store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        // Release: pairs with the readers' Acquire load of the sequence.
        seq.store(odd + 1, Ordering::Release);
        Ok(())
    }

    /// Finds the live entry for `name`. A stale one (its process died) is
    /// reclaimed and reported as not found, with the reason.
    pub fn lookup(&self, name: &str) -> Result<Entry> {
        for slot in 0..SLOTS {
            let Ok(Some(entry)) = self.read_slot(slot) else {
                continue;
            };
            if entry.name != name {
                continue;
            }
            if entry.process().is_alive() {
                return Ok(entry);
            }
            let _ = self.reclaim(slot, &entry);
            return Err(Error::ServiceNotFound {
                name: name.into(),
                reason: format!(
                    "its process {} died; the stale entry was removed",
                    entry.pid
                ),
            });
        }
        Err(Error::ServiceNotFound {
            name: name.into(),
            reason: "no such service is registered".into(),
        })
    }

    /// All live entries.
    pub fn list(&self) -> Vec<Entry> {
        (0..SLOTS)
            .filter_map(|s| self.read_slot(s).ok().flatten())
            .filter(|e| e.process().is_alive())
            .collect()
    }

    fn reclaim(&self, slot: usize, seen: &Entry) -> Result<()> {
        let lock = Self::lock_file(&self.file)?;
        if let Ok(Some(now)) = self.read_slot(slot) {
            if &now == seen && !now.process().is_alive() {
                self.write_slot(&lock, slot, None)?;
            }
        }
        Ok(())
    }

    /// Registers `entry`; [`Error::ServiceAlreadyExists`] if a live process
    /// holds the name. Stale and torn slots are reused.
    pub fn register(&self, entry: &Entry) -> Result<()> {
        encode_entry(entry)?; // fail early if it cannot fit
        let lock = Self::lock_file(&self.file)?;
        let mut free = None;
        for slot in 0..SLOTS {
            match self.read_slot(slot) {
                Ok(Some(e)) if e.name == entry.name => {
                    if e.process().is_alive() && e.pid != entry.pid {
                        return Err(Error::ServiceAlreadyExists {
                            name: e.name,
                            pid: e.pid,
                        });
                    }
                    free = Some(slot);
                    break;
                }
                Ok(Some(e)) if !e.process().is_alive() => free = free.or(Some(slot)),
                Ok(Some(_)) => {}
                Ok(None) | Err(()) => free = free.or(Some(slot)),
            }
        }
        let slot = free.ok_or_else(|| Error::Io(std::io::Error::other("the registry is full")))?;
        self.write_slot(&lock, slot, Some(entry))
    }

    /// Removes the entry of `name` if `pid` registered it.
    pub fn unregister(&self, name: &str, pid: u32) -> Result<()> {
        let lock = Self::lock_file(&self.file)?;
        for slot in 0..SLOTS {
            if let Ok(Some(e)) = self.read_slot(slot) {
                if e.name == name && e.pid == pid {
                    self.write_slot(&lock, slot, None)?;
                }
            }
        }
        Ok(())
    }
}

/// `flock(2)` on the registry file; true on success.
fn flock(file: &File, op: libc::c_int) -> bool {
    loop {
        // SAFETY: a valid open fd (borrowed from `file` for the call) and a
        // plain operation code; flock touches no memory of ours.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Encodes an entry, dropping endpoint names until it fits a slot.
fn encode_entry(entry: &Entry) -> Result<Vec<u8>> {
    let mut e = entry.clone();
    loop {
        let bytes = rmp_serde::to_vec(&e).map_err(|x| Error::Protocol(x.to_string()))?;
        if bytes.len() <= PAYLOAD_WORDS * 8 {
            return Ok(bytes);
        }
        if e.endpoints.pop().is_none() {
            return Err(Error::Protocol(format!(
                "registry entry for {:?} is too large",
                entry.name
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, id: ProcessIdentity) -> Entry {
        Entry {
            name: name.into(),
            pid: id.pid,
            start_time: id.start_time,
            registered_at: 0,
            control_socket: "/x.sock".into(),
            doorbells: "bells".into(),
            shm_dir: "/dev/shm".into(),
            tcp: "127.0.0.1:1".into(),
            endpoints: vec!["get".into()],
            token_required: false,
        }
    }

    fn temp_home(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mb-reg-{tag}-{}", std::process::id()))
    }

    #[test]
    fn register_lookup_unregister_and_duplicates() {
        let home = temp_home("basic");
        let reg = Registry::open(&home).unwrap();
        let me = ProcessIdentity::current();
        reg.register(&entry("svc", me)).unwrap();
        assert_eq!(reg.lookup("svc").unwrap().pid, me.pid);
        // Another live process (our parent) holding the name blocks us.
        let parent = ProcessIdentity::of_pid(std::os::unix::process::parent_id()).unwrap();
        match reg.register(&entry("svc", parent)) {
            Err(Error::ServiceAlreadyExists { pid, .. }) => assert_eq!(pid, me.pid),
            other => panic!("{other:?}"),
        }
        // Visible from a second mapping of the same file.
        let other = Registry::open(&home).unwrap();
        assert_eq!(other.list().len(), 1);
        reg.unregister("svc", me.pid).unwrap();
        assert!(matches!(
            other.lookup("svc"),
            Err(Error::ServiceNotFound { .. })
        ));
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn stale_entries_are_reported_and_reclaimed() {
        let home = temp_home("stale");
        let reg = Registry::open(&home).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = ProcessIdentity {
            pid: child.id(),
            start_time: 1,
        };
        child.wait().unwrap();
        reg.register(&entry("gone", dead)).unwrap();
        match reg.lookup("gone") {
            Err(Error::ServiceNotFound { reason, .. }) => {
                assert!(reason.contains("died"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            reg.read_slot(0).unwrap().is_none(),
            "the stale slot was reclaimed"
        );
        // The name is free for a live process again.
        reg.register(&entry("gone", ProcessIdentity::current()))
            .unwrap();
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn a_torn_slot_left_by_a_dead_writer_blocks_nobody() {
        let home = temp_home("torn");
        let reg = Registry::open(&home).unwrap();
        reg.register(&entry("a", ProcessIdentity::current()))
            .unwrap();
        // Simulate a writer that died mid-write: odd sequence, lock free.
        reg.word(0, 0).fetch_add(1, Ordering::SeqCst);
        assert!(reg.read_slot(0).is_err());
        assert!(matches!(
            reg.lookup("a"),
            Err(Error::ServiceNotFound { .. })
        ));
        reg.register(&entry("a", ProcessIdentity::current()))
            .unwrap();
        assert_eq!(reg.lookup("a").unwrap().name, "a");
        assert_eq!(
            reg.word(0, 0).load(Ordering::SeqCst) % 2,
            0,
            "the writer repaired the slot"
        );
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn files_are_private() {
        let home = temp_home("mode");
        let _reg = Registry::open(&home).unwrap();
        assert_eq!(
            std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(home.join("registry"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&home).unwrap();
    }
}
