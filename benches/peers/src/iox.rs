//! iceoryx2 request-response: a client and a server port of one service,
//! the payloads a fixed-size UTF-8 buffer in shared memory (iceoryx2's
//! `StaticString` takes ASCII only, and "Olá" is not).
//!
//! Two ways of waiting for the other side:
//! - `busy`: both sides poll (`receive` in a spin loop), no system call;
//! - `event`: after sending, each side notifies an event service and the
//!   other blocks on its listener (iceoryx2's way of waking a sleeper).

use crate::common::{
    announce_ready, answer, measure, progress, Measurement, Peer, Settings, REQUEST,
};
use iceoryx2::prelude::*;
use std::time::{Duration, Instant};

const CAPACITY: usize = 60;
/// How long a client waits for one reply before it gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A string in a fixed-size shared-memory payload.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
#[type_name("MetabridgePeersText")]
pub struct Text {
    len: u32,
    bytes: [u8; CAPACITY],
}

impl Default for Text {
    fn default() -> Self {
        Text {
            len: 0,
            bytes: [0; CAPACITY],
        }
    }
}

impl Text {
    /// Asks the server to exit.
    const STOP: Text = Text {
        len: u32::MAX,
        bytes: [0; CAPACITY],
    };

    fn new(s: &str) -> Text {
        let mut t = Text::default();
        assert!(s.len() <= CAPACITY, "payload too long");
        t.bytes[..s.len()].copy_from_slice(s.as_bytes());
        t.len = s.len() as u32;
        t
    }

    fn is_stop(&self) -> bool {
        self.len == u32::MAX
    }

    fn as_str(&self) -> &str {
        let len = (self.len as usize).min(CAPACITY);
        std::str::from_utf8(&self.bytes[..len]).unwrap_or("")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Busy,
    Event,
}

type Error = Box<dyn std::error::Error>;

struct Names {
    rr: ServiceName,
    request_event: ServiceName,
    reply_event: ServiceName,
}

fn names(base: &str) -> Result<Names, Error> {
    Ok(Names {
        rr: format!("{base}/rr").as_str().try_into()?,
        request_event: format!("{base}/request-ready").as_str().try_into()?,
        reply_event: format!("{base}/reply-ready").as_str().try_into()?,
    })
}

/// The prefix of iceoryx2's files (in /dev/shm) for the run of benchmark
/// process `pid`, so that they can be told apart and removed.
pub fn file_prefix(pid: u32) -> String {
    format!("mbpeers{pid}_")
}

/// A private configuration: iceoryx2's directories under the run's
/// `METABRIDGE_HOME`, its shared-memory files named with [`file_prefix`].
/// `benchmark_pid` is the benchmark process (the peer's parent).
fn node(benchmark_pid: u32) -> Result<Node<ipc::Service>, Error> {
    set_log_level(LogLevel::Error);
    let home = metabridge::registry::home_dir().join("iceoryx2");
    let mut config = Config::default();
    config
        .global
        .set_root_path(&Path::new(home.to_string_lossy().as_bytes())?);
    config.global.prefix = FileName::new(file_prefix(benchmark_pid).as_bytes())?;
    Ok(NodeBuilder::new()
        .config(&config)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()?)
}

pub fn peer(base: &str, wait: Wait) -> Result<(), Error> {
    let node = node(std::os::unix::process::parent_id())?;
    let names = names(base)?;
    let service = node
        .service_builder(&names.rr)
        .request_response::<Text, Text>()
        .open_or_create()?;
    let server = service.server_builder().create()?;
    let events = if wait == Wait::Event {
        let request_event = node
            .service_builder(&names.request_event)
            .event()
            .open_or_create()?;
        let reply_event = node
            .service_builder(&names.reply_event)
            .event()
            .open_or_create()?;
        Some((
            request_event.listener_builder().create()?,
            reply_event.notifier_builder().create()?,
            (request_event, reply_event),
        ))
    } else {
        None
    };
    announce_ready(base);
    loop {
        while let Some(request) = server.receive()? {
            if request.payload().is_stop() {
                return Ok(());
            }
            request.send_copy(Text::new(&answer(request.payload().as_str())))?;
            drop(request);
            if let Some((_, notifier, _)) = &events {
                notifier.notify()?;
            }
        }
        match &events {
            Some((listener, _, _)) => {
                listener.blocking_wait(|_| {})?;
            }
            None => std::hint::spin_loop(),
        }
    }
}

pub fn bench(s: &Settings, base: &str, wait: Wait) -> Result<Measurement, String> {
    let system = match wait {
        Wait::Busy => "iceoryx2-busy",
        Wait::Event => "iceoryx2-event",
    };
    progress(s, &format!("iceoryx2 request-response ({system})"));
    // The peer's role has the system's name.
    let mut peer = Peer::spawn(system, base)?;
    peer.ready()?;
    let run = || -> Result<Measurement, Error> {
        let node = node(std::process::id())?;
        let names = names(base)?;
        let service = node
            .service_builder(&names.rr)
            .request_response::<Text, Text>()
            .open_or_create()?;
        let client = service.client_builder().create()?;
        let events = if wait == Wait::Event {
            let request_event = node
                .service_builder(&names.request_event)
                .event()
                .open_or_create()?;
            let reply_event = node
                .service_builder(&names.reply_event)
                .event()
                .open_or_create()?;
            Some((
                reply_event.listener_builder().create()?,
                request_event.notifier_builder().create()?,
                (request_event, reply_event),
            ))
        } else {
            None
        };
        let request = Text::new(REQUEST);
        s.placement.apply(peer.pid());
        let m = measure(system, s, || {
            let pending = client.send_copy(request).expect("send request");
            if let Some((_, notifier, _)) = &events {
                notifier.notify().expect("notify");
            }
            let mut spins = 0u32;
            let mut since: Option<Instant> = None;
            loop {
                if let Some(reply) = pending.receive().expect("receive reply") {
                    return reply.payload().as_str().to_string();
                }
                match &events {
                    Some((listener, _, _)) => {
                        listener
                            .timed_wait(|_| {}, REPLY_TIMEOUT)
                            .expect("wait for the reply event");
                    }
                    None => std::hint::spin_loop(),
                }
                // A dead server never answers: give up instead of spinning
                // forever (checked rarely, off the fast path).
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(4096) || events.is_some() {
                    let t = *since.get_or_insert_with(Instant::now);
                    assert!(
                        t.elapsed() < REPLY_TIMEOUT,
                        "{system}: no reply within {REPLY_TIMEOUT:?}"
                    );
                }
            }
        });
        drop(client.send_copy(Text::STOP)?);
        if let Some((_, notifier, _)) = &events {
            notifier.notify()?;
        }
        Ok(m)
    };
    let m = run().map_err(|e| e.to_string())?;
    peer.finish();
    Ok(m)
}
