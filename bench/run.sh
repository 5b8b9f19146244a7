#!/bin/sh
# Benchmarks passthroughfs against native access and, with PEER=/path/to/
# passthrough_hp, the reference peer. As root on Debian:
#   bench/run.sh            full run (tens of minutes)
#   bench/run.sh --quick    under 3 minutes, for development
# Results: bench/results/DATE[-quick]/{results.json,report.md,ratios.svg}
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
need=""
for p in fio python3 python3-matplotlib git xz-utils e2fsprogs util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# The kernel-tree workloads use Debian's kernel source when it is there
# (/usr/src/linux-source-*.tar.xz); without it they are skipped.
cargo build --release --quiet --bin passthroughfs --example bench_tool
# Debian's python3 has python3-matplotlib (for the plots); a python3 earlier
# in PATH (pyenv ...) may not.
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
exec "$PY" bench/bench.py "$@"
