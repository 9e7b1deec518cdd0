//! The call-shape cache: what a connection's last call resolved to, so
//! that a next call of the same shape skips decoding the envelope, the
//! token check, the endpoint table and the instance cache.
//!
//! Invariants: a shape matches only a request whose bytes before and after
//! its positional arguments are exactly those of the call it was taken from
//! (same endpoint, keyword arguments, constructor arguments and token, so
//! the token check that call passed holds for this one too), and only while
//! the instance cache's eviction epoch is the one read before that call
//! looked its instance up (so an evicted instance is never used again); the
//! positional arguments must still be one whole MessagePack array, and are
//! bound and type-checked on every call.

use super::ctor_key::ctor_key;
use super::instances::{Instance, InstanceCache};
use crate::args::Args;
use crate::envelope;
use crate::error::CallError;
use crate::service::Endpoint;
use std::any::Any;

/// What a dispatcher remembers of one connection's last call, to skip
/// decoding the next one if it has the same shape (opaque to callers).
#[derive(Default)]
pub(crate) struct CallCache(Option<Box<dyn Any + Send>>);

impl CallCache {
    /// The remembered shape, if it is one of a service of type `S`.
    #[inline]
    pub(super) fn shape_mut<S: Send + Sync + 'static>(&mut self) -> Option<&mut Shape<S>> {
        self.0.as_mut()?.downcast_mut::<Shape<S>>()
    }

    /// Remembers `shape` as the connection's last call (`None` forgets).
    pub(super) fn remember<S: Send + Sync + 'static>(&mut self, shape: Option<Shape<S>>) {
        self.0 = shape.map(|s| Box::new(s) as Box<dyn Any + Send>);
    }

    #[cfg(test)]
    pub(super) fn remembers_a_shape(&self) -> bool {
        self.0.is_some()
    }
}

/// The last call of a connection: the request bytes around its positional
/// arguments, and what they resolved to. A request with the same bytes
/// around its arguments (same endpoint, keyword arguments, constructor
/// arguments and token) resolves the same way, as long as the instance is
/// still cached (eviction epoch unchanged).
pub(super) struct Shape<S> {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// Where the raw kwargs map lies in `suffix`.
    kwargs: std::ops::Range<usize>,
    endpoint_name: String,
    pub(super) endpoint: Endpoint<S>,
    pub(super) instance: Instance<S>,
    ctor_key: Vec<u8>,
    epoch: u64,
    hits: u32,
}

/// A cached call promotes its instance in the LRU this often, so that
/// recency stays close to true LRU.
const TOUCH_EVERY: u32 = 64;

impl<S: Send + Sync + 'static> Shape<S> {
    /// The [`Shape`] of a decoded call, if its positional arguments come
    /// before its keyword arguments and the constructor sections (as every
    /// client we know writes them). The epoch is the one read *before* the
    /// instance was looked up, so an eviction in between invalidates it.
    pub(super) fn of(
        request: &[u8],
        req: &envelope::Request<'_>,
        endpoint: &Endpoint<S>,
        instance: &Instance<S>,
        epoch: u64,
    ) -> Option<Shape<S>> {
        let base = request.as_ptr() as usize;
        let offset = |part: &[u8]| {
            let at = (part.as_ptr() as usize).checked_sub(base)?;
            (at + part.len() <= request.len()).then_some(at)
        };
        let args_at = offset(req.args)?;
        let args_end = args_at + req.args.len();
        let kwargs_at = offset(req.kwargs)?.checked_sub(args_end)?;
        let (ctor_a, ctor_k) = (offset(req.ctor_args)?, offset(req.ctor_kwargs)?);
        if ctor_a < args_end || ctor_k < args_end {
            return None;
        }
        Some(Shape {
            prefix: request[..args_at].to_vec(),
            suffix: request[args_end..].to_vec(),
            kwargs: kwargs_at..kwargs_at + req.kwargs.len(),
            endpoint_name: req.endpoint.to_owned(),
            endpoint: endpoint.clone(),
            instance: instance.clone(),
            ctor_key: ctor_key(request, req.ctor_args, req.ctor_kwargs).into_owned(),
            epoch,
            hits: 0,
        })
    }

    /// The positional arguments of `request` if it has this shape and the
    /// shape's instance is still cached in `instances`; `None` to take the
    /// full path.
    #[inline]
    pub(super) fn args_in<'r>(
        &self,
        request: &'r [u8],
        instances: &InstanceCache<S>,
    ) -> Option<&'r [u8]> {
        let (p, q) = (self.prefix.len(), self.suffix.len());
        if request.len() <= p + q
            || !request.starts_with(&self.prefix)
            || !request.ends_with(&self.suffix)
            || instances.epoch() != self.epoch
        {
            return None;
        }
        let args = &request[p..request.len() - q];
        if crate::msgpack::value_len(args).ok()? != args.len()
            || crate::msgpack::array_header(args).is_none()
        {
            return None;
        }
        Some(args)
    }

    /// Counts a call through this shape, promoting its instance in the LRU
    /// of `instances` every [`TOUCH_EVERY`] calls.
    #[inline]
    pub(super) fn count_hit(&mut self, instances: &InstanceCache<S>) {
        self.hits = self.hits.wrapping_add(1);
        if self.hits % TOUCH_EVERY == 0 {
            instances.touch(&self.ctor_key);
        }
    }

    /// Binds `args` (positional, from [`Shape::args_in`]) and the shape's
    /// keyword arguments for its endpoint.
    #[inline]
    pub(super) fn bind<'a>(&'a self, args: &'a [u8]) -> Result<Args<'a>, CallError> {
        let kwargs = &self.suffix[self.kwargs.clone()];
        Args::new(&self.endpoint_name, args, kwargs)
    }
}
