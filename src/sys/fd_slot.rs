//! A cached fd that many requests borrow at once without holding a lock,
//! and that is closed only when no borrow is alive: the inode table's
//! O_PATH fd per inode (src/inode_table.rs).
//!
//! Why not a lock guard: one request may take the same inode's fd twice
//! (rename within a directory), and parking_lot's RwLock is task-fair, so a
//! reopen queued between the two takes would deadlock the request. Why not
//! an `Arc<OwnedFd>`: one more small allocation per cached fd fragmented
//! the heap enough that memory did not come back after the kernel forgot
//! (tests/resources.rs). So a count of borrows is raised under the lock,
//! and eviction closes the fd only under the write lock with the count at 0.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::RwLock;

/// An fd slot: empty, or holding an fd that [`FdSlot::get`] lends out.
pub struct FdSlot {
    fd: RwLock<Option<OwnedFd>>,
    /// Live [`SlotFd`]s.
    users: AtomicU32,
}

/// A borrow of the slot's fd: the fd stays open while this lives.
pub struct SlotFd<'a> {
    users: &'a AtomicU32,
    fd: BorrowedFd<'a>,
}

/// What [`FdSlot::try_evict`] did.
pub enum Evicted {
    /// Closed nothing: borrowed right now, or its lock was busy. Try later.
    Busy,
    /// Nothing to close (empty), or the caller's check said keep it.
    Kept,
    /// Taken out of the slot, to be closed by the caller.
    Taken(OwnedFd),
}

impl FdSlot {
    pub fn new(fd: Option<OwnedFd>) -> FdSlot {
        FdSlot {
            fd: RwLock::new(fd),
            users: AtomicU32::new(0),
        }
    }

    /// Whether an fd is cached.
    pub fn is_cached(&self) -> bool {
        self.fd.read().is_some()
    }

    /// Whether an fd is cached, without locking (nobody else holds it).
    pub fn is_cached_mut(&mut self) -> bool {
        self.fd.get_mut().is_some()
    }

    /// The cached fd, if any.
    pub fn get(&self) -> Option<SlotFd<'_>> {
        let r = self.fd.read();
        r.as_ref().map(|f| self.lend(f))
    }

    /// The cached fd, or the one `open` gives, stored in the slot; `true`
    /// when `open` ran. `open` runs at most once, under the write lock, so
    /// two requests never both reopen.
    pub fn get_or_open<E>(
        &self,
        open: impl FnOnce() -> Result<OwnedFd, E>,
    ) -> Result<(SlotFd<'_>, bool), E> {
        if let Some(f) = self.get() {
            return Ok((f, false));
        }
        let mut w = self.fd.write();
        if let Some(f) = w.as_ref() {
            return Ok((self.lend(f), false));
        }
        let f = w.insert(open()?);
        Ok((self.lend(f), true))
    }

    /// Stores `fd` if the slot is empty (`true`); otherwise `fd` is closed.
    pub fn fill(&self, fd: OwnedFd) -> bool {
        if self.fd.read().is_some() {
            return false;
        }
        let mut w = self.fd.write();
        if w.is_some() {
            return false;
        }
        *w = Some(fd);
        true
    }

    /// Takes the fd out if nobody borrows it and `may_close` agrees (it
    /// sees the fd about to close, e.g. to take its file handle first).
    /// Never waits for the lock.
    pub fn try_evict(&self, may_close: impl FnOnce(&OwnedFd) -> bool) -> Evicted {
        let Some(mut w) = self.fd.try_write() else {
            return Evicted::Busy;
        };
        if self.users.load(Ordering::Acquire) > 0 {
            return Evicted::Busy;
        }
        match w.as_ref() {
            Some(f) if may_close(f) => w.take().map_or(Evicted::Kept, Evicted::Taken),
            _ => Evicted::Kept,
        }
    }

    /// Holds the write lock for a test that needs a writer queued.
    #[cfg(test)]
    pub(crate) fn write_lock(&self) -> parking_lot::RwLockWriteGuard<'_, Option<OwnedFd>> {
        self.fd.write()
    }

    /// Lends `f`, the slot's fd; called with the slot's lock held (read or
    /// write), so `try_evict`, which checks `users` under the write lock,
    /// either took the fd before or sees this borrow.
    fn lend<'a>(&'a self, f: &OwnedFd) -> SlotFd<'a> {
        self.users.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the slot's fd is closed only by `try_evict` (under the
        // write lock, and only while `users` is 0) or when the slot is
        // dropped, which cannot happen while this borrow of `self` lives.
        // `users` stays raised until the SlotFd is dropped, so the fd stays
        // open for 'a.
        let fd = unsafe { BorrowedFd::borrow_raw(f.as_raw_fd()) };
        SlotFd {
            users: &self.users,
            fd,
        }
    }
}

impl<'a> SlotFd<'a> {
    pub fn fd(&self) -> BorrowedFd<'a> {
        self.fd
    }
}

impl<'a> std::ops::Deref for SlotFd<'a> {
    type Target = BorrowedFd<'a>;
    fn deref(&self) -> &BorrowedFd<'a> {
        &self.fd
    }
}

impl Drop for SlotFd<'_> {
    fn drop(&mut self) {
        self.users.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn a_borrowed_fd_is_never_evicted() {
        let slot = FdSlot::new(Some(devnull()));
        let b = slot.get().unwrap();
        assert!(matches!(slot.try_evict(|_| true), Evicted::Busy));
        let again = slot.get().unwrap();
        assert_eq!(b.fd().as_raw_fd(), again.fd().as_raw_fd());
        drop((b, again));
        assert!(matches!(slot.try_evict(|_| false), Evicted::Kept));
        assert!(matches!(slot.try_evict(|_| true), Evicted::Taken(_)));
        assert!(!slot.is_cached());
        assert!(matches!(slot.try_evict(|_| true), Evicted::Kept));
    }

    #[test]
    fn open_runs_once_and_fill_keeps_the_first() {
        let slot = FdSlot::new(None);
        assert!(slot.get().is_none());
        let (b, opened) = slot.get_or_open(|| Ok::<_, ()>(devnull())).unwrap();
        assert!(opened);
        let raw = b.fd().as_raw_fd();
        drop(b);
        let (b, opened) = slot
            .get_or_open(|| Err::<OwnedFd, _>("not called"))
            .unwrap();
        assert!(!opened);
        assert_eq!(b.fd().as_raw_fd(), raw);
        assert!(!slot.fill(devnull()), "a full slot keeps its fd");
        drop(b);
        assert!(matches!(slot.try_evict(|_| true), Evicted::Taken(_)));
        assert!(slot.fill(devnull()));
        assert!(slot.is_cached());
    }
}
