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
    ("recipe_projected_min", "paper recipe (min)", "{:,.1f}"),
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
    titles = []
    for _, t, _ in COLUMNS:
        if t not in titles:
            titles.append(t)
    lines = ["| file | benchmark | mean | " + " | ".join(titles) + " |",
             "|" + " --- |" * (3 + len(titles))]
    device = None
    for stem, _machine, b in rows(paths):
        info = b.get("extra_info", {})
        device = device or info.get("device")
        cells = {}
        for key, title, fmt in COLUMNS:
            v = info.get(key)
            if v is not None and title not in cells:
                cells[title] = fmt.format(v)
        mean = b["stats"]["mean"]
        mean_s = f"{mean * 1e3:.3f} ms" if mean >= 1e-3 else f"{mean * 1e6:.1f} us"
        if info.get("timing"):  # timed by the row itself (e.g. replays of a CUDA graph): per call
            mean_s = f"{info['us']:,.1f} us ({info['timing']})"
        lines.append(f"| {stem} | {b['name']} | {mean_s} | " + " | ".join(cells.get(t, "") for t in titles) + " |")
    head = f"device: {device}\n\n" if device else ""
    return head + "\n".join(lines) + "\n"


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
