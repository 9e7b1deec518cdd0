//! Dispatch: from request bytes to response bytes. This file only wires
//! the parts together and re-exports what the transports use.
//!
//! The parts, each depending only on those listed before it:
//! - [`hash`]: the unseeded hasher of the dispatcher's own maps;
//! - [`token`]: the constant-time token comparison;
//! - [`panic`](mod@panic): the message of a caught panic;
//! - [`canonical`]: canonical MessagePack re-encoding;
//! - [`ctor_key`]: the raw and the canonical key of constructor arguments;
//! - [`instances`]: the sharded instance LRU and the instance handle;
//! - [`call_shape`]: what a connection's last call resolved to (the fast
//!   path);
//! - [`dispatcher`]: the endpoint table, the token check and the calls;
//! - [`reply`]: the policy every outgoing reply obeys (size limit,
//!   counters), on both transports.

mod call_shape;
mod canonical;
mod ctor_key;
mod dispatcher;
mod hash;
mod instances;
mod panic;
mod reply;
mod token;

pub(crate) use call_shape::CallCache;
pub(crate) use dispatcher::{finish_async, Dispatch, Dispatcher, Outcome, CONSTRUCT_ENDPOINT};
pub(crate) use panic::panic_message;
pub(crate) use reply::outgoing_reply;
