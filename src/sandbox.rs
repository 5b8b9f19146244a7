//! `--sandbox`: least privilege for a root daemon, after virtiofsd's
//! namespace sandbox (our own code).
//!
//! The daemon is split in two processes once the FUSE mount exists:
//!
//! - the **supervisor** (the pid the user started) stays in the host's mount
//!   namespace with its privileges, but never reads a request: it forwards
//!   SIGUSR1, unmounts on SIGINT/SIGTERM/SIGHUP/SIGQUIT (and after the
//!   worker process dies, whatever killed it), writes the stats file from
//!   JSON the sandboxed process sends over a pipe, reads callers'
//!   supplementary groups from /proc/PID/status for it (a socket: pid in,
//!   gids out; only `-o nodefault_permissions` asks), and exits with the
//!   worker's status;
//! - the **sandboxed process** serves the mount. Before opening SOURCE it
//!   enters a mount namespace of its own ([`enter_namespace`]: propagation
//!   set to slave, so nothing it mounts or unmounts reaches the host; SOURCE
//!   bind-mounted and made its root with pivot_root; the old root detached),
//!   keeps as cwd a bind mount of its own /proc/PID (the only part of /proc
//!   it can reach: `fd/N` magic links for reopening, `status`), drops every
//!   capability it does not need ([`drop_capabilities`]), and installs a
//!   seccomp filter ([`install_seccomp`]) before any worker thread exists.
//!
//! The /dev/fuse channels of the workers are opened before pivot_root (the
//! sandbox has no /dev), and so is everything else that names a host path
//! (log file, policy, media config and change log).

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chroot, fchdir, pivot_root, Pid};
use tracing::{error, info, warn};

use crate::fuse::mount::Mount;
use crate::sys::caps;

/// `what: error`, keeping the error's kind.
fn context(e: impl Into<io::Error>, what: &str) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_path(p: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(p, flags, Mode::empty())
        .map_err(|e| context(e, &format!("open {}", p.to_string_lossy())))
}

fn mount_call(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let flags = MsFlags::from_bits_retain(flags);
    nix::mount::mount(src, target, fstype, flags, None::<&CStr>).map_err(|e| {
        context(
            e,
            &format!(
                "mount {} on {}",
                src.map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                target.to_string_lossy()
            ),
        )
    })
}

/// Why `--sandbox` cannot be used here, if it cannot.
pub fn unsupported() -> Option<String> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Some("--sandbox: the seccomp filter exists for x86_64 and aarch64 only".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "--sandbox needs a root daemon (mount namespaces, pivot_root, dropping capabilities)"
                .into(),
        );
    }
    None
}

/// Enters a mount namespace of our own whose root is `source`, with the
/// cwd on a bind mount of our /proc/PID. Call while single-threaded,
/// before anything on SOURCE is opened: an fd opened before would lead
/// back into the host's tree (`..` of it is not stopped by the new root).
pub fn enter_namespace(source: &Path) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| context(e, "unshare"))?;
    // Nothing we mount or unmount propagates back to the host; mounts the
    // host makes under SOURCE still reach us (slave, not private).
    mount_call(None, c"/", None, libc::MS_REC | libc::MS_SLAVE)?;
    // The only part of /proc the daemon keeps: its own /proc/PID, bound
    // over /proc (ours only, in this namespace). `..` at the root of that
    // bind mount, once detached, goes nowhere.
    mount_call(Some(c"/proc/self"), c"/proc", None, libc::MS_BIND)?;
    let proc_self = open_path(c"/proc")?;
    let src = cstr(source)?;
    mount_call(Some(&src), &src, None, libc::MS_BIND | libc::MS_REC)?;
    let new_root = open_path(&src)?;
    let old_root = open_path(c"/")?;
    fchdir(&new_root).map_err(|e| context(e, "fchdir"))?;
    pivot_root(c".", c".").map_err(|e| context(e, "pivot_root"))?;
    // The old root now sits on top of the new one: detach it (and
    // every host mount under it) from this namespace.
    fchdir(&old_root).map_err(|e| context(e, "fchdir"))?;
    mount_call(None, c".", None, libc::MS_REC | libc::MS_SLAVE)?;
    umount2(c".", MntFlags::MNT_DETACH).map_err(|e| context(e, "umount old root"))?;
    fchdir(&new_root).map_err(|e| context(e, "fchdir"))?;
    chroot(c".").map_err(|e| context(e, "chroot"))?;
    fchdir(&proc_self).map_err(|e| context(e, "fchdir /proc/self"))?;
    crate::sys::set_proc_self_is_cwd();
    // Sanity: /proc/self is where the daemon will look for it.
    std::fs::metadata("status")
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/self in the sandbox: {e}")))?;
    Ok(())
}

/// Closes inherited fds through which a path walk could leave the sandbox
/// (directories and O_PATH fds opened in the host's namespace). Call right
/// after [`enter_namespace`], before SOURCE is opened.
pub fn close_inherited_dirs() -> io::Result<()> {
    for fd in crate::sys::process::close_inherited_dir_fds("fd")? {
        warn!("sandbox: closed inherited directory fd {fd}");
    }
    Ok(())
}

// Capability numbers (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_MKNOD: u32 = 27;

/// The capabilities the sandboxed daemon keeps, and why. Everything else
/// (CAP_SYS_CHROOT, CAP_SYS_PTRACE, CAP_NET_*, CAP_SYS_MODULE, CAP_KILL,
/// CAP_SETPCAP, CAP_SETFCAP, CAP_SYS_RESOURCE, ...) is dropped from the
/// effective, permitted, inheritable, ambient and bounding sets.
pub fn kept_capabilities(passthrough: bool) -> Vec<(u32, &'static str)> {
    let mut v = vec![
        (CAP_CHOWN, "CAP_CHOWN: SETATTR of uid/gid by root callers"),
        (
            CAP_DAC_OVERRIDE,
            "CAP_DAC_OVERRIDE: ops the kernel already allowed (default_permissions) on files the daemon's uid cannot access",
        ),
        (
            CAP_DAC_READ_SEARCH,
            "CAP_DAC_READ_SEARCH: open_by_handle_at (inodes whose fd was evicted)",
        ),
        (
            CAP_FOWNER,
            "CAP_FOWNER: chmod, utimes, xattrs, O_NOATIME on files the daemon's uid does not own",
        ),
        (
            CAP_FSETID,
            "CAP_FSETID: chmod by root keeps setgid whatever the file's group",
        ),
        (
            CAP_SETGID,
            "CAP_SETGID: per-thread setresgid/setgroups to act as the caller",
        ),
        (
            CAP_SETUID,
            "CAP_SETUID: per-thread setresuid to act as the caller",
        ),
        (CAP_MKNOD, "CAP_MKNOD: MKNOD of device nodes by root callers"),
    ];
    if passthrough {
        v.push((
            CAP_SYS_ADMIN,
            "CAP_SYS_ADMIN: FUSE_DEV_IOC_BACKING_OPEN/CLOSE (kernel passthrough)",
        ));
    }
    v
}

/// Keeps only `keep` in the calling thread's capability sets and removes
/// everything else from the bounding set (threads spawned later inherit
/// both). Returns the mask kept.
pub fn drop_capabilities(keep: &[u32]) -> io::Result<u64> {
    let mask: u64 = keep.iter().fold(0, |m, &c| m | (1u64 << c));
    // The bounding set first: it needs CAP_SETPCAP, which goes next.
    for cap in 0..64u32 {
        if mask & (1 << cap) != 0 {
            continue;
        }
        // EINVAL past the last capability.
        match caps::bounding_set_drop(cap) {
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                return Err(io::Error::other(format!("PR_CAPBSET_DROP {cap}: {e}")));
            }
            _ => {}
        }
    }
    caps::ambient_clear_all().map_err(|e| context(e, "PR_CAP_AMBIENT_CLEAR_ALL"))?;
    caps::set_effective_permitted(mask).map_err(|e| context(e, "capset"))?;
    Ok(mask)
}

// Classic BPF, as seccomp takes it.
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// What a syscall outside the allowlist gets: the whole process dies with
/// SIGSYS (the supervisor then unmounts and reports it).
pub const SECCOMP_ACTION: u32 = 0x8000_0000; // SECCOMP_RET_KILL_PROCESS

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0;

/// Offsets in `struct seccomp_data`: nr, arch, then args[i] at 16 + 8i
/// (the low 32 bits first on these little-endian targets).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg(i: u32) -> u32 {
    16 + 8 * i
}

/// One allowlist entry.
enum Rule {
    /// Allowed with any arguments.
    Any(libc::c_long),
    /// Allowed when the low 32 bits of argument `arg` are one of `values`.
    ArgIn(libc::c_long, u32, Vec<u32>),
    /// Allowed when argument `arg` has none of the bits of `mask`.
    ArgNoBits(libc::c_long, u32, u32),
    /// Refused with this errno (callers fall back).
    Errno(libc::c_long, u32),
}

// Device ioctls the workers make (backing ids); DEV_IOC_CLONE happens
// before the filter is installed.
const IOCTLS: &[u32] = &[
    crate::fuse::abi::DEV_IOC_BACKING_OPEN as u32,
    crate::fuse::abi::DEV_IOC_BACKING_CLOSE as u32,
];
const UNSHARE_FLAGS: &[u32] = &[libc::CLONE_FS as u32];
const PRCTL_OPS: &[u32] = &[
    libc::PR_SET_NAME as u32,
    libc::PR_GET_NAME as u32,
    libc::PR_CAPBSET_READ as u32,
    0x5356_4d41, // PR_SET_VMA (glibc names its heap arenas)
];
/// Namespace and tracing flags a thread clone must not carry.
const CLONE_FORBIDDEN: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_PTRACE
    | libc::CLONE_UNTRACED) as u32;

/// Every syscall the sandboxed daemon makes after the filter is in place:
/// the ops (on fds and names), credentials, threads, memory, signals,
/// time and the /dev/fuse channels. No exec, mount, namespace, ptrace,
/// bpf, module, reboot, socket or keyring call is in it.
fn allowlist() -> Vec<Rule> {
    let mut v = file_rules();
    v.extend(process_rules());
    // Legacy calls glibc and std still make on x86_64.
    #[cfg(target_arch = "x86_64")]
    {
        use libc::*;
        use Rule::*;
        v.extend([
            Any(SYS_open),
            Any(SYS_stat),
            Any(SYS_lstat),
            Any(SYS_readlink),
            Any(SYS_access),
            Any(SYS_poll),
            Any(SYS_getdents),
            Any(SYS_arch_prctl),
            Any(SYS_dup2),
            Any(SYS_renameat),
        ]);
    }
    v
}

/// The ops' calls: I/O, files by fd and single names, xattrs, FUSE ioctls.
fn file_rules() -> Vec<Rule> {
    use libc::*;
    use Rule::*;
    vec![
        // I/O on open files, /dev/fuse and splice pipes.
        Any(SYS_read),
        Any(SYS_write),
        Any(SYS_readv),
        Any(SYS_writev),
        Any(SYS_pread64),
        Any(SYS_pwrite64),
        Any(SYS_preadv),
        Any(SYS_pwritev),
        Any(SYS_preadv2),
        Any(SYS_pwritev2),
        Any(SYS_splice),
        Any(SYS_pipe2),
        Any(SYS_lseek),
        Any(SYS_copy_file_range),
        Any(SYS_fallocate),
        Any(SYS_ftruncate),
        Any(SYS_fsync),
        Any(SYS_fdatasync),
        Any(SYS_syncfs),
        Any(SYS_fadvise64),
        // Files by fd and single names.
        Any(SYS_openat),
        Any(SYS_close),
        Any(SYS_dup),
        Any(SYS_dup3),
        Any(SYS_fcntl),
        Any(SYS_flock),
        Any(SYS_statx),
        Any(SYS_newfstatat),
        Any(SYS_fstat),
        Any(SYS_statfs),
        Any(SYS_fstatfs),
        Any(SYS_getdents64),
        Any(SYS_name_to_handle_at),
        Any(SYS_open_by_handle_at),
        Any(SYS_mkdirat),
        Any(SYS_mknodat),
        Any(SYS_symlinkat),
        Any(SYS_linkat),
        Any(SYS_unlinkat),
        Any(SYS_renameat2),
        Any(SYS_readlinkat),
        Any(SYS_faccessat),
        Any(SYS_faccessat2),
        Any(SYS_fchmod),
        Any(SYS_fchmodat),
        Any(SYS_fchmodat2),
        Any(SYS_fchown),
        Any(SYS_fchownat),
        Any(SYS_utimensat),
        Any(SYS_getxattr),
        Any(SYS_lgetxattr),
        Any(SYS_fgetxattr),
        Any(SYS_setxattr),
        Any(SYS_lsetxattr),
        Any(SYS_fsetxattr),
        Any(SYS_listxattr),
        Any(SYS_llistxattr),
        Any(SYS_flistxattr),
        Any(SYS_removexattr),
        Any(SYS_lremovexattr),
        Any(SYS_fremovexattr),
        ArgIn(SYS_ioctl, 1, IOCTLS.to_vec()),
    ]
}

/// Credentials, threads, memory, signals and time.
fn process_rules() -> Vec<Rule> {
    use libc::*;
    use Rule::*;
    let getpid = || nix::unistd::getpid().as_raw();
    vec![
        // Credentials, per thread.
        Any(SYS_setresuid),
        Any(SYS_setresgid),
        Any(SYS_setgroups),
        Any(SYS_getuid),
        Any(SYS_geteuid),
        Any(SYS_getgid),
        Any(SYS_getegid),
        Any(SYS_getresuid),
        Any(SYS_getresgid),
        Any(SYS_getgroups),
        Any(SYS_umask),
        Any(SYS_capget),
        ArgIn(SYS_unshare, 0, UNSHARE_FLAGS.to_vec()),
        // Threads (workers, lock waiters), memory, signals, time.
        Errno(SYS_clone3, ENOSYS as u32), // glibc falls back to clone(2)
        ArgNoBits(SYS_clone, 0, CLONE_FORBIDDEN),
        Any(SYS_futex),
        Any(SYS_set_robust_list),
        Any(SYS_rseq),
        Any(SYS_sched_yield),
        Any(SYS_sched_getaffinity),
        Any(SYS_exit),
        Any(SYS_exit_group),
        Any(SYS_restart_syscall),
        Any(SYS_mmap),
        Any(SYS_munmap),
        Any(SYS_mprotect),
        Any(SYS_mremap),
        Any(SYS_madvise),
        Any(SYS_brk),
        Any(SYS_rt_sigaction),
        Any(SYS_rt_sigprocmask),
        Any(SYS_rt_sigreturn),
        Any(SYS_rt_sigtimedwait),
        Any(SYS_sigaltstack),
        // Signals only to our own threads (waking workers, abort).
        ArgIn(SYS_tgkill, 0, vec![getpid() as u32]),
        Any(SYS_getpid),
        Any(SYS_gettid),
        Any(SYS_clock_gettime),
        Any(SYS_clock_nanosleep),
        Any(SYS_nanosleep),
        Any(SYS_gettimeofday),
        Any(SYS_getrandom),
        Any(SYS_ppoll),
        Any(SYS_prlimit64),
        ArgIn(SYS_prctl, 0, PRCTL_OPS.to_vec()),
    ]
}

/// Number of syscalls the filter lets through (some with argument checks).
pub fn allowlist_len() -> usize {
    allowlist()
        .iter()
        .filter(|r| !matches!(r, Rule::Errno(..)))
        .count()
}

fn filter_program() -> Vec<libc::sock_filter> {
    let mut p: Vec<libc::sock_filter> = Vec::new();
    let stmt = |p: &mut Vec<libc::sock_filter>, code: u16, k: u32| {
        p.push(libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        })
    };
    let jump = |p: &mut Vec<libc::sock_filter>, code: u16, k: u32, jt: u8, jf: u8| {
        p.push(libc::sock_filter { code, jt, jf, k })
    };
    stmt(&mut p, BPF_LD_W_ABS, OFF_ARCH);
    jump(&mut p, BPF_JEQ_K, AUDIT_ARCH, 1, 0);
    stmt(&mut p, BPF_RET_K, SECCOMP_ACTION);
    stmt(&mut p, BPF_LD_W_ABS, OFF_NR);
    // Every block returns on every path, so the instruction after a block
    // is reached only by its skip jump, with the syscall number loaded.
    for r in allowlist() {
        match r {
            Rule::Any(nr) => {
                jump(&mut p, BPF_JEQ_K, nr as u32, 0, 1);
                stmt(&mut p, BPF_RET_K, SECCOMP_RET_ALLOW);
            }
            Rule::Errno(nr, e) => {
                jump(&mut p, BPF_JEQ_K, nr as u32, 0, 1);
                stmt(&mut p, BPF_RET_K, SECCOMP_RET_ERRNO | e);
            }
            Rule::ArgIn(nr, arg, values) => {
                let len = 1 + 2 * values.len() + 1;
                jump(&mut p, BPF_JEQ_K, nr as u32, 0, len as u8);
                stmt(&mut p, BPF_LD_W_ABS, off_arg(arg));
                for &v in &values {
                    jump(&mut p, BPF_JEQ_K, v, 0, 1);
                    stmt(&mut p, BPF_RET_K, SECCOMP_RET_ALLOW);
                }
                stmt(&mut p, BPF_RET_K, SECCOMP_ACTION);
            }
            Rule::ArgNoBits(nr, arg, mask) => {
                jump(&mut p, BPF_JEQ_K, nr as u32, 0, 4);
                stmt(&mut p, BPF_LD_W_ABS, off_arg(arg));
                jump(&mut p, BPF_JSET_K, mask, 0, 1);
                stmt(&mut p, BPF_RET_K, SECCOMP_ACTION);
                stmt(&mut p, BPF_RET_K, SECCOMP_RET_ALLOW);
            }
        }
    }
    stmt(&mut p, BPF_RET_K, SECCOMP_ACTION);
    p
}

/// Sets no_new_privs and installs the filter for every thread of the
/// process (TSYNC; call it before the workers start anyway).
pub fn install_seccomp() -> io::Result<usize> {
    let prog = filter_program();
    nix::sys::prctl::set_no_new_privs().map_err(|e| context(e, "PR_SET_NO_NEW_PRIVS"))?;
    caps::install_filter_all_threads(&prog).map_err(|e| context(e, "seccomp"))?;
    Ok(prog.len())
}

// ---------------------------------------------------------------------
// Test hook: proves the filter is live in the worker threads.

static FORBIDDEN_SYSCALL_HOOK: AtomicBool = AtomicBool::new(false);

/// The xattr name the hook answers when enabled.
pub const FORBIDDEN_SYSCALL_XATTR: &[u8] = b"user.passthroughfs.test-forbidden-syscall";

/// Enables the hook (hidden CLI flag `--test-forbidden-syscall`, used only
/// by tests/sandbox.rs). Without it the name above is an ordinary xattr.
pub fn enable_forbidden_syscall_hook() {
    FORBIDDEN_SYSCALL_HOOK.store(true, Ordering::Relaxed);
}

/// GETXATTR of [`FORBIDDEN_SYSCALL_XATTR`] with the hook enabled makes a
/// syscall outside the allowlist (`personality(0xffffffff)`, a harmless
/// query) and answers "survived" if the process is still alive after it.
pub fn forbidden_syscall_hook(name: &CStr, buf: &mut [u8]) -> Option<io::Result<usize>> {
    if !FORBIDDEN_SYSCALL_HOOK.load(Ordering::Relaxed) || name.to_bytes() != FORBIDDEN_SYSCALL_XATTR
    {
        return None;
    }
    // personality(0xffffffff) only reads the persona.
    if let Err(e) = nix::sys::personality::get() {
        return Some(Err(e.into()));
    }
    const VALUE: &[u8] = b"survived";
    if buf.is_empty() {
        return Some(Ok(VALUE.len()));
    }
    if buf.len() < VALUE.len() {
        return Some(Err(io::Error::from_raw_os_error(libc::ERANGE)));
    }
    buf[..VALUE.len()].copy_from_slice(VALUE);
    Some(Ok(VALUE.len()))
}

// ---------------------------------------------------------------------
// The supervisor.

/// Frames of the stats pipe: a little-endian u32 length, then JSON.
pub fn send_stats(pipe: &std::fs::File, json: &str) {
    use std::io::Write;
    let mut w = pipe;
    let mut msg = (json.len() as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(json.as_bytes());
    if let Err(e) = w.write_all(&msg) {
        warn!("cannot send stats to the supervisor: {e}");
    }
}

/// Is `mnt` a mount point in our namespace (read from mountinfo: no stat
/// of a FUSE mount whose daemon may be gone).
fn mounted(mnt: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn unmount(m: &Mount) {
    match m.unmount(false) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            warn!("{} is busy; detaching it lazily", m.mountpoint().display());
            if let Err(e) = m.unmount(true) {
                warn!("unmount failed: {e}");
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => warn!("unmount failed: {e}"),
    }
}

/// The supervisor's loop (see the module doc). Returns the worker
/// process's exit code (128 + signal if it was killed).
pub fn supervise(
    child: Pid,
    m: Mount,
    stats_rx: OwnedFd,
    groups: std::os::unix::net::UnixStream,
    stats: Option<PathBuf>,
) -> i32 {
    let mut groups = Some(groups);
    let mut rx = std::fs::File::from(stats_rx);
    set_nonblocking(&rx, true);
    let mut buf: Vec<u8> = Vec::new();
    let mut open = true;
    let set = crate::fuse::session::daemon_signal_set();
    let status = loop {
        let [_, groups_ready] = poll_readable(
            [open.then(|| rx.as_fd()), groups.as_ref().map(|g| g.as_fd())],
            50,
        );
        if open {
            open = drain(&mut rx, &mut buf);
            write_frames(&mut buf, stats.as_deref());
        }
        if groups_ready {
            if let Some(g) = groups.as_mut() {
                if !answer_groups(g) {
                    groups = None;
                }
            }
        }
        match crate::sys::signal::sigtimedwait(&set, Duration::ZERO) {
            Some(libc::SIGUSR1) => {
                let _ = kill(child, Signal::SIGUSR1);
            }
            Some(sig @ (libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT)) => {
                // As the unsandboxed daemon does: unmount (lazily if
                // busy), then stop the workers without waiting for the
                // last user of a lazy unmount.
                info!("signal {sig}: unmounting");
                unmount(&m);
                let _ = kill(child, Signal::SIGTERM);
            }
            _ => {}
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Err(sig as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                error!("waitpid: {}", io::Error::from(e));
                break Ok(1);
            }
        }
    };
    // The last stats come before the worker's exit.
    if open {
        set_nonblocking(&rx, false);
        drain(&mut rx, &mut buf);
        write_frames(&mut buf, stats.as_deref());
    }
    if mounted(m.mountpoint()) {
        unmount(&m);
    }
    match status {
        Err(s) => {
            if s == libc::SIGSYS {
                error!("the sandboxed daemon (pid {child}) made a syscall outside its seccomp allowlist and was killed (SIGSYS); unmounted");
            } else {
                error!("the sandboxed daemon (pid {child}) was killed by signal {s}; unmounted");
            }
            128 + s
        }
        Ok(code) => code,
    }
}

/// O_NONBLOCK on or off (best effort: a failure only makes a read block).
fn set_nonblocking(f: &std::fs::File, on: bool) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Ok(fl) = fcntl(f, FcntlArg::F_GETFL) {
        let mut fl = OFlag::from_bits_retain(fl);
        fl.set(OFlag::O_NONBLOCK, on);
        let _ = fcntl(f, FcntlArg::F_SETFL(fl));
    }
}

/// Waits up to `ms` for the given fds (None: skipped) to become readable;
/// which ones are (or hung up).
fn poll_readable<const N: usize>(fds: [Option<BorrowedFd<'_>>; N], ms: u16) -> [bool; N] {
    use nix::poll::{poll, PollFd, PollFlags};
    let which: Vec<usize> = (0..N).filter(|&i| fds[i].is_some()).collect();
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .flatten()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let mut out = [false; N];
    if poll(&mut pfds, ms).is_ok() {
        for (k, p) in pfds.iter().enumerate() {
            out[which[k]] = p.revents().is_some_and(|r| !r.is_empty());
        }
    }
    out
}

/// Answers one group query of the sandboxed process (see
/// `credentials::read_proc_groups`); false once the socket is closed.
fn answer_groups(g: &mut std::os::unix::net::UnixStream) -> bool {
    use std::io::Write;
    let mut pid = [0u8; 4];
    if g.read_exact(&mut pid).is_err() {
        return false;
    }
    let groups = crate::credentials::read_proc_groups(u32::from_le_bytes(pid));
    let mut out = Vec::new();
    match groups {
        Some(v) => {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            for gid in v {
                out.extend_from_slice(&gid.to_le_bytes());
            }
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    g.write_all(&out).is_ok()
}

/// Reads what is there; false at end of file.
fn drain(rx: &mut std::fs::File, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    loop {
        match rx.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn write_frames(buf: &mut Vec<u8>, path: Option<&Path>) {
    while buf.len() >= 4 {
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            return;
        }
        let json = String::from_utf8_lossy(&buf[4..4 + len]).into_owned();
        buf.drain(..4 + len);
        crate::stats::write_json(path, &json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(nr: libc::c_long) -> bool {
        allowlist().iter().any(|r| match r {
            Rule::Any(n) | Rule::ArgIn(n, ..) | Rule::ArgNoBits(n, ..) => *n == nr,
            Rule::Errno(..) => false,
        })
    }

    #[test]
    fn allowlist_keeps_out_what_a_subverted_daemon_would_want() {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_kill,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kexec_load,
            libc::SYS_keyctl,
            libc::SYS_perf_event_open,
            libc::SYS_io_uring_setup,
            libc::SYS_personality,
            libc::SYS_capset,
            libc::SYS_seccomp,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!allowed(nr), "syscall {nr} is allowed");
        }
        assert!(allowed(libc::SYS_open_by_handle_at));
        assert!(allowed(libc::SYS_setresuid));
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = filter_program();
        assert!(p.len() < 4096, "BPF_MAXINSNS");
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(),
                    "jump at {i}"
                );
            }
        }
        assert_eq!(
            p.last().map(|i| (i.code, i.k)),
            Some((BPF_RET_K, SECCOMP_ACTION))
        );
    }
}
