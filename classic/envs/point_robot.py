"""PEARL's sparse point robot (Rakelly et al. 2019, arXiv 1903.08254).

A task is a goal on the upper half of the unit circle, ``g = (cos θ, sin θ)``. Every episode
starts with the point at the origin; an action is a displacement clipped to ``[-0.1, 0.1]`` in
each coordinate, ``p' = p + clip(a)``. The reward is *sparse*: with ``d = ||p' - g||``, it is
``1 - d`` inside the goal radius (``d <= 0.2``) and 0 outside, so an agent learns nothing from a
step until it has found the goal region; it must explore the half-circle, then return to the goal
it found in later episodes. Episodes run H = 20 steps and never terminate early.

These are the settings of katerakelly/oyster (``rlkit/envs/point_robot.py``, ``SparsePointEnv``:
the sparse reward is the dense ``-d`` zeroed outside ``goal_radius`` plus 1 inside it, with
``configs/sparse-point-robot.json``: ``goal_radius`` 0.2, ``max_path_length`` 20). There the goals
are ``n_tasks`` = 100 fixed angles ``linspace(0, π)`` shuffled with seed 1337, the first 80 for
training; here ``num_goals: null`` (default) draws θ ~ U[0, π] per task, and ``num_goals: 100``
with ``goal_split: train | test`` gives a fixed-goal split of the same shape (every 5th angle is a
test goal: 80 / 20, spread over the half-circle).

Example:
    >>> dist = PointRobotConfig().make()
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(4, g)                          # goals (4, 2) on the half-circle
    >>> bool((tasks.goal.norm(dim=-1) - 1).abs().max() < 1e-6)
    True
    >>> dist.optimal_episode_return(tasks).shape                 # the known-goal oracle
    torch.Size([4])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from classic.core import Step
from classic.envs.nav2d import Nav2D, Nav2DState, Nav2DTasks
from classic.registry import TASKS


@TASKS.register("point_robot")
@dataclass(frozen=True)
class PointRobotConfig:
    """Task configuration of PEARL's sparse point robot (defaults: oyster's ``sparse-point-robot``).

    Attributes:
        name: registry name.
        episodes_per_trial: episodes per trial (>= 1).
        episode_length: H, steps per episode (>= 1).
        goal_radius: the reward is ``1 - d`` within this distance of the goal, else 0 (> 0).
        max_speed: actions are clipped to ``[-max_speed, max_speed]`` per coordinate (> 0).
        num_goals: None: goal angle θ ~ U[0, π]; an int: the fixed angles ``linspace(0, π,
            num_goals)``, split by ``goal_split``.
        goal_split: with ``num_goals``: ``train`` (4 of every 5 angles), ``test`` (every 5th) or
            ``all``.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    name: str = "point_robot"
    episodes_per_trial: int = 3
    episode_length: int = 20
    goal_radius: float = 0.2
    max_speed: float = 0.1
    num_goals: int | None = None
    goal_split: Literal["train", "test", "all"] = "all"

    def __post_init__(self) -> None:
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if not self.goal_radius > 0:
            raise ValueError(f"goal_radius must be > 0, got {self.goal_radius}")
        if not self.max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {self.max_speed}")
        if self.num_goals is not None and self.num_goals < 5:
            raise ValueError(f"num_goals must be >= 5 (or null: continuous angles), got {self.num_goals}")
        if self.num_goals is None and self.goal_split != "all":
            raise ValueError("goal_split needs num_goals (a fixed set of goal angles to split)")

    def describe(self, short: bool = False) -> str:
        """One line for reports."""
        if short:
            return f"sparse point robot, H={self.episode_length}, n={self.episodes_per_trial}"
        goals = (
            "goal angle U[0, π]"
            if self.num_goals is None
            else f"{self.num_goals} goal angles ({self.goal_split} split)"
        )
        return (
            f"sparse point robot (PEARL), goals on the unit half-circle, {goals}, reward 1 - d within "
            f"{self.goal_radius:g}, speed <= {self.max_speed:g}, H={self.episode_length} steps per episode, "
            f"n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> "PointRobot":
        return PointRobot(self.episode_length, self.goal_radius, self.max_speed, self.num_goals, self.goal_split)


class PointRobot(Nav2D):
    """Batched sparse point robot: :class:`~classic.envs.nav2d.Nav2D`'s dynamics and oracle, goals on
    the half-circle, the sparse reward, no termination.

    Args:
        episode_length: H.
        goal_radius: radius of the rewarding region around the goal.
        max_speed: per-coordinate bound of the displacement action.
        num_goals, goal_split: see :class:`PointRobotConfig`.
    """

    def __init__(
        self,
        episode_length: int = 20,
        goal_radius: float = 0.2,
        max_speed: float = 0.1,
        num_goals: int | None = None,
        goal_split: str = "all",
    ) -> None:
        super().__init__(episode_length=episode_length, max_speed=max_speed, goal_tolerance=0.0)
        self.goal_radius = float(goal_radius)
        self.num_goals = num_goals
        self.goal_split = goal_split

    def goal_angles(self) -> Tensor | None:
        """The fixed goal angles of the split (None: continuous)."""
        if self.num_goals is None:
            return None
        angles = torch.linspace(0.0, math.pi, self.num_goals)
        test = torch.arange(self.num_goals) % 5 == 4
        return {"all": angles, "train": angles[~test], "test": angles[test]}[self.goal_split]

    def sample_tasks(self, n: int, generator: torch.Generator) -> Nav2DTasks:
        """Draw ``n`` goals (n, 2) on the unit half-circle (angles uniform, or from the split)."""
        angles = self.goal_angles()
        if angles is None:
            theta = math.pi * torch.rand(n, generator=generator, device=generator.device)
        else:
            idx = torch.randint(len(angles), (n,), generator=generator, device=generator.device)
            theta = angles.to(generator.device)[idx]
        return Nav2DTasks(goal=torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1))

    def sparse_reward(self, distance: Tensor) -> Tensor:
        """(n,) ``1 - d`` where ``d <= goal_radius``, else 0 (oyster's ``SparsePointEnv``)."""
        return torch.where(distance <= self.goal_radius, 1.0 - distance, torch.zeros_like(distance))

    def mean_reward(self, tasks: Nav2DTasks, state: Nav2DState, action: Tensor) -> Tensor:
        """(n,) reward of ``action`` in ``state`` (deterministic)."""
        return self.sparse_reward(torch.linalg.vector_norm(self._move(state, action) - tasks.goal, dim=-1))

    def step(
        self, tasks: Nav2DTasks, state: Nav2DState, action: Tensor, generator: torch.Generator | None = None
    ) -> Step:
        """Move every point by its clipped ``action`` (n, 2).

        Returns:
            Step with obs (n, 2) the new position, the sparse reward (n,), never terminated,
            truncated where the new step count equals H.
        """
        pos = self._move(state, action)
        t = state.t + 1
        return Step(
            obs=pos.clone(),
            reward=self.sparse_reward(torch.linalg.vector_norm(pos - tasks.goal, dim=-1)),
            terminated=torch.zeros_like(t, dtype=torch.bool),
            truncated=t >= self.episode_length,
            state=Nav2DState(pos=pos, t=t),
        )

    def episode_success(self, episode_returns: Tensor) -> Tensor:
        """(N, E) bool: the episode entered the goal region (the reward is >= 1 - goal_radius > 0
        there and 0 elsewhere, so a positive return is exactly a visit; PEARL's success metric)."""
        return episode_returns > 0

    def optimal_episode_return(self, tasks: Nav2DTasks) -> Tensor:
        """(n,) return of the known-goal oracle (``clip(g - p)`` every step, a rollout of H steps).

        Optimal for any reward that does not increase with the distance, this one included: after
        k steps the reachable positions are the box ``[-k s, k s]^2`` and the oracle is at the point of
        it closest to the goal (per coordinate), at every step at once (:meth:`Nav2D.optimal_episode_return`).
        """
        return super().optimal_episode_return(tasks)
