"""The built-in default dataset: deterministic synthetic faces, drawn with Pillow, cached on disk.

``python -m fastwgan.train`` needs images to train on; without ``--data`` it uses this folder, so a
first run works on any machine without a download. Each image is a CelebA-sized (178x218) RGB JPEG
whose face sits in the centre 108x108 square, where CelebA's aligned crops put it (the trainer
center-crops 108 and resizes to 64 or 32). Features are drawn large and contrasty enough to survive
the 32x32 CPU preset.

Image ``i`` is a pure function of ``(seed, i)`` (its own ``numpy.random.default_rng([seed, i])``),
so any image can be regenerated alone and the generation order does not matter. Generation writes
into a temporary sibling folder that is renamed into place only when complete: an interrupted run
never leaves a folder that passes for finished, and a racing generator's result is kept and ours
discarded. Bump ``VERSION`` whenever the drawing changes, so that old caches are not reused.

Preview: ``python -m fastwgan.data.synthetic --sheet /tmp/synthetic_sheet.png --size 64``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fastwgan.data.files import default_workers

VERSION = "v2"          # part of the cache folder name: bump when the drawing changes (v1:
                        # an unfinished drawing, briefly committed)
WIDTH, HEIGHT = 178, 218  # CelebA's aligned-and-cropped image size
JPEG_QUALITY = 90
SS = 2                  # supersampling factor: draw at 2x, average 2x2 blocks (antialiasing)
MANIFEST = "manifest.json"
_STALE_TMP_S = 3600     # a temporary folder this old belongs to a generation that died

# Skin tones from light to dark (sRGB); a face picks a point on this polyline.
SKIN_TONES = np.array([
    (255, 226, 204), (243, 205, 178), (232, 185, 152), (214, 160, 122),
    (190, 134, 96), (158, 104, 70), (125, 82, 54), (92, 60, 42), (70, 46, 33),
], dtype=np.float64)

# name: (colour, probability)
HAIR_COLORS = {
    "black": ((28, 22, 20), 0.30),
    "dark_brown": ((62, 40, 28), 0.22),
    "brown": ((112, 74, 44), 0.16),
    "blond": ((214, 180, 112), 0.14),
    "red": ((150, 64, 30), 0.08),
    "grey": ((168, 166, 162), 0.10),
}
HAIR_STYLES = {"short": 0.30, "long": 0.30, "bangs": 0.14, "long_bangs": 0.14, "bald": 0.12}
IRIS_COLORS = np.array([
    (72, 44, 26), (40, 26, 18), (96, 66, 38),     # browns (most common)
    (70, 110, 160), (90, 130, 110), (120, 120, 118),  # blue, green, grey
], dtype=np.float64)
IRIS_P = np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.08])


# ------------------------------------------------------------------------------------------------
# Drawing. Coordinates are in output pixels (178x218); ``_box``/``_pts`` scale them to the canvas.

def _box(x0, y0, x1, y1):
    return (x0 * SS, y0 * SS, x1 * SS, y1 * SS)


def _ell(cx, cy, rx, ry):
    """Bounding box of the ellipse centred at (cx, cy) with radii (rx, ry), on the canvas."""
    return _box(cx - rx, cy - ry, cx + rx, cy + ry)


def _pts(xs, ys):
    return [(float(x) * SS, float(y) * SS) for x, y in zip(xs, ys)]


def _rgb(c):
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))


def _mix(a, b, t):
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


def _choice(rng, table):
    names = list(table)
    p = np.array([table[k] if not isinstance(table[k], tuple) else table[k][1] for k in names])
    return names[rng.choice(len(names), p=p / p.sum())]


def _background(rng) -> Image.Image:
    """A two-colour linear gradient in a random direction, muted like studio/outdoor backdrops."""
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.05, 0.55)
    val = rng.uniform(0.35, 0.95)
    c0 = np.array(_hsv(hue, sat, val)) * 255
    c1 = np.array(_hsv((hue + rng.uniform(-0.12, 0.12)) % 1, sat * rng.uniform(0.5, 1.2),
                       np.clip(val + rng.uniform(-0.35, 0.35), 0.1, 1.0))) * 255
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, WIDTH * SS, dtype=np.float32) * np.float32(np.cos(angle))
    ys = np.linspace(-0.5, 0.5, HEIGHT * SS, dtype=np.float32) * np.float32(np.sin(angle))
    t = np.clip(np.add.outer(ys, xs) + 0.5, 0, 1)  # (H, W) position along the gradient
    # one "L" image per channel, merged: broadcasting over a trailing axis of 3 is several times slower
    return Image.merge("RGB", [Image.fromarray((a + t * (b - a)).astype(np.uint8), "L")
                               for a, b in zip(c0.astype(np.float32), c1.astype(np.float32))])


def _hsv(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def render_face(seed: int, index: int) -> Image.Image:
    """Image ``index`` of the dataset with ``seed``: a 178x218 RGB face, a pure function of both."""
    rng = np.random.default_rng([seed, index])

    # --- identity: tones and geometry (output pixels; the 108 crop spans x 35..143, y 55..163) ---
    last = len(SKIN_TONES) - 1
    u = rng.beta(1.3, 1.6) * last                     # a point along the tones, light to dark
    k = min(int(u), last - 1)
    skin = _mix(SKIN_TONES[k], SKIN_TONES[k + 1], u - k) * rng.uniform(0.94, 1.04, 3)
    hair_name = _choice(rng, HAIR_COLORS)
    hair = np.array(HAIR_COLORS[hair_name][0], np.float64) * rng.uniform(0.8, 1.15) \
        + rng.normal(0, 6, 3)
    style = _choice(rng, HAIR_STYLES)

    cx = 89 + np.clip(rng.normal(0, 2.5), -5, 5)     # face centre
    cy = 112 + np.clip(rng.normal(0, 2.5), -5, 5)
    fw = rng.uniform(33, 39)                          # half width of the cheeks
    fh = fw * rng.uniform(1.28, 1.42)                 # half height, forehead to chin
    top, chin = cy - fh, cy + fh
    ey = cy - fh * rng.uniform(0.06, 0.14)            # eye line
    my = cy + fh * rng.uniform(0.52, 0.60)            # mouth line
    ny = (ey + my) / 2 + fh * 0.08                    # nose tip
    eye_dx = fw * rng.uniform(0.40, 0.48)             # eye centre distance from the midline
    yaw = np.clip(rng.normal(0, 0.4), -1, 1)          # a slight turn: features shift off centre
    fx = cx + yaw * fw * 0.12                         # the midline of eyes, nose and mouth

    img = _background(rng)
    d = ImageDraw.Draw(img, "RGBA")  # "RGBA" blends translucent fills over the RGB canvas
    shadow = _rgb(skin * 0.78)

    # --- back layers: shoulders and clothing, long hair falling over them, neck, collar ---
    cloth = _rgb(np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.9))) * 255)
    shoulder_w = rng.uniform(70, 92)                  # half width of the shoulders
    sy = chin + rng.uniform(14, 24)                   # top of the shoulders
    d.rounded_rectangle(_box(cx - shoulder_w, sy, cx + shoulder_w, sy + 120),
                        radius=rng.uniform(28, 40) * SS, fill=cloth)
    long_hair = style in ("long", "long_bangs")
    if long_hair:
        hw = fw * rng.uniform(1.28, 1.5)
        hair_len = rng.uniform(180, 235)
        d.ellipse(_ell(cx, top + fh * 0.55, hw, fh * 0.85), fill=_rgb(hair))
        d.rounded_rectangle(_box(cx - hw, top + fh * 0.5, cx + hw, hair_len), radius=12 * SS,
                            fill=_rgb(hair))
    neck_w = fw * rng.uniform(0.5, 0.62)
    neck = _rgb(skin * 0.9)
    d.rectangle(_box(cx - neck_w, cy + fh * 0.3, cx + neck_w, sy + 3), fill=neck)
    collar = rng.uniform(6, 18)                       # depth of the collar opening
    if rng.uniform() < 0.5:
        d.chord(_box(cx - neck_w * 1.1, sy - collar, cx + neck_w * 1.1, sy + collar + 4), 0, 180,
                fill=neck)
    else:
        d.polygon(_pts([cx - neck_w, cx + neck_w, cx], [sy + 2, sy + 2, sy + collar + 12]), fill=neck)
    d.ellipse(_ell(cx, chin + 1, neck_w * 0.98, 9), fill=shadow + (120,))  # shadow under the jaw

    # --- ears (hidden by long hair) ---
    if not long_hair:
        for side in (-1, 1):
            d.ellipse(_ell(cx + side * fw * 0.97, ey + fh * 0.18, 5.5, 10), fill=_rgb(skin * 0.92))
            d.ellipse(_ell(cx + side * fw * 0.99, ey + fh * 0.18, 2.5, 5.5), fill=shadow + (140,))

    # --- short hair volume behind the head, then the face (an egg: cranium + narrower jaw) ---
    if style != "bald":
        vol = rng.uniform(1.06, 1.2)
        d.ellipse(_ell(cx, cy - fh * 0.35, fw * vol, fh * 0.75), fill=_rgb(hair))
    elif rng.uniform() < 0.6:  # thin remaining hair above the ears, showing beside the face
        for side in (-1, 1):
            d.ellipse(_ell(cx + side * fw * 0.9, ey - fh * 0.2, fw * 0.2, fh * 0.24),
                      fill=_rgb(_mix(hair, skin, 0.3)))
    d.ellipse(_ell(cx, cy - fh * 0.18, fw, fh * 0.82), fill=_rgb(skin))
    jaw = rng.uniform(0.68, 0.84)
    d.ellipse(_box(cx - fw * jaw, cy - fh * 0.3, cx + fw * jaw, chin), fill=_rgb(skin))
    d.rectangle(_box(cx - fw * 0.9, cy - fh * 0.2, cx + fw * 0.9, cy + fh * 0.15), fill=_rgb(skin))
    d.ellipse(_ell(cx, cy + fh * 0.15, fw * 0.92, fh * 0.62), fill=_rgb(skin))

    # --- hair on top: a cap whose lower edge is the hairline; a fringe for bangs ---
    hairline = top + fh * rng.uniform(0.28, 0.42)
    if style == "bald":
        d.ellipse(_ell(cx - fw * 0.25, top + fh * 0.35, fw * 0.35, fh * 0.18), fill=(255, 255, 255, 40))
    else:
        cap = _rgb(hair)
        d.chord(_box(cx - fw * 1.04, top - fh * 0.12, cx + fw * 1.04, top + fh * 1.2), 180, 360, fill=cap)
        for side in (-1, 1):  # temples and sideburns, down to the eye line
            d.ellipse(_ell(cx + side * fw * 0.92, (top + fh * 0.4 + ey + 3) / 2, fw * 0.11,
                           (ey + 3 - top - fh * 0.4) / 2), fill=cap)
        if style in ("bangs", "long_bangs"):
            fringe_y = ey - fh * rng.uniform(0.18, 0.28)
            n_teeth = int(rng.integers(4, 8))
            xs = np.linspace(cx - fw * 0.95, cx + fw * 0.95, 2 * n_teeth + 1)
            ys = np.where(np.arange(xs.size) % 2 == 0, fringe_y - rng.uniform(4, 8), fringe_y)
            ys = ys + rng.normal(0, 1.2, xs.size)
            d.polygon(_pts([cx - fw * 0.98, *xs, cx + fw * 0.98], [top + fh * 0.35, *ys, top + fh * 0.35]),
                      fill=cap)
        else:
            # the forehead: a skin dome laid over the cap, so the hairline is high in the middle
            part = rng.uniform(-0.25, 0.25) * fw
            d.ellipse(_box(cx - fw * 0.8 + part * 0.3, hairline, cx + fw * 0.8 + part * 0.3,
                           cy + fh * 0.3), fill=_rgb(skin))
        d.chord(_box(cx - fw * 1.04, top - fh * 0.12, cx + fw * 1.04, top + fh * 0.9), 200, 340,
                fill=_rgb(hair * 1.12) + (70,))  # sheen

    # --- soft shading: cheek sides darker, forehead/cheekbones lit ---
    light = rng.uniform(-1, 1)                        # < 0: lit from the left
    shade = shadow + (int(7 + 9 * abs(light)),)
    mid = 180 if light > 0 else 0
    for spread in (84, 72, 60, 48, 36):  # nested chords: a falloff in small steps to the dark side
        d.chord(_ell(cx, cy + fh * 0.1, fw * 0.98, fh * 0.8), mid - spread, mid + spread, fill=shade)
    d.ellipse(_ell(cx - np.sign(light) * fw * 0.3, cy - fh * 0.15, fw * 0.45, fh * 0.5),
              fill=_rgb(skin * 1.08) + (int(20 + 25 * abs(light)),))  # lit forehead and cheek
    for side in (-1, 1):
        d.ellipse(_ell(cx + side * fw * 0.55, ey + fh * 0.3, fw * 0.2, fh * 0.1),
                  fill=_rgb(_mix(skin, (220, 90, 90), 0.5)) + (int(rng.uniform(0, 45)),))

    # --- eyes: socket shadow, white, iris, pupil, catchlight, upper lid; brows ---
    ew = fw * rng.uniform(0.22, 0.27)                 # eye half width
    eh = ew * rng.uniform(0.45, 0.6)                  # eye half height
    iris = _rgb(IRIS_COLORS[rng.choice(len(IRIS_P), p=IRIS_P)] * rng.uniform(0.8, 1.15))
    gaze = rng.normal(0, 0.12) * ew
    lid = _rgb(_mix(hair, (20, 15, 15), 0.6) * 0.8)
    brow = _rgb(_mix(hair, (25, 18, 15), 0.45 if hair_name in ("blond", "grey") else 0.15))
    brow_h = rng.uniform(1.6, 2.8)
    brow_lift = rng.uniform(5, 9)
    brow_arch = rng.uniform(1, 4)
    for side in (-1, 1):
        turn = 1 - 0.12 * yaw * side                  # the half of the face turned towards us is wider
        ex, w, h = fx + side * eye_dx * turn, ew * turn, eh * turn
        d.ellipse(_ell(ex, ey - 1, w * 1.35, h * 1.9), fill=shadow + (90,))
        d.ellipse(_ell(ex, ey, w, h), fill=(236, 232, 226))
        r = h * 1.05
        d.ellipse(_ell(ex + gaze, ey + 0.3, r, r), fill=iris)
        d.ellipse(_ell(ex + gaze, ey + 0.3, r * 0.48, r * 0.48), fill=(10, 8, 8))
        d.ellipse(_ell(ex + gaze + r * 0.35, ey - r * 0.35, r * 0.2, r * 0.2), fill=(255, 255, 255, 200))
        # lash line along the upper lid, a faint crease under the eye
        d.arc(_ell(ex, ey, w * 1.02, h * 1.02), 190, 350, fill=lid, width=int(2.2 * SS))
        d.arc(_ell(ex, ey, w, h), 20, 160, fill=shadow, width=SS)
        bx = np.array([ex - side * w * 1.1, ex, ex + side * w * 1.25])
        by = np.array([ey - h - brow_lift + 1, ey - h - brow_lift - brow_arch, ey - h - brow_lift + 2])
        d.line(_pts(bx, by), fill=brow, width=int(brow_h * SS), joint="curve")
    glasses = rng.uniform() < 0.12
    if glasses:
        frame = _rgb(np.array(_hsv(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.05, 0.5))) * 255)
        gw = min(ew * rng.uniform(1.45, 1.7), eye_dx * 0.88)  # lens half width, a bridge between
        gh = eh * rng.uniform(2.0, 2.6)
        for side in (-1, 1):
            ex = fx + side * eye_dx * (1 - 0.12 * yaw * side)
            d.rounded_rectangle(_ell(ex, ey + 1, gw, gh), radius=gh * 0.8 * SS, outline=frame,
                                width=int(1.6 * SS), fill=(255, 255, 255, 25))
            d.line(_pts([ex + side * gw, cx + side * fw * 0.98], [ey - 1, ey - 2]), fill=frame,
                   width=int(1.4 * SS))
        d.arc(_ell(fx, ey - 1, eye_dx - gw, 3), 180, 360, fill=frame, width=int(1.4 * SS))

    # --- nose: a shaded side, nostrils, a lit tip ---
    nw = fw * rng.uniform(0.17, 0.23)
    nside = 1 if light < 0 else -1
    d.line(_pts([fx + nside * nw * 0.4, fx + nside * nw * 0.8], [ey + 4, ny - 2]), fill=shadow + (150,),
           width=int(1.5 * SS))
    d.ellipse(_ell(fx, ny - 1, nw * 0.9, 4.5), fill=shadow + (90,))
    d.ellipse(_ell(fx, ny - 2.5, nw * 0.55, 3), fill=_rgb(skin * 1.06) + (150,))
    for side in (-1, 1):
        d.ellipse(_ell(fx + side * nw * 0.5, ny + 1.2, nw * 0.28, 1.6), fill=_rgb(skin * 0.45))

    # --- mouth: lips around a curved mouth line; closed or open with teeth ---
    mw = fw * rng.uniform(0.34, 0.44)                 # half width
    smile = rng.uniform(-0.5, 4.5)                    # corners this much above the middle
    upper, lower = rng.uniform(2.0, 3.8), rng.uniform(3.0, 5.0)
    lips = _rgb(_mix(skin, (175, 55, 65), rng.uniform(0.35, 0.65)) * rng.uniform(0.8, 0.95))
    t = np.linspace(-1, 1, 17)
    xs = fx + t * mw
    line_y = my - smile * t ** 2
    bulge = (1 - t ** 2) ** 0.6
    opened = rng.uniform() < 0.35
    gap = rng.uniform(2.5, 5.5) if opened else 0.0
    top_y = line_y - upper * bulge - (0.6 if opened else 0) * bulge
    bot_y = line_y + (lower + gap) * bulge

    def mouth():
        d.polygon(_pts(np.r_[xs, xs[::-1]], np.r_[top_y, bot_y[::-1]]), fill=lips)
        if opened:
            in_top = line_y - 0.5 * bulge
            in_bot = line_y + gap * bulge
            d.polygon(_pts(np.r_[xs, xs[::-1]], np.r_[in_top, in_bot[::-1]]), fill=(45, 15, 18))
            teeth_bot = in_top + (in_bot - in_top) * 0.55
            d.polygon(_pts(np.r_[xs[2:-2], xs[-3:1:-1]], np.r_[in_top[2:-2], teeth_bot[-3:1:-1]]),
                      fill=(238, 234, 222))
        else:
            d.line(_pts(xs, line_y), fill=_rgb(_mix(lips, (30, 10, 10), 0.6)), width=int(1.4 * SS),
                   joint="curve")

    mouth()
    d.ellipse(_ell(fx, my + lower + gap + 2.5, mw * 0.5, 2.2), fill=shadow + (60,))  # under the lip

    # --- facial hair, for some short-haired or bald faces: a beard or stubble, a moustache ---
    if style in ("short", "bald") and rng.uniform() < 0.3:
        beard = _rgb(_mix(hair, (30, 22, 18), 0.3))
        # the lower arc of the jaw ellipse drawn above, closed by a cheek line over the upper lip
        jaw_cy, jaw_ry = (cy - fh * 0.3 + chin) / 2, (chin - cy + fh * 0.3) / 2
        theta = np.linspace(-0.15, np.pi + 0.15, 15)
        cheek_x = [cx - fw * jaw * 0.8, fx - mw * 1.0, fx, fx + mw * 1.0, cx + fw * jaw * 0.8]
        cheek_y = [my - fh * 0.14, ny + 5, ny + 3.5, ny + 5, my - fh * 0.14]
        outline = _pts(np.r_[cx + fw * jaw * np.cos(theta), cheek_x],
                       np.r_[jaw_cy + jaw_ry * np.sin(theta), cheek_y])
        full = rng.uniform() < 0.5
        d.polygon(outline, fill=beard + (int(rng.uniform(140, 230)) if full else 55,))
        if full or rng.uniform() < 0.5:  # a moustache over the upper lip
            d.polygon(_pts(np.r_[xs[1:-1], xs[-2:0:-1]],
                           np.r_[top_y[1:-1] - 3.5, top_y[-2:0:-1] + 0.5]), fill=beard + (220,))
        mouth()

    # resolve the 2x supersampling: the mean of each 2x2 block (a box filter, 10x faster than LANCZOS)
    return img.reduce(SS)


# ------------------------------------------------------------------------------------------------
# The cached folder.

def default_cache_root() -> Path:
    """``$FASTWGAN_CACHE``, else ``$XDG_CACHE_HOME/fastwgan``, else ``~/.cache/fastwgan``."""
    if os.environ.get("FASTWGAN_CACHE"):
        return Path(os.environ["FASTWGAN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastwgan"
    return Path.home() / ".cache" / "fastwgan"


def dataset_name(n: int, seed: int) -> str:
    return f"synthetic-faces-{VERSION}-n{n}-s{seed}"


def _is_complete(folder: Path, n: int, seed: int) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("version") != VERSION or manifest.get("count") != n or manifest.get("seed") != seed:
        return False
    return sum(1 for name in os.listdir(folder) if name.endswith(".jpg")) == n


def _write_range(args: tuple[Path, int, int, int]) -> None:
    folder, seed, lo, hi = args
    for i in range(lo, hi):
        render_face(seed, i).save(folder / f"{i:06d}.jpg", quality=JPEG_QUALITY)


def _write_images(folder: Path, n: int, seed: int) -> None:
    # About 4 ms an image: worker processes over ranges of indices (each image depends only on
    # (seed, index), so the bytes are the same however the work is split).
    chunk = 250
    jobs = [(folder, seed, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    workers = min(len(jobs), default_workers())
    # a daemonic process (a DataLoader or multiprocessing.Pool worker) may not start children
    if workers <= 1 or multiprocessing.current_process().daemon:
        for job in jobs:
            _write_range(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_range, jobs))


def _remove_stale_tmp(root: Path, name: str) -> None:
    now = time.time()
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def synthetic_dataset_ready(root: str | Path | None = None, n: int = 4000, seed: int = 0) -> bool:
    """Whether ``ensure_synthetic_dataset`` would return at once (nothing to generate)."""
    root = Path(root).expanduser() if root is not None else default_cache_root()
    return _is_complete(root / dataset_name(n, seed), n, seed)


def ensure_synthetic_dataset(root: str | Path | None = None, n: int = 4000, seed: int = 0) -> Path:
    """The folder of the ``n`` synthetic faces for ``seed`` under ``root``, generated on first use.

    ``root`` defaults to ``default_cache_root()``. An existing folder is returned at once when its
    manifest matches; otherwise the images are written into a temporary sibling folder that is
    renamed into place when complete. Logs nothing: the caller says the data is synthetic.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    root = Path(root).expanduser() if root is not None else default_cache_root()
    name = dataset_name(n, seed)
    final = root / name
    if _is_complete(final, n, seed):
        return final

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, name)
    tmp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_images(tmp, n, seed)
        manifest = {"name": name, "version": VERSION, "count": n, "seed": seed,
                    "width": WIDTH, "height": HEIGHT, "format": "jpeg", "quality": JPEG_QUALITY,
                    "generator": "fastwgan.data.synthetic.render_face(seed, index)"}
        (tmp / "README.txt").write_text(
            f"Synthetic face-like images for fastwgan ({n} images, seed {seed}, drawing {VERSION}).\n"
            "Each NNNNNN.jpg is fastwgan.data.synthetic.render_face(seed, NNNNNN): drawn shapes, no\n"
            "real people. Delete this folder to regenerate it.\n")
        # the manifest last: a folder with a manifest is a complete folder
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

        if final.exists() and not _is_complete(final, n, seed):
            # a broken folder under the final name (not one of ours): move it aside, then drop it
            trash = root / f".{name}.tmp-broken-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:
                pass
        try:
            os.rename(tmp, final)  # atomic; fails when `final` exists (a racing generator won)
        except OSError:
            if not _is_complete(final, n, seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------
# Preview: a contact sheet of the first images, cropped and resized as the trainer sees them.

def contact_sheet(seed: int = 0, count: int = 64, size: int = 64, crop: int = 108,
                  cols: int = 8) -> Image.Image:
    rows = (count + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * size))
    left, top = (WIDTH - crop) // 2, (HEIGHT - crop) // 2
    for i in range(count):
        face = render_face(seed, i).crop((left, top, left + crop, top + crop))
        face = face.resize((size, size), Image.BILINEAR, reducing_gap=None)
        sheet.paste(face, ((i % cols) * size, (i // cols) * size))
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Preview or generate the synthetic face dataset.")
    parser.add_argument("--sheet", help="write a contact sheet of the first images here (PNG)")
    parser.add_argument("--size", type=int, default=64, help="sheet tile size (the training resolution)")
    parser.add_argument("--count", type=int, default=64, help="images on the sheet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate", type=int, metavar="N", help="generate the N-image dataset and "
                        "print its folder")
    parser.add_argument("--root", help="cache root (default: $FASTWGAN_CACHE, $XDG_CACHE_HOME/fastwgan "
                        "or ~/.cache/fastwgan)")
    args = parser.parse_args(argv)
    if args.sheet:
        contact_sheet(args.seed, args.count, args.size).save(args.sheet)
        print(args.sheet)
    if args.generate:
        print(ensure_synthetic_dataset(args.root, args.generate, args.seed))


if __name__ == "__main__":
    main()
