//! Backing ids: handing the kernel the source file behind a FUSE inode.
//!
//! Ids come only from `FUSE_DEV_IOC_BACKING_OPEN` (never an fd in a reply),
//! and are registered with the daemon's own credentials: the kernel records
//! them and runs every passthrough operation with them.
//!
//! Two lifetimes:
//! - *I/O passthrough* (stock kernels >= 6.9): one id per inode while it is
//!   open, registered on its first open, shared by every later open (two ids
//!   for one open inode make the second open fail with EIO), closed when the
//!   last open is released.
//! - *Inode passthrough* (our kernel series, FUSE_PASSTHROUGH_OPS): one id
//!   per inode for its whole life in the table, registered at lookup with an
//!   ops mask, sent on every entry reply naming the inode, closed at FORGET.
//!   Opens of such an inode reuse the same id. The kernel requires GETATTR in
//!   every non-zero mask: an inode whose policy keeps GETATTR in the daemon
//!   gets no inode backing at all.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::fuse::abi::{self, BackingMap, Opcode};
use crate::fuse::{BackingId, Connection, Errno, NodeId};
use crate::inode_table::Inode;
use crate::sys;

/// What the kernel lets us do, decided at INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// No passthrough: the daemon serves all I/O.
    Off = 0,
    /// FOPEN_PASSTHROUGH on open/create (stock kernels).
    Io = 1,
    /// Also backing ids on entries with ops masks (our series).
    Inode = 2,
}

/// Registers and releases backing ids; counts them for the stats.
pub struct Backing {
    conn: OnceLock<Arc<Connection>>,
    mode: AtomicU8,
    /// Ids currently registered with the kernel.
    open_ids: AtomicU64,
    registered: AtomicU64,
    failures: AtomicU64,
    /// Mask bits the kernel accepted (inode mode), learned by probing.
    supported_ops: AtomicU64,
    /// Mask bits probed so far (each once, when a mask first asks for it).
    probed: AtomicU64,
    /// READDIRPLUS entries carry backing ids (FUSE_PASSTHROUGH_DIRENTPLUS).
    dirplus: AtomicBool,
    /// Entries registered, per ops mask.
    per_mask: Mutex<BTreeMap<u64, u64>>,
    /// Entries registered with each op's bit set, per opcode.
    per_op: [AtomicU64; abi::MAX_OPCODE + 1],
    /// Unit tests: ids from a stand-in for the FUSE device's ioctls.
    #[cfg(test)]
    fake: Mutex<Option<tests::FakeDevice>>,
}

impl Default for Backing {
    fn default() -> Self {
        Backing {
            conn: OnceLock::new(),
            mode: AtomicU8::new(Mode::Off as u8),
            open_ids: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            supported_ops: AtomicU64::new(0),
            probed: AtomicU64::new(0),
            dirplus: AtomicBool::new(false),
            per_mask: Mutex::new(BTreeMap::new()),
            per_op: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(test)]
            fake: Mutex::new(None),
        }
    }
}

/// Snapshot for the stats file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackingStats {
    pub mode: &'static str,
    pub open_ids: u64,
    pub registered_total: u64,
    pub failures: u64,
    /// READDIRPLUS entries carry backing ids (FUSE_PASSTHROUGH_DIRENTPLUS).
    pub dirplus: bool,
    /// Inode mode: the ops the kernel agreed to pass through.
    pub supported_ops: Vec<&'static str>,
    /// Inode mode: how many entries were registered with each mask.
    pub entries_per_mask: BTreeMap<String, u64>,
}

impl Backing {
    /// Called from INIT with what was negotiated.
    pub fn start(&self, conn: &Arc<Connection>, mode: Mode) {
        let _ = self.conn.set(conn.clone());
        self.mode.store(mode as u8, Ordering::Release);
        // The layout is the kernel's from INIT on, even if passthrough is
        // disabled later (the ids are 0 then).
        let dirplus = conn
            .negotiated()
            .is_some_and(|n| n.has(abi::InitFlags::PASSTHROUGH_DIRENTPLUS));
        self.dirplus.store(dirplus, Ordering::Release);
    }

    /// READDIRPLUS records carry each entry's backing id
    /// (FUSE_PASSTHROUGH_DIRENTPLUS negotiated, kernel patch 0013).
    pub fn dirplus(&self) -> bool {
        self.dirplus.load(Ordering::Acquire)
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            2 => Mode::Inode,
            1 => Mode::Io,
            _ => Mode::Off,
        }
    }

    /// Turns passthrough off for good (e.g. no CAP_SYS_ADMIN), saying so once.
    fn disable(&self, why: &str) {
        if self.mode.swap(Mode::Off as u8, Ordering::AcqRel) != Mode::Off as u8 {
            warn!("passthrough disabled: {why}; the daemon serves all I/O itself");
        }
    }

    fn ioctl_open(&self, fd: BorrowedFd<'_>, ops_mask: u64) -> Result<BackingId, Errno> {
        #[cfg(test)]
        if let Some(dev) = &*self.fake.lock() {
            let id = dev.open(ops_mask)?;
            self.open_ids.fetch_add(1, Ordering::Relaxed);
            self.registered.fetch_add(1, Ordering::Relaxed);
            return Ok(id);
        }
        let conn = self.conn.get().ok_or(Errno::ENOSYS)?;
        let mut map = BackingMap {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            flags: 0,
            ops_mask,
        };
        let id = sys::fuse_dev::backing_open(conn.dev_fd(), &mut map)?;
        self.open_ids.fetch_add(1, Ordering::Relaxed);
        self.registered.fetch_add(1, Ordering::Relaxed);
        Ok(BackingId::from_raw(id))
    }

    fn ioctl_close(&self, id: BackingId) {
        #[cfg(test)]
        if let Some(dev) = &*self.fake.lock() {
            dev.close(id);
            self.open_ids.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let Some(conn) = self.conn.get() else { return };
        match sys::fuse_dev::backing_close(conn.dev_fd(), id.raw() as u32) {
            Ok(_) => {
                self.open_ids.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => warn!("BACKING_CLOSE({id}) failed: {e}"),
        }
    }

    /// The id to put in an OPEN/CREATE reply for `inode`, or `None` to serve
    /// this open from the daemon. `opath` is the inode's O_PATH fd, `file`
    /// the daemon's own open file (registered instead on kernels that refuse
    /// O_PATH backing files). Every `Some` must be balanced by
    /// [`Backing::release_open`].
    /// `mask` is the policy's mask for the inode: without an inode backing,
    /// I/O passes through only if it has both READ and WRITE.
    pub fn acquire_for_open(
        &self,
        inode: &Inode,
        opath: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        mask: u64,
    ) -> Option<BackingId> {
        if self.mode() == Mode::Off || mask & IO_OPS == 0 {
            return None;
        }
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            // Registered at lookup: usable for I/O only if its mask says so.
            let registered = mask & self.supported_ops();
            if registered & IO_OPS != IO_OPS {
                // Registered without READ and WRITE (see for_entry).
                return None;
            }
            slot.opens += 1;
            return Some(slot.id);
        }
        // A per-open id passes reads, writes and mappings through together:
        // a mask with one of READ, WRITE but not the other keeps both here.
        if mask & IO_OPS != IO_OPS {
            return None;
        }
        if slot.id.is_none() {
            let r = match self.ioctl_open(opath, 0) {
                Err(e) if e.0 == libc::EBADF || e.0 == libc::EINVAL => self.ioctl_open(file, 0),
                r => r,
            };
            match r {
                Ok(id) => slot.id = id,
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    match e.0 {
                        // Not allowed at all: stop trying.
                        libc::EPERM => {
                            self.disable("FUSE_DEV_IOC_BACKING_OPEN: no CAP_SYS_ADMIN (EPERM)")
                        }
                        libc::ENOTTY => {
                            self.disable("this kernel has no FUSE_DEV_IOC_BACKING_OPEN (ENOTTY)")
                        }
                        _ => warn_once_per_errno(e, inode.nodeid),
                    }
                    return None;
                }
            }
        }
        slot.opens += 1;
        Some(slot.id)
    }

    /// Balances [`Backing::acquire_for_open`] (RELEASE, or an OPEN reply
    /// the kernel never took). Closes the id when nothing uses it.
    pub fn release_open(&self, inode: &Inode) {
        let mut slot = inode.backing.lock();
        slot.opens = slot.opens.saturating_sub(1);
        if slot.opens == 0 && !slot.for_inode && !slot.id.is_none() {
            let id = std::mem::take(&mut slot.id);
            drop(slot);
            self.ioctl_close(id);
        }
    }

    /// Inode mode: the id for an entry reply naming `inode` (whose policy
    /// mask is `mask`), registering it on first use. [`BackingId::NONE`]
    /// means "no backing" (masked out, an unsupported type, or refused).
    pub fn for_entry(&self, inode: &Inode, fd: BorrowedFd<'_>, mask: u64) -> BackingId {
        if let Some(id) = {
            let slot = inode.backing.lock();
            slot.for_inode.then_some(slot.id)
        } {
            return id;
        }
        // Nothing beyond read/write: per-open backing ids do that, without
        // tying the inode's every open to passthrough.
        if self.mode() != Mode::Inode || mask & !IO_OPS == 0 {
            return BackingId::NONE;
        }
        if !matches!(
            inode.kind,
            crate::inode_table::Kind::Regular | crate::inode_table::Kind::Directory
        ) {
            return BackingId::NONE;
        }
        let mut usable = self.usable_mask(fd, mask);
        if usable & GETATTR_OP == 0 {
            return BackingId::NONE;
        }
        if usable & IO_OPS != IO_OPS {
            // READ or WRITE in the mask puts the inode in passthrough I/O
            // mode (no page cache), where the kernel refuses mmap without
            // READ and shared writable mmap without WRITE (ENODEV): with
            // one of them masked out, both stay with the daemon, cached.
            // (Directories too: with LOOKUP passed through, the files the
            // kernel finds below one inherit its mask, patch 0015.)
            usable &= !IO_OPS;
        }
        if self.dirplus()
            && inode.kind == crate::inode_table::Kind::Directory
            && usable & crate::policy::LOOKUP_OP == 0
        {
            // The kernel lists a directory that passes READDIR through
            // itself, and sends READDIRPLUS (with the entries' backing ids)
            // once the listed names are looked up (patch 0014), at the
            // backing directory's offsets, which are ours. Its open stays
            // here: READDIRPLUS on a handle, not on a fresh stream each.
            // (After the probe, which learns the kernel's ops from the
            // first mask it sees.) A directory that passes LOOKUP through
            // is never listed with READDIRPLUS (patch 0015): its open may
            // pass through too.
            usable &= !abi::passthrough_op(Opcode::Open);
        }
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            return slot.id;
        }
        if !slot.id.is_none() {
            // Open for I/O since before: the kernel refuses a second,
            // different backing on the inode, so it stays in I/O mode.
            return BackingId::NONE;
        }
        match self.ioctl_open(fd, usable) {
            Ok(id) => {
                slot.id = id;
                slot.for_inode = true;
                *self.per_mask.lock().entry(usable).or_insert(0) += 1;
                for &op in Opcode::ALL {
                    if usable & abi::passthrough_op(op) != 0 {
                        self.per_op[op as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
                id
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                warn_once_per_errno(e, inode.nodeid);
                BackingId::NONE
            }
        }
    }

    /// Inode mode: the inode left the table; its id goes once no open uses it.
    pub fn forget_inode(&self, inode: &Inode) {
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            slot.for_inode = false;
            if slot.opens == 0 && !slot.id.is_none() {
                let id = std::mem::take(&mut slot.id);
                drop(slot);
                self.ioctl_close(id);
            }
        }
    }

    /// Drops mask bits the kernel refuses, probing each bit once, when a
    /// mask first asks for it (one log line per probe: the first entry's
    /// mask, then e.g. `lookup` at the first directory, refused by kernels
    /// without patch 0015).
    fn usable_mask(&self, fd: BorrowedFd<'_>, wanted: u64) -> u64 {
        if wanted & !self.probed.load(Ordering::Acquire) != 0 {
            self.probe(fd, wanted);
        }
        wanted & self.supported_ops.load(Ordering::Acquire)
    }

    fn probe(&self, fd: BorrowedFd<'_>, wanted: u64) {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock();
        let wanted = wanted & !self.probed.load(Ordering::Acquire);
        if wanted == 0 {
            return;
        }
        // GETATTR goes with every other bit: the kernel refuses a mask
        // without it (EINVAL), and an older series accepted it alone too.
        let mut ok = 0u64;
        let mut refused = Vec::new();
        for &op in Opcode::ALL {
            let bit = abi::passthrough_op(op);
            if wanted & bit == 0 {
                continue;
            }
            match self.ioctl_open(fd, bit | GETATTR_OP) {
                Ok(id) => {
                    ok |= bit;
                    self.ioctl_close(id);
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                }
                Err(_) => refused.push(op.name()),
            }
        }
        if !refused.is_empty() {
            warn!(
                "the kernel does not pass through {}; those ops stay with the daemon",
                refused.join(", ")
            );
        }
        let ok = self.supported_ops.fetch_or(ok, Ordering::AcqRel) | ok;
        info!(
            "inode passthrough: kernel serves {}",
            mask_names(ok).join(",")
        );
        self.probed.fetch_or(wanted, Ordering::AcqRel);
    }

    /// Entries registered so far with `op` in their mask.
    pub fn entries_with(&self, op: Opcode) -> u64 {
        self.per_op[op as usize].load(Ordering::Relaxed)
    }

    pub fn supported_ops(&self) -> u64 {
        self.supported_ops.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> BackingStats {
        BackingStats {
            mode: match self.mode() {
                Mode::Off => "off",
                Mode::Io => "io",
                Mode::Inode => "inode",
            },
            open_ids: self.open_ids.load(Ordering::Relaxed),
            registered_total: self.registered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            dirplus: self.dirplus(),
            supported_ops: mask_names(self.supported_ops()),
            entries_per_mask: self
                .per_mask
                .lock()
                .iter()
                .map(|(m, n)| (mask_names(*m).join(","), *n))
                .collect(),
        }
    }
}

/// The bits that make an open do read/write passthrough.
pub const IO_OPS: u64 = abi::passthrough_op(Opcode::Read) | abi::passthrough_op(Opcode::Write);
/// The bit every inode backing mask must have.
const GETATTR_OP: u64 = abi::passthrough_op(Opcode::Getattr);

/// Names of the ops in a mask.
pub fn mask_names(mask: u64) -> Vec<&'static str> {
    Opcode::ALL
        .iter()
        .filter(|&&op| mask & abi::passthrough_op(op) != 0)
        .map(|op| op.name())
        .collect()
}

fn warn_once_per_errno(e: Errno, nodeid: NodeId) {
    static SEEN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock();
    if !seen.contains(&e.0) {
        seen.push(e.0);
        warn!("FUSE_DEV_IOC_BACKING_OPEN failed ({e}) for inode {nodeid}; such files are served by the daemon");
    }
}

/// Backing-id lifetime without /dev/fuse: the ioctls go to [`FakeDevice`],
/// which hands out ids and fails the test on a close of an id it does not
/// hold (a double close, or one never opened).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::NodeId;
    use crate::inode_table::InodeTable;
    use std::collections::BTreeSet;
    use std::os::fd::AsFd;

    #[derive(Default)]
    pub(super) struct FakeDevice {
        next: std::sync::atomic::AtomicI32,
        live: Mutex<BTreeSet<i32>>,
    }

    impl FakeDevice {
        pub(super) fn open(&self, _mask: u64) -> Result<BackingId, Errno> {
            let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            self.live.lock().insert(id);
            Ok(BackingId::from_raw(id))
        }
        pub(super) fn close(&self, id: BackingId) {
            assert!(
                self.live.lock().remove(&id.raw()),
                "close of {id}: not open"
            );
        }
    }

    fn backing(mode: Mode) -> Backing {
        let b = Backing::default();
        *b.fake.lock() = Some(FakeDevice::default());
        b.mode.store(mode as u8, Ordering::Release);
        b
    }

    fn live(b: &Backing) -> Vec<i32> {
        let dev = b.fake.lock();
        let v = dev.as_ref().unwrap().live.lock().iter().copied().collect();
        v
    }

    /// Two regular files of a table on a temporary directory.
    fn files() -> (tempfile::TempDir, InodeTable, Vec<Arc<Inode>>) {
        let dir = tempfile::tempdir().unwrap();
        let cwd = std::fs::File::open("/").unwrap();
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let o = libc::O_PATH | libc::O_DIRECTORY;
        let root = sys::openat(cwd.as_fd(), &c, o, 0).unwrap();
        let proc = sys::openat(cwd.as_fd(), c"/proc/self/fd", o, 0).unwrap();
        let t = InodeTable::new(root, proc, 16).unwrap();
        let r = t.get(NodeId::ROOT).unwrap();
        let mut v = Vec::new();
        for n in [c"a", c"b"] {
            std::fs::write(dir.path().join(n.to_str().unwrap()), b"x").unwrap();
            v.push(t.lookup(&r, n).unwrap().inode);
        }
        (dir, t, v)
    }

    #[test]
    fn io_ids_live_while_an_open_uses_them() {
        let (_d, t, f) = files();
        let b = backing(Mode::Io);
        let fd = t.fd(&f[0]).unwrap();
        let id = b.acquire_for_open(&f[0], fd.fd(), fd.fd(), IO_OPS).unwrap();
        // A second open of the inode shares the id.
        assert_eq!(
            b.acquire_for_open(&f[0], fd.fd(), fd.fd(), IO_OPS),
            Some(id)
        );
        assert_eq!((b.stats().open_ids, b.stats().registered_total), (1, 1));
        b.release_open(&f[0]);
        assert_eq!(live(&b), vec![id.raw()], "one open still uses it");
        b.release_open(&f[0]);
        assert!(live(&b).is_empty(), "closed with the last open");
        assert!(f[0].backing.lock().id.is_none());
        // A release too many closes nothing twice.
        b.release_open(&f[0]);
        // No I/O in the mask, or passthrough off: no id at all.
        assert_eq!(b.acquire_for_open(&f[0], fd.fd(), fd.fd(), 0), None);
        // READ or WRITE alone: a per-open id would pass the other through.
        for op in [Opcode::Read, Opcode::Write] {
            let one = abi::passthrough_op(op);
            assert_eq!(b.acquire_for_open(&f[0], fd.fd(), fd.fd(), one), None);
        }
        let off = backing(Mode::Off);
        assert_eq!(off.acquire_for_open(&f[0], fd.fd(), fd.fd(), IO_OPS), None);
        assert_eq!(b.stats().open_ids, 0);
    }

    #[test]
    fn inode_ids_live_until_forget_and_the_last_open() {
        let (_d, t, f) = files();
        let b = backing(Mode::Inode);
        let all = crate::policy::all_ops();
        let fd = t.fd(&f[0]).unwrap();
        let id = b.for_entry(&f[0], fd.fd(), all);
        assert!(!id.is_none());
        assert_eq!(b.for_entry(&f[0], fd.fd(), all), id, "one per inode");
        assert_eq!(live(&b), vec![id.raw()], "the probe's ids are closed");
        // Opens reuse it; FORGET while open keeps it until the last RELEASE.
        assert_eq!(b.acquire_for_open(&f[0], fd.fd(), fd.fd(), all), Some(id));
        b.forget_inode(&f[0]);
        assert_eq!(live(&b), vec![id.raw()]);
        b.release_open(&f[0]);
        assert!(live(&b).is_empty());
        // Opened for I/O first: the entry gets no second, different backing,
        // and the I/O id goes with its open.
        let fd1 = t.fd(&f[1]).unwrap();
        let io = b.acquire_for_open(&f[1], fd1.fd(), fd1.fd(), all).unwrap();
        assert!(b.for_entry(&f[1], fd1.fd(), all).is_none());
        b.release_open(&f[1]);
        assert!(live(&b).is_empty(), "{io} closed");
        // Nothing beyond read/write asked: no entry id.
        assert!(b.for_entry(&f[1], fd1.fd(), IO_OPS).is_none());
        assert_eq!(b.stats().open_ids, 0);
    }
}
