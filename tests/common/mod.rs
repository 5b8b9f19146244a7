//! Shared test harness: a real passthroughfs mount that always goes away.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_passthroughfs");

/// Fails a test unless we run as root: mount(2), other uids and device
/// nodes need it. A test that cannot run must not pass: CI runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test needs root (mount(2), other uids, device nodes); CI runs it as root"
        );
    };
}

/// A temporary directory with SOURCE (`dir/src`) filled by `fill`; the
/// mount point goes next to it.
fn filled_source(fill: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    fill(&src);
    (dir, src)
}

pub fn is_mounted(p: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = p.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Unmounts `path` when dropped, if it is still mounted (umount, then
/// `umount -l` as the last resort): for mounts a test makes without
/// [`Mount`] (a daemon started by hand, a filesystem under SOURCE).
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Daemon arguments every mount of a suite gets, from `PTFS_EXTRA_ARGS`
/// (split on whitespace): `PTFS_EXTRA_ARGS=--sandbox cargo test --test ops`
/// runs the ops suite with the sandbox on.
pub fn extra_daemon_args() -> Vec<String> {
    std::env::var("PTFS_EXTRA_ARGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// A passthroughfs daemon serving `src` at `mnt`, in the foreground, owned
/// by the test. Dropping it unmounts (umount, then SIGTERM, then umount -l)
/// and reaps the daemon, whatever happened in the test.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub mnt: PathBuf,
    pub stats_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Set when the mount runs over io_uring (PTFS_TRANSPORT=uring).
    uring: Option<EnableUring>,
}

impl Mount {
    /// A fresh, empty SOURCE.
    pub fn new(args: &[&str]) -> Mount {
        Mount::with_source(|_| {}, args)
    }

    /// A SOURCE filled by `fill` before mounting.
    pub fn with_source(fill: impl FnOnce(&Path), args: &[&str]) -> Mount {
        let (dir, src) = filled_source(fill);
        Mount::start(dir, src, args)
    }

    /// Mounts an existing SOURCE (e.g. on a loop device); `dir` holds mnt.
    pub fn on(dir: tempfile::TempDir, src: PathBuf, args: &[&str]) -> Mount {
        Mount::start(dir, src, args)
    }

    /// Like [`Mount::with_source`], with the daemon's RLIMIT_NOFILE (soft
    /// and hard) set to `nofile`.
    pub fn with_fd_limit(fill: impl FnOnce(&Path), args: &[&str], nofile: u64) -> Mount {
        let (dir, src) = filled_source(fill);
        Mount::start_limited(dir, src, args, Some(nofile))
    }

    fn start(dir: tempfile::TempDir, src: PathBuf, args: &[&str]) -> Mount {
        Mount::start_limited(dir, src, args, None)
    }

    fn start_limited(
        dir: tempfile::TempDir,
        src: PathBuf,
        args: &[&str],
        nofile: Option<u64>,
    ) -> Mount {
        use std::os::unix::fs::PermissionsExt;
        // The same tests under pressure (scripts/test.sh runs suites again
        // so): PTFS_FD_CACHE=N adds `--fd-cache N` where a test sets none;
        // PTFS_NOFILE=N caps the daemon's RLIMIT_NOFILE at N.
        let env_num = |k: &str| -> Option<u64> {
            std::env::var(k).ok().map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{k}={v}: not a number"))
            })
        };
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(n) = env_num("PTFS_FD_CACHE") {
            if !args.iter().any(|a| a == "--fd-cache") {
                args.push("--fd-cache".into());
                args.push(n.to_string());
            }
        }
        let nofile = match (nofile, env_num("PTFS_NOFILE")) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Other uids must reach the mount (tempdirs are 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let stats_path = dir.path().join("stats.json");
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).unwrap();
        // PTFS_BIN: another build of the daemon (e.g. the one before a fix).
        let mut cmd = Command::new(std::env::var_os("PTFS_BIN").unwrap_or_else(|| BIN.into()));
        let uring = transport_uring().then(enable_uring);
        // The transport under test, whatever enable_uring says.
        cmd.arg(if uring.is_some() {
            "--io-uring"
        } else {
            "--no-io-uring"
        });
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--foreground")
            .arg("--stats")
            .arg(&stats_path)
            .args(extra_daemon_args())
            .args(args)
            .arg(&src)
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("PTFS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .unwrap();
        let mut m = Mount {
            dir,
            src,
            mnt,
            stats_path,
            log_path,
            child: Some(child),
            uring,
        };
        m.wait_ready();
        m
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon exited early ({st}): {}", self.log());
                }
            }
            // Mounted and answering (INIT done).
            if is_mounted(&self.mnt) && std::fs::metadata(&self.mnt).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("mount did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A path under the mount, and the same path under SOURCE.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
    pub fn s(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// Asks the daemon for its stats (SIGUSR1) and waits for the file.
    pub fn stats(&self) -> serde_json::Value {
        let before = std::fs::metadata(&self.stats_path)
            .and_then(|m| m.modified())
            .ok();
        let _ = std::fs::remove_file(&self.stats_path);
        unsafe { libc::kill(self.pid() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(t) = std::fs::read_to_string(&self.stats_path) {
                if let Ok(v) = serde_json::from_str(&t) {
                    return v;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = before;
        panic!("no stats from the daemon: {}", self.log());
    }

    /// Requests of one opcode the daemon has received.
    pub fn requests(&self, op: &str) -> u64 {
        self.stats()["requests"][op].as_u64().unwrap_or(0)
    }

    /// SIGKILLs the daemon (a crash), clears the dead mount with `umount -l`
    /// and hands back the directory and SOURCE, for a restart.
    pub fn crash(mut self) -> (tempfile::TempDir, PathBuf) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let dir = tempfile::Builder::new()
            .prefix("ptfs-dead")
            .tempdir()
            .unwrap();
        let taken = std::mem::replace(&mut self.dir, dir);
        (taken, self.src.clone())
    }

    /// Waits up to `secs` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let c = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Unmounts and waits for the daemon; returns its exit status.
    pub fn unmount(mut self) -> ExitStatus {
        self.teardown().expect("daemon status")
    }

    fn teardown(&mut self) -> Option<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            // The daemon already ended (wait_exit): a dead mount may remain.
            if is_mounted(&self.mnt) {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
            return None;
        };
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                if is_mounted(&self.mnt) {
                    let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
                }
                if self.uring.is_some() {
                    check_served_by_ring(&self.stats_path, &self.log());
                }
                return Some(st);
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still running: ask it to stop, then force.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(500));
        let _ = child.kill();
        let st = child.wait().ok();
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        st
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Runs `sh -c script` as uid/gid (no supplementary groups); returns
/// (success, stdout+stderr).
pub fn sh_as(uid: u32, gid: u32, script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
        ])
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv (util-linux)");
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// lstat as libc sees it.
pub fn lstat(p: &Path) -> Result<libc::stat, i32> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(errno())
    }
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// lgetxattr(p, name): the value (up to 4 KiB), or the errno.
pub fn get_xattr(p: &Path, name: &std::ffi::CStr) -> Result<Vec<u8>, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is writable for its length; valid C strings.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// lsetxattr(p, name, value, 0), or the errno.
pub fn set_xattr(p: &Path, name: &std::ffi::CStr, value: &[u8]) -> Result<(), i32> {
    let c = cpath(p);
    // SAFETY: valid C strings; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// The errno of an io::Result, or 0.
pub fn err_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn mtime(p: &Path) -> SystemTime {
    std::fs::symlink_metadata(p).unwrap().modified().unwrap()
}

/// Drops the kernel's dentry and inode caches (the kernel then FORGETs).
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

/// True once `pid` has exited (a zombie waiting for its reaper counts).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }
    }
}

/// Gives the calling thread a file table of its own, holding only stdin,
/// stdout and stderr. For tests that rely on a last close (an OFD or flock
/// lock goes with its open file description): other tests run on other
/// threads of this process, and a child one of them forks copies the
/// shared table, holding those fds, and so their locks, until it exits or
/// execs. unshare(CLONE_FILES) alone copies the shared table too, with
/// every other test's fds in it: those are closed at once (kept, they held
/// another test's lock for as long as this thread ran). Call it first,
/// before the test opens anything it must keep.
pub fn own_fd_table() {
    // SAFETY: unshare(CLONE_FILES) replaces only this thread's fd table by
    // a copy, whose fds no other thread uses.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_FILES) },
        0,
        "unshare: {}",
        errno()
    );
    assert!(close_inherited_fds(&[]), "close_range: {}", errno());
}

/// In a child just forked, or a thread that unshared its fd table: closes
/// every fd but stdio and `keep` (ascending); false if a close_range
/// failed. fork copies the whole fd table, with the files other tests
/// running meanwhile hold open, and a copy of a locked open file
/// description keeps its lock for as long as the copy lives (one of those
/// tests then found its lock still held after its own close), or a mount
/// busy at its unmount. Async-signal-safe: close_range only.
pub fn close_inherited_fds(keep: &[libc::c_int]) -> bool {
    let mut from = 3u32;
    let mut ok = true;
    for &k in keep {
        let k = k as u32;
        if k > from {
            // SAFETY: closes fds this child does not use.
            ok &= unsafe { libc::close_range(from, k - 1, 0) } == 0;
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    let rest = unsafe { libc::close_range(from, u32::MAX, 0) } == 0;
    ok && rest
}

/// Who else has `path` open: "pid (comm, parent ppid) fd N" for every fd
/// of every process, this one's other threads' tables included, whose link
/// names `path`. For failure messages of tests that rely on a last close:
/// an OFD or flock lock lives while any copy of its fd is open, and a child
/// that another test forks copies the fds of the whole process.
pub fn open_elsewhere(path: &Path) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Each thread of this process may have a file table of its own.
        let tables: Vec<std::path::PathBuf> = if pid == me {
            std::fs::read_dir(p.path().join("task"))
                .map(|t| t.flatten().map(|t| t.path().join("fd")).collect())
                .unwrap_or_default()
        } else {
            vec![p.path().join("fd")]
        };
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let comm = stat.split(['(', ')']).nth(1).unwrap_or("?").to_string();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string();
        for table in tables {
            let Ok(fds) = std::fs::read_dir(&table) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l == path) {
                    found.push(format!(
                        "{} ({comm}, parent {ppid}) fd {}",
                        table.display(),
                        fd.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Runs `f` on a new thread whose effective uid/gid are `uid`/`gid` (raw
/// syscalls, so only that thread changes): a caller of another user without
/// forking.
pub fn thread_as<T: Send + 'static>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    thread_as_groups(uid, gid, Vec::new(), f)
}

/// [`thread_as`] with supplementary groups.
pub fn thread_as_groups<T: Send + 'static>(
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        // SAFETY: raw syscalls change the credentials of this thread only
        // (glibc's wrappers would change every thread of the test process);
        // `groups` outlives the call.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32), 0);
        }
        f()
    })
}

/// The patched kernel with open passthrough (tests/uml.rs sets
/// PTFS_KERNEL_LOCKS=1 there) keeps the locks of files it opens from their
/// backing file itself.
pub fn kernel_keeps_locks() -> bool {
    std::env::var("PTFS_KERNEL_LOCKS").as_deref() == Ok("1")
}

/// Daemon arguments that keep opens (and so FLUSH, RELEASE and the locks
/// of open files) with the daemon: on the patched kernel opens pass
/// through by default, and their locks stay in the kernel.
pub fn opens_stay_with_the_daemon() -> &'static [&'static str] {
    if kernel_keeps_locks() {
        &["--passthrough-ops", "read,write"]
    } else {
        &[]
    }
}

// ---- transport (PTFS_TRANSPORT=uring) ------------------------------------

/// True when the suites run over FUSE-over-io_uring (`PTFS_TRANSPORT=uring`,
/// set by scripts/test.sh for its second pass).
pub fn transport_uring() -> bool {
    std::env::var("PTFS_TRANSPORT").is_ok_and(|v| v == "uring")
}

const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// (holders, value of enable_uring before the first holder)
static URING_PARAM: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

/// Keeps `/sys/module/fuse/parameters/enable_uring` on while alive; the last
/// one dropped (also while unwinding from a failed test) puts the original
/// value back.
pub struct EnableUring(());

/// Switches enable_uring on (as root). Panics, failing the test, when the
/// kernel has no FUSE-over-io_uring: a test meant for io_uring must not
/// pass on /dev/fuse.
pub fn enable_uring() -> EnableUring {
    let mut g = URING_PARAM.lock().unwrap_or_else(|e| e.into_inner());
    if g.0 == 0 {
        let orig = std::fs::read_to_string(ENABLE_URING)
            .unwrap_or_else(|e| panic!("PTFS_TRANSPORT=uring: cannot read {ENABLE_URING}: {e} (kernel without FUSE-over-io_uring?)"));
        let orig = orig.trim().to_string();
        if orig != "Y" {
            std::fs::write(ENABLE_URING, "Y").unwrap_or_else(|e| {
                panic!("PTFS_TRANSPORT=uring: cannot switch {ENABLE_URING} on: {e} (needs root)")
            });
        }
        g.1 = Some(orig);
    }
    g.0 += 1;
    EnableUring(())
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        let mut g = URING_PARAM.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if g.0 == 0 {
            if let Some(orig) = g.1.take() {
                if orig != "Y" {
                    let _ = std::fs::write(ENABLE_URING, &orig);
                }
            }
        }
    }
}

/// After an io_uring mount ended: its stats must say the transport was the
/// ring and that the ring served requests (not only /dev/fuse).
fn check_served_by_ring(stats_path: &Path, log: &str) {
    if std::thread::panicking() {
        return;
    }
    let Ok(text) = std::fs::read_to_string(stats_path) else {
        panic!("PTFS_TRANSPORT=uring: the daemon wrote no stats at unmount: {log}");
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
    let t = &v["transport"];
    assert_eq!(
        t["mode"], "uring",
        "PTFS_TRANSPORT=uring but the kernel did not take the io_uring transport: {t}\n{log}"
    );
    assert!(
        t["ring_requests"].as_u64().unwrap_or(0) > 0,
        "PTFS_TRANSPORT=uring but no request came through the ring: {t}\n{log}"
    );
}
