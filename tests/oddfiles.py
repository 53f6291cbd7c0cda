"""Folders of images for the loader tests: good ones of every kind, and broken ones."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def face_like(rng: np.random.Generator, w: int = 178, h: int = 218) -> Image.Image:
    """A smooth random RGB image (JPEG-friendly, unlike white noise)."""
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def make_good_folder(root: Path, n: int = 12, seed: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"{i:03d}.jpg"
        face_like(rng).save(p, quality=90)
        paths.append(p)
    return paths


def make_odd_folder(root: Path) -> dict[str, list[str]]:
    """Every kind of file a real folder may hold; returns the names expected to load and to skip."""
    rng = np.random.default_rng(1)
    (root / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    good, bad = [], []

    def save(name, im, **kw):
        im.save(root / name, **kw)
        good.append(name)

    save("rgb.jpg", face_like(rng), quality=90)
    save("upper.JPG", face_like(rng), quality=90)
    save("upper2.JPEG", face_like(rng), quality=90)
    save("gray.jpg", face_like(rng).convert("L"), quality=90)
    save("cmyk.jpg", face_like(rng).convert("CMYK"), quality=90)
    save("progressive.jpg", face_like(rng), quality=90, progressive=True)
    save("rgba.png", face_like(rng).convert("RGBA"))
    save("palette.png", face_like(rng).convert("P"))
    save("gray16.png", Image.fromarray((np.asarray(face_like(rng).convert("L"), np.uint16) * 257)))
    save("tiny.jpg", face_like(rng, 9, 7), quality=90)       # smaller than any crop
    save("nested/deeper/inner.png", face_like(rng, 64, 80))

    buf = io.BytesIO()
    face_like(rng).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "garbage.png").write_bytes(bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    bad += ["truncated.jpg", "empty.jpg", "text.jpg", "garbage.png"]
    (root / "notes.txt").write_text("ignored: not an image extension\n")
    return {"good": sorted(good), "bad": sorted(bad)}


def zip_folder(folder: Path, zpath: Path, extra: dict | None = None, compress=zipfile.ZIP_DEFLATED) -> Path:
    """A zip of ``folder``'s files, named below the folder's own name (as img_align_celeba.zip
    holds img_align_celeba/...), and the ``extra`` members {name: bytes}."""
    with zipfile.ZipFile(zpath, "w", compress) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return zpath
