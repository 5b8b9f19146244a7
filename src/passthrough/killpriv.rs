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
//!   daemon ever gets. It carries no flag: see [`PassthroughFs::kill_on_empty_setattr`]
//!   for what the daemon concludes from the header.
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
    /// A chown (`FATTR_KILL_SUIDGID` with uid/gid): setuid always goes;
    /// the caller's CAP_FSETID is unknown, uid 0 counts as holding it.
    Chown,
}

/// The `fuse_setattr_in.valid` bits that change an attribute.
fn changes_something(valid: abi::SetattrValid) -> bool {
    use abi::SetattrValid as V;
    valid.intersects(
        V::MODE
            | V::UID
            | V::GID
            | V::SIZE
            | V::ATIME
            | V::MTIME
            | V::ATIME_NOW
            | V::MTIME_NOW
            | V::CTIME
            | V::KILL_SUIDGID,
    )
}

/// A SETATTR that changes nothing: see the module's doc.
pub(super) fn is_empty_setattr(valid: abi::SetattrValid) -> bool {
    !changes_something(valid)
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
    /// with the daemon's credentials. Returns whether the mode changed.
    pub(super) fn clear_mode_bits(&self, fd: BorrowedFd<'_>, kill: u32) -> Result<bool, Errno> {
        if kill == 0 {
            return Ok(false);
        }
        let st = self.sxid_stat(fd)?;
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
        self.clear_mode_bits(fd, kill)
    }

    /// The empty SETATTR of `file_remove_privs()` (see the module's doc):
    /// `inode`'s setuid/setgid go by the rule of an unprivileged write,
    /// under two conditions the header lets the daemon check:
    ///
    /// - the caller is not uid 0. The kernel sends the request for a
    ///   caller without CAP_FSETID whose write must clear the bits, but
    ///   also for any caller when the file has `security.capability` (then
    ///   a root writer keeps setuid), and for chown(-1, -1). The header
    ///   has no capabilities: uid 0 is taken as holding CAP_FSETID, any
    ///   other uid as not.
    /// - the caller owns the file, or may write it (a writable open of the
    ///   inode exists, or write access as the caller): a write needs a
    ///   writable file, so this is always true of a real write, while a
    ///   chown(-1, -1) by another user (EPERM on a native filesystem)
    ///   clears nothing.
    ///
    /// What this gets wrong, both rare: a root caller without CAP_FSETID
    /// (e.g. `capsh --drop=cap_fsetid`) keeps the bits through a
    /// passthrough write, and a root chown(-1, -1) keeps setuid, where a
    /// native filesystem clears them; a caller other than root holding
    /// CAP_FSETID loses them where it would not.
    pub(super) fn kill_on_empty_setattr(
        &self,
        ctx: &Context,
        inode: &Inode,
        fd: BorrowedFd<'_>,
    ) -> Result<bool, Errno> {
        if ctx.uid == 0 || inode.kind != Kind::Regular {
            return Ok(false);
        }
        let st = self.sxid_stat(fd)?;
        let kill = self.bits_to_kill(ctx, &st, Caller::Unprivileged);
        if kill == 0 {
            return Ok(false);
        }
        let may_write = st.stx_uid == ctx.uid
            || self.any_writable_open(inode).is_some()
            || self.caller_may_write(ctx, fd);
        if !may_write {
            return Ok(false);
        }
        self.clear_mode_bits(fd, kill)
    }

    /// Write access to `fd`'s inode as the caller (faccessat as ctx).
    fn caller_may_write(&self, ctx: &Context, fd: BorrowedFd<'_>) -> bool {
        if ctx.uid == abi::INVALID_UIDGID || ctx.gid == abi::INVALID_UIDGID {
            return false;
        }
        let groups = self.groups.groups_of(ctx.pid);
        let Ok(_g) = credentials::become_caller(ctx.uid, ctx.gid, &groups) else {
            return false;
        };
        sys::access_empty(fd, libc::W_OK).is_ok()
    }
}
