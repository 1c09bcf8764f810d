"""Training/evaluation metrics to ``<run_dir>/metrics.jsonl`` and TensorBoard.

Metric names are kept as given and are expected to use the project's namespaces
(``charts/``, ``losses/``, ``rollout/``, ``eval/``); a logger's ``prefix`` namespaces a whole
stage in front of them (``"rl2/"`` + ``"losses/value"`` -> ``"rl2/losses/value"``).
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks; elsewhere the loggers of one run folder rely on the inode check alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["MetricsLogger", "read_metrics"]

_TB_WARNED = False


def _warn_tensorboard(err: BaseException) -> None:
    global _TB_WARNED
    if not _TB_WARNED:
        _TB_WARNED = True
        warnings.warn(
            f"TensorBoard logging disabled ({type(err).__name__}: {err}); metrics still go to metrics.jsonl",
            RuntimeWarning,
            stacklevel=3,
        )


class MetricsLogger:
    """Append one JSON line per :meth:`log` call and mirror the scalars to TensorBoard.

    Each line is ``{"step": int, "time": unix seconds, "<prefix><name>": float | null, ...}``
    (non-finite values are written as ``null`` so the file stays strict JSON; TensorBoard gets
    the actual value). Several loggers (one per stage) may share one ``run_dir``: the jsonl
    file is opened in append mode, and loggers in other processes stay correct when one of them
    rewrites it (:meth:`forget`): writes and rewrites hold an advisory lock
    (``metrics.jsonl.lock``, POSIX), and a logger whose file was replaced reopens it before
    writing. If TensorBoard cannot be imported or opened, a
    ``RuntimeWarning`` is issued once per process and only the jsonl file is written.

    Args:
        run_dir: run folder (created); writes ``metrics.jsonl`` and ``tensorboard/`` in it.
        prefix: prepended to every metric name, e.g. ``"rl2/"``.
        tensorboard: set False to skip TensorBoard entirely.
        enabled: False makes every call a no-op that writes nothing (the non-main ranks of a
            multi-process run: the main process keeps the one copy of the metrics).

    Example:
        >>> with MetricsLogger("runs/demo", prefix="rl2/") as logger:  # doctest: +SKIP
        ...     logger.log(128, {"charts/episodic_return": 3.5, "losses/policy": 0.12})
    """

    def __init__(self, run_dir: str | Path, prefix: str = "", tensorboard: bool = True, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.prefix = prefix
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except Exception as err:  # ImportError when tensorboard is missing, OSError...
                _warn_tensorboard(err)

    @property
    def tensorboard_enabled(self) -> bool:
        """Whether scalars are also going to TensorBoard."""
        return self._writer is not None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` at ``step``.

        Args:
            step: global step (environment steps, updates... the caller's unit); an int.
            metrics: name -> scalar (Python number or one-element tensor/array).

        Raises:
            RuntimeError: the logger is closed.
            TypeError: ``step`` is not an int, or a value is not a real scalar (nothing is
                written then).
            ValueError: a prefixed name is "step" or "time".
        """
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError("MetricsLogger is closed")
        if isinstance(step, bool):
            raise TypeError("step must be an int, got bool")
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"step must be an int, got {type(step).__name__}") from None
        values: dict[str, float] = {}
        for name, value in metrics.items():
            key = f"{self.prefix}{name}"
            if key in ("step", "time"):
                raise ValueError(f"metric name {key!r} is reserved")
            values[key] = _scalar(key, value)
        now = time.time()
        record: dict[str, Any] = {"step": step, "time": now}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        with self._locked():
            self._reopen_if_replaced()
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._writer is not None:
            try:
                for key, value in values.items():
                    self._writer.add_scalar(key, value, global_step=step, walltime=now)
            except Exception as err:
                _warn_tensorboard(err)
                self._close_writer()

    def last_step(self, prefix: str) -> int:
        """The largest step of a line in ``metrics.jsonl`` with a metric starting with ``prefix``
        (0 when there is none, or when this logger is disabled)."""
        if not self.enabled or not self.path.exists():
            return 0
        last = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if any(k.startswith(prefix) for k in record if k not in ("step", "time")):
                    last = max(last, int(record.get("step", 0)))
        return last

    def forget(self, prefix: str) -> int:
        """Drop every metric starting with ``prefix`` from ``metrics.jsonl`` (a line left with no
        metric goes too), for a stage that starts again from scratch: its old curve belonged to
        other settings. The file is replaced whole (:func:`classic.files.write_atomic`). TensorBoard
        event files cannot be edited: the old curve stays there. Returns the lines changed or
        dropped (0 when disabled)."""
        if not self.enabled or not self.path.exists():
            return 0
        from classic.files import write_atomic

        with self._locked():
            return self._forget(prefix, write_atomic)

    def _forget(self, prefix: str, write_atomic) -> int:
        kept, changed = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut by a kill
                    changed += 1
                    continue
                out = {k: v for k, v in record.items() if k in ("step", "time") or not k.startswith(prefix)}
                if len(out) != len(record):
                    changed += 1
                if len(out) > 2 or len(record) <= 2:
                    kept.append(json.dumps(out, allow_nan=False))
        if changed:
            if self._file is not None:
                self._file.close()
            write_atomic(self.path, "".join(f"{line}\n" for line in kept))
            if self._file is not None:
                self._file = open(self.path, "a", encoding="utf-8")
        return changed

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the run folder's metrics lock (exclusive, advisory; a no-op without ``fcntl``)."""
        if fcntl is None:
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _reopen_if_replaced(self) -> None:
        """Reopen ``metrics.jsonl`` when another logger replaced it (:meth:`forget` writes a new
        file): appending to the old one would write lines nobody reads."""
        try:
            replaced = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:
            self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")

    def flush(self) -> None:
        """Flush both outputs (the jsonl file is already flushed after every call)."""
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close; idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception as err:
                _warn_tensorboard(err)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scalar(key: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # torch / numpy scalars and one-element arrays
    if callable(item):
        try:
            out = item()
        except (ValueError, RuntimeError):
            out = None
        if isinstance(out, numbers.Real):
            return float(out)
    raise TypeError(f"metric {key!r} must be a real scalar, got {type(value).__name__}")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (or of ``<run_dir>/metrics.jsonl`` given a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
