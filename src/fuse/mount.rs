//! Mounting and unmounting.
//!
//! As root we open /dev/fuse and call mount(2) ourselves. Otherwise the
//! setuid helper `fusermount3` mounts for us and hands the /dev/fuse fd back
//! over a unix socket named in `_FUSE_COMMFD` (libfuse's protocol).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{debug, warn};

/// Options of one mount, the subset of mount.fuse(8) options we honour.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Shown as the mount source (`fsname=`).
    pub fsname: String,
    /// Shown as type `fuse.<subtype>` (`subtype=`); plain `fuse` if empty,
    /// as libfuse's low-level daemons do (fstests expects that).
    pub subtype: String,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    pub dev: bool,
    pub suid: bool,
    pub exec: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub max_read: Option<u32>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "passthroughfs".into(),
            subtype: String::new(),
            allow_other: false,
            default_permissions: true,
            read_only: false,
            dev: false,
            suid: false,
            exec: true,
            noatime: false,
            nodiratime: false,
            sync: false,
            dirsync: false,
            max_read: None,
        }
    }
}

impl MountOptions {
    fn flags(&self) -> libc::c_ulong {
        let mut f = 0;
        if self.read_only {
            f |= libc::MS_RDONLY;
        }
        if !self.dev {
            f |= libc::MS_NODEV;
        }
        if !self.suid {
            f |= libc::MS_NOSUID;
        }
        if !self.exec {
            f |= libc::MS_NOEXEC;
        }
        if self.noatime {
            f |= libc::MS_NOATIME;
        }
        if self.nodiratime {
            f |= libc::MS_NODIRATIME;
        }
        if self.sync {
            f |= libc::MS_SYNCHRONOUS;
        }
        if self.dirsync {
            f |= libc::MS_DIRSYNC;
        }
        f
    }

    /// The `-o` string for fusermount3.
    fn fusermount_opts(&self) -> String {
        let mut v = vec![
            if self.read_only { "ro" } else { "rw" }.to_string(),
            if self.dev { "dev" } else { "nodev" }.to_string(),
            if self.suid { "suid" } else { "nosuid" }.to_string(),
            if self.exec { "exec" } else { "noexec" }.to_string(),
            format!("fsname={}", escape_opt(&self.fsname)),
        ];
        if !self.subtype.is_empty() {
            v.push(format!("subtype={}", escape_opt(&self.subtype)));
        }
        if self.allow_other {
            v.push("allow_other".into());
        }
        if self.default_permissions {
            v.push("default_permissions".into());
        }
        if self.noatime {
            v.push("noatime".into());
        }
        if let Some(m) = self.max_read {
            v.push(format!("max_read={m}"));
        }
        v.join(",")
    }
}

/// Commas would split the option string: escape them the way libfuse does.
fn escape_opt(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,")
}

/// How a mount was made, so it is undone the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Direct,
    Fusermount,
}

/// A live mount. Unmounting is explicit ([`Mount::unmount`]); dropping a
/// `Mount` leaves the filesystem mounted (the kernel ends the session when
/// the device fd closes).
#[derive(Debug)]
pub struct Mount {
    mountpoint: PathBuf,
    method: Method,
}

impl Mount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts; with `lazy`, detaches even while busy.
    pub fn unmount(&self, lazy: bool) -> io::Result<()> {
        match self.method {
            Method::Direct => {
                use nix::mount::MntFlags;
                let flags = if lazy {
                    MntFlags::MNT_DETACH
                } else {
                    MntFlags::empty()
                };
                nix::mount::umount2(&self.mountpoint, flags).map_err(io::Error::from)
            }
            Method::Fusermount => {
                let mut cmd = Command::new(fusermount_bin());
                cmd.arg("-u").arg("-q");
                if lazy {
                    cmd.arg("-z");
                }
                let status = cmd.arg("--").arg(&self.mountpoint).status()?;
                if status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("fusermount3 -u failed: {status}")))
                }
            }
        }
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn fusermount_bin() -> &'static str {
    for p in [
        "/usr/bin/fusermount3",
        "/bin/fusermount3",
        "/usr/local/bin/fusermount3",
    ] {
        if Path::new(p).exists() {
            return p;
        }
    }
    "fusermount3"
}

/// Mounts a FUSE filesystem at `mountpoint`; returns the /dev/fuse fd.
pub fn mount(mountpoint: &Path, opts: &MountOptions) -> io::Result<(OwnedFd, Mount)> {
    let root = nix::unistd::geteuid().is_root();
    if root {
        mount_direct(mountpoint, opts)
    } else {
        mount_fusermount(mountpoint, opts)
    }
}

fn mount_direct(mountpoint: &Path, opts: &MountOptions) -> io::Result<(OwnedFd, Mount)> {
    let meta = std::fs::metadata(mountpoint)?;
    let fd = crate::sys::fuse_dev::open()?;
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        fd.as_raw_fd(),
        meta.mode() & libc::S_IFMT,
        uid,
        gid
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    if opts.default_permissions {
        data.push_str(",default_permissions");
    }
    if let Some(m) = opts.max_read {
        data.push_str(&format!(",max_read={m}"));
    }
    let source = cstring(OsStr::new(&opts.fsname))?;
    let fstype = if opts.subtype.is_empty() {
        "fuse".to_string()
    } else {
        format!("fuse.{}", opts.subtype)
    };
    let fstype = CString::new(fstype).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let target = cstring(mountpoint.as_os_str())?;
    let cdata =
        CString::new(data.clone()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    debug!(
        "mount({:?}, {:?}, {:?}, {:#x}, {})",
        opts.fsname,
        mountpoint,
        fstype,
        opts.flags(),
        data
    );
    nix::mount::mount(
        Some(source.as_c_str()),
        target.as_c_str(),
        Some(fstype.as_c_str()),
        nix::mount::MsFlags::from_bits_retain(opts.flags()),
        Some(cdata.as_c_str()),
    )?;
    Ok((
        fd,
        Mount {
            mountpoint: mountpoint.to_path_buf(),
            method: Method::Direct,
        },
    ))
}

fn mount_fusermount(mountpoint: &Path, opts: &MountOptions) -> io::Result<(OwnedFd, Mount)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )?;
    set_cloexec(ours.as_fd(), true)?;
    set_cloexec(theirs.as_fd(), false)?;
    let status = Command::new(fusermount_bin())
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .arg("-o")
        .arg(opts.fusermount_opts())
        .arg("--")
        .arg(mountpoint)
        .status()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run fusermount3 (package fuse3): {e}"),
            )
        })?;
    drop(theirs);
    if !status.success() {
        return Err(io::Error::other(format!("fusermount3 failed ({status})")));
    }
    let fd = crate::sys::recv_fd(ours.as_fd())?
        .ok_or_else(|| io::Error::other("fusermount3 sent no file descriptor"))?;
    set_cloexec(fd.as_fd(), true)?;
    Ok((
        fd,
        Mount {
            mountpoint: mountpoint.to_path_buf(),
            method: Method::Fusermount,
        },
    ))
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let mut flags = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Is `path` the root of a mount? (Its mount id differs from its parent's,
/// or it is `/`.) Used to refuse a busy mountpoint with a clear message.
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let canon = std::fs::canonicalize(path)?;
    let Some(parent) = canon.parent() else {
        return Ok(true);
    };
    let (a, b) = (mount_id(&canon)?, mount_id(parent)?);
    Ok(a != b)
}

fn mount_id(path: &Path) -> io::Result<u64> {
    let c = cstring(path.as_os_str())?;
    let stx = crate::sys::statx_path(&c, libc::STATX_MNT_ID)?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        warn!(
            "statx gives no mount id; cannot tell whether {} is a mountpoint",
            path.display()
        );
        return Ok(0);
    }
    Ok(stx.stx_mnt_id)
}
