"""What a sweep writes beside its members' run folders: ``sweep.json`` (the axes, the shared
config, each member's values, folder and state), the summary table (member, values, last
Wasserstein estimate, SWD, rank) and ``sweep.png`` (every member's curve in one plot)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from fastwgan.atomic import atomic_write, write_text
from fastwgan.outputs import MetricsLog, median_filter

SWEEP_FILE = "sweep.json"
FORMAT = 1


def is_sweep(path) -> bool:
    """Whether ``path`` is a sweep's folder."""
    return path is not None and (Path(path) / SWEEP_FILE).is_file()


def read_sweep(out) -> dict:
    return json.loads((Path(out) / SWEEP_FILE).read_text(encoding="utf-8"))


def write_sweep(out, axes: dict, base: dict, members: list[dict], iteration: int) -> None:
    """sweep.json, written whole or not at all."""
    state = {"format": FORMAT, "iteration": iteration, "axes": axes, "base_config": base,
             "members": members}
    write_text(Path(out) / SWEEP_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def last_rows(member_out) -> tuple[Optional[dict], Optional[float]]:
    """A member's last metrics row and its last SWD (None where none was measured)."""
    rows = MetricsLog(Path(member_out) / "metrics.jsonl").read()
    swd = next((r["swd"] for r in reversed(rows) if "swd" in r), None)
    return (rows[-1] if rows else None), swd


def summary_rows(members: list[dict], out) -> list[dict[str, Any]]:
    """One row per member: name, values, state, last W estimate (or loss_d), SWD and its rank
    (1: the lowest SWD; none without an evaluation)."""
    rows = []
    for m in members:
        last, swd = last_rows(Path(out) / m["out"])
        w = None if last is None else (last["wdist"] if last.get("wdist") is not None else last["loss_d"])
        rows.append({"member": m["name"], "values": m["values"], "state": m["state"],
                     "iter": None if last is None else last["iter"], "w": w, "swd": swd})
    ranked = sorted((r for r in rows if r["swd"] is not None and math.isfinite(r["swd"])),
                    key=lambda r: r["swd"])
    for i, r in enumerate(ranked):
        r["rank"] = i + 1
    return rows


def summary_table(rows: list[dict]) -> str:
    """The summary as aligned text lines."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    head = ("member", "iter", "W est. (or loss_D)", "SWD", "rank", "state")
    lines = [(r["member"], fmt(r["iter"], "d"), fmt(r["w"], ".4g"), fmt(r["swd"], ".2f"),
              fmt(r.get("rank"), "d"), r["state"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
                     for line in [head, *lines])


def plot_sweep(members: list[dict], out, title: str = "") -> Optional[Path]:
    """sweep.png: each member's Wasserstein estimate (or critic loss) over the iterations,
    median-filtered as loss.png's, and its SWD where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {m["name"]: MetricsLog(Path(out) / m["out"] / "metrics.jsonl").read() for m in members}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    has_swd = any("swd" in r for rows in curves.values() for r in rows)
    fig, axes = plt.subplots(1, 2 if has_swd else 1, figsize=(12 if has_swd else 7, 4.5), squeeze=False)
    for name, rows in curves.items():
        key = "wdist" if rows[0].get("wdist") is not None else "loss_d"
        x, y = [r["iter"] for r in rows], [r[key] for r in rows]
        axes[0][0].plot(x, median_filter(y, max(1, len(y) // 20)), label=name)
        axes[0][0].set_ylabel("Wasserstein estimate" if key == "wdist" else "critic loss")
        if has_swd:
            ev = [r for r in rows if "swd" in r]
            axes[0][1].plot([r["iter"] for r in ev], [r["swd"] for r in ev], marker="o", label=name)
            axes[0][1].set_ylabel("SWD (x1e3)")
    for ax in axes[0]:
        ax.set_xlabel("generator iteration")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(out) / "sweep.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
