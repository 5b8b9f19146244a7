#!/usr/bin/env python3
# Paired warm-stat walks in one UML boot: the fuse fast path of the
# experimental kernel switched on and off (/sys/module/fuse/parameters/
# ptfs_fastattr) between walks, with native and overlay in the same rounds.
import argparse, json, os, statistics, subprocess, sys, types
sys.path.insert(0, "/work/wt/kopt/bench")
import uml_bench as ub

PARAM = "/sys/module/fuse/parameters/ptfs_fastattr"

def inside(a):
    ub.ARGS = types.SimpleNamespace(bin=a.bin, cpu=True, out=a.out)
    src = "/tmp/src"; tree = f"{src}/tree"
    os.makedirs(src, exist_ok=True)
    subprocess.run([ub.TOOL, "mktree", tree, str(a.files // 1000), "1000"], check=True, stdout=subprocess.DEVNULL)
    d = ub.Daemon(src, "/tmp/mnt-masks", ["--passthrough-ops", "all"], "/tmp/stats-masks.json")
    o = ub.KernelMount(src, "/tmp/mnt-overlay", ub.KernelFs("overlay", "lowerdir={src}:" + ub.OVERLAY_EMPTY, "ovl"))
    def walk(root):
        subprocess.run([ub.TOOL, "stat", root], check=True, capture_output=True)
    def setp(v):
        with open(PARAM, "w") as f:
            f.write(v)
    try:
        for r in (tree, d.mnt + "/tree", o.mnt + "/tree"):
            walk(r); walk(r)
        for i in range(a.reps):
            order = [("fast", "Y"), ("slow", "N")]
            if i % 2:
                order.reverse()
            for name, v in [("native", None)] + [("masks-" + n, v) for n, v in order] + [("overlay", None)]:
                root = tree if name == "native" else (o.mnt + "/tree" if name == "overlay" else d.mnt + "/tree")
                if v:
                    setp(v)
                ub.cpu_mark(f"start {name} stat_warm {i}")
                walk(root)
                ub.cpu_mark("stop")
        print(json.dumps(d.requests()))
    finally:
        setp("Y")
        d.close(); o.close()

def host(a):
    os.makedirs(a.out, exist_ok=True)
    w = ub.CpuWatch(os.path.abspath(a.out)); w.start()
    env = dict(os.environ, PTFS_UML_MEM="3G", PTFS_UML_TIMEOUT="3600")
    try:
        r = subprocess.run(["bash", "/work/wt/kopt/kernel-patches/uml.sh", "run", "patched", "--", sys.executable,
                            os.path.abspath(__file__), "--inside", "--out", os.path.abspath(a.out), "--reps", str(a.reps),
                            "--files", str(a.files), "--bin", a.bin], env=env, preexec_fn=w.enter)
    finally:
        w.close()
    res = {k[0]: v for k, v in w.samples.items()}
    json.dump(res, open(os.path.join(a.out, "paired.json"), "w"), indent=1)
    for k, v in res.items():
        print(f"{k:12} n={len(v)} median {statistics.median(v):.3f} min {min(v):.3f}  " + " ".join(f"{x:.3f}" for x in v))
    f, s = res.get("masks-fast", []), res.get("masks-slow", [])
    if f and s:
        ratios = [x / y for x, y in zip(f, s)]
        print(f"paired fast/slow: median {statistics.median(ratios):.3f}  " + " ".join(f"{x:.2f}" for x in ratios))
    return r.returncode

ap = argparse.ArgumentParser()
ap.add_argument("--inside", action="store_true")
ap.add_argument("--out", required=True)
ap.add_argument("--reps", type=int, default=15)
ap.add_argument("--files", type=int, default=50000)
ap.add_argument("--bin", default="/work/wt/kopt/target/release/passthroughfs")
a = ap.parse_args()
sys.exit(inside(a) if a.inside else host(a))
