"""Workers die with their run (issue 16): a killed main process leaves no worker writing into its
run folder, and a failure in one worker stops the pool at once instead of waiting for the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classic.workers import worker_pool

ROOT = Path(__file__).resolve().parents[1]

PARENT = """
import os, sys, time
from classic.workers import worker_pool

if __name__ == "__main__":
    with worker_pool(1) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_when_the_main_process_is_killed(tmp_path, sig):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived its killed parent"
    finally:
        parent.kill()


def _fail():
    raise RuntimeError("this run failed")


def test_a_failure_stops_the_other_workers_at_once():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="this run failed"):
        with worker_pool(2) as pool:
            pool.submit(time.sleep, 120)
            workers = list(pool._processes)  # their pids (the pool starts them on submit)
            pool.submit(_fail).result()
    assert time.monotonic() - start < 60  # not the 120 s of the other worker
    assert workers and not any(_alive(pid) for pid in workers)  # terminated, not left to finish


def test_a_pool_that_ends_normally_returns_its_results():
    with worker_pool(2) as pool:
        assert sorted(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
