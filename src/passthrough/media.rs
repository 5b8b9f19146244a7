//! The daemon's side of the media-provider mode (see `crate::media`): the
//! per-request checks that keep some ops in the daemon.
//!
//! Why two modules: `crate::media` is the rule book (config, which uid may
//! see or create what, redaction ranges), pure functions of paths, uids and
//! bytes that its unit tests drive without a mount; this module applies
//! those rules to `PassthroughFs` requests (inodes, fds, the caller), and
//! needs the filesystem's private state, so it lives inside `passthrough`.
//!
//! Where an inode is relative to the storage root comes from the inode
//! table's parent links (`InodeTable::relative_path`, kept by lookups,
//! renames and unlinks through the mount), never from the host: no
//! /proc/self/fd readlink per request.

use std::ffi::{CStr, CString};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};

use super::*;
use crate::media::{self, Visibility};

impl PassthroughFs {
    /// The media provider, if this mount runs in that mode.
    pub(super) fn media(&self) -> Option<&MediaProvider> {
        self.cfg.media.as_deref()
    }

    /// Path of a directory relative to SOURCE (from the inode table's parent
    /// links), in media mode only.
    pub(super) fn media_dir_rel(&self, dir: &Inode) -> Option<String> {
        self.media()?;
        self.table.relative_path(dir)
    }

    /// Case-insensitive match of `name` in `dir`: the real name, if one
    /// (the smallest, if several differ only in case).
    pub(super) fn find_case_insensitive(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Option<CString>, Errno> {
        let want = String::from_utf8_lossy(name.to_bytes()).to_lowercase();
        let d = sys::reopen(
            self.table.proc_self_fd(),
            dir,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut best: Option<Vec<u8>> = None;
        loop {
            let n = sys::getdents64(d.as_fd(), &mut buf)?;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos + 19 <= n {
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                if reclen == 0 || pos + reclen > n {
                    break;
                }
                let area = &buf[pos + 19..pos + reclen];
                let nm = &area[..area.iter().position(|&c| c == 0).unwrap_or(area.len())];
                if String::from_utf8_lossy(nm).to_lowercase() == want
                    && best.as_deref().is_none_or(|b| nm < b)
                {
                    best = Some(nm.to_vec());
                }
                pos += reclen;
            }
        }
        Ok(best.and_then(|b| CString::new(b).ok()))
    }

    /// The name as stored of the entry `name` of `dir`, when names fold
    /// case and only another spelling exists (the kernel's dentry keeps
    /// the spelling the caller used: UNLINK and RENAME come with it).
    pub(super) fn media_stored_name(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Option<CString>, Errno> {
        let Some(mp) = self.media() else {
            return Ok(None);
        };
        if !mp.case_insensitive_dir("") {
            return Ok(None);
        }
        match sys::statx_at(dir, name, libc::STATX_TYPE) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.find_case_insensitive(dir, name)
            }
            _ => Ok(None),
        }
    }

    /// How `dir_rel/name` (an entry of the directory `dir`) looks to `uid`.
    pub(super) fn media_visibility_at(
        &self,
        uid: u32,
        dir_rel: &str,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> Visibility {
        let Some(mp) = self.media() else {
            return Visibility::Visible { volatile: false };
        };
        let Ok(cname) = CString::new(name) else {
            return Visibility::Hidden;
        };
        match sys::statx_at(dir, &cname, libc::STATX_TYPE | libc::STATX_UID) {
            Ok(st) => mp.visibility(
                uid,
                dir_rel,
                name,
                st.stx_uid,
                (st.stx_mode as u32 & libc::S_IFMT) == libc::S_IFDIR,
            ),
            // Gone meanwhile: nothing to hide.
            Err(_) => Visibility::Visible { volatile: true },
        }
    }

    /// Refuses an operation on an entry the caller cannot see (ENOENT, as
    /// if it did not exist).
    pub(super) fn media_check_visible(
        &self,
        ctx: &Context,
        dir: &Inode,
        dir_fd: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), Errno> {
        let Some(rel) = self.media_dir_rel(dir) else {
            return Ok(());
        };
        match self.media_visibility_at(ctx.uid, &rel, dir_fd, name.to_bytes()) {
            Visibility::Hidden => Err(Errno::ENOENT),
            _ => Ok(()),
        }
    }

    /// In an app dir (`Android/data`), only a package's owner creates its
    /// directory.
    pub(super) fn media_may_create(
        &self,
        ctx: &Context,
        dir: &Inode,
        name: &CStr,
    ) -> Result<(), Errno> {
        let Some(mp) = self.media() else {
            return Ok(());
        };
        let Some(rel) = self.table.relative_path(dir) else {
            return Ok(());
        };
        if ctx.uid == 0 {
            return Ok(());
        }
        match mp.visibility(ctx.uid, &rel, name.to_bytes(), ctx.uid, true) {
            Visibility::Hidden => Err(Errno::EACCES),
            _ => Ok(()),
        }
    }

    /// Logs a create/delete/rename event (media mode with a change log).
    pub(super) fn media_event(
        &self,
        ctx: &Context,
        event: &str,
        dir: &Inode,
        name: &CStr,
        to: Option<(&Inode, &CStr)>,
    ) {
        let Some(mp) = self.media() else { return };
        let join = |d: &Inode, n: &CStr| {
            let rel = self.table.relative_path(d).unwrap_or_default();
            let n = n.to_string_lossy();
            if rel.is_empty() {
                n.into_owned()
            } else {
                format!("{rel}/{n}")
            }
        };
        let from = join(dir, name);
        let to = to.map(|(d, n)| join(d, n));
        mp.log_event(event, ctx.uid, &from, to.as_deref());
    }

    /// The ranges a read by this caller must zero, if the open is one to
    /// redact (then it must not pass through).
    pub(super) fn media_redaction(
        &self,
        ctx: &Context,
        inode: &Inode,
        file: BorrowedFd<'_>,
    ) -> Result<Option<Arc<Vec<Range<u64>>>>, Errno> {
        let Some(mp) = self.media() else {
            return Ok(None);
        };
        if inode.kind != Kind::Regular {
            return Ok(None);
        }
        let Some(rel) = self.table.relative_path(inode) else {
            return Ok(None);
        };
        if !mp.redacts(ctx.uid, &rel) {
            return Ok(None);
        }
        // EXIF lives in APP1, at most 64 KiB, right after SOI.
        let mut head = vec![0u8; 128 * 1024];
        let n = sys::pread(file, &mut head, 0)?;
        Ok(Some(Arc::new(media::exif_gps_ranges(&head[..n]))))
    }
}
