//! Finding services: the registry of this user, one service's entry (an
//! unknown name is an error naming it), and how long a command waits for
//! a service's counters.

use crate::fail::Fail;
use metabridge::registry::{Entry, Registry};
use std::time::Duration;

/// How long a command waits for a service's counters.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The registry in the home directory (`--home`, `$METABRIDGE_HOME` or
/// the default).
pub fn registry() -> Result<Registry, Fail> {
    Ok(Registry::open(&metabridge::registry::home_dir())?)
}

/// The live entry of `service`.
pub fn lookup(service: &str) -> Result<Entry, Fail> {
    Ok(registry()?.lookup(service)?)
}
