//! Per-op masks on a stock kernel: the daemon asks for what the policy says
//! and silently uses what the kernel offers (read/write on open); masked-out
//! ops are served by the daemon. The inode-passthrough half of these rules
//! runs inside the patched UML kernel (kernel-patches/).

mod common;

use std::fs;

use common::*;

fn read_all(m: &Mount, rel: &str) -> Vec<u8> {
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    fs::read(m.m(rel)).unwrap()
}

#[test]
fn all_uses_only_what_the_kernel_offers() {
    require_root!();
    let m = Mount::with_source(
        |s| fs::write(s.join("f"), vec![1u8; 1 << 20]).unwrap(),
        &["--passthrough-ops", "all"],
    );
    assert_eq!(read_all(&m, "f").len(), 1 << 20);
    let _ = fs::metadata(m.m("f")).unwrap();
    let s = m.stats();
    let offered_inode = s["backing"]["mode"] == "inode";
    if !offered_inode {
        assert_eq!(s["backing"]["mode"], "io", "{s}");
        assert_eq!(s["backing"]["supported_ops"].as_array().unwrap().len(), 0);
        // Attributes are wanted but not offered: served by the daemon (as
        // GETATTR or STATX), no entry registered for them.
        let ops = &s["passthrough_ops"];
        let served = ops["GETATTR"]["served_by_daemon"].as_u64().unwrap()
            + ops["STATX"]["served_by_daemon"].as_u64().unwrap();
        assert!(served > 0, "{s}");
        assert_eq!(ops["GETATTR"]["entries_registered"], 0);
        assert_eq!(ops["STATX"]["entries_registered"], 0);
    }
    assert_eq!(
        s["requests"]["READ"].as_u64().unwrap_or(0),
        0,
        "reads passed through"
    );
    assert!(m.unmount().success());
}

#[test]
fn none_keeps_every_read_in_the_daemon() {
    require_root!();
    let m = Mount::with_source(
        |s| fs::write(s.join("f"), vec![2u8; 1 << 20]).unwrap(),
        &["--passthrough-ops", "none"],
    );
    assert_eq!(read_all(&m, "f"), vec![2u8; 1 << 20]);
    let s = m.stats();
    assert!(s["requests"]["READ"].as_u64().unwrap_or(0) > 0, "{s}");
    assert_eq!(s["backing"]["registered_total"], 0);
    assert!(m.unmount().success());
}

#[test]
fn a_policy_rule_masks_a_subtree_out() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    fs::write(
        &policy,
        r#"
[[rule]]
path = "private"
dirs = ["none"]
files = ["none"]
[[rule]]
glob = "public/**/*.log"
files = ["getattr"]
"#,
    )
    .unwrap();
    let m = Mount::with_source(
        |s| {
            for d in ["private/deep", "public/logs"] {
                fs::create_dir_all(s.join(d)).unwrap();
            }
            fs::write(s.join("private/deep/secret"), vec![3u8; 65536]).unwrap();
            fs::write(s.join("public/data"), vec![4u8; 65536]).unwrap();
            fs::write(s.join("public/logs/app.log"), vec![5u8; 65536]).unwrap();
        },
        &["--policy", policy.to_str().unwrap()],
    );
    let reads = |m: &Mount| m.requests("READ");
    read_all(&m, "public/data");
    assert_eq!(reads(&m), 0, "public/data passes through");
    read_all(&m, "private/deep/secret");
    let after_private = reads(&m);
    assert!(
        after_private > 0,
        "the masked subtree (inherited by private/deep) reaches the daemon"
    );
    read_all(&m, "public/logs/app.log");
    assert!(
        reads(&m) > after_private,
        "a glob rule without read keeps reads in the daemon"
    );
    assert!(m.unmount().success());
}

/// `-NAME` takes one op out of `all`: reads reach the daemon, the rest of
/// the mask still passes through (inode passthrough on the patched kernel,
/// writes on open everywhere); `all,-getattr` gives no entry a backing on
/// the patched kernel (GETATTR goes with every other op).
#[test]
fn an_op_taken_out_of_all_is_served_by_the_daemon() {
    require_root!();
    let m = Mount::with_source(
        |s| fs::write(s.join("f"), vec![6u8; 1 << 20]).unwrap(),
        &["--passthrough-ops=all,-read"],
    );
    // One 1 MiB read(2). Before d620885 the patched kernel put this inode
    // in passthrough I/O mode and sent it as a READ of 1 MiB - 16 (the
    // buffer starts 16 bytes into its page), which the spliced reply failed
    // with EAGAIN; passthrough_io.rs
    // daemon_spliced_reads_fit_the_pipe_for_any_alignment covers that now.
    assert_eq!(read_all(&m, "f"), vec![6u8; 1 << 20]);
    fs::write(m.m("g"), vec![7u8; 1 << 16]).unwrap();
    let s = m.stats();
    assert!(m.requests("READ") > 0, "READ masked out: {s}");
    let ops = &s["passthrough_ops"];
    // Reads and writes pass through both or neither (I/O passthrough on
    // open; and an inode with only one of them in its mask could not be
    // mapped): the daemon serves both.
    assert!(m.requests("WRITE") > 0, "{s}");
    if s["backing"]["mode"] == "inode" {
        assert!(
            ops["GETATTR"]["entries_registered"].as_u64().unwrap() > 0,
            "{s}"
        );
        assert_eq!(ops["WRITE"]["entries_registered"], 0, "{s}");
    }
    // A shared writable mapping works (ENODEV on the patched kernel when
    // the inode's mask had WRITE without READ).
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.m("g"))
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: a fresh shared mapping of 4096 bytes of an open file,
        // written once and unmapped before `f` closes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap: errno {}", errno());
            *(p as *mut u8) = 9;
            libc::munmap(p, 4096);
        }
    }
    assert_eq!(fs::read(m.s("g")).unwrap()[0], 9);
    assert!(m.unmount().success());

    let m = Mount::with_source(
        |s| fs::write(s.join("f"), vec![8u8; 1 << 16]).unwrap(),
        &["--passthrough-ops=all,-getattr"],
    );
    assert_eq!(read_all(&m, "f"), vec![8u8; 1 << 16]);
    let _ = fs::metadata(m.m("f")).unwrap();
    let s = m.stats();
    assert_eq!(ops_registered(&s), 0, "no entry has a backing: {s}");
    assert!(m.unmount().success());
}

/// Entries registered with any op in their mask.
fn ops_registered(s: &serde_json::Value) -> u64 {
    s["passthrough_ops"]
        .as_object()
        .map(|o| {
            o.values()
                .map(|v| v["entries_registered"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}
