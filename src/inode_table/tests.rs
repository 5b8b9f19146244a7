//! The inode table's invariants, on a real directory: one nodeid per inode
//! (names and hard links share it), lookup counts, forget, eviction and
//! reopen from file handles, and inode numbers the host recycles.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;

/// Says that a test did not run, on the real stderr: `eprintln!` is
/// captured for a passing test, and scripts/test.sh fails the suite on
/// "skipped:" only if it reaches the log.
fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

fn table(dir: &Path) -> InodeTable {
    let cwd = std::fs::File::open("/").unwrap();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let root = sys::openat(cwd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
    let proc = sys::openat(
        cwd.as_fd(),
        c"/proc/self/fd",
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    InodeTable::new(root, proc, 16).unwrap()
}

fn name(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).unwrap()
}

fn lookup(t: &InodeTable, s: &str) -> Arc<Inode> {
    let root = t.get(NodeId::ROOT).unwrap();
    t.lookup(&root, &name(s)).unwrap().inode
}

#[test]
fn names_and_hard_links_share_one_nodeid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("c"), b"y").unwrap();
    let t = table(dir.path());
    let a = lookup(&t, "a");
    let a2 = lookup(&t, "a");
    let b = lookup(&t, "b");
    let c = lookup(&t, "c");
    assert_eq!((a.nodeid, a.nodeid), (a2.nodeid, b.nodeid));
    assert_ne!(a.nodeid, c.nodeid);
    assert_eq!(a.nlookup(), 3, "one count per lookup reply");
    assert_eq!(t.len(), 3, "root, a/b, c");
    assert_eq!(a.kind, Kind::Regular);
}

#[test]
fn forget_drops_counts_and_the_inode_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let t = table(dir.path());
    let d = lookup(&t, "d");
    lookup(&t, "d");
    assert!(t.forget(d.nodeid, 1).is_none(), "one count left");
    assert!(t.get(d.nodeid).is_ok());
    assert_eq!(t.forget(d.nodeid, 1).map(|i| i.nodeid), Some(d.nodeid));
    assert!(t.get(d.nodeid).is_err(), "gone at zero");
    assert!(
        t.forget(d.nodeid, 1).is_none(),
        "a second forget is harmless"
    );
    // The root is never forgotten; a new lookup gets a new nodeid.
    assert!(t.forget(NodeId::ROOT, u64::MAX).is_none());
    assert!(t.get(NodeId::ROOT).is_ok());
    assert_ne!(lookup(&t, "d").nodeid, d.nodeid, "nodeids are never reused");
    assert_eq!(t.len(), 2);
}

#[test]
fn evicted_fds_reopen_from_their_handle() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        std::fs::write(dir.path().join(format!("f{i}")), i.to_string()).unwrap();
    }
    let t = table(dir.path());
    let inodes: Vec<_> = (0..40).map(|i| lookup(&t, &format!("f{i}"))).collect();
    if !inodes[0].has_handle() {
        skip("no file handles on this filesystem");
        return;
    }
    let b = t.budget();
    assert!(
        b.open.load(Ordering::Relaxed) <= b.capacity.load(Ordering::Relaxed) + 1,
        "at most the capacity of fds held"
    );
    assert!(b.evictions.load(Ordering::Relaxed) > 0);
    let reopens = b.reopens.load(Ordering::Relaxed);
    for (i, inode) in inodes.iter().enumerate() {
        let fd = t.fd(inode).unwrap();
        let st = sys::statx(fd.fd(), STATX_MASK).unwrap();
        let meta = std::fs::metadata(dir.path().join(format!("f{i}"))).unwrap();
        assert_eq!(st.stx_ino, meta.ino(), "f{i} reopened as itself");
    }
    assert!(
        b.reopens.load(Ordering::Relaxed) > reopens,
        "evicted fds were reopened"
    );
}

#[test]
fn a_recycled_inode_number_is_a_new_inode() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(dir.path());
    // Whether the host gives a freed inode number to the next file is up to
    // its allocator, and tests running in parallel on the same filesystem
    // may take it first: try a few rounds before saying it did not run.
    for round in 0..10 {
        let name = format!("old{round}");
        std::fs::write(dir.path().join(&name), b"old").unwrap();
        let old = lookup(&t, &name);
        if !old.has_handle() {
            skip("no file handles on this filesystem");
            return;
        }
        let old_ino = old.key.ino;
        // The kernel still holds "old" (nlookup 1) but its fd is evicted, so
        // the host may give its inode number to a new file once it is deleted.
        t.evict(usize::MAX);
        std::fs::remove_file(dir.path().join(&name)).unwrap();
        let recycled = (0..500).find_map(|i| {
            let new_name = format!("new{round}.{i}");
            let p = dir.path().join(&new_name);
            std::fs::write(&p, b"new").unwrap();
            (std::fs::metadata(&p).unwrap().ino() == old_ino).then_some(new_name)
        });
        let Some(new_name) = recycled else {
            continue;
        };
        let new = lookup(&t, &new_name);
        assert_eq!(new.key.ino, old_ino);
        assert_ne!(new.nodeid, old.nodeid, "a new file is never the old nodeid");
        assert!(
            t.get(old.nodeid).is_ok(),
            "the old nodeid lives until FORGET"
        );
        let fd = t.fd(&new).unwrap();
        assert_eq!(sys::statx(fd.fd(), STATX_MASK).unwrap().stx_ino, old_ino);
        return;
    }
    skip("the host did not recycle an inode number in 10 rounds");
}

/// Pressure regressions: fd guards, st_ino mapping, eviction of fds in use.
mod pressure {
    #[allow(unused_imports)]
    use super::super::*;
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Rename within one directory takes the directory's fd twice. With a
    /// guard that held the slot's read lock, a reopen queued between the
    /// two (parking_lot's RwLock is task-fair: a queued writer blocks new
    /// readers) deadlocked the request. Now the second take returns at once.
    #[test]
    fn taking_an_fd_twice_with_a_writer_queued_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let t = Arc::new(table(dir.path()));
        let root = t.get(NodeId::ROOT).unwrap();
        let d = t.lookup(&root, c"d").unwrap().inode;
        let (tx, rx) = mpsc::channel();
        let (t2, d2) = (t.clone(), d.clone());
        std::thread::spawn(move || {
            let first = t2.fd(&d2).unwrap();
            // Another request reopening the slot (it saw it empty).
            let (t3, d3) = (t2.clone(), d2.clone());
            let writer = std::thread::spawn(move || {
                drop(d3.fd.write_lock());
                drop(t3);
            });
            std::thread::sleep(Duration::from_millis(200));
            let second = t2.fd(&d2).unwrap();
            assert_eq!(
                std::os::fd::AsRawFd::as_raw_fd(&first.fd()),
                std::os::fd::AsRawFd::as_raw_fd(&second.fd())
            );
            drop((first, second));
            writer.join().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the second fd() of the same inode blocked behind a queued writer: deadlock"
        );
    }

    /// st_ino stays unique across devices. With `ino ^ (index << 48)`, a
    /// submount's inode number with high bits set collided with SOURCE's
    /// own (and two submounts' with each other).
    #[test]
    fn reported_inode_numbers_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let root = t.root_dev;
        let (a, b) = (root ^ 0x1111, root ^ 0x2222);
        let mut seen = std::collections::HashMap::new();
        let mut check = |dev: u64, ino: u64| {
            let r = t.report_ino(InodeKey { dev, ino });
            assert_eq!(r, t.report_ino(InodeKey { dev, ino }), "stable");
            if let Some(prev) = seen.insert(r, (dev, ino)) {
                assert_eq!(prev, (dev, ino), "st_ino {r:#x} given to two files");
            }
        };
        for ino in [2, 5, 7, 12, 1 << 40] {
            // Clashing raw numbers on three devices.
            check(root, ino);
            check(a, ino);
            check(b, ino);
            // The same low bits with prefix-like high bits set.
            check(root, 1 << 48 | ino);
            check(a, 1 << 48 | ino);
            check(a, 3 << 48 | ino);
            check(b, 2 << 48 | ino);
            check(b, 1 << 47 | ino);
            check(a, 1 << 63 | ino);
        }
        // SOURCE's own numbers are unchanged where they fit.
        assert_eq!(t.report_ino(InodeKey { dev: root, ino: 12 }), 12);
    }

    /// An fd in use by a request is never closed by eviction, and one that
    /// was evicted comes back from its handle.
    #[test]
    fn eviction_skips_fds_in_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let t = table(dir.path());
        let root = t.get(NodeId::ROOT).unwrap();
        let f = t.lookup(&root, c"f").unwrap().inode;
        let held = t.fd(&f).unwrap();
        for _ in 0..4 {
            t.evict(100);
        }
        assert!(f.fd.is_cached(), "an fd in use was evicted");
        assert!(sys::statx(held.fd(), libc::STATX_INO).is_ok());
        drop(held);
        for _ in 0..4 {
            t.evict(100);
        }
        if f.has_handle() {
            assert!(!f.fd.is_cached(), "an idle fd was not evicted");
            let again = t.fd(&f).unwrap();
            assert!(sys::statx(again.fd(), libc::STATX_INO).is_ok());
            assert_eq!(t.budget().reopens.load(Ordering::Relaxed), 1);
        }
    }
}

/// Paths come from parent links: set at lookup, moved by a rename (a
/// directory's subtree follows without being touched), dropped by unlink.
#[test]
fn paths_come_from_parent_links() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
    let t = table(dir.path());
    let root = t.get(NodeId::ROOT).unwrap();
    let a = lookup(&t, "a");
    // Without track_names the table keeps no names and knows no paths.
    t.set_link(&a, NodeId::ROOT, b"a");
    assert_eq!(t.relative_path(&a), None);
    assert_eq!(t.relative_path(&root).as_deref(), Some(""));

    t.track_names();
    let look = |parent: &Arc<Inode>, n: &str| {
        let i = t.lookup(parent, &name(n)).unwrap().inode;
        t.set_link(&i, parent.nodeid, n.as_bytes());
        i
    };
    let a = look(&root, "a");
    let b = look(&a, "b");
    let f = look(&b, "f");
    assert_eq!(t.relative_path(&f).as_deref(), Some("a/b/f"));
    assert_eq!(t.relative_path(&b).as_deref(), Some("a/b"));

    // known_at finds the inode behind a name (as before a rename).
    let bfd = t.fd(&b).unwrap();
    let known = t.known_at(bfd.fd(), &name("f")).unwrap();
    assert_eq!(known.nodeid, f.nodeid);
    assert!(t.known_at(bfd.fd(), &name("nope")).is_none());
    drop(bfd);

    // Rename a -> z: one link moves, the subtree follows.
    t.set_link(&a, NodeId::ROOT, b"z");
    assert_eq!(t.relative_path(&f).as_deref(), Some("z/b/f"));
    // A name that is not the inode's link is not dropped...
    t.drop_link(&f, b.nodeid, b"other");
    assert_eq!(t.relative_path(&f).as_deref(), Some("z/b/f"));
    // ...its own is: no path any more, nor for anything below.
    t.drop_link(&b, a.nodeid, b"b");
    assert_eq!(t.relative_path(&b), None);
    assert_eq!(t.relative_path(&f), None);
    // A later lookup names it again.
    t.set_link(&b, a.nodeid, b"b");
    assert_eq!(t.relative_path(&f).as_deref(), Some("z/b/f"));
    // A parent the kernel forgot breaks the chain (no stale path).
    assert!(t.forget(a.nodeid, u64::MAX).is_some());
    assert_eq!(t.relative_path(&f), None);
}

#[test]
fn files_take_their_handle_only_when_evicted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let t = table(dir.path());
    let root = t.get(NodeId::ROOT).unwrap();
    if !root.has_handle() {
        skip("no file handles on this filesystem");
        return;
    }
    let d = lookup(&t, "d");
    let f = lookup(&t, "f");
    assert!(
        d.handle.get().is_some_and(|h| h.is_some()),
        "a directory has its handle at once"
    );
    assert!(f.handle.get().is_none(), "a file has none until evicted");
    for _ in 0..4 {
        t.evict(100);
    }
    assert!(!f.fd.is_cached(), "the idle file was evicted");
    let h = f
        .known_handle()
        .expect("taken from the fd as it closed")
        .clone();
    let fd = t.fd(&f).unwrap();
    let st = sys::statx(fd.fd(), STATX_MASK).unwrap();
    assert_eq!(st.stx_ino, f.key.ino, "reopened as itself");
    drop(fd);
    // A second lookup of the evicted file compares handles.
    t.evict(100);
    t.evict(100);
    let again = lookup(&t, "f");
    assert_eq!(again.nodeid, f.nodeid);
    assert!(f.known_handle() == Some(&h));
}

#[test]
fn a_victim_is_kept_only_when_its_last_name_goes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let t = table(dir.path());
    let root = t.get(NodeId::ROOT).unwrap();
    let a = lookup(&t, "a");
    let d = lookup(&t, "d");
    let rfd = t.fd(&root).unwrap();
    let unlink = |n: &str, flags: i32| sys::unlinkat(rfd.fd(), &name(n), flags).is_ok();
    // One of two links: not gone, unpinned.
    let v = t.hold_victim(rfd.fd(), &name("b")).expect("known inode");
    t.settle_victim(v, unlink("b", 0));
    assert!(!a.unlinked.load(Ordering::Acquire));
    assert_eq!(a.pins.load(Ordering::Acquire), 0);
    // A failed removal leaves it alone.
    let v = t.hold_victim(rfd.fd(), &name("a")).expect("known inode");
    t.settle_victim(v, unlink("a", libc::AT_REMOVEDIR));
    assert!(!a.unlinked.load(Ordering::Acquire));
    assert_eq!(a.pins.load(Ordering::Acquire), 0);
    // The last link: gone, keeps its fd pinned.
    let v = t.hold_victim(rfd.fd(), &name("a")).expect("known inode");
    t.settle_victim(v, unlink("a", 0));
    assert!(a.unlinked.load(Ordering::Acquire));
    assert_eq!(a.pins.load(Ordering::Acquire), 1);
    for _ in 0..4 {
        t.evict(100);
    }
    assert!(a.fd.is_cached(), "an unlinked inode keeps its fd");
    // A directory removed.
    let v = t.hold_victim(rfd.fd(), &name("d")).expect("known inode");
    t.settle_victim(v, unlink("d", libc::AT_REMOVEDIR));
    assert!(d.unlinked.load(Ordering::Acquire));
}
