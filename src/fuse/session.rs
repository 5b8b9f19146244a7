//! A mounted session: worker threads, each reading its own /dev/fuse clone,
//! and an orderly end.
//!
//! The session ends when the kernel says the filesystem is gone (ENODEV, or
//! ECONNABORTED after an abort), or when asked to stop. The daemon's main
//! thread waits for SIGINT/SIGTERM/SIGHUP/SIGQUIT (unmount and stop) and
//! SIGUSR1 (a callback, e.g. dump stats); workers block those signals and are
//! woken out of `read(2)` with SIGUSR2 when the session stops.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::thread::JoinHandleExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use tracing::{error, info, warn};

use super::channel::{Channel, Connection};
use super::dispatch::{dispatch, DispatchState};
use super::filesystem::Filesystem;
use super::mount::{self, Mount, MountOptions};
use super::uring;

/// How a session runs.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Worker threads.
    pub threads: usize,
    /// Give each worker its own /dev/fuse fd (FUSE_DEV_IOC_CLONE); otherwise
    /// all workers share the master fd.
    pub clone_fd: bool,
    /// Largest WRITE payload; sizes every worker's request buffer.
    pub max_write: u32,
    /// Log every request.
    pub debug: bool,
    /// FUSE-over-io_uring: ring entries per queue (one queue per possible
    /// CPU); 0 serves /dev/fuse only. Falls back to /dev/fuse when the
    /// kernel does not offer it.
    pub uring_depth: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: default_threads(),
            clone_fd: true,
            max_write: 1 << 20,
            debug: false,
            uring_depth: 0,
        }
    }
}

/// Default worker count: one per CPU, at least two.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// The filesystem was unmounted or the connection aborted.
    Unmounted,
    /// The session was asked to stop.
    Stopped,
    /// Reading the device failed unexpectedly.
    Failed,
}

/// A mounted, not yet running session.
pub struct Session<F: Filesystem> {
    fs: Arc<F>,
    conn: Arc<Connection>,
    mount: Option<Mount>,
    opts: SessionOptions,
    /// Worker channels opened ahead of time ([`Channels`]).
    pre: Vec<Channel>,
}

/// The channels of a connection, opened before the workers start: what a
/// daemon that is about to lose `/dev/fuse` (the sandbox's pivot_root)
/// needs to open first. [`Session::from_channels`] consumes them.
pub struct Channels {
    conn: Arc<Connection>,
    chans: Vec<Channel>,
}

impl Channels {
    /// The master channel plus `threads - 1` clones of the mounted `fd`.
    pub fn open(fd: OwnedFd, threads: usize) -> io::Result<Channels> {
        let conn = Connection::new(fd);
        let mut chans = vec![conn.master_channel()?];
        for _ in 1..threads.max(1) {
            chans.push(conn.clone_channel()?);
        }
        Ok(Channels { conn, chans })
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }
}

impl<F: Filesystem> Session<F> {
    /// Mounts `fs` at `mountpoint`.
    pub fn mount(
        fs: Arc<F>,
        mountpoint: &Path,
        mopts: &MountOptions,
        opts: SessionOptions,
    ) -> io::Result<Self> {
        let (fd, m) = mount::mount(mountpoint, mopts)?;
        Ok(Session {
            fs,
            conn: Connection::new(fd),
            mount: Some(m),
            opts,
            pre: Vec::new(),
        })
    }

    /// Serves an already mounted /dev/fuse fd (whoever mounted it unmounts).
    pub fn from_fd(fs: Arc<F>, fd: OwnedFd, opts: SessionOptions) -> Self {
        Session {
            fs,
            conn: Connection::new(fd),
            mount: None,
            opts,
            pre: Vec::new(),
        }
    }

    /// Serves channels opened ahead ([`Channels::open`]); one worker per
    /// channel. Whoever mounted unmounts.
    pub fn from_channels(fs: Arc<F>, channels: Channels, mut opts: SessionOptions) -> Self {
        opts.threads = channels.chans.len();
        let mut pre = channels.chans;
        pre.reverse();
        Session {
            fs,
            conn: channels.conn,
            mount: None,
            opts,
            pre,
        }
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Starts the workers.
    pub fn spawn(mut self) -> io::Result<RunningSession<F>> {
        install_wakeup_handler();
        let mut state = DispatchState::new(self.opts.max_write, self.opts.debug);
        state.want_io_uring = self.opts.uring_depth > 0;
        let state = Arc::new(state);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = self.opts.threads.max(1);
        let served: Arc<Vec<AtomicU64>> =
            Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
        let bufsize =
            (self.opts.max_write as usize + 64 * 1024).max(crate::fuse::abi::MIN_READ_BUFFER);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let ch = if let Some(c) = self.pre.pop() {
                c
            } else if self.opts.clone_fd && i > 0 {
                self.conn.clone_channel()?
            } else {
                self.conn.master_channel()?
            };
            let ch = Arc::new(ch);
            let (fs, state, stop, served) =
                (self.fs.clone(), state.clone(), stop.clone(), served.clone());
            let h = std::thread::Builder::new()
                .name(format!("fuse-worker-{i}"))
                .spawn(move || worker_loop(&*fs, &ch, &state, &stop, &served[i], bufsize))?;
            workers.push(h);
        }
        if self.opts.uring_depth > 0 {
            workers.extend(self.spawn_ring_queues(&state, &stop)?);
        }
        Ok(RunningSession {
            fs: self.fs,
            conn: self.conn,
            mount: self.mount,
            workers,
            stop,
            served,
            destroyed: false,
        })
    }
}

impl<F: Filesystem> Session<F> {
    /// One thread per kernel ring queue; each waits for INIT and registers
    /// its entries if io_uring was negotiated, or ends at once.
    fn spawn_ring_queues(
        &self,
        state: &Arc<DispatchState>,
        stop: &Arc<AtomicBool>,
    ) -> io::Result<Vec<JoinHandle<WorkerExit>>> {
        let queues = uring::nr_queues();
        let t = &self.conn.transport;
        t.requested.store(true, Ordering::Relaxed);
        t.queues.store(queues, Ordering::Relaxed);
        let mut handles = Vec::with_capacity(queues);
        for qid in 0..queues {
            let (fs, conn, state, stop) = (
                self.fs.clone(),
                self.conn.clone(),
                state.clone(),
                stop.clone(),
            );
            let depth = self.opts.uring_depth;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("fuse-ring-{qid}"))
                    .spawn(move || {
                        uring::queue_loop(&*fs, &conn, &state, &stop, qid as u16, depth)
                    })?,
            );
        }
        Ok(handles)
    }
}

fn worker_loop<F: Filesystem>(
    fs: &F,
    ch: &Arc<Channel>,
    state: &DispatchState,
    stop: &AtomicBool,
    served: &AtomicU64,
    bufsize: usize,
) -> WorkerExit {
    let mut buf = vec![0u8; bufsize];
    fs.worker_started();
    loop {
        if stop.load(Ordering::Acquire) {
            return WorkerExit::Stopped;
        }
        match ch.receive(&mut buf) {
            Ok(n) => {
                served.fetch_add(1, Ordering::Relaxed);
                // A bug in one handler must not take the worker down: the
                // reply it held answers EIO as it unwinds.
                if catch_unwind(AssertUnwindSafe(|| dispatch(fs, ch, &buf[..n], state))).is_err() {
                    error!("a request handler panicked; the request was answered EIO");
                }
                if is_forget(&buf[..n]) && ch.connection().transport.mode() == "uring" {
                    // Over io_uring, /dev/fuse carries only FORGETs and
                    // INTERRUPTs. A reader waiting on it costs the caller
                    // that drops an inode a wake-up per FORGET (one per
                    // removed file); away for a moment, the kernel queues
                    // them and the next read takes a BATCH_FORGET.
                    std::thread::sleep(FORGET_BATCH_PAUSE);
                }
            }
            Err(e) => match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::ENOENT) | Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::ENODEV) | Some(libc::ECONNABORTED) => return WorkerExit::Unmounted,
                _ => {
                    error!("reading /dev/fuse failed: {e}");
                    return WorkerExit::Failed;
                }
            },
        }
    }
}

/// How long a /dev/fuse worker lets FORGETs gather over io_uring (also
/// the most an INTERRUPT waits then).
const FORGET_BATCH_PAUSE: Duration = Duration::from_millis(5);

fn is_forget(req: &[u8]) -> bool {
    const FORGET: u32 = super::abi::Opcode::Forget as u32;
    const BATCH_FORGET: u32 = super::abi::Opcode::BatchForget as u32;
    req.get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .is_some_and(|op| op == FORGET || op == BATCH_FORGET)
}

/// SIGUSR2 interrupts a worker's blocking read (no SA_RESTART).
fn install_wakeup_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = crate::sys::signal::install_noop_handler(Signal::SIGUSR2) {
            warn!("SIGUSR2 handler: {e}");
        }
    });
}

/// A session whose workers are running.
pub struct RunningSession<F: Filesystem> {
    fs: Arc<F>,
    conn: Arc<Connection>,
    mount: Option<Mount>,
    workers: Vec<JoinHandle<WorkerExit>>,
    stop: Arc<AtomicBool>,
    served: Arc<Vec<AtomicU64>>,
    destroyed: bool,
}

impl<F: Filesystem> RunningSession<F> {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    pub fn filesystem(&self) -> &Arc<F> {
        &self.fs
    }

    /// Requests each worker has read so far.
    pub fn requests_per_worker(&self) -> Vec<u64> {
        self.served
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// True once every worker has exited (e.g. after an external umount).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(|w| w.is_finished())
    }

    /// Unmounts (lazily if busy). Workers then see ENODEV and exit.
    pub fn unmount(&self) -> io::Result<()> {
        let Some(m) = &self.mount else { return Ok(()) };
        match m.unmount(false) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()), // already gone
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                warn!("{} is busy; detaching it lazily", m.mountpoint().display());
                m.unmount(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the workers to stop and wakes them out of read(2).
    fn stop_workers(&self) {
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.is_finished() && Instant::now() < deadline {
            for w in &self.workers {
                if !w.is_finished() {
                    // The thread is alive (not finished, not joined), so its
                    // pthread_t is valid; SIGUSR2 has a no-op handler.
                    let _ = nix::sys::pthread::pthread_kill(w.as_pthread_t(), Signal::SIGUSR2);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for every worker; stops them first unless they already ended.
    /// Returns true if the session ended because the filesystem went away.
    pub fn join(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        if !self.is_finished() {
            self.stop_workers();
        }
        let mut unmounted = false;
        for w in self.workers.drain(..) {
            if w.is_finished() {
                match w.join() {
                    Ok(WorkerExit::Unmounted) => unmounted = true,
                    Ok(_) => {}
                    Err(_) => error!("a worker thread panicked"),
                }
            } else {
                warn!("a worker did not stop; leaving it behind");
            }
        }
        if !self.destroyed {
            self.destroyed = true;
            self.fs.destroy();
        }
        unmounted
    }

    /// The daemon's main loop: waits for the session to end, or for a
    /// signal. SIGINT/SIGTERM/SIGHUP/SIGQUIT unmount and stop; SIGUSR1 calls
    /// `on_usr1`. Call [`block_daemon_signals`] before [`Session::spawn`] so
    /// the workers never take those signals.
    pub fn run_until_signal(mut self, on_usr1: impl Fn()) -> io::Result<()> {
        let set = daemon_signal_set();
        loop {
            let sig = crate::sys::signal::sigtimedwait(&set, Duration::from_millis(100));
            match sig {
                Some(libc::SIGUSR1) => on_usr1(),
                Some(sig @ (libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT)) => {
                    info!("signal {sig}: unmounting");
                    if let Err(e) = self.unmount() {
                        warn!("unmount failed: {e}");
                    }
                    self.finish();
                    return Ok(());
                }
                _ => {
                    if self.is_finished() {
                        info!("filesystem unmounted");
                        self.finish();
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl<F: Filesystem> Drop for RunningSession<F> {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            if !self.is_finished() {
                let _ = self.unmount();
            }
            self.finish();
        }
    }
}

/// The signals the daemon's main thread takes (see [`block_daemon_signals`]).
pub fn daemon_signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the daemon's signals in the calling thread (and so in every thread
/// it spawns afterwards); [`RunningSession::run_until_signal`] takes them.
pub fn block_daemon_signals() {
    let set = daemon_signal_set();
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        warn!("blocking signals: {e}");
    }
}
