//! Crash and restart: a killed daemon hangs nobody and loses nothing that
//! fsync returned for; signals and external unmounts end it cleanly.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;

/// A writer appending numbered 64-byte records to its own file and
/// fsyncing each; returns (records fsync acknowledged, final errno).
fn writer(path: PathBuf, stop: Arc<AtomicBool>) -> (u64, i32) {
    let mut f = match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) => return (0, e.raw_os_error().unwrap_or(-1)),
    };
    let mut acked = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let rec = format!("{:063}\n", acked);
        if let Err(e) = f.write_all(rec.as_bytes()) {
            return (acked, e.raw_os_error().unwrap_or(-1));
        }
        if let Err(e) = f.sync_data() {
            return (acked, e.raw_os_error().unwrap_or(-1));
        }
        acked += 1;
    }
    (acked, 0)
}

#[test]
fn kill_9_during_fsync_loops() {
    require_root!();
    let m = Mount::new(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for t in 0..4 {
        let (p, stop, tx) = (m.m(&format!("log{t}")), stop.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((t, writer(p, stop)));
        });
    }
    std::thread::sleep(Duration::from_millis(700));
    let (dir, src) = m.crash();
    // Every writer comes back (no hang) with the connection gone.
    let mut acked = [0u64; 4];
    for _ in 0..4 {
        let (t, (n, err)) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a writer hung after the daemon died");
        assert!(
            matches!(
                err,
                libc::ENOTCONN | libc::ECONNABORTED | libc::EIO | libc::ENOENT
            ),
            "writer {t}: errno {err}"
        );
        acked[t] = n;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(acked.iter().all(|&n| n > 0), "the writers ran: {acked:?}");
    // Every record fsync returned for is on SOURCE.
    for (t, &n) in acked.iter().enumerate() {
        let data = fs::read(src.join(format!("log{t}"))).unwrap();
        assert!(
            data.len() as u64 >= n * 64,
            "writer {t}: {n} acked, {} bytes on SOURCE",
            data.len()
        );
        for i in 0..n {
            let rec = &data[(i * 64) as usize..(i * 64 + 64) as usize];
            assert_eq!(
                rec,
                format!("{:063}\n", i).as_bytes(),
                "writer {t}, record {i}"
            );
        }
    }
    // A new daemon on the same mountpoint serves the tree.
    let m2 = Mount::on(dir, src, &[]);
    let f = fs::File::open(m2.m("log0")).unwrap();
    let mut first = [0u8; 64];
    f.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(&first, format!("{:063}\n", 0).as_bytes());
    drop(f);
    assert!(m2.unmount().success());
}

#[test]
fn sigterm_during_heavy_io_unmounts_cleanly() {
    require_root!();
    let mut m = Mount::new(&["--nopassthrough"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for t in 0..4 {
        let (p, stop, tx) = (m.m(&format!("f{t}")), stop.clone(), tx.clone());
        std::thread::spawn(move || {
            let buf = vec![t as u8; 1 << 20];
            let mut err = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = fs::write(&p, &buf).and_then(|_| fs::read(&p).map(drop));
                if let Err(e) = r {
                    err = e.raw_os_error().unwrap_or(-1);
                    break;
                }
            }
            let _ = tx.send(err);
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    let st = m.wait_exit(20).expect("the daemon did not stop on SIGTERM");
    assert!(st.success(), "exit status {st}");
    assert!(!is_mounted(&m.mnt), "unmounted");
    stop.store(true, Ordering::Relaxed);
    for _ in 0..4 {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("an I/O thread hung");
    }
}

#[test]
fn external_lazy_umount_while_busy_ends_the_daemon() {
    require_root!();
    let mut m = Mount::new(&[]);
    fs::create_dir(m.m("d")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for t in 0..8 {
        let (d, stop, tx) = (m.m("d"), stop.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = d.join(format!("t{t}-{}", n % 16));
                if fs::write(&p, b"busy")
                    .and_then(|_| fs::remove_file(&p))
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            let _ = tx.send(n);
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::process::Command::new("umount")
        .arg("-l")
        .arg(&m.mnt)
        .status()
        .unwrap()
        .success());
    // The threads' paths now resolve elsewhere; they stop, their files
    // close, and the daemon sees the connection go.
    for _ in 0..8 {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a thread hung");
    }
    stop.store(true, Ordering::Relaxed);
    let st = m
        .wait_exit(20)
        .expect("the daemon did not end after umount -l");
    assert!(st.success(), "exit status {st}");
}
