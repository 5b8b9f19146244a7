//! GETATTR round trips per second through our wire layer and, side by side
//! in the same run, through `fuser` 0.18 serving the same minimal
//! filesystem (a root directory with attribute timeout 0, so every stat(2)
//! of the mountpoint is one GETATTR). Run as root:
//!
//!     cargo bench --bench getattr_roundtrip
//!
//! Rounds alternate between the two layers; the median of the rounds is
//! reported, with the spread. Not a test: it asserts nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use passthroughfs::fuse::{
    self, AttrOps, Context, DirOps, Entry, EntryOps, Errno, Fh, FileOps, Filesystem, LockOps,
    MountOptions, NodeId, OpResult, Session, SessionOptions, XattrOps,
};

const WORKERS: usize = 2;

struct Ours;

impl Filesystem for Ours {}
impl FileOps for Ours {}
impl DirOps for Ours {}
impl XattrOps for Ours {}
impl LockOps for Ours {}

impl AttrOps for Ours {
    fn getattr(&self, _: &Context, nodeid: NodeId, _: Option<Fh>) -> OpResult<fuse::Attr> {
        let attr = fuse::abi::Attr {
            ino: nodeid.raw(),
            mode: libc::S_IFDIR | 0o755,
            nlink: 2,
            blksize: 4096,
            ..Default::default()
        };
        Ok(fuse::Attr {
            attr,
            ttl: Duration::ZERO,
        })
    }
}

impl EntryOps for Ours {
    fn lookup(&self, _: &Context, _: NodeId, _: &std::ffi::CStr) -> OpResult<Entry> {
        Err(Errno::ENOENT)
    }
}

struct Theirs;

impl fuser::Filesystem for Theirs {
    fn getattr(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        let a = fuser::FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: fuser::FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        };
        reply.attr(&Duration::ZERO, &a)
    }
}

/// stat(2) of `mnt` from `clients` threads for `dur`; returns calls/s.
fn hammer(mnt: &Path, clients: usize, dur: Duration) -> f64 {
    let c = Arc::new(CString::new(mnt.as_os_str().as_bytes()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (c, stop, count) = (c.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(unsafe { libc::stat(c.as_ptr(), &mut st) }, 0);
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("getattr_roundtrip: needs root (mount(2)); skipped");
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: keep the run short unless asked for more.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let secs: f64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dur = Duration::from_secs_f64(secs);
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (dir.path().join("ours"), dir.path().join("fuser"));
    std::fs::create_dir(&m1).unwrap();
    std::fs::create_dir(&m2).unwrap();

    let ours = Session::mount(
        Arc::new(Ours),
        &m1,
        &MountOptions::default(),
        SessionOptions {
            threads: WORKERS,
            ..Default::default()
        },
    )
    .unwrap()
    .spawn()
    .unwrap();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![fuser::MountOption::FSName("fuser-bench".into())];
    cfg.n_threads = Some(WORKERS);
    cfg.clone_fd = true;
    let theirs = fuser::spawn_mount(Theirs, &m2, &cfg).unwrap();
    // Warm up both.
    hammer(&m1, 1, Duration::from_millis(200));
    hammer(&m2, 1, Duration::from_millis(200));

    println!("GETATTR round trips per second ({WORKERS} daemon workers, {rounds} alternating rounds of {secs} s)");
    println!(
        "{:<10} {:>14} {:>14} {:>10}",
        "clients", "passthroughfs", "fuser 0.18", "ratio"
    );
    for clients in [1usize, 4] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(hammer(&m1, clients, dur));
            b.push(hammer(&m2, clients, dur));
        }
        let (ma, la, ha) = median_spread(a);
        let (mb, lb, hb) = median_spread(b);
        println!(
            "{clients:<10} {ma:>14.0} {mb:>14.0} {:>10.3}   (ours {la:.0}..{ha:.0}, fuser {lb:.0}..{hb:.0})",
            ma / mb
        );
    }
    ours.unmount().unwrap();
    ours.join();
    drop(theirs);
}
