"""PNG plots of a summary (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.cases import GROUPS

MAIN_GROUPS = ("http", "close", "tcp", "udp")


def _ok(summary: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [c for c in summary["cases"].values() if c["group"] == group and c["status"] == "ok"]


def _color(name: str) -> str:
    if name.startswith(("prefork", "scale-prefork", "grid-prefork")):
        return "tab:blue"
    if name.startswith("stdlib"):
        return "tab:gray"
    if name == "nginx":
        return "tab:green"
    return "tab:orange"


def _bars(summary: dict[str, Any], key: str, path: Path, xlabel: str, scale: float) -> bool:
    groups = [g for g in MAIN_GROUPS if _ok(summary, g)]
    if not groups:
        return False
    heights = [len(_ok(summary, g)) for g in groups]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(9, 1.0 + 0.42 * sum(heights) + 0.6 * len(groups)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        items = _ok(summary, group)[::-1]
        values = [(c.get(key) or 0) * scale for c in items]
        names = [c["name"] for c in items]
        ax.barh(names, values, color=[_color(n) for n in names])
        if key == "rps":
            lows = [v - c["rps_min"] for v, c in zip(values, items, strict=True)]
            highs = [c["rps_max"] - v for v, c in zip(values, items, strict=True)]
            ax.errorbar(values, names, xerr=[lows, highs], fmt="none", ecolor="black", lw=0.8)
        for y, (value, item) in enumerate(zip(values, items, strict=True)):
            right = max(value, item["rps_max"]) if key == "rps" else value
            text = f" {value:,.0f}" if key == "rps" else f" {value:.2f}"
            ax.text(right, y, text, va="center", fontsize=7)
        ax.set_title(GROUPS[group], fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.margins(x=0.18)
        if key == "p99":
            ax.set_xscale("log")
            positive = [v for v in values if v > 0]
            if positive:  # bars start well left of the smallest, so lengths compare
                ax.set_xlim(left=min(positive) / 5)
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _scale(summary: dict[str, Any], path: Path) -> bool:
    items = _ok(summary, "scale")
    if not items:
        return False
    servers: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        servers.setdefault(item["params"]["server"], []).append(item)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for server, rows in servers.items():
        rows.sort(key=lambda r: r["params"]["connections"])
        conns = [r["params"]["connections"] for r in rows]
        left.plot(conns, [r["rps"] for r in rows], marker="o", label=server,
                  color=_color(rows[0]["name"]))  # fmt: skip
        right.plot(conns, [(r["p99"] or 0) * 1000 for r in rows], marker="o", label=server,
                   color=_color(rows[0]["name"]))  # fmt: skip
    for ax, title in ((left, "throughput (req/s)"), (right, "p99 latency (ms)")):
        ax.set_xscale("log")
        ax.set_xticks([10, 50, 200, 1000], labels=["10", "50", "200", "1000"])
        ax.set_xlabel("keep-alive connections")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _grid(summary: dict[str, Any], path: Path) -> bool:
    items = _ok(summary, "grid")
    if not items:
        return False
    labels = [f"{c['params']['workers']}x{c['params']['threads']}" for c in items]
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(labels, [c["rps"] for c in items], color="tab:blue")
    ax.bar_label(bars, labels=[f"{c['rps']:,.0f}\np99 {(c['p99'] or 0) * 1000:.1f} ms"
                               for c in items], fontsize=7)  # fmt: skip
    ax.set_xlabel("prefork workers x threads")
    ax.set_ylabel("req/s (median)")
    ax.set_title(GROUPS["grid"], fontsize=10)
    ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(summary: dict[str, Any], img_dir: Path) -> dict[str, Path]:
    """Draw every plot there is data for; return them by name."""
    drawn: dict[str, Path] = {}
    targets = {
        "throughput": (
            lambda p: _bars(summary, "rps", p, "requests (round trips) per second", 1.0)
        ),
        "p99": lambda p: _bars(summary, "p99", p, "p99 latency, ms (log scale)", 1000.0),
        "scale": lambda p: _scale(summary, p),
        "grid": lambda p: _grid(summary, p),
    }
    for name, draw_one in targets.items():
        path = img_dir / f"bench-{name}.png"
        if draw_one(path):
            drawn[name] = path
    return drawn
