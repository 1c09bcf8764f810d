"""Files a run writes, written so that nothing is lost: run folders only ever inside the output
root, and every file replaced whole or not at all.

* :func:`check_run_name`: a run name is one plain folder name (``name: ''`` or ``'.'`` with
  ``output.overwrite`` would otherwise remove the whole output root, ``'..'`` its parent, and
  ``'../x'`` or an absolute name would write outside it).
* :func:`lock_run`: one process at a time per run folder (two runs into one folder would interleave
  their files; an ``overwrite`` would remove a running run's folder).
* :func:`write_atomic` / :func:`save_figure`: write to a temporary file beside the target, then
  ``os.replace`` it (atomic on POSIX within one file system), so a kill or a full disk leaves the
  previous file, never a truncated one.
"""

from __future__ import annotations

import os
from pathlib import Path


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
        raise RunFolderError(f"run {name!r} in {root} is in use by another process (lock {path}): wait for it "
                             "or choose another name") from None
    _HELD_LOCKS[key] = fd
    return path


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name, else ValueError.

    Raises:
        ValueError: for an empty name, ``.`` or ``..``, a name with a path separator, an absolute
            name, or one with leading or trailing whitespace.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or os.path.isabs(name) or name != name.strip() or "\0" in name):
        raise ValueError(f"name {name!r}: a run name must be one folder name inside output.root "
                         "(not empty, not '.' or '..', no '/')")
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
