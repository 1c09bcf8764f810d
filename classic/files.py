"""Files a run writes, written so that nothing is lost: run folders only ever inside the output
root, and every file replaced whole or not at all.

* :func:`check_run_name`: a run name is one plain folder name (``name: ''`` or ``'.'`` with
  ``output.overwrite`` would otherwise remove the whole output root, ``'..'`` its parent, and
  ``'../x'`` or an absolute name would write outside it).
* :func:`lock_run`: one process at a time per run folder (two runs into one folder would interleave
  their files; an ``overwrite`` would remove a running run's folder).
* :func:`open_stage`: a finished or half-done stage is reused or resumed only when it was made with
  the same settings (its fingerprint), else redone.
* :func:`write_atomic` / :func:`save_figure`: write to a temporary file beside the target, then
  ``os.replace`` it (atomic on POSIX within one file system), so a kill or a full disk leaves the
  previous file, never a truncated one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from classic.distributed import is_main_process


class RunFolderError(RuntimeError):
    """The run folder cannot be used: held by another process, or not writable. The CLI prints
    the message as one line and exits with 2."""


_HELD_LOCKS: dict[str, int] = {}  # lock file -> open descriptor, held until this process exits


def lock_run(root: str | os.PathLike, name: str) -> Path:
    """Hold an exclusive lock on run ``name`` under ``root`` for the rest of this process (the lock
    file ``root/.<name>.lock`` sits beside the run folder, so removing the folder keeps it). Taking
    a lock this process already holds is a no-op.

    Raises:
        RunFolderError: another process holds it, or ``root`` cannot be written.
    """
    import fcntl

    path = Path(root) / f".{check_run_name(name)}.lock"
    key = os.path.abspath(path)
    if key in _HELD_LOCKS:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFolderError(f"output.root {root}: cannot write there ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderError(
            f"run {name!r} in {root} is in use by another process (lock {path}): wait for it or choose another name"
        ) from None
    _HELD_LOCKS[key] = fd
    return path


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name, else ValueError.

    Raises:
        ValueError: for an empty name, ``.`` or ``..``, a name with a path separator, an absolute
            name, or one with leading or trailing whitespace.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or os.path.isabs(name)
        or name != name.strip()
        or "\0" in name
    ):
        raise ValueError(
            f"name {name!r}: a run name must be one folder name inside output.root (not empty, not '.' or '..', no '/')"
        )
    return name


def run_folder(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` after :func:`check_run_name`, checked to lie strictly inside ``root``.

    Raises:
        ValueError: when the name is not a plain folder name, or the folder resolves outside
            ``root`` (e.g. through a symbolic link named ``name``).
    """
    run_dir = Path(root) / check_run_name(name)
    resolved_root = Path(root).resolve()
    if resolved_root not in run_dir.resolve().parents:
        raise ValueError(f"run folder {run_dir} resolves to {run_dir.resolve()}, outside output.root {resolved_root}")
    return run_dir


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (the parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` whole or not at all (a learner's training state to resume from)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` to ``path`` whole or not at all (a kill while plotting leaves no 0-byte PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        fig.savefig(tmp, format=savefig_kwargs.pop("format", path.suffix.lstrip(".") or "png"), **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: Fields that change how often a stage logs or saves, not what it computes.
_COSMETIC = frozenset({"logging_steps", "save_steps", "progress"})


def canonical(value):
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0])) if k not in _COSMETIC}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def open_stage(stage_dir: str | os.PathLike, fingerprint: dict, main: bool = True, barrier=None, on_new=None) -> Path:
    """Make ``stage_dir`` belong to ``fingerprint`` (what the stage computes from: its config, the
    task, the model, the upstream stages' fingerprints), before anything in it is reused or resumed.

    A stage folder made with another fingerprint, or before fingerprints were written (no
    ``stage.json``), is removed: its finished output and its checkpoints belong to other settings
    (a rerun with ``--set task.num_arms=3`` would otherwise evaluate the 5-action policy). Then
    ``stage.json`` is written. Logging and checkpoint frequencies are not part of a fingerprint.

    Args:
        stage_dir: the stage's folder (e.g. ``run/rl2``, ``run/grpo``).
        fingerprint: a JSON-able mapping.
        main: whether this process owns the run's files (the others only wait).
        barrier: called after the main process has settled the folder, so that no rank checks
            for a finished output before a stale one is gone (e.g. accelerate's
            ``PartialState().wait_for_everyone``).
        on_new: called by the main process when the stage starts from scratch (no folder made
            with this fingerprint), e.g. to drop a redone stage's old curve from the metrics
            (:meth:`classic.metrics.MetricsLogger.forget`).

    Returns:
        ``stage_dir`` as a Path.
    """
    stage_dir = Path(stage_dir)
    want = canonical(dict(fingerprint))
    if main:
        marker = stage_dir / "stage.json"
        if stage_dir.exists():
            try:
                have = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                have = None
            if have != want:
                shutil.rmtree(stage_dir)
        if not marker.exists() and on_new is not None:
            on_new()
        write_atomic(marker, json.dumps(want, indent=1) + "\n")
    if barrier is not None:
        barrier()
    return stage_dir


def adopt_stage(stage_dir: str | os.PathLike, fingerprint: dict) -> None:
    """Mark a stage folder written before fingerprints existed as made with ``fingerprint``, for
    callers that have checked that themselves (the RL² tables keep their own per-setting
    fingerprints); a folder that already has a ``stage.json`` is left as it is."""
    stage_dir = Path(stage_dir)
    if stage_dir.is_dir() and not (stage_dir / "stage.json").exists():
        write_atomic(stage_dir / "stage.json", json.dumps(canonical(dict(fingerprint)), indent=1) + "\n")


@dataclass
class OutputConfig:
    """Where a run writes: ``<root>/<name>/``.

    Attributes:
        root: parent directory of runs.
        overwrite: start from scratch even if the run directory holds finished stages
            (by default finished stages are reused and interrupted trainings resume).
    """

    root: str = "runs"
    overwrite: bool = False


def prepare_run_dir(name: str, out: OutputConfig) -> Path:
    """``out.root / name``, created; with ``out.overwrite`` an existing one is removed first, by the
    main process only (:func:`classic.distributed.is_main_process`): the other ranks of a
    multi-process run must meet it at a barrier before writing there.

    Raises:
        ValueError: when ``name`` is not one plain folder name inside ``out.root``
            (:func:`classic.files.run_folder`): nothing outside the run's own folder is removed
            or written.
        RunFolderError: another process runs into the same folder (:func:`classic.files.lock_run`),
            or the folder cannot be made.
    """
    run_dir = run_folder(out.root, name)
    if is_main_process():
        lock_run(out.root, name)  # before removing anything: a running run's folder is never removed
        try:
            if out.overwrite and run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(
                f"output.root {out.root}: cannot make the run folder {run_dir} ({err.strerror or err})"
            ) from None
    return run_dir
