"""The one agent interface the evaluator runs: baselines, RL² networks and LLMs alike."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Agent(Protocol):
    """A batched agent acting in ``num_tasks`` trials at once.

    ``reset`` starts a trial (memory cleared); ``act`` is called once per environment step with
    what happened at the previous step, so memory persists across episode boundaries within
    a trial (the RL² interface, Duan et al. 2016, arXiv 1611.02779).

    Args of ``act``:
        obs: (n, obs_dim) float observation.
        prev_action: (n,) long, previous action; -1 at the first step of a trial and for an
            invalid (unparseable) action.
        prev_reward: (n,) float, previous reward (0 at the first step).
        done: (n,) bool, whether the previous step ended an episode (True at the first step).

    Returns:
        (n,) long actions; -1 marks an invalid action (scored 0 by the environment).
    """

    name: str

    def reset(self, num_tasks: int, generator: torch.Generator) -> None: ...

    def act(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, done: Tensor) -> Tensor: ...
