//! Thin, safe wrappers over the syscalls the daemon uses.
//!
//! The project calls syscalls through `nix` wherever nix has the call; what
//! nix lacks (or offers only as `unsafe`) is wrapped here, by job:
//! file-system calls in this file, /dev/fuse ioctls in [`fuse_dev`], fork
//! and start-up clean-up in [`process`], signal handlers in [`signal`],
//! capabilities and seccomp in [`caps`], the io_uring SQE field in
//! [`uring`]. Every `unsafe` of the daemon outside the wire layer's buffer
//! handling lives in this directory, one call per function, each with the
//! reason it is sound. Everything works relative to file
//! descriptors: names are single path components checked by the caller, and
//! `AT_EMPTY_PATH` forms act on the fd itself, so no path string from a
//! request ever reaches the kernel as a path.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

pub mod caps;
pub mod fd_slot;
pub mod fuse_dev;
pub mod process;
pub mod signal;
pub mod uring;

pub use process::malloc_trim;

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

/// A nix result as an io result (same errno).
fn io<T>(r: nix::Result<T>) -> Result<T> {
    r.map_err(io::Error::from)
}

fn owned(fd: libc::c_int) -> Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const EMPTY: &CStr = c"";

/// openat(2) of one name relative to `dir`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let flags = OFlag::from_bits_retain(flags | libc::O_CLOEXEC);
    io(nix::fcntl::openat(
        dir,
        name,
        flags,
        Mode::from_bits_retain(mode),
    ))
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

/// statx(2) of a path (relative to the cwd), never following a final
/// symlink: for start-up checks of the mount point, not for requests.
pub fn statx_path(path: &CStr, mask: u32) -> Result<libc::statx> {
    let mut st = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `st` is a valid output buffer; `path` is NUL-terminated.
    check(unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            mask,
            st.as_mut_ptr(),
        )
    })?;
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

/// The filesystem type of `fd` (`statfs.f_type`, its magic number, as the
/// kernel's 32 bits).
pub fn fs_type(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid output buffer. fstatfs works on O_PATH fds.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: filled by the call.
    let st = unsafe { st.assume_init() };
    Ok(st.f_type as u64 as u32)
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
    openat(proc_self_fd, fd_cstr(&name), flags, 0)
}

/// The C string in a buffer of [`fd_name`].
fn fd_cstr(name: &[u8; 12]) -> &CStr {
    CStr::from_bytes_until_nul(name).unwrap_or(c"")
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
    use std::os::unix::ffi::OsStringExt;
    io(nix::fcntl::readlinkat(fd, EMPTY)).map(|t| t.into_vec())
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    io(nix::sys::stat::mkdirat(
        dir,
        name,
        Mode::from_bits_retain(mode),
    ))
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> Result<()> {
    let kind = SFlag::from_bits_retain(mode & libc::S_IFMT);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    io(nix::sys::stat::mknodat(dir, name, kind, perm, rdev))
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    io(nix::unistd::symlinkat(target, dir, name))
}

/// linkat(fd, "", dir, name, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH.
pub fn link_empty_path(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    io(nix::unistd::linkat(
        fd,
        EMPTY,
        dir,
        name,
        AtFlags::AT_EMPTY_PATH,
    ))
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
    let flags = AtFlags::AT_SYMLINK_FOLLOW;
    io(nix::unistd::linkat(
        proc_self_fd,
        fd_cstr(&src),
        dir,
        name,
        flags,
    ))
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<()> {
    use nix::unistd::UnlinkatFlags;
    let flags = if flags & libc::AT_REMOVEDIR != 0 {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    io(nix::unistd::unlinkat(dir, name, flags))
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<()> {
    let flags = nix::fcntl::RenameFlags::from_bits_retain(flags);
    io(nix::fcntl::renameat2(olddir, old, newdir, new, flags))
}

/// fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW); -1 keeps a field.
pub fn fchown_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    use nix::unistd::{Gid, Uid};
    let uid = (uid != u32::MAX).then(|| Uid::from_raw(uid));
    let gid = (gid != u32::MAX).then(|| Gid::from_raw(gid));
    let flags = AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW;
    io(nix::unistd::fchownat(fd, EMPTY, uid, gid, flags))
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
    io(nix::sys::stat::fchmod(fd, Mode::from_bits_retain(mode)))
}

/// utimensat(fd, "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW).
pub fn utimens_empty(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: `times` points at two timespecs.
    check(unsafe { libc::utimensat(fd.as_raw_fd(), EMPTY.as_ptr(), times.as_ptr(), flags) })
        .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    io(nix::unistd::ftruncate(fd, size as libc::off_t))
}

/// faccessat2(fd, "", mask, AT_EMPTY_PATH | AT_EACCESS): checks with the
/// effective (switched) ids.
pub fn access_empty(fd: BorrowedFd<'_>, mask: i32) -> Result<()> {
    let mask = nix::unistd::AccessFlags::from_bits_retain(mask);
    let flags = AtFlags::AT_EMPTY_PATH | AtFlags::AT_EACCESS | AtFlags::AT_SYMLINK_NOFOLLOW;
    io(nix::unistd::faccessat(fd, EMPTY, mask, flags))
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<usize> {
    io(nix::sys::uio::pread(fd, buf, off as libc::off_t))
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
    if datasync {
        io(nix::unistd::fdatasync(fd))
    } else {
        io(nix::unistd::fsync(fd))
    }
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> Result<()> {
    let mode = nix::fcntl::FallocateFlags::from_bits_retain(mode);
    io(nix::fcntl::fallocate(
        fd,
        mode,
        off as libc::off_t,
        len as libc::off_t,
    ))
}

pub fn lseek(fd: BorrowedFd<'_>, off: u64, whence: i32) -> Result<u64> {
    use nix::unistd::Whence;
    let whence = match whence {
        libc::SEEK_SET => Whence::SeekSet,
        libc::SEEK_CUR => Whence::SeekCur,
        libc::SEEK_END => Whence::SeekEnd,
        libc::SEEK_DATA => Whence::SeekData,
        libc::SEEK_HOLE => Whence::SeekHole,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    io(nix::unistd::lseek(fd, off as libc::off_t, whence)).map(|r| r as u64)
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
    // Explicit offsets: the fds' own positions are untouched.
    io(nix::fcntl::copy_file_range(
        fd_in,
        Some(&mut oi),
        fd_out,
        Some(&mut oo),
        len,
    ))
}

pub fn flock(fd: BorrowedFd<'_>, op: i32) -> Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// A `struct flock` with every field 0 (l_pid must be 0 for OFD locks).
pub fn empty_flock() -> libc::flock {
    // SAFETY: flock is plain old data; zero is valid for every field.
    unsafe { std::mem::zeroed() }
}

/// fcntl(F_OFD_GETLK / F_OFD_SETLK / F_OFD_SETLKW).
pub fn ofd_lock(fd: BorrowedFd<'_>, cmd: i32, lk: &mut libc::flock) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let arg = match cmd {
        libc::F_OFD_GETLK => FcntlArg::F_OFD_GETLK(lk),
        libc::F_OFD_SETLK => FcntlArg::F_OFD_SETLK(lk),
        libc::F_OFD_SETLKW => FcntlArg::F_OFD_SETLKW(lk),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    io(fcntl(fd, arg)).map(drop)
}

/// close(dup(fd)): reports errors a close would (FLUSH semantics).
pub fn flush(fd: BorrowedFd<'_>) -> Result<()> {
    let d = io(nix::unistd::dup(fd))?;
    io(nix::unistd::close(d))
}

pub fn syncfs(fd: BorrowedFd<'_>) -> Result<()> {
    io(nix::unistd::syncfs(fd))
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

/// getdents64 into the spare capacity of `buf`, which it clears first (the
/// kernel overwrites what it returns: nothing is zeroed beforehand).
/// Returns the bytes filled (0 at the end), which are then `buf`'s length.
pub fn getdents64_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> Result<usize> {
    buf.clear();
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is valid for writes of its length, and the kernel
    // writes nowhere else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            spare.as_mut_ptr(),
            spare.len(),
        )
    };
    let n = check_size(r as isize)?.min(buf.capacity());
    // SAFETY: the kernel initialised the first `n` bytes (it never returns
    // more than it was given room for, and `n` is capped by the capacity).
    unsafe { buf.set_len(n) };
    Ok(n)
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
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    io(nix::fcntl::open(
        proc_self("fd").as_str(),
        flags,
        Mode::empty(),
    ))
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
        io(nix::unistd::getgroups()).map(|v| v.into_iter().map(|g| g.as_raw()).collect())
    }

    pub fn euid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    pub fn egid() -> u32 {
        nix::unistd::getegid().as_raw()
    }

    /// Sets this thread's umask (after `unshare(CLONE_FS)`, per thread).
    pub fn umask(mask: u32) -> u32 {
        nix::sys::stat::umask(Mode::from_bits_retain(mask)).bits()
    }

    /// Gives the calling thread its own cwd/root/umask.
    pub fn unshare_fs() -> Result<()> {
        io(nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS))
    }
}

/// RLIMIT_NOFILE: raises the soft limit to the hard limit; returns it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((cur, max)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if cur < max && setrlimit(Resource::RLIMIT_NOFILE, max, max).is_ok() {
        return max;
    }
    cur
}

/// The system's page size (4096 if it cannot be had).
pub fn page_size() -> u32 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u32,
        _ => 4096,
    }
}

/// Number of fds this process has open (entries of /proc/self/fd).
pub fn count_open_fds() -> usize {
    std::fs::read_dir(proc_self("fd"))
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// Receives one byte and one fd sent with SCM_RIGHTS on `sock` (retrying
/// on EINTR). `Ok(None)`: the peer closed or sent no fd.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut cbuf = nix::cmsg_space!(RawFd);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cbuf),
            MsgFlags::empty(),
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if msg.bytes == 0 {
            return Ok(None);
        }
        let mut fds: Vec<RawFd> = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(v) = c {
                fds.extend(v);
            }
        }
        let mut it = fds.into_iter().filter(|&fd| fd >= 0);
        // SAFETY: fds received with SCM_RIGHTS were installed in this
        // process by the kernel for us and are owned by nobody else.
        let first = it.next().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        for extra in it {
            // SAFETY: as above; extra fds are closed, not leaked.
            drop(unsafe { OwnedFd::from_raw_fd(extra) });
        }
        return Ok(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn recv_fd_takes_the_fd_sent() {
        use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage};
        use nix::sys::socket::{MsgFlags, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fds = [f.as_raw_fd()];
        let iov = [io::IoSlice::new(b"x")];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        let got = recv_fd(b.as_fd()).unwrap().expect("an fd");
        assert_ne!(got.as_raw_fd(), f.as_raw_fd());
        let st = statx(got.as_fd(), libc::STATX_INO).unwrap();
        let want = statx(f.as_fd(), libc::STATX_INO).unwrap();
        assert_eq!(st.stx_ino, want.stx_ino, "the same file");
        // A byte without an fd, then the peer gone.
        nix::unistd::write(&a, b"y").unwrap();
        assert!(recv_fd(b.as_fd()).unwrap().is_none());
        drop(a);
        assert!(recv_fd(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn getdents64_into_fills_only_what_the_kernel_returned() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            std::fs::write(dir.path().join(format!("file-{i:03}")), b"").unwrap();
        }
        let d = std::fs::File::open(dir.path()).unwrap();
        // Room for a few records per call: many calls, each refilling.
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0xAA; 100]);
        let mut names = Vec::new();
        loop {
            let n = getdents64_into(d.as_fd(), &mut buf).unwrap();
            assert_eq!(buf.len(), n);
            assert!(buf.capacity() >= 256 && n <= 256);
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos < n {
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                let name = std::ffi::CStr::from_bytes_until_nul(&buf[pos + 19..pos + reclen]);
                names.push(name.unwrap().to_str().unwrap().to_owned());
                pos += reclen;
            }
            assert_eq!(pos, n, "whole records only");
        }
        names.sort();
        assert_eq!(names.len(), 202, "200 files, . and ..");
        assert_eq!((&names[0][..], &names[2][..]), (".", "file-000"));
        // No room at all: an error (EINVAL), not a write past the buffer.
        let d = std::fs::File::open(dir.path()).unwrap();
        let mut none = Vec::new();
        assert!(getdents64_into(d.as_fd(), &mut none).is_err());
        assert!(none.is_empty());
    }

    #[test]
    fn fs_type_is_the_magic_number() {
        let proc = std::fs::File::open("/proc/self").unwrap();
        assert_eq!(fs_type(proc.as_fd()).unwrap(), 0x9fa0, "PROC_SUPER_MAGIC");
        let c = std::ffi::CString::new("/proc").unwrap();
        let cwd = std::fs::File::open("/").unwrap();
        let opath = openat(cwd.as_fd(), &c, libc::O_PATH, 0).unwrap();
        assert_eq!(fs_type(opath.as_fd()).unwrap(), 0x9fa0, "an O_PATH fd too");
    }

    #[test]
    fn fd_names() {
        assert_eq!(&fd_name(0)[..2], b"0\0");
        assert_eq!(&fd_name(12345)[..6], b"12345\0");
        assert_eq!(&fd_name(i32::MAX)[..11], b"2147483647\0");
    }
}
