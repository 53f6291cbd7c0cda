"""What a fused op launches, told to a kernel ledger while one listens (bench/ledger.py).

The ledger counts the kernels a training step would launch on CUDA by recording every aten op
through a dispatch mode. A Triton launch is no aten op, and on a CPU the fused ops run their
plain-PyTorch twins, whose aten ops are not what CUDA would launch. So each fused op tells the
listener its launches itself: ``record`` beside a Triton launch, and ``standing_for`` around a
twin that stands for the kernels (the twin's own aten ops are then not counted).

Nothing listens outside a ledger: every entry point is one test of a module global.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, NamedTuple, Optional


class Launch(NamedTuple):
    """One kernel launch of a fused op: its name and the bytes it reads and writes."""
    name: str
    bytes: int


# the listening ledger: an object with ``fused(kind, launches)`` and ``suppressed()`` (a context
# in which it counts no aten op), or None
_listener = None


def listening() -> bool:
    return _listener is not None


def set_listener(listener) -> object:
    """Make ``listener`` the one ledger told of launches (None: nobody); returns the previous."""
    global _listener
    previous, _listener = _listener, listener
    return previous


def record(kind: str, launches: list[Launch]) -> None:
    """Tell the listener (if any) of ``launches``, grouped under ``kind``."""
    if _listener is not None:
        _listener.fused(kind, launches)


@contextlib.contextmanager
def standing_for(kind: str, launches: list[Launch]):
    """Around a twin that computes what ``launches`` would: they are counted, the twin is not."""
    if _listener is None:
        yield
        return
    _listener.fused(kind, launches)
    with _listener.suppressed():
        yield


def counted_as(kind: str, launches_of: Callable[..., list[Launch]]):
    """Decorate a twin: while a ledger listens, a call counts as ``launches_of(*args, **kwargs)``
    (the kernels it stands for) instead of its own aten ops."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if _listener is None:
                return fn(*args, **kwargs)
            with standing_for(kind, launches_of(*args, **kwargs)):
                return fn(*args, **kwargs)
        return inner
    return wrap


def suppressed() -> contextlib.AbstractContextManager:
    """A context in which the listener (if any) counts no aten op."""
    return _listener.suppressed() if _listener is not None else contextlib.nullcontext()


def listener() -> Optional[object]:
    return _listener
