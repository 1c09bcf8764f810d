"""Tabular Q-learning within a trial: a classic RL algorithm as a baseline, and the source whose
learning histories Algorithm Distillation distils (Laskin et al. 2022, arXiv 2210.14215).

The agent starts each trial from a fresh table ``Q[s, a] = q_init`` and learns across the trial's
episodes by Watkins's update (Watkins & Dayan 1992; Sutton & Barto 2018, Eq. 6.8):

    Q[s, a] <- Q[s, a] + alpha * (r + gamma * (1 - terminated) * max_a' Q[s', a'] - Q[s, a])

acting epsilon-greedily (ties broken uniformly at random). An optimistic ``q_init`` (e.g.
``1 / (1 - gamma)`` for rewards in [0, 1]) drives systematic exploration. The last step of an
episode does not bootstrap (``max Q[s']`` taken as 0, for truncation too): the agent's next
observation is the next episode's start, not the state the step reached.

States must be tabular: observations that are one-hot vectors (tabular MDPs) or integer
coordinates in a :class:`~classic.core.Box` (Dark Room's ``(x, y)``), mapped to ``0 .. S - 1``
by :func:`state_index`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig, needs
from classic.core import Box, Discrete, TaskDistribution
from classic.registry import AGENTS


def num_states(dist: TaskDistribution) -> int | None:
    """S for a distribution with tabular observations (see :func:`state_index`), else None."""
    if getattr(dist, "num_states", None) is not None and dist.obs_dim == dist.num_states:  # one-hot states
        return int(dist.num_states)
    space = getattr(dist, "observation_space", None)
    if isinstance(space, Box) and float(space.low) == int(space.low) and float(space.high) == int(space.high):
        return int(space.high - space.low + 1) ** int(dist.obs_dim)
    return None


def state_index(obs: Tensor, dist: TaskDistribution) -> Tensor:
    """(n,) long state index of tabular observations (n, obs_dim): the argmax of a one-hot vector,
    or the mixed-radix number of integer Box coordinates (``x * size + y`` on Dark Room)."""
    space = getattr(dist, "observation_space", None)
    if isinstance(space, Box) and not (getattr(dist, "num_states", None) == dist.obs_dim):
        base = int(space.high - space.low + 1)
        digits = (obs - float(space.low)).round().long()
        index = torch.zeros(obs.shape[0], dtype=torch.long, device=obs.device)
        for d in range(obs.shape[-1]):
            index = index * base + digits[:, d]
        return index
    return obs.argmax(-1)


class QLearningAgent:
    """Batched tabular Q-learning, one table per task, reset at each trial start.

    Args:
        dist: the task distribution (tabular observations, discrete actions).
        alpha: step size in (0, 1].
        gamma: discount in [0, 1).
        epsilon: probability of a uniformly random action.
        q_init: initial value of every entry (optimism).
    """

    name = "Q-learning"

    def __init__(self, dist: TaskDistribution, alpha: float, gamma: float, epsilon: float, q_init: float) -> None:
        self.dist = dist
        self.S, self.A = num_states(dist), int(dist.action_space.n)
        self.alpha, self.gamma, self.epsilon, self.q_init = float(alpha), float(gamma), float(epsilon), float(q_init)
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.q = torch.full((num_tasks, self.S, self.A), self.q_init)
        self.prev_state: Tensor | None = None
        self.prev_action: Tensor | None = None
        self.generator = generator

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        n = obs.shape[0]
        rows = torch.arange(n)
        state = state_index(obs, self.dist)
        if self.prev_state is not None:
            # The previous step led to this observation unless its episode ended; then this is the
            # next episode's start and the step does not bootstrap.
            bootstrap = self.q[rows, state].max(-1).values * (~(terminated | truncated)).float()
            target = prev_reward.float() + self.gamma * bootstrap
            s, a = self.prev_state, self.prev_action
            self.q[rows, s, a] += self.alpha * (target - self.q[rows, s, a])
        q = self.q[rows, state]  # (n, A)
        best = q == q.max(-1, keepdim=True).values
        noise = torch.rand(n, self.A, generator=self.generator)
        greedy = torch.where(best, noise, torch.full_like(noise, -1.0)).argmax(-1)  # random tie-break
        explore = torch.rand(n, generator=self.generator) < self.epsilon
        random = torch.randint(self.A, (n,), generator=self.generator)
        action = torch.where(explore, random, greedy)
        self.prev_state, self.prev_action = state, action
        return action


@AGENTS.register("Q-learning")
@dataclass
class QLearningConfig(BaselineConfig):
    """Tabular Q-learning across the episodes of a trial (tabular observations, discrete actions).

    Attributes:
        alpha: step size.
        gamma: discount.
        epsilon: exploration rate.
        q_init: initial Q-value (optimism in the face of uncertainty when high).
    """

    name: str = "Q-learning"
    alpha: float = 0.5
    gamma: float = 0.9
    epsilon: float = 0.05
    q_init: float = 1.0

    def make(self, dist: TaskDistribution, episodes_per_trial: int) -> QLearningAgent:
        if not isinstance(dist.action_space, Discrete) or num_states(dist) is None:
            raise needs("tabular observations (one-hot or integer coordinates) and discrete actions", self.name, dist)
        return QLearningAgent(dist, self.alpha, self.gamma, self.epsilon, self.q_init)
