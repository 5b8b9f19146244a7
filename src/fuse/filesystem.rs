//! The filesystem trait: the only thing a filesystem implementation sees of
//! the wire layer. Methods take `&self` (workers call them concurrently) and
//! a typed reply; every one defaults to ENOSYS so an implementation can add
//! operations one by one.

use std::ffi::CStr;
use std::sync::Arc;

use super::abi::{self, InitFlags, Opcode};
use super::channel::Connection;
use super::reply::*;
use super::Errno;

/// Who sent a request, as the kernel reports it.
#[derive(Clone, Debug)]
pub struct Context {
    pub unique: u64,
    pub opcode: Opcode,
    pub nodeid: u64,
    /// Caller's fsuid/fsgid in the daemon's user namespace.
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups the kernel attached (FUSE_CREATE_SUPP_GROUP: at
    /// most the one group matching the parent directory).
    pub groups: Vec<u32>,
}

/// The INIT negotiation, as offered to [`Filesystem::init`]: the filesystem
/// fills in what it wants; the session keeps only what the kernel offered.
#[derive(Clone, Debug)]
pub struct InitConfig {
    /// Kernel's protocol minor.
    pub kernel_minor: u32,
    /// Flags the kernel offered.
    pub offered: InitFlags,
    /// Flags the filesystem asks for (intersected with `offered`).
    pub want: InitFlags,
    pub max_write: u32,
    pub max_readahead: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub time_gran: u32,
    /// Stack depth of backing files (only with FUSE_PASSTHROUGH).
    pub max_stack_depth: u32,
}

/// A filesystem served through the wire layer.
#[allow(unused_variables)]
pub trait Filesystem: Send + Sync + 'static {
    /// Called once, with INIT, before the reply is sent. `conn` stays valid
    /// for the life of the session (backing ioctls, notifications, counters).
    fn init(&self, conn: &Arc<Connection>, cfg: &mut InitConfig) -> Result<(), Errno> {
        Ok(())
    }
    /// The session has ended (unmount or DESTROY).
    fn destroy(&self) {}
    /// Runs first in every worker thread (per-thread set-up).
    fn worker_started(&self) {}
    /// The kernel asks to interrupt request `unique` (already received).
    fn interrupt(&self, unique: u64) {}

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEntry) {
        reply.error(Errno::ENOSYS)
    }
    /// Drops `nlookup` references; takes no reply.
    fn forget(&self, nodeid: u64, nlookup: u64) {}
    /// Many forgets at once; takes no reply.
    fn batch_forget(&self, nodes: &[abi::ForgetOne]) {
        for n in nodes {
            self.forget(n.nodeid, n.nlookup);
        }
    }
    fn getattr(&self, ctx: &Context, nodeid: u64, fh: Option<u64>, reply: ReplyAttr) {
        reply.error(Errno::ENOSYS)
    }
    fn setattr(&self, ctx: &Context, nodeid: u64, arg: &abi::SetattrIn, reply: ReplyAttr) {
        reply.error(Errno::ENOSYS)
    }
    fn statx(&self, ctx: &Context, nodeid: u64, arg: &abi::StatxIn, reply: ReplyStatx) {
        reply.error(Errno::ENOSYS)
    }
    fn readlink(&self, ctx: &Context, nodeid: u64, reply: ReplyData) {
        reply.error(Errno::ENOSYS)
    }
    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::MknodIn,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::MkdirIn,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn symlink(&self, ctx: &Context, parent: u64, name: &CStr, target: &CStr, reply: ReplyEntry) {
        reply.error(Errno::ENOSYS)
    }
    fn link(&self, ctx: &Context, nodeid: u64, newparent: u64, newname: &CStr, reply: ReplyEntry) {
        reply.error(Errno::ENOSYS)
    }
    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    /// RENAME and RENAME2; `flags` are renameat2(2) flags.
    #[allow(clippy::too_many_arguments)]
    fn rename(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        newparent: u64,
        newname: &CStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn open(&self, ctx: &Context, nodeid: u64, arg: &abi::OpenIn, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::CreateIn,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn tmpfile(&self, ctx: &Context, parent: u64, arg: &abi::CreateIn, reply: ReplyCreate) {
        reply.error(Errno::ENOSYS)
    }
    fn read(&self, ctx: &Context, nodeid: u64, arg: &abi::ReadIn, reply: ReplyData) {
        reply.error(Errno::ENOSYS)
    }
    fn write(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::WriteIn,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn flush(&self, ctx: &Context, nodeid: u64, arg: &abi::FlushIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn release(&self, ctx: &Context, nodeid: u64, arg: &abi::ReleaseIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn fsync(&self, ctx: &Context, nodeid: u64, arg: &abi::FsyncIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn opendir(&self, ctx: &Context, nodeid: u64, arg: &abi::OpenIn, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS)
    }
    /// READDIR (`plus == false`) and READDIRPLUS (`plus == true`).
    fn readdir(&self, ctx: &Context, nodeid: u64, arg: &abi::ReadIn, plus: bool, reply: ReplyDir) {
        reply.error(Errno::ENOSYS)
    }
    fn releasedir(&self, ctx: &Context, nodeid: u64, arg: &abi::ReleaseIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn fsyncdir(&self, ctx: &Context, nodeid: u64, arg: &abi::FsyncIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn statfs(&self, ctx: &Context, nodeid: u64, reply: ReplyStatfs) {
        reply.error(Errno::ENOSYS)
    }
    fn setxattr(
        &self,
        ctx: &Context,
        nodeid: u64,
        name: &CStr,
        value: &[u8],
        arg: &abi::SetxattrIn,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn getxattr(&self, ctx: &Context, nodeid: u64, name: &CStr, size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }
    fn listxattr(&self, ctx: &Context, nodeid: u64, size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }
    fn removexattr(&self, ctx: &Context, nodeid: u64, name: &CStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn access(&self, ctx: &Context, nodeid: u64, mask: u32, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn getlk(&self, ctx: &Context, nodeid: u64, arg: &abi::LkIn, reply: ReplyLock) {
        reply.error(Errno::ENOSYS)
    }
    /// SETLK (`sleep == false`) and SETLKW (`sleep == true`).
    fn setlk(&self, ctx: &Context, nodeid: u64, arg: &abi::LkIn, sleep: bool, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn fallocate(&self, ctx: &Context, nodeid: u64, arg: &abi::FallocateIn, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
    fn lseek(&self, ctx: &Context, nodeid: u64, arg: &abi::LseekIn, reply: ReplyLseek) {
        reply.error(Errno::ENOSYS)
    }
    fn copy_file_range(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::CopyFileRangeIn,
        reply: ReplyCopy,
    ) {
        reply.error(Errno::ENOSYS)
    }
    fn bmap(&self, ctx: &Context, nodeid: u64, arg: &abi::BmapIn, reply: ReplyBmap) {
        reply.error(Errno::ENOSYS)
    }
    fn syncfs(&self, ctx: &Context, nodeid: u64, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS)
    }
}
