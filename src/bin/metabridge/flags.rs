//! Flags several commands share: what to call ([`CallSpec`]), where and
//! how ([`Target`]), and the parser of duration flags.

use metabridge::measure;
use std::time::Duration;

/// What to call (`call` and `bench`): service, endpoint, positional
/// arguments, and where and how.
#[derive(clap::Args, Clone)]
pub struct CallSpec {
    /// Service name, as registered.
    pub service: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Positional arguments, a JSON array (e.g. '["mundo!", 2]').
    pub args: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// Where and how to call.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// Keyword arguments, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Constructor arguments: a JSON array (positional) or object (keyword).
    #[arg(long, value_name = "JSON")]
    pub ctor: Option<String>,
    /// Call over TCP at this address instead of looking the service up.
    #[arg(long, value_name = "HOST:PORT")]
    pub at: Option<String>,
    /// The token (default: the one the service published in the registry).
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Transport: auto (shared memory if it can, else TCP), shm or tcp.
    /// `METABRIDGE_TRANSPORT`, the operator's override, wins over it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "shm", "tcp"])]
    pub transport: String,
    /// Timeout of each call (e.g. 500ms, 5s).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Over TLS, trusting the CA certificates of this PEM file (the host
    /// name is checked). Default: `METABRIDGE_TLS_CA`, or for a service in
    /// this user's registry the fingerprint it published.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", conflicts_with = "tls_pin")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Over TLS, trusting only the certificate of this SHA-256 fingerprint
    /// (`sha256:` and 64 hex digits).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FINGERPRINT")]
    pub tls_pin: Option<String>,
    /// This client's certificate, for a service that requires one (with
    /// `--tls-key`).
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of `--tls-cert`.
    #[cfg(feature = "tls")]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The longest duration a flag takes: a deadline this far ahead is still
/// representable (an `Instant` plus a few hundred years would not be).
const MAX_FLAG_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration flag (`--timeout`, `--interval`, `--duration`): more than 0
/// (a zero timeout cannot be set on a socket, a zero interval would poll
/// without sleeping, a zero bench measures nothing) and at most
/// [`MAX_FLAG_DURATION`]. Clap reports an error here as a usage error,
/// exit 2, naming the flag.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = measure::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is no time at all: the duration must be more than 0 (e.g. 500ms, 5s)"
        ));
    }
    if d > MAX_FLAG_DURATION {
        return Err(format!(
            "{s:?} is too long: at most {}s (a year)",
            MAX_FLAG_DURATION.as_secs()
        ));
    }
    Ok(d)
}
