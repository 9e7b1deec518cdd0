//! A worker answering a real shared-memory channel (a sealed memfd, both
//! ends in this process, the service's end handed over through its
//! inbox as the acceptor does): a request answered, a reply over the
//! service's message limit turned into an error naming the limit, a
//! channel closed by its client given back to the service's count, and
//! a stop request that ends the worker.

use super::*;
use crate::dispatch::Dispatcher;
use crate::service::{Reply, Service};
use crate::Args;
use metabridge_shm::{ChannelConfig, DoorbellSet};
use std::os::fd::AsFd;

/// A service with a worker pool of one worker, and its doorbell set.
struct Rig {
    pool: Arc<Pool>,
    inbox: Arc<Inbox>,
    count: Arc<ChannelCount>,
    bells: DoorbellSet,
    _runtime: tokio::runtime::Runtime,
}

impl Rig {
    fn new(max_message: usize) -> Rig {
        let service = Service::<()>::new("worker-test")
            .constructor(|a: &mut Args<'_>| {
                a.finish(&[])?;
                Ok(())
            })
            .endpoint("echo", |_: &(), a: &mut Args<'_>, out: &mut Reply<'_>| {
                let s: String = a.next("s")?;
                a.finish(&["s"])?;
                out.ok(&s)
            })
            .endpoint("many", |_: &(), a: &mut Args<'_>, out: &mut Reply<'_>| {
                let n: u64 = a.next("n")?;
                a.finish(&["n"])?;
                out.ok(&"x".repeat(n as usize))
            });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dispatch: Arc<dyn Dispatch> = Arc::new(Dispatcher::new(service));
        let pool = Pool::new(dispatch, runtime.handle().clone(), 0, max_message, None);
        let bells = DoorbellSet::create_memfd(1).unwrap();
        let inbox = Arc::new(Inbox {
            pending: AtomicBool::new(false),
            channels: Mutex::new(Vec::new()),
            bell: bells.bell(0).unwrap(),
        });
        pool.start(inbox.clone(), Vec::new(), "test").unwrap();
        Rig {
            pool,
            inbox,
            count: Arc::new(ChannelCount {
                open: AtomicUsize::new(0),
                max: 4,
            }),
            bells,
            _runtime: runtime,
        }
    }

    /// A new channel, its service end handed to the worker as the acceptor
    /// does; the client's end, ringing the worker's doorbell.
    fn channel(&self) -> Channel {
        let config = ChannelConfig {
            capacity: 64 * 1024,
            ..ChannelConfig::default()
        };
        let (mut client, fd) = Channel::create_memfd(&config).unwrap();
        let service = Channel::from_fd(fd.as_fd(), &config).unwrap();
        self.count.open.fetch_add(1, Ordering::SeqCst);
        self.inbox.channels.lock().unwrap().push(Counted {
            channel: service,
            count: self.count.clone(),
        });
        self.inbox.pending.store(true, Ordering::SeqCst);
        self.inbox.bell.ring();
        let bell = self.bells.bell(0).unwrap();
        client.halves().1.set_doorbell(bell.clone());
        client.halves().0.set_doorbell(bell);
        client
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.pool.request_stop(std::slice::from_ref(&self.inbox));
        let stuck = self
            .pool
            .join_until(Instant::now() + Duration::from_secs(10));
        assert!(stuck.is_empty(), "a worker did not stop: {stuck:?}");
    }
}

/// One call of `endpoint` with the MessagePack array `args` over `client`.
fn call(client: &mut Channel, endpoint: &str, args: &[u8]) -> Vec<u8> {
    let ctor = envelope::encode_ctor(&[0x90], &[0x80]);
    let mut request = Vec::new();
    envelope::encode_call(&mut request, endpoint, args, &[0x80], &ctor, None);
    client.send(&request).unwrap();
    let reply = client.recv_timeout(Duration::from_secs(20)).unwrap();
    reply.to_vec()
}

fn msgpack<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec(v).unwrap()
}

#[test]
fn a_request_through_a_real_channel_is_answered() {
    let rig = Rig::new(1 << 20);
    let mut client = rig.channel();
    let reply = call(&mut client, "echo", &msgpack(&("olá",)));
    assert_eq!(envelope::decode_result::<String>(&reply).unwrap(), "olá");
    // The same channel, again: the worker keeps serving it.
    let reply = call(&mut client, "echo", &msgpack(&("again",)));
    assert_eq!(envelope::decode_result::<String>(&reply).unwrap(), "again");
}

#[test]
fn an_unknown_endpoint_is_a_remote_error_and_the_channel_lives_on() {
    let rig = Rig::new(1 << 20);
    let mut client = rig.channel();
    let reply = call(&mut client, "nope", &[0x90]);
    assert!(envelope::decode_result::<String>(&reply).is_err());
    let reply = call(&mut client, "echo", &msgpack(&("after",)));
    assert_eq!(envelope::decode_result::<String>(&reply).unwrap(), "after");
}

#[test]
fn a_reply_over_the_message_limit_becomes_an_error_naming_the_limit() {
    let rig = Rig::new(4096);
    let mut client = rig.channel();
    let fits = call(&mut client, "many", &msgpack(&(100u64,)));
    assert_eq!(envelope::decode_result::<String>(&fits).unwrap().len(), 100);
    let too_big = call(&mut client, "many", &msgpack(&(10_000u64,)));
    match envelope::decode_result::<String>(&too_big) {
        Err(crate::Error::Remote { kind, message }) => {
            assert_eq!(kind, "ProtocolError");
            assert!(message.contains("4096"), "{message}");
        }
        other => panic!("expected the limit's error, got {other:?}"),
    }
}

#[test]
fn a_channel_its_client_closed_is_given_back_to_the_service() {
    let rig = Rig::new(1 << 20);
    let mut client = rig.channel();
    call(&mut client, "echo", &msgpack(&("x",)));
    assert_eq!(rig.count.open.load(Ordering::SeqCst), 1);
    drop(client);
    // The worker notices the closed ring and drops its end (`Counted`
    // gives its unit back); it wakes at least every WORKER_TICK.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig.count.open.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed channel was never reclaimed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn outgoing_reply_leaves_a_reply_within_the_limit_alone() {
    let mut reply = Vec::new();
    envelope::encode_ok(&mut reply, "small").unwrap();
    let before = reply.clone();
    outgoing_reply(&mut reply, 1024, None);
    assert_eq!(reply, before);
}
