//! The one SQE field the io-uring crate has no setter for.

use io_uring::squeue::Entry128;

const _: () = assert!(std::mem::size_of::<Entry128>() == 128);

/// Sets `sqe->len` (FUSE's REGISTER wants 2: header and payload iovecs).
pub fn set_sqe_len(sqe: &mut Entry128, len: u32) {
    // SAFETY: Entry128 is repr(C), 128 bytes (asserted above), and starts
    // with `struct io_uring_sqe`, whose `len` (u32) is at byte offset 24;
    // the write stays inside the exclusively borrowed entry.
    unsafe {
        let p = (sqe as *mut Entry128).cast::<u8>();
        std::ptr::write_unaligned(p.add(24).cast::<u32>(), len);
    }
}

/// The raw bytes of an SQE (tests check the layout).
#[cfg(test)]
pub fn sqe_bytes(sqe: &Entry128) -> [u8; 128] {
    // SAFETY: Entry128 is 128 bytes of plain integers (asserted above), so
    // reading it as bytes is valid; the read stays inside the borrow.
    unsafe { std::ptr::read_unaligned((sqe as *const Entry128).cast::<[u8; 128]>()) }
}
