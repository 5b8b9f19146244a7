//! Faults of the lower filesystem reach the caller as errors; the daemon
//! keeps serving and loses nothing that was fsync'd.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A small ext4 on a loop device, removed on drop (after the FUSE mount:
/// declare it first).
struct Lower {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
    loopdev: String,
}

impl Lower {
    fn new(mib: u64) -> Lower {
        let dir = tempfile::Builder::new()
            .prefix("ptfs-lower")
            .tempdir()
            .unwrap();
        let img = dir.path().join("img");
        fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfs.ext4 (e2fsprogs)");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mnt = dir.path().join("lower");
        fs::create_dir(&mnt).unwrap();
        let ok = Command::new("mount")
            .arg(&loopdev)
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {loopdev}");
        fs::create_dir(mnt.join("src")).unwrap();
        Lower {
            dir: Some(dir),
            mnt,
            loopdev,
        }
    }

    fn src(&self) -> PathBuf {
        self.mnt.join("src")
    }

    fn remount(&self, opts: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.mnt)
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Lower {
    fn drop(&mut self) {
        if is_mounted(&self.mnt)
            && !Command::new("umount")
                .arg(&self.mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(&self.loopdev)
            .status();
        drop(self.dir.take());
    }
}

fn mount_on(lower: &Lower, args: &[&str]) -> Mount {
    let dir = tempfile::Builder::new()
        .prefix("ptfs-test")
        .tempdir()
        .unwrap();
    Mount::on(dir, lower.src(), args)
}

fn fill_until_enospc(path: &Path) -> (u64, i32) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let block = vec![0xabu8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => return (written, 0),
            Ok(n) => written += n as u64,
            Err(e) => return (written, e.raw_os_error().unwrap_or(-1)),
        }
        if let Err(e) = f.sync_data() {
            return (written, e.raw_os_error().unwrap_or(-1));
        }
    }
}

#[test]
fn enospc_reaches_the_writer_and_fsynced_data_survives() {
    require_root!();
    for mode in [&[][..], &["--nopassthrough"][..]] {
        let lower = Lower::new(64);
        let m = mount_on(&lower, mode);
        // Some data, fsync'd, before the disk fills.
        let mut keep = fs::File::create(m.m("keep")).unwrap();
        keep.write_all(b"fsync'd before the disk filled").unwrap();
        keep.sync_all().unwrap();
        drop(keep);
        let (written, err) = fill_until_enospc(&m.m("big"));
        assert_eq!(
            err,
            libc::ENOSPC,
            "{mode:?}: the writer sees ENOSPC after {written} bytes"
        );
        assert!(written > 10 << 20);
        // Writing more fails the same way, at write(2), or at fsync(2) with
        // the writeback cache (--nopassthrough), and the daemon still serves.
        let r = fs::File::create(m.m("more")).and_then(|mut f| {
            f.write_all(&vec![1u8; 1 << 20])?;
            f.sync_all()
        });
        assert_eq!(err_of(r), libc::ENOSPC, "{mode:?}");
        assert_eq!(
            fs::read(m.m("keep")).unwrap(),
            b"fsync'd before the disk filled"
        );
        assert!(fs::read_dir(&m.mnt).unwrap().count() >= 2);
        // Space freed through the mount is usable again (once the kernel's
        // RELEASE of the filled file, which is asynchronous in FUSE, is in).
        fs::remove_file(m.m("big")).unwrap();
        let mut r = Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        for _ in 0..200 {
            r = fs::write(m.m("again"), vec![2u8; 4 << 20]);
            if r.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        r.unwrap();
        assert!(m.unmount().success());
        assert_eq!(
            fs::read(lower.src().join("keep")).unwrap(),
            b"fsync'd before the disk filled"
        );
    }
}

#[test]
fn a_read_only_lower_gives_erofs() {
    require_root!();
    let lower = Lower::new(32);
    fs::write(lower.src().join("f"), b"before").unwrap();
    let m = mount_on(&lower, &[]);
    assert_eq!(fs::read(m.m("f")).unwrap(), b"before");
    assert!(lower.remount("ro"));
    assert_eq!(err_of(fs::write(m.m("new"), b"x")), libc::EROFS);
    assert_eq!(
        err_of(OpenOptions::new().append(true).open(m.m("f"))),
        libc::EROFS
    );
    assert_eq!(err_of(fs::create_dir(m.m("d"))), libc::EROFS);
    assert_eq!(fs::read(m.m("f")).unwrap(), b"before", "reads still work");
    assert!(lower.remount("rw"));
    fs::write(m.m("new"), b"x").unwrap();
    assert!(m.unmount().success());
}

#[test]
fn changes_behind_the_daemons_back() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            fs::create_dir(s.join("d")).unwrap();
            fs::write(s.join("d/a"), b"a").unwrap();
            fs::write(s.join("d/b"), b"b").unwrap();
        },
        &["--nocache"],
    );
    // Known to the kernel and the daemon...
    assert_eq!(fs::read(m.m("d/a")).unwrap(), b"a");
    let held = fs::File::open(m.m("d/b")).unwrap();
    // ...then removed and renamed directly on SOURCE.
    fs::remove_file(m.s("d/a")).unwrap();
    fs::rename(m.s("d/b"), m.s("d/c")).unwrap();
    fs::write(m.s("d/a"), b"new a").unwrap();
    assert_eq!(err_of(fs::metadata(m.m("d/b"))), libc::ENOENT);
    assert_eq!(
        fs::read(m.m("d/a")).unwrap(),
        b"new a",
        "a fresh lookup finds the new file"
    );
    assert_eq!(fs::read(m.m("d/c")).unwrap(), b"b", "and the renamed one");
    // The file opened before the rename still reads.
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &held, &mut s).unwrap();
    assert_eq!(s, "b");
    // A whole directory replaced behind our back.
    fs::remove_dir_all(m.s("d")).unwrap();
    fs::create_dir(m.s("d")).unwrap();
    fs::write(m.s("d/z"), b"z").unwrap();
    assert_eq!(fs::read_dir(m.m("d")).unwrap().count(), 1);
    assert_eq!(fs::read(m.m("d/z")).unwrap(), b"z");
    drop(held);
    let s = m.stats();
    assert_eq!(s["malformed_requests"], 0);
    let log = m.log();
    assert!(m.unmount().success(), "{log}");
}
