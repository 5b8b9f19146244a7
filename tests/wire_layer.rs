//! The wire layer against the real kernel: a small in-test filesystem served
//! by 4 workers, exercised with stat, ls and cat, then unmounted.

use std::ffi::CStr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use passthroughfs::fuse::abi::{self, Attr};
use passthroughfs::fuse::{self, *};

mod common;

/// Session options for the transport under test (PTFS_TRANSPORT=uring: the
/// io_uring queues, with enable_uring on while the guard lives).
fn transport_opts(threads: usize) -> (SessionOptions, Option<common::EnableUring>) {
    let guard = common::transport_uring().then(common::enable_uring);
    let opts = SessionOptions {
        threads,
        uring_depth: if guard.is_some() {
            uring::DEFAULT_DEPTH
        } else {
            0
        },
        ..Default::default()
    };
    (opts, guard)
}

/// Over io_uring: waits until every queue registered (the kernel then
/// sends requests over the ring); fails if it never does.
fn wait_ring_ready(conn: &Connection) {
    let t = &conn.transport;
    for _ in 0..1000 {
        if t.mode() == "uring" {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("io_uring transport never came up: {}", t.mode());
}

const HELLO: &[u8] = b"hello from the wire layer\n";

/// root (1) holds "hello" (2, a file) and "sub" (3, an empty directory).
struct HelloFs;

fn attr(ino: u64) -> Option<Attr> {
    let (mode, size, nlink) = match ino {
        1 => (libc::S_IFDIR | 0o755, 0, 3),
        2 => (libc::S_IFREG | 0o644, HELLO.len() as u64, 1),
        3 => (libc::S_IFDIR | 0o755, 0, 2),
        _ => return None,
    };
    Some(Attr {
        ino,
        mode,
        size,
        nlink,
        blksize: 4096,
        ..Default::default()
    })
}

impl Filesystem for HelloFs {}
impl XattrOps for HelloFs {}
impl LockOps for HelloFs {}

impl EntryOps for HelloFs {
    fn lookup(&self, _: &Context, parent: NodeId, name: &CStr) -> OpResult<Entry> {
        let ino = match (parent.raw(), name.to_bytes()) {
            (1, b"hello") => 2,
            (1, b"sub") => 3,
            _ => return Err(Errno::ENOENT),
        };
        Ok(Entry {
            nodeid: NodeId::from_raw(ino),
            attr: attr(ino).unwrap(),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
            ..Default::default()
        })
    }
}

impl AttrOps for HelloFs {
    fn getattr(&self, _: &Context, nodeid: NodeId, _: Option<Fh>) -> OpResult<fuse::Attr> {
        let attr = attr(nodeid.raw()).ok_or(Errno::ENOENT)?;
        Ok(fuse::Attr {
            attr,
            ttl: Duration::ZERO,
        })
    }
}

impl FileOps for HelloFs {
    fn open(&self, _: &Context, nodeid: NodeId, _: &abi::OpenIn) -> OpResult<Open> {
        if nodeid.raw() != 2 {
            return Err(Errno::EISDIR);
        }
        Ok(Open {
            fh: Fh::from_raw(42),
            ..Default::default()
        })
    }
    fn read(&self, _: &Context, _: NodeId, arg: &abi::ReadIn) -> OpResult<Data> {
        assert_eq!(arg.fh, Fh::from_raw(42));
        let start = (arg.offset as usize).min(HELLO.len());
        let end = (start + arg.size as usize).min(HELLO.len());
        Ok(Data::Bytes(HELLO[start..end].to_vec()))
    }
    fn release(&self, _: &Context, _: NodeId, _: &abi::ReleaseIn) -> OpResult<()> {
        Ok(())
    }
}

impl DirOps for HelloFs {
    fn opendir(&self, _: &Context, nodeid: NodeId, _: &abi::OpenIn) -> OpResult<Open> {
        if nodeid.raw() == 2 {
            return Err(Errno::ENOTDIR);
        }
        Ok(Open {
            fh: Fh::from_raw(nodeid.raw()),
            ..Default::default()
        })
    }
    fn readdir(
        &self,
        _: &Context,
        nodeid: NodeId,
        arg: &abi::ReadIn,
        plus: bool,
    ) -> OpResult<DirBuffer> {
        assert!(!plus, "readdirplus was not negotiated");
        let nodeid = nodeid.raw();
        let mut entries = vec![(nodeid, ".", libc::DT_DIR), (1, "..", libc::DT_DIR)];
        if nodeid == 1 {
            entries.push((2, "hello", libc::DT_REG));
            entries.push((3, "sub", libc::DT_DIR));
        }
        let mut buf = DirBuffer::new(arg.size as usize);
        for (i, (ino, name, typ)) in entries.into_iter().enumerate().skip(arg.offset as usize) {
            if !buf.push(ino, i as u64 + 1, typ as u32, name.as_bytes()) {
                break;
            }
        }
        Ok(buf)
    }
    fn releasedir(&self, _: &Context, _: NodeId, _: &abi::ReleaseIn) -> OpResult<()> {
        Ok(())
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn is_mounted(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let p = p.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(p))
}

#[test]
fn stat_ls_cat_through_four_workers() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (mount(2)); CI runs it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mopts = MountOptions {
        fsname: "hellofs".into(),
        subtype: "hellofs".into(),
        ..Default::default()
    };
    let (sopts, uring) = transport_opts(4);
    let session = Session::mount(Arc::new(HelloFs), &mnt, &mopts, sopts)
        .unwrap()
        .spawn()
        .unwrap();
    assert!(is_mounted(&mnt));
    if uring.is_some() {
        // INIT first (it travels over /dev/fuse), then the queues register.
        std::fs::metadata(&mnt).unwrap();
        wait_ring_ready(session.connection());
    }

    let m = mnt.to_str().unwrap().to_string();
    let hello = format!("{m}/hello");
    // Several rounds so that requests spread over the workers.
    for _ in 0..20 {
        assert!(
            run("stat", &["-c", "%s %F", &hello]).starts_with(&format!("{} regular", HELLO.len()))
        );
        let ls = run("ls", &["-a", &m]);
        assert_eq!(
            ls.split_whitespace().collect::<Vec<_>>(),
            vec![".", "..", "hello", "sub"]
        );
        assert_eq!(run("cat", &[&hello]).as_bytes(), HELLO);
    }
    let err = Command::new("stat")
        .arg(format!("{m}/missing"))
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("No such file"));

    let counters = &session.connection().counters;
    assert!(counters.get(abi::Opcode::Lookup) > 0);
    assert!(counters.get(abi::Opcode::Read) > 0);
    assert!(counters.get(abi::Opcode::Readdir) > 0);
    if uring.is_some() {
        // The lookups, reads and readdirs came through the ring entries.
        let ring = session
            .connection()
            .transport
            .ring_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(ring >= 60, "only {ring} requests came through the ring");
    } else {
        let per_worker = session.requests_per_worker();
        let busy = per_worker.iter().filter(|&&n| n > 0).count();
        assert!(busy > 1, "only one worker served requests: {per_worker:?}");
    }

    session.unmount().unwrap();
    assert!(
        session.join(),
        "workers should end with ENODEV after the unmount"
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn dropping_a_session_unmounts() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (mount(2)); CI runs it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (sopts, uring) = transport_opts(2);
    let session = Session::mount(Arc::new(HelloFs), &mnt, &MountOptions::default(), sopts)
        .unwrap()
        .spawn()
        .unwrap();
    if uring.is_some() {
        std::fs::metadata(&mnt).unwrap();
        wait_ring_ready(session.connection());
    }
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), HELLO);
    drop(session);
    assert!(!is_mounted(&mnt));
}
