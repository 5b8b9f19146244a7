//! Handle-less I/O (fh 0): what the daemon does for files the kernel opened
//! from their backing file without asking it (inode passthrough with OPEN
//! in the mask but READ or WRITE not). Sends READ requests with fh 0
//! through the in-process harness, so it runs on any kernel; on the patched
//! kernel the same requests come from the kernel (bench/fh0.sh).
//!
//!     fh0_bench [READS] [BLOCK]     default 200000 reads of 4096 bytes
//!
//! Prints one JSON object: reads, block, seconds, reads_per_s, mib_per_s.
//! The harness allocates a 1 MiB reply buffer per request, so absolute
//! numbers are low; compare builds on one machine.

use std::sync::Arc;
use std::time::Instant;

use passthroughfs::fuse::abi::{self, Opcode};
use passthroughfs::fuse::testing::Harness;
use passthroughfs::passthrough::{Config, PassthroughFs};
use zerocopy::IntoBytes;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reads: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let block: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let size: u64 = 64 << 20;
    std::fs::write(src.join("f"), vec![7u8; size as usize]).unwrap();
    let fs = Arc::new(PassthroughFs::new(Config::for_source(src)).expect("source"));
    let h = Harness::new(fs).expect("harness");
    let (o, out) = h
        .request(Opcode::Lookup as u32, 1, abi::ROOT_ID, b"f\0")
        .expect("lookup reply");
    assert_eq!(o.error, 0, "lookup");
    let nodeid = u64::from_ne_bytes(out[..8].try_into().unwrap());
    let start = Instant::now();
    for i in 0..reads {
        let arg = abi::ReadIn {
            fh: abi::Fh::NONE,
            offset: (i * block as u64) % (size - block as u64),
            size: block,
            ..Default::default()
        };
        let (o, data) = h
            .request(Opcode::Read as u32, 2 + i, nodeid, arg.as_bytes())
            .expect("read reply");
        assert!(o.error == 0 && data.len() == block as usize, "READ fh 0");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"reads\": {reads}, \"block\": {block}, \"seconds\": {secs:.3}, \"reads_per_s\": {:.0}, \"mib_per_s\": {:.1}}}",
        reads as f64 / secs,
        reads as f64 * block as f64 / secs / (1 << 20) as f64
    );
}
