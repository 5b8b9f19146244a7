//! The FUSE kernel ABI, protocol 7.46 (Linux 7.3 `include/uapi/linux/fuse.h`),
//! plus the inode-passthrough extension of our kernel series (7.47, see
//! `kernel-patches/` and [`INIT_PASSTHROUGH_OPS`]).
//!
//! Every struct is `#[repr(C)]`, has a compile-time size assert equal to the
//! kernel's, and derives `zerocopy` traits so requests are parsed by copying
//! bytes out of the buffer (no alignment requirement, all safe code).

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Major version; a kernel with another major gets our major and a fresh INIT.
pub const KERNEL_VERSION: u32 = 7;
/// Highest minor version we speak (7.46 is Linux 7.3; 7.47 adds inode passthrough).
pub const KERNEL_MINOR_VERSION: u32 = 47;
/// Oldest minor we accept: 7.31 (Linux 5.8) has every layout we rely on
/// (64-byte init_out, max_pages, 40-byte write_in, 16-byte mknod_in).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;
/// First minor with FUSE_PASSTHROUGH (backing ids on open).
pub const MINOR_PASSTHROUGH: u32 = 40;
/// Minor of our inode-passthrough extension.
pub const MINOR_PASSTHROUGH_INO: u32 = 47;

/// nodeid of the root directory.
pub const ROOT_ID: u64 = 1;
/// The `fh` of a request on a file the server never opened (no OPEN sent:
/// `FUSE_NO_OPEN_SUPPORT`, or OPEN served from an inode backing file).
pub const NO_FH: u64 = 0;

macro_rules! wire_id {
    ($(#[$m:meta])* $name:ident, $ty:ty) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
            FromBytes, IntoBytes, Immutable, KnownLayout,
        )]
        pub struct $name($ty);

        impl $name {
            /// From its number: where the number is made (the wire's
            /// structs, the allocator that hands them out), nowhere else.
            pub const fn from_raw(v: $ty) -> Self {
                $name(v)
            }
            /// Its number, for the wire (and logs).
            pub const fn raw(self) -> $ty {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

// The numbers of the protocol that are easy to mix up, each a type of its
// own: the wire structs below carry them typed, so a request's nodeid can
// never be passed where a file handle or a lock owner is expected.
wire_id!(
    /// A nodeid: the kernel's name for an inode the daemon told it about.
    NodeId, u64);
wire_id!(
    /// A file handle (`fh`): the daemon's name for one OPEN/OPENDIR.
    Fh, u64);
wire_id!(
    /// A backing id from `FUSE_DEV_IOC_BACKING_OPEN` (0: none).
    BackingId, i32);
wire_id!(
    /// The kernel's lock owner (one per process and file table, or per
    /// open file description for OFD locks and flock).
    LockOwner, u64);

impl NodeId {
    /// The root directory ([`ROOT_ID`]).
    pub const ROOT: NodeId = NodeId(ROOT_ID);
    /// "No inode" (a negative entry, an entry the kernel does not link).
    pub const NONE: NodeId = NodeId(0);
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl Fh {
    /// [`NO_FH`]: a request on a file the daemon never opened.
    pub const NONE: Fh = Fh(NO_FH);
}

impl BackingId {
    /// No backing.
    pub const NONE: BackingId = BackingId(0);
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}
/// The device refuses reads into buffers smaller than this.
pub const MIN_READ_BUFFER: usize = 8192;
/// Value of in_header.uid/gid when an idmapped mount has no mapping.
pub const INVALID_UIDGID: u32 = u32::MAX;
/// Set in `unique` of a request the kernel resends after FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND: u64 = 1 << 63;

macro_rules! abi_struct {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        const _: () = assert!(std::mem::size_of::<$name>() == $size, concat!("size of ", stringify!($name)));
    };
}

abi_struct!(
    /// `struct fuse_attr`.
    Attr, 88, {
    ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
    atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32,
    uid: u32, gid: u32, rdev: u32, blksize: u32, flags: u32,
});

abi_struct!(
    /// `struct fuse_sx_time`.
    SxTime, 16, { tv_sec: i64, tv_nsec: u32, reserved: i32 });

abi_struct!(
    /// `struct fuse_statx`: bit-for-bit the statx(2) ABI.
    Statx, 256, {
    mask: u32, blksize: u32, attributes: u64, nlink: u32, uid: u32, gid: u32,
    mode: u16, spare0: u16, ino: u64, size: u64, blocks: u64, attributes_mask: u64,
    atime: SxTime, btime: SxTime, ctime: SxTime, mtime: SxTime,
    rdev_major: u32, rdev_minor: u32, dev_major: u32, dev_minor: u32,
    spare2: [u64; 14],
});

abi_struct!(
    /// `struct fuse_kstatfs`.
    Kstatfs, 80, {
    blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64,
    bsize: u32, namelen: u32, frsize: u32, padding: u32, spare: [u32; 6],
});

abi_struct!(
    /// `struct fuse_file_lock`.
    FileLock, 24, { start: u64, end: u64, typ: u32, pid: u32 });

abi_struct!(
    /// `struct fuse_entry_out`: the reply to every request that names an inode.
    EntryOut, 128, {
    nodeid: NodeId, generation: u64, entry_valid: u64, attr_valid: u64,
    entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr,
});

abi_struct!(
    /// `struct fuse_entry_backing` (7.47, inode passthrough): follows
    /// [`EntryOut`] in LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE and TMPFILE
    /// replies when [`INIT_PASSTHROUGH_OPS`] was negotiated. READDIRPLUS keeps
    /// the legacy layout, because `fuse_direntplus` embeds `fuse_entry_out`,
    /// unless [`INIT_PASSTHROUGH_DIRENTPLUS`] was negotiated too: then one
    /// follows each (padded) `fuse_direntplus` record.
    EntryBacking, 8, { backing_id: BackingId, flags: u32 });

abi_struct!(ForgetIn, 8, { nlookup: u64 });
abi_struct!(ForgetOne, 16, { nodeid: NodeId, nlookup: u64 });
abi_struct!(BatchForgetIn, 8, { count: u32, dummy: u32 });
abi_struct!(GetattrIn, 16, { getattr_flags: u32, dummy: u32, fh: Fh });
abi_struct!(AttrOut, 104, { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr });
abi_struct!(StatxIn, 24, { getattr_flags: u32, reserved: u32, fh: Fh, sx_flags: u32, sx_mask: u32 });
abi_struct!(StatxOut, 288, { attr_valid: u64, attr_valid_nsec: u32, flags: u32, spare: [u64; 2], stat: Statx });
abi_struct!(MknodIn, 16, { mode: u32, rdev: u32, umask: u32, padding: u32 });
abi_struct!(MkdirIn, 8, { mode: u32, umask: u32 });
abi_struct!(RenameIn, 8, { newdir: NodeId });
abi_struct!(Rename2In, 16, { newdir: NodeId, flags: u32, padding: u32 });
abi_struct!(LinkIn, 8, { oldnodeid: NodeId });
abi_struct!(
    /// `struct fuse_setattr_in`; `valid` holds [`SetattrValid`] bits.
    SetattrIn, 88, {
    valid: u32, padding: u32, fh: Fh, size: u64, lock_owner: LockOwner,
    atime: u64, mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32,
    mode: u32, unused4: u32, uid: u32, gid: u32, unused5: u32,
});
abi_struct!(OpenIn, 8, { flags: u32, open_flags: u32 });
abi_struct!(CreateIn, 16, { flags: u32, mode: u32, umask: u32, open_flags: u32 });
abi_struct!(OpenOut, 16, { fh: Fh, open_flags: u32, backing_id: BackingId });
abi_struct!(ReleaseIn, 24, { fh: Fh, flags: u32, release_flags: u32, lock_owner: LockOwner });
abi_struct!(FlushIn, 24, { fh: Fh, unused: u32, padding: u32, lock_owner: LockOwner });
abi_struct!(ReadIn, 40, {
    fh: Fh, offset: u64, size: u32, read_flags: u32, lock_owner: LockOwner, flags: u32, padding: u32,
});
abi_struct!(WriteIn, 40, {
    fh: Fh, offset: u64, size: u32, write_flags: u32, lock_owner: LockOwner, flags: u32, padding: u32,
});
abi_struct!(WriteOut, 8, { size: u32, padding: u32 });
abi_struct!(StatfsOut, 80, { st: Kstatfs });
abi_struct!(FsyncIn, 16, { fh: Fh, fsync_flags: u32, padding: u32 });
abi_struct!(SetxattrIn, 16, { size: u32, flags: u32, setxattr_flags: u32, padding: u32 });
abi_struct!(
    /// The 8-byte `fuse_setxattr_in` used unless FUSE_SETXATTR_EXT was negotiated.
    SetxattrInCompat, 8, { size: u32, flags: u32 });
abi_struct!(GetxattrIn, 8, { size: u32, padding: u32 });
abi_struct!(GetxattrOut, 8, { size: u32, padding: u32 });
abi_struct!(LkIn, 48, { fh: Fh, owner: LockOwner, lk: FileLock, lk_flags: u32, padding: u32 });
abi_struct!(LkOut, 24, { lk: FileLock });
abi_struct!(AccessIn, 8, { mask: u32, padding: u32 });
abi_struct!(InitIn, 64, {
    major: u32, minor: u32, max_readahead: u32, flags: u32, flags2: u32, unused: [u32; 11],
});
abi_struct!(
    /// The part of `fuse_init_in` that kernels before 7.36 (no INIT_EXT) send.
    InitInCompat, 16, { major: u32, minor: u32, max_readahead: u32, flags: u32 });
abi_struct!(InitOut, 64, {
    major: u32, minor: u32, max_readahead: u32, flags: u32,
    max_background: u16, congestion_threshold: u16, max_write: u32, time_gran: u32,
    max_pages: u16, map_alignment: u16, flags2: u32, max_stack_depth: u32,
    request_timeout: u16, unused: [u16; 11],
});
abi_struct!(InterruptIn, 8, { unique: u64 });
abi_struct!(BmapIn, 16, { block: u64, blocksize: u32, padding: u32 });
abi_struct!(BmapOut, 8, { block: u64 });
abi_struct!(IoctlIn, 32, {
    fh: Fh, flags: u32, cmd: u32, arg: u64, in_size: u32, out_size: u32,
});
abi_struct!(PollIn, 24, { fh: Fh, kh: u64, flags: u32, events: u32 });
abi_struct!(PollOut, 8, { revents: u32, padding: u32 });
abi_struct!(FallocateIn, 32, { fh: Fh, offset: u64, length: u64, mode: u32, padding: u32 });
abi_struct!(
    /// `struct fuse_in_header`: starts every request.
    InHeader, 40, {
    len: u32, opcode: u32, unique: u64, nodeid: NodeId, uid: u32, gid: u32, pid: u32,
    /// Length of the extensions at the end of the request, in 8-byte units.
    total_extlen: u16, padding: u16,
});
abi_struct!(
    /// `struct fuse_out_header`: starts every reply and notification.
    OutHeader, 16, { len: u32, error: i32, unique: u64 });
abi_struct!(
    /// `struct fuse_dirent` without its trailing name.
    Dirent, 24, { ino: u64, off: u64, namelen: u32, typ: u32 });
abi_struct!(
    /// `struct fuse_direntplus` without its trailing name.
    DirentPlus, 152, { entry_out: EntryOut, dirent: Dirent });
abi_struct!(NotifyInvalInodeOut, 24, { ino: NodeId, off: i64, len: i64 });
abi_struct!(NotifyInvalEntryOut, 16, { parent: u64, namelen: u32, flags: u32 });
abi_struct!(NotifyDeleteOut, 24, { parent: u64, child: u64, namelen: u32, padding: u32 });
abi_struct!(
    /// `struct fuse_backing_map`, the argument of [`DEV_IOC_BACKING_OPEN`].
    /// Linux 7.3 calls the last field `padding` and requires 0; our series
    /// renames it `ops_mask` (see [`passthrough_op`]), valid only after
    /// [`INIT_PASSTHROUGH_OPS`] was negotiated.
    BackingMap, 16, { fd: i32, flags: u32, ops_mask: u64 });
abi_struct!(LseekIn, 24, { fh: Fh, offset: u64, whence: u32, padding: u32 });
abi_struct!(LseekOut, 8, { offset: u64 });
abi_struct!(CopyFileRangeIn, 56, {
    fh_in: Fh, off_in: u64, nodeid_out: NodeId, fh_out: Fh, off_out: u64, len: u64, flags: u64,
});
abi_struct!(CopyFileRangeOut, 8, { bytes_copied: u64 });
abi_struct!(SyncfsIn, 8, { padding: u64 });
abi_struct!(
    /// `struct fuse_ext_header`: each request extension starts with one.
    ExtHeader, 8, { size: u32, typ: u32 });

/// `FUSE_EXT_GROUPS`: `struct fuse_supp_groups` (u32 count, then u32 gids).
pub const EXT_GROUPS: u32 = 32;
/// Types 0..=31 are security contexts (`FUSE_MAX_NR_SECCTX`).
pub const MAX_NR_SECCTX: u32 = 31;

/// `FUSE_PASSTHROUGH_OP(op)`: the bit of `op` in [`BackingMap::ops_mask`].
pub const fn passthrough_op(op: Opcode) -> u64 {
    1u64 << ((op as u32) - 1)
}

macro_rules! opcodes {
    ($($name:ident = $val:expr),* $(,)?) => {
        /// `enum fuse_opcode`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Opcode { $($name = $val),* }
        impl Opcode {
            /// Every opcode, for iteration (stats, masks).
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];
            /// The opcode of a raw request, or `None` for one we do not know
            /// (answered ENOSYS by the dispatcher).
            pub fn from_u32(v: u32) -> Option<Opcode> {
                match v { $($val => Some(Opcode::$name),)* _ => None }
            }
        }
    };
}

opcodes! {
    Lookup = 1, Forget = 2, Getattr = 3, Setattr = 4, Readlink = 5, Symlink = 6,
    Mknod = 8, Mkdir = 9, Unlink = 10, Rmdir = 11, Rename = 12, Link = 13, Open = 14,
    Read = 15, Write = 16, Statfs = 17, Release = 18, Fsync = 20, Setxattr = 21,
    Getxattr = 22, Listxattr = 23, Removexattr = 24, Flush = 25, Init = 26,
    Opendir = 27, Readdir = 28, Releasedir = 29, Fsyncdir = 30, Getlk = 31,
    Setlk = 32, Setlkw = 33, Access = 34, Create = 35, Interrupt = 36, Bmap = 37,
    Destroy = 38, Ioctl = 39, Poll = 40, NotifyReply = 41, BatchForget = 42,
    Fallocate = 43, Readdirplus = 44, Rename2 = 45, Lseek = 46, CopyFileRange = 47,
    SetupMapping = 48, RemoveMapping = 49, Syncfs = 50, Tmpfile = 51, Statx = 52,
    CopyFileRange64 = 53,
}

impl Opcode {
    /// The kernel's name without the `FUSE_` prefix, as used in stats.
    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            Lookup => "LOOKUP",
            Forget => "FORGET",
            Getattr => "GETATTR",
            Setattr => "SETATTR",
            Readlink => "READLINK",
            Symlink => "SYMLINK",
            Mknod => "MKNOD",
            Mkdir => "MKDIR",
            Unlink => "UNLINK",
            Rmdir => "RMDIR",
            Rename => "RENAME",
            Link => "LINK",
            Open => "OPEN",
            Read => "READ",
            Write => "WRITE",
            Statfs => "STATFS",
            Release => "RELEASE",
            Fsync => "FSYNC",
            Setxattr => "SETXATTR",
            Getxattr => "GETXATTR",
            Listxattr => "LISTXATTR",
            Removexattr => "REMOVEXATTR",
            Flush => "FLUSH",
            Init => "INIT",
            Opendir => "OPENDIR",
            Readdir => "READDIR",
            Releasedir => "RELEASEDIR",
            Fsyncdir => "FSYNCDIR",
            Getlk => "GETLK",
            Setlk => "SETLK",
            Setlkw => "SETLKW",
            Access => "ACCESS",
            Create => "CREATE",
            Interrupt => "INTERRUPT",
            Bmap => "BMAP",
            Destroy => "DESTROY",
            Ioctl => "IOCTL",
            Poll => "POLL",
            NotifyReply => "NOTIFY_REPLY",
            BatchForget => "BATCH_FORGET",
            Fallocate => "FALLOCATE",
            Readdirplus => "READDIRPLUS",
            Rename2 => "RENAME2",
            Lseek => "LSEEK",
            CopyFileRange => "COPY_FILE_RANGE",
            SetupMapping => "SETUPMAPPING",
            RemoveMapping => "REMOVEMAPPING",
            Syncfs => "SYNCFS",
            Tmpfile => "TMPFILE",
            Statx => "STATX",
            CopyFileRange64 => "COPY_FILE_RANGE_64",
        }
    }

    /// Parses a stats/CLI name (case-insensitive, with or without `FUSE_`).
    pub fn from_name(name: &str) -> Option<Opcode> {
        let upper = name.trim().to_ascii_uppercase();
        let upper = upper.strip_prefix("FUSE_").unwrap_or(&upper);
        Opcode::ALL.iter().copied().find(|op| op.name() == upper)
    }
}

/// Largest opcode value, for counter arrays.
pub const MAX_OPCODE: usize = 53;

bitflags! {
    /// INIT flags, both halves: bits 0..31 travel in `flags`, bits 32..63 in
    /// `flags2` (only when [`InitFlags::INIT_EXT`] is set).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct InitFlags: u64 {
        const ASYNC_READ = 1 << 0;
        const POSIX_LOCKS = 1 << 1;
        const FILE_OPS = 1 << 2;
        const ATOMIC_O_TRUNC = 1 << 3;
        const EXPORT_SUPPORT = 1 << 4;
        const BIG_WRITES = 1 << 5;
        const DONT_MASK = 1 << 6;
        const SPLICE_WRITE = 1 << 7;
        const SPLICE_MOVE = 1 << 8;
        const SPLICE_READ = 1 << 9;
        const FLOCK_LOCKS = 1 << 10;
        const HAS_IOCTL_DIR = 1 << 11;
        const AUTO_INVAL_DATA = 1 << 12;
        const DO_READDIRPLUS = 1 << 13;
        const READDIRPLUS_AUTO = 1 << 14;
        const ASYNC_DIO = 1 << 15;
        const WRITEBACK_CACHE = 1 << 16;
        const NO_OPEN_SUPPORT = 1 << 17;
        const PARALLEL_DIROPS = 1 << 18;
        const HANDLE_KILLPRIV = 1 << 19;
        const POSIX_ACL = 1 << 20;
        const ABORT_ERROR = 1 << 21;
        const MAX_PAGES = 1 << 22;
        const CACHE_SYMLINKS = 1 << 23;
        const NO_OPENDIR_SUPPORT = 1 << 24;
        const EXPLICIT_INVAL_DATA = 1 << 25;
        const MAP_ALIGNMENT = 1 << 26;
        const SUBMOUNTS = 1 << 27;
        const HANDLE_KILLPRIV_V2 = 1 << 28;
        const SETXATTR_EXT = 1 << 29;
        const INIT_EXT = 1 << 30;
        const INIT_RESERVED = 1 << 31;
        const SECURITY_CTX = 1 << 32;
        const HAS_INODE_DAX = 1 << 33;
        const CREATE_SUPP_GROUP = 1 << 34;
        const HAS_EXPIRE_ONLY = 1 << 35;
        const DIRECT_IO_ALLOW_MMAP = 1 << 36;
        const PASSTHROUGH = 1 << 37;
        const NO_EXPORT_SUPPORT = 1 << 38;
        const HAS_RESEND = 1 << 39;
        const ALLOW_IDMAP = 1 << 40;
        const OVER_IO_URING = 1 << 41;
        const REQUEST_TIMEOUT = 1 << 42;
        const HAS_IO_URING_BUFPOOL = 1 << 43;
        /// Our series (7.47), `FUSE_PASSTHROUGH_OPS`: backing ids on entry
        /// replies, ops masks on backing maps.
        const PASSTHROUGH_OPS = INIT_PASSTHROUGH_OPS;
        /// The same bit under the series' former name (`FUSE_PASSTHROUGH_INO`,
        /// renamed because upstream's inode passthrough uses that name).
        const PASSTHROUGH_INO = INIT_PASSTHROUGH_OPS;
        /// Our series (patch 0013), `FUSE_PASSTHROUGH_DIRENTPLUS`: READDIRPLUS
        /// entries carry a `fuse_entry_backing` (only with PASSTHROUGH_OPS).
        const PASSTHROUGH_DIRENTPLUS = INIT_PASSTHROUGH_DIRENTPLUS;
        // Bits a newer kernel sets are kept as unknown, never echoed back.
        const _ = !0;
    }
}

/// `FUSE_PASSTHROUGH_OPS` (formerly `FUSE_PASSTHROUGH_INO`), bit 12 of
/// `flags2`. Upstream's `FUSE_PASSTHROUGH_INO` is another flag.
pub const INIT_PASSTHROUGH_OPS: u64 = 1 << 44;

/// `FUSE_PASSTHROUGH_DIRENTPLUS`, bit 13 of `flags2`: each READDIRPLUS record
/// is followed by an [`EntryBacking`].
pub const INIT_PASSTHROUGH_DIRENTPLUS: u64 = 1 << 45;

bitflags! {
    /// `fuse_open_out.open_flags` (FOPEN_*).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct OpenOutFlags: u32 {
        const DIRECT_IO = 1 << 0;
        const KEEP_CACHE = 1 << 1;
        const NONSEEKABLE = 1 << 2;
        const CACHE_DIR = 1 << 3;
        const STREAM = 1 << 4;
        const NOFLUSH = 1 << 5;
        const PARALLEL_DIRECT_WRITES = 1 << 6;
        const PASSTHROUGH = 1 << 7;
        const IO_URING_ZERO_COPY = 1 << 8;
    }
}

bitflags! {
    /// `fuse_setattr_in.valid` (FATTR_*).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SetattrValid: u32 {
        const MODE = 1 << 0;
        const UID = 1 << 1;
        const GID = 1 << 2;
        const SIZE = 1 << 3;
        const ATIME = 1 << 4;
        const MTIME = 1 << 5;
        const FH = 1 << 6;
        const ATIME_NOW = 1 << 7;
        const MTIME_NOW = 1 << 8;
        const LOCKOWNER = 1 << 9;
        const CTIME = 1 << 10;
        const KILL_SUIDGID = 1 << 11;
        const _ = !0;
    }
}

/// `FUSE_RELEASE_FLUSH`.
pub const RELEASE_FLUSH: u32 = 1 << 0;
/// `FUSE_RELEASE_FLOCK_UNLOCK`.
pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
/// `FUSE_GETATTR_FH`: `getattr_in.fh` is valid.
pub const GETATTR_FH: u32 = 1 << 0;
/// `FUSE_LK_FLOCK`: the lock request is a BSD flock.
pub const LK_FLOCK: u32 = 1 << 0;
/// `FUSE_WRITE_CACHE`: delayed write from the page cache, fh is guessed.
pub const WRITE_CACHE: u32 = 1 << 0;
/// `FUSE_WRITE_LOCKOWNER`.
pub const WRITE_LOCKOWNER: u32 = 1 << 1;
/// `FUSE_WRITE_KILL_SUIDGID`.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_READ_LOCKOWNER`.
pub const READ_LOCKOWNER: u32 = 1 << 1;
/// `FUSE_FSYNC_FDATASYNC`.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `FUSE_OPEN_KILL_SUIDGID`.
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `FUSE_SETXATTR_ACL_KILL_SGID`.
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// `FUSE_ATTR_SUBMOUNT`.
pub const ATTR_SUBMOUNT: u32 = 1 << 0;
/// `FUSE_EXPIRE_ONLY` for NOTIFY_INVAL_ENTRY.
pub const EXPIRE_ONLY: u32 = 1 << 0;

/// `enum fuse_notify_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum NotifyCode {
    Poll = 1,
    InvalInode = 2,
    InvalEntry = 3,
    Store = 4,
    Retrieve = 5,
    Delete = 6,
    Resend = 7,
    IncEpoch = 8,
    Prune = 9,
}

/// Rounds a dirent record up to 8 bytes (`FUSE_DIRENT_ALIGN`).
pub const fn dirent_align(len: usize) -> usize {
    (len + 7) & !7
}

// Device ioctls, `_IOR/_IOW(229, nr, type)` spelled out for x86/arm/riscv
// (the generic ioctl encoding: dir << 30 | size << 16 | type << 8 | nr).
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (229 << 8) | nr
}
/// `FUSE_DEV_IOC_CLONE`: attach a new /dev/fuse fd to an existing connection.
pub const DEV_IOC_CLONE: u64 = ioc(2, 0, 4);
/// `FUSE_DEV_IOC_BACKING_OPEN`: register a backing file, returns its id.
pub const DEV_IOC_BACKING_OPEN: u64 = ioc(1, 1, std::mem::size_of::<BackingMap>() as u64);
/// `FUSE_DEV_IOC_BACKING_CLOSE`: drop the id (the kernel keeps users alive).
pub const DEV_IOC_BACKING_CLOSE: u64 = ioc(1, 2, 4);

const _: () = assert!(DEV_IOC_CLONE == 0x8004_e500);
const _: () = assert!(DEV_IOC_BACKING_OPEN == 0x4010_e501);
const _: () = assert!(DEV_IOC_BACKING_CLOSE == 0x4004_e502);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trip() {
        for &op in Opcode::ALL {
            assert_eq!(Opcode::from_u32(op as u32), Some(op));
            assert_eq!(Opcode::from_name(op.name()), Some(op));
            assert!(op as usize <= MAX_OPCODE);
        }
        assert_eq!(Opcode::from_u32(7), None);
        assert_eq!(Opcode::from_u32(4096), None);
        assert_eq!(Opcode::from_name("fuse_getattr"), Some(Opcode::Getattr));
    }

    #[test]
    fn init_flag_halves() {
        let f = InitFlags::PASSTHROUGH | InitFlags::ASYNC_READ;
        assert_eq!(f.bits() as u32, 1);
        assert_eq!((f.bits() >> 32) as u32, 1 << 5);
        assert_eq!((InitFlags::PASSTHROUGH_INO.bits() >> 32) as u32, 1 << 12);
        // Unknown bits survive a round trip through the type.
        let unknown = InitFlags::from_bits_retain(1 << 60);
        assert_eq!(unknown.bits(), 1 << 60);
    }

    #[test]
    fn passthrough_op_bits() {
        assert_eq!(passthrough_op(Opcode::Lookup), 1);
        assert_eq!(passthrough_op(Opcode::Getattr), 1 << 2);
        assert_eq!(passthrough_op(Opcode::Statx), 1 << 51);
        assert_eq!(passthrough_op(Opcode::CopyFileRange64), 1 << 52);
    }

    #[test]
    fn dirent_alignment() {
        assert_eq!(dirent_align(24 + 1), 32);
        assert_eq!(dirent_align(24 + 8), 32);
        assert_eq!(dirent_align(152 + 3), 160);
    }
}
