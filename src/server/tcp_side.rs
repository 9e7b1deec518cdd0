//! The TCP transport's service side: the tokio server of
//! `metabridge_tcp`, on the service's runtime, over the same dispatcher.

use super::{Listening, Serving};
use crate::error::Result;
use crate::registry::Entry;
use std::time::Instant;

/// The TCP side once running: where it listens, how to stop it, its task.
pub(super) struct TcpSide {
    addr: std::net::SocketAddr,
    stop: metabridge_tcp::ShutdownHandle,
    task: tokio::task::JoinHandle<std::io::Result<metabridge_tcp::Stopped>>,
    runtime: tokio::runtime::Handle,
    /// The certificate it serves, reloaded on SIGHUP.
    #[cfg(feature = "tls")]
    tls: Option<metabridge_tcp::tls::ServerTls>,
}

/// Binds the TCP listener and starts serving on it; warns when it is
/// reachable from other machines without a token.
pub(super) fn start(ctx: &Serving<'_>) -> Result<Box<dyn Listening>> {
    let Serving {
        runtime,
        dispatch,
        config,
        counters,
        name,
        ..
    } = *ctx;
    let addr = format!("{}:{}", config.host, config.port);
    // TLS asked for and unusable (or not built) stops the start: never
    // plaintext in its place.
    let tls = crate::config::server_tls(config)?;
    let tcp = runtime.block_on(super::tcp_handler::bind(
        &addr,
        dispatch.clone(),
        config,
        counters.clone(),
        #[cfg(feature = "tls")]
        tls.clone(),
    ))?;
    let tcp_addr = tcp.local_addr();
    if tls.is_none() && !tcp_addr.ip().is_loopback() {
        eprintln!(
            "metabridge: WARNING: service {name:?} is exposed on {tcp_addr} in plaintext: its token and every \
             argument can be read and changed on the way. Set METABRIDGE_TLS_CERT and METABRIDGE_TLS_KEY \
             (ServiceConfig::tls) unless its clients are the original library's, which cannot speak TLS."
        );
    }
    // Mutual TLS authenticates every client instead of a token.
    let client_certs = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
        || config
            .tls_pem
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
    if !tcp_addr.ip().is_loopback() && config.token.is_none() && !client_certs {
        eprintln!(
            "metabridge: WARNING: service {name:?} is exposed on {tcp_addr} without a token; anyone who can reach \
             this address can call it. Set METABRIDGE_TOKEN or ServiceConfig::token, or require client \
             certificates (METABRIDGE_TLS_CLIENT_CA)."
        );
    }
    let stop = tcp.shutdown_handle();
    let task = runtime.spawn(tcp.run());
    Ok(Box::new(TcpSide {
        addr: tcp_addr,
        stop,
        task,
        runtime: runtime.handle().clone(),
        #[cfg(feature = "tls")]
        tls,
    }))
}

impl Listening for TcpSide {
    fn publish(&self, entry: &mut Entry) {
        entry.tcp = self.addr.to_string();
        #[cfg(feature = "tls")]
        {
            entry.tls_fingerprint = self.tls.as_ref().map(|t| t.fingerprint());
        }
    }

    #[cfg(feature = "tls")]
    fn reload(&self) {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    target: "metabridge::service",
                    "TLS certificate reloaded: now {}",
                    tls.fingerprint()
                ),
                Err(e) => tracing::warn!(
                    target: "metabridge::service",
                    "TLS certificate not reloaded (the current one stays): {e}"
                ),
            }
        }
    }

    fn begin_stop(&self) {
        self.stop.shutdown();
    }

    /// The server finishes in-flight requests within its grace (the same
    /// deadline), saying how many it abandoned.
    fn finish_stop(self: Box<Self>, deadline: Instant) -> Option<String> {
        let TcpSide { task, runtime, .. } = *self;
        let done = runtime.block_on(async {
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), task).await
        });
        match done {
            Ok(Ok(Ok(stopped))) if stopped.abandoned > 0 => {
                Some(format!("{} TCP call(s)", stopped.abandoned))
            }
            Ok(_) => None,
            Err(_) => Some("the TCP calls still in progress".to_string()),
        }
    }
}
