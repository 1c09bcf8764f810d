"""Posterior sampling on goal-finding grids (Dark Room, GridNavi): PSRL for a hidden goal cell,
and the policy a Bayes-optimal Decision-Pretrained Transformer follows when deployed.

The only unknown of a task is its goal cell. Under a uniform prior over the candidate cells the
posterior after any history is uniform over the candidates the history has not ruled out: a step
that ended on a cell without paying ``goal_reward`` rules that cell out, and a step that paid
reveals the goal (the posterior becomes a point mass). The agent acts optimally for a goal drawn
from that posterior (the known-goal oracle's move, :meth:`~classic.envs.grid.GoalGrid.optimal_action`:
along x first, then along y, then stay). Two choices make the classic algorithms:

* ``sampling: episode`` with ``context: episodes``: **PSRL** (Strens 2000; Osband, Russo & Van Roy
  2013, arXiv 1306.0940): one goal drawn per episode from the posterior at the episode's start,
  followed for the whole episode.
* ``sampling: step`` with ``context: episodes``: a fresh goal drawn at *every step* from the
  posterior at the episode's start. This is what DPT deployed online does with a Bayes-optimal
  model (Lee et al. 2023, arXiv 2306.14892, Sec. 4.2: the in-context dataset is the earlier
  episodes, the action sampled from ``M(a* | s, D)`` at every step; Bayes-optimal ``M`` is the
  posterior probability that ``a`` is the optimal action at ``s``, i.e. the oracle's action for a
  posterior draw of the goal), so its return is the ceiling of that deployment.
* ``context: steps`` folds each step's evidence into the posterior at once (the current episode in
  the context); with ``sampling: episode`` the goal is redrawn only when the evidence refutes it.

Not the Bayes-optimal policy (which plans the sweep); systematic search
(:mod:`classic.agents.grid_search`) explores better than any of these on an open grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig, needs
from classic.core import TaskDistribution
from classic.envs.grid import GoalGrid, GridState, GridTasks
from classic.registry import AGENTS

Sampling = Literal["episode", "step"]
Context = Literal["episodes", "steps"]
Prior = Literal["grid", "tasks"]


class GridPosteriorSamplingAgent:
    """Batched posterior sampling over the goal cell of a :class:`~classic.envs.grid.GoalGrid`.

    Args:
        dist: the grid task distribution (size, moves, start cell, ``goal_reward``, goal cells).
        sampling: "episode" (one goal per episode; redrawn when refuted under ``context: steps``)
            or "step" (a fresh goal every step).
        context: "episodes" (the posterior absorbs an episode's evidence when it ends) or "steps"
            (at every step).
        prior: "grid" (uniform over every cell, the start cell only if ``dist.goal_at_start``: the
            agent does not know which cells tasks use, e.g. DPT's held-out split) or "tasks"
            (uniform over the distribution's own goal cells, e.g. GridNavi's, whose start and its
            neighbours are never goals).

    Raises:
        ValueError: an unknown ``sampling``, ``context`` or ``prior``.
    """

    def __init__(self, dist, sampling: str = "episode", context: str = "episodes", prior: str = "grid") -> None:
        for key, value, allowed in (
            ("sampling", sampling, ("episode", "step")),
            ("context", context, ("episodes", "steps")),
            ("prior", prior, ("grid", "tasks")),
        ):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        self.dist, self.sampling, self.context = dist, sampling, context
        self.size = int(dist.size)
        cells = torch.stack(torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij"), -1)
        self.cells = cells.reshape(-1, 2)  # (S, 2) cell (x, y) of index x * size + y
        if prior == "tasks":
            support = torch.zeros(self.size * self.size, dtype=torch.bool)
            support[dist.goals[:, 0] * self.size + dist.goals[:, 1]] = True
        else:
            support = torch.ones(self.size * self.size, dtype=torch.bool)
            if not getattr(dist, "goal_at_start", False):
                sx, sy = dist.start_cell
                support[sx * self.size + sy] = False
        self.support = support  # (S,) the prior's candidate cells
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.candidates = self.support.expand(num_tasks, -1).clone()  # (n, S) posterior support, now
        self.episode_candidates = self.candidates.clone()  # (n, S) at the current episode's start
        self.target = torch.full((num_tasks, 2), -1, dtype=torch.long)  # (n, 2) the goal acted on
        self.prev_pos: Tensor | None = None

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        n = obs.shape[0]
        rows = torch.arange(n)
        pos = obs.round().long()  # (n, 2)
        new_episode = self.prev_pos is None or bool((terminated | truncated).all())
        if self.prev_pos is not None:
            # The previous step ended on the previous position moved by the previous action (the
            # observation may be the next episode's start): that cell paid (the goal) or is ruled out.
            a = prev_action.long().clamp(0, self.dist.moves.shape[0] - 1)
            landed = (self.prev_pos + self.dist.moves[a]).clamp(0, self.size - 1)
            index = landed[:, 0] * self.size + landed[:, 1]
            paid = prev_reward.float() >= self.dist.goal_reward
            self.candidates[rows, index] &= paid
            found = torch.zeros_like(self.candidates)
            found[rows, index] = True
            self.candidates = torch.where(paid.unsqueeze(-1), found, self.candidates)
        if new_episode:
            self.episode_candidates = self.candidates.clone()
        posterior = self.candidates if self.context == "steps" else self.episode_candidates
        redraw = torch.full((n,), self.sampling == "step" or new_episode)
        if self.sampling == "episode" and self.context == "steps" and not new_episode:
            redraw = ~posterior[rows, self.target[:, 0] * self.size + self.target[:, 1]]  # refuted
        empty = ~posterior.any(-1)  # the goal lies outside the prior's support: stay put
        weights = torch.where(empty.unsqueeze(-1), torch.ones_like(posterior), posterior).float()
        drawn = self.cells[torch.multinomial(weights, 1, generator=self.generator).squeeze(-1)]
        drawn = torch.where(empty.unsqueeze(-1), pos, drawn)
        self.target = torch.where(redraw.unsqueeze(-1), drawn, self.target)
        self.prev_pos = pos
        state = GridState(pos=pos, t=torch.zeros(n, dtype=torch.long))
        return self.dist.optimal_action(GridTasks(goal=self.target), state)


@AGENTS.register("Posterior sampling")
@dataclass
class GridPosteriorSamplingConfig(BaselineConfig):
    """Posterior sampling over the goal cell of a goal-finding grid (Dark Room, GridNavi):
    PSRL by default; ``sampling: step`` is a Bayes-optimal DPT as DPT deploys it
    (:class:`GridPosteriorSamplingAgent`).

    Attributes:
        sampling: "episode" or "step".
        context: "episodes" or "steps".
        prior: "grid" or "tasks".
    """

    name: str = "Posterior sampling"
    sampling: Sampling = "episode"
    context: Context = "episodes"
    prior: Prior = "grid"

    def make(self, dist: TaskDistribution, episodes_per_trial: int) -> GridPosteriorSamplingAgent:
        if not isinstance(dist, GoalGrid):
            raise needs("a goal-finding grid (darkroom, gridnavi)", self.name, dist)
        return GridPosteriorSamplingAgent(dist, self.sampling, self.context, self.prior)
