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

# The wire-layer, ops, stress and differential suites a second time over
# FUSE-over-io_uring (tests/common adds --io-uring, switches
# /sys/module/fuse/parameters/enable_uring on and restores it, and fails a
# mount whose requests did not come through the ring).
uring_pass() {
    param=/sys/module/fuse/parameters/enable_uring
    if [ ! -e "$param" ]; then
        echo "== io_uring pass skipped: this kernel has no FUSE-over-io_uring"
        return 0
    fi
    echo "== cargo test over FUSE-over-io_uring (PTFS_TRANSPORT=uring)"
    orig=$(cat "$param")
    # Whatever happens, the parameter gets its value back.
    trap 'echo "$orig" > "$param"' EXIT INT TERM
    PTFS_TRANSPORT=uring cargo test --release --quiet \
        --test wire_layer --test ops --test stress --test differential \
        -- --test-threads="${PTFS_TEST_THREADS:-4}"
    echo "$orig" > "$param"
    trap - EXIT INT TERM
}

echo "== cargo test (release)"
# Tests mount FUSE filesystems: run test binaries one at a time, their
# cases in parallel.
cargo test --release --quiet -- --test-threads="${PTFS_TEST_THREADS:-4}"

uring_pass

echo "== no mount left behind"
# Test mounts live under the temporary directory.
tmp="${TMPDIR:-/tmp}"
if grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep -q " $tmp/"; then
    grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep " $tmp/"
    echo "a test left a mount behind" >&2
    exit 1
fi
echo "all tests passed"
