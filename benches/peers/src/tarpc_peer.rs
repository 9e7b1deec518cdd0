//! tarpc: a service trait with `get(s: String) -> String`, served in the
//! peer process over tarpc's Unix-socket serde transport with bincode;
//! both sides on a tokio current_thread runtime.

use crate::common::{
    announce_ready, answer, progress, Measurement, Peer, Sampler, Settings, REQUEST,
};
use futures::StreamExt;
use std::hint::black_box;
use std::path::Path;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

#[tarpc::service]
pub trait Greeter {
    async fn get(s: String) -> String;
}

#[derive(Clone)]
struct GreeterServer;

impl Greeter for GreeterServer {
    async fn get(self, _: context::Context, s: String) -> String {
        answer(&s)
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn peer(path: &str) -> std::io::Result<()> {
    runtime()?.block_on(async {
        let mut incoming = tarpc::serde_transport::unix::listen(path, Bincode::default).await?;
        announce_ready(path);
        let transport = incoming
            .next()
            .await
            .ok_or_else(|| std::io::Error::other("listener closed"))??;
        drop(incoming);
        let _ = std::fs::remove_file(path);
        // Until the client hangs up.
        BaseChannel::with_defaults(transport)
            .execute(GreeterServer.serve())
            .for_each(|response| async move {
                tokio::spawn(response);
            })
            .await;
        Ok(())
    })
}

pub fn bench(s: &Settings, dir: &Path) -> Result<Measurement, String> {
    progress(s, "tarpc (Unix socket, bincode)");
    let path = dir.join("tarpc.sock");
    let mut peer = Peer::spawn("tarpc", &path.to_string_lossy())?;
    peer.ready()?;
    let rt = runtime().map_err(|e| e.to_string())?;
    let m = rt.block_on(async {
        let transport = tarpc::serde_transport::unix::connect(&path, Bincode::default)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let client = GreeterClient::new(tarpc::client::Config::default(), transport).spawn();
        s.placement.apply(peer.pid());
        let call = || client.get(context::current(), REQUEST.to_string());
        let mut sampler = Sampler::new("tarpc", s);
        sampler.check(&call().await.map_err(|e| e.to_string())?);
        while sampler.warming() {
            black_box(call().await.expect("tarpc call"));
        }
        while let Some(t) = sampler.next() {
            let reply = call().await.expect("tarpc call");
            sampler.record(t);
            black_box(reply);
        }
        Ok::<_, String>(sampler.finish())
    })?;
    drop(rt);
    peer.finish();
    Ok(m)
}
