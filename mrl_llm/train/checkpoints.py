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
    found = sorted(((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True)
    for _, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return str(path)
    return None
