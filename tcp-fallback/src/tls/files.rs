//! Reading certificate and key files as a service reads its log file: a
//! regular file, not a symlink, owned by this user; a private key readable
//! by nobody else (another user who could read it could impersonate the
//! service). Bounded before it is read: a PEM bundle is kilobytes.

use super::TlsError;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The largest certificate or key file read (a CA bundle of a few hundred
/// certificates fits).
pub(super) const MAX_PEM_FILE: u64 = 4 << 20;

/// What a file holds, for the checks and the errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holds {
    Certificates,
    PrivateKey,
}

/// Reads `path` after checking it: see the module doc.
pub(super) fn read_checked(path: &Path, holds: Holds) -> Result<Vec<u8>, TlsError> {
    let refuse = |why: String| TlsError::File {
        path: path.to_owned(),
        why,
    };
    // O_NOFOLLOW: a symlink in the last component fails to open rather
    // than being followed to a file someone else chose.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse("it is a symlink; give the file itself".into()),
            _ => refuse(format!("cannot open it: {e}")),
        })?;
    // Checked on the open file, not the path: no race with a rename.
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot stat it: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this user (uid {me})",
            meta.uid()
        )));
    }
    if holds == Holds::PrivateKey && meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "the private key is readable or writable by others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    if holds == Holds::Certificates && meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "others may write to it (mode {:o}); chmod go-w it",
            meta.mode() & 0o777
        )));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(refuse(format!(
            "it is {} bytes, more than the {MAX_PEM_FILE} a PEM file may be",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(refuse("it grew past the limit while read".into()));
    }
    Ok(bytes)
}
