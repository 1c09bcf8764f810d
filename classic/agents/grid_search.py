"""Systematic search on goal-finding grid worlds (Dark Room, GridNavi): a hand-designed explorer
that remembers the trial, a strong baseline and a teacher whose trials an LLM or a sequence model
can be taught on.

Per task the agent keeps the set of cells it has stood on in the trial and, once seen, the goal
cell (the cell a step ended on when that step paid ``goal_reward``). Each step:

* the goal is known: move toward it (the known-goal oracle's action) and stay there;
* otherwise: move toward the nearest cell not yet visited (Manhattan distance: an open grid has no
  walls inside; ties broken uniformly at random, or with ``tie_break: fixed`` toward the lowest cell
  index ``x * size + y``), so each episode sweeps new cells from the start.

With fixed tie-breaks the sweep is the same in every task until the goal pays: the searcher's
trials then differ only in where the sweep stops, the lowest-entropy teacher for distillation
(an imitator need not infer the visited set from its context, only the episode it is in).

It is not the Bayes-optimal policy (that would plan the whole sweep over the remaining episodes),
but it never revisits a cell it has already ruled out except on the way to a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig, needs
from classic.core import TaskDistribution
from classic.registry import AGENTS


class GridSearchAgent:
    """Batched systematic search over a ``size x size`` grid of a :class:`~classic.envs.grid.GoalGrid`.

    Args:
        dist: the grid task distribution (its ``size``, move table and ``goal_reward``).
        tie_break: "random" (uniform among the nearest unvisited cells) or "fixed" (the lowest
            cell index among them).

    Raises:
        ValueError: an unknown ``tie_break``.
    """

    name = "Systematic search"

    def __init__(self, dist, tie_break: str = "random") -> None:
        if tie_break not in ("random", "fixed"):
            raise ValueError(f"tie_break must be 'random' or 'fixed', got {tie_break!r}")
        self.dist = dist
        self.tie_break = tie_break
        self.size = int(dist.size)
        self.moves = dist.moves.clone()  # (5, 2) (dx, dy) per action; action 0 is the no-op
        cells = torch.stack(torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij"), -1)
        self.cells = cells.reshape(-1, 2)  # (S, 2) cell (x, y) of index x * size + y
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.visited = torch.zeros(num_tasks, self.size * self.size, dtype=torch.bool)
        self.goal = torch.full((num_tasks, 2), -1, dtype=torch.long)
        self.prev_pos: Tensor | None = None

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        n = obs.shape[0]
        pos = obs.round().long()  # (n, 2)
        if self.prev_pos is not None:
            # The previous step ended on the goal iff it paid goal_reward; that cell is the previous
            # position moved by the previous action (the observation may be a new episode's start).
            a = prev_action.long().clamp(0, self.moves.shape[0] - 1)
            landed = (self.prev_pos + self.moves[a]).clamp(0, self.size - 1)
            paid = prev_reward.float() >= self.dist.goal_reward
            self.goal = torch.where(paid.unsqueeze(-1), landed, self.goal)
            self.visited[torch.arange(n), landed[:, 0] * self.size + landed[:, 1]] = True
        self.visited[torch.arange(n), pos[:, 0] * self.size + pos[:, 1]] = True
        known = self.goal[:, 0] >= 0
        # Target: the goal, else the nearest unvisited cell (tie_break); stay when none is left.
        dist = (self.cells.unsqueeze(0) - pos.unsqueeze(1)).abs().sum(-1).float()  # (n, S)
        if self.tie_break == "random":
            dist = dist + torch.rand(dist.shape, generator=self.generator) * 0.5
        score = torch.where(self.visited, torch.full_like(dist, float("inf")), dist)  # argmin: first of ties
        nearest = self.cells[score.argmin(-1)]
        target = torch.where(known.unsqueeze(-1), self.goal, nearest)
        target = torch.where(torch.isinf(score.min(-1).values).unsqueeze(-1) & ~known.unsqueeze(-1), pos, target)
        action = self._toward(pos, target)
        self.prev_pos = pos
        return action

    def _toward(self, pos: Tensor, target: Tensor) -> Tensor:
        """(n,) an action that reduces the Manhattan distance to ``target`` (the axis with the larger
        gap first; the no-op on the target)."""
        d = target - pos  # (n, 2)
        step = torch.zeros_like(d)
        along_x = d[:, 0].abs() >= d[:, 1].abs()
        step[:, 0] = torch.where(along_x, d[:, 0].sign(), torch.zeros_like(d[:, 0]))
        step[:, 1] = torch.where(along_x, torch.zeros_like(d[:, 1]), d[:, 1].sign())
        match = (self.moves.unsqueeze(0) == step.unsqueeze(1)).all(-1)  # (n, 5)
        return match.float().argmax(-1)


@AGENTS.register("Systematic search")
@dataclass
class GridSearchConfig(BaselineConfig):
    """Systematic search on goal-finding grids (Dark Room, GridNavi) (:class:`GridSearchAgent`).

    Attributes:
        tie_break: "random" (default) or "fixed" (lowest cell index among the nearest unvisited).
    """

    name: str = "Systematic search"
    tie_break: Literal["random", "fixed"] = "random"

    def make(self, dist: TaskDistribution, episodes_per_trial: int) -> GridSearchAgent:
        from classic.envs.grid import GoalGrid

        if not isinstance(dist, GoalGrid):
            raise needs("a goal-finding grid (darkroom, gridnavi)", self.name, dist)
        return GridSearchAgent(dist, self.tie_break)
