//! The filesystem trait: the only thing a filesystem implementation sees of
//! the wire layer. Methods take `&self` (workers call them concurrently) and
//! return `Result<T, Errno>`, `T` being the op's payload type (see
//! [`reply`](super::reply)); the dispatcher sends it. Every one defaults to
//! ENOSYS so an implementation can add operations one by one.
//!
//! The ops are grouped by kind in sub-traits ([`EntryOps`], [`AttrOps`],
//! [`FileOps`], [`DirOps`], [`XattrOps`], [`LockOps`]), so an implementation
//! can write each kind in a module of its own; [`Filesystem`] is all of them
//! plus the session's hooks (INIT, DESTROY, INTERRUPT, lost replies).
//!
//! Adding an op: its method in the sub-trait of its kind here, its
//! implementation (in the `impl` of that sub-trait), and its line in the
//! dispatcher's table (`dispatch.rs`).

use std::ffi::CStr;
use std::sync::Arc;

use super::abi::{self, Fh, InitFlags, NodeId, Opcode};
use super::channel::Connection;
use super::reply::*;
use super::Errno;

/// Who sent a request, as the kernel reports it.
#[derive(Clone, Debug)]
pub struct Context {
    pub unique: u64,
    pub opcode: Opcode,
    pub nodeid: NodeId,
    /// Caller's fsuid/fsgid in the daemon's user namespace.
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups the kernel attached (FUSE_CREATE_SUPP_GROUP: at
    /// most the one group matching the parent directory).
    pub groups: Vec<u32>,
}

/// What a filesystem asks of INIT ([`Filesystem::wants`]). The session
/// keeps only what the kernel offered, applies `together` and `excludes`,
/// logs the outcome once and hands it to [`Filesystem::init`].
#[derive(Clone, Debug)]
pub struct Wants {
    /// Flags asked for (each granted only if offered).
    pub flags: InitFlags,
    /// Groups granted all together or not at all.
    pub together: Vec<InitFlags>,
    /// `(a, b)`: when `a` is granted, `b` is not asked for.
    pub excludes: Vec<(InitFlags, InitFlags)>,
    /// `(a, b, c)`: when `a` is granted but `b` is not, `c` is not asked
    /// for (applied after `excludes`).
    pub unless: Vec<(InitFlags, InitFlags, InitFlags)>,
    /// Largest WRITE (clamped to what the session's buffers take).
    pub max_write: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub time_gran: u32,
    /// Stack depth of backing files (only with FUSE_PASSTHROUGH).
    pub max_stack_depth: u32,
}

impl Default for Wants {
    /// Flags every filesystem gets unless it removes them.
    fn default() -> Self {
        Wants {
            flags: InitFlags::ASYNC_READ
                | InitFlags::BIG_WRITES
                | InitFlags::MAX_PAGES
                | InitFlags::PARALLEL_DIROPS
                | InitFlags::ABORT_ERROR
                | InitFlags::INIT_EXT,
            together: Vec::new(),
            excludes: Vec::new(),
            unless: Vec::new(),
            max_write: u32::MAX,
            max_background: 64,
            congestion_threshold: 48,
            time_gran: 1,
            max_stack_depth: 0,
        }
    }
}

/// Shorthand for an op's outcome.
pub type OpResult<T> = Result<T, Errno>;

/// A filesystem served through the wire layer: every kind of op, plus the
/// session's hooks.
#[allow(unused_variables)]
pub trait Filesystem:
    EntryOps + AttrOps + FileOps + DirOps + XattrOps + LockOps + Send + Sync + 'static
{
    /// What to ask of INIT; the session negotiates it with the kernel.
    fn wants(&self) -> Wants {
        Wants::default()
    }
    /// Called once, with the outcome of INIT ([`Connection::negotiated`]),
    /// before the reply is sent. `conn` stays valid for the life of the
    /// session (backing ioctls, notifications, counters). An error refuses
    /// the session.
    fn init(&self, conn: &Arc<Connection>) -> Result<(), Errno> {
        Ok(())
    }
    /// The session has ended (unmount or DESTROY).
    fn destroy(&self) {}
    /// Runs first in every worker thread (per-thread set-up).
    fn worker_started(&self) {}
    /// The kernel asks to interrupt request `unique` (already received).
    fn interrupt(&self, unique: u64) {}
    /// A reply the kernel did not take (its request was interrupted, or the
    /// connection aborted): give back what it handed over. The default
    /// forgets the lookups; a filesystem with open handles also closes
    /// `lost.fh`.
    fn reply_lost(&self, lost: Lost<'_>) {
        for &n in lost.lookups {
            self.forget(n, 1);
        }
    }
}

/// Names: lookup counts, and the ops that make or remove a name.
#[allow(unused_variables)]
pub trait EntryOps {
    fn lookup(&self, ctx: &Context, parent: NodeId, name: &CStr) -> OpResult<Entry> {
        Err(Errno::ENOSYS)
    }
    /// Drops `nlookup` references; takes no reply.
    fn forget(&self, nodeid: NodeId, nlookup: u64) {}
    /// Many forgets at once; takes no reply.
    fn batch_forget(&self, nodes: &[abi::ForgetOne]) {
        for n in nodes {
            self.forget(n.nodeid, n.nlookup);
        }
    }
    fn mknod(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::MknodIn,
    ) -> OpResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn mkdir(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::MkdirIn,
    ) -> OpResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn symlink(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        target: &CStr,
    ) -> OpResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn link(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        newparent: NodeId,
        newname: &CStr,
    ) -> OpResult<Entry> {
        Err(Errno::ENOSYS)
    }
    fn unlink(&self, ctx: &Context, parent: NodeId, name: &CStr) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn rmdir(&self, ctx: &Context, parent: NodeId, name: &CStr) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    /// RENAME and RENAME2; `flags` are renameat2(2) flags.
    fn rename(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        newparent: NodeId,
        newname: &CStr,
        flags: u32,
    ) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn create(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::CreateIn,
    ) -> OpResult<Created> {
        Err(Errno::ENOSYS)
    }
    fn tmpfile(&self, ctx: &Context, parent: NodeId, arg: &abi::CreateIn) -> OpResult<Created> {
        Err(Errno::ENOSYS)
    }
}

/// Attributes and other questions about one inode.
#[allow(unused_variables)]
pub trait AttrOps {
    fn getattr(&self, ctx: &Context, nodeid: NodeId, fh: Option<Fh>) -> OpResult<Attr> {
        Err(Errno::ENOSYS)
    }
    fn setattr(&self, ctx: &Context, nodeid: NodeId, arg: &abi::SetattrIn) -> OpResult<Attr> {
        Err(Errno::ENOSYS)
    }
    fn statx(&self, ctx: &Context, nodeid: NodeId, arg: &abi::StatxIn) -> OpResult<Statx> {
        Err(Errno::ENOSYS)
    }
    fn readlink(&self, ctx: &Context, nodeid: NodeId) -> OpResult<Data> {
        Err(Errno::ENOSYS)
    }
    fn access(&self, ctx: &Context, nodeid: NodeId, mask: u32) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn statfs(&self, ctx: &Context, nodeid: NodeId) -> OpResult<abi::Kstatfs> {
        Err(Errno::ENOSYS)
    }
}

/// Open files and their I/O.
#[allow(unused_variables)]
pub trait FileOps {
    fn open(&self, ctx: &Context, nodeid: NodeId, arg: &abi::OpenIn) -> OpResult<Open> {
        Err(Errno::ENOSYS)
    }
    fn read(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReadIn) -> OpResult<Data> {
        Err(Errno::ENOSYS)
    }
    fn write(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::WriteIn,
        data: &[u8],
    ) -> OpResult<Written> {
        Err(Errno::ENOSYS)
    }
    fn flush(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FlushIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn release(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReleaseIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn fsync(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FsyncIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn fallocate(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FallocateIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn lseek(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LseekIn) -> OpResult<Offset> {
        Err(Errno::ENOSYS)
    }
    /// COPY_FILE_RANGE(_64); counts above [`Copied::MAX_NARROW`] are cut
    /// for the 32-bit reply unless `wide`.
    fn copy_file_range(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::CopyFileRangeIn,
        wide: bool,
    ) -> OpResult<Copied> {
        Err(Errno::ENOSYS)
    }
    fn bmap(&self, ctx: &Context, nodeid: NodeId, arg: &abi::BmapIn) -> OpResult<Block> {
        Err(Errno::ENOSYS)
    }
    fn syncfs(&self, ctx: &Context, nodeid: NodeId) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
}

/// Open directories and their listings.
#[allow(unused_variables)]
pub trait DirOps {
    fn opendir(&self, ctx: &Context, nodeid: NodeId, arg: &abi::OpenIn) -> OpResult<Open> {
        Err(Errno::ENOSYS)
    }
    /// READDIR (`plus == false`) and READDIRPLUS (`plus == true`).
    fn readdir(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::ReadIn,
        plus: bool,
    ) -> OpResult<DirBuffer> {
        Err(Errno::ENOSYS)
    }
    fn releasedir(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReleaseIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn fsyncdir(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FsyncIn) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
}

/// Extended attributes.
#[allow(unused_variables)]
pub trait XattrOps {
    fn setxattr(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        name: &CStr,
        value: &[u8],
        arg: &abi::SetxattrIn,
    ) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
    fn getxattr(&self, ctx: &Context, nodeid: NodeId, name: &CStr, size: u32) -> OpResult<Xattr> {
        Err(Errno::ENOSYS)
    }
    fn listxattr(&self, ctx: &Context, nodeid: NodeId, size: u32) -> OpResult<Xattr> {
        Err(Errno::ENOSYS)
    }
    fn removexattr(&self, ctx: &Context, nodeid: NodeId, name: &CStr) -> OpResult<()> {
        Err(Errno::ENOSYS)
    }
}

/// POSIX, OFD and flock locks.
#[allow(unused_variables)]
pub trait LockOps {
    // The lock ops are the ops that may answer later: `reply` may be
    // finished from another thread (a lock granted, a wait interrupted, a
    // check that waits for a RELEASE). Never block the calling worker: over
    // io_uring it is the only thread of its CPU's queue.

    /// GETLK: who holds a lock that conflicts with `arg.lk`, if any.
    fn getlk(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        reply.finish(Err(Errno::ENOSYS))
    }
    /// SETLK: take or drop a lock without waiting for its holder.
    fn setlk(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        reply.finish(Err(Errno::ENOSYS))
    }
    /// SETLKW: take a lock, waiting for it.
    fn setlkw(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        reply.finish(Err(Errno::ENOSYS))
    }
}
