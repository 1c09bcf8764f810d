"""The functional, batched task-distribution interface shared by every agent.

Environments follow the gymnax style in torch: a *task* is an explicit tensor argument
(``Tasks``), never hidden inside ``reset``. A *trial* is ``episodes_per_trial`` episodes on
one task, with the agent's memory carried across episode boundaries (Duan et al. 2016,
arXiv 1611.02779). Every tensor leads with the batch dimension ``n`` (number of tasks).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class Step(NamedTuple):
    """Result of one environment step; every field leads with ``n``.

    Attributes:
        obs: (n, obs_dim) float observation after the step.
        reward: (n,) float reward of the step.
        terminated: (n,) bool, the episode reached a terminal state.
        truncated: (n,) bool, the episode hit its time limit (not terminal).
        state: the environment state after the step (distribution-specific).
    """

    obs: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    state: Any


@runtime_checkable
class TaskDistribution(Protocol):
    """A batched, functional distribution over tasks (MDPs).

    Attributes:
        num_actions: number of discrete actions.
        obs_dim: size of the observation vector.
        episode_length: H, steps per episode (1 for bandits).
    """

    num_actions: int
    obs_dim: int
    episode_length: int

    def sample_tasks(self, n: int, generator: torch.Generator) -> Any:
        """Draw ``n`` tasks; returns a container whose tensors lead with ``n``."""

    def reset(self, tasks: Any, generator: torch.Generator) -> tuple[Any, Tensor]:
        """Start an episode on every task; returns ``(state, obs)`` with obs (n, obs_dim)."""

    def step(self, tasks: Any, state: Any, action: Tensor, generator: torch.Generator) -> Step:
        """Take ``action`` (n,) long; invalid actions (< 0 or >= num_actions) are scored, never raised."""

    def optimal_episode_return(self, tasks: Any) -> Tensor:
        """(n,) expected return of the Bayes-free optimal policy that knows the task, per episode."""
