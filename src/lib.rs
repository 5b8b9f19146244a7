//! passthroughfs: a FUSE passthrough filesystem with kernel I/O passthrough
//! and, on kernels carrying our series, inode passthrough with per-op masks.

pub mod fuse;
