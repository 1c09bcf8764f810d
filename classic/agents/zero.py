"""The zero-action baseline for Box action spaces: the action 0 at every step (on 2D navigation and
the point robot, standing still at the start), the "no control" bound of MAML's and PEARL's
navigation tasks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig, needs
from classic.core import Box, TaskDistribution
from classic.registry import AGENTS


class ZeroActionAgent:
    """The all-zeros action of a :class:`~classic.core.Box` space, (n, *shape), at every step."""

    name = "zero action"

    def __init__(self, space: Box) -> None:
        self.space = space

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        """Nothing to reset: the agent keeps no memory and draws no randomness."""

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        return self.space.empty(obs.shape[0], device=obs.device)


@AGENTS.register("zero action")
@dataclass
class ZeroActionConfig(BaselineConfig):
    """The zero action at every step (Box action spaces).

    Raises:
        ValueError: the task's actions are not a Box.
    """

    name: str = "zero action"

    def make(self, dist: TaskDistribution, episodes_per_trial: int) -> ZeroActionAgent:
        if not isinstance(dist.action_space, Box):
            raise needs("a Box action space", self.name, dist)
        return ZeroActionAgent(dist.action_space)
