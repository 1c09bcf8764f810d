"""Worker processes that die with their run: the spawned pools of a run (RL² training beside the
LLM, table cells, MRT runs, fresh processes for vLLM) end when the main process ends, however it
ends, and a failure in one worker stops the others at once instead of waiting for them.

* Each worker watches its parent: on Linux the kernel sends it SIGTERM when the parent dies
  (``prctl(PR_SET_PDEATHSIG)``), and everywhere a daemon thread exits it once it has been
  re-parented (the parent was killed, even with SIGKILL).
* :func:`in_fresh_process` runs one function in a new process that leaves the launch (rank
  variables removed) and keeps its rank's GPU; its exit returns all the GPU memory it held.
* :func:`worker_pool` is a spawn-context ``ProcessPoolExecutor`` whose exit, on an exception
  (including KeyboardInterrupt / SIGTERM turned into one), terminates its workers before
  re-raising.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor


def _watch_parent(parent: int, poll_s: float) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(poll_s)


def die_with_parent(parent: int, initializer=None, *initargs, poll_s: float = 0.5) -> None:
    """Worker initializer: end this process when process ``parent`` ends, then run ``initializer``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no prctl here: the watchdog below does the job
            pass
    if os.getppid() != parent:  # the parent died before this line
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, poll_s), daemon=True, name="die-with-parent").start()
    if initializer is not None:
        initializer(*initargs)


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: pending work cancelled, running workers terminated (SIGTERM)."""
    stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if stop is not None:
        stop()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


@contextlib.contextmanager
def worker_pool(max_workers: int, initializer=None, initargs: tuple = ()):
    """A spawn-context ``ProcessPoolExecutor`` of workers that die with this process; leaving the
    block with an exception terminates the workers instead of waiting for them."""
    import multiprocessing as mp

    pool = ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=mp.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(), initializer, *initargs),
    )
    try:
        yield pool
    except BaseException:
        terminate_workers(pool)
        raise
    else:
        pool.shutdown(wait=True)


#: What ``accelerate launch`` / ``torchrun`` set for a rank; a fresh process runs on its own.
_LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def _standalone_process() -> None:
    """Initializer of a fresh process: a single process on its parent rank's GPU, with the launcher's
    rank variables removed so that neither accelerate nor vLLM joins the launch's process group."""
    local = os.environ.get("LOCAL_RANK")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    for name in _LAUNCH_VARIABLES:
        os.environ.pop(name, None)
    if local not in (None, "0"):
        devices = visible.split(",") if visible else [str(i) for i in range(int(local) + 1)]
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local)]


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new (spawned) process on this rank's GPU; returns its result. The process
    exits afterwards, which returns every byte of GPU memory it held (a vLLM engine, a trainer)."""
    with worker_pool(1, initializer=_standalone_process) as pool:
        return pool.submit(fn, *args).result()


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads (default: the cores this process may run on)."""
    import torch

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(threads)))
