"""The run folder's writer thread (fastwgan.background): jobs in order, off the calling thread; a
job's error raised in the loop, once, and the jobs after it skipped; copies to the host that
training cannot change."""
import threading

import pytest
import torch

from fastwgan.background import BackgroundWork, host_copy


def test_jobs_run_in_order_on_another_thread():
    work, ran = BackgroundWork(), []
    for i in range(10):
        work.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
    work.wait()
    assert [i for i, _ in ran] == list(range(10))
    assert {name for _, name in ran} == {"fastwgan-writer"}
    work.close()


def test_submit_returns_while_a_job_runs():
    work, release = BackgroundWork(), threading.Event()
    work.submit(lambda: release.wait(10))
    work.submit(lambda: None)  # queued behind it, without waiting for it
    assert not release.is_set()
    release.set()
    work.wait()
    work.close()


def test_a_full_queue_waits_for_the_writer():
    work, release = BackgroundWork(max_pending=1), threading.Event()
    work.submit(lambda: release.wait(10))  # running
    work.submit(lambda: None)  # queued: the queue is full
    submitted = threading.Event()
    t = threading.Thread(target=lambda: (work.submit(lambda: None), submitted.set()))
    t.start()
    assert not submitted.wait(0.3)  # held back until the writer takes the next job
    release.set()
    assert submitted.wait(10)
    t.join()
    work.wait()
    work.close()


def test_an_error_is_raised_once_in_the_loop_and_skips_the_later_jobs():
    work, ran = BackgroundWork(), []

    def fail():
        raise OSError(28, "No space left on device", "/out/samples/iter_000004.png")

    work.submit(fail)
    work.submit(lambda: ran.append("checkpoint"))  # after the failed write: skipped
    with pytest.raises(OSError) as e:
        work.wait()
    assert e.value.filename == "/out/samples/iter_000004.png"
    work.wait()  # raised once
    work.submit(lambda: ran.append("later"))
    work.wait()
    assert ran == []
    work.close()


def test_the_next_submit_raises_an_earlier_error():
    work = BackgroundWork()
    work.submit(lambda: 1 / 0)
    work.close()  # dropped by close: the run ends with an error of its own
    work = BackgroundWork()
    done = threading.Event()
    work.submit(lambda: (done.set(), 1 / 0))
    done.wait(10)
    work._jobs.join()
    with pytest.raises(ZeroDivisionError):
        work.submit(lambda: None)
    work.close()


def test_close_runs_what_was_handed_over():
    work, ran = BackgroundWork(), []
    for i in range(3):
        work.submit(lambda i=i: ran.append(i))
    work.close()
    assert ran == [0, 1, 2]
    work.close()  # twice: nothing left


def test_host_copy_is_not_changed_by_training():
    w = torch.arange(6.0)
    (copy,), ready = host_copy([w])
    w.add_(100)  # the next step, in place
    ready()
    assert torch.equal(copy, torch.arange(6.0))


@pytest.mark.gpu
def test_host_copy_from_cuda_is_filled_when_ready():
    x = torch.randn(64, 3, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    expected = x.cpu()
    (copy,), ready = host_copy([x])
    x.mul_(0)  # queued after the copy on the same stream: the copy sees the old values
    ready()
    assert copy.device.type == "cpu" and copy.is_pinned()
    assert torch.equal(copy, expected)
