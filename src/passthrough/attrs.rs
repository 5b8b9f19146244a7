//! Attributes: getattr, setattr, statx, readlink, access, statfs.
//!
//! Everything acts on the inode's fd: `AT_EMPTY_PATH` forms where the kernel
//! has them (chown, utimens, fchmodat2, statx), a real open file otherwise
//! (truncate). A symlink is never reopened through /proc: the magic link
//! would follow it.

use std::os::fd::AsFd;

use super::*;
use crate::inode_table::STATX_MASK;

impl PassthroughFs {
    /// The reply form of a statx, with st_ino made unique across submounts.
    pub(super) fn attr_of(&self, st: &libc::statx, inode: &Inode) -> abi::Attr {
        abi::Attr {
            ino: self.table.report_ino(inode.key),
            size: st.stx_size,
            blocks: st.stx_blocks,
            atime: st.stx_atime.tv_sec as u64,
            mtime: st.stx_mtime.tv_sec as u64,
            ctime: st.stx_ctime.tv_sec as u64,
            atimensec: st.stx_atime.tv_nsec,
            mtimensec: st.stx_mtime.tv_nsec,
            ctimensec: st.stx_ctime.tv_nsec,
            mode: st.stx_mode as u32,
            nlink: st.stx_nlink,
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor) as u32,
            blksize: st.stx_blksize,
            flags: 0,
        }
    }

    /// statx of an inode through an open file handle if the kernel named
    /// one (works for unlinked files whose handle can no longer be decoded),
    /// else through its O_PATH fd.
    fn stat_inode(&self, inode: &Inode, fh: Option<Fh>, mask: u32) -> Result<libc::statx, Errno> {
        if let Some(f) = fh.and_then(|fh| self.files.get(&fh).map(|f| f.value().clone())) {
            if f.inode.nodeid == inode.nodeid {
                return sys::statx(f.fd.as_fd(), mask).map_err(Errno::from);
            }
        }
        let fd = self.table.fd(inode)?;
        sys::statx(fd.fd(), mask).map_err(Errno::from)
    }
}

impl AttrOps for PassthroughFs {
    fn getattr(&self, ctx: &Context, nodeid: NodeId, fh: Option<Fh>) -> OpResult<Attr> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let st = self.stat_inode(&inode, fh, STATX_MASK)?;
        Ok(self.attr_reply(self.attr_of(&st, &inode)))
    }

    fn statx(&self, ctx: &Context, nodeid: NodeId, arg: &abi::StatxIn) -> OpResult<Statx> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fh = (arg.getattr_flags & abi::GETATTR_FH != 0).then_some(arg.fh);
        let st = self.stat_inode(&inode, fh, arg.sx_mask | STATX_MASK)?;
        let t = |t: libc::statx_timestamp| abi::SxTime {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_nsec,
            reserved: 0,
        };
        let stat = abi::Statx {
            // Only what the host actually filled in: the kernel trusts it.
            mask: st.stx_mask & (libc::STATX_BASIC_STATS | libc::STATX_BTIME),
            blksize: st.stx_blksize,
            attributes: st.stx_attributes,
            nlink: st.stx_nlink,
            uid: st.stx_uid,
            gid: st.stx_gid,
            mode: st.stx_mode,
            spare0: 0,
            ino: self.table.report_ino(inode.key),
            size: st.stx_size,
            blocks: st.stx_blocks,
            attributes_mask: st.stx_attributes_mask,
            atime: t(st.stx_atime),
            btime: t(st.stx_btime),
            ctime: t(st.stx_ctime),
            mtime: t(st.stx_mtime),
            rdev_major: st.stx_rdev_major,
            rdev_minor: st.stx_rdev_minor,
            dev_major: 0,
            dev_minor: 0,
            spare2: [0; 14],
        };
        Ok(Statx {
            stat,
            ttl: self.entry_ttl(),
        })
    }

    fn setattr(&self, ctx: &Context, nodeid: NodeId, arg: &abi::SetattrIn) -> OpResult<Attr> {
        use abi::SetattrValid as V;
        let inode = self.inode(nodeid, ctx.opcode)?;
        let valid = V::from_bits_retain(arg.valid);
        let file = if valid.contains(V::FH) {
            self.files.get(&arg.fh).map(|f| f.value().clone())
        } else {
            None
        };
        let file = file.filter(|f| f.inode.nodeid == inode.nodeid);
        let fd = self.table.fd(&inode)?;
        let proc = self.table.proc_self_fd();
        // HANDLE_KILLPRIV_V2 (see `killpriv.rs`): a chown's setgid rule
        // looks at the group the file had before.
        let chown_kill = if valid.contains(V::KILL_SUIDGID) && valid.intersects(V::UID | V::GID) {
            let st = self.sxid_stat(fd.fd())?;
            self.bits_to_kill(ctx, &st, killpriv::Caller::Chown)
        } else {
            0
        };
        let caller = self.as_caller(ctx, false)?;

        if valid.contains(V::MODE) {
            let mode = arg.mode & 0o7777;
            match &file {
                Some(f) => sys::fchmod(f.fd.as_fd(), mode)?,
                None => match sys::fchmod_empty(fd.fd(), mode) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOSYS)
                            && inode.kind != Kind::Symlink =>
                    {
                        // Before Linux 6.6: chmod through an open file.
                        let f = sys::reopen(proc, fd.fd(), libc::O_PATH)?;
                        let p =
                            sys::proc_self(&format!("fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)));
                        std::fs::set_permissions(
                            p,
                            std::os::unix::fs::PermissionsExt::from_mode(mode),
                        )?;
                    }
                    r => r?,
                },
            }
        }
        if valid.intersects(V::UID | V::GID) {
            let uid = if valid.contains(V::UID) {
                arg.uid
            } else {
                u32::MAX
            };
            let gid = if valid.contains(V::GID) {
                arg.gid
            } else {
                u32::MAX
            };
            sys::fchown_empty(fd.fd(), uid, gid)?;
        }
        if valid.contains(V::SIZE) {
            match &file {
                Some(f) if f.flags & libc::O_ACCMODE != libc::O_RDONLY => {
                    sys::ftruncate(f.fd.as_fd(), arg.size)?
                }
                _ => {
                    if inode.kind != Kind::Regular {
                        return Err(if inode.kind == Kind::Directory {
                            Errno::EISDIR
                        } else {
                            Errno::EINVAL
                        });
                    }
                    let f = sys::reopen(proc, fd.fd(), libc::O_WRONLY | libc::O_NONBLOCK)?;
                    sys::ftruncate(f.as_fd(), arg.size)?;
                }
            }
        }
        if valid.intersects(V::ATIME | V::MTIME) {
            sys::utimens_empty(fd.fd(), &setattr_times(arg))?;
        }
        // The kills, with the daemon's credentials (a caller acting as
        // itself could not chmod a file it only may write).
        drop(caller);
        let target = match &file {
            Some(f) => f.fd.as_fd(),
            None => fd.fd(),
        };
        self.kill_after_setattr(ctx, &inode, valid, target, chown_kill)?;
        let st = match &file {
            Some(f) => sys::statx(f.fd.as_fd(), STATX_MASK)?,
            None => sys::statx(fd.fd(), STATX_MASK)?,
        };
        Ok(self.attr_reply(self.attr_of(&st, &inode)))
    }

    fn readlink(&self, ctx: &Context, nodeid: NodeId) -> OpResult<Data> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        if inode.kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        let fd = self.table.fd(&inode)?;
        Ok(Data::Bytes(sys::readlink(fd.fd())?))
    }

    fn access(&self, ctx: &Context, nodeid: NodeId, mask: u32) -> Result<(), Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        // ACCESS checks the caller's rights whatever default_permissions says.
        if ctx.uid == abi::INVALID_UIDGID {
            return Err(Errno::EPERM);
        }
        let groups = if ctx.groups.is_empty() {
            self.groups.groups_of(ctx.pid)
        } else {
            ctx.groups.clone()
        };
        let _g = credentials::become_caller(ctx.uid, ctx.gid, &groups)?;
        sys::access_empty(fd.fd(), mask as i32).map_err(Errno::from)
    }

    fn statfs(&self, ctx: &Context, nodeid: NodeId) -> Result<abi::Kstatfs, Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        let s = sys::fstatfs(fd.fd())?;
        Ok(abi::Kstatfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }
}

/// The utimensat(2) times a SETATTR asks for: given, now, or left alone.
fn setattr_times(arg: &abi::SetattrIn) -> [libc::timespec; 2] {
    use abi::SetattrValid as V;
    let valid = V::from_bits_retain(arg.valid);
    let ts = |set: V, now: V, s: u64, ns: u32| libc::timespec {
        tv_sec: if valid.contains(set) && !valid.contains(now) {
            s as i64
        } else {
            0
        },
        tv_nsec: if !valid.contains(set) {
            libc::UTIME_OMIT
        } else if valid.contains(now) {
            libc::UTIME_NOW
        } else {
            ns as i64
        },
    };
    [
        ts(V::ATIME, V::ATIME_NOW, arg.atime, arg.atimensec),
        ts(V::MTIME, V::MTIME_NOW, arg.mtime, arg.mtimensec),
    ]
}
