//! A duplex, message-oriented channel: two rings in one segment.
//!
//! The creator sends on ring 0 and receives on ring 1; the opener the other
//! way round. A message is one frame when it fits (a quarter of the ring),
//! copied out at once by the receiver; a larger one streams through the
//! ring as a run of frames flagged `MORE`, with backpressure. Its first
//! frame is also flagged `TOTAL` and starts with the message's length (a
//! little-endian `u64`), which the receiver checks against `max_message`
//! before it sizes its buffer once, exactly; the frames that follow must
//! add up to it. Receive buffers are [`ReusedBuffer`]s: kept between
//! messages within the channel's budget.

use crate::doorbell::Doorbell;
use crate::error::{Error, Result};
use crate::liveness::ProcessIdentity;
use crate::memory::Region;
use crate::pool::{PoolReader, PoolWriter};
use crate::reuse::{ReusedBuffer, CHANNEL_BUDGET};
use crate::ring::{
    self, max_frame_payload, Consumer, FrameRef, Peek, Producer, Reservation, Reserve, DOORBELL,
    FLAG_MORE, FLAG_POOL, FLAG_TOTAL, FRAME_HEADER, WAITING,
};
use crate::segment::Segment;
use crate::wait::{self, Limit, LivenessClock, Peer, Step, WaitPolicy, WaitSettings};
use std::io;
use std::ops::Deref;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of a channel.
///
/// ```
/// use metabridge_shm::{ChannelConfig, WaitPolicy};
/// let config = ChannelConfig { capacity: 64 * 1024, wait: WaitPolicy::BusyPoll, ..Default::default() };
/// assert_eq!(config.max_message, 1 << 30);
/// ```
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// Bytes of each ring, a power of two (creator only; an opener uses the
    /// segment's). Default 1 MiB.
    pub capacity: usize,
    /// How a blocked side waits.
    pub wait: WaitPolicy,
    /// How often a sleeping side checks that its peer lives. A peer killed
    /// with SIGKILL is reported within about this long (default 20 ms).
    pub liveness_interval: Duration,
    /// Largest message accepted, sent or received (default 1 GiB).
    pub max_message: u64,
    /// Bytes of each side's payload pool in an anonymous channel
    /// ([`create_memfd`](Channel::create_memfd); named ones have none):
    /// address space reserved at creation, memory only as it is used
    /// (default [`DEFAULT_POOL`], 256 MiB). See [`PoolWriter`].
    pub pool: usize,
    /// Largest receive buffer this channel keeps between messages (default
    /// [`CHANNEL_BUDGET`], 64 MiB), within the process's
    /// [`RETAINED_CAP`](crate::RETAINED_CAP); see [`ReusedBuffer`].
    pub keep_buffer: usize,
    /// Directory of the segment files (default `$METABRIDGE_SHM_DIR`, or
    /// `/dev/shm`).
    pub dir: PathBuf,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            capacity: 1 << 20,
            wait: WaitPolicy::default(),
            liveness_interval: Duration::from_millis(20),
            max_message: 1 << 30,
            keep_buffer: CHANNEL_BUDGET,
            pool: DEFAULT_POOL,
            dir: default_dir(),
        }
    }
}

/// Default size of each side's payload pool (256 MiB of address space).
pub const DEFAULT_POOL: usize = 256 << 20;

/// `$METABRIDGE_SHM_DIR`, or `/dev/shm`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("METABRIDGE_SHM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"))
}

/// What both halves of a channel share.
pub(crate) struct Shared {
    pub(crate) segment: Segment,
    settings: WaitSettings,
    pub(crate) max_message: u64,
    keep_buffer: usize,
    name: String,
    /// Bytes of our own pool reserved and mapped so far (only our sender
    /// moves it), and charged to the process's retained total.
    pub(crate) pool_reserved: AtomicUsize,
    /// Bytes of the peer's pool we have mapped so far (only our receiver
    /// moves it).
    pub(crate) peer_pool_mapped: AtomicUsize,
}

impl Shared {
    pub(crate) fn peer_side(&self) -> usize {
        1 - self.segment.side
    }
}

impl Peer for Shared {
    fn publish_cpu(&self, cpu: u32) {
        let slot = &self.segment.header().sides[self.segment.side].cpu;
        let v = cpu as u64 + 1;
        // Relaxed: a hint for the peer's spin decision, ordered with nothing.
        if slot.load(Ordering::Relaxed) != v {
            slot.store(v, Ordering::Relaxed);
        }
    }

    fn peer_cpu(&self) -> Option<u32> {
        let v = self.segment.header().sides[self.peer_side()]
            .cpu
            .load(Ordering::Relaxed);
        (v != 0).then(|| (v - 1) as u32)
    }

    fn check_alive(&self) -> Result<()> {
        match self.segment.identity(self.peer_side()) {
            Some(id) if !id.is_alive() => Err(Error::PeerGone { pid: id.pid }),
            _ => Ok(()),
        }
    }
}

/// Both ends of a duplex channel, owned by one side.
///
/// ```
/// use metabridge_shm::{Channel, ChannelConfig};
/// let config = ChannelConfig { capacity: 4096, dir: std::env::temp_dir(), ..Default::default() };
/// let name = format!("doc-channel-{}", std::process::id());
/// let mut a = Channel::create(&name, &config).unwrap();
/// let mut b = Channel::open(&name, &config).unwrap(); // usually another process
/// a.send(b"ping").unwrap();
/// assert_eq!(&*b.recv().unwrap(), b"ping");
/// b.send_with(|w| std::io::Write::write_all(w, b"pong")).unwrap().unwrap();
/// assert_eq!(&*a.recv().unwrap(), b"pong");
/// ```
pub struct Channel {
    tx: Sender,
    rx: Receiver,
}

/// The sending half of a channel.
pub struct Sender {
    ring: Producer,
    shared: Arc<Shared>,
    doorbell: Option<Doorbell>,
    /// When this side's waits for room last checked the peer.
    liveness: LivenessClock,
    /// The next message refers to our payload pool (flagged on its first
    /// frame).
    pool_flag: bool,
}

/// The receiving half of a channel.
pub struct Receiver {
    ring: Consumer,
    shared: Arc<Shared>,
    /// When this side's waits for frames last checked the peer.
    liveness: LivenessClock,
    /// Where each message is copied out to, kept between messages.
    assembly: ReusedBuffer,
    /// A multi-frame message is half received (a deadline cut it short).
    partial: bool,
    /// The message being received is over `max_message` and is skipped.
    discarding: bool,
    /// Bytes of the multi-frame message being received, so far.
    received: u64,
    /// Its length, as its first frame declared.
    declared: u64,
    /// The message being (or last) received refers to the peer's pool.
    refers_to_pool: bool,
    /// Rung when we free room and the producer sleeps on a doorbell
    /// (a service worker waiting to send the rest of a reply).
    doorbell: Option<Doorbell>,
}

impl Channel {
    /// Creates a new segment `name` and returns its first side.
    pub fn create(name: &str, config: &ChannelConfig) -> Result<Channel> {
        let segment = Segment::create(&config.dir, name, [config.capacity, config.capacity])?;
        Ok(Self::from_segment(segment, name, config))
    }

    /// Opens the segment `name` made by another side's `create` and takes
    /// its second side.
    ///
    /// A named segment is a plain file: a process that can open it can also
    /// truncate it, and our next access to the lost pages raises SIGBUS.
    /// Use named channels only between processes that trust each other;
    /// [`create_memfd`](Self::create_memfd) has no such hole.
    pub fn open(name: &str, config: &ChannelConfig) -> Result<Channel> {
        let segment = Segment::open(&config.dir, name)?;
        Ok(Self::from_segment(segment, name, config))
    }

    /// Creates an anonymous channel: its segment is a memfd, its pages
    /// reserved (a lack of memory is [`Error::NoSpace`] now, not a SIGBUS
    /// later) and sealed against any change of size. Send the returned
    /// descriptor to the peer (over a Unix socket with `SCM_RIGHTS`), which
    /// takes the other side with [`from_fd`](Self::from_fd); then close it.
    /// `config.dir` is not used.
    ///
    /// ```
    /// use metabridge_shm::{Channel, ChannelConfig};
    /// use std::os::fd::AsFd;
    /// let config = ChannelConfig { capacity: 4096, ..Default::default() };
    /// let (mut a, fd) = Channel::create_memfd(&config).unwrap();
    /// let mut b = Channel::from_fd(fd.as_fd(), &config).unwrap(); // usually another process
    /// drop(fd);
    /// a.send(b"ping").unwrap();
    /// assert_eq!(&*b.recv().unwrap(), b"ping");
    /// ```
    pub fn create_memfd(config: &ChannelConfig) -> Result<(Channel, OwnedFd)> {
        let (segment, fd) = Segment::create_memfd([config.capacity, config.capacity], config.pool)?;
        Ok((Self::from_segment(segment, "memfd", config), fd))
    }

    /// Takes the second side of an anonymous channel from the descriptor
    /// its creator sent. The descriptor must be a memfd sealed against
    /// resizing ([`Error::Unsealed`] otherwise: the creator could truncate
    /// it and crash us) whose header validates. The descriptor may be
    /// closed afterwards.
    pub fn from_fd(fd: BorrowedFd<'_>, config: &ChannelConfig) -> Result<Channel> {
        let segment = Segment::open_fd(fd, "a channel segment sent by the peer")?;
        Ok(Self::from_segment(segment, "memfd", config))
    }

    // The one `unsafe` outside the mapping and the ring: binding each ring
    // to its control block and data area in the segment, whose lifetime
    // the rings cannot see (they hold it only as a type-erased keep-alive).
    #[allow(unsafe_code)]
    fn from_segment(segment: Segment, name: &str, config: &ChannelConfig) -> Channel {
        let side = segment.side;
        let (tx_ring, rx_ring) = (side, 1 - side);
        let shared = Arc::new(Shared {
            segment,
            settings: WaitSettings {
                policy: config.wait,
                liveness_interval: config.liveness_interval,
            },
            max_message: config.max_message,
            keep_buffer: config.keep_buffer,
            name: name.to_owned(),
            pool_reserved: AtomicUsize::new(0),
            peer_pool_mapped: AtomicUsize::new(0),
        });
        let keep: ring::KeepAlive = shared.clone();
        let seg = &shared.segment;
        let (tx_cap, rx_cap) = (seg.capacity(tx_ring), seg.capacity(rx_ring));
        // SAFETY: each ring's control block and data area come from the
        // validated segment, stay mapped while `keep` (the Arc holding the
        // segment) lives, and each side takes the producer of exactly one
        // ring and the consumer of the other: one producer and one consumer
        // per ring across the two processes.
        let (producer, consumer) = unsafe {
            (
                Producer::new(
                    seg.control(tx_ring),
                    Region::new(seg.data(tx_ring), tx_cap),
                    tx_cap,
                    keep.clone(),
                ),
                Consumer::new(
                    seg.control(rx_ring),
                    Region::new(seg.data(rx_ring), rx_cap),
                    rx_cap,
                    keep,
                ),
            )
        };
        Channel {
            tx: Sender {
                ring: producer,
                shared: shared.clone(),
                doorbell: None,
                liveness: LivenessClock::default(),
                pool_flag: false,
            },
            rx: Receiver {
                ring: consumer,
                shared,
                liveness: LivenessClock::default(),
                assembly: ReusedBuffer::new(),
                partial: false,
                discarding: false,
                received: 0,
                declared: 0,
                refers_to_pool: false,
                doorbell: None,
            },
        }
    }

    /// Sends one message, waiting for room as long as it takes.
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.tx.send(message)
    }

    /// Encodes a message straight into the ring; see [`Sender::send_with`].
    pub fn send_with<R>(&mut self, encode: impl FnOnce(&mut FrameWriter<'_>) -> R) -> Result<R> {
        self.tx.send_with(encode)
    }

    /// Waits for the next message.
    pub fn recv(&mut self) -> Result<Message<'_>> {
        self.rx.recv()
    }

    /// The next message if one is complete now.
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>> {
        self.rx.try_recv()
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>> {
        self.rx.recv_timeout(timeout)
    }

    /// Both halves at once, e.g. to answer a request while reading it.
    pub fn halves(&mut self) -> (&mut Sender, &mut Receiver) {
        (&mut self.tx, &mut self.rx)
    }

    /// Splits into halves that can move to different threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    /// A writer into this side's payload pool; see [`Sender::pool_writer`].
    pub fn pool_writer(&self) -> Option<PoolWriter> {
        self.tx.pool_writer()
    }

    /// A reader of the peer's payload pool; see [`Receiver::pool_reader`].
    pub fn pool_reader(&self) -> Option<PoolReader> {
        self.rx.pool_reader()
    }

    /// Whether the message last received refers to the peer's pool; see
    /// [`Receiver::refers_to_pool`].
    pub fn refers_to_pool(&self) -> bool {
        self.rx.refers_to_pool
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.tx.shared.name
    }

    /// The peer process, once it has attached.
    pub fn peer(&self) -> Option<ProcessIdentity> {
        self.tx.shared.segment.identity(self.tx.shared.peer_side())
    }

    /// The CPU the peer last published (see [`WaitPolicy::Adaptive`]).
    pub fn peer_cpu(&self) -> Option<u32> {
        self.tx.shared.peer_cpu()
    }

    /// Publishes the CPU this side runs on, for the peer's adaptive wait.
    /// A side that never blocks in `recv` (one polling many channels) calls
    /// this itself; blocking calls publish on their own.
    pub fn publish_cpu(&self, cpu: u32) {
        self.tx.shared.publish_cpu(cpu)
    }

    /// `Err(PeerGone)` if the peer attached and has since died.
    pub fn check_peer(&self) -> Result<()> {
        self.tx.shared.check_alive()
    }
}

impl Sender {
    /// Sends one message, waiting for room as long as it takes (a dead peer
    /// gives [`Error::PeerGone`], a closed one [`Error::Closed`]).
    pub fn send(&mut self, message: &[u8]) -> Result<()> {
        self.send_deadline(message, Limit::Never)
    }

    /// Sends one message, giving up with [`Error::Timeout`] after `timeout`.
    /// A message of several frames that timed out part way has been cut:
    /// the receiver will see it end early, so treat the channel as broken.
    pub fn send_timeout(&mut self, message: &[u8], timeout: Duration) -> Result<()> {
        self.send_deadline(message, Limit::After(timeout))
    }

    /// Sends one message, giving up with [`Error::Timeout`] at `deadline`
    /// (for a caller whose one deadline covers several steps).
    pub fn send_until(&mut self, message: &[u8], deadline: Instant) -> Result<()> {
        self.send_deadline(message, Limit::At(deadline))
    }

    /// Sends a message of one frame (at most [`max_frame`](Self::max_frame)
    /// bytes) if the ring has room now; [`Error::Full`] otherwise.
    pub fn try_send(&mut self, message: &[u8]) -> Result<()> {
        let max = self.max_frame();
        if message.len() > max {
            return Err(Error::MessageTooLarge {
                len: message.len() as u64,
                max: max as u64,
            });
        }
        match self.ring.try_reserve(message.len())? {
            Reserve::Ready(r) => {
                let flags = self.first_flags();
                self.publish(&r, message, flags);
                Ok(())
            }
            Reserve::Full { .. } => Err(Error::Full),
        }
    }

    /// Sends what it can of `message` without waiting, resuming after the
    /// first `*sent` bytes (start at 0) and advancing `*sent`: `Ok(true)`
    /// once the whole message is out, `Ok(false)` when the ring is full.
    /// Then the ring is armed: the consumer rings the doorbell it was given
    /// ([`Receiver::set_doorbell`]) as soon as it frees room or closes. So
    /// a producer serving many channels (a service worker) never blocks on
    /// one whose reader is slow or stopped: it keeps the rest of the
    /// message, serves the others, and comes back when woken.
    ///
    /// Frames are cut at the same offsets as by [`send`](Self::send), so a
    /// message may be sent partly by this and never by anything else in
    /// between (the receiver would see one message out of two).
    ///
    /// ```
    /// # use metabridge_shm::{Channel, ChannelConfig};
    /// # let config = ChannelConfig { capacity: 4096, dir: std::env::temp_dir(), ..Default::default() };
    /// # let name = format!("doc-send-from-{}", std::process::id());
    /// # let mut a = Channel::create(&name, &config).unwrap();
    /// # let mut b = Channel::open(&name, &config).unwrap();
    /// let message = vec![7u8; 10_000]; // more than the 4 KiB ring holds
    /// let mut sent = 0;
    /// assert!(!a.halves().0.try_send_from(&message, &mut sent).unwrap());
    /// assert!(sent > 0 && sent < message.len());
    /// let receiver = std::thread::spawn(move || b.recv().unwrap().to_vec());
    /// while !a.halves().0.try_send_from(&message, &mut sent).unwrap() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(receiver.join().unwrap(), message);
    /// # std::fs::remove_file(config.dir.join(&name)).ok();
    /// ```
    pub fn try_send_from(&mut self, message: &[u8], sent: &mut usize) -> Result<bool> {
        if message.len() as u64 > self.shared.max_message {
            return Err(Error::MessageTooLarge {
                len: message.len() as u64,
                max: self.shared.max_message,
            });
        }
        let max = self.max_frame();
        loop {
            let start = *sent;
            if start >= message.len() && !message.is_empty() {
                return Ok(true);
            }
            let end = frame_end(start, message.len(), max);
            let chunk = &message[start..end];
            let first_of_several = start == 0 && message.len() > max;
            let room = chunk.len() + if first_of_several { TOTAL_PREFIX } else { 0 };
            match self.ring.try_reserve(room)? {
                Reserve::Ready(r) => {
                    if first_of_several {
                        self.publish_first(&r, message.len(), chunk);
                    } else {
                        let more = if end < message.len() { FLAG_MORE } else { 0 };
                        let first = if start == 0 { self.first_flags() } else { 0 };
                        self.publish(&r, chunk, more | first);
                    }
                    *sent = end;
                    if end == message.len() {
                        return Ok(true);
                    }
                }
                Reserve::Full { observed } => {
                    if self.ring.announce_sleep(observed, DOORBELL) {
                        return Ok(false);
                    }
                    // The consumer moved meanwhile: there may be room now.
                }
            }
        }
    }

    /// Largest message that travels as one frame (and is read in place).
    pub fn max_frame(&self) -> usize {
        max_frame_payload(self.ring.capacity())
    }

    /// Rings `doorbell` instead of the ring's own futex when the consumer
    /// sleeps on a doorbell (see [`Receiver::arm_doorbell`]).
    pub fn set_doorbell(&mut self, doorbell: Doorbell) {
        self.doorbell = Some(doorbell);
    }

    fn send_deadline(&mut self, message: &[u8], mut deadline: Limit) -> Result<()> {
        if message.len() as u64 > self.shared.max_message {
            return Err(Error::MessageTooLarge {
                len: message.len() as u64,
                max: self.shared.max_message,
            });
        }
        let max = self.max_frame();
        if message.len() <= max {
            let r = self.reserve(message.len(), deadline)?;
            let flags = self.first_flags();
            self.publish(&r, message, flags);
            return Ok(());
        }
        // One deadline for the whole message, fixed at its first frame.
        if let Limit::After(d) = deadline {
            deadline = Limit::At(Instant::now() + d);
        }
        let first_end = frame_end(0, message.len(), max);
        let r = self.reserve(first_end + TOTAL_PREFIX, deadline)?;
        self.publish_first(&r, message.len(), &message[..first_end]);
        let mut start = first_end;
        while start < message.len() {
            let end = frame_end(start, message.len(), max);
            let flags = if end < message.len() { FLAG_MORE } else { 0 };
            let r = self.reserve(end - start, deadline)?;
            self.publish(&r, &message[start..end], flags);
            start = end;
        }
        Ok(())
    }

    /// Encodes a message straight into the free space of the ring.
    ///
    /// `encode` gets an [`io::Write`] over the ring itself; when it returns,
    /// what it wrote is published as one message. If the ring lacks room
    /// (or the message outgrows one frame), the writer moves what it has to
    /// a heap buffer and the message is sent like [`send`](Self::send).
    /// Returns what `encode` returned.
    ///
    /// ```
    /// # use metabridge_shm::{Channel, ChannelConfig};
    /// # let config = ChannelConfig { capacity: 4096, dir: std::env::temp_dir(), ..Default::default() };
    /// # let name = format!("doc-send-with-{}", std::process::id());
    /// # let mut a = Channel::create(&name, &config).unwrap();
    /// # let mut b = Channel::open(&name, &config).unwrap();
    /// use std::io::Write;
    /// a.send_with(|w| write!(w, "{}+{}", 1, 2)).unwrap().unwrap();
    /// assert_eq!(&*b.recv().unwrap(), b"1+2");
    /// ```
    pub fn send_with<R>(&mut self, encode: impl FnOnce(&mut FrameWriter<'_>) -> R) -> Result<R> {
        let max = self.max_frame();
        let reserved = match self.ring.try_reserve(max)? {
            Reserve::Ready(r) => Some(r),
            Reserve::Full { .. } => None,
        };
        let mut writer = match &reserved {
            Some(r) => FrameWriter {
                region: Some(&self.ring.mem),
                room_offset: r.offset + FRAME_HEADER,
                room_len: max,
                len: 0,
                spill: None,
            },
            None => FrameWriter {
                region: None,
                room_offset: 0,
                room_len: 0,
                len: 0,
                spill: Some(Vec::new()),
            },
        };
        let out = encode(&mut writer);
        let FrameWriter { len, spill, .. } = writer;
        match (spill, reserved) {
            (None, Some(r)) => {
                let flags = self.first_flags();
                let old = self.ring.commit(&r, len, flags);
                self.ring_bell_if_armed(old);
            }
            (Some(bytes), _) => self.send_deadline(&bytes, Limit::Never)?,
            (None, None) => unreachable!("a writer without room always spills"),
        }
        Ok(out)
    }

    fn reserve(&mut self, len: usize, deadline: Limit) -> Result<Reservation> {
        if let Reserve::Ready(r) = self.ring.try_reserve(len)? {
            return Ok(r);
        }
        // The producer's ring is the one of our side (see `from_segment`).
        let seg = &self.shared.segment;
        let word: &crate::sync::AtomicU64 = &seg.control(seg.side).head;
        let ring = &mut self.ring;
        wait::block(
            &self.shared.settings,
            &*self.shared,
            &mut self.liveness,
            deadline,
            WAITING,
            || {
                Ok(match ring.try_reserve(len)? {
                    Reserve::Ready(r) => Step::Done(r),
                    Reserve::Full { observed } => Step::Pending { word, observed },
                })
            },
        )
    }

    #[inline]
    fn publish(&mut self, r: &Reservation, bytes: &[u8], flags: u32) {
        self.ring.mem.write(r.offset + FRAME_HEADER, bytes);
        let old = self.ring.commit(r, bytes.len(), flags);
        self.ring_bell_if_armed(old);
    }

    /// Publishes the first frame of a message of several: its total
    /// length, then its first bytes.
    fn publish_first(&mut self, r: &Reservation, total: usize, bytes: &[u8]) {
        let at = r.offset + FRAME_HEADER;
        self.ring.mem.write_u64(at, total as u64);
        self.ring.mem.write(at + TOTAL_PREFIX, bytes);
        let flags = FLAG_MORE | FLAG_TOTAL | self.first_flags();
        let old = self.ring.commit(r, TOTAL_PREFIX + bytes.len(), flags);
        self.ring_bell_if_armed(old);
    }

    /// The flags of a message's first frame beyond its framing.
    #[inline]
    fn first_flags(&mut self) -> u32 {
        if std::mem::take(&mut self.pool_flag) {
            FLAG_POOL
        } else {
            0
        }
    }

    /// A writer into this side's payload pool, for the next message
    /// (`None` if the channel has no pool: a named one, or `pool: 0`).
    /// Bytes it placed stay valid until the peer has answered that
    /// message: send the message with
    /// [`refer_to_pool`](Self::refer_to_pool) first.
    pub fn pool_writer(&self) -> Option<PoolWriter> {
        PoolWriter::new(&self.shared)
    }

    /// Flags the next message as referring to this side's pool (a
    /// [`PoolWriter`] placed bytes for it), so that the receiver looks
    /// there: see [`Receiver::pool_reader`].
    pub fn refer_to_pool(&mut self) {
        self.pool_flag = true;
    }

    /// Gives this side's pool pages back to the kernel (for an owner that
    /// has been idle for a while); the next message reserves them again.
    pub fn give_back_pool(&self) {
        crate::pool::give_back(&self.shared);
    }

    #[inline]
    fn ring_bell_if_armed(&self, old: u64) {
        if old & DOORBELL != 0 {
            match &self.doorbell {
                Some(bell) => bell.ring(),
                None => crate::futex::wake(&self.ring.ctrl().tail),
            }
        }
    }
}

/// Bytes of the length that starts the first frame of a message of several.
const TOTAL_PREFIX: usize = 8;

/// Where the frame that starts at byte `start` of a message of `len` bytes
/// ends, with frames of at most `max` payload bytes: a message over `max`
/// is cut in frames of `max`, the first of which also carries the total
/// length (so `max - TOTAL_PREFIX` of its bytes). `send` and
/// `try_send_from` cut at the same offsets.
fn frame_end(start: usize, len: usize, max: usize) -> usize {
    if len <= max {
        len // one frame, possibly empty
    } else if start == 0 {
        max - TOTAL_PREFIX
    } else {
        (start + max).min(len)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let old = self.ring.close();
        self.ring_bell_if_armed(old);
    }
}

/// An [`io::Write`] into the free space of a ring; see [`Sender::send_with`].
///
/// It holds a raw pointer, never a `&mut [u8]`: the ring is shared memory
/// that a misbehaving peer could write at any time, and a Rust reference
/// would promise that nobody does. Bytes are only ever copied in.
pub struct FrameWriter<'a> {
    /// The ring's data area, and where the reserved room starts in it
    /// (`None`: no room, everything spills).
    region: Option<&'a Region>,
    room_offset: usize,
    room_len: usize,
    len: usize,
    spill: Option<Vec<u8>>,
}

impl FrameWriter<'_> {
    /// Moves what was written so far into a heap buffer that takes the rest.
    fn spill(&mut self, extra: usize) -> &mut Vec<u8> {
        let mut spill = Vec::with_capacity((self.len + extra) * 2);
        if let Some(region) = self.region {
            // What we wrote so far, in the room this producer owns until
            // it publishes.
            region.append_to(self.room_offset, self.len, &mut spill);
        }
        self.spill.insert(spill)
    }
}

impl io::Write for FrameWriter<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(spill) = &mut self.spill {
            spill.extend_from_slice(buf);
            return Ok(buf.len());
        }
        let end = self.len + buf.len();
        if let (Some(region), true) = (self.region, end <= self.room_len) {
            // Into the reservation (end <= room_len), which only this
            // producer writes until it is published.
            region.write(self.room_offset + self.len, buf);
            self.len = end;
        } else {
            self.spill(buf.len()).extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write(buf).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The word a receiver sleeps on: the tail of the ring it reads (the
/// consumer's ring is the peer's, see `from_segment`).
fn sleep_word(shared: &Shared) -> &crate::sync::AtomicU64 {
    let seg = &shared.segment;
    &seg.control(1 - seg.side).tail
}

impl Receiver {
    /// Waits for the next message.
    pub fn recv(&mut self) -> Result<Message<'_>> {
        self.recv_deadline(Limit::Never)
    }

    /// Waits at most `timeout` for the next message ([`Error::Timeout`]).
    /// The time counts from the first wait (a message already there costs
    /// no clock read); a message of several frames has one deadline from
    /// its first frame on. One cut short by the deadline is kept and
    /// completed by the next call.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>> {
        self.recv_deadline(Limit::After(timeout))
    }

    /// Waits for the next message until `deadline` ([`Error::Timeout`]).
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Message<'_>> {
        self.recv_deadline(Limit::At(deadline))
    }

    /// The next message if one is complete now; never waits. The frames
    /// of a message of several that have arrived are taken in (freeing the
    /// ring for the rest), and the message is returned once whole.
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>> {
        self.receive(Limit::Never, false)
    }

    /// Arms the ring so that the producer rings its doorbell (instead of
    /// the ring's futex) on its next send. Returns `Ok(false)` if a frame is
    /// already there, `Err(Closed)` if the producer closed: then do not sleep.
    pub fn arm_doorbell(&mut self) -> Result<bool> {
        // (With a message half taken in by `try_recv`, the ring is empty
        // all the same: the next frame rings the bell.)
        match self.ring.try_peek()? {
            Peek::Frame(_) => Ok(false),
            Peek::Empty { observed } => Ok(self.ring.announce_sleep(observed, DOORBELL)),
        }
    }

    /// `Err(PeerGone)` if the peer attached and has since died.
    pub fn check_peer(&self) -> Result<()> {
        self.shared.check_alive()
    }

    /// Whether a frame is there to take (a message, or the next frame of
    /// one), without taking it; `Err(Closed)` once the producer closed
    /// with nothing left.
    pub fn ready(&mut self) -> Result<bool> {
        Ok(matches!(self.ring.try_peek()?, Peek::Frame(_)))
    }

    /// Arms the ring so that the producer's next send wakes a sleeper on
    /// the returned word (with [`wait_any`](crate::wait_any), beside other
    /// rings' words): for a thread that waits for many receivers at once.
    /// `None` if a frame is already there (or came while arming): look
    /// again instead of sleeping. `Err(Closed)` if the producer closed.
    pub fn arm_wakeup(&mut self) -> Result<Option<crate::WakeWord<'_>>> {
        let observed = match self.ring.try_peek()? {
            Peek::Frame(_) => return Ok(None),
            Peek::Empty { observed } => observed,
        };
        if !self.ring.announce_sleep(observed, WAITING) {
            return Ok(None); // the word moved: a frame or a close came
        }
        Ok(Some(crate::WakeWord::new(
            sleep_word(&self.shared),
            observed | WAITING,
        )))
    }

    /// Rings `doorbell` when we free room in the ring (or close) while the
    /// producer sleeps on it: the peer is a worker serving many channels,
    /// waiting to send the rest of a reply (see [`Sender::try_send_from`]).
    pub fn set_doorbell(&mut self, doorbell: Doorbell) {
        self.doorbell = Some(doorbell);
    }

    /// Whether the message last received (the one a [`Message`] or
    /// [`try_recv_into`](Self::try_recv_into) handed over) refers to the
    /// peer's payload pool: then decode it with a [`pool_reader`](Self::pool_reader).
    pub fn refers_to_pool(&self) -> bool {
        self.refers_to_pool
    }

    /// A reader of the peer's payload pool (`None` if there is none).
    pub fn pool_reader(&self) -> Option<PoolReader> {
        PoolReader::new(&self.shared)
    }

    /// Frees the receive buffer's memory above [`KEEP_BUFFER`](crate::KEEP_BUFFER),
    /// for an owner that has been idle for a while.
    /// A message half taken in keeps its buffer.
    pub fn give_back_buffer(&mut self) {
        if !self.partial {
            self.assembly.give_back();
        }
    }

    /// Whether the producer has closed its side: it will send nothing more
    /// (for a consumer that stopped reading, e.g. while a call of the
    /// channel runs elsewhere, and wants to know if anyone still waits).
    pub fn peer_closed(&self) -> bool {
        self.ring.producer_closed()
    }

    /// Frees frames up to `end` and wakes a producer sleeping for room.
    #[inline]
    fn released(&mut self, end: u64) {
        let old = self.ring.release(end);
        self.ring_bell_if_armed(old);
    }

    #[inline]
    fn ring_bell_if_armed(&self, old: u64) {
        if old & DOORBELL != 0 {
            if let Some(bell) = &self.doorbell {
                bell.ring();
            }
        }
    }

    fn next_frame(&mut self, deadline: Limit) -> Result<FrameRef> {
        if let Peek::Frame(f) = self.ring.try_peek()? {
            return Ok(f);
        }
        let word = sleep_word(&self.shared);
        let ring = &mut self.ring;
        wait::block(
            &self.shared.settings,
            &*self.shared,
            &mut self.liveness,
            deadline,
            WAITING,
            || {
                Ok(match ring.try_peek()? {
                    Peek::Frame(f) => Step::Done(f),
                    Peek::Empty { observed } => Step::Pending { word, observed },
                })
            },
        )
    }

    fn recv_deadline(&mut self, deadline: Limit) -> Result<Message<'_>> {
        // With `wait`, `receive` returns a message or an error, never None.
        self.receive(deadline, true)?.ok_or(Error::Timeout)
    }

    /// Like [`try_recv`](Self::try_recv), but hands the message over in
    /// `buf` (swapping buffers, not copying): the caller may then keep the
    /// bytes while it moves or lends the receiver. `Ok(false)` if no whole
    /// message is there yet.
    pub fn try_recv_into(&mut self, buf: &mut ReusedBuffer) -> Result<bool> {
        if !self.receive_raw(Limit::Never, false)? {
            return Ok(false);
        }
        std::mem::swap(buf, &mut self.assembly);
        Ok(true)
    }

    fn receive(&mut self, deadline: Limit, wait: bool) -> Result<Option<Message<'_>>> {
        Ok(if self.receive_raw(deadline, wait)? {
            Some(Message { rx: self })
        } else {
            None
        })
    }

    /// Takes frames until a whole message is in `assembly`: waiting for
    /// each (until `deadline`) if `wait`, else returning `false` at the
    /// first gap.
    fn receive_raw(&mut self, mut deadline: Limit, wait: bool) -> Result<bool> {
        loop {
            let frame = if wait {
                self.next_frame(deadline)?
            } else {
                match self.ring.try_peek()? {
                    Peek::Frame(f) => f,
                    Peek::Empty { .. } => return Ok(false),
                }
            };
            if !self.partial && frame.flags & FLAG_MORE == 0 {
                if frame.flags & FLAG_TOTAL != 0 {
                    self.released(frame.end);
                    return Err(Error::Corrupt(
                        "a message of one frame flagged TOTAL".into(),
                    ));
                }
                if frame.len as u64 > self.shared.max_message {
                    // One frame over the limit (the limit may be below a
                    // quarter ring): skipped like a longer message would be.
                    self.released(frame.end);
                    return Err(Error::MessageTooLarge {
                        len: frame.len as u64,
                        max: self.shared.max_message,
                    });
                }
                // A private copy, and the frame released at once: the peer
                // can write the ring at any time, so nothing we decode may
                // point into it (a UTF-8-checked string could change under
                // us). The copy of a small request costs a few nanoseconds.
                self.refers_to_pool = frame.flags & FLAG_POOL != 0;
                self.assembly.clear();
                self.ring
                    .mem
                    .append_to(frame.offset, frame.len, &mut self.assembly);
                self.released(frame.end);
                return Ok(true);
            }
            // One frame of a message of several: from here on the rest of
            // the message shares one deadline.
            if let Limit::After(d) = deadline {
                deadline = Limit::At(Instant::now() + d);
            }
            let mut payload = (frame.offset, frame.len);
            if !self.partial {
                if frame.flags & FLAG_TOTAL == 0 || frame.len < TOTAL_PREFIX {
                    self.released(frame.end);
                    return Err(Error::Corrupt(format!(
                        "the first frame of a message of several ({} bytes) does not start with its length",
                        frame.len
                    )));
                }
                // Read once, then only our copy is used.
                let declared = self.ring.mem.read_u64(frame.offset);
                payload = (frame.offset + TOTAL_PREFIX, frame.len - TOTAL_PREFIX);
                self.refers_to_pool = frame.flags & FLAG_POOL != 0;
                self.partial = true;
                self.received = 0;
                self.declared = declared;
                self.assembly.clear();
                // Checked before anything is allocated: a message over the
                // limit is skipped as it streams by, never buffered.
                self.discarding = declared > self.shared.max_message;
                if !self.discarding {
                    self.assembly.reserve_exact(declared as usize);
                }
            } else if frame.flags & (FLAG_TOTAL | FLAG_POOL) != 0 {
                self.released(frame.end);
                self.abandon();
                return Err(Error::Corrupt(format!(
                    "a frame flagged {:#x} inside a message",
                    frame.flags
                )));
            }
            let total = self.received + payload.1 as u64;
            let last = frame.flags & FLAG_MORE == 0;
            if total > self.declared || (last && total != self.declared) {
                self.released(frame.end);
                let declared = self.declared;
                self.abandon();
                return Err(Error::Corrupt(format!(
                    "a message declared {declared} bytes long carries {total}{}",
                    if last { "" } else { " or more" }
                )));
            }
            self.received = total;
            if !self.discarding {
                self.ring
                    .mem
                    .append_to(payload.0, payload.1, &mut self.assembly);
            }
            self.released(frame.end);
            if last {
                self.partial = false;
                if self.discarding {
                    self.discarding = false;
                    return Err(Error::MessageTooLarge {
                        len: total,
                        max: self.shared.max_message,
                    });
                }
                return Ok(true);
            }
        }
    }

    /// Drops a message cut short by a corrupt frame.
    fn abandon(&mut self) {
        self.partial = false;
        self.discarding = false;
        self.assembly.clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let old = self.ring.close();
        self.ring_bell_if_armed(old);
    }
}

/// A received message, in the receiver's private buffer (never in the
/// shared ring, which the peer could rewrite while we read). The buffer is
/// kept for the next message within the channel's budget (see
/// [`ReusedBuffer`]).
pub struct Message<'a> {
    rx: &'a mut Receiver,
}

impl Message<'_> {
    /// Whether this message refers to the peer's payload pool (see
    /// [`Receiver::refers_to_pool`]).
    pub fn refers_to_pool(&self) -> bool {
        self.rx.refers_to_pool
    }
}

impl Deref for Message<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.rx.assembly
    }
}

impl Drop for Message<'_> {
    #[inline]
    fn drop(&mut self) {
        self.rx.assembly.settle(self.rx.shared.keep_buffer);
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("len", &self.len()).finish()
    }
}
