"""Periodic host work off the training loop's critical path.

* ``BackgroundWork``: one writer thread that runs the run folder's slow writes (a sample grid's
  PNG encoding, loss.png, TensorBoard events, the checkpoint file and its fsync) in the order
  they were handed over, while the loop goes on training. The loop waits for it (``wait``) where
  the files must be on disk: at a stop, at the end, before it reports a kept checkpoint. A job
  that fails skips the jobs after it, and its exception is raised in the loop at the next
  ``submit`` or ``wait``: a full disk stops the run with the same one line as a write made in
  the loop (fastwgan.atomic). At most ``max_pending`` jobs wait: a loop that hands over work
  faster than it is written waits for the writer, and that time counts as periodic work.
* ``host_copy``: tensors copied to the host without waiting for the device (on CUDA: into pinned
  memory, with an event the job waits on before it reads them), so that what training does next
  cannot change them.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Optional, Sequence

import torch

MAX_PENDING = 4  # jobs handed over and not yet run; a fifth waits for the writer


class BackgroundWork:
    """Jobs (functions of no arguments) run one after another on a writer thread."""

    def __init__(self, max_pending: int = MAX_PENDING, name: str = "fastwgan-writer"):
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None  # not yet raised in the loop
        self._skip = False  # a job failed, or the loop stopped waiting: the jobs queued are skipped
        self.name = name

    def submit(self, job: Callable[[], None]) -> None:
        """Hand ``job`` over (waits while ``max_pending`` jobs are queued); first raises the error
        of a job that failed since the last call."""
        self.raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def wait(self) -> None:
        """Until every job handed over has run; raises the error of one that failed."""
        if self._thread is not None:
            self._jobs.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Run the jobs handed over, then end the thread. An error not yet raised is dropped:
        the run is ending with an exception of its own, which is the one to report. Interrupted
        (a second Ctrl-C), it skips the jobs still queued; the one running ends with the process
        (fastwgan.atomic: its file is whole or not there)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._jobs.put(None)
            thread.join()
        except BaseException:
            self._skip = True
            raise
        self._error = None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if not self._skip:
                    job()
            except BaseException as e:  # raised in the loop: nothing is printed from here
                self._skip, self._error = True, e
            finally:
                self._jobs.task_done()


def host_copy(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Copies of ``tensors`` on the host that training cannot change, and ``ready()``, which
    waits until they are filled.

    On CUDA each is copied into pinned memory without a host synchronisation, and ``ready``
    waits on an event recorded after the copies: the loop goes on queueing work meanwhile, and
    the writer thread waits for the copies alone, not for that work. On a CPU they are plain
    copies, ready at once."""
    tensors = [t.detach() for t in tensors]
    if not any(t.device.type == "cuda" for t in tensors):
        return [t.clone() for t in tensors], lambda: None
    copies = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        copies.append(host)
    copied = torch.cuda.Event()
    copied.record()
    return copies, copied.synchronize
