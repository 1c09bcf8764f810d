"""Bernoulli multi-armed bandits as in RL² (Duan et al. 2016, arXiv 1611.02779, Sec. 4.1).

A task is a vector of ``k`` arm success probabilities ``p_i ~ U[0, 1]``. An episode is a single
pull; a trial is ``episodes_per_trial`` (n) pulls on one task. Invalid actions (an LLM's
unparseable reply is mapped to ``-1``) earn reward 0 and are counted by the evaluator.

Example:
    >>> dist = BernoulliBandit(num_arms=5)
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(4, g)
    >>> state, obs = dist.reset(tasks, g)
    >>> step = dist.step(tasks, state, torch.tensor([0, 1, 2, -1]), g)
    >>> step.reward.shape
    torch.Size([4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from classic.core import Box, Discrete, Step, TaskDistribution
from classic.registry import TASKS


class BanditTasks(NamedTuple):
    """A batch of Bernoulli bandit tasks.

    Attributes:
        probs: (n, k) float success probability of each arm.
    """

    probs: Tensor


class BanditState(NamedTuple):
    """Bandits are stateless within a task; kept for API symmetry.

    Attributes:
        t: (n,) long, pulls taken in the current episode (0 or 1).
    """

    t: Tensor


@TASKS.register("bandit")
@dataclass(frozen=True)
class BanditConfig:
    """Task configuration of the Bernoulli bandit distribution.

    Attributes:
        num_arms: k, number of arms (>= 2).
        episodes_per_trial: n, pulls per trial (>= 1).
        name: the registry name (``task: {name: bandit}`` in recipes).
    """

    num_arms: int = 5
    episodes_per_trial: int = 100
    name: str = "bandit"

    def describe(self, short: bool = False) -> str:
        """One line for reports, e.g. "Bernoulli bandit, k=5 arms, n=100 pulls per trial"."""
        if short:
            return f"k={self.num_arms}, n={self.episodes_per_trial}"
        return f"Bernoulli bandit, k={self.num_arms} arms, n={self.episodes_per_trial} pulls per trial"

    def __post_init__(self) -> None:
        if self.num_arms < 2:
            raise ValueError(f"num_arms must be >= 2, got {self.num_arms}")
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")

    def make(self) -> "BernoulliBandit":
        return BernoulliBandit(num_arms=self.num_arms)


class BernoulliBandit(TaskDistribution):
    """Batched Bernoulli bandit task distribution, p_i ~ U[0, 1] i.i.d. per arm.

    Args:
        num_arms: k, number of arms.

    Observation is a constant (n, 1) zero vector: a bandit has a single state.
    """

    episode_length = 1
    observation_space = Box(0.0, 0.0, (1,))

    def __init__(self, num_arms: int = 5) -> None:
        if num_arms < 2:
            raise ValueError(f"num_arms must be >= 2, got {num_arms}")
        self.num_arms = int(num_arms)
        self.num_actions = self.num_arms
        self.action_space = Discrete(self.num_arms)

    def sample_tasks(self, n: int, generator: torch.Generator) -> BanditTasks:
        """Draw ``n`` tasks; returns probs (n, k) ~ U[0, 1], on the generator's device."""
        return BanditTasks(probs=torch.rand(n, self.num_arms, generator=generator, device=generator.device))

    def reset(self, tasks: BanditTasks, generator: torch.Generator | None = None) -> tuple[BanditState, Tensor]:
        n, device = tasks.probs.shape[0], tasks.probs.device
        return BanditState(t=torch.zeros(n, dtype=torch.long, device=device)), torch.zeros(n, 1, device=device)

    def valid(self, action: Tensor) -> Tensor:
        """(n,) bool, whether each action indexes an arm."""
        return (action >= 0) & (action < self.num_arms)

    def mean_reward(self, tasks: BanditTasks, state: BanditState, action: Tensor) -> Tensor:
        """(n,) expected reward p_a of ``action`` (0 for invalid actions)."""
        ok = self.valid(action)
        p = tasks.probs.gather(1, action.clamp(0, self.num_arms - 1).unsqueeze(1)).squeeze(1)
        return torch.where(ok, p, torch.zeros_like(p))

    def step(self, tasks: BanditTasks, state: BanditState, action: Tensor, generator: torch.Generator) -> Step:
        """Pull ``action`` (n,) long; reward (n,) in {0, 1}; the episode always terminates."""
        p = self.mean_reward(tasks, state, action)
        u = torch.rand(p.shape, generator=generator, device=p.device)
        reward = (u < p).float()
        n = p.shape[0]
        done = torch.ones(n, dtype=torch.bool, device=p.device)
        return Step(
            obs=torch.zeros(n, 1, device=p.device),
            reward=reward,
            terminated=done,
            truncated=torch.zeros(n, dtype=torch.bool, device=p.device),
            state=BanditState(t=state.t + 1),
        )

    def optimal_action(self, tasks: BanditTasks, state: BanditState) -> Tensor:
        """(n,) long the best arm, argmax_i p_i."""
        return tasks.probs.argmax(dim=1)

    def sample_states(self, tasks: BanditTasks, generator: torch.Generator) -> tuple[BanditState, Tensor]:
        """The bandit's one state: a fresh episode (as :meth:`reset`)."""
        return self.reset(tasks, generator)

    def optimal_episode_return(self, tasks: BanditTasks) -> Tensor:
        """(n,) expected reward of the best arm, max_i p_i."""
        return tasks.probs.max(dim=1).values
