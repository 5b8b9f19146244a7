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
}

impl DirStream {
    pub(super) fn new() -> DirStream {
        DirStream {
            buf: Vec::new(),
            pos: 0,
            offset: 0,
        }
    }
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

impl DirOps for PassthroughFs {
    fn opendir(&self, ctx: &Context, nodeid: NodeId, _arg: &abi::OpenIn) -> OpResult<Open> {
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
        // fh 0: a directory the kernel opened from its backing directory
        // (OPEN in its mask, READDIR not): list it through a fresh stream,
        // positioned at the offset the kernel asks for.
        let f = if arg.fh == Fh::NONE {
            self.unhandled_open(nodeid, libc::O_RDONLY)?
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
        if arg.offset != st.offset {
            sys::lseek(f.fd.as_fd(), arg.offset, libc::SEEK_SET)?;
            st.pos = 0;
            st.buf.clear();
            st.offset = arg.offset;
        }
        if st.buf.capacity() == 0 {
            st.buf.reserve_exact(DIRENT_BUF);
        }
        let media_rel = self.media_dir_rel(&inode);
        let mut out = if plus && self.backing.dirplus() {
            DirBuffer::with_backing(arg.size as usize)
        } else {
            DirBuffer::new(arg.size as usize)
        };
        loop {
            if st.pos >= st.buf.len() {
                st.pos = 0;
                match sys::getdents64_into(f.fd.as_fd(), &mut st.buf) {
                    Ok(0) => break,
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
