//! The daemon under pressure: a tiny fd cache (every op evicts and reopens),
//! many processes on the same directories, big trees removed and recreated.
//! Each test here is the regression test of a fault that was found (issue
//! 16): it failed before its fix.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Kills and reaps child processes we started (by pid), whatever happens.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One worker process: for `secs` seconds, renames names among 4 dirs and
/// 32 names (half the time within one directory), creates missing ones,
/// stats and lists; prints its rename count, and any error other than the
/// ENOENT/ENOTEMPTY that races between workers make normal.
const RENAME_WORKER: &str = r#"
use strict; use Errno qw(ENOENT EEXIST);
my ($root, $secs, $seed) = @ARGV; srand($seed);
my $end = time + $secs; my ($n, $bad) = (0, 0);
while (time < $end) {
  for (1..200) {
    my $d = int(rand(4)); my $e = rand() < 0.5 ? $d : int(rand(4));
    my $a = "$root/d$d/f" . int(rand(32)); my $b = "$root/d$e/f" . int(rand(32));
    my $op = int(rand(8));
    if ($op < 5) {
      if (rename($a, $b)) { $n++ } elsif ($! != ENOENT) { $bad++; print STDERR "rename $a $b: $!\n" }
    } elsif ($op == 5) {
      if (open(my $f, '>>', $a)) { close($f) } elsif ($! != ENOENT) { $bad++; print STDERR "create $a: $!\n" }
    } elsif ($op == 6) {
      my @st = lstat($a);
    } else {
      if (opendir(my $h, "$root/d$d")) { my @l = readdir($h); closedir($h) }
      else { $bad++; print STDERR "opendir: $!\n" }
    }
  }
}
print "renames $n errors $bad\n";
"#;

/// Renames within one directory took the directory's fd twice (one read
/// lock held across both); a reopen queued in between (parking_lot's
/// RwLock is task-fair) deadlocked the rename and every request after it.
/// 4 processes rename within and across directories at `--fd-cache 16`
/// for 30 s (PTFS_PRESSURE_SECS), with a watchdog.
#[test]
fn renames_at_fd_cache_16_never_deadlock() {
    require_root!();
    let secs: u64 = std::env::var("PTFS_PRESSURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let m = Mount::with_source(
        |s| {
            for d in 0..4 {
                fs::create_dir(s.join(format!("d{d}"))).unwrap();
                for f in 0..16 {
                    fs::write(s.join(format!("d{d}/f{f}")), b"x").unwrap();
                }
            }
            // Many more inodes than the cache holds, so every op evicts.
            fs::create_dir(s.join("many")).unwrap();
            for f in 0..200 {
                fs::write(s.join(format!("many/g{f}")), b"y").unwrap();
            }
        },
        // No caching: every stat and path walk reaches the daemon, so the
        // directories' fds are taken (and reopened) concurrently with the
        // renames in them.
        &["--fd-cache", "16", "--num-threads", "4", "--nocache"],
    );
    let mnt = m.mnt.to_string_lossy().into_owned();
    let mut kids = Children(Vec::new());
    for seed in 0..4 {
        kids.0.push(
            Command::new("perl")
                .args([
                    "-e",
                    RENAME_WORKER,
                    &mnt,
                    &secs.to_string(),
                    &seed.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("perl"),
        );
    }
    // A fifth process keeps the cache churning: stats over 200 files.
    let churn_end = Instant::now() + Duration::from_secs(secs);
    let many = m.m("many");
    let churn = std::thread::spawn(move || {
        let mut n = 0u64;
        while Instant::now() < churn_end {
            for f in 0..200 {
                let _ = fs::symlink_metadata(many.join(format!("g{f}")));
                // The renamers' directories themselves (GETATTR, LOOKUP).
                let _ = fs::symlink_metadata(many.with_file_name(format!("d{}", f % 4)));
                n += 1;
            }
            drop_caches();
        }
        n
    });
    // Two more threads stat the renamers' directories all the time: their
    // fds are taken (and reopened after eviction) during the renames.
    let dirs_stat: Vec<_> = (0..2)
        .map(|t| {
            let root = m.mnt.clone();
            std::thread::spawn(move || {
                let mut i = t;
                while Instant::now() < churn_end {
                    let _ = fs::symlink_metadata(root.join(format!("d{}", i % 4)));
                    i += 1;
                }
            })
        })
        .collect();
    // Watchdog: the workers stop by themselves after `secs`; a deadlock
    // keeps them in the kernel for ever.
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    let mut done = vec![false; kids.0.len()];
    while done.iter().any(|d| !d) && Instant::now() < deadline {
        for (i, c) in kids.0.iter_mut().enumerate() {
            if !done[i] && matches!(c.try_wait(), Ok(Some(_))) {
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if done.iter().any(|d| !d) {
        let stuck: Vec<u32> = kids
            .0
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| c.id())
            .collect();
        let stacks: Vec<String> = stuck
            .iter()
            .map(|p| fs::read_to_string(format!("/proc/{p}/stack")).unwrap_or_default())
            .collect();
        // Drop the mount first (kills the daemon, which ends the requests
        // the workers are stuck in), then the workers.
        let log = m.log();
        drop(m);
        drop(kids);
        let _ = churn.join();
        panic!(
            "workers {stuck:?} still running {} s after the end: deadlock\nkernel stacks: {stacks:?}\ndaemon log tail: {}",
            60,
            &log[log.len().saturating_sub(2000)..]
        );
    }
    let stats_churn = churn.join().unwrap();
    for t in dirs_stat {
        t.join().unwrap();
    }
    let mut renames = 0u64;
    for c in std::mem::take(&mut kids.0) {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "worker failed: {text}{err}");
        let mut w = text.split_whitespace();
        assert_eq!(w.next(), Some("renames"), "{text}");
        renames += w.next().unwrap().parse::<u64>().unwrap();
        assert!(text.contains("errors 0"), "unexpected errors: {err}");
    }
    let s = m.stats();
    let evictions = s["inodes"]["evictions"].as_u64().unwrap_or(0);
    eprintln!(
        "{renames} renames by 4 processes and {stats_churn} stats in {secs} s at --fd-cache 16; {evictions} evictions"
    );
    assert!(renames > 1000, "the workers hardly ran: {renames}");
    assert!(evictions > 0, "the fd cache never evicted: {s}");
    // The mount shows what SOURCE holds.
    for d in 0..4 {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let rel = format!("d{d}");
        assert_eq!(names(&m.m(&rel)), names(&m.s(&rel)), "{rel}");
    }
    assert!(m.unmount().success());
}

/// A tree of the size of a kernel subtree: /usr/include (thousands of files
/// in hundreds of directories), packed once per test run.
fn big_tar(dir: &Path) -> std::path::PathBuf {
    let tar = dir.join("tree.tar");
    let st = Command::new("tar")
        .args(["-cf"])
        .arg(&tar)
        .args(["-C", "/usr", "include"])
        .status()
        .unwrap();
    assert!(st.success(), "tar of /usr/include");
    tar
}

fn untar(tar: &Path, into: &Path) {
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "untar into {}: {}",
        into.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `syncfs` failed with ESTALE after `rm -rf` and recreate, with
/// `--nopassthrough` and a small `--fd-cache`: the kernel's writeback of an
/// inode whose fd had been evicted reopened it from its file handle after
/// it was unlinked. Untar, rm -rf, untar again, `sync -f`, at
/// `--fd-cache 64`.
#[test]
fn untar_rm_rf_untar_syncfs_at_fd_cache_64() {
    require_root!();
    let m = Mount::new(&["--nopassthrough", "--fd-cache", "64"]);
    let tar = big_tar(m.dir.path());
    let t = m.m("t");
    for round in 0..2 {
        fs::create_dir(&t).unwrap();
        untar(&tar, &t);
        let out = Command::new("sync").arg("-f").arg(&t).output().unwrap();
        assert!(
            out.status.success(),
            "sync -f after untar (round {round}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("rm").arg("-rf").arg(&t).output().unwrap();
        assert!(
            out.status.success(),
            "rm -rf (round {round}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::create_dir(&t).unwrap();
    untar(&tar, &t);
    let out = Command::new("sync")
        .arg("-f")
        .arg(m.m(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sync -f after rm -rf and recreate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The recreated tree is whole: the same as the tar unpacked natively.
    let native = m.dir.path().join("native");
    fs::create_dir(&native).unwrap();
    untar(&tar, &native);
    let a = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&native)
        .arg(&t)
        .output()
        .unwrap();
    assert!(
        a.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&a.stderr)
    );
    let s = m.stats();
    eprintln!("inodes: {}", s["inodes"]);
    // The unlinked inodes held their fds only until the kernel forgot them.
    let out = Command::new("rm").arg("-rf").arg(&t).output().unwrap();
    assert!(out.status.success());
    let mut s = m.stats();
    for _ in 0..200 {
        drop_caches();
        s = m.stats();
        if s["inodes"]["cached"].as_u64().unwrap() <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s["inodes"]["cached"], 1, "{s}");
    assert!(s["inodes"]["open_fds"].as_u64().unwrap() <= 1, "{s}");
    assert!(m.unmount().success());
}

/// Unmounts what the test mounted inside SOURCE (after the FUSE mount, so
/// declare it first).
struct SubMounts(Vec<std::path::PathBuf>);

impl Drop for SubMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            if is_mounted(p) {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

fn ino_of(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(p).unwrap())
}

/// Two submounts (fresh tmpfs instances number their inodes alike) and
/// SOURCE itself hold files with the same inode numbers: through the mount
/// every file has its own st_ino, stat and readdir agree, and the numbers
/// stay the same across a drop_caches (the unit test
/// `reported_inode_numbers_never_collide` covers high inode numbers, where
/// the old XOR with the device index collided).
#[test]
fn submounts_with_clashing_inode_numbers_stay_distinct() {
    require_root!();
    // SOURCE in a directory of its own, removed only after the submounts
    // are gone (drop order: m, subs, src_dir).
    let src_dir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    let src = src_dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut subs = SubMounts(Vec::new());
    for d in ["a", "b"] {
        let p = src.join(d);
        fs::create_dir(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "ptfs-test"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        subs.0.push(p.clone());
        for f in 0..20 {
            fs::write(p.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let mnt_dir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    let m = Mount::on(mnt_dir, src, &[]);
    // The precondition: the raw numbers clash.
    assert_eq!(ino_of(&m.s("a/f3")), ino_of(&m.s("b/f3")));
    let mut seen = std::collections::HashMap::new();
    for d in ["a", "b"] {
        let mut listed = std::collections::HashMap::new();
        for e in fs::read_dir(m.m(d)).unwrap() {
            let e = e.unwrap();
            listed.insert(e.file_name(), std::os::unix::fs::DirEntryExt::ino(&e));
        }
        for f in 0..20 {
            let rel = format!("{d}/f{f}");
            let ino = ino_of(&m.m(&rel));
            assert_eq!(
                listed[std::ffi::OsStr::new(&format!("f{f}"))],
                ino,
                "readdir and stat disagree on {rel}"
            );
            if let Some(prev) = seen.insert(ino, rel.clone()) {
                panic!("{rel} and {prev} both have st_ino {ino:#x}");
            }
        }
    }
    drop_caches();
    for (ino, rel) in &seen {
        assert_eq!(ino_of(&m.m(rel)), *ino, "{rel} changed st_ino");
    }
    // No false hard links for du: every file counted.
    let out = Command::new("find")
        .arg(&m.mnt)
        .args(["-type", "f", "-links", "1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 40);
    assert!(m.unmount().success());
    drop(subs);
    drop(src_dir);
}

/// Real (not O_PATH) fds this process holds on `path`.
fn real_opens_of(path: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if !fs::read_link(e.path()).is_ok_and(|t| t == path) {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_PATH as u32 == 0 {
            n += 1;
        }
    }
    n
}

/// Files the kernel opens without the daemon (inode passthrough with OPEN
/// in the mask: READ/WRITE/FSYNC... come with fh 0) were served through a
/// fresh open per request. Now one open per inode and access mode is kept,
/// shared by those requests, and closed at FORGET. Driven through the
/// in-process harness (the kernel sends fh 0 only on the patched kernel).
#[test]
fn kernel_opened_files_share_one_open_per_mode_until_forget() {
    use passthroughfs::fuse::abi::{self, Opcode};
    use passthroughfs::fuse::testing::Harness;
    use passthroughfs::passthrough::{Config, PassthroughFs};
    use std::sync::Arc;
    use zerocopy::IntoBytes;
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let content: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("f"), &content).unwrap();
    let f = src.join("f");
    let fs_ = Arc::new(PassthroughFs::new(Config::for_source(src.clone())).unwrap());
    let h = Harness::new(fs_.clone()).unwrap();
    let (o, out) = h
        .request(Opcode::Lookup as u32, 1, abi::ROOT_ID, b"f\0")
        .unwrap();
    assert_eq!(o.error, 0);
    let nodeid = u64::from_ne_bytes(out[..8].try_into().unwrap());
    assert_eq!(real_opens_of(&f), 0);
    let read = |unique: u64, off: u64| {
        let arg = abi::ReadIn {
            fh: abi::Fh::NONE,
            offset: off,
            size: 4096,
            ..Default::default()
        };
        let (o, data) = h
            .request(Opcode::Read as u32, unique, nodeid, arg.as_bytes())
            .unwrap();
        assert_eq!(o.error, 0, "READ fh 0");
        assert_eq!(data, content[off as usize..off as usize + 4096]);
    };
    for i in 0..1000u64 {
        read(10 + i, (i * 4096) % 61440);
    }
    assert_eq!(real_opens_of(&f), 1, "one shared read-only open is kept");
    let arg = abi::WriteIn {
        fh: abi::Fh::NONE,
        offset: 0,
        size: 3,
        ..Default::default()
    };
    let mut body = arg.as_bytes().to_vec();
    body.extend_from_slice(b"abc");
    let (o, _) = h
        .request(Opcode::Write as u32, 2000, nodeid, &body)
        .unwrap();
    assert_eq!(o.error, 0, "WRITE fh 0");
    assert_eq!(&fs::read(&f).unwrap()[..3], b"abc");
    for i in 0..100u64 {
        let (o, _) = h
            .request(Opcode::Write as u32, 3000 + i, nodeid, &body)
            .unwrap();
        assert_eq!(o.error, 0);
    }
    assert_eq!(real_opens_of(&f), 2, "and one read-write open");
    // FORGET closes both.
    assert!(h
        .request(
            Opcode::Forget as u32,
            0,
            nodeid,
            abi::ForgetIn { nlookup: 1 }.as_bytes()
        )
        .is_none());
    assert_eq!(real_opens_of(&f), 0, "closed at FORGET");
    assert_eq!(fs_.table().len(), 1);
}
