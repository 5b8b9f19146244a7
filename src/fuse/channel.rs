//! The FUSE connection and its per-worker channels.
//!
//! A [`Connection`] is one mounted filesystem: the master /dev/fuse fd (used
//! for ioctls and notifications), what INIT negotiated, and the request
//! counters. A [`Channel`] is one /dev/fuse fd a worker reads requests from;
//! every worker gets its own clone (`FUSE_DEV_IOC_CLONE`), and a reply must
//! be written to the channel its request was read from, because the kernel
//! looks the `unique` up in that fd's own processing queue.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::abi::{self, InitFlags, Opcode};
use super::request::ParseConfig;
use super::uring::{EntrySink, TransportStats};

/// What INIT settled on; fixed for the life of the connection.
#[derive(Clone, Debug)]
pub struct Negotiated {
    /// Protocol minor in use (the smaller of ours and the kernel's).
    pub minor: u32,
    /// Flags the kernel offered.
    pub offered: InitFlags,
    /// Flags both sides agreed on.
    pub flags: InitFlags,
    pub max_write: u32,
    pub max_readahead: u32,
    pub max_pages: u16,
    pub max_stack_depth: u32,
}

impl Negotiated {
    pub fn has(&self, f: InitFlags) -> bool {
        self.flags.contains(f)
    }

    /// Entry replies carry a `fuse_entry_backing` (our kernel series).
    pub fn entry_backing(&self) -> bool {
        self.has(InitFlags::PASSTHROUGH_INO)
    }

    pub(crate) fn parse_config(&self) -> ParseConfig {
        ParseConfig {
            setxattr_ext: self.has(InitFlags::SETXATTR_EXT),
        }
    }
}

/// Per-opcode request counters: the daemon's proof of what passed through.
pub struct RequestCounters {
    counts: [AtomicU64; abi::MAX_OPCODE + 1],
    /// Requests with an opcode we do not know.
    unknown: AtomicU64,
    /// Requests that could not be parsed.
    malformed: AtomicU64,
    /// Requests answered with an error, per opcode.
    errors: [AtomicU64; abi::MAX_OPCODE + 1],
}

impl Default for RequestCounters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            unknown: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestCounters {
    pub(crate) fn count(&self, opcode: u32) {
        match Opcode::from_u32(opcode) {
            Some(op) => self.counts[op as usize].fetch_add(1, Ordering::Relaxed),
            None => self.unknown.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn count_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self, op: Opcode) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests of `op` answered with an error so far.
    pub fn errors(&self, op: Opcode) -> u64 {
        self.errors[op as usize].load(Ordering::Relaxed)
    }

    /// Requests of `op` received so far.
    pub fn get(&self, op: Opcode) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// `(opcode, count)` for every opcode seen at least once.
    pub fn snapshot(&self) -> Vec<(Opcode, u64)> {
        Opcode::ALL
            .iter()
            .map(|&op| (op, self.get(op)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// One mounted FUSE connection.
pub struct Connection {
    dev: OwnedFd,
    negotiated: OnceLock<Negotiated>,
    pub counters: RequestCounters,
    /// Which transport carries the requests (/dev/fuse or io_uring).
    pub transport: TransportStats,
}

impl Connection {
    pub(crate) fn new(dev: OwnedFd) -> Arc<Connection> {
        Arc::new(Connection {
            dev,
            negotiated: OnceLock::new(),
            counters: RequestCounters::default(),
            transport: TransportStats::default(),
        })
    }

    /// The master /dev/fuse fd: backing ioctls and notifications go here.
    pub fn dev_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    /// What INIT negotiated, once it has happened.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.get()
    }

    pub(crate) fn set_negotiated(&self, n: Negotiated) -> bool {
        self.negotiated.set(n).is_ok()
    }

    /// Opens a new /dev/fuse fd attached to this connection.
    pub(crate) fn clone_channel(self: &Arc<Self>) -> io::Result<Channel> {
        let fd = crate::sys::fuse_dev::open()?;
        crate::sys::fuse_dev::clone_channel(fd.as_fd(), self.dev.as_fd())?;
        Ok(Channel {
            sink: Sink::Dev(fd),
            conn: self.clone(),
        })
    }

    /// A channel on the master fd itself (single-threaded mode, tests).
    pub(crate) fn master_channel(self: &Arc<Self>) -> io::Result<Channel> {
        Ok(Channel {
            sink: Sink::Dev(self.dev.try_clone()?),
            conn: self.clone(),
        })
    }

    /// Tells the kernel its cached attributes of `nodeid` are stale (and,
    /// with `offset >= 0`, its cached pages from there). ENOENT (the kernel
    /// has no such inode cached) is success.
    pub fn notify_inval_inode(&self, nodeid: abi::NodeId, offset: i64, len: i64) -> io::Result<()> {
        use zerocopy::IntoBytes;
        let out = abi::NotifyInvalInodeOut {
            ino: nodeid,
            off: offset,
            len,
        };
        match self.notify(abi::NotifyCode::InvalInode, &[IoSlice::new(out.as_bytes())]) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Writes a notification (unique 0, `error` = the notify code).
    pub fn notify(&self, code: abi::NotifyCode, payload: &[IoSlice<'_>]) -> io::Result<()> {
        if self.negotiated().is_none() {
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        let len =
            std::mem::size_of::<abi::OutHeader>() + payload.iter().map(|s| s.len()).sum::<usize>();
        let header = abi::OutHeader {
            len: len as u32,
            error: code as i32,
            unique: 0,
        };
        write_message(self.dev.as_fd(), &header, payload)
    }
}

/// Where a worker reads requests and writes replies: one /dev/fuse fd, or
/// (FUSE-over-io_uring) the one ring entry a request arrived in.
pub struct Channel {
    sink: Sink,
    conn: Arc<Connection>,
}

enum Sink {
    /// A /dev/fuse fd (the master or a clone).
    Dev(OwnedFd),
    /// A ring entry of an io_uring queue.
    Ring(EntrySink),
}

impl Channel {
    pub(crate) fn ring(conn: Arc<Connection>, entry: EntrySink) -> Channel {
        Channel {
            sink: Sink::Ring(entry),
            conn,
        }
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// The /dev/fuse fd a READ reply may be spliced into (none for a ring
    /// entry: its reply is copied into the entry's buffer).
    pub(crate) fn splice_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.sink {
            Sink::Dev(fd) => Some(fd.as_fd()),
            Sink::Ring(_) => None,
        }
    }

    /// Reads one request. The kernel returns exactly one whole request per
    /// read, or fails if the buffer is too small for it.
    pub(crate) fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Sink::Dev(fd) = &self.sink else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        nix::unistd::read(fd, buf).map_err(io::Error::from)
    }

    /// Sends a reply: header plus payload in one writev, or into the ring
    /// entry the request came in (committed by its queue thread).
    pub(crate) fn send(&self, unique: u64, error: i32, payload: &[IoSlice<'_>]) -> io::Result<()> {
        let fd = match &self.sink {
            Sink::Dev(fd) => fd,
            Sink::Ring(entry) => return entry.send(unique, error, payload),
        };
        let len =
            std::mem::size_of::<abi::OutHeader>() + payload.iter().map(|s| s.len()).sum::<usize>();
        let header = abi::OutHeader {
            len: len as u32,
            error,
            unique,
        };
        write_message(fd.as_fd(), &header, payload)
    }

    /// Sends a READ reply of up to `len` bytes of `file` from `offset`,
    /// spliced (no copy through user memory). `None`: nothing was sent,
    /// splicing is not possible here.
    pub(crate) fn send_file(
        &self,
        unique: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Option<io::Result<()>> {
        // A ring entry's reply is copied into the entry's buffer.
        let fd = self.splice_fd()?;
        match super::splice::send_read_reply(fd, unique, file, offset, len) {
            super::splice::Spliced::Unavailable => None,
            super::splice::Spliced::Sent(r) => Some(r),
        }
    }
}

fn write_message(
    fd: BorrowedFd<'_>,
    header: &abi::OutHeader,
    payload: &[IoSlice<'_>],
) -> io::Result<()> {
    use zerocopy::IntoBytes;
    const MAX_IOV: usize = 8;
    let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
    iov[0] = IoSlice::new(header.as_bytes());
    if payload.len() + 1 > MAX_IOV {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    iov[1..=payload.len()].copy_from_slice(payload);
    let count = payload.len() + 1;
    let n = nix::sys::uio::writev(fd, &iov[..count])?;
    if n as u32 != header.len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to /dev/fuse",
        ));
    }
    Ok(())
}
