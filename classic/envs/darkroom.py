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
    >>> import torch
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

from dataclasses import dataclass, replace
from typing import Any, Literal


from classic.envs.grid import GoalGrid, GridState, GridTasks
from classic.registry import TASKS

#: Names of the 5 actions, by index.
ACTION_NAMES: tuple[str, ...] = ("no-op", "up", "down", "left", "right")
#: (dx, dy) of each action, by index.
MOVES: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0))

Start = Literal["center", "corner"]
GoalSplit = Literal["all", "train", "test"]


DarkRoomTasks, DarkRoomState = GridTasks, GridState  # the shared grid containers (classic.envs.grid)


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


def goal_cells(
    size: int, start: str = "center", goal_split: str = "all", goal_at_start: bool = False
) -> tuple[tuple[int, int], ...]:
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
        return (
            f"Dark Room {self.size}x{self.size}, start {self.start}, {k} goals{split}, "
            f"H={self.episode_length} steps per episode, n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> "DarkRoom":
        return DarkRoom(
            size=self.size,
            episode_length=self.episode_length,
            start=self.start,
            goal_split=self.goal_split,
            goal_at_start=self.goal_at_start,
        )


class DarkRoom(GoalGrid):
    """Batched Dark Room task distribution (AD, arXiv 2210.14215; DPT, arXiv 2306.14892).

    Args:
        size: grid side (>= 2).
        episode_length: H, steps per episode (>= 1).
        start: "center" or "corner".
        goal_split: "all", "train" or "test" (:func:`goal_cells`).
        goal_at_start: whether the start cell may be the goal.

    Rewards are 0/1 per step, deterministic given the task; returns are in [0, H]. The dynamics,
    rewards and the known-goal oracle are :class:`~classic.envs.grid.GoalGrid`'s.
    """

    def __init__(
        self,
        size: int = 9,
        episode_length: int = 20,
        start: str = "center",
        goal_split: str = "all",
        goal_at_start: bool = False,
    ) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.start = start
        self.goal_split = goal_split
        self.goal_at_start = bool(goal_at_start)
        super().__init__(
            size,
            episode_length,
            start_cell(size, start),
            goal_cells(size, start, goal_split, goal_at_start),
            MOVES,
            goal_reward=1.0,
            step_reward=0.0,
        )
