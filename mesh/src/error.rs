//! The mesh's errors, each naming what was wrong.

/// What went wrong joining or watching the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A service name that a zenoh key expression cannot hold.
    #[error("service name {name:?} cannot be used in the mesh: {why}")]
    Name { name: String, why: &'static str },
    /// A setting zenoh refused.
    #[error("mesh setting {key}: {why}")]
    Setting { key: &'static str, why: String },
    /// Zenoh itself failed (opening the session, declaring, querying).
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// An advert that is not what a member sends.
    #[error("replica {instance} sent an advert that cannot be read: {why}")]
    BadAdvert { instance: String, why: String },
}

impl MeshError {
    pub(crate) fn zenoh(e: impl std::fmt::Display) -> MeshError {
        MeshError::Zenoh(e.to_string())
    }
}
