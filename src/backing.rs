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
use crate::fuse::{Connection, Errno};
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
    probed: AtomicBool,
    /// READDIRPLUS entries carry backing ids (FUSE_PASSTHROUGH_DIRENTPLUS).
    dirplus: AtomicBool,
    /// Entries registered, per ops mask.
    per_mask: Mutex<BTreeMap<u64, u64>>,
    /// Entries registered with each op's bit set, per opcode.
    per_op: [AtomicU64; abi::MAX_OPCODE + 1],
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
            probed: AtomicBool::new(false),
            dirplus: AtomicBool::new(false),
            per_mask: Mutex::new(BTreeMap::new()),
            per_op: std::array::from_fn(|_| AtomicU64::new(0)),
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

    fn ioctl_open(&self, fd: BorrowedFd<'_>, ops_mask: u64) -> Result<i32, Errno> {
        let conn = self.conn.get().ok_or(Errno::ENOSYS)?;
        let mut map = BackingMap {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            flags: 0,
            ops_mask,
        };
        // SAFETY: BACKING_OPEN reads one fuse_backing_map, which `map` is.
        let id = unsafe { sys::ioctl_ptr(conn.dev_fd(), abi::DEV_IOC_BACKING_OPEN, &mut map) }?;
        self.open_ids.fetch_add(1, Ordering::Relaxed);
        self.registered.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    fn ioctl_close(&self, id: i32) {
        let Some(conn) = self.conn.get() else { return };
        let mut v = id as u32;
        // SAFETY: BACKING_CLOSE reads one u32, which `v` is.
        match unsafe { sys::ioctl_ptr(conn.dev_fd(), abi::DEV_IOC_BACKING_CLOSE, &mut v) } {
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
    /// `mask` is the policy's mask for the inode.
    pub fn acquire_for_open(
        &self,
        inode: &Inode,
        opath: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        mask: u64,
    ) -> Option<i32> {
        if self.mode() == Mode::Off || mask & IO_OPS == 0 {
            return None;
        }
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            // Registered at lookup: usable for I/O only if its mask says so.
            let registered = mask & self.supported_ops();
            if registered & IO_OPS == 0 {
                return None;
            }
            slot.opens += 1;
            return Some(slot.id);
        }
        if slot.id == 0 {
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
        if slot.opens == 0 && !slot.for_inode && slot.id != 0 {
            let id = std::mem::take(&mut slot.id);
            drop(slot);
            self.ioctl_close(id);
        }
    }

    /// Inode mode: the id for an entry reply naming `inode` (whose policy
    /// mask is `mask`), registering it on first use. 0 means "no backing"
    /// (masked out, an unsupported type, or refused).
    pub fn for_entry(&self, inode: &Inode, fd: BorrowedFd<'_>, mask: u64) -> i32 {
        if let Some(id) = {
            let slot = inode.backing.lock();
            slot.for_inode.then_some(slot.id)
        } {
            return id;
        }
        // Nothing beyond read/write: per-open backing ids do that, without
        // tying the inode's every open to passthrough.
        if self.mode() != Mode::Inode || mask & !IO_OPS == 0 {
            return 0;
        }
        if !matches!(
            inode.kind,
            crate::inode_table::Kind::Regular | crate::inode_table::Kind::Directory
        ) {
            return 0;
        }
        let mut usable = self.usable_mask(fd, mask);
        if usable & GETATTR_OP == 0 {
            return 0;
        }
        if self.dirplus() && inode.kind == crate::inode_table::Kind::Directory {
            // The kernel lists a directory that passes READDIR through
            // itself, and sends READDIRPLUS (with the entries' backing ids)
            // once the listed names are looked up (patch 0014), at the
            // backing directory's offsets, which are ours. Its open stays
            // here: READDIRPLUS on a handle, not on a fresh stream each.
            // (After the probe, which learns the kernel's ops from the
            // first mask it sees.)
            usable &= !abi::passthrough_op(Opcode::Open);
        }
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            return slot.id;
        }
        if slot.id != 0 {
            // Open for I/O since before: the kernel refuses a second,
            // different backing on the inode, so it stays in I/O mode.
            return 0;
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
                0
            }
        }
    }

    /// Inode mode: the inode left the table; its id goes once no open uses it.
    pub fn forget_inode(&self, inode: &Inode) {
        let mut slot = inode.backing.lock();
        if slot.for_inode {
            slot.for_inode = false;
            if slot.opens == 0 && slot.id != 0 {
                let id = std::mem::take(&mut slot.id);
                drop(slot);
                self.ioctl_close(id);
            }
        }
    }

    /// Drops mask bits the kernel refuses, probing once (one log line).
    fn usable_mask(&self, fd: BorrowedFd<'_>, wanted: u64) -> u64 {
        if !self.probed.load(Ordering::Acquire) {
            self.probe(fd, wanted);
        }
        wanted & self.supported_ops.load(Ordering::Acquire)
    }

    fn probe(&self, fd: BorrowedFd<'_>, wanted: u64) {
        static LOCK: Mutex<()> = Mutex::new(());
        let _g = LOCK.lock();
        if self.probed.load(Ordering::Acquire) {
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
        info!(
            "inode passthrough: kernel serves {}",
            mask_names(ok).join(",")
        );
        self.supported_ops.store(ok, Ordering::Release);
        self.probed.store(true, Ordering::Release);
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

fn warn_once_per_errno(e: Errno, nodeid: u64) {
    static SEEN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock();
    if !seen.contains(&e.0) {
        seen.push(e.0);
        warn!("FUSE_DEV_IOC_BACKING_OPEN failed ({e}) for inode {nodeid}; such files are served by the daemon");
    }
}
