//! Wrapping a service's endpoints, before it starts, with the live counters
//! (`stats.rs`) and, when asked, the call log (`logger.rs`).
//!
//! The wrappers are added to the endpoint closures themselves, so the
//! dispatcher and the transports are unchanged: every call that reaches an
//! endpoint — over shared memory or TCP, cached shape or not — is counted,
//! including a wrong argument (binding happens inside the endpoint) and a
//! panic. A request refused before any endpoint (unknown endpoint, bad
//! token, malformed) is not. Without the log, a call costs the counters'
//! few relaxed loads and stores; the log's wrapper exists only when the
//! log is on.

use crate::args::Args;
use crate::error::CallError;
use crate::service::{Endpoint, EndpointFuture, Reply, Service};
use crate::stats::Counters;
use std::sync::Arc;
use std::time::Instant;

/// Longest argument or result text in a log line.
const LOG_CHARS: usize = 200;

/// Wraps every endpoint of `service` with `counters` (endpoint `i` of the
/// sorted names is counted under index `i`) and, if `log`, the call log.
pub(crate) fn instrument<S: Send + Sync + 'static>(
    service: &mut Service<S>,
    counters: Option<Arc<Counters>>,
    log: bool,
) {
    let names = service.endpoint_names();
    let service_name: Arc<str> = service.name.clone().into();
    for (i, name) in names.iter().enumerate() {
        let Some(ep) = service.endpoints.remove(name) else {
            continue;
        };
        let mut ep = match &counters {
            Some(c) => counted(ep, c.clone(), i),
            None => ep,
        };
        if log {
            ep = logged(ep, service_name.clone(), name.as_str().into());
        }
        service.endpoints.insert(name.clone(), ep);
    }
}

fn counted<S: Send + Sync + 'static>(ep: Endpoint<S>, c: Arc<Counters>, i: usize) -> Endpoint<S> {
    match ep {
        Endpoint::Sync(f) => Endpoint::Sync(Arc::new(
            move |s: &S, a: &mut Args<'_>, out: &mut Reply<'_>| {
                let call = c.start(i);
                let r = f(s, a, out);
                if let Some(call) = call {
                    call.finish(r.is_ok());
                }
                r
            },
        )),
        Endpoint::Async(f) => Endpoint::Async(Arc::new(move |s: Arc<S>, a: &mut Args<'_>| {
            let Some(t0) = c.start(i).map(|call| call.into_start()) else {
                return f(s, a);
            };
            let call = crate::stats::OwnedCall::new(c.clone(), i, t0);
            match f(s, a) {
                Err(e) => {
                    call.finish(false);
                    Err(e)
                }
                Ok(fut) => Ok(Box::pin(async move {
                    let r = fut.await;
                    call.finish(r.is_ok());
                    r
                }) as EndpointFuture),
            }
        })),
    }
}

fn logged<S: Send + Sync + 'static>(
    ep: Endpoint<S>,
    service: Arc<str>,
    endpoint: Arc<str>,
) -> Endpoint<S> {
    match ep {
        Endpoint::Sync(f) => Endpoint::Sync(Arc::new(
            move |s: &S, a: &mut Args<'_>, out: &mut Reply<'_>| {
                let args = describe_args(a);
                let t0 = Instant::now();
                let r = f(s, a, out);
                log_call(
                    &service,
                    &endpoint,
                    &args,
                    &r.as_ref().map(|_| &out.buf[..]),
                    t0,
                );
                r
            },
        )),
        Endpoint::Async(f) => Endpoint::Async(Arc::new(move |s: Arc<S>, a: &mut Args<'_>| {
            let args = describe_args(a);
            let t0 = Instant::now();
            match f(s, a) {
                Err(e) => {
                    log_call(&service, &endpoint, &args, &Err(&e), t0);
                    Err(e)
                }
                Ok(fut) => {
                    let (service, endpoint) = (service.clone(), endpoint.clone());
                    Ok(Box::pin(async move {
                        let r = fut.await;
                        log_call(&service, &endpoint, &args, &r.as_ref().map(|b| &b[..]), t0);
                        r
                    }) as EndpointFuture)
                }
            }
        })),
    }
}

fn log_call(
    service: &str,
    endpoint: &str,
    args: &str,
    result: &Result<&[u8], &CallError>,
    t0: Instant,
) {
    let elapsed = t0.elapsed();
    match result {
        Ok(reply) => tracing::info!(
            target: "metabridge::call",
            service,
            "{endpoint}{args} -> {} in {elapsed:?}",
            describe_reply(reply)
        ),
        Err(e) => tracing::info!(
            target: "metabridge::call",
            service,
            "{endpoint}{args} -> error {}: {} in {elapsed:?}",
            e.kind,
            truncate(e.message.clone())
        ),
    }
}

/// `("mundo!", b=2)`: the arguments of a call as the log shows them.
pub(crate) fn describe_args(a: &Args<'_>) -> String {
    let (n, mut pos, kn, mut kw) = a.raw_parts();
    let mut parts = Vec::new();
    for _ in 0..n {
        match rmpv::decode::read_value(&mut pos) {
            Ok(v) => parts.push(v.to_string()),
            Err(_) => {
                parts.push("<malformed>".into());
                break;
            }
        }
    }
    for _ in 0..kn {
        match (
            rmpv::decode::read_value(&mut kw),
            rmpv::decode::read_value(&mut kw),
        ) {
            (Ok(k), Ok(v)) => parts.push(format!("{}={v}", k.as_str().unwrap_or("?"))),
            _ => {
                parts.push("<malformed>".into());
                break;
            }
        }
    }
    format!("({})", truncate(parts.join(", ")))
}

/// The result in an encoded response, as the log shows it.
pub(crate) fn describe_reply(reply: &[u8]) -> String {
    match crate::envelope::decode_response(reply) {
        Ok(crate::envelope::Response::Ok(mut raw)) => match rmpv::decode::read_value(&mut raw) {
            Ok(v) => truncate(v.to_string()),
            Err(_) => "<malformed>".into(),
        },
        Ok(crate::envelope::Response::Err { kind, message, .. }) => {
            format!("error {kind}: {}", truncate(message))
        }
        Err(e) => format!("<{e}>"),
    }
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > LOG_CHARS {
        s = s.chars().take(LOG_CHARS).collect::<String>() + "…";
    }
    s
}
