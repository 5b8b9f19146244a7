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
    """The goals of issue 9, checked against the medians (a miss is shown)."""
    w = s["workloads"]
    lines = []

    def ratio(name, target):
        return w.get(name, {}).get(target, {}).get("ratio_to_native")

    for name, goal in [("seq read 1 MiB blocks (cold)", 0.97), ("seq write 1 MiB blocks", 0.97),
                       ("4 KiB random read, 4 jobs (warm)", 0.95)]:
        r = ratio(name, "passthroughfs")
        if r is not None:
            lines.append(f"| {name}: passthroughfs / native >= {goal} | {r:.3f} | {'met' if r >= goal else 'MISSED'} |")
    meta = [n for n in w if n.startswith(("stat", "create", "find", "ls", "git", "untar", "rm"))]
    for ours, peer in [("passthroughfs", "peer"), ("ptfs --nopassthrough", "peer --nopassthrough"),
                       ("ptfs --nocache", "peer --nocache")]:
        for n in meta:
            a, b = w[n].get(ours), w[n].get(peer)
            if not a or not b:
                continue
            better = a["median"] >= b["median"] if a["unit"] != "s" else a["median"] <= b["median"]
            rel = a["median"] / b["median"] if a["unit"] != "s" else b["median"] / a["median"]
            lines.append(f"| {n}: {ours} vs {peer} (>= 1.0) | {rel:.3f} | {'met' if better else 'MISSED'} |")
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
