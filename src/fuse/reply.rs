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
