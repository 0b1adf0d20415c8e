#!/usr/bin/env python3
"""Plot the worker-count sweep of `benches/scaling.rs` (issue 12).

Reads the raw samples that `cargo bench --bench scaling` writes (one line per
contender per round) and draws time per item against worker count: one panel
per swept scenario (spawn with one spawner, many spawners, each fan-out shape
and size, ping-pong), one line per contender at its median, with a band from
the fastest to the slowest round. current_thread is the leftmost point ("ct").

    python3 -m venv target/plot-venv && target/plot-venv/bin/pip install matplotlib
    cargo bench --bench scaling
    target/plot-venv/bin/python benches/plot_scaling.py [target/scaling.csv] [target/scaling.png]
"""

import csv
import math
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# The swept scenarios, in panel order (fan-out sizes by waiter count).
PANEL_ORDER = ["spawn_one", "spawn_many", "fanout_child", "fanout_shared", "pingpong"]
TITLES = {
    "spawn_one": "spawn + join, one spawner",
    "spawn_many": "spawn + join, one spawner per worker",
    "fanout_child": "cancel fan-out, a child per waiter",
    "fanout_shared": "cancel fan-out, all waiters on the root",
    "pingpong": "mpsc ping-pong between two tasks",
}

# One colour per library across panels: ours blue, tokio's JoinSet orange,
# tokio-util green, bare tokio::spawn red.
COLOURS = {
    "TaskGroup": "tab:blue",
    "CancelScope": "tab:blue",
    "JoinSet": "tab:orange",
    "TaskTracker": "tab:green",
    "CancellationToken": "tab:green",
    "tokio::spawn": "tab:red",
    "tokio::spawn+handles": "tab:red",
}


def worker_key(w):
    """current_thread first, then multi_thread worker counts in order."""
    return -1 if w == "current_thread" else int(w)


def panel_key(scenario):
    base, _, size = scenario.partition("/")
    rank = PANEL_ORDER.index(base) if base in PANEL_ORDER else len(PANEL_ORDER)
    return (rank, base, int(size) if size.isdigit() else 0)


def load(path):
    """{scenario: {contender: {workers: [values]}}}, units, contender order."""
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    units, order = {}, defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s, c = row["scenario"], row["contender"]
            data[s][c][row["workers"]].append(float(row["value"]))
            units[s] = row["unit"]
            if c not in order[s]:
                order[s].append(c)
    return data, units, order


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "target/scaling.csv"
    dst = sys.argv[2] if len(sys.argv) > 2 else "target/scaling.png"
    data, units, order = load(src)
    # Only the swept rows (1-4); memory, is_cancelled and stuck run once.
    swept = sorted((s for s in data if s.partition("/")[0] in PANEL_ORDER), key=panel_key)
    if not swept:
        sys.exit(f"{src}: no worker-sweep scenario (rows spawn, many, fanout, pingpong)")

    cols = min(3, len(swept))
    rows = math.ceil(len(swept) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, swept):
        workers = sorted(
            {w for ws in data[scenario].values() for w in ws}, key=worker_key
        )
        xs = range(len(workers))
        for contender in order[scenario]:
            by_w = data[scenario][contender]
            pts = [(x, by_w[w]) for x, w in zip(xs, workers) if by_w.get(w)]
            px = [x for x, _ in pts]
            med = [statistics.median(v) for _, v in pts]
            colour = COLOURS.get(contender)
            ax.plot(px, med, marker="o", label=contender, color=colour)
            ax.fill_between(
                px,
                [min(v) for _, v in pts],
                [max(v) for _, v in pts],
                alpha=0.15,
                color=colour,
            )
        base, _, size = scenario.partition("/")
        title = TITLES.get(base, base)
        if size:
            title += f" ({int(size):,} waiters)"
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(["ct" if w == "current_thread" else w for w in workers])
        ax.set_xlabel("worker threads (ct = current_thread)")
        ax.set_ylabel(units[scenario].replace("ns/", "ns per "))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(swept):]:
        ax.set_visible(False)
    fig.suptitle(
        f"cancel-scope scaling (median, band = min–max over rounds) — {src}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
