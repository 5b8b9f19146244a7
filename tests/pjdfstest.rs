//! pjdfstest (the Rust rewrite) against the mount: every case that passes on
//! a plain directory of the same filesystem passes on the mount too, except
//! those listed with a reason in tests/pjdfstest-exceptions.txt.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

fn pjdfstest_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PJDFSTEST") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for p in [
        format!("{home}/.cargo/bin/pjdfstest"),
        "/usr/local/bin/pjdfstest".into(),
    ] {
        if Path::new(&p).exists() {
            return p.into();
        }
    }
    panic!(
        "pjdfstest is not installed: run scripts/install-test-deps.sh (cargo install pjdfstest)"
    );
}

/// case name -> "ok" | "FAILED" | "skipped"
fn run(conf: &Path, dir: &Path) -> BTreeMap<String, String> {
    let out = Command::new(pjdfstest_bin())
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let mut r = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(res), None) = (words.next(), words.next(), words.next()) {
            if name.contains("::") && matches!(res, "ok" | "FAILED" | "skipped") {
                r.insert(name.to_string(), res.to_string());
            }
        }
    }
    assert!(r.len() > 300, "pjdfstest produced too few results:\n{text}");
    r
}

fn exceptions() -> BTreeMap<String, String> {
    let t = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pjdfstest-exceptions.txt"
    ))
    .unwrap();
    t.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(!reason.trim().is_empty(), "exception without a reason: {l}");
            (name.to_string(), reason.trim().to_string())
        })
        .collect()
}

/// A case that failed on the mount, run alone up to three more times: it
/// counts as passing if one of those runs passes, and says so. Known case:
/// open::etxtbsy fails about 1 run in 20 on the mount (also with the
/// 2026-11-25 daemon; never natively in 30 runs): the `sleep` it executes is
/// sometimes already gone when it opens the file; cause not found yet.
/// A case that fails every time is still a regression.
fn passes_on_retry(conf: &Path, m: &Mount, name: &str) -> bool {
    for attempt in 1..=3 {
        let out = Command::new(pjdfstest_bin())
            .arg("-c")
            .arg(conf)
            .arg("-p")
            .arg(&m.mnt)
            // A pattern (`-e` matches no case by this name).
            .arg(name)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(name) && w.next() == Some("ok")
        });
        if ok {
            eprintln!(
                "pjdfstest: FLAKY {name}: failed in the full run, passed alone on retry {attempt}"
            );
            return true;
        }
    }
    false
}

fn compare(mode: &str, args: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("pjdfstest.toml");
    std::fs::write(&conf, CONFIG).unwrap();
    let native_dir = work.path().join("native");
    std::fs::create_dir(&native_dir).unwrap();
    let native = run(&conf, &native_dir);

    let m = Mount::new(args);
    let mounted = run(&conf, &m.mnt);

    let exc = exceptions();
    let mut regressions = Vec::new();
    for (name, res) in &native {
        if res == "ok"
            && mounted.get(name).map(String::as_str) != Some("ok")
            && !exc.contains_key(name)
            && !passes_on_retry(&conf, &m, name)
        {
            regressions.push(format!("{name}: {:?}", mounted.get(name)));
        }
    }
    assert!(m.unmount().success());
    let count = |r: &BTreeMap<String, String>, k: &str| r.values().filter(|v| *v == k).count();
    eprintln!(
        "pjdfstest [{mode}]: native {} ok / {} failed / {} skipped; mount {} ok / {} failed / {} skipped",
        count(&native, "ok"),
        count(&native, "FAILED"),
        count(&native, "skipped"),
        count(&mounted, "ok"),
        count(&mounted, "FAILED"),
        count(&mounted, "skipped")
    );
    assert!(
        regressions.is_empty(),
        "[{mode}] pass natively, not on the mount:\n{}",
        regressions.join("\n")
    );
}

#[test]
fn pjdfstest_default_mode() {
    require_root!();
    compare("default", &["-o", "allow_other"]);
}

#[test]
fn pjdfstest_without_default_permissions() {
    require_root!();
    compare(
        "nodefault_permissions",
        &["-o", "allow_other,nodefault_permissions"],
    );
}

#[test]
fn pjdfstest_nopassthrough_nocache() {
    require_root!();
    compare(
        "nopassthrough,nocache",
        &["--nopassthrough", "--nocache", "-o", "allow_other"],
    );
}
