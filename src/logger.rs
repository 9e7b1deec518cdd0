//! The daemon's log: where the events of [`ServiceConfig::logger`] go when
//! a service runs in a daemon started by [`run`](crate::run).
//!
//! The library itself only emits `tracing` events (targets
//! `metabridge::service` for start, stop, connects and disconnects,
//! `metabridge::call` for calls); it never installs a subscriber in a
//! program of yours. A daemon is a process of the library's own, so there
//! it installs one — when `logger` is on or `RUST_LOG` is set, and only if
//! the process has none yet — writing to the standard error inherited from
//! the parent, or appending to [`ServiceConfig::log_file`].
//!
//! **The log file holds call arguments**, so it must be this user's alone
//! and must be the file it names ([`open_log_file`]): opened without
//! following a symbolic link (`O_NOFOLLOW`: another user's link into a
//! file of ours would receive the log), created 0600, and refused when it
//! already exists but is not a regular file of this user's, is open to
//! group or others, has a second hard link, or lies in a directory that
//! another user controls (a directory or link of theirs on the way, or a
//! directory anyone may write without the sticky bit). A refused file
//! stops the daemon with [`Error::InsecurePath`] naming the path, owner
//! and mode: falling back to standard error would hide that someone set a
//! trap. A file that merely cannot be opened (a missing directory) is
//! reported and the log goes to standard error.

use crate::config::ServiceConfig;
use crate::error::{Error, Result};
use crate::platform;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Installs the daemon's subscriber if the log is wanted (see the module
/// docs). A log file that is refused is an error (the daemon must not
/// start); one that cannot be opened is reported on standard error and
/// the daemon goes on without a file.
pub(crate) fn init_daemon(config: &ServiceConfig) -> Result<()> {
    let env = crate::config::log_filter();
    if !config.logger && env.is_none() {
        return Ok(());
    }
    let file = match config.log_file.as_deref().map(open_log_file) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e @ Error::InsecurePath { .. })) => return Err(e),
        Some(Err(e)) => {
            eprintln!("metabridge: {e}; logging to standard error");
            None
        }
    };
    #[cfg(not(feature = "log"))]
    drop(file);
    #[cfg(feature = "log")]
    {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::new(env.as_deref().unwrap_or("metabridge=info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(true);
        // `try_init`: a process that already has a subscriber keeps it.
        let _ = match file {
            Some(f) => builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    }
    Ok(())
}

/// Opens the log file `path` for appending, creating it with mode 0600,
/// after the checks of the module docs. [`Error::InsecurePath`] when it
/// is refused; [`Error::Io`] naming the path when it cannot be opened.
pub(crate) fn open_log_file(path: &Path) -> Result<File> {
    crate::trust::check_directories(path)?;
    // Checked before opening too, so that nothing of another user's (a
    // device, a FIFO) is even opened; the check after opening is the one
    // that counts, on what was really opened.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        crate::trust::check_log(path, &meta)?;
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO put there meanwhile fails the open (ENXIO)
        // instead of blocking it; it has no effect on a regular file.
        .custom_flags(platform::OPEN_NOFOLLOW_CLOEXEC | platform::OPEN_NOCTTY_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // ELOOP (a link put there meanwhile), EACCES (a file of
            // another user's): say what is there, if that is the reason.
            let refused = std::fs::symlink_metadata(path)
                .ok()
                .and_then(|meta| crate::trust::check_log(path, &meta).err());
            refused.unwrap_or_else(|| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot open the log file {}: {e}", path.display()),
                ))
            })
        })?;
    let meta = file.metadata()?;
    crate::trust::check_log(path, &meta)?;
    Ok(file)
}
