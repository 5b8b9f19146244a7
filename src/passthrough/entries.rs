//! Operations on names: lookup, mknod, mkdir, symlink, link, unlink, rmdir,
//! rename, create, tmpfile.
//!
//! Every name is one checked path component opened relative to its parent's
//! O_PATH fd with O_NOFOLLOW, so nothing resolves outside SOURCE. Inodes are
//! created with the caller's credentials (the host sets owner, group, setgid
//! inheritance and default ACLs); the new entry is then looked up as root.

use std::ffi::CStr;
use std::os::fd::AsFd;

use super::*;
use crate::credentials::UmaskGuard;
use crate::media;

impl PassthroughFs {
    fn dir_inode(&self, nodeid: NodeId, op: Opcode) -> Result<Arc<Inode>, Errno> {
        let p = self.inode(nodeid, op)?;
        if p.kind != Kind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(p)
    }

    /// Looks up a name just created in `parent` (as root: the caller has
    /// already been allowed to create it).
    fn lookup_created(&self, parent: &Inode, name: &CStr) -> Result<Entry, Errno> {
        let looked = self.table.lookup(parent, name)?;
        Ok(self.make_entry(&looked, parent, name))
    }

    /// The flow shared by MKNOD, MKDIR and SYMLINK: make the node in
    /// `parent` as the caller (with the request's umask), then look it up.
    fn make_node(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        umask: Option<u32>,
        make: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> sys::Result<()>,
    ) -> Result<Entry, Errno> {
        check_name(name)?;
        self.dir_changed(parent);
        let p = self.dir_inode(parent, ctx.opcode)?;
        self.media_may_create(ctx, &p, name)?;
        {
            let pfd = self.table.fd(&p)?;
            let _u = UmaskGuard::set(umask.and_then(|m| self.umask(m)));
            let _g = self.as_caller(ctx, true)?;
            make(pfd.fd())?;
        }
        self.media_event(ctx, "create", &p, name, None);
        self.lookup_created(&p, name)
    }

    /// After a rename of `from` to `to`: the moved inode's link follows it;
    /// the inode it replaced loses its name, or, with RENAME_EXCHANGE, takes
    /// `from`. (Renaming a name onto another name of the same inode changes
    /// nothing, as rename(2) does.)
    fn move_links(
        &self,
        moved: Option<Arc<Inode>>,
        replaced: Option<Arc<Inode>>,
        from: (&Inode, &CStr),
        to: (&Inode, &CStr),
        exchange: bool,
    ) {
        if let (Some(m), Some(r)) = (&moved, &replaced) {
            if Arc::ptr_eq(m, r) {
                return;
            }
        }
        if let Some(r) = replaced {
            if exchange {
                self.table.set_link(&r, from.0.nodeid, from.1.to_bytes());
            } else {
                self.table.drop_link(&r, to.0.nodeid, to.1.to_bytes());
            }
        }
        if let Some(m) = moved {
            self.table.set_link(&m, to.0.nodeid, to.1.to_bytes());
        }
    }

    /// Registers the inode of a file just created and opened, and builds
    /// the CREATE/TMPFILE reply.
    fn finish_create(
        &self,
        parent: &Inode,
        name: &CStr,
        file: OwnedFd,
        flags: i32,
    ) -> Result<Created, Errno> {
        // The O_PATH fd comes from the open file itself, so it is certainly
        // the inode we created, whatever happened to the name meanwhile.
        let opath = self.table.with_fd_headroom(|| {
            sys::reopen(self.table.proc_self_fd(), file.as_fd(), libc::O_PATH)
        })?;
        let looked = self.table.insert_fd(opath)?;
        let entry = self.make_entry(&looked, parent, name);
        match self.finish_open(looked.inode, file, flags, None) {
            Ok(open) => Ok(Created { entry, open }),
            Err(e) => {
                self.forget_one(entry.nodeid, 1);
                Err(e)
            }
        }
    }

    /// UNLINK (`flags` 0) and RMDIR (`AT_REMOVEDIR`).
    fn remove_name(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        flags: i32,
    ) -> Result<(), Errno> {
        check_name(name)?;
        self.dir_changed(parent);
        let p = self.dir_inode(parent, ctx.opcode)?;
        let pfd = self.table.fd(&p)?;
        let stored = self.media_stored_name(pfd.fd(), name)?;
        let name = stored.as_deref().unwrap_or(name);
        self.media_check_visible(ctx, &p, pfd.fd(), name)?;
        // The inode keeps its O_PATH fd until the kernel's FORGET when this
        // is its last name: a racing open that already found it must still
        // succeed, as it would natively, and the kernel's writeback may
        // still send SETATTR for it (a handle cannot reopen it then).
        let victim = self.table.hold_victim(pfd.fd(), name);
        let gone = self.table.known_at(pfd.fd(), name);
        let r = self
            .as_caller(ctx, false)
            .and_then(|_g| sys::unlinkat(pfd.fd(), name, flags).map_err(Errno::from));
        if let Some(v) = victim {
            self.table.settle_victim(v, r.is_ok());
        }
        r?;
        if let Some(inode) = gone {
            self.table.drop_link(&inode, p.nodeid, name.to_bytes());
        }
        self.media_event(ctx, "delete", &p, name, None);
        Ok(())
    }
}

impl PassthroughFs {
    /// With inode passthrough the kernel keeps the policy's mask on an
    /// inode for its life (kernel-patches/0001: no way to change it), so a
    /// rename or link that would put a known inode, or a directory's
    /// subtree, where the policy decides another mask answers EXDEV: tools
    /// copy instead, and the copy gets the new place's mask (overlayfs
    /// answers EXDEV for the directories it cannot move, too). Without
    /// inode passthrough each open decides by the current path.
    fn check_move(&self, inode: &Inode, to: (&Inode, &CStr)) -> Result<(), Errno> {
        if self.backing.mode() != backing::Mode::Inode || !self.cfg.policy.needs_paths() {
            return Ok(());
        }
        let old = inode.backing.lock().decision;
        let new = self.cfg.policy.decide(&self.table, to.0, to.1);
        let old_path = self.table.relative_path(inode);
        let new_path = self.cfg.policy.relative_path(&self.table, to.0, to.1);
        let keeps = self.cfg.policy.move_keeps_masks(
            inode.kind,
            (old, old_path.as_deref()),
            (new, new_path.as_deref()),
        );
        if keeps {
            Ok(())
        } else {
            tracing::debug!(
                "rename/link of {:?} to {:?}: another passthrough mask there, EXDEV",
                old_path,
                new_path
            );
            Err(Errno::EXDEV)
        }
    }
}

impl EntryOps for PassthroughFs {
    fn lookup(&self, ctx: &Context, parent: NodeId, name: &CStr) -> Result<Entry, Errno> {
        check_name(name)?;
        let p = self.dir_inode(parent, ctx.opcode)?;
        let media_rel = self.media_dir_rel(&p);
        let pfd = self.table.fd(&p)?;
        let open = |n: &CStr| {
            // Without default_permissions the caller needs search permission.
            let _g = self.as_caller(ctx, false)?;
            self.table
                .with_fd_headroom(|| sys::openat(pfd.fd(), n, libc::O_PATH | libc::O_NOFOLLOW, 0))
        };
        let mut found = open(name);
        // Entries whose visibility depends on who asks are never cached.
        let mut volatile = false;
        let mut real_name: Option<std::ffi::CString> = None;
        if let (Err(Errno::ENOENT), Some(mp), Some(rel)) = (&found, self.media(), &media_rel) {
            if mp.case_insensitive_dir(rel) {
                if let Some(real) = self.find_case_insensitive(pfd.fd(), name)? {
                    found = open(&real);
                    volatile = true;
                    real_name = Some(real);
                }
            }
        }
        let fd = match found {
            Ok(fd) => fd,
            // Cache the absence as long as anything else (nodeid 0), except
            // where names are policed per caller.
            Err(Errno::ENOENT) if !self.cfg.nocache && media_rel.is_none() => {
                return Ok(Entry::negative(self.entry_ttl()))
            }
            Err(e) => return Err(e),
        };
        let name = real_name.as_deref().unwrap_or(name);
        if let (Some(mp), Some(rel)) = (self.media(), &media_rel) {
            let st = sys::statx(fd.as_fd(), libc::STATX_TYPE | libc::STATX_UID)?;
            let is_dir = st.stx_mode as u32 & libc::S_IFMT == libc::S_IFDIR;
            match mp.visibility(ctx.uid, rel, name.to_bytes(), st.stx_uid, is_dir) {
                media::Visibility::Hidden => return Err(Errno::ENOENT),
                media::Visibility::Visible { volatile: v } => volatile |= v,
            }
        }
        drop(pfd);
        let looked = self.table.insert_fd(fd)?;
        let mut e = self.make_entry(&looked, &p, name);
        if volatile {
            e.entry_ttl = Duration::ZERO;
        }
        Ok(e)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::MknodIn,
    ) -> Result<Entry, Errno> {
        self.make_node(ctx, parent, name, Some(arg.umask), |dir| {
            sys::mknodat(dir, name, arg.mode, arg.rdev as u64)
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::MkdirIn,
    ) -> Result<Entry, Errno> {
        self.make_node(ctx, parent, name, Some(arg.umask), |dir| {
            sys::mkdirat(dir, name, arg.mode & 0o7777)
        })
    }

    fn symlink(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        target: &CStr,
    ) -> Result<Entry, Errno> {
        // Symlink modes are fixed (0777): no umask applies.
        self.make_node(ctx, parent, name, None, |dir| {
            sys::symlinkat(target, dir, name)
        })
    }

    fn link(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        newparent: NodeId,
        newname: &CStr,
    ) -> Result<Entry, Errno> {
        check_name(newname)?;
        self.dir_changed(newparent);
        let inode = self.inode(nodeid, ctx.opcode)?;
        let np = self.dir_inode(newparent, ctx.opcode)?;
        if inode.kind == Kind::Directory {
            return Err(Errno::EPERM);
        }
        self.media_may_create(ctx, &np, newname)?;
        self.check_move(&inode, (&np, newname))?;
        {
            let fd = self.table.fd(&inode)?;
            let npfd = self.table.fd(&np)?;
            if self.cfg.default_permissions || ctx.uid == 0 {
                // The kernel checked; AT_EMPTY_PATH needs our CAP_DAC_READ_SEARCH.
                sys::link_empty_path(fd.fd(), npfd.fd(), newname)?;
            } else if inode.kind == Kind::Regular {
                let _g = self.as_caller(ctx, false)?;
                sys::link_proc(self.table.proc_self_fd(), fd.fd(), npfd.fd(), newname)?;
            } else {
                // Symlinks and special files cannot go through /proc (it
                // would follow them): check the caller's right to write the
                // directory, then link as ourselves.
                {
                    let _g = self.as_caller(ctx, false)?;
                    sys::access_empty(npfd.fd(), libc::W_OK | libc::X_OK)?;
                }
                sys::link_empty_path(fd.fd(), npfd.fd(), newname)?;
            }
        }
        self.media_event(ctx, "create", &np, newname, None);
        self.lookup_created(&np, newname)
    }

    fn unlink(&self, ctx: &Context, parent: NodeId, name: &CStr) -> OpResult<()> {
        self.remove_name(ctx, parent, name, 0)
    }

    fn rmdir(&self, ctx: &Context, parent: NodeId, name: &CStr) -> OpResult<()> {
        self.remove_name(ctx, parent, name, libc::AT_REMOVEDIR)
    }

    fn forget(&self, nodeid: NodeId, nlookup: u64) {
        self.forget_one(nodeid, nlookup)
    }

    fn rename(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        newparent: NodeId,
        newname: &CStr,
        flags: u32,
    ) -> Result<(), Errno> {
        check_name(name)?;
        check_name(newname)?;
        self.dir_changed(parent);
        self.dir_changed(newparent);
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        let p = self.dir_inode(parent, ctx.opcode)?;
        let np = self.dir_inode(newparent, ctx.opcode)?;
        let pfd = self.table.fd(&p)?;
        let npfd = self.table.fd(&np)?;
        let stored = self.media_stored_name(pfd.fd(), name)?;
        let name = stored.as_deref().unwrap_or(name);
        if self.media().is_some() {
            self.media_check_visible(ctx, &p, pfd.fd(), name)?;
            // Replacing a file the caller cannot see would destroy it unseen.
            if self
                .media_check_visible(ctx, &np, npfd.fd(), newname)
                .is_err()
            {
                return Err(Errno::EACCES);
            }
            self.media_may_create(ctx, &np, newname)?;
        }
        let moved = self.table.known_at(pfd.fd(), name);
        let replaced = self.table.known_at(npfd.fd(), newname);
        if let Some(m) = &moved {
            self.check_move(m, (&np, newname))?;
        }
        if let (Some(r), true) = (&replaced, flags & libc::RENAME_EXCHANGE != 0) {
            self.check_move(r, (&p, name))?;
        }
        // A target replaced by the rename loses a name (see remove_name).
        let victim = if flags & (libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) == 0 {
            self.table.hold_victim(npfd.fd(), newname)
        } else {
            None
        };
        // A whiteout is a new inode: it belongs to the caller.
        let r = self
            .as_caller(ctx, flags & libc::RENAME_WHITEOUT != 0)
            .and_then(|_g| {
                sys::renameat2(pfd.fd(), name, npfd.fd(), newname, flags).map_err(Errno::from)
            });
        if let Some(v) = victim {
            self.table.settle_victim(v, r.is_ok());
        }
        r?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        self.move_links(moved, replaced, (&p, name), (&np, newname), exchange);
        self.media_event(ctx, "rename", &p, name, Some((&np, newname)));
        Ok(())
    }

    fn create(
        &self,
        ctx: &Context,
        parent: NodeId,
        name: &CStr,
        arg: &abi::CreateIn,
    ) -> OpResult<Created> {
        check_name(name)?;
        self.dir_changed(parent);
        let p = self.dir_inode(parent, ctx.opcode)?;
        self.media_may_create(ctx, &p, name)?;
        let flags = self.host_open_flags(arg.flags as i32)
            | libc::O_CREAT
            | (arg.flags as i32 & libc::O_EXCL);
        let file = {
            let pfd = self.table.fd(&p)?;
            let _u = UmaskGuard::set(self.umask(arg.umask));
            let _g = self.as_caller(ctx, true)?;
            // O_NOFOLLOW: a symlink planted at the name is never followed.
            self.table.with_fd_headroom(|| {
                sys::openat(pfd.fd(), name, flags | libc::O_NOFOLLOW, arg.mode & 0o7777)
            })?
        };
        self.media_event(ctx, "create", &p, name, None);
        self.finish_create(&p, name, file, arg.flags as i32)
    }

    fn tmpfile(&self, ctx: &Context, parent: NodeId, arg: &abi::CreateIn) -> OpResult<Created> {
        let p = self.dir_inode(parent, ctx.opcode)?;
        let flags = self.host_open_flags(arg.flags as i32) | libc::O_TMPFILE;
        let file = {
            let pfd = self.table.fd(&p)?;
            let _u = UmaskGuard::set(self.umask(arg.umask));
            let _g = self.as_caller(ctx, true)?;
            self.table
                .with_fd_headroom(|| sys::openat(pfd.fd(), c".", flags, arg.mode & 0o7777))?
        };
        self.finish_create(&p, c"", file, arg.flags as i32)
    }
}
