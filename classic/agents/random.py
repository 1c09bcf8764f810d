"""The Random baseline on any task distribution: uniform actions from its action space.

On a Bernoulli bandit it is :class:`~classic.agents.bandit.RandomAgent` and on a tabular MDP
:class:`~classic.agents.mdp.RandomMDPAgent` (the agents the RL² tables were measured with, same
random draws); elsewhere :class:`UniformAgent`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig
from classic.core import Space, TaskDistribution
from classic.registry import AGENTS


class UniformAgent:
    """Uniform actions from a :class:`~classic.core.Discrete` or :class:`~classic.core.Box` space.

    Args:
        space: the action space.
    """

    name = "Random"

    def __init__(self, space: Space) -> None:
        self.space = space
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        return self.space.sample(obs.shape[0], self.generator)


@AGENTS.register("Random")
@dataclass
class RandomConfig(BaselineConfig):
    """Uniformly random actions (every task distribution)."""

    name: str = "Random"

    def make(self, dist: TaskDistribution, episodes_per_trial: int):
        from classic.envs.bandit import BernoulliBandit
        from classic.envs.tabular_mdp import TabularMDP

        if isinstance(dist, BernoulliBandit):
            from classic.agents.bandit import RandomAgent

            return RandomAgent(dist.num_arms)
        if isinstance(dist, TabularMDP):
            from classic.agents.mdp import make_mdp_baseline

            return make_mdp_baseline("Random", dist.num_states, dist.num_actions, dist.episode_length)
        return UniformAgent(dist.action_space)
