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

use crate::service::ServiceConfig;

/// Installs the daemon's subscriber if the log is wanted (see the module
/// docs). Errors (a log file that cannot be opened) are reported on
/// standard error and the daemon goes on without a file.
pub(crate) fn init_daemon(config: &ServiceConfig) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    if !config.logger && env.is_none() {
        return;
    }
    #[cfg(feature = "log")]
    {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::new(env.as_deref().unwrap_or("metabridge=info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(true);
        let file = config.log_file.as_ref().and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    eprintln!(
                        "metabridge: cannot open the log file {}: {e}; logging to standard error",
                        path.display()
                    )
                })
                .ok()
        });
        // `try_init`: a process that already has a subscriber keeps it.
        let _ = match file {
            Some(f) => builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    }
}
