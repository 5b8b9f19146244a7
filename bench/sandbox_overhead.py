#!/usr/bin/env python3
"""What --sandbox costs: the same metadata workloads through the default
daemon and through a sandboxed one (seccomp filter on every syscall, the
supervisor process), median of N runs, as root.

    python3 bench/sandbox_overhead.py [--files 20000] [--runs 3] [--bin PATH]

Prints one line per workload: seconds (default, --sandbox) and the ratio.
SOURCE is a fresh directory under $TMPDIR (or /tmp); every mount is
unmounted at the end, whatever happens.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.join(HERE, "..", "target", "release", "passthroughfs")


def mounted(mnt):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == mnt for line in f)


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")


def workloads(mnt, n):
    d = os.path.join(mnt, "w")
    names = [os.path.join(d, "f%d" % i) for i in range(n)]
    out = {}

    t = time.perf_counter()
    os.mkdir(d)
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    out["create"] = time.perf_counter() - t

    t = time.perf_counter()
    for p in names:
        os.stat(p)
    out["stat warm"] = time.perf_counter() - t

    drop_caches()
    t = time.perf_counter()
    for p in names:
        os.stat(p)
    out["stat cold"] = time.perf_counter() - t

    t = time.perf_counter()
    for p in names:
        try:
            os.getxattr(p, "user.none")
        except OSError:
            pass
    out["getxattr"] = time.perf_counter() - t

    t = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_RDWR)
        os.write(fd, b"x" * 4096)
        os.close(fd)
    out["open+write+close"] = time.perf_counter() - t

    t = time.perf_counter()
    for p in names:
        os.unlink(p)
    os.rmdir(d)
    out["unlink"] = time.perf_counter() - t
    return out


def run_once(binary, extra, n):
    with tempfile.TemporaryDirectory(prefix="ptfs-sbx-bench") as top:
        src, mnt = os.path.join(top, "src"), os.path.join(top, "mnt")
        os.mkdir(src)
        os.mkdir(mnt)
        daemon = subprocess.Popen(
            [binary, "--foreground", *extra, src, mnt],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 20
            while not mounted(mnt):
                if daemon.poll() is not None or time.time() > deadline:
                    raise SystemExit("the daemon did not mount")
                time.sleep(0.01)
            os.stat(mnt)
            return workloads(mnt, n)
        finally:
            if mounted(mnt):
                subprocess.call(["umount", mnt])
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            if mounted(mnt):
                subprocess.call(["umount", "-l", mnt])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=DEFAULT_BIN)
    a = ap.parse_args()
    results = {"default": [], "--sandbox": []}
    # Alternate the two so drift in the machine's load hits both alike.
    # and the order changes each run (the second mount of a pair finds the
    # page cache and writeback the first one left).
    for i in range(a.runs):
        order = [("default", []), ("--sandbox", ["--sandbox"])]
        for name, extra in order if i % 2 == 0 else order[::-1]:
            results[name].append(run_once(a.bin, extra, a.files))
    print("%d files, median of %d runs (seconds)" % (a.files, a.runs))
    print("%-18s %9s %9s %7s" % ("workload", "default", "sandbox", "ratio"))
    for w in results["default"][0]:
        d = statistics.median(r[w] for r in results["default"])
        s = statistics.median(r[w] for r in results["--sandbox"])
        print("%-18s %9.3f %9.3f %7.3f" % (w, d, s, s / d))


if __name__ == "__main__":
    main()
