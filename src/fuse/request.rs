//! A typed view of one request read from /dev/fuse.
//!
//! Parsing is total: every length is checked against the bytes actually
//! present, names must be NUL-terminated inside their argument, and anything
//! malformed becomes a [`ParseError`] (answered EIO by the dispatcher) rather
//! than a panic. Fixed-size arguments are copied out of the buffer with
//! `zerocopy`, so the buffer needs no particular alignment.

use std::ffi::CStr;
use std::fmt;

use zerocopy::FromBytes;

use super::abi::*;

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than a header.
    ShortHeader(usize),
    /// `in_header.len` disagrees with the bytes read.
    LengthMismatch { header: u32, read: usize },
    /// The extension area claims more bytes than the request holds.
    BadExtensions,
    /// An argument of `opcode` is truncated or malformed.
    BadArgument { opcode: Opcode, what: &'static str },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ShortHeader(n) => {
                write!(f, "request of {n} bytes is shorter than its header")
            }
            ParseError::LengthMismatch { header, read } => {
                write!(f, "header says {header} bytes, {read} were read")
            }
            ParseError::BadExtensions => write!(f, "extension area exceeds the request"),
            ParseError::BadArgument { opcode, what } => {
                write!(f, "{}: malformed argument ({what})", opcode.name())
            }
        }
    }
}

/// What the parser needs to know about the negotiated protocol: a few
/// layouts depend on it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ParseConfig {
    /// FUSE_SETXATTR_EXT was negotiated: `fuse_setxattr_in` has 16 bytes.
    pub setxattr_ext: bool,
}

/// The fixed header of a request plus its unparsed body.
#[derive(Debug)]
pub struct Request<'a> {
    pub header: InHeader,
    /// Arguments, without the header and without the trailing extensions.
    pub body: &'a [u8],
    /// The extension area (`total_extlen * 8` bytes at the end).
    pub extensions: &'a [u8],
}

impl<'a> Request<'a> {
    /// Splits a raw request into header, body and extensions.
    pub fn parse(buf: &'a [u8]) -> Result<Request<'a>, ParseError> {
        let (header, rest) =
            InHeader::read_from_prefix(buf).map_err(|_| ParseError::ShortHeader(buf.len()))?;
        if header.len as usize != buf.len() {
            return Err(ParseError::LengthMismatch {
                header: header.len,
                read: buf.len(),
            });
        }
        let ext_len = header.total_extlen as usize * 8;
        let body_len = rest
            .len()
            .checked_sub(ext_len)
            .ok_or(ParseError::BadExtensions)?;
        let (body, extensions) = rest.split_at(body_len);
        Ok(Request {
            header,
            body,
            extensions,
        })
    }

    /// The opcode, if we know it.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u32(self.header.opcode)
    }

    /// The supplementary group sent with create-type requests
    /// (FUSE_CREATE_SUPP_GROUP), if any. Malformed extensions are ignored:
    /// they only ever widen what the caller may do, never narrow it.
    pub fn supplementary_groups(&self) -> Vec<u32> {
        let mut groups = Vec::new();
        let mut ext = self.extensions;
        while let Ok((xh, _)) = ExtHeader::read_from_prefix(ext) {
            let size = xh.size as usize;
            if size < std::mem::size_of::<ExtHeader>() || size > ext.len() {
                break;
            }
            if xh.typ == EXT_GROUPS {
                let payload = &ext[std::mem::size_of::<ExtHeader>()..size];
                if let Ok((nr, mut ids)) = u32::read_from_prefix(payload) {
                    for _ in 0..nr {
                        match u32::read_from_prefix(ids) {
                            Ok((gid, rest)) => {
                                groups.push(gid);
                                ids = rest;
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            ext = &ext[size..];
        }
        groups
    }

    /// Parses the body into a typed operation.
    pub fn operation(&self, cfg: &ParseConfig) -> Result<Operation<'a>, ParseError> {
        let Some(opcode) = self.opcode() else {
            return Ok(Operation::Unknown(self.header.opcode));
        };
        let mut a = Args {
            buf: self.body,
            opcode,
        };
        if let Some(op) = a.file_operation(cfg)? {
            return Ok(op);
        }
        use Operation as O;
        let op = match opcode {
            Opcode::Lookup => O::Lookup { name: a.name()? },
            Opcode::Forget => O::Forget(a.fixed::<ForgetIn>()?),
            Opcode::BatchForget => a.batch_forget()?,
            Opcode::Getattr => O::Getattr(a.fixed()?),
            Opcode::Setattr => O::Setattr(a.fixed()?),
            Opcode::Readlink => O::Readlink,
            Opcode::Symlink => {
                let name = a.name()?;
                O::Symlink {
                    name,
                    target: a.name()?,
                }
            }
            Opcode::Mknod => {
                let arg = a.fixed()?;
                O::Mknod {
                    arg,
                    name: a.name()?,
                }
            }
            Opcode::Mkdir => {
                let arg = a.fixed()?;
                O::Mkdir {
                    arg,
                    name: a.name()?,
                }
            }
            Opcode::Unlink => O::Unlink { name: a.name()? },
            Opcode::Rmdir => O::Rmdir { name: a.name()? },
            Opcode::Rename | Opcode::Rename2 => a.rename()?,
            Opcode::Link => {
                let arg: LinkIn = a.fixed()?;
                O::Link {
                    oldnodeid: arg.oldnodeid,
                    newname: a.name()?,
                }
            }
            // NOTIFY_REPLY, SETUP_MAPPING, REMOVE_MAPPING (the others are
            // the file operations above).
            _ => O::Unknown(self.header.opcode),
        };
        Ok(op)
    }
}

/// A cursor over the argument bytes of one request.
struct Args<'a> {
    buf: &'a [u8],
    opcode: Opcode,
}

/// The requests whose arguments take more than a field and a name.
impl<'a> Args<'a> {
    /// Open files, directories, xattrs, locks and the session: `None` for
    /// the name and inode operations.
    fn file_operation(&mut self, cfg: &ParseConfig) -> Result<Option<Operation<'a>>, ParseError> {
        use Operation as O;
        let a = self;
        let op = match a.opcode {
            Opcode::Open => O::Open(a.fixed()?),
            Opcode::Read => O::Read(a.fixed()?),
            Opcode::Write => {
                let arg: WriteIn = a.fixed()?;
                let data = a.bytes(arg.size as usize, "write payload")?;
                O::Write { arg, data }
            }
            Opcode::Statfs => O::Statfs,
            Opcode::Release => O::Release(a.fixed()?),
            Opcode::Fsync => O::Fsync(a.fixed()?),
            Opcode::Setxattr => a.setxattr(cfg)?,
            Opcode::Getxattr => {
                let arg = a.fixed()?;
                O::Getxattr {
                    arg,
                    name: a.name()?,
                }
            }
            Opcode::Listxattr => O::Listxattr(a.fixed()?),
            Opcode::Removexattr => O::Removexattr { name: a.name()? },
            Opcode::Flush => O::Flush(a.fixed()?),
            Opcode::Init => O::Init(a.init()?),
            Opcode::Opendir => O::Opendir(a.fixed()?),
            Opcode::Readdir => O::Readdir(a.fixed()?),
            Opcode::Readdirplus => O::Readdirplus(a.fixed()?),
            Opcode::Releasedir => O::Releasedir(a.fixed()?),
            Opcode::Fsyncdir => O::Fsyncdir(a.fixed()?),
            Opcode::Getlk => O::Getlk(a.fixed()?),
            Opcode::Setlk => O::Setlk {
                arg: a.fixed()?,
                sleep: false,
            },
            Opcode::Setlkw => O::Setlk {
                arg: a.fixed()?,
                sleep: true,
            },
            Opcode::Access => O::Access(a.fixed()?),
            Opcode::Create => {
                let arg = a.fixed()?;
                O::Create {
                    arg,
                    name: a.name()?,
                }
            }
            Opcode::Tmpfile => {
                let arg = a.fixed()?;
                // The kernel sends a name for TMPFILE too; it has no meaning.
                let _ = a.name();
                O::Tmpfile { arg }
            }
            Opcode::Interrupt => O::Interrupt(a.fixed()?),
            Opcode::Bmap => O::Bmap(a.fixed()?),
            Opcode::Destroy => O::Destroy,
            Opcode::Ioctl => O::Ioctl(a.fixed()?),
            Opcode::Poll => O::Poll(a.fixed()?),
            Opcode::Fallocate => O::Fallocate(a.fixed()?),
            Opcode::Lseek => O::Lseek(a.fixed()?),
            Opcode::CopyFileRange => O::CopyFileRange {
                arg: a.fixed()?,
                wide: false,
            },
            Opcode::CopyFileRange64 => O::CopyFileRange {
                arg: a.fixed()?,
                wide: true,
            },
            Opcode::Syncfs => O::Syncfs,
            Opcode::Statx => O::Statx(a.fixed()?),
            _ => return Ok(None),
        };
        Ok(Some(op))
    }

    fn batch_forget(&mut self) -> Result<Operation<'a>, ParseError> {
        let head: BatchForgetIn = self.fixed()?;
        Ok(Operation::BatchForget(BatchForget {
            count: head.count,
            entries: self.rest(),
        }))
    }

    /// RENAME and RENAME2 (which adds renameat2 flags).
    fn rename(&mut self) -> Result<Operation<'a>, ParseError> {
        let (newdir, flags) = if self.opcode == Opcode::Rename2 {
            let arg: Rename2In = self.fixed()?;
            (arg.newdir, arg.flags)
        } else {
            let arg: RenameIn = self.fixed()?;
            (arg.newdir, 0)
        };
        let name = self.name()?;
        Ok(Operation::Rename {
            newdir,
            flags,
            name,
            newname: self.name()?,
        })
    }

    fn setxattr(&mut self, cfg: &ParseConfig) -> Result<Operation<'a>, ParseError> {
        let arg = if cfg.setxattr_ext {
            self.fixed::<SetxattrIn>()?
        } else {
            let c: SetxattrInCompat = self.fixed()?;
            SetxattrIn {
                size: c.size,
                flags: c.flags,
                ..Default::default()
            }
        };
        let name = self.name()?;
        let value = self.bytes(arg.size as usize, "xattr value")?;
        Ok(Operation::Setxattr { arg, name, value })
    }

    fn init(&mut self) -> Result<InitIn, ParseError> {
        // Kernels before 7.36 send only the first 16 bytes.
        if self.buf.len() >= std::mem::size_of::<InitIn>() {
            return self.fixed();
        }
        let c: InitInCompat = self.fixed()?;
        Ok(InitIn {
            major: c.major,
            minor: c.minor,
            max_readahead: c.max_readahead,
            flags: c.flags,
            ..Default::default()
        })
    }
}

impl<'a> Args<'a> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError::BadArgument {
            opcode: self.opcode,
            what,
        }
    }

    fn fixed<T: FromBytes>(&mut self) -> Result<T, ParseError> {
        let (v, rest) = T::read_from_prefix(self.buf).map_err(|_| self.err("truncated struct"))?;
        self.buf = rest;
        Ok(v)
    }

    /// A NUL-terminated name; the NUL must lie inside the remaining bytes.
    fn name(&mut self) -> Result<&'a CStr, ParseError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("name without NUL"))?;
        let (name, rest) = self.buf.split_at(nul + 1);
        self.buf = rest;
        CStr::from_bytes_with_nul(name).map_err(|_| self.err("bad name"))
    }

    fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if len > self.buf.len() {
            return Err(self.err(what));
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// The entries of a BATCH_FORGET, decoded lazily: `count` comes from the
/// kernel and is only trusted as far as the bytes present.
#[derive(Debug, Clone, Copy)]
pub struct BatchForget<'a> {
    pub count: u32,
    pub entries: &'a [u8],
}

impl<'a> BatchForget<'a> {
    /// The entries actually present (at most `count`).
    pub fn iter(&self) -> impl Iterator<Item = ForgetOne> + 'a {
        let n = (self.count as usize).min(self.entries.len() / std::mem::size_of::<ForgetOne>());
        self.entries
            .chunks_exact(std::mem::size_of::<ForgetOne>())
            .take(n)
            .filter_map(|c| ForgetOne::read_from_bytes(c).ok())
    }
}

/// One parsed request.
#[derive(Debug)]
pub enum Operation<'a> {
    Lookup {
        name: &'a CStr,
    },
    Forget(ForgetIn),
    BatchForget(BatchForget<'a>),
    Getattr(GetattrIn),
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a CStr,
        target: &'a CStr,
    },
    Mknod {
        arg: MknodIn,
        name: &'a CStr,
    },
    Mkdir {
        arg: MkdirIn,
        name: &'a CStr,
    },
    Unlink {
        name: &'a CStr,
    },
    Rmdir {
        name: &'a CStr,
    },
    Rename {
        newdir: NodeId,
        flags: u32,
        name: &'a CStr,
        newname: &'a CStr,
    },
    Link {
        oldnodeid: NodeId,
        newname: &'a CStr,
    },
    Open(OpenIn),
    Read(ReadIn),
    Write {
        arg: WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(ReleaseIn),
    Fsync(FsyncIn),
    Setxattr {
        arg: SetxattrIn,
        name: &'a CStr,
        value: &'a [u8],
    },
    Getxattr {
        arg: GetxattrIn,
        name: &'a CStr,
    },
    Listxattr(GetxattrIn),
    Removexattr {
        name: &'a CStr,
    },
    Flush(FlushIn),
    Init(InitIn),
    Opendir(OpenIn),
    Readdir(ReadIn),
    Readdirplus(ReadIn),
    Releasedir(ReleaseIn),
    Fsyncdir(FsyncIn),
    Getlk(LkIn),
    Setlk {
        arg: LkIn,
        sleep: bool,
    },
    Access(AccessIn),
    Create {
        arg: CreateIn,
        name: &'a CStr,
    },
    Tmpfile {
        arg: CreateIn,
    },
    Interrupt(InterruptIn),
    Bmap(BmapIn),
    Destroy,
    Ioctl(IoctlIn),
    Poll(PollIn),
    Fallocate(FallocateIn),
    Lseek(LseekIn),
    /// `wide`: FUSE_COPY_FILE_RANGE_64, answered with a 64-bit count.
    CopyFileRange {
        arg: CopyFileRangeIn,
        wide: bool,
    },
    Syncfs,
    Statx(StatxIn),
    /// An opcode we do not implement; answered ENOSYS.
    Unknown(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn request(opcode: u32, body: &[u8], ext: &[u8]) -> Vec<u8> {
        let len = 40 + body.len() + ext.len();
        let h = InHeader {
            len: len as u32,
            opcode,
            unique: 7,
            nodeid: NodeId::from_raw(1),
            total_extlen: (ext.len() / 8) as u16,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(body);
        v.extend_from_slice(ext);
        v
    }

    #[test]
    fn lookup_name() {
        let buf = request(1, b"hello\0", &[]);
        let r = Request::parse(&buf).unwrap();
        match r.operation(&ParseConfig::default()).unwrap() {
            Operation::Lookup { name } => assert_eq!(name.to_bytes(), b"hello"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn name_without_nul_is_an_error() {
        let buf = request(1, b"hello", &[]);
        let r = Request::parse(&buf).unwrap();
        assert!(matches!(
            r.operation(&ParseConfig::default()),
            Err(ParseError::BadArgument { .. })
        ));
    }

    #[test]
    fn lying_lengths() {
        let mut buf = request(1, b"x\0", &[]);
        buf[0] = 200;
        assert!(matches!(
            Request::parse(&buf),
            Err(ParseError::LengthMismatch { .. })
        ));
        let mut buf = request(1, b"x\0", &[]);
        buf[36] = 50; // total_extlen
        assert_eq!(Request::parse(&buf).unwrap_err(), ParseError::BadExtensions);
        assert!(matches!(
            Request::parse(&buf[..10]),
            Err(ParseError::ShortHeader(10))
        ));
    }

    #[test]
    fn write_payload_bounds() {
        let w = WriteIn {
            size: 100,
            ..Default::default()
        };
        let mut body = w.as_bytes().to_vec();
        body.extend_from_slice(&[1u8; 10]);
        let buf = request(16, &body, &[]);
        let r = Request::parse(&buf).unwrap();
        assert!(r.operation(&ParseConfig::default()).is_err());
    }

    #[test]
    fn supplementary_group_extension() {
        let mut ext = ExtHeader {
            size: 16,
            typ: EXT_GROUPS,
        }
        .as_bytes()
        .to_vec();
        ext.extend_from_slice(&1u32.to_ne_bytes());
        ext.extend_from_slice(&1234u32.to_ne_bytes());
        let c = CreateIn::default();
        let mut body = c.as_bytes().to_vec();
        body.extend_from_slice(b"f\0");
        let buf = request(35, &body, &ext);
        let r = Request::parse(&buf).unwrap();
        assert_eq!(r.supplementary_groups(), vec![1234]);
        assert!(matches!(
            r.operation(&ParseConfig::default()).unwrap(),
            Operation::Create { .. }
        ));
    }

    #[test]
    fn batch_forget_count_is_bounded_by_bytes() {
        let head = BatchForgetIn {
            count: 1000,
            dummy: 0,
        };
        let mut body = head.as_bytes().to_vec();
        body.extend_from_slice(
            ForgetOne {
                nodeid: NodeId::from_raw(5),
                nlookup: 2,
            }
            .as_bytes(),
        );
        let buf = request(42, &body, &[]);
        let r = Request::parse(&buf).unwrap();
        match r.operation(&ParseConfig::default()).unwrap() {
            Operation::BatchForget(b) => {
                let v: Vec<_> = b.iter().collect();
                assert_eq!(
                    v,
                    vec![ForgetOne {
                        nodeid: NodeId::from_raw(5),
                        nlookup: 2
                    }]
                );
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn setxattr_layout_depends_on_negotiation() {
        let mut body = SetxattrInCompat { size: 3, flags: 0 }.as_bytes().to_vec();
        body.extend_from_slice(b"user.a\0abc");
        let buf = request(21, &body, &[]);
        let r = Request::parse(&buf).unwrap();
        match r
            .operation(&ParseConfig {
                setxattr_ext: false,
            })
            .unwrap()
        {
            Operation::Setxattr { name, value, .. } => {
                assert_eq!(name.to_bytes(), b"user.a");
                assert_eq!(value, b"abc");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn unknown_opcode() {
        let buf = request(9999, b"", &[]);
        let r = Request::parse(&buf).unwrap();
        assert!(matches!(
            r.operation(&ParseConfig::default()).unwrap(),
            Operation::Unknown(9999)
        ));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Random bytes never panic the parser.
        #[test]
        fn random_bytes(buf in proptest::collection::vec(any::<u8>(), 0..512), ext in any::<bool>()) {
            if let Ok(r) = Request::parse(&buf) {
                let _ = r.operation(&ParseConfig { setxattr_ext: ext });
                let _ = r.supplementary_groups();
            }
        }

        /// Well-formed headers with random opcodes and bodies, lengths that
        /// match: every opcode's argument parsing is exercised.
        #[test]
        fn random_bodies(opcode in 0u32..60, body in proptest::collection::vec(any::<u8>(), 0..300), extlen in 0u16..4) {
            use zerocopy::IntoBytes;
            let len = 40 + body.len();
            let h = InHeader { len: len as u32, opcode, unique: 1, nodeid: NodeId::from_raw(1), total_extlen: extlen, ..Default::default() };
            let mut v = h.as_bytes().to_vec();
            v.extend_from_slice(&body);
            if let Ok(r) = Request::parse(&v) {
                let _ = r.operation(&ParseConfig { setxattr_ext: true });
                let _ = r.operation(&ParseConfig { setxattr_ext: false });
                let _ = r.supplementary_groups();
                if let Ok(Operation::BatchForget(b)) = r.operation(&ParseConfig::default()) {
                    let _ = b.iter().count();
                }
            }
        }
    }
}
