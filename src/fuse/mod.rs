//! Our own FUSE wire layer, written from Linux 7.3's `include/uapi/linux/fuse.h`.
//!
//! - [`abi`]: the kernel's structs, opcodes, flags and ioctls.
//! - [`request`]: bounds-checked parsing of one request.
//! - [`reply`]: the payload type of each reply kind, and the one-shot reply
//!   that sends it (EIO if dropped unsent).
//! - [`channel`]: the connection, its per-worker /dev/fuse clones, counters.
//! - [`dispatch`]: INIT, then opcode -> [`Filesystem`] method.
//! - [`uring`]: the FUSE-over-io_uring transport (per-CPU ring queues).
//! - [`session`]: worker threads and an orderly end; [`mount`]: mount(2) or fusermount3.

pub mod abi;
pub mod channel;
pub mod dispatch;
pub mod filesystem;
pub mod mount;
pub mod reply;
pub mod request;
pub mod session;
pub mod splice;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uring;

pub use abi::{BackingId, Fh, LockOwner, NodeId};
pub use channel::{Connection, Negotiated, RequestCounters};
pub use filesystem::{
    AttrOps, Context, DirOps, EntryOps, FileOps, Filesystem, LockOps, OpResult, Wants, XattrOps,
};
pub use mount::MountOptions;
pub use reply::*;
pub use session::{Channels, RunningSession, Session, SessionOptions};

use std::fmt;
use std::io;

/// An errno value to send back to the kernel (positive, e.g. `ENOENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENFILE: Errno = Errno(libc::ENFILE);
    pub const EMFILE: Errno = Errno(libc::EMFILE);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);

    /// The calling thread's errno.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        match e.raw_os_error() {
            Some(n) if n > 0 => Errno(n),
            _ => {
                tracing::warn!("non-OS error mapped to EIO: {e}");
                Errno::EIO
            }
        }
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}
