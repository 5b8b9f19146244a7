#!/bin/sh
# Builds passthroughfs and mirrors a sample tree (/usr/share/doc), shows it
# working and what passed through, then unmounts. Run as root on Debian.
set -eu
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null; }
cargo build --release --quiet
work=$(mktemp -d /tmp/passthroughfs-demo.XXXXXX)
mkdir "$work/mnt"
src=${1:-/usr/share/doc}
trap 'umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null; rm -rf "$work"' EXIT INT TERM
./target/release/passthroughfs --stats "$work/stats.json" --log "$work/daemon.log" "$src" "$work/mnt"
echo "mounted $src at $work/mnt"
grep " $work/mnt " /proc/mounts
echo "entries: $(find "$work/mnt" | wc -l), bytes read: $(find "$work/mnt" -type f -exec cat {} + | wc -c)"
pkill -USR1 -f "passthroughfs --stats $work/stats.json" && sleep 0.5
echo "requests the daemon saw (reads and writes passed through to the kernel):"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps({k: s["requests"].get(k, 0) for k in ("LOOKUP","GETATTR","READDIRPLUS","OPEN","READ","WRITE")}), "backing:", json.dumps(s["backing"]))' "$work/stats.json" 2>/dev/null || cat "$work/stats.json"
umount "$work/mnt"
echo "unmounted"
