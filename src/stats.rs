//! The daemon's statistics, as JSON: written on SIGUSR1 and at unmount (to
//! `--stats FILE`, or the log). They are the proof of what passed through:
//! a request the kernel served from a backing file never shows up here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::backing::BackingStats;
use crate::fuse::abi::{self, InitFlags, Opcode};
use crate::passthrough::PassthroughFs;
use crate::sys;

#[derive(Debug, Serialize)]
pub struct InodeStats {
    /// Inodes the kernel holds (root included).
    pub cached: usize,
    /// O_PATH fds held for them (the rest are reopened from file handles).
    pub open_fds: usize,
    pub fd_capacity: usize,
    pub evictions: u64,
    pub reopens: u64,
    pub by_kind: BTreeMap<&'static str, usize>,
}

/// Which transport carried the requests.
#[derive(Debug, Serialize)]
pub struct TransportInfo {
    /// "uring" (every ring queue registered) or "dev" (/dev/fuse).
    pub mode: &'static str,
    /// `--io-uring` was asked for.
    pub io_uring_requested: bool,
    pub queues: usize,
    pub queues_registered: usize,
    /// Requests that came through ring entries (the rest came on /dev/fuse:
    /// INIT, FORGET, INTERRUPT, and everything before the ring was ready).
    pub ring_requests: u64,
    /// Ring entries registered beyond each queue's 8 because replies were
    /// held back (blocked lock waits keep their entries).
    pub spare_entries: usize,
}

#[derive(Debug, Serialize)]
pub struct ProcessStats {
    pub fds: usize,
    pub rss_kib: u64,
}

/// One op's split: what the daemon served, and how many entries the kernel
/// was told it may serve that op for itself.
#[derive(Debug, Serialize)]
pub struct OpSplit {
    pub served_by_daemon: u64,
    pub entries_registered: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    /// Requests the daemon received, per opcode.
    pub requests: BTreeMap<&'static str, u64>,
    pub unknown_requests: u64,
    pub malformed_requests: u64,
    /// Requests answered with an error, per opcode.
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests per inode kind and opcode.
    pub requests_by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub inodes: InodeStats,
    pub open_files: usize,
    /// Who arbitrates POSIX/OFD/flock locks: "host" (forwarded, the daemon
    /// takes them on SOURCE) or "kernel" (local to the mount).
    pub locks: &'static str,
    /// Blocked lock waits queued right now (SETLKW, OFD and flock waits).
    pub lock_waiters: usize,
    pub backing: BackingStats,
    /// Per op that can pass through: served by the daemon vs registered.
    pub passthrough_ops: BTreeMap<&'static str, OpSplit>,
    pub transport: TransportInfo,
    pub process: ProcessStats,
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string(crate::sys::proc_self("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub fn collect(fs: &PassthroughFs) -> Stats {
    let mut requests = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let (mut unknown, mut malformed) = (0, 0);
    if let Some(c) = fs.connection() {
        for (op, n) in c.counters.snapshot() {
            requests.insert(op.name(), n);
            let e = c.counters.errors(op);
            if e > 0 {
                errors.insert(op.name(), e);
            }
        }
        unknown = c.counters.unknown();
        malformed = c.counters.malformed();
    }
    let mut by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (kind, op, n) in fs.kind_counters().snapshot() {
        by_kind.entry(kind.name()).or_default().insert(op.name(), n);
    }
    let t = fs.table();
    let b = t.budget();
    let passthrough_ops = op_split(fs, &requests);
    Stats {
        requests,
        unknown_requests: unknown,
        malformed_requests: malformed,
        errors,
        requests_by_kind: by_kind,
        inodes: InodeStats {
            cached: t.len(),
            open_fds: b.open.load(Ordering::Relaxed),
            fd_capacity: b.capacity.load(Ordering::Relaxed),
            evictions: b.evictions.load(Ordering::Relaxed),
            reopens: b.reopens.load(Ordering::Relaxed),
            by_kind: t
                .count_by_kind()
                .iter()
                .map(|(k, n)| (k.name(), *n))
                .collect(),
        },
        open_files: fs.open_files(),
        locks: match fs.connection().and_then(|c| c.negotiated()) {
            Some(n) if n.flags.contains(InitFlags::POSIX_LOCKS) => "host",
            _ => "kernel",
        },
        lock_waiters: fs.lock_waiters(),
        backing: fs.backing().stats(),
        passthrough_ops,
        transport: transport_info(fs),
        process: ProcessStats {
            fds: sys::count_open_fds(),
            rss_kib: rss_kib(),
        },
    }
}

fn transport_info(fs: &PassthroughFs) -> TransportInfo {
    let Some(c) = fs.connection() else {
        return TransportInfo {
            mode: "dev",
            io_uring_requested: false,
            queues: 0,
            queues_registered: 0,
            ring_requests: 0,
            spare_entries: 0,
        };
    };
    let t = &c.transport;
    TransportInfo {
        mode: t.mode(),
        io_uring_requested: t.requested.load(Ordering::Relaxed),
        queues: t.queues.load(Ordering::Relaxed),
        queues_registered: t.queues_registered.load(Ordering::Relaxed),
        ring_requests: t.ring_requests.load(Ordering::Relaxed),
        spare_entries: t.spare_entries.load(Ordering::Relaxed),
    }
}

fn op_split(
    fs: &PassthroughFs,
    requests: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, OpSplit> {
    let (d, f) = fs.config().policy.defaults();
    let wanted = d | f | fs.backing().supported_ops();
    Opcode::ALL
        .iter()
        .filter(|&&op| wanted & abi::passthrough_op(op) != 0)
        .map(|&op| {
            let split = OpSplit {
                served_by_daemon: requests.get(op.name()).copied().unwrap_or(0),
                entries_registered: fs.backing().entries_with(op),
            };
            (op.name(), split)
        })
        .collect()
}

/// Writes the stats to `path` (atomically, via a temporary file), or logs them.
pub fn write(fs: &PassthroughFs, path: Option<&Path>) {
    if let Some(json) = json(fs) {
        write_json(path, &json);
    }
}

/// The stats as JSON.
pub fn json(fs: &PassthroughFs) -> Option<String> {
    let stats = collect(fs);
    match serde_json::to_string_pretty(&stats) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!("cannot serialise stats: {e}");
            None
        }
    }
}

/// Writes stats already serialised (see [`write`]).
pub fn write_json(path: Option<&Path>, json: &str) {
    match path {
        Some(p) => {
            let tmp = p.with_extension("tmp");
            let r = std::fs::File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(json.as_bytes())
                        .and_then(|_| f.write_all(b"\n"))
                })
                .and_then(|_| std::fs::rename(&tmp, p));
            if let Err(e) = r {
                tracing::warn!("cannot write stats to {}: {e}", p.display());
            }
        }
        None => tracing::info!("stats: {json}"),
    }
}
