//! The inode table's invariants, on a real directory: one nodeid per inode
//! (names and hard links share it), lookup counts, forget, eviction and
//! reopen from file handles, and inode numbers the host recycles.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;

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
    let root = t.get(abi::ROOT_ID).unwrap();
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
    assert!(t.forget(abi::ROOT_ID, u64::MAX).is_none());
    assert!(t.get(abi::ROOT_ID).is_ok());
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
        eprintln!("skipped: no file handles on this filesystem");
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
    std::fs::write(dir.path().join("old"), b"old").unwrap();
    let t = table(dir.path());
    let old = lookup(&t, "old");
    if !old.has_handle() {
        eprintln!("skipped: no file handles on this filesystem");
        return;
    }
    let old_ino = old.key.ino;
    // The kernel still holds "old" (nlookup 1) but its fd is evicted, so
    // the host may give its inode number to a new file once it is deleted.
    t.evict(usize::MAX);
    std::fs::remove_file(dir.path().join("old")).unwrap();
    let mut recycled = None;
    for i in 0..200 {
        let p = dir.path().join(format!("new{i}"));
        std::fs::write(&p, b"new").unwrap();
        if std::fs::metadata(&p).unwrap().ino() == old_ino {
            recycled = Some(format!("new{i}"));
            break;
        }
    }
    let Some(new_name) = recycled else {
        eprintln!("skipped: the host did not recycle the inode number");
        return;
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
}
