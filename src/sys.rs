//! Thin, safe wrappers over the syscalls the daemon uses.
//!
//! All `unsafe` of the filesystem side lives here, one call per function,
//! each with the reason it is sound. Everything works relative to file
//! descriptors: names are single path components checked by the caller, and
//! `AT_EMPTY_PATH` forms act on the fd itself, so no path string from a
//! request ever reaches the kernel as a path.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub type Result<T> = std::result::Result<T, io::Error>;

fn check(r: libc::c_int) -> Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: isize) -> Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn owned(fd: libc::c_int) -> Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const EMPTY: &CStr = c"";

/// openat(2) of one name relative to `dir`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned fd is checked.
    owned(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })
}

/// statx(2) of the fd itself (`AT_EMPTY_PATH`), never following a symlink.
pub fn statx(fd: BorrowedFd<'_>, mask: u32) -> Result<libc::statx> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT;
    // SAFETY: `st` is a valid output buffer for one statx.
    check(unsafe { libc::statx(fd.as_raw_fd(), EMPTY.as_ptr(), flags, mask, st.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and then filled by the kernel.
    Ok(unsafe { st.assume_init() })
}

/// statx(2) of one name in `dir`, never following a symlink.
pub fn statx_at(dir: BorrowedFd<'_>, name: &CStr, mask: u32) -> Result<libc::statx> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT;
    // SAFETY: `st` is a valid output buffer; `name` is NUL-terminated.
    check(unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, mask, st.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and then filled by the kernel.
    Ok(unsafe { st.assume_init() })
}

/// fstatfs(2).
pub fn fstatfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: valid output buffer. fstatvfs works on O_PATH fds.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the call.
    Ok(unsafe { st.assume_init() })
}

/// Largest handle the kernel hands out (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// name_to_handle_at(fd, "", AT_EMPTY_PATH): `(type, bytes, mount_id)`.
pub fn name_to_handle(fd: BorrowedFd<'_>) -> Result<(i32, Vec<u8>, i32)> {
    let mut h = RawFileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` has room for MAX_HANDLE_SZ bytes as announced in
    // handle_bytes; `mount_id` is a valid int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            &mut h as *mut RawFileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.handle_type, h.f_handle[..n].to_vec(), mount_id))
}

/// open_by_handle_at(2). Needs CAP_DAC_READ_SEARCH: call it with the
/// daemon's own credentials, never inside a per-request credential switch.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
    flags: i32,
) -> Result<OwnedFd> {
    let mut h = RawFileHandle {
        handle_bytes: bytes.len().min(MAX_HANDLE_SZ) as u32,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    h.f_handle[..h.handle_bytes as usize].copy_from_slice(&bytes[..h.handle_bytes as usize]);
    // SAFETY: `h` is a valid file_handle of the announced size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut h as *mut RawFileHandle,
            flags | libc::O_CLOEXEC,
        )
    };
    owned(r as libc::c_int)
}

/// Reopens an O_PATH fd as a real open file through `/proc/self/fd/N`
/// (relative to a dirfd of /proc/self/fd opened at start-up). Only for
/// regular files and directories: the magic link of a symlink would be
/// followed.
pub fn reopen(proc_self_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd> {
    let name = fd_name(fd.as_raw_fd());
    let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
    // SAFETY: `name` is NUL-terminated; result checked.
    owned(unsafe {
        libc::openat(
            proc_self_fd.as_raw_fd(),
            name.as_ptr().cast(),
            flags | libc::O_CLOEXEC,
        )
    })
}

/// "N\0" for a file descriptor number, without allocating.
pub fn fd_name(fd: RawFd) -> [u8; 12] {
    let mut out = [0u8; 12];
    let mut digits = [0u8; 11];
    let mut n = fd.max(0) as u32;
    let mut i = 0;
    loop {
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    for j in 0..i {
        out[j] = digits[i - 1 - j];
    }
    out
}

/// readlinkat(fd, "").
pub fn readlink(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = check_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    // SAFETY: NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> Result<()> {
    // SAFETY: NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// linkat(fd, "", dir, name, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH.
pub fn link_empty_path(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // SAFETY: NUL-terminated strings.
    check(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// linkat through /proc/self/fd/N with AT_SYMLINK_FOLLOW: needs no
/// capability, works for regular files.
pub fn link_proc(
    proc_self_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> Result<()> {
    let src = fd_name(fd.as_raw_fd());
    // SAFETY: NUL-terminated strings.
    check(unsafe {
        libc::linkat(
            proc_self_fd.as_raw_fd(),
            src.as_ptr().cast(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<()> {
    // SAFETY: NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<()> {
    // SAFETY: NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW); -1 keeps a field.
pub fn fchown_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: empty NUL-terminated path.
    check(unsafe { libc::fchownat(fd.as_raw_fd(), EMPTY.as_ptr(), uid, gid, flags) }).map(drop)
}

/// fchmodat2(fd, "", mode, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) (Linux 6.6+).
pub fn fchmod_empty(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: empty NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            mode,
            flags,
        )
    };
    check(r as libc::c_int).map(drop)
}

/// fchmod(2) of an open (non-O_PATH) file.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// utimensat(fd, "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW).
pub fn utimens_empty(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: `times` points at two timespecs.
    check(unsafe { libc::utimensat(fd.as_raw_fd(), EMPTY.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// faccessat2(fd, "", mask, AT_EMPTY_PATH | AT_EACCESS): checks with the
/// effective (switched) ids.
pub fn access_empty(fd: BorrowedFd<'_>, mask: i32) -> Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: empty NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            mask,
            flags,
        )
    };
    check(r as libc::c_int).map(drop)
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    check_size(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })
}

/// Reads like read(2) on a regular file: short only at end of file (or
/// after an error once some bytes are in; an error before any is returned).
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// pwritev2 with optional RWF_APPEND (for O_APPEND writers).
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64, append: bool) -> Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    let (off, flags) = if append {
        (-1, libc::RWF_APPEND)
    } else {
        (off as libc::off_t, 0)
    };
    // SAFETY: one iovec over a live buffer.
    check_size(unsafe { libc::pwritev2(fd.as_raw_fd(), &iov, 1, off, flags) })
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    // SAFETY: plain syscalls.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
        .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, off: u64, whence: i32) -> Result<u64> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> Result<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: explicit offsets (the fds' own positions are untouched).
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    })
}

pub fn flock(fd: BorrowedFd<'_>, op: i32) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// fcntl(F_OFD_GETLK / F_OFD_SETLK / F_OFD_SETLKW).
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: i32, lk: &mut libc::flock) -> Result<()> {
    // SAFETY: `lk` is a valid struct flock for the duration of the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lk as *mut libc::flock) }).map(drop)
}

/// close(dup(fd)): reports errors a close would (FLUSH semantics).
pub fn flush(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: dup of a live fd; the duplicate is closed exactly once here.
    let d = check(unsafe { libc::dup(fd.as_raw_fd()) })?;
    // SAFETY: `d` is ours.
    check(unsafe { libc::close(d) }).map(drop)
}

pub fn syncfs(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

/// getdents64 into `buf`; returns bytes filled (0 at the end).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    check_size(r as isize)
}

/// Set by `--sandbox`: the daemon's root is then SOURCE, which has no
/// /proc, and /proc/self is reached as the current directory instead (every
/// thread's cwd is a bind mount of /proc/PID made before pivot_root; see
/// `sandbox.rs`).
static PROC_SELF_IS_CWD: AtomicBool = AtomicBool::new(false);

/// Called by the sandbox once the cwd is /proc/self (before any worker).
pub fn set_proc_self_is_cwd() {
    PROC_SELF_IS_CWD.store(true, Ordering::Relaxed);
}

/// The path of `rest` under /proc/self: `/proc/self/rest`, or `rest`
/// (relative to the cwd) in the sandbox.
pub fn proc_self(rest: &str) -> String {
    if PROC_SELF_IS_CWD.load(Ordering::Relaxed) {
        rest.to_string()
    } else {
        format!("/proc/self/{rest}")
    }
}

/// An O_PATH dirfd of /proc/self/fd (for [`reopen`]).
pub fn open_proc_self_fd() -> Result<OwnedFd> {
    let p = std::ffi::CString::new(proc_self("fd"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; result checked.
    owned(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })
}

/// The `/proc/self/fd/N` path of an fd (`fd/N` in the sandbox),
/// NUL-terminated.
fn proc_path(fd: BorrowedFd<'_>) -> [u8; 26] {
    let mut p = [0u8; 26];
    let prefix: &[u8] = if PROC_SELF_IS_CWD.load(Ordering::Relaxed) {
        b"fd/"
    } else {
        b"/proc/self/fd/"
    };
    p[..prefix.len()].copy_from_slice(prefix);
    let n = fd_name(fd.as_raw_fd());
    let len = n.iter().position(|&b| b == 0).unwrap_or(0);
    p[prefix.len()..prefix.len() + len].copy_from_slice(&n[..len]);
    p
}

// Extended attributes of an inode given by its O_PATH fd. fgetxattr and the
// *xattrat syscalls refuse O_PATH fds, so these go through the fd's magic
// link: resolving /proc/self/fd/N lands on the inode itself (a symlink is
// not followed further, a FIFO or device is not opened).

pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> Result<usize> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path and name; `buf` valid for its length.
    check_size(unsafe {
        libc::getxattr(
            p.as_ptr().cast(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path and name; `value` valid for its length.
    check(unsafe {
        libc::setxattr(
            p.as_ptr().cast(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated path; `buf` valid for its length.
    check_size(unsafe { libc::listxattr(p.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::removexattr(p.as_ptr().cast(), name.as_ptr()) }).map(drop)
}

/// Per-thread credential switches. glibc's setresuid & co. change every
/// thread of the process (POSIX semantics via a signal broadcast); the raw
/// syscalls change only the calling thread, which is what a worker wants.
pub mod thread_creds {
    use super::*;

    pub fn set_euid(uid: u32) -> Result<()> {
        // SAFETY: plain syscall; -1 keeps the real and saved ids.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) };
        check(r as libc::c_int).map(drop)
    }

    pub fn set_egid(gid: u32) -> Result<()> {
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32) };
        check(r as libc::c_int).map(drop)
    }

    pub fn set_groups(groups: &[u32]) -> Result<()> {
        // SAFETY: pointer and length describe a live slice of gid_t.
        let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        check(r as libc::c_int).map(drop)
    }

    /// The calling thread's supplementary groups.
    pub fn groups() -> Result<Vec<u32>> {
        // SAFETY: size query with a null buffer.
        let n = check(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
        let mut v = vec![0u32; n as usize];
        // SAFETY: `v` has room for `n` gids.
        let n = check(unsafe { libc::getgroups(n, v.as_mut_ptr()) })?;
        v.truncate(n as usize);
        Ok(v)
    }

    pub fn euid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() }
    }

    pub fn egid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::getegid() }
    }

    /// Sets this thread's umask (after `unshare(CLONE_FS)`, per thread).
    pub fn umask(mask: u32) -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::umask(mask as libc::mode_t) as u32 }
    }

    /// Gives the calling thread its own cwd/root/umask.
    pub fn unshare_fs() -> Result<()> {
        // SAFETY: plain syscall.
        check(unsafe { libc::unshare(libc::CLONE_FS) }).map(drop)
    }
}

/// RLIMIT_NOFILE: raises the soft limit to the hard limit; returns it.
pub fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit buffer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let new = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    rl.rlim_cur
}

/// The system's page size (4096 if it cannot be had).
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u32
    } else {
        4096
    }
}

/// Number of fds this process has open (entries of /proc/self/fd).
pub fn count_open_fds() -> usize {
    std::fs::read_dir(proc_self("fd"))
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// `ioctl(fd, request, arg)` with a pointer argument.
///
/// # Safety
/// `arg` must point at memory of the size and direction `request` encodes.
pub unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: u64, arg: *mut T) -> Result<libc::c_int> {
    // SAFETY: forwarded to the caller.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names() {
        assert_eq!(&fd_name(0)[..2], b"0\0");
        assert_eq!(&fd_name(12345)[..6], b"12345\0");
        assert_eq!(&fd_name(i32::MAX)[..11], b"2147483647\0");
    }
}
