//! Open files: open, read, write, flush, release, fsync, fallocate, lseek,
//! copy_file_range.
//!
//! Every open gets a real fd of its own (reopened from the inode's O_PATH
//! fd through /proc/self/fd, never by path). With kernel passthrough the
//! open also carries the inode's backing id and the kernel does the reads,
//! writes and mmap itself; the daemon's fd then serves fsync, fallocate,
//! lseek, copy_file_range and locks.

use std::os::fd::AsFd;

use super::*;

/// `__FMODE_EXEC`: the open flag of the kernel's own opens for execve and
/// uselib (`do_open_execat`). open(2) and openat2 drop or refuse it, so a
/// caller cannot set it.
const FMODE_EXEC: i32 = 0x20;

impl PassthroughFs {
    /// Flags for the daemon's own fd of an open.
    pub(super) fn host_open_flags(&self, flags: i32) -> i32 {
        // O_NOFOLLOW would stop the /proc reopen; O_DIRECT would need
        // aligned buffers we do not have; O_NOATIME fails for non-owners;
        // O_APPEND is applied per write (RWF_APPEND), because writes
        // carrying explicit offsets (mmap writeback) must not be appended.
        let mut f = flags
            & !(libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOCTTY
                | libc::O_NOFOLLOW
                | libc::O_DIRECT
                | libc::O_NOATIME
                | FMODE_EXEC)
            & !libc::O_APPEND;
        if self.writeback.load(Ordering::Relaxed) && f & libc::O_ACCMODE == libc::O_WRONLY {
            // The kernel reads to fill partial pages of a write-only file.
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f
    }

    /// The open of an execve where SOURCE checks permissions as the caller
    /// (`nodefault_permissions`). execve needs execute permission, not read
    /// (`do_open_execat` asks MAY_EXEC only), but a read-only open made as
    /// the caller needs read: an execute-only binary (mode 0711) would not
    /// run (fstests generic/126). So the host checks X_OK as the caller, and
    /// the daemon opens the file as itself. Where other users can call
    /// (`allow_other`) the kernel checks too, and keeps the process of an
    /// unreadable binary undumpable (`would_dump()` asks MAY_READ); without
    /// it, the caller is the daemon's own user.
    fn open_to_exec(&self, ctx: &Context, inode: &Inode, flags: i32) -> Result<OwnedFd, Errno> {
        let fd = self.table.fd(inode)?;
        {
            let _g = self.as_caller(ctx, false)?;
            sys::access_empty(fd.fd(), libc::X_OK).map_err(Errno::from)?;
        }
        self.open_noatime_first(inode, flags, |f| self.reopen(fd.fd(), f))
    }

    /// Registers an open file and decides how the kernel does its I/O.
    /// A redacted open is served by the daemon, never passed through.
    pub(super) fn finish_open(
        &self,
        inode: Arc<Inode>,
        file: OwnedFd,
        flags: i32,
        redact: Option<Arc<Vec<std::ops::Range<u64>>>>,
    ) -> Result<Open, Errno> {
        type F = abi::OpenOutFlags;
        let mut out = F::empty();
        let mut backing_id = BackingId::NONE;
        if redact.is_some() {
            // The kernel lets no plain open next to a passthrough one, and
            // passthrough would bypass the redaction: refuse until they close.
            if inode.backing.lock().opens > 0 {
                return Err(Errno(libc::EBUSY));
            }
            let fh = self.add_file(OpenFile {
                fd: file,
                inode,
                flags,
                backing: false,
                dir: None,
                redact,
            });
            return Ok(Open {
                fh,
                flags: F::DIRECT_IO,
                backing_id: BackingId::NONE,
            });
        }
        if inode.kind == Kind::Regular {
            let mask = self.mask_of(&inode);
            let opath = self.table.fd(&inode)?;
            if let Some(id) = self
                .backing
                .acquire_for_open(&inode, opath.fd(), file.as_fd(), mask)
            {
                out |= F::PASSTHROUGH;
                backing_id = id;
            }
        }
        let passthrough = !backing_id.is_none();
        // O_DIRECT and --direct-io opens send read/write to the daemon
        // (with passthrough, mmap still goes to the backing file).
        if self.cfg.direct_io || flags & libc::O_DIRECT != 0 {
            out |= F::DIRECT_IO | F::PARALLEL_DIRECT_WRITES;
        }
        if !passthrough && !self.cfg.nocache {
            // Keep pages across opens; AUTO_INVAL_DATA drops them when the
            // file changes under us.
            out |= F::KEEP_CACHE;
        }
        if self.cfg.nocache && flags & libc::O_ACCMODE == libc::O_RDONLY && !passthrough {
            out |= F::NOFLUSH;
        }
        // With the kernel keeping the locks (`--locks kernel`), FLUSH has
        // nothing to do but forward close(2) to a filesystem that acts on
        // it, and tell the kernel of writes through a shared mmap of a
        // read-write open: where neither applies, close(2) sends nothing.
        if self.kernel_locks.load(Ordering::Relaxed)
            && flags & libc::O_ACCMODE != libc::O_RDWR
            && self.flush_is_noop(&inode, file.as_fd())
        {
            out |= F::NOFLUSH;
        }
        let fh = self.add_file(OpenFile {
            fd: file,
            inode,
            flags,
            backing: passthrough,
            dir: None,
            redact: None,
        });
        Ok(Open {
            fh,
            flags: out,
            backing_id,
        })
    }

    /// The open file `fh`, checked to belong to `nodeid`. fh 0 (never one
    /// of ours) is a file the kernel opened from the inode's backing file
    /// without asking us (OPEN in its ops mask): the request acts on the
    /// inode through a short-lived fd of our own.
    fn open_file(&self, nodeid: NodeId, fh: Fh) -> Result<Arc<OpenFile>, Errno> {
        if fh == Fh::NONE {
            return self.unhandled_open(nodeid, libc::O_RDWR);
        }
        let f = self.file(fh)?;
        if f.inode.nodeid != nodeid {
            return Err(Errno::EBADF);
        }
        Ok(f)
    }

    /// An open of the inode for a request without a handle (see
    /// [`Self::open_file`]): read-write if the host allows it, else
    /// read-only. Regular files and directories only (never a FIFO or a
    /// device), opened with the daemon's credentials: the kernel checked
    /// the caller when it opened its file.
    ///
    /// Regular files keep one such open per access mode, shared by every
    /// handle-less request (they use explicit offsets) and closed at
    /// FORGET; it counts in the fd budget. Directories get one per request
    /// (a directory stream has a position).
    pub(super) fn unhandled_open(
        &self,
        nodeid: NodeId,
        access: i32,
    ) -> Result<Arc<OpenFile>, Errno> {
        let inode = self.table.get(nodeid)?;
        let modes: &[i32] = match inode.kind {
            Kind::Regular if access == libc::O_RDONLY => &[libc::O_RDONLY],
            Kind::Regular => &[libc::O_RDWR, libc::O_RDONLY],
            Kind::Directory => {
                return self.open_unregistered(inode, libc::O_RDONLY | libc::O_DIRECTORY)
            }
            _ => return Err(Errno::EBADF),
        };
        let mut last = Errno::EBADF;
        for &m in modes {
            if let Some(f) = self.kernel_files.get(&(nodeid, m)) {
                return Ok(f.value().clone());
            }
            match self.open_unregistered(inode.clone(), m) {
                Ok(f) => return Ok(self.keep_kernel_file(&inode, m, f)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Shares `f` as the kernel-opened file of `inode` for mode `m` (or the
    /// one another request kept first).
    fn keep_kernel_file(&self, inode: &Arc<Inode>, m: i32, f: Arc<OpenFile>) -> Arc<OpenFile> {
        // They share the fd budget with the O_PATH cache: past half of it,
        // opens are per request again rather than starving the cache.
        let cap = self.table.budget().capacity.load(Ordering::Relaxed);
        if self.kernel_files.len() >= cap / 2 {
            return f;
        }
        let kept = match self.kernel_files.entry((inode.nodeid, m)) {
            dashmap::mapref::entry::Entry::Occupied(e) => return e.get().clone(),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                self.table.budget().open.fetch_add(1, Ordering::Relaxed);
                v.insert(f).value().clone()
            }
        };
        // A FORGET that ran meanwhile (it removes the inode first, then
        // its kernel files) must not leave this one behind.
        if !self
            .table
            .get(inode.nodeid)
            .is_ok_and(|i| Arc::ptr_eq(&i, inode))
        {
            self.forget_kernel_files(inode.nodeid);
        }
        kept
    }

    /// FORGET: closes the inode's kernel-opened files (once the requests
    /// using them are done).
    pub(super) fn forget_kernel_files(&self, nodeid: NodeId) {
        for m in [libc::O_RDONLY, libc::O_RDWR] {
            if self.kernel_files.remove(&(nodeid, m)).is_some() {
                self.table.budget().open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Files the kernel opened without us, held open now (for stats/tests).
    pub fn kernel_files(&self) -> usize {
        self.kernel_files.len()
    }

    /// A fresh open of `inode` with `mode` through /proc, not registered
    /// anywhere: it closes when the last user drops it.
    fn open_unregistered(&self, inode: Arc<Inode>, mode: i32) -> Result<Arc<OpenFile>, Errno> {
        let ipath = self.table.fd(&inode)?;
        let proc = self.table.proc_self_fd();
        // No atime update where the mount makes none (as reopen_for_io).
        let fd = self.open_noatime_first(&inode, mode | libc::O_NOCTTY, |m| {
            self.table
                .with_fd_headroom(|| sys::reopen(proc, ipath.fd(), m))
        })?;
        drop(ipath);
        let dir =
            (inode.kind == Kind::Directory).then(|| Mutex::new(super::dirs::DirStream::new()));
        Ok(Arc::new(OpenFile {
            fd,
            inode,
            flags: mode,
            backing: false,
            dir,
            redact: None,
        }))
    }

    /// [`Self::open_file`] for READ: a handle-less read still honours the
    /// media provider's redaction for its caller.
    fn open_file_for_read(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        fh: Fh,
    ) -> Result<Arc<OpenFile>, Errno> {
        if fh != Fh::NONE {
            return self.open_file(nodeid, fh);
        }
        let f = self.unhandled_open(nodeid, libc::O_RDONLY)?;
        match self.media_redaction(ctx, &f.inode, f.fd.as_fd())? {
            None => Ok(f),
            Some(r) => {
                // Redacted for this caller only: an open of its own.
                let f = self.open_unregistered(f.inode.clone(), libc::O_RDONLY)?;
                let mut f = Arc::into_inner(f).ok_or(Errno::EIO)?;
                f.redact = Some(r);
                Ok(Arc::new(f))
            }
        }
    }

    fn max_io(&self) -> usize {
        self.conn
            .get()
            .and_then(|c| c.negotiated())
            .map(|n| n.max_write as usize)
            .unwrap_or(1 << 20)
            .max(128 << 10)
    }

    /// FLUSH forwards close(2) to the host as close(dup(fd)), for the
    /// filesystems that act on it (NFS, FUSE, f2fs ...: their `flush` file
    /// operation). Where there is none, that close does nothing but drop the
    /// closing process's POSIX locks and dnotify marks, and the daemon has
    /// neither (its locks are OFD locks): the two system calls are skipped.
    /// Decided once per device.
    fn flush_is_noop(&self, inode: &Inode, fd: std::os::fd::BorrowedFd<'_>) -> bool {
        let dev = inode.key.dev;
        if let Some(&(_, noop)) = self.flush_noop.lock().iter().find(|(d, _)| *d == dev) {
            return noop;
        }
        let noop = sys::fs_type(fd).is_ok_and(|t| NO_FLUSH_FS.contains(&t));
        let mut known = self.flush_noop.lock();
        if known.len() < 256 && !known.iter().any(|(d, _)| *d == dev) {
            known.push((dev, noop));
        }
        noop
    }

    pub(super) fn any_writable_open(&self, inode: &Inode) -> Option<Arc<OpenFile>> {
        self.files
            .iter()
            .find(|f| f.inode.nodeid == inode.nodeid && f.flags & libc::O_ACCMODE != libc::O_RDONLY)
            .map(|f| f.value().clone())
    }
}

impl FileOps for PassthroughFs {
    fn open(&self, ctx: &Context, nodeid: NodeId, arg: &abi::OpenIn) -> OpResult<Open> {
        let flags = arg.flags as i32;
        let inode = self.inode(nodeid, ctx.opcode)?;
        match inode.kind {
            Kind::Regular => {}
            Kind::Directory => return Err(Errno::EISDIR),
            // FIFOs and devices are opened by the kernel itself, never here.
            _ => return Err(Errno::EINVAL),
        }
        let host_flags = self.host_open_flags(flags);
        let file = if !self.cfg.default_permissions
            && flags & FMODE_EXEC != 0
            && flags & libc::O_ACCMODE == libc::O_RDONLY
        {
            self.open_to_exec(ctx, &inode, host_flags)?
        } else {
            self.reopen_for_io(ctx, &inode, host_flags)?
        };
        if flags & libc::O_TRUNC != 0 && self.open_trunc_kills(ctx, arg) {
            // open(O_TRUNC) by a caller without CAP_FSETID: the truncate
            // the host just did as root kept setuid/setgid (see
            // `killpriv.rs`).
            // The kernel keeps the mode it cached (the truncate of an open
            // invalidates only size and times): tell it.
            if self.kill_suidgid(ctx, file.as_fd())? {
                if let Some(conn) = self.conn.get() {
                    let _ = conn.notify_inval_inode(nodeid, -1, 0);
                }
            }
        }
        let redact = self.media_redaction(ctx, &inode, file.as_fd())?;
        self.finish_open(inode, file, flags, redact)
    }

    fn read(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReadIn) -> Result<Data, Errno> {
        if let Ok(inode) = self.table.get(nodeid) {
            self.kinds.count(inode.kind, ctx.opcode);
        }
        let f = self.open_file_for_read(ctx, nodeid, arg.fh)?;
        let size = (arg.size as usize).min(self.max_io());
        // Zero copy unless the bytes must be changed on the way (redaction).
        if self.cfg.splice && f.redact.is_none() {
            return Ok(Data::File {
                file: f,
                offset: arg.offset,
                len: size,
            });
        }
        let mut buf = vec![0u8; size];
        let done = sys::pread_full(f.fd.as_fd(), &mut buf, arg.offset)?;
        buf.truncate(done);
        if let Some(r) = &f.redact {
            crate::media::redact(&mut buf, arg.offset, r);
        }
        Ok(Data::Bytes(buf))
    }

    fn write(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::WriteIn,
        data: &[u8],
    ) -> OpResult<Written> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let cached = arg.write_flags & abi::WRITE_CACHE != 0;
        // Writeback-cache writes carry a guessed fh: any open of the inode
        // that can write will do.
        let f = match self.open_file(nodeid, arg.fh) {
            Ok(f) => f,
            Err(_) if cached => self.any_writable_open(&inode).ok_or(Errno::EBADF)?,
            Err(e) => return Err(e),
        };
        if arg.write_flags & abi::WRITE_KILL_SUIDGID != 0 {
            // A writer without CAP_FSETID (direct I/O, or any daemon-served
            // write with HANDLE_KILLPRIV_V2): the kernel leaves clearing
            // setuid/setgid to us, and a root daemon's write would not
            // clear them (see `killpriv.rs`). Done with the daemon's
            // credentials, before the write, as the VFS does.
            if self.kill_suidgid(ctx, f.fd.as_fd())? {
                // With the writeback cache the kernel trusts its cached
                // attributes: tell it the mode changed under it.
                if let Some(conn) = self.conn.get() {
                    let _ = conn.notify_inval_inode(nodeid, -1, 0);
                }
            }
        }
        // Page-cache writeback has no caller to act for.
        let _g = if cached {
            CredGuard::none()
        } else {
            self.as_caller(ctx, false)?
        };
        let append = !cached && (arg.flags as i32 & libc::O_APPEND != 0);
        let mut done = 0;
        while done < data.len() {
            match sys::pwrite(
                f.fd.as_fd(),
                &data[done..],
                arg.offset + done as u64,
                append,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if done == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(Written(done as u32))
    }

    fn flush(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FlushIn) -> Result<(), Errno> {
        let _ = ctx;
        let f = self.open_file(nodeid, arg.fh)?;
        // close(2) by a lock owner drops its POSIX locks; if it was the
        // last close, the RELEASE that drops the file's OFD locks follows.
        self.locks.release_owner(nodeid, arg.lock_owner);
        self.locks.note_close(nodeid, arg.fh);
        let r = if self.flush_is_noop(&f.inode, f.fd.as_fd()) {
            Ok(())
        } else {
            sys::flush(f.fd.as_fd()).map_err(Errno::from)
        };
        // Writes through a passthrough mmap dirty only the backing file: the
        // kernel's cached mtime/ctime/size of the FUSE inode never hear of
        // them. A read-write open closing is when they may have happened
        // (write(2) through passthrough updates them itself, and a
        // write-only open cannot be mapped at all: mmap needs read access,
        // so tar's and cp's O_WRONLY files cost no notification).
        if f.backing && f.flags & libc::O_ACCMODE == libc::O_RDWR {
            if let Some(conn) = self.conn.get() {
                let _ = conn.notify_inval_inode(nodeid, -1, 0);
            }
        }
        r
    }

    /// RELEASE (and RELEASEDIR, see `dirs.rs`): the handle goes, with the
    /// locks that were last taken through it. Never fails.
    fn release(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReleaseIn) -> OpResult<()> {
        if let Ok(inode) = self.table.get(nodeid) {
            self.kinds.count(inode.kind, ctx.opcode);
        }
        if let Some(f) = self.files.get(&arg.fh).map(|f| f.value().clone()) {
            if f.inode.nodeid != nodeid {
                return Ok(());
            }
            if arg.release_flags & abi::RELEASE_FLOCK_UNLOCK != 0 {
                let _ = sys::flock(f.fd.as_fd(), libc::LOCK_UN);
            }
            self.locks.release_fh(nodeid, arg.fh);
            self.remove_file(arg.fh);
        }
        Ok(())
    }

    /// FSYNC (and FSYNCDIR, see `dirs.rs`).
    fn fsync(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FsyncIn) -> Result<(), Errno> {
        let _ = self.inode(nodeid, ctx.opcode)?;
        let f = self.open_file(nodeid, arg.fh)?;
        sys::fsync(f.fd.as_fd(), arg.fsync_flags & abi::FSYNC_FDATASYNC != 0).map_err(Errno::from)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::FallocateIn,
    ) -> Result<(), Errno> {
        let _ = self.inode(nodeid, ctx.opcode)?;
        let f = self.open_file(nodeid, arg.fh)?;
        let _g = self.as_caller(ctx, false)?;
        sys::fallocate(f.fd.as_fd(), arg.mode as i32, arg.offset, arg.length).map_err(Errno::from)
    }

    fn lseek(&self, ctx: &Context, nodeid: NodeId, arg: &abi::LseekIn) -> OpResult<Offset> {
        let _ = self.inode(nodeid, ctx.opcode)?;
        let f = self.open_file(nodeid, arg.fh)?;
        match arg.whence as i32 {
            libc::SEEK_DATA | libc::SEEK_HOLE => {}
            // The kernel handles the others itself.
            _ => return Err(Errno::EINVAL),
        }
        Ok(Offset(sys::lseek(
            f.fd.as_fd(),
            arg.offset,
            arg.whence as i32,
        )?))
    }

    fn copy_file_range(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::CopyFileRangeIn,
        wide: bool,
    ) -> OpResult<Copied> {
        let max = if wide { u64::MAX } else { Copied::MAX_NARROW };
        let _ = self.inode(nodeid, ctx.opcode)?;
        let fin = self.open_file(nodeid, arg.fh_in)?;
        let fout = self.open_file(arg.nodeid_out, arg.fh_out)?;
        if arg.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let len = arg.len.min(max).min(isize::MAX as u64) as usize;
        let _g = self.as_caller(ctx, false)?;
        sys::copy_file_range(
            fin.fd.as_fd(),
            arg.off_in,
            fout.fd.as_fd(),
            arg.off_out,
            len,
        )
        .map(|n| Copied(n as u64))
        .map_err(Errno::from)
    }

    /// SYNCFS: syncs the filesystem the inode is on.
    fn syncfs(&self, ctx: &Context, nodeid: NodeId) -> Result<(), Errno> {
        // Only a directory or regular file is ever reopened: opening a
        // FIFO would block, a device would see an open. The root is on
        // the filesystem to sync unless the inode is on a submount.
        let inode = self.inode(nodeid, ctx.opcode)?;
        let inode = match inode.kind {
            Kind::Directory | Kind::Regular => inode,
            _ => self.table.get(NodeId::ROOT)?,
        };
        let fd = self.table.fd(&inode)?;
        let f = sys::reopen(
            self.table.proc_self_fd(),
            fd.fd(),
            libc::O_RDONLY | libc::O_NONBLOCK,
        )?;
        sys::syncfs(f.as_fd()).map_err(Errno::from)
    }
}

/// Filesystems whose regular files have no `flush` file operation (Linux
/// 6.x: ext2/3/4, XFS, Btrfs, tmpfs).
const NO_FLUSH_FS: [u32; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994];
