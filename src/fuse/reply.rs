//! What an op answers, and how it goes on the wire.
//!
//! Every [`Filesystem`](super::Filesystem) method returns `Result<T, Errno>`
//! where `T` is one of the payload types here ([`Entry`], [`Attr`],
//! [`Open`], [`Data`], ...). The dispatcher turns it into the reply through
//! [`Payload::send`]; an error goes through [`Reply::error`], the one place
//! that counts and logs failed requests. Sending reports whether the kernel
//! still wanted the answer: [`ReplyError::Gone`] (ENOENT from the device)
//! means the request was interrupted or the connection aborted, and what
//! the reply handed over (lookup counts, open handles: [`Payload::lost`]) is
//! given back to the filesystem, since the kernel will never FORGET or
//! RELEASE what it did not receive.
//!
//! A [`Reply`] is one-shot: consumed when sent, EIO if dropped unsent (a
//! handler that panics still answers). Only ops that answer later (blocking
//! lock waits) hold one, as a [`Deferred`].

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};
use zerocopy::IntoBytes;

use super::abi::{self, BackingId, Fh, NodeId, Opcode};
use super::channel::Channel;
use super::Errno;

/// A reply write failed.
#[derive(Debug)]
pub enum ReplyError {
    /// The kernel no longer has this request (interrupted, or aborted).
    Gone,
    /// Any other failure writing to the device.
    Io(io::Error),
}

/// The answer owed to one request.
pub struct Reply {
    ch: Arc<Channel>,
    unique: u64,
    opcode: Opcode,
    sent: bool,
}

impl Reply {
    pub(crate) fn new(ch: Arc<Channel>, unique: u64, opcode: Opcode) -> Reply {
        Reply {
            ch,
            unique,
            opcode,
            sent: false,
        }
    }

    pub(crate) fn channel(&self) -> &Arc<Channel> {
        &self.ch
    }

    pub fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn gone_or_log(&self, e: io::Error) -> ReplyError {
        if e.raw_os_error() == Some(libc::ENOENT) {
            return ReplyError::Gone;
        }
        if e.raw_os_error() != Some(libc::ENODEV) {
            error!(
                op = self.opcode.name(),
                unique = self.unique,
                "reply failed: {e}"
            );
        }
        ReplyError::Io(e)
    }

    /// For requests that take no reply (FORGET, INTERRUPT).
    pub(crate) fn forget(mut self) {
        self.sent = true;
    }

    /// Sends a successful reply with `payload` after the header.
    pub fn ok(&mut self, payload: &[IoSlice<'_>]) -> Result<(), ReplyError> {
        self.sent = true;
        self.ch
            .send(self.unique, 0, payload)
            .map_err(|e| self.gone_or_log(e))
    }

    /// Sends `len` bytes of `file` from `offset` without copying them
    /// through user memory; `Ok(false)` (nothing sent) if that is not
    /// possible here, so the caller can copy instead.
    fn ok_file(
        &mut self,
        file: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<bool, ReplyError> {
        match self.ch.send_file(self.unique, file, offset, len) {
            None => Ok(false),
            Some(r) => {
                self.sent = true;
                r.map(|()| true).map_err(|e| self.gone_or_log(e))
            }
        }
    }

    /// Answers with an error, counted and logged here for every op. Values
    /// outside 1..=511 would make the kernel drop the reply before matching
    /// the request (the caller would hang), so they become EIO.
    pub fn error(mut self, err: Errno) {
        self.send_error(err)
    }

    fn send_error(&mut self, err: Errno) {
        let e = err.0;
        let e = if (1..=511).contains(&e) { e } else { libc::EIO };
        self.ch.connection().counters.count_error(self.opcode);
        tracing::debug!(
            op = self.opcode.name(),
            unique = self.unique,
            "error {}",
            Errno(e)
        );
        self.sent = true;
        let _ = self.ch.send(self.unique, -e, &[]);
    }

    /// Sends `r`: the payload, or the error. Returns the payload if the
    /// kernel did not take it (so its caller can undo what it handed over).
    pub fn answer<T: Payload>(mut self, r: Result<T, Errno>) -> Option<T> {
        match r {
            Ok(v) => match v.send(&mut self) {
                Err(ReplyError::Gone) => Some(v),
                _ => None,
            },
            Err(e) => {
                self.error(e);
                None
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            warn!(
                op = self.opcode.name(),
                unique = self.unique,
                "request dropped without a reply; answering EIO"
            );
            let _ = self.ch.send(self.unique, -libc::EIO, &[]);
        }
    }
}

/// A reply owed later: the op returned, the answer comes from another
/// thread (a blocking lock wait). Sent through the same channel, so it
/// leaves like every other reply; EIO if dropped unsent.
pub struct Deferred(pub(crate) Reply);

impl Deferred {
    pub fn unique(&self) -> u64 {
        self.0.unique
    }

    /// Answers the request now.
    pub fn finish(self, r: Result<(), Errno>) {
        self.0.answer(r);
    }

    /// Answers the request now, with a payload that holds nothing to undo
    /// if the kernel does not take it (a lock, not an entry or an open).
    pub fn finish_with<T: Payload>(self, r: Result<T, Errno>) {
        if let Some(v) = self.0.answer(r) {
            debug_assert_eq!(v.lost(), Lost::default(), "a deferred reply lost state");
        }
    }
}

/// What a reply handed to the kernel, to be given back if the kernel did
/// not take it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost<'a> {
    /// Nodeids that each got one lookup count.
    pub lookups: &'a [NodeId],
    /// An open handle the kernel will never RELEASE.
    pub fh: Option<Fh>,
}

/// A successful answer of one kind.
pub trait Payload {
    /// Writes the reply (header and payload) to the kernel.
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError>;
    /// What to undo if the kernel did not take the reply.
    fn lost(&self) -> Lost<'_> {
        Lost::default()
    }
}

/// Empty replies (UNLINK, SETXATTR, FSYNC, ...).
impl Payload for () {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        r.ok(&[])
    }
}

/// A reply that is one fixed-size struct.
fn send_struct<T: IntoBytes + zerocopy::Immutable>(
    r: &mut Reply,
    out: &T,
) -> Result<(), ReplyError> {
    r.ok(&[IoSlice::new(out.as_bytes())])
}

fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// Everything an entry reply says about an inode.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub nodeid: NodeId,
    pub generation: u64,
    pub attr: abi::Attr,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
    /// Backing id for inode passthrough (0 = none); sent only when the kernel
    /// negotiated FUSE_PASSTHROUGH_INO.
    pub backing_id: BackingId,
}

impl Entry {
    /// A negative entry: cache "does not exist" for `ttl`.
    pub fn negative(ttl: Duration) -> Entry {
        Entry {
            entry_ttl: ttl,
            ..Default::default()
        }
    }

    pub(crate) fn entry_out(&self) -> abi::EntryOut {
        let (ev, evn) = split_duration(self.entry_ttl);
        let (av, avn) = split_duration(self.attr_ttl);
        abi::EntryOut {
            nodeid: self.nodeid,
            generation: self.generation,
            entry_valid: ev,
            attr_valid: av,
            entry_valid_nsec: evn,
            attr_valid_nsec: avn,
            attr: self.attr,
        }
    }

    fn backing(&self) -> abi::EntryBacking {
        abi::EntryBacking {
            backing_id: self.backing_id,
            flags: 0,
        }
    }
}

/// The open half of OPEN, OPENDIR, CREATE and TMPFILE replies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open {
    pub fh: Fh,
    pub flags: abi::OpenOutFlags,
    /// With `OpenOutFlags::PASSTHROUGH`: the backing id for I/O passthrough.
    pub backing_id: BackingId,
}

impl Open {
    fn out(&self) -> abi::OpenOut {
        abi::OpenOut {
            fh: self.fh,
            open_flags: self.flags.bits(),
            backing_id: self.backing_id,
        }
    }
}

impl Entry {
    /// The entry's wire form: `fuse_entry_out`, plus `fuse_entry_backing`
    /// when the kernel does inode passthrough.
    fn send_with(&self, r: &mut Reply, tail: &[IoSlice<'_>]) -> Result<(), ReplyError> {
        let out = self.entry_out();
        let bk = self.backing();
        let with_backing = r
            .channel()
            .connection()
            .negotiated()
            .is_some_and(|n| n.entry_backing());
        // No allocation: the tail is at most `fuse_open_out` (CREATE).
        let mut iov = [IoSlice::new(&[]); 4];
        iov[0] = IoSlice::new(out.as_bytes());
        let mut n = 1;
        if with_backing {
            iov[n] = IoSlice::new(bk.as_bytes());
            n += 1;
        }
        if n + tail.len() > iov.len() {
            let mut v = iov[..n].to_vec();
            v.extend_from_slice(tail);
            return r.ok(&v);
        }
        iov[n..n + tail.len()].copy_from_slice(tail);
        r.ok(&iov[..n + tail.len()])
    }
}

/// LOOKUP, MKNOD, MKDIR, SYMLINK, LINK: an entry (one lookup count unless
/// negative).
impl Payload for Entry {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        self.send_with(r, &[])
    }
    fn lost(&self) -> Lost<'_> {
        Lost {
            lookups: if !self.nodeid.is_none() {
                std::slice::from_ref(&self.nodeid)
            } else {
                &[]
            },
            fh: None,
        }
    }
}

/// OPEN and OPENDIR.
impl Payload for Open {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(r, &self.out())
    }
    fn lost(&self) -> Lost<'_> {
        Lost {
            lookups: &[],
            fh: Some(self.fh),
        }
    }
}

/// CREATE and TMPFILE: an entry plus an open file.
#[derive(Clone, Debug, Default)]
pub struct Created {
    pub entry: Entry,
    pub open: Open,
}

impl Payload for Created {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        let oo = self.open.out();
        self.entry.send_with(r, &[IoSlice::new(oo.as_bytes())])
    }
    fn lost(&self) -> Lost<'_> {
        Lost {
            fh: Some(self.open.fh),
            ..self.entry.lost()
        }
    }
}

/// GETATTR and SETATTR.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub attr: abi::Attr,
    pub ttl: Duration,
}

impl Payload for Attr {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        let (s, ns) = split_duration(self.ttl);
        let out = abi::AttrOut {
            attr_valid: s,
            attr_valid_nsec: ns,
            dummy: 0,
            attr: self.attr,
        };
        send_struct(r, &out)
    }
}

/// STATX.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statx {
    pub stat: abi::Statx,
    pub ttl: Duration,
}

impl Payload for Statx {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        let (s, ns) = split_duration(self.ttl);
        let out = abi::StatxOut {
            attr_valid: s,
            attr_valid_nsec: ns,
            flags: 0,
            spare: [0; 2],
            stat: self.stat,
        };
        send_struct(r, &out)
    }
}

/// A file the wire layer may splice from (READ replies without a copy).
pub trait SpliceSource: AsFd + Send + Sync {}
impl<T: AsFd + Send + Sync> SpliceSource for T {}

/// READ, READLINK: bytes, or a range of a file to splice.
pub enum Data {
    Bytes(Vec<u8>),
    /// Up to `len` bytes of `file` from `offset`; copied when splicing is
    /// not possible, short at end of file.
    File {
        file: Arc<dyn SpliceSource>,
        offset: u64,
        len: usize,
    },
}

impl Payload for Data {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        match self {
            Data::Bytes(b) => r.ok(&[IoSlice::new(b)]),
            Data::File { file, offset, len } => {
                let fd = file.as_fd();
                if r.ok_file(fd, *offset, *len)? {
                    return Ok(());
                }
                // No splice here: copy through one buffer per thread.
                thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
                BUF.with(|b| {
                    let mut buf = b.borrow_mut();
                    if buf.len() < *len {
                        buf.resize(*len, 0);
                    }
                    match crate::sys::pread_full(fd, &mut buf[..*len], *offset) {
                        Ok(n) => r.ok(&[IoSlice::new(&buf[..n])]),
                        Err(e) => {
                            r.send_error(Errno::from(e));
                            Ok(())
                        }
                    }
                })
            }
        }
    }
}

/// WRITE: bytes written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written(pub u32);

impl Payload for Written {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(
            r,
            &abi::WriteOut {
                size: self.0,
                padding: 0,
            },
        )
    }
}

/// STATFS.
impl Payload for abi::Kstatfs {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(r, &abi::StatfsOut { st: *self })
    }
}

/// GETXATTR and LISTXATTR: the size needed (asked with size 0), or the
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

impl Payload for Xattr {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        match self {
            Xattr::Size(size) => send_struct(
                r,
                &abi::GetxattrOut {
                    size: *size,
                    padding: 0,
                },
            ),
            Xattr::Data(d) => r.ok(&[IoSlice::new(d)]),
        }
    }
}

/// GETLK: the conflicting lock (or the asked one with type F_UNLCK).
impl Payload for abi::FileLock {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(r, &abi::LkOut { lk: *self })
    }
}

/// LSEEK: the new offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset(pub u64);

impl Payload for Offset {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(r, &abi::LseekOut { offset: self.0 })
    }
}

/// COPY_FILE_RANGE (32-bit count) and COPY_FILE_RANGE_64: bytes copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied(pub u64);

impl Copied {
    /// Largest count the 32-bit reply can carry.
    pub const MAX_NARROW: u64 = 0xffff_f000;
}

impl Payload for Copied {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        if r.opcode() == Opcode::CopyFileRange64 {
            send_struct(
                r,
                &abi::CopyFileRangeOut {
                    bytes_copied: self.0,
                },
            )
        } else {
            let size = self.0.min(Self::MAX_NARROW) as u32;
            send_struct(r, &abi::WriteOut { size, padding: 0 })
        }
    }
}

/// BMAP: the device block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block(pub u64);

impl Payload for Block {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        send_struct(r, &abi::BmapOut { block: self.0 })
    }
}

/// READDIR and READDIRPLUS: a filled [`DirBuffer`].
impl Payload for DirBuffer {
    fn send(&self, r: &mut Reply) -> Result<(), ReplyError> {
        r.ok(&[IoSlice::new(&self.buf)])
    }
    fn lost(&self) -> Lost<'_> {
        Lost {
            lookups: &self.lookups,
            fh: None,
        }
    }
}

/// Builds the payload of READDIR / READDIRPLUS within the size the kernel
/// asked for.
pub struct DirBuffer {
    buf: Vec<u8>,
    max: usize,
    /// Nodeids of READDIRPLUS entries, one lookup count each.
    lookups: Vec<NodeId>,
    /// READDIRPLUS records end with a `fuse_entry_backing`
    /// (FUSE_PASSTHROUGH_DIRENTPLUS negotiated).
    backing: bool,
}

impl DirBuffer {
    pub fn new(max: usize) -> DirBuffer {
        DirBuffer {
            buf: Vec::with_capacity(max.min(1 << 20)),
            max,
            lookups: Vec::new(),
            backing: false,
        }
    }

    /// A READDIRPLUS buffer whose records carry the entries' backing ids.
    pub fn with_backing(max: usize) -> DirBuffer {
        DirBuffer {
            backing: true,
            ..DirBuffer::new(max)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends a READDIR record; `false` (and nothing appended) when full.
    pub fn push(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ,
        };
        self.append(d.as_bytes(), name, &[])
    }

    /// Whether a READDIRPLUS record for `name` would still fit: checked
    /// before the entry is looked up, so that the one that ends a full
    /// reply costs no lookup (and backing id) given back at once.
    pub fn fits_plus(&self, name: &[u8]) -> bool {
        let tail = if self.backing {
            std::mem::size_of::<abi::EntryBacking>()
        } else {
            0
        };
        let len = abi::dirent_align(std::mem::size_of::<abi::DirentPlus>() + name.len());
        self.buf.len() + len + tail <= self.max
    }

    /// Appends a READDIRPLUS record; `false` (and nothing appended) when full.
    /// An entry with a nodeid hands the kernel one lookup count (given back
    /// if the reply is lost).
    pub fn push_plus(&mut self, entry: &Entry, off: u64, typ: u32, name: &[u8]) -> bool {
        let d = abi::DirentPlus {
            entry_out: entry.entry_out(),
            dirent: abi::Dirent {
                ino: entry.attr.ino,
                off,
                namelen: name.len() as u32,
                typ,
            },
        };
        let bk = entry.backing();
        let tail: &[u8] = if self.backing { bk.as_bytes() } else { &[] };
        if !self.append(d.as_bytes(), name, tail) {
            return false;
        }
        if !entry.nodeid.is_none() {
            self.lookups.push(entry.nodeid);
        }
        true
    }

    /// One record: `head` and `name` padded to 8 bytes, then `tail` (a
    /// multiple of 8 bytes), all or nothing.
    fn append(&mut self, head: &[u8], name: &[u8], tail: &[u8]) -> bool {
        let len = abi::dirent_align(head.len() + name.len());
        if self.buf.len() + len + tail.len() > self.max {
            return false;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(name);
        self.buf.resize(start + len, 0);
        self.buf.extend_from_slice(tail);
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn dirbuffer_respects_size_and_alignment() {
        let mut b = DirBuffer::new(64);
        assert!(b.push(1, 1, 4, b"a"));
        assert_eq!(b.as_bytes().len(), 32);
        assert!(b.push(2, 2, 8, b"bcdefgh"));
        assert_eq!(b.as_bytes().len(), 64);
        assert!(!b.push(3, 3, 8, b"x"));
        let (d, rest) = abi::Dirent::read_from_prefix(b.as_bytes()).unwrap();
        assert_eq!((d.ino, d.off, d.namelen, d.typ), (1, 1, 1, 4));
        assert_eq!(rest[0], b'a');
    }

    #[test]
    fn dirbuffer_plus_record() {
        let mut b = DirBuffer::new(4096);
        let e = Entry {
            nodeid: NodeId::from_raw(9),
            attr: abi::Attr {
                ino: 77,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(b.push_plus(&e, 5, 8, b"file"));
        assert_eq!(b.as_bytes().len(), abi::dirent_align(152 + 4));
        // without backing ids, exactly one more record of that size fits
        let mut full = DirBuffer::new(2 * abi::dirent_align(152 + 4));
        assert!(full.push_plus(&e, 5, 8, b"file"));
        assert!(full.fits_plus(b"file") && full.push_plus(&e, 6, 8, b"file"));
        assert!(!full.fits_plus(b"f"));
        let (d, _) = abi::DirentPlus::read_from_prefix(b.as_bytes()).unwrap();
        assert_eq!(d.entry_out.nodeid, NodeId::from_raw(9));
        assert_eq!(d.dirent.ino, 77);
        assert_eq!(d.dirent.namelen, 4);
    }

    /// FUSE_PASSTHROUGH_DIRENTPLUS: the backing id follows the padded
    /// record, and a record that does not fit with it is not appended.
    #[test]
    fn dirbuffer_plus_record_with_backing() {
        let rec = abi::dirent_align(152 + 5);
        let mut b = DirBuffer::with_backing(2 * rec + 8 + 8);
        let e = Entry {
            nodeid: NodeId::from_raw(9),
            backing_id: BackingId::from_raw(42),
            ..Default::default()
        };
        assert!(b.fits_plus(b"file1"));
        assert!(b.push_plus(&e, 1, 8, b"file1"));
        assert_eq!(b.as_bytes().len(), rec + 8);
        let (bk, _) = abi::EntryBacking::read_from_prefix(&b.as_bytes()[rec..]).unwrap();
        assert_eq!((bk.backing_id, bk.flags), (BackingId::from_raw(42), 0));
        assert!(b.push_plus(&e, 2, 8, b"file2"));
        // the second record starts 8-aligned after the first one's backing
        let (d, _) = abi::DirentPlus::read_from_prefix(&b.as_bytes()[rec + 8..]).unwrap();
        assert_eq!(d.dirent.off, 2);
        // 8 bytes left: not enough for a third record, as fits_plus says
        // before the entry is looked up
        assert!(!b.fits_plus(b"file3"));
        assert!(!b.push_plus(&e, 3, 8, b"file3"));
        assert_eq!(b.as_bytes().len(), 2 * (rec + 8));
        assert_eq!(b.lookups, vec![NodeId::from_raw(9), NodeId::from_raw(9)]);
    }

    #[test]
    fn entry_out_durations() {
        let e = Entry {
            entry_ttl: Duration::from_millis(1500),
            attr_ttl: Duration::from_secs(3),
            ..Default::default()
        };
        let o = e.entry_out();
        assert_eq!((o.entry_valid, o.entry_valid_nsec), (1, 500_000_000));
        assert_eq!((o.attr_valid, o.attr_valid_nsec), (3, 0));
    }
}

/// Every reply type, sent through a real channel and parsed back.
#[cfg(test)]
mod round_trip {
    use super::*;
    use crate::fuse::abi::{InitFlags, OutHeader};
    use crate::fuse::channel::{Connection, Negotiated};
    use std::os::fd::OwnedFd;
    use zerocopy::FromBytes;

    /// A channel whose "device" is one end of a SEQPACKET socketpair: each
    /// reply arrives as one message at the other end.
    fn channel(ino: bool) -> (Arc<Channel>, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let conn = Connection::new(a);
        let flags = if ino {
            InitFlags::PASSTHROUGH | InitFlags::PASSTHROUGH_INO
        } else {
            InitFlags::empty()
        };
        conn.set_negotiated(Negotiated {
            minor: 47,
            offered: flags,
            flags,
            max_write: 1 << 20,
            max_readahead: 0,
            max_pages: 256,
            max_stack_depth: 1,
        });
        (Arc::new(conn.master_channel().unwrap()), b)
    }

    /// Reads one reply: (header, payload).
    fn recv(fd: &OwnedFd) -> (OutHeader, Vec<u8>) {
        let mut buf = vec![0u8; 1 << 16];
        let n = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap_or(0);
        assert!(n >= 16, "no reply");
        buf.truncate(n);
        let (h, rest) = OutHeader::read_from_prefix(&buf).unwrap();
        assert_eq!(
            h.len as usize,
            buf.len(),
            "out.len equals the bytes written"
        );
        (h, rest.to_vec())
    }

    fn reply(ch: &Arc<Channel>, unique: u64, op: Opcode) -> Reply {
        Reply::new(ch.clone(), unique, op)
    }

    fn entry() -> Entry {
        Entry {
            nodeid: NodeId::from_raw(42),
            generation: 7,
            attr: abi::Attr {
                ino: 99,
                mode: libc::S_IFREG | 0o644,
                size: 5,
                ..Default::default()
            },
            entry_ttl: Duration::from_secs(2),
            attr_ttl: Duration::from_millis(3),
            backing_id: BackingId::from_raw(5),
        }
    }

    #[test]
    fn entry_with_and_without_backing() {
        let (ch, rx) = channel(false);
        assert!(reply(&ch, 1, Opcode::Lookup).answer(Ok(entry())).is_none());
        let (h, p) = recv(&rx);
        assert_eq!((h.unique, h.error, p.len()), (1, 0, 128));
        let e = abi::EntryOut::read_from_bytes(&p).unwrap();
        assert_eq!(
            (
                e.nodeid,
                e.generation,
                e.attr.ino,
                e.entry_valid,
                e.attr_valid_nsec
            ),
            (NodeId::from_raw(42), 7, 99, 2, 3_000_000)
        );

        let (ch, rx) = channel(true);
        assert!(reply(&ch, 2, Opcode::Lookup).answer(Ok(entry())).is_none());
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 136, "fuse_entry_out + fuse_entry_backing");
        let b = abi::EntryBacking::read_from_bytes(&p[128..]).unwrap();
        assert_eq!((b.backing_id, b.flags), (BackingId::from_raw(5), 0));
    }

    #[test]
    fn create_layouts() {
        let open = Open {
            fh: Fh::from_raw(77),
            flags: abi::OpenOutFlags::PASSTHROUGH,
            backing_id: BackingId::from_raw(3),
        };
        let (ch, rx) = channel(false);
        let created = Created {
            entry: entry(),
            open,
        };
        assert!(reply(&ch, 3, Opcode::Create)
            .answer(Ok(created.clone()))
            .is_none());
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 128 + 16);
        let o = abi::OpenOut::read_from_bytes(&p[128..]).unwrap();
        assert_eq!(
            (o.fh, o.open_flags, o.backing_id),
            (Fh::from_raw(77), 1 << 7, BackingId::from_raw(3))
        );
        let (ch, rx) = channel(true);
        assert!(reply(&ch, 4, Opcode::Create).answer(Ok(created)).is_none());
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 128 + 8 + 16, "entry, entry_backing, open_out");
        assert_eq!(
            abi::OpenOut::read_from_bytes(&p[136..]).unwrap().fh,
            Fh::from_raw(77)
        );
    }

    #[test]
    fn every_other_reply() {
        let (ch, rx) = channel(false);
        let a = abi::Attr {
            ino: 8,
            size: 123,
            ..Default::default()
        };
        reply(&ch, 5, Opcode::Getattr).answer(Ok(Attr {
            attr: a,
            ttl: Duration::from_secs(1),
        }));
        let (_, p) = recv(&rx);
        let o = abi::AttrOut::read_from_bytes(&p).unwrap();
        assert_eq!((o.attr.ino, o.attr.size, o.attr_valid), (8, 123, 1));

        let sx = abi::Statx {
            mask: 0x7ff,
            size: 9,
            ..Default::default()
        };
        reply(&ch, 6, Opcode::Statx).answer(Ok(Statx {
            stat: sx,
            ttl: Duration::ZERO,
        }));
        let (_, p) = recv(&rx);
        assert_eq!(abi::StatxOut::read_from_bytes(&p).unwrap().stat.size, 9);

        reply(&ch, 7, Opcode::Open).answer(Ok(Open {
            fh: Fh::from_raw(9),
            ..Default::default()
        }));
        assert_eq!(
            abi::OpenOut::read_from_bytes(&recv(&rx).1).unwrap().fh,
            Fh::from_raw(9)
        );

        reply(&ch, 8, Opcode::Read).answer(Ok(Data::Bytes(b"payload".to_vec())));
        assert_eq!(recv(&rx).1, b"payload");

        reply(&ch, 9, Opcode::Write).answer(Ok(Written(4096)));
        assert_eq!(
            abi::WriteOut::read_from_bytes(&recv(&rx).1).unwrap().size,
            4096
        );

        reply(&ch, 10, Opcode::Statfs).answer(Ok(abi::Kstatfs {
            bsize: 4096,
            ..Default::default()
        }));
        assert_eq!(
            abi::StatfsOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .st
                .bsize,
            4096
        );

        reply(&ch, 11, Opcode::Getxattr).answer(Ok(Xattr::Size(17)));
        assert_eq!(
            abi::GetxattrOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .size,
            17
        );
        reply(&ch, 12, Opcode::Getxattr).answer(Ok(Xattr::Data(b"v".to_vec())));
        assert_eq!(recv(&rx).1, b"v");
    }

    #[test]
    fn every_other_reply_continued() {
        let (ch, rx) = channel(false);
        let lk = abi::FileLock {
            start: 1,
            end: 2,
            typ: 1,
            pid: 3,
        };
        reply(&ch, 13, Opcode::Getlk).answer(Ok(lk));
        assert_eq!(abi::LkOut::read_from_bytes(&recv(&rx).1).unwrap().lk, lk);

        reply(&ch, 14, Opcode::Lseek).answer(Ok(Offset(1 << 40)));
        assert_eq!(
            abi::LseekOut::read_from_bytes(&recv(&rx).1).unwrap().offset,
            1 << 40
        );

        reply(&ch, 15, Opcode::CopyFileRange).answer(Ok(Copied(u64::MAX)));
        assert_eq!(
            abi::WriteOut::read_from_bytes(&recv(&rx).1).unwrap().size as u64,
            Copied::MAX_NARROW
        );
        reply(&ch, 16, Opcode::CopyFileRange64).answer(Ok(Copied(1 << 33)));
        assert_eq!(
            abi::CopyFileRangeOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .bytes_copied,
            1 << 33
        );

        reply(&ch, 17, Opcode::Bmap).answer(Ok(Block(12)));
        assert_eq!(
            abi::BmapOut::read_from_bytes(&recv(&rx).1).unwrap().block,
            12
        );

        let mut d = DirBuffer::new(4096);
        assert!(d.push(1, 1, 4, b"x"));
        let bytes = d.as_bytes().to_vec();
        reply(&ch, 18, Opcode::Readdir).answer(Ok(d));
        assert_eq!(recv(&rx).1, bytes);

        reply(&ch, 19, Opcode::Unlink).answer(Ok(()));
        let (h, p) = recv(&rx);
        assert_eq!((h.unique, h.error, p.len()), (19, 0, 0));
    }

    #[test]
    fn errors_and_dropped_replies() {
        let (ch, rx) = channel(false);
        reply(&ch, 20, Opcode::Unlink).error(crate::fuse::Errno::ENOENT);
        assert_eq!(recv(&rx).0.error, -libc::ENOENT);
        // Out-of-range errnos would hang the caller: they become EIO.
        reply(&ch, 21, Opcode::Unlink).error(crate::fuse::Errno(4096));
        assert_eq!(recv(&rx).0.error, -libc::EIO);
        reply(&ch, 22, Opcode::Unlink).error(crate::fuse::Errno(-3));
        assert_eq!(recv(&rx).0.error, -libc::EIO);
        // Dropped unsent: EIO, so no request is left hanging.
        drop(reply(&ch, 23, Opcode::Getattr));
        let (h, _) = recv(&rx);
        assert_eq!((h.unique, h.error), (23, -libc::EIO));
        // Errors are counted per op, at the one place they are sent.
        assert_eq!(ch.connection().counters.errors(Opcode::Unlink), 3);
    }

    #[test]
    fn lost_replies_name_what_to_undo() {
        let open = Open {
            fh: Fh::from_raw(5),
            ..Default::default()
        };
        assert_eq!(
            entry().lost(),
            Lost {
                lookups: &[NodeId::from_raw(42)],
                fh: None
            }
        );
        assert_eq!(Entry::negative(Duration::ZERO).lost(), Lost::default());
        assert_eq!(
            open.lost(),
            Lost {
                lookups: &[],
                fh: Some(Fh::from_raw(5))
            }
        );
        let c = Created {
            entry: entry(),
            open,
        };
        assert_eq!(
            c.lost(),
            Lost {
                lookups: &[NodeId::from_raw(42)],
                fh: Some(Fh::from_raw(5))
            }
        );
        let mut d = DirBuffer::new(4096);
        assert!(d.push_plus(&entry(), 1, 8, b"a"));
        assert!(d.push_plus(&Entry::negative(Duration::ZERO), 2, 4, b"."));
        assert_eq!(d.lost().lookups, &[NodeId::from_raw(42)]);
    }

    #[test]
    fn data_from_a_file_is_spliced_or_copied() {
        let (ch, rx) = channel(false);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"0123456789").unwrap();
        let file: Arc<dyn SpliceSource> = Arc::new(f);
        reply(&ch, 31, Opcode::Read).answer(Ok(Data::File {
            file: file.clone(),
            offset: 2,
            len: 100,
        }));
        let (h, p) = recv(&rx);
        assert_eq!((h.unique, h.error), (31, 0));
        assert_eq!(p, b"23456789", "short at end of file");
    }
}
