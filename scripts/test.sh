#!/bin/sh
# The whole test suite, as CI runs it: lint, unit and integration tests
# (real FUSE mounts), pjdfstest against a mount. Run as root on Debian.
#   scripts/test.sh            everything (about 10 minutes on 2 cores)
#   PTFS_LONG=1 scripts/test.sh  also the long variants (soak, big trees)
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-test-deps.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test (release)"
# Tests mount FUSE filesystems: run test binaries one at a time, their
# cases in parallel.
cargo test --release --quiet -- --test-threads="${PTFS_TEST_THREADS:-4}"

echo "== no mount left behind"
# Test mounts live under the temporary directory.
tmp="${TMPDIR:-/tmp}"
if grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep -q " $tmp/"; then
    grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep " $tmp/"
    echo "a test left a mount behind" >&2
    exit 1
fi
echo "all tests passed"
