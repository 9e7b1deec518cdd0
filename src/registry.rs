//! The registry: a table of the live services of this user, in one file.
//!
//! `$METABRIDGE_HOME/registry` (mode 0600, in a 0700 directory that must be
//! ours: see [`ensure_home`]) holds [`SLOTS`] fixed slots of 2 KiB. A slot
//! is a length, a checksum and a MessagePack-encoded [`Entry`].
//!
//! - **No mapping.** The file is read with `pread` and written with
//!   `pwrite`, never mapped: any process of the user can truncate it, and
//!   touching a mapped page past the new end would kill us with SIGBUS. A
//!   short read is only missing (empty) slots.
//! - **Locks.** Readers take a shared `flock`, writers an exclusive one
//!   (the kernel releases both when a process dies, so a dead holder never
//!   blocks anyone); every wait for a lock has a deadline. A slot torn by
//!   a writer that died mid-write fails its checksum and counts as empty.
//! - **Staleness.** An entry records its process's pid and start time; an
//!   entry whose process is known to be gone is stale: lookups report it
//!   as [`Error::ServiceNotFound`] with the reason, and reclaim the slot. A
//!   process we cannot check (no descriptors left, say) is never called
//!   dead. A live service whose entry vanished registers again.

use crate::error::{Error, NoSpace, ProtocolError, Result, TimedOut};
use crate::platform::{self, Errno, LockKind};
use metabridge_shm::ProcessIdentity;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Number of slots in the table.
pub const SLOTS: usize = 256;
const SLOT_BYTES: usize = 2048;
/// Bytes before a slot's payload: length (u32), format (u32), checksum (u64).
const SLOT_HEAD: usize = 16;
const PAYLOAD_BYTES: usize = SLOT_BYTES - SLOT_HEAD;
const FILE_LEN: usize = SLOTS * SLOT_BYTES;
/// Format tag of a slot written by this build.
const SLOT_FORMAT: u32 = 2;
/// Longest wait for the registry's lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// TCP address (`host:port`).
    pub tcp: String,
    /// Sorted endpoint names (may be cut short to fit a slot).
    pub endpoints: Vec<String>,
    /// Whether clients must present a token.
    pub token_required: bool,
    /// The token itself, for this user's own clients: the file is readable
    /// by this user only. (Absent for a service whose token was given by
    /// its operator and not published, and for one that needs none.)
    #[serde(default)]
    pub token: Option<String>,
    /// The SHA-256 fingerprint of the TLS certificate its TCP port serves
    /// (`sha256:...`), if it serves TLS: this user's own clients pin it
    /// when their code gave no other trust (the registry is theirs alone).
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
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
    crate::config::home()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/metabridge-{}", platform::euid())))
}

/// Creates the home directory (mode 0700) if needed, and refuses one that
/// someone else could control: a symbolic link, not a directory, owned by
/// another user, or open to group or others ([`Error::InsecurePath`],
/// naming the path, owner and mode). Another user who creates
/// `/dev/shm/metabridge-<uid>` first would otherwise own our registry.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// let home = std::env::temp_dir().join(format!("mb-doc-home-{}", std::process::id()));
/// metabridge::registry::ensure_home(&home).unwrap();
/// std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
/// let e = metabridge::registry::ensure_home(&home).unwrap_err();
/// assert!(e.to_string().contains("mode 0777"), "{e}");
/// # std::fs::remove_dir_all(&home).unwrap();
/// ```
pub fn ensure_home(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || !dir.is_absolute() {
        return Err(Error::InsecurePath {
            path: dir.to_owned(),
            problem: "METABRIDGE_HOME must be an absolute path".into(),
        });
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Missing parents: create them (0700 too), then the home.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| path_error(dir, "cannot create the MetaBridge home", e))?;
        }
        Err(e) => return Err(path_error(dir, "cannot create the MetaBridge home", e)),
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| path_error(dir, "cannot inspect the MetaBridge home", e))?;
    crate::trust::check_private(dir, &meta, crate::trust::Kind::Dir)
}

fn path_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

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
    path: PathBuf,
    dir: PathBuf,
    /// `flock` locks belong to the open file, shared by this process's
    /// threads: they exclude other processes, this mutex our own threads.
    local: Mutex<()>,
}

/// A held `flock`; released on drop (or by the kernel at exit).
struct FileLock<'a> {
    file: &'a File,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        platform::unlock(self.file);
    }
}

/// One slot as read from the file.
enum Slot {
    Empty,
    /// Torn by a dead writer, or not written by this build.
    Unreadable,
    Full(Entry),
}

/// The whole table, read at once.
struct Snapshot(Vec<u8>);

impl Snapshot {
    fn slot(&self, i: usize) -> Slot {
        decode_slot(&self.0[i * SLOT_BYTES..(i + 1) * SLOT_BYTES])
    }
}

/// Decodes one slot's bytes.
fn decode_slot(bytes: &[u8]) -> Slot {
    let word32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let len = word32(0) as usize;
    if len == 0 {
        return Slot::Empty;
    }
    if len > PAYLOAD_BYTES || word32(4) != SLOT_FORMAT {
        return Slot::Unreadable;
    }
    let sum = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or([0; 8]));
    let payload = &bytes[SLOT_HEAD..SLOT_HEAD + len];
    if checksum(payload) != sum {
        return Slot::Unreadable;
    }
    match rmp_serde::from_slice(payload) {
        Ok(e) => Slot::Full(e),
        Err(_) => Slot::Unreadable,
    }
}

/// FNV-1a, 64 bits: detects a slot torn by a writer that died mid-write.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Registry {
    /// Opens (creating if needed) the registry in `dir`, after checking
    /// that `dir` and the file are this user's alone.
    pub fn open(dir: &Path) -> Result<Registry> {
        ensure_home(dir)?;
        let path = dir.join("registry");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(platform::OPEN_NOFOLLOW_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(platform::Errno::ELOOP as i32) {
                    Error::InsecurePath {
                        path: path.clone(),
                        problem: "it is a symbolic link".into(),
                    }
                } else {
                    path_error(&path, "cannot open the registry", e)
                }
            })?;
        let meta = file
            .metadata()
            .map_err(|e| path_error(&path, "cannot inspect the registry", e))?;
        crate::trust::check_private(&path, &meta, crate::trust::Kind::File)?;
        Ok(Registry {
            file,
            path,
            dir: dir.to_owned(),
            local: Mutex::new(()),
        })
    }

    /// The directory of this registry.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the file lock (shared or exclusive) within [`LOCK_TIMEOUT`].
    fn lock(&self, kind: LockKind) -> Result<FileLock<'_>> {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            if platform::try_lock(&self.file, kind) {
                return Ok(FileLock {
                    file: &self.file,
                    _local: local,
                });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(path_error(&self.path, "cannot lock the registry", err));
            }
            if Instant::now() >= deadline {
                return Err(TimedOut::RegistryLocked {
                    path: self.path.clone(),
                    waited: LOCK_TIMEOUT,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads the whole table (the lock is held by the caller).
    fn snapshot(&self, _lock: &FileLock<'_>) -> Result<Snapshot> {
        let mut bytes = vec![0u8; FILE_LEN];
        let mut done = 0;
        // pread: a file truncated by someone gives a short read (missing
        // slots read as empty), never a fault.
        while done < FILE_LEN {
            match self.file.read_at(&mut bytes[done..], done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(path_error(&self.path, "cannot read the registry", e)),
            }
        }
        Ok(Snapshot(bytes))
    }

    fn read(&self) -> Result<Snapshot> {
        let lock = self.lock(LockKind::Shared)?;
        self.snapshot(&lock)
    }

    /// Writes slot `slot` (the exclusive lock is held); `None` empties it.
    fn write_slot(&self, _lock: &FileLock<'_>, slot: usize, entry: Option<&Entry>) -> Result<()> {
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < FILE_LEN as u64 {
            // New, or truncated by someone: restore the full size, with
            // its pages reserved so a full filesystem is an error now.
            self.file
                .set_len(FILE_LEN as u64)
                .map_err(|e| path_error(&self.path, "cannot extend the registry", e))?;
            reserve(&self.file, &self.path)?;
        }
        let mut bytes = vec![0u8; SLOT_BYTES];
        if let Some(e) = entry {
            let payload = encode_entry(e)?;
            bytes[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes[4..8].copy_from_slice(&SLOT_FORMAT.to_le_bytes());
            bytes[8..16].copy_from_slice(&checksum(&payload).to_le_bytes());
            bytes[SLOT_HEAD..SLOT_HEAD + payload.len()].copy_from_slice(&payload);
        }
        self.file
            .write_all_at(&bytes, (slot * SLOT_BYTES) as u64)
            .map_err(|e| {
                if e.raw_os_error() == Some(platform::Errno::ENOSPC as i32) {
                    Error::NoSpace(NoSpace::RegistryWrite {
                        path: self.path.clone(),
                        source: e,
                    })
                } else {
                    path_error(&self.path, "cannot write the registry", e)
                }
            })
    }

    /// Finds the live entry for `name`. A stale one (its process died) is
    /// reclaimed and reported as not found, with the reason.
    pub fn lookup(&self, name: &str) -> Result<Entry> {
        let table = self.read()?;
        for slot in 0..SLOTS {
            let Slot::Full(entry) = table.slot(slot) else {
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
            reason: format!("no such service is registered in {}", self.dir.display()),
        })
    }

    /// All live entries.
    pub fn list(&self) -> Vec<Entry> {
        self.list_all()
            .into_iter()
            .filter(|(_, alive)| *alive)
            .map(|(e, _)| e)
            .collect()
    }

    /// Every readable entry, with whether its process lives.
    pub fn list_all(&self) -> Vec<(Entry, bool)> {
        let Ok(table) = self.read() else {
            return Vec::new();
        };
        (0..SLOTS)
            .filter_map(|s| match table.slot(s) {
                Slot::Full(e) => {
                    let alive = e.process().is_alive();
                    Some((e, alive))
                }
                _ => None,
            })
            .collect()
    }

    fn reclaim(&self, slot: usize, seen: &Entry) -> Result<()> {
        let lock = self.lock(LockKind::Exclusive)?;
        if let Slot::Full(now) = self.snapshot(&lock)?.slot(slot) {
            if &now == seen && now.process().is_dead() {
                self.write_slot(&lock, slot, None)?;
            }
        }
        Ok(())
    }

    /// Removes the entries of dead processes; returns them.
    pub fn reclaim_stale(&self) -> Result<Vec<Entry>> {
        let lock = self.lock(LockKind::Exclusive)?;
        let table = self.snapshot(&lock)?;
        let mut removed = Vec::new();
        for slot in 0..SLOTS {
            match table.slot(slot) {
                Slot::Full(e) if e.process().is_dead() => {
                    self.write_slot(&lock, slot, None)?;
                    removed.push(e);
                }
                Slot::Unreadable => self.write_slot(&lock, slot, None)?,
                _ => {}
            }
        }
        Ok(removed)
    }

    /// Registers `entry`; [`Error::ServiceAlreadyExists`] if a live process
    /// holds the name. Stale and unreadable slots are reused.
    pub fn register(&self, entry: &Entry) -> Result<()> {
        encode_entry(entry)?; // fail early if it cannot fit
        let lock = self.lock(LockKind::Exclusive)?;
        let table = self.snapshot(&lock)?;
        let mut free = None;
        for slot in 0..SLOTS {
            match table.slot(slot) {
                Slot::Full(e) if e.name == entry.name => {
                    if e.pid != entry.pid && e.process().is_alive() {
                        return Err(Error::ServiceAlreadyExists {
                            name: e.name,
                            pid: e.pid,
                        });
                    }
                    free = Some(slot);
                    break;
                }
                Slot::Full(e) if e.process().is_dead() => free = free.or(Some(slot)),
                Slot::Full(_) => {}
                Slot::Empty | Slot::Unreadable => free = free.or(Some(slot)),
            }
        }
        let slot = free.ok_or_else(|| {
            Error::NoSpace(NoSpace::RegistryFull {
                path: self.path.clone(),
                slots: SLOTS,
            })
        })?;
        self.write_slot(&lock, slot, Some(entry))
    }

    /// True if `name` is registered by process `pid`.
    pub fn holds(&self, name: &str, pid: u32) -> Result<bool> {
        let table = self.read()?;
        Ok((0..SLOTS)
            .any(|s| matches!(table.slot(s), Slot::Full(e) if e.name == name && e.pid == pid)))
    }

    /// Removes the entry of `name` if `pid` registered it.
    pub fn unregister(&self, name: &str, pid: u32) -> Result<()> {
        let lock = self.lock(LockKind::Exclusive)?;
        let table = self.snapshot(&lock)?;
        for slot in 0..SLOTS {
            if let Slot::Full(e) = table.slot(slot) {
                if e.name == name && e.pid == pid {
                    self.write_slot(&lock, slot, None)?;
                }
            }
        }
        Ok(())
    }
}

/// Reserves the registry's pages (a full filesystem is a clear error).
fn reserve(file: &File, path: &Path) -> Result<()> {
    match platform::reserve_space(file, FILE_LEN as u64) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSPC) => Err(Error::NoSpace(crate::NoSpace::RegistryReserve {
            path: path.to_path_buf(),
            bytes: FILE_LEN as u64,
            left: platform::space_left(path),
        })),
        // Filesystems without fallocate: the writes themselves report ENOSPC.
        Err(Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(path_error(path, "cannot reserve the registry", e.into())),
    }
}

/// Encodes an entry, dropping endpoint names until it fits a slot.
fn encode_entry(entry: &Entry) -> Result<Vec<u8>> {
    let mut e = entry.clone();
    loop {
        // Named fields (a map): readable by clients in other languages.
        let bytes = rmp_serde::to_vec_named(&e).map_err(|source| ProtocolError::Encode {
            what: "a registry entry",
            source,
        })?;
        if bytes.len() <= PAYLOAD_BYTES {
            return Ok(bytes);
        }
        if e.endpoints.pop().is_none() {
            return Err(ProtocolError::RegistryEntryTooLarge(entry.name.clone()).into());
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
            tcp: "127.0.0.1:1".into(),
            endpoints: vec!["get".into()],
            token_required: false,
            token: None,
            tls_fingerprint: None,
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
            matches!(reg.read().unwrap().slot(0), Slot::Empty),
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
        // A writer that died mid-write: the payload changed, the checksum
        // did not.
        let raw = OpenOptions::new()
            .write(true)
            .open(home.join("registry"))
            .unwrap();
        raw.write_all_at(b"garbage", SLOT_HEAD as u64 + 3).unwrap();
        assert!(matches!(reg.read().unwrap().slot(0), Slot::Unreadable));
        assert!(matches!(
            reg.lookup("a"),
            Err(Error::ServiceNotFound { .. })
        ));
        reg.register(&entry("a", ProcessIdentity::current()))
            .unwrap();
        assert_eq!(reg.lookup("a").unwrap().name, "a");
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// A process of the user truncates the registry: nobody crashes (the
    /// file was mapped before: SIGBUS), entries read as missing, and the
    /// next writer restores the file.
    #[test]
    fn a_truncated_registry_is_missing_entries_not_a_crash() {
        let home = temp_home("truncated");
        let reg = Registry::open(&home).unwrap();
        let me = ProcessIdentity::current();
        for i in 0..40 {
            reg.register(&entry(&format!("svc{i}"), me)).unwrap();
        }
        let other = Registry::open(&home).unwrap();
        assert_eq!(other.list().len(), 40);
        let raw = OpenOptions::new()
            .write(true)
            .open(home.join("registry"))
            .unwrap();
        raw.set_len(SLOT_BYTES as u64 * 3 + 12).unwrap(); // slot 3 cut in its head
        assert_eq!(other.list().len(), 3);
        assert!(matches!(
            other.lookup("svc39"),
            Err(Error::ServiceNotFound { .. })
        ));
        assert_eq!(other.lookup("svc1").unwrap().pid, me.pid);
        raw.set_len(0).unwrap();
        assert!(reg.list().is_empty());
        reg.register(&entry("again", me)).unwrap();
        assert_eq!(
            std::fs::metadata(home.join("registry")).unwrap().len(),
            FILE_LEN as u64
        );
        assert_eq!(other.lookup("again").unwrap().pid, me.pid);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn a_home_someone_else_could_control_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // Another user's directory (uid 65534 stands for that user).
        let home = temp_home("squat");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = Registry::open(&home)
            .err()
            .expect("a squatted home was used");
        let text = e.to_string();
        assert!(matches!(e, Error::InsecurePath { .. }), "{text}");
        assert!(text.contains(&home.display().to_string()), "{text}");
        assert!(
            text.contains("uid 65534") && text.contains("0777"),
            "{text}"
        );
        assert!(!home.join("registry").exists(), "nothing written into it");
        // Ours, but open to others.
        nix::unistd::chown(&home, Some(nix::unistd::geteuid()), None).unwrap();
        let e = Registry::open(&home).err().expect("a 0777 home was used");
        assert!(e.to_string().contains("mode 0777"), "{e}");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(Registry::open(&home).is_err());
        // A symbolic link to a good directory.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = temp_home("squat-link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&home, &link).unwrap();
        let e = Registry::open(&link)
            .err()
            .expect("a symlinked home was used");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&link).unwrap();
        // The registry file itself: a symlink, then another owner, then a mode.
        let target = temp_home("squat-target");
        std::fs::write(&target, vec![0u8; 16]).unwrap();
        std::os::unix::fs::symlink(&target, home.join("registry")).unwrap();
        let e = Registry::open(&home)
            .err()
            .expect("a symlinked registry was used");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(home.join("registry")).unwrap();
        std::fs::remove_file(&target).unwrap();
        let reg_path = home.join("registry");
        std::fs::write(&reg_path, b"").unwrap();
        std::fs::set_permissions(&reg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        nix::unistd::chown(&reg_path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = Registry::open(&home)
            .err()
            .expect("another user's registry was used");
        assert!(e.to_string().contains("uid 65534"), "{e}");
        nix::unistd::chown(&reg_path, Some(nix::unistd::geteuid()), None).unwrap();
        std::fs::set_permissions(&reg_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Registry::open(&home)
            .err()
            .expect("a 0644 registry was used");
        assert!(e.to_string().contains("mode 0644"), "{e}");
        std::fs::set_permissions(&reg_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Registry::open(&home).unwrap();
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// A bad `METABRIDGE_HOME` names the path in its error.
    #[test]
    fn a_bad_home_names_the_path() {
        let e = Registry::open(Path::new("relative/home")).err().unwrap();
        assert!(matches!(e, Error::InsecurePath { .. }), "{e}");
        assert!(
            e.to_string().contains("relative/home") && e.to_string().contains("absolute"),
            "{e}"
        );
        let e = Registry::open(Path::new("/proc/self/no/such/home"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/proc/self/no/such/home"), "{e}");
        let file = temp_home("a-file");
        std::fs::write(&file, b"").unwrap();
        let e = Registry::open(&file).err().unwrap();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        assert!(e.to_string().contains("regular file"), "{e}");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
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
