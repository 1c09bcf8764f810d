"""Dark Room, the grid world of Algorithm Distillation (Laskin et al. 2022, arXiv 2210.14215,
App. "Dark Room") and of Decision-Pretrained Transformers (Lee et al. 2023, arXiv 2306.14892).

A task is a goal cell of a ``size x size`` grid. The agent sees only its own ``(x, y)`` cell,
never the goal; it gets reward 1 on every step that *ends* on the goal (after the move) and 0
otherwise. Episodes have a fixed length H and are truncated, never terminated; each one restarts
at the start cell. Moves that would leave the grid leave the agent where it is (clipping).

Two variants:

* **AD** (the defaults): 9x9, start at the centre (4, 4), H = 20, goal uniform over the 80
  non-centre cells (a goal on the start cell would need no exploration).
* **DPT** (:meth:`DarkRoomConfig.dpt`): 10x10, start at the corner (0, 0), H = 100, goal
  uniform over all 100 cells (the start cell included), 40 episodes in DPT's online evaluation.
  DPT trains on 80 goals and tests on the other 20; ``goal_split`` ``"train"`` / ``"test"``
  reproduces that split exactly (jon--lee/decision-pretrained-transformer ``collect_data.py``:
  the cells ``(x, y)`` in row-major order ``x * size + y``, shuffled by
  ``numpy.random.RandomState(0)``, the first ``int(0.8 * size**2)`` are train), for any size.

Actions (5, :data:`ACTION_NAMES`): 0 no-op, 1 up (y + 1), 2 down (y - 1), 3 left (x - 1),
4 right (x + 1). DPT's order (``envs/darkroom_env.py``: 0 x + 1, 1 x - 1, 2 y + 1, 3 y - 1,
4 stay) is ours (4, 3, 1, 2, 0). Invalid actions (< 0 or >= 5; an LLM's unparseable reply is
``-1``) act as the no-op.

Observations are (n, 2) floats, the agent's ``(x, y)``, in ``[0, size - 1]``.

Example:
    >>> dist = DarkRoomConfig().make()
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(3, g)            # goals (3, 2) long, never (4, 4)
    >>> state, obs = dist.reset(tasks, g)          # obs (3, 2): [4., 4.] everywhere
    >>> step = dist.step(tasks, state, torch.tensor([4, 0, -1]), g)
    >>> step.obs
    tensor([[5., 4.],
            [4., 4.],
            [4., 4.]])
    >>> dist.optimal_episode_return(tasks).shape   # H - d + 1 for a goal at distance d
    torch.Size([3])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from classic.core import Box, Discrete, Step, TaskDistribution
from classic.registry import TASKS

#: Names of the 5 actions, by index.
ACTION_NAMES: tuple[str, ...] = ("no-op", "up", "down", "left", "right")
#: (dx, dy) of each action, by index.
_MOVES = ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0))

Start = Literal["center", "corner"]
GoalSplit = Literal["all", "train", "test"]


class DarkRoomTasks(NamedTuple):
    """A batch of Dark Room tasks.

    Attributes:
        goal: (n, 2) long goal cell ``(x, y)``.
    """

    goal: Tensor


class DarkRoomState(NamedTuple):
    """Environment state of a batch of Dark Room episodes.

    Attributes:
        pos: (n, 2) long the agent's cell ``(x, y)``.
        t: (n,) long steps already taken in the current episode, in [0, H].
    """

    pos: Tensor
    t: Tensor


@functools.lru_cache(maxsize=None)
def dpt_goal_split(size: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """DPT's held-out goal split of a ``size x size`` grid: ``(train, test)`` cells ``(x, y)``.

    As jon--lee/decision-pretrained-transformer ``collect_data.py`` (``darkroom_heldout``): every
    cell ``(x, y)`` in row-major order, rows shuffled by ``numpy.random.RandomState(0)`` (the
    legacy generator, whose stream numpy keeps fixed), the first ``int(0.8 * size**2)`` train and
    the rest test. Disjoint, and together every cell.
    """
    import numpy as np

    cells = np.array([[(x, y) for y in range(size)] for x in range(size)]).reshape(-1, 2)
    np.random.RandomState(seed=0).shuffle(cells)
    cut = int(0.8 * len(cells))
    as_tuples = lambda a: tuple((int(x), int(y)) for x, y in a)  # noqa: E731
    return as_tuples(cells[:cut]), as_tuples(cells[cut:])


def start_cell(size: int, start: str) -> tuple[int, int]:
    """The start cell: ``(size // 2, size // 2)`` for "center", ``(0, 0)`` for "corner"."""
    if start == "center":
        return (size // 2, size // 2)
    if start == "corner":
        return (0, 0)
    raise ValueError(f"start must be 'center' or 'corner', got {start!r}")


def goal_cells(size: int, start: str = "center", goal_split: str = "all",
               goal_at_start: bool = False) -> tuple[tuple[int, int], ...]:
    """The goal cells ``(x, y)`` tasks are drawn from (uniformly), in a fixed order.

    Args:
        size: grid side.
        start: "center" or "corner" (the start cell is left out unless ``goal_at_start``).
        goal_split: "all" cells, or DPT's "train" / "test" part (:func:`dpt_goal_split`).
        goal_at_start: whether the start cell may be the goal.

    Raises:
        ValueError: an unknown ``goal_split`` or ``start``, or no cell left.
    """
    if goal_split == "all":
        cells = tuple((x, y) for x in range(size) for y in range(size))
    elif goal_split in ("train", "test"):
        train, test = dpt_goal_split(size)
        cells = train if goal_split == "train" else test
    else:
        raise ValueError(f"goal_split must be 'all', 'train' or 'test', got {goal_split!r}")
    s = start_cell(size, start)
    if not goal_at_start:
        cells = tuple(c for c in cells if c != s)
    if not cells:
        raise ValueError(f"no goal cell left for size={size}, start={start!r}, goal_split={goal_split!r}")
    return cells


@TASKS.register("darkroom")
@dataclass(frozen=True)
class DarkRoomConfig:
    """Task configuration of Dark Room (defaults: AD's variant; :meth:`dpt` for DPT's).

    Attributes:
        name: registry name.
        size: grid side (>= 2).
        episode_length: H, steps per episode (>= 1); every episode is truncated at H.
        episodes_per_trial: episodes per trial (>= 1).
        start: "center" (``(size // 2, size // 2)``, AD) or "corner" (``(0, 0)``, DPT).
        goal_split: "all" cells, or DPT's held-out split: "train" (80% of the cells) for
            meta-training and "test" (the other 20%) for evaluation.
        goal_at_start: whether the start cell may be the goal (AD: no; DPT: yes).

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    name: str = "darkroom"
    size: int = 9
    episode_length: int = 20
    episodes_per_trial: int = 10
    start: Start = "center"
    goal_split: GoalSplit = "all"
    goal_at_start: bool = False

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"size must be >= 2, got {self.size}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")
        if self.start not in ("center", "corner"):
            raise ValueError(f"start must be 'center' or 'corner', got {self.start!r}")
        if self.goal_split not in ("all", "train", "test"):
            raise ValueError(f"goal_split must be 'all', 'train' or 'test', got {self.goal_split!r}")
        goal_cells(self.size, self.start, self.goal_split, self.goal_at_start)  # raises if empty

    @classmethod
    def dpt(cls, **overrides: Any) -> "DarkRoomConfig":
        """DPT's variant (arXiv 2306.14892; ``run_darkroom.sh``: ``--dim 10 --H 100``): 10x10,
        start (0, 0), H = 100, goals over all cells, 40 episodes per trial (its online
        evaluation, ``Heps = 40``). ``overrides`` replace fields, e.g. ``goal_split="test"``."""
        base = cls(size=10, episode_length=100, episodes_per_trial=40, start="corner", goal_at_start=True)
        return replace(base, **overrides)

    def describe(self, short: bool = False) -> str:
        """One line for reports, e.g. "Dark Room 9x9, start center, H=20 steps, n=10 episodes per trial, 80 goals"."""
        k = len(goal_cells(self.size, self.start, self.goal_split, self.goal_at_start))
        split = "" if self.goal_split == "all" else f" ({self.goal_split} split)"
        if short:
            return f"{self.size}x{self.size}{split}, H={self.episode_length}, n={self.episodes_per_trial}"
        return (f"Dark Room {self.size}x{self.size}, start {self.start}, {k} goals{split}, "
                f"H={self.episode_length} steps per episode, n={self.episodes_per_trial} episodes per trial")

    def make(self) -> "DarkRoom":
        return DarkRoom(size=self.size, episode_length=self.episode_length, start=self.start,
                        goal_split=self.goal_split, goal_at_start=self.goal_at_start)


class DarkRoom(TaskDistribution):
    """Batched Dark Room task distribution (AD, arXiv 2210.14215; DPT, arXiv 2306.14892).

    Args:
        size: grid side (>= 2).
        episode_length: H, steps per episode (>= 1).
        start: "center" or "corner".
        goal_split: "all", "train" or "test" (:func:`goal_cells`).
        goal_at_start: whether the start cell may be the goal.

    Rewards are 0/1 per step, deterministic given the task; returns are in [0, H]. All
    randomness (only the goal draw) comes from the ``torch.Generator`` passed in.
    """

    num_actions = 5

    def __init__(self, size: int = 9, episode_length: int = 20, start: str = "center", goal_split: str = "all",
                 goal_at_start: bool = False) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.size = int(size)
        self.episode_length = int(episode_length)
        self.start = start
        self.goal_split = goal_split
        self.goal_at_start = bool(goal_at_start)
        self.start_cell = start_cell(self.size, start)
        self.goals = torch.tensor(goal_cells(self.size, start, goal_split, goal_at_start), dtype=torch.long)
        self.action_space = Discrete(5)
        self.observation_space = Box(low=0.0, high=float(self.size - 1), shape=(2,))
        self._moves = torch.tensor(_MOVES, dtype=torch.long)

    # ----------------------------------------------------------------------------- sampling
    def sample_tasks(self, n: int, generator: torch.Generator) -> DarkRoomTasks:
        """Draw ``n`` goals (n, 2) long uniformly from :attr:`goals`, on the generator's device."""
        dev = generator.device
        idx = torch.randint(self.goals.shape[0], (n,), generator=generator, device=dev)
        return DarkRoomTasks(goal=self.goals.to(dev)[idx])

    # ------------------------------------------------------------------------------ dynamics
    def reset(self, tasks: DarkRoomTasks, generator: torch.Generator | None = None) -> tuple[DarkRoomState, Tensor]:
        """Start an episode at the start cell on every task.

        Returns:
            (DarkRoomState with pos (n, 2) the start cell and t = 0, obs (n, 2) float). Uses no randomness.
        """
        n, dev = tasks.goal.shape[0], tasks.goal.device
        pos = torch.tensor(self.start_cell, dtype=torch.long, device=dev).expand(n, 2).clone()
        return DarkRoomState(pos=pos, t=torch.zeros(n, dtype=torch.long, device=dev)), pos.float()

    def _move(self, state: DarkRoomState, action: Tensor) -> Tensor:
        """(n, 2) long cell after ``action``; invalid actions are the no-op, walls clip."""
        a = torch.where(self.action_space.contains(action), action, torch.zeros_like(action)).long()
        delta = self._moves.to(state.pos.device)[a.to(state.pos.device)]
        return (state.pos + delta).clamp(0, self.size - 1)

    def mean_reward(self, tasks: DarkRoomTasks, state: DarkRoomState, action: Tensor) -> Tensor:
        """(n,) reward of ``action`` in ``state`` (deterministic): 1 if it ends on the goal, else 0."""
        return (self._move(state, action) == tasks.goal).all(dim=-1).float()

    def step(self, tasks: DarkRoomTasks, state: DarkRoomState, action: Tensor,
             generator: torch.Generator | None = None) -> Step:
        """Take ``action`` (n,) long in every task.

        Returns:
            Step with obs (n, 2) the new cell, reward (n,) 1.0 where it is the goal, terminated all
            False, truncated where the new step count t equals H.
        """
        pos = self._move(state, action)
        t = state.t + 1
        return Step(
            obs=pos.float(),
            reward=(pos == tasks.goal).all(dim=-1).float(),
            terminated=torch.zeros_like(t, dtype=torch.bool),
            truncated=t >= self.episode_length,
            state=DarkRoomState(pos=pos, t=t),
        )

    # ------------------------------------------------------------------------------- oracle
    def optimal_action(self, tasks: DarkRoomTasks, state: DarkRoomState) -> Tensor:
        """(n,) long the known-goal oracle's action: toward the goal along x, then along y, then stay."""
        dx = tasks.goal[:, 0] - state.pos[:, 0]
        dy = tasks.goal[:, 1] - state.pos[:, 1]
        a = torch.zeros_like(dx)
        a = torch.where(dy < 0, torch.full_like(a, 2), a)
        a = torch.where(dy > 0, torch.full_like(a, 1), a)
        a = torch.where(dx < 0, torch.full_like(a, 3), a)
        a = torch.where(dx > 0, torch.full_like(a, 4), a)
        return a

    def optimal_episode_return(self, tasks: DarkRoomTasks) -> Tensor:
        """(n,) return of the known-goal oracle: a shortest path (d = Manhattan distance from the
        start to the goal steps), then stay, so reward 1 at steps d, ..., H:
        ``max(0, H - max(d, 1) + 1)`` (H when the goal is the start cell). No policy does better:
        the goal cannot be reached before step d, and a step earns at most 1."""
        s = torch.tensor(self.start_cell, dtype=torch.long, device=tasks.goal.device)
        d = (tasks.goal - s).abs().sum(dim=-1)
        return (self.episode_length - d.clamp(min=1) + 1).clamp(min=0).float()
