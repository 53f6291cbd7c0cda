"""Turn pytest-benchmark JSON files into one markdown table (printed, and written with --out).

    python bench/summarize.py bench-out/*.json --out bench-out/summary.md
    python bench/summarize.py bench-out/rows.jsonl --out bench-out/summary.md

A ``.jsonl`` file holds one row per line, as bench/conftest.py appends them while the benchmarks
run (``FASTWGAN_BENCH_ROWS``); its rows are labelled with the benchmark file they came from.

Each row: the benchmark, its group, mean time, and the derived units its extra_info carries
(img/s, GB/s, speed-up against the baseline of the same run, the paper recipe's projected time).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [  # (extra_info key, column title, format)
    ("img_per_s", "img/s", "{:,.0f}"),
    ("pairs_per_s", "pairs/s", "{:,.0f}"),
    ("gen_iters_per_s", "gen it/s", "{:,.1f}"),
    ("gb_per_s", "GB/s", "{:,.1f}"),
    ("gbps", "GB/s", "{:,.1f}"),
    ("copy_gbps", "copy GB/s (same bytes)", "{:,.1f}"),
    ("of_copy", "of copy", "{:.0%}"),
    ("us_per_step", "us/step", "{:,.1f}"),
    ("us", "us", "{:,.1f}"),
    ("tflops", "TFLOP/s", "{:,.2f}"),
    ("mfu", "MFU (bf16 peak)", "{:.1%}"),
    ("speedup_vs_reference_eager_fp32", "x eager fp32 ref", "{:.2f}"),
    ("scaling_efficiency", "scaling eff.", "{:.0%}"),
    ("allreduce_ms", "all-reduce ms (critic grads)", "{:.3f}"),
    # the paper's schedule (1e5 generator iterations, 224 of 100 critic steps) at the row's own
    # speed: the paper's recipe only where the row trains its networks (PAPER_CONFIG)
    ("recipe_projected_min", "1e5-iteration schedule at the row's size (min)", "{:,.1f}"),
    ("critic_kernels", "critic kernels", "{:,}"),
    ("generator_kernels", "generator kernels", "{:,}"),
    ("critic_mb", "critic MB", "{:,.0f}"),
    ("modeled_recipe_min_h100", "recipe min, modeled (H100)", "{:,.1f}"),
]


def rows(paths):
    for path in paths:
        if str(path).endswith(".jsonl"):
            for line in Path(path).read_text().splitlines():
                try:
                    b = json.loads(line)
                except ValueError:
                    continue  # a line cut short
                yield b.get("file", Path(path).stem), "", b
            continue
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue  # a step that was cut short, or measured nothing
        machine = data.get("machine_info", {}).get("node", "")
        for b in data.get("benchmarks", []):
            yield Path(path).stem, machine, b


def table(paths) -> str:
    return derived_units_table([(stem, b) for stem, _machine, b in rows(paths)])


def _mean(b) -> str:
    info = b.get("extra_info") or {}
    if info.get("timing"):  # timed by the row itself (e.g. replays of a CUDA graph): per call
        return f"{info['us']:,.1f} us ({info['timing']})"
    mean = b["stats"]["mean"]
    return f"{mean * 1e3:.3f} ms" if mean >= 1e-3 else f"{mean * 1e6:.1f} us"


def derived_units_table(benchmarks) -> str:
    """``benchmarks``: (source, benchmark dict as in pytest-benchmark's JSON) pairs."""
    titles = []
    for _, t, _ in COLUMNS:
        if t not in titles:
            titles.append(t)
    lines = ["| file | benchmark | mean | " + " | ".join(titles) + " |",
             "|" + " --- |" * (3 + len(titles))]
    device = None
    for stem, b in benchmarks:
        info = b.get("extra_info", {})
        device = device or info.get("device")
        cells = {}
        for key, title, fmt in COLUMNS:
            v = info.get(key)
            if v is not None and title not in cells:
                cells[title] = fmt.format(v)
        lines.append(f"| {stem} | {b['name']} | {_mean(b)} | " + " | ".join(cells.get(t, "") for t in titles) + " |")
    head = f"device: {device}\n\n" if device else ""
    return head + "\n".join(lines) + "\n"


REFERENCE = "reference eager fp32"  # the engine every end-to-end row's speed-up is taken against
PAPER_CONFIG = (64, 64, 64)  # image size, batch, width of the paper's recipe


def recipe_title(info: dict) -> str:
    """The projected-time column's title: the paper's recipe only at the paper's sizes (a CPU
    benches the cpu preset: the paper's schedule of steps, at smaller networks)."""
    config = (info.get("image_size"), info.get("batch"), info.get("width"))
    if config == PAPER_CONFIG:
        return "paper recipe (min)"
    return (f"paper's schedule at {config[0]}x{config[0]}, batch {config[1]}, width {config[2]} "
            "(min; not the paper's recipe)")


def comparison_table(benchmarks) -> str:
    """The end-to-end rows (those with a speed-up against the reference), the reference first:
    engine, img/s, speed-up, the projected time of the paper's schedule (the paper's recipe at
    the paper's sizes only: ``recipe_title``). Empty when there are none."""
    e2e = [b for b in benchmarks if "speedup_vs_reference_eager_fp32" in b.get("extra_info", {})]
    if not e2e:
        return ""
    e2e.sort(key=lambda b: b["extra_info"].get("engine") != REFERENCE)  # stable: run order after
    info0 = e2e[0]["extra_info"]
    lines = [f"device: {info0.get('device', '?')}, batch {info0.get('batch', '?')}, "
             f"{info0.get('image_size', '?')}x{info0.get('image_size', '?')}, width {info0.get('width', '?')}",
             "",
             f"| engine | img/s | x eager fp32 ref | {recipe_title(info0)} |",
             "| --- | --- | --- | --- |"]
    for b in e2e:
        i = b["extra_info"]
        lines.append(f"| {i.get('engine', b['name'])} | {i['img_per_s']:,.0f} | "
                     f"{i['speedup_vs_reference_eager_fp32']:.2f} | {i['recipe_projected_min']:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+")
    p.add_argument("--out")
    args = p.parse_args()
    text = table([j for j in args.json if Path(j).exists()])
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
