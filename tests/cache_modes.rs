//! `--cache never|auto|always`: how long a change made on SOURCE behind the
//! mount stays invisible through it.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// Size seen through the mount after SOURCE's copy grew behind its back,
/// right away and after 1.5 s.
fn sizes_after_change(args: &[&str]) -> (u64, u64) {
    let m = Mount::with_source(|s| fs::write(s.join("f"), b"1234").unwrap(), args);
    assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 4);
    fs::write(m.s("f"), b"12345678").unwrap();
    let now = fs::metadata(m.m("f")).unwrap().len();
    std::thread::sleep(Duration::from_millis(1500));
    let later = fs::metadata(m.m("f")).unwrap().len();
    (now, later)
}

#[test]
fn cache_modes_trade_coherence_for_speed() {
    require_root!();
    // always: the kernel trusts its attributes for --timeout (86400 s).
    assert_eq!(sizes_after_change(&["--cache", "always"]), (4, 4));
    // auto: valid for 1 s, then fetched again.
    let (_, later) = sizes_after_change(&["--cache", "auto"]);
    assert_eq!(later, 8);
    // never: every stat asks the daemon.
    assert_eq!(sizes_after_change(&["--cache", "never"]), (8, 8));
    assert_eq!(sizes_after_change(&["--nocache"]), (8, 8));
}
