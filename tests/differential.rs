//! Differential stress: the same seeded random workload on a native
//! directory and through the mount gives the same results, op by op, and
//! the same final tree. Then 8 threads through the mount, with a watchdog.
//!
//! PTFS_SEED=<n> replays a run; PTFS_DIFF_OPS sets its length (default
//! 100,000); PTFS_DIFF_SECS the threaded phase (default 15 s).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use passthroughfs::fuse::testing::Rng;

fn seed() -> u64 {
    std::env::var("PTFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// One generated operation, on paths relative to the root under test.
#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write(String, u64, usize, u8),
    Truncate(String, u64),
    Read(String, u64, usize),
    Rename(String, String, u32),
    Link(String, String),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Symlink(String, String),
    Chmod(String, u32),
    SetXattr(String, String, Vec<u8>),
    GetXattr(String, String),
    RemoveXattr(String, String),
    Fallocate(String, i32, u64, u64),
    CopyRange(String, String, u64, u64, usize),
    Stat(String),
}

/// A small namespace, so that operations mostly meet existing entries.
fn path(r: &mut Rng) -> String {
    let dirs = ["", "a/", "b/", "a/c/"];
    let names = ["f0", "f1", "f2", "f3", "f4", "s"];
    format!(
        "{}{}",
        dirs[r.below(4) as usize],
        names[r.below(6) as usize]
    )
}

fn dir_path(r: &mut Rng) -> String {
    ["a", "b", "a/c", "d", "a/d", "b/d"][r.below(6) as usize].to_string()
}

fn gen(r: &mut Rng) -> Op {
    match r.below(24) {
        0..=3 => Op::Create(path(r)),
        4..=7 => Op::Write(
            path(r),
            r.below(65536),
            1 + r.below(8192) as usize,
            r.next_u64() as u8,
        ),
        8 => Op::Truncate(path(r), r.below(70000)),
        9 | 10 => Op::Read(path(r), r.below(70000), r.below(16384) as usize),
        11 | 12 => Op::Rename(
            path(r),
            path(r),
            [0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE][r.below(4) as usize],
        ),
        13 => Op::Link(path(r), path(r)),
        14 => Op::Unlink(path(r)),
        15 => Op::Mkdir(dir_path(r)),
        16 => Op::Rmdir(dir_path(r)),
        17 => Op::Symlink(
            ["f0", "../f1", "/nowhere", "a"][r.below(4) as usize].to_string(),
            path(r),
        ),
        18 => Op::Chmod(path(r), [0o600, 0o644, 0o755, 0o700][r.below(4) as usize]),
        19 => Op::SetXattr(
            path(r),
            format!("user.k{}", r.below(3)),
            vec![b'v'; r.below(100) as usize],
        ),
        20 => Op::GetXattr(path(r), format!("user.k{}", r.below(3))),
        21 => Op::RemoveXattr(path(r), format!("user.k{}", r.below(3))),
        22 => Op::Fallocate(
            path(r),
            [
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ][r.below(3) as usize],
            r.below(65536),
            1 + r.below(65536),
        ),
        _ => Op::CopyRange(
            path(r),
            path(r),
            r.below(65536),
            r.below(65536),
            r.below(16384) as usize,
        ),
    }
}

fn c(root: &Path, p: &str) -> CString {
    CString::new(root.join(p).as_os_str().as_bytes()).unwrap()
}

fn ret(r: i64) -> Result<i64, i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Runs `op` under `root`; the outcome as comparable data.
fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    unsafe {
        match op {
            Op::Create(p) => {
                let fd = ret(libc::open(
                    c(root, p).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW,
                    0o644,
                ) as i64)?;
                libc::close(fd as i32);
                Ok(vec![])
            }
            Op::Write(p, off, len, byte) => {
                let fd =
                    ret(libc::open(c(root, p).as_ptr(), libc::O_WRONLY | libc::O_NOFOLLOW) as i64)?;
                let buf = vec![*byte; *len];
                let r = ret(libc::pwrite(fd as i32, buf.as_ptr().cast(), *len, *off as i64) as i64);
                libc::close(fd as i32);
                r.map(|n| n.to_ne_bytes().to_vec())
            }
            Op::Truncate(p, n) => {
                ret(libc::truncate(c(root, p).as_ptr(), *n as i64) as i64).map(|_| vec![])
            }
            Op::Read(p, off, len) => {
                let fd =
                    ret(libc::open(c(root, p).as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW) as i64)?;
                let mut buf = vec![0u8; *len];
                let r =
                    ret(libc::pread(fd as i32, buf.as_mut_ptr().cast(), *len, *off as i64) as i64);
                libc::close(fd as i32);
                r.map(|n| buf[..n as usize].to_vec())
            }
            Op::Rename(a, b, fl) => ret(libc::renameat2(
                libc::AT_FDCWD,
                c(root, a).as_ptr(),
                libc::AT_FDCWD,
                c(root, b).as_ptr(),
                *fl,
            ) as i64)
            .map(|_| vec![]),
            Op::Link(a, b) => {
                ret(libc::link(c(root, a).as_ptr(), c(root, b).as_ptr()) as i64).map(|_| vec![])
            }
            Op::Unlink(p) => ret(libc::unlink(c(root, p).as_ptr()) as i64).map(|_| vec![]),
            Op::Mkdir(p) => ret(libc::mkdir(c(root, p).as_ptr(), 0o755) as i64).map(|_| vec![]),
            Op::Rmdir(p) => ret(libc::rmdir(c(root, p).as_ptr()) as i64).map(|_| vec![]),
            Op::Symlink(t, p) => {
                let t = CString::new(t.as_bytes()).unwrap();
                ret(libc::symlink(t.as_ptr(), c(root, p).as_ptr()) as i64).map(|_| vec![])
            }
            Op::Chmod(p, mode) => {
                ret(libc::fchmodat(libc::AT_FDCWD, c(root, p).as_ptr(), *mode, 0) as i64)
                    .map(|_| vec![])
            }
            Op::SetXattr(p, k, v) => {
                let k = CString::new(k.as_bytes()).unwrap();
                ret(libc::lsetxattr(
                    c(root, p).as_ptr(),
                    k.as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                ) as i64)
                .map(|_| vec![])
            }
            Op::GetXattr(p, k) => {
                let k = CString::new(k.as_bytes()).unwrap();
                let mut buf = vec![0u8; 256];
                let n = ret(libc::lgetxattr(
                    c(root, p).as_ptr(),
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ) as i64)?;
                Ok(buf[..n as usize].to_vec())
            }
            Op::RemoveXattr(p, k) => {
                let k = CString::new(k.as_bytes()).unwrap();
                ret(libc::lremovexattr(c(root, p).as_ptr(), k.as_ptr()) as i64).map(|_| vec![])
            }
            Op::Fallocate(p, mode, off, len) => {
                let fd =
                    ret(libc::open(c(root, p).as_ptr(), libc::O_WRONLY | libc::O_NOFOLLOW) as i64)?;
                let r = ret(libc::fallocate(fd as i32, *mode, *off as i64, *len as i64) as i64);
                libc::close(fd as i32);
                r.map(|_| vec![])
            }
            Op::CopyRange(a, b, oa, ob, len) => {
                let fa =
                    ret(libc::open(c(root, a).as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW) as i64)?;
                let fb =
                    match ret(
                        libc::open(c(root, b).as_ptr(), libc::O_WRONLY | libc::O_NOFOLLOW) as i64,
                    ) {
                        Ok(f) => f,
                        Err(e) => {
                            libc::close(fa as i32);
                            return Err(e);
                        }
                    };
                let (mut x, mut y) = (*oa as i64, *ob as i64);
                let r = ret(
                    libc::copy_file_range(fa as i32, &mut x, fb as i32, &mut y, *len, 0) as i64,
                );
                libc::close(fa as i32);
                libc::close(fb as i32);
                r.map(|n| n.to_ne_bytes().to_vec())
            }
            Op::Stat(p) => {
                let st = lstat(&root.join(p))?;
                Ok(format!("{:o} {} {}", st.st_mode, st.st_size, st.st_nlink).into_bytes())
            }
        }
    }
}

/// Everything about a tree that both sides must agree on.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let mut desc = format!(
                "mode {:o} size {} nlink {}",
                md.mode(),
                if md.is_dir() { 0 } else { md.len() },
                md.nlink()
            );
            if md.file_type().is_symlink() {
                desc += &format!(" -> {}", fs::read_link(&p).unwrap().display());
            } else if md.is_file() {
                let h = fs::read(&p)
                    .unwrap()
                    .iter()
                    .fold(0xcbf29ce484222325u64, |h, &x| {
                        (h ^ x as u64).wrapping_mul(0x100000001b3)
                    });
                desc += &format!(" hash {h:x}");
            }
            let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
            let mut names = vec![0u8; 1024];
            let n =
                unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
            if n > 0 {
                let mut keys: Vec<&[u8]> = names[..n as usize]
                    .split(|&b| b == 0)
                    .filter(|k| k.starts_with(b"user."))
                    .collect();
                keys.sort();
                for k in keys {
                    let kc = CString::new(k).unwrap();
                    let mut v = vec![0u8; 256];
                    let m = unsafe {
                        libc::lgetxattr(cp.as_ptr(), kc.as_ptr(), v.as_mut_ptr().cast(), v.len())
                    };
                    desc += &format!(" {}={}", String::from_utf8_lossy(k), m);
                }
            }
            out.insert(rel, desc);
            if md.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn prepare(root: &Path) {
    fs::create_dir_all(root.join("a/c")).unwrap();
    fs::create_dir_all(root.join("b")).unwrap();
    for p in ["f0", "a/f1", "b/f2"] {
        fs::write(root.join(p), b"initial").unwrap();
    }
}

fn compare_run(args: &[&str]) {
    let seed = seed();
    let n: usize = std::env::var("PTFS_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let native = tempfile::Builder::new()
        .prefix("ptfs-native")
        .tempdir()
        .unwrap();
    prepare(native.path());
    let m = Mount::with_source(prepare, args);
    let mut r = Rng(seed);
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let op = if i % 50 == 49 {
            Op::Stat(path(&mut r))
        } else {
            gen(&mut r)
        };
        let a = apply(native.path(), &op);
        let b = apply(&m.mnt, &op);
        assert_eq!(a, b, "{args:?}: op {i} of seed {seed} differs: {op:?} (native vs mount); replay with PTFS_SEED={seed}");
        *counts
            .entry(if a.is_ok() { "ok" } else { "errno" })
            .or_insert(0) += 1;
    }
    let (t1, t2) = (tree(native.path()), tree(&m.mnt));
    assert_eq!(t1, t2, "{args:?}: final trees differ (seed {seed})");
    assert_eq!(
        t2,
        tree(&m.src),
        "{args:?}: the mount and SOURCE agree (seed {seed})"
    );
    eprintln!(
        "{args:?}: {n} operations from seed {seed}: {counts:?}; {} entries in the final tree",
        t1.len()
    );
    assert!(m.unmount().success());
}

#[test]
fn same_results_as_native_passthrough() {
    require_root!();
    compare_run(&[]);
}

#[test]
fn same_results_as_native_nopassthrough_nocache() {
    require_root!();
    compare_run(&["--nopassthrough", "--nocache"]);
}

#[test]
fn eight_threads_no_deadlock_no_strange_errors_fsck_clean() {
    require_root!();
    let secs: u64 = std::env::var("PTFS_DIFF_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed = seed();
    // SOURCE on its own ext4, to fsck afterwards.
    let dir = tempfile::Builder::new()
        .prefix("ptfs-lower")
        .tempdir()
        .unwrap();
    let img = dir.path().join("img");
    fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
    assert!(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .unwrap()
        .success());
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Loop(String, PathBuf);
    impl Drop for Loop {
        fn drop(&mut self) {
            if is_mounted(&self.1) {
                let _ = std::process::Command::new("umount").arg(&self.1).status();
            }
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status();
        }
    }
    let lower = dir.path().join("lower");
    fs::create_dir(&lower).unwrap();
    let guard = Loop(dev.clone(), lower.clone());
    assert!(std::process::Command::new("mount")
        .arg(&dev)
        .arg(&lower)
        .status()
        .unwrap()
        .success());
    let src = lower.join("src");
    fs::create_dir(&src).unwrap();
    prepare(&src);
    let mdir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    let m = Mount::on(mdir, src, &[]);
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8u64)
        .map(|t| {
            let (root, progress, stop) = (m.mnt.clone(), progress.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = Rng(seed ^ (t + 1).wrapping_mul(0x9e3779b97f4a7c15));
                let mut strange = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let op = gen(&mut r);
                    if let Err(e) = apply(&root, &op) {
                        // What racing threads on a native fs can see.
                        let normal = [
                            libc::ENOENT,
                            libc::EEXIST,
                            libc::ENOTEMPTY,
                            libc::ENOTDIR,
                            libc::EISDIR,
                            libc::EINVAL,
                            libc::ELOOP,
                            libc::ENODATA,
                            libc::EPERM,
                            libc::EXDEV,
                            libc::EBADF,
                            libc::ENOSPC,
                            libc::EMLINK,
                            libc::EOPNOTSUPP,
                            libc::EFBIG,
                        ];
                        if !normal.contains(&e) {
                            strange.push(format!("{op:?}: errno {e}"));
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                strange
            })
        })
        .collect();
    // Watchdog: fail if no operation completes for 60 s.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let p = progress.load(Ordering::Relaxed);
        if p != last.0 {
            last = (p, Instant::now());
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(60),
            "no progress for 60 s: deadlock (seed {seed})"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let strange: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    eprintln!(
        "8 threads, {} operations in {secs} s (seed {seed})",
        progress.load(Ordering::Relaxed)
    );
    assert!(
        strange.is_empty(),
        "errors native would not give (seed {seed}): {:?}\ndaemon log:\n{}",
        &strange[..strange.len().min(10)],
        m.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("os error 12"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(m.unmount().success());
    assert!(std::process::Command::new("umount")
        .arg(&lower)
        .status()
        .unwrap()
        .success());
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&dev)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    drop(guard);
}
