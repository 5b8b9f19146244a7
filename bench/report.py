"""Markdown report and SVG plots from bench.py's summary."""

import os


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v:.2f} s"
    if v >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:.1f} {unit}"


def goals(s):
    """The goals of issue 17, checked against the medians (a miss is shown)."""
    w = s["workloads"]
    lines = []

    def med(name, target):
        return w.get(name, {}).get(target, {}).get("median")

    def speed(name, target):
        """Higher is better, whatever the unit."""
        r = w.get(name, {}).get(target)
        if not r:
            return None
        return r["median"] if r["unit"] != "s" else 1.0 / r["median"]

    def ratio(name, target):
        return w.get(name, {}).get(target, {}).get("ratio_to_native")

    ours = ["passthroughfs", "ptfs --no-io-uring"]
    # Host-checked (SOURCE checks permissions as the caller, the kernel
    # keeps the locks), shown apart from the default, which has the
    # kernel check permissions and POSIX ACLs and SOURCE keep the locks.
    checked = "ptfs -o nodefault_permissions --locks kernel"
    # The same without extended attributes (it gives them up, and ACLs with
    # them: README, Caching): its own lines, never folded into "best".
    xoff = checked + " --xattr off"
    peers = ["peer", "peer -o io_uring"]
    # The rows with the caller on one CPU explain the others (bench/README.md)
    # and carry no goal of their own.
    meta = [n for n in w if n.startswith(("create", "ls", "untar", "rm")) and "on CPU 0" not in n]
    for n in meta + [n for n in w if n.startswith("seq")]:
        b = max((speed(n, t) or 0 for t in peers), default=0)
        want = 1.2 if n.startswith(("create", "untar", "rm")) else 1.0
        for label, mine in [("ours (default)", ours), (f"ours {checked[5:]}", [checked]),
                            (f"ours {xoff[5:]}", [xoff])]:
            a = max((speed(n, t) or 0 for t in mine), default=0)
            if not a or not b:
                continue
            lines.append(f"| {n}: {label} / peer (best) >= {want} | {a / b:.2f} | "
                         f"{'met' if a / b >= want else 'MISSED'} |")
    for n in meta:
        a, b = speed(n, "passthroughfs"), speed(n, "ptfs --no-io-uring")
        if a and b:
            lines.append(f"| {n}: io_uring (default) faster than /dev/fuse | {a / b:.2f} | "
                         f"{'met' if a > b else 'MISSED'} |")
    for prefix, goal, higher in [("create", 0.4, True), ("untar small", 2.0, False), ("rm -rf small", 2.0, False),
                                 ("ls -lR small", 2.5, False), ("seq write", 0.95, True)]:
        for n in [x for x in w if x.startswith(prefix) and "on CPU 0" not in x]:
            for label, mine in [("ours (best, xattrs on)", ours + [checked]), ("ours --xattr off", [xoff])]:
                best = max((ratio(n, t) or 0 for t in mine), default=0)
                if not best:
                    continue
                if higher:
                    lines.append(f"| {n}: {label} / native >= {goal} | {best:.2f} | "
                                 f"{'met' if best >= goal else 'MISSED'} |")
                else:
                    lines.append(f"| {n}: {label} time <= {goal}x native | {1 / best:.2f}x | "
                                 f"{'met' if 1 / best <= goal else 'MISSED'} |")
    for name, m in s.get("memory", {}).items():
        if name == "passthroughfs":
            b = m["rss_bytes_per_inode"]
            lines.append(f"| daemon RSS per cached inode <= 256 B | {b:.0f} B | {'met' if b <= 256 else 'MISSED'} |")
    return lines


def write(s, out):
    w = s["workloads"]
    targets = []
    for per in w.values():
        for t in per:
            if t not in targets:
                targets.append(t)
    md = [f"# passthroughfs benchmarks", "",
          f"{s['date']}, kernel {s['kernel']}, {s['machine']}; "
          f"{'quick run, ' if s['quick'] else ''}{s['reps']} repetition(s), median (min..max); "
          "ratio = to native (higher is better). SOURCE on a fresh loop-mounted ext4.", ""]
    if s.get("transports"):
        md += ["Transports checked at mount: " + "; ".join(f"{k}: {v}" for k, v in s["transports"].items()) + ".", ""]
    if s.get("busy"):
        md += [f"Machine at start (other work skews the figures): {s['busy']}", ""]
    md.append("| workload | " + " | ".join(targets) + " |")
    md.append("|---" * (len(targets) + 1) + "|")
    for name, per in w.items():
        cells = []
        for t in targets:
            r = per.get(t)
            if not r:
                cells.append("-")
                continue
            c = fmt(r["median"], r["unit"])
            if len(r["values"]) > 1:
                c += f" ({fmt(r['min'], '').strip()}..{fmt(r['max'], '').strip()})"
            if r["ratio_to_native"] is not None and t != "native":
                c += f"<br>x{r['ratio_to_native']:.2f}"
            if r["daemon_cpu_s_median"]:
                c += f"<br>cpu {r['daemon_cpu_s_median']:.2f} s"
            cells.append(c)
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    md += ["", "## Daemon memory and fds per cached inode", "",
           "| daemon | inodes | RSS per inode | RSS per 10k inodes | fds per 10k inodes |", "|---|---|---|---|---|"]
    for name, m in s.get("memory", {}).items():
        md.append(f"| {name} | {m['inodes']} | {m['rss_bytes_per_inode']:.0f} B | "
                  f"{m['rss_kib_per_10k_inodes']:.0f} KiB | {m['fds_per_10k_inodes']:.0f} |")
    g = goals(s)
    if g:
        md += ["", "## Goals", "", "| goal | measured | |", "|---|---|---|"] + g
    plot = plot_ratios(s, out, targets)
    if plot:
        md += ["", f"![ratio to native]({os.path.basename(plot)})"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def plot_ratios(s, out, targets):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(s["workloads"].keys())
    others = [t for t in targets if t != "native"]
    if not others:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(names) * max(1, len(others)) / 2 + 2))
    h = 0.8 / len(others)
    for i, t in enumerate(others):
        vals = [s["workloads"][n].get(t, {}).get("ratio_to_native") or 0 for n in names]
        ax.barh([y + i * h for y in range(len(names))], vals, height=h, label=t)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([y + h * (len(others) - 1) / 2 for y in range(len(names))])
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to native (higher is better)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(f"passthroughfs vs native and peer ({s['kernel']})")
    fig.tight_layout()
    path = os.path.join(out, "ratios.svg")
    fig.savefig(path)
    plt.close(fig)
    return path
