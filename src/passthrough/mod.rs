//! The passthrough filesystem: every operation of the FUSE protocol served
//! by the same operation on SOURCE, relative to O_PATH fds.
//!
//! One readable flow per op, split by kind: [`entries`] (names: lookup,
//! create, link, rename ...), [`attrs`] (getattr, setattr, statx ...),
//! [`files`] (open and I/O), [`dirs`] (readdir), [`xattrs`], [`locks`].
//! Shared state lives here: the inode table, open files, backing ids.

mod attrs;
mod dirs;
mod entries;
mod files;
mod locks;
mod media;
mod xattrs;

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tracing::{info, warn};

use crate::backing::{self, Backing};
use crate::credentials::{self, CredGuard, GroupCache};
use crate::fuse::abi::{self, InitFlags, Opcode};
use crate::fuse::*;
use crate::inode_table::{Inode, InodeTable, Kind, Looked};
use crate::media::MediaProvider;
use crate::policy::Policy;
use crate::sys;

pub use locks::LockTable;

/// How the daemon was asked to behave (from the command line).
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    /// Validity of entries and attributes in the kernel's caches.
    pub timeout: Duration,
    /// No caching at all: zero timeouts, no page cache reuse.
    pub nocache: bool,
    /// Ask for kernel I/O passthrough (FUSE_PASSTHROUGH).
    pub passthrough: bool,
    /// FOPEN_DIRECT_IO on every open (reads and writes reach the daemon).
    pub direct_io: bool,
    /// Splice payloads (kept for CLI compatibility; the daemon copies).
    pub splice: bool,
    /// The kernel checks permissions (`-o default_permissions`).
    pub default_permissions: bool,
    pub allow_other: bool,
    pub read_only: bool,
    /// Backing-file stack depth (1, or 2 when SOURCE is on overlayfs/FUSE).
    pub max_stack_depth: u32,
    pub readdirplus: bool,
    /// Largest number of O_PATH fds kept open for inodes.
    pub fd_cache: usize,
    /// Which ops pass through for which entry (inode passthrough).
    pub policy: Arc<Policy>,
    /// Media-provider mode: per-uid policing of parts of the tree.
    pub media: Option<Arc<MediaProvider>>,
}

impl Config {
    /// Defaults for SOURCE, as the CLI would set them without options.
    pub fn for_source(source: PathBuf) -> Config {
        Config {
            source,
            timeout: Duration::from_secs(86400),
            nocache: false,
            passthrough: true,
            direct_io: false,
            splice: true,
            default_permissions: true,
            allow_other: false,
            read_only: false,
            max_stack_depth: 1,
            readdirplus: true,
            fd_cache: 4096,
            policy: Arc::new(Policy::uniform(crate::policy::all_ops())),
            media: None,
        }
    }
}

/// An open file or directory (the `fh` of FUSE requests).
pub struct OpenFile {
    pub fd: OwnedFd,
    pub inode: Arc<Inode>,
    /// Flags the file was opened with (as the caller asked).
    pub flags: i32,
    /// This open holds a backing-id reference (released with it).
    pub backing: bool,
    /// Byte ranges read as zeros (media-provider redaction).
    redact: Option<Arc<Vec<std::ops::Range<u64>>>>,
    /// Directory stream state (opendir only).
    dir: Option<Mutex<dirs::DirStream>>,
}

/// Per-op counters by inode kind, for the stats.
pub struct KindCounters {
    counts: [[AtomicU64; abi::MAX_OPCODE + 1]; 4],
}

impl Default for KindCounters {
    fn default() -> Self {
        KindCounters {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl KindCounters {
    fn count(&self, kind: Kind, op: Opcode) {
        self.counts[kind as usize][op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (kind, op, count) for every non-zero counter.
    pub fn snapshot(&self) -> Vec<(Kind, Opcode, u64)> {
        let mut v = Vec::new();
        for kind in [Kind::Directory, Kind::Regular, Kind::Symlink, Kind::Special] {
            for &op in Opcode::ALL {
                let n = self.counts[kind as usize][op as usize].load(Ordering::Relaxed);
                if n > 0 {
                    v.push((kind, op, n));
                }
            }
        }
        v
    }
}

pub struct PassthroughFs {
    cfg: Config,
    table: InodeTable,
    files: DashMap<u64, Arc<OpenFile>>,
    next_fh: AtomicU64,
    backing: Backing,
    conn: OnceLock<Arc<Connection>>,
    /// Negotiated: the kernel leaves the umask to us (FUSE_DONT_MASK).
    dont_mask: AtomicBool,
    /// Negotiated: writeback cache (only without passthrough).
    writeback: AtomicBool,
    groups: GroupCache,
    locks: Arc<LockTable>,
    kinds: KindCounters,
}

impl PassthroughFs {
    /// Opens SOURCE and builds the table. Fails with a clear message if
    /// SOURCE is unusable.
    pub fn new(cfg: Config) -> Result<PassthroughFs, String> {
        let src = &cfg.source;
        let c = std::ffi::CString::new(src.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: invalid path", src.display()))?;
        let cwd = std::fs::File::open("/").map_err(|e| format!("/: {e}"))?;
        let root = sys::openat(cwd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| format!("{}: {e}", src.display()))?;
        let proc = sys::open_proc_self_fd()
            .map_err(|e| format!("/proc/self/fd: {e} (is /proc mounted?)"))?;
        let table = InodeTable::new(root, proc, cfg.fd_cache)
            .map_err(|e| format!("{}: {e}", src.display()))?;
        if !table
            .get(abi::ROOT_ID)
            .map(|r| r.has_handle())
            .unwrap_or(false)
        {
            warn!(
                "{}: the filesystem has no file handles; every inode keeps an fd open (limit {})",
                src.display(),
                cfg.fd_cache
            );
        }
        Ok(PassthroughFs {
            cfg,
            table,
            files: DashMap::new(),
            next_fh: AtomicU64::new(1),
            backing: Backing::default(),
            conn: OnceLock::new(),
            dont_mask: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
            groups: GroupCache::default(),
            locks: Arc::default(),
            kinds: KindCounters::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn table(&self) -> &InodeTable {
        &self.table
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    pub fn connection(&self) -> Option<&Arc<Connection>> {
        self.conn.get()
    }

    pub fn kind_counters(&self) -> &KindCounters {
        &self.kinds
    }

    /// Open files and directories right now.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    fn entry_ttl(&self) -> Duration {
        if self.cfg.nocache {
            Duration::ZERO
        } else {
            self.cfg.timeout
        }
    }

    fn inode(&self, nodeid: u64, op: Opcode) -> Result<Arc<Inode>, Errno> {
        let inode = self.table.get(nodeid)?;
        self.kinds.count(inode.kind, op);
        Ok(inode)
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .get(&fh)
            .map(|f| f.value().clone())
            .ok_or(Errno::EBADF)
    }

    fn add_file(&self, f: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        f.inode.pin();
        self.files.insert(fh, Arc::new(f));
        fh
    }

    /// Removes an open file; the fd closes when the last request using it
    /// is done.
    fn remove_file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let (_, f) = self.files.remove(&fh)?;
        f.inode.unpin();
        if f.backing {
            self.backing.release_open(&f.inode);
        }
        Some(f)
    }

    /// Acts as the caller for requests that create inodes (always) or for
    /// every request when the host must check permissions.
    fn as_caller(&self, ctx: &Context, creates: bool) -> Result<CredGuard, Errno> {
        if !creates && self.cfg.default_permissions {
            return Ok(CredGuard::none());
        }
        if ctx.uid == abi::INVALID_UIDGID || ctx.gid == abi::INVALID_UIDGID {
            return Err(Errno::EPERM);
        }
        let groups = if !ctx.groups.is_empty() {
            ctx.groups.clone()
        } else if !self.cfg.default_permissions {
            self.groups.groups_of(ctx.pid)
        } else {
            Vec::new()
        };
        credentials::become_caller(ctx.uid, ctx.gid, &groups)
    }

    /// The umask for a create: the request's when we negotiated DONT_MASK
    /// (so the host applies it, or ignores it under a default ACL).
    fn umask(&self, umask: u32) -> Option<u32> {
        self.dont_mask.load(Ordering::Relaxed).then_some(umask)
    }

    /// Builds the entry reply for a looked-up inode, with a backing id when
    /// the kernel does inode passthrough and the policy says so.
    fn make_entry(&self, looked: &Looked, parent: &Inode, name: &CStr) -> Entry {
        self.decide(&looked.inode, parent, name);
        let backing_id = if self.backing.mode() == backing::Mode::Inode {
            let mask = self.mask_of(&looked.inode);
            match self.table.fd(&looked.inode) {
                Ok(fd) => self.backing.for_entry(&looked.inode, fd.fd(), mask),
                Err(_) => 0,
            }
        } else {
            0
        };
        Entry {
            nodeid: looked.inode.nodeid,
            generation: 0,
            attr: self.attr_of(&looked.stat, &looked.inode),
            entry_ttl: self.entry_ttl(),
            attr_ttl: self.entry_ttl(),
            backing_id,
        }
    }

    /// The policy decision for `inode`, taken at its first lookup.
    fn decide(&self, inode: &Inode, parent: &Inode, name: &CStr) -> u16 {
        let d = inode.backing.lock().decision;
        if d != 0 {
            return d;
        }
        let d = self.cfg.policy.decide(&self.table, parent, name);
        let mut slot = inode.backing.lock();
        if slot.decision == 0 {
            slot.decision = d;
        }
        slot.decision
    }

    /// The policy's mask for an inode (the default if it was never decided).
    fn mask_of(&self, inode: &Inode) -> u64 {
        let d = inode.backing.lock().decision;
        let mask = self.cfg.policy.mask(d, inode.kind);
        if self.cfg.direct_io
            && inode.kind == Kind::Regular
            && self.backing.mode() == backing::Mode::Inode
        {
            // --direct-io: the daemon serves reads and writes, and says so
            // in its OPEN reply; an inode backing with READ or WRITE would
            // take them first.
            return mask
                & !(abi::passthrough_op(Opcode::Open)
                    | abi::passthrough_op(Opcode::Read)
                    | abi::passthrough_op(Opcode::Write));
        }
        mask
    }

    /// Sends an entry reply; if the kernel did not take it, gives back the
    /// lookup count it implied.
    fn send_entry(&self, reply: ReplyEntry, r: Result<Entry, Errno>) {
        match r {
            Ok(e) => {
                if let Err(ReplyError::Gone) = reply.entry(&e) {
                    if e.nodeid != 0 {
                        self.forget_one(e.nodeid, 1);
                    }
                }
            }
            Err(err) => reply.error(err),
        }
    }

    fn forget_one(&self, nodeid: u64, n: u64) {
        if let Some(inode) = self.table.forget(nodeid, n) {
            self.backing.forget_inode(&inode);
            self.locks.forget_inode(nodeid);
        }
    }
}

/// Rejects names that could step outside the directory: empty, ".", "..",
/// anything with '/', or longer than NAME_MAX.
pub fn check_name(name: &CStr) -> Result<(), Errno> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Filesystem for PassthroughFs {
    fn init(&self, conn: &Arc<Connection>, cfg: &mut InitConfig) -> Result<(), Errno> {
        let _ = self.conn.set(conn.clone());
        let o = cfg.offered;
        let mut want = cfg.want
            | InitFlags::ATOMIC_O_TRUNC
            | InitFlags::FLOCK_LOCKS
            | InitFlags::POSIX_LOCKS
            | InitFlags::SETXATTR_EXT
            | InitFlags::CREATE_SUPP_GROUP
            | InitFlags::ASYNC_DIO
            // nodeids are not stable across FORGET, so file handles of the
            // mount (name_to_handle_at, NFS export) cannot be honoured.
            | InitFlags::NO_EXPORT_SUPPORT;
        if self.cfg.readdirplus {
            want |= InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO;
        }
        // POSIX ACLs: the kernel enforces them (with default_permissions)
        // and leaves the umask to us, so default ACLs work as on the host.
        if o.contains(InitFlags::POSIX_ACL | InitFlags::DONT_MASK) {
            want |= InitFlags::POSIX_ACL | InitFlags::DONT_MASK;
        }
        if !self.cfg.nocache {
            want |= InitFlags::AUTO_INVAL_DATA | InitFlags::CACHE_SYMLINKS;
        }
        // Shared mmap of FOPEN_DIRECT_IO files (O_DIRECT opens, --direct-io):
        // the kernel keeps the page cache coherent for them.
        want |= InitFlags::DIRECT_IO_ALLOW_MMAP;
        let mode = if self.cfg.passthrough && o.contains(InitFlags::PASSTHROUGH) {
            want |= InitFlags::PASSTHROUGH;
            cfg.max_stack_depth = self.cfg.max_stack_depth;
            if o.contains(InitFlags::PASSTHROUGH_INO) && self.cfg.policy.wants_inode_passthrough() {
                want |= InitFlags::PASSTHROUGH_INO;
                // READDIRPLUS entries carry no backing id in the series: let
                // every entry come through LOOKUP instead.
                want.remove(InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO);
                // Files opened from their backing file have no handle here
                // and send no FLUSH or RELEASE: the daemon could never drop
                // their locks. The kernel keeps such locks itself.
                if self.cfg.policy.may_pass_open() {
                    want.remove(InitFlags::POSIX_LOCKS | InitFlags::FLOCK_LOCKS);
                }
                backing::Mode::Inode
            } else {
                backing::Mode::Io
            }
        } else {
            if self.cfg.passthrough {
                warn!(
                    "the kernel does not offer FUSE passthrough; the daemon serves all I/O itself"
                );
            }
            if !self.cfg.nocache && o.contains(InitFlags::WRITEBACK_CACHE) {
                want |= InitFlags::WRITEBACK_CACHE;
            }
            backing::Mode::Off
        };
        cfg.want = want;
        self.dont_mask.store(
            o.contains(InitFlags::DONT_MASK) && want.contains(InitFlags::DONT_MASK),
            Ordering::Relaxed,
        );
        self.writeback.store(
            want.contains(InitFlags::WRITEBACK_CACHE) && o.contains(InitFlags::WRITEBACK_CACHE),
            Ordering::Relaxed,
        );
        self.backing.start(conn, mode);
        info!(
            "passthrough: {}",
            match mode {
                backing::Mode::Off => "off",
                backing::Mode::Io => "read/write/mmap (FOPEN_PASSTHROUGH)",
                backing::Mode::Inode => "inode (backing ids on entries, per-op masks)",
            }
        );
        Ok(())
    }

    fn destroy(&self) {
        self.locks.clear();
    }

    fn worker_started(&self) {
        worker_started()
    }

    fn interrupt(&self, unique: u64) {
        self.locks.interrupt(unique);
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEntry) {
        let r = self.do_lookup(ctx, parent, name);
        self.send_entry(reply, r)
    }

    fn forget(&self, nodeid: u64, nlookup: u64) {
        self.forget_one(nodeid, nlookup)
    }

    fn batch_forget(&self, nodes: &[abi::ForgetOne]) {
        for n in nodes {
            self.forget_one(n.nodeid, n.nlookup);
        }
    }

    fn getattr(&self, ctx: &Context, nodeid: u64, fh: Option<u64>, reply: ReplyAttr) {
        match self.do_getattr(ctx, nodeid, fh) {
            Ok(a) => reply.attr(&a, self.entry_ttl()),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(&self, ctx: &Context, nodeid: u64, arg: &abi::SetattrIn, reply: ReplyAttr) {
        match self.do_setattr(ctx, nodeid, arg) {
            Ok(a) => reply.attr(&a, self.entry_ttl()),
            Err(e) => reply.error(e),
        }
    }

    fn statx(&self, ctx: &Context, nodeid: u64, arg: &abi::StatxIn, reply: ReplyStatx) {
        match self.do_statx(ctx, nodeid, arg) {
            Ok(s) => reply.statx(&s, self.entry_ttl()),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, ctx: &Context, nodeid: u64, reply: ReplyData) {
        match self.do_readlink(ctx, nodeid) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::MknodIn,
        reply: ReplyEntry,
    ) {
        let r = self.do_mknod(ctx, parent, name, arg);
        self.send_entry(reply, r)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::MkdirIn,
        reply: ReplyEntry,
    ) {
        let r = self.do_mkdir(ctx, parent, name, arg);
        self.send_entry(reply, r)
    }

    fn symlink(&self, ctx: &Context, parent: u64, name: &CStr, target: &CStr, reply: ReplyEntry) {
        let r = self.do_symlink(ctx, parent, name, target);
        self.send_entry(reply, r)
    }

    fn link(&self, ctx: &Context, nodeid: u64, newparent: u64, newname: &CStr, reply: ReplyEntry) {
        let r = self.do_link(ctx, nodeid, newparent, newname);
        self.send_entry(reply, r)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEmpty) {
        match self.do_remove(ctx, parent, name, 0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr, reply: ReplyEmpty) {
        match self.do_remove(ctx, parent, name, libc::AT_REMOVEDIR) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

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
        match self.do_rename(ctx, parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, ctx: &Context, nodeid: u64, arg: &abi::OpenIn, reply: ReplyOpen) {
        match self.do_open(ctx, nodeid, arg.flags as i32) {
            Ok(open) => {
                if let Err(ReplyError::Gone) = reply.opened(&open) {
                    self.remove_file(open.fh);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        arg: &abi::CreateIn,
        reply: ReplyCreate,
    ) {
        match self.do_create(ctx, parent, name, arg) {
            Ok((entry, open)) => {
                if let Err(ReplyError::Gone) = reply.created(&entry, &open) {
                    self.remove_file(open.fh);
                    self.forget_one(entry.nodeid, 1);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn tmpfile(&self, ctx: &Context, parent: u64, arg: &abi::CreateIn, reply: ReplyCreate) {
        match self.do_tmpfile(ctx, parent, arg) {
            Ok((entry, open)) => {
                if let Err(ReplyError::Gone) = reply.created(&entry, &open) {
                    self.remove_file(open.fh);
                    self.forget_one(entry.nodeid, 1);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(&self, ctx: &Context, nodeid: u64, arg: &abi::ReadIn, reply: ReplyData) {
        self.do_read(ctx, nodeid, arg, reply)
    }

    fn write(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::WriteIn,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        match self.do_write(ctx, nodeid, arg, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, ctx: &Context, nodeid: u64, arg: &abi::FlushIn, reply: ReplyEmpty) {
        match self.do_flush(ctx, nodeid, arg) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(&self, ctx: &Context, nodeid: u64, arg: &abi::ReleaseIn, reply: ReplyEmpty) {
        self.do_release(ctx, nodeid, arg);
        reply.ok()
    }

    fn fsync(&self, ctx: &Context, nodeid: u64, arg: &abi::FsyncIn, reply: ReplyEmpty) {
        match self.do_fsync(ctx, nodeid, arg) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, ctx: &Context, nodeid: u64, arg: &abi::OpenIn, reply: ReplyOpen) {
        match self.do_opendir(ctx, nodeid, arg.flags as i32) {
            Ok(open) => {
                if let Err(ReplyError::Gone) = reply.opened(&open) {
                    self.remove_file(open.fh);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, ctx: &Context, nodeid: u64, arg: &abi::ReadIn, plus: bool, reply: ReplyDir) {
        self.do_readdir(ctx, nodeid, arg, plus, reply)
    }

    fn releasedir(&self, ctx: &Context, nodeid: u64, arg: &abi::ReleaseIn, reply: ReplyEmpty) {
        self.do_release(ctx, nodeid, arg);
        reply.ok()
    }

    fn fsyncdir(&self, ctx: &Context, nodeid: u64, arg: &abi::FsyncIn, reply: ReplyEmpty) {
        match self.do_fsync(ctx, nodeid, arg) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, ctx: &Context, nodeid: u64, reply: ReplyStatfs) {
        match self.do_statfs(ctx, nodeid) {
            Ok(s) => reply.statfs(&s),
            Err(e) => reply.error(e),
        }
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
        match self.do_setxattr(ctx, nodeid, name, value, arg) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, ctx: &Context, nodeid: u64, name: &CStr, size: u32, reply: ReplyXattr) {
        self.do_getxattr(ctx, nodeid, name, size, reply)
    }

    fn listxattr(&self, ctx: &Context, nodeid: u64, size: u32, reply: ReplyXattr) {
        self.do_listxattr(ctx, nodeid, size, reply)
    }

    fn removexattr(&self, ctx: &Context, nodeid: u64, name: &CStr, reply: ReplyEmpty) {
        match self.do_removexattr(ctx, nodeid, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, ctx: &Context, nodeid: u64, mask: u32, reply: ReplyEmpty) {
        match self.do_access(ctx, nodeid, mask) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getlk(&self, ctx: &Context, nodeid: u64, arg: &abi::LkIn, reply: ReplyLock) {
        match self.do_getlk(ctx, nodeid, arg) {
            Ok(lk) => reply.lock(&lk),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(&self, ctx: &Context, nodeid: u64, arg: &abi::LkIn, sleep: bool, reply: ReplyEmpty) {
        self.do_setlk(ctx, nodeid, arg, sleep, reply)
    }

    fn fallocate(&self, ctx: &Context, nodeid: u64, arg: &abi::FallocateIn, reply: ReplyEmpty) {
        match self.do_fallocate(ctx, nodeid, arg) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, ctx: &Context, nodeid: u64, arg: &abi::LseekIn, reply: ReplyLseek) {
        match self.do_lseek(ctx, nodeid, arg) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::CopyFileRangeIn,
        reply: ReplyCopy,
    ) {
        let max = if reply.is_wide() {
            u64::MAX
        } else {
            ReplyCopy::MAX_NARROW
        };
        match self.do_copy_file_range(ctx, nodeid, arg, max) {
            Ok(n) => reply.copied(n),
            Err(e) => reply.error(e),
        }
    }

    fn syncfs(&self, ctx: &Context, nodeid: u64, reply: ReplyEmpty) {
        let r = (|| {
            // Only a directory or regular file is ever reopened: opening a
            // FIFO would block, a device would see an open. The root is on
            // the filesystem to sync unless the inode is on a submount.
            let inode = self.inode(nodeid, ctx.opcode)?;
            let inode = match inode.kind {
                Kind::Directory | Kind::Regular => inode,
                _ => self.table.get(abi::ROOT_ID)?,
            };
            let fd = self.table.fd(&inode)?;
            let f = sys::reopen(
                self.table.proc_self_fd(),
                fd.fd(),
                libc::O_RDONLY | libc::O_NONBLOCK,
            )?;
            sys::syncfs(f.as_fd()).map_err(Errno::from)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Worker start hook: give each worker thread its own umask.
pub fn worker_started() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !credentials::worker_init() && !WARNED.swap(true, Ordering::Relaxed) {
        warn!("unshare(CLONE_FS) failed: umask from requests cannot be applied per thread");
    }
}
