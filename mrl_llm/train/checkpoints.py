"""Which checkpoint a stage resumes from.

transformers' ``Trainer._save_checkpoint`` writes the model, the optimizer and scheduler, the RNG
states and, last, ``trainer_state.json``. A kill or a full disk in between leaves a
``checkpoint-N/`` without a valid ``trainer_state.json``; ``transformers.trainer_utils.
get_last_checkpoint`` would still pick it (the highest N), and every resume would then crash. Here
a checkpoint counts only once its state file is there and parses.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` under ``output_dir`` whose ``trainer_state.json`` exists and
    parses as JSON; None when there is none (or no folder)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True
    )
    for _, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def generator_state_callback(get_state, set_state):
    """A ``transformers.TrainerCallback`` that saves the project's own random streams with every
    checkpoint and restores them when training resumes from one, so a resumed run samples what
    the uninterrupted run would have (the trial GRPO's training-task stream and call counter, the
    meta-prover's and MRT-RL's prefix generators; the Trainer restores torch's global RNG itself).

    Args:
        get_state: ``() -> dict`` of tensors / ints to save (``torch.Generator.get_state()``...).
        set_state: ``dict -> None``, restoring them.

    Each process writes its own file, ``checkpoint-N/mrl_streams_rank<k>.pt``.
    """
    import torch
    from transformers import TrainerCallback

    class _GeneratorState(TrainerCallback):
        def _path(self, args, step: int) -> Path:
            return Path(args.output_dir) / f"checkpoint-{step}" / f"mrl_streams_rank{args.process_index}.pt"

        def on_save(self, args, state, control, **kwargs):
            path = self._path(args, state.global_step)
            if path.parent.is_dir():
                torch.save(get_state(), path)

        def on_train_begin(self, args, state, control, **kwargs):
            path = self._path(args, state.global_step)
            if state.global_step > 0 and path.is_file():
                set_state(torch.load(path, weights_only=True))

    return _GeneratorState()


def open_stage_on_every_rank(stage_dir: str | os.PathLike, fingerprint: dict, on_new=None) -> Path:
    """:func:`classic.files.open_stage` in a (possibly multi-process) accelerate run: the main process
    settles the folder (and calls ``on_new`` when the stage starts from scratch), every rank waits for
    it before looking for a finished output there."""
    from accelerate import PartialState

    from classic.files import open_stage

    state = PartialState()
    return open_stage(
        stage_dir, fingerprint, main=state.is_main_process, barrier=state.wait_for_everyone, on_new=on_new
    )
