//! Extended attributes: getxattr, listxattr, setxattr, removexattr, on the
//! inode's O_PATH fd (through its /proc/self/fd magic link, see `sys/mod.rs`).

use std::ffi::CStr;

use super::*;

/// XATTR_SIZE_MAX and XATTR_LIST_MAX of linux/limits.h.
const XATTR_MAX: usize = 65536;

impl PassthroughFs {
    /// `--xattr off`: each of the four xattr ops answers ENOSYS, which the
    /// kernel remembers for the connection (fc->no_getxattr and its three
    /// siblings): from then on it answers EOPNOTSUPP itself, ACL reads
    /// included, and sends nothing. `ls -l` asks for `security.selinux` of
    /// every entry and the kernel caches no xattr, so on a warm walk that
    /// is most of the requests; tar's first write and chown of each file
    /// ask for `security.capability`.
    fn xattrs_off(&self) -> Result<(), Errno> {
        if self.cfg.xattrs {
            Ok(())
        } else {
            Err(Errno::ENOSYS)
        }
    }

    /// GETXATTR and LISTXATTR share their reply rule: with size 0 the
    /// caller asks how big the value is, otherwise for the bytes.
    fn xattr_query(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        size: u32,
        query: impl FnOnce(std::os::fd::BorrowedFd<'_>, &mut [u8]) -> sys::Result<usize>,
    ) -> Result<Xattr, Errno> {
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        // No value or list is bigger than 64 KiB (XATTR_SIZE_MAX,
        // XATTR_LIST_MAX); a larger size never means a larger buffer.
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let _g = self.as_caller(ctx, false)?;
        let n = query(fd.fd(), &mut buf)?;
        buf.truncate(n);
        Ok(if size == 0 {
            Xattr::Size(n as u32)
        } else {
            Xattr::Data(buf)
        })
    }
}

impl XattrOps for PassthroughFs {
    fn getxattr(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        name: &CStr,
        size: u32,
    ) -> Result<Xattr, Errno> {
        self.xattrs_off()?;
        let acl = name.to_bytes().starts_with(b"system.posix_acl_");
        match self.xattr_query(ctx, nodeid, size, |fd, buf| {
            crate::sandbox::forbidden_syscall_hook(name, buf)
                .unwrap_or_else(|| sys::getxattr(fd, name, buf))
        }) {
            // With FUSE_POSIX_ACL the kernel asks for the ACL before it
            // lets anyone but the owner in, and takes only ENODATA for "no
            // ACL": a SOURCE (or submount) without ACL support answers
            // EOPNOTSUPP, which would deny every such caller. Setting an
            // ACL there still fails with EOPNOTSUPP.
            Err(Errno::ENOTSUP) if acl => Err(Errno::ENODATA),
            r => r,
        }
    }

    fn listxattr(&self, ctx: &Context, nodeid: NodeId, size: u32) -> Result<Xattr, Errno> {
        self.xattrs_off()?;
        // The host lists trusted.* to whoever has CAP_SYS_ADMIN, which the
        // worker keeps as the caller's fsuid: drop those names for callers
        // other than root, who could not list them on SOURCE (overlayfs
        // filters them the same way). A size query may overestimate.
        let privileged = ctx.uid == 0;
        self.xattr_query(ctx, nodeid, size, |fd, buf| {
            let n = sys::listxattr(fd, buf)?;
            Ok(if privileged || buf.is_empty() {
                n
            } else {
                drop_trusted(&mut buf[..n])
            })
        })
    }

    fn setxattr(
        &self,
        ctx: &Context,
        nodeid: NodeId,
        name: &CStr,
        value: &[u8],
        arg: &abi::SetxattrIn,
    ) -> Result<(), Errno> {
        self.xattrs_off()?;
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

    fn removexattr(&self, ctx: &Context, nodeid: NodeId, name: &CStr) -> Result<(), Errno> {
        self.xattrs_off()?;
        let inode = self.inode(nodeid, ctx.opcode)?;
        let fd = self.table.fd(&inode)?;
        let _g = self.as_caller(ctx, false)?;
        sys::removexattr(fd.fd(), name).map_err(Errno::from)?;
        if name.to_bytes() == b"security.capability" {
            self.note_cap_removed(nodeid);
        }
        Ok(())
    }
}

/// Removes the `trusted.*` names from a NUL-separated xattr list in place;
/// returns the new length.
fn drop_trusted(list: &mut [u8]) -> usize {
    let mut keep = 0;
    let mut at = 0;
    while at < list.len() {
        let end = list[at..]
            .iter()
            .position(|&b| b == 0)
            .map_or(list.len(), |i| at + i + 1);
        if !list[at..end].starts_with(b"trusted.") {
            list.copy_within(at..end, keep);
            keep += end - at;
        }
        at = end;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::drop_trusted;

    #[test]
    fn trusted_names_are_dropped() {
        let mut l = b"user.a\0trusted.b\0security.c\0trusted.d\0".to_vec();
        let n = drop_trusted(&mut l);
        assert_eq!(&l[..n], b"user.a\0security.c\0");
        let mut l = b"trusted.x".to_vec();
        assert_eq!(drop_trusted(&mut l), 0);
        assert_eq!(drop_trusted(&mut []), 0);
    }
}
