//! File locks: flock(2) and POSIX record locks.
//!
//! flock: every FUSE open owns its own host open file description, so a
//! flock on the open's fd has exactly flock's semantics.
//!
//! POSIX locks belong to a lock owner (the kernel's `lock_owner`, one per
//! process and file table), not to an fd. Forwarding them with F_SETLK would
//! make the daemon's pid the owner of every lock; instead each (inode, owner)
//! pair gets its own open file description and the lock is an OFD lock on
//! it, so the host arbitrates between owners exactly as between processes,
//! and against processes that lock SOURCE directly.
//!
//! When locks go: a process's POSIX locks when it closes the file (FLUSH
//! carries its lock_owner); an OFD lock's owner is the client's open file
//! description itself, for which the kernel sends no unlock at close, so
//! an owner's locks also go at the RELEASE of the fh it last locked through.
//! That RELEASE comes after close(2) has returned: a lock check that finds
//! a conflict looks again once it came, or after a short wait; the check
//! waits on a thread of its own, never on the worker, which must go on
//! serving (over io_uring it is its CPU's only one, and may be the one the
//! RELEASE arrives on) ([`LockTable::recheck`], [`LockTable::defer`]).
//!
//! A blocking wait (SETLKW, blocking flock) never occupies a thread of its
//! own, nor a worker: after a failed non-blocking try it joins a wait queue
//! ([`WaitQueue`]) and the worker returns. One waker thread (started when
//! the first wait begins, gone when the queue is empty) retries the queued
//! locks, in arrival order, with non-blocking calls: at once whenever a
//! lock is dropped through the mount, and every few milliseconds (backing
//! off to 100 ms) for locks held on SOURCE directly. It answers each wait
//! when its lock is granted. At most [`MAX_LOCK_WAITERS`] waits queue at
//! once; one more is answered ENOLCK at once.
//!
//! Interrupts are race-free: a wait is in the queue from the moment it is
//! known until it is answered, and INTERRUPT, enqueueing and every retry
//! hold the queue's lock. An INTERRUPT for a wait not (yet) queued is kept
//! (bounded, oldest dropped first) and honoured when the wait arrives, so
//! a wait interrupted before it registered still answers EINTR.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use parking_lot::Condvar;

use super::*;

/// Most blocked lock waits at once (SETLKW, OFD wait, flock wait); beyond
/// it a wait is answered ENOLCK. Each costs one open file description of
/// its lock owner (see [`LockTable`]), never a thread.
pub const MAX_LOCK_WAITERS: usize = 4096;
/// Most INTERRUPTs kept for waits that have not arrived yet.
const MAX_EARLY_INTERRUPTS: usize = 1024;
/// Retry period for locks held outside the mount: from the first to the
/// last, doubling while nothing changes.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// How long after a close a lock check waits for its RELEASE, by default
/// (`--lock-settle-ms`; see [`LockTable::recheck`]). The RELEASE is queued
/// before close(2) returns and normally arrives within microseconds; 20 ms
/// still missed one in 2,000 while the whole suite ran on 2 CPUs. Only a
/// conflict with a file still open elsewhere (a dup) waits all of it.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The host open file description holding one lock owner's locks.
struct OwnerLocks {
    fd: Arc<OwnedFd>,
    /// The fh the owner last locked through (its OFD, for OFD locks).
    fh: Fh,
    /// When that fh was last closed (FLUSH): its RELEASE may follow.
    closed: Option<Instant>,
}

impl OwnerLocks {
    /// The owner's locks go now. Dropping `fd` is not enough: a request
    /// that locked through it may hold a clone a moment longer (a SETLK
    /// still returning after its reply went), and the host keeps an OFD
    /// lock while any fd of the description is open. A check run in that
    /// moment saw the lock of a file already released (one in 2,000 in
    /// CI, and a failed F_OFD_SETLK of the next open).
    fn unlock(&self) {
        let mut all = crate::sys::empty_flock();
        all.l_type = libc::F_UNLCK as i16;
        all.l_whence = libc::SEEK_SET as i16;
        let _ = sys::ofd_lock(self.fd.as_fd(), libc::F_OFD_SETLK, &mut all);
    }
}

/// A lock check that found a conflict, waiting for a RELEASE: run by the
/// settle thread once locks went (the count moved past `seen`) or at
/// `deadline`. `then` checks again and answers.
struct Settle {
    seen: u64,
    deadline: Instant,
    then: Box<dyn FnOnce() + Send>,
}

/// RELEASEs that dropped locks so far, and the checks waiting for one.
#[derive(Default)]
struct Releases {
    count: u64,
    waiting: Vec<Settle>,
    /// The settle thread runs.
    settler: bool,
}

/// What a lock check that found a conflict should do (see
/// [`LockTable::recheck`]).
pub enum Recheck {
    /// Locks went since the check began: check again now.
    Now,
    /// A file was closed just before: check again when its RELEASE comes,
    /// at the latest at this instant ([`LockTable::defer`]).
    After(Instant),
    /// Nothing to wait for: the conflict stands.
    Never,
}

/// One blocked wait: what to retry, and the reply it owes.
struct Waiter {
    unique: u64,
    lock: Lock,
    reply: Deferred,
}

/// Blocked lock waits, in arrival order.
#[derive(Default)]
struct WaitQueue {
    waiters: VecDeque<Waiter>,
    /// INTERRUPTs that arrived before their wait was queued.
    early: VecDeque<u64>,
    /// A lock was dropped through the mount since the last retry.
    kicked: bool,
    /// The waker thread runs.
    waker: bool,
}

pub struct LockTable {
    /// (nodeid, lock owner) -> the owner's open file description.
    owners: FastMap<(NodeId, LockOwner), OwnerLocks>,
    /// Last pid seen locking each inode, per owner (for GETLK's answer).
    pids: FastMap<(NodeId, LockOwner), u32>,
    /// Set before the first entry goes into `owners` or `pids`: until then
    /// FLUSH and RELEASE have nothing to drop (and skip scanning the maps).
    used: AtomicBool,
    queue: Mutex<WaitQueue>,
    wake: Condvar,
    /// Waits queued (read without the lock, to skip kicks when none).
    waiting: AtomicUsize,
    max_waiters: usize,
    /// How long a check waits for the RELEASE of a file just closed.
    settle: Duration,
    /// RELEASEs that dropped locks, and the checks waiting for one.
    releases: Mutex<Releases>,
    released: Condvar,
}

impl Default for LockTable {
    fn default() -> Self {
        LockTable::with_limits(MAX_LOCK_WAITERS, SETTLE)
    }
}

impl LockTable {
    /// A table that queues at most `max_waiters` blocked waits, and whose
    /// checks wait at most `settle` for the RELEASE of a file just closed.
    pub fn with_limits(max_waiters: usize, settle: Duration) -> LockTable {
        LockTable {
            owners: FastMap::default(),
            pids: FastMap::default(),
            used: AtomicBool::new(false),
            queue: Mutex::new(WaitQueue::default()),
            wake: Condvar::new(),
            waiting: AtomicUsize::new(0),
            max_waiters,
            settle,
            releases: Mutex::new(Releases::default()),
            released: Condvar::new(),
        }
    }

    pub fn clear(&self) {
        // Checks waiting for a RELEASE answer now, as things stand.
        let settling = std::mem::take(&mut self.releases.lock().waiting);
        for s in settling {
            (s.then)();
        }
        let gone: Vec<Waiter> = {
            let mut q = self.queue.lock();
            self.waiting.store(0, Ordering::Relaxed);
            q.waiters.drain(..).collect()
        };
        for w in gone {
            w.reply.finish(Err(Errno::EINTR));
        }
        self.owners.clear();
        self.pids.clear();
    }

    /// Blocked waits right now.
    pub fn waiters(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn forget_inode(&self, nodeid: NodeId) {
        if !self.used.load(Ordering::Acquire) {
            return self.kick();
        }
        self.owners.retain(|k, v| {
            let keep = k.0 != nodeid;
            if !keep {
                v.unlock();
            }
            keep
        });
        self.pids.retain(|k, _| k.0 != nodeid);
        self.kick();
    }

    /// A lock owner closed the file: its POSIX locks on the inode go.
    pub fn release_owner(&self, nodeid: NodeId, owner: LockOwner) {
        if !self.used.load(Ordering::Acquire) {
            return self.kick();
        }
        if let Some((_, gone)) = self.owners.remove(&(nodeid, owner)) {
            gone.unlock();
        }
        self.pids.remove(&(nodeid, owner));
        self.kick();
    }

    /// The open file `fh` of `nodeid` was released: the owners that last
    /// locked through it (OFD locks) lose their locks.
    pub fn release_fh(&self, nodeid: NodeId, fh: Fh) {
        if !self.used.load(Ordering::Acquire) {
            return self.kick();
        }
        let gone: Vec<(NodeId, LockOwner)> = self
            .owners
            .iter()
            .filter(|e| e.key().0 == nodeid && e.value().fh == fh)
            .map(|e| *e.key())
            .collect();
        if !gone.is_empty() {
            // Under the count's lock: `settle` sees the owners gone and the
            // count moved together, or neither.
            let mut r = self.releases.lock();
            for k in gone {
                if let Some((_, owner)) = self.owners.remove(&k) {
                    owner.unlock();
                }
                self.pids.remove(&k);
            }
            r.count += 1;
            self.released.notify_all();
        }
        self.kick();
    }

    /// The open file `fh` of `nodeid` was closed (FLUSH). If that was its
    /// last close, the RELEASE that drops its OFD locks is on its way.
    pub fn note_close(&self, nodeid: NodeId, fh: Fh) {
        if !self.used.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        for mut e in self.owners.iter_mut() {
            if e.key().0 == nodeid && e.value().fh == fh {
                e.value_mut().closed = Some(now);
            }
        }
    }

    /// RELEASEs that dropped locks so far: read before a lock check, for
    /// [`LockTable::recheck`].
    pub fn releases(&self) -> u64 {
        self.releases.lock().count
    }

    /// A lock check (GETLK, or a SETLK that failed) found a conflict: should
    /// it look again? `seen` is [`LockTable::releases`] from before the
    /// check. It should when locks went since, or, when a file of `nodeid`
    /// was closed less than its settle time ago by an owner other than `asker`,
    /// once that file's RELEASE has come.
    ///
    /// An OFD lock goes at the last close of its open file description,
    /// before close(2) returns; FUSE sends that RELEASE asynchronously,
    /// after close(2) has returned, and over io_uring another process's
    /// GETLK, on another CPU, reaches another queue and often came first
    /// (fstests generic/478). The kernel queues the RELEASE before close(2)
    /// returns, so it arrives within a moment; a file still open elsewhere
    /// (a dup) sends none, and its lock is reported after the wait.
    pub fn recheck(&self, nodeid: NodeId, asker: LockOwner, seen: u64) -> Recheck {
        // The count and the owners are read under the count's lock, under
        // which `release_fh` removes owners and moves the count. Read apart,
        // a RELEASE landing between the two looked like neither (the count
        // not moved yet, the closed owner already gone) and the check
        // answered a lock already gone.
        let r = self.releases.lock();
        if r.count != seen {
            return Recheck::Now;
        }
        #[cfg(test)]
        tests::race_point();
        let closed = self
            .owners
            .iter()
            .filter(|e| e.key().0 == nodeid && e.key().1 != asker)
            .filter_map(|e| e.value().closed)
            .filter(|t| t.elapsed() < self.settle)
            .max();
        drop(r);
        match closed {
            Some(t) => Recheck::After(t + self.settle),
            None => Recheck::Never,
        }
    }

    /// Runs `then` (the check again, and its answer) once a RELEASE has
    /// dropped locks after `seen`, or at `deadline`, on the settle thread
    /// (started when the first check waits, gone when none does). Never
    /// blocks; a check waiting here is not interruptible, and waits at most
    /// its settle time.
    pub fn defer(self: &Arc<Self>, seen: u64, deadline: Instant, then: Box<dyn FnOnce() + Send>) {
        let mut r = self.releases.lock();
        if r.count != seen {
            drop(r);
            return then();
        }
        r.waiting.push(Settle {
            seen,
            deadline,
            then,
        });
        if r.settler {
            return;
        }
        match self.start("lock-settle", LockTable::settler) {
            Ok(()) => r.settler = true,
            Err(e) => {
                // Answer as things stand rather than never.
                warn!("cannot start the lock settle thread: {e}");
                let waiting = std::mem::take(&mut r.waiting);
                drop(r);
                for s in waiting {
                    (s.then)();
                }
            }
        }
    }

    /// Starts one of the table's on-demand threads (settle, waker), which
    /// ends by itself once it has nothing left to do.
    fn start(self: &Arc<Self>, name: &str, body: fn(&LockTable)) -> std::io::Result<()> {
        let table = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&table))
            .map(drop)
    }

    /// The settle thread: runs each waiting check once its RELEASE came or
    /// its time is up, until none waits.
    fn settler(&self) {
        loop {
            let ready: Vec<Settle> = {
                let mut r = self.releases.lock();
                loop {
                    let Some(next) = r.waiting.iter().map(|s| s.deadline).min() else {
                        r.settler = false;
                        return;
                    };
                    let count = r.count;
                    if Instant::now() >= next || r.waiting.iter().any(|s| s.seen != count) {
                        break;
                    }
                    self.released.wait_until(&mut r, next);
                }
                let (now, count) = (Instant::now(), r.count);
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut r.waiting)
                    .into_iter()
                    .partition(|s| s.seen != count || s.deadline <= now);
                r.waiting = waiting;
                ready
            };
            for s in ready {
                (s.then)();
            }
        }
    }

    /// The lock that conflicts with `asked` on `nodeid`, as GETLK answers
    /// it to `owner` (whose open file description `fd` is): F_UNLCK if none.
    fn holder(
        &self,
        nodeid: NodeId,
        owner: LockOwner,
        fd: &OwnedFd,
        asked: libc::flock,
        lk: abi::FileLock,
    ) -> Result<abi::FileLock, Errno> {
        let mut fl = asked;
        sys::ofd_lock(fd.as_fd(), libc::F_OFD_GETLK, &mut fl)?;
        if fl.l_type as i32 == libc::F_UNLCK {
            return Ok(abi::FileLock {
                typ: libc::F_UNLCK as u32,
                ..lk
            });
        }
        let end = if fl.l_len == 0 {
            i64::MAX as u64
        } else {
            (fl.l_start + fl.l_len - 1) as u64
        };
        // OFD locks have no pid: name the last other owner seen locking.
        let pid = self
            .pids
            .iter()
            .find(|e| e.key().0 == nodeid && e.key().1 != owner)
            .map(|e| *e.value())
            .unwrap_or(0);
        Ok(abi::FileLock {
            start: fl.l_start as u64,
            end,
            typ: fl.l_type as u32,
            pid,
        })
    }

    /// Locks may have been dropped: retry the queued waits now.
    fn kick(&self) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.queue.lock().kicked = true;
        self.wake.notify_one();
    }

    /// The kernel interrupts request `unique`: a queued wait answers EINTR;
    /// one not queued yet will when it comes.
    pub fn interrupt(&self, unique: u64) {
        let w = {
            let mut q = self.queue.lock();
            match q.waiters.iter().position(|w| w.unique == unique) {
                Some(i) => {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    q.waiters.remove(i)
                }
                None => {
                    q.early.push_back(unique);
                    if q.early.len() > MAX_EARLY_INTERRUPTS {
                        q.early.pop_front();
                    }
                    None
                }
            }
        };
        if let Some(w) = w {
            w.reply.finish(Err(Errno::EINTR));
        }
    }

    /// Takes `lock` now or queues the wait for it; answers `reply` when it
    /// is granted, fails, or is interrupted. Never blocks.
    fn wait_for(self: &Arc<Self>, lock: Lock, reply: Deferred) {
        let unique = reply.unique();
        let mut q = self.queue.lock();
        if let Some(i) = q.early.iter().position(|&u| u == unique) {
            q.early.remove(i);
            drop(q);
            return reply.finish(Err(Errno::EINTR));
        }
        // Tried under the queue's lock: a lock dropped after this try kicks
        // the waker only once the wait is queued.
        match lock.attempt() {
            Err(e) if e == Errno::EAGAIN || e == Errno(libc::EWOULDBLOCK) => {}
            r => {
                drop(q);
                return reply.finish(r);
            }
        }
        if q.waiters.len() >= self.max_waiters {
            drop(q);
            warn!("more than {} blocked lock waits: ENOLCK", self.max_waiters);
            return reply.finish(Err(Errno(libc::ENOLCK)));
        }
        q.waiters.push_back(Waiter {
            unique,
            lock,
            reply,
        });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if !q.waker {
            match self.start("lock-waker", LockTable::waker) {
                Ok(()) => q.waker = true,
                Err(e) => {
                    // The waits stay queued; the next one tries again.
                    warn!("cannot start the lock waker: {e}");
                }
            }
        }
    }

    /// The waker thread: retries queued waits until none is left.
    fn waker(&self) {
        let mut period = POLL_MIN;
        loop {
            let mut done = Vec::new();
            {
                let mut q = self.queue.lock();
                if q.waiters.is_empty() {
                    q.waker = false;
                    return;
                }
                if !q.kicked {
                    let deadline = Instant::now() + period;
                    self.wake.wait_until(&mut q, deadline);
                }
                if std::mem::take(&mut q.kicked) {
                    period = POLL_MIN;
                }
                // Retried under the queue's lock, so an INTERRUPT always
                // finds its wait queued or answered, never in between.
                let mut i = 0;
                while i < q.waiters.len() {
                    match q.waiters[i].lock.attempt() {
                        Err(e) if e == Errno::EAGAIN || e == Errno(libc::EWOULDBLOCK) => i += 1,
                        r => {
                            if let Some(w) = q.waiters.remove(i) {
                                done.push((w, r));
                            }
                        }
                    }
                }
                self.waiting.fetch_sub(done.len(), Ordering::Relaxed);
            }
            if done.is_empty() {
                period = (period * 2).min(POLL_MAX);
            }
            for (w, r) in done {
                w.reply.finish(r);
            }
        }
    }
}

/// A POSIX lock request in host terms.
fn to_flock(lk: &abi::FileLock) -> Result<libc::flock, Errno> {
    let typ = lk.typ as i32;
    if typ != libc::F_RDLCK && typ != libc::F_WRLCK && typ != libc::F_UNLCK {
        return Err(Errno::EINVAL);
    }
    let start = i64::try_from(lk.start).map_err(|_| Errno::EINVAL)?;
    let len = if lk.end >= i64::MAX as u64 {
        0 // to the end of the file
    } else {
        (lk.end as i64)
            .checked_sub(start)
            .and_then(|d| d.checked_add(1))
            .ok_or(Errno::EINVAL)?
    };
    let mut fl = crate::sys::empty_flock();
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl.l_pid = 0; // required for OFD locks
    Ok(fl)
}

impl PassthroughFs {
    /// The open file description of a lock owner on an inode, made on first
    /// use. Opened by the daemon for reading and writing when it can: the
    /// kernel has already checked the caller's file was open in the mode
    /// the lock type needs.
    fn owner_fd(&self, inode: &Inode, owner: LockOwner, fh: Fh) -> Result<Arc<OwnedFd>, Errno> {
        // Locks come only on open files; never reopen a FIFO or a device.
        if !matches!(inode.kind, Kind::Regular | Kind::Directory) {
            return Err(Errno::EBADF);
        }
        if let Some(mut e) = self.locks.owners.get_mut(&(inode.nodeid, owner)) {
            e.fh = fh;
            e.closed = None;
            return Ok(e.fd.clone());
        }
        let ipath = self.table.fd(inode)?;
        let proc = self.table.proc_self_fd();
        let fd = [libc::O_RDWR, libc::O_RDONLY, libc::O_WRONLY]
            .iter()
            .find_map(|&m| {
                sys::reopen(proc, ipath.fd(), m | libc::O_NONBLOCK | libc::O_NOCTTY).ok()
            })
            .ok_or(Errno::EBADF)?;
        let fd = Arc::new(fd);
        self.locks.used.store(true, Ordering::Release);
        Ok(self
            .locks
            .owners
            .entry((inode.nodeid, owner))
            .or_insert(OwnerLocks {
                fd,
                fh,
                closed: None,
            })
            .fd
            .clone())
    }

    /// The lock a SETLK(W) asks for, on the fd that will hold it.
    fn lock_of(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn) -> Result<Lock, Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        if arg.lk_flags & abi::LK_FLOCK != 0 {
            let f = self.file(arg.fh)?;
            let op = match arg.lk.typ as i32 {
                libc::F_RDLCK => libc::LOCK_SH,
                libc::F_WRLCK => libc::LOCK_EX,
                libc::F_UNLCK => libc::LOCK_UN,
                _ => return Err(Errno::EINVAL),
            };
            return Ok(Lock::Flock(f, op));
        }
        let fl = to_flock(&arg.lk)?;
        let fd = self.owner_fd(&inode, arg.owner, arg.fh)?;
        if fl.l_type as i32 != libc::F_UNLCK {
            self.locks.pids.insert((nodeid, arg.owner), arg.lk.pid);
        }
        Ok(Lock::Posix(fd, fl))
    }
}

impl LockOps for PassthroughFs {
    /// GETLK: asked of the owner's open file description, which the host
    /// answers as it would answer that process. A conflict with a file
    /// closed just before is looked at again once its RELEASE came.
    fn getlk(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        let found = self
            .inode(nodeid, ctx.opcode)
            .and_then(|inode| Ok((to_flock(&arg.lk)?, inode)))
            .and_then(|(asked, inode)| Ok((asked, self.owner_fd(&inode, arg.owner, arg.fh)?)));
        let (asked, fd) = match found {
            Ok(v) => v,
            Err(e) => return reply.finish(Err(e)),
        };
        let seen = self.locks.releases();
        let check = {
            let (locks, owner, lk) = (self.locks.clone(), arg.owner, arg.lk);
            move || locks.holder(nodeid, owner, &fd, asked, lk)
        };
        let first = check();
        let held = matches!(&first, Ok(l) if l.typ != libc::F_UNLCK as u32);
        match held.then(|| self.locks.recheck(nodeid, arg.owner, seen)) {
            Some(Recheck::Now) => reply.finish_with(check()),
            Some(Recheck::After(deadline)) => {
                self.locks
                    .defer(seen, deadline, Box::new(move || reply.finish_with(check())))
            }
            Some(Recheck::Never) | None => reply.finish_with(first),
        }
    }

    /// SETLK: one non-blocking try (again once the RELEASE of a file closed
    /// just before came, as GETLK). Any change may free a queued wait.
    fn setlk(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        let lock = match self.lock_of(ctx, nodeid, arg) {
            Ok(l) => l,
            Err(e) => return reply.finish(Err(e)),
        };
        let seen = self.locks.releases();
        let mut r = lock.attempt();
        if r == Err(Errno::EAGAIN) {
            match self.locks.recheck(nodeid, arg.owner, seen) {
                Recheck::Now => r = lock.attempt(),
                Recheck::After(deadline) => {
                    let locks = self.locks.clone();
                    let again = move || {
                        let r = lock.attempt();
                        locks.kick();
                        reply.finish(r)
                    };
                    return self.locks.defer(seen, deadline, Box::new(again));
                }
                Recheck::Never => {}
            }
        }
        self.locks.kick();
        reply.finish(r)
    }

    /// SETLKW: granted now, or queued (see [`LockTable`]); never blocks.
    fn setlkw(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LkIn, reply: Deferred) {
        match self.lock_of(ctx, nodeid, arg) {
            Ok(lock) => self.locks.wait_for(lock, reply),
            Err(e) => reply.finish(Err(e)),
        }
    }
}

#[cfg_attr(test, derive(Clone))]
enum Lock {
    Flock(Arc<OpenFile>, i32),
    Posix(Arc<OwnedFd>, libc::flock),
}

impl Lock {
    /// One non-blocking try.
    fn attempt(&self) -> Result<(), Errno> {
        match self {
            Lock::Flock(f, op) => {
                let op = if *op == libc::LOCK_UN {
                    *op
                } else {
                    *op | libc::LOCK_NB
                };
                sys::flock(f.fd.as_fd(), op).map_err(Errno::from)
            }
            Lock::Posix(fd, fl) => {
                let mut fl = *fl;
                sys::ofd_lock(fd.as_fd(), libc::F_OFD_SETLK, &mut fl).map_err(Errno::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::channel::{Channel, Connection};
    use std::os::unix::net::UnixDatagram;

    /// A channel whose replies arrive at the returned socket, one each.
    fn channel() -> (Arc<Channel>, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let conn = Connection::new(OwnedFd::from(a));
        (Arc::new(conn.master_channel().unwrap()), b)
    }

    /// The next reply, within a second: (unique, error).
    fn reply_of(rx: &UnixDatagram) -> Option<(u64, i32)> {
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).ok()?;
        assert!(n >= 16);
        let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        Some((unique, error))
    }

    /// The next reply, header and payload, within a second.
    fn reply_bytes(rx: &UnixDatagram) -> Option<Vec<u8>> {
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }

    fn deferred(ch: &Arc<Channel>, unique: u64) -> Deferred {
        Deferred(Reply::new(ch.clone(), unique, Opcode::Setlkw))
    }

    /// A write lock on the whole of `file`, on an open file description of
    /// its own (as each lock owner has; it holds the lock while it is open).
    fn write_lock(file: &std::path::Path) -> (Lock, Arc<OwnedFd>) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file)
            .unwrap();
        let fd = Arc::new(OwnedFd::from(f));
        (Lock::Posix(fd.clone(), whole_file_write()), fd)
    }

    /// A write lock on the whole file, in host terms.
    fn whole_file_write() -> libc::flock {
        to_flock(&abi::FileLock {
            start: 0,
            end: u64::MAX,
            typ: libc::F_WRLCK as u32,
            pid: 0,
        })
        .unwrap()
    }

    /// A file to lock, in a directory of its own (kept while the guard is).
    fn lock_file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        (dir, file)
    }

    #[test]
    fn waits_queue_up_to_the_limit_and_are_granted_or_interrupted() {
        let (_dir, file) = lock_file();
        let (ch, rx) = channel();
        let table = Arc::new(LockTable::with_limits(2, SETTLE));
        let (holder, holder_fd) = write_lock(&file);
        holder.attempt().unwrap();
        let owners: Vec<_> = (0..4).map(|_| write_lock(&file)).collect();
        // An INTERRUPT before its wait arrives is kept for it.
        table.interrupt(10);
        table.wait_for(owners[0].0.clone(), deferred(&ch, 10));
        assert_eq!(reply_of(&rx), Some((10, -libc::EINTR)));
        // Two waits queue, the third is over the limit.
        table.wait_for(owners[1].0.clone(), deferred(&ch, 11));
        table.wait_for(owners[2].0.clone(), deferred(&ch, 12));
        table.wait_for(owners[3].0.clone(), deferred(&ch, 13));
        assert_eq!(reply_of(&rx), Some((13, -libc::ENOLCK)));
        assert_eq!(table.waiters(), 2);
        assert_eq!(reply_of(&rx), None, "the queued waits wait");
        // Dropping the lock (and a kick) grants the first in line only.
        drop((holder, holder_fd));
        table.kick();
        assert_eq!(reply_of(&rx), Some((11, 0)));
        assert_eq!(reply_of(&rx), None, "the second still waits");
        assert_eq!(table.waiters(), 1);
        table.interrupt(12);
        assert_eq!(reply_of(&rx), Some((12, -libc::EINTR)));
        assert_eq!(table.waiters(), 0);
        // With the queue empty the waker thread ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while table.queue.lock().waker {
            assert!(Instant::now() < deadline, "the waker thread never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A check that found a conflict with a file closed just before waits
    /// for that file's RELEASE on the settle thread, not on the caller, and
    /// answers at the RELEASE, or at its deadline when none comes.
    #[test]
    fn a_check_waits_for_the_release_off_the_worker() {
        let (_dir, file) = lock_file();
        let (ch, rx) = channel();
        let table = Arc::new(LockTable::default());
        let (holder, fd) = write_lock(&file);
        holder.attempt().unwrap();
        let (nodeid, closer, asker, fh) = (
            NodeId::from_raw(5),
            LockOwner::from_raw(100),
            LockOwner::from_raw(200),
            Fh::from_raw(7),
        );
        table.used.store(true, Ordering::Release);
        table.owners.insert(
            (nodeid, closer),
            OwnerLocks {
                fd,
                fh,
                closed: None,
            },
        );
        let seen = table.releases();
        assert!(matches!(table.recheck(nodeid, asker, seen), Recheck::Never));
        // The holder's file is closed (FLUSH): its RELEASE may follow.
        table.note_close(nodeid, fh);
        assert!(
            matches!(table.recheck(nodeid, asker, seen), Recheck::After(_)),
            "a conflict with a file just closed must wait for its RELEASE"
        );
        assert!(matches!(
            table.recheck(nodeid, closer, seen),
            Recheck::Never
        ));
        // A deadline past the read timeout of reply_of(): only the RELEASE
        // can answer within it.
        let reply = deferred(&ch, 30);
        let late = Instant::now() + Duration::from_secs(30);
        table.defer(seen, late, Box::new(move || reply.finish(Ok(()))));
        // defer() returned without an answer: the worker goes on serving.
        assert_eq!(reply_of(&rx), None, "answered before the RELEASE");
        table.release_fh(nodeid, fh);
        assert_eq!(reply_of(&rx), Some((30, 0)), "not answered at the RELEASE");
        assert!(matches!(table.recheck(nodeid, asker, seen), Recheck::Now));
        // No RELEASE: answered at the deadline.
        let reply = deferred(&ch, 31);
        let soon = Instant::now() + Duration::from_millis(50);
        table.defer(
            table.releases(),
            soon,
            Box::new(move || reply.finish(Ok(()))),
        );
        assert_eq!(reply_of(&rx), Some((31, 0)), "not answered at the deadline");
        // With nothing waiting the settle thread ends.
        let end = Instant::now() + Duration::from_secs(5);
        while table.releases.lock().settler {
            assert!(Instant::now() < end, "the settle thread never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(holder);
    }

    /// An owner's locks go when its entry does (RELEASE of the file it
    /// locked through, close by a POSIX owner, FORGET), even while a request
    /// that locked through it still holds a clone of its fd: the SETLK that
    /// took the lock drops its clone only after its reply has gone.
    #[test]
    fn locks_go_with_their_owner_even_while_its_fd_is_held() {
        let (_dir, file) = lock_file();
        let (nodeid, fh) = (NodeId::from_raw(5), Fh::from_raw(7));
        // Another open file description, to ask the host who holds what.
        let probe = write_lock(&file).1;
        let held = |table: &LockTable, owner: u64| {
            let (lock, fd) = write_lock(&file);
            lock.attempt().unwrap();
            table.used.store(true, Ordering::Release);
            table.owners.insert(
                (nodeid, LockOwner::from_raw(owner)),
                OwnerLocks {
                    fd: fd.clone(),
                    fh,
                    closed: None,
                },
            );
            (lock, fd)
        };
        let free = || {
            let mut fl = whole_file_write();
            sys::ofd_lock(probe.as_fd(), libc::F_OFD_GETLK, &mut fl).unwrap();
            fl.l_type as i32 == libc::F_UNLCK
        };
        let table = LockTable::default();
        let clone = held(&table, 1);
        assert!(!free(), "the owner holds the lock");
        table.release_fh(nodeid, fh);
        assert!(free(), "the lock outlived the RELEASE of its file");
        drop(clone);
        let clone = held(&table, 2);
        table.release_owner(nodeid, LockOwner::from_raw(2));
        assert!(free(), "the lock outlived its owner's close");
        drop(clone);
        let clone = held(&table, 3);
        table.forget_inode(nodeid);
        assert!(free(), "the lock outlived its inode");
        drop(clone);
    }

    thread_local! {
        /// Run once by [`race_point`] on this thread (see its use).
        static RACE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Where `recheck` has learned the release count and has yet to look at
    /// the owners: a test runs what it set in `RACE` there.
    pub(super) fn race_point() {
        if let Some(f) = RACE.with(|r| r.borrow_mut().take()) {
            f()
        }
    }

    /// A RELEASE that drops the conflicting lock while a check decides
    /// whether to look again (after it saw the lock, before it answers) is
    /// not missed: the check looks again, now or once that RELEASE counted.
    /// `recheck` read the count, then the owners: a RELEASE landing between
    /// the two looked like neither (the count not moved yet, the closed
    /// owner already gone), and GETLK answered a lock already gone
    /// (ops::an_ofd_lock_is_gone_once_its_last_close_returns, 1 run in 30
    /// under load).
    #[test]
    fn a_release_while_a_check_decides_to_look_again_is_not_missed() {
        let (_dir, file) = lock_file();
        let (nodeid, fh) = (NodeId::from_raw(5), Fh::from_raw(7));
        let (closer, asker) = (LockOwner::from_raw(1), LockOwner::from_raw(2));
        let table = Arc::new(LockTable::default());
        // The closer's lock, its file closed (FLUSH) and its RELEASE coming.
        // (Closed "in an hour": the RELEASE is awaited for SETTLE after a
        // close, and this test is about the RELEASE, not that window.)
        let (lock, fd) = write_lock(&file);
        lock.attempt().unwrap();
        drop(lock);
        table.used.store(true, Ordering::Release);
        table.owners.insert(
            (nodeid, closer),
            OwnerLocks {
                fd,
                fh,
                closed: Some(Instant::now() + Duration::from_secs(3600)),
            },
        );
        // The asker's check: the count, then the lock, held.
        let (probe, _) = write_lock(&file);
        let seen = table.releases();
        assert_eq!(
            probe.attempt(),
            Err(Errno::EAGAIN),
            "the closer holds the lock"
        );
        // The RELEASE comes while the check decides. It completes there,
        // unless `recheck` holds off RELEASEs meanwhile (then it completes
        // once `recheck` has decided: the wait below only bounds how long
        // the test gives it).
        let releasing = Arc::new(Mutex::new(None));
        let (t, slot) = (table.clone(), releasing.clone());
        RACE.with(|r| {
            *r.borrow_mut() = Some(Box::new(move || {
                let h = std::thread::spawn(move || t.release_fh(nodeid, fh));
                let until = Instant::now() + Duration::from_millis(100);
                while !h.is_finished() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                *slot.lock() = Some(h);
            }))
        });
        let decided = table.recheck(nodeid, asker, seen);
        releasing
            .lock()
            .take()
            .expect("the RELEASE ran")
            .join()
            .unwrap();
        assert!(
            !matches!(decided, Recheck::Never),
            "the check missed the RELEASE and would answer a lock already gone"
        );
        assert_eq!(probe.attempt(), Ok(()), "the RELEASE dropped the lock");
    }

    #[test]
    fn a_lock_held_outside_is_polled_for() {
        let (_dir, file) = lock_file();
        let (ch, rx) = channel();
        let table = Arc::new(LockTable::default());
        let outside = write_lock(&file);
        outside.0.attempt().unwrap();
        let waiter = write_lock(&file);
        table.wait_for(waiter.0, deferred(&ch, 20));
        assert_eq!(reply_of(&rx), None);
        // Released with no kick (as a process on SOURCE would): the waker's
        // poll finds it.
        drop(outside);
        assert_eq!(reply_of(&rx), Some((20, 0)));
    }

    #[test]
    fn lock_ranges_in_host_terms() {
        let lk = |start, end, typ: i32| abi::FileLock {
            start,
            end,
            typ: typ as u32,
            pid: 9,
        };
        let fl = to_flock(&lk(10, 19, libc::F_RDLCK)).unwrap();
        assert_eq!((fl.l_start, fl.l_len, fl.l_pid), (10, 10, 0));
        let fl = to_flock(&lk(5, u64::MAX, libc::F_WRLCK)).unwrap();
        assert_eq!((fl.l_start, fl.l_len), (5, 0), "to the end of the file");
        assert_eq!(to_flock(&lk(0, 1, 99)).unwrap_err(), Errno::EINVAL);
        assert_eq!(
            to_flock(&lk(u64::MAX, u64::MAX, libc::F_RDLCK)).unwrap_err(),
            Errno::EINVAL
        );
    }

    /// Lock owners map to open file descriptions: each (inode, owner) its
    /// own, shared by that owner's locks; FLUSH by the owner (close) drops
    /// its locks, RELEASE of an fh drops the owners that last locked
    /// through it, FORGET drops all of the inode's.
    #[test]
    fn each_lock_owner_holds_its_own_locks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
        let cfg = crate::passthrough::Config::for_source(dir.path().into());
        let fs = PassthroughFs::new(cfg).unwrap();
        let ctx = |op| Context {
            unique: 1,
            opcode: op,
            nodeid: NodeId::ROOT,
            uid: 0,
            gid: 0,
            pid: 1,
            groups: Vec::new(),
        };
        let n = fs
            .lookup(&ctx(Opcode::Lookup), NodeId::ROOT, c"f")
            .unwrap()
            .nodeid;
        let (a, b) = (LockOwner::from_raw(0xa), LockOwner::from_raw(0xb));
        let (fh_a, fh_b) = (Fh::from_raw(1), Fh::from_raw(2));
        let lk = |owner, fh, start, end, typ: i32, pid| abi::LkIn {
            fh,
            owner,
            lk: abi::FileLock {
                start,
                end,
                typ: typ as u32,
                pid,
            },
            ..Default::default()
        };
        // Nothing here waits for a RELEASE (no FLUSH came): every answer is
        // sent before the call returns.
        let (ch, rx) = channel();
        let set = |arg: abi::LkIn| {
            let reply = Deferred(Reply::new(ch.clone(), 1, Opcode::Setlk));
            fs.setlk(&ctx(Opcode::Setlk), n, &arg, reply);
            match reply_of(&rx).expect("SETLK answered") {
                (_, 0) => Ok(()),
                (_, e) => Err(Errno(-e)),
            }
        };
        let get = |arg: abi::LkIn| {
            let reply = Deferred(Reply::new(ch.clone(), 1, Opcode::Getlk));
            fs.getlk(&ctx(Opcode::Getlk), n, &arg, reply);
            let b = reply_bytes(&rx).expect("GETLK answered");
            assert_eq!(b.len(), 16 + 24, "GETLK's reply: {b:?}");
            let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
            abi::FileLock {
                start: 0,
                end: 0,
                typ: u32_at(32),
                pid: u32_at(36),
            }
        };
        let busy = Err(Errno::EAGAIN);
        assert_eq!(set(lk(a, fh_a, 0, 4, libc::F_WRLCK, 100)), Ok(()));
        // The same owner's second lock joins the first; another owner
        // conflicts, and GETLK names the holder's pid.
        assert_eq!(set(lk(a, fh_a, 5, 9, libc::F_WRLCK, 100)), Ok(()));
        assert_eq!(set(lk(b, fh_b, 3, 3, libc::F_RDLCK, 200)), busy);
        let held = get(lk(b, fh_b, 0, 9, libc::F_WRLCK, 200));
        assert_eq!((held.typ, held.pid), (libc::F_WRLCK as u32, 100));
        assert_eq!(
            get(lk(a, fh_a, 0, 9, libc::F_WRLCK, 100)).typ,
            libc::F_UNLCK as u32
        );
        // FLUSH by owner a (its process closed the file): a's locks go.
        fs.locks.release_owner(n, a);
        assert_eq!(set(lk(b, fh_b, 3, 3, libc::F_WRLCK, 200)), Ok(()));
        assert_eq!(set(lk(a, fh_a, 0, 9, libc::F_RDLCK, 100)), busy);
        // RELEASE of fh 1 (not the one b locked through) leaves b's lock;
        // RELEASE of fh 2 takes it.
        fs.locks.release_fh(n, fh_a);
        assert_eq!(set(lk(a, fh_a, 3, 3, libc::F_RDLCK, 100)), busy);
        fs.locks.release_fh(n, fh_b);
        assert_eq!(set(lk(a, fh_a, 0, 9, libc::F_WRLCK, 100)), Ok(()));
        // FORGET: every owner of the inode goes.
        fs.locks.forget_inode(n);
        assert_eq!(set(lk(b, fh_b, 0, 9, libc::F_WRLCK, 200)), Ok(()));
        assert!(fs.locks.owners.iter().all(|e| e.key().1 == b));
    }
}
