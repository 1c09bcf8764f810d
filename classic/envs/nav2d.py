"""2D point navigation as in MAML (Finn et al. 2017, arXiv 1703.03400, Sec. 5.3).

A task is a goal position ``g ~ U[-0.5, 0.5]^2``. Every episode starts with the point at the
origin; an action is a velocity, clipped to ``[-0.1, 0.1]`` in each coordinate, and the point
moves by it: ``p' = p + clip(a)``. The reward is minus the L2 distance to the goal *after* the
move, ``-||p' - g||``; the episode terminates when both coordinates are strictly within 0.01 of
the goal (``|p'_i - g_i| < 0.01``) and is truncated after H = 100 steps. The observation is the
position ``p'``, shape (n, 2).

These are the settings of the reference implementation tristandeleu/pytorch-maml-rl
(``maml_rl/envs/navigation.py``, registered with ``max_episode_steps=100``), itself adapted from
cbfinn/maml_rl ``point_env_randgoal.py``.

Example:
    >>> dist = Nav2DConfig().make()
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(4, g)            # goals (4, 2)
    >>> state, obs = dist.reset(tasks, g)          # obs (4, 2) zeros
    >>> step = dist.step(tasks, state, torch.full((4, 2), 5.0), g)  # clipped to 0.1
    >>> step.obs[0]
    tensor([0.1000, 0.1000])
    >>> dist.optimal_episode_return(tasks).shape
    torch.Size([4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from classic.core import Box, Step, TaskDistribution
from classic.registry import TASKS


class Nav2DTasks(NamedTuple):
    """A batch of 2D navigation tasks.

    Attributes:
        goal: (n, 2) float goal position.
    """

    goal: Tensor


class Nav2DState(NamedTuple):
    """Environment state of a batch of 2D navigation episodes.

    Attributes:
        pos: (n, 2) float current position.
        t: (n,) long steps already taken in the current episode, in [0, H].
    """

    pos: Tensor
    t: Tensor


@TASKS.register("nav2d")
@dataclass(frozen=True)
class Nav2DConfig:
    """Task configuration of MAML's 2D point navigation (defaults: pytorch-maml-rl's
    ``2DNavigation-v0``).

    Attributes:
        name: registry name.
        episodes_per_trial: episodes per trial (>= 1); MAML's one-gradient-step protocol is one
            pre-update and one post-update episode.
        episode_length: H, the most steps per episode (>= 1).
        goal_low, goal_high: goals are uniform on ``[goal_low, goal_high]^2``.
        max_speed: actions are clipped to ``[-max_speed, max_speed]`` per coordinate (> 0).
        goal_tolerance: the episode terminates when both coordinates are strictly within this
            distance of the goal (>= 0).

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    name: str = "nav2d"
    episodes_per_trial: int = 2
    episode_length: int = 100
    goal_low: float = -0.5
    goal_high: float = 0.5
    max_speed: float = 0.1
    goal_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if not self.goal_low <= self.goal_high:
            raise ValueError(f"goal_low must be <= goal_high, got {self.goal_low} > {self.goal_high}")
        if not self.max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {self.max_speed}")
        if not self.goal_tolerance >= 0:
            raise ValueError(f"goal_tolerance must be >= 0, got {self.goal_tolerance}")

    def describe(self, short: bool = False) -> str:
        """One line for reports, e.g. "2D navigation, goals U[-0.5, 0.5]^2, speed <= 0.1, H=100 steps, n=2
        episodes per trial"."""
        if short:
            return f"2D nav, H={self.episode_length}, n={self.episodes_per_trial}"
        return (
            f"2D navigation, goals U[{self.goal_low:g}, {self.goal_high:g}]^2, speed <= {self.max_speed:g} per "
            f"coordinate, tolerance {self.goal_tolerance:g}, H={self.episode_length} steps per episode, "
            f"n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> "Nav2D":
        return Nav2D(
            episode_length=self.episode_length,
            goal_low=self.goal_low,
            goal_high=self.goal_high,
            max_speed=self.max_speed,
            goal_tolerance=self.goal_tolerance,
        )


class Nav2D(TaskDistribution):
    """Batched 2D point navigation (MAML, arXiv 1703.03400).

    Args:
        episode_length: H, the most steps per episode.
        goal_low, goal_high: goal box ``[goal_low, goal_high]^2``.
        max_speed: per-coordinate bound of the velocity action.
        goal_tolerance: termination radius per coordinate (strict ``<``, as the reference).

    Actions are (n, 2) floats, clipped into ``action_space = Box(-max_speed, max_speed, (2,))``
    (NaN counts as 0); observations are (n, 2) positions. Rewards are minus distances (<= 0), so
    returns are <= 0. Uses no randomness after ``sample_tasks``; the reward of a step is
    deterministic.
    """

    def __init__(
        self,
        episode_length: int = 100,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_speed: float = 0.1,
        goal_tolerance: float = 0.01,
    ) -> None:
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if not goal_low <= goal_high:
            raise ValueError(f"goal_low must be <= goal_high, got {goal_low} > {goal_high}")
        if not max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {max_speed}")
        if not goal_tolerance >= 0:
            raise ValueError(f"goal_tolerance must be >= 0, got {goal_tolerance}")
        self.episode_length = int(episode_length)
        self.goal_low, self.goal_high = float(goal_low), float(goal_high)
        self.max_speed = float(max_speed)
        self.goal_tolerance = float(goal_tolerance)
        self.action_space = Box(low=-self.max_speed, high=self.max_speed, shape=(2,))
        self.observation_space = Box(low=-float("inf"), high=float("inf"), shape=(2,))

    # ----------------------------------------------------------------------------- sampling
    def sample_tasks(self, n: int, generator: torch.Generator) -> Nav2DTasks:
        """Draw ``n`` goals (n, 2) ~ U[goal_low, goal_high]^2 on the generator's device."""
        u = torch.rand(n, 2, generator=generator, device=generator.device)
        return Nav2DTasks(goal=self.goal_low + (self.goal_high - self.goal_low) * u)

    # ------------------------------------------------------------------------------ dynamics
    def reset(self, tasks: Nav2DTasks, generator: torch.Generator | None = None) -> tuple[Nav2DState, Tensor]:
        """Start an episode at the origin on every task.

        Returns:
            (Nav2DState with pos = 0 (n, 2) and t = 0 (n,), obs (n, 2) zeros). Uses no randomness.
        """
        n, dev = tasks.goal.shape[0], tasks.goal.device
        pos = torch.zeros(n, 2, device=dev)
        return Nav2DState(pos=pos, t=torch.zeros(n, dtype=torch.long, device=dev)), pos.clone()

    def _move(self, state: Nav2DState, action: Tensor) -> Tensor:
        """(n, 2) position after the clipped velocity ``action``."""
        return state.pos + self.action_space.clip(action).to(state.pos.device)

    def mean_reward(self, tasks: Nav2DTasks, state: Nav2DState, action: Tensor) -> Tensor:
        """(n,) reward of ``action`` in ``state``: ``-||p + clip(a) - g||`` (deterministic)."""
        return -torch.linalg.vector_norm(self._move(state, action) - tasks.goal, dim=-1)

    def step(
        self, tasks: Nav2DTasks, state: Nav2DState, action: Tensor, generator: torch.Generator | None = None
    ) -> Step:
        """Move every point by its clipped velocity ``action`` (n, 2).

        Returns:
            Step with obs (n, 2) the new position, reward (n,) minus its distance to the goal,
            terminated where both coordinates are within ``goal_tolerance`` of the goal,
            truncated where the new step count t equals H.
        """
        pos = self._move(state, action)
        diff = pos - tasks.goal
        t = state.t + 1
        return Step(
            obs=pos.clone(),
            reward=-torch.linalg.vector_norm(diff, dim=-1),
            terminated=(diff.abs() < self.goal_tolerance).all(dim=-1),
            truncated=t >= self.episode_length,
            state=Nav2DState(pos=pos, t=t),
        )

    # ------------------------------------------------------------------------------- oracle
    def optimal_action(self, tasks: Nav2DTasks, state: Nav2DState) -> Tensor:
        """(n, 2) the known-goal oracle's action: ``clip(g - p)``, full speed toward the goal in
        each coordinate and exactly onto it when it is within reach."""
        return self.action_space.clip(tasks.goal - state.pos)

    def optimal_episode_return(self, tasks: Nav2DTasks) -> Tensor:
        """(n,) return of the known-goal oracle :meth:`optimal_action`, by a vectorised rollout
        of H steps through :meth:`step` (no reward after termination).

        The oracle is optimal: after k steps any policy has ``|p_i - g_i| >= max(0, |g_i| - k *
        max_speed)`` in each coordinate, and the oracle attains that bound in every coordinate at
        once. So it minimises the distance (maximises the reward) at every step and enters the
        termination box at the earliest possible step, after which rewards (all <= 0) stop.
        """
        state, _ = self.reset(tasks)
        total = torch.zeros(tasks.goal.shape[0], device=tasks.goal.device)
        alive = torch.ones_like(total, dtype=torch.bool)
        for _ in range(self.episode_length):
            step = self.step(tasks, state, self.optimal_action(tasks, state))
            total = total + torch.where(alive, step.reward, torch.zeros_like(step.reward))
            alive = alive & ~step.terminated
            state = step.state
            if not bool(alive.any()):
                break
        return total
