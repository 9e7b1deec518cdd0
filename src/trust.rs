//! Trust: who may touch what, checked in one place for both sides.
//!
//! Other users of the machine are hostile. What MetaBridge reads or
//! writes by path (the home directory, the registry, the control socket,
//! the daemon's log) must be this user's alone, and a process on a
//! control socket must be one the service admits. The service side uses
//! [`PeerPolicy`] and the checks of the log; the client side the checks
//! of the socket file; both the checks of the home and the registry.

use crate::error::{Error, Result};
use crate::platform;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// Refuses a home or registry file (or the daemon's log) that is not ours
/// alone.
pub(crate) fn check_private(path: &Path, meta: &std::fs::Metadata, kind: Kind) -> Result<()> {
    let me = platform::euid();
    let ft = meta.file_type();
    let insecure = |problem: String| Error::InsecurePath {
        path: path.to_owned(),
        problem,
    };
    let right_kind = match kind {
        Kind::Dir => ft.is_dir(),
        Kind::File => ft.is_file(),
    };
    if !right_kind {
        return Err(insecure(format!(
            "it is a {}, expected a {}",
            describe(&ft),
            if kind == Kind::Dir {
                "directory"
            } else {
                "regular file"
            }
        )));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me {
        return Err(insecure(format!(
            "it is owned by uid {} (mode {mode:04o}), not by this user (uid {me}): another user may \
             have created it to intercept this user's services; remove it",
            meta.uid()
        )));
    }
    if mode & 0o077 != 0 {
        return Err(insecure(format!(
            "it has mode {mode:04o}: group and others must have no access (chmod {} {})",
            if kind == Kind::Dir { "700" } else { "600" },
            path.display()
        )));
    }
    Ok(())
}

/// Who may open channels on a service.
#[derive(Clone, Debug)]
pub(crate) struct PeerPolicy {
    /// The service's own uid, always admitted.
    pub(crate) uid: u32,
    /// Other uids admitted (`ServiceConfig::allow_uids`).
    pub(crate) also: Vec<u32>,
}

impl PeerPolicy {
    /// `Err(reason)` unless the process on `stream` may talk to us.
    pub(crate) fn admit(&self, stream: &UnixStream) -> std::result::Result<(), String> {
        match platform::peer_uid(stream) {
            Ok(uid) if uid == self.uid || self.also.contains(&uid) => Ok(()),
            Ok(uid) => Err(format!(
                "uid {uid} may not open channels on this service (it admits uid {} and {:?}; see ServiceConfig::allow_uids)",
                self.uid, self.also
            )),
            Err(e) => Err(format!("cannot read the peer's credentials: {e}")),
        }
    }
}

/// Client side: the process serving `socket` must be of this user
/// (`SO_PEERCRED`), or it could be anyone's impostor.
pub(crate) fn check_service_peer(stream: &UnixStream, socket: &Path) -> Result<()> {
    let me = platform::euid();
    let peer = platform::peer_uid(stream)?;
    if peer != me {
        return Err(crate::HandshakeError::ForeignPeer {
            socket: socket.to_path_buf(),
            peer,
            me,
        }
        .into());
    }
    Ok(())
}

/// The control socket must be a socket (not a symlink to one elsewhere)
/// owned by us: otherwise another user could be listening there.
pub(crate) fn check_socket_file(socket: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(socket).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("control socket {}: {e}", socket.display()),
        ))
    })?;
    let me = platform::euid();
    if !meta.file_type().is_socket() || meta.uid() != me {
        return Err(Error::InsecurePath {
            path: socket.to_owned(),
            problem: format!(
                "is a {} owned by uid {} (expected a socket owned by uid {me})",
                describe(&meta.file_type()),
                meta.uid()
            ),
        });
    }
    Ok(())
}

pub(crate) fn describe(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Refuses a log file (as `lstat` or `fstat` describe it) that is not a
/// regular file of this user's alone.
pub(crate) fn check_log(path: &Path, meta: &Metadata) -> Result<()> {
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" to {}", t.display()))
            .unwrap_or_default();
        return Err(Error::InsecurePath {
            path: path.to_owned(),
            problem: format!(
                "it is a symbolic link{target} (owned by uid {}, mode {mode:04o}): the log is \
                 never written through a link, which another user may have made to send it \
                 into a file of theirs or of this user's; name the file itself",
                meta.uid()
            ),
        });
    }
    check_private(path, meta, Kind::File)?;
    if meta.nlink() > 1 {
        return Err(Error::InsecurePath {
            path: path.to_owned(),
            problem: format!(
                "it has {} hard links (owned by uid {}, mode {mode:04o}): another name of the \
                 same file may be in a place another user controls; use a file of its own",
                meta.nlink(),
                meta.uid()
            ),
        });
    }
    Ok(())
}

/// Refuses a path to the log on which another user could put something
/// else in its place: a directory or symbolic link of another user's
/// (root's are trusted) on the way as written, or a directory on the way
/// as resolved that is another user's or that anyone may write without
/// the sticky bit. Directories that do not exist are left to the open,
/// which fails on them.
pub(crate) fn check_directories(path: &Path) -> Result<()> {
    let me = platform::euid();
    let trusted = |uid: u32| uid == me || uid == 0;
    let refuse = |dir: &Path, what: &str, meta: &Metadata| Error::InsecurePath {
        path: path.to_owned(),
        problem: format!(
            "{what} {} on the way to it is owned by uid {} (mode {:04o}), not by this user \
             (uid {me}) or root: another user could put another file in its place; keep the \
             log in directories of this user's",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ),
    };
    let absolute = match path.is_absolute() {
        true => path.to_owned(),
        false => std::env::current_dir()?.join(path),
    };
    let Some(parent) = absolute.parent() else {
        return Ok(());
    };
    // As written: every link and directory on the way.
    let mut prefix = PathBuf::new();
    for part in parent.components() {
        prefix.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&prefix) else {
            return Ok(());
        };
        if !trusted(meta.uid()) {
            let what = match meta.file_type().is_symlink() {
                true => "the symbolic link",
                false => "the directory",
            };
            return Err(refuse(&prefix, what, &meta));
        }
    }
    // As resolved: every directory the kernel will go through.
    let Ok(real) = std::fs::canonicalize(parent) else {
        return Ok(());
    };
    for dir in real.ancestors() {
        let meta = std::fs::metadata(dir)?;
        if !trusted(meta.uid()) {
            return Err(refuse(dir, "the directory", &meta));
        }
        let mode = meta.mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(Error::InsecurePath {
                path: path.to_owned(),
                problem: format!(
                    "the directory {} on the way to it has mode {:04o}: anyone may replace \
                     what is in it (it lacks the sticky bit of /tmp); keep the log in \
                     directories of this user's",
                    dir.display(),
                    mode & 0o7777
                ),
            });
        }
    }
    Ok(())
}
