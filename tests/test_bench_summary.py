"""The comparison table printed at the end of `pytest bench/ --benchmark-only`."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_summarize", Path(__file__).resolve().parents[1] / "bench" / "summarize.py")
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def row(engine, img_per_s, speedup, minutes):
    return {"name": f"test_{engine}", "stats": {"mean": 0.5},
            "extra_info": {"device": "cpu (2 threads)", "engine": engine, "batch": 16, "image_size": 32,
                           "width": 16, "img_per_s": img_per_s,
                           "speedup_vs_reference_eager_fp32": speedup, "recipe_projected_min": minutes}}


def test_comparison_puts_the_reference_first():
    rows = [row("fast graphs bf16", 900.0, 9.0, 12.5), {"name": "test_kernel", "stats": {"mean": 1e-5},
                                                        "extra_info": {"gb_per_s": 3.0}},
            row(summarize.REFERENCE, 100.0, 1.0, 112.5)]
    lines = summarize.comparison_table(rows).splitlines()
    body = [l for l in lines if l.startswith("| ") and not l.startswith("| engine") and "---" not in l]
    assert body == ["| reference eager fp32 | 100 | 1.00 | 112.5 |",
                    "| fast graphs bf16 | 900 | 9.00 | 12.5 |"]
    assert lines[0].startswith("device: cpu (2 threads), batch 16, 32x32")


def test_no_end_to_end_rows_no_table():
    assert summarize.comparison_table([{"name": "k", "stats": {"mean": 1.0}, "extra_info": {}}]) == ""


def test_the_recipe_column_names_what_it_computes():
    # at the bench's CPU sizes the column is the paper's schedule at those sizes, not its recipe
    lines = summarize.comparison_table([row(summarize.REFERENCE, 100.0, 1.0, 112.5)]).splitlines()
    assert "not the paper's recipe" in lines[2] and "32x32, batch 16, width 16" in lines[2]
    paper = row(summarize.REFERENCE, 100.0, 1.0, 7.5)
    paper["extra_info"].update(image_size=64, batch=64, width=64)
    assert "| paper recipe (min) |" in summarize.comparison_table([paper]).splitlines()[2]
