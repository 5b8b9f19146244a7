//! Killing setuid/setgid on write, truncate and chown with
//! `FUSE_HANDLE_KILLPRIV_V2`.
//!
//! With V2 the kernel sets `S_NOSEC` on an inode once a write found nothing
//! to kill, so it stops asking GETXATTR `security.capability` before every
//! write; in exchange it leaves clearing setuid/setgid to the server. A
//! root daemon has CAP_FSETID, so the host never clears them for it: the
//! daemon clears them itself, here, by the VFS rules
//! (`setattr_should_drop_suidgid`, fs/attr.c), in these requests:
//!
//! - WRITE with `FUSE_WRITE_KILL_SUIDGID`, OPEN with `FUSE_OPEN_KILL_SUIDGID`
//!   (O_TRUNC) and SETATTR size with `FATTR_KILL_SUIDGID`: the kernel sets
//!   them when the caller lacks CAP_FSETID. Setuid goes; setgid goes if the
//!   group may execute, or if the caller is not in the file's group.
//! - SETATTR uid/gid with `FATTR_KILL_SUIDGID` (any caller): the host's
//!   chown as root clears setuid and a group-executable setgid itself; the
//!   daemon adds a non-executable setgid when a caller other than root is
//!   not in the file's (old) group, as `setattr_should_drop_sgid`.
//! - An *empty* SETATTR (no attribute to change): what
//!   `file_remove_privs()` sends under V2 when a write never reaches the
//!   daemon (passthrough write, fallocate, copy_file_range: fuse_setattr()
//!   strips ATTR_KILL_SUID/SGID and ATTR_MODE, and ATTR_FORCE still makes
//!   fuse_do_setattr() send a request) — the only sign of those writes the
//!   daemon ever gets. It carries no flag (chown(-1, -1) sends the same):
//!   see [`PassthroughFs::kill_on_empty_setattr`] for what the daemon
//!   concludes from the header.
//!
//! `security.capability` needs nothing here: the kernel removes it with
//! REMOVEXATTR before the SETATTR (`security_inode_killpriv` under
//! ATTR_KILL_PRIV), and a write on the host removes it there whatever the
//! writer's capabilities (`cap_inode_need_killpriv` is not gated).

use std::os::fd::BorrowedFd;

use super::*;

/// What the caller is known to lack, for the setgid rule.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// The kernel says the caller lacks CAP_FSETID (the KILL flags of
    /// WRITE, OPEN and SETATTR size), or the daemon concluded so.
    Unprivileged,
    /// A chown (`FATTR_KILL_SUIDGID` with uid/gid, or chown(-1, -1)):
    /// setuid always goes; the caller's CAP_FSETID is unknown, uid 0
    /// counts as holding it.
    Chown,
}

/// A SETATTR that changes nothing (see the module's doc): no bit but FH,
/// LOCKOWNER or CTIME (the ctime of a chown(-1, -1) with the writeback
/// cache; nothing else sends CTIME alone).
pub(super) fn is_empty_setattr(valid: abi::SetattrValid) -> bool {
    use abi::SetattrValid as V;
    !valid.intersects(
        V::MODE
            | V::UID
            | V::GID
            | V::SIZE
            | V::ATIME
            | V::MTIME
            | V::ATIME_NOW
            | V::MTIME_NOW
            | V::KILL_SUIDGID,
    )
}

const SXID_MASK: u32 = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID | libc::STATX_GID;

impl PassthroughFs {
    /// Whether the caller of `ctx` is in group `gid` (its fsgid, the groups
    /// the kernel sent, or its supplementary groups from /proc).
    fn caller_in_group(&self, ctx: &Context, gid: u32) -> bool {
        ctx.gid == gid || ctx.groups.contains(&gid) || self.groups.groups_of(ctx.pid).contains(&gid)
    }

    /// The mode bits a write/truncate/chown by `ctx` clears on a file in
    /// state `st` (0 if none, or not a regular file).
    pub(super) fn bits_to_kill(&self, ctx: &Context, st: &libc::statx, who: Caller) -> u32 {
        let mode = st.stx_mode as u32;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return 0;
        }
        let mut kill = mode & libc::S_ISUID;
        if mode & libc::S_ISGID != 0 {
            let privileged = who == Caller::Chown && ctx.uid == 0;
            if mode & libc::S_IXGRP != 0 || (!privileged && !self.caller_in_group(ctx, st.stx_gid))
            {
                kill |= libc::S_ISGID;
            }
        }
        kill
    }

    /// statx of `fd` (open or O_PATH) for the kill rules.
    pub(super) fn sxid_stat(&self, fd: BorrowedFd<'_>) -> Result<libc::statx, Errno> {
        sys::statx(fd, SXID_MASK).map_err(Errno::from)
    }

    /// Clears `kill` from the mode of `fd` (an open file or an O_PATH fd),
    /// whose state `st` the caller just read, with the daemon's
    /// credentials. Returns whether the mode changed.
    fn clear_mode_bits(
        &self,
        fd: BorrowedFd<'_>,
        st: &libc::statx,
        kill: u32,
    ) -> Result<bool, Errno> {
        let mode = st.stx_mode as u32 & 0o7777;
        if mode & kill == 0 {
            return Ok(false);
        }
        let new = mode & !kill;
        match sys::fchmod(fd, new) {
            // An O_PATH fd: fchmod(2) answers EBADF.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => sys::fchmod_empty(fd, new)?,
            r => r?,
        }
        Ok(true)
    }

    /// A write, truncate or O_TRUNC open by a caller the kernel says lacks
    /// CAP_FSETID: clears what the VFS would. Returns whether the mode
    /// changed.
    pub(super) fn kill_suidgid(&self, ctx: &Context, fd: BorrowedFd<'_>) -> Result<bool, Errno> {
        let st = self.sxid_stat(fd)?;
        let kill = self.bits_to_kill(ctx, &st, Caller::Unprivileged);
        self.clear_mode_bits(fd, &st, kill)
    }

    /// Whether an open(O_TRUNC) must clear setuid/setgid. With V2 the
    /// kernel says so (FUSE_OPEN_KILL_SUIDGID: the caller lacks
    /// CAP_FSETID). Without it the kernel's own kill never comes: its
    /// truncate is the OPEN's (atomic_o_trunc), and fuse_do_setattr() drops
    /// the kill-privileges SETATTR of an open's truncate without sending
    /// it; so a caller other than uid 0 is taken as lacking CAP_FSETID, as
    /// for the empty SETATTR below.
    pub(super) fn open_trunc_kills(&self, ctx: &Context, arg: &abi::OpenIn) -> bool {
        if self.killpriv_v2.load(Ordering::Relaxed) {
            arg.open_flags & abi::OPEN_KILL_SUIDGID != 0
        } else {
            ctx.uid != 0
        }
    }

    /// The empty SETATTR of `file_remove_privs()` (see the module's doc).
    /// The kernel sends it in three cases, told apart by what the daemon
    /// sees (the header has no capabilities):
    ///
    /// 1. a write (passthrough, fallocate, copy_file_range) by a caller
    ///    without CAP_FSETID, on a file with setuid or a setgid to kill:
    ///    kill them as an unprivileged write does;
    /// 2. a write by any caller on a file with `security.capability`: the
    ///    kernel removed it with REMOVEXATTR just before (`cap_removed`),
    ///    and a privileged writer keeps setuid/setgid;
    /// 3. chown(-1, -1): setuid goes whoever the caller is, setgid if the
    ///    group may execute (or, for a caller other than root, if it is not
    ///    in the file's group).
    ///
    /// So: a caller other than uid 0 is taken as lacking CAP_FSETID (1 or
    /// 3: the same bits go), but only if it owns the file or may write it
    /// (a writable open of the inode exists: every write comes through
    /// one, and every open reaches the daemon, since V2 is not negotiated
    /// with inode passthrough), while a chown(-1, -1) by another user is
    /// EPERM on a native filesystem and clears nothing here.
    /// uid 0 is taken as holding CAP_FSETID: nothing goes after a
    /// REMOVEXATTR of `security.capability` (2), else setuid and a
    /// group-executable setgid go (3, or 1 for a root without
    /// CAP_FSETID).
    ///
    /// What this gets wrong, all rare: a root chown(-1, -1) of a file with
    /// both setuid and `security.capability` keeps setuid; a root without
    /// CAP_FSETID keeps a setgid without group execute, and keeps both
    /// bits when writing a file with `security.capability`; a caller
    /// other than root holding CAP_FSETID loses them where it would not.
    pub(super) fn kill_on_empty_setattr(
        &self,
        ctx: &Context,
        inode: &Inode,
        fd: BorrowedFd<'_>,
        cap_removed: bool,
    ) -> Result<bool, Errno> {
        if inode.kind != Kind::Regular || (ctx.uid == 0 && cap_removed) {
            return Ok(false);
        }
        let st = self.sxid_stat(fd)?;
        let who = if ctx.uid == 0 {
            Caller::Chown
        } else {
            Caller::Unprivileged
        };
        let kill = self.bits_to_kill(ctx, &st, who);
        if kill == 0 {
            return Ok(false);
        }
        let may_write =
            ctx.uid == 0 || st.stx_uid == ctx.uid || self.any_writable_open(inode).is_some();
        if !may_write {
            return Ok(false);
        }
        self.clear_mode_bits(fd, &st, kill)
    }

    /// The kills a SETATTR asks for, once its changes are made: a
    /// truncate's (`FATTR_KILL_SUIDGID` with the size), a chown's
    /// (`chown_kill`, from the mode before the chown), or the empty
    /// SETATTR's. `target` is the request's open file, or the inode's fd.
    pub(super) fn kill_after_setattr(
        &self,
        ctx: &Context,
        inode: &Inode,
        valid: abi::SetattrValid,
        target: BorrowedFd<'_>,
        chown_kill: u32,
    ) -> Result<(), Errno> {
        use abi::SetattrValid as V;
        if valid.contains(V::KILL_SUIDGID) && valid.contains(V::SIZE) {
            self.kill_suidgid(ctx, target)?;
        }
        if chown_kill != 0 {
            // The mode after the chown (the host's may have cleared some).
            let st = self.sxid_stat(target)?;
            self.clear_mode_bits(target, &st, chown_kill)?;
        }
        if is_empty_setattr(valid) {
            let cap_removed = self.cap_removed.remove(&inode.nodeid).is_some();
            self.kill_on_empty_setattr(ctx, inode, target, cap_removed)?;
        } else if valid.intersects(V::MODE | V::UID | V::GID | V::SIZE) {
            // The mark tells about the empty SETATTR that follows the
            // REMOVEXATTR (a flush of times may come between them, with
            // the writeback cache), not about a later one.
            self.cap_removed.remove(&inode.nodeid);
        }
        Ok(())
    }

    /// Remembers that the kernel removed `security.capability` of
    /// `nodeid` (the REMOVEXATTR before the empty SETATTR of a write).
    pub(super) fn note_cap_removed(&self, nodeid: NodeId) {
        if self.cap_removed.len() > 4096 {
            self.cap_removed.clear();
        }
        self.cap_removed.insert(nodeid, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::dispatch::{negotiate, tests::offer};

    /// V2 on stock kernels (I/O passthrough), never with inode passthrough,
    /// and not with `--no-killpriv-v2`.
    #[test]
    fn negotiated_unless_inode_passthrough_or_switched_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::for_source(dir.path().to_path_buf());
        let fs = PassthroughFs::new(cfg.clone()).unwrap();
        let stock = InitFlags::PASSTHROUGH
            | InitFlags::HANDLE_KILLPRIV_V2
            | InitFlags::MAX_PAGES
            | InitFlags::INIT_EXT;
        let (n, _) = negotiate(&fs.wants(), &offer(stock), 1 << 20, 4096);
        assert!(n.has(InitFlags::PASSTHROUGH | InitFlags::HANDLE_KILLPRIV_V2));
        let patched = stock | InitFlags::PASSTHROUGH_INO;
        let (n, _) = negotiate(&fs.wants(), &offer(patched), 1 << 20, 4096);
        assert!(n.has(InitFlags::PASSTHROUGH_INO));
        assert!(!n.has(InitFlags::HANDLE_KILLPRIV_V2));
        cfg.killpriv_v2 = false;
        let fs = PassthroughFs::new(cfg).unwrap();
        let (n, _) = negotiate(&fs.wants(), &offer(stock), 1 << 20, 4096);
        assert!(!n.has(InitFlags::HANDLE_KILLPRIV_V2));
    }

    #[test]
    fn empty_setattr() {
        use abi::SetattrValid as V;
        assert!(is_empty_setattr(V::empty()));
        assert!(is_empty_setattr(V::FH | V::LOCKOWNER | V::CTIME));
        for v in [
            V::MODE,
            V::UID,
            V::SIZE,
            V::MTIME,
            V::ATIME_NOW,
            V::KILL_SUIDGID,
        ] {
            assert!(!is_empty_setattr(v | V::FH));
        }
    }
}
