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
use super::filesystem::{Context, Filesystem, Wants};
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

/// Handles one request read from `ch`: parse, admit, call the op, reply.
pub(crate) fn dispatch<F: Filesystem>(
    fs: &F,
    ch: &Arc<Channel>,
    buf: &[u8],
    state: &DispatchState,
) {
    let Some(req) = parse(ch, buf) else { return };
    let Some(opcode) = admit(ch, &req, state) else {
        return;
    };
    let Some(op) = operation(ch, &req, opcode) else {
        return;
    };
    let h = req.header;
    if state.debug {
        debug!(
            unique = h.unique,
            nodeid = %h.nodeid,
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
    let out = Reply::new(ch.clone(), h.unique, opcode);
    call(fs, &ctx, op, out, state)
}

/// FORGET, BATCH_FORGET and INTERRUPT take no reply, not even an error.
fn takes_reply(opcode: Option<Opcode>) -> bool {
    !matches!(
        opcode,
        Some(Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt)
    )
}

/// The request's header and arguments; a malformed one is counted, logged,
/// and answered EIO if we can tell which request it was.
fn parse<'a>(ch: &Arc<Channel>, buf: &'a [u8]) -> Option<Request<'a>> {
    match Request::parse(buf) {
        Ok(r) => Some(r),
        Err(e) => {
            ch.connection().counters.count_malformed();
            warn!("malformed request: {e}");
            if buf.len() >= 16 {
                let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap_or([0; 8]));
                let opcode = u32::from_ne_bytes(buf[4..8].try_into().unwrap_or([0; 4]));
                let no_reply = matches!(
                    Opcode::from_u32(opcode),
                    Some(Opcode::Forget | Opcode::BatchForget)
                );
                if unique != 0 && !no_reply {
                    let _ = ch.send(unique, -libc::EIO, &[]);
                }
            }
            None
        }
    }
}

/// Counts the request and lets it through if the session can take it now:
/// a known opcode (else ENOSYS), INIT first and once (else EIO).
fn admit(ch: &Arc<Channel>, req: &Request<'_>, state: &DispatchState) -> Option<Opcode> {
    let h = req.header;
    ch.connection().counters.count(h.opcode);
    let Some(opcode) = req.opcode() else {
        if state.debug {
            debug!(unique = h.unique, opcode = h.opcode, "unknown opcode");
        }
        let _ = ch.send(h.unique, -libc::ENOSYS, &[]);
        return None;
    };
    let initialized = state.initialized.load(Ordering::Acquire);
    if opcode == Opcode::Init && initialized {
        warn!("second INIT on an initialized session");
        reply(ch, h.unique, opcode).error(Errno::EIO);
        return None;
    }
    if opcode != Opcode::Init && !initialized {
        if takes_reply(Some(opcode)) {
            warn!(op = opcode.name(), "request before INIT");
            reply(ch, h.unique, opcode).error(Errno::EIO);
        }
        return None;
    }
    Some(opcode)
}

/// The typed operation; arguments that do not parse are counted, logged
/// and answered EIO.
fn operation<'a>(ch: &Arc<Channel>, req: &Request<'a>, opcode: Opcode) -> Option<Operation<'a>> {
    let conn = ch.connection();
    let parse_cfg = conn
        .negotiated()
        .map(Negotiated::parse_config)
        .unwrap_or_default();
    match req.operation(&parse_cfg) {
        Ok(op) => Some(op),
        Err(e) => {
            conn.counters.count_malformed();
            warn!(unique = req.header.unique, "{e}");
            if takes_reply(Some(opcode)) {
                reply(ch, req.header.unique, opcode).error(Errno::EIO);
            }
            None
        }
    }
}

/// Opcode -> trait method: the dispatcher's table, one line per op.
fn call<F: Filesystem>(
    fs: &F,
    ctx: &Context,
    op: Operation<'_>,
    out: Reply,
    state: &DispatchState,
) {
    let n = ctx.nodeid;
    use Operation as O;
    match op {
        O::Init(arg) => do_init(fs, out, &arg, state),
        O::Destroy => {
            state.destroyed.store(true, Ordering::Release);
            fs.destroy();
            out.answer(Ok(()));
        }
        O::Interrupt(arg) => no_reply(out, || fs.interrupt(arg.unique)),
        O::Forget(arg) => no_reply(out, || fs.forget(n, arg.nlookup)),
        O::BatchForget(b) => no_reply(out, || {
            let nodes: Vec<abi::ForgetOne> = b.iter().collect();
            fs.batch_forget(&nodes);
        }),
        O::Lookup { name } => answer(fs, out, fs.lookup(ctx, n, name)),
        O::Getattr(arg) => {
            let fh = (arg.getattr_flags & abi::GETATTR_FH != 0).then_some(arg.fh);
            answer(fs, out, fs.getattr(ctx, n, fh))
        }
        O::Setattr(arg) => answer(fs, out, fs.setattr(ctx, n, &arg)),
        O::Statx(arg) => answer(fs, out, fs.statx(ctx, n, &arg)),
        O::Readlink => answer(fs, out, fs.readlink(ctx, n)),
        O::Symlink { name, target } => answer(fs, out, fs.symlink(ctx, n, name, target)),
        O::Mknod { arg, name } => answer(fs, out, fs.mknod(ctx, n, name, &arg)),
        O::Mkdir { arg, name } => answer(fs, out, fs.mkdir(ctx, n, name, &arg)),
        O::Unlink { name } => answer(fs, out, fs.unlink(ctx, n, name)),
        O::Rmdir { name } => answer(fs, out, fs.rmdir(ctx, n, name)),
        O::Rename {
            newdir,
            flags,
            name,
            newname,
        } => answer(fs, out, fs.rename(ctx, n, name, newdir, newname, flags)),
        O::Link { oldnodeid, newname } => answer(fs, out, fs.link(ctx, oldnodeid, n, newname)),
        O::Open(arg) => answer(fs, out, fs.open(ctx, n, &arg)),
        O::Read(arg) => answer(fs, out, fs.read(ctx, n, &arg)),
        O::Write { arg, data } => answer(fs, out, fs.write(ctx, n, &arg, data)),
        O::Statfs => answer(fs, out, fs.statfs(ctx, n)),
        O::Release(arg) => answer(fs, out, fs.release(ctx, n, &arg)),
        O::Fsync(arg) => answer(fs, out, fs.fsync(ctx, n, &arg)),
        O::Setxattr { arg, name, value } => answer(fs, out, fs.setxattr(ctx, n, name, value, &arg)),
        O::Getxattr { arg, name } => answer(fs, out, fs.getxattr(ctx, n, name, arg.size)),
        O::Listxattr(arg) => answer(fs, out, fs.listxattr(ctx, n, arg.size)),
        O::Removexattr { name } => answer(fs, out, fs.removexattr(ctx, n, name)),
        O::Flush(arg) => answer(fs, out, fs.flush(ctx, n, &arg)),
        O::Opendir(arg) => answer(fs, out, fs.opendir(ctx, n, &arg)),
        O::Readdir(arg) => answer(fs, out, fs.readdir(ctx, n, &arg, false)),
        O::Readdirplus(arg) => answer(fs, out, fs.readdir(ctx, n, &arg, true)),
        O::Releasedir(arg) => answer(fs, out, fs.releasedir(ctx, n, &arg)),
        O::Fsyncdir(arg) => answer(fs, out, fs.fsyncdir(ctx, n, &arg)),
        O::Getlk(arg) => fs.getlk(ctx, n, &arg, Deferred(out)),
        O::Setlk { arg, sleep: false } => fs.setlk(ctx, n, &arg, Deferred(out)),
        O::Setlk { arg, sleep: true } => fs.setlkw(ctx, n, &arg, Deferred(out)),
        O::Access(arg) => answer(fs, out, fs.access(ctx, n, arg.mask)),
        O::Create { arg, name } => answer(fs, out, fs.create(ctx, n, name, &arg)),
        O::Tmpfile { arg } => answer(fs, out, fs.tmpfile(ctx, n, &arg)),
        O::Bmap(arg) => answer(fs, out, fs.bmap(ctx, n, &arg)),
        O::Fallocate(arg) => answer(fs, out, fs.fallocate(ctx, n, &arg)),
        O::Lseek(arg) => answer(fs, out, fs.lseek(ctx, n, &arg)),
        O::CopyFileRange { arg, wide } => answer(fs, out, fs.copy_file_range(ctx, n, &arg, wide)),
        O::Syncfs => answer(fs, out, fs.syncfs(ctx, n)),
        O::Ioctl(_) | O::Poll(_) | O::Unknown(_) => out.error(Errno::ENOSYS),
    }
}

/// Sends an op's result; if the kernel did not take it, the filesystem
/// gets back what the reply handed over (lookups, an open handle).
fn answer<F: Filesystem, T: Payload>(fs: &F, out: Reply, r: Result<T, Errno>) {
    if let Some(lost) = out.answer(r) {
        fs.reply_lost(lost.lost());
    }
}

/// FORGET, BATCH_FORGET and INTERRUPT take no reply.
fn no_reply(out: Reply, f: impl FnOnce()) {
    out.forget();
    f()
}

fn do_init<F: Filesystem>(fs: &F, mut r: Reply, arg: &abi::InitIn, state: &DispatchState) {
    if arg.major < abi::KERNEL_VERSION || arg.minor < abi::MIN_KERNEL_MINOR_VERSION {
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
        let _ = r.ok(&[IoSlice::new(out.as_bytes())]);
        return;
    }
    let mut wants = fs.wants();
    if state.want_io_uring {
        // The session's transport, not the filesystem, asks for the ring.
        super::uring::want_in_init(offered_flags(arg), &mut wants.flags);
    }
    let (negotiated, out) = negotiate(&wants, arg, state.buffer_max_write, crate::sys::page_size());
    info!(
        "FUSE {}.{} (kernel 7.{}), max_write {}, flags {:#x}",
        abi::KERNEL_VERSION,
        negotiated.minor,
        arg.minor,
        negotiated.max_write,
        negotiated.flags.bits()
    );
    // The filesystem sees the outcome before any request; requests follow
    // the reply at once.
    let conn = r.channel().connection().clone();
    conn.set_negotiated(negotiated);
    if let Err(e) = fs.init(&conn) {
        warn!("filesystem refused INIT: {}", e);
        return r.error(e);
    }
    state.initialized.store(true, Ordering::Release);
    if let Err(e) = r.ok(&[IoSlice::new(out.as_bytes())]) {
        warn!("INIT reply failed: {e:?}");
    }
}

/// The flags the kernel offered in INIT (both halves).
fn offered_flags(arg: &abi::InitIn) -> InitFlags {
    let mut offered = arg.flags as u64;
    if offered & InitFlags::INIT_EXT.bits() != 0 {
        offered |= (arg.flags2 as u64) << 32;
    }
    InitFlags::from_bits_retain(offered)
}

/// The one INIT negotiation: what the filesystem wants, cut to what the
/// kernel offered and to what the session's buffers take.
pub(crate) fn negotiate(
    wants: &Wants,
    arg: &abi::InitIn,
    buffer_max_write: u32,
    page: u32,
) -> (Negotiated, abi::InitOut) {
    let offered = offered_flags(arg);
    // Only what the kernel offered, and only bits we know.
    let mut flags = (wants.flags & offered) & InitFlags::all();
    for &group in &wants.together {
        if !flags.contains(group) {
            flags.remove(group);
        }
    }
    for &(granted, drop) in &wants.excludes {
        if flags.contains(granted) {
            flags.remove(drop);
        }
    }
    for &(granted, missing, drop) in &wants.unless {
        if flags.contains(granted) && !flags.contains(missing) {
            flags.remove(drop);
        }
    }
    let mut max_stack_depth = wants.max_stack_depth;
    if flags.contains(InitFlags::PASSTHROUGH) {
        if max_stack_depth == 0 || max_stack_depth > 2 {
            warn!("passthrough needs max_stack_depth 1 or 2 (got {max_stack_depth}); disabling it");
            flags.remove(InitFlags::PASSTHROUGH);
        } else if flags.contains(InitFlags::WRITEBACK_CACHE) {
            // The kernel silently drops passthrough with writeback cache.
            warn!("writeback cache conflicts with passthrough; disabling writeback cache");
            flags.remove(InitFlags::WRITEBACK_CACHE);
        }
    }
    if !flags.contains(InitFlags::PASSTHROUGH_INO) {
        flags.remove(InitFlags::PASSTHROUGH_DIRENTPLUS);
    }
    if !flags.contains(InitFlags::PASSTHROUGH) {
        flags.remove(InitFlags::PASSTHROUGH_INO | InitFlags::PASSTHROUGH_DIRENTPLUS);
        max_stack_depth = 0;
    }
    if flags.bits() >> 32 == 0 {
        flags.remove(InitFlags::INIT_EXT);
    }
    let max_write = wants.max_write.clamp(4096, buffer_max_write);
    let max_pages = if flags.contains(InitFlags::MAX_PAGES) {
        max_write.div_ceil(page).min(u16::MAX as u32) as u16
    } else {
        0
    };
    let negotiated = Negotiated {
        minor: arg.minor.min(abi::KERNEL_MINOR_VERSION),
        offered,
        flags,
        max_write,
        max_readahead: arg.max_readahead,
        max_pages,
        max_stack_depth,
    };
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        max_readahead: negotiated.max_readahead,
        flags: flags.bits() as u32,
        max_background: wants.max_background,
        congestion_threshold: wants.congestion_threshold.min(wants.max_background),
        max_write,
        time_gran: wants.time_gran.max(1),
        max_pages,
        map_alignment: 0,
        flags2: (flags.bits() >> 32) as u32,
        max_stack_depth,
        request_timeout: 0,
        unused: [0; 11],
    };
    (negotiated, out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An INIT request offering `flags` (also for the filesystem's tests).
    pub(crate) fn offer(flags: InitFlags) -> abi::InitIn {
        abi::InitIn {
            major: abi::KERNEL_VERSION,
            minor: 45,
            max_readahead: 1 << 17,
            flags: flags.bits() as u32,
            flags2: (flags.bits() >> 32) as u32,
            ..Default::default()
        }
    }

    #[test]
    fn only_what_was_offered_and_rules_applied() {
        let wants = Wants {
            flags: Wants::default().flags
                | InitFlags::POSIX_ACL
                | InitFlags::DONT_MASK
                | InitFlags::DO_READDIRPLUS
                | InitFlags::PASSTHROUGH
                | InitFlags::WRITEBACK_CACHE,
            together: vec![InitFlags::POSIX_ACL | InitFlags::DONT_MASK],
            excludes: vec![(InitFlags::PASSTHROUGH, InitFlags::WRITEBACK_CACHE)],
            max_stack_depth: 1,
            ..Default::default()
        };
        let offered = InitFlags::ASYNC_READ
            | InitFlags::DONT_MASK
            | InitFlags::DO_READDIRPLUS
            | InitFlags::PASSTHROUGH
            | InitFlags::WRITEBACK_CACHE
            | InitFlags::MAX_PAGES
            | InitFlags::INIT_EXT;
        let (n, out) = negotiate(&wants, &offer(offered), 1 << 20, 4096);
        assert!(n.has(InitFlags::ASYNC_READ | InitFlags::DO_READDIRPLUS));
        assert!(n.has(InitFlags::PASSTHROUGH));
        assert!(!n.has(InitFlags::DONT_MASK), "only with POSIX_ACL");
        assert!(
            !n.has(InitFlags::WRITEBACK_CACHE),
            "excluded by passthrough"
        );
        assert!(!n.has(InitFlags::BIG_WRITES), "not offered");
        assert_eq!(
            (n.max_write, n.max_pages, n.max_stack_depth),
            (1 << 20, 256, 1)
        );
        assert_eq!(out.flags as u64 | (out.flags2 as u64) << 32, n.flags.bits());
        assert_eq!(out.max_readahead, 1 << 17);

        // Without passthrough: no stack depth, writeback cache kept.
        let (n, out) = negotiate(
            &wants,
            &offer(offered - InitFlags::PASSTHROUGH),
            1 << 20,
            4096,
        );
        assert!(n.has(InitFlags::WRITEBACK_CACHE));
        assert_eq!((n.max_stack_depth, out.max_stack_depth), (0, 0));
        // max_write never beyond the session's buffers.
        let big = Wants {
            max_write: u32::MAX,
            ..Wants::default()
        };
        assert_eq!(
            negotiate(&big, &offer(offered), 1 << 18, 4096).0.max_write,
            1 << 18
        );
    }

    /// The passthrough filesystem's READDIRPLUS on a stock kernel, on kernel
    /// series v2 (entry backing ids only) and with patch 0013 (backing ids
    /// in READDIRPLUS too).
    #[test]
    fn readdirplus_with_inode_passthrough() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::passthrough::Config::for_source(dir.path().into());
        let fs = crate::passthrough::PassthroughFs::new(cfg).unwrap();
        let wants = fs.wants();
        let plus = InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO;
        let stock = plus | InitFlags::PASSTHROUGH | InitFlags::MAX_PAGES | InitFlags::INIT_EXT;
        let (n, _) = negotiate(&wants, &offer(stock), 1 << 20, 4096);
        assert!(n.has(plus) && n.has(InitFlags::PASSTHROUGH));
        // v2: READDIRPLUS entries would have no backing: LOOKUP instead.
        let v2 = stock | InitFlags::PASSTHROUGH_OPS;
        let (n, _) = negotiate(&wants, &offer(v2), 1 << 20, 4096);
        assert!(n.has(InitFlags::PASSTHROUGH_OPS));
        assert!(!n.has(InitFlags::DO_READDIRPLUS) && !n.has(InitFlags::READDIRPLUS_AUTO));
        assert!(!n.has(InitFlags::PASSTHROUGH_DIRENTPLUS));
        // 0013/0014: READDIRPLUS with backing ids, AUTO so that the kernel
        // lists passthrough directories itself unless their names are
        // looked up.
        let (n, out) = negotiate(
            &wants,
            &offer(v2 | InitFlags::PASSTHROUGH_DIRENTPLUS),
            1 << 20,
            4096,
        );
        assert!(n.has(InitFlags::PASSTHROUGH_DIRENTPLUS | InitFlags::DO_READDIRPLUS));
        assert!(n.has(InitFlags::READDIRPLUS_AUTO));
        assert_eq!(out.flags2 & (1 << 13), 1 << 13);
        // The flag alone (no PASSTHROUGH_OPS) is never granted.
        let (n, _) = negotiate(
            &wants,
            &offer(stock | InitFlags::PASSTHROUGH_DIRENTPLUS),
            1 << 20,
            4096,
        );
        assert!(!n.has(InitFlags::PASSTHROUGH_DIRENTPLUS));
    }
}
