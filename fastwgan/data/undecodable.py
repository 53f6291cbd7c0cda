"""Files that passed the scan but do not decode: each replaced by the next image that does.

``scan_images`` leaves out the files that are plainly broken; a file that still fails to decode
(a valid start and end marker around garbage) is replaced by the next one in the list that
decodes, cyclically, by every loader in every mode, and reported: a stream warns about each file
as it meets it (``warn_replaced``), a resident decode hands the list to its caller or warns in one
line (``hand_over``, ``undecodable_warning``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from fastwgan.data.files import DataError, printable


def warn_replaced(path: str, why: str) -> None:
    """What a loader says when it met a file that does not decode, and used the next image."""
    warnings.warn(printable(f"could not decode {path} ({why}); using the next image instead"))


def fill_from_next(images, bad: Sequence[int]) -> None:
    """Replace each image at a ``bad`` index by the next good one, cyclically (as the stream
    does): ``images`` is an array or tensor indexed by image first."""
    bad_set = set(bad)
    n = len(images)
    if len(bad_set) >= n:
        raise DataError(f"none of the {n} images could be decoded")
    for i in sorted(bad_set):
        k = (i + 1) % n
        while k in bad_set:
            k = (k + 1) % n
        images[i] = images[k]


def undecodable_warning(failed: Sequence[tuple[str, str]], n: int) -> str:
    """One line for files that passed the scan but failed to decode (each replaced by the next)."""
    shown = ", ".join(f"{Path(p).name} ({why})" for p, why in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return printable(f"{len(failed)} of {n} image(s) could not be decoded and were replaced by the "
                     f"next image in the folder: {shown}{more}")


def hand_over(bad: Sequence[tuple[str, str]], n: int, failed: list | None) -> None:
    """Files of ``n`` that did not decode, as (path, reason): appended to ``failed`` when the
    caller collects them, else warned about in one line."""
    if failed is not None:
        failed += bad
    elif bad:
        warnings.warn(undecodable_warning(bad, n))
