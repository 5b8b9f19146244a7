//! Zero-copy READ replies: the file's pages go to /dev/fuse through a pipe
//! (`splice`), without passing through a user buffer.
//!
//! Each worker thread keeps one pipe big enough for a whole reply. The
//! header goes into the pipe first, then the file data is spliced behind
//! it, then the whole message is spliced into the device in one go (the
//! device takes a reply only whole). A short read (end of file) means the
//! header's length is wrong: the pipe is read back and the reply written
//! the ordinary way. Any failure to set up the pipe makes the caller copy.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use zerocopy::IntoBytes;

use super::abi::OutHeader;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
    /// Smallest pipe size the kernel refused us: larger replies are copied.
    static REFUSED: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

const HEADER: usize = std::mem::size_of::<OutHeader>();

fn make_pipe(want: usize) -> io::Result<Pipe> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on our own fd.
    let cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want as libc::c_int) };
    if cap < 0 || (cap as usize) < want {
        return Err(io::Error::last_os_error());
    }
    Ok(Pipe {
        r,
        w,
        cap: cap as usize,
    })
}

/// Empties the pipe after a failure, so the next reply starts clean.
fn drain(p: &Pipe) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(p.r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// Outcome of [`send_read_reply`].
pub enum Spliced {
    /// The reply went out.
    Sent(io::Result<()>),
    /// Splicing is not possible here: copy instead.
    Unavailable,
}

/// Sends the reply to READ `unique`: up to `len` bytes of `file` from
/// `offset`, spliced. `dev` is the channel the request came from.
pub fn send_read_reply(
    dev: RawFd,
    unique: u64,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> Spliced {
    let want = (len + HEADER).next_power_of_two().max(64 * 1024);
    if want >= REFUSED.with(|r| r.get()) {
        return Spliced::Unavailable;
    }
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.cap < len + HEADER) {
            match make_pipe(want) {
                Ok(p) => *slot = Some(p),
                Err(_) => {
                    REFUSED.with(|r| r.set(want));
                    return Spliced::Unavailable;
                }
            }
        }
        let Some(p) = slot.as_ref() else {
            return Spliced::Unavailable;
        };
        Spliced::Sent(splice_reply(p, dev, unique, file, offset, len))
    })
}

fn splice_reply(
    p: &Pipe,
    dev: RawFd,
    unique: u64,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<()> {
    let header = OutHeader {
        len: (HEADER + len) as u32,
        error: 0,
        unique,
    };
    // SAFETY: writing 16 bytes from a live struct into our pipe.
    let n = unsafe { libc::write(p.w.as_raw_fd(), header.as_bytes().as_ptr().cast(), HEADER) };
    if n != HEADER as isize {
        drain(p);
        return Err(io::Error::other("pipe write"));
    }
    let mut got = 0usize;
    let mut off = offset as libc::loff_t;
    while got < len {
        // SAFETY: splice between our fds with an explicit file offset.
        let n = unsafe {
            libc::splice(
                file.as_raw_fd(),
                &mut off,
                p.w.as_raw_fd(),
                std::ptr::null_mut(),
                len - got,
                libc::SPLICE_F_MOVE,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            drain(p);
            return fallback_error(dev, unique, e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got < len {
        return short_read(p, dev, unique, got);
    }
    let total = HEADER + len;
    let mut moved = 0;
    while moved < total {
        // SAFETY: splice from our pipe into the device fd.
        let n = unsafe {
            libc::splice(
                p.r.as_raw_fd(),
                std::ptr::null_mut(),
                dev,
                std::ptr::null_mut(),
                total - moved,
                libc::SPLICE_F_MOVE,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            drain(p);
            return Err(e);
        }
        if n == 0 {
            break;
        }
        moved += n as usize;
    }
    if moved != total {
        drain(p);
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short splice to /dev/fuse",
        ));
    }
    Ok(())
}

/// Fewer bytes than asked (end of file): take the data back out of the
/// pipe and send an ordinary reply with the right length.
fn short_read(p: &Pipe, dev: RawFd, unique: u64, got: usize) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER + got];
    let mut have = 0;
    while have < buf.len() {
        // SAFETY: reading into the unfilled part of `buf`.
        let n = unsafe {
            libc::read(
                p.r.as_raw_fd(),
                buf[have..].as_mut_ptr().cast(),
                buf.len() - have,
            )
        };
        if n <= 0 {
            drain(p);
            return Err(io::Error::other("pipe read back"));
        }
        have += n as usize;
    }
    let header = OutHeader {
        len: (HEADER + got) as u32,
        error: 0,
        unique,
    };
    buf[..HEADER].copy_from_slice(header.as_bytes());
    // SAFETY: writing a live buffer to the device.
    let n = unsafe { libc::write(dev, buf.as_ptr().cast(), buf.len()) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The file read failed before anything was sent: answer with its errno.
fn fallback_error(dev: RawFd, unique: u64, e: io::Error) -> io::Result<()> {
    let errno = e
        .raw_os_error()
        .filter(|n| (1..=511).contains(n))
        .unwrap_or(libc::EIO);
    let header = OutHeader {
        len: HEADER as u32,
        error: -errno,
        unique,
    };
    // SAFETY: writing a live 16-byte header to the device.
    let n = unsafe { libc::write(dev, header.as_bytes().as_ptr().cast(), HEADER) };
    if n != HEADER as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
