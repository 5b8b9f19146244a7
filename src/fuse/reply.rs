//! Typed, one-shot replies.
//!
//! Each reply type is consumed by value when sent, so a request cannot be
//! answered twice; one that is dropped unsent answers EIO (and logs it), so a
//! request is never left hanging. Sending reports whether the kernel still
//! wanted the answer: [`ReplyError::Gone`] (ENOENT from the device) means the
//! request was interrupted or the connection aborted, and an entry or open
//! reply must then be undone by the caller (the kernel will never FORGET or
//! RELEASE what it did not receive).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};
use zerocopy::IntoBytes;

use super::abi::{self, Opcode};
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

/// Common core of every reply type.
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

    pub(crate) fn send(mut self, error: i32, payload: &[IoSlice<'_>]) -> Result<(), ReplyError> {
        self.sent = true;
        self.ch.send(self.unique, error, payload).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                ReplyError::Gone
            } else {
                if e.raw_os_error() != Some(libc::ENODEV) {
                    error!(
                        op = self.opcode.name(),
                        unique = self.unique,
                        "reply failed: {e}"
                    );
                }
                ReplyError::Io(e)
            }
        })
    }

    fn ok(self, payload: &[IoSlice<'_>]) -> Result<(), ReplyError> {
        self.send(0, payload)
    }

    /// Answers with an error. Values outside 1..=511 would make the kernel
    /// drop the reply before matching the request (the caller would hang),
    /// so they become EIO.
    pub fn error(self, err: Errno) {
        let e = err.0;
        let e = if (1..=511).contains(&e) { e } else { libc::EIO };
        tracing::debug!(
            op = self.opcode.name(),
            unique = self.unique,
            "error {}",
            Errno(e)
        );
        let _ = self.send(-e, &[]);
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

fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

/// Everything an entry reply says about an inode.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub nodeid: u64,
    pub generation: u64,
    pub attr: abi::Attr,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
    /// Backing id for inode passthrough (0 = none); sent only when the kernel
    /// negotiated FUSE_PASSTHROUGH_INO.
    pub backing_id: i32,
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
    pub fh: u64,
    pub flags: abi::OpenOutFlags,
    /// With `OpenOutFlags::PASSTHROUGH`: the backing id for I/O passthrough.
    pub backing_id: i32,
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

macro_rules! reply_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        pub struct $name(pub(crate) Reply);
        impl $name {
            /// Answers with an error (EIO for values outside 1..=511).
            pub fn error(self, err: Errno) {
                self.0.error(err)
            }
        }
    };
}

reply_type!(
    /// Reply without payload (UNLINK, SETXATTR, FSYNC, ...).
    ReplyEmpty);
impl ReplyEmpty {
    pub fn ok(self) {
        let _ = self.0.ok(&[]);
    }
}

reply_type!(
    /// Reply naming an inode (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK).
    ReplyEntry);
impl ReplyEntry {
    /// Sends the entry; `Err(Gone)` means the kernel did not take it and the
    /// lookup count it implied must be dropped again.
    pub fn entry(self, e: &Entry) -> Result<(), ReplyError> {
        let out = e.entry_out();
        let bk = e.backing();
        let with_backing = self
            .0
            .channel()
            .connection()
            .negotiated()
            .is_some_and(|n| n.entry_backing());
        if with_backing {
            self.0
                .ok(&[IoSlice::new(out.as_bytes()), IoSlice::new(bk.as_bytes())])
        } else {
            self.0.ok(&[IoSlice::new(out.as_bytes())])
        }
    }
}

reply_type!(
    /// Reply to CREATE and TMPFILE: an entry plus an open file.
    ReplyCreate);
impl ReplyCreate {
    pub fn created(self, e: &Entry, open: &Open) -> Result<(), ReplyError> {
        let out = e.entry_out();
        let bk = e.backing();
        let oo = open.out();
        let with_backing = self
            .0
            .channel()
            .connection()
            .negotiated()
            .is_some_and(|n| n.entry_backing());
        if with_backing {
            self.0.ok(&[
                IoSlice::new(out.as_bytes()),
                IoSlice::new(bk.as_bytes()),
                IoSlice::new(oo.as_bytes()),
            ])
        } else {
            self.0
                .ok(&[IoSlice::new(out.as_bytes()), IoSlice::new(oo.as_bytes())])
        }
    }
}

reply_type!(
    /// Reply to GETATTR and SETATTR.
    ReplyAttr);
impl ReplyAttr {
    pub fn attr(self, attr: &abi::Attr, ttl: Duration) {
        let (s, ns) = split_duration(ttl);
        let out = abi::AttrOut {
            attr_valid: s,
            attr_valid_nsec: ns,
            dummy: 0,
            attr: *attr,
        };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to STATX.
    ReplyStatx);
impl ReplyStatx {
    pub fn statx(self, stat: &abi::Statx, ttl: Duration) {
        let (s, ns) = split_duration(ttl);
        let out = abi::StatxOut {
            attr_valid: s,
            attr_valid_nsec: ns,
            flags: 0,
            spare: [0; 2],
            stat: *stat,
        };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to OPEN and OPENDIR.
    ReplyOpen);
impl ReplyOpen {
    /// `Err(Gone)` means no RELEASE will ever come for this handle.
    pub fn opened(self, open: &Open) -> Result<(), ReplyError> {
        let out = open.out();
        self.0.ok(&[IoSlice::new(out.as_bytes())])
    }
}

reply_type!(
    /// Reply carrying raw bytes (READ, READLINK, GETXATTR/LISTXATTR data).
    ReplyData);
impl ReplyData {
    pub fn data(self, data: &[u8]) {
        let _ = self.0.ok(&[IoSlice::new(data)]);
    }

    /// Answers with up to `len` bytes of `file` from `offset`, spliced
    /// (no copy through user memory). Gives the reply back if splicing is
    /// unavailable here, so the caller can copy instead.
    pub fn splice_from(
        mut self,
        file: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), ReplyData> {
        let Some(fd) = self.0.channel().splice_fd() else {
            return Err(self);
        };
        match super::splice::send_read_reply(fd, self.0.unique, file, offset, len) {
            super::splice::Spliced::Unavailable => Err(self),
            super::splice::Spliced::Sent(r) => {
                self.0.sent = true;
                if let Err(e) = r {
                    if e.raw_os_error() != Some(libc::ENOENT)
                        && e.raw_os_error() != Some(libc::ENODEV)
                    {
                        error!(unique = self.0.unique, "spliced READ reply failed: {e}");
                    }
                }
                Ok(())
            }
        }
    }
}

reply_type!(
    /// Reply to WRITE.
    ReplyWrite);
impl ReplyWrite {
    pub fn written(self, size: u32) {
        let out = abi::WriteOut { size, padding: 0 };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to STATFS.
    ReplyStatfs);
impl ReplyStatfs {
    pub fn statfs(self, st: &abi::Kstatfs) {
        let out = abi::StatfsOut { st: *st };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to GETXATTR and LISTXATTR: the needed size when asked with
    /// size 0, the data otherwise.
    ReplyXattr);
impl ReplyXattr {
    pub fn size(self, size: u32) {
        let out = abi::GetxattrOut { size, padding: 0 };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
    pub fn data(self, data: &[u8]) {
        let _ = self.0.ok(&[IoSlice::new(data)]);
    }
}

reply_type!(
    /// Reply to GETLK.
    ReplyLock);
impl ReplyLock {
    pub fn lock(self, lk: &abi::FileLock) {
        let out = abi::LkOut { lk: *lk };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to LSEEK.
    ReplyLseek);
impl ReplyLseek {
    pub fn offset(self, offset: u64) {
        let out = abi::LseekOut { offset };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

/// Reply to COPY_FILE_RANGE (32-bit count) and COPY_FILE_RANGE_64.
pub struct ReplyCopy {
    pub(crate) reply: Reply,
    pub(crate) wide: bool,
}
impl ReplyCopy {
    /// Largest count the 32-bit reply can carry.
    pub const MAX_NARROW: u64 = 0xffff_f000;

    pub fn copied(self, n: u64) {
        if self.wide {
            let out = abi::CopyFileRangeOut { bytes_copied: n };
            let _ = self.reply.ok(&[IoSlice::new(out.as_bytes())]);
        } else {
            let out = abi::WriteOut {
                size: n.min(Self::MAX_NARROW) as u32,
                padding: 0,
            };
            let _ = self.reply.ok(&[IoSlice::new(out.as_bytes())]);
        }
    }
    pub fn error(self, err: Errno) {
        self.reply.error(err)
    }
    /// Whether the kernel can take a 64-bit count.
    pub fn is_wide(&self) -> bool {
        self.wide
    }
}

reply_type!(
    /// Reply to BMAP.
    ReplyBmap);
impl ReplyBmap {
    pub fn block(self, block: u64) {
        let out = abi::BmapOut { block };
        let _ = self.0.ok(&[IoSlice::new(out.as_bytes())]);
    }
}

reply_type!(
    /// Reply to READDIR and READDIRPLUS: a filled [`DirBuffer`].
    ReplyDir);
impl ReplyDir {
    pub fn send(self, buf: &DirBuffer) -> Result<(), ReplyError> {
        self.0.ok(&[IoSlice::new(&buf.buf)])
    }
}

/// Builds the payload of READDIR / READDIRPLUS within the size the kernel
/// asked for.
pub struct DirBuffer {
    buf: Vec<u8>,
    max: usize,
}

impl DirBuffer {
    pub fn new(max: usize) -> DirBuffer {
        DirBuffer {
            buf: Vec::with_capacity(max.min(1 << 20)),
            max,
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
        self.append(d.as_bytes(), name)
    }

    /// Appends a READDIRPLUS record; `false` (and nothing appended) when full.
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
        self.append(d.as_bytes(), name)
    }

    fn append(&mut self, head: &[u8], name: &[u8]) -> bool {
        let len = abi::dirent_align(head.len() + name.len());
        if self.buf.len() + len > self.max {
            return false;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(head);
        self.buf.extend_from_slice(name);
        self.buf.resize(start + len, 0);
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
            nodeid: 9,
            attr: abi::Attr {
                ino: 77,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(b.push_plus(&e, 5, 8, b"file"));
        assert_eq!(b.as_bytes().len(), abi::dirent_align(152 + 4));
        let (d, _) = abi::DirentPlus::read_from_prefix(b.as_bytes()).unwrap();
        assert_eq!(d.entry_out.nodeid, 9);
        assert_eq!(d.dirent.ino, 77);
        assert_eq!(d.dirent.namelen, 4);
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
    use std::os::fd::{FromRawFd, OwnedFd};
    use zerocopy::FromBytes;

    /// A channel whose "device" is one end of a SEQPACKET socketpair: each
    /// reply arrives as one message at the other end.
    fn channel(ino: bool) -> (Arc<Channel>, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two fds.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) },
            0
        );
        // SAFETY: fresh fds, owned here.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        assert!(n >= 16, "no reply");
        buf.truncate(n as usize);
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
            nodeid: 42,
            generation: 7,
            attr: abi::Attr {
                ino: 99,
                mode: libc::S_IFREG | 0o644,
                size: 5,
                ..Default::default()
            },
            entry_ttl: Duration::from_secs(2),
            attr_ttl: Duration::from_millis(3),
            backing_id: 5,
        }
    }

    #[test]
    fn entry_with_and_without_backing() {
        let (ch, rx) = channel(false);
        ReplyEntry(reply(&ch, 1, Opcode::Lookup))
            .entry(&entry())
            .unwrap();
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
            (42, 7, 99, 2, 3_000_000)
        );

        let (ch, rx) = channel(true);
        ReplyEntry(reply(&ch, 2, Opcode::Lookup))
            .entry(&entry())
            .unwrap();
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 136, "fuse_entry_out + fuse_entry_backing");
        let b = abi::EntryBacking::read_from_bytes(&p[128..]).unwrap();
        assert_eq!((b.backing_id, b.flags), (5, 0));
    }

    #[test]
    fn create_layouts() {
        let open = Open {
            fh: 77,
            flags: abi::OpenOutFlags::PASSTHROUGH,
            backing_id: 3,
        };
        let (ch, rx) = channel(false);
        ReplyCreate(reply(&ch, 3, Opcode::Create))
            .created(&entry(), &open)
            .unwrap();
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 128 + 16);
        let o = abi::OpenOut::read_from_bytes(&p[128..]).unwrap();
        assert_eq!((o.fh, o.open_flags, o.backing_id), (77, 1 << 7, 3));
        let (ch, rx) = channel(true);
        ReplyCreate(reply(&ch, 4, Opcode::Create))
            .created(&entry(), &open)
            .unwrap();
        let (_, p) = recv(&rx);
        assert_eq!(p.len(), 128 + 8 + 16, "entry, entry_backing, open_out");
        assert_eq!(abi::OpenOut::read_from_bytes(&p[136..]).unwrap().fh, 77);
    }

    #[test]
    fn every_other_reply() {
        let (ch, rx) = channel(false);
        let a = abi::Attr {
            ino: 8,
            size: 123,
            ..Default::default()
        };
        ReplyAttr(reply(&ch, 5, Opcode::Getattr)).attr(&a, Duration::from_secs(1));
        let (_, p) = recv(&rx);
        let o = abi::AttrOut::read_from_bytes(&p).unwrap();
        assert_eq!((o.attr.ino, o.attr.size, o.attr_valid), (8, 123, 1));

        let sx = abi::Statx {
            mask: 0x7ff,
            size: 9,
            ..Default::default()
        };
        ReplyStatx(reply(&ch, 6, Opcode::Statx)).statx(&sx, Duration::ZERO);
        let (_, p) = recv(&rx);
        assert_eq!(abi::StatxOut::read_from_bytes(&p).unwrap().stat.size, 9);

        ReplyOpen(reply(&ch, 7, Opcode::Open))
            .opened(&Open {
                fh: 9,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(abi::OpenOut::read_from_bytes(&recv(&rx).1).unwrap().fh, 9);

        ReplyData(reply(&ch, 8, Opcode::Read)).data(b"payload");
        assert_eq!(recv(&rx).1, b"payload");

        ReplyWrite(reply(&ch, 9, Opcode::Write)).written(4096);
        assert_eq!(
            abi::WriteOut::read_from_bytes(&recv(&rx).1).unwrap().size,
            4096
        );

        ReplyStatfs(reply(&ch, 10, Opcode::Statfs)).statfs(&abi::Kstatfs {
            bsize: 4096,
            ..Default::default()
        });
        assert_eq!(
            abi::StatfsOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .st
                .bsize,
            4096
        );

        ReplyXattr(reply(&ch, 11, Opcode::Getxattr)).size(17);
        assert_eq!(
            abi::GetxattrOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .size,
            17
        );
        ReplyXattr(reply(&ch, 12, Opcode::Getxattr)).data(b"v");
        assert_eq!(recv(&rx).1, b"v");

        let lk = abi::FileLock {
            start: 1,
            end: 2,
            typ: 1,
            pid: 3,
        };
        ReplyLock(reply(&ch, 13, Opcode::Getlk)).lock(&lk);
        assert_eq!(abi::LkOut::read_from_bytes(&recv(&rx).1).unwrap().lk, lk);

        ReplyLseek(reply(&ch, 14, Opcode::Lseek)).offset(1 << 40);
        assert_eq!(
            abi::LseekOut::read_from_bytes(&recv(&rx).1).unwrap().offset,
            1 << 40
        );

        ReplyCopy {
            reply: reply(&ch, 15, Opcode::CopyFileRange),
            wide: false,
        }
        .copied(u64::MAX);
        assert_eq!(
            abi::WriteOut::read_from_bytes(&recv(&rx).1).unwrap().size as u64,
            ReplyCopy::MAX_NARROW
        );
        ReplyCopy {
            reply: reply(&ch, 16, Opcode::CopyFileRange64),
            wide: true,
        }
        .copied(1 << 33);
        assert_eq!(
            abi::CopyFileRangeOut::read_from_bytes(&recv(&rx).1)
                .unwrap()
                .bytes_copied,
            1 << 33
        );

        ReplyBmap(reply(&ch, 17, Opcode::Bmap)).block(12);
        assert_eq!(
            abi::BmapOut::read_from_bytes(&recv(&rx).1).unwrap().block,
            12
        );

        let mut d = DirBuffer::new(4096);
        assert!(d.push(1, 1, 4, b"x"));
        ReplyDir(reply(&ch, 18, Opcode::Readdir)).send(&d).unwrap();
        assert_eq!(recv(&rx).1, d.as_bytes());

        ReplyEmpty(reply(&ch, 19, Opcode::Unlink)).ok();
        let (h, p) = recv(&rx);
        assert_eq!((h.unique, h.error, p.len()), (19, 0, 0));
    }

    #[test]
    fn errors_and_dropped_replies() {
        let (ch, rx) = channel(false);
        ReplyEmpty(reply(&ch, 20, Opcode::Unlink)).error(crate::fuse::Errno::ENOENT);
        assert_eq!(recv(&rx).0.error, -libc::ENOENT);
        // Out-of-range errnos would hang the caller: they become EIO.
        ReplyEmpty(reply(&ch, 21, Opcode::Unlink)).error(crate::fuse::Errno(4096));
        assert_eq!(recv(&rx).0.error, -libc::EIO);
        ReplyEmpty(reply(&ch, 22, Opcode::Unlink)).error(crate::fuse::Errno(-3));
        assert_eq!(recv(&rx).0.error, -libc::EIO);
        // Dropped unsent: EIO, so no request is left hanging.
        drop(ReplyAttr(reply(&ch, 23, Opcode::Getattr)));
        let (h, _) = recv(&rx);
        assert_eq!((h.unique, h.error), (23, -libc::EIO));
    }
}
