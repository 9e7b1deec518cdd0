//! Fuzz target `tcp_frame`: metabridge-tcp's frame readers over a hostile
//! byte stream.
//!
//! Input: one byte choosing the maximum frame length (from 0 to the 64 MiB
//! default, so that both refused and accepted huge declared lengths occur),
//! four bytes choosing how many bytes each `read` call returns (a peer's
//! segments arrive in arbitrary pieces), then the stream itself.
//!
//! Both readers (`read_frame` on a current-thread tokio runtime, and
//! `read_frame_blocking`) read frames until the first error, and both must
//! give exactly what a ten-line model of the format gives. While they read,
//! a counting allocator checks the promise of the module: no allocation is
//! sized by the declared length, only by the bytes that actually arrived
//! (a 60 MiB declared length over a 100-byte stream allocates kilobytes).
//! Every frame read must also write back (`write_frame_blocking`) to the
//! very bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge_fuzz::{Input, PeakAlloc};
use metabridge_tcp::frame::{
    read_frame, read_frame_blocking, write_frame_blocking, FrameError, DEFAULT_MAX_FRAME,
    PREFIX_LEN, READ_CHUNK,
};
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const MAXES: [usize; 8] = [
    0,
    1,
    7,
    64,
    4096,
    READ_CHUNK + 1,
    1 << 20,
    DEFAULT_MAX_FRAME,
];

/// A stream over a slice whose reads return at most `sizes[i % 4]` bytes
/// (0 meaning "all there is"), cycling.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: [u8; 4],
    reads: usize,
}

impl Trickle<'_> {
    fn next_len(&mut self, room: usize) -> usize {
        let s = self.sizes[self.reads % 4] as usize;
        self.reads += 1;
        let n = if s == 0 { usize::MAX } else { s };
        n.min(room).min(self.data.len())
    }
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.next_len(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.next_len(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What reading one frame gave, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(Vec<u8>),
    Closed,
    TooLarge { declared: u64, max: usize },
    Eof,
}

fn classify(r: Result<(), FrameError>, buf: &[u8]) -> Got {
    match r {
        Ok(()) => Got::Frame(buf.to_vec()),
        Err(FrameError::Closed) => Got::Closed,
        Err(FrameError::TooLarge { declared, max }) => Got::TooLarge { declared, max },
        Err(FrameError::Io(e)) => {
            // A slice never fails: the only i/o error is the stream ending
            // inside a frame.
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            Got::Eof
        }
    }
}

/// The format, as the protocol document states it.
fn model(mut stream: &[u8], max: usize) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        if stream.is_empty() {
            out.push(Got::Closed);
            return out;
        }
        if stream.len() < PREFIX_LEN {
            out.push(Got::Eof);
            return out;
        }
        let declared = u32::from_be_bytes(stream[..4].try_into().unwrap());
        if declared as usize > max {
            out.push(Got::TooLarge {
                declared: declared.into(),
                max,
            });
            return out;
        }
        let body = &stream[4..];
        if body.len() < declared as usize {
            out.push(Got::Eof);
            return out;
        }
        out.push(Got::Frame(body[..declared as usize].to_vec()));
        stream = &body[declared as usize..];
    }
}

/// The largest allocation the readers may make for `stream`: the buffer
/// grows in steps of READ_CHUNK as bytes arrive, and a Vec may double.
fn allocation_bound(stream: &[u8]) -> usize {
    2 * (stream.len() + READ_CHUNK) + 4096
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = MAXES[(input.u8() & 7) as usize];
    let sizes = input.array::<4>();
    let stream = input.rest();
    let want = model(stream, max);

    // Blocking reader, one buffer reused for the whole connection (as the
    // client pool does).
    let mut r = Trickle {
        data: stream,
        sizes,
        reads: 0,
    };
    let mut buf = Vec::new();
    let mut got = Vec::new();
    // Only the reader's own allocations count (armed around each call: the
    // list of frames kept here grows with the input too).
    let mut peak = 0;
    loop {
        PeakAlloc::arm();
        let res = read_frame_blocking(&mut r, max, &mut buf);
        peak = peak.max(PeakAlloc::disarm());
        let g = classify(res, &buf);
        let done = !matches!(g, Got::Frame(_));
        got.push(g);
        if done {
            break;
        }
    }
    assert!(
        peak <= allocation_bound(stream),
        "blocking reader allocated {peak} bytes for a {}-byte stream",
        stream.len()
    );
    assert_eq!(got, want, "blocking reader vs model");

    // Async reader, the server's, same stream and read sizes.
    let mut r = Trickle {
        data: stream,
        sizes,
        reads: 0,
    };
    let (got_async, peak) = RT.with(|rt| {
        rt.block_on(async {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut peak = 0;
            loop {
                PeakAlloc::arm();
                let res = read_frame(&mut r, max, &mut buf).await;
                peak = peak.max(PeakAlloc::disarm());
                let g = classify(res, &buf);
                let done = !matches!(g, Got::Frame(_));
                got.push(g);
                if done {
                    break;
                }
            }
            (got, peak)
        })
    });
    assert!(
        peak <= allocation_bound(stream),
        "async reader allocated {peak} bytes for a {}-byte stream",
        stream.len()
    );
    assert_eq!(got_async, want, "async reader vs model");

    // Frames write back to the bytes they were read from.
    let mut wire = Vec::new();
    for g in &got {
        if let Got::Frame(payload) = g {
            write_frame_blocking(&mut wire, payload).expect("write to a Vec");
        }
    }
    assert_eq!(wire, stream[..wire.len()], "write_frame of a read frame");
});
