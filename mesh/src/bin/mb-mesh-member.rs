//! A replica for the mesh tests: `mb-mesh-member <service> <listen> <connect>
//! <lease-ms>` joins the mesh, prints its instance id on a line, and stays
//! until it is killed.

use metabridge_mesh::{Advert, Member, MeshConfig};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, listen, connect, lease] = &args[..] else {
        eprintln!("usage: mb-mesh-member <service> <listen> <connect> <lease-ms>");
        std::process::exit(2);
    };
    let config = MeshConfig {
        listen: vec![listen.clone()],
        connect: vec![connect.clone()],
        lease: Duration::from_millis(lease.parse().expect("lease in ms")),
        ..MeshConfig::default()
    };
    let advert = Advert {
        addresses: vec![format!("127.0.0.1:{}", std::process::id())],
        tls_fingerprint: None,
        host: "member-process".into(),
        idempotent: Vec::new(),
        started: 0,
        calls: None,
    };
    let member = Member::join(&config, service, advert)
        .await
        .unwrap_or_else(|e| panic!("mb-mesh-member: {e}"));
    println!("{}", member.instance());
    std::future::pending::<()>().await;
}
