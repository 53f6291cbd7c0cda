"""What a run leaves to look at: image grids and the loss plot, the metrics log, and warnings
printed as one line."""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from fastwgan.atomic import atomic_write
from fastwgan.pixels import to_uint8


@contextlib.contextmanager
def one_line_warnings(prefix: str):
    """Warnings printed as ``prefix + message``, without the source file and line that Python
    adds: what the command-line programs show their users."""
    show = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{prefix}{message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = show


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] or uint8 -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3)
    uint8 image, black padding (the pixels of fastwgan.pixels.to_uint8, as the metrics see them)."""
    x = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = x[i]
    return grid


GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                ".tif": "TIFF", ".tiff": "TIFF"}


def grid_format(path: str | os.PathLike) -> str:
    """The image format of a file name's extension; ValueError for one that is not an image."""
    suffix = Path(path).suffix.lower()
    if suffix not in GRID_FORMATS:
        raise ValueError(f"{path}: unknown image extension {suffix or '(none)'}; use one of "
                         f"{', '.join(GRID_FORMATS)}")
    return GRID_FORMATS[suffix]


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """The grid written atomically, in the format its extension names (PNG, JPEG, ...)."""
    path = Path(path)
    fmt = grid_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"quality": 95} if fmt == "JPEG" else {}
    grid = Image.fromarray(make_grid(images, nrow))
    return atomic_write(path, lambda tmp: grid.save(tmp, format=fmt, **extra))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as the run goes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (a resumed run rewrites them)."""
        rows = [r for r in self.read() if r.get("iter", 0) <= iteration]

        def write(tmp: Path) -> None:
            with open(tmp, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")

        atomic_write(self.path, write)

    def append(self, row: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a failed write() names no file
            e.filename = str(self.path)
            raise

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line cut short by a crash
        return rows


def median_filter(y: Iterable[float], window: int) -> np.ndarray:
    """Running median over ``window`` points (odd), edges padded by repetition."""
    y = np.asarray(list(y), dtype=np.float64)
    if len(y) == 0 or window <= 1:
        return y
    half = window // 2
    padded = np.pad(y, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


# loss.png's panels of the evaluations (--eval-every), where a row holds them
EVAL_PANELS = (("swd", "sliced Wasserstein distance to the data (x1e3)"),
               ("fid", "FID to the data"), ("kid", "KID to the data"))


def plot_losses(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """loss.png: the Wasserstein estimate, raw and median-filtered (as the paper's figures),
    and the critic and generator losses, against generator iterations."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iter"] for r in rows]
    panels = [("wdist", "Wasserstein estimate  -Loss_D"), ("loss", "losses")]
    for key, label in EVAL_PANELS:
        if any(r.get(key) is not None for r in rows):
            panels.append((key, label))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        if key == "wdist":
            w = [r.get("wdist") for r in rows]
            if any(v is not None for v in w):
                w = np.array([np.nan if v is None else v for v in w])
                window = max(1, min(101, (len(w) // 20) * 2 + 1))
                ax.plot(it, w, color="tab:blue", alpha=0.35 if window > 1 else 1.0, lw=0.8,
                        label="raw")
                if window > 1:  # too few rows yet for a filtered line
                    ax.plot(it, median_filter(w, window), color="tab:blue", lw=1.8,
                            label=f"median over {window} log points")
                ax.legend(loc="best", fontsize=8)
        elif key == "loss":
            ax.plot(it, [r.get("loss_d") for r in rows], lw=1, label="critic loss")
            ax.plot(it, [r.get("loss_g") for r in rows], lw=1, label="generator loss")
            ax.legend(loc="best", fontsize=8)
        else:
            pts = [(r["iter"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", lw=1.2, color="tab:green")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("generator iterations")
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
