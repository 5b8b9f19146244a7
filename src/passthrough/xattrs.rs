//! Extended attributes: getxattr, listxattr, setxattr, removexattr, on the
//! inode's O_PATH fd (through its /proc/self/fd magic link, see `sys.rs`).

use std::ffi::CStr;

use super::*;

/// XATTR_SIZE_MAX and XATTR_LIST_MAX of linux/limits.h.
const XATTR_MAX: usize = 65536;

impl PassthroughFs {
    /// GETXATTR and LISTXATTR share their reply rule: with size 0 the
    /// caller asks how big the value is, otherwise for the bytes.
    fn xattr_query(
        &self,
        ctx: &Context,
        nodeid: u64,
        size: u32,
        reply: ReplyXattr,
        query: impl FnOnce(std::os::fd::BorrowedFd<'_>, &mut [u8]) -> sys::Result<usize>,
    ) {
        let r = (|| {
            let inode = self.inode(nodeid, ctx.opcode)?;
            let fd = self.table.fd(&inode)?;
            // No value or list is bigger than 64 KiB (XATTR_SIZE_MAX,
            // XATTR_LIST_MAX); a larger size never means a larger buffer.
            let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
            let _g = self.as_caller(ctx, false)?;
            let n = query(fd.fd(), &mut buf)?;
            buf.truncate(n);
            Ok::<_, Errno>((n, buf))
        })();
        match r {
            Ok((n, _)) if size == 0 => reply.size(n as u32),
            Ok((_, buf)) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn do_getxattr(
        &self,
        ctx: &Context,
        nodeid: u64,
        name: &CStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        self.xattr_query(ctx, nodeid, size, reply, |fd, buf| {
            crate::sandbox::forbidden_syscall_hook(name, buf)
                .unwrap_or_else(|| sys::getxattr(fd, name, buf))
        })
    }

    pub(super) fn do_listxattr(&self, ctx: &Context, nodeid: u64, size: u32, reply: ReplyXattr) {
        self.xattr_query(ctx, nodeid, size, reply, sys::listxattr)
    }

    pub(super) fn do_setxattr(
        &self,
        ctx: &Context,
        nodeid: u64,
        name: &CStr,
        value: &[u8],
        arg: &abi::SetxattrIn,
    ) -> Result<(), Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        {
            let _g = self.as_caller(ctx, false)?;
            sys::setxattr(fd.fd(), name, value, arg.flags as i32)?;
        }
        // Setting an access ACL by a caller outside the file's group and
        // without CAP_FSETID clears setgid; the host will not do it for us
        // (we are root), so the kernel asks us to.
        if arg.setxattr_flags & abi::SETXATTR_ACL_KILL_SGID != 0
            && name.to_bytes() == b"system.posix_acl_access"
        {
            let st = sys::statx(fd.fd(), libc::STATX_MODE)?;
            let mode = st.stx_mode as u32;
            if mode & libc::S_ISGID != 0 {
                sys::fchmod_empty(fd.fd(), mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    pub(super) fn do_removexattr(
        &self,
        ctx: &Context,
        nodeid: u64,
        name: &CStr,
    ) -> Result<(), Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        let _g = self.as_caller(ctx, false)?;
        sys::removexattr(fd.fd(), name).map_err(Errno::from)
    }
}
