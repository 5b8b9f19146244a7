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
//!
//! A blocking wait (SETLKW, blocking flock) never occupies a worker: after a
//! failed non-blocking try it moves to a thread of its own, which replies
//! when the lock is granted, or EINTR when the kernel sends INTERRUPT.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};

use super::*;

/// The host open file description holding one lock owner's locks.
struct OwnerLocks {
    fd: Arc<OwnedFd>,
    /// The fh the owner last locked through (its OFD, for OFD locks).
    fh: u64,
}

#[derive(Default)]
pub struct LockTable {
    /// (nodeid, lock owner) -> the owner's open file description.
    owners: DashMap<(u64, u64), OwnerLocks>,
    /// Last pid seen locking each inode, per owner (for GETLK's answer).
    pids: DashMap<(u64, u64), u32>,
    /// Blocked waits: request unique -> waiting thread.
    waiting: Mutex<HashMap<u64, libc::pthread_t>>,
    /// INTERRUPTs that arrived before their wait registered (bounded).
    early_interrupts: Mutex<VecDeque<u64>>,
}

impl LockTable {
    pub fn clear(&self) {
        self.owners.clear();
        self.pids.clear();
    }

    pub fn forget_inode(&self, nodeid: u64) {
        self.owners.retain(|k, _| k.0 != nodeid);
        self.pids.retain(|k, _| k.0 != nodeid);
    }

    /// A lock owner closed the file: its POSIX locks on the inode go.
    pub fn release_owner(&self, nodeid: u64, owner: u64) {
        self.owners.remove(&(nodeid, owner));
        self.pids.remove(&(nodeid, owner));
    }

    /// The open file `fh` of `nodeid` was released: the owners that last
    /// locked through it (OFD locks) lose their locks.
    pub fn release_fh(&self, nodeid: u64, fh: u64) {
        let gone: Vec<(u64, u64)> = self
            .owners
            .iter()
            .filter(|e| e.key().0 == nodeid && e.value().fh == fh)
            .map(|e| *e.key())
            .collect();
        for k in gone {
            self.owners.remove(&k);
            self.pids.remove(&k);
        }
    }

    /// The kernel interrupts request `unique`: wake its waiting thread.
    pub fn interrupt(&self, unique: u64) {
        if let Some(&tid) = self.waiting.lock().get(&unique) {
            // SAFETY: the thread is registered only while it is alive and
            // waiting (it deregisters before exiting, under this lock);
            // SIGUSR2 has a no-op handler without SA_RESTART.
            unsafe { libc::pthread_kill(tid, libc::SIGUSR2) };
            return;
        }
        let mut early = self.early_interrupts.lock();
        early.push_back(unique);
        if early.len() > 256 {
            early.pop_front();
        }
    }

    fn take_early_interrupt(&self, unique: u64) -> bool {
        let mut early = self.early_interrupts.lock();
        match early.iter().position(|&u| u == unique) {
            Some(i) => {
                early.remove(i);
                true
            }
            None => false,
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
    // SAFETY: flock is plain old data; zero is valid for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
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
    fn owner_fd(&self, inode: &Inode, owner: u64, fh: u64) -> Result<Arc<OwnedFd>, Errno> {
        // Locks come only on open files; never reopen a FIFO or a device.
        if !matches!(inode.kind, Kind::Regular | Kind::Directory) {
            return Err(Errno::EBADF);
        }
        if let Some(mut e) = self.locks.owners.get_mut(&(inode.nodeid, owner)) {
            e.fh = fh;
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
        Ok(self
            .locks
            .owners
            .entry((inode.nodeid, owner))
            .or_insert(OwnerLocks { fd, fh })
            .fd
            .clone())
    }

    pub(super) fn do_getlk(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::LkIn,
    ) -> Result<abi::FileLock, Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let mut fl = to_flock(&arg.lk)?;
        let fd = self.owner_fd(&inode, arg.owner, arg.fh)?;
        sys::ofd_lock(fd.as_fd(), libc::F_OFD_GETLK, &mut fl)?;
        if fl.l_type as i32 == libc::F_UNLCK {
            return Ok(abi::FileLock {
                typ: libc::F_UNLCK as u32,
                ..arg.lk
            });
        }
        let end = if fl.l_len == 0 {
            i64::MAX as u64
        } else {
            (fl.l_start + fl.l_len - 1) as u64
        };
        // OFD locks have no pid: name the last other owner seen locking.
        let pid = self
            .locks
            .pids
            .iter()
            .find(|e| e.key().0 == nodeid && e.key().1 != arg.owner)
            .map(|e| *e.value())
            .unwrap_or(0);
        Ok(abi::FileLock {
            start: fl.l_start as u64,
            end,
            typ: fl.l_type as u32,
            pid,
        })
    }

    pub(super) fn do_setlk(
        &self,
        ctx: &Context,
        nodeid: u64,
        arg: &abi::LkIn,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let inode = self.inode(nodeid, ctx.opcode)?;
            if arg.lk_flags & abi::LK_FLOCK != 0 {
                let f = self.file(arg.fh)?;
                let op = match arg.lk.typ as i32 {
                    libc::F_RDLCK => libc::LOCK_SH,
                    libc::F_WRLCK => libc::LOCK_EX,
                    libc::F_UNLCK => libc::LOCK_UN,
                    _ => return Err(Errno::EINVAL),
                };
                let fd = f.clone();
                return Ok(Lock::Flock(fd, op));
            }
            let fl = to_flock(&arg.lk)?;
            let fd = self.owner_fd(&inode, arg.owner, arg.fh)?;
            if fl.l_type as i32 != libc::F_UNLCK {
                self.locks.pids.insert((nodeid, arg.owner), arg.lk.pid);
            }
            Ok(Lock::Posix(fd, fl))
        })();
        let lock = match r {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        // First a non-blocking try on the worker.
        match lock.attempt(false) {
            Ok(()) => return reply.ok(),
            Err(e) if sleep && (e == Errno::EAGAIN || e == Errno(libc::EWOULDBLOCK)) => {}
            Err(e) => return reply.error(e),
        }
        // Contended and the caller wants to wait: wait on a thread of its own.
        let unique = ctx.unique;
        let table = self.locks.clone();
        let spawned = std::thread::Builder::new()
            .name("lock-wait".into())
            .spawn(move || {
                let tid = {
                    // SAFETY: pthread_self has no preconditions.
                    unsafe { libc::pthread_self() }
                };
                table.waiting.lock().insert(unique, tid);
                let r = if table.take_early_interrupt(unique) {
                    Err(Errno::EINTR)
                } else {
                    lock.attempt(true)
                };
                table.waiting.lock().remove(&unique);
                match r {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start a lock waiter: {e}");
            // The reply moved into the closure is dropped with it: EIO.
        }
    }
}

enum Lock {
    Flock(Arc<OpenFile>, i32),
    Posix(Arc<OwnedFd>, libc::flock),
}

impl Lock {
    fn attempt(&self, wait: bool) -> Result<(), Errno> {
        match self {
            Lock::Flock(f, op) => {
                let op = if wait || *op == libc::LOCK_UN {
                    *op
                } else {
                    *op | libc::LOCK_NB
                };
                sys::flock(f.fd.as_fd(), op).map_err(Errno::from)
            }
            Lock::Posix(fd, fl) => {
                let mut fl = *fl;
                let cmd = if wait {
                    libc::F_OFD_SETLKW
                } else {
                    libc::F_OFD_SETLK
                };
                sys::ofd_lock(fd.as_fd(), cmd, &mut fl).map_err(Errno::from)
            }
        }
    }
}
