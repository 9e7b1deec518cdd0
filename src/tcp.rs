//! The TCP side of a service: frames from `metabridge-tcp`, answered by the
//! same dispatcher as the shared-memory workers.

use crate::dispatch::{finish_async, Dispatch, Outcome};
use crate::envelope;
use metabridge_tcp::{Handler, Server, ServerConfig};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

struct TcpHandler {
    dispatch: Arc<dyn Dispatch>,
}

impl Handler for TcpHandler {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(256);
            if let Outcome::Pending(future) = self.dispatch.begin(&request, &mut out) {
                let joined = tokio::spawn(future).await;
                finish_async(joined, &mut out);
            }
            out
        })
    }

    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        envelope::encode_error(
            &mut out,
            "ProtocolError",
            &format!("frame of {declared} bytes exceeds the maximum of {max}"),
        );
        out
    }
}

/// Binds the TCP listener of a service.
pub(crate) async fn bind(addr: &str, dispatch: Arc<dyn Dispatch>) -> std::io::Result<Server> {
    let max_frame = std::env::var("METABRIDGE_MAX_FRAME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(metabridge_tcp::DEFAULT_MAX_FRAME);
    let config = ServerConfig {
        max_frame,
        // Poll loopback clients briefly for their next request (see
        // ServerConfig::spin): the same trade the client makes.
        spin: std::time::Duration::from_micros(50),
        ..ServerConfig::default()
    };
    Server::bind(addr, config, Arc::new(TcpHandler { dispatch })).await
}
