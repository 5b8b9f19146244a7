//! Zero-copy READ replies: the file's pages go to /dev/fuse through a pipe
//! (`splice`), without passing through a user buffer.
//!
//! Each worker thread keeps one pipe big enough for a whole reply. The
//! header goes into the pipe first, then the file data is spliced behind
//! it, then the whole message is spliced into the device in one go (the
//! device takes a reply only whole). A short read (end of file) means the
//! header's length is wrong: the pipe is read back and the reply written
//! the ordinary way. Any failure to set up the pipe, or a pipe found full
//! (EAGAIN) before anything went to the device, makes the caller copy.

use std::cell::RefCell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::unistd::{pipe2, read, sysconf, write, SysconfVar};

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
    let (r, w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let cap = fcntl(&w, FcntlArg::F_SETPIPE_SZ(want as libc::c_int))?;
    if (cap as usize) < want {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
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
        if !matches!(read(&p.r, &mut buf), Ok(n) if n > 0) {
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
    dev: BorrowedFd<'_>,
    unique: u64,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> Spliced {
    // A pipe holds buffers, not bytes: the header takes one, and each page
    // of the file the range touches another (an unaligned range of n pages
    // touches n + 1). A 1 MiB - 16 read (an O_DIRECT read into a buffer 16
    // bytes into its page) needs 257 buffers, one more than a 1 MiB pipe.
    let page = page_size();
    let slots = 1 + ((offset % page as u64) as usize + len).div_ceil(page);
    let want = (slots * page).next_power_of_two().max(64 * 1024);
    if want >= REFUSED.with(|r| r.get()) {
        return Spliced::Unavailable;
    }
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.cap / page < slots) {
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
        splice_reply(p, dev, unique, file, offset, len)
    })
}

fn page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => 4096,
    }
}

fn splice_reply(
    p: &Pipe,
    dev: BorrowedFd<'_>,
    unique: u64,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> Spliced {
    let header = OutHeader {
        len: (HEADER + len) as u32,
        error: 0,
        unique,
    };
    if write(&p.w, header.as_bytes()) != Ok(HEADER) {
        // Nothing has gone to the device: copy.
        drain(p);
        return Spliced::Unavailable;
    }
    let mut got = 0usize;
    let mut off = offset as libc::loff_t;
    while got < len {
        let flags = SpliceFFlags::SPLICE_F_MOVE;
        match splice(file, Some(&mut off), &p.w, None, len - got, flags) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            // The pipe is full after all (or the file would block):
            // nothing has gone to the device yet, so copy instead of
            // failing the read with EAGAIN.
            Err(Errno::EAGAIN) => {
                drain(p);
                return Spliced::Unavailable;
            }
            Err(e) => {
                drain(p);
                return Spliced::Sent(fallback_error(dev, unique, e.into()));
            }
        }
    }
    if got < len {
        return Spliced::Sent(short_read(p, dev, unique, got));
    }
    Spliced::Sent(move_to_dev(p, dev, len))
}

/// Splices the whole message (header and `len` bytes) from the pipe into
/// the device.
fn move_to_dev(p: &Pipe, dev: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let total = HEADER + len;
    let mut moved = 0;
    while moved < total {
        match splice(
            &p.r,
            None,
            dev,
            None,
            total - moved,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => break,
            Ok(n) => moved += n,
            Err(e) => {
                drain(p);
                return Err(e.into());
            }
        }
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
fn short_read(p: &Pipe, dev: BorrowedFd<'_>, unique: u64, got: usize) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER + got];
    let mut have = 0;
    while have < buf.len() {
        match read(&p.r, &mut buf[have..]) {
            Ok(n) if n > 0 => have += n,
            _ => {
                drain(p);
                return Err(io::Error::other("pipe read back"));
            }
        }
    }
    let header = OutHeader {
        len: (HEADER + got) as u32,
        error: 0,
        unique,
    };
    buf[..HEADER].copy_from_slice(header.as_bytes());
    if write(dev, &buf)? != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to /dev/fuse",
        ));
    }
    Ok(())
}

/// The file read failed before anything was sent: answer with its errno.
fn fallback_error(dev: BorrowedFd<'_>, unique: u64, e: io::Error) -> io::Result<()> {
    let errno = e
        .raw_os_error()
        .filter(|n| (1..=511).contains(n))
        .unwrap_or(libc::EIO);
    let header = OutHeader {
        len: HEADER as u32,
        error: -errno,
        unique,
    };
    if write(dev, header.as_bytes())? != HEADER {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to /dev/fuse",
        ));
    }
    Ok(())
}
