"""The shared dynamics of goal-finding grid worlds (GridNavi, Dark Room): a hidden goal cell of a
``size x size`` grid, 5 moves, a reward per step that ends on the goal, fixed-length episodes.

Subclasses give the start cell, the goal cells, the move table (their papers order the actions
differently) and the two reward values; this base does the rest: sampling, reset, moves with
walls, rewards, truncation at H and the known-goal oracle. It registers nothing itself.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from classic.core import Box, Discrete, Step, TaskDistribution


class GridTasks(NamedTuple):
    """A batch of grid tasks.

    Attributes:
        goal: (n, 2) long goal cell ``(x, y)``.
    """

    goal: Tensor


class GridState(NamedTuple):
    """Environment state of a batch of grid episodes.

    Attributes:
        pos: (n, 2) long current cell ``(x, y)``.
        t: (n,) long steps already taken in the current episode, in [0, H].
    """

    pos: Tensor
    t: Tensor


class GoalGrid(TaskDistribution):
    """Batched goal-finding grid world; observations are the agent's ``(x, y)`` as (n, 2) floats.

    Args:
        size: grid side.
        episode_length: H, steps per episode; episodes are truncated at H, never terminated.
        start: the start cell of every episode.
        goals: the cells a goal is drawn from (uniformly).
        moves: (dx, dy) of each action; action 0 must be the no-op (0, 0). Invalid actions
            (< 0 or >= len(moves)) act as the no-op; moves into a wall leave the agent in place.
        goal_reward: reward of a step that ends on the goal.
        step_reward: reward of any other step (< goal_reward).

    All randomness (only the goal draw) comes from the generator passed in.
    """

    num_actions = 5

    def __init__(
        self,
        size: int,
        episode_length: int,
        start: tuple[int, int],
        goals: Sequence[tuple[int, int]],
        moves: Sequence[tuple[int, int]],
        goal_reward: float,
        step_reward: float,
    ) -> None:
        if tuple(moves[0]) != (0, 0) or len(moves) != self.num_actions:
            raise ValueError(f"moves must list {self.num_actions} (dx, dy) with the no-op (0, 0) first, got {moves}")
        self.size = int(size)
        self.episode_length = int(episode_length)
        self.start_cell = tuple(start)
        self.goals = torch.tensor(goals, dtype=torch.long)
        self.goal_reward, self.step_reward = float(goal_reward), float(step_reward)
        self.action_space = Discrete(self.num_actions)
        self.observation_space = Box(low=0.0, high=float(self.size - 1), shape=(2,))
        self._moves = torch.tensor(moves, dtype=torch.long)
        self._action_of = {tuple(m): a for a, m in enumerate(moves)}

    @property
    def moves(self) -> Tensor:
        """(5, 2) long ``(dx, dy)`` of each action (action 0: the no-op)."""
        return self._moves

    def sample_tasks(self, n: int, generator: torch.Generator) -> GridTasks:
        """Draw ``n`` goals (n, 2) long uniformly from :attr:`goals`, on the generator's device."""
        dev = generator.device
        idx = torch.randint(self.goals.shape[0], (n,), generator=generator, device=dev)
        return GridTasks(goal=self.goals.to(dev)[idx])

    def reset(self, tasks: GridTasks, generator: torch.Generator | None = None) -> tuple[GridState, Tensor]:
        """Start an episode at the start cell on every task (no randomness).

        Returns:
            (GridState with pos (n, 2) the start cell and t (n,) zeros, obs (n, 2) float).
        """
        n, dev = tasks.goal.shape[0], tasks.goal.device
        pos = torch.tensor(self.start_cell, dtype=torch.long, device=dev).expand(n, 2).clone()
        return GridState(pos=pos, t=torch.zeros(n, dtype=torch.long, device=dev)), pos.float()

    def _move(self, state: GridState, action: Tensor) -> Tensor:
        """(n, 2) long cell after ``action``; invalid actions are the no-op, walls clip."""
        action = action.to(state.pos.device)
        a = torch.where(self.action_space.contains(action), action, torch.zeros_like(action)).long()
        return (state.pos + self._moves.to(state.pos.device)[a]).clamp(0, self.size - 1)

    def _reward(self, tasks: GridTasks, pos: Tensor) -> Tensor:
        on_goal = (pos == tasks.goal).all(dim=-1)
        return torch.where(on_goal, self.goal_reward, self.step_reward).float()

    def mean_reward(self, tasks: GridTasks, state: GridState, action: Tensor) -> Tensor:
        """(n,) reward of ``action`` in ``state`` (deterministic)."""
        return self._reward(tasks, self._move(state, action))

    def step(
        self, tasks: GridTasks, state: GridState, action: Tensor, generator: torch.Generator | None = None
    ) -> Step:
        """Take ``action`` (n,) long in every task.

        Returns:
            Step with obs (n, 2) float the new cell, reward (n,) ``goal_reward`` where the new cell
            is the goal and ``step_reward`` elsewhere, terminated all False, truncated where the new
            step count reaches H.
        """
        pos = self._move(state, action)
        t = state.t + 1
        return Step(
            obs=pos.float(),
            reward=self._reward(tasks, pos),
            terminated=torch.zeros_like(t, dtype=torch.bool),
            truncated=t >= self.episode_length,
            state=GridState(pos=pos, t=t),
        )

    def sample_states(self, tasks: GridTasks, generator: torch.Generator) -> tuple[GridState, Tensor]:
        """A uniformly random cell per task (episode step 0): ``(GridState, obs (n, 2) float)``."""
        n, dev = tasks.goal.shape[0], tasks.goal.device
        pos = torch.randint(self.size, (n, 2), generator=generator, device=generator.device).to(dev)
        return GridState(pos=pos, t=torch.zeros(n, dtype=torch.long, device=dev)), pos.float()

    def optimal_action(self, tasks: GridTasks, state: GridState) -> Tensor:
        """(n,) long the known-goal oracle's action: toward the goal along x, then along y, then stay."""
        dx = tasks.goal[:, 0] - state.pos[:, 0]
        dy = tasks.goal[:, 1] - state.pos[:, 1]
        a = torch.zeros_like(dx)
        for cond, move in ((dy < 0, (0, -1)), (dy > 0, (0, 1)), (dx < 0, (-1, 0)), (dx > 0, (1, 0))):
            a = torch.where(cond, torch.full_like(a, self._action_of[move]), a)
        return a

    def optimal_episode_return(self, tasks: GridTasks) -> Tensor:
        """(n,) return of the known-goal oracle: a shortest path of d steps (d = Manhattan distance
        from the start to the goal), then stay: ``goal_reward`` on the ``m = max(0, H - max(d, 1) + 1)``
        steps on the goal, ``step_reward`` on the others. No policy does better: the goal cannot be
        reached before step d, and ``goal_reward > step_reward``."""
        H = self.episode_length
        start = torch.tensor(self.start_cell, dtype=torch.long, device=tasks.goal.device)
        d = (tasks.goal - start).abs().sum(dim=-1)
        m = (H - d.clamp(min=1) + 1).clamp(min=0).double()
        return (m * self.goal_reward + (H - m) * self.step_reward).float()
