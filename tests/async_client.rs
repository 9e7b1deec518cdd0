//! The async client against a real service: calls in flight cost futures,
//! not threads; a dropped call gives its channel up at once and its late
//! reply reaches no other call; results match the sync client's.
//!
//! The fixture's `hold` blocks until `release` is called, so "still
//! running on the service" is a fact, not a timing.

mod common;

use common::TestEnv;
use metabridge::{Bin, TransportKind};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn async_calls_return_what_sync_calls_do_on_both_transports() {
    let mut env = TestEnv::new("async-values");
    env.start_service("svc", &[]);
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let client = env.client("svc", kind, "p:");
        runtime().block_on(async {
            let s: String = client.call_async("echo", ("x",)).await.unwrap();
            assert_eq!(s, "p:x");
            // Large arguments (encoded off the runtime's workers) and a
            // large result, out of line over shared memory.
            let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
            let back: Bin<Vec<u8>> = client
                .call_async("echo_bytes", (Bin(big.clone()),))
                .await
                .unwrap();
            assert!(back.0 == big, "4 MiB back whole over {kind:?}");
            // Many at once, more than the client's channels: each gets its
            // own answer.
            let calls = (0..300).map(|i| {
                let c = client.clone();
                tokio::spawn(
                    async move { c.call_async::<String, _>("echo", (format!("{i}"),)).await },
                )
            });
            for (i, call) in calls.enumerate() {
                assert_eq!(call.await.unwrap().unwrap(), format!("p:{i}"));
            }
            // A remote error is one.
            match client.call_async::<String, _>("boom", ()).await {
                Err(metabridge::Error::Remote { kind, .. }) => assert_eq!(kind, "Panic"),
                other => panic!("{other:?}"),
            }
        });
    }
}

/// Eight calls that cannot finish (they hold the service until released)
/// are dropped by a timeout: four had a channel (the client has four),
/// four waited for one. A quick call is then served while the four sent
/// still hold the service (its `holding` count says so; a client that
/// waits for their channels would get one only once they end, 30 s
/// later); after the release their late replies (`true`) are drained,
/// and fifty calls after them each get their own answer.
#[test]
fn a_dropped_async_call_frees_its_channel_and_its_late_reply_reaches_no_one() {
    let mut env = TestEnv::new("async-cancel");
    env.start_service("svc", &[]);
    let client = env
        .connect("svc")
        .transport(TransportKind::Shm)
        .max_channels(4)
        .timeout(Duration::from_secs(60))
        .arg("p:")
        .arg(1)
        .open()
        .unwrap();
    runtime().block_on(async {
        let dropped: Vec<_> = (0..8)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_millis(200),
                        c.call_async::<bool, _>("hold", ()),
                    )
                    .await
                })
            })
            .collect();
        for d in dropped {
            assert!(
                d.await.unwrap().is_err(),
                "a held call cannot finish before the release"
            );
        }
        // Nothing has released the holds: they still run on the service.
        let quick: String = client.call_async("echo", ("quick",)).await.unwrap();
        assert_eq!(quick, "p:quick");
        let holding: u64 = client.call_async("holding", ()).await.unwrap();
        // At least the four that had channels (a queued one may have got
        // a freed channel and sent its request before its own timeout).
        assert!(
            holding >= 4,
            "the quick call was served while the sent calls still held ({holding})"
        );
        assert!(client.call_async::<bool, _>("release", ()).await.unwrap());
        for i in 0..50 {
            let s: String = client.call_async("echo", (format!("{i}"),)).await.unwrap();
            assert_eq!(s, format!("p:{i}"), "call {i} got another call's reply");
        }
        let c = client.clone();
        let sync = tokio::task::spawn_blocking(move || c.call::<String>("echo", ("sync",)))
            .await
            .unwrap();
        assert_eq!(sync.unwrap(), "p:sync");
        assert!(
            client.open_channels() <= 4,
            "at most the client's channels are counted"
        );
    });
}

/// The service is told: an `async` endpoint's future is dropped when its
/// caller's future is (the channel closes), so nothing keeps running there.
#[test]
fn a_dropped_async_call_drops_the_async_endpoint_on_the_service() {
    let mut env = TestEnv::new("async-cancel-service");
    env.start_service("svc", &[]);
    let client = env.client("svc", TransportKind::Shm, "p:");
    runtime().block_on(async {
        for _ in 0..3 {
            let call = client.call_async::<bool, _>("forever_counted", ());
            assert!(tokio::time::timeout(Duration::from_millis(200), call)
                .await
                .is_err());
        }
        // The deadline only bounds how long a failure takes to show.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let live: u64 = client.call_async("forever_live", ()).await.unwrap();
            if live == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{live} endpoint futures still live"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A thousand calls pending at once (sixteen on channels, held by the
/// service; the rest queued for a channel) are a thousand futures on a
/// few threads, not a thousand threads.
#[test]
fn a_thousand_pending_async_calls_take_a_handful_of_threads() {
    let mut env = TestEnv::new("async-many");
    env.start_service("svc", &[]);
    let client = env
        .connect("svc")
        .transport(TransportKind::Shm)
        .timeout(Duration::from_secs(30))
        .arg("p:")
        .arg(1)
        .open()
        .unwrap();
    runtime().block_on(async {
        let before = threads();
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.call_async::<bool, _>("hold", ()).await })
            })
            .collect();
        // Let the calls start: each is either held by the service or
        // queued for a channel, and stays so (nothing releases them yet),
        // however long this takes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let during = threads();
        assert!(
            during < before + 40,
            "{during} threads with 1000 calls pending ({before} before)"
        );
        // Another client releases them (this one's channels are all held).
        let opener = env.connect("svc").arg("p:").arg(1).open().unwrap();
        assert!(
            tokio::task::spawn_blocking(move || opener.call::<bool>("release", ()))
                .await
                .unwrap()
                .unwrap()
        );
        for call in calls {
            assert!(call.await.unwrap().unwrap(), "every held call released");
        }
    });
}
