#!/usr/bin/env python3
"""Benchmarks: native SOURCE vs passthroughfs modes vs the peer, side by side.

Run through bench/run.sh (it installs the packages and builds the daemon).
Every workload runs on a fresh loop-mounted ext4 (the root fs here has no
journal and its metadata speed drifts), once per target per repetition,
targets interleaved within each repetition (in an order rotated per repetition)
so drift hits all of them alike; cold workloads get one untimed warm-up run
first, because the host caches the VM's disk.
Results: JSON plus a Markdown report with SVG plots in the output folder.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def sh(cmd, check=True, capture=False, **kw):
    if capture:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
    r = subprocess.run(cmd, shell=isinstance(cmd, str), check=False, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {r.returncode} {r.stderr if capture else ''}")
    return r


def drop_caches():
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def proc_cpu(pid):
    """utime+stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss_fds(pid):
    rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return rss, fds


# Ours host-checked: SOURCE checks permissions, the kernel keeps the locks.
HOST_CHECKED = "ptfs -o nodefault_permissions --locks kernel"
# The same without extended attributes: the kernel stops asking for them
# (README, Caching: what --xattr off gives up).
XATTR_OFF = HOST_CHECKED + " --xattr off"

class Target:
    """One way of reaching SOURCE: natively, or through a daemon's mount."""

    def __init__(self, name, argv_fn=None, uring=False, stats=None):
        self.name = name
        self.argv_fn = argv_fn  # (src, mnt) -> argv of a foreground daemon
        self.uring = uring  # must run over FUSE-over-io_uring
        self.stats = stats  # ours: its stats file
        self.proc = None
        self.mnt = None

    @property
    def native(self):
        return self.argv_fn is None

    def mount(self, src, mnt):
        if self.native:
            self.mnt = src
            return
        os.makedirs(mnt, exist_ok=True)
        self.mnt = mnt
        self.proc = subprocess.Popen(self.argv_fn(src, mnt), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=raise_nofile)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: daemon exited ({self.proc.returncode})")
            if is_mounted(mnt):
                os.stat(mnt)
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: mount did not come up")

    def unmount(self):
        if self.native or self.proc is None:
            return
        if is_mounted(self.mnt):
            subprocess.run(["umount", self.mnt], check=False, stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)
        self.proc = None

    def pid(self):
        return self.proc.pid if self.proc else None


def raise_nofile():
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.work = args.work
        self.results = {}
        self.loop = None
        self.src = None
        self.tool = os.path.join(REPO, "target/release/examples/bench_tool")
        self.bin = args.binary

    # ---- set-up ---------------------------------------------------------

    def make_lower(self):
        """A fresh ext4 on a loop device, mounted at WORK/lower."""
        os.makedirs(self.work, exist_ok=True)
        img = os.path.join(self.work, "lower.img")
        size = "4G" if self.quick else "12G"
        sh(["truncate", "-s", "0", img])
        sh(["truncate", "-s", size, img])
        sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img])
        self.loop = sh(["losetup", "--find", "--show", img], capture=True).stdout.strip()
        lower = os.path.join(self.work, "lower")
        os.makedirs(lower, exist_ok=True)
        sh(["mount", self.loop, lower])
        self.lower = lower
        self.src = os.path.join(lower, "src")
        os.makedirs(self.src, exist_ok=True)

    def cleanup(self):
        for t in getattr(self, "targets", []):
            try:
                t.unmount()
            except Exception as e:  # keep cleaning up
                print(f"cleanup {t.name}: {e}", file=sys.stderr)
        if getattr(self, "lower", None) and is_mounted(self.lower):
            subprocess.run(["umount", self.lower], check=False)
            if is_mounted(self.lower):
                subprocess.run(["umount", "-l", self.lower], check=False)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], check=False)
            self.loop = None
        img = os.path.join(self.work, "lower.img")
        if os.path.exists(img):
            os.unlink(img)
        self.restore_params()

    # ---- idle polling of the vCPUs --------------------------------------

    HALT_POLL_PARAM = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"

    def halt_poll_set(self):
        """--halt-poll-ns: how long an idle vCPU polls before it halts, for
        this run only (cleanup() puts the old value back whatever happens).
        Every FUSE round trip wakes a CPU; this shows what a halted one
        costs (bench/README.md, "What a round trip costs here")."""
        self.machine = machine()
        if self.args.halt_poll_ns is None:
            return
        if not os.path.exists(self.HALT_POLL_PARAM):
            sys.exit("bench: --halt-poll-ns: no cpuidle haltpoll governor on this machine")
        self.set_param(self.HALT_POLL_PARAM, str(self.args.halt_poll_ns))
        self.machine = machine()

    def set_param(self, path, value):
        """Writes a kernel parameter for this run; restore_params() (from
        cleanup(), whatever happens) puts the first value seen back."""
        if not hasattr(self, "saved_params"):
            self.saved_params = {}
        if path not in self.saved_params:
            with open(path) as f:
                self.saved_params[path] = f.read().strip()
        with open(path, "w") as f:
            f.write(value)

    def restore_params(self):
        for path, orig in getattr(self, "saved_params", {}).items():
            with open(path, "w") as f:
                f.write(orig)
        self.saved_params = {}

    def targets_list(self):
        b = self.bin

        def ptfs(tag, *extra):
            stats = os.path.join(self.work, f"stats-{tag}.json")
            return lambda s, m: [b, "--foreground", "--stats", stats, *extra, s, m]

        def ours(name, tag, uring, *extra):
            stats = os.path.join(self.work, f"stats-{tag}.json")
            return Target(name, ptfs(tag, *extra), uring=uring, stats=stats)

        # Ours asks for io_uring by default (used where the kernel offers it:
        # this run switches enable_uring on); --no-io-uring is /dev/fuse.
        t = [Target("native")]
        t.append(ours("passthroughfs", "default", True))
        t.append(ours("ptfs --no-io-uring", "dev", False, "--no-io-uring"))
        t.append(ours("ptfs --nopassthrough", "nopt", True, "--nopassthrough"))
        # Host-checked: SOURCE checks each request as its caller, the
        # kernel checks nothing (so a change in a directory costs no
        # GETATTR of it afterwards, on 6.18) and keeps the locks (so a
        # read-only or write-only close sends no FLUSH). README, Caching.
        t.append(ours(HOST_CHECKED, "hostchecked", True, "-o", "nodefault_permissions", "--locks", "kernel"))
        t.append(ours(XATTR_OFF, "xattroff", True, "-o", "nodefault_permissions", "--locks", "kernel",
                      "--xattr", "off"))
        if self.args.with_nocache:
            t.append(ours("ptfs --nocache", "nocache", True, "--nocache"))
        if self.args.peer:
            p = self.args.peer
            t.append(Target("peer", lambda s, m: [p, "--foreground", s, m]))
            t.append(Target("peer -o io_uring", lambda s, m: [p, "--foreground", "-o", "io_uring", s, m], uring=True))
            if self.args.with_nocache:
                t.append(Target("peer --nopassthrough", lambda s, m: [p, "--foreground", "--nopassthrough", s, m]))
                t.append(Target("peer --nocache", lambda s, m: [p, "--foreground", "--nocache", s, m]))
        if self.args.only:
            keep = set(self.args.only.split(","))
            t = [x for x in t if x.name in keep or x.native]
        return t

    # ---- FUSE-over-io_uring ---------------------------------------------

    URING_PARAM = "/sys/module/fuse/parameters/enable_uring"

    def uring_on(self):
        """Switches enable_uring on for the io_uring targets; cleanup() puts
        the original value back whatever happens."""
        if not any(t.uring for t in self.targets):
            return
        if not os.path.exists(self.URING_PARAM):
            sys.exit("bench: this kernel has no FUSE-over-io_uring (no enable_uring): drop the io_uring targets")
        self.set_param(self.URING_PARAM, "Y")

    def check_transport(self, t):
        """An io_uring target must really run over io_uring: its daemon holds
        io_uring instances (ours also says so in its stats); the others must
        not."""
        pid = t.pid()
        if pid is None:
            return
        rings = 0
        deadline = time.time() + 5
        while time.time() < deadline:
            rings = 0
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]":
                        rings += 1
                except OSError:
                    pass
            if rings or not t.uring:
                break
            time.sleep(0.05)
        want = t.uring
        if want and rings == 0:
            raise RuntimeError(f"{t.name}: the daemon holds no io_uring: the kernel did not negotiate it")
        if not want and rings:
            raise RuntimeError(f"{t.name}: unexpected io_uring instances")
        self.transports[t.name] = f"io_uring ({rings} queues)" if want else "/dev/fuse"

    def check_ring_served(self):
        """After the run: ours over io_uring served its requests on the ring."""
        for t in self.targets:
            if not (t.uring and t.stats and t.pid()):
                continue
            if os.path.exists(t.stats):
                os.unlink(t.stats)
            os.kill(t.pid(), signal.SIGUSR1)
            deadline = time.time() + 5
            while not os.path.exists(t.stats) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            with open(t.stats) as f:
                tr = json.load(f)["transport"]
            if tr["mode"] != "uring" or tr["ring_requests"] == 0:
                raise RuntimeError(f"{t.name} did not serve over the ring: {tr}")
            self.transports[t.name] += f", {tr['ring_requests']:,} requests via the ring"

    # ---- data sets ------------------------------------------------------

    def prepare_data(self):
        q = self.quick
        self.io_size = "128M" if q else "1G"
        self.tree_dirs, self.tree_files = (10, 1000) if q else (100, 1000)
        self.create_n = 5000 if q else 15000
        print(f"preparing data on {self.src} ...", flush=True)
        sh(["fio", "--name=prep", f"--filename={self.src}/seqfile", f"--size={self.io_size}",
            "--rw=write", "--bs=1M", "--end_fsync=1", "--output=/dev/null"])
        sel = self.args.workloads

        def wanted(word):
            return not sel or any(word in k for k in sel.split(","))

        # The 100,000-file tree serves the stat rows and the memory pass only.
        if wanted("stat") or not self.args.no_memory:
            sh([self.tool, "mktree", f"{self.src}/tree", str(self.tree_dirs), str(self.tree_files)], capture=True)
        os.makedirs(f"{self.src}/scratch", exist_ok=True)
        self.small_tar = self.small_tarball()
        sh(["tar", "xf", self.small_tar, "-C", self.src])
        self.kernel_tar = None
        if (not q or self.args.kernel_in_quick) and (wanted("kernel") or wanted("git")):
            self.kernel_tar = self.kernel_tarball()
            if self.kernel_tar:
                sh(["tar", "xf", self.kernel_tar, "-C", self.src])
                names = [n for n in os.listdir(self.src) if n.startswith("linux")]
                self.kernel_dir = os.path.join(self.src, names[0]) if names else None
                if self.kernel_dir:
                    self.make_git_repo()
        sh(["sync"])

    def small_tarball(self):
        """A tree every daemon can hold (passthrough_hp keeps one fd per
        inode, and its RLIMIT_NOFILE is 20,000 here): /usr/include without
        boost, and /usr/share/doc, about 14,000 entries, in small/ of the
        tarball. Cached."""
        cache = self.args.cache
        os.makedirs(cache, exist_ok=True)
        tar = os.path.join(cache, "small-tree.tar")
        if not os.path.exists(tar):
            sh(f"tar cf '{tar}.tmp' --exclude=usr/include/boost --transform 's,^,small/,' "
               f"-C / usr/include usr/share/doc "
               f"&& mv '{tar}.tmp' '{tar}'")
        n = int(sh(f"tar tf '{tar}' | wc -l", capture=True).stdout.strip())
        self.small_entries = n
        print(f"small tree: {n} entries", flush=True)
        return tar

    def kernel_tarball(self):
        """Debian's kernel source, uncompressed once and cached (xz would
        dominate the untar time otherwise)."""
        cache = self.args.cache
        os.makedirs(cache, exist_ok=True)
        tar = os.path.join(cache, "linux-source.tar")
        if os.path.exists(tar):
            return tar
        cands = sorted(f for f in os.listdir("/usr/src") if f.startswith("linux-source-") and f.endswith(".tar.xz")) \
            if os.path.isdir("/usr/src") else []
        if not cands:
            print("no /usr/src/linux-source-*.tar.xz: skipping untar, ls -lR and git workloads", file=sys.stderr)
            return None
        xz = os.path.join("/usr/src", cands[-1])
        print(f"uncompressing {xz} once into {tar} ...", flush=True)
        sh(f"xz -dc '{xz}' > '{tar}.tmp' && mv '{tar}.tmp' '{tar}'")
        return tar

    def make_git_repo(self):
        """A git repository of the kernel tree, for `git status`."""
        d = self.kernel_dir
        env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="bench",
                   GIT_COMMITTER_EMAIL="b@b")
        print("making a git repository of the kernel tree ...", flush=True)
        # Debian's linux-source ignores everything at the top level (its
        # packaging repository is elsewhere): drop that block, so that the
        # tree is tracked and `git status` scans it as in a kernel checkout.
        gi = os.path.join(d, ".gitignore")
        if os.path.exists(gi):
            with open(gi) as f:
                text = f.read()
            lines = text.split("\n")
            i = next((k for k, line in enumerate(lines) if line.startswith("# Debian packaging")), None)
            if i is not None:
                if i > 0 and lines[i - 1] == "#":
                    i -= 1
                with open(gi, "w") as f:
                    f.write("\n".join(lines[:i]) + "\n")
        sh(["git", "-C", d, "init", "-q"], env=env)
        sh(["git", "-C", d, "add", "-A"], env=env)
        sh(["git", "-C", d, "commit", "-q", "-m", "bench"], env=env)

    # ---- workloads ------------------------------------------------------

    def fio(self, t, name, extra):
        out = sh(["fio", f"--name={name}", "--output-format=json", *extra], capture=True).stdout
        j = json.loads(out)
        jobs = j["jobs"]
        read = sum(x["read"]["bw_bytes"] for x in jobs)
        write = sum(x["write"]["bw_bytes"] for x in jobs)
        iops = sum(x["read"]["iops"] + x["write"]["iops"] for x in jobs)
        return read, write, iops

    def workloads(self):
        q = self.quick
        w = []
        io = self.io_size

        def seq_read(t):
            drop_caches()
            r, _, _ = self.fio(t, "seqread", [f"--filename={t.mnt}/seqfile", f"--size={io}", "--rw=read",
                                              "--bs=1M"])
            return r / 2**20, "MiB/s"

        def seq_write(t):
            path = f"{t.mnt}/scratch/wfile"
            _, wb, _ = self.fio(t, "seqwrite", [f"--filename={path}", f"--size={io}", "--rw=write", "--bs=1M",
                                               "--end_fsync=1"])
            os.unlink(path)
            return wb / 2**20, "MiB/s"

        def rand_read(t):
            # Warm cache: the cost of the path to the page cache, per call.
            sh(["cat", f"{t.mnt}/seqfile"], stdout=subprocess.DEVNULL)
            _, _, iops = self.fio(t, "randread", [f"--filename={t.mnt}/seqfile", f"--size={io}", "--rw=randread",
                                                 "--bs=4k", "--numjobs=4", "--time_based",
                                                 f"--runtime={2 if q else 10}", "--group_reporting"])
            return iops, "IOPS"

        def stat_warm(t):
            sh([self.tool, "stat", f"{t.mnt}/tree"], capture=True)
            j = json.loads(sh([self.tool, "stat", f"{t.mnt}/tree"], capture=True).stdout)
            return j["ops"] / j["seconds"], "stat/s"

        def stat_cold(t):
            drop_caches()
            j = json.loads(sh([self.tool, "stat", f"{t.mnt}/tree"], capture=True).stdout)
            return j["ops"] / j["seconds"], "stat/s"

        def create_unlink(t):
            d = f"{self.scratch(t)}/cu"
            os.makedirs(d, exist_ok=True)
            j = json.loads(sh([self.tool, "create-unlink", d, str(self.create_n)], capture=True).stdout)
            os.rmdir(d)
            return j["ops"] / j["seconds"], "ops/s"

        def on_cpu0(cmd):
            # The caller kept on one CPU: the daemon's ring thread for that
            # CPU then runs on it too, and the reply wakes the caller there
            # instead of on the other, idle, CPU (bench/README.md, "What a
            # round trip costs here").
            return ["taskset", "-c", "0"] + cmd

        def create_unlink_cpu0(t):
            d = f"{self.scratch(t)}/cu0"
            os.makedirs(d, exist_ok=True)
            j = json.loads(sh(on_cpu0([self.tool, "create-unlink", d, str(self.create_n)]), capture=True).stdout)
            os.rmdir(d)
            return j["ops"] / j["seconds"], "ops/s"

        def lookup_miss(t, pin=False):
            cmd = [self.tool, "lookup-miss", self.scratch(t), str(self.create_n)]
            j = json.loads(sh(on_cpu0(cmd) if pin else cmd, capture=True).stdout)
            return j["ops"] / j["seconds"], "lookups/s"

        w += [("seq read 1 MiB blocks (cold)", seq_read), ("seq write 1 MiB blocks", seq_write),
              ("4 KiB random read, 4 jobs (warm)", rand_read), ("stat of tree (warm)", stat_warm),
              ("stat of tree (after drop_caches)", stat_cold), ("create+unlink small files", create_unlink),
              ("round trip: lookup of a missing name", lookup_miss),
              ("round trip: lookup of a missing name, caller on CPU 0", lambda t: lookup_miss(t, pin=True)),
              ("create+unlink small files, caller on CPU 0", create_unlink_cpu0)]

        def timed_small(cmd, cold=False):
            if cold:
                drop_caches()
            t0 = time.perf_counter()
            sh(cmd, capture=True)
            return time.perf_counter() - t0, "s"

        w += [
            ("ls -lR small tree (warm)",
             lambda t: (timed_small(["ls", "-lR", f"{t.mnt}/small"]), timed_small(["ls", "-lR", f"{t.mnt}/small"]))[1]),
            ("untar small tree", lambda t: self.untar(t, self.small_tar, "usmall")),
            ("rm -rf small tree", lambda t: self.rm_tree(t, self.small_tar, "usmall")),
            ("untar small tree, caller on CPU 0", lambda t: self.untar(t, self.small_tar, "usmall0", pin=True)),
        ]

        if getattr(self, "kernel_dir", None):
            kname = os.path.basename(self.kernel_dir)
            timed = timed_small

            w += [
                ("find of kernel tree (cold)", lambda t: timed(["find", f"{t.mnt}/{kname}"], cold=True)),
                ("ls -lR of kernel tree (warm)",
                 lambda t: (timed(["ls", "-lR", f"{t.mnt}/{kname}"]), timed(["ls", "-lR", f"{t.mnt}/{kname}"]))[1]),
                ("git status (warm)",
                 lambda t: (timed(["git", "-C", f"{t.mnt}/{kname}", "status", "--porcelain"]),
                            timed(["git", "-C", f"{t.mnt}/{kname}", "status", "--porcelain"]))[1]),
                ("untar kernel tree", lambda t: self.untar(t, self.kernel_tar, "untar")),
                ("rm -rf kernel tree", lambda t: self.rm_tree(t, self.kernel_tar, "untar")),
            ]
        if self.args.workloads:
            keep = [k.strip() for k in self.args.workloads.split(",")]
            w = [x for x in w if any(k in x[0] for k in keep)]
        return w

    def scratch(self, t):
        """A scratch directory of the target's own: all targets share one
        SOURCE, and a directory changed through one mount is stale in the
        caches of the others (as it would be for any FUSE daemon)."""
        d = f"{t.mnt}/scratch/" + "".join(c if c.isalnum() else "-" for c in t.name)
        os.makedirs(d, exist_ok=True)
        return d

    def untar(self, t, tar, sub, pin=False):
        d = f"{self.scratch(t)}/{sub}"
        if os.path.exists(d):
            shutil.rmtree(d)
        os.makedirs(d)
        # Untimed: the kernel forgets the inodes earlier rows looked up (the
        # peer holds one fd per inode and would hit its fd limit), then the
        # tarball is read back into the page cache.
        sh(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        sh(["cat", tar], stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        sh((["taskset", "-c", "0"] if pin else []) + ["tar", "xf", tar, "-C", d])
        sh(["sync", "-f", d])
        return time.perf_counter() - t0, "s"

    def rm_tree(self, t, tar, sub):
        d = f"{self.scratch(t)}/{sub}"
        if not os.path.exists(d):
            self.untar(t, tar, sub)
        t0 = time.perf_counter()
        sh(["rm", "-rf", d])
        return time.perf_counter() - t0, "s"

    # ---- the run --------------------------------------------------------

    def run(self):
        # What else runs on the machine (other builds skew the figures).
        self.busy = machine_load()
        print(f"busy at start: {self.busy}", flush=True)
        self.make_lower()
        self.prepare_data()
        self.targets = self.targets_list()
        reps = self.args.reps or (1 if self.quick else 5)
        mnt_base = os.path.join(self.work, "mnt")
        self.uring_on()
        self.halt_poll_set()
        self.transports = {}
        for ti, t in enumerate(self.targets):
            t.mount(self.src, f"{mnt_base}{ti}")
            self.check_transport(t)
        try:
            for name, fn in self.workloads():
                res = self.results.setdefault(name, {})
                print(f"== {name}", flush=True)
                if "cold" in name or "drop_caches" in name:
                    # The VM's disk is cached by the host: a first, untimed
                    # run makes it equally warm for every target, so that
                    # the target measured first does not pay for the rest.
                    try:
                        fn(self.targets[0])
                    except Exception as e:
                        print(f"   warm-up: failed: {e}", file=sys.stderr)
                for rep in range(reps):
                    # Rotate the order, so drift and the host's caches do not
                    # always favour the same target.
                    k = rep % len(self.targets)
                    for t in self.targets[k:] + self.targets[:k]:
                        cpu0 = proc_cpu(t.pid()) if t.pid() else 0.0
                        try:
                            value, unit = fn(t)
                        except Exception as e:
                            print(f"   {t.name}: failed: {e}", file=sys.stderr)
                            continue
                        cpu = (proc_cpu(t.pid()) - cpu0) if t.pid() else 0.0
                        r = res.setdefault(t.name, {"unit": unit, "values": [], "daemon_cpu_s": []})
                        r["values"].append(value)
                        r["daemon_cpu_s"].append(cpu)
                        print(f"   {t.name:<24} {value:12.1f} {unit}  (daemon cpu {cpu:.2f} s)", flush=True)
            self.check_ring_served()
            self.busy += " | at the end: " + machine_load()
            if not self.args.no_memory:
                self.memory()
        finally:
            for t in self.targets:
                t.unmount()

    def memory(self):
        """Daemon RSS and open fds per 10k cached inodes, after a stat of the
        whole tree (each target freshly remounted so it starts empty)."""
        mem = {}
        for i, t in enumerate(self.targets):
            if t.native:
                continue
            t.unmount()
            t.mount(self.src, t.mnt)
            rss0, fds0 = proc_rss_fds(t.pid())
            try:
                sh([self.tool, "stat", f"{t.mnt}/tree"], capture=True)
            except RuntimeError as e:
                # The peer keeps one fd per inode: EMFILE past ~20k inodes.
                print(f"   memory {t.name}: failed: {e}", file=sys.stderr)
                continue
            rss1, fds1 = proc_rss_fds(t.pid())
            n = self.tree_dirs * self.tree_files + self.tree_dirs
            mem[t.name] = {"inodes": n, "rss_kib_start": rss0, "rss_kib_after": rss1, "fds_start": fds0,
                           "fds_after": fds1,
                           "rss_bytes_per_inode": (rss1 - rss0) * 1024 / n,
                           "rss_kib_per_10k_inodes": (rss1 - rss0) * 10000 / n,
                           "fds_per_10k_inodes": (fds1 - fds0) * 10000 / n}
            print(f"   memory {t.name}: {mem[t.name]['rss_bytes_per_inode']:.0f} B/inode, "
                  f"{fds1 - fds0} fds for {n} inodes", flush=True)
        self.mem = mem

    # ---- output ---------------------------------------------------------

    def summary(self):
        out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "kernel": platform.release(), "machine": getattr(self, "machine", None) or machine(), "quick": self.quick,
               "reps": self.args.reps or (1 if self.quick else 5), "workloads": {}, "memory": getattr(self, "mem", {}),
               "transports": getattr(self, "transports", {}), "small_tree_entries": getattr(self, "small_entries", None),
               "create_n": getattr(self, "create_n", None), "busy": getattr(self, "busy", "")}
        for name, per in self.results.items():
            nat = per.get("native")
            nat_med = statistics.median(nat["values"]) if nat and nat["values"] else None
            w = {}
            for tname, r in per.items():
                vals = r["values"]
                if not vals:
                    continue
                med = statistics.median(vals)
                higher_better = r["unit"] != "s"
                ratio = None
                if nat_med:
                    ratio = (med / nat_med) if higher_better else (nat_med / med if med else None)
                w[tname] = {"unit": r["unit"], "median": med, "min": min(vals), "max": max(vals), "values": vals,
                            "ratio_to_native": ratio, "daemon_cpu_s_median": statistics.median(r["daemon_cpu_s"])}
            out["workloads"][name] = w
        return out


def machine_load():
    """Load average and the busiest processes (other work skews figures)."""
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    top = sh("ps -eo pcpu,ni,comm --sort=-pcpu | sed -n 2,7p", capture=True).stdout.split("\n")
    top = "; ".join(" ".join(line.split()) for line in top if line.strip())
    return f"load average {load}; busiest (%cpu nice command): {top}"


def machine():
    cpus = os.cpu_count()
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1024 * 1024)
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpus} vCPU {model}, {mem} GiB RAM{idle_polling()}"


def idle_polling():
    """How long an idle vCPU polls before it halts: each FUSE round trip
    wakes a CPU, and waking a halted vCPU costs a VM exit (bench/README.md,
    "What a round trip costs here")."""
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            driver = f.read().strip()
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as f:
            ns = int(f.read())
    except (OSError, ValueError):
        return ""
    return f"; cpuidle {driver}, guest_halt_poll_ns {ns}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition (under 3 minutes)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results/DATE)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 1)")
    ap.add_argument("--with-nocache", action="store_true",
                    help="also the --nocache targets (and peer --nopassthrough)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-per-inode pass")
    ap.add_argument("--peer", default=os.environ.get("PEER"), help="passthrough_hp binary (or $PEER)")
    ap.add_argument("--binary", default=os.environ.get("PASSTHROUGHFS_BIN", os.path.join(REPO, "target/release/passthroughfs")))
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/var/tmp/passthroughfs-bench"))
    ap.add_argument("--cache", default=os.environ.get("BENCH_CACHE", "/var/tmp/passthroughfs-bench-cache"))
    ap.add_argument("--only", default=None, help="comma-separated target names (native always runs)")
    ap.add_argument("--workloads", default=None, help="comma-separated parts of workload names to run")
    ap.add_argument("--merge", default=None,
                    help="results.json of an earlier run: its workloads that this run did not measure go in the report")
    ap.add_argument("--kernel-in-quick", action="store_true", help="include the kernel-tree workloads in --quick")
    ap.add_argument("--halt-poll-ns", type=int, default=None,
                    help="set haltpoll's guest_halt_poll_ns for the run (restored after): how long an idle vCPU "
                         "polls before it halts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts, loop devices, drop_caches)")
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", date + ("-quick" if args.quick else ""))
    os.makedirs(out, exist_ok=True)
    b = Bench(args)

    def stop(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        b.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        b.cleanup()
    s = b.summary()
    if args.merge:
        with open(args.merge) as f:
            old = json.load(f)
        new = s["workloads"]
        merged = {name: new.get(name, w) for name, w in old.get("workloads", {}).items()}
        merged.update({name: w for name, w in new.items() if name not in merged})
        s["workloads"] = merged
        if not s.get("memory"):
            s["memory"] = old.get("memory", {})
        s["merged_from"] = {"date": old.get("date"), "workloads": sorted(set(old.get("workloads", {})) - set(
            n for n, _ in b.workloads()))}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(s, f, indent=2)
    sys.path.insert(0, HERE)
    import report
    report.write(s, out)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
