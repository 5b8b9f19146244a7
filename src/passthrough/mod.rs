//! The passthrough filesystem: every operation of the FUSE protocol served
//! by the same operation on SOURCE, relative to O_PATH fds.
//!
//! One readable flow per op, split by kind, each module implementing the
//! sub-trait of its kind: [`entries`] ([`EntryOps`]: lookup, create, link,
//! rename ...), [`attrs`] ([`AttrOps`]: getattr, setattr, statx ...),
//! [`files`] ([`FileOps`]: open and I/O), [`dirs`] ([`DirOps`]: readdir),
//! [`xattrs`] ([`XattrOps`]), [`locks`] ([`LockOps`]). This module holds the
//! shared state (the inode table, open files, backing ids) and the session
//! hooks of [`Filesystem`].

mod attrs;
mod dirs;
mod entries;
mod files;
mod killpriv;
mod locks;
mod media;
mod xattrs;

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::fasthash::FastMap;
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

pub use locks::{LockTable, SETTLE as LOCK_SETTLE};

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
    /// Other users may use the mount (`-o allow_other`).
    pub allow_other: bool,
    /// Backing-file stack depth (1, or 2 when SOURCE is on overlayfs/FUSE).
    pub max_stack_depth: u32,
    pub readdirplus: bool,
    /// Largest number of O_PATH fds kept open for inodes.
    pub fd_cache: usize,
    /// Which ops pass through for which entry (inode passthrough).
    pub policy: Arc<Policy>,
    /// Media-provider mode: per-uid policing of parts of the tree.
    pub media: Option<Arc<MediaProvider>>,
    /// The mount updates no access times (`ro` or `noatime`): the daemon's
    /// own reads and listings open SOURCE with `O_NOATIME`.
    pub noatime: bool,
    /// The mount updates no directory access times (`nodiratime`).
    pub nodiratime: bool,
    /// Negotiate FUSE_HANDLE_KILLPRIV_V2 (see `killpriv.rs`).
    pub killpriv_v2: bool,
    /// The daemon keeps POSIX and flock locks as OFD locks on SOURCE
    /// (`--locks host`); otherwise the kernel keeps them on the mount.
    pub host_locks: bool,
    /// How long a lock check that conflicts with a file closed just before
    /// waits for that file's RELEASE (`--lock-settle-ms`, see `locks.rs`).
    pub lock_settle: Duration,
    /// Serve extended attributes (`--xattr on`, the default). Off, the
    /// four xattr ops answer ENOSYS once and the kernel asks no more.
    pub xattrs: bool,
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
            max_stack_depth: 1,
            readdirplus: true,
            fd_cache: 4096,
            policy: Arc::new(Policy::uniform(crate::policy::all_ops())),
            media: None,
            noatime: false,
            nodiratime: false,
            killpriv_v2: true,
            host_locks: true,
            lock_settle: locks::SETTLE,
            xattrs: true,
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

impl AsFd for OpenFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
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
    files: FastMap<Fh, Arc<OpenFile>>,
    next_fh: AtomicU64,
    backing: Backing,
    conn: OnceLock<Arc<Connection>>,
    /// Negotiated: the kernel leaves the umask to us (FUSE_DONT_MASK).
    dont_mask: AtomicBool,
    /// Negotiated: writeback cache (only without passthrough).
    writeback: AtomicBool,
    /// Negotiated: HANDLE_KILLPRIV_V2 (see `killpriv.rs`).
    killpriv_v2: AtomicBool,
    /// Neither POSIX nor flock locks were negotiated: the kernel keeps them
    /// and FLUSH releases none (see `finish_open`).
    kernel_locks: AtomicBool,
    /// OPENDIR is answered ENOSYS: the kernel opens directories without
    /// asking, READDIR comes with fh 0 (see `dirs.rs`).
    no_opendir: AtomicBool,
    /// Streams of fh-0 READDIRs that ended before the end of their
    /// directory, for the READDIR that continues them (see `dirs.rs`).
    parked_dirs: Mutex<Vec<Arc<OpenFile>>>,
    /// Its length, read without the lock on every change of an entry.
    parked_count: std::sync::atomic::AtomicUsize,
    groups: GroupCache,
    locks: Arc<LockTable>,
    kinds: KindCounters,
    /// Files the kernel opened without us (fh 0): one shared open per
    /// (nodeid, access mode), closed at FORGET (see `files.rs`).
    kernel_files: FastMap<(NodeId, i32), Arc<OpenFile>>,
    /// Per device: FLUSH has nothing to do there (see `files.rs`).
    flush_noop: Mutex<Vec<(u64, bool)>>,
    /// Inodes whose `security.capability` the kernel just removed, until
    /// their next empty SETATTR or change of mode, owner or size (see
    /// `killpriv.rs`).
    cap_removed: FastMap<NodeId, ()>,
}

/// Why SOURCE cannot be served, as one line.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: invalid path", .0.display())]
    InvalidPath(PathBuf),
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("/proc/self/fd: {0} (is /proc mounted?)")]
    NoProc(std::io::Error),
}

impl PassthroughFs {
    /// Opens SOURCE and builds the table. Fails with a clear message if
    /// SOURCE is unusable.
    pub fn new(cfg: Config) -> Result<PassthroughFs, SourceError> {
        let src = &cfg.source;
        let open_err = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| SourceError::Open { path, source }
        };
        let c = std::ffi::CString::new(src.as_os_str().as_encoded_bytes())
            .map_err(|_| SourceError::InvalidPath(src.clone()))?;
        let cwd = std::fs::File::open("/").map_err(open_err("/".as_ref()))?;
        let root = sys::openat(cwd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(open_err(src))?;
        let proc = sys::open_proc_self_fd().map_err(SourceError::NoProc)?;
        let table =
            InodeTable::new(root, proc, cfg.fd_cache).map_err(|e| open_err(src)(e.into()))?;
        if !table
            .get(NodeId::ROOT)
            .map(|r| r.has_handle())
            .unwrap_or(false)
        {
            warn!(
                "{}: the filesystem has no file handles; every inode keeps an fd open (limit {})",
                src.display(),
                cfg.fd_cache
            );
        }
        if cfg.media.is_some() || cfg.policy.needs_paths() {
            table.track_names();
        }
        let locks = Arc::new(LockTable::with_limits(
            locks::MAX_LOCK_WAITERS,
            cfg.lock_settle,
        ));
        Ok(PassthroughFs {
            cfg,
            table,
            files: FastMap::default(),
            next_fh: AtomicU64::new(1),
            backing: Backing::default(),
            conn: OnceLock::new(),
            dont_mask: AtomicBool::new(false),
            killpriv_v2: AtomicBool::new(false),
            kernel_locks: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            parked_dirs: Mutex::new(Vec::new()),
            parked_count: Default::default(),
            writeback: AtomicBool::new(false),
            groups: GroupCache::default(),
            locks,
            kinds: KindCounters::default(),
            kernel_files: FastMap::default(),
            flush_noop: Mutex::new(Vec::new()),
            cap_removed: FastMap::default(),
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

    /// Blocked lock waits right now.
    pub fn lock_waiters(&self) -> usize {
        self.locks.waiters()
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

    fn inode(&self, nodeid: NodeId, op: Opcode) -> Result<Arc<Inode>, Errno> {
        let inode = self.table.get(nodeid)?;
        self.kinds.count(inode.kind, op);
        Ok(inode)
    }

    fn file(&self, fh: Fh) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .get(&fh)
            .map(|f| f.value().clone())
            .ok_or(Errno::EBADF)
    }

    fn add_file(&self, f: OpenFile) -> Fh {
        let fh = Fh::from_raw(self.next_fh.fetch_add(1, Ordering::Relaxed));
        f.inode.pin();
        self.files.insert(fh, Arc::new(f));
        fh
    }

    /// Removes an open file; the fd closes when the last request using it
    /// is done.
    fn remove_file(&self, fh: Fh) -> Option<Arc<OpenFile>> {
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

    /// A real open of `inode` with `flags` (through /proc/self/fd from its
    /// O_PATH fd), checked by the host as the caller when it must be
    /// (OPEN, OPENDIR).
    fn reopen_as_caller(&self, ctx: &Context, inode: &Inode, flags: i32) -> Result<OwnedFd, Errno> {
        let fd = self.table.fd(inode)?;
        let _g = self.as_caller(ctx, false)?;
        self.reopen(fd.fd(), flags)
    }

    /// A real open, with `flags`, of what the O_PATH fd `fd` names (through
    /// /proc/self/fd), as whoever the thread acts as.
    fn reopen(&self, fd: std::os::fd::BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, Errno> {
        self.table
            .with_fd_headroom(|| sys::reopen(self.table.proc_self_fd(), fd, flags))
    }

    /// Whether the mount updates no access time of `inode` (`ro`, `noatime`,
    /// or `nodiratime` for a directory).
    fn noatime_for(&self, inode: &Inode) -> bool {
        self.cfg.noatime || (inode.kind == Kind::Directory && self.cfg.nodiratime)
    }

    /// [`Self::reopen_as_caller`] for the daemon's own reads or listing,
    /// with `O_NOATIME` where the mount updates no access times (options of
    /// the mount as the daemon made it: a later `mount -o remount` is not
    /// seen). `O_NOATIME` needs the owner or CAP_FOWNER: without them
    /// (`EPERM`) the open goes on without it, as the kernel's does.
    fn reopen_for_io(&self, ctx: &Context, inode: &Inode, flags: i32) -> Result<OwnedFd, Errno> {
        self.open_noatime_first(inode, flags, |f| self.reopen_as_caller(ctx, inode, f))
    }

    /// `open(flags)`, with `O_NOATIME` first where the mount updates no
    /// access time of `inode`, and again without it on `EPERM` (not the
    /// owner, no CAP_FOWNER).
    fn open_noatime_first(
        &self,
        inode: &Inode,
        flags: i32,
        open: impl Fn(i32) -> Result<OwnedFd, Errno>,
    ) -> Result<OwnedFd, Errno> {
        if self.noatime_for(inode) {
            match open(flags | libc::O_NOATIME) {
                Err(Errno(libc::EPERM)) => {}
                r => return r,
            }
        }
        open(flags)
    }

    /// The umask for a create: the request's when we negotiated DONT_MASK
    /// (so the host applies it, or ignores it under a default ACL).
    fn umask(&self, umask: u32) -> Option<u32> {
        self.dont_mask.load(Ordering::Relaxed).then_some(umask)
    }

    /// Builds the entry reply for a looked-up inode, with a backing id when
    /// the kernel does inode passthrough and the policy says so.
    fn make_entry(&self, looked: &Looked, parent: &Inode, name: &CStr) -> Entry {
        self.table
            .set_link(&looked.inode, parent.nodeid, name.to_bytes());
        self.decide(&looked.inode, parent, name);
        let backing_id = if self.backing.mode() == backing::Mode::Inode {
            let mask = self.mask_of(&looked.inode);
            match self.table.fd(&looked.inode) {
                Ok(fd) => self.backing.for_entry(&looked.inode, fd.fd(), mask),
                Err(_) => BackingId::NONE,
            }
        } else {
            BackingId::NONE
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

    /// An attribute reply, valid as long as entries are.
    fn attr_reply(&self, attr: abi::Attr) -> Attr {
        Attr {
            attr,
            ttl: self.entry_ttl(),
        }
    }

    fn forget_one(&self, nodeid: NodeId, n: u64) {
        if let Some(inode) = self.table.forget(nodeid, n) {
            self.forget_kernel_files(nodeid);
            self.forget_parked_dirs(nodeid);
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
    fn wants(&self) -> Wants {
        let mut w = Wants::default();
        w.flags |= InitFlags::ATOMIC_O_TRUNC
            | InitFlags::SETXATTR_EXT
            | InitFlags::CREATE_SUPP_GROUP
            | InitFlags::ASYNC_DIO
            // nodeids are not stable across FORGET, so file handles of the
            // mount (name_to_handle_at, NFS export) cannot be honoured.
            | InitFlags::NO_EXPORT_SUPPORT
            // Shared mmap of FOPEN_DIRECT_IO files (O_DIRECT opens,
            // --direct-io): the kernel keeps the page cache coherent.
            | InitFlags::DIRECT_IO_ALLOW_MMAP;
        if self.cfg.readdirplus {
            w.flags |= InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO;
        }
        if self.cfg.host_locks {
            w.flags |= InitFlags::FLOCK_LOCKS | InitFlags::POSIX_LOCKS;
        }
        // POSIX ACLs: the kernel enforces them (with default_permissions)
        // and leaves the umask to us, so default ACLs work as on the host.
        w.flags |= InitFlags::POSIX_ACL | InitFlags::DONT_MASK;
        w.together.push(InitFlags::POSIX_ACL | InitFlags::DONT_MASK);
        if !self.cfg.default_permissions && !self.cfg.allow_other {
            // FUSE_POSIX_ACL turns the kernel's default_permissions back on
            // (fs/fuse/inode.c): with it, nodefault_permissions did nothing
            // but add credential switches. Without it SOURCE checks every
            // request and its ACLs as the caller, and the kernel, which no
            // longer reads a directory's mode, stops asking GETATTR of a
            // directory after each change in it (6.18 invalidates the mode
            // with the mtime: 2 of the 8 requests of a create+unlink). Kept
            // with inode passthrough: the kernel checks those inodes itself
            // (patch 0006, as overlayfs) and needs the ACLs to do it right.
            // Kept with allow_other: a path the kernel has cached reaches a
            // file without a LOOKUP, so no one would check another user's
            // search permission on its directories
            // (permissions.rs a_cached_path_still_needs_search_permission);
            // without allow_other the one user is the mount's owner.
            w.unless.push((
                InitFlags::POSIX_ACL,
                InitFlags::PASSTHROUGH_INO,
                InitFlags::POSIX_ACL | InitFlags::DONT_MASK,
            ));
        }
        if self.cfg.killpriv_v2 {
            // HANDLE_KILLPRIV_V2. Without it FUSE sets S_NOSEC on no inode,
            // and the kernel asks GETXATTR security.capability before every
            // write(2) and chown: 3.4 requests per untarred entry (27% of
            // them), one per 1 MiB write. With it, it asks at the first
            // write, sets S_NOSEC until the next attribute refresh, and
            // leaves clearing setuid/setgid to us (untar: 12.48 -> 9.95
            // requests per entry; 256 MiB write: 263 -> 8).
            // Safe because every write, truncate and chown that must clear
            // them reaches the daemon (`killpriv.rs` clears them by the VFS
            // rules, as a root daemon's own calls would not):
            // - daemon-served WRITE: FUSE_WRITE_KILL_SUIDGID;
            // - OPEN with O_TRUNC: FUSE_OPEN_KILL_SUIDGID;
            // - truncate, chown: SETATTR with FATTR_KILL_SUIDGID;
            // - writes the daemon never sees (passthrough write(2),
            //   fallocate, copy_file_range) and chown(-1, -1): the empty
            //   SETATTR of file_remove_privs() (fuse_setattr() drops
            //   ATTR_KILL_S*ID and ATTR_MODE, ATTR_FORCE still sends it).
            // security.capability is removed by the kernel (REMOVEXATTR
            // under ATTR_KILL_PRIV) and by the host on every write. Proven
            // against the host in tests/killpriv.rs; fstests 193, 355,
            // 683-685 and 688 pass with it (683-685 failed without).
            w.flags |= InitFlags::HANDLE_KILLPRIV_V2;
            // Inode passthrough (patched kernels): not shown to kill
            // through the paths that bypass the daemon there (OPEN and
            // SETATTR from the backing inode): not with it.
            w.excludes
                .push((InitFlags::PASSTHROUGH_INO, InitFlags::HANDLE_KILLPRIV_V2));
        }
        // Does the daemon's OPENDIR check read permission that no one else
        // checks? With nodefault_permissions SOURCE checks it as the
        // caller, unless the only caller is root: without allow_other the
        // kernel lets only the mount's owner in, and root's open (fsuid 0,
        // the daemon's capabilities) is refused by no mode or ACL.
        let opendir_checks = !self.cfg.default_permissions
            && (self.cfg.allow_other || !nix::unistd::geteuid().is_root());
        if !self.cfg.nocache && self.cfg.media.is_none() && !opendir_checks {
            // Zero-message opendir: the daemon's OPENDIR would only open an
            // fd and answer KEEP_CACHE | CACHE_DIR, which is what the kernel
            // gives a directory it opens by itself once OPENDIR says ENOSYS
            // (fs/fuse/file.c fuse_file_open), and read permission is
            // checked already (by the kernel with default_permissions).
            // That saves OPENDIR and RELEASEDIR for every directory read: 2
            // of the ~3 requests per directory of a warm `ls -lR`, and of
            // `rm -rf`. Not where OPENDIR does more: the media provider's
            // per-uid listings (no shared cache), --nocache (no cache),
            // SOURCE's checks as another caller (nodefault_permissions with
            // allow_other or a non-root daemon), inode passthrough
            // (directories opened from their backing).
            w.flags |= InitFlags::NO_OPENDIR_SUPPORT;
            w.excludes
                .push((InitFlags::PASSTHROUGH_INO, InitFlags::NO_OPENDIR_SUPPORT));
        }
        if !self.cfg.nocache {
            w.flags |=
                InitFlags::AUTO_INVAL_DATA | InitFlags::CACHE_SYMLINKS | InitFlags::WRITEBACK_CACHE;
        }
        if self.cfg.passthrough {
            w.flags |= InitFlags::PASSTHROUGH;
            w.max_stack_depth = self.cfg.max_stack_depth;
            // Writeback cache only when the daemon serves I/O itself.
            w.excludes
                .push((InitFlags::PASSTHROUGH, InitFlags::WRITEBACK_CACHE));
            if self.cfg.policy.wants_inode_passthrough() {
                w.flags |= InitFlags::PASSTHROUGH_INO;
                // With FUSE_PASSTHROUGH_DIRENTPLUS (patches 0013, 0014)
                // READDIRPLUS entries carry their backing ids, and with
                // READDIRPLUS_AUTO the kernel lists a directory that passes
                // READDIR through from its backing directory (no request per
                // entry: `find`), and asks for READDIRPLUS only once the
                // listed names are looked up (a stat walk: a few READDIRPLUS
                // per directory). Without it, READDIRPLUS entries would have
                // no backing: let every entry come through LOOKUP instead.
                if self.cfg.readdirplus {
                    w.flags |= InitFlags::PASSTHROUGH_DIRENTPLUS;
                }
                w.unless.push((
                    InitFlags::PASSTHROUGH_INO,
                    InitFlags::PASSTHROUGH_DIRENTPLUS,
                    InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO,
                ));
                // Files opened from their backing file have no handle here
                // and send no FLUSH or RELEASE: the daemon could never drop
                // their locks. The kernel keeps such locks itself.
                if self.cfg.policy.may_pass_open() {
                    w.excludes.push((
                        InitFlags::PASSTHROUGH_INO,
                        InitFlags::POSIX_LOCKS | InitFlags::FLOCK_LOCKS,
                    ));
                }
            }
        }
        w
    }

    fn init(&self, conn: &Arc<Connection>) -> Result<(), Errno> {
        let _ = self.conn.set(conn.clone());
        let n = conn.negotiated().ok_or(Errno::EIO)?;
        self.dont_mask
            .store(n.has(InitFlags::DONT_MASK), Ordering::Relaxed);
        self.writeback
            .store(n.has(InitFlags::WRITEBACK_CACHE), Ordering::Relaxed);
        self.killpriv_v2
            .store(n.has(InitFlags::HANDLE_KILLPRIV_V2), Ordering::Relaxed);
        self.kernel_locks.store(
            !n.has(InitFlags::POSIX_LOCKS) && !n.has(InitFlags::FLOCK_LOCKS),
            Ordering::Relaxed,
        );
        self.no_opendir
            .store(n.has(InitFlags::NO_OPENDIR_SUPPORT), Ordering::Relaxed);
        let mode = if n.has(InitFlags::PASSTHROUGH_INO) {
            backing::Mode::Inode
        } else if n.has(InitFlags::PASSTHROUGH) {
            backing::Mode::Io
        } else {
            if self.cfg.passthrough {
                warn!(
                    "the kernel does not offer FUSE passthrough; the daemon serves all I/O itself"
                );
            }
            backing::Mode::Off
        };
        if self.cfg.killpriv_v2 && !n.has(InitFlags::HANDLE_KILLPRIV_V2) {
            info!(
                "HANDLE_KILLPRIV_V2 not negotiated ({}): the kernel asks for security.capability before each write",
                if n.has(InitFlags::PASSTHROUGH_INO) {
                    "inode passthrough"
                } else {
                    "not offered"
                }
            );
        }
        if !self.cfg.default_permissions {
            info!(
                "nodefault_permissions: {}",
                if self.cfg.allow_other {
                    "with allow_other the kernel still checks permissions too (FUSE_POSIX_ACL): \
                     cached paths would skip the search permission of their directories"
                } else if n.has(InitFlags::POSIX_ACL) {
                    "inode passthrough checks permissions in the kernel, against the backing inode"
                } else {
                    "SOURCE checks each request and its ACLs as the caller (the kernel applies \
                     the umask before a default ACL does)"
                }
            );
        }
        if !self.cfg.xattrs {
            info!(
                "xattrs off: the mount shows no extended attributes and no ACLs; {}",
                if self.cfg.default_permissions {
                    "the kernel checks mode bits only"
                } else {
                    "SOURCE still applies its ACLs to each caller"
                }
            );
        }
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

    fn reply_lost(&self, lost: Lost<'_>) {
        if let Some(fh) = lost.fh {
            self.remove_file(fh);
        }
        for &n in lost.lookups {
            self.forget_one(n, 1);
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
