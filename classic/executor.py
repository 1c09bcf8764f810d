"""Where a sweep's independent jobs run (table cells, seeds, grids): one interface, two engines.

* ``local`` (default): worker processes on this machine (:func:`classic.workers.worker_pool`:
  spawned, they die with the run, a failure stops the others); with one worker, in this process.
* ``ray``: tasks on a Ray cluster (optional extra ``ray``: ``pip install -e ".[ray]"``).
  ``executor: {name: ray}`` starts a local Ray instance; ``executor: {name: ray, address: auto}``
  (or ``ray://host:10001``) connects to a running cluster, for users who outgrow one machine.
  Each task asks for ``threads`` CPUs, so Ray places as many at once as the cluster has room for.

Both return results in the order of their inputs and run the same function on the same arguments,
so a sweep's results do not depend on the engine; jobs write their own folders, so resuming an
interrupted sweep works the same way on both (on a cluster of several machines, ``output.root``
must be a filesystem they share).

Example:
    >>> with make_executor(ExecutorConfig(), workers=2) as ex:   # doctest: +SKIP
    ...     results = ex.map(run_setting, [(cfg, s) for s in settings])
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence


@dataclass
class ExecutorConfig:
    """Which engine runs a sweep's jobs (``--set executor.name=ray``).

    Attributes:
        name: ``local`` (worker processes here) or ``ray``.
        address: Ray only: the cluster to connect to (``auto``: the one this machine belongs to;
            ``ray://host:port``: a remote one); None starts a local Ray instance.

    Raises:
        ValueError: an unknown engine, or an ``address`` for the local one.
    """

    name: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        if self.name not in ("local", "ray"):
            raise ValueError(f"name must be 'local' or 'ray', got {self.name!r}")
        if self.name == "local" and self.address is not None:
            raise ValueError("address is for the ray executor (name: ray)")


class _Done:
    """A finished job's result behind the ``result()`` of a future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class LocalExecutor:
    """Jobs in ``workers`` spawned processes (in this process when ``workers`` is 1)."""

    def __init__(self, pool=None) -> None:
        self.pool = pool

    def submit(self, fn: Callable, *args) -> Any:
        """Start ``fn(*args)``; returns a future (``.result()`` waits for it). Without worker
        processes the job runs now, in this process."""
        return self.pool.submit(fn, *args) if self.pool is not None else _Done(fn(*args))

    def map(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[Any]:
        """``fn(*job)`` for each job, yielded in input order as each finishes in turn."""
        if self.pool is None:
            for job in jobs:
                yield fn(*job)
            return
        futures = [self.pool.submit(fn, *job) for job in jobs]
        for future in futures:
            yield future.result()


class RayExecutor:
    """Jobs as Ray tasks of ``threads`` CPUs each (``ray.remote(num_cpus=threads)``)."""

    def __init__(self, ray, threads: int) -> None:
        self.ray = ray
        self.threads = threads

    def submit(self, fn: Callable, *args) -> Any:
        """Start ``fn(*args)`` as a Ray task; returns a future (``.result()`` waits for it)."""
        return self.ray.remote(num_cpus=self.threads, max_retries=0)(fn).remote(*args).future()

    def map(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[Any]:
        remote = self.ray.remote(num_cpus=self.threads, max_retries=0)(fn)
        refs = [remote.remote(*job) for job in jobs]
        try:
            for ref in refs:
                yield self.ray.get(ref)
        except BaseException:
            for ref in refs:  # a failure stops the others, as the local pool does
                self.ray.cancel(ref, force=True)
            raise


@contextlib.contextmanager
def make_executor(config: ExecutorConfig, workers: int = 1, threads: int = 1, background: bool = False):
    """The executor of ``config``: ``workers`` jobs at once locally; on Ray, as many as the
    cluster's CPUs allow (``threads`` CPUs per job).

    Args:
        background: jobs must run beside this process (``submit`` returns at once), so even one
            local worker is a process of its own.

    Raises:
        ImportError: ``name: ray`` without the ``ray`` extra installed (the message says how).
    """
    if config.name == "local":
        if workers <= 1 and not background:
            yield LocalExecutor()
            return
        from classic.workers import worker_pool

        with worker_pool(max(workers, 1)) as pool:
            yield LocalExecutor(pool)
        return
    try:
        import ray
    except ImportError:
        raise ImportError('executor name: ray needs Ray: pip install -e ".[ray]"') from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = (
            {"address": config.address} if config.address else {"num_cpus": max(workers, 1) * threads}
        )
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        yield RayExecutor(ray, threads)
    finally:
        if started:
            ray.shutdown()
