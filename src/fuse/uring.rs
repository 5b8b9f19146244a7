//! FUSE-over-io_uring transport (kernel 6.14+, protocol 7.42+).
//!
//! INIT always travels over /dev/fuse. When the daemon asked for
//! `FUSE_OVER_IO_URING` and the kernel agreed, one queue thread per possible
//! CPU (the kernel's `nr_queues`) creates its own io_uring of 128-byte SQEs
//! and registers `depth` ring entries on the /dev/fuse fd with
//! `IORING_OP_URING_CMD` + `FUSE_IO_URING_CMD_REGISTER`. Each entry owns two
//! buffers: a `fuse_uring_req_header` (in/out header, per-op header,
//! `fuse_uring_ent_in_out`) and a payload buffer of the kernel's
//! `max_payload_sz`. Once every queue has an entry registered, the kernel
//! sends requests of the callers on CPU `n` to queue `n`; until then (and
//! always for FORGET and INTERRUPT) requests keep coming on /dev/fuse, so the
//! /dev/fuse workers run in both transports.
//!
//! A request in an entry is copied into one contiguous buffer and handed to
//! the same [`dispatch`] as a /dev/fuse request, with a [`Channel`] whose
//! sink is that ring entry: the reply bytes go into the entry's buffers and
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` returns it to the kernel, which also
//! arms it for the next request.
//!
//! Only the queue thread ever submits to its ring: the kernel runs the
//! entry's next request delivery as task work of the task that issued the
//! command, so a commit issued by a short-lived thread (a lock waiter) would
//! lose the next request. A reply sent from any other thread writes the
//! entry's buffers, queues the entry on `pending` and wakes the queue thread
//! through an eventfd it keeps a READ armed on.
//!
//! Teardown: at unmount or abort the kernel completes every entry with
//! `-ENOTCONN` (a commit to a stopped queue fails the same way); the thread
//! ends when none is left. Closing the ring (thread exit) cancels whatever
//! is still registered.

use std::cell::{Cell, UnsafeCell};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use tracing::{debug, error, info, warn};
use zerocopy::FromZeros;

use super::abi::{self, InitFlags};
use super::channel::{Channel, Connection};
use super::dispatch::{dispatch, DispatchState};
use super::filesystem::Filesystem;
use super::session::WorkerExit;

/// `enum fuse_uring_cmd` (include/uapi/linux/fuse.h).
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `FUSE_URING_IN_OUT_HEADER_SZ`, `FUSE_URING_OP_IN_OUT_SZ`.
const IN_OUT_HEADER_SZ: usize = 128;
const OP_IN_OUT_SZ: usize = 128;
const IN_HEADER_SZ: usize = std::mem::size_of::<abi::InHeader>();
const OUT_HEADER_SZ: usize = std::mem::size_of::<abi::OutHeader>();
/// user_data of the eventfd READ that wakes a queue thread.
const WAKE: u64 = u64::MAX;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromZeros)]
struct EntInOut {
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// `struct fuse_uring_req_header`.
#[repr(C)]
#[derive(FromZeros)]
struct ReqHeader {
    in_out: [u8; IN_OUT_HEADER_SZ],
    op_in: [u8; OP_IN_OUT_SZ],
    ent_in_out: EntInOut,
}

const _: () = assert!(std::mem::size_of::<ReqHeader>() == 288);
const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// Ring entry states, as seen by the daemon.
const ENT_IN_KERNEL: u8 = 0;
/// The entry holds a request the daemon has not answered yet.
const ENT_AWAITING_REPLY: u8 = 1;
/// The reply is in the buffers, the commit not yet submitted.
const ENT_REPLIED: u8 = 2;
/// The kernel dropped the entry (teardown) or a command on it failed.
const ENT_DEAD: u8 = 3;

/// One ring entry: its buffers and where it stands. The buffers belong to
/// the kernel from a submitted REGISTER/COMMIT until its completion, then
/// to the queue thread (copying the request out), then to whoever replies
/// (the state moves AWAITING_REPLY -> REPLIED exactly once), then to the
/// queue thread again (submitting the commit).
struct RingEntry {
    header: Box<UnsafeCell<ReqHeader>>,
    payload: Box<[UnsafeCell<u8>]>,
    /// The iovecs REGISTER points at (kept at a stable address).
    iov: Box<UnsafeCell<[libc::iovec; 2]>>,
    state: AtomicU8,
    commit_id: AtomicU64,
}

// SAFETY: the buffers are only touched by one party at a time, as the state
// machine above says; the raw pointers in `iov` point into this entry's own
// boxes.
unsafe impl Send for RingEntry {}
// SAFETY: see above.
unsafe impl Sync for RingEntry {}

impl RingEntry {
    fn new(payload_len: usize) -> RingEntry {
        let header: Box<UnsafeCell<ReqHeader>> = Box::new(UnsafeCell::new(ReqHeader::new_zeroed()));
        // Zeroed by the allocator (calloc: fresh pages, untouched), so an
        // entry costs memory only for what requests write into it: most
        // carry no payload, and spares may be many (SPARE_ENTRIES).
        let zeroed: Box<[u8]> = vec![0u8; payload_len].into_boxed_slice();
        // SAFETY: UnsafeCell<u8> is repr(transparent) over u8, so the slice
        // has the same layout and the allocation the same size and align.
        let payload: Box<[UnsafeCell<u8>]> =
            unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [UnsafeCell<u8>]) };
        let iov = Box::new(UnsafeCell::new([
            libc::iovec {
                iov_base: header.get().cast(),
                iov_len: std::mem::size_of::<ReqHeader>(),
            },
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload_len,
            },
        ]));
        RingEntry {
            header,
            payload,
            iov,
            state: AtomicU8::new(ENT_IN_KERNEL),
            commit_id: AtomicU64::new(0),
        }
    }

    fn payload_ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.payload.as_ptr())
    }
}

/// What a queue shares with the threads that reply to its entries.
pub(crate) struct QueueShared {
    qid: u16,
    /// The first `depth` are registered at start; the rest are spares, made
    /// and registered when replies held back (blocked lock waits) would
    /// otherwise leave fewer than `depth` entries with the kernel.
    entries: Box<[OnceLock<RingEntry>]>,
    payload_len: usize,
    /// Entries whose reply is written and whose commit the queue thread
    /// must submit.
    pending: Mutex<Vec<u16>>,
    /// Written by repliers on other threads to wake the queue thread.
    wake: OwnedFd,
    wake_buf: Box<UnsafeCell<u64>>,
}

impl QueueShared {
    /// Entry `idx`, if it was ever made.
    fn entry(&self, idx: u16) -> Option<&RingEntry> {
        self.entries.get(idx as usize)?.get()
    }

    /// Entry `idx`, made now if it is a spare never used before.
    fn entry_made(&self, idx: u16) -> &RingEntry {
        self.entries[idx as usize].get_or_init(|| RingEntry::new(self.payload_len))
    }
}

// SAFETY: `wake_buf` is written only by the kernel (the eventfd READ); the
// entries are Sync (see RingEntry).
unsafe impl Sync for QueueShared {}
// SAFETY: as above.
unsafe impl Send for QueueShared {}

thread_local! {
    /// The queue a queue thread serves (null elsewhere).
    static CURRENT_QUEUE: Cell<*const QueueShared> = const { Cell::new(std::ptr::null()) };
}

/// The reply sink of one ring entry.
pub(crate) struct EntrySink {
    queue: Arc<QueueShared>,
    idx: u16,
}

impl EntrySink {
    /// Writes the reply into the entry's buffers and hands the entry to its
    /// queue thread for COMMIT_AND_FETCH.
    pub(crate) fn send(&self, unique: u64, error: i32, payload: &[IoSlice<'_>]) -> io::Result<()> {
        let Some(ent) = self.queue.entry(self.idx) else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        if ent
            .state
            .compare_exchange(
                ENT_AWAITING_REPLY,
                ENT_REPLIED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // Answered already, or the kernel dropped the entry.
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let total: usize = payload.iter().map(|s| s.len()).sum();
        let (error, total) = if total > ent.payload.len() {
            error!(
                unique,
                "reply of {total} bytes exceeds the ring payload buffer; answering EIO"
            );
            (-libc::EIO, 0)
        } else {
            (error, total)
        };
        let header = abi::OutHeader {
            len: (OUT_HEADER_SZ + total) as u32,
            error,
            unique,
        };
        // SAFETY: the state moved to REPLIED above, so nobody else touches
        // this entry's buffers until the queue thread submits the commit
        // (after the pending push below). The copies stay inside the
        // buffers: the header is 16 of 128 bytes, `total` fits the payload.
        unsafe {
            let h = &mut *ent.header.get();
            use zerocopy::IntoBytes;
            h.in_out[..OUT_HEADER_SZ].copy_from_slice(header.as_bytes());
            h.ent_in_out.payload_sz = total as u32;
            if total > 0 {
                let mut at = ent.payload_ptr();
                for s in payload {
                    std::ptr::copy_nonoverlapping(s.as_ptr(), at, s.len());
                    at = at.add(s.len());
                }
            }
        }
        self.queue.pending.lock().push(self.idx);
        let here = CURRENT_QUEUE.with(|c| c.get());
        if !std::ptr::eq(here, Arc::as_ptr(&self.queue))
            && nix::unistd::write(&self.queue.wake, &1u64.to_ne_bytes()) != Ok(8)
        {
            warn!("waking ring queue {} failed", self.queue.qid);
        }
        Ok(())
    }
}

/// Transport counters, shown in the stats.
#[derive(Default)]
pub struct TransportStats {
    /// The daemon asked for FUSE-over-io_uring.
    pub requested: AtomicBool,
    /// Queues the kernel expects (possible CPUs).
    pub queues: AtomicUsize,
    /// Queues whose entries are registered.
    pub queues_registered: AtomicUsize,
    /// Requests served through ring entries.
    pub ring_requests: AtomicU64,
    /// Spare entries registered beyond each queue's depth, for replies held
    /// back (blocked lock waits).
    pub spare_entries: AtomicUsize,
    /// Set when registering failed (the kernel keeps /dev/fuse then).
    pub failed: AtomicBool,
}

impl TransportStats {
    /// "uring" once every queue is registered (the kernel then sends
    /// requests over the ring), else "dev".
    pub fn mode(&self) -> &'static str {
        let q = self.queues.load(Ordering::Relaxed);
        if q > 0
            && self.queues_registered.load(Ordering::Relaxed) == q
            && !self.failed.load(Ordering::Relaxed)
        {
            "uring"
        } else {
            "dev"
        }
    }
}

/// Queues the kernel creates: one per possible CPU (`num_possible_cpus()`),
/// i.e. the highest CPU number in /sys/devices/system/cpu/possible plus one.
pub fn nr_queues() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list_max(s.trim()))
        .map(|m| m + 1)
        .unwrap_or_else(|| {
            use nix::unistd::{sysconf, SysconfVar};
            let n = sysconf(SysconfVar::_NPROCESSORS_CONF).ok().flatten();
            n.unwrap_or(1).max(1) as usize
        })
}

/// Highest CPU of a list such as "0-3,5,7-8".
fn parse_cpu_list_max(s: &str) -> Option<usize> {
    s.split(',')
        .map(|r| {
            r.rsplit('-')
                .next()
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// Entries registered per queue.
pub const DEFAULT_DEPTH: usize = 8;

/// Spare entries a queue may add, one for each reply held back beyond
/// what `depth` absorbs: as many as blocked lock waits may queue at once
/// (`passthrough::locks::MAX_LOCK_WAITERS`), and a few for lock checks
/// waiting for a RELEASE. A blocked wait keeps its entry until it is
/// granted; without spares, `depth` waits from callers on one CPU took all
/// of its entries, and every later request from that CPU (the holder's
/// unlock too) waited behind them (tests/locks.rs over io_uring hung).
const SPARE_ENTRIES: usize = 4096 + 64;

/// Serves queue `qid` until the kernel tears the ring down or `stop` is set.
/// Waits for INIT first; returns at once if io_uring was not negotiated.
pub(crate) fn queue_loop<F: Filesystem>(
    fs: &F,
    conn: &Arc<Connection>,
    state: &DispatchState,
    stop: &AtomicBool,
    qid: u16,
    depth: usize,
) -> WorkerExit {
    // INIT comes over /dev/fuse; the ring can only be set up after it.
    let negotiated = loop {
        if stop.load(Ordering::Acquire) {
            return WorkerExit::Stopped;
        }
        if let Some(n) = conn.negotiated() {
            break n.clone();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if !negotiated.has(InitFlags::OVER_IO_URING) {
        return WorkerExit::Stopped;
    }
    let page = crate::sys::page_size() as usize;
    let payload_len = abi::MIN_READ_BUFFER
        .max(negotiated.max_write as usize)
        .max(negotiated.max_pages as usize * page);
    let efd = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC) {
        Ok(e) => OwnedFd::from(e),
        Err(e) => {
            error!("ring queue {qid}: eventfd: {}", io::Error::from(e));
            conn.transport.failed.store(true, Ordering::Relaxed);
            return WorkerExit::Failed;
        }
    };
    let queue = Arc::new(QueueShared {
        qid,
        entries: (0..depth + SPARE_ENTRIES)
            .map(|_| OnceLock::new())
            .collect(),
        payload_len,
        pending: Mutex::new(Vec::with_capacity(depth)),
        wake: efd,
        wake_buf: Box::new(UnsafeCell::new(0)),
    });
    let mut channels: Vec<Arc<Channel>> = (0..depth)
        .map(|i| entry_channel(conn, &queue, i as u16))
        .collect();
    let mut ring = match build_ring(depth) {
        Ok(r) => r,
        Err(e) => {
            warn!("ring queue {qid}: cannot create an io_uring ({e}); requests stay on /dev/fuse");
            conn.transport.failed.store(true, Ordering::Relaxed);
            return WorkerExit::Failed;
        }
    };
    pin_to_cpu(qid as usize);
    fs.worker_started();
    CURRENT_QUEUE.with(|c| c.set(Arc::as_ptr(&queue)));
    let exit = serve(fs, conn, state, stop, &queue, &mut channels, &mut ring);
    CURRENT_QUEUE.with(|c| c.set(std::ptr::null()));
    // Closing the ring cancels what is still registered; the buffers
    // outlive it (the queue is dropped after the ring).
    drop(ring);
    drop(channels);
    exit
}

/// The reply channel of entry `idx`.
fn entry_channel(conn: &Arc<Connection>, queue: &Arc<QueueShared>, idx: u16) -> Arc<Channel> {
    Arc::new(Channel::ring(
        conn.clone(),
        EntrySink {
            queue: queue.clone(),
            idx,
        },
    ))
}

fn build_ring(depth: usize) -> io::Result<IoUring<squeue::Entry128, cqueue::Entry>> {
    let n = (depth as u32 + 2).next_power_of_two();
    // Only this thread submits: let the kernel run task work (the next
    // request's delivery) when we wait, not by interrupting us.
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(n)
        .or_else(|_| {
            IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_coop_taskrun()
                .build(n)
        })
        .or_else(|_| IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(n))
}

fn pin_to_cpu(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    // Out of range (cpu >= CPU_SETSIZE): left unpinned.
    if set.set(cpu).is_err() {
        return;
    }
    if let Err(e) = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        debug!(
            "pinning ring queue thread to CPU {cpu}: {}",
            io::Error::from(e)
        );
    }
}

/// `struct fuse_uring_cmd_req` in the command area of the SQE.
fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

fn register_sqe(dev: RawFd, queue: &QueueShared, idx: u16) -> squeue::Entry128 {
    let ent = queue.entry_made(idx);
    let mut sqe = opcode::UringCmd80::new(types::Fd(dev), CMD_REGISTER)
        .cmd(cmd_req(queue.qid, 0))
        .addr(Some(ent.iov.get() as u64))
        .build()
        .user_data(idx as u64);
    // The kernel wants sqe->len == 2 (header and payload iovecs), which the
    // crate's builder has no setter for.
    crate::sys::uring::set_sqe_len(&mut sqe, 2);
    sqe
}

fn commit_sqe(dev: RawFd, queue: &QueueShared, idx: u16) -> squeue::Entry128 {
    let commit_id = queue.entry_made(idx).commit_id.load(Ordering::Acquire);
    opcode::UringCmd80::new(types::Fd(dev), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_req(queue.qid, commit_id))
        .build()
        .user_data(idx as u64)
}

fn wake_sqe(queue: &QueueShared) -> squeue::Entry128 {
    opcode::Read::new(
        types::Fd(queue.wake.as_raw_fd()),
        queue.wake_buf.get().cast(),
        8,
    )
    .build()
    .user_data(WAKE)
    .into()
}

/// Pushes one SQE, submitting first if the submission queue is full.
fn push(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>, sqe: &squeue::Entry128) {
    loop {
        // SAFETY: every buffer an SQE points at (entry buffers, iovecs, the
        // eventfd word) lives in the queue, which outlives the ring.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                error!("io_uring submit failed: {e}");
                return;
            }
        }
    }
}

fn serve<F: Filesystem>(
    fs: &F,
    conn: &Arc<Connection>,
    state: &DispatchState,
    stop: &AtomicBool,
    queue: &Arc<QueueShared>,
    channels: &mut Vec<Arc<Channel>>,
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
) -> WorkerExit {
    let dev = conn.dev_fd().as_raw_fd();
    let depth = channels.len();
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(depth + 1);
    if let Err(exit) = register_all(conn, queue, depth, ring, &mut cqes) {
        return exit;
    }
    conn.transport
        .queues_registered
        .fetch_add(1, Ordering::Relaxed);
    push(ring, &wake_sqe(queue));
    // Commands the kernel holds (REGISTER or COMMIT_AND_FETCH not yet
    // completed). At teardown the kernel completes those with -ENOTCONN and
    // forgets the entries we hold (a reply still being worked on, e.g. a
    // lock wait): the queue is done once it holds none.
    let mut inflight = depth;
    let mut torn_down = false;
    let mut buf: Vec<u8> = Vec::with_capacity(IN_HEADER_SZ + OP_IN_OUT_SZ + queue.payload_len);
    let mut commits: Vec<u16> = Vec::with_capacity(depth);
    let mut first = true;
    loop {
        if stop.load(Ordering::Acquire) {
            return WorkerExit::Stopped;
        }
        if !first {
            std::mem::swap(&mut commits, &mut *queue.pending.lock());
            for idx in commits.drain(..) {
                queue
                    .entry_made(idx)
                    .state
                    .store(ENT_IN_KERNEL, Ordering::Release);
                push(ring, &commit_sqe(dev, queue, idx));
                inflight += 1;
            }
            // Replies held back (blocked lock waits) keep their entries:
            // keep `depth` with the kernel by registering spares. The
            // kernel hands a new entry only requests that come after it,
            // which is why it comes now, before the queue runs dry.
            while inflight < depth && channels.len() < queue.entries.len() && !torn_down {
                let idx = channels.len() as u16;
                channels.push(entry_channel(conn, queue, idx));
                push(ring, &register_sqe(dev, queue, idx));
                inflight += 1;
                conn.transport.spare_entries.fetch_add(1, Ordering::Relaxed);
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => {
                    error!("ring queue {}: io_uring_enter: {e}", queue.qid);
                    return WorkerExit::Failed;
                }
            }
            cqes.clear();
        }
        first = false;
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud == WAKE {
                push(ring, &wake_sqe(queue));
                continue;
            }
            let Some(ent) = u16::try_from(ud).ok().and_then(|i| queue.entry(i)) else {
                continue;
            };
            let idx = ud as u16;
            inflight = inflight.saturating_sub(1);
            if res < 0 {
                if -res == libc::EAGAIN && !torn_down {
                    // REGISTER before the kernel finished INIT: retry.
                    std::thread::sleep(Duration::from_millis(1));
                    push(ring, &register_sqe(dev, queue, idx));
                    inflight += 1;
                } else {
                    torn_down |= command_failed(queue, ent, idx, -res);
                }
                continue;
            }
            handle_request(
                fs,
                conn,
                state,
                queue,
                &channels[idx as usize],
                idx,
                &mut buf,
            );
        }
        if inflight == 0 && queue.pending.lock().is_empty() {
            if let Some(exit) = idle_queue_exit(queue, torn_down) {
                return exit;
            }
        }
    }
}

/// Whether a queue that holds no command in the kernel is done: torn down
/// by the kernel, or every entry failed.
fn idle_queue_exit(queue: &QueueShared, torn_down: bool) -> Option<WorkerExit> {
    if torn_down {
        debug!("ring queue {}: all entries released", queue.qid);
        return Some(WorkerExit::Unmounted);
    }
    if queue
        .entries
        .iter()
        .filter_map(|e| e.get())
        .all(|e| e.state.load(Ordering::Acquire) == ENT_DEAD)
    {
        error!("ring queue {}: every entry failed", queue.qid);
        return Some(WorkerExit::Failed);
    }
    None
}

/// Hands every entry of the queue to the kernel (FUSE_IO_URING_CMD_REGISTER).
/// Completions that already carry a request go into `cqes`.
fn register_all(
    conn: &Connection,
    queue: &QueueShared,
    depth: usize,
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    cqes: &mut Vec<(u64, i32)>,
) -> Result<(), WorkerExit> {
    let dev = conn.dev_fd().as_raw_fd();
    // REGISTER fails at once (a completion right after submit) or stays
    // queued until a request comes; EAGAIN means the kernel has not quite
    // finished INIT yet.
    let mut to_register: Vec<u16> = (0..depth as u16).collect();
    for attempt in 0.. {
        for &i in &to_register {
            push(ring, &register_sqe(dev, queue, i));
        }
        to_register.clear();
        if let Err(e) = ring.submit() {
            warn!(
                "ring queue {}: submitting REGISTER: {e}; requests stay on /dev/fuse",
                queue.qid
            );
            conn.transport.failed.store(true, Ordering::Relaxed);
            return Err(WorkerExit::Failed);
        }
        for c in ring.completion() {
            let (ud, res) = (c.user_data(), c.result());
            if res == -libc::EAGAIN && attempt < 1000 {
                to_register.push(ud as u16);
            } else if res < 0 {
                warn!(
                    "ring queue {}: REGISTER failed: {}; requests stay on /dev/fuse",
                    queue.qid,
                    io::Error::from_raw_os_error(-res)
                );
                conn.transport.failed.store(true, Ordering::Relaxed);
                return Err(WorkerExit::Failed);
            } else {
                cqes.push((ud, res));
            }
        }
        if to_register.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A command of entry `idx` completed with `err`: the entry is dead. True
/// when the error says the kernel tore the ring down (unmount, abort).
fn command_failed(queue: &QueueShared, ent: &RingEntry, idx: u16, err: i32) -> bool {
    ent.state.store(ENT_DEAD, Ordering::Release);
    match err {
        libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => true,
        e => {
            warn!(
                "ring queue {} entry {idx}: command failed: {}",
                queue.qid,
                io::Error::from_raw_os_error(e)
            );
            false
        }
    }
}

fn handle_request<F: Filesystem>(
    fs: &F,
    conn: &Arc<Connection>,
    state: &DispatchState,
    queue: &QueueShared,
    ch: &Arc<Channel>,
    idx: u16,
    buf: &mut Vec<u8>,
) {
    let ent = queue.entry_made(idx);
    buf.clear();
    // SAFETY: the kernel completed the command, so the entry's buffers are
    // ours until we reply; reads stay inside them (sizes checked).
    let (commit_id, unique, ok) = unsafe {
        let h = &*ent.header.get();
        let eio = h.ent_in_out;
        let len = u32::from_ne_bytes(h.in_out[0..4].try_into().unwrap_or([0; 4])) as usize;
        let unique = u64::from_ne_bytes(h.in_out[8..16].try_into().unwrap_or([0; 8]));
        let payload_sz = eio.payload_sz as usize;
        let op_sz = len
            .checked_sub(IN_HEADER_SZ)
            .and_then(|n| n.checked_sub(payload_sz));
        match op_sz {
            Some(op_sz) if op_sz <= OP_IN_OUT_SZ && payload_sz <= ent.payload.len() => {
                buf.extend_from_slice(&h.in_out[..IN_HEADER_SZ]);
                buf.extend_from_slice(&h.op_in[..op_sz]);
                buf.extend_from_slice(std::slice::from_raw_parts(ent.payload_ptr(), payload_sz));
                (eio.commit_id, unique, true)
            }
            _ => (eio.commit_id, unique, false),
        }
    };
    ent.commit_id.store(commit_id, Ordering::Release);
    ent.state.store(ENT_AWAITING_REPLY, Ordering::Release);
    conn.transport.ring_requests.fetch_add(1, Ordering::Relaxed);
    if !ok {
        conn.counters.count_malformed();
        warn!("ring queue {}: malformed request sizes", queue.qid);
        let _ = ch.send(unique, -libc::EIO, &[]);
        return;
    }
    if catch_unwind(AssertUnwindSafe(|| dispatch(fs, ch, buf, state))).is_err() {
        error!("a request handler panicked; the request was answered EIO");
    }
    // Nothing holds a reply for this entry and none was sent (a request
    // that takes no reply should never come over the ring): give the entry
    // back with EIO rather than lose it.
    if Arc::strong_count(ch) == 1 && ent.state.load(Ordering::Acquire) == ENT_AWAITING_REPLY {
        info!(
            "ring queue {}: request {unique} left unanswered; answering EIO",
            queue.qid
        );
        let _ = ch.send(unique, -libc::EIO, &[]);
    }
}

/// INIT: asks for FUSE_OVER_IO_URING, or says in one line why the session
/// stays on /dev/fuse.
pub(crate) fn want_in_init(offered: InitFlags, want: &mut InitFlags) {
    if offered.contains(InitFlags::OVER_IO_URING) {
        *want |= InitFlags::OVER_IO_URING;
    } else {
        info!(
            "io_uring requested, but the kernel does not offer FUSE_OVER_IO_URING \
             (/sys/module/fuse/parameters/enable_uring is off, or the kernel is older than 6.14); \
             serving /dev/fuse"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0-1"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3,5,7-8"), Some(8));
        assert_eq!(parse_cpu_list_max("x"), None);
    }

    #[test]
    fn register_sqe_layout() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let q = QueueShared {
            qid: 3,
            entries: vec![OnceLock::new()].into_boxed_slice(),
            payload_len: 8192,
            pending: Mutex::new(Vec::new()),
            wake: w,
            wake_buf: Box::new(UnsafeCell::new(0)),
        };
        let sqe = register_sqe(r.as_raw_fd(), &q, 0);
        let b = crate::sys::uring::sqe_bytes(&sqe);
        assert_eq!(b[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            CMD_REGISTER
        );
        assert_eq!(
            u64::from_ne_bytes(b[16..24].try_into().unwrap()),
            q.entry_made(0).iov.get() as u64
        );
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 2);
        // fuse_uring_cmd_req.qid at byte 16 of the command area (SQE byte 48).
        assert_eq!(u16::from_ne_bytes(b[64..66].try_into().unwrap()), 3);
    }
}
