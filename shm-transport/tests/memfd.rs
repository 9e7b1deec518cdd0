//! Anonymous segments: sealed memfds handed over by descriptor.
//!
//! A named segment can be truncated by anyone who can open it, which
//! turns the other side's next access into SIGBUS. These tests show that
//! the memfd kind cannot be resized by the peer that holds it, and that an
//! opener refuses any descriptor that could be.

use metabridge_shm::{Channel, ChannelConfig, DoorbellSet, Error};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

fn config() -> ChannelConfig {
    ChannelConfig {
        capacity: 4096,
        ..ChannelConfig::default()
    }
}

#[test]
fn the_peer_cannot_resize_a_channel_segment() {
    let (mut a, fd) = Channel::create_memfd(&config()).unwrap();
    let mut b = Channel::from_fd(fd.as_fd(), &config()).unwrap();
    // Whoever holds the descriptor (the opener here) tries to shrink and
    // to grow it: the seals refuse both.
    let file = File::from(fd);
    let len = file.metadata().unwrap().len();
    let shrink = file.set_len(0).unwrap_err();
    assert_eq!(shrink.raw_os_error(), Some(libc::EPERM), "{shrink}");
    let grow = file.set_len(len * 2).unwrap_err();
    assert_eq!(grow.raw_os_error(), Some(libc::EPERM), "{grow}");
    // Nor can the seals be lifted or others added.
    assert!(fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)
    )
    .is_err());
    assert_eq!(file.metadata().unwrap().len(), len);
    drop(file);
    // Every page is still there: a full ring's worth of traffic works.
    for i in 0..64u32 {
        let message = vec![i as u8; 1000];
        a.send(&message).unwrap();
        assert_eq!(&*b.recv().unwrap(), &message[..]);
    }
}

/// A memfd of `len` bytes with the given seals (possibly none).
fn memfd(len: u64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(
        c"test",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let file = File::from(fd);
    file.set_len(len).unwrap();
    if !seals.is_empty() {
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    OwnedFd::from(file)
}

#[test]
fn an_unsealed_descriptor_is_refused_before_it_is_mapped() {
    // A copy of a good segment's bytes in an unsealed memfd: valid header,
    // but its sender could truncate it later.
    let (_a, good) = Channel::create_memfd(&config()).unwrap();
    let good = File::from(good);
    let len = good.metadata().unwrap().len();
    let mut bytes = vec![0u8; len as usize];
    good.read_exact_at(&mut bytes, 0).unwrap();
    for seals in [
        SealFlag::empty(),
        SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        SealFlag::F_SEAL_SHRINK,
    ] {
        let fd = memfd(len, SealFlag::empty());
        File::from(fd.try_clone().unwrap())
            .write_all_at(&bytes, 0)
            .unwrap();
        if !seals.is_empty() {
            fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        match Channel::from_fd(fd.as_fd(), &config()) {
            Err(Error::Unsealed { what }) => assert!(what.contains("segment"), "{what}"),
            Err(e) => panic!("seals {seals:?}: expected Unsealed, got {e}"),
            Ok(_) => panic!("seals {seals:?}: an unsealed segment was accepted"),
        }
    }
}

#[test]
fn descriptors_that_are_not_memfds_are_refused() {
    let dir = std::env::temp_dir().join(format!("mb-memfd-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plain");
    let file = File::create(&path).unwrap();
    file.set_len(1 << 16).unwrap();
    assert!(matches!(
        Channel::from_fd(file.as_fd(), &config()),
        Err(Error::Unsealed { .. })
    ));
    let (s1, _s2) = std::os::unix::net::UnixStream::pair().unwrap();
    assert!(matches!(
        Channel::from_fd(s1.as_fd(), &config()),
        Err(Error::Unsealed { .. })
    ));
    assert!(matches!(
        DoorbellSet::from_fd(file.as_fd()),
        Err(Error::Unsealed { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sealed_but_short_or_garbage_segments_are_typed_errors() {
    let all = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    // Shorter than a header.
    let fd = memfd(100, all);
    assert!(matches!(
        Channel::from_fd(fd.as_fd(), &config()),
        Err(Error::Truncated { .. })
    ));
    // Long enough, all zeros: no magic.
    let fd = memfd(1 << 16, all);
    assert!(matches!(
        Channel::from_fd(fd.as_fd(), &config()),
        Err(Error::BadMagic { .. })
    ));
    assert!(matches!(
        DoorbellSet::from_fd(fd.as_fd()),
        Err(Error::BadMagic { .. })
    ));
    // A good header whose capacities claim more than the memfd holds.
    let (_a, good) = Channel::create_memfd(&config()).unwrap();
    let good = File::from(good);
    let mut head = vec![0u8; 4096];
    good.read_exact_at(&mut head, 0).unwrap();
    let fd = memfd(4096 + 64, SealFlag::empty());
    File::from(fd.try_clone().unwrap())
        .write_all_at(&head, 0)
        .unwrap();
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(all)).unwrap();
    match Channel::from_fd(fd.as_fd(), &config()) {
        // Header, two rings, then the two payload pools.
        Err(Error::Truncated { needed, .. }) => {
            assert_eq!(needed, good.metadata().unwrap().len());
            assert_eq!(
                needed,
                4096 + 2 * 4096 + 2 * metabridge_shm::DEFAULT_POOL as u64
            );
        }
        Err(e) => panic!("expected Truncated, got {e}"),
        Ok(_) => panic!("a short segment was accepted"),
    }
}

#[test]
fn a_segment_is_attached_once() {
    let (_a, fd) = Channel::create_memfd(&config()).unwrap();
    let _b = Channel::from_fd(fd.as_fd(), &config()).unwrap();
    assert!(matches!(
        Channel::from_fd(fd.as_fd(), &config()),
        Err(Error::AlreadyAttached { .. })
    ));
}

#[test]
fn doorbells_by_descriptor_cannot_be_resized_either() {
    let bells = DoorbellSet::create_memfd(4).unwrap();
    let remote = DoorbellSet::from_fd(bells.fd().unwrap()).unwrap();
    assert_eq!(remote.len(), 4);
    let file = File::from(bells.fd().unwrap().try_clone_to_owned().unwrap());
    assert_eq!(
        file.set_len(0).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    let seen = bells.bell(3).unwrap().count();
    remote.bell(3).unwrap().ring();
    assert_ne!(bells.bell(3).unwrap().count(), seen);
}

/// A small tmpfs mounted for one test, unmounted (and removed) on drop,
/// even when the test fails.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn new(tag: &str, size: &str) -> SmallTmpfs {
        let dir = std::env::temp_dir().join(format!("mb-tmpfs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .expect("mount(8) runs");
        assert!(status.success(), "mounting a tmpfs needs root: {status}");
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_filesystem_is_a_clear_error_at_creation_not_a_sigbus_later() {
    let fs = SmallTmpfs::new("full", "256k");
    let config = ChannelConfig {
        capacity: 1 << 20, // 2 MiB of rings in a 256 KiB filesystem
        dir: fs.0.clone(),
        ..ChannelConfig::default()
    };
    match Channel::create("too-big", &config) {
        Err(Error::NoSpace {
            what,
            needed,
            available,
        }) => {
            assert!(what.contains("too-big"), "names the segment: {what}");
            assert_eq!(needed, 4096 + 2 * (1 << 20));
            assert!(available.is_some_and(|a| a <= 256 * 1024), "{available:?}");
            let text = Error::NoSpace {
                what,
                needed,
                available,
            }
            .to_string();
            assert!(text.contains("bytes left"), "{text}");
        }
        Err(e) => panic!("expected NoSpace, got {e}"),
        Ok(_) => panic!("a segment larger than its filesystem was created"),
    }
    // Nothing was left behind, and a segment that fits still works.
    assert_eq!(std::fs::read_dir(&fs.0).unwrap().count(), 0);
    let small = ChannelConfig {
        capacity: 4096,
        ..config
    };
    let mut a = Channel::create("fits", &small).unwrap();
    let mut b = Channel::open("fits", &small).unwrap();
    a.send(b"ok").unwrap();
    assert_eq!(&*b.recv().unwrap(), b"ok");
    assert!(matches!(
        Channel::create(
            "filler",
            &ChannelConfig {
                capacity: 1 << 16,
                ..small.clone()
            },
        )
        .and_then(|_| {
            Channel::create(
                "more",
                &ChannelConfig {
                    capacity: 1 << 20,
                    ..small.clone()
                },
            )
        }),
        Err(Error::NoSpace { .. })
    ));
}

/// A segment of one writer and many readers: once sealed against writes,
/// a descriptor reopened read-write through `/proc/self/fd` (memfd inodes
/// are mode 0777) can neither write, nor map it writable, nor make a
/// read-only mapping writable, nor punch holes; the writer's own earlier
/// mapping still writes, and readers can tell the seal is there.
#[test]
fn a_write_sealed_segment_cannot_be_written_through_a_reopened_descriptor() {
    use metabridge_shm::memfd;
    let fd = memfd::create_for_one_writer(c"one-writer", 8192, "counters").unwrap();
    // SAFETY: a memfd of 8192 bytes sealed against shrinking.
    let mut writer = unsafe { memmap2::MmapOptions::new().map_mut(&fd).unwrap() };
    // Before the seals (F_SEAL_SEAL is not there yet either), a reader
    // refuses it.
    match memfd::check_write_sealed(fd.as_fd(), 8192, "counters") {
        Err(Error::Unsealed { what }) => assert_eq!(what, "counters"),
        other => panic!("expected Unsealed, got {other:?}"),
    }
    memfd::seal_writes(fd.as_fd()).unwrap();
    assert_eq!(
        memfd::check_write_sealed(fd.as_fd(), 8192, "counters").unwrap(),
        8192
    );
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap();
    let e = reopened.write_all_at(b"forged", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // SAFETY: expected to be refused.
    assert!(unsafe { memmap2::MmapOptions::new().map_mut(&reopened) }.is_err());
    // SAFETY: a read-only mapping of the sealed memfd.
    let ro = unsafe { memmap2::MmapOptions::new().map(&reopened).unwrap() };
    assert!(ro.make_mut().is_err());
    let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
    assert!(nix::fcntl::fallocate(reopened.as_raw_fd(), punch, 0, 8192).is_err());
    // No seal can be added or lifted, and the size is fixed.
    assert!(fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)
    )
    .is_err());
    assert!(reopened.set_len(0).is_err());
    // The writer's mapping made before the seal still writes, and readers
    // see it.
    writer[0..6].copy_from_slice(b"honest");
    let mut seen = [0u8; 6];
    reopened.read_exact_at(&mut seen, 0).unwrap();
    assert_eq!(&seen, b"honest");
}
