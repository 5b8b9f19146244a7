//! Permissions in both modes, beyond tests/ops.rs (which has reading a root
//! 0600 file, chmod of root's file, ownership of new files, umask 022/027,
//! setgid inheritance with default_permissions): another user's files,
//! sticky directories, umask 077/000, setgid inheritance and supplementary
//! groups without default_permissions, hard links to files one cannot read.
//! Every case runs with `default_permissions` (the kernel checks) and with
//! `-o nodefault_permissions` (the host checks, the daemon acting as the
//! caller); callers are threads with their own uid (raw setresuid).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

const MODES: [&str; 2] = ["allow_other", "allow_other,nodefault_permissions"];

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A SOURCE with: shared/ (1777, sticky), theirs (uid 1001, 0644) in it,
/// group/ (root:2000, 0770), sgid/ (root:2000, 2777), secret (root 0600).
fn fill(s: &Path) {
    let shared = s.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(shared.join("theirs"), b"owned by 1001").unwrap();
    chown(&shared.join("theirs"), 1001, 1001);
    fs::set_permissions(shared.join("theirs"), fs::Permissions::from_mode(0o644)).unwrap();
    let group = s.join("group");
    fs::create_dir(&group).unwrap();
    chown(&group, 0, 2000);
    fs::set_permissions(&group, fs::Permissions::from_mode(0o770)).unwrap();
    let sgid = s.join("sgid");
    fs::create_dir(&sgid).unwrap();
    chown(&sgid, 0, 2000);
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2777)).unwrap();
    fs::write(s.join("secret"), b"root only").unwrap();
    fs::set_permissions(s.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn another_users_file_cannot_be_changed() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(fill, &["-o", opts]);
        let theirs = m.m("shared/theirs");
        let before = fs::symlink_metadata(m.s("shared/theirs")).unwrap();
        let r = thread_as(1000, 1000, move || {
            let c = cpath(&theirs);
            let ts = [libc::timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            }; 2];
            unsafe {
                vec![
                    (
                        "chmod",
                        errno_of(fs::set_permissions(
                            &theirs,
                            fs::Permissions::from_mode(0o666),
                        )),
                    ),
                    ("chown to me", {
                        libc::chown(c.as_ptr(), 1000, 1000);
                        errno()
                    }),
                    ("utimes explicit", {
                        libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0);
                        errno()
                    }),
                    ("truncate", {
                        libc::truncate(c.as_ptr(), 0);
                        errno()
                    }),
                    (
                        "open for writing",
                        errno_of(fs::OpenOptions::new().write(true).open(&theirs)),
                    ),
                    ("setxattr user.*", {
                        libc::setxattr(c.as_ptr(), c"user.x".as_ptr(), b"v".as_ptr().cast(), 1, 0);
                        errno()
                    }),
                ]
            }
        })
        .join()
        .unwrap();
        for (what, e) in r {
            assert!(
                e == libc::EPERM || e == libc::EACCES,
                "{opts}: {what} of uid 1001's file by uid 1000: errno {e}"
            );
        }
        let after = fs::symlink_metadata(m.s("shared/theirs")).unwrap();
        assert_eq!(
            (after.mode(), after.uid(), after.size(), after.mtime()),
            (before.mode(), before.uid(), before.size(), before.mtime()),
            "{opts}: unchanged in SOURCE"
        );
        assert_eq!(fs::read(m.s("shared/theirs")).unwrap(), b"owned by 1001");
        assert!(m.unmount().success());
    }
}

/// A path the kernel has cached (root just read it) still needs search
/// permission on its directories for another user, as natively: found
/// when FUSE_POSIX_ACL stopped forcing the kernel's checks on for
/// nodefault_permissions, where a cached dentry skips the daemon's LOOKUP
/// and the open reaches the file through its O_PATH fd.
#[test]
fn a_cached_path_still_needs_search_permission() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(
            |s| {
                let d = s.join("private");
                fs::create_dir(&d).unwrap();
                fs::write(d.join("f"), b"secret").unwrap();
                fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
            },
            &["-o", opts],
        );
        assert_eq!(fs::read(m.m("private/f")).unwrap(), b"secret");
        assert_eq!(open_as(1234, &m.s("private/f")), libc::EACCES, "natively");
        assert_eq!(
            open_as(1234, &m.m("private/f")),
            libc::EACCES,
            "{opts}: through the mount"
        );
        assert!(m.unmount().success());
    }
}

#[test]
fn sticky_directory_protects_other_users_entries() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(fill, &["-o", opts]);
        let shared = m.m("shared");
        let r = thread_as(1000, 1000, move || {
            (
                errno_of(fs::remove_file(shared.join("theirs"))),
                errno_of(fs::rename(shared.join("theirs"), shared.join("stolen"))),
                errno_of(fs::write(shared.join("mine"), b"1")),
                errno_of(fs::rename(shared.join("mine"), shared.join("mine2"))),
                errno_of(fs::remove_file(shared.join("mine2"))),
            )
        })
        .join()
        .unwrap();
        assert_eq!(
            r.0,
            libc::EPERM,
            "{opts}: unlink of 1001's file in a sticky dir"
        );
        assert_eq!(
            r.1,
            libc::EPERM,
            "{opts}: rename of 1001's file in a sticky dir"
        );
        assert_eq!((r.2, r.3, r.4), (0, 0, 0), "{opts}: own files: {r:?}");
        assert!(m.s("shared/theirs").exists());
        assert!(!m.s("shared/stolen").exists());
        assert!(m.unmount().success());
    }
}

#[test]
fn umask_077_and_000_are_applied_once() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(fill, &["-o", opts]);
        for (umask, fmode, dmode) in [(0o077, 0o600, 0o700), (0o000, 0o666, 0o777)] {
            let base = m.m("shared");
            let tag = format!("u{umask:o}");
            // umask is per process: each caller is a shell of its own.
            thread_as(1000, 1000, move || {
                let b = base.display();
                let st = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "umask {umask:o} && : > {b}/{tag}-f && mkdir {b}/{tag}-d && mkfifo {b}/{tag}-n"
                    ))
                    .status()
                    .unwrap();
                assert!(st.success());
            })
            .join()
            .unwrap();
            let tag = format!("u{umask:o}");
            assert_eq!(
                mode(&m.s(&format!("shared/{tag}-f"))),
                fmode,
                "{opts}: file, umask {umask:o}"
            );
            assert_eq!(
                mode(&m.s(&format!("shared/{tag}-d"))),
                dmode,
                "{opts}: dir, umask {umask:o}"
            );
            assert_eq!(
                mode(&m.s(&format!("shared/{tag}-n"))),
                fmode,
                "{opts}: fifo, umask {umask:o}"
            );
        }
        assert!(m.unmount().success());
    }
}

/// umask is per process; the daemon's threads must not leak one caller's
/// umask into another's create (two threads, two umasks, interleaved).
#[test]
fn concurrent_callers_keep_their_own_umask() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(fill, &["-o", opts]);
        let mk = |umask: u32, tag: &'static str| {
            let base: PathBuf = m.m("shared");
            thread_as(1000, 1000, move || {
                // Each create from a shell of its own with its umask.
                for i in 0..200 {
                    let st = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!("umask {umask:o}; : > {}/{tag}{i}", base.display()))
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
            })
        };
        let a = mk(0o077, "a");
        let b = mk(0o022, "b");
        a.join().unwrap();
        b.join().unwrap();
        for i in 0..200 {
            assert_eq!(mode(&m.s(&format!("shared/a{i}"))), 0o600, "{opts}: a{i}");
            assert_eq!(mode(&m.s(&format!("shared/b{i}"))), 0o644, "{opts}: b{i}");
        }
        assert!(m.unmount().success());
    }
}

#[test]
fn setgid_directories_and_supplementary_groups_without_default_permissions() {
    require_root!();
    let m = Mount::with_source(fill, &["-o", MODES[1]]);
    // A member of group 2000 (supplementary) may create in group/ (0770).
    let (g, sg) = (m.m("group"), m.m("sgid"));
    let r = thread_as_groups(1000, 1000, vec![2000], move || {
        (
            errno_of(fs::write(g.join("member"), b"1")),
            errno_of(fs::write(sg.join("f"), b"1")),
            errno_of(fs::create_dir(sg.join("d"))),
        )
    })
    .join()
    .unwrap();
    assert_eq!(r, (0, 0, 0), "member of 2000");
    let st = fs::metadata(m.s("group/member")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1000, 1000), "owned by the caller");
    // setgid directories pass their group (and, to directories, the bit) on.
    assert_eq!(fs::metadata(m.s("sgid/f")).unwrap().gid(), 2000);
    let d = fs::metadata(m.s("sgid/d")).unwrap();
    assert_eq!(d.gid(), 2000);
    assert_ne!(d.mode() & 0o2000, 0, "setgid inherited");
    // Not a member: refused, nothing created.
    let g = m.m("group");
    let e = thread_as(1000, 1000, move || {
        errno_of(fs::write(g.join("outsider"), b"1"))
    })
    .join()
    .unwrap();
    assert_eq!(e, libc::EACCES);
    assert!(!m.s("group/outsider").exists());
    // A non-member creating in a setgid dir gets the dir's group, and no
    // setgid bit on a file it asks for (the host clears it).
    let sg = m.m("sgid");
    thread_as(1000, 1000, move || {
        let p = cpath(&sg.join("nonmember"));
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o2755) };
        assert!(fd >= 0);
        unsafe { libc::close(fd) };
    })
    .join()
    .unwrap();
    let st = fs::metadata(m.s("sgid/nonmember")).unwrap();
    assert_eq!(st.gid(), 2000);
    assert_eq!(st.mode() & 0o2000, 0, "setgid cleared for a non-member");
    assert!(m.unmount().success());
}

#[test]
fn no_write_into_roots_directory_and_no_hard_link_to_an_unreadable_file() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(fill, &["-o", opts]);
        let (root, shared) = (m.mnt.clone(), m.m("shared"));
        let r = thread_as(1000, 1000, move || {
            (
                errno_of(fs::write(root.join("new"), b"1")),
                errno_of(fs::create_dir(root.join("newdir"))),
                errno_of(fs::rename(root.join("secret"), shared.join("secret"))),
                errno_of(fs::hard_link(
                    root.join("secret"),
                    shared.join("secret-link"),
                )),
            )
        })
        .join()
        .unwrap();
        assert_eq!(r.0, libc::EACCES, "{opts}: create in root's 0755 dir");
        assert_eq!(r.1, libc::EACCES, "{opts}: mkdir in root's 0755 dir");
        assert_eq!(r.2, libc::EACCES, "{opts}: rename out of root's dir");
        // fs.protected_hardlinks: no link to a file one could not write.
        assert_eq!(r.3, libc::EPERM, "{opts}: hard link to root's 0600 file");
        for n in ["new", "newdir", "shared/secret", "shared/secret-link"] {
            assert!(!m.s(n).exists(), "{opts}: {n} created");
        }
        assert!(m.unmount().success());
    }
}

/// `setfacl ARGS PATH` in SOURCE (the tool, as a user would).
fn setfacl(args: &[&str], p: &Path) {
    let st = std::process::Command::new("setfacl")
        .args(args)
        .arg(p)
        .status()
        .expect("setfacl (package acl)");
    assert!(st.success(), "setfacl {args:?} {}", p.display());
}

/// The raw `system.posix_acl_access` of `p`, or the errno.
fn acl_of(p: &Path) -> Result<Vec<u8>, i32> {
    get_xattr(p, c"system.posix_acl_access")
}

/// errno of opening `p` for reading as `uid`.
fn open_as(uid: u32, p: &Path) -> i32 {
    let p = p.to_path_buf();
    thread_as(uid, uid, move || errno_of(fs::File::open(&p)))
        .join()
        .unwrap()
}

#[test]
fn default_acl_is_inherited_on_create_and_chmod_narrows_the_mask() {
    require_root!();
    for opts in MODES {
        let m = Mount::with_source(
            |s| {
                let d = s.join("inherit");
                fs::create_dir(&d).unwrap();
                setfacl(&["-d", "-m", "u::rw,u:1234:rw,g::r,m::rw,o::-"], &d);
            },
            &["-o", opts],
        );
        fs::write(m.m("inherit/new"), b"inherited").unwrap();
        let (src, mnt) = (acl_of(&m.s("inherit/new")), acl_of(&m.m("inherit/new")));
        assert!(
            src.is_ok(),
            "{opts}: the new file in SOURCE has an ACL: {src:?}"
        );
        assert_eq!(mnt, src, "{opts}: the ACL through the mount is SOURCE's");
        assert_eq!(
            open_as(1234, &m.m("inherit/new")),
            0,
            "{opts}: user:1234:rw-"
        );
        assert_eq!(
            open_as(1235, &m.m("inherit/new")),
            libc::EACCES,
            "{opts}: other::---"
        );
        // chmod through the mount sets the ACL mask from the group bits
        fs::set_permissions(m.m("inherit/new"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(acl_of(&m.m("inherit/new")), acl_of(&m.s("inherit/new")));
        assert_eq!(
            open_as(1234, &m.m("inherit/new")),
            libc::EACCES,
            "{opts}: mask::--- after chmod 600 denies user:1234"
        );
        assert!(m.unmount().success());
    }
}

/// Changes made in SOURCE behind the mount: with inode passthrough (the
/// patched kernel, tests/uml.rs) the kernel checks the caller against the
/// backing inode as it is now, with and without GETXATTR in the mask. On
/// other kernels the attributes are cached for the daemon's timeouts, so
/// only the first half (before the change) is checked there.
#[test]
fn source_changes_reach_permission_checks_at_once_with_inode_passthrough() {
    require_root!();
    for ops in ["all", "getattr,statx,open,read"] {
        let m = Mount::with_source(
            |s| {
                for f in ["chmodded", "acl_denied"] {
                    fs::write(s.join(f), b"root's").unwrap();
                    fs::set_permissions(s.join(f), fs::Permissions::from_mode(0o644)).unwrap();
                }
            },
            &["-o", "allow_other", "--passthrough-ops", ops],
        );
        assert_eq!(open_as(65534, &m.m("chmodded")), 0, "{ops}: 0644");
        assert_eq!(open_as(65534, &m.m("acl_denied")), 0, "{ops}: 0644");
        let inode_mode = m.stats()["backing"]["mode"] == "inode";
        fs::set_permissions(m.s("chmodded"), fs::Permissions::from_mode(0o600)).unwrap();
        setfacl(&["-m", "u:nobody:---"], &m.s("acl_denied"));
        if inode_mode {
            assert_eq!(
                open_as(65534, &m.m("chmodded")),
                libc::EACCES,
                "{ops}: chmod 600 in SOURCE, no stat through the mount first"
            );
            assert_eq!(
                open_as(65534, &m.m("acl_denied")),
                libc::EACCES,
                "{ops}: user:nobody:--- set in SOURCE"
            );
        }
        assert!(m.unmount().success());
    }
}

/// trusted.* names are listed only to callers that could list them on
/// SOURCE (CAP_SYS_ADMIN), as overlayfs filters them.
#[test]
fn trusted_xattrs_are_not_listed_to_unprivileged_callers() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            fs::write(s.join("f"), b"x").unwrap();
            set_xattr(&s.join("f"), c"trusted.hidden", b"h")
                .expect("trusted xattrs on SOURCE's filesystem");
        },
        &["-o", "allow_other"],
    );
    let list = |uid: u32, p: PathBuf| {
        thread_as(uid, uid, move || {
            let c = cpath(&p);
            let mut buf = vec![0u8; 4096];
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            assert!(n >= 0, "listxattr: errno {}", errno());
            buf.truncate(n as usize);
            buf.split(|&b| b == 0).any(|n| n == b"trusted.hidden")
        })
        .join()
        .unwrap()
    };
    assert!(list(0, m.m("f")), "root sees trusted.hidden");
    assert!(!list(65534, m.s("f")), "nobody does not on SOURCE");
    assert!(!list(65534, m.m("f")), "nobody does not through the mount");
    assert!(m.unmount().success());
}

/// A SOURCE whose filesystem has no POSIX ACLs (ramfs: getxattr answers
/// EOPNOTSUPP). The kernel asks the daemon for system.posix_acl_access
/// before it lets another user in, and only ENODATA means "no ACL": the
/// daemon used to pass EOPNOTSUPP on, so every stat or open by anyone but
/// the owner failed (found by fstests with SOURCE on an ext4 without ACLs).
#[test]
fn a_source_without_acl_support_does_not_lock_other_users_out() {
    require_root!();
    let ram = tempfile::tempdir().unwrap();
    let src = ram.path().join("src");
    fs::create_dir(&src).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success(), "mount -t ramfs");
    let _ram = UnmountOnDrop(src.clone());
    fs::write(src.join("f"), b"root's").unwrap();
    fs::set_permissions(src.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(src.join("d")).unwrap();
    fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
    let modes: [&[&str]; 3] = [
        &["-o", "allow_other"],
        &["-o", "allow_other,nodefault_permissions"],
        &["--nopassthrough", "-o", "allow_other"],
    ];
    for args in modes {
        let m = Mount::on(tempfile::tempdir().unwrap(), src.clone(), args);
        let script = format!(
            "cat {f} && ls {d} && stat -c %a {f}",
            f = m.m("f").display(),
            d = m.m("d").display()
        );
        let (ok, out) = sh_as(65534, 65534, &script);
        assert!(ok, "{args:?}: nobody reads a 0644 file: {out}");
        assert!(
            out.contains("root's") && out.contains("644"),
            "{args:?}: {out}"
        );
        // Mode bits still decide: no write for nobody.
        let (ok, out) = sh_as(65534, 65534, &format!("echo x >> {}", m.m("f").display()));
        assert!(!ok && out.contains("ermission denied"), "{args:?}: {out}");
        // Setting an ACL fails as on SOURCE itself.
        let acl = c"system.posix_acl_access";
        let c = cpath(&m.m("f"));
        // A minimal valid ACL (version 2, no entries) is enough to reach SOURCE.
        let value = 2u32.to_le_bytes();
        // SAFETY: valid C strings and a 4-byte value.
        let r = unsafe { libc::setxattr(c.as_ptr(), acl.as_ptr(), value.as_ptr().cast(), 4, 0) };
        assert_eq!(r, -1, "{args:?}: an ACL on a filesystem without ACLs");
        assert!(m.unmount().success());
    }
}

/// `--xattr off` hides SOURCE's ACLs from the kernel, which then checks
/// mode bits only. With allow_other the daemon starts only with
/// nodefault_permissions (tests/cli.rs), where SOURCE checks each request
/// as its caller: an ACL entry that denies a user still denies, although
/// the mode bits let "other" in and the ACL cannot be read through the
/// mount. (A grant by ACL to a user the mode bits leave out is refused by
/// the kernel's mode-bit check instead: README, "Extended attributes".)
#[test]
fn acls_on_source_still_deny_with_xattrs_off() {
    require_root!();
    let m = Mount::with_source(
        |s| {
            fs::write(s.join("denied"), b"x").unwrap();
            fs::set_permissions(s.join("denied"), fs::Permissions::from_mode(0o644)).unwrap();
            setfacl(&["-m", "u:1234:---"], &s.join("denied"));
        },
        &["-o", "allow_other,nodefault_permissions", "--xattr", "off"],
    );
    assert_eq!(mode(&m.m("denied")) & 0o7, 0o4, "other may read by mode");
    // The kernel reads no ACL: "none" (it takes the remembered ENOSYS of
    // GETXATTR for an absent ACL).
    assert_eq!(acl_of(&m.m("denied")), Err(libc::ENODATA));
    assert!(acl_of(&m.s("denied")).is_ok(), "SOURCE keeps its ACL");
    assert_eq!(open_as(1234, &m.m("denied")), libc::EACCES, "user:1234:---");
    assert_eq!(open_as(1235, &m.m("denied")), 0, "other::r--");
    assert!(m.unmount().success());
}

/// execve needs execute permission, not read: an execute-only binary
/// (0711) runs, a 0700 one does not, and neither can be read, through the
/// mount as on SOURCE. Without default_permissions the daemon's read-only
/// open as the caller needed read, so the 0711 binary did not run
/// (fstests generic/126, found with `-o nodefault_permissions`).
#[test]
fn an_execute_only_binary_runs_as_on_source() {
    require_root!();
    let true_bin = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a true(1) binary");
    for opts in MODES {
        let m = Mount::with_source(
            |s| {
                for (name, mode) in [("x0711", 0o711), ("x0700", 0o700)] {
                    fs::copy(true_bin, s.join(name)).unwrap();
                    fs::set_permissions(s.join(name), fs::Permissions::from_mode(mode)).unwrap();
                }
            },
            &["-o", opts],
        );
        let outcomes = |dir: &Path| {
            ["x0711", "x0700"].map(|n| {
                let p = dir.join(n).display().to_string();
                (
                    sh_as(1234, 1234, &p).0,
                    sh_as(1234, 1234, &format!("cat {p} > /dev/null")).0,
                )
            })
        };
        let on_source = outcomes(&m.src);
        assert_eq!(on_source, [(true, false), (false, false)], "on SOURCE");
        assert_eq!(outcomes(&m.mnt), on_source, "{opts}: exec, read");
        assert!(m.unmount().success());
    }
}
