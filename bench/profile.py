#!/usr/bin/env python3
"""Load-independent counts for one daemon and one small workload, as root:
requests per entry (ours: its stats), syscalls (strace -c -f attached for
the workload only), voluntary context switches and CPU time of the daemon
(/proc), instructions (callgrind, zeroed before and dumped after the
workload), or a cpu-clock profile (perf record).

    bench/profile.py TARGET WORKLOAD MODE [--n N]
      TARGET:   ours (io_uring) | ours-dev (/dev/fuse) | peer | peer-uring
      WORKLOAD: create (N files created, written, unlinked) | untar | rmrf |
                lsr (ls -lR warm) of a 3,000-entry part of bench.py's small
                tree (/var/tmp/passthroughfs-bench-cache/small-tree.tar,
                made by a bench/run.sh run); untar-full: bench.py's untar
                row (the whole small tree, then `sync -f`); seqwrite: a
                256 MiB file written in 1 MiB write(2) calls (dd), entries
                are the writes
      MODE:     plain | strace | callgrind | perf (the daemon) | perf-all
                (every CPU: the kernel's work in the caller, the daemon,
                kworkers; `perf report --sort comm` splits it) | trace (the
                kernel's fuse_request_send tracepoint: requests per opcode
                for any daemon, the peer included)
    env: OURS (daemon binary, default target/release/passthroughfs),
         OURS_ARGS (more options for ours, e.g. "--nopassthrough"),
         PEER (passthrough_hp), PROF_WORK (scratch, default /tmp/ptfs-profile)

SOURCE is a 2 GiB ext4 image on a loop device under PROF_WORK, kept
between runs (umount it when done). The io_uring targets switch
/sys/module/fuse/parameters/enable_uring on and put the old value back
(PROF_KEEP_URING=1 leaves it on, for runs beside a test suite that needs
it). Valgrind 3.19 cannot serve FUSE-over-io_uring (the queues never
register and the mount hangs), so callgrind runs use ours-dev and peer;
the handlers are the same code in both transports.
"""
import argparse, glob, json, os, resource, signal, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = os.environ.get("PROF_WORK", "/tmp/ptfs-profile")
OURS = os.environ.get("OURS", os.path.join(REPO, "target/release/passthroughfs"))
BT = os.path.join(REPO, "target/release/examples/bench_tool")
PEER = os.environ.get("PEER", "passthrough_hp")
TAR_FULL = "/var/tmp/passthroughfs-bench-cache/small-tree.tar"
TAR = f"{W}/sub.tar"
UR = "/sys/module/fuse/parameters/enable_uring"


def sh(c, **kw):
    return subprocess.run(c, shell=isinstance(c, str), check=True, **kw)


def setup_src():
    os.makedirs(W, exist_ok=True)
    img, src = f"{W}/img", f"{W}/src"
    os.makedirs(src, exist_ok=True)
    if not os.path.ismount(src):
        if not os.path.exists(img):
            sh(["truncate", "-s", "2G", img])
            sh(["mkfs.ext4", "-q", "-F", img])
        sh(["mount", "-o", "loop", img, src])
    if not os.path.exists(TAR):
        tmp = f"{W}/subx"
        sh(f"rm -rf {tmp}; mkdir -p {tmp}")
        names = subprocess.run(["tar", "tf", TAR_FULL], capture_output=True, text=True).stdout.split("\n")
        names = [n for n in names if n.startswith("small/usr/include/") and n.count("/") <= 5][:3000]
        with open(f"{W}/list", "w") as f:
            f.write("\n".join(names) + "\n")
        sh(["tar", "xf", TAR_FULL, "-C", tmp, "--no-recursion", "-T", f"{W}/list"])
        sh(["tar", "cf", TAR, "-C", tmp, "small"])
        sh(f"rm -rf {tmp}")
    return src


def ctxsw(pid):
    v = n = 0
    for st in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            for line in open(st):
                if line.startswith("voluntary_ctxt_switches"):
                    v += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    n += int(line.split()[1])
        except OSError:
            pass
    return v, n


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def stats(pid, path):
    if os.path.exists(path):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR1)
    for _ in range(200):
        if os.path.exists(path):
            time.sleep(0.3)
            try:
                return json.load(open(path))
            except ValueError:
                pass
        time.sleep(0.05)
    return None


def total_requests(j):
    return sum(j["requests"].values()) if j else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("workload")
    ap.add_argument("mode")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    src = setup_src()
    mnt = f"{W}/mnt"
    os.makedirs(mnt, exist_ok=True)
    d = f"{src}/d"
    sh(f"rm -rf {d}; mkdir -p {d}; sync")
    uring = a.target in ("ours", "peer-uring")
    if uring and a.mode == "callgrind":
        sys.exit("profile: valgrind cannot serve FUSE-over-io_uring; use ours-dev or peer")
    old = open(UR).read().strip()
    statf = f"{W}/stats.json"
    if a.target.startswith("ours"):
        argv = [OURS, "--foreground", "--stats", statf] + ([] if uring else ["--no-io-uring"])
        argv += os.environ.get("OURS_ARGS", "").split() + [src, mnt]
    else:
        argv = [PEER, "--foreground"] + (["-o", "io_uring"] if uring else []) + [src, mnt]
    cgout = f"{W}/cg.{a.target}.{a.workload}{a.tag}"
    for f in glob.glob(cgout + "*"):
        os.unlink(f)
    if a.mode == "callgrind":
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgout}", "--dump-instr=no"] + argv
    try:
        if uring or os.environ.get("PROF_KEEP_URING") != "1":
            with open(UR, "w") as f:
                f.write("Y" if uring else "N")
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"{W}/daemon.log", "w"))
        for _ in range(600):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("no mount")
        time.sleep(1.0 if a.mode == "callgrind" else 0.2)
        rings = sum(1 for fd in os.listdir(f"/proc/{p.pid}/fd")
                    if os.readlink(f"/proc/{p.pid}/fd/{fd}") == "anon_inode:[io_uring]")
        m = f"{mnt}/d"
        # preparation outside the measured phase
        if a.workload == "rmrf":
            sh(["tar", "xf", TAR, "-C", m])
            sh(["sync"])
            sh("echo 2 > /proc/sys/vm/drop_caches")
        if a.workload == "lsr":
            sh(["tar", "xf", TAR, "-C", m])
            sh(f"ls -lR {m} > /dev/null")
        if a.workload == "untar":
            sh(f"cat {TAR} > /dev/null")
        if a.workload == "untar-full":
            sh("sync; echo 2 > /proc/sys/vm/drop_caches")
            sh(f"cat {TAR_FULL} > /dev/null")
        s0 = stats(p.pid, statf) if a.target.startswith("ours") else None
        c0 = ctxsw(p.pid)
        u0 = cpu(p.pid)
        st = None
        if a.mode == "strace":
            st = subprocess.Popen(["strace", "-c", "-f", "-o", f"{W}/strace.txt", "-p", str(p.pid)],
                                  stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        if a.mode == "trace":
            st = subprocess.Popen(["perf", "record", "-q", "-a", "-e", "fuse:fuse_request_send",
                                   "-o", f"{W}/trace.data"],
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        if a.mode in ("perf", "perf-all"):
            who = ["-a"] if a.mode == "perf-all" else ["-p", str(p.pid)]
            st = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-g"] + who + [
                                   "-o", f"{W}/perf.{a.target}.{a.workload}{a.tag}.data"],
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            time.sleep(1.0)
        if a.mode == "callgrind":
            sh(["callgrind_control", "-z", str(p.pid)], stdout=subprocess.DEVNULL)
        t0 = time.time()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if a.workload == "create":
            sh([BT, "create-unlink", m, str(a.n)], stdout=subprocess.DEVNULL)
            entries = a.n
        elif a.workload == "untar":
            sh(["tar", "xf", TAR, "-C", m])
            entries = 3000
        elif a.workload == "untar-full":
            sh(["tar", "xf", TAR_FULL, "-C", m])
            ts = time.time()
            sh(["sync", "-f", m])
            sync_s = time.time() - ts
            entries = int(subprocess.run(f"find {m} | wc -l", shell=True, capture_output=True,
                                         text=True).stdout) - 1
        elif a.workload == "seqwrite":
            sh(["dd", "if=/dev/zero", f"of={m}/seq", "bs=1M", "count=256", "conv=fsync"],
               stderr=subprocess.DEVNULL)
            entries = 256
        elif a.workload == "rmrf":
            sh(["rm", "-rf", f"{m}/small"])
            entries = 3000
        elif a.workload == "lsr":
            sh(f"ls -lR {m} > /dev/null")
            entries = 3000
        dt = time.time() - t0
        sync_s = locals().get("sync_s")
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if a.mode == "callgrind":
            sh(["callgrind_control", "-d", str(p.pid)], stdout=subprocess.DEVNULL)
        if st:
            time.sleep(0.3)
            st.send_signal(signal.SIGINT)
            st.wait()
        c1 = ctxsw(p.pid)
        u1 = cpu(p.pid)
        s1 = stats(p.pid, statf) if a.target.startswith("ours") else None
        nreq = total_requests(s1) - total_requests(s0) if s1 else None
        if s1:
            # the stats request itself is not a FUSE request; nothing to subtract
            by = {k: v - (s0["requests"].get(k, 0)) for k, v in s1["requests"].items()}
            by = {k: v for k, v in by.items() if v}
        else:
            by = None
        res = {"target": a.target, "workload": a.workload, "mode": a.mode, "entries": entries,
               "seconds": round(dt, 3), "sync_seconds": sync_s and round(sync_s, 3), "cpu": round(u1 - u0, 3),
               # CPU of the workload's own process (tar, rm, ...): its
               # user time and the kernel time of its system calls
               "caller_user": round(r1.ru_utime - r0.ru_utime, 3),
               "caller_sys": round(r1.ru_stime - r0.ru_stime, 3),
               "caller_vol_cs": r1.ru_nvcsw - r0.ru_nvcsw, "rings": rings, "requests": nreq, "by_op": by,
               "vol_cs": c1[0] - c0[0], "invol_cs": c1[1] - c0[1]}
        if a.mode == "callgrind":
            dumps = sorted(glob.glob(cgout + ".*"), key=os.path.getmtime)
            ir = 0
            for f in dumps:
                for line in open(f):
                    if line.startswith("summary:") or line.startswith("totals:"):
                        ir = int(line.split()[1])
                        break
                break
            res["Ir"] = ir
            res["Ir_per_entry"] = round(ir / entries)
            if nreq:
                res["Ir_per_request"] = round(ir / nreq)
        if a.mode == "trace":
            # the connection id is the mount's device number (minor)
            conn = os.minor(os.stat(mnt).st_dev) if os.path.ismount(mnt) else None
            out = subprocess.run(["perf", "script", "-i", f"{W}/trace.data"], capture_output=True,
                                 text=True).stdout
            ops = {}
            for ln in out.split("\n"):
                f = ln.split("connection ")
                if len(f) < 2:
                    continue
                w = f[1].split()
                if conn is not None and int(w[0]) != conn:
                    continue
                op = w[5].strip("()").removeprefix("FUSE_")
                ops[op] = ops.get(op, 0) + 1
            res["kernel_requests"] = sum(ops.values())
            res["kernel_req_per_entry"] = round(res["kernel_requests"] / entries, 2)
            res["kernel_by_op"] = ops
        if a.mode == "strace":
            lines = open(f"{W}/strace.txt").read().split("\n")
            calls = {}
            for ln in lines:
                f = ln.split()
                if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                    try:
                        calls[f[-1]] = int(f[3])
                    except ValueError:
                        pass
            res["syscalls"] = sum(calls.values())
            res["syscalls_per_entry"] = round(res["syscalls"] / entries, 2)
            res["by_syscall"] = calls
        if nreq:
            res["req_per_entry"] = round(nreq / entries, 2)
            res["vol_cs_per_request"] = round(res["vol_cs"] / nreq, 2)
            if a.mode == "strace":
                res["syscalls_per_request"] = round(res["syscalls"] / nreq, 2)
        print(json.dumps(res))
    finally:
        try:
            subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
            if p.poll() is None:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    subprocess.run(["umount", "-l", mnt])
                    p.kill()
        finally:
            if os.environ.get("PROF_KEEP_URING") != "1":
                with open(UR, "w") as f:
                    f.write(old)


if __name__ == "__main__":
    main()
