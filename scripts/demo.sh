#!/bin/sh
# Builds passthroughfs and mirrors a sample tree (/usr/share/doc), shows it
# working and what passed through, then unmounts. Run as root on Debian.
# Leaves nothing behind: no directory, no mount, no daemon.
#   scripts/demo.sh [SOURCE]
#   PASSTHROUGHFS=path/to/binary scripts/demo.sh   (no build; used by tests)
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null; }
bin=${PASSTHROUGHFS:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=./target/release/passthroughfs
fi
src=${1:-/usr/share/doc}
work=$(mktemp -d /tmp/passthroughfs-demo.XXXXXX)
pid=
cleanup() {
    # Runs on every exit, under `set -e`: nothing here may stop it before
    # the directory is gone.
    set +e
    if grep -q " $work/mnt " /proc/mounts 2>/dev/null; then
        umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null
    fi
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        # The daemon exits once unmounted; give it a moment, then stop it.
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap 'st=$?; cleanup; exit $st' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$work/mnt"
# In the foreground, in the background of this shell: $! is the daemon.
"$bin" --foreground --stats "$work/stats.json" --log "$work/daemon.log" "$src" "$work/mnt" &
pid=$!
echo "daemon pid $pid"
i=0
until grep -q " $work/mnt " /proc/mounts && stat "$work/mnt" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "the daemon exited:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
    i=$((i + 1))
    [ $i -lt 200 ] || { echo "the mount did not come up" >&2; exit 1; }
    sleep 0.1
done
echo "mounted $src at $work/mnt"
grep " $work/mnt " /proc/mounts
echo "entries: $(find "$work/mnt" | wc -l), bytes read: $(find "$work/mnt" -type f -exec cat {} + | wc -c)"
# SIGUSR1: the daemon writes its statistics.
rm -f "$work/stats.json"
kill -USR1 "$pid"
i=0
until [ -s "$work/stats.json" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.1
echo "requests the daemon saw (reads and writes passed through to the kernel):"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({k: s["requests"].get(k, 0) for k in ("LOOKUP","GETATTR","READDIRPLUS","OPEN","READ","WRITE")}), "backing:", json.dumps(s["backing"]))' "$work/stats.json" 2>/dev/null || cat "$work/stats.json"
umount "$work/mnt"
wait "$pid"
pid=
echo "unmounted"
