"""Which process of a multi-process launch this is (``accelerate launch``, ``torchrun``), read from
the environment the launchers set, so that run folders, configs, metrics and reports are written
once, by the main process, and every rank gets its own task stream.

Nothing here communicates: a barrier among ranks is the trainers' business (accelerate).
"""

from __future__ import annotations

import os


def process_index() -> int:
    """This process's global rank (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def num_processes() -> int:
    """Processes in the launch (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process owns the run folder and the reports (rank 0, or no launcher)."""
    return process_index() == 0
