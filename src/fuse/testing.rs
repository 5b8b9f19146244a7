//! Feeding raw requests to a filesystem without the kernel, for fuzzing
//! and hostile-input tests.
//!
//! The "device" is one end of a SEQPACKET socketpair: requests go straight
//! into the same dispatcher the workers use, replies come out at the other
//! end, one message each. INIT is done at construction with a typical set of
//! offered flags (no passthrough: a socket takes no backing ioctls).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use super::abi::{self, InHeader, InitFlags, InitIn, OutHeader};
use super::channel::{Channel, Connection};
use super::dispatch::{dispatch, DispatchState};
use super::filesystem::Filesystem;

/// A filesystem driven by hand-made requests.
pub struct Harness<F: Filesystem> {
    fs: Arc<F>,
    ch: Arc<Channel>,
    peer: OwnedFd,
    state: DispatchState,
}

/// The kernel offers these in INIT (Linux 6.18, minus passthrough).
pub fn typical_offered() -> InitFlags {
    InitFlags::ASYNC_READ
        | InitFlags::POSIX_LOCKS
        | InitFlags::ATOMIC_O_TRUNC
        | InitFlags::BIG_WRITES
        | InitFlags::DONT_MASK
        | InitFlags::FLOCK_LOCKS
        | InitFlags::DO_READDIRPLUS
        | InitFlags::READDIRPLUS_AUTO
        | InitFlags::PARALLEL_DIROPS
        | InitFlags::POSIX_ACL
        | InitFlags::MAX_PAGES
        | InitFlags::SETXATTR_EXT
        | InitFlags::INIT_EXT
        | InitFlags::CREATE_SUPP_GROUP
        | InitFlags::NO_EXPORT_SUPPORT
}

impl<F: Filesystem> Harness<F> {
    pub fn new(fs: Arc<F>) -> io::Result<Harness<F>> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let conn = Connection::new(a);
        let ch = Arc::new(conn.master_channel()?);
        let h = Harness {
            fs,
            ch,
            peer: b,
            state: DispatchState::new(1 << 20, false),
        };
        let offered = typical_offered().bits();
        let init = InitIn {
            major: abi::KERNEL_VERSION,
            minor: 45,
            max_readahead: 128 << 10,
            flags: offered as u32,
            flags2: (offered >> 32) as u32,
            ..Default::default()
        };
        let reply = h.request(abi::Opcode::Init as u32, 0, abi::ROOT_ID, init.as_bytes());
        match reply {
            Some((hdr, _)) if hdr.error == 0 => Ok(h),
            _ => Err(io::Error::other("INIT failed")),
        }
    }

    pub fn filesystem(&self) -> &Arc<F> {
        &self.fs
    }

    pub fn connection(&self) -> &Arc<Connection> {
        self.ch.connection()
    }

    /// Dispatches raw bytes exactly as read from the device; returns the
    /// reply written synchronously, if any (FORGET and friends have none).
    pub fn raw(&self, bytes: &[u8]) -> Option<(OutHeader, Vec<u8>)> {
        dispatch(&*self.fs, &self.ch, bytes, &self.state);
        self.try_reply()
    }

    /// Builds a well-formed request (header + body) and dispatches it.
    pub fn request(
        &self,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        body: &[u8],
    ) -> Option<(OutHeader, Vec<u8>)> {
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique,
            nodeid: abi::NodeId::from_raw(nodeid),
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        self.raw(&v)
    }

    /// The next reply, if one is waiting (replies of blocking lock waits
    /// arrive later, from their own threads).
    pub fn try_reply(&self) -> Option<(OutHeader, Vec<u8>)> {
        let mut buf = vec![0u8; (1 << 20) + 4096];
        let n = nix::sys::socket::recv(
            self.peer.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .unwrap_or(0);
        if n < std::mem::size_of::<OutHeader>() {
            return None;
        }
        buf.truncate(n);
        let (h, rest) = OutHeader::read_from_prefix(&buf).ok()?;
        Some((h, rest.to_vec()))
    }
}

/// A seeded xorshift64 generator for fuzzing and differential tests: the
/// same seed replays the same run. Not for anything that needs real
/// randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
