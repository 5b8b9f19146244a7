//! Nothing escapes SOURCE: dot-dot, symlinks, races, special files.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// name -> (size, mtime, content hash) of a directory's direct entries.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, i64, u64)> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = match fs::symlink_metadata(e.path()) {
            Ok(md) => md,
            Err(_) => continue,
        };
        let mut h = 0u64;
        if md.is_file() && md.len() < (1 << 20) {
            if let Ok(b) = fs::read(e.path()) {
                h = b.iter().fold(0xcbf29ce484222325, |h, &x| {
                    (h ^ x as u64).wrapping_mul(0x100000001b3)
                });
            }
        }
        m.insert(
            e.file_name().to_string_lossy().into_owned(),
            (md.len(), md.mtime(), h),
        );
    }
    m
}

#[test]
fn dot_dot_and_slashes_stay_inside() {
    require_root!();
    // SOURCE's parent holds a secret; the mount lives elsewhere.
    let outside = tempfile::Builder::new()
        .prefix("ptfs-outside")
        .tempdir()
        .unwrap();
    let src = outside.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(outside.path().join("secret"), b"outside SOURCE").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    let m = Mount::on(dir, src, &["-o", "allow_other"]);
    // ".." of the mount root is the mount's own parent (the VFS), never
    // SOURCE's parent.
    assert_eq!(
        fs::metadata(m.m("..")).unwrap().ino(),
        fs::metadata(m.mnt.parent().unwrap()).unwrap().ino()
    );
    assert_eq!(
        fs::metadata(m.m("a/b/../..")).unwrap().ino(),
        fs::metadata(&m.mnt).unwrap().ino()
    );
    assert!(fs::read(m.m("../secret")).is_err());
    assert!(fs::read(m.m("a/../../secret")).is_err());
    let (ok, _) = sh_as(
        1000,
        1000,
        &format!("cat {}/a/b/../../../secret", m.mnt.display()),
    );
    assert!(!ok, "no way to SOURCE's parent");
    assert!(m.unmount().success());
}

#[test]
fn symlink_swap_race_never_escapes() {
    require_root!();
    let secs: u64 = std::env::var("PTFS_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let canary_dir = tempfile::Builder::new()
        .prefix("ptfs-canary")
        .tempdir()
        .unwrap();
    fs::write(canary_dir.path().join("canary"), b"must not change").unwrap();
    fs::set_permissions(canary_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let etc_before = snapshot(Path::new("/etc"));
    let root_before = snapshot(Path::new("/"));
    let canary_before = snapshot(canary_dir.path());

    let m = Mount::with_source(
        |s| {
            fs::create_dir_all(s.join("work/d")).unwrap();
            fs::write(s.join("work/d/ptfs-race-seed"), b"seed").unwrap();
        },
        &["-o", "allow_other"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    // The swapper: work/d is a real directory, then a symlink to /etc, to
    // /, to the canary dir, and back, as fast as it can (directly on SOURCE).
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let work = m.s("work");
        let canary = canary_dir.path().to_path_buf();
        std::thread::spawn(move || {
            let targets = [PathBuf::from("/etc"), PathBuf::from("/"), canary];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let d = work.join("d");
                let real = work.join("d.real");
                let link = work.join("d.link");
                let _ = fs::remove_file(&link);
                let _ = std::os::unix::fs::symlink(&targets[i % 3], &link);
                // d (dir) -> d.real, d.link -> d: d is now a symlink.
                let _ = fs::rename(&d, &real);
                let _ = fs::rename(&link, &d);
                std::thread::yield_now();
                // And back: the real directory returns as d.
                let _ = fs::rename(&d, &link);
                let _ = fs::rename(&real, &d);
                i += 1;
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            // Leave a real directory behind.
            if fs::symlink_metadata(work.join("d"))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(true)
            {
                let _ = fs::remove_file(work.join("d"));
                let _ = fs::rename(work.join("d.real"), work.join("d"));
            }
        })
    };
    // The 8 workers run in a mount namespace of their own, chrooted into a
    // private tmpfs root that holds only the system binaries (bind mounts)
    // and the FUSE mount: when the daemon (rightly) returns `d` as a symlink
    // to /etc, / or the canary, the *client* kernel follows it inside that
    // private root. So anything that appears in the real /, /etc or canary
    // dir can only have been put there by the daemon.
    let jail = tempfile::Builder::new()
        .prefix("ptfs-jail")
        .tempdir()
        .unwrap();
    let d = m.m("work/d").display().to_string();
    let workers = format!(
        r#"for t in 0 1 2 3 4 5 6 7; do
          ( end=$(( $(date +%s) + {secs} )); n=0
            while [ $(date +%s) -lt $end ]; do
              i=$(( (n * 7 + t) % 8 )); j=$(( (n * 3 + t) % 8 )); n=$((n + 1))
              case $(( n % 6 )) in
                0) echo x > {d}/ptfs-race-$t-$i ;;
                1) cat {d}/ptfs-race-$t-$i ;;
                2) mv {d}/ptfs-race-$t-$i {d}/ptfs-race-$t-$j ;;
                3) rm -f {d}/ptfs-race-$t-$i ;;
                4) chmod 600 {d}/ptfs-race-$t-$i ;;
                5) mkdir {d}/ptfs-race-dir-$t && rmdir {d}/ptfs-race-dir-$t ;;
              esac
            done > /dev/null 2>&1; echo $n ) &
        done
        wait"#
    );
    let script = format!(
        r#"set -e
        root={jail}
        mount -t tmpfs ptfs-jail "$root"
        for s in bin sbin lib lib32 lib64 libx32 usr; do
          if [ -L /$s ]; then ln -s "$(readlink /$s)" "$root/$s"
          elif [ -d /$s ]; then mkdir "$root/$s"; mount --rbind /$s "$root/$s"; fi
        done
        mkdir -p "$root/etc" "$root/tmp" "$root/dev" "$root{mnt}"
        touch "$root/dev/null"; mount --bind /dev/null "$root/dev/null"
        mount --bind {mnt} "$root{mnt}"
        exec chroot "$root" /bin/sh -c '{workers}'"#,
        jail = jail.path().display(),
        mnt = m.mnt.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "workers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!(
        "{ops} operations against {} swaps",
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        swaps.load(Ordering::Relaxed) > 10 && ops > 100,
        "the race ran"
    );

    // Nothing outside SOURCE was created, changed or removed.
    let stray = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ptfs-race"))
    };
    assert!(!stray(Path::new("/etc")), "a file escaped into /etc");
    assert!(!stray(Path::new("/")), "a file escaped into /");
    assert!(
        !stray(canary_dir.path()),
        "a file escaped into the canary dir"
    );
    assert_eq!(
        snapshot(canary_dir.path()),
        canary_before,
        "canary dir changed"
    );
    let etc_after = snapshot(Path::new("/etc"));
    for (name, before) in &etc_before {
        // Files other processes may touch meanwhile (mtab, resolv.conf ...)
        // would make this flaky: compare what the daemon could have touched
        // (nothing) by content hash only.
        if let Some(after) = etc_after.get(name) {
            assert_eq!(before.2, after.2, "/etc/{name} changed");
        }
    }
    assert_eq!(
        snapshot(Path::new("/")).keys().collect::<Vec<_>>(),
        root_before.keys().collect::<Vec<_>>()
    );
    assert!(m.unmount().success());
}

#[test]
fn symlinks_are_returned_never_followed_by_the_daemon() {
    require_root!();
    let outside = tempfile::Builder::new()
        .prefix("ptfs-outside")
        .tempdir()
        .unwrap();
    let target = outside.path().join("target");
    fs::write(&target, b"outside").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    let target2 = target.clone();
    let m = Mount::with_source(
        move |s| std::os::unix::fs::symlink(&target2, s.join("link")).unwrap(),
        &[],
    );
    let l = m.m("link");
    assert!(fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&l).unwrap(), target);
    // chmod of the link itself is refused (Linux has no symlink modes); the
    // target, outside SOURCE, is untouched.
    let c = cpath(&l);
    let r = unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), 0o600, libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, -1);
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
    // xattrs of the link stay on the link.
    let name = std::ffi::CString::new("trusted.ptfs").unwrap();
    assert_eq!(
        unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) },
        0
    );
    let t = cpath(&target);
    assert!(
        unsafe { libc::lgetxattr(t.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) } < 0,
        "the target got the xattr"
    );
    // chown of the link (lchown) changes the link only.
    std::os::unix::fs::lchown(&l, Some(1000), Some(1000)).unwrap();
    assert_eq!(fs::symlink_metadata(m.s("link")).unwrap().uid(), 1000);
    assert_eq!(fs::metadata(&target).unwrap().uid(), 0);
    assert!(m.unmount().success());
}

#[test]
fn special_files_never_block_or_open() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            let f = cpath(&s.join("fifo"));
            assert_eq!(unsafe { libc::mkfifo(f.as_ptr(), 0o666) }, 0);
            let d = cpath(&s.join("tty"));
            // /dev/tty: opening it would attach to a terminal.
            assert_eq!(
                unsafe { libc::mknod(d.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(5, 0)) },
                0
            );
            drop(std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap());
        },
        &["-o", "allow_other"],
    );
    let mnt = m.mnt.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for n in ["fifo", "tty", "sock"] {
            let p = mnt.join(n);
            let _ = fs::symlink_metadata(&p);
            let c = cpath(&p);
            let mut buf = [0u8; 256];
            unsafe {
                libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                let name = std::ffi::CString::new("user.x").unwrap();
                libc::lgetxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                );
            }
        }
        let _ = fs::read_dir(&mnt).map(|d| d.count());
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a lookup, getattr or xattr call blocked on a special file");
    let s = m.stats();
    assert_eq!(
        s["requests"]["OPEN"].as_u64().unwrap_or(0),
        0,
        "the daemon opened nothing"
    );
    assert!(m.unmount().success());
}
