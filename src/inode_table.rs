//! The inode table: nodeid -> inode, and (st_dev, st_ino) -> nodeid so hard
//! links share one inode.
//!
//! Design for more inodes than file descriptors: an inode's O_PATH fd is
//! only a cache, backed by a file handle. The table holds at most
//! `capacity` such fds; past that a clock sweep closes the fds of inodes
//! that are idle (not in use by a request, not open, with a handle), and
//! they are reopened with `open_by_handle_at` when next used. Inodes on a
//! filesystem without handles keep their fd (and count against the limit).
//!
//! Where an inode is (its path relative to SOURCE, for the policy and the
//! media provider) comes from the table itself: when asked to
//! ([`InodeTable::track_names`]), every inode keeps a link to its parent's
//! nodeid and its name, set at each lookup and moved by rename and unlink
//! through the mount. A change made on SOURCE directly is seen at the next
//! lookup of the name (the kernel revalidates its entries by lookups).
//!
//! Directories get their handle when they enter the table (the first
//! directory seen on a mount registers that mount for `open_by_handle_at`);
//! other inodes only when the sweep is about to close their fd, from that
//! still-open fd: most files (created, listed, removed) never lose their fd,
//! and `name_to_handle_at` was one syscall per new inode.
//!
//! nodeids come from a counter and are never reused, so the generation is
//! always 0. Lookup counts follow the kernel's: +1 per entry reply, -n per
//! FORGET; an inode whose count reached 0 is never revived (a racing lookup
//! waits for its removal and inserts a fresh inode).

use std::collections::VecDeque;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::fasthash::FastMap;
use dashmap::mapref::entry::Entry as MapEntry;
use parking_lot::{Mutex, RwLock};

use crate::file_handle::{FileHandle, MountFds};
use crate::fuse::{abi, BackingId, Errno, NodeId};
use crate::sys;
use crate::sys::fd_slot::{Evicted, FdSlot, SlotFd};

/// Identity of a file in the source tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

impl InodeKey {
    pub fn of(st: &libc::statx) -> InodeKey {
        InodeKey {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
        }
    }
}

/// File type of an inode, fixed for its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Directory,
    Regular,
    Symlink,
    /// FIFOs, sockets, devices: never opened by the daemon except O_PATH.
    Special,
}

impl Kind {
    pub fn of_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFREG => Kind::Regular,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::Regular => "regular",
            Kind::Symlink => "symlink",
            Kind::Special => "special",
        }
    }
}

/// Backing-id state of an inode (see `backing.rs`).
#[derive(Debug, Default)]
pub struct BackingSlot {
    /// Registered backing id, `BackingId::NONE` if none.
    pub id: BackingId,
    /// Opens currently using `id` for I/O passthrough.
    pub opens: u32,
    /// The id was registered at lookup (inode passthrough) and lives until
    /// the inode is forgotten.
    pub for_inode: bool,
    /// The policy decision for this inode, taken at its first lookup
    /// (0 = not decided yet; see `policy.rs`).
    pub decision: u16,
}

/// Counters shared by the table and its inodes.
#[derive(Default)]
pub struct FdBudget {
    /// O_PATH fds currently held by inodes.
    pub open: AtomicUsize,
    /// Most O_PATH fds the cache keeps before evicting.
    pub capacity: AtomicUsize,
    /// fds closed by eviction, and reopened from handles.
    pub evictions: AtomicU64,
    pub reopens: AtomicU64,
}

/// One inode of the source tree known to the kernel.
pub struct Inode {
    pub nodeid: NodeId,
    pub key: InodeKey,
    pub kind: Kind,
    /// Set once: at insertion for directories (and the root), else when the
    /// fd is first evicted. `Some(None)`: the filesystem gave no handle, so
    /// the inode keeps its fd.
    handle: OnceLock<Option<FileHandle>>,
    /// The O_PATH fd, if cached: requests borrow it without holding a
    /// lock, eviction closes it only when no borrow is alive (see
    /// sys::fd_slot for why neither a guard nor an `Arc`).
    fd: FdSlot,
    nlookup: AtomicU64,
    /// Clock bit: used since the last sweep.
    referenced: AtomicBool,
    /// Open files (and other pins) that need the fd to stay.
    pins: AtomicU32,
    /// Its last name was removed through the mount: it keeps its fd (and
    /// one pin) until FORGET, since a handle cannot reopen it any more.
    unlinked: AtomicBool,
    pub backing: Mutex<BackingSlot>,
    /// Its parent's nodeid and its name there (only while the table tracks
    /// names; `None` for the root, an unnamed inode, or one whose name was
    /// removed).
    link: Mutex<Option<Link>>,
    budget: &'static FdBudget,
}

/// Where an inode was last seen: the entry `name` of directory `parent`.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    parent: NodeId,
    name: Box<[u8]>,
}

impl Drop for Inode {
    fn drop(&mut self) {
        if self.fd.is_cached_mut() {
            self.budget.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Inode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inode")
            .field("nodeid", &self.nodeid)
            .field("key", &self.key)
            .field("kind", &self.kind)
            .field("nlookup", &self.nlookup.load(Ordering::Relaxed))
            .finish()
    }
}

impl Inode {
    pub fn nlookup(&self) -> u64 {
        self.nlookup.load(Ordering::Acquire)
    }

    /// False once the filesystem refused a handle for this inode; true if
    /// it gave one or was not asked yet (see the module doc).
    pub fn has_handle(&self) -> bool {
        !matches!(self.handle.get(), Some(None))
    }

    /// The handle, if one was taken.
    fn known_handle(&self) -> Option<&FileHandle> {
        self.handle.get().and_then(Option::as_ref)
    }

    /// +1 lookup, unless the count already reached 0 (the inode is being
    /// removed and must not come back).
    fn try_inc_lookup(&self, n: u64) -> bool {
        let mut cur = self.nlookup.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return false;
            }
            match self.nlookup.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Keeps the fd from being evicted while the inode is open.
    pub fn pin(&self) {
        self.pins.fetch_add(1, Ordering::AcqRel);
    }

    pub fn unpin(&self) {
        self.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The inode's O_PATH fd, held for the duration of one operation: a
/// shared reference, not a lock guard, so taking it twice (or while another
/// thread reopens the slot) can never deadlock. Eviction leaves an fd in
/// use alone, and it stays open until the last reference is dropped.
pub struct InodeFd<'a>(SlotFd<'a>);

impl<'a> InodeFd<'a> {
    pub fn fd(&self) -> BorrowedFd<'a> {
        self.0.fd()
    }
}

impl<'a> Deref for InodeFd<'a> {
    type Target = BorrowedFd<'a>;
    fn deref(&self) -> &BorrowedFd<'a> {
        &self.0
    }
}

/// An inode whose last name an operation may remove, with its fd held and
/// pinned (see [`InodeTable::hold_victim`]).
pub struct Victim {
    inode: Arc<Inode>,
    /// Its link count before the operation.
    nlink: u32,
}

/// The result of looking a name up.
pub struct Looked {
    pub inode: Arc<Inode>,
    pub stat: libc::statx,
}

/// statx fields every lookup asks for.
pub const STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_BTIME;

pub struct InodeTable {
    by_id: FastMap<NodeId, Arc<Inode>>,
    by_key: FastMap<InodeKey, NodeId>,
    next_id: AtomicU64,
    /// Clock queue of nodeids whose inode holds an fd.
    clock: Mutex<VecDeque<NodeId>>,
    budget: &'static FdBudget,
    mounts: MountFds,
    root_dev: u64,
    /// Devices in order of first sight (SOURCE's first): the index is the
    /// st_ino prefix of a submount (see [`InodeTable::report_ino`]).
    devs: RwLock<Vec<u64>>,
    /// st_ino given to inode numbers that do not fit under a prefix.
    remap: FastMap<InodeKey, u64>,
    next_remap: AtomicU64,
    /// Inodes keep their parent link and name ([`InodeTable::track_names`]).
    names: AtomicBool,
    /// Most inodes held since the last shrink.
    high_water: AtomicUsize,
}

impl InodeTable {
    /// Builds a table whose root (nodeid 1) is `root`, an O_PATH fd of
    /// SOURCE. `capacity`: most O_PATH fds to cache.
    pub fn new(root: OwnedFd, proc_self_fd: OwnedFd, capacity: usize) -> Result<InodeTable, Errno> {
        let budget: &'static FdBudget = Box::leak(Box::default());
        budget.capacity.store(capacity.max(16), Ordering::Relaxed);
        let st = sys::statx(root.as_fd(), STATX_MASK)?;
        let key = InodeKey::of(&st);
        let mounts = MountFds::new(proc_self_fd);
        let handle = OnceLock::from(mounts.handle_of(root.as_fd(), true));
        budget.open.fetch_add(1, Ordering::Relaxed);
        let root = Arc::new(Inode {
            nodeid: NodeId::ROOT,
            key,
            kind: Kind::Directory,
            handle,
            fd: FdSlot::new(Some(root)),
            // The kernel never forgets the root; a count it cannot reach.
            nlookup: AtomicU64::new(1 << 62),
            referenced: AtomicBool::new(true),
            pins: AtomicU32::new(1),
            unlinked: AtomicBool::new(false),
            backing: Mutex::new(BackingSlot::default()),
            link: Mutex::new(None),
            budget,
        });
        let t = InodeTable {
            by_id: FastMap::default(),
            by_key: FastMap::default(),
            next_id: AtomicU64::new(abi::ROOT_ID + 1),
            clock: Mutex::new(VecDeque::new()),
            budget,
            mounts,
            root_dev: key.dev,
            devs: RwLock::new(vec![key.dev]),
            remap: FastMap::default(),
            next_remap: AtomicU64::new(0),
            names: AtomicBool::new(false),
            high_water: AtomicUsize::new(1),
        };
        t.by_id.insert(NodeId::ROOT, root);
        t.by_key.insert(key, NodeId::ROOT);
        Ok(t)
    }

    pub fn budget(&self) -> &FdBudget {
        self.budget
    }

    pub fn mounts(&self) -> &MountFds {
        &self.mounts
    }

    pub fn proc_self_fd(&self) -> BorrowedFd<'_> {
        self.mounts.proc_self_fd()
    }

    /// Inodes the kernel currently knows (root included).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The inode of `nodeid`. An id the kernel never got (or already
    /// forgot) is ESTALE, never a crash.
    pub fn get(&self, nodeid: NodeId) -> Result<Arc<Inode>, Errno> {
        self.by_id
            .get(&nodeid)
            .map(|r| r.value().clone())
            .ok_or(Errno::ESTALE)
    }

    /// st_ino as reported to the kernel, unique across the submounts SOURCE
    /// spans (tar, du and rsync must see no false hard links), collision-free
    /// by construction:
    /// - SOURCE's own device, inode number below 2^47: unchanged;
    /// - a submount's device gets a prefix 1..=0xffff on first sight, and
    ///   its inode numbers below 2^47 become `prefix << 47 | ino`;
    /// - anything else (a larger inode number, more than 65,535 devices)
    ///   gets `1 << 63 | n` from a counter, remembered for the daemon's life
    ///   so the same file always shows the same number.
    ///
    /// The three ranges are disjoint, and each is one-to-one.
    pub fn report_ino(&self, key: InodeKey) -> u64 {
        const PREFIX_SHIFT: u32 = 47;
        const MAX_PREFIX: usize = 0xffff;
        if key.ino < 1 << PREFIX_SHIFT {
            if key.dev == self.root_dev {
                return key.ino;
            }
            if let Some(p) = self.dev_prefix(key.dev).filter(|&p| p <= MAX_PREFIX) {
                return (p as u64) << PREFIX_SHIFT | key.ino;
            }
        }
        if let Some(v) = self.remap.get(&key) {
            return *v;
        }
        *self
            .remap
            .entry(key)
            .or_insert_with(|| 1 << 63 | self.next_remap.fetch_add(1, Ordering::Relaxed))
    }

    /// Index of `dev` in order of first sight (SOURCE's device is 0).
    fn dev_prefix(&self, dev: u64) -> Option<usize> {
        if let Some(i) = self.devs.read().iter().position(|&d| d == dev) {
            return Some(i);
        }
        let mut devs = self.devs.write();
        if let Some(i) = devs.iter().position(|&d| d == dev) {
            return Some(i);
        }
        if devs.len() > 0xffff {
            return None;
        }
        devs.push(dev);
        Some(devs.len() - 1)
    }

    /// From now on inodes keep their parent link and name, so that
    /// [`InodeTable::relative_path`] can answer (a policy with path rules,
    /// the media provider). Call before the first lookup.
    pub fn track_names(&self) {
        self.names.store(true, Ordering::Relaxed);
    }

    /// Records that `inode` is the entry `name` of `parent` (a lookup, a
    /// create, a READDIRPLUS entry, a rename). An empty name (O_TMPFILE)
    /// records nothing.
    pub fn set_link(&self, inode: &Inode, parent: NodeId, name: &[u8]) {
        if !self.names.load(Ordering::Relaxed) || name.is_empty() || inode.nodeid == NodeId::ROOT {
            return;
        }
        let mut link = inode.link.lock();
        if link
            .as_ref()
            .is_some_and(|l| l.parent == parent && *l.name == *name)
        {
            return;
        }
        *link = Some(Link {
            parent,
            name: name.into(),
        });
    }

    /// The entry `name` of `parent` went away (unlink, rmdir, replaced by a
    /// rename): `inode` loses its link if that was the name it had.
    pub fn drop_link(&self, inode: &Inode, parent: NodeId, name: &[u8]) {
        let mut link = inode.link.lock();
        if link
            .as_ref()
            .is_some_and(|l| l.parent == parent && *l.name == *name)
        {
            *link = None;
        }
    }

    /// The inode the kernel knows at `dir/name` right now, if any (before a
    /// rename or unlink moves its link). Only while names are tracked.
    pub fn known_at(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<Arc<Inode>> {
        if !self.names.load(Ordering::Relaxed) {
            return None;
        }
        let st = sys::statx_at(dir, name, libc::STATX_INO | libc::STATX_TYPE).ok()?;
        let nodeid = *self.by_key.get(&InodeKey::of(&st))?;
        self.get(nodeid)
            .ok()
            .filter(|i| i.kind == Kind::of_mode(st.stx_mode as u32))
    }

    /// Path of `inode` relative to SOURCE ("" for the root), from the parent
    /// links. `None` when the table does not track names, or the inode is
    /// not reachable from the root through names it knows (unlinked, its
    /// name never seen, a parent forgotten meanwhile, not UTF-8).
    pub fn relative_path(&self, inode: &Inode) -> Option<String> {
        // Deeper than PATH_MAX allows means a broken chain, not a path.
        const MAX_DEPTH: usize = 2048;
        let mut names: Vec<Box<[u8]>> = Vec::new();
        let mut parent = {
            if inode.nodeid == NodeId::ROOT {
                return Some(String::new());
            }
            let link = inode.link.lock();
            let l = link.as_ref()?;
            names.push(l.name.clone());
            l.parent
        };
        while parent != NodeId::ROOT {
            if names.len() > MAX_DEPTH {
                return None;
            }
            let p = self.get(parent).ok()?;
            let link = p.link.lock();
            let l = link.as_ref()?;
            names.push(l.name.clone());
            parent = l.parent;
        }
        names.reverse();
        String::from_utf8(names.join(&b'/')).ok()
    }

    /// The inode's O_PATH fd, reopened from its handle if it was evicted.
    pub fn fd<'a>(&self, inode: &'a Inode) -> Result<InodeFd<'a>, Errno> {
        inode.referenced.store(true, Ordering::Relaxed);
        if let Some(f) = inode.fd.get() {
            return Ok(InodeFd(f));
        }
        if inode.unlinked.load(Ordering::Acquire) {
            // Never reopened by handle (it would be ESTALE, or on some
            // filesystems another error); it keeps its fd, so not reached.
            return Err(Errno::ESTALE);
        }
        // An fd is only ever evicted once the inode has a handle.
        let handle = inode.known_handle().ok_or(Errno::ESTALE)?;
        // Unless another request reopened it meanwhile.
        let (held, reopened) = inode.fd.get_or_open(|| {
            self.with_fd_headroom(|| self.mounts.open(handle))
                .inspect_err(|e| {
                    tracing::debug!(
                        nodeid = %inode.nodeid,
                        "reopening from the file handle failed: {e}"
                    )
                })
        })?;
        if !reopened {
            return Ok(InodeFd(held));
        }
        self.budget.open.fetch_add(1, Ordering::Relaxed);
        self.budget.reopens.fetch_add(1, Ordering::Relaxed);
        self.queue_for_eviction(inode.nodeid);
        self.maybe_evict();
        Ok(InodeFd(held))
    }

    /// Before an operation that may remove the last name of `dir/name`
    /// (unlink, rmdir, rename over it): if the kernel knows that inode,
    /// make sure it holds its fd (reopened from the handle while that still
    /// works) and pin it. Hand the result to [`InodeTable::settle_victim`].
    pub fn hold_victim(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<Victim> {
        let st = sys::statx_at(
            dir,
            name,
            libc::STATX_INO | libc::STATX_TYPE | libc::STATX_NLINK,
        )
        .ok()?;
        let nodeid = *self.by_key.get(&InodeKey::of(&st))?;
        let inode = self.get(nodeid).ok()?;
        if inode.kind != Kind::of_mode(st.stx_mode as u32) {
            return None;
        }
        // Pinned first, so eviction cannot take the fd once we have it.
        inode.pin();
        // Pinned, it keeps its fd once it has one.
        match self.fd(&inode).map(drop) {
            Ok(()) => Some(Victim {
                inode,
                nlink: st.stx_nlink,
            }),
            Err(_) => {
                inode.unpin();
                None
            }
        }
    }

    /// After the operation (`removed`: it succeeded): an inode left without
    /// a name keeps its fd and its pin until FORGET (writeback may still
    /// send SETATTR or WRITE for it, and a handle cannot reopen it); any
    /// other is unpinned. A directory, or a file that had one link, is gone
    /// when the operation succeeded; only a file with more links is asked.
    /// (Should a link be added meanwhile, the inode just keeps its fd.)
    pub fn settle_victim(&self, v: Victim, removed: bool) {
        let gone = removed
            && (v.inode.kind == Kind::Directory
                || v.nlink <= 1
                || self.fd(&v.inode).is_ok_and(|fd| {
                    sys::statx(fd.fd(), libc::STATX_NLINK).is_ok_and(|st| st.stx_nlink == 0)
                }));
        if gone && !v.inode.unlinked.swap(true, Ordering::AcqRel) {
            // The pin stays with the inode.
            return;
        }
        v.inode.unpin();
    }

    /// Runs `f`; on EMFILE/ENFILE closes cached fds and tries once more.
    pub fn with_fd_headroom<T>(&self, mut f: impl FnMut() -> sys::Result<T>) -> Result<T, Errno> {
        match f() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                let n = self.budget.open.load(Ordering::Relaxed) / 4 + 8;
                self.evict(n);
                f().map_err(Errno::from)
            }
            r => r.map_err(Errno::from),
        }
    }

    /// Looks `name` up in `parent` and returns the (possibly shared) inode
    /// with one more lookup count.
    pub fn lookup(&self, parent: &Inode, name: &std::ffi::CStr) -> Result<Looked, Errno> {
        let pfd = self.fd(parent)?;
        let fd = self
            .with_fd_headroom(|| sys::openat(pfd.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0))?;
        drop(pfd);
        self.insert_fd(fd)
    }

    /// Registers an O_PATH fd just opened (lookup, mkdir, create ...).
    pub fn insert_fd(&self, fd: OwnedFd) -> Result<Looked, Errno> {
        let stat = sys::statx(fd.as_fd(), STATX_MASK)?;
        let key = InodeKey::of(&stat);
        let kind = Kind::of_mode(stat.stx_mode as u32);
        let mut fd = Some(fd);
        let mut new_handle: Option<Option<FileHandle>> = None;
        loop {
            // Known inode?
            let existing = self.by_key.get(&key).map(|r| *r.value());
            if let Some(nodeid) = existing {
                if let Ok(inode) = self.get(nodeid) {
                    if self.same_file(&inode, fd.as_ref(), &mut new_handle, kind) {
                        if inode.try_inc_lookup(1) {
                            // Our fresh fd saves a reopen if the inode's fd was evicted.
                            if let Some(f) = fd.take() {
                                self.adopt_fd(&inode, f);
                            }
                            return Ok(Looked { inode, stat });
                        }
                        // Being forgotten right now: wait for the removal.
                        std::thread::yield_now();
                        continue;
                    }
                    // A recycled inode number: the old entry is stale, drop
                    // its key (it lives on under its nodeid until forgotten).
                    self.by_key.remove_if(&key, |_, v| *v == nodeid);
                    continue;
                }
                // The map pointed at a removed nodeid; clean up and retry.
                self.by_key.remove_if(&key, |_, v| *v == nodeid);
                continue;
            }
            // New inode.
            let f = fd.take().ok_or(Errno::EIO)?;
            let handle = match new_handle.take() {
                Some(h) => OnceLock::from(h),
                None if kind == Kind::Directory => {
                    OnceLock::from(self.mounts.handle_of(f.as_fd(), true))
                }
                // Taken from the fd if it is ever evicted.
                None => OnceLock::new(),
            };
            match self.by_key.entry(key) {
                MapEntry::Occupied(_) => {
                    // Lost a race with another lookup of the same file.
                    fd = Some(f);
                    new_handle = handle.into_inner();
                    continue;
                }
                MapEntry::Vacant(v) => {
                    let nodeid = NodeId::from_raw(self.next_id.fetch_add(1, Ordering::Relaxed));
                    let inode = Arc::new(Inode {
                        nodeid,
                        key,
                        kind,
                        handle,
                        fd: FdSlot::new(Some(f)),
                        nlookup: AtomicU64::new(1),
                        referenced: AtomicBool::new(true),
                        pins: AtomicU32::new(0),
                        unlinked: AtomicBool::new(false),
                        backing: Mutex::new(BackingSlot::default()),
                        link: Mutex::new(None),
                        budget: self.budget,
                    });
                    self.budget.open.fetch_add(1, Ordering::Relaxed);
                    self.high_water
                        .fetch_max(self.by_id.len() + 1, Ordering::Relaxed);
                    // Lock order: by_key shard (held by `v`), then by_id.
                    self.by_id.insert(nodeid, inode.clone());
                    v.insert(nodeid);
                    self.queue_for_eviction(nodeid);
                    self.maybe_evict();
                    return Ok(Looked { inode, stat });
                }
            }
        }
    }

    /// Is the file behind `fd` the one `inode` stands for? An inode holding
    /// an fd pins its inode number, so (dev, ino) is proof enough; one whose
    /// fd was evicted is compared by handle (which carries the generation).
    fn same_file(
        &self,
        inode: &Inode,
        fd: Option<&OwnedFd>,
        new_handle: &mut Option<Option<FileHandle>>,
        kind: Kind,
    ) -> bool {
        if inode.kind != kind {
            return false;
        }
        if inode.fd.is_cached() {
            return true;
        }
        let Some(fd) = fd else { return true };
        let h = new_handle
            .get_or_insert_with(|| self.mounts.handle_of(fd.as_fd(), kind == Kind::Directory));
        match (inode.known_handle(), h) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    fn adopt_fd(&self, inode: &Inode, fd: OwnedFd) {
        if inode.fd.fill(fd) {
            self.budget.open.fetch_add(1, Ordering::Relaxed);
            self.queue_for_eviction(inode.nodeid);
            self.maybe_evict();
        }
    }

    /// Puts an inode that just got an fd on the clock queue. Forgotten
    /// inodes leave stale ids behind; compact when they dominate, so a
    /// million lookup/forget cycles do not grow the queue.
    fn queue_for_eviction(&self, nodeid: NodeId) {
        let mut q = self.clock.lock();
        q.push_back(nodeid);
        let open = self.budget.open.load(Ordering::Relaxed);
        if q.len() > 2 * open + 1024 {
            q.retain(|id| self.by_id.contains_key(id));
        }
    }

    /// FORGET: drops `n` lookups; at 0 the inode leaves the table (its fd
    /// closes once the last request using it is done). Returns the removed
    /// inode, so the caller can release what hangs off it (backing ids).
    pub fn forget(&self, nodeid: NodeId, n: u64) -> Option<Arc<Inode>> {
        if nodeid == NodeId::ROOT {
            return None;
        }
        let inode = self.get(nodeid).ok()?;
        let mut cur = inode.nlookup.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return None;
            }
            let next = cur.saturating_sub(n);
            match inode.nlookup.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if next > 0 {
                        return None;
                    }
                    break;
                }
                Err(v) => cur = v,
            }
        }
        self.by_key.remove_if(&inode.key, |_, v| *v == nodeid);
        self.by_id.remove(&nodeid);
        self.maybe_shrink();
        Some(inode)
    }

    /// After the kernel forgot most of what it held (drop_caches, memory
    /// pressure), give the memory back: shrink the maps and the clock
    /// queue, and let the allocator return freed pages to the system.
    fn maybe_shrink(&self) {
        let len = self.by_id.len();
        let hw = self.high_water.fetch_max(len, Ordering::Relaxed).max(len);
        if hw < 4096 || len > hw / 4 {
            return;
        }
        // One thread shrinks; the others carry on.
        if self
            .high_water
            .compare_exchange(hw, len.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.by_id.shrink_to_fit();
        self.by_key.shrink_to_fit();
        {
            let mut q = self.clock.lock();
            q.retain(|id| self.by_id.contains_key(id));
            q.shrink_to_fit();
        }
        sys::malloc_trim();
    }

    fn maybe_evict(&self) {
        let cap = self.budget.capacity.load(Ordering::Relaxed);
        let open = self.budget.open.load(Ordering::Relaxed);
        if open > cap {
            // Evict a little more than needed so sweeps are not per-lookup.
            self.evict(open - cap + cap / 16 + 1);
        }
    }

    /// Clock sweep: closes up to `want` idle fds. Never blocks on an inode
    /// in use.
    pub fn evict(&self, want: usize) -> usize {
        let mut closed = Vec::new();
        {
            let mut q = self.clock.lock();
            let mut budget_steps = q.len() * 2 + 1;
            while closed.len() < want && budget_steps > 0 {
                budget_steps -= 1;
                let Some(id) = q.pop_front() else { break };
                let Some(inode) = self.by_id.get(&id).map(|r| r.value().clone()) else {
                    continue;
                };
                if !inode.has_handle() {
                    // Unevictable: it keeps its fd, off the queue.
                    continue;
                }
                if inode.pins.load(Ordering::Acquire) > 0 {
                    q.push_back(id);
                    continue;
                }
                if inode.referenced.swap(false, Ordering::AcqRel) {
                    q.push_back(id);
                    continue;
                }
                // Only with a handle to reopen it by; on the first
                // eviction, taken from the fd about to close.
                let evicted = inode.fd.try_evict(|fd| {
                    inode
                        .handle
                        .get_or_init(|| {
                            self.mounts
                                .handle_of(fd.as_fd(), inode.kind == Kind::Directory)
                        })
                        .is_some()
                });
                match evicted {
                    // In use by a request right now, or being reopened.
                    Evicted::Busy => q.push_back(id),
                    Evicted::Kept => {}
                    Evicted::Taken(fd) => {
                        self.budget.open.fetch_sub(1, Ordering::Relaxed);
                        self.budget.evictions.fetch_add(1, Ordering::Relaxed);
                        closed.push(fd);
                    }
                }
            }
        }
        let n = closed.len();
        drop(closed);
        n
    }

    /// Inodes by kind, for stats.
    pub fn count_by_kind(&self) -> [(Kind, usize); 4] {
        let mut c = [0usize; 4];
        for r in self.by_id.iter() {
            c[r.value().kind as usize] += 1;
        }
        [
            (Kind::Directory, c[0]),
            (Kind::Regular, c[1]),
            (Kind::Symlink, c[2]),
            (Kind::Special, c[3]),
        ]
    }
}

#[cfg(test)]
mod tests;
