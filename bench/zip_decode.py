"""One-time decode of a zip of images against the same files unpacked: the scan (screening) and the
resident decode by each loader (Pillow in 2 worker processes; DALI's CPU decoder with 2 threads,
where DALI is installed), for a folder, a stored zip and a deflated zip.

    python bench/zip_decode.py 2000     # number of CelebA-sized synthetic JPEGs

Prints seconds and img/s per source and loader, twice; compare rows of one repetition only.
"""
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from fastwgan.data.archive import scan_zip  # noqa: E402
from fastwgan.data.dali import dali_available  # noqa: E402
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
    loaders = [("pillow", lambda files: len(decode_files(files, 64, 108, workers=2, progress=False)[1]))]
    if dali_available():
        from fastwgan.data.dali import decode_dali

        def dali(files) -> int:
            failed = []
            decode_dali(files, 64, 108, torch.device("cpu"), workers=2, failed=failed)
            return len(failed)

        loaders.append(("dali cpu", dali))
        # DALI's first pipeline in a process pays a one-time start (its codec libraries): not in a row
        decode_dali(sorted(folder.iterdir())[:64], 64, 108, torch.device("cpu"), workers=2)
    else:
        print("DALI is not installed: Pillow rows only")
    for rep in range(2):
        for label, scan in sources:
            t0 = time.perf_counter()
            s = scan()
            t1 = time.perf_counter()
            for loader, decode in loaders:
                t2 = time.perf_counter()
                bad = decode(s.files)
                t3 = time.perf_counter()
                print(f"rep {rep} {label:13s} scan {t1 - t0:6.2f} s  {loader:8s} decode {t3 - t2:6.2f} s  "
                      f"{len(s.files) / (t3 - t2):7.0f} img/s  bad {bad}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
