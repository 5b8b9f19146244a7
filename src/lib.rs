//! passthroughfs: a FUSE passthrough filesystem with kernel I/O passthrough
//! and, on kernels carrying our series, inode passthrough with per-op masks.
//!
//! - [`fuse`]: our FUSE wire layer (protocol 7.46 + the 7.47 extension).
//! - [`inode_table`], [`file_handle`]: inodes, with fds as a bounded cache.
//! - [`credentials`]: acting as the caller, per thread.
//! - [`backing`]: backing ids; [`policy`]: which ops pass through where.
//! - [`passthrough`]: every operation; [`stats`]: what the daemon saw.

pub mod backing;
pub mod credentials;
pub mod fasthash;
pub mod file_handle;
pub mod fuse;
pub mod inode_table;
pub mod media;
pub mod passthrough;
pub mod policy;
pub mod sandbox;
pub mod stats;
pub mod sys;
