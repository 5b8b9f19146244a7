//! Blocking lock waits under load, through a real mount: many waiters on
//! one lock cost no daemon thread each, interrupts reach every one of them,
//! and the rest are granted in turn.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const WAITERS: usize = 1000;
const PENDING: i32 = i32::MIN;

fn whole_file(typ: i32) -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl
}

fn ofd(f: &File, cmd: i32, typ: i32) -> Result<(), i32> {
    let fl = whole_file(typ);
    match unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// Threads and open fds of a process.
/// The daemon's resident memory, KiB (for the report line).
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn threads_and_fds(pid: u32) -> (usize, usize) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    (threads, fds)
}

extern "C" fn on_signal(_: libc::c_int) {}

/// SIGUSR1 interrupts a system call (no SA_RESTART) and does nothing else.
fn install_sigusr1() {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

fn raise_fd_limit() {
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        rl.rlim_cur = rl.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
    }
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn thousand_waiters_half_interrupted() {
    require_root!();
    raise_fd_limit();
    install_sigusr1();
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"x").unwrap(), &[]);
    assert_eq!(m.stats()["locks"], "host", "the daemon arbitrates locks");
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.m("f"))
            .unwrap()
    };
    let holder = open();
    ofd(&holder, libc::F_OFD_SETLK, libc::F_WRLCK).unwrap();
    let (threads_before, fds_before) = threads_and_fds(m.pid());
    let rss_before = rss_kib(m.pid());

    // WAITERS threads, each with its own open file (its own OFD lock owner),
    // block on the holder's lock through the mount.
    let results: Arc<Vec<AtomicI32>> =
        Arc::new((0..WAITERS).map(|_| AtomicI32::new(PENDING)).collect());
    let held = Arc::new(AtomicBool::new(false));
    let order = Arc::new(Mutex::new(Vec::new()));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..WAITERS {
        let f = open();
        let (results, held, order, opened) =
            (results.clone(), held.clone(), order.clone(), opened.clone());
        let h = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || {
                opened.fetch_add(1, Ordering::SeqCst);
                let r = match ofd(&f, libc::F_OFD_SETLKW, libc::F_WRLCK) {
                    Ok(()) => {
                        assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                        order.lock().unwrap().push(i);
                        held.store(false, Ordering::SeqCst);
                        ofd(&f, libc::F_OFD_SETLK, libc::F_UNLCK).unwrap();
                        0
                    }
                    Err(e) => e,
                };
                results[i].store(r, Ordering::SeqCst);
            })
            .unwrap();
        handles.push(h);
    }
    wait_until("every waiter queued in the daemon", 120, || {
        m.stats()["lock_waiters"].as_u64() == Some(WAITERS as u64)
    });
    let t = m.stats()["transport"].clone();
    if t["mode"] == "uring" {
        // Each blocked wait keeps its ring entry until granted: the queues
        // registered spares rather than run dry (with only their 8 entries
        // each, the opens above waited behind the first 8 waits of their
        // CPU, for ever).
        let base = 8 * t["queues"].as_u64().unwrap_or(0);
        let spares = t["spare_entries"].as_u64().unwrap_or(0);
        assert!(
            spares + base >= WAITERS as u64,
            "{spares} spare ring entries for {WAITERS} held waits"
        );
    }
    let (threads_waiting, fds_waiting) = threads_and_fds(m.pid());
    let rss_waiting = rss_kib(m.pid());
    assert!(
        results.iter().all(|r| r.load(Ordering::SeqCst) == PENDING),
        "nobody got the lock while it is held"
    );

    // Interrupt every other waiter: each gets EINTR, the rest keep waiting.
    for h in handles.iter().step_by(2) {
        unsafe { libc::pthread_kill(h.as_pthread_t(), libc::SIGUSR1) };
    }
    wait_until("the interrupted waiters to return", 60, || {
        results
            .iter()
            .step_by(2)
            .all(|r| r.load(Ordering::SeqCst) != PENDING)
    });
    for (i, r) in results.iter().enumerate().step_by(2) {
        assert_eq!(r.load(Ordering::SeqCst), libc::EINTR, "waiter {i}");
    }
    assert_eq!(m.stats()["lock_waiters"], (WAITERS / 2) as u64);
    assert!(
        results
            .iter()
            .skip(1)
            .step_by(2)
            .all(|r| r.load(Ordering::SeqCst) == PENDING),
        "the others still wait"
    );

    // Release: the others acquire in turn, one at a time.
    ofd(&holder, libc::F_OFD_SETLK, libc::F_UNLCK).unwrap();
    let t0 = Instant::now();
    wait_until("the remaining waiters to acquire", 120, || {
        results.iter().all(|r| r.load(Ordering::SeqCst) != PENDING)
    });
    let granted_in = t0.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    for (i, r) in results.iter().enumerate().skip(1).step_by(2) {
        assert_eq!(r.load(Ordering::SeqCst), 0, "waiter {i} acquired");
    }
    assert_eq!(order.lock().unwrap().len(), WAITERS / 2);
    drop(holder);

    // Every open is released asynchronously; then the daemon is back to
    // where it started.
    wait_until("the daemon's fds to return", 30, || {
        threads_and_fds(m.pid()).1 <= fds_before
    });
    let (threads_after, fds_after) = threads_and_fds(m.pid());
    eprintln!(
        "daemon threads/fds: before {threads_before}/{fds_before}, \
         {WAITERS} waiting {threads_waiting}/{fds_waiting}, after {threads_after}/{fds_after}; \
         {} granted in turn in {granted_in:?}; RSS {rss_before} KiB before, {rss_waiting} KiB \
         with every wait held; transport {}",
        WAITERS / 2,
        m.stats()["transport"]
    );
    assert!(
        threads_waiting <= threads_before + 1,
        "one waker thread at most for all waits ({threads_before} -> {threads_waiting})"
    );
    assert!(threads_after <= threads_before + 1);
    assert_eq!(m.stats()["lock_waiters"], 0);
    assert!(m.unmount().success());
}
