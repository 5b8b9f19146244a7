#!/bin/sh
# Handle-less I/O (fh 0): READ requests for a file the kernel opened from
# its backing file without the daemon (inode passthrough, OPEN in the mask,
# READ not). On a stock kernel such requests never come, so this drives
# them through the in-process harness (examples/fh0_bench.rs): it measures
# the daemon's side only, on any kernel.
#   bench/fh0.sh [RUNS] [READS] [BLOCK]    best of RUNS (default 5)
# To compare two builds, run it on each (the harness allocates a 1 MiB reply
# buffer per request, so only the difference between builds is meaningful).
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
runs=${1:-5}
cargo build --release --quiet --example fh0_bench
best=""
i=0
while [ $i -lt "$runs" ]; do
    out=$(target/release/examples/fh0_bench "${2:-100000}" "${3:-4096}")
    echo "$out"
    r=$(echo "$out" | sed 's/.*"reads_per_s": \([0-9]*\).*/\1/')
    if [ -z "$best" ] || [ "$r" -gt "$best" ]; then best=$r; fi
    i=$((i + 1))
done
echo "best of $runs: $best READ fh 0 per second"
