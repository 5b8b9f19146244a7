#!/bin/bash
# Runs fstests against passthroughfs in one daemon mode and checks the outcome
# against xfstests/expected/MODE.txt. See xfstests/README.md.
#
#   FSTESTS_DIR=/path/to/built/fstests xfstests/run.sh [OPTIONS] MODE CHECK_ARGS...
#
#   MODE        default | nopassthrough | direct-io | nocache | masks
#   CHECK_ARGS  what fstests' ./check takes: -g quick, -x GROUP, -e TEST,
#               generic/001 generic/451 ...
#   -O OPTS     more daemon options, after the mode's
#   -r FILE     results file (default: $PASSTHROUGHFS_WORK/MODE/results.txt)
#   -k          keep SOURCE from the last run (default: emptied, or a new
#               filesystem)
#   -S FS       what SOURCE lives on: ext4:SIZE (default ext4:8G) or xfs:SIZE,
#               a filesystem image of its own, loop-mounted for the run (tests
#               that fill the filesystem fill that, not the host's disk);
#               tmpfs:SIZE, a tmpfs of that size; or "dir", plain directories
#               on whatever holds the work directory
#   -U          run inside the patched User-Mode Linux kernel
#               (kernel-patches/uml.sh run patched): users and checks on the
#               host, then this script again inside, and the helper in a
#               /sbin of its own. SOURCE: -S ext4:SIZE (the default,
#               ext4:8G) is an image made on the host (mkfs.ext4) and
#               attached to UML as the block device /dev/ubda, mounted inside
#               (no loop devices in UML; no XFS in its kernel); tmpfs:SIZE
#               and dir also work. Outputs (and source.img) in
#               $PASSTHROUGHFS_WORK/uml-MODE on the host.
#
# Environment: FSTESTS_DIR (required), PASSTHROUGHFS_BIN (default: this
# repository's target/release/passthroughfs), PASSTHROUGHFS_WORK (default
# /var/tmp/passthroughfs-fstests; the mode's directories go in WORK/MODE),
# PASSTHROUGHFS_SOURCE_FS (as -S), PASSTHROUGHFS_SOURCE_OPTS (mount options
# of SOURCE's ext4/xfs image, e.g. strictatime), PASSTHROUGHFS_MASKS (ops of
# the masks mode, default all). With -U: PTFS_UML_DIR (where the built
# kernel is, as uml.sh), PTFS_UML_MEM (default 4G), PTFS_UML_TIMEOUT
# (default 10800 s), PTFS_UML_RW and PTFS_UML_PASSENV (added to what -U
# needs).
#
# Exit status: 0 no unexpected failure, 1 unexpected failures, 2 set-up error
# or fstests did not run to the end. It never downloads or builds fstests.
set -u

here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
repo="$(cd "$here/.." && pwd)"
prog=run.sh

die() { echo "$prog: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-2}"; }

extra_opts=""
results=""
keep=0
source_fs="${PASSTHROUGHFS_SOURCE_FS:-}"
uml=0          # -U: on the host, run inside the patched UML kernel
inside=""      # --in-uml DIR (given by -U): inside UML, outputs to DIR
source_dev=""  # --source-dev DEV (given by -U): inside UML, SOURCE's block device
while [ $# -gt 0 ]; do
    case "$1" in
        -O) [ $# -ge 2 ] || usage; extra_opts="$2"; shift 2 ;;
        -r) [ $# -ge 2 ] || usage; results="$2"; shift 2 ;;
        -k) keep=1; shift ;;
        -S) [ $# -ge 2 ] || usage; source_fs="$2"; shift 2 ;;
        -U) uml=1; shift ;;
        --in-uml) [ $# -ge 2 ] || usage; inside="$2"; shift 2 ;;
        --source-dev) [ $# -ge 2 ] || usage; source_dev="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (options go before MODE)" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
mode="$1"
shift

case "$mode" in
    default)       mode_opts="" ;;
    nopassthrough) mode_opts="--nopassthrough" ;;
    direct-io)     mode_opts="--direct-io" ;;
    nocache)       mode_opts="--nocache" ;;
    masks)         mode_opts="--passthrough-ops ${PASSTHROUGHFS_MASKS:-all}" ;;
    *) die "unknown mode '$mode' (default, nopassthrough, direct-io, nocache, masks)" ;;
esac
source_fs="${source_fs:-ext4:8G}"
if [ "$uml" = 1 ] || [ -n "$inside" ]; then
    case "$source_fs" in
        xfs:*) die "-S $source_fs: the UML kernel has no XFS (-S ext4:SIZE, tmpfs:SIZE or dir)" ;;
    esac
    [ "$keep" = 0 ] || die "-k: nothing is kept from one UML run to the next"
fi
if [ -n "$inside" ]; then
    case "$source_fs" in
        ext4:*) [ -b "$source_dev" ] || die "-S $source_fs inside UML: no block device (--source-dev '$source_dev')" ;;
        *) [ -z "$source_dev" ] || die "--source-dev is for -S ext4:SIZE" ;;
    esac
elif [ -n "$source_dev" ]; then
    die "--source-dev is for run.sh -U, inside UML"
fi
case "$source_fs" in
    dir|tmpfs:[0-9]*) ;;
    ext4:[0-9]*|xfs:[0-9]*) command -v "mkfs.${source_fs%%:*}" >/dev/null || die "mkfs.${source_fs%%:*} missing" ;;
    *) die "-S: dir, tmpfs:SIZE, ext4:SIZE or xfs:SIZE, not '$source_fs'" ;;
esac
if [ -n "$inside" ]; then
    grep -qs '^model name.*UML' /proc/cpuinfo || die "--in-uml is for run.sh -U, inside UML"
    [ -d "$inside" ] || die "--in-uml $inside: no such directory"
fi

[ "$(id -u)" = 0 ] || die "fstests needs root"

# What fstests' tests run (its README's list, less the build-only packages;
# fstests itself is built beforehand, see README.md). Inside UML /usr is the
# host's: the host side of -U installs them.
if [ -z "$inside" ]; then
    need=""
    for p in acl attr bc dbench e2fsprogs fio gawk libcap2-bin psmisc python3 quota \
             util-linux uuid-runtime xfsprogs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
    done
    if [ -n "$need" ]; then
        command -v apt-get >/dev/null || die "missing packages:$need (not Debian: install them)"
        echo "$prog: installing$need"
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null ||
            die "cannot install$need"
    fi
fi
FSTESTS_DIR="${FSTESTS_DIR:-}"
[ -n "$FSTESTS_DIR" ] || die "set FSTESTS_DIR to an fstests checkout you have built (make)"
FSTESTS_DIR="$(cd "$FSTESTS_DIR" 2>/dev/null && pwd)" || die "FSTESTS_DIR: no such directory"
[ -x "$FSTESTS_DIR/check" ] || die "$FSTESTS_DIR/check missing: not an fstests checkout"
[ -x "$FSTESTS_DIR/ltp/fsstress" ] && [ -x "$FSTESTS_DIR/src/feature" ] ||
    die "$FSTESTS_DIR is not built (run make there)"
command -v xfs_io >/dev/null || die "xfs_io missing (apt-get install xfsprogs; see README.md)"

bin="${PASSTHROUGHFS_BIN:-$repo/target/release/passthroughfs}"
[ -x "$bin" ] || die "daemon binary $bin missing (cargo build --release, or set PASSTHROUGHFS_BIN)"

# Users and groups fstests switches to (its README, step 6).
make_users() {
    getent group fsgqa >/dev/null || groupadd fsgqa || die "groupadd fsgqa failed"
    id -u fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa || die "useradd fsgqa failed"
    id -u 123456-fsgqa >/dev/null 2>&1 || useradd -m 123456-fsgqa ||
        echo "$prog: warning: cannot create user 123456-fsgqa (a few tests will not run)" >&2
    id -u fsgqa2 >/dev/null 2>&1 || useradd -m fsgqa2 || die "useradd fsgqa2 failed"
}

base="${PASSTHROUGHFS_WORK:-/var/tmp/passthroughfs-fstests}"

# --- -U, on the host: run this script again inside the patched UML kernel ---
# Inside, the host's root filesystem is read-only (hostfs), /tmp a private
# tmpfs and /work read-write: users are made here, SOURCE and the mounts go in
# /tmp inside, the outputs in $base/uml-MODE here (read-write inside too).
if [ "$uml" = 1 ]; then
    uml_sh="$repo/kernel-patches/uml.sh"
    [ -f "$uml_sh" ] || die "$uml_sh missing"
    kernel="${PTFS_UML_DIR:-/var/tmp/passthroughfs-uml}/patched/linux"
    [ -x "$kernel" ] || die "no patched UML kernel at $kernel (kernel-patches/uml.sh build patched, or set PTFS_UML_DIR)"
    make_users
    outdir="$base/uml-$mode"
    mkdir -p "$outdir" || die "cannot create $outdir"
    outdir="$(cd "$outdir" && pwd)"
    # One UML run per output directory.
    exec 9>"$outdir/.lock" || die "cannot open $outdir/.lock"
    flock -n 9 || die "another run.sh -U $mode is running (lock $outdir/.lock)"
    rm -rf "$outdir/fstests-results"
    rm -f "$outdir"/{run.info,check.out,results.txt,failures.txt,expected-candidate.txt,daemon.log,passthroughfs,source.img}
    # The binary is copied for the run, as below.
    cp "$bin" "$outdir/passthroughfs" || die "cannot copy $bin"
    args=(--in-uml "$outdir" -S "$source_fs")
    # SOURCE on ext4: a fresh image, made here (the host's mkfs.ext4) and
    # attached to UML as its first block device, /dev/ubda (uml.sh's
    # PTFS_UML_UBD); run.sh mounts it inside. It stays in $outdir after the
    # run (e2fsck -fn can check it) and is replaced by the next one.
    if [ "${source_fs%%:*}" = ext4 ]; then
        img="$outdir/source.img"
        truncate -s "${source_fs#*:}" "$img" || die "cannot create $img"
        mkfs.ext4 -q -F "$img" || die "mkfs.ext4 $img failed"
        export PTFS_UML_UBD="$img"
        args+=(--source-dev /dev/ubda)
    fi
    # Read-write inside: the outputs, and fstests' own tree (a few tests,
    # generic/035 ..., link their expected output in tests/ as they run).
    rw="${PTFS_UML_RW-$([ -d /work ] && echo /work)}"
    for want in "$outdir" "$FSTESTS_DIR"; do
        covered=0
        for d in $rw; do
            case "$want/" in "${d%/}"/*) covered=1 ;; esac
        done
        [ "$covered" = 1 ] || rw="${rw:+$rw }$want"
    done
    export PTFS_UML_RW="$rw"
    export PTFS_UML_PASSENV="${PTFS_UML_PASSENV:+$PTFS_UML_PASSENV }FSTESTS_DIR FSTESTS_COMMIT PASSTHROUGHFS_BIN PASSTHROUGHFS_MASKS PASSTHROUGHFS_SOURCE_OPTS"
    export PTFS_UML_MEM="${PTFS_UML_MEM:-4G}"
    export PTFS_UML_TIMEOUT="${PTFS_UML_TIMEOUT:-10800}"
    export FSTESTS_DIR PASSTHROUGHFS_BIN="$outdir/passthroughfs"
    export FSTESTS_COMMIT="${FSTESTS_COMMIT:-$(git -C "$FSTESTS_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    [ -n "$extra_opts" ] && args+=(-O "$extra_opts")
    echo "$prog: inside the patched UML kernel $kernel (mem $PTFS_UML_MEM, timeout $PTFS_UML_TIMEOUT s)"
    echo "$prog: outputs in $outdir (progress: tail -f $outdir/check.out); the rest prints at the end"
    start=$(date +%s)
    bash "$uml_sh" run patched -- "$here/run.sh" "${args[@]}" "$mode" "$@" &
    uml_pid=$!
    # uml.sh runs the kernel under timeout(1) in a session of its own, out of
    # reach of ^C: stop it through timeout, which passes the signal on.
    interrupted=0
    trap 'interrupted=1; echo "$prog: interrupted, stopping the UML kernel" >&2
          kill -TERM $(pgrep -P "$uml_pid") 2>/dev/null' INT TERM
    status=0
    while :; do
        wait "$uml_pid"
        status=$?
        kill -0 "$uml_pid" 2>/dev/null || break
    done
    trap - INT TERM
    echo "$prog: UML run took $(( $(date +%s) - start )) s"
    case "$status" in
        0|1|2) ;;
        *) echo "$prog: the UML run did not complete (status $status: timeout, crash or interrupt; see above)" >&2
           status=2 ;;
    esac
    [ "$interrupted" = 0 ] || status=2
    if [ -n "$results" ] && [ -f "$outdir/results.txt" ]; then
        cp "$outdir/results.txt" "$results" || status=2
    fi
    exit "$status"
fi

if [ -n "$inside" ]; then
    # A private kernel: no other run.sh to lock out, and /run is read-only.
    base="${PASSTHROUGHFS_WORK:-/tmp/passthroughfs-fstests}"
    outdir="$(cd "$inside" && pwd)"
    # What udev or systemd would set up: the UML kernel boots with the
    # loopback interface down (lock tests, generic/131 and 571, talk over
    # 127.0.0.1) and without /dev/fd (bash's <(...), as in
    # _require_batched_discard).
    ip link set lo up || echo "$prog: warning: cannot bring up lo (lock tests will fail)" >&2
    [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
    for f in stdin:0 stdout:1 stderr:2; do
        [ -e "/dev/${f%:*}" ] || ln -s "/proc/self/fd/${f#*:}" "/dev/${f%:*}"
    done
else
    # One run at a time: the helper in /sbin is shared.
    lock=/run/lock/passthroughfs-fstests.lock
    exec 9>"$lock" || die "cannot open $lock"
    flock -n 9 || die "another run.sh is running (lock $lock)"
fi

work="$base/$mode"
mkdir -p "$work" || die "cannot create $work"
work="$(cd "$work" && pwd)"
# Where the outputs go: the work directory, or (inside UML) the host's.
outdir="${outdir:-$work}"
results="${results:-$outdir/results.txt}"

# The directories, as local.config makes them from the environment.
export PASSTHROUGHFS_WORK="$work"
eval "$(
    # shellcheck disable=SC1091
    . "$here/local.config"
    printf 'TEST_DEV=%q\nTEST_DIR=%q\nSCRATCH_DEV=%q\nSCRATCH_MNT=%q\n' \
        "$TEST_DEV" "$TEST_DIR" "$SCRATCH_DEV" "$SCRATCH_MNT"
)"
export TEST_DEV TEST_DIR SCRATCH_DEV SCRATCH_MNT
test_src="${TEST_DEV#source:}"
scratch_src="${SCRATCH_DEV#source:}"
[ "$test_src" != "$TEST_DEV" ] && [ "$scratch_src" != "$SCRATCH_DEV" ] ||
    die "TEST_DEV and SCRATCH_DEV must be source:DIR"

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

# Daemons serving our directories, one pid a line (for the end-of-run check).
our_daemons() {
    local p cmd
    for p in $(pgrep -x passthroughfs 2>/dev/null); do
        cmd="$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)" || continue
        case "$cmd" in
            *" $test_src $TEST_DIR"*|*" $scratch_src $SCRATCH_MNT"*) echo "$p" ;;
        esac
    done | sort -u
}

unmount_ours() {
    local m
    for m in "$TEST_DIR" "$SCRATCH_MNT"; do
        while is_mounted "$m"; do
            umount "$m" 2>/dev/null && continue
            sleep 1
            umount "$m" 2>/dev/null && continue
            echo "$prog: $m busy, lazy unmount" >&2
            umount -l "$m" || break
        done
    done
}

# A mount left by an earlier, interrupted run is ours to clean up; anything
# else mounted there is not.
for m in "$TEST_DIR" "$SCRATCH_MNT"; do
    if is_mounted "$m"; then
        src="$(findmnt -rn -o SOURCE --mountpoint "$m" | tail -1)"
        case "$src" in
            "$TEST_DEV"|"$SCRATCH_DEV") echo "$prog: unmounting $m left from an earlier run"; umount "$m" || die "cannot unmount $m" ;;
            *) die "$m is already a mount point (of $src)" ;;
        esac
    fi
done

# Users and groups fstests switches to (inside UML, /etc is the host's,
# read-only: -U made them on the host).
[ -n "$inside" ] || make_users

# The daemon binary is copied for the run, so that a rebuild during the run
# does not mix versions.
cp "$bin" "$work/passthroughfs" || die "cannot copy $bin"
export PASSTHROUGHFS_BIN="$work/passthroughfs"
export PASSTHROUGHFS_OPTS="$mode_opts${extra_opts:+ $extra_opts}"
export PASSTHROUGHFS_LOG="$outdir/daemon.log"
: > "$PASSTHROUGHFS_LOG"

srcfs="$work/src"
img="$work/source.img"
helper=/sbin/mount.fuse.passthroughfs
saved="$work/mount.fuse.passthroughfs.saved"
if [ -e "$saved" ] || [ -L "$saved" ]; then
    echo "$prog: putting back $helper saved by an interrupted run"
    rm -f "$helper"; mv "$saved" "$helper" || die "cannot restore $helper from $saved"
fi
installed=""   # "": helper untouched; "new": none was there; "saved": put $saved back
cleanup() {
    trap - EXIT INT TERM
    unmount_ours
    local left t
    for t in 1 2 3 4 5 6 7 8 9 10; do
        left="$(our_daemons)"
        [ -z "$left" ] && break
        sleep 1
    done
    if [ -n "$left" ]; then
        echo "$prog: daemons still running after unmount: $left (killing them)" >&2
        kill $left 2>/dev/null
        sleep 1
    fi
    if [ "$source_fs" != dir ] && is_mounted "$srcfs"; then
        umount "$srcfs" 2>/dev/null || { sleep 2; umount "$srcfs"; } || umount -l "$srcfs"
    fi
    case "$installed" in
        saved) rm -f "$helper"; mv "$saved" "$helper" ;;
        new) rm -f "$helper" ;;
        uml) umount "$sbin_dir" && umount "$sbin_orig" ;;
    esac
}
trap cleanup EXIT
trap 'echo "$prog: interrupted" >&2; exit 2' INT TERM

# SOURCE on a filesystem of its own: an image loop-mounted on WORK/MODE/src.
if is_mounted "$srcfs"; then
    echo "$prog: unmounting $srcfs left from an earlier run"
    umount "$srcfs" || die "cannot unmount $srcfs"
fi
if [ "$source_fs" != dir ]; then
    case "$test_src/,$scratch_src/" in
        "$srcfs"/*,"$srcfs"/*) ;;
        *) die "-S $source_fs needs TEST_DEV and SCRATCH_DEV under $srcfs (or use -S dir)" ;;
    esac
    fs="${source_fs%%:*}"
    mkdir -p "$srcfs"
    if [ "$fs" = tmpfs ]; then
        [ "$keep" = 0 ] || echo "$prog: -k: a new tmpfs has nothing to keep" >&2
        mount -t tmpfs -o "size=${source_fs#*:},mode=755" passthroughfs-source "$srcfs" ||
            die "cannot mount a tmpfs on $srcfs"
    elif [ -n "$source_dev" ]; then
        # Inside UML: the image -U made on the host, as a ubd block device.
        mount -t "$fs" ${PASSTHROUGHFS_SOURCE_OPTS:+-o "$PASSTHROUGHFS_SOURCE_OPTS"} "$source_dev" "$srcfs" || die "cannot mount $source_dev ($fs) on $srcfs"
    else
        if [ "$keep" = 0 ] || [ ! -f "$img" ]; then
            rm -f "$img"
            truncate -s "${source_fs#*:}" "$img" || die "cannot create $img"
            case "$fs" in
                ext4) mkfs.ext4 -q -F "$img" ;;
                xfs) mkfs.xfs -q -f "$img" ;;
            esac || die "mkfs.$fs $img failed"
        fi
        mount -t "$fs" -o "loop${PASSTHROUGHFS_SOURCE_OPTS:+,$PASSTHROUGHFS_SOURCE_OPTS}" "$img" "$srcfs" || die "cannot loop-mount $img (use -S dir)"
    fi
fi

mkdir -p "$test_src" "$scratch_src" "$TEST_DIR" "$SCRATCH_MNT" || die "cannot create the directories"
if [ "$keep" = 0 ]; then
    find "$test_src" "$scratch_src" -mindepth 1 -delete 2>/dev/null ||
        rm -rf "${test_src:?}"/* "${scratch_src:?}"/* 2>/dev/null
fi
chmod 755 "$test_src" "$scratch_src" "$TEST_DIR" "$SCRATCH_MNT"
# The test users (fsgqa ...) must reach the mount points.
for d in "$TEST_DIR" "$SCRATCH_MNT"; do
    p="$(dirname "$d")"
    while [ "$p" != / ]; do
        [ "$(( 0$(stat -c %a "$p") & 1 ))" = 1 ] ||
            echo "$prog: warning: $p is not searchable by others; tests as fsgqa will fail" >&2
        p="$(dirname "$p")"
    done
done

# Install the helper; cleanup puts back whatever was there. Inside UML /sbin
# (-> usr/sbin) is the host's, read-only: a tmpfs over it holds links to
# every original entry (seen through a bind mount) and our helper; the mounts
# are the UML kernel's own, the host's /sbin never changes.
if [ -n "$inside" ]; then
    sbin_dir="$(readlink -f "$(dirname "$helper")")"
    sbin_orig="$work/sbin.orig"
    mkdir -p "$sbin_orig"
    mount --bind "$sbin_dir" "$sbin_orig" || die "cannot bind-mount $sbin_dir"
    if ! mount -t tmpfs -o mode=755 passthroughfs-sbin "$sbin_dir"; then
        umount "$sbin_orig"
        die "cannot mount a tmpfs on $sbin_dir"
    fi
    installed=uml
    ln -s "$sbin_orig"/* "$sbin_dir"/ || die "cannot link $sbin_orig/* into $sbin_dir"
    rm -f "$helper"
elif [ -e "$helper" ] || [ -L "$helper" ]; then
    mv "$helper" "$saved" || die "cannot move $helper aside"
    installed=saved
else
    installed=new
fi
install -m 755 "$here/mount.fuse.passthroughfs" "$helper" || die "cannot install $helper"

rb="$outdir/fstests-results"
rm -rf "$rb"
out="$outdir/check.out"
{
    echo "fstests:  $FSTESTS_DIR (commit ${FSTESTS_COMMIT:-$(git -C "$FSTESTS_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)})"
    echo "daemon:   $bin ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "?")$(git -C "$repo" diff --quiet HEAD -- src 2>/dev/null || echo ", src modified"))"
    echo "mode:     $mode, daemon options: ${PASSTHROUGHFS_OPTS:-(none)}"
    echo "kernel:   $(uname -r)${inside:+ (User-Mode Linux, the patched kernel of run.sh -U)}"
    echo "dirs:     $TEST_DEV -> $TEST_DIR, $SCRATCH_DEV -> $SCRATCH_MNT"
    if [ "$source_fs" = dir ]; then
        echo "source:   directories on $(findmnt -rn -o FSTYPE -T "$test_src") ($(findmnt -rn -o SOURCE -T "$test_src"))"
    elif [ "${source_fs%%:*}" = tmpfs ]; then
        echo "source:   $source_fs on $srcfs"
    elif [ -n "$source_dev" ]; then
        echo "source:   $source_fs image $outdir/source.img (host), block device $source_dev in UML, on $srcfs ($(findmnt -rn -o OPTIONS --mountpoint "$srcfs"))"
    else
        echo "source:   $source_fs image $img on $srcfs"
    fi
    echo "check:    $*"
} | tee "$outdir/run.info"
echo "output:   $out, daemon log $PASSTHROUGHFS_LOG"
(cd "$FSTESTS_DIR" && HOST_OPTIONS="$here/local.config" RESULT_BASE="$rb" ./check "$@") 2>&1 | tee "$out"
unmount_ours

# --- results: one line per test, "name  pass|fail|notrun  [reason]" ---
ran="$(sed -n 's/^Ran: *//p' "$out" | tail -1)"
if ! grep -q '^Ran:' "$out"; then
    echo "$prog: fstests did not run to the end (no 'Ran:' summary in $out)" >&2
    exit 2
fi
notrun="$(sed -n 's/^Not run: *//p' "$out" | tail -1)"
failed="$(sed -n 's/^Failures: *//p' "$out" | tail -1)"
{
    for t in $ran; do
        if [[ " $failed " == *" $t "* ]]; then
            echo "$t  fail"
        elif [[ " $notrun " == *" $t "* ]]; then
            reason="$(head -1 "$rb/$t.notrun" 2>/dev/null | tr -s '\t ' '  ')"
            echo "$t  notrun  ${reason:-(no reason recorded)}"
        else
            echo "$t  pass"
        fi
    done
} > "$results"

# First lines of each failure, for whoever fixes it.
failures="$outdir/failures.txt"
{
    for t in $failed; do
        echo "=== $t"
        if [ -f "$rb/$t.out.bad" ]; then
            diff -u "$FSTESTS_DIR/tests/$t.out" "$rb/$t.out.bad" | sed -n '3,20p'
        fi
        [ -f "$rb/$t.dmesg" ] && { echo "--- dmesg:"; head -10 "$rb/$t.dmesg"; }
        [ -f "$rb/$t.full" ] && { echo "--- tail of $t.full:"; tail -8 "$rb/$t.full"; }
    done
} > "$failures"

count() { awk -v s="$1" '$2 == s' "$results" | wc -l; }
echo
echo "results: $results"
echo "  $(count pass) pass, $(count fail) fail, $(count notrun) not run (of $(wc -l < "$results"))"
[ -n "$failed" ] && echo "  first lines of each failure: $failures"
# Which transport carried each mount, from the statistics each daemon logs at
# unmount ("transport": {"mode": "uring"|"dev"}): FUSE-over-io_uring depends
# on /sys/module/fuse/parameters/enable_uring, which anyone may flip mid-run.
echo "  transport of the $(grep -c '"transport": {' "$PASSTHROUGHFS_LOG") daemons:" \
    "$(awk '/"transport": \{/ { t = 1; next } t && /"mode":/ { gsub(/[",]/, "", $2); n[$2]++; t = 0 }
            END { for (m in n) { printf "%s%d %s", sep, n[m], m; sep = ", " } }' "$PASSTHROUGHFS_LOG")"

# --- compare with the expected list ---
expected="$here/expected/$mode.txt"
if [ ! -f "$expected" ]; then
    echo "$prog: no $expected: every failure counts as unexpected" >&2
    expected=/dev/null
fi
candidate="$outdir/expected-candidate.txt"
awk -v cand="$candidate" -v expfile="$expected" '
    FILENAME == expfile {
        if ($0 ~ /^[ \t]*(#|$)/) next
        if ($2 != "fail" && $2 != "notrun") { printf "bad line in %s: %s\n", expfile, $0; next }
        st[$1] = $2; line[$1] = $0
        r = $0; sub(/^[^ \t]+[ \t]+[^ \t]+[ \t]*/, "", r)
        if (r == "") printf "no reason given in %s for %s\n", expfile, $1
        next
    }
    {
        t = $1; s = $2; seen[t] = 1
        r = $0; sub(/^[^ \t]+[ \t]+[^ \t]+[ \t]*/, "", r)
        if (s == "fail") {
            nfail++
            if (st[t] == "fail") { expfail++; print line[t] > cand }
            else { unexp[++nu] = t; printf "%-14s fail  FIXME: cause\n", t > cand }
        } else if (s == "notrun") {
            if (st[t] == "") notlisted[++nn] = t "  (" r ")"
            else if (st[t] == "fail") listed_fail_notrun[++nfn] = t "  (" r ")"
            if (st[t] == "notrun") print line[t] > cand
            else printf "%-14s notrun  %s\n", t, r > cand
        } else if (s == "pass") {
            if (st[t] == "fail") nowpass[++np] = t
            else if (st[t] == "notrun") nowrun[++nr] = t
        }
    }
    END {
        if (np) { print "listed as failing in the expected list, now pass (remove them):"; for (i = 1; i <= np; i++) print "  " nowpass[i] }
        if (nr) { print "listed as not run, now run and pass:"; for (i = 1; i <= nr; i++) print "  " nowrun[i] }
        if (nfn) { print "listed as failing, did not run:"; for (i = 1; i <= nfn; i++) print "  " listed_fail_notrun[i] }
        if (nn) print nn " tests did not run without being listed (see the candidate list)"
        printf "%d failures: %d expected, %d unexpected\n", nfail, expfail, nu
        for (i = 1; i <= nu; i++) print "UNEXPECTED FAILURE: " unexp[i]
        exit nu ? 1 : 0
    }' "$expected" "$results"
status=$?
echo "candidate expected list from this run (known reasons kept): $candidate"
exit $status
