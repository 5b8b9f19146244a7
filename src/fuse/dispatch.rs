//! Opcode -> trait method, plus the INIT handshake.
//!
//! Every request gets exactly one reply (except FORGET, BATCH_FORGET and
//! INTERRUPT, which take none); a request that cannot be parsed gets EIO and
//! one log line; an opcode we do not know gets ENOSYS.

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{debug, info, warn};
use zerocopy::IntoBytes;

use super::abi::{self, InitFlags, Opcode};
use super::channel::{Channel, Negotiated};
use super::filesystem::{Context, Filesystem, InitConfig};
use super::reply::*;
use super::request::{Operation, Request};
use super::Errno;

/// Session-wide knobs the dispatcher needs.
pub(crate) struct DispatchState {
    /// Largest max_write the workers' buffers can take.
    pub buffer_max_write: u32,
    /// Log every request (`--debug-fuse`).
    pub debug: bool,
    /// Set once INIT has been answered.
    pub initialized: AtomicBool,
    /// Set when DESTROY came.
    pub destroyed: AtomicBool,
    /// Ask for FUSE_OVER_IO_URING in INIT (`--io-uring`).
    pub want_io_uring: bool,
}

impl DispatchState {
    pub fn new(buffer_max_write: u32, debug: bool) -> DispatchState {
        DispatchState {
            buffer_max_write,
            debug,
            initialized: AtomicBool::new(false),
            destroyed: AtomicBool::new(false),
            want_io_uring: false,
        }
    }
}

fn reply(ch: &Arc<Channel>, unique: u64, op: Opcode) -> Reply {
    Reply::new(ch.clone(), unique, op)
}

/// Handles one request read from `ch`.
pub(crate) fn dispatch<F: Filesystem>(
    fs: &F,
    ch: &Arc<Channel>,
    buf: &[u8],
    state: &DispatchState,
) {
    let conn = ch.connection();
    let req = match Request::parse(buf) {
        Ok(r) => r,
        Err(e) => {
            conn.counters.count_malformed();
            warn!("malformed request: {e}");
            // Answer EIO if we can tell which request it was.
            if buf.len() >= 16 {
                let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap_or([0; 8]));
                let opcode = u32::from_ne_bytes(buf[4..8].try_into().unwrap_or([0; 4]));
                if unique != 0
                    && !matches!(
                        Opcode::from_u32(opcode),
                        Some(Opcode::Forget | Opcode::BatchForget)
                    )
                {
                    let _ = ch.send(unique, -libc::EIO, &[]);
                }
            }
            return;
        }
    };
    let h = req.header;
    conn.counters.count(h.opcode);

    let Some(opcode) = req.opcode() else {
        if state.debug {
            debug!(unique = h.unique, opcode = h.opcode, "unknown opcode");
        }
        let _ = ch.send(h.unique, -libc::ENOSYS, &[]);
        return;
    };

    let initialized = state.initialized.load(Ordering::Acquire);
    if opcode == Opcode::Init {
        if initialized {
            warn!("second INIT on an initialized session");
            reply(ch, h.unique, opcode).error(Errno::EIO);
            return;
        }
    } else if !initialized {
        if !matches!(
            opcode,
            Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt
        ) {
            warn!(op = opcode.name(), "request before INIT");
            reply(ch, h.unique, opcode).error(Errno::EIO);
        }
        return;
    }

    let parse_cfg = conn
        .negotiated()
        .map(Negotiated::parse_config)
        .unwrap_or_default();
    let op = match req.operation(&parse_cfg) {
        Ok(op) => op,
        Err(e) => {
            conn.counters.count_malformed();
            warn!(unique = h.unique, "{e}");
            if !matches!(
                opcode,
                Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt
            ) {
                reply(ch, h.unique, opcode).error(Errno::EIO);
            }
            return;
        }
    };
    if state.debug {
        debug!(
            unique = h.unique,
            nodeid = h.nodeid,
            uid = h.uid,
            pid = h.pid,
            "{op:?}"
        );
    }

    let ctx = Context {
        unique: h.unique,
        opcode,
        nodeid: h.nodeid,
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
        groups: if h.total_extlen > 0 {
            req.supplementary_groups()
        } else {
            Vec::new()
        },
    };
    let r = || reply(ch, h.unique, opcode);
    let n = h.nodeid;
    use Operation as O;
    match op {
        O::Init(arg) => do_init(fs, ch, h.unique, &arg, state),
        O::Destroy => {
            state.destroyed.store(true, Ordering::Release);
            fs.destroy();
            ReplyEmpty(r()).ok();
        }
        O::Interrupt(arg) => fs.interrupt(arg.unique),
        O::Lookup { name } => fs.lookup(&ctx, n, name, ReplyEntry(r())),
        O::Forget(arg) => fs.forget(n, arg.nlookup),
        O::BatchForget(b) => {
            let nodes: Vec<abi::ForgetOne> = b.iter().collect();
            fs.batch_forget(&nodes);
        }
        O::Getattr(arg) => {
            let fh = (arg.getattr_flags & abi::GETATTR_FH != 0).then_some(arg.fh);
            fs.getattr(&ctx, n, fh, ReplyAttr(r()))
        }
        O::Setattr(arg) => fs.setattr(&ctx, n, &arg, ReplyAttr(r())),
        O::Statx(arg) => fs.statx(&ctx, n, &arg, ReplyStatx(r())),
        O::Readlink => fs.readlink(&ctx, n, ReplyData(r())),
        O::Symlink { name, target } => fs.symlink(&ctx, n, name, target, ReplyEntry(r())),
        O::Mknod { arg, name } => fs.mknod(&ctx, n, name, &arg, ReplyEntry(r())),
        O::Mkdir { arg, name } => fs.mkdir(&ctx, n, name, &arg, ReplyEntry(r())),
        O::Unlink { name } => fs.unlink(&ctx, n, name, ReplyEmpty(r())),
        O::Rmdir { name } => fs.rmdir(&ctx, n, name, ReplyEmpty(r())),
        O::Rename {
            newdir,
            flags,
            name,
            newname,
        } => fs.rename(&ctx, n, name, newdir, newname, flags, ReplyEmpty(r())),
        O::Link { oldnodeid, newname } => fs.link(&ctx, oldnodeid, n, newname, ReplyEntry(r())),
        O::Open(arg) => fs.open(&ctx, n, &arg, ReplyOpen(r())),
        O::Read(arg) => fs.read(&ctx, n, &arg, ReplyData(r())),
        O::Write { arg, data } => fs.write(&ctx, n, &arg, data, ReplyWrite(r())),
        O::Statfs => fs.statfs(&ctx, n, ReplyStatfs(r())),
        O::Release(arg) => fs.release(&ctx, n, &arg, ReplyEmpty(r())),
        O::Fsync(arg) => fs.fsync(&ctx, n, &arg, ReplyEmpty(r())),
        O::Setxattr { arg, name, value } => {
            fs.setxattr(&ctx, n, name, value, &arg, ReplyEmpty(r()))
        }
        O::Getxattr { arg, name } => fs.getxattr(&ctx, n, name, arg.size, ReplyXattr(r())),
        O::Listxattr(arg) => fs.listxattr(&ctx, n, arg.size, ReplyXattr(r())),
        O::Removexattr { name } => fs.removexattr(&ctx, n, name, ReplyEmpty(r())),
        O::Flush(arg) => fs.flush(&ctx, n, &arg, ReplyEmpty(r())),
        O::Opendir(arg) => fs.opendir(&ctx, n, &arg, ReplyOpen(r())),
        O::Readdir(arg) => fs.readdir(&ctx, n, &arg, false, ReplyDir(r())),
        O::Readdirplus(arg) => fs.readdir(&ctx, n, &arg, true, ReplyDir(r())),
        O::Releasedir(arg) => fs.releasedir(&ctx, n, &arg, ReplyEmpty(r())),
        O::Fsyncdir(arg) => fs.fsyncdir(&ctx, n, &arg, ReplyEmpty(r())),
        O::Getlk(arg) => fs.getlk(&ctx, n, &arg, ReplyLock(r())),
        O::Setlk { arg, sleep } => fs.setlk(&ctx, n, &arg, sleep, ReplyEmpty(r())),
        O::Access(arg) => fs.access(&ctx, n, arg.mask, ReplyEmpty(r())),
        O::Create { arg, name } => fs.create(&ctx, n, name, &arg, ReplyCreate(r())),
        O::Tmpfile { arg } => fs.tmpfile(&ctx, n, &arg, ReplyCreate(r())),
        O::Bmap(arg) => fs.bmap(&ctx, n, &arg, ReplyBmap(r())),
        O::Fallocate(arg) => fs.fallocate(&ctx, n, &arg, ReplyEmpty(r())),
        O::Lseek(arg) => fs.lseek(&ctx, n, &arg, ReplyLseek(r())),
        O::CopyFileRange { arg, wide } => {
            fs.copy_file_range(&ctx, n, &arg, ReplyCopy { reply: r(), wide })
        }
        O::Syncfs => fs.syncfs(&ctx, n, ReplyEmpty(r())),
        O::Ioctl(_) | O::Poll(_) | O::Unknown(_) => r().error(Errno::ENOSYS),
    }
}

/// Flags every filesystem gets unless it removes them in `init`.
pub(crate) fn default_want() -> InitFlags {
    InitFlags::ASYNC_READ
        | InitFlags::BIG_WRITES
        | InitFlags::MAX_PAGES
        | InitFlags::PARALLEL_DIROPS
        | InitFlags::ABORT_ERROR
        | InitFlags::INIT_EXT
}

fn do_init<F: Filesystem>(
    fs: &F,
    ch: &Arc<Channel>,
    unique: u64,
    arg: &abi::InitIn,
    state: &DispatchState,
) {
    let r = Reply::new(ch.clone(), unique, Opcode::Init);
    if arg.major < abi::KERNEL_VERSION {
        warn!(
            "kernel speaks FUSE {}.{}, we need 7.{}",
            arg.major,
            arg.minor,
            abi::MIN_KERNEL_MINOR_VERSION
        );
        return r.error(Errno(libc::EPROTO));
    }
    if arg.major > abi::KERNEL_VERSION {
        // Answer with our major only; the kernel sends a new INIT.
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        let _ = r.send(0, &[IoSlice::new(out.as_bytes())]);
        return;
    }
    if arg.minor < abi::MIN_KERNEL_MINOR_VERSION {
        warn!(
            "kernel speaks FUSE 7.{}, we need 7.{}",
            arg.minor,
            abi::MIN_KERNEL_MINOR_VERSION
        );
        return r.error(Errno(libc::EPROTO));
    }
    let mut offered = arg.flags as u64;
    if offered & InitFlags::INIT_EXT.bits() != 0 {
        offered |= (arg.flags2 as u64) << 32;
    }
    let offered = InitFlags::from_bits_retain(offered);
    let page = page_size();
    let mut cfg = InitConfig {
        kernel_minor: arg.minor,
        offered,
        want: default_want(),
        max_write: state.buffer_max_write,
        max_readahead: arg.max_readahead,
        max_background: 64,
        congestion_threshold: 48,
        time_gran: 1,
        max_stack_depth: 0,
    };
    let conn = ch.connection();
    if let Err(e) = fs.init(conn, &mut cfg) {
        warn!("filesystem refused INIT: {}", e);
        return r.error(e);
    }

    if state.want_io_uring {
        super::uring::want_in_init(offered, &mut cfg.want);
    }
    // Only what the kernel offered, and only bits we know.
    let mut flags = (cfg.want & offered) & InitFlags::all();
    if flags.contains(InitFlags::PASSTHROUGH) {
        if cfg.max_stack_depth == 0 || cfg.max_stack_depth > 2 {
            warn!(
                "passthrough needs max_stack_depth 1 or 2 (got {}); disabling it",
                cfg.max_stack_depth
            );
            flags.remove(InitFlags::PASSTHROUGH);
        } else if flags.contains(InitFlags::WRITEBACK_CACHE) {
            // The kernel silently drops passthrough with writeback cache.
            warn!("writeback cache conflicts with passthrough; disabling writeback cache");
            flags.remove(InitFlags::WRITEBACK_CACHE);
        }
    }
    if !flags.contains(InitFlags::PASSTHROUGH) {
        flags.remove(InitFlags::PASSTHROUGH_INO);
        cfg.max_stack_depth = 0;
    }
    if flags.bits() >> 32 == 0 {
        flags.remove(InitFlags::INIT_EXT);
    }
    let max_write = cfg.max_write.clamp(4096, state.buffer_max_write);
    let max_pages = if flags.contains(InitFlags::MAX_PAGES) {
        max_write.div_ceil(page).min(u16::MAX as u32) as u16
    } else {
        0
    };
    let minor = arg.minor.min(abi::KERNEL_MINOR_VERSION);
    let negotiated = Negotiated {
        minor,
        offered,
        flags,
        max_write,
        max_readahead: cfg.max_readahead.min(arg.max_readahead),
        max_pages,
        max_stack_depth: cfg.max_stack_depth,
    };
    info!(
        "FUSE {}.{} (kernel 7.{}), max_write {}, flags {:#x}",
        abi::KERNEL_VERSION,
        minor,
        arg.minor,
        max_write,
        flags.bits()
    );
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        max_readahead: negotiated.max_readahead,
        flags: flags.bits() as u32,
        max_background: cfg.max_background,
        congestion_threshold: cfg.congestion_threshold.min(cfg.max_background),
        max_write,
        time_gran: cfg.time_gran.max(1),
        max_pages,
        map_alignment: 0,
        flags2: (flags.bits() >> 32) as u32,
        max_stack_depth: negotiated.max_stack_depth,
        request_timeout: 0,
        unused: [0; 11],
    };
    // Requests follow the reply at once: publish the negotiation first.
    conn.set_negotiated(negotiated);
    state.initialized.store(true, Ordering::Release);
    if let Err(e) = r.send(0, &[IoSlice::new(out.as_bytes())]) {
        warn!("INIT reply failed: {e:?}");
    }
}

pub(crate) fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u32
    } else {
        4096
    }
}
