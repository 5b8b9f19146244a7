//! File handles: how an inode is found again after its O_PATH fd was closed.
//!
//! `name_to_handle_at` gives a handle (with the inode's generation inside, so
//! a recycled inode number never matches) and a mount id; the handle is
//! reopened with `open_by_handle_at` relative to an fd on that mount. That
//! fd must be a real open file (the kernel ignores O_PATH fds there), so we
//! keep one directory per mount, opened O_RDONLY when the mount is first met.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use parking_lot::RwLock;
use tracing::warn;

use crate::sys;

/// Bytes kept inline: ext4 (8), xfs (8..24), tmpfs (12), btrfs (20..40 fall
/// back to the heap).
const INLINE: usize = 20;

/// A file handle, stored compactly (the inode table keeps one per inode).
#[derive(Clone, PartialEq, Eq)]
pub struct FileHandle {
    handle_type: i32,
    mount: u16,
    bytes: HandleBytes,
}

#[derive(Clone, PartialEq, Eq)]
enum HandleBytes {
    Inline { len: u8, data: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl HandleBytes {
    fn new(b: &[u8]) -> HandleBytes {
        if b.len() <= INLINE {
            let mut data = [0u8; INLINE];
            data[..b.len()].copy_from_slice(b);
            HandleBytes::Inline {
                len: b.len() as u8,
                data,
            }
        } else {
            HandleBytes::Heap(b.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            HandleBytes::Inline { len, data } => &data[..*len as usize],
            HandleBytes::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileHandle(type {}, mount #{}, {:02x?})",
            self.handle_type,
            self.mount,
            self.bytes.as_slice()
        )
    }
}

/// One fd per mount met in the source tree, for `open_by_handle_at`.
pub struct MountFds {
    /// (kernel mount id, fd) in order of discovery; the index is what a
    /// [`FileHandle`] stores.
    mounts: RwLock<Vec<(i32, OwnedFd)>>,
    proc_self_fd: OwnedFd,
}

impl MountFds {
    pub fn new(proc_self_fd: OwnedFd) -> MountFds {
        MountFds {
            mounts: RwLock::new(Vec::new()),
            proc_self_fd,
        }
    }

    /// The handle of `fd` (an O_PATH fd of a directory or file), or `None`
    /// when the filesystem has no handles (the inode then keeps its fd).
    /// `is_dir` says whether `fd` may serve as the mount fd of a new mount.
    pub fn handle_of(&self, fd: BorrowedFd<'_>, is_dir: bool) -> Option<FileHandle> {
        let (handle_type, bytes, mount_id) = match sys::name_to_handle(fd) {
            Ok(h) => h,
            // EOPNOTSUPP: no export ops; EOVERFLOW: handle too big.
            Err(_) => return None,
        };
        let mount = self.mount_index(mount_id, fd, is_dir)?;
        Some(FileHandle {
            handle_type,
            mount,
            bytes: HandleBytes::new(&bytes),
        })
    }

    fn mount_index(&self, mount_id: i32, fd: BorrowedFd<'_>, is_dir: bool) -> Option<u16> {
        if let Some(i) = self
            .mounts
            .read()
            .iter()
            .position(|(id, _)| *id == mount_id)
        {
            return Some(i as u16);
        }
        if !is_dir {
            // The first inode seen on a mount is its root directory; a
            // regular file can't be opened O_RDONLY safely here (devices).
            return None;
        }
        let mut mounts = self.mounts.write();
        if let Some(i) = mounts.iter().position(|(id, _)| *id == mount_id) {
            return Some(i as u16);
        }
        if mounts.len() >= u16::MAX as usize {
            return None;
        }
        match sys::reopen(
            self.proc_self_fd.as_fd(),
            fd,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) {
            Ok(mfd) => {
                mounts.push((mount_id, mfd));
                Some((mounts.len() - 1) as u16)
            }
            Err(e) => {
                warn!(
                    "cannot open a mount fd for mount {mount_id}: {e}; its inodes keep their fds"
                );
                None
            }
        }
    }

    /// Reopens `h` as an O_PATH fd. Needs CAP_DAC_READ_SEARCH.
    pub fn open(&self, h: &FileHandle) -> sys::Result<OwnedFd> {
        let mounts = self.mounts.read();
        let (_, mfd) = mounts
            .get(h.mount as usize)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        sys::open_by_handle(
            mfd.as_fd(),
            h.handle_type,
            h.bytes.as_slice(),
            libc::O_PATH | libc::O_NOFOLLOW,
        )
    }

    pub fn proc_self_fd(&self) -> BorrowedFd<'_> {
        self.proc_self_fd.as_fd()
    }
}
