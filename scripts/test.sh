#!/bin/sh
# The whole test suite, as CI runs it: lint, unit and integration tests
# (real FUSE mounts), pjdfstest against a mount. Run as root on Debian.
#   scripts/test.sh            everything; the daemon's tests on the patched
#                              kernel (UML, tests/uml.rs) run if that kernel
#                              is built (6 min 12 s in all on 2 vCPUs,
#                              2026-11-25)
#   PTFS_UML=1 scripts/test.sh   build the patched UML kernel first (531 s
#                              on 2 vCPUs, cached) and require its tests
#   PTFS_LONG=1 scripts/test.sh  also the long variants (soak, big trees)
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-test-deps.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

if [ "${PTFS_UML:-0}" = 1 ]; then
    echo "== patched UML kernel (kernel-patches/, cached in ${PTFS_UML_DIR:-/var/tmp/passthroughfs-uml})"
    # Installs linux-source-7.3 (trixie-backports) and the build tools, and
    # rebuilds only when a patch changed.
    kernel-patches/uml.sh build patched
    # tests/uml.rs must not skip when the kernel is missing.
    export PTFS_REQUIRE_UML=1
fi

echo "== cargo test (release)"
# Tests mount FUSE filesystems: run test binaries one at a time, their
# cases in parallel.
cargo test --release --quiet -- --test-threads="${PTFS_TEST_THREADS:-4}"

echo "== ops, permissions, escape, stress, passthrough_io, media_provider with --sandbox"
# tests/common adds PTFS_EXTRA_ARGS to every daemon of a suite.
PTFS_EXTRA_ARGS=--sandbox cargo test --release --quiet \
    --test ops --test permissions --test escape --test stress \
    --test passthrough_io --test media_provider \
    -- --test-threads="${PTFS_TEST_THREADS:-4}"

echo "== no mount left behind"
# Test mounts live under the temporary directory.
tmp="${TMPDIR:-/tmp}"
if grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep -q " $tmp/"; then
    grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep " $tmp/"
    echo "a test left a mount behind" >&2
    exit 1
fi
echo "all tests passed"
