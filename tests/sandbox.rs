//! `--sandbox`: the daemon serves from a mount namespace whose root is
//! SOURCE, with a reduced capability set and a seccomp allowlist; a
//! supervisor outside unmounts. Every test mounts for real.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Capabilities the sandboxed daemon keeps: CHOWN, DAC_OVERRIDE,
/// DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID, MKNOD, and SYS_ADMIN
/// with passthrough (src/sandbox.rs `kept_capabilities`).
const CAPS: u64 = 0xdf | (1 << 27);
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// The sandboxed process: the supervisor's only child.
fn sandboxed_pid(m: &Mount) -> i32 {
    let sup = m.pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
        let kids: Vec<i32> = kids
            .split_whitespace()
            .filter_map(|k| k.parse().ok())
            .collect();
        if kids.len() == 1 {
            return kids[0];
        }
        assert!(
            Instant::now() < deadline,
            "supervisor {sup} has children {kids:?}: {}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_field(pid: i32, task: Option<i32>, field: &str) -> String {
    let p = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let s = std::fs::read_to_string(&p).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in {p}"))
        .trim()
        .to_string()
}

fn fill(src: &Path) {
    std::fs::write(src.join("hello"), b"hello world\n").unwrap();
    std::fs::create_dir(src.join("shared")).unwrap();
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for i in 0..100 {
        std::fs::write(src.join(format!("many{i}")), format!("{i}")).unwrap();
    }
}

/// The ops through a sandboxed daemon, as root and as another user, with
/// an fd cache small enough that inodes are reopened from file handles.
#[test]
fn sandboxed_daemon_serves_the_common_ops() {
    require_root!();
    let m = Mount::with_source(
        fill,
        &["--sandbox", "-o", "allow_other", "--fd-cache", "16"],
    );
    let pid = sandboxed_pid(&m);
    assert_eq!(status_field(pid, None, "Seccomp"), "2");

    // Create, write, read back, rename.
    std::fs::write(m.m("a"), b"12345").unwrap();
    assert_eq!(std::fs::read(m.s("a")).unwrap(), b"12345");
    std::fs::rename(m.m("a"), m.m("b")).unwrap();
    assert_eq!(std::fs::read(m.m("b")).unwrap(), b"12345");
    assert!(!m.s("a").exists());
    std::fs::create_dir(m.m("d")).unwrap();
    std::fs::rename(m.m("b"), m.m("d/c")).unwrap();
    assert!(m.s("d/c").exists());

    // Hard links and symlinks.
    std::fs::hard_link(m.m("d/c"), m.m("d/link")).unwrap();
    assert_eq!(std::fs::metadata(m.m("d/c")).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::metadata(m.s("d/c")).unwrap().ino(),
        std::fs::metadata(m.s("d/link")).unwrap().ino()
    );
    std::os::unix::fs::symlink("c", m.m("d/sym")).unwrap();
    assert_eq!(std::fs::read_link(m.m("d/sym")).unwrap(), Path::new("c"));
    assert_eq!(std::fs::read(m.m("d/sym")).unwrap(), b"12345");

    // Readdir: every name, including the 100 files reopened by handle.
    let mut names: Vec<String> = std::fs::read_dir(m.m(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = std::fs::read_dir(m.s(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    want.sort();
    assert_eq!(names, want);
    for i in 0..100 {
        assert_eq!(
            std::fs::read_to_string(m.m(&format!("many{i}"))).unwrap(),
            i.to_string()
        );
    }
    drop_caches();
    for i in 0..100 {
        assert_eq!(
            std::fs::metadata(m.m(&format!("many{i}"))).unwrap().ino(),
            std::fs::metadata(m.s(&format!("many{i}"))).unwrap().ino()
        );
    }

    // statfs.
    let (a, b) = (statvfs(&m.m("")), statvfs(&m.s("")));
    assert_eq!((a.f_bsize, a.f_blocks), (b.f_bsize, b.f_blocks));

    // xattrs.
    set_xattr(&m.m("d/c"), c"user.colour", b"blue").unwrap();
    assert_eq!(get_xattr(&m.s("d/c"), c"user.colour").unwrap(), b"blue");
    assert_eq!(get_xattr(&m.m("d/c"), c"user.colour").unwrap(), b"blue");
    assert_eq!(get_xattr(&m.m("d/c"), c"user.none"), Err(libc::ENODATA));

    // chmod and chown as root (CAP_FOWNER, CAP_CHOWN), mknod of a device
    // (CAP_MKNOD), a FIFO.
    std::fs::set_permissions(m.m("d/c"), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        std::fs::metadata(m.s("d/c")).unwrap().mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::chown(m.m("d/c"), Some(1000), Some(1000)).unwrap();
    let st = std::fs::metadata(m.s("d/c")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1000, 1000));
    let dev = cpath(&m.m("null2"));
    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
        0,
        "mknod: {}",
        errno()
    );
    assert!(std::fs::metadata(m.s("null2"))
        .unwrap()
        .file_type()
        .is_char_device());
    let fifo = cpath(&m.m("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    // Another user: creates own files (per-thread credentials), chmods
    // them, cannot chown them away or touch root's 0640 file.
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!(
            "set -e; cd {}; echo mine > shared/u; mkdir shared/ud; chmod 600 shared/u; \
             ln -s u shared/us; ln shared/u shared/ul; \
             if chown 0 shared/u 2>/dev/null; then echo chown-worked; exit 1; fi; \
             if cat hello >/dev/null && (echo x >> hello) 2>/dev/null; then echo wrote-hello; exit 1; fi; \
             cat shared/u",
            m.mnt.display()
        ),
    );
    assert!(ok, "as uid 1000: {out}");
    assert_eq!(out.trim(), "mine");
    let st = std::fs::metadata(m.s("shared/u")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (1000, 1000, 0o600));
    assert_eq!(std::fs::metadata(m.s("shared/ud")).unwrap().uid(), 1000);
    assert_eq!(
        std::fs::symlink_metadata(m.s("shared/us")).unwrap().uid(),
        1000
    );
    // Root reads the user's 0600 file (CAP_DAC_OVERRIDE in the daemon).
    assert_eq!(std::fs::read(m.m("shared/u")).unwrap(), b"mine\n");

    // Locks: flock and OFD/POSIX through the daemon.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.m("hello"))
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    // SAFETY: valid fd and struct.
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
    fl.l_type = libc::F_UNLCK as i16;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
    drop(f);

    // Passthrough I/O: 8 MiB written and read with no READ/WRITE at the
    // daemon, through backing ids (FUSE_DEV_IOC_BACKING_OPEN needs
    // CAP_SYS_ADMIN, kept with passthrough).
    let before = m.stats();
    let block = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(m.m("big")).unwrap();
    for _ in 0..8 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    drop(f);
    let mut back = Vec::new();
    std::fs::File::open(m.m("big"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back.len(), 8 << 20);
    assert!(back.iter().all(|&b| b == 0x5a));
    let after = m.stats();
    assert_ne!(after["backing"]["mode"], "off", "{after}");
    assert!(after["backing"]["registered_total"].as_u64().unwrap() >= 1);
    for op in ["READ", "WRITE"] {
        assert_eq!(
            after["requests"][op].as_u64().unwrap_or(0),
            before["requests"][op].as_u64().unwrap_or(0),
            "{op} reached the daemon"
        );
    }
    // Unlink, rmdir.
    std::fs::remove_file(m.m("big")).unwrap();
    std::fs::remove_dir(m.m("shared/ud")).unwrap();
    assert!(!m.s("big").exists());

    assert_eq!(status_field(pid, None, "Seccomp"), "2", "still sandboxed");
    assert!(m.unmount().success());
}

fn statvfs(p: &Path) -> libc::statvfs {
    // SAFETY: valid path and output buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(p).as_ptr(), &mut st) }, 0);
    st
}

/// The sandboxed process's root is SOURCE, its mount table holds only
/// SOURCE, and each of its threads has the reduced capabilities, no new
/// privileges and the seccomp filter; the supervisor keeps its own.
#[test]
fn sandboxed_daemon_sees_only_source_with_reduced_privileges() {
    require_root!();
    let m = Mount::with_source(fill, &["--sandbox"]);
    std::fs::write(m.dir.path().join("outside-canary"), b"x").unwrap();
    let pid = sandboxed_pid(&m);
    // Make sure the workers exist and answered.
    assert!(m.m("hello").exists());

    // Its root is SOURCE; `..` of it is itself; nothing outside is there.
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let src = std::fs::metadata(&m.src).unwrap();
    assert_eq!((root.dev(), root.ino()), (src.dev(), src.ino()));
    let up = std::fs::metadata(format!("/proc/{pid}/root/..")).unwrap();
    assert_eq!((up.dev(), up.ino()), (src.dev(), src.ino()));
    assert!(!Path::new(&format!("/proc/{pid}/root/../outside-canary")).exists());
    assert!(Path::new(&format!("/proc/{pid}/root/hello")).exists());

    // Its mount table: SOURCE at "/", nothing else.
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let points: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    assert_eq!(points, vec!["/"], "mountinfo of the daemon:\n{info}");
    // And the host's table is untouched: no sandbox mount leaked.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*m.src.to_string_lossy())),
        "SOURCE bind mount leaked to the host"
    );
    // Its own mount namespace.
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );

    // Every thread: the reduced capability set, no_new_privs, seccomp.
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(tasks.len() >= 3, "main thread and workers: {tasks:?}");
    let want = format!("{:016x}", CAPS | CAP_SYS_ADMIN);
    for t in tasks {
        for f in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(status_field(pid, Some(t), f), want, "{f} of thread {t}");
        }
        assert_eq!(status_field(pid, Some(t), "CapInh"), "0000000000000000");
        assert_eq!(status_field(pid, Some(t), "CapAmb"), "0000000000000000");
        assert_eq!(status_field(pid, Some(t), "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, Some(t), "Seccomp"), "2", "thread {t}");
    }
    // The supervisor is not sandboxed (it must unmount on the host).
    assert_eq!(status_field(m.pid() as i32, None, "Seccomp"), "0");
    assert!(m.unmount().success());

    // Without passthrough, CAP_SYS_ADMIN goes too.
    let m = Mount::with_source(fill, &["--sandbox", "--nopassthrough"]);
    let pid = sandboxed_pid(&m);
    assert_eq!(std::fs::read(m.m("hello")).unwrap(), b"hello world\n");
    assert_eq!(status_field(pid, None, "CapEff"), format!("{CAPS:016x}"));
    assert!(m.unmount().success());
}

/// A request whose handler makes a syscall outside the allowlist (a
/// test-only GETXATTR, enabled by a hidden flag) kills the sandboxed daemon
/// with SIGSYS; the supervisor unmounts and exits 128 + SIGSYS. Without
/// the sandbox the same request succeeds, so the hook really makes the call.
#[test]
fn a_forbidden_syscall_kills_the_sandboxed_daemon() {
    require_root!();
    const HOOK: &std::ffi::CStr = c"user.passthroughfs.test-forbidden-syscall";

    // Control: no sandbox, the syscall is made and answered.
    let m = Mount::with_source(fill, &["--test-forbidden-syscall"]);
    assert_eq!(get_xattr(&m.m("hello"), HOOK).unwrap(), b"survived");
    assert!(m.unmount().success());

    // Without the hidden flag the name is an ordinary xattr, even sandboxed.
    let m = Mount::with_source(fill, &["--sandbox"]);
    assert_eq!(get_xattr(&m.m("hello"), HOOK), Err(libc::ENODATA));
    set_xattr(&m.m("hello"), HOOK, b"plain").unwrap();
    assert_eq!(get_xattr(&m.m("hello"), HOOK).unwrap(), b"plain");
    assert_eq!(status_field(sandboxed_pid(&m), None, "Seccomp"), "2");
    assert!(m.unmount().success());

    let mut m = Mount::with_source(fill, &["--sandbox", "--test-forbidden-syscall"]);
    let pid = sandboxed_pid(&m);
    // Allowed calls still work.
    assert_eq!(get_xattr(&m.m("hello"), c"user.none"), Err(libc::ENODATA));
    let e = get_xattr(&m.m("hello"), HOOK).expect_err("the daemon answered");
    assert!(
        e == libc::ENOTCONN || e == libc::ECONNABORTED,
        "errno {e} after the forbidden syscall"
    );
    let st = m.wait_exit(10).expect("supervisor exits");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.code(), Some(128 + libc::SIGSYS), "{st:?} {}", m.log());
    assert!(process_gone(pid));
    assert!(m.log().contains("seccomp allowlist"), "{}", m.log());
    assert!(st.signal().is_none());
    assert!(!is_mounted(&m.mnt), "the supervisor unmounted");
}

/// Signals go to the supervisor: SIGTERM unmounts and ends both processes;
/// SIGKILL of the supervisor takes the sandboxed process with it.
#[test]
fn supervisor_unmounts_on_signals_and_takes_the_daemon_down() {
    require_root!();
    let mut m = Mount::with_source(fill, &["--sandbox"]);
    let pid = sandboxed_pid(&m);
    // SAFETY: our daemon's pid.
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    let st = m.wait_exit(10).expect("supervisor exits on SIGTERM");
    assert!(st.success(), "{st:?}: {}", m.log());
    assert!(!is_mounted(&m.mnt));
    assert!(process_gone(pid));

    // The sandboxed process dies by SIGTERM too: the supervisor unmounts.
    let mut m = Mount::with_source(fill, &["--sandbox"]);
    let pid = sandboxed_pid(&m);
    // SAFETY: the sandboxed daemon's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    m.wait_exit(10).expect("supervisor exits");
    assert!(!is_mounted(&m.mnt), "{}", m.log());

    let m = Mount::with_source(fill, &["--sandbox"]);
    let pid = sandboxed_pid(&m);
    let (_dir, _src) = m.crash(); // SIGKILL of the supervisor, umount -l
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        process_gone(pid),
        "the sandboxed daemon outlived its supervisor"
    );
}

/// Without default_permissions the host checks each request as its caller,
/// with the caller's supplementary groups from /proc/PID/status, which the
/// sandboxed process cannot see: the supervisor reads them for it.
#[test]
fn sandbox_without_default_permissions_checks_with_the_callers_groups() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let m = Mount::with_source(
        |s| {
            let d = s.join("team");
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(0), Some(4242)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        },
        &["--sandbox", "-o", "allow_other,nodefault_permissions"],
    );
    assert_eq!(status_field(sandboxed_pid(&m), None, "Seccomp"), "2");
    let p = m.m("team/by-member");
    let member = thread_as_groups(1000, 1000, vec![4242], move || {
        std::fs::write(&p, b"x").map_err(|e| e.raw_os_error())
    })
    .join()
    .unwrap();
    assert_eq!(
        member,
        Ok(()),
        "a member of group 4242 creates: {}",
        m.log()
    );
    let st = std::fs::metadata(m.s("team/by-member")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1000, 1000));
    let p = m.m("team/by-stranger");
    let stranger = thread_as(1001, 1001, move || {
        std::fs::write(&p, b"x").map_err(|e| e.raw_os_error())
    })
    .join()
    .unwrap();
    assert_eq!(stranger, Err(Some(libc::EACCES)));
    assert!(!m.s("team/by-stranger").exists());
    assert!(m.unmount().success());
}

/// A daemon started in the background (the default) with --sandbox: the
/// command returns 0 once the mount is usable, and `umount` ends both
/// processes.
#[test]
fn sandboxed_daemon_in_the_background() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("s"), dir.path().join("m"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(src.join("f"), b"bg").unwrap();
    let st = Command::new(BIN)
        .arg("--sandbox")
        .arg(&src)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let r = std::fs::read(mnt.join("f"));
    let procs = daemons_of(&mnt);
    let um = Command::new("umount").arg(&mnt).status().unwrap();
    assert_eq!(r.unwrap(), b"bg");
    assert!(um.success());
    assert_eq!(procs.len(), 2, "supervisor and sandboxed daemon: {procs:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemons_of(&mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemons_of(&mnt), Vec::<i32>::new(), "left running");
    assert!(!is_mounted(&mnt));
}

/// Live (non-zombie) processes whose command line names `mnt`.
fn daemons_of(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &i32| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.split(|&b| b == 0).any(|a| a == want) && !process_gone(*pid)
        })
        .collect();
    v.sort();
    v
}
