//! /dev/fuse: opening it, attaching a clone to a connection, registering
//! backing files. nix has no FUSE ioctls: these are the raw calls.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use zerocopy::{FromBytes, IntoBytes};

use super::{check, Result};
use crate::fuse::abi;

/// Opens /dev/fuse read-write (close-on-exec).
pub fn open() -> Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(OwnedFd::from)
}

/// `ioctl(fd, request, &mut arg)` for a request whose encoded argument size
/// (bits 16..30 of the number) is the size of `T`; anything else is EINVAL
/// before the kernel is asked.
fn ioctl_arg<T: FromBytes + IntoBytes>(
    fd: BorrowedFd<'_>,
    request: u64,
    arg: &mut T,
) -> Result<libc::c_int> {
    if ((request >> 16) & 0x3fff) as usize != size_of::<T>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `arg` is a live, exclusively borrowed `T` of exactly the size
    // the request encodes, so the kernel reads or writes only inside it, and
    // any bytes it writes make a valid `T` (FromBytes).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) })
}

/// `FUSE_DEV_IOC_CLONE`: attaches `new` (a fresh /dev/fuse fd) to the
/// connection of `master`.
pub fn clone_channel(new: BorrowedFd<'_>, master: BorrowedFd<'_>) -> Result<()> {
    let mut m = master.as_raw_fd() as u32;
    ioctl_arg(new, abi::DEV_IOC_CLONE, &mut m).map(drop)
}

/// `FUSE_DEV_IOC_BACKING_OPEN`: registers `map.fd` as a backing file of the
/// connection of `dev`; returns the backing id.
pub fn backing_open(dev: BorrowedFd<'_>, map: &mut abi::BackingMap) -> Result<i32> {
    ioctl_arg(dev, abi::DEV_IOC_BACKING_OPEN, map)
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: drops a backing id.
pub fn backing_close(dev: BorrowedFd<'_>, id: u32) -> Result<()> {
    let mut v = id;
    ioctl_arg(dev, abi::DEV_IOC_BACKING_CLOSE, &mut v).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_size_mismatch_is_einval() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut small = 0u8;
        let e = ioctl_arg(f.as_fd(), abi::DEV_IOC_CLONE, &mut small).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
