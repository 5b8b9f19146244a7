//! `passthroughfs [OPTIONS] SOURCE MOUNTPOINT [-o OPTS]`: mirrors SOURCE at
//! MOUNTPOINT through FUSE, with kernel passthrough where the kernel has it.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tracing::{error, info, warn};

use passthroughfs::fuse::session::{block_daemon_signals, default_threads};
use passthroughfs::fuse::{MountOptions, Session, SessionOptions};
use passthroughfs::media::MediaProvider;
use passthroughfs::passthrough::{Config, PassthroughFs};
use passthroughfs::policy::{self, Policy};
use passthroughfs::sys::process::{fork, Forked};
use passthroughfs::{credentials, stats, sys};

const EXAMPLES: &str = "\
Examples:
  passthroughfs /srv/data /mnt/data
      mirror /srv/data at /mnt/data (runs in the background once mounted)
  passthroughfs -f --stats /tmp/ptfs.json /srv/data /mnt/data
      stay in the foreground; `kill -USR1 <pid>` writes statistics
  passthroughfs --nopassthrough --nocache /srv/data /mnt/data
      the daemon serves every read and write, nothing is cached
  passthroughfs -o nodefault_permissions --locks kernel --xattr off /srv/data /mnt/data
      fewest requests per file for one user: SOURCE checks permissions,
      the kernel keeps locks, no xattrs or ACLs through the mount
  passthroughfs /srv/data /mnt/data -o allow_other,ro
      share a read-only mount with every user (permission checks by the kernel)
  mount -t fuse.passthroughfs /srv/data /mnt/data -o allow_other
  fstab: /srv/data /mnt/data fuse.passthroughfs allow_other 0 0
      through mount.fuse3, with passthroughfs in $PATH

Unmount with `umount MOUNTPOINT` (or `fusermount3 -u` as a user).
Logs: RUST_LOG=debug (or --debug) selects the detail.";

/// A FUSE passthrough filesystem: SOURCE mirrored at MOUNTPOINT.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Directory to mirror.
    source: PathBuf,
    /// Where to mount it (an empty directory, not already a mount point).
    mountpoint: PathBuf,
    /// Mount options, comma separated: allow_other, default_permissions,
    /// nodefault_permissions, ro, rw, dev, suid, noexec, noatime, fsname=,
    /// subtype=, max_read= ...
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short, long)]
    foreground: bool,
    /// Log debug messages (implies --foreground).
    #[arg(short, long)]
    debug: bool,
    /// Log every FUSE request (implies --foreground).
    #[arg(long)]
    debug_fuse: bool,
    /// Kernel caching: `always` (entries and attributes valid for
    /// --timeout, 86400 s: coherent for changes made through the mount, as
    /// passthrough_hp), `auto` (valid 1 s: changes made on SOURCE behind
    /// the mount show within a second) or `never` (as --nocache).
    #[arg(long, value_enum, default_value_t = CacheMode::Always, value_name = "MODE")]
    cache: CacheMode,
    /// Entry and attribute cache validity, in seconds (with --cache always).
    #[arg(long, default_value_t = 86400.0, value_name = "SECS")]
    timeout: f64,
    /// No caching: zero timeouts, page cache dropped on open (= --cache never).
    #[arg(long)]
    nocache: bool,
    /// Copy READ replies through userspace instead of splicing them
    /// (file -> pipe -> /dev/fuse).
    #[arg(long)]
    nosplice: bool,
    /// Serve all reads and writes in the daemon (no kernel passthrough).
    #[arg(long)]
    nopassthrough: bool,
    /// Reads and writes go to the daemon (FOPEN_DIRECT_IO); mmap still
    /// passes through.
    #[arg(long)]
    direct_io: bool,
    /// One worker thread.
    #[arg(long)]
    single: bool,
    /// Worker threads (default: one per CPU, at least 2).
    #[arg(long, value_name = "N")]
    num_threads: Option<usize>,
    /// Stack depth of backing files: 1, or 2 when SOURCE is itself on
    /// overlayfs or FUSE (detected when not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=2))]
    max_stack_depth: Option<u32>,
    /// Ops the kernel may serve from the backing inode, on kernels with
    /// inode passthrough: getattr,statx,setattr,getxattr,listxattr,readdir,
    /// open,read,write,lookup,... or all / none; -NAME takes an op out of
    /// what the names before it gave (all,-getxattr). On stock kernels only
    /// read,write apply (I/O passthrough on open). `lookup` (directories
    /// only, kernels with patch 0015) lets the kernel resolve names in the
    /// backing directory without asking the daemon, which then cannot apply
    /// per-name rules below it: `all` includes it only without --policy and
    /// --media-provider (and not after `-lookup`).
    #[arg(long, default_value = "all", value_name = "LIST")]
    passthrough_ops: String,
    /// Per-subtree passthrough rules (TOML; see `policy.rs`).
    #[arg(long, value_name = "FILE", conflicts_with = "media_provider")]
    policy: Option<PathBuf>,
    /// Android-style media provider mode (TOML config of apps and the media
    /// tree; see examples/media-provider.toml). Needs -o allow_other.
    #[arg(long, value_name = "CONFIG")]
    media_provider: Option<PathBuf>,
    /// Write statistics (JSON) here on SIGUSR1 and at unmount.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Most O_PATH fds kept for inodes (default: half the fd limit).
    #[arg(long, value_name = "N")]
    fd_cache: Option<usize>,
    /// Where the logs go once in the background (default: nowhere).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Do not use READDIRPLUS.
    #[arg(long)]
    no_readdirplus: bool,
    /// Least privilege (root only): serve from a mount namespace whose root
    /// is SOURCE, with only the capabilities the ops need and a seccomp
    /// allowlist of syscalls; a supervisor process stays outside to
    /// unmount. See SECURITY.md.
    #[arg(long)]
    sandbox: bool,
    /// Test only (tests/sandbox.rs): GETXATTR of
    /// user.passthroughfs.test-forbidden-syscall makes a syscall outside
    /// the sandbox's allowlist.
    #[arg(long, hide = true)]
    test_forbidden_syscall: bool,
    /// FUSE-over-io_uring transport (also `-o io_uring`; the default):
    /// per-CPU ring queues instead of read/write on /dev/fuse, whenever the
    /// kernel offers it (6.14+ with /sys/module/fuse/parameters/enable_uring
    /// on); otherwise /dev/fuse, with one log line.
    #[arg(long, overrides_with = "no_io_uring")]
    io_uring: bool,
    /// Serve /dev/fuse only, even where the kernel offers io_uring (also
    /// `-o no_io_uring`).
    #[arg(long, overrides_with = "io_uring")]
    no_io_uring: bool,
    /// Negotiate FUSE_HANDLE_KILLPRIV_V2 (the default): the daemon clears
    /// setuid/setgid on write, truncate and chown, and the kernel stops
    /// asking for security.capability before each write.
    #[arg(long, overrides_with = "no_killpriv_v2")]
    killpriv_v2: bool,
    /// Leave clearing setuid/setgid to the kernel, which then asks
    /// GETXATTR security.capability before every write(2) and chown.
    #[arg(long, overrides_with = "killpriv_v2")]
    no_killpriv_v2: bool,
    /// Who keeps POSIX and flock locks: `host` (the default: OFD locks on
    /// SOURCE, so they conflict with processes using SOURCE directly) or
    /// `kernel` (the kernel keeps them on the mount only, as virtiofsd does
    /// by default and passthrough_hp for POSIX locks; close(2) then costs no
    /// FLUSH request where SOURCE's filesystem has nothing to flush). Also
    /// `-o locks=WHERE`
    #[arg(long, value_enum, default_value_t = LockMode::Host, value_name = "WHERE")]
    locks: LockMode,
    /// With `--locks host`: how long a lock check (F_GETLK, F_SETLK) that
    /// conflicts with a file closed just before waits for that file's
    /// RELEASE, which the kernel sends after close(2) has returned (an OFD
    /// lock goes at its last close). The wait is on a thread of its own;
    /// only a conflict with a file still open elsewhere waits all of it
    #[arg(long, default_value_t = passthroughfs::passthrough::LOCK_SETTLE.as_millis() as u64, value_name = "MS")]
    lock_settle_ms: u64,
    /// Extended attributes through the mount: `on` (the default) or `off`.
    /// Off, getxattr, listxattr, setxattr and removexattr fail with
    /// EOPNOTSUPP without a request (the kernel remembers the first
    /// ENOSYS), as in virtiofsd without --xattr: a warm `ls -l` no longer
    /// costs a GETXATTR security.selinux per entry. SOURCE's xattrs are
    /// kept but not shown, ACLs included: the kernel checks mode bits only,
    /// so with allow_other it needs -o nodefault_permissions (SOURCE then
    /// checks ACLs as the caller). Also `-o xattr=on|off`
    #[arg(long, value_enum, default_value_t = OnOff::On, value_name = "ON|OFF")]
    xattr: OnOff,
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// `--locks`: where POSIX and flock locks live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LockMode {
    /// OFD locks on SOURCE, taken by the daemon: they conflict with locks
    /// held on SOURCE directly.
    Host,
    /// The kernel's own locks on the mount: they conflict only with locks
    /// taken through the mount.
    Kernel,
}

/// Whether FUSE_HANDLE_KILLPRIV_V2 is negotiated without `--killpriv-v2` or
/// `--no-killpriv-v2`.
const KILLPRIV_V2_DEFAULT: bool = true;

/// `--cache`: what the kernel may cache, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CacheMode {
    /// No entry/attribute caching, no page cache kept across opens.
    Never,
    /// Entries and attributes valid for 1 s; pages kept while unchanged.
    Auto,
    /// Entries and attributes valid for --timeout; pages kept while unchanged.
    Always,
}

/// (timeout, nocache) for a cache mode.
fn cache_settings(mode: CacheMode, nocache: bool, timeout: f64) -> (Duration, bool) {
    match (mode, nocache) {
        (CacheMode::Never, _) | (_, true) => (Duration::ZERO, true),
        (CacheMode::Auto, _) => (Duration::from_secs(1), false),
        (CacheMode::Always, _) => (Duration::from_secs_f64(timeout.max(0.0)), false),
    }
}

/// What `-o` asked for.
struct ParsedOptions {
    mount: MountOptions,
    /// `-o io_uring` (Some(true)) / `-o no_io_uring` (Some(false))
    io_uring: Option<bool>,
    /// `-o locks=host|kernel`
    locks: Option<LockMode>,
    /// `-o xattr=on|off`
    xattr: Option<OnOff>,
}

fn parse_mount_options(
    opts: &[String],
    source: &Path,
) -> std::result::Result<ParsedOptions, String> {
    let mut m = MountOptions {
        fsname: source.display().to_string(),
        ..Default::default()
    };
    let mut io_uring = None;
    let mut locks = None;
    let mut xattr = None;
    for o in opts.iter().flat_map(|s| split_opts(s)) {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o.clone(), None),
        };
        match (k.as_str(), v) {
            ("allow_other", None) => m.allow_other = true,
            ("default_permissions", None) => m.default_permissions = true,
            ("nodefault_permissions" | "no_default_permissions", None) => {
                m.default_permissions = false
            }
            ("ro", None) => m.read_only = true,
            ("rw", None) => m.read_only = false,
            ("dev", None) => m.dev = true,
            ("nodev", None) => m.dev = false,
            ("suid", None) => m.suid = true,
            ("nosuid", None) => m.suid = false,
            ("exec", None) => m.exec = true,
            ("noexec", None) => m.exec = false,
            ("noatime", None) => m.noatime = true,
            ("atime" | "relatime" | "strictatime", None) => m.noatime = false,
            ("nodiratime", None) => m.nodiratime = true,
            ("sync", None) => m.sync = true,
            ("async", None) => m.sync = false,
            ("dirsync", None) => m.dirsync = true,
            ("io_uring", None) => io_uring = Some(true),
            ("no_io_uring", None) => io_uring = Some(false),
            ("locks", Some(v)) => {
                locks = Some(match v.as_str() {
                    "host" => LockMode::Host,
                    "kernel" => LockMode::Kernel,
                    _ => return Err(format!("bad locks={v} (host or kernel)")),
                })
            }
            ("xattr", Some(v)) => {
                xattr = Some(match v.as_str() {
                    "on" => OnOff::On,
                    "off" => OnOff::Off,
                    _ => return Err(format!("bad xattr={v} (on or off)")),
                })
            }
            ("fsname", Some(v)) => m.fsname = v,
            ("subtype", Some(v)) => m.subtype = v,
            ("max_read", Some(v)) => {
                m.max_read = Some(v.parse().map_err(|_| format!("bad max_read={v}"))?)
            }
            // Meant for mount(8) or other helpers, not for us.
            (
                "user" | "users" | "nouser" | "auto" | "noauto" | "_netdev" | "nofail" | "defaults"
                | "allow_root",
                _,
            ) => {}
            (k, _) if k.starts_with("x-") => {}
            (k, v) => {
                let shown = match v {
                    Some(v) => format!("{k}={v}"),
                    None => k.to_string(),
                };
                warn!("ignoring unknown mount option '{shown}'");
            }
        }
    }
    Ok(ParsedOptions {
        mount: m,
        io_uring,
        locks,
        xattr,
    })
}

/// Splits "a,b=c\,d" on unescaped commas.
fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (true, c) => {
                cur.push(c);
                esc = false;
            }
            (false, '\\') => esc = true,
            (false, ',') => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (false, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A start-up failure the waiting parent already printed (the daemon's
/// own exit then says nothing more).
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported by the daemon")
    }
}

impl std::error::Error for Reported {}

fn check_paths(cli: &Cli) -> Result<(PathBuf, PathBuf)> {
    let src = std::fs::canonicalize(&cli.source)
        .with_context(|| format!("SOURCE {}", cli.source.display()))?;
    if !src.is_dir() {
        bail!("SOURCE {}: not a directory", cli.source.display());
    }
    let mnt = std::fs::canonicalize(&cli.mountpoint)
        .with_context(|| format!("MOUNTPOINT {}", cli.mountpoint.display()))?;
    if !mnt.is_dir() {
        bail!("MOUNTPOINT {}: not a directory", cli.mountpoint.display());
    }
    if mnt.starts_with(&src) {
        bail!(
            "MOUNTPOINT {} is inside SOURCE {}: the mount would contain itself",
            mnt.display(),
            src.display()
        );
    }
    let busy = passthroughfs::fuse::mount::is_mountpoint(&mnt)
        .with_context(|| format!("MOUNTPOINT {}", mnt.display()))?;
    if busy {
        bail!(
            "MOUNTPOINT {}: busy (something is already mounted there)",
            mnt.display()
        );
    }
    Ok((src, mnt))
}

/// 1, or 2 when SOURCE itself sits on a stacking filesystem.
fn detect_stack_depth(src: &Path) -> u32 {
    const OVERLAYFS: i64 = 0x794c_7630;
    const FUSE: i64 = 0x6573_5546;
    const ECRYPTFS: i64 = 0xf15f;
    let Ok(st) = nix::sys::statfs::statfs(src) else {
        return 1;
    };
    // The type of f_type differs between targets.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    match magic {
        OVERLAYFS | FUSE | ECRYPTFS => 2,
        _ => 1,
    }
}

fn init_logging(cli: &Cli, log_file: Option<std::fs::File>) {
    use tracing_subscriber::EnvFilter;
    let default = if cli.debug || cli.debug_fuse {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

/// A pipe from the daemon to the parent waiting in the foreground: one
/// byte 0 when the mount is usable, or an error message.
struct Readiness {
    write: Option<OwnedFd>,
}

impl Readiness {
    fn report(&mut self, r: std::result::Result<(), &str>) {
        if let Some(fd) = self.write.take() {
            let mut f = std::fs::File::from(fd);
            let _ = match r {
                Ok(()) => f.write_all(&[0]),
                Err(m) => f.write_all(m.as_bytes()),
            };
        }
    }
}

/// Forks; the parent waits for the child's readiness and exits with it.
fn daemonize() -> Result<Readiness> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)
        .map_err(std::io::Error::from)
        .context("pipe")?;
    // Called before any thread is spawned.
    match fork().context("fork")? {
        Forked::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            Ok(Readiness { write: Some(w) })
        }
        Forked::Parent(_) => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut msg = Vec::new();
            let _ = f.read_to_end(&mut msg);
            if msg == [0] {
                std::process::exit(0);
            }
            if !msg.is_empty() {
                eprintln!("passthroughfs: {}", String::from_utf8_lossy(&msg));
            } else {
                eprintln!("passthroughfs: the daemon exited before the mount was ready");
            }
            std::process::exit(1);
        }
    }
}

fn open_null() -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ok()
}

/// Points stdio at `null` (in the sandbox, /dev/null is opened before).
fn stdio_to(null: Option<&std::fs::File>) {
    if let Some(null) = null {
        let _ = nix::unistd::dup2_stdin(null);
        let _ = nix::unistd::dup2_stdout(null);
        let _ = nix::unistd::dup2_stderr(null);
    }
}

/// Detaches stdio once the daemon is running in the background.
fn detach_stdio() {
    stdio_to(open_null().as_ref());
    let _ = std::env::set_current_dir("/");
}

fn run(cli: Cli) -> Result<()> {
    let foreground = cli.foreground || cli.debug || cli.debug_fuse;
    let (src, mnt) = check_paths(&cli)?;
    let parsed = parse_mount_options(&cli.options, &src).map_err(anyhow::Error::msg)?;
    let ops =
        policy::parse_ops(&cli.passthrough_ops).map_err(|e| anyhow!("--passthrough-ops: {e}"))?;
    // The library's errors (PolicyError, MediaConfigError, SourceError)
    // carry their cause in their one line: `msg` keeps `{e:#}` from
    // printing the cause a second time.
    let media = match &cli.media_provider {
        Some(p) => Some(Arc::new(
            MediaProvider::from_file(p).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let xattrs = xattrs_on(&cli, &parsed);
    let mut pol = match (&cli.policy, &media) {
        (Some(p), _) => Policy::from_file(p, ops).map_err(anyhow::Error::msg)?,
        (None, Some(mp)) => mp.policy(ops),
        (None, None) => {
            let mut p = Policy::uniform(ops);
            if policy::names_all(&cli.passthrough_ops) {
                p.allow_dir_lookup();
            }
            p
        }
    };
    if !xattrs {
        pol.remove_ops(policy::xattr_off_ops());
    }
    // With xattrs off the kernel sees no ACL and checks mode bits only: for
    // other users (allow_other) someone must still apply SOURCE's ACLs,
    // which only SOURCE can, checking each request as its caller.
    if !xattrs && parsed.mount.allow_other && parsed.mount.default_permissions {
        bail!(
            "--xattr off with -o allow_other needs -o nodefault_permissions: the kernel \
             would check mode bits only, and SOURCE's ACLs would not apply to other users"
        );
    }
    if media.is_some() && ops & policy::LOOKUP_OP != 0 {
        eprintln!("passthroughfs: warning: --media-provider decides per name and caller: lookup is not passed through");
    }
    // Without default_permissions the host checks each request as its
    // caller, which only a root daemon can impersonate: unprivileged, every
    // other user would get the daemon user's access.
    if parsed.mount.allow_other
        && !parsed.mount.default_permissions
        && sys::thread_creds::euid() != 0
    {
        bail!(
            "-o allow_other with nodefault_permissions needs a root daemon \
             (an unprivileged one cannot check permissions as its callers)"
        );
    }
    if cli.sandbox {
        if let Some(why) = passthroughfs::sandbox::unsupported() {
            bail!(why);
        }
    }
    if cli.test_forbidden_syscall {
        passthroughfs::sandbox::enable_forbidden_syscall_hook();
    }
    if media.is_some() && !parsed.mount.allow_other {
        eprintln!("passthroughfs: warning: --media-provider without -o allow_other: only the mounting user can reach the mount");
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist (is the fuse module loaded?)");
    }
    let log_file = match &cli.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--log {}", p.display()))?,
        ),
        None => None,
    };

    let mut ready = if foreground {
        Readiness { write: None }
    } else {
        daemonize()?
    };
    init_logging(&cli, if foreground { None } else { log_file });
    let plan = Plan {
        src,
        mnt,
        parsed,
        policy: pol,
        media,
    };
    let result = serve(&cli, plan, &mut ready, foreground);
    match result {
        // In the background, the waiting parent prints the error.
        Err(e) if ready.write.is_some() => {
            let m = format!("{e:#}");
            error!("{m}");
            ready.report(Err(&m));
            Err(Reported.into())
        }
        r => r,
    }
}

/// Everything checked and parsed before the daemon starts.
struct Plan {
    src: PathBuf,
    mnt: PathBuf,
    parsed: ParsedOptions,
    policy: Policy,
    media: Option<Arc<MediaProvider>>,
}

/// Process set-up shared by both ways of serving: per-thread credentials,
/// umask 0 (the kernel, or with DONT_MASK the per-thread umask, masks
/// modes; the process umask must not mask them a second time), the fd limit.
/// Returns the fd limit, the fd cache size and the backing stack depth.
fn prepare_process(cli: &Cli, src: &Path) -> (u64, usize, u32) {
    credentials::init();
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let limit = sys::raise_fd_limit();
    let fd_cache = cli.fd_cache.unwrap_or((limit as usize / 2).max(64));
    let depth = cli
        .max_stack_depth
        .unwrap_or_else(|| detect_stack_depth(src));
    (limit, fd_cache, depth)
}

/// The filesystem's configuration from the command line; `source` is the
/// path the daemon opens SOURCE by ("/" inside the sandbox).
fn daemon_config(
    cli: &Cli,
    source: PathBuf,
    parsed: &ParsedOptions,
    max_stack_depth: u32,
    fd_cache: usize,
    policy: Policy,
    media: Option<Arc<MediaProvider>>,
) -> Config {
    let (timeout, nocache) = cache_settings(cli.cache, cli.nocache, cli.timeout);
    Config {
        source,
        timeout,
        nocache,
        passthrough: !cli.nopassthrough,
        direct_io: cli.direct_io,
        splice: !cli.nosplice,
        default_permissions: parsed.mount.default_permissions,
        allow_other: parsed.mount.allow_other,
        max_stack_depth,
        readdirplus: !cli.no_readdirplus,
        fd_cache,
        policy: Arc::new(policy),
        media,
        noatime: parsed.mount.noatime || parsed.mount.read_only,
        nodiratime: parsed.mount.nodiratime,
        killpriv_v2: if cli.killpriv_v2 || cli.no_killpriv_v2 {
            cli.killpriv_v2
        } else {
            KILLPRIV_V2_DEFAULT
        },
        // -o locks= (fstab) wins over --locks, as for io_uring.
        host_locks: parsed.locks.unwrap_or(cli.locks) == LockMode::Host,
        lock_settle: Duration::from_millis(cli.lock_settle_ms),
        xattrs: xattrs_on(cli, parsed),
    }
}

/// `--xattr`, or `-o xattr=` (fstab), which wins.
fn xattrs_on(cli: &Cli, parsed: &ParsedOptions) -> bool {
    parsed.xattr.unwrap_or(cli.xattr) == OnOff::On
}

fn serve(cli: &Cli, plan: Plan, ready: &mut Readiness, foreground: bool) -> Result<()> {
    if cli.sandbox {
        return serve_sandboxed(cli, plan, ready, foreground);
    }
    let Plan {
        src,
        mnt,
        parsed,
        policy: pol,
        media,
    } = plan;
    let (limit, fd_cache, depth) = prepare_process(cli, &src);
    let cfg = daemon_config(cli, src.clone(), &parsed, depth, fd_cache, pol, media);
    let fs = Arc::new(PassthroughFs::new(cfg).map_err(|e| anyhow!("SOURCE {e}"))?);
    let threads = worker_count(cli);
    let sopts = SessionOptions {
        threads,
        clone_fd: true,
        max_write: 1 << 20,
        debug: cli.debug_fuse,
        // io_uring unless told otherwise; the last word wins (-o after
        // the flags).
        uring_depth: if parsed.io_uring.unwrap_or(cli.io_uring || !cli.no_io_uring) {
            passthroughfs::fuse::uring::DEFAULT_DEPTH
        } else {
            0
        },
    };
    let sopts_uring = sopts.uring_depth > 0;
    // Workers inherit the blocked set: only the main thread takes signals.
    block_daemon_signals();
    let session = Session::mount(fs.clone(), &mnt, &parsed.mount, sopts)
        .map_err(|e| mount_failed(&mnt, e))?;
    let conn = session.connection().clone();
    let running = session.spawn().context("cannot start workers")?;
    wait_init(&conn, &running)?;
    if sopts_uring {
        // The queues register right after INIT: say which transport won.
        let t = &conn.transport;
        let deadline = Instant::now() + Duration::from_secs(2);
        let offered = conn
            .negotiated()
            .is_some_and(|n| n.has(passthroughfs::fuse::abi::InitFlags::OVER_IO_URING));
        while offered
            && t.mode() != "uring"
            && !t.failed.load(std::sync::atomic::Ordering::Relaxed)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        info!("transport: {}", t.mode());
    }
    info!(
        "{} mounted at {} ({} workers, fd limit {}, fd cache {})",
        src.display(),
        mnt.display(),
        threads,
        limit,
        fd_cache
    );
    ready.report(Ok(()));
    if !foreground {
        detach_stdio();
    }
    let stats_path = cli.stats.clone();
    let fs2 = fs.clone();
    running
        .run_until_signal(move || stats::write(&fs2, stats_path.as_deref()))
        .context("session")?;
    stats::write(&fs, cli.stats.as_deref());
    Ok(())
}

fn worker_count(cli: &Cli) -> usize {
    if cli.single {
        1
    } else {
        cli.num_threads.unwrap_or_else(default_threads).max(1)
    }
}

fn mount_failed(mnt: &Path, e: std::io::Error) -> anyhow::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (mounting needs root, or fusermount3 from package fuse3)"
        }
        Some(libc::ENODEV) => " (no fuse filesystem in this kernel)",
        _ => "",
    };
    anyhow!("cannot mount {}: {e}{hint}", mnt.display())
}

/// Usable once the kernel's INIT was answered.
fn wait_init(
    conn: &Arc<passthroughfs::fuse::Connection>,
    running: &passthroughfs::fuse::RunningSession<PassthroughFs>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.negotiated().is_none() && Instant::now() < deadline && !running.is_finished() {
        std::thread::sleep(Duration::from_millis(2));
    }
    if conn.negotiated().is_none() {
        let _ = running.unmount();
        bail!("the kernel never sent INIT; unmounted");
    }
    Ok(())
}

/// `--sandbox`: mounts here, then forks. The parent supervises from the
/// host's namespace (see `sandbox.rs`); the child enters the sandbox and
/// serves.
fn serve_sandboxed(cli: &Cli, plan: Plan, ready: &mut Readiness, foreground: bool) -> Result<()> {
    let (limit, fd_cache, depth) = prepare_process(cli, &plan.src);
    block_daemon_signals();
    let (dev, mount) = passthroughfs::fuse::mount::mount(&plan.mnt, &plan.parsed.mount)
        .map_err(|e| mount_failed(&plan.mnt, e))?;
    // Until the fork, a failure unmounts what was just mounted.
    let fail = |mount: passthroughfs::fuse::mount::Mount, e: anyhow::Error| {
        let _ = mount.unmount(true);
        Err(e)
    };
    let (stats_rx, stats_tx): (OwnedFd, OwnedFd) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(mount, anyhow::Error::from(e).context("pipe")),
    };
    // Callers' groups (without default_permissions) come from the
    // supervisor, which can still read /proc/PID/status.
    let (groups_here, groups_there) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return fail(mount, anyhow::Error::from(e).context("socketpair")),
    };
    let supervisor = nix::unistd::getpid();
    // Still single-threaded (no worker exists yet).
    match fork() {
        Err(e) => fail(mount, anyhow::Error::from(e).context("fork")),
        Ok(Forked::Parent(child)) => {
            // The supervisor holds no /dev/fuse fd (the kernel ends the
            // session when the sandboxed process dies) and no write end.
            drop((dev, stats_tx, groups_there, ready.write.take()));
            run_supervisor(cli, child, mount, stats_rx, groups_here, foreground)
        }
        Ok(Forked::Child) => {
            // The sandboxed process: dies with its supervisor (as a killed
            // daemon); the supervisor unmounts.
            drop((stats_rx, groups_here));
            std::mem::forget(mount);
            credentials::groups_from_supervisor(groups_there);
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if nix::unistd::getppid() != supervisor {
                std::process::exit(1);
            }
            let sandboxed = Sandboxed {
                dev,
                stats_tx,
                limit,
                fd_cache,
                depth,
            };
            run_sandboxed_daemon(cli, plan, sandboxed, ready, foreground)
        }
    }
}

/// The supervisor's side of `--sandbox`: relays signals and stats, waits
/// for the sandboxed daemon and unmounts.
fn run_supervisor(
    cli: &Cli,
    child: nix::unistd::Pid,
    mount: passthroughfs::fuse::mount::Mount,
    stats_rx: OwnedFd,
    groups_here: std::os::unix::net::UnixStream,
    foreground: bool,
) -> Result<()> {
    // Absolute, so the supervisor can leave its cwd like any daemon.
    let stats_path = cli.stats.as_ref().map(|p| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.clone())
    });
    if !foreground {
        detach_stdio();
    }
    info!("sandboxed daemon is pid {child}");
    let code = passthroughfs::sandbox::supervise(child, mount, stats_rx, groups_here, stats_path);
    match code {
        0 => Ok(()),
        _ => std::process::exit(code.clamp(1, 255)),
    }
}

/// What the sandboxed process takes over from the set-up before the fork.
struct Sandboxed {
    dev: OwnedFd,
    stats_tx: OwnedFd,
    limit: u64,
    fd_cache: usize,
    depth: u32,
}

/// The sandboxed daemon: enters its namespace, drops capabilities, installs
/// the seccomp filter, then serves /dev/fuse until unmounted or signalled.
fn run_sandboxed_daemon(
    cli: &Cli,
    plan: Plan,
    sb: Sandboxed,
    ready: &mut Readiness,
    foreground: bool,
) -> Result<()> {
    use passthroughfs::fuse::session::Channels;
    use passthroughfs::sandbox;
    let threads = worker_count(cli);
    let null = if foreground { None } else { open_null() };
    let channels = Channels::open(sb.dev, threads).context("cannot open /dev/fuse channels")?;
    sandbox::enter_namespace(&plan.src).context("--sandbox")?;
    sandbox::close_inherited_dirs().context("--sandbox")?;
    let cfg = daemon_config(
        cli,
        PathBuf::from("/"),
        &plan.parsed,
        sb.depth,
        sb.fd_cache,
        plan.policy,
        plan.media,
    );
    let fs = Arc::new(PassthroughFs::new(cfg).map_err(|e| anyhow!("SOURCE {e}"))?);
    let keep: Vec<u32> = sandbox::kept_capabilities(!cli.nopassthrough)
        .iter()
        .map(|c| c.0)
        .collect();
    let caps = sandbox::drop_capabilities(&keep).context("--sandbox: dropping capabilities")?;
    let insns = sandbox::install_seccomp().context("--sandbox")?;
    info!(
        "sandbox: root {}, capabilities {caps:#x}, seccomp allowlist of {} syscalls ({insns} BPF instructions, others kill the process)",
        plan.src.display(),
        sandbox::allowlist_len()
    );
    let sopts = SessionOptions {
        threads,
        clone_fd: true,
        max_write: 1 << 20,
        debug: cli.debug_fuse,
        // The seccomp allowlist has no io_uring syscalls (a ring is a
        // second way into the kernel the filter cannot see into): the
        // sandboxed daemon serves /dev/fuse.
        uring_depth: 0,
    };
    if plan.parsed.io_uring == Some(true) || cli.io_uring {
        info!("--sandbox: io_uring is not allowed in the sandbox; serving /dev/fuse");
    }
    let session = Session::from_channels(fs.clone(), channels, sopts);
    let conn = session.connection().clone();
    let running = session.spawn().context("cannot start workers")?;
    wait_init(&conn, &running)?;
    info!(
        "{} mounted at {} ({} workers, fd limit {}, fd cache {}, sandboxed)",
        plan.src.display(),
        plan.mnt.display(),
        threads,
        sb.limit,
        sb.fd_cache
    );
    ready.report(Ok(()));
    stdio_to(null.as_ref());
    let stats_tx = std::fs::File::from(sb.stats_tx);
    let send = |fs: &PassthroughFs| {
        if let Some(j) = stats::json(fs) {
            sandbox::send_stats(&stats_tx, &j);
        }
    };
    let fs2 = fs.clone();
    running.run_until_signal(|| send(&fs2)).context("session")?;
    send(&fs);
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // Usage errors: EX_USAGE (64); --help and --version: 0.
            return if usage {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is::<Reported>() {
                eprintln!("passthroughfs: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
