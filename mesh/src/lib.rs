//! Services found by name across hosts: **zenoh carries membership,
//! MetaBridge's own TLS TCP carries the calls.**
//!
//! A service that joins the mesh ([`Member::join`]) declares a zenoh
//! liveliness token `metabridge/<service>/<instance-id>` (a fresh id per
//! process start) once it serves, and answers a query on
//! `metabridge/<service>/<instance-id>/advert` with an [`Advert`]: where a
//! client reaches it and its certificate's fingerprint, as a hint (never
//! its token). A client keeps a live view of a service's replicas
//! ([`Replicas::watch`]): tokens that appear are asked for their advert,
//! tokens that disappear (their process gone, or silent past the lease)
//! leave the view. Trust never comes from the mesh: a client verifies the
//! replica it calls with its own CA or pins.
//!
//! This file only wires the pieces, one concern a file:
//! * `settings`: [`MeshConfig`] and the zenoh configuration it makes (peer
//!   mode, gossip on, multicast scouting off, the lease);
//! * `keys`: service names as key expressions (names zenoh cannot hold
//!   are refused);
//! * `member`: a service's side;
//! * `view`: a client's view of the replicas;
//! * `announce`: the runtime's announcer, and the membership loop;
//! * `client`: [`MeshClient`], calls by name;
//! * `agent`, `relay`: the `metabridge-mesh agent` and `relay` helpers,
//!   which keep the membership or the client for a program that does not
//!   link zenoh (the runtime's `MeshAgent` and `MeshRelay`);
//! * `error`: [`MeshError`].

pub mod agent;
mod announce;
mod client;
mod error;
mod keys;
mod member;
pub mod relay;
mod settings;
mod view;

pub use announce::{install, MeshAnnouncer, ServiceMesh};
pub use client::{ConnectMesh, MeshClient, MeshConnect};
pub use error::MeshError;
pub use keys::service_key;
pub use member::{Advert, Member};
pub use settings::{MeshAuth, MeshConfig, MESH_ENV};
pub use view::{survey, Replica, Replicas};
