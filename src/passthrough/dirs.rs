//! Directories: opendir, readdir, readdirplus.
//!
//! Each open directory has its own fd and getdents64 buffer, serialised by a
//! mutex (getdents moves the fd's offset). Offsets are the host's `d_off`
//! cookies; we seek only when the kernel asks for another position.
//!
//! READDIRPLUS counts a lookup for every entry it hands over except "." and
//! "..", exactly like the kernel (which links them all); an entry that does
//! not fit, or a reply the kernel did not take, gives its count back.

use std::os::fd::AsFd;

use super::*;

const DIRENT_BUF: usize = 32 * 1024;

pub(super) struct DirStream {
    /// What the last getdents64 returned (its length); allocated at the
    /// first READDIR, never zeroed (the kernel fills what it returns).
    buf: Vec<u8>,
    pos: usize,
    /// Offset the next entry in `buf` continues from.
    offset: u64,
    /// The directory's mtime and ctime when a stream without a handle was
    /// opened: it may serve another open later only while they hold.
    stamp: Option<DirStamp>,
}

/// What changes whenever an entry of a directory does (see `unpark_dir`).
type DirStamp = [i64; 4];

fn dir_stamp(fd: std::os::fd::BorrowedFd<'_>) -> Option<DirStamp> {
    let st = sys::statx(fd, libc::STATX_MTIME | libc::STATX_CTIME).ok()?;
    Some([
        st.stx_mtime.tv_sec,
        st.stx_mtime.tv_nsec as i64,
        st.stx_ctime.tv_sec,
        st.stx_ctime.tv_nsec as i64,
    ])
}

impl DirStream {
    pub(super) fn new() -> DirStream {
        DirStream {
            buf: Vec::new(),
            pos: 0,
            offset: 0,
            stamp: None,
        }
    }
}

/// The getdents64 buffer of a stream without a handle: about what the reply
/// can take, since what it cannot take is read again whenever the stream is
/// not parked or not reused (a whole `DIRENT_BUF` there would read a big
/// directory about five times over under READDIRPLUS). A linux_dirent64 record is 24
/// bytes and the name; a fuse_dirent the same, a fuse_direntplus 128 more.
fn fresh_dirent_buf(reply_size: u32, plus: bool) -> usize {
    let fits = if plus {
        reply_size as usize / 4
    } else {
        reply_size as usize
    };
    fits.clamp(4096, DIRENT_BUF)
}

/// One getdents64 record.
struct RawDirent<'a> {
    ino: u64,
    off: u64,
    typ: u8,
    name: &'a CStr,
    reclen: usize,
}

fn parse_dirent(b: &[u8]) -> Option<RawDirent<'_>> {
    // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
    let ino = u64::from_ne_bytes(b.get(0..8)?.try_into().ok()?);
    let off = u64::from_ne_bytes(b.get(8..16)?.try_into().ok()?);
    let reclen = u16::from_ne_bytes(b.get(16..18)?.try_into().ok()?) as usize;
    let typ = *b.get(18)?;
    let name = CStr::from_bytes_until_nul(b.get(19..reclen)?).ok()?;
    Some(RawDirent {
        ino,
        off,
        typ,
        name,
        reclen,
    })
}

impl PassthroughFs {
    /// Appends the READDIRPLUS record of one name; `Ok(false)` when full (its
    /// lookup given back at once). A record that fits hands its lookup to
    /// the reply.
    #[allow(clippy::too_many_arguments)]
    fn push_plus(
        &self,
        out: &mut DirBuffer,
        dir: &Inode,
        name: &CStr,
        ino: u64,
        typ: u32,
        off: u64,
        volatile: bool,
    ) -> Result<bool, Errno> {
        if !out.fits_plus(name.to_bytes()) {
            return Ok(false);
        }
        let mut e = self.dirent_plus(dir, name, ino, typ)?;
        if volatile {
            e.entry_ttl = std::time::Duration::ZERO;
        }
        if out.push_plus(&e, off, typ, name.to_bytes()) {
            return Ok(true);
        }
        if !e.nodeid.is_none() {
            self.forget_one(e.nodeid, 1);
        }
        Ok(false)
    }

    /// The READDIRPLUS record of one name: a full entry (one lookup) for
    /// real children; "." and "..", and names that vanished meanwhile, go
    /// without entry information (nodeid 0), which the kernel does not link.
    fn dirent_plus(&self, dir: &Inode, name: &CStr, ino: u64, typ: u32) -> Result<Entry, Errno> {
        let bare = || Entry {
            attr: abi::Attr {
                ino,
                mode: typ << 12,
                ..Default::default()
            },
            ..Default::default()
        };
        if name == c"." || name == c".." {
            return Ok(bare());
        }
        match self.table.lookup(dir, name) {
            Ok(looked) => Ok(self.make_entry(&looked, dir, name)),
            Err(Errno::ENOENT) => Ok(bare()),
            Err(e) => Err(e),
        }
    }
}

/// Parked streams at most: each holds an fd (counted in the fd budget) and
/// a buffer of a few KiB until continued, displaced or forgotten.
const PARKED_DIRS: usize = 8;

impl PassthroughFs {
    /// The parked stream of `inode` that stands at `offset`, if any. A
    /// READDIR with fh 0 (no OPENDIR) has no handle to keep its stream in;
    /// reopening the directory and seeking for each READDIR costs a
    /// directory of 40,000 entries 18% of a cold `ls -lR` on ext4 (its
    /// hash-ordered readdir rebuilds its position at each seek), so the
    /// stream waits here for the next READDIR of the same listing, which
    /// asks for the offset it stopped at.
    ///
    /// That READDIR may come from another open than the one that read the
    /// stream so far (fh 0 names none): a listing opened after an entry
    /// changed must not get names the stream read before (generic/637
    /// failed so with --nopassthrough). So a stream is dropped when the
    /// daemon changes an entry of its directory (`dir_changed`) and not
    /// reused once the directory's mtime or ctime moved since the stream
    /// was opened (changes made on SOURCE directly, as far as its
    /// filesystem's timestamps resolve them). tests/ops.rs
    /// `a_new_listing_does_not_continue_a_stream_read_before_an_unlink`
    /// and `..._before_a_change_on_source` show both (the second fails
    /// without the timestamp check).
    fn unpark_dir(&self, inode: &Arc<Inode>, offset: u64) -> Option<Arc<OpenFile>> {
        let f = {
            let mut parked = self.parked_dirs.lock();
            let i = parked.iter().rposition(|f| {
                Arc::ptr_eq(&f.inode, inode)
                    && f.dir.as_ref().is_some_and(|d| d.lock().offset == offset)
            })?;
            self.count_parked(-1);
            parked.remove(i)
        };
        let opened = f.dir.as_ref()?.lock().stamp;
        (opened.is_some() && opened == dir_stamp(f.fd.as_fd())).then_some(f)
    }

    /// An entry of `nodeid` is about to change through the mount: its
    /// parked streams go (they may hold names read before).
    pub(super) fn dir_changed(&self, nodeid: NodeId) {
        if self.parked_count.load(Ordering::Relaxed) > 0 {
            self.forget_parked_dirs(nodeid);
        }
    }

    /// Keeps a stream that stopped before the end of its directory, in
    /// place of the oldest one when full: a listing abandoned half way (no
    /// RELEASEDIR tells us) holds its fd only until displaced.
    fn park_dir(&self, f: Arc<OpenFile>) {
        let mut parked = self.parked_dirs.lock();
        if parked.len() >= PARKED_DIRS {
            parked.remove(0);
        } else {
            self.count_parked(1);
        }
        parked.push(f);
    }

    /// FORGET: the inode's parked streams go (its nodeid may name another
    /// inode next).
    pub(super) fn forget_parked_dirs(&self, nodeid: NodeId) {
        let mut parked = self.parked_dirs.lock();
        let before = parked.len();
        parked.retain(|f| f.inode.nodeid != nodeid);
        self.count_parked(parked.len() as isize - before as isize);
    }

    /// Parked streams came or went: their fds are in the fd budget, and
    /// their number is read without the lock by `dir_changed`.
    fn count_parked(&self, delta: isize) {
        let n = delta.unsigned_abs();
        if delta > 0 {
            self.table.budget().open.fetch_add(n, Ordering::Relaxed);
            self.parked_count.fetch_add(n, Ordering::Relaxed);
        } else if delta < 0 {
            self.table.budget().open.fetch_sub(n, Ordering::Relaxed);
            self.parked_count.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl DirOps for PassthroughFs {
    fn opendir(&self, ctx: &Context, nodeid: NodeId, _arg: &abi::OpenIn) -> OpResult<Open> {
        // Zero-message opendir (`mod.rs`, `wants`): the kernel remembers the
        // ENOSYS and opens every directory itself from then on.
        if self.no_opendir.load(Ordering::Relaxed) {
            return Err(Errno::ENOSYS);
        }
        let inode = self.inode(nodeid, ctx.opcode)?;
        if inode.kind != Kind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let dir = self.reopen_for_io(ctx, &inode, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let fh = self.add_file(OpenFile {
            fd: dir,
            inode,
            flags: libc::O_RDONLY | libc::O_DIRECTORY,
            backing: false,
            dir: Some(Mutex::new(DirStream::new())),
            redact: None,
        });
        let mut out = abi::OpenOutFlags::empty();
        // Listings filtered per caller must not be shared through the cache.
        if !self.cfg.nocache && self.media().is_none() {
            out |= abi::OpenOutFlags::KEEP_CACHE | abi::OpenOutFlags::CACHE_DIR;
        }
        Ok(Open {
            fh,
            flags: out,
            backing_id: BackingId::NONE,
        })
    }

    fn readdir(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        arg: &abi::ReadIn,
        plus: bool,
    ) -> Result<DirBuffer, Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        // fh 0: a directory the kernel opened without OPENDIR (zero-message
        // opendir) or from its backing directory (OPEN in its mask, READDIR
        // not): list it through a fresh stream, positioned at the offset the
        // kernel asks for.
        let fresh = arg.fh == Fh::NONE;
        let f = if fresh {
            match self.unpark_dir(&inode, arg.offset) {
                Some(f) => f,
                None => self.unhandled_open(nodeid, libc::O_RDONLY)?,
            }
        } else {
            match self.file(arg.fh) {
                Ok(f) if f.inode.nodeid == nodeid => f,
                _ => return Err(Errno::EBADF),
            }
        };
        let Some(stream) = &f.dir else {
            return Err(Errno::ENOTDIR);
        };
        let mut guard = stream.lock();
        let st = &mut *guard;
        if fresh && st.stamp.is_none() {
            // Before its first getdents64: what it reads is at least as
            // new as this.
            st.stamp = dir_stamp(f.fd.as_fd());
        }
        if arg.offset != st.offset {
            sys::lseek(f.fd.as_fd(), arg.offset, libc::SEEK_SET)?;
            st.pos = 0;
            st.buf.clear();
            st.offset = arg.offset;
        }
        if st.buf.capacity() == 0 {
            st.buf.reserve_exact(if fresh {
                fresh_dirent_buf(arg.size, plus)
            } else {
                DIRENT_BUF
            });
        }
        let media_rel = self.media_dir_rel(&inode);
        let mut eof = false;
        let mut out = if plus && self.backing.dirplus() {
            DirBuffer::with_backing(arg.size as usize)
        } else {
            DirBuffer::new(arg.size as usize)
        };
        loop {
            if st.pos >= st.buf.len() {
                st.pos = 0;
                match sys::getdents64_into(f.fd.as_fd(), &mut st.buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if out.is_empty() {
                            return Err(e.into());
                        }
                        break;
                    }
                }
            }
            let Some(d) = parse_dirent(&st.buf[st.pos..]) else {
                // A record we cannot parse: drop the rest of this buffer.
                st.pos = st.buf.len();
                continue;
            };
            let (name, off, typ, reclen) = (d.name, d.off, d.typ as u32, d.reclen);
            // Media mode: hide what the caller may not see, and never let
            // the kernel cache an entry whose visibility depends on the uid.
            let mut volatile = false;
            if let Some(rel) = &media_rel {
                if name != c"." && name != c".." {
                    match self.media_visibility_at(ctx.uid, rel, f.fd.as_fd(), name.to_bytes()) {
                        crate::media::Visibility::Hidden => {
                            st.pos += reclen;
                            st.offset = off;
                            continue;
                        }
                        crate::media::Visibility::Visible { volatile: v } => volatile = v,
                    }
                }
            }
            let ino = self.table.report_ino(crate::inode_table::InodeKey {
                dev: inode.key.dev,
                ino: d.ino,
            });
            let fits = if plus {
                let r = self.push_plus(&mut out, &inode, name, ino, typ, off, volatile);
                match r {
                    Err(e) if out.is_empty() => return Err(e),
                    r => r.unwrap_or(false),
                }
            } else {
                out.push(ino, off, typ, name.to_bytes())
            };
            if !fits {
                break;
            }
            st.pos += reclen;
            st.offset = off;
        }
        drop(guard);
        if fresh && !eof && !out.is_empty() {
            self.park_dir(f);
        }
        Ok(out)
    }

    /// RELEASEDIR is RELEASE of a directory's handle.
    fn releasedir(&self, ctx: &Context, nodeid: NodeId, arg: &abi::ReleaseIn) -> OpResult<()> {
        FileOps::release(self, ctx, nodeid, arg)
    }

    /// FSYNCDIR is FSYNC of a directory's handle.
    fn fsyncdir(&self, ctx: &Context, nodeid: NodeId, arg: &abi::FsyncIn) -> OpResult<()> {
        FileOps::fsync(self, ctx, nodeid, arg)
    }
}
