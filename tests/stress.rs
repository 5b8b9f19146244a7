//! Concurrency stress: the inode table holds exactly what the kernel holds.

mod common;

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Waits until the daemon's inode count settles at or below `want`.
fn settle(m: &Mount, want: u64) -> serde_json::Value {
    let mut s = m.stats();
    for _ in 0..300 {
        drop_caches();
        if s["inodes"]["cached"].as_u64().unwrap() <= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        s = m.stats();
    }
    s
}

#[test]
fn create_rename_unlink_stat_in_one_directory() {
    require_root!();
    let secs: u64 = std::env::var("PTFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let m = Mount::new(&[]);
    fs::create_dir(m.m("d")).unwrap();
    let base = settle(&m, 1);
    assert_eq!(
        base["inodes"]["cached"], 1,
        "only the root before the run: {base}"
    );
    let base_fds = base["process"]["fds"].as_u64().unwrap();

    let dir = Arc::new(m.m("d"));
    let ops = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (dir, ops) = (dir.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let mut unexpected = Vec::new();
                while Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let a = dir.join(format!("f{}", x % 64));
                    let b = dir.join(format!("f{}", (x >> 8) % 64));
                    let r = match x % 4 {
                        0 => fs::write(&a, b"data").map(drop),
                        1 => fs::rename(&a, &b),
                        2 => fs::remove_file(&a),
                        _ => fs::metadata(&a).map(drop),
                    };
                    // Races between threads make ENOENT normal; anything
                    // else is a bug.
                    if let Err(e) = r {
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            unexpected.push(e.to_string());
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                unexpected
            })
        })
        .collect();
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.join().unwrap());
    }
    assert!(
        errors.is_empty(),
        "unexpected errors: {:?}",
        &errors[..errors.len().min(10)]
    );
    let n = ops.load(Ordering::Relaxed);
    eprintln!("{n} operations in {secs} s");

    // What is left on SOURCE is all the kernel may still know; after
    // drop_caches it knows only the root.
    let after = settle(&m, 1);
    assert_eq!(
        after["inodes"]["cached"], 1,
        "table back to the root: {after}"
    );
    let fds = after["process"]["fds"].as_u64().unwrap();
    assert!(
        fds <= base_fds,
        "fd count back to baseline ({base_fds} -> {fds})"
    );
    assert_eq!(after["open_files"], 0);
    // The files still on SOURCE are all reachable and consistent.
    let left = fs::read_dir(m.s("d")).unwrap().count();
    assert_eq!(fs::read_dir(m.m("d")).unwrap().count(), left);
    assert!(m.unmount().success());
}
