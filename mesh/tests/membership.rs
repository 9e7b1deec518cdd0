//! Membership over real zenoh sessions on loopback TCP: a client's view
//! follows replicas that join (with their adverts) and leave; names zenoh
//! cannot hold are refused.

use metabridge_mesh::{service_key, Advert, Member, MeshConfig, MeshError, Replicas};
use std::time::Duration;
use support::free_endpoint;

mod support;

fn advert(port: u16) -> Advert {
    Advert {
        addresses: vec![format!("127.0.0.1:{port}")],
        tls_fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
        host: "test-host".into(),
        idempotent: vec!["get".into()],
        started: 0,
        calls: None,
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_replicas_that_join_and_leave() {
    let seed = free_endpoint();
    let first = Member::join(
        &MeshConfig {
            listen: vec![seed.clone()],
            ..MeshConfig::default()
        },
        "orders",
        advert(7001),
    )
    .await
    .unwrap();
    // Every peer listens too (any loopback port): gossip connects the
    // peers that the seed introduces to each other.
    let peer = MeshConfig {
        listen: vec!["tcp/127.0.0.1:0".into()],
        connect: vec![seed.clone()],
        ..MeshConfig::default()
    };
    let view = Replicas::watch(&peer, "orders").await.unwrap();
    assert!(
        view.wait_until(DEADLINE, |r| r.len() == 1).await,
        "the first replica never appeared: {:?}",
        view.replicas()
    );
    let seen = &view.replicas()[0];
    assert_eq!(seen.instance, first.instance());
    assert_eq!(seen.advert, advert(7001));

    // A replica of another service is not in this view.
    let other = Member::join(&peer, "billing", advert(7003)).await.unwrap();
    let second = Member::join(&peer, "orders", advert(7002)).await.unwrap();
    assert!(
        view.wait_until(DEADLINE, |r| r.len() == 2).await,
        "the second replica never appeared: {:?}",
        view.replicas()
    );
    let mut ports: Vec<_> = view
        .replicas()
        .iter()
        .map(|r| r.advert.addresses[0].clone())
        .collect();
    ports.sort();
    assert_eq!(ports, ["127.0.0.1:7001", "127.0.0.1:7002"]);

    let gone = second.instance().to_string();
    second.leave().await.unwrap();
    assert!(
        view.wait_until(DEADLINE, |r| r.len() == 1 && r[0].instance != gone)
            .await,
        "the replica that left is still in the view: {:?}",
        view.replicas()
    );
    other.leave().await.unwrap();
    view.close().await.unwrap();
    first.leave().await.unwrap();
}

#[test]
fn names_zenoh_cannot_hold_are_refused_naming_the_cause() {
    assert_eq!(service_key("orders").unwrap(), "metabridge/orders");
    for name in ["a*b", "a$b", "a?b", "a#b"] {
        match service_key(name) {
            Err(MeshError::Name { why, .. }) => {
                assert!(why.contains('*') || why.contains("valid"), "{why}")
            }
            other => panic!("{name:?}: expected a refusal, got {other:?}"),
        }
    }
}
