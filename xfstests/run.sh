#!/bin/bash
# Runs fstests against passthroughfs and checks the outcome against the
# expected list of the mode. See xfstests/README.md.
#
#   FSTESTS_DIR=/path/to/built/fstests xfstests/run.sh [-m MODE] [-o RESULTS] GROUP|TEST...
#   e.g. xfstests/run.sh -m default -g quick
#        xfstests/run.sh -m nopassthrough generic/001 generic/451
#
# MODE (daemon options): default | nopassthrough | direct-io | nocache |
#   masks (inode passthrough with per-op masks, for the patched kernel).
# Exit status: 0 when every failure is listed in expected/MODE.txt, 1 on any
# unexpected failure, 2 on a set-up error. It never downloads or builds
# fstests.
set -u

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
mode=default
results=""
# Our options come first; everything from the first other argument on goes
# to fstests' ./check unchanged (-g quick, -x ..., test names).
while [ $# -gt 0 ]; do
    case "$1" in
        -m) mode="${2:?-m needs a mode}"; shift 2 ;;
        -o) results="${2:?-o needs a file}"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "run.sh: name a group (-g quick) or tests" >&2; exit 2; }

die() { echo "run.sh: $*" >&2; exit 2; }

FSTESTS_DIR="${FSTESTS_DIR:-}"
[ -n "$FSTESTS_DIR" ] || die "set FSTESTS_DIR to a built fstests checkout"
[ -x "$FSTESTS_DIR/check" ] || die "$FSTESTS_DIR/check not found"
[ -x "$FSTESTS_DIR/ltp/fsstress" ] || die "$FSTESTS_DIR is not built (run make there)"
[ "$(id -u)" = 0 ] || die "fstests needs root"

case "$mode" in
    default) mode_opts="" ;;
    nopassthrough) mode_opts="--nopassthrough" ;;
    direct-io) mode_opts="--direct-io" ;;
    nocache) mode_opts="--nocache" ;;
    masks) mode_opts="--passthrough-ops getattr,statx,getxattr,listxattr,readdir,open,read,write" ;;
    *) die "unknown mode '$mode'" ;;
esac
expected="$here/expected/$mode.txt"
[ -f "$expected" ] || die "no expected list $expected"

bin="${PASSTHROUGHFS_BIN:-$repo/target/release/passthroughfs}"
[ -x "$bin" ] || die "daemon binary $bin missing (cargo build --release)"

export WORK="${WORK:-/var/tmp/passthroughfs-fstests}"
results="${results:-$WORK/results-$mode.txt}"
mkdir -p "$WORK"/src/test "$WORK"/src/scratch "$WORK"/test "$WORK"/scratch || die "cannot make $WORK"
# Test users switch into these dirs: every level must be searchable.
d="$WORK"
while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null; d="$(dirname "$d")"; done

# Users and groups fstests switches to.
getent group fsgqa >/dev/null || groupadd fsgqa
id fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa
id 123456-fsgqa >/dev/null 2>&1 || useradd -m 123456-fsgqa
id fsgqa2 >/dev/null 2>&1 || useradd -m fsgqa2

# Install the mount helper (with this build's binary recorded), and put
# back whatever was there before when done.
helper=/sbin/mount.fuse.passthroughfs
backup=""
if [ -e "$helper" ]; then
    backup="$(mktemp)"
    cp -p "$helper" "$backup"
fi
sed "s|@PASSTHROUGHFS_BIN@|$bin|" "$here/mount.fuse.passthroughfs" > "$helper"
chmod 755 "$helper"
cleanup() {
    for m in "$WORK/test" "$WORK/scratch"; do
        grep -q " $m " /proc/mounts && { umount "$m" 2>/dev/null || umount -l "$m"; }
    done
    if [ -n "$backup" ]; then mv "$backup" "$helper"; else rm -f "$helper"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export PASSTHROUGHFS_OPTS="$mode_opts"
export PASSTHROUGHFS_LOG="$WORK/daemon-$mode.log"
out="$WORK/check-$mode.out"
echo "fstests in $FSTESTS_DIR, mode $mode ($mode_opts), output in $out"
(cd "$FSTESTS_DIR" && HOST_OPTIONS="$here/local.config" RESULT_BASE="$WORK/fstests-results-$mode" ./check "$@") 2>&1 | tee "$out"

# One line per test: name pass|fail|notrun [reason].
awk '
    /^[a-z0-9]+\/[0-9]+ / {
        name = $1; line = $0; sub(/^[^ ]+ +/, "", line)
        if (line ~ /\[not run\]/) { sub(/.*\[not run\] */, "", line); print name, "notrun", line }
        else if (line ~ /\[expunged\]/) { print name, "notrun", "expunged" }
        else if (line ~ /output mismatch|\[failed|_check_|dmesg/) { print name, "fail" }
        else if (line ~ /^[0-9]+s/ || line ~ / [0-9]+s$/) { print name, "pass" }
    }' "$out" | sort -u -k1,1 > "$results"

echo
echo "results: $results ($(awk '$2=="pass"' "$results" | wc -l) pass, $(awk '$2=="fail"' "$results" | wc -l) fail, $(awk '$2=="notrun"' "$results" | wc -l) not run)"

# Compare with the expected list.
status=0
while read -r name res _; do
    listed="$(awk -v n="$name" '$1==n {print $2}' "$expected")"
    if [ "$res" = fail ] && [ "$listed" != fail ]; then
        echo "UNEXPECTED FAILURE: $name"
        status=1
    elif [ "$res" = pass ] && [ "$listed" = fail ]; then
        echo "now passes (remove from $expected): $name"
    elif [ "$res" = notrun ] && [ -z "$listed" ]; then
        echo "not run and not listed: $name ($(awk -v n="$name" '$1==n {$1=$2=""; print}' "$results"))"
    fi
done < "$results"
[ $status = 0 ] && echo "no unexpected failures"
exit $status
