"""One-time decode of a zip of images against the same files unpacked (the Pillow loader): the scan
(screening) and the resident decode, for a folder, a stored zip and a deflated zip.

    python bench/zip_decode.py 2000     # number of CelebA-sized synthetic JPEGs

Prints seconds and img/s per source, twice; compare rows of one repetition only.
"""
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fastwgan.data.archive import scan_zip  # noqa: E402
from fastwgan.data.files import scan_images  # noqa: E402
from fastwgan.data.pillow import decode_files  # noqa: E402
from oddfiles import make_good_folder  # noqa: E402


def main(n: int) -> None:
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "fastwgan-zip-bench"
    shutil.rmtree(root, ignore_errors=True)
    folder = root / "img_align_celeba"
    make_good_folder(folder, n=n)
    for name, comp in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(root / f"{name}.zip", "w", comp) as zf:
            for p in sorted(folder.iterdir()):
                zf.write(p, f"img_align_celeba/{p.name}")
    sizes = {k: (root / f"{k}.zip").stat().st_size for k in ("stored", "deflated")}
    print(f"files {n}, folder bytes {sum(p.stat().st_size for p in folder.iterdir())}, zip bytes {sizes}")
    sources = (("folder", lambda: scan_images(folder)),
               ("zip stored", lambda: scan_zip(root / "stored.zip")),
               ("zip deflated", lambda: scan_zip(root / "deflated.zip")))
    for rep in range(2):
        for label, scan in sources:
            t0 = time.perf_counter()
            s = scan()
            t1 = time.perf_counter()
            _arr, bad = decode_files(s.files, 64, 108, workers=2, progress=False)
            t2 = time.perf_counter()
            print(f"rep {rep} {label:13s} scan {t1 - t0:6.2f} s  decode {t2 - t1:6.2f} s  "
                  f"{len(s.files) / (t2 - t1):7.0f} img/s  bad {len(bad)}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
