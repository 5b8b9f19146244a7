//! Bad input at start-up: one clear line, exit 1 (64 for usage errors),
//! nothing mounted, nothing left running.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let mut s = String::from_utf8_lossy(&out.stderr).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), s)
}

#[test]
fn usage_errors_exit_64() {
    let (code, out) = run(&[]);
    assert_eq!(code, 64, "{out}");
    let (code, out) = run(&["--no-such-flag", "a", "b"]);
    assert_eq!(code, 64, "{out}");
    let (code, out) = run(&["--num-threads", "many", "a", "b"]);
    assert_eq!(code, 64, "{out}");
    let (code, out) = run(&["--max-stack-depth", "3", "a", "b"]);
    assert_eq!(code, 64, "{out}");
    let (code, out) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Examples:") && out.contains("--nopassthrough"),
        "{out}"
    );
}

#[test]
fn bad_paths_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("src")).unwrap();
    fs::create_dir(d.join("mnt")).unwrap();
    fs::write(d.join("file"), b"").unwrap();
    let p = |n: &str| d.join(n).display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![p("missing"), p("mnt")], "SOURCE"),
        (vec![p("file"), p("mnt")], "not a directory"),
        (vec![p("src"), p("nomnt")], "MOUNTPOINT"),
        (vec![p("src"), p("file")], "not a directory"),
        (vec![p("src"), p("src")], "inside SOURCE"),
        (vec![p("src"), "/proc".into()], "busy"),
        (
            vec![
                "-f".into(),
                "--passthrough-ops".into(),
                "getattr,bogus".into(),
                p("src"),
                p("mnt"),
            ],
            "unknown op 'bogus'",
        ),
        (
            vec![
                "-f".into(),
                "-o".into(),
                "locks=maybe".into(),
                p("src"),
                p("mnt"),
            ],
            "bad locks=maybe",
        ),
        (
            vec![
                "-f".into(),
                "-o".into(),
                "xattr=maybe".into(),
                p("src"),
                p("mnt"),
            ],
            "bad xattr=maybe",
        ),
        // Without xattrs the kernel checks mode bits only: other users
        // would escape SOURCE's ACLs.
        (
            vec![
                "-f".into(),
                "--xattr".into(),
                "off".into(),
                "-o".into(),
                "allow_other".into(),
                p("src"),
                p("mnt"),
            ],
            "needs -o nodefault_permissions",
        ),
        (
            vec![
                "-f".into(),
                "-o".into(),
                "allow_other,xattr=off".into(),
                p("src"),
                p("mnt"),
            ],
            "needs -o nodefault_permissions",
        ),
        (
            vec![
                "-f".into(),
                "--policy".into(),
                p("nopolicy.toml"),
                p("src"),
                p("mnt"),
            ],
            "policy file",
        ),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = run(&a);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(
            out.contains(needle),
            "{args:?}: expected '{needle}' in: {out}"
        );
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
        assert!(!is_mounted(&d.join("mnt")));
    }
}

#[test]
fn a_bad_policy_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("src")).unwrap();
    fs::create_dir(d.join("mnt")).unwrap();
    fs::write(
        d.join("p.toml"),
        "[[rule]]\nglob = \"a[\"\nfiles = [\"all\"]\n",
    )
    .unwrap();
    let (code, out) = run(&[
        "-f",
        "--policy",
        d.join("p.toml").to_str().unwrap(),
        d.join("src").to_str().unwrap(),
        d.join("mnt").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad glob"), "{out}");
}

#[test]
fn unprivileged_allow_other_needs_permission_checks() {
    require_root!();
    // An unprivileged daemon cannot act as its callers: with allow_other
    // and no default_permissions, every user would get its access.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("src")).unwrap();
    fs::create_dir(d.join("mnt")).unwrap();
    std::os::unix::fs::chown(d, Some(1000), Some(1000)).unwrap();
    for sub in ["src", "mnt"] {
        std::os::unix::fs::chown(d.join(sub), Some(1000), Some(1000)).unwrap();
    }
    let (ok, out) = sh_as(
        1000,
        1000,
        &format!(
            "{BIN} -f -o allow_other,nodefault_permissions {0}/src {0}/mnt; echo exit=$?",
            d.display()
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("exit=1") && out.contains("needs a root daemon"),
        "{out}"
    );
    assert!(!is_mounted(&d.join("mnt")));
}

#[test]
fn background_mode_returns_once_mounted_and_umount_ends_it() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(src.join("hello"), b"hi").unwrap();
    let pidfile_log = dir.path().join("log");
    let (code, out) = run(&[
        "--log",
        pidfile_log.to_str().unwrap(),
        src.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    // Usable at once: the parent returned only after INIT.
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hi");
    // A second mount on the same (now busy) mountpoint is refused.
    let (code, out) = run(&[src.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("busy"), "{out}");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(!is_mounted(&mnt));
    let log = fs::read_to_string(&pidfile_log).unwrap();
    assert!(log.contains("mounted at"), "{log}");
    // The daemon logs its exit once the unmount reached it.
    for _ in 0..200 {
        if fs::read_to_string(&pidfile_log)
            .unwrap()
            .contains("unmounted")
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "daemon did not notice the unmount: {}",
        fs::read_to_string(&pidfile_log).unwrap()
    );
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    require_root!();
    let m = Mount::new(&[]);
    fs::write(m.m("f"), b"x").unwrap();
    let _keep_busy = fs::File::open(m.m("f")).unwrap();
    unsafe { libc::kill(m.pid() as i32, libc::SIGTERM) };
    // The guard reaps it; the status must be success and the mount gone.
    let mnt = m.mnt.clone();
    let status = m.unmount();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
}

/// The mount's line in /proc/self/mounts: the kernel's own view.
fn mounts_line(m: &Mount) -> String {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.mnt.to_str().unwrap()))
        .unwrap()
        .to_string()
}

#[test]
fn mount_options_reach_the_kernel() {
    require_root!();
    let m = Mount::new(&["-o", "ro,allow_other,fsname=myfs,subtype=mytype,noexec"]);
    let line = mounts_line(&m);
    assert!(line.starts_with("myfs "), "{line}");
    assert!(line.contains(" fuse.mytype "), "{line}");
    assert!(
        line.contains("ro,") && line.contains("noexec") && line.contains("allow_other"),
        "{line}"
    );
    assert_eq!(err_of(fs::write(m.m("x"), b"")), libc::EROFS);
    assert!(m.unmount().success());
}

/// `-o nodefault_permissions` reaches the kernel: the mount's super block
/// options lose `default_permissions` after INIT. (FUSE_POSIX_ACL, which
/// the daemon used to negotiate in every mode, turns it back on in the
/// kernel: the option then changed nothing but the daemon's work.)
#[test]
fn nodefault_permissions_reaches_the_kernel() {
    require_root!();
    let options = |m: &Mount| {
        // After INIT: the daemon answered a request.
        fs::metadata(m.m("")).unwrap();
        mounts_line(m).split(' ').nth(3).unwrap().to_string()
    };
    let m = Mount::new(&[]);
    let o = options(&m);
    assert!(o.split(',').any(|x| x == "default_permissions"), "{o}");
    assert!(m.unmount().success());
    let m = Mount::new(&["-o", "nodefault_permissions"]);
    let o = options(&m);
    assert!(!o.split(',').any(|x| x == "default_permissions"), "{o}");
    assert!(m.unmount().success());
}

/// The README's first command: `scripts/demo.sh` exits 0 and leaves no
/// directory, mount or daemon behind (it once exited 32 from its EXIT trap
/// and kept its temporary directory).
#[test]
fn demo_script_exits_clean() {
    require_root!();
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("sub")).unwrap();
    fs::write(src.path().join("sub/a.txt"), b"hello demo\n").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(src.path())
        // The test binary's daemon: no cargo build inside cargo test.
        .env("PASSTHROUGHFS", BIN)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "demo.sh failed: {text}");
    // "mounted SRC at WORK/mnt" names its temporary directory.
    let mnt = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("mounted ")
                .and_then(|r| r.split(" at ").nth(1))
        })
        .unwrap_or_else(|| panic!("no mount line: {text}"));
    let work = std::path::Path::new(mnt).parent().unwrap();
    assert!(
        work.starts_with("/tmp") && work.to_string_lossy().contains("passthroughfs-demo"),
        "{text}"
    );
    assert!(!is_mounted(std::path::Path::new(mnt)), "mount left: {text}");
    assert!(!work.exists(), "{} left behind: {text}", work.display());
    assert!(text.contains("bytes read: 11"), "{text}");
    // The daemon's pid, as the script printed it, is gone.
    let pid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("daemon pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid line: {text}"));
    assert!(process_gone(pid), "daemon {pid} still running: {text}");
}

/// SOURCE's atime of `p` set an hour before its mtime: SOURCE's relatime
/// updates it on the next read or listing.
fn age_atime(p: &Path) -> i64 {
    let st = lstat(p).unwrap();
    let t = [
        libc::timespec {
            tv_sec: st.st_mtime - 3600,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs, as utimensat wants.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), t.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", p.display());
    st.st_mtime - 3600
}

/// Whether listing `d` and reading `d/f` through a mount made with `opts`
/// and daemon options `args` changed their atimes in SOURCE.
fn source_atimes_change(args: &[&str], opts: &str) -> (bool, bool) {
    let m = Mount::with_source(
        |s| {
            fs::create_dir(s.join("d")).unwrap();
            fs::write(s.join("d/f"), b"data").unwrap();
        },
        &[args, &["-o", opts]].concat(),
    );
    let dir_before = age_atime(&m.s("d"));
    let file_before = age_atime(&m.s("d/f"));
    let names: Vec<_> = fs::read_dir(m.m("d")).unwrap().collect();
    assert_eq!(names.len(), 1);
    assert_eq!(fs::read(m.m("d/f")).unwrap(), b"data");
    let dir_after = lstat(&m.s("d")).unwrap().st_atime;
    let file_after = lstat(&m.s("d/f")).unwrap().st_atime;
    assert!(m.unmount().success());
    (dir_after != dir_before, file_after != file_before)
}

/// The daemon's own listings and reads update no atime in SOURCE through a
/// read-only or `noatime` mount (`O_NOATIME`), nor a directory's through a
/// `nodiratime` one; through a default (relatime) mount they do, which
/// shows that SOURCE would update them (generic/003: "access time has
/// changed for dir in read-only filesystem"). The daemon reads
/// (`--nopassthrough`).
#[test]
fn ro_and_noatime_mounts_leave_source_atimes() {
    require_root!();
    let args = ["--nopassthrough"];
    assert_eq!(source_atimes_change(&args, "allow_other"), (true, true));
    assert_eq!(source_atimes_change(&args, "ro"), (false, false));
    assert_eq!(source_atimes_change(&args, "noatime"), (false, false));
    assert_eq!(source_atimes_change(&args, "nodiratime"), (false, true));
}

/// The same with OPEN but not READDIR in the masks: on the patched kernel
/// the kernel opens the directory and READDIR reaches the daemon with fh 0
/// (the daemon's own fd for it, `open_unregistered`), the file's reads pass
/// through (kernel-opened with `O_NOATIME` on such mounts); on a stock
/// kernel, I/O passthrough of a daemon-opened file, whose backing file the
/// kernel opens with the caller's flags, so only the directory is checked.
#[test]
fn ro_mount_leaves_source_atimes_with_kernel_opens() {
    require_root!();
    let args = ["--passthrough-ops", "getattr,open,read"];
    assert!(source_atimes_change(&args, "allow_other").0);
    assert!(!source_atimes_change(&args, "ro").0);
    assert!(!source_atimes_change(&args, "nodiratime").0);
}
