#!/usr/bin/env python3
"""Metadata benchmark on the patched kernel (kernel-patches/), inside UML.

Inode passthrough is about metadata: with the ops mask, stat, readdir and
xattrs of a looked-up entry are served by the kernel from the backing inode.
This measures, side by side in one UML boot, `stat` of 100k files (the
bench_tool walk: readdir + lstat of every entry) and `ls -lR`, warm and after
drop_caches, and a cold `find` (readdir only), for:

  native        the tmpfs SOURCE itself
  masks         passthroughfs, --passthrough-ops all (inode passthrough)
  io            passthroughfs, --passthrough-ops read,write (what a stock
                kernel offers: I/O passthrough on open only)
  masks-nocache / io-nocache   the same with --nocache (entry and attribute
                timeouts 0: every stat must be fresh)
  overlay       not FUSE: the kernel's own stacking filesystem, overlayfs,
                read-only over the same SOURCE (lowerdir=SOURCE plus an
                empty second lower layer, as the kernel wants two layers
                when there is no upper one; nothing is copied up). Its
                getattr reads the real inode as inode passthrough reads the
                backing one, so it is the reference for what stacking with
                fresh attributes costs: the floor for masks' ratios.

With --cpu, the host also measures the CPU time that the whole UML instance
(its kernel and every process inside, daemon included) spends in each
measured walk, from a cpuacct cgroup: on a loaded machine the wall-clock
times inside UML stretch with every context switch between the walker and
the daemon, CPU time much less.

Run on the host as root:  python3 bench/uml_bench.py [--reps N] [--files N] [--cpu]
It builds bench_tool, boots the patched UML kernel built by
`kernel-patches/uml.sh build patched` and writes results.json and report.md
to bench/results/DATE-uml/. UML is a single slow CPU: compare ratios within
this report, not its absolute times with the host's.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import drop_caches  # noqa: E402  (sync, then drop every cache)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.join(REPO, "target/release/passthroughfs")
TOOL = os.path.join(REPO, "target/release/examples/bench_tool")
ARGS = None  # the command line, for the daemon binary


class KernelFs:
    """A target that is a kernel filesystem mount, not the daemon:
    `mount -t FSTYPE -o OPTIONS` ({src} in OPTIONS is SOURCE)."""

    def __init__(self, fstype, options, label):
        self.fstype, self.options, self.label = fstype, options, label


OVERLAY_EMPTY = "/tmp/ovl-empty"  # overlayfs's second lower layer: see the docstring

# (name, daemon options), None for SOURCE itself, or a KernelFs.
TARGETS = [
    ("native", None),
    ("masks", ["--passthrough-ops", "all"]),
    ("io", ["--passthrough-ops", "read,write"]),
    ("masks-nocache", ["--passthrough-ops", "all", "--nocache"]),
    ("io-nocache", ["--passthrough-ops", "read,write", "--nocache"]),
    ("overlay", KernelFs("overlay", "lowerdir={src}:" + OVERLAY_EMPTY,
                         "overlay (kernel stacking fs, not FUSE)")),
]
LABELS = {t: o.label for t, o in TARGETS if isinstance(o, KernelFs)}


class Daemon:
    """A passthroughfs mount for one target, unmounted on exit."""

    def __init__(self, src, mnt, opts, stats):
        self.mnt, self.stats = mnt, stats
        os.makedirs(mnt, exist_ok=True)
        self.p = subprocess.Popen([ARGS.bin, "--foreground", "--stats", stats, *opts, src, mnt],
                                  stdout=subprocess.DEVNULL, stderr=open("/tmp/daemon.log", "a"))
        for _ in range(200):
            if os.path.ismount(mnt):
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"mount {opts} did not come up: " + open("/tmp/daemon.log").read()[-2000:])

    def requests(self):
        try:
            os.unlink(self.stats)
        except FileNotFoundError:
            pass
        self.p.send_signal(signal.SIGUSR1)
        for _ in range(200):
            try:
                with open(self.stats) as f:
                    return json.load(f)["requests"]
            except (OSError, ValueError):
                time.sleep(0.02)
        return {}

    def close(self):
        subprocess.run(["umount", self.mnt], check=False)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


class KernelMount:
    """A kernel filesystem mounted for one target, with Daemon's interface
    (no daemon, so no requests), unmounted on close."""

    def __init__(self, src, mnt, fs):
        self.mnt = mnt
        os.makedirs(mnt, exist_ok=True)
        os.makedirs(OVERLAY_EMPTY, exist_ok=True)
        subprocess.run(["mount", "-t", fs.fstype, "-o", fs.options.format(src=src), fs.fstype, mnt], check=True)

    def requests(self):
        return {}

    def close(self):
        subprocess.run(["umount", self.mnt], check=False)


def cpu_mark(label):
    """--cpu: tell the host (which polls for the file) where a measured
    walk starts or stops, and wait until it has read its CPU counter."""
    if not ARGS.cpu:
        return
    mark = os.path.join(ARGS.out, "cpu-mark")
    with open(mark + ".tmp", "w") as f:
        f.write(label)
    os.rename(mark + ".tmp", mark)
    while os.path.exists(mark):
        time.sleep(0.005)


def timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def inside(args):
    if args.nofile:
        # The daemon sizes its fd cache from the hard limit (half of it);
        # UML's init leaves 4,096, a systemd service gets 524,288.
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    src = "/tmp/src"
    tree = f"{src}/tree"
    os.makedirs(src, exist_ok=True)
    dirs = max(1, args.files // 1000)
    subprocess.run([TOOL, "mktree", tree, str(dirs), "1000"], check=True, stdout=subprocess.DEVNULL)
    nfiles = dirs * 1000

    def stat_walk(root):
        out = subprocess.run([TOOL, "stat", root], check=True, capture_output=True, text=True).stdout
        return json.loads(out)["seconds"]

    def ls_lr(root):
        return timed(["ls", "-lR", root])

    # (name, preparation, measured run): warm runs follow a priming run,
    # cold ones drop the dentry and inode caches first.
    def find(root):
        return timed(["find", root])

    workloads = [
        ("find_cold", lambda r: drop_caches(), find),
        ("stat_warm", stat_walk, stat_walk),
        ("stat_cold", lambda r: drop_caches(), stat_walk),
        ("ls_lR_warm", ls_lr, ls_lr),
        ("ls_lR_cold", lambda r: drop_caches(), ls_lr),
    ]
    targets = [t for t in TARGETS if t[0] == "native" or not args.targets or t[0] in args.targets.split(",")]
    res = {t: {w[0]: [] for w in workloads} for t, _ in targets}
    reqs = {t: {} for t, _ in targets}
    for rep in range(args.reps):
        for tname, opts in targets:
            d = None
            root = tree
            if isinstance(opts, KernelFs):
                d = KernelMount(src, f"/tmp/mnt-{tname}", opts)
            elif opts is not None:
                d = Daemon(src, f"/tmp/mnt-{tname}", opts, f"/tmp/stats-{tname}.json")
            if d:
                root = f"{d.mnt}/tree"
            try:
                for wname, prep, fn in workloads:
                    prep(root)
                    before = d.requests() if d else {}
                    cpu_mark(f"start {tname} {wname} {rep}")
                    secs = fn(root)
                    cpu_mark("stop")
                    res[tname][wname].append(secs)
                    if d and rep == args.reps - 1:
                        after = d.requests()
                        reqs[tname][wname] = {k: v - before.get(k, 0) for k, v in after.items()
                                              if v - before.get(k, 0) > 0}
                    print(f"rep {rep + 1} {tname:14} {wname:11} {secs:8.3f} s", flush=True)
            finally:
                if d:
                    d.close()
    summary = {}
    for tname, _ in targets:
        summary[tname] = {}
        for wname, _, _ in workloads:
            xs = res[tname][wname]
            med = statistics.median(xs)
            nat = statistics.median(res["native"][wname])
            summary[tname][wname] = {"median_s": med, "min_s": min(xs), "max_s": max(xs),
                                     "ratio_to_native": med / nat if nat else None,
                                     "daemon_requests": reqs[tname].get(wname, {})}
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "kernel": platform.release(), "files": nfiles, "reps": args.reps, "results": summary}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    if not args.cpu:
        report(out, args.out)
    return 0


class CpuWatch(threading.Thread):
    """--cpu, on the host: the UML instance runs in a cpuacct cgroup; at each
    mark written by the inside, read the cgroup's CPU time."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.mark = os.path.join(folder, "cpu-mark")
        self.cg = f"/sys/fs/cgroup/cpuacct/ptfs-uml-bench-{os.getpid()}"
        os.makedirs(self.cg, exist_ok=True)
        self.samples = {}  # (target, workload) -> [seconds]
        self.stop = False

    def enter(self):
        """preexec_fn: the child (and UML, and all inside) in the cgroup."""
        with open(os.path.join(self.cg, "tasks"), "w") as f:
            f.write(str(os.getpid()))

    def usage(self):
        with open(os.path.join(self.cg, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def run(self):
        start = None
        while not self.stop:
            try:
                with open(self.mark) as f:
                    label = f.read().split()
            except OSError:
                time.sleep(0.005)
                continue
            if label and label[0] == "start":
                start = (label[1], label[2], self.usage())
            elif label and label[0] == "stop" and start:
                self.samples.setdefault(start[:2], []).append(self.usage() - start[2])
                start = None
            os.unlink(self.mark)

    def close(self):
        self.stop = True
        self.join(timeout=2)
        try:
            os.rmdir(self.cg)
        except OSError:
            pass


def add_cpu(out, samples):
    for (t, w), xs in samples.items():
        r = out["results"].get(t, {}).get(w)
        if r is not None:
            r["cpu_s"] = xs  # every repetition, in order: shows when the walks are bimodal
            r["cpu_median_s"] = statistics.median(xs)
            r["cpu_min_s"] = min(xs)
    for t, rs in out["results"].items():
        for w, r in rs.items():
            nat = out["results"].get("native", {}).get(w, {})
            if "cpu_median_s" in r and nat.get("cpu_median_s"):
                r["cpu_ratio_to_native"] = r["cpu_median_s"] / nat["cpu_median_s"]
                r["cpu_min_ratio_to_native"] = r["cpu_min_s"] / nat["cpu_min_s"]


def report(out, folder):
    ws = ["find_cold", "stat_warm", "stat_cold", "ls_lR_warm", "ls_lR_cold"]
    lines = [f"# Metadata on the patched kernel (UML), {out['date']}", "",
             f"Kernel {out['kernel']} (User-Mode Linux, one CPU), SOURCE on tmpfs, "
             f"{out['files']} files in {out['files'] // 1000} dirs, median of {out['reps']} runs; "
             "time in seconds, and the ratio to native (lower is better).", "",
             "| target | " + " | ".join(ws) + " |", "|---|" + "---|" * len(ws)]
    for t, r in out["results"].items():
        cells = [f"{r[w]['median_s']:.2f} s ({r[w]['ratio_to_native']:.2f}x)" for w in ws]
        lines.append(f"| {LABELS.get(t, t)} | " + " | ".join(cells) + " |")
    def cpu_table(intro, value, ratio):
        """One table of CPU figures (`value` s, `ratio` to native) per target."""
        rows = ["", intro, "", "| target | " + " | ".join(ws) + " |", "|---|" + "---|" * len(ws)]
        for t, r in out["results"].items():
            cells = [f"{r[w][value]:.2f} s ({r[w][ratio]:.2f}x)" if ratio in r[w] else "-" for w in ws]
            rows.append(f"| {LABELS.get(t, t)} | " + " | ".join(cells) + " |")
        return rows

    if any("cpu_median_s" in r[w] for r in out["results"].values() for w in ws):
        lines += cpu_table("CPU time of the whole UML instance during each walk (host cpuacct cgroup, median), "
                           "and its ratio to native:", "cpu_median_s", "cpu_ratio_to_native")
        lines += cpu_table("The same, minimum over the runs, and its ratio to native's minimum "
                           "(when the walks are bimodal on a busy host, the fast mode):",
                           "cpu_min_s", "cpu_min_ratio_to_native")
    lines += ["", "Requests the daemon received during the measured part of the last run of each workload:", ""]
    for t, r in out["results"].items():
        if t == "native" or t in LABELS:  # no daemon
            continue
        for w in ws:
            rq = ", ".join(f"{k} {v}" for k, v in sorted(r[w]["daemon_requests"].items()))
            lines.append(f"- {t} / {w}: {rq or 'none'}")
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def host(args):
    if os.geteuid() != 0:
        sys.exit("uml_bench: needs root")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "passthroughfs", "--example", "bench_tool"],
                   cwd=REPO, check=True)
    uml = os.path.join(REPO, "kernel-patches/uml.sh")
    if subprocess.run(["bash", uml, "check", "patched"]).returncode != 0:
        sys.exit("uml_bench: no up-to-date patched UML kernel: run kernel-patches/uml.sh build patched")
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    out = args.out or os.path.join(HERE, "results", f"{date}-uml")
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PTFS_UML_MEM=os.environ.get("PTFS_UML_MEM", "3G"),
               PTFS_UML_TIMEOUT=os.environ.get("PTFS_UML_TIMEOUT", "3600"))
    watch = CpuWatch(os.path.abspath(out)) if args.cpu else None
    if watch:
        watch.start()
    try:
        r = subprocess.run(["bash", uml, "run", "patched", "--", sys.executable, os.path.abspath(__file__), "--inside",
                            "--out", os.path.abspath(out), "--reps", str(args.reps), "--files", str(args.files),
                            "--bin", os.path.abspath(args.bin)] + (["--targets", args.targets] if args.targets else [])
                           + (["--cpu"] if args.cpu else [])
                           + (["--nofile", str(args.nofile)] if args.nofile else []),
                           env=env, cwd=REPO, preexec_fn=watch.enter if watch else None)
    finally:
        if watch:
            watch.close()
    if watch and r.returncode == 0:
        with open(os.path.join(out, "results.json")) as f:
            res = json.load(f)
        add_cpu(res, watch.samples)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)
        report(res, out)
    print(f"results: {out}")
    return r.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--targets", default=None, help="comma-separated targets besides native (default: all)")
    ap.add_argument("--bin", default=BIN, help="daemon binary (default: this checkout's release build)")
    ap.add_argument("--nofile", type=int, default=0,
                    help="RLIMIT_NOFILE (soft and hard) for the daemons inside (default: UML's)")
    ap.add_argument("--cpu", action="store_true",
                    help="also measure the CPU time of the UML instance per walk (host cpuacct cgroup)")
    args = ap.parse_args()
    global ARGS
    ARGS = args
    sys.exit(inside(args) if args.inside else host(args))


if __name__ == "__main__":
    main()
