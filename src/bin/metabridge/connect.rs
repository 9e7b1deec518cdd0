//! From the command line to a call: the JSON arguments as [`CallArgs`],
//! and a [`Client`] opened the way the [`Target`] flags say.

use crate::fail::{usage, Fail};
use crate::flags::Target;
use crate::json;
use crate::services::lookup;
use metabridge::{CallArgs, Client};

/// The call's arguments and constructor arguments, from the command line.
pub fn call_args(
    args: Option<&str>,
    target: &Target,
) -> Result<(CallArgs, Option<CallArgs>), Fail> {
    let mut call = CallArgs::new();
    if let Some(a) = args {
        match json::parse(a, "ARGS")? {
            rmpv::Value::Array(items) => {
                for v in items {
                    call = call.arg(v)?;
                }
            }
            _ => return Err(usage("ARGS must be a JSON array, e.g. '[\"mundo!\", 2]'")),
        }
    }
    if let Some(k) = &target.kwargs {
        match json::parse(k, "--kwargs")? {
            rmpv::Value::Map(pairs) => {
                for (k, v) in pairs {
                    call = call.kwarg(k.as_str().unwrap_or_default(), v)?;
                }
            }
            _ => return Err(usage("--kwargs must be a JSON object, e.g. '{\"a\": 1}'")),
        }
    }
    let ctor = match &target.ctor {
        None => None,
        Some(c) => Some(match json::parse(c, "--ctor")? {
            rmpv::Value::Array(items) => {
                let mut a = CallArgs::new();
                for v in items {
                    a = a.arg(v)?;
                }
                a
            }
            rmpv::Value::Map(pairs) => {
                let mut a = CallArgs::new();
                for (k, v) in pairs {
                    a = a.kwarg(k.as_str().unwrap_or_default(), v)?;
                }
                a
            }
            _ => {
                return Err(usage(
                    "--ctor must be a JSON array (positional) or object (keyword arguments)",
                ))
            }
        }),
    };
    Ok((call, ctor))
}

/// A client of `service` over the target's transport (`auto`, `shm` or
/// `tcp`), with its address, token, timeout and constructor arguments.
pub fn open_client(service: &str, target: &Target) -> Result<Client, Fail> {
    let mut c = metabridge::connect(service).timeout(target.timeout);
    match target.transport.as_str() {
        "auto" => {}
        "shm" => c = c.transport(metabridge::TransportKind::Shm),
        "tcp" => c = c.transport(metabridge::TransportKind::Tcp),
        other => {
            return Err(usage(format!(
                "unknown transport {other:?} (auto, shm, tcp)"
            )))
        }
    }
    if let Some(at) = &target.at {
        c = c.at(at);
    } else {
        // Name the service in the error if it is not there.
        lookup(service)?;
    }
    if let Some(t) = &target.token {
        c = c.token(t);
    }
    #[cfg(feature = "tls")]
    {
        use metabridge::tls::ClientTls;
        let tls = match (&target.tls_ca, &target.tls_pin) {
            (Some(ca), _) => Some(ClientTls::ca_file(ca)),
            (None, Some(pin)) => Some(ClientTls::pinned(pin)),
            (None, None) => None,
        };
        if let Some(tls) = tls {
            let mut tls = tls.map_err(|e| usage(format!("--tls-ca/--tls-pin: {e}")))?;
            if let (Some(cert), Some(key)) = (&target.tls_cert, &target.tls_key) {
                tls = tls
                    .client_cert_files(cert, key)
                    .map_err(|e| usage(format!("--tls-cert/--tls-key: {e}")))?;
            }
            c = c.tls(tls);
        }
    }
    let (_, ctor) = call_args(None, target)?;
    if let Some(ctor) = ctor {
        c = c.ctor_args(ctor);
    }
    Ok(c.open()?)
}
