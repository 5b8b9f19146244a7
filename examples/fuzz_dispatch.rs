//! Long-running fuzzer of the request parser and dispatcher with a real
//! PassthroughFs behind it (no kernel): random opcodes, nodeids, argument
//! bytes, names, lying lengths, truncations, random callers; plain, with
//! path rules, and as the media provider. A panic is a
//! finding (the seed and request number are printed to replay it); every
//! reply is checked for a sane errno and length; fds and inodes are checked
//! for leaks at every round.
//!
//!     cargo run --release --example fuzz_dispatch -- [SECONDS] [SEED]

use std::sync::Arc;
use std::time::{Duration, Instant};

use passthroughfs::fuse::abi::{self, Opcode};
use passthroughfs::fuse::testing::{Harness, Rng};
use passthroughfs::media::MediaProvider;
use passthroughfs::passthrough::{Config, PassthroughFs};
use passthroughfs::policy::{all_ops, Policy};
use zerocopy::IntoBytes;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Rounds cycle through three set-ups: plain; a policy with path rules
/// (the inode table keeps parent links and names); the media provider
/// (parent links, case-folded lookups, per-uid visibility, change checks).
fn config(src: std::path::PathBuf, round: u64) -> Config {
    let mut cfg = Config::for_source(src);
    match round % 3 {
        1 => {
            let rules = "[[rule]]\npath = \"d\"\nfiles = [\"getattr\"]\n\
                         [[rule]]\nglob = \"**/new\"\ndirs = [\"none\"]\n";
            cfg.policy = Arc::new(Policy::parse(rules, all_ops()).unwrap());
        }
        2 => {
            let conf = "[storage]\nmedia_dirs = [\"d\"]\napp_dirs = [\"d/e\"]\n\
                        [[app]]\npackage = \"new\"\nuid = 1000\n";
            let mp = MediaProvider::parse(conf).unwrap();
            cfg.policy = Arc::new(mp.policy(all_ops()));
            cfg.media = Some(Arc::new(mp));
        }
        _ => {}
    }
    cfg
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    println!("fuzz_dispatch: seed {seed}, {secs} s");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let fds_start = fd_count();
    let (mut execs, mut rounds) = (0u64, 0u64);
    let names: [&[u8]; 8] = [
        b"f\0", b"d\0", b"new\0", b"..\0", b"a/b\0", b"nonul", b"\0", b"d\0",
    ];
    while Instant::now() < deadline {
        rounds += 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("f"), b"some data").unwrap();
        std::os::unix::fs::symlink("f", src.join("l")).unwrap();
        let fs = Arc::new(PassthroughFs::new(config(src, rounds)).unwrap());
        let h = Harness::new(fs.clone()).unwrap();
        let mut nodes = vec![abi::ROOT_ID];
        for i in 0..2000u64 {
            let op = if rng.below(5) == 0 {
                rng.next_u64() as u32
            } else {
                1 + rng.below(53) as u32
            };
            if op == Opcode::Setlkw as u32 {
                continue; // could wait for a lock the fuzzer itself holds
            }
            let nodeid = match rng.below(6) {
                0 => 0,
                1 => rng.next_u64(),
                _ => nodes[rng.below(nodes.len() as u64) as usize],
            };
            let n = rng.below(96) as usize;
            let mut body = rng.bytes(n);
            if rng.below(2) == 0 {
                body.extend_from_slice(names[rng.below(names.len() as u64) as usize]);
            }
            let uid = [0u32, 0, 1000, u32::MAX][rng.below(4) as usize];
            let hdr = abi::InHeader {
                len: 0,
                opcode: op,
                unique: i + 10,
                nodeid: abi::NodeId::from_raw(nodeid),
                uid,
                gid: uid,
                pid: 1,
                total_extlen: rng.below(3) as u16,
                padding: 0,
            };
            let mut raw = hdr.as_bytes().to_vec();
            raw.extend_from_slice(&body);
            let real = raw.len() as u32;
            let len = match rng.below(8) {
                0 => real + 1 + rng.below(64) as u32,
                1 => real.saturating_sub(1 + rng.below(32) as u32),
                _ => real,
            };
            raw[..4].copy_from_slice(&len.to_ne_bytes());
            if rng.below(16) == 0 {
                let cut = rng.below(raw.len() as u64) as usize;
                raw.truncate(cut);
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.raw(&raw)));
            match r {
                Err(_) => {
                    eprintln!(
                        "FINDING: panic on round {rounds} request {i} (seed {seed}): {raw:02x?}"
                    );
                    std::process::exit(1);
                }
                Ok(Some((out, payload))) => {
                    if out.error > 0 || out.error < -511 || out.len as usize != 16 + payload.len() {
                        eprintln!(
                            "FINDING: bad reply {out:?} (seed {seed}, round {rounds}, request {i})"
                        );
                        std::process::exit(1);
                    }
                    // Learn nodeids from successful entry replies.
                    if out.error == 0
                        && matches!(
                            Opcode::from_u32(op),
                            Some(
                                Opcode::Lookup
                                    | Opcode::Mkdir
                                    | Opcode::Mknod
                                    | Opcode::Symlink
                                    | Opcode::Link
                                    | Opcode::Create
                                    | Opcode::Tmpfile
                            )
                        )
                        && payload.len() >= 8
                    {
                        let id = u64::from_ne_bytes(payload[..8].try_into().unwrap());
                        if id != 0 {
                            nodes.push(id);
                        }
                    }
                }
                Ok(None) => {}
            }
            execs += 1;
        }
        // Give everything back, then check nothing leaked.
        for &id in &nodes {
            let _ = h.request(
                Opcode::Forget as u32,
                0,
                id,
                abi::ForgetIn {
                    nlookup: u64::MAX / 2,
                }
                .as_bytes(),
            );
        }
        for fh in 0..2100u64 {
            if fs.open_files() == 0 {
                break;
            }
            for &id in &nodes {
                let rel = abi::ReleaseIn {
                    fh: abi::Fh::from_raw(fh),
                    ..Default::default()
                };
                let _ = h.request(Opcode::Release as u32, 1, id, rel.as_bytes());
                let _ = h.request(Opcode::Releasedir as u32, 1, id, rel.as_bytes());
            }
        }
        while h.try_reply().is_some() {}
        if fs.open_files() != 0 || fs.table().len() != 1 {
            eprintln!(
                "FINDING: leak after round {rounds} (seed {seed}): {} open, {} inodes",
                fs.open_files(),
                fs.table().len()
            );
            std::process::exit(1);
        }
        drop(h);
        drop(fs);
        drop(dir);
        if fd_count() > fds_start + 2 {
            eprintln!(
                "FINDING: fds leaked after round {rounds} (seed {seed}): {fds_start} -> {}",
                fd_count()
            );
            std::process::exit(1);
        }
    }
    println!("fuzz_dispatch: {execs} requests in {rounds} rounds, no finding (seed {seed})");
}
