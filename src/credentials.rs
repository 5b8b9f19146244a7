//! Acting as the caller: per-thread credential and umask switches.
//!
//! A request that creates an inode runs with the caller's fsuid/fsgid (and
//! the supplementary group the kernel sent), so the host sets owner, group,
//! setgid inheritance and ACLs itself, atomically. Without
//! `default_permissions` every request runs that way, so the host checks
//! permissions as it would for the caller.
//!
//! Switching the effective uid away from 0 clears the effective
//! capabilities; switching back restores them. So privileged calls
//! (`open_by_handle_at`, backing ioctls) happen before a switch or after the
//! guard is dropped, never inside.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::error;

use crate::fuse::Errno;
use crate::sys::thread_creds as tc;

/// The groups the daemon runs with, captured once at start-up.
static DAEMON_GROUPS: OnceLock<Vec<u32>> = OnceLock::new();

/// Records the daemon's own supplementary groups (call once, early).
pub fn init() {
    let _ = DAEMON_GROUPS.set(tc::groups().unwrap_or_default());
}

fn daemon_groups() -> &'static [u32] {
    DAEMON_GROUPS.get_or_init(|| tc::groups().unwrap_or_default())
}

/// Restores the thread's credentials when dropped.
#[must_use]
pub struct CredGuard {
    saved: Option<(u32, u32)>,
}

impl CredGuard {
    /// A guard that changed nothing.
    pub fn none() -> CredGuard {
        CredGuard { saved: None }
    }
}

thread_local! {
    /// The thread's effective uid/gid as this module last set them (read
    /// once per thread): the common "already the caller" case then costs no
    /// syscall at all. Only this module changes a thread's ids.
    static IDS: std::cell::Cell<Option<(u32, u32)>> = const { std::cell::Cell::new(None) };
    /// The thread's umask as [`UmaskGuard`] last set it (None: unknown).
    static UMASK: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

fn current_ids() -> (u32, u32) {
    IDS.with(|c| match c.get() {
        Some(ids) => ids,
        None => {
            let ids = (tc::euid(), tc::egid());
            c.set(Some(ids));
            ids
        }
    })
}

fn note_ids(ids: Option<(u32, u32)>) {
    IDS.with(|c| c.set(ids));
}

/// Switches the calling thread to `uid`/`gid` with supplementary `groups`.
/// A no-op (and no syscall) when the thread already has those ids and no
/// groups are asked.
pub fn become_caller(uid: u32, gid: u32, groups: &[u32]) -> Result<CredGuard, Errno> {
    let (euid, egid) = current_ids();
    if uid == euid && gid == egid && groups.is_empty() {
        return Ok(CredGuard::none());
    }
    if euid != 0 {
        // Not root: we cannot act as somebody else; the host will check
        // with our own ids (the unprivileged-mount case).
        return Ok(CredGuard::none());
    }
    // Order: groups, gid, then uid (after the uid changes we could not
    // change the others any more).
    // Unknown until the switch is complete (or undone).
    note_ids(None);
    tc::set_groups(groups)?;
    if let Err(e) = tc::set_egid(gid) {
        let _ = tc::set_groups(daemon_groups());
        return Err(e.into());
    }
    if let Err(e) = tc::set_euid(uid) {
        let _ = tc::set_egid(egid);
        let _ = tc::set_groups(daemon_groups());
        return Err(e.into());
    }
    note_ids(Some((uid, gid)));
    Ok(CredGuard {
        saved: Some((euid, egid)),
    })
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.saved.take() {
            // uid first: back to root restores the capabilities needed for
            // the other two.
            note_ids(None);
            let ok = tc::set_euid(uid).is_ok()
                && tc::set_egid(gid).is_ok()
                && tc::set_groups(daemon_groups()).is_ok();
            if ok {
                note_ids(Some((uid, gid)));
            } else {
                // A worker stuck with a caller's identity would act on the
                // next request with the wrong rights: stop everything.
                error!("cannot restore the daemon's credentials; aborting");
                std::process::abort();
            }
        }
    }
}

/// Sets the thread's umask to the request's for one create. Needs the
/// worker to have called [`worker_init`] (its own fs_struct). The umask is
/// left in place afterwards (every create sets its own, and the daemon
/// creates nothing else on worker threads), so a caller with the same umask
/// as the previous one costs no syscall.
#[must_use]
pub struct UmaskGuard(());

impl UmaskGuard {
    pub fn set(mask: Option<u32>) -> UmaskGuard {
        if let Some(m) = mask {
            let m = m & 0o777;
            UMASK.with(|c| {
                if c.get() != Some(m) {
                    tc::umask(m);
                    c.set(Some(m));
                }
            });
        }
        UmaskGuard(())
    }
}

/// Per-worker set-up: a private fs_struct so umask changes stay per thread.
pub fn worker_init() -> bool {
    tc::unshare_fs().is_ok()
}

/// Supplementary groups of a process, read from /proc (racy by nature; used
/// only without `default_permissions`, where the host does the checks).
/// Cached for a second per pid.
#[derive(Default)]
pub struct GroupCache {
    cache: DashMap<u32, (Instant, Vec<u32>)>,
}

impl GroupCache {
    pub fn groups_of(&self, pid: u32) -> Vec<u32> {
        if pid == 0 {
            return Vec::new();
        }
        if let Some(e) = self.cache.get(&pid) {
            if e.0.elapsed() < Duration::from_secs(1) {
                return e.1.clone();
            }
        }
        let groups = read_proc_groups(pid).unwrap_or_default();
        if self.cache.len() > 4096 {
            self.cache.clear();
        }
        self.cache.insert(pid, (Instant::now(), groups.clone()));
        groups
    }
}

/// In the sandbox, /proc of other processes is out of reach: the
/// supervisor outside reads it for us (see `sandbox.rs`).
/// (A File over the socket: read(2)/write(2), which the seccomp filter
/// allows, where UnixStream would use sendto/recvfrom.)
static GROUPS_FROM: OnceLock<parking_lot::Mutex<std::fs::File>> = OnceLock::new();

/// Makes [`GroupCache`] ask the supervisor at the other end of `sock`.
pub fn groups_from_supervisor(sock: std::os::unix::net::UnixStream) {
    let f = std::fs::File::from(std::os::fd::OwnedFd::from(sock));
    let _ = GROUPS_FROM.set(parking_lot::Mutex::new(f));
}

/// Asks the supervisor: the pid as a little-endian u32; the answer is a
/// count (u32::MAX: unknown) and that many gids.
fn ask_supervisor(sock: &parking_lot::Mutex<std::fs::File>, pid: u32) -> Option<Vec<u32>> {
    use std::io::{Read, Write};
    let mut s = sock.lock();
    s.write_all(&pid.to_le_bytes()).ok()?;
    let mut n = [0u8; 4];
    s.read_exact(&mut n).ok()?;
    let n = u32::from_le_bytes(n);
    if n == u32::MAX || n > 65536 {
        return None;
    }
    let mut raw = vec![0u8; 4 * n as usize];
    s.read_exact(&mut raw).ok()?;
    Some(
        raw.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The supplementary groups in /proc/PID/status (what the supervisor
/// answers with, and what the daemon reads itself outside the sandbox).
pub fn read_proc_groups(pid: u32) -> Option<Vec<u32>> {
    if let Some(sock) = GROUPS_FROM.get() {
        return ask_supervisor(sock, pid);
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Groups:"))?;
    Some(
        line["Groups:".len()..]
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}
