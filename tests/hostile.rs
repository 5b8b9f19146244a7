//! Hostile input: random, truncated, oversized and lying requests fed to the
//! real dispatcher and PassthroughFs (no kernel in between). Every request
//! gets an errno reply or is ignored as FORGET is; nothing panics, and
//! afterwards nothing has leaked.

use std::sync::Arc;

use passthroughfs::fuse::abi::{self, Opcode};
use passthroughfs::fuse::testing::Harness;
use passthroughfs::passthrough::{Config, PassthroughFs};
use proptest::prelude::*;
use zerocopy::IntoBytes;

/// The process's peak virtual size: a buffer allocated for a request,
/// even never touched, shows here.
fn vm_peak_kib() -> i64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// fds of this process on `dir` or below (deleted ones included).
fn fds_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .count()
}

struct Setup {
    _dir: tempfile::TempDir,
    h: Harness<PassthroughFs>,
    known: Vec<u64>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    std::os::unix::fs::symlink("f", src.join("l")).unwrap();
    let fs = PassthroughFs::new(Config::for_source(src)).unwrap();
    let h = Harness::new(Arc::new(fs)).unwrap();
    let mut known = vec![abi::ROOT_ID];
    for name in ["d", "f", "l"] {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (hdr, out) = h
            .request(Opcode::Lookup as u32, 1, abi::ROOT_ID, &body)
            .unwrap();
        assert_eq!(hdr.error, 0);
        known.push(u64::from_ne_bytes(out[..8].try_into().unwrap()));
    }
    Setup {
        _dir: dir,
        h,
        known,
    }
}

/// Names worth trying: plain, missing NUL, with '/', dot-dot, too long.
fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"f\0".to_vec()),
        Just(b"d\0".to_vec()),
        Just(b"..\0".to_vec()),
        Just(b".\0".to_vec()),
        Just(b"a/b\0".to_vec()),
        Just(b"no-nul".to_vec()),
        Just(vec![b'x'; 300]),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

/// One request: a real opcode (or nonsense), a known or unknown nodeid, an
/// argument block of random bytes, maybe a name, maybe a lying length.
fn request() -> impl Strategy<Value = (u32, usize, Vec<u8>, Vec<u8>, u8, u16, u32)> {
    (
        prop_oneof![4 => 1u32..=53, 1 => any::<u32>()],
        0usize..8,
        proptest::collection::vec(any::<u8>(), 0..120),
        name_bytes(),
        0u8..6,
        0u16..3,
        prop_oneof![Just(0u32), Just(1000), any::<u32>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_never_panic_or_leak(reqs in proptest::collection::vec(request(), 1..60)) {
        prop_assert!(unsafe { libc::geteuid() } == 0, "this test needs root; CI runs it as root");
        let s = setup();
        let dir = s._dir.path().to_path_buf();
        let mut unique = 100u64;
        for (opcode, node_pick, args, name, mangle, extlen, uid) in reqs {
            // SETLKW could wait for ever on a lock the fuzzer took itself.
            if opcode == Opcode::Setlkw as u32 {
                continue;
            }
            unique += 1;
            let nodeid = match node_pick {
                0..=3 => s.known[node_pick.min(s.known.len() - 1)],
                4 => 0,
                5 => u64::MAX,
                6 => 9999,
                _ => 2,
            };
            let mut body = args.clone();
            if mangle % 2 == 0 {
                body.extend_from_slice(&name);
            }
            let h = abi::InHeader {
                len: 0,
                opcode,
                unique,
                nodeid: abi::NodeId::from_raw(nodeid),
                uid,
                gid: uid,
                pid: 1,
                total_extlen: extlen,
                padding: 0,
            };
            let mut raw = h.as_bytes().to_vec();
            raw.extend_from_slice(&body);
            let real_len = raw.len() as u32;
            let len = match mangle {
                1 => real_len.saturating_add(17), // says more than there is
                3 => real_len.saturating_sub(9),  // says less
                _ => real_len,
            };
            raw[..4].copy_from_slice(&len.to_ne_bytes());
            if mangle == 5 && raw.len() > 10 {
                raw.truncate(raw.len() / 2); // cut in the middle
            }
            if let Some((out, payload)) = s.h.raw(&raw) {
                prop_assert!(out.error <= 0 && out.error >= -511, "errno out of range: {}", out.error);
                prop_assert_eq!(out.len as usize, 16 + payload.len());
            }
        }
        // Drain late replies, then give everything back as the kernel would
        // at unmount: forget every nodeid, release every handle.
        while s.h.try_reply().is_some() {}
        let fs = s.h.filesystem().clone();
        for id in 2..10_000u64 {
            let f = abi::ForgetIn { nlookup: u64::MAX / 2 };
            let _ = s.h.request(Opcode::Forget as u32, 0, id, f.as_bytes());
        }
        for fh in 0..200u64 {
            let r = abi::ReleaseIn { fh: abi::Fh::from_raw(fh), ..Default::default() };
            for id in 1..64u64 {
                if fs.open_files() == 0 {
                    break;
                }
                let _ = s.h.request(Opcode::Release as u32, 1, id, r.as_bytes());
                let _ = s.h.request(Opcode::Releasedir as u32, 1, id, r.as_bytes());
            }
        }
        while s.h.try_reply().is_some() {}
        prop_assert_eq!(fs.open_files(), 0, "open handles leaked");
        prop_assert_eq!(fs.table().len(), 1, "inodes leaked");
        drop(fs);
        drop(s);
        // Only fds into this case's tree count: the binary's other tests
        // open and close fds of their own in parallel threads.
        let left = fds_under(&dir);
        prop_assert_eq!(left, 0, "fds into SOURCE leaked");
    }
}

#[test]
fn specific_hostile_requests() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (mount(2)); CI runs it as root"
    );
    let s = setup();
    let h = &s.h;
    let err = |r: Option<(abi::OutHeader, Vec<u8>)>| r.map(|(o, _)| -o.error);
    // Lookups that would step outside the directory are refused.
    for name in [&b"..\0"[..], b".\0", b"a/b\0", b"\0"] {
        assert_eq!(
            err(h.request(Opcode::Lookup as u32, 2, abi::ROOT_ID, name)),
            Some(libc::EINVAL),
            "{name:?}"
        );
    }
    let long = [vec![b'x'; 256], vec![0]].concat();
    assert_eq!(
        err(h.request(Opcode::Lookup as u32, 3, abi::ROOT_ID, &long)),
        Some(libc::ENAMETOOLONG)
    );
    // A name without its NUL: EIO (malformed), not a panic.
    assert_eq!(
        err(h.request(Opcode::Lookup as u32, 4, abi::ROOT_ID, b"f")),
        Some(libc::EIO)
    );
    // Nodeids never looked up, or forgotten.
    let getattr = abi::GetattrIn::default();
    assert_eq!(
        err(h.request(Opcode::Getattr as u32, 5, 424242, getattr.as_bytes())),
        Some(libc::ESTALE)
    );
    let f = s.known[2];
    let forget = abi::ForgetIn { nlookup: 1000 }; // more than looked up
    assert!(
        h.request(Opcode::Forget as u32, 0, f, forget.as_bytes())
            .is_none(),
        "FORGET takes no reply"
    );
    assert_eq!(
        err(h.request(Opcode::Getattr as u32, 6, f, getattr.as_bytes())),
        Some(libc::ESTALE)
    );
    // RELEASE of an unknown fh: answered, harmless.
    let rel = abi::ReleaseIn {
        fh: abi::Fh::from_raw(777),
        ..Default::default()
    };
    assert_eq!(
        err(h.request(Opcode::Release as u32, 7, abi::ROOT_ID, rel.as_bytes())),
        Some(0)
    );
    // READ and WRITE with a handle that does not exist.
    let rd = abi::ReadIn {
        fh: abi::Fh::from_raw(12345),
        size: 4096,
        ..Default::default()
    };
    assert_eq!(
        err(h.request(Opcode::Read as u32, 8, s.known[1], rd.as_bytes())),
        Some(libc::EBADF)
    );
    // A WRITE whose size says more than the payload: malformed.
    let wr = abi::WriteIn {
        fh: abi::Fh::from_raw(1),
        size: 1 << 20,
        ..Default::default()
    };
    assert_eq!(
        err(h.request(Opcode::Write as u32, 9, s.known[1], wr.as_bytes())),
        Some(libc::EIO)
    );
    // Unknown opcodes: ENOSYS. A second INIT: EIO.
    assert_eq!(err(h.request(4000, 10, 1, b"")), Some(libc::ENOSYS));
    let init = abi::InitIn {
        major: 7,
        minor: 45,
        ..Default::default()
    };
    assert_eq!(
        err(h.request(Opcode::Init as u32, 11, 1, init.as_bytes())),
        Some(libc::EIO)
    );
    // BATCH_FORGET whose count lies.
    let mut bf = abi::BatchForgetIn {
        count: 1_000_000,
        dummy: 0,
    }
    .as_bytes()
    .to_vec();
    bf.extend_from_slice(
        abi::ForgetOne {
            nodeid: abi::NodeId::from_raw(99999),
            nlookup: 1,
        }
        .as_bytes(),
    );
    assert!(h.request(Opcode::BatchForget as u32, 0, 0, &bf).is_none());
    // Sizes that ask for 4 GiB buffers get answers from buffers of the
    // most any reply may carry (found in a 1 GiB UML guest: an xattr
    // buffer sized by the request aborted the daemon).
    let peak_before = vm_peak_kib();
    let gx = [
        abi::GetxattrIn {
            size: u32::MAX,
            padding: 0,
        }
        .as_bytes(),
        b"user.none\0",
    ]
    .concat();
    assert_eq!(
        err(h.request(Opcode::Getxattr as u32, 13, s.known[1], &gx)),
        Some(libc::ENODATA)
    );
    let lx = abi::GetxattrIn {
        size: u32::MAX,
        padding: 0,
    };
    assert_eq!(
        err(h.request(Opcode::Listxattr as u32, 14, s.known[1], lx.as_bytes())),
        Some(0)
    );
    let od = abi::OpenIn::default();
    let (o, out) = h
        .request(Opcode::Opendir as u32, 15, abi::ROOT_ID, od.as_bytes())
        .unwrap();
    assert_eq!(o.error, 0);
    let rd = abi::ReadIn {
        fh: abi::Fh::from_raw(u64::from_ne_bytes(out[..8].try_into().unwrap())),
        size: u32::MAX,
        ..Default::default()
    };
    let (o, listing) = h
        .request(Opcode::Readdir as u32, 16, abi::ROOT_ID, rd.as_bytes())
        .unwrap();
    assert_eq!(o.error, 0);
    assert!(!listing.is_empty());
    let rel = abi::ReleaseIn {
        fh: rd.fh,
        ..Default::default()
    };
    let _ = h.request(Opcode::Releasedir as u32, 17, abi::ROOT_ID, rel.as_bytes());
    let grown = vm_peak_kib() - peak_before;
    assert!(grown < 1 << 20, "peak virtual size grew by {grown} KiB");
    // Still serving.
    let (o, _) = h
        .request(Opcode::Lookup as u32, 12, abi::ROOT_ID, b"f\0")
        .unwrap();
    assert_eq!(o.error, 0);
    assert_eq!(h.connection().counters.malformed(), 2);
}

#[test]
fn special_files_are_never_opened_by_the_daemon() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (mount(2)); CI runs it as root"
    );
    // Found by examples/fuzz_dispatch: SYNCFS naming a FIFO reopened it
    // and blocked the worker for ever waiting for a writer.
    let s = setup();
    let mut body = abi::MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(b"fifo\0");
    let (o, out) =
        s.h.request(Opcode::Mknod as u32, 2, abi::ROOT_ID, &body)
            .unwrap();
    assert_eq!(o.error, 0);
    let fifo = u64::from_ne_bytes(out[..8].try_into().unwrap());
    let h = Arc::new(s.h);
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    std::thread::spawn(move || {
        let syncfs = h2
            .request(
                Opcode::Syncfs as u32,
                3,
                fifo,
                abi::SyncfsIn::default().as_bytes(),
            )
            .map(|r| r.0.error);
        let lk = abi::LkIn {
            lk: abi::FileLock {
                typ: libc::F_RDLCK as u32,
                end: u64::MAX >> 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let getlk = h2
            .request(Opcode::Getlk as u32, 4, fifo, lk.as_bytes())
            .map(|r| r.0.error);
        let _ = tx.send((syncfs, getlk));
    });
    let (syncfs, getlk) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the daemon blocked on a FIFO");
    assert_eq!(syncfs, Some(0));
    assert_eq!(getlk, Some(-libc::EBADF));
}
