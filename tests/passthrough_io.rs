//! Kernel I/O passthrough on stock kernels (FOPEN_PASSTHROUGH + backing ids).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::*;

const MIB: usize = 1 << 20;

/// Writes `mib` MiB of a pattern through `path` in 1 MiB blocks.
fn write_pattern(path: &Path, mib: usize) {
    let mut f = File::create(path).unwrap();
    let mut block = vec![0u8; MIB];
    for i in 0..mib {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (i * 31 + j * 7 + j / 4096) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
}

fn digest(path: &Path) -> (u64, u64) {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; MIB];
    let (mut h, mut n) = (0xcbf2_9ce4_8422_2325u64, 0u64);
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        for &b in &buf[..k] {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        n += k as u64;
    }
    (h, n)
}

fn passthrough_available(m: &Mount) -> bool {
    m.stats()["backing"]["mode"] != "off"
}

/// On the patched kernel (kernel-patches/): backing ids live on inodes,
/// from LOOKUP to FORGET, and files may be opened without the daemon.
fn inode_mode(m: &Mount) -> bool {
    m.stats()["backing"]["mode"] == "inode"
}

/// The kernel opens files from their inode backing file itself (no OPEN,
/// FLUSH or RELEASE reaches the daemon).
fn kernel_opens(m: &Mount) -> bool {
    let s = m.stats();
    s["backing"]["mode"] == "inode"
        && s["backing"]["supported_ops"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o == "OPEN"))
}

/// Polls the stats until `done` holds (RELEASE and FORGET are
/// asynchronous), and returns the last stats.
fn stats_when(m: &Mount, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut s = m.stats();
    for _ in 0..200 {
        if done(&s) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        s = m.stats();
    }
    s
}

#[test]
fn big_file_io_never_reaches_the_daemon() {
    require_root!();
    let m = Mount::new(&[]);
    assert!(
        passthrough_available(&m),
        "this kernel offers FUSE passthrough: {}",
        m.log()
    );
    write_pattern(&m.m("big"), 256);
    let through_mount = digest(&m.m("big"));
    // Drop the page cache so the read really happens.
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    assert_eq!(digest(&m.m("big")), through_mount);
    assert_eq!(
        digest(&m.s("big")),
        through_mount,
        "byte-identical to SOURCE"
    );
    assert_eq!(through_mount.1, 256 * MIB as u64);
    let s = m.stats();
    assert_eq!(
        s["requests"]["READ"].as_u64().unwrap_or(0),
        0,
        "no READ reached the daemon"
    );
    assert_eq!(
        s["requests"]["WRITE"].as_u64().unwrap_or(0),
        0,
        "no WRITE reached the daemon"
    );
    assert!(s["backing"]["registered_total"].as_u64().unwrap() >= 1);
    assert!(m.unmount().success());
}

#[test]
fn nopassthrough_serves_the_same_io_in_the_daemon() {
    require_root!();
    let m = Mount::new(&["--nopassthrough"]);
    write_pattern(&m.m("big"), 256);
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    let d = digest(&m.m("big"));
    assert_eq!(digest(&m.s("big")), d);
    let s = m.stats();
    assert_eq!(s["backing"]["mode"], "off");
    assert!(s["requests"]["READ"].as_u64().unwrap_or(0) > 0);
    assert!(s["requests"]["WRITE"].as_u64().unwrap_or(0) > 0);
    assert!(m.unmount().success());
}

#[test]
fn opens_share_one_backing_id_and_release_it() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"shared").unwrap(), &[]);
    let a = File::open(m.m("f")).unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    let s = m.stats();
    assert_eq!(s["backing"]["open_ids"], 1, "two opens, one id: {s}");
    assert_eq!(s["backing"]["registered_total"], 1);
    drop(a);
    assert_eq!(m.stats()["backing"]["open_ids"], 1, "still open once");
    drop(b);
    // Per-open ids close with the last open; inode ids when the kernel
    // forgets the inode.
    let inode = inode_mode(&m);
    if inode {
        assert_eq!(m.stats()["backing"]["open_ids"], 1, "the inode keeps it");
        drop_caches();
    }
    let s = stats_when(&m, |s| s["backing"]["open_ids"] == 0);
    assert_eq!(
        s["backing"]["open_ids"], 0,
        "the id is closed with the last open (inode mode: at FORGET)"
    );
    // Many cycles, many files: nothing leaks.
    for i in 0..300 {
        let p = m.m(&format!("c{}", i % 7));
        let mut f = File::create(&p).unwrap();
        f.write_all(b"x").unwrap();
        let g = File::open(&p).unwrap();
        drop((f, g));
    }
    if inode {
        drop_caches();
    }
    let s = stats_when(&m, |s| {
        s["backing"]["open_ids"] == 0 && s["open_files"] == 0
    });
    assert_eq!(s["backing"]["open_ids"], 0, "no leaked ids: {s}");
    assert_eq!(s["open_files"], 0);
    // At least one id per distinct file; a cycle may share the id of the
    // previous one when its RELEASE (asynchronous) had not come in yet.
    assert!(s["backing"]["registered_total"].as_u64().unwrap() >= 7);
    assert!(m.unmount().success());
}

#[test]
fn mmap_writes_reach_source_and_stay_coherent() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![b'.'; 8192]).unwrap(), &[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(p as *mut u8, 8192);
        s[100..105].copy_from_slice(b"MMAP!");
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        // read(2) through the mount sees the mapping's bytes.
        let mut buf = [0u8; 5];
        assert_eq!(
            libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), 5, 100),
            5
        );
        assert_eq!(&buf, b"MMAP!");
        // And a write(2) is seen through the mapping.
        assert_eq!(
            libc::pwrite(f.as_raw_fd(), b"WRITE".as_ptr().cast(), 5, 200),
            5
        );
        assert_eq!(&s[200..205], b"WRITE");
        libc::munmap(p, 8192);
    }
    drop(f);
    let back = fs::read(m.s("f")).unwrap();
    assert_eq!(&back[100..105], b"MMAP!");
    assert_eq!(&back[200..205], b"WRITE");
    if passthrough_available(&m) {
        assert_eq!(m.requests("WRITE"), 0);
    }
    assert!(m.unmount().success());
}

#[test]
fn odirect_and_direct_io_go_through_the_daemon() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![3u8; 1 << 16]).unwrap(), &[]);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.m("f"))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 3));
    if kernel_opens(&m) {
        // The kernel opened the backing file O_DIRECT itself: the daemon
        // never saw the open to choose, and the read went to the backing.
        assert_eq!(m.requests("OPEN"), 0);
        assert_eq!(m.requests("READ"), 0, "O_DIRECT read from the backing");
    } else {
        assert!(
            m.requests("READ") > 0,
            "O_DIRECT reads are served by the daemon"
        );
    }
    // A normal open of the same file meanwhile still works (shared backing).
    assert_eq!(fs::read(m.m("f")).unwrap().len(), 1 << 16);
    drop(f);
    assert!(m.unmount().success());

    let m = Mount::with_source(
        |s| fs::write(s.join("f"), b"direct").unwrap(),
        &["--direct-io"],
    );
    assert_eq!(fs::read(m.m("f")).unwrap(), b"direct");
    assert!(m.requests("READ") > 0);
    assert!(m.unmount().success());
}

#[test]
fn without_cap_sys_admin_the_daemon_serves_io_itself() {
    require_root!();
    if !Path::new("/usr/bin/fusermount3").exists() && !Path::new("/bin/fusermount3").exists() {
        panic!("fusermount3 is missing: the test script installs package fuse3");
    }
    // An unprivileged daemon mounts through fusermount3 and cannot
    // register backing files (EPERM): it must fall back, say so, and serve.
    // Debian's udev rule makes /dev/fuse 0666; VMs without udev leave it
    // 0600. Give it the usual mode for this test, and restore it after.
    struct DevMode(u32);
    impl Drop for DevMode {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
        }
    }
    let old = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _dev_mode = DevMode(old);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ptfs-user")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    let data: Vec<u8> = (0..(4 * MIB)).map(|i| (i % 251) as u8).collect();
    fs::write(src.join("f"), &data).unwrap();
    for p in [&src, &mnt, &src.join("f")] {
        std::os::unix::fs::chown(p, Some(1000), Some(1000)).unwrap();
    }
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(1000), Some(1000)).unwrap();
    let stats = out_dir.join("stats.json");
    let log = out_dir.join("log");
    let cmd = format!(
        "{BIN} --stats {} --log {} {} {}",
        stats.display(),
        log.display(),
        src.display(),
        mnt.display()
    );
    let (ok, out) = sh_as(1000, 1000, &cmd);
    assert!(ok, "unprivileged mount: {out}");
    let _guard = UnmountOnDrop(mnt.clone());
    assert!(is_mounted(&mnt));
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!(
            "cmp {} {} && echo SAME",
            mnt.join("f").display(),
            src.join("f").display()
        ),
    );
    assert!(ok && out.contains("SAME"), "{out}");
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!("echo appended >> {}", mnt.join("f").display()),
    );
    assert!(ok, "{out}");
    assert!(fs::read(src.join("f")).unwrap().ends_with(b"appended\n"));
    // Stats, then unmount as the user.
    let pid = std::process::Command::new("pgrep")
        .args([
            "-u",
            "1000",
            "-f",
            &format!("passthroughfs --stats {}", stats.display()),
        ])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid.stdout)
        .trim()
        .lines()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap();
    assert!(pid > 0);
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let mut s = serde_json::Value::Null;
    for _ in 0..200 {
        if let Ok(t) = fs::read_to_string(&stats) {
            if let Ok(v) = serde_json::from_str(&t) {
                s = v;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(s["backing"]["mode"], "off", "{s}");
    assert!(s["requests"]["READ"].as_u64().unwrap_or(0) > 0);
    let logtext = fs::read_to_string(&log).unwrap();
    assert_eq!(
        logtext.matches("passthrough disabled").count(),
        1,
        "said once: {logtext}"
    );
    let (ok, out) = sh_as(1000, 1000, &format!("fusermount3 -u {}", mnt.display()));
    assert!(ok, "{out}");
    let mut gone = false;
    for _ in 0..500 {
        if process_gone(pid) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(gone, "daemon exited after fusermount3 -u");
}

#[test]
fn daemon_reads_splice_or_copy_the_same_bytes() {
    require_root!();
    let sizes = [0usize, 1, 4095, 4097, 65536 + 3, MIB + 3, 3 * MIB];
    let fill = |s: &Path| {
        for (i, n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*n).map(|j| (j * 13 + i) as u8).collect();
            fs::write(s.join(format!("f{i}")), data).unwrap();
        }
    };
    for mode in [
        &["--nopassthrough", "--nocache"][..],
        &["--nopassthrough", "--nocache", "--nosplice"][..],
    ] {
        let m = Mount::with_source(fill, mode);
        for i in 0..sizes.len() {
            let name = format!("f{i}");
            assert_eq!(
                fs::read(m.m(&name)).unwrap(),
                fs::read(m.s(&name)).unwrap(),
                "{name} {mode:?}"
            );
        }
        // Shrunk behind the daemon's back: the kernel asks for more than
        // there is, the daemon answers short (the EOF path of the splice).
        let mut f = File::open(m.m("f5")).unwrap();
        let mut head = [0u8; 10];
        f.read_exact(&mut head).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(m.s("f5"))
            .unwrap()
            .set_len(5000)
            .unwrap();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 5000 - 10, "{mode:?}");
        assert!(m.requests("READ") > 0);
        drop(f);
        assert!(m.unmount().success());
    }
}

#[test]
fn mmap_writes_show_in_mtime_after_close() {
    require_root!();
    // Found by fstests generic/080 and 215, whose commands this replays:
    // passthrough mmap writes dirty only the backing file, yet the kernel's
    // cached attributes must move on (the attribute timeout is a day).
    let m = Mount::new(&[]);
    let p = m.m("f").display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("xfs_io/stat (xfsprogs, coreutils)");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The same commands on a file of SOURCE itself say what the host does
    // (ext4 moves the times at the first write fault; tmpfs does not).
    let native = m.s("native").display().to_string();
    let times = |p: &str| -> (i64, i64) {
        (
            run(&["stat", "-c", "%Y", p]).parse().unwrap(),
            run(&["stat", "-c", "%Z", p]).parse().unwrap(),
        )
    };
    for f in [&p, &native] {
        run(&["xfs_io", "-f", "-c", "pwrite 0 4k", "-c", "fsync", f]);
    }
    let (before, native_before) = (times(&p), times(&native));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for f in [&p, &native] {
        run(&[
            "xfs_io",
            "-c",
            "mmap 0 4k",
            "-c",
            "mread 0 4k",
            "-c",
            "mwrite 0 4k",
            f,
        ]);
    }
    let (after, native_after) = (times(&p), times(&native));
    let moved = (after.0 > before.0, after.1 > before.1);
    let native_moved = (
        native_after.0 > native_before.0,
        native_after.1 > native_before.1,
    );
    assert_eq!(
        moved, native_moved,
        "(mtime, ctime) moved through the mount as on SOURCE: {before:?} -> {after:?}"
    );
    assert!(m.unmount().success());
}

/// A write-only open gets no attribute notification at FLUSH (it cannot be
/// mapped): its write(2)s through passthrough must still show in the
/// kernel's size, mtime and ctime at once, as SOURCE has them.
#[test]
fn write_only_passthrough_writes_show_in_attributes() {
    require_root!();
    use std::os::unix::fs::MetadataExt;
    let m = Mount::new(&[]);
    if !passthrough_available(&m) {
        eprintln!("skipped: no passthrough on this kernel");
        return;
    }
    let same = |what: &str| {
        let (a, b) = (
            fs::metadata(m.m("f")).unwrap(),
            fs::metadata(m.s("f")).unwrap(),
        );
        let t = |x: &fs::Metadata| {
            (
                x.size(),
                x.mtime(),
                x.mtime_nsec(),
                x.ctime(),
                x.ctime_nsec(),
            )
        };
        assert_eq!(
            t(&a),
            t(&b),
            "{what}: (size, mtime, ctime) through the mount and on SOURCE"
        );
    };
    let registered = |m: &Mount| m.stats()["backing"]["registered_total"].as_u64().unwrap();
    let before = registered(&m);
    let mut f = File::create(m.m("f")).unwrap();
    f.write_all(&[7u8; 4096]).unwrap();
    drop(f);
    same("created");
    assert!(
        registered(&m) > before,
        "the write-only open passed through"
    );
    for round in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = OpenOptions::new().append(true).open(m.m("f")).unwrap();
        f.write_all(&[round as u8; 100]).unwrap();
        drop(f);
        same(&format!("appended, round {round}"));
    }
    assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 4096 + 300);
    assert!(m.unmount().success());
}

/// A spliced READ reply needs a pipe buffer for its header and one per
/// page of the file it touches, not one per 4 KiB of bytes: an O_DIRECT
/// read of 1 MiB into a buffer 16 bytes into its page is a READ of
/// 1 MiB - 16 (the rest follows in a second READ), which once failed with
/// EAGAIN (a 1 MiB pipe, 256 buffers, for 257), as did 1 MiB - 4 KiB from an
/// unaligned file offset.
#[test]
fn daemon_spliced_reads_fit_the_pipe_for_any_alignment() {
    require_root!();
    use std::os::unix::fs::FileExt;
    let data: Vec<u8> = (0..3 * MIB).map(|j| (j * 7 + j / 4093) as u8).collect();
    let m = Mount::with_source(
        |s| fs::write(s.join("f"), &data).unwrap(),
        &["--nopassthrough"],
    );
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.m("f"))
        .unwrap();
    let mut buf = vec![0u8; 2 * MIB + 8192];
    let aligned = (4096 - buf.as_ptr() as usize % 4096) % 4096;
    for len in [MIB, MIB - 4096, 128 << 10] {
        // Unaligned buffers first: a worker's pipe left big enough by an
        // earlier 1 MiB READ (2 MiB where the daemon may set that) hid it.
        for boff in [16usize, 100, 4095, 0] {
            for foff in [0u64, 100, 4096, MIB as u64 + 7] {
                let start = aligned + boff;
                let n = f
                    .read_at(&mut buf[start..start + len], foff)
                    .unwrap_or_else(|e| panic!("read of {len} at {foff} into buffer+{boff}: {e}"));
                assert_eq!(n, len, "len {len} file+{foff} buffer+{boff}");
                let at = foff as usize;
                assert!(
                    buf[start..start + len] == data[at..at + len],
                    "bytes of len {len} file+{foff} buffer+{boff}"
                );
            }
        }
    }
    assert!(m.requests("READ") > 0);
    drop(f);
    assert!(m.unmount().success());
}
