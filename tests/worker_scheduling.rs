//! Slow calls do not stall the rest: async endpoints run concurrently on
//! the service's runtime, and a sync call that holds its worker does not
//! hold the other channels of that worker.
//!
//! Both are shown by rendezvous, not by timing: calls that can only all
//! finish if they run at the same time.

mod common;

use common::TestEnv;
use metabridge::TransportKind;

/// 8 async calls that each wait until all 8 are in progress, on a service
/// with 2 workers. When a worker `block_on`-ed its async call, at most 2
/// could be in progress and none would return true.
#[test]
fn async_calls_run_concurrently_beyond_the_worker_count() {
    let mut env = TestEnv::new("async-gather");
    env.start_service("svc", &[("METABRIDGE_WORKERS", "2")]);
    let client = env.client("svc", TransportKind::Shm, "g");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            std::thread::spawn(move || c.call::<bool>("gather", (8,)))
        })
        .collect();
    for call in calls {
        assert!(call.join().unwrap().unwrap(), "the 8 calls never met");
    }
    assert!(client.open_channels() >= 2);
}

/// A sync call holds the only worker until another client's call releases
/// it. The releasing call's channel belongs to the same worker: it is
/// answered only if the service moves it away from the held worker.
#[test]
fn a_held_sync_call_does_not_stall_other_channels_of_its_worker() {
    let mut env = TestEnv::new("sync-hold");
    env.start_service("svc", &[("METABRIDGE_WORKERS", "1")]);
    let holder = env.client("svc", TransportKind::Shm, "h");
    let releaser = env.client("svc", TransportKind::Shm, "r");
    let held = std::thread::spawn(move || holder.call::<bool>("hold", ()));
    // `release` waits until `hold` is in progress, then opens the gate: it
    // returns true only if it ran while `hold` held the worker.
    assert!(releaser.call::<bool>("release", ()).unwrap());
    assert!(held.join().unwrap().unwrap(), "hold was never released");
}

/// The same with a client that opens its channel while (or before) the
/// worker is held: new channels are not queued behind the held call.
#[test]
fn a_new_client_is_served_while_the_only_worker_is_held() {
    let mut env = TestEnv::new("sync-hold-new");
    env.start_service("svc", &[("METABRIDGE_WORKERS", "1")]);
    let holder = env.client("svc", TransportKind::Shm, "h");
    let held = std::thread::spawn(move || holder.call::<bool>("hold", ()));
    let late = env.client("svc", TransportKind::Shm, "l");
    // `release` waits for `hold` to be in progress: the late channel is
    // answered while the only worker is held.
    assert!(late.call::<bool>("release", ()).unwrap());
    assert_eq!(late.call::<String>("echo", ("x",)).unwrap(), "lx");
    assert!(held.join().unwrap().unwrap());
}
