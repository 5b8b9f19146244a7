//! Capabilities and seccomp, for `--sandbox`: nix has neither capset nor
//! PR_CAPBSET_DROP nor seccomp.

use std::io;

use super::check;

/// prctl(PR_CAPBSET_DROP, cap).
pub fn bounding_set_drop(cap: u32) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL).
pub fn ambient_clear_all() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) of the calling thread: `effective` and `permitted` set to
/// `mask` (64 capability bits), nothing inheritable.
pub fn set_effective_permitted(mask: u64) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let m = (mask >> (32 * i)) as u32;
        d.effective = m;
        d.permitted = m;
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a header and a two-element data array, as version 3 requires,
    // both alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    check(r as libc::c_int).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER, TSYNC, prog) for every thread. Needs
/// no_new_privs (or CAP_SYS_ADMIN) first.
pub fn install_filter_all_threads(prog: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, alive for the call; the kernel only
    // reads (copies) the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Err(io::Error::other(format!(
            "thread {r} could not be synchronised"
        ))),
    }
}
