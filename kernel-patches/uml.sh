#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# uml.sh - User-Mode Linux test vehicle for the passthroughfs kernel series.
#
# Builds two UML kernels from Debian's linux-source-7.3 (trixie-backports):
# "stock" (unpatched) and "patched" (with the series in this directory), and
# boots them with the host's root filesystem through hostfs to run a command.
#
#   uml.sh setup                     apt sources, build tools, linux-source-7.3
#   uml.sh build [stock|patched|all] build the kernels (cached, default: all)
#   uml.sh check stock|patched       exit 0 if that kernel is built and up to
#                                    date with the series, 1 if not (no build)
#   uml.sh run stock|patched -- CMD [ARGS...]
#                                    boot a kernel, run CMD inside, return its
#                                    exit status and output
#   uml.sh test [all|patched]        build test/ptino_test.c with the host gcc
#                                    and run it on both kernels, or only on
#                                    the patched one (its stress mode for
#                                    PTINO_STRESS_SECONDS, default 20)
#   uml.sh clean                     remove the cache directory
#
# With PTFS_UML_DEBUG=1 every command above uses the debug kernels instead:
# the same trees built with SMP, preemption and lock debugging (lockdep,
# atomic-sleep, list, debug-objects and SLUB checks; DEBUG_FRAGMENT below),
# cached apart in $PTFS_UML_DIR/stock-debug and patched-debug, booted with
# PTFS_UML_NCPUS virtual CPUs (default 2, seccomp userspace, which SMP
# needs). After each run the console is searched for kernel splats (lockdep
# reports, WARNING, BUG, Oops, list corruption, ODEBUG, sleeping in atomic
# context): they are printed, the console is kept in $PTFS_UML_DIR/splats/
# and a run whose command succeeded exits 124. The default kernels are
# unaffected. PTFS_UML_DEBUG=kasan adds KASAN (generic, outline) to that, in
# place of SLUB_DEBUG_ON, in $PTFS_UML_DIR/stock-kasan and patched-kasan.
#
# With PTFS_UML_URING=1 the kernels also have FUSE-over-io_uring
# (CONFIG_FUSE_IO_URING, off in the default kernels) and SMP, cached apart
# with "-uring" after the name (stock-uring, patched-uring; with
# PTFS_UML_DEBUG: patched-debug-uring ...), and boot with
# fuse.enable_uring=1 and PTFS_UML_NCPUS virtual CPUs (default 2; 1 for one
# queue): the daemon's --io-uring then registers one queue per CPU. The init
# refuses to run the command (exit 126) if enable_uring is not Y inside.
#
# Must run as root on Debian.  Environment:
#   PTFS_UML_DIR      cache directory (default /var/tmp/passthroughfs-uml)
#   PTFS_UML_JOBS     make -j value (default 2)
#   PTFS_UML_MEM      UML memory (default 1G)
#   PTFS_UML_TIMEOUT  seconds before a run is killed (default 600)
#   PTFS_UML_RW       host directories mounted read-write inside, separated by
#                     spaces (default "/work" if it exists); the rest of the
#                     host root is read-only
#   PTFS_UML_PASSENV  names of environment variables passed to CMD
#   PTFS_UML_UBD      disk image files attached as block devices (UML's
#                     ubdN=FILE), separated by spaces: the first is /dev/ubda
#                     inside, the second /dev/ubdb ... (at most 16; paths
#                     without spaces, commas or colons)
#   PTFS_UML_VERBOSE  1: show the UML console after each run
#   PTFS_UML_DEBUG    1: build and boot the SMP lock-debugging kernels (above),
#                     kasan: the same with KASAN
#   PTFS_UML_URING    1: build and boot the FUSE-over-io_uring kernels (above)
#   PTFS_UML_NCPUS    virtual CPUs of the debug and uring kernels (default 2)
#
# Inside, CMD runs as root with /proc, /sys, /dev (devtmpfs, with /dev/fuse)
# and a private tmpfs on /tmp, in the current directory if it is visible.
# Starting a process inside UML costs about 25 ms: loop inside one process.

set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${PTFS_UML_DIR:-/var/tmp/passthroughfs-uml}
JOBS=${PTFS_UML_JOBS:-2}
MEM=${PTFS_UML_MEM:-1G}
TIMEOUT=${PTFS_UML_TIMEOUT:-600}
DEBUG=${PTFS_UML_DEBUG:-0}
URING=${PTFS_UML_URING:-0}
NCPUS=${PTFS_UML_NCPUS:-2}
KVER=7.3
TARBALL=/usr/src/linux-source-$KVER.tar.xz
SERIES_DIR=$SELF_DIR

# Options added to ARCH=um defconfig
CONFIG_FRAGMENT='CONFIG_FUSE_FS=y
CONFIG_FUSE_PASSTHROUGH=y
CONFIG_FUSE_IO_URING=n
CONFIG_HOSTFS=y
CONFIG_TMPFS=y
CONFIG_TMPFS_POSIX_ACL=y
CONFIG_TMPFS_XATTR=y
CONFIG_EXT4_FS=y
CONFIG_EXT4_FS_POSIX_ACL=y
CONFIG_EXT4_FS_SECURITY=y
CONFIG_OVERLAY_FS=y
CONFIG_DEVTMPFS=y
CONFIG_DEVTMPFS_MOUNT=y
CONFIG_IKCONFIG=y
CONFIG_IKCONFIG_PROC=y
CONFIG_LOCALVERSION_AUTO=n'

# Added with PTFS_UML_DEBUG=1: two CPUs that really run kernel code at the
# same time, preemption between any two unlocked instructions, and the
# checks that catch what races and lock-order bugs do to a kernel.
# KASAN only with PTFS_UML_DEBUG=kasan: it slows the runs several times, and
# SLUB_DEBUG_ON's poisoning catches the common use-after-free at a fraction
# of the cost.
DEBUG_FRAGMENT='CONFIG_SMP=y
CONFIG_NR_CPUS=4
CONFIG_PREEMPT=y
CONFIG_DEBUG_KERNEL=y
CONFIG_PROVE_LOCKING=y
CONFIG_DEBUG_ATOMIC_SLEEP=y
CONFIG_DEBUG_LIST=y
CONFIG_DEBUG_OBJECTS=y
CONFIG_DEBUG_OBJECTS_FREE=y
CONFIG_DEBUG_OBJECTS_TIMERS=y
CONFIG_DEBUG_OBJECTS_WORK=y
CONFIG_DEBUG_OBJECTS_RCU_HEAD=y
CONFIG_SLUB_DEBUG=y
CONFIG_SLUB_DEBUG_ON=y
CONFIG_DEBUG_VM=y
CONFIG_FRAME_POINTER=y'

# What the kernels of this invocation are called in the cache
case "$DEBUG" in
0|'') SUFFIX= ;;
1)
	SUFFIX=-debug
	CONFIG_FRAGMENT="$CONFIG_FRAGMENT
$DEBUG_FRAGMENT"
	;;
kasan)
	# SLUB_DEBUG_ON's poisoning of caches made at boot trips UML's KASAN
	# (reports from init_object() before init runs)
	SUFFIX=-kasan
	CONFIG_FRAGMENT="$CONFIG_FRAGMENT
${DEBUG_FRAGMENT/CONFIG_SLUB_DEBUG_ON=y/CONFIG_SLUB_DEBUG_ON=n}
CONFIG_KASAN=y
CONFIG_KASAN_GENERIC=y
CONFIG_KASAN_OUTLINE=y"
	;;
*) echo "uml.sh: error: PTFS_UML_DEBUG must be 0, 1 or kasan" >&2; exit 1 ;;
esac

# Added with PTFS_UML_URING=1: the daemon's FUSE-over-io_uring transport
# (one queue per possible CPU, so SMP for more than one); the default
# kernels keep it off, so that their cache keys do not change.
URING_FRAGMENT='CONFIG_IO_URING=y
CONFIG_SMP=y
CONFIG_NR_CPUS=4'

case "$URING" in
0|'') ;;
1)
	SUFFIX=$SUFFIX-uring
	# (The debug fragment has the same SMP lines: they agree.)
	CONFIG_FRAGMENT="${CONFIG_FRAGMENT/CONFIG_FUSE_IO_URING=n/CONFIG_FUSE_IO_URING=y}
$URING_FRAGMENT"
	;;
*) echo "uml.sh: error: PTFS_UML_URING must be 0 or 1" >&2; exit 1 ;;
esac

log() { printf 'uml.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
	[ "$(id -u)" = 0 ] || die "must run as root"
}

# ---------------------------------------------------------------- apt setup

# URI of the main Debian archive in the machine's apt sources (deb822
# .sources files or one-line sources.list), never a hard-coded host.
debian_mirror() {
	local f uri=""

	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		uri=$(awk '
			function flush() {
				if (!found && deb && uri != "" && uri !~ /security/ &&
				    suites ~ /(^| )(bookworm|trixie|forky|sid|stable|testing|unstable)( |$)/)
					{ print uri; found = 1; exit }
				deb = 0; uri = ""; suites = ""
			}
			/^[ \t]*$/ { flush(); next }
			/^[ \t]*#/ { next }
			tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
			tolower($1) == "uris:" { uri = $2 }
			tolower($1) == "suites:" { $1 = ""; suites = $0 }
			END { flush() }' "$f")
		[ -n "$uri" ] && { echo "$uri"; return; }
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		uri=$(awk '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i) !~ /security/ && $(i + 1) !~ /security/) { print $i; exit }
			}' "$f")
		[ -n "$uri" ] && { echo "$uri"; return; }
	done
	return 1
}

setup_apt() {
	local src=/etc/apt/sources.list.d/trixie-backports.sources
	local pin=/etc/apt/preferences.d/trixie-backports
	local uri keyring=/usr/share/keyrings/debian-archive-keyring.gpg

	if ! grep -rqs 'trixie-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		uri=$(debian_mirror) || die "no Debian mirror found in the apt sources"
		log "adding trixie-backports from $uri"
		cat > "$src" <<EOF
Types: deb
URIs: $uri
Suites: trixie-backports
Components: main
Signed-By: $keyring
EOF
	fi
	if [ ! -e "$pin" ]; then
		# Only what is asked for explicitly comes from trixie-backports
		cat > "$pin" <<EOF
Package: *
Pin: release n=trixie-backports
Pin-Priority: 100
EOF
	fi
}

cmd_setup() {
	local pkgs="linux-source-$KVER build-essential flex bison bc libelf-dev xz-utils patch"
	local p missing=""

	need_root
	for p in $pkgs; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
			missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		setup_apt
		log "installing$missing"
		apt-get update -q >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $missing >/dev/null
	fi
	[ -r "$TARBALL" ] || die "$TARBALL missing after installing linux-source-$KVER"
}

# ---------------------------------------------------------------- build

series_files() {
	local p

	[ -r "$SERIES_DIR/series" ] || die "no series file in $SERIES_DIR"
	while read -r p; do
		case "$p" in ''|'#'*) continue ;; esac
		echo "$SERIES_DIR/$p"
	done < "$SERIES_DIR/series"
}

# What a kernel depends on; a change of it triggers a rebuild
build_key() {
	local flavor=$1

	{
		stat -c '%n %s %Y' "$TARBALL"
		echo "$CONFIG_FRAGMENT"
		if [ "$flavor" = patched ]; then
			# contents and names, not the checkout's path
			series_files | while read -r p; do
				echo "$(basename "$p") $(sha256sum < "$p")"
			done
		fi
	} | sha256sum | cut -d' ' -f1
}

build_one() {
	local flavor=$1 dir=$CACHE/$1$SUFFIX key start end p

	need_root
	cmd_setup
	key=$(build_key "$flavor")
	if [ -x "$dir/linux" ] && [ "$(cat "$dir/.ptfs-key" 2>/dev/null)" = "$key" ]; then
		log "$flavor$SUFFIX kernel is up to date ($dir/linux)"
		return 0
	fi
	start=$(date +%s)
	log "unpacking linux-source-$KVER into $dir"
	rm -rf "$dir"
	mkdir -p "$dir"
	tar -xJf "$TARBALL" -C "$dir" --strip-components=1
	if [ "$flavor" = patched ]; then
		series_files | while read -r p; do
			log "applying $(basename "$p")"
			patch -d "$dir" -p1 -s --no-backup-if-mismatch < "$p" ||
				die "$(basename "$p") does not apply"
		done
	fi
	log "configuring ($flavor$SUFFIX): ARCH=um defconfig + FUSE, hostfs, tmpfs, devtmpfs"
	make -C "$dir" -s ARCH=um defconfig >/dev/null
	printf '%s\n' "$CONFIG_FRAGMENT" > "$dir/ptfs.config"
	(cd "$dir" && scripts/kconfig/merge_config.sh -m .config ptfs.config >/dev/null)
	make -C "$dir" -s ARCH=um olddefconfig >/dev/null
	# An option the fragment asks for that Kconfig dropped would make the
	# kernel quietly weaker than the one documented
	while read -r p; do
		grep -qx "$p" "$dir/.config" ||
			{ [ "${p#*=}" = n ] && ! grep -q "^${p%%=*}=" "$dir/.config"; } ||
			die "$p did not survive olddefconfig"
	done <<< "$CONFIG_FRAGMENT"
	log "building the $flavor$SUFFIX kernel with make -j$JOBS (a few minutes)"
	if ! make -C "$dir" ARCH=um -j"$JOBS" linux > "$dir/build.log" 2>&1; then
		tail -30 "$dir/build.log" >&2
		die "$flavor build failed, see $dir/build.log"
	fi
	echo "$key" > "$dir/.ptfs-key"
	end=$(date +%s)
	echo "$((end - start))" > "$dir/.ptfs-build-seconds"
	log "$flavor$SUFFIX kernel built in $((end - start)) s: $dir/linux"
}

cmd_check() {
	local flavor=${1:-} dir

	case "$flavor" in stock|patched) ;; *) die "usage: uml.sh check stock|patched" ;; esac
	dir=$CACHE/$flavor$SUFFIX
	[ -r "$TARBALL" ] && [ -x "$dir/linux" ] &&
		[ "$(cat "$dir/.ptfs-key" 2>/dev/null)" = "$(build_key "$flavor")" ]
}

cmd_build() {
	local what=${1:-all}

	case "$what" in
	stock|patched) build_one "$what" ;;
	all) build_one stock; build_one patched ;;
	*) die "usage: uml.sh build [stock|patched|all]" ;;
	esac
}

# ---------------------------------------------------------------- run

# Boot a kernel and run a command inside; prints its output, returns its status
cmd_run() {
	local flavor=${1:-} kernel res init rw d v q pid status rc f
	local -a ubd=() boot=()

	shift || true
	[ "${1:-}" = "--" ] && shift
	case "$flavor" in stock|patched) ;; *) die "usage: uml.sh run stock|patched -- CMD [ARGS...]" ;; esac
	[ $# -gt 0 ] || die "usage: uml.sh run stock|patched -- CMD [ARGS...]"
	need_root
	kernel=$CACHE/$flavor$SUFFIX/linux
	[ -x "$kernel" ] || build_one "$flavor"
	# SMP works only with seccomp userspace (ptrace's is refused at boot)
	[ -n "$SUFFIX" ] && boot+=("ncpus=$NCPUS" seccomp=on)
	# The module parameter of the built-in fuse (N by default)
	[ "$URING" = 1 ] && boot+=(fuse.enable_uring=1)

	mkdir -p "$CACHE/runs"
	res=$(mktemp -d "$CACHE/runs/run.XXXXXX")
	init=$res/init.sh
	rw=${PTFS_UML_RW-}
	[ -z "${PTFS_UML_RW+x}" ] && [ -d /work ] && rw=/work
	# Block devices: ubd0=FILE is /dev/ubda inside (the root stays hostfs)
	for f in ${PTFS_UML_UBD:-}; do
		case "$f" in *,*|*:*) die "PTFS_UML_UBD: '$f': no commas or colons (ubd separators)" ;; esac
		[ -f "$f" ] || [ -b "$f" ] || die "PTFS_UML_UBD: '$f' is not a file or block device"
		[ ${#ubd[@]} -lt 16 ] || die "PTFS_UML_UBD: at most 16 devices"
		ubd+=("ubd${#ubd[@]}=$f")
	done

	{
		echo '#!/bin/bash'
		echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
		echo 'mount -t proc proc /proc'
		echo 'mount -t sysfs sysfs /sys'
		echo 'mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev'
		echo 'mount -t tmpfs -o mode=1777 tmpfs /tmp'
		printf 'mount -t hostfs -o %q hostfs %q\n' "$res" "$res"
		if [ "$URING" = 1 ]; then
			# A run meant for io_uring must not pass on /dev/fuse
			printf 'if [ "$(cat /sys/module/fuse/parameters/enable_uring 2>&1)" != Y ]; then\n'
			printf '\techo "uml.sh: enable_uring is not Y inside: $(cat /sys/module/fuse/parameters/enable_uring 2>&1)" > %q\n' "$res/output"
			printf '\techo 126 > %q; sync; poweroff -f || halt -f\nfi\n' "$res/status"
		fi
		for d in $rw; do
			[ -d "$d" ] && printf 'mount -t hostfs -o %q hostfs %q\n' "$d" "$d"
		done
		for v in ${PTFS_UML_PASSENV:-}; do
			[ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"
		done
		printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
		printf '%q ' "$@"
		printf '> %q 2>&1 < /dev/null\n' "$res/output"
		printf 'echo $? > %q\n' "$res/status"
		echo 'sync'
		echo 'poweroff -f || halt -f'
	} > "$init"
	chmod 755 "$init"

	# The UML process and its helpers run in their own session
	set +e
	setsid -w timeout -k 10 "$TIMEOUT" "$kernel" mem="$MEM" "${boot[@]}" "${ubd[@]}" rootfstype=hostfs \
		rootflags=/ ro init="$init" con=null con0=null,fd:1 \
		< /dev/null > "$res/console" 2>&1 &
	pid=$!
	wait "$pid"
	rc=$?
	set -e
	# Whatever UML left behind in its session (there should be nothing)
	for q in $(pgrep -s "$pid" 2>/dev/null || true); do
		kill -9 "$q" 2>/dev/null || true
	done

	[ -r "$res/output" ] && cat "$res/output"
	if [ -r "$res/status" ]; then
		status=$(cat "$res/status")
	else
		log "the command did not complete (UML exit $rc); console:"
		tail -40 "$res/console" >&2
		status=125
	fi
	[ "${PTFS_UML_VERBOSE:-0}" = 1 ] && cat "$res/console" >&2
	if [ -n "$SUFFIX" ] && ! check_splats "$res/console" && [ "$status" = 0 ]; then
		status=124
	fi
	rm -rf "$res"
	return "$status"
}

# What the debug options print when they catch something
SPLAT_RE='WARNING:|BUG:|BUG |Oops|kernel BUG|INFO: possible|INFO: task|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|lock held when returning|bad unlock balance|sleeping function called from invalid context|scheduling while atomic|list_add corruption|list_del corruption|ODEBUG|Kernel panic|general protection|refcount_t:|Poison overwritten|Object padding overwritten|Redzone overwritten|held lock freed|turning off the locking correctness validator'

# 0 if a console holds no kernel splat; else prints them, keeps the console
check_splats() {
	local console=$1 keep

	[ -r "$console" ] || return 0
	grep -Eq "$SPLAT_RE" "$console" || return 0
	mkdir -p "$CACHE/splats"
	keep=$(mktemp "$CACHE/splats/console.$(date +%Y%m%d-%H%M%S).XXXXXX")
	cp "$console" "$keep"
	log "kernel splat in the console (kept in $keep):"
	grep -E -A3 "$SPLAT_RE" "$console" | head -60 >&2
	return 1
}

# ---------------------------------------------------------------- test

cmd_test() {
	local what=${1:-all} bin=$CACHE/ptino_test fail=0 out run

	case "$what" in all|patched) ;; *) die "usage: uml.sh test [all|patched]" ;; esac
	need_root
	cmd_build "$what"
	mkdir -p "$CACHE"
	log "building test/ptino_test.c with $(gcc --version | head -1)"
	gcc -O2 -Wall -Wextra -Werror -o "$bin" "$SELF_DIR/test/ptino_test.c"

	for run in "stock stock" "patched plain" "patched ino" "patched walk" "patched lookup" \
		"patched nodp" "patched stress"; do
		set -- $run
		[ "$what" = all ] || [ "$1" = "$what" ] || continue
		echo "=== $1 kernel, ptino_test $2 ==="
		if PTFS_UML_RW="" PTFS_UML_PASSENV="${PTFS_UML_PASSENV:-} PTINO_STRESS_SECONDS" \
			cmd_run "$1" -- "$bin" "$2" /tmp/ptino; then
			echo "=== $1 kernel, ptino_test $2: OK ==="
		else
			echo "=== $1 kernel, ptino_test $2: FAILED ==="
			fail=1
		fi
	done
	[ $fail = 0 ] && echo "uml.sh test: all runs passed" || echo "uml.sh test: FAILED"
	return $fail
}

# ---------------------------------------------------------------- main

case "${1:-}" in
setup) cmd_setup ;;
build) shift; cmd_build "$@" ;;
check) shift; cmd_check "$@" ;;
run) shift; cmd_run "$@" ;;
test) shift; cmd_test "$@" ;;
clean) rm -rf "$CACHE" ;;
*)
	sed -n '3,64p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
