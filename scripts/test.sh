#!/bin/sh
# The whole test suite, as CI runs it: lint, unit and integration tests
# (real FUSE mounts), pjdfstest against a mount, then the stress,
# differential and escape suites again at --fd-cache 16 and the resources
# suite at RLIMIT_NOFILE 64. Run as root on Debian.
#   scripts/test.sh            everything but tests/uml.rs (the daemon's
#                              suites on the patched kernel), left out with
#                              a line saying so
#   PTFS_UML=1 scripts/test.sh   build the patched UML kernel first (531 s
#                              on 2 vCPUs, cached) and run tests/uml.rs
#   PTFS_LONG=1 scripts/test.sh  also the long runs: bigger trees, the
#                              differential workload with 8 threads for 10
#                              minutes at --fd-cache 16 (PTFS_LONG_DIFF_SECS)
#                              and the dispatch fuzzer for 30 minutes
#                              (PTFS_LONG_FUZZ_SECS)
# A test that cannot run fails (it does not pass quietly), and the script
# fails if any test was ignored or skipped.
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
started=$(date +%s)

scripts/install-test-deps.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

uml=run
if [ "${PTFS_UML:-0}" = 1 ]; then
    echo "== patched UML kernel (kernel-patches/, cached in ${PTFS_UML_DIR:-/var/tmp/passthroughfs-uml})"
    # Installs linux-source-7.3 (trixie-backports) and the build tools, and
    # rebuilds only when a patch changed.
    kernel-patches/uml.sh build patched
else
    # Only on request: UML sees the host's / read-only with its own /tmp,
    # so a checkout under /tmp (CI's may be) cannot run its test binaries
    # there; PTFS_UML=1 also (re)builds the kernel when a patch changed.
    uml=out
fi

# Test targets: all of them, or all but tests/uml.rs (which fails when it
# cannot run) when the patched kernel is not built.
targets=""
if [ "$uml" = out ]; then
    targets="--lib --bins"
    for t in tests/*.rs; do
        n=$(basename "$t" .rs)
        [ "$n" = uml ] || targets="$targets --test $n"
    done
fi

log=$(mktemp /tmp/ptfs-test-log.XXXXXX)
uring_param=/sys/module/fuse/parameters/enable_uring
uring_orig=$(cat "$uring_param" 2>/dev/null || true)
# Whatever happens, the log goes and enable_uring gets its value back.
trap 'rm -f "$log"; [ -z "$uring_orig" ] || echo "$uring_orig" > "$uring_param"' EXIT INT TERM

# Runs cargo test with the given arguments, keeps its output in $log, and
# fails on a failed, ignored or skipped test.
run_tests() {
    : >"$log"
    # Tests mount FUSE filesystems: test binaries run one at a time, their
    # cases in parallel. Ignored tests run too (CI is root).
    if ! cargo test --release --quiet "$@" -- --test-threads="${PTFS_TEST_THREADS:-4}" --include-ignored >"$log" 2>&1; then
        cat "$log"
        echo "tests failed" >&2
        exit 1
    fi
    cat "$log"
    # ("skipped:" is how a test says it did not run; pjdfstest's own
    # summary counts the cases it skips natively too, and is compared.)
    if grep -E '^test result: .* [1-9][0-9]* ignored' "$log" >/dev/null ||
        grep -E 'skipped:|SKIPPED' "$log" >/dev/null; then
        grep -E '^test result: .* [1-9][0-9]* ignored|skipped:|SKIPPED' "$log" >&2
        echo "a test was ignored or skipped: that is a failure here" >&2
        exit 1
    fi
}

# The wire-layer, ops, locks, stress and differential suites a second time over
# FUSE-over-io_uring (tests/common adds --io-uring, switches enable_uring on
# and restores it, and fails a mount whose requests did not come through
# the ring).
uring_pass() {
    if [ -z "$uring_orig" ]; then
        echo "NOT RUN: io_uring pass: this kernel has no FUSE-over-io_uring ($uring_param)"
        return 0
    fi
    echo "== wire_layer, ops, locks, stress, differential, killpriv over FUSE-over-io_uring (PTFS_TRANSPORT=uring)"
    PTFS_TRANSPORT=uring run_tests \
        --test wire_layer --test ops --test locks --test stress --test differential --test killpriv
    echo "$uring_orig" > "$uring_param"
}

echo "== cargo test (release)"
# shellcheck disable=SC2086
run_tests $targets

echo "== under pressure: stress, differential, escape at --fd-cache 16"
PTFS_FD_CACHE=16 run_tests --test stress --test differential --test escape

echo "== under pressure: resources at RLIMIT_NOFILE 64"
PTFS_NOFILE=64 run_tests --test resources

if [ "${PTFS_LONG:-0}" = 1 ]; then
    diff_secs=${PTFS_LONG_DIFF_SECS:-600}
    fuzz_secs=${PTFS_LONG_FUZZ_SECS:-1800}
    echo "== long: differential, 8 threads for $diff_secs s at --fd-cache 16"
    PTFS_FD_CACHE=16 PTFS_DIFF_SECS=$diff_secs \
        run_tests --test differential eight_threads
    echo "== long: dispatch fuzzer for $fuzz_secs s"
    cargo run --release --quiet --example fuzz_dispatch -- "$fuzz_secs"
fi

echo "== ops, permissions, escape, stress, passthrough_io, media_provider with --sandbox"
# tests/common adds PTFS_EXTRA_ARGS to every daemon of a suite.
PTFS_EXTRA_ARGS=--sandbox run_tests \
    --test ops --test permissions --test escape --test stress \
    --test passthrough_io --test media_provider

uring_pass

echo "== no mount left behind"
# Test mounts live under the temporary directory.
tmp="${TMPDIR:-/tmp}"
if grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep -q " $tmp/"; then
    grep -E ' fuse(\.[a-z0-9_]+)? ' /proc/mounts | grep " $tmp/"
    echo "a test left a mount behind" >&2
    exit 1
fi
if [ "$uml" = out ]; then
    echo "NOT RUN: tests/uml.rs (the patched UML kernel's suites run with PTFS_UML=1 scripts/test.sh, which builds the kernel if needed)"
fi
echo "all tests passed in $(( $(date +%s) - started )) s"
