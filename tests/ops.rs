//! Every operation through a real mount, checked against the same call on
//! SOURCE (content, attributes, errno).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn same_attrs(a: &Path, b: &Path) {
    let (x, y) = (lstat(a).unwrap(), lstat(b).unwrap());
    assert_eq!(x.st_mode, y.st_mode, "mode of {a:?}");
    assert_eq!(x.st_ino, y.st_ino, "ino of {a:?}");
    assert_eq!(x.st_nlink, y.st_nlink, "nlink of {a:?}");
    assert_eq!((x.st_uid, x.st_gid), (y.st_uid, y.st_gid), "owner of {a:?}");
    assert_eq!(x.st_size, y.st_size, "size of {a:?}");
    assert_eq!(x.st_rdev, y.st_rdev, "rdev of {a:?}");
    assert_eq!(
        (x.st_mtime, x.st_mtime_nsec),
        (y.st_mtime, y.st_mtime_nsec),
        "mtime of {a:?}"
    );
}

#[test]
fn lookup_and_getattr_every_file_type() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            fs::write(s.join("file"), b"data").unwrap();
            fs::create_dir(s.join("dir")).unwrap();
            std::os::unix::fs::symlink("file", s.join("link")).unwrap();
            let fifo = cpath(&s.join("fifo"));
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
            let dev = cpath(&s.join("null"));
            assert_eq!(
                unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
                0
            );
            let sock = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
            drop(sock);
        },
        &[],
    );
    for name in ["file", "dir", "link", "fifo", "null", "sock", "."] {
        same_attrs(&m.m(name), &m.s(name));
    }
    assert_eq!(err_of(fs::symlink_metadata(m.m("missing"))), libc::ENOENT);
    assert_eq!(err_of(fs::symlink_metadata(m.m("file/x"))), libc::ENOTDIR);
    let long = "x".repeat(256);
    assert_eq!(err_of(File::create(m.m(&long))), libc::ENAMETOOLONG);
    assert_eq!(err_of(fs::symlink_metadata(m.m(&long))), libc::ENAMETOOLONG);
    assert!(m.unmount().success());
}

#[test]
fn setattr_mode_owner_size_times() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"0123456789").unwrap(), &[]);
    let f = m.m("f");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(m.s("f")).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&f, Some(1000), Some(1000)).unwrap();
    let st = fs::metadata(m.s("f")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1000, 1000));
    // Growing and shrinking, by path (no fh) and through an open file.
    let c = cpath(&f);
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 100) }, 0);
    assert_eq!(fs::metadata(m.s("f")).unwrap().len(), 100);
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(3).unwrap();
    drop(h);
    assert_eq!(fs::read(m.s("f")).unwrap(), b"012");
    // Explicit times, then UTIME_NOW.
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 7,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    let st = fs::metadata(m.s("f")).unwrap();
    assert_eq!(
        (st.atime(), st.atime_nsec(), st.mtime(), st.mtime_nsec()),
        (1_000_000, 5, 2_000_000, 7)
    );
    same_attrs(&f, &m.s("f"));
    let now = [libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    }; 2];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), now.as_ptr(), 0) },
        0
    );
    assert!(fs::metadata(m.s("f")).unwrap().mtime() > 2_000_000);
    // A symlink's own times (never its target's).
    std::os::unix::fs::symlink("f", m.m("l")).unwrap();
    let lc = cpath(&m.m("l"));
    let before = fs::metadata(m.s("f")).unwrap().mtime();
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                lc.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
    assert_eq!(fs::symlink_metadata(m.s("l")).unwrap().mtime(), 2_000_000);
    assert_eq!(fs::metadata(m.s("f")).unwrap().mtime(), before);
    // truncate of a directory fails like on the host.
    fs::create_dir(m.m("d")).unwrap();
    let dc = cpath(&m.m("d"));
    assert_eq!(unsafe { libc::truncate(dc.as_ptr(), 0) }, -1);
    assert_eq!(errno(), libc::EISDIR);
    assert!(m.unmount().success());
}

#[test]
fn create_remove_link_symlink_mknod() {
    require_root!();
    let m = Mount::new(&[]);
    fs::create_dir(m.m("d")).unwrap();
    assert!(m.s("d").is_dir());
    assert_eq!(err_of(fs::create_dir(m.m("d"))), libc::EEXIST);
    fs::write(m.m("d/f"), b"hello").unwrap();
    assert_eq!(fs::read(m.s("d/f")).unwrap(), b"hello");
    assert_eq!(err_of(fs::remove_dir(m.m("d"))), libc::ENOTEMPTY);
    // O_EXCL on an existing file.
    assert_eq!(
        err_of(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.m("d/f"))
        ),
        libc::EEXIST
    );
    // Hard link: one inode, two names, nlink 2 both ways.
    fs::hard_link(m.m("d/f"), m.m("g")).unwrap();
    assert_eq!(
        fs::metadata(m.m("g")).unwrap().ino(),
        fs::metadata(m.m("d/f")).unwrap().ino()
    );
    assert_eq!(fs::metadata(m.m("g")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.s("g")).unwrap().nlink(), 2);
    // Symlinks are stored, not followed, and read back.
    std::os::unix::fs::symlink("d/f", m.m("sl")).unwrap();
    assert_eq!(fs::read_link(m.s("sl")).unwrap(), Path::new("d/f"));
    assert_eq!(fs::read_link(m.m("sl")).unwrap(), Path::new("d/f"));
    assert_eq!(fs::read(m.m("sl")).unwrap(), b"hello");
    // Device nodes and FIFOs.
    let fifo = cpath(&m.m("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(fs::symlink_metadata(m.s("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let dev = cpath(&m.m("zero"));
    assert_eq!(
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 5)) },
        0
    );
    let st = fs::symlink_metadata(m.s("zero")).unwrap();
    assert!(st.file_type().is_char_device());
    assert_eq!(st.rdev(), libc::makedev(1, 5));
    same_attrs(&m.m("zero"), &m.s("zero"));
    // Unlink and rmdir.
    fs::remove_file(m.m("g")).unwrap();
    assert!(!m.s("g").exists());
    assert_eq!(fs::metadata(m.m("d/f")).unwrap().nlink(), 1);
    fs::remove_file(m.m("d/f")).unwrap();
    fs::remove_dir(m.m("d")).unwrap();
    assert!(!m.s("d").exists());
    assert_eq!(err_of(fs::remove_file(m.m("nope"))), libc::ENOENT);
    assert!(m.unmount().success());
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(from), cpath(to));
    if unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    } == 0
    {
        0
    } else {
        errno()
    }
}

#[test]
fn rename_with_flags() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            fs::write(s.join("a"), b"A").unwrap();
            fs::write(s.join("b"), b"B").unwrap();
            fs::create_dir(s.join("dir")).unwrap();
        },
        &[],
    );
    assert_eq!(
        renameat2(&m.m("a"), &m.m("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(renameat2(&m.m("a"), &m.m("b"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.s("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.s("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.m("a")).unwrap(), b"B");
    assert_eq!(
        renameat2(&m.m("a"), &m.m("dir/c"), libc::RENAME_NOREPLACE),
        0
    );
    assert_eq!(fs::read(m.s("dir/c")).unwrap(), b"B");
    assert!(!m.s("a").exists());
    // A whiteout leaves a 0:0 character device behind.
    assert_eq!(
        renameat2(&m.m("b"), &m.m("dir/w"), libc::RENAME_WHITEOUT),
        0
    );
    let wh = fs::symlink_metadata(m.s("b")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout"
    );
    fs::rename(m.m("dir/c"), m.m("dir/w")).unwrap();
    assert_eq!(fs::read(m.m("dir/w")).unwrap(), b"B");
    assert_eq!(renameat2(&m.m("missing"), &m.m("x"), 0), libc::ENOENT);
    assert!(m.unmount().success());
}

#[test]
fn read_write_append_trunc() {
    require_root!();
    let m = Mount::new(&[]);
    let p = m.m("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"hello world").unwrap();
    f.flush().unwrap();
    drop(f);
    assert_eq!(fs::read(m.s("f")).unwrap(), b"hello world");
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::read(m.s("f")).unwrap(), b"hello world!");
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello WORLD!");
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.s("f")).unwrap().len(), 0);
    // A change made on SOURCE is seen through the mount.
    fs::write(m.s("f"), b"from below").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"from below");
    assert!(m.unmount().success());
}

#[test]
fn tmpfile_then_link() {
    require_root!();
    let m = Mount::new(&[]);
    let dir = cpath(&m.mnt);
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o640) };
    assert!(fd >= 0, "O_TMPFILE: {}", std::io::Error::last_os_error());
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(b"anonymous").unwrap();
    let src = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
    let dst = cpath(&m.m("named"));
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    assert_eq!(r, 0, "linkat: {}", std::io::Error::last_os_error());
    drop(f);
    assert_eq!(fs::read(m.s("named")).unwrap(), b"anonymous");
    assert_eq!(fs::metadata(m.s("named")).unwrap().mode() & 0o777, 0o640);
    assert!(m.unmount().success());
}

#[test]
fn readdir_matches_source() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            for i in 0..2000 {
                fs::write(s.join(format!("file-{i:05}-{}", "n".repeat(i % 50))), b"").unwrap();
            }
            fs::create_dir(s.join("sub")).unwrap();
            std::os::unix::fs::symlink("x", s.join("sym")).unwrap();
        },
        &[],
    );
    let list = |p: &Path| {
        let mut v: Vec<(String, bool, bool)> = fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    t.is_dir(),
                    t.is_symlink(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&m.mnt), list(&m.src));
    // Twice (cached readdir), and with READDIR only.
    assert_eq!(list(&m.mnt), list(&m.src));
    drop(m);
    let m = Mount::with_source(
        |s| fs::write(s.join("only"), b"").unwrap(),
        &["--no-readdirplus"],
    );
    assert_eq!(list(&m.mnt), list(&m.src));
    assert!(m.requests("READDIR") > 0);
    assert_eq!(m.requests("READDIRPLUS"), 0);
    assert!(m.unmount().success());
}

#[test]
fn seekdir_resumes_where_it_left() {
    require_root!();
    // --nocache: the daemon's OPENDIR streams, each READDIR at the offset
    // the kernel asks for; default: zero-message opendir and the kernel's
    // readdir cache.
    for args in [&["--nocache"][..], &[]] {
        seekdir_in_a_mount(args);
    }
}

fn seekdir_in_a_mount(args: &[&str]) {
    let m = Mount::with_source(
        |s| {
            for i in 0..500 {
                fs::write(s.join(format!("e{i}")), b"").unwrap();
            }
        },
        args,
    );
    let d = cpath(&m.mnt);
    unsafe {
        let dir = libc::opendir(d.as_ptr());
        assert!(!dir.is_null());
        let mut names = Vec::new();
        let mut mark = None;
        loop {
            if names.len() == 250 {
                mark = Some((libc::telldir(dir), names.len()));
            }
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            names.push(std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
        }
        let (pos, n) = mark.unwrap();
        libc::seekdir(dir, pos);
        let mut again = Vec::new();
        loop {
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            again.push(std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
        }
        libc::closedir(dir);
        assert_eq!(names.len(), 502);
        assert_eq!(again, names[n..].to_vec());
    }
    assert!(m.unmount().success());
}

/// Zero-message opendir: with the kernel's permission checks and its
/// readdir cache, OPENDIR is answered ENOSYS once and directories are read
/// without OPENDIR and RELEASEDIR (fh 0); where OPENDIR does more than open,
/// every directory still gets it.
#[test]
fn directories_are_read_without_opendir_where_it_does_nothing() {
    require_root!();
    let fill = |s: &Path| {
        for d in 0..20 {
            let d = s.join(format!("d{d}"));
            fs::create_dir(&d).unwrap();
            // A directory of several READDIRPLUS replies, read through
            // streams that each live for one request.
            for i in 0..(if d.ends_with("d0") { 3000 } else { 3 }) {
                fs::write(d.join(format!("f{i:04}-{}", "x".repeat(i % 40))), b"").unwrap();
            }
        }
    };
    let walk = |root: &Path| {
        let mut v = Vec::new();
        for d in 0..20 {
            let mut names: Vec<String> = fs::read_dir(root.join(format!("d{d}")))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            v.push(names);
        }
        v
    };
    let m = Mount::with_source(fill, &[]);
    // Two listings of the 3,000 entries interleaved, cold: each READDIR
    // continues its own stream (parked between requests), none takes the
    // other's.
    let d0 = cpath(&m.m("d0"));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    // SAFETY: both streams are open until closedir; readdir's entries are
    // read before the next call on the same stream.
    unsafe {
        let (da, db) = (libc::opendir(d0.as_ptr()), libc::opendir(d0.as_ptr()));
        assert!(!da.is_null() && !db.is_null());
        let next = |d: *mut libc::DIR, v: &mut Vec<std::ffi::CString>| {
            let e = libc::readdir(d);
            if !e.is_null() {
                v.push(std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
            }
            !e.is_null()
        };
        let (mut more_a, mut more_b) = (true, true);
        while more_a || more_b {
            for _ in 0..97 {
                more_a = more_a && next(da, &mut a);
            }
            for _ in 0..89 {
                more_b = more_b && next(db, &mut b);
            }
        }
        libc::closedir(da);
        libc::closedir(db);
    }
    a.sort();
    b.sort();
    assert_eq!(a.len(), 3002);
    assert_eq!(a, b);
    assert_eq!(walk(&m.mnt), walk(&m.src));
    assert_eq!(walk(&m.mnt), walk(&m.src));
    // FSYNCDIR of a directory the daemon never opened.
    let d = fs::File::open(m.m("d1")).unwrap();
    d.sync_all().unwrap();
    drop(d);
    // With inode passthrough (patched kernels) the kernel opens and lists
    // directories from their backing directories: nothing to count here.
    if m.stats()["backing"]["mode"] != "inode" {
        assert!(
            m.requests("OPENDIR") <= 1,
            "OPENDIR {}",
            m.requests("OPENDIR")
        );
        assert_eq!(m.requests("RELEASEDIR"), 0);
        assert!(m.requests("READDIR") + m.requests("READDIRPLUS") > 20);
        assert!(m.requests("FSYNCDIR") >= 1);
    }
    assert!(m.unmount().success());
    // Root's own single-user mount with SOURCE's checks: root's opendir
    // cannot be refused, so it goes without OPENDIR too; with allow_other
    // SOURCE checks each caller's OPENDIR, and --nocache needs one.
    for (args, opendir) in [
        (&["-o", "nodefault_permissions"][..], false),
        (&["--nocache"], true),
        (&["-o", "nodefault_permissions,allow_other"], true),
    ] {
        let m = Mount::with_source(fill, args);
        assert_eq!(walk(&m.mnt), walk(&m.src));
        if m.stats()["backing"]["mode"] == "inode" {
            assert!(m.unmount().success());
            continue;
        }
        let n = m.requests("OPENDIR");
        if opendir {
            assert!(n >= 20, "{args:?}: OPENDIR {n}");
            assert_eq!(m.requests("RELEASEDIR"), n, "{args:?}");
        } else {
            assert!(n <= 1, "{args:?}: OPENDIR {n}");
            assert_eq!(m.requests("RELEASEDIR"), 0, "{args:?}");
        }
        assert!(m.unmount().success());
    }
}

/// Names that one getdents64 call on `dir` puts in a buffer of `size`
/// bytes (none at the end of the directory).
fn getdents_names(dir: &File, size: usize) -> Vec<String> {
    let mut buf = vec![0u8; size];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < n as usize {
        // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        let name = std::ffi::CStr::from_bytes_until_nul(&buf[pos + 19..pos + reclen]).unwrap();
        names.push(name.to_str().unwrap().to_string());
        pos += reclen;
    }
    names
}

/// `dir` listed through a new open in getdents64 calls of `size` bytes,
/// in the directory's order, and the number of calls.
fn listing_in_steps(dir: &Path, size: usize) -> (Vec<String>, u64) {
    let d = File::open(dir).unwrap();
    let mut all = Vec::new();
    for calls in 1.. {
        let names = getdents_names(&d, size);
        if names.is_empty() {
            return (all, calls);
        }
        all.extend(names);
    }
    unreachable!()
}

/// A listing opened after entries were removed must not show them, though
/// a listing opened before stopped half way with them read: fstests'
/// generic/637 with --nopassthrough before 63f4db0 ("stale entry"). With
/// zero-message opendir READDIR has no handle, and the daemon parks a
/// stream that stopped before the end of its directory for the READDIR
/// that asks for the offset it stopped at, which may come from another
/// open. Removed through the mount here: the daemon drops the directory's
/// parked streams (`dir_changed`).
#[test]
fn a_new_listing_does_not_continue_a_stream_read_before_an_unlink() {
    require_root!();
    new_listing_after_removals(false);
}

/// As above with the entries removed on SOURCE directly, which the daemon
/// does not see: a parked stream is reused only while its directory's
/// mtime and ctime are those it was opened with (without that check this
/// fails). The removal after the daemon's statx must get a newer time:
/// multigrain timestamps (ext4, xfs, btrfs, tmpfs since Linux 6.13) give
/// it one; with coarse ones a change in the same tick would go unseen.
#[test]
fn a_new_listing_does_not_continue_a_stream_read_before_a_change_on_source() {
    require_root!();
    new_listing_after_removals(true);
}

/// generic/637's steps, with the numbers that make its new listing ask for
/// the offset where an older stream stands (4 KiB pages, names of at most
/// 8 bytes): a READDIRPLUS of one page takes 25 records of 160 bytes
/// (fuse_direntplus and the name padded to 8), a getdents64 of 200 bytes 8
/// entries of 24. Listing A reads 8: the kernel asks READDIRPLUS at offset
/// 0, and the daemon's stream reads the whole directory (one getdents64 of
/// 4 KiB), replies with entries 0-24 and is parked after entry 24, with 25
/// on in its buffer. One of A's 8 and entries 26-29 go. Listing B, a new
/// open, reads 8 entries per getdents64 too, each a request (A left the
/// kernel's readdir cache incomplete): its READDIRPLUS at 0 parks a fresh
/// stream one entry further than A's, and its fourth call asks for the
/// offset after its 24th entry, which is old entry 24: A's offset. Before
/// 63f4db0 A's stream answered it from its buffer, old entries 25-32.
fn new_listing_after_removals(on_source: bool) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert_eq!(page, 4096, "the numbers here are those of 4 KiB pages");
    // --nopassthrough: the daemon lists directories in every kernel (with
    // inode passthrough a patched kernel lists them from their backing
    // directories).
    let m = Mount::with_source(
        |s| {
            fs::create_dir(s.join("d")).unwrap();
            for i in 0..100 {
                fs::write(s.join(format!("d/f{i:02}")), b"").unwrap();
            }
        },
        &["--nopassthrough"],
    );
    let files = |v: &[String]| -> Vec<String> {
        v.iter().filter(|n| n.starts_with('f')).cloned().collect()
    };
    // The directory's order (hashed on ext4), the daemon's too.
    let (order, _) = listing_in_steps(&m.s("d"), 4096);
    assert_eq!(order.len(), 102);
    let a = File::open(m.m("d")).unwrap();
    let first = getdents_names(&a, 200);
    assert_eq!(first[..], order[..8]);
    drop(a);
    let mut removed = files(&first)[..1].to_vec();
    removed.extend(files(&order[26..30]));
    let root = if on_source { m.s("d") } else { m.m("d") };
    for n in &removed {
        fs::remove_file(root.join(n)).unwrap();
    }
    let asked = || m.requests("READDIR") + m.requests("READDIRPLUS");
    let before = asked();
    let (mut seen, calls) = listing_in_steps(&m.m("d"), 200);
    assert_eq!(
        asked() - before,
        calls,
        "READDIR(PLUS) requests for the new listing's getdents64 calls"
    );
    let stale: Vec<&String> = seen.iter().filter(|n| removed.contains(n)).collect();
    assert!(
        stale.is_empty(),
        "removed {removed:?} (on SOURCE: {on_source}), listed by a new open: {stale:?}"
    );
    let (mut now, _) = listing_in_steps(&m.s("d"), 4096);
    seen.sort();
    now.sort();
    assert_eq!(seen, now);
    assert!(m.unmount().success());
}

#[test]
fn statfs_and_statx() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"x").unwrap(), &[]);
    let (a, b) = (cpath(&m.mnt), cpath(&m.src));
    let mut x: libc::statvfs = unsafe { std::mem::zeroed() };
    let mut y: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(a.as_ptr(), &mut x) }, 0);
    assert_eq!(unsafe { libc::statvfs(b.as_ptr(), &mut y) }, 0);
    assert_eq!(
        (x.f_blocks, x.f_bsize, x.f_files, x.f_namemax),
        (y.f_blocks, y.f_bsize, y.f_files, y.f_namemax)
    );
    // statx with btime goes through FUSE_STATX.
    let stx = |p: &Path| {
        let c = cpath(p);
        let mut s: libc::statx = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_ALL, &mut s) },
            0
        );
        s
    };
    let (x, y) = (stx(&m.m("f")), stx(&m.s("f")));
    assert_ne!(x.stx_mask & libc::STATX_BTIME, 0, "btime through the mount");
    assert_eq!(
        (x.stx_btime.tv_sec, x.stx_btime.tv_nsec),
        (y.stx_btime.tv_sec, y.stx_btime.tv_nsec)
    );
    assert_eq!(x.stx_ino, y.stx_ino);
    assert!(m.requests("STATX") > 0);
    assert!(m.unmount().success());
}

#[test]
fn xattrs() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"x").unwrap(), &[]);
    let f = cpath(&m.m("f"));
    let set = |n: &str, v: &[u8], fl: i32| {
        let n = std::ffi::CString::new(n).unwrap();
        if unsafe { libc::setxattr(f.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), fl) } == 0 {
            0
        } else {
            errno()
        }
    };
    assert_eq!(set("user.a", b"1", 0), 0);
    assert_eq!(set("user.a", b"2", libc::XATTR_CREATE), libc::EEXIST);
    assert_eq!(set("user.b", b"3", libc::XATTR_REPLACE), libc::ENODATA);
    assert_eq!(set("user.b", b"bee", 0), 0);
    let get = |p: &Path, n: &str, size: usize| -> Result<Vec<u8>, i32> {
        let (c, n) = (cpath(p), std::ffi::CString::new(n).unwrap());
        let mut buf = vec![0u8; size];
        let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
        if r < 0 {
            Err(errno())
        } else {
            buf.truncate(if size == 0 { 0 } else { r as usize });
            Ok(if size == 0 { vec![r as u8] } else { buf })
        }
    };
    assert_eq!(get(&m.s("f"), "user.b", 64).unwrap(), b"bee");
    assert_eq!(get(&m.m("f"), "user.b", 64).unwrap(), b"bee");
    assert_eq!(get(&m.m("f"), "user.b", 0).unwrap(), vec![3]); // size query
    assert_eq!(get(&m.m("f"), "user.b", 1), Err(libc::ERANGE));
    assert_eq!(get(&m.m("f"), "user.none", 64), Err(libc::ENODATA));
    let mut list = vec![0u8; 256];
    let n = unsafe { libc::listxattr(f.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(n > 0);
    let names: Vec<&[u8]> = list[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    assert!(names.contains(&&b"user.a"[..]) && names.contains(&&b"user.b"[..]));
    let name = std::ffi::CString::new("user.a").unwrap();
    assert_eq!(unsafe { libc::removexattr(f.as_ptr(), name.as_ptr()) }, 0);
    assert_eq!(get(&m.s("f"), "user.a", 64), Err(libc::ENODATA));
    assert!(m.unmount().success());
}

#[test]
fn fallocate_copy_file_range_lseek() {
    require_root!();
    let m = Mount::new(&[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.m("sparse"))
        .unwrap();
    let fd = f.as_raw_fd();
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    assert_eq!(fs::metadata(m.s("sparse")).unwrap().len(), 1 << 20);
    assert_eq!(
        unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) },
        0
    );
    assert_eq!(fs::metadata(m.s("sparse")).unwrap().len(), 1 << 20);
    // A data region at 4 MiB with a hole before it.
    f.set_len(0).unwrap();
    let data = vec![7u8; 65536];
    assert_eq!(
        unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), 4 << 20) },
        65536
    );
    f.sync_all().unwrap();
    let d = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    let h = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert_eq!((d, h), (4 << 20, 0), "SEEK_DATA/SEEK_HOLE");
    // Punch a hole and see zeros on SOURCE.
    assert_eq!(
        unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4 << 20,
                4096,
            )
        },
        0
    );
    let back = fs::read(m.s("sparse")).unwrap();
    assert!(back[(4 << 20)..(4 << 20) + 4096].iter().all(|&b| b == 0));
    assert_eq!(back[(4 << 20) + 4096], 7);
    // copy_file_range between two files of the mount.
    let out = File::create(m.m("copy")).unwrap();
    let (mut oi, mut oo) = (4i64 << 20, 0i64);
    let n = unsafe { libc::copy_file_range(fd, &mut oi, out.as_raw_fd(), &mut oo, 65536, 0) };
    assert_eq!(n, 65536);
    drop(out);
    assert_eq!(
        fs::read(m.s("copy")).unwrap(),
        back[(4 << 20)..(4 << 20) + 65536].to_vec()
    );
    assert!(m.requests("COPY_FILE_RANGE") + m.requests("COPY_FILE_RANGE_64") > 0);
    assert!(m.unmount().success());
}

/// Runs `f` on a thread with an fd table of its own, holding none of the
/// files other tests have open, and none a process they fork copies.
fn in_own_fd_table<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            own_fd_table();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A write lock on `len` bytes from `start` (0: to the end of the file).
fn write_lock(start: i64, len: i64) -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

#[test]
fn flock_and_posix_locks() {
    require_root!();
    // The expectation is the native one: a process on SOURCE sees a lock
    // another process holds on the file. The one documented exception is
    // the patched kernel with open passthrough, which keeps the locks of
    // files it opens from their backing file itself (tests/uml.rs sets
    // PTFS_KERNEL_LOCKS=1 there); never what the daemon says of itself.
    flock_and_posix_locks_in(&[], kernel_keeps_locks());
}

/// `-o locks=kernel` (`--locks kernel`): the same locking through the
/// mount, kept by the kernel; SOURCE sees none of it.
#[test]
fn flock_and_posix_locks_kept_by_the_kernel() {
    require_root!();
    flock_and_posix_locks_in(&["-o", "locks=kernel"], true);
}

fn flock_and_posix_locks_in(args: &[&str], kernel_locks: bool) {
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![0u8; 100]).unwrap(), args);
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    // flock: per open file.
    assert_eq!(
        unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(
        unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    assert_eq!(errno(), libc::EWOULDBLOCK);
    assert_eq!(unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_UN) }, 0);
    assert_eq!(
        unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_UN) }, 0);

    // POSIX locks: taken by a child process, seen (and refused) here, and
    // also seen by a process locking SOURCE directly.
    let fl = write_lock(10, 20);
    // Two pipes: child -> parent ("locked"), parent -> child ("exit now").
    let (mut up, mut down) = ([0i32; 2], [0i32; 2]);
    assert_eq!(unsafe { libc::pipe(up.as_mut_ptr()) }, 0);
    assert_eq!(unsafe { libc::pipe(down.as_mut_ptr()) }, 0);
    let path = cpath(&m.m("f"));
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Child: only async-signal-safe calls until _exit.
        close_inherited_fds(&[up[1].min(down[0]), up[1].max(down[0])]);
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            let ok = fd >= 0 && libc::fcntl(fd, libc::F_SETLK, &fl) == 0;
            libc::write(up[1], [ok as u8].as_ptr().cast(), 1);
            let mut x = [0u8; 1];
            libc::read(down[0], x.as_mut_ptr().cast(), 1); // wait for the parent
            libc::_exit(0);
        }
    }
    let mut x = [0u8; 1];
    unsafe { libc::read(up[0], x.as_mut_ptr().cast(), 1) };
    assert_eq!(x[0], 1, "child took the lock");
    let mut probe = fl;
    assert_eq!(
        unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETLK, &mut probe) },
        0
    );
    assert_eq!(
        probe.l_type as i32,
        libc::F_WRLCK,
        "GETLK sees the child's lock"
    );
    assert_eq!((probe.l_start, probe.l_len), (10, 20));
    assert_eq!(probe.l_pid, pid, "GETLK names the child");
    let mut try_lock = fl;
    assert_eq!(
        unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &mut try_lock) },
        -1
    );
    assert!(matches!(errno(), libc::EAGAIN | libc::EACCES));
    // Outside the child's range: fine.
    let mut other = fl;
    other.l_start = 50;
    assert_eq!(
        unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &mut other) },
        0
    );
    // A process on SOURCE sees the child's lock too (host arbitration),
    // unless the kernel keeps locks itself.
    let native = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.s("f"))
        .unwrap();
    let mut nprobe = fl;
    nprobe.l_start = 15;
    nprobe.l_len = 1;
    assert_eq!(
        unsafe { libc::fcntl(native.as_raw_fd(), libc::F_OFD_GETLK, &mut nprobe) },
        0
    );
    let expected = if kernel_locks {
        libc::F_UNLCK
    } else {
        libc::F_WRLCK
    };
    assert_eq!(
        nprobe.l_type as i32, expected,
        "kernel_locks={kernel_locks}"
    );
    // A blocking wait is granted once the child exits (its locks go).
    let waiter = std::thread::spawn(move || {
        let mut w = fl;
        let r = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_SETLKW, &mut w) };
        (r, errno())
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::write(down[1], [1u8].as_ptr().cast(), 1) };
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let (r, e) = waiter.join().unwrap();
    assert_eq!(r, 0, "SETLKW granted after the holder exited (errno {e})");
    for fd in up.iter().chain(down.iter()) {
        unsafe { libc::close(*fd) };
    }
    drop(a);
    assert!(m.unmount().success());
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Whether /proc/locks shows `pid` blocked waiting for a lock (a `->` line
/// naming it): the kernel's own view, independent of the daemon.
fn kernel_lock_waiter(pid: libc::pid_t) -> bool {
    let pid = pid.to_string();
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|t| t.get(1) == Some(&"->") && t.get(5) == Some(&pid.as_str()))
}

#[test]
fn blocking_lock_wait_is_interruptible() {
    require_root!();
    // The holder's lock goes with its last close, below.
    own_fd_table();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"x").unwrap(), &[]);
    // Hold the lock, then block on it through the mount in a child: a
    // signal makes its wait return EINTR, and a child that we kill leaves
    // no wait behind (no worker stuck in the daemon, no waiter in the
    // kernel). Where locks reach the daemon, the lock is held natively on
    // SOURCE (host arbitration) and the daemon's queued waits are the
    // synchronisation point. On the patched kernel with open passthrough
    // (tests/uml.rs sets PTFS_KERNEL_LOCKS=1) the kernel keeps the locks of
    // the files it opens itself: a SOURCE lock does not conflict there and
    // the daemon never sees the wait, so the lock is held through the mount
    // and /proc/locks (the blocked waiter) is the synchronisation point.
    let kernel_locks = kernel_keeps_locks();
    let holder = OpenOptions::new()
        .read(true)
        .write(true)
        .open(if kernel_locks { m.m("f") } else { m.s("f") })
        .unwrap();
    let fl = write_lock(0, 0);
    assert_eq!(
        unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_OFD_SETLK, &fl) },
        0
    );
    let path = cpath(&m.m("f"));
    let queued = |pid: libc::pid_t| {
        if kernel_locks {
            kernel_lock_waiter(pid)
        } else {
            m.stats()["lock_waiters"] == 1
        }
    };
    // Exits 0 if its SETLKW returned EINTR, 1 if it returned anything else.
    let waiter = || {
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            close_inherited_fds(&[]);
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = ignore_signal as *const () as usize;
                libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                let r = libc::fcntl(fd, libc::F_SETLKW, &fl);
                let e = *libc::__errno_location();
                libc::_exit(if r == -1 && e == libc::EINTR { 0 } else { 1 });
            }
        }
        // Signal it only once its wait is queued.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !queued(pid) {
            assert!(
                Instant::now() < deadline,
                "the wait never queued (kernel_locks={kernel_locks})"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pid
    };
    let pid = waiter();
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the interrupted SETLKW returned EINTR (status {status:#x}, kernel_locks={kernel_locks})"
    );
    assert!(
        !kernel_lock_waiter(pid),
        "the interrupted wait left the kernel"
    );
    let pid = waiter();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the second waiter died of SIGKILL, still waiting (status {status:#x})"
    );
    assert!(
        !kernel_lock_waiter(pid),
        "a killed wait stayed in the kernel"
    );
    // The mount still answers on every worker, and no wait is left.
    for _ in 0..20 {
        assert_eq!(fs::read(m.m("f")).unwrap(), b"x");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.stats()["lock_waiters"] != 0 {
        assert!(Instant::now() < deadline, "a killed wait stayed queued");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Nothing left behind holds the lock: once the holder goes, the file
    // can be locked through the mount again (RELEASE may be asynchronous).
    drop(holder);
    let again = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    let mut r = -1;
    for _ in 0..200 {
        r = unsafe { libc::fcntl(again.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if r == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let e = errno();
    assert_eq!(
        r,
        0,
        "the lock is free once its holder went (errno {e}); open elsewhere: {:?} {:?}",
        open_elsewhere(&m.s("f")),
        open_elsewhere(&m.m("f"))
    );
    drop(again);
    assert!(m.unmount().success());
}

#[test]
fn access_and_multi_user_ownership() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            let shared = s.join("shared");
            fs::create_dir(&shared).unwrap();
            fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
            fs::write(s.join("secret"), b"root only").unwrap();
            fs::set_permissions(s.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
            // A setgid directory owned by group 1234.
            let sg = s.join("sgid");
            fs::create_dir(&sg).unwrap();
            std::os::unix::fs::chown(&sg, Some(0), Some(1234)).unwrap();
            fs::set_permissions(&sg, fs::Permissions::from_mode(0o2777)).unwrap();
        },
        &["-o", "allow_other"],
    );
    let mnt = m.mnt.display();
    let (ok, out) = sh_as(1000, 1000, &format!("umask 022; touch {mnt}/shared/mine && mkdir {mnt}/shared/dir && ln -s x {mnt}/shared/sym"));
    assert!(ok, "{out}");
    for (name, mode) in [("shared/mine", 0o644), ("shared/dir", 0o755)] {
        let st = fs::symlink_metadata(m.s(name)).unwrap();
        assert_eq!(
            (st.uid(), st.gid()),
            (1000, 1000),
            "{name} owned by the caller"
        );
        assert_eq!(st.mode() & 0o777, mode, "{name}: umask applied once");
    }
    let st = fs::symlink_metadata(m.s("shared/sym")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1000, 1000));
    // setgid directories pass their group on.
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!("touch {mnt}/sgid/f && mkdir {mnt}/sgid/d"),
    );
    assert!(ok, "{out}");
    assert_eq!(fs::metadata(m.s("sgid/f")).unwrap().gid(), 1234);
    assert_ne!(
        fs::metadata(m.s("sgid/d")).unwrap().mode() & 0o2000,
        0,
        "setgid inherited"
    );
    // The kernel checks permissions (default_permissions).
    let (ok, _) = sh_as(1000, 1000, &format!("cat {mnt}/secret"));
    assert!(!ok, "uid 1000 must not read a root 0600 file");
    let (ok, _) = sh_as(1000, 1000, &format!("chmod 777 {mnt}/secret"));
    assert!(!ok, "uid 1000 must not chmod root's file");
    assert!(m.unmount().success());
}

#[test]
fn without_default_permissions_the_host_checks_as_the_caller() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            let shared = s.join("shared");
            fs::create_dir(&shared).unwrap();
            fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
            fs::write(s.join("secret"), b"root only").unwrap();
            fs::set_permissions(s.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
            fs::write(s.join("open"), b"anyone").unwrap();
        },
        &["-o", "allow_other,nodefault_permissions"],
    );
    let mnt = m.mnt.display();
    let (ok, out) = sh_as(1000, 1000, &format!("cat {mnt}/secret"));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = sh_as(1000, 1000, &format!("cat {mnt}/open"));
    assert!(ok && out == "anyone", "{out}");
    let (ok, out) = sh_as(1000, 1000, &format!("chmod 777 {mnt}/secret"));
    assert!(!ok && out.contains("not permitted"), "{out}");
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!("test -r {mnt}/secret || echo not-readable; test -r {mnt}/open && echo readable"),
    );
    assert!(
        ok && out.contains("not-readable") && out.contains("readable"),
        "access(2): {out}"
    );
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!("umask 027; echo x > {mnt}/shared/f; mkdir {mnt}/shared/d"),
    );
    assert!(ok, "{out}");
    let st = fs::metadata(m.s("shared/f")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (1000, 1000, 0o640));
    assert_eq!(fs::metadata(m.s("shared/d")).unwrap().mode() & 0o777, 0o750);
    let (ok, _) = sh_as(1000, 1000, &format!("rm {mnt}/secret"));
    assert!(!ok, "no write permission on the root directory");
    assert!(m.s("secret").exists());
    assert!(m.unmount().success());
}

#[test]
fn ofd_locks_live_as_long_as_their_open_file() {
    require_root!();
    // `a`'s lock goes with its last close, below.
    own_fd_table();
    // Found by fstests generic/478: the kernel sends no unlock for OFD
    // locks at close, so the daemon must drop them with the open file.
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![0u8; 100]).unwrap(), &[]);
    let lock = |f: &File, typ: i32, cmd: i32| {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = typ as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = 0;
        fl.l_len = 10;
        if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } == 0 {
            0
        } else {
            errno()
        }
    };
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    assert_eq!(lock(&a, libc::F_WRLCK, libc::F_OFD_SETLK), 0);
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("f"))
        .unwrap();
    assert_eq!(
        lock(&b, libc::F_WRLCK, libc::F_OFD_SETLK),
        libc::EAGAIN,
        "conflicts while a is open"
    );
    // Closing a duplicate keeps the lock (it belongs to the description).
    let dup = a.try_clone().unwrap();
    drop(dup);
    assert_eq!(
        lock(&b, libc::F_WRLCK, libc::F_OFD_SETLK),
        libc::EAGAIN,
        "a dup's close keeps the OFD lock"
    );
    drop(a);
    // RELEASE is asynchronous: the lock goes shortly after the last close.
    let mut r = libc::EAGAIN;
    for _ in 0..200 {
        r = lock(&b, libc::F_WRLCK, libc::F_OFD_SETLK);
        if r == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(r, 0, "the OFD lock went with its open file");
    assert_eq!(lock(&b, libc::F_UNLCK, libc::F_OFD_SETLK), 0);
    drop(b);
    assert!(m.unmount().success());
}

/// close(2) of any fd of a file by a POSIX lock's owner drops the lock,
/// in both lock modes: with host locks FLUSH tells the daemon; with
/// `--locks kernel` the kernel drops its own lock, and a read-only close
/// sends no FLUSH at all.
#[test]
fn a_posix_lock_goes_with_any_close_by_its_owner() {
    require_root!();
    for args in [&[][..], &["--locks", "kernel"][..]] {
        let m = Mount::with_source(|s| fs::write(s.join("f"), vec![0u8; 10]).unwrap(), args);
        let rw = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.m("f"))
                .unwrap()
        };
        let (a, probe) = (rw(), rw());
        let fl = write_lock(0, 0);
        assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
        // An OFD lock has its own owner: it conflicts with this process's
        // POSIX lock, so F_OFD_GETLK sees it.
        let held = || {
            let mut p = fl;
            p.l_pid = 0;
            assert_eq!(
                unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut p) },
                0
            );
            p.l_type as i32
        };
        assert_eq!(held(), libc::F_WRLCK, "{args:?}");
        drop(File::open(m.m("f")).unwrap());
        assert_eq!(
            held(),
            libc::F_UNLCK,
            "{args:?}: closing another fd drops it"
        );
        drop(a);
        assert!(m.unmount().success());
    }
}

/// With `--locks kernel`, close(2) of a write-only or read-only open sends
/// no FLUSH where SOURCE's filesystem has no flush of its own (ext4, xfs,
/// btrfs, tmpfs): nothing is left for it to do. A read-write open still
/// sends one (the daemon then tells the kernel of writes made through a
/// shared mmap), and so does every close with host locks, whose FLUSH
/// releases the closer's POSIX locks.
#[test]
fn close_sends_flush_only_when_it_has_work() {
    require_root!();
    let stay = opens_stay_with_the_daemon();
    for (lock_args, kernel_locks) in [(&[][..], false), (&["--locks", "kernel"][..], true)] {
        let args = [lock_args, stay].concat();
        let m = Mount::with_source(|s| fs::write(s.join("f"), b"x").unwrap(), &args);
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        let src = cpath(&m.s(""));
        assert_eq!(unsafe { libc::statfs(src.as_ptr(), &mut sfs) }, 0);
        let nothing_to_flush = matches!(
            sfs.f_type as u32,
            0xEF53 | 0x5846_5342 | 0x9123_683E | 0x0102_1994
        );
        // Counted on an fd table of its own: a process another test forks
        // meanwhile copies the shared one, and its copy of a file open
        // here sends a FLUSH of its own when it closes (at exec or exit):
        // 2 FLUSHes for one read-write close, once in 60 suite runs.
        in_own_fd_table(|| {
            let start = m.requests("FLUSH");
            fs::write(m.m("f"), b"written").unwrap();
            assert_eq!(fs::read(m.m("f")).unwrap(), b"written");
            let after = m.requests("FLUSH");
            let want = if kernel_locks && nothing_to_flush {
                0
            } else {
                2
            };
            assert_eq!(
                after - start,
                want,
                "{args:?}: write-only and read-only closes"
            );
            let rw = OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.m("f"))
                .unwrap();
            drop(rw);
            assert_eq!(m.requests("FLUSH") - after, 1, "{args:?}: read-write close");
        });
        assert_eq!(fs::read(m.s("f")).unwrap(), b"written");
        assert!(m.unmount().success());
    }
}

/// `-o nodefault_permissions --locks kernel` (single user): creating,
/// writing, closing and unlinking files sends no GETATTR (the kernel never
/// re-reads the directory's mode for a permission check; on 6.18 each change
/// in it otherwise costs one at the next walk: 39 for these 20 files with
/// the kernel's checks on) and no FLUSH (README, Caching).
#[test]
fn host_checked_create_and_unlink_send_no_getattr_or_flush() {
    require_root!();
    let m = Mount::with_source(
        |s| fs::create_dir(s.join("d")).unwrap(),
        &["-o", "nodefault_permissions", "--locks", "kernel"],
    );
    fs::metadata(m.m("d")).unwrap();
    let before = (
        m.requests("GETATTR"),
        m.requests("FLUSH"),
        m.requests("UNLINK"),
    );
    for i in 0..20 {
        fs::write(m.m(&format!("d/f{i}")), b"x").unwrap();
    }
    for i in 0..20 {
        fs::remove_file(m.m(&format!("d/f{i}"))).unwrap();
    }
    let after = (
        m.requests("GETATTR"),
        m.requests("FLUSH"),
        m.requests("UNLINK"),
    );
    assert_eq!(after.2 - before.2, 20, "the unlinks reached the daemon");
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "(GETATTR, FLUSH) for 20 files"
    );
    assert!(m.unmount().success());
}

#[test]
fn unprivileged_writes_clear_setuid() {
    require_root!();
    // Found by fstests generic/355: on the direct-I/O path the kernel leaves
    // the clearing to the server (FUSE_WRITE_KILL_SUIDGID), and with the
    // writeback cache (--nopassthrough) it must also hear that the mode
    // changed, or it keeps showing the old one.
    for mode in [
        &["-o", "allow_other"][..],
        &["--nopassthrough", "-o", "allow_other"][..],
    ] {
        let m = Mount::with_source(
            |s| {
                let d = s.join("d");
                fs::create_dir(&d).unwrap();
                fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
                for (name, mode) in [
                    ("direct_gx", 0o6775),
                    ("direct_nogx", 0o6765),
                    ("buffered", 0o4775),
                ] {
                    let p = d.join(name);
                    fs::write(&p, vec![0u8; 8192]).unwrap();
                    std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
                }
            },
            mode,
        );
        // The kernel caches the modes before the writes.
        for n in ["direct_gx", "direct_nogx", "buffered"] {
            lstat(&m.m(&format!("d/{n}"))).unwrap();
        }
        let mnt = m.mnt.display();
        let (ok, out) = sh_as(
            2000,
            1000,
            &format!(
                "dd if=/dev/zero of={mnt}/d/direct_gx bs=4096 count=1 conv=notrunc oflag=direct 2>&1 && \
                 dd if=/dev/zero of={mnt}/d/direct_nogx bs=4096 count=1 conv=notrunc oflag=direct 2>&1 && \
                 dd if=/dev/zero of={mnt}/d/buffered bs=4096 count=1 conv=notrunc 2>&1"
            ),
        );
        assert!(ok, "{out}");
        for (n, want) in [
            ("direct_gx", 0o0775),
            ("direct_nogx", 0o2765),
            ("buffered", 0o0775),
        ] {
            let on_source = fs::metadata(m.s(&format!("d/{n}"))).unwrap().mode() & 0o7777;
            let on_mount = lstat(&m.m(&format!("d/{n}"))).unwrap().st_mode & 0o7777;
            assert_eq!(on_source, want, "{mode:?} {n} on SOURCE");
            assert_eq!(on_mount, want, "{mode:?} {n} as the mount shows it");
        }
        assert!(m.unmount().success());
    }
}

/// `--xattr off`: the four xattr ops fail with EOPNOTSUPP, and after the
/// first ENOSYS of each the kernel answers by itself: a walk that asks
/// `security.selinux` of every entry (as `ls -l` does) costs one GETXATTR,
/// not one per entry. Nothing on SOURCE is lost or changed. Also with
/// inode passthrough (tests/uml.rs), where the xattr ops leave the mask.
#[test]
fn xattrs_off_answers_without_requests_and_keeps_sources_xattrs() {
    require_root!();
    let fill = |s: &Path| {
        for i in 0..50 {
            fs::write(s.join(format!("f{i}")), b"x").unwrap();
        }
        set_xattr(&s.join("f0"), c"user.kept", b"v0").expect("user xattrs on SOURCE's filesystem");
    };
    // errno of getxattr(name), listxattr, setxattr(user.new), removexattr.
    let calls = |p: &Path, name: &std::ffi::CStr| {
        let c = cpath(p);
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its length; valid C strings.
        unsafe {
            let get = libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            );
            let e_get = if get < 0 { errno() } else { 0 };
            let list = libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
            let e_list = if list < 0 { errno() } else { 0 };
            let set = libc::lsetxattr(c.as_ptr(), c"user.new".as_ptr(), b"n".as_ptr().cast(), 1, 0);
            let e_set = if set < 0 { errno() } else { 0 };
            let rm = libc::lremovexattr(c.as_ptr(), c"user.kept".as_ptr());
            let e_rm = if rm < 0 { errno() } else { 0 };
            (e_get, e_list, e_set, e_rm)
        }
    };
    for args in [&["--xattr", "off"][..], &["-o", "xattr=off"]] {
        let m = Mount::with_source(fill, args);
        let e = libc::EOPNOTSUPP;
        assert_eq!(calls(&m.m("f0"), c"user.kept"), (e, e, e, e), "{args:?}");
        for i in 0..50 {
            let got = get_xattr(&m.m(&format!("f{i}")), c"security.selinux");
            assert_eq!(got, Err(e), "{args:?}: f{i}");
        }
        for op in ["GETXATTR", "LISTXATTR", "SETXATTR", "REMOVEXATTR"] {
            assert!(m.requests(op) <= 1, "{args:?}: {op} {}", m.requests(op));
        }
        assert_eq!(
            get_xattr(&m.s("f0"), c"user.kept"),
            Ok(b"v0".to_vec()),
            "{args:?}: SOURCE keeps user.kept"
        );
        assert_eq!(
            get_xattr(&m.s("f0"), c"user.new"),
            Err(libc::ENODATA),
            "{args:?}: no user.new on SOURCE"
        );
        assert!(m.unmount().success());
    }
    // The default serves them: the same walk asks once per entry (or the
    // kernel serves them from the backing inode: nothing to count).
    let m = Mount::with_source(fill, &[]);
    assert_eq!(calls(&m.m("f0"), c"user.kept"), (0, 0, 0, 0));
    for i in 0..50 {
        let _ = get_xattr(&m.m(&format!("f{i}")), c"security.selinux");
    }
    if m.stats()["backing"]["mode"] != "inode" {
        assert!(
            m.requests("GETXATTR") > 50,
            "GETXATTR {}",
            m.requests("GETXATTR")
        );
    }
    assert!(m.unmount().success());
}

/// Pins the calling thread to `cpu` (a no-op where it does not exist).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays
    // within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A lock check that waits for a RELEASE (a conflict with a file closed
/// just before) waits off the thread that serves its queue: over io_uring
/// that thread is its CPU's only one, and a wait on it stalled every
/// request from that CPU for up to 200 ms. Here the holder's close leaves
/// a dup open, so the GETLK waits; lookups from the same CPU meanwhile
/// must be answered, and only then does the dup's close send the RELEASE
/// that answers the GETLK. With the settle time at 30 s no timing decides
/// the outcome: a stalled queue answers the lookups only after the GETLK
/// gave up. (Over /dev/fuse another worker serves them either way; the
/// suite runs both.)
#[test]
fn a_lock_check_waiting_for_a_release_does_not_stall_its_queue() {
    require_root!();
    let args = [opens_stay_with_the_daemon(), &["--lock-settle-ms", "30000"]].concat();
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![0u8; 10]).unwrap(), &args);
    let path = m.m("f");
    pin_to_cpu(0);
    let holder = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fl = write_lock(0, 0);
    // SAFETY: `fl` is a valid flock for the call.
    let r = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "F_OFD_SETLK: {}", errno());
    // SAFETY: dup of an open fd (close-on-exec: no program another test
    // runs meanwhile keeps it).
    let dup = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    assert!(dup >= 0);
    // FLUSH, no RELEASE: the dup keeps the open file description.
    drop(holder);
    let getlks = m.requests("GETLK");
    let getter_path = path.clone();
    let getter = std::thread::spawn(move || {
        pin_to_cpu(0);
        let probe = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&getter_path)
            .unwrap();
        let mut p = write_lock(0, 0);
        // SAFETY: `p` is a valid flock for the call.
        let r = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut p) };
        assert_eq!(r, 0, "F_OFD_GETLK: {}", errno());
        (p.l_type as i32, Instant::now())
    });
    // Once the GETLK has reached the daemon, look up names from the same CPU.
    while m.requests("GETLK") == getlks && !getter.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..5 {
        assert_eq!(
            lstat(&m.m(&format!("missing{i}"))).err(),
            Some(libc::ENOENT)
        );
    }
    let looked_up = Instant::now();
    // The last close: its RELEASE drops the lock and answers the check.
    // SAFETY: `dup` is ours to close.
    unsafe { libc::close(dup) };
    let (typ, answered) = getter.join().unwrap();
    assert!(
        looked_up < answered,
        "the lookups waited for the lock check ({:?} after its answer)",
        looked_up - answered
    );
    assert_eq!(typ, libc::F_UNLCK, "the check was answered at the RELEASE");
    assert!(m.unmount().success());
}

/// An OFD lock goes with the last close of its open file description:
/// once close(2) has returned, another open sees the range free (fstests
/// generic/478, its CLONE_FILES case). The kernel sends RELEASE
/// asynchronously, after close(2) returns. Over io_uring a request goes to
/// the queue of its caller's CPU, so the other open's GETLK, from another
/// CPU, was often served before that RELEASE and saw the lock (generic/478
/// failed 9 of 20 runs alone). The closer and the getter run pinned to
/// different CPUs here, 2,000 times.
#[test]
fn an_ofd_lock_is_gone_once_its_last_close_returns() {
    require_root!();
    let m = Mount::with_source(|s| fs::write(s.join("f"), vec![0u8; 10]).unwrap(), &[]);
    let path = m.m("f");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<i32>();
    let getter_path = path.clone();
    let getter = std::thread::spawn(move || {
        pin_to_cpu(1);
        let probe = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&getter_path)
            .unwrap();
        while go_rx.recv().is_ok() {
            let mut p = write_lock(0, 0);
            p.l_pid = 0;
            // SAFETY: `p` is a valid flock for the call.
            let r = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut p) };
            assert_eq!(r, 0, "F_OFD_GETLK: {}", errno());
            seen_tx.send(p.l_type as i32).unwrap();
        }
    });
    let setter = std::thread::spawn(move || {
        // Each round relies on its last close.
        own_fd_table();
        pin_to_cpu(0);
        let mut held = 0;
        for _ in 0..2000 {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut fl = write_lock(0, 0);
            fl.l_pid = 0;
            // SAFETY: `fl` is a valid flock for the call.
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
            assert_eq!(r, 0, "F_OFD_SETLK: {}", errno());
            drop(f);
            go_tx.send(()).unwrap();
            if seen_rx.recv().unwrap() != libc::F_UNLCK {
                held += 1;
            }
        }
        held
    });
    let held = setter.join().unwrap();
    getter.join().unwrap();
    assert_eq!(
        held, 0,
        "of 2,000 OFD locks, still held after their last close"
    );
    assert!(m.unmount().success());
}
