"""GridNavi, the grid world of VariBAD (Zintgraf et al. 2020, arXiv 1910.08348, Sec. 5.1).

A task is a goal cell of a ``size x size`` grid (5x5 in the paper). Every episode starts at the
corner ``(0, 0)`` and lasts H = 15 steps; a trial is 4 episodes on one goal (VariBAD's
``max_rollouts_per_task``). The goal is uniform over the cells other than the start and its
three neighbours ``(0, 1)``, ``(1, 0)``, ``(1, 1)`` (21 cells on 5x5). The agent sees only its
own cell; a step earns ``goal_reward`` (1.0) when it *ends* on the goal and ``step_reward``
(-0.1) otherwise. The goal is not terminal: the episode runs on to H (truncated, never
terminated) and the agent may stay on the goal. Moves that would leave the grid leave the agent
where it is (clipping).

Actions (5, :data:`ACTION_NAMES`), in the reference's order: 0 no-op, 1 up (y + 1), 2 right
(x + 1), 3 down (y - 1), 4 left (x - 1). Invalid actions (< 0 or >= 5; an LLM's unparseable
reply is ``-1``) act as the no-op.

Observations are (n, 2) floats, the agent's ``(x, y)``, in ``[0, size - 1]`` (the reference's
``Box(0, num_cells - 1, (2,))``).

Reference: lmzintgraf/varibad ``environments/navigation/gridworld.py`` (``GridNavi``,
registered as ``GridNavi-v0`` with ``num_cells=5, num_steps=15``) and
``config/gridworld/args_grid_varibad.py`` (``max_rollouts_per_task=4``). Deviations:

* VariBAD's multi-episode wrapper (``VariBadWrapper``, ``add_done_info``) appends a 0/1
  "episode done" flag to the observation when a trial has more than one episode; here the trial
  loop hands the agent ``terminated``/``truncated`` instead, so the observation is the bare cell.
* The reference excludes the four cells ``(0, 0), (0, 1), (1, 0), (1, 1)`` literally; here the
  same four cells are excluded for every ``size`` (>= 3, so that a goal cell is left).
* The reference hard-codes the rewards; here they are fields (``goal_reward > step_reward``).
* The reference's belief hint action (``action == 5``) does not exist in its action space
  (``Discrete(5)``) and is left out.

Bayes-optimal returns (:meth:`GridNavi.bayes_optimal_episode_returns`): exact, by a
branch-and-bound search (see :func:`bayes_optimal_search`). Defaults (5x5, H=15, 4 episodes):
``[4.0, 11.0714..., 11.0714..., 11.0714...]`` (the first episode finds a new candidate cell at
every step from step 2 on; the second reaches each of the 7 cells left at its shortest-path
time, so episodes 2-4 equal the known-goal oracle's mean, ``-1.5 + 1.1 * 240 / 21``), computed
in about 0.2 s on one core.

Example:
    >>> dist = GridNaviConfig().make()
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(3, g)            # goals (3, 2) long, never next to (0, 0)
    >>> state, obs = dist.reset(tasks, g)          # obs (3, 2): [0., 0.] everywhere
    >>> step = dist.step(tasks, state, torch.tensor([2, 1, -1]), g)
    >>> step.obs
    tensor([[1., 0.],
            [0., 1.],
            [0., 0.]])
    >>> step.reward                                # no goal next to the start
    tensor([-0.1000, -0.1000, -0.1000])
    >>> dist.bayes_optimal_episode_returns(4)
    tensor([ 4.0000, 11.0714, 11.0714, 11.0714], dtype=torch.float64)
"""

from __future__ import annotations

import functools
import itertools
import sys
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from classic.envs.grid import GoalGrid, GridState, GridTasks
from classic.registry import TASKS

#: Names of the 5 actions, by index (the reference's order).
ACTION_NAMES: tuple[str, ...] = ("no-op", "up", "right", "down", "left")
#: (dx, dy) of each action, by index.
_MOVES = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))
#: The start cell and the cells around it, never a goal (the reference's ``possible_goals``).
_NOT_GOALS = ((0, 0), (0, 1), (1, 1), (1, 0))


def goal_cells(size: int) -> tuple[tuple[int, int], ...]:
    """The candidate goal cells ``(x, y)``: every cell but the start ``(0, 0)`` and its
    neighbours ``(0, 1)``, ``(1, 0)``, ``(1, 1)``, in the reference's order
    (``itertools.product(range(size), repeat=2)``, i.e. row-major in ``x``)."""
    return tuple(c for c in itertools.product(range(size), repeat=2) if c not in _NOT_GOALS)


GridNaviTasks, GridNaviState = GridTasks, GridState  # the shared grid containers (classic.envs.grid)


@TASKS.register("gridnavi")
@dataclass(frozen=True)
class GridNaviConfig:
    """Task configuration of GridNavi (defaults: VariBAD's ``GridNavi-v0``, 4 episodes per trial).

    Attributes:
        name: registry name.
        size: grid side (>= 3, so that a goal cell is left).
        episode_length: H, steps per episode (>= 1); every episode is truncated at H.
        episodes_per_trial: episodes per trial (>= 1).
        goal_reward: reward of a step that ends on the goal.
        step_reward: reward of any other step (< goal_reward).

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    name: str = "gridnavi"
    size: int = 5
    episode_length: int = 15
    episodes_per_trial: int = 4
    goal_reward: float = 1.0
    step_reward: float = -0.1

    def __post_init__(self) -> None:
        _check(self.size, self.episode_length, self.goal_reward, self.step_reward)
        if (
            isinstance(self.episodes_per_trial, bool)
            or not isinstance(self.episodes_per_trial, int)
            or self.episodes_per_trial < 1
        ):
            raise ValueError(f"episodes_per_trial must be an int >= 1, got {self.episodes_per_trial!r}")

    def describe(self, short: bool = False) -> str:
        """One line for reports, e.g. "GridNavi 5x5, 21 goals, H=15 steps per episode, n=4 episodes per trial"."""
        if short:
            return f"{self.size}x{self.size}, H={self.episode_length}, n={self.episodes_per_trial}"
        return (
            f"GridNavi {self.size}x{self.size}, {len(goal_cells(self.size))} goals, "
            f"H={self.episode_length} steps per episode, n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> "GridNavi":
        return GridNavi(
            size=self.size,
            episode_length=self.episode_length,
            goal_reward=self.goal_reward,
            step_reward=self.step_reward,
        )


def _check(size: int, episode_length: int, goal_reward: float, step_reward: float) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 3:
        raise ValueError(f"size must be an int >= 3, got {size!r}")
    if isinstance(episode_length, bool) or not isinstance(episode_length, int) or episode_length < 1:
        raise ValueError(f"episode_length must be an int >= 1, got {episode_length!r}")
    if not float(goal_reward) > float(step_reward):
        raise ValueError(f"goal_reward must be > step_reward, got goal_reward={goal_reward}, step_reward={step_reward}")


class GridNavi(GoalGrid):
    """Batched GridNavi task distribution (VariBAD, arXiv 1910.08348).

    Args:
        size: grid side (>= 3).
        episode_length: H, steps per episode (>= 1).
        goal_reward: reward of a step that ends on the goal.
        step_reward: reward of any other step (< goal_reward).

    Rewards are deterministic given the task. The dynamics, rewards and the known-goal oracle are
    :class:`~classic.envs.grid.GoalGrid`'s; this class adds the exact Bayes-optimal return.
    """

    def __init__(
        self, size: int = 5, episode_length: int = 15, goal_reward: float = 1.0, step_reward: float = -0.1
    ) -> None:
        _check(size, episode_length, goal_reward, step_reward)
        super().__init__(size, episode_length, (0, 0), goal_cells(size), _MOVES, goal_reward, step_reward)

    def bayes_optimal_episode_returns(self, episodes_per_trial: int) -> Tensor:
        """(E,) float64 exact expected return of each of the ``E = episodes_per_trial`` episodes
        of a trial under the Bayes-optimal policy: the goal unknown and uniform over
        :attr:`goals`, the agent sees its cell and the reward, so each cell it enters is either
        the goal or ruled out; every episode restarts at ``(0, 0)``.

        The policy maximizes the expected return of the whole trial; among the policies that do,
        ties are broken lexicographically toward more expected return in earlier episodes
        (episode 1 first, then 2, ...). Computed by :func:`bayes_optimal_search` (exact) and
        cached per ``(size, H, E)``; about 0.2 s for the defaults (5x5, H=15, E=4), about 6 s for 6x6,
        H=15, E=4 (one core). The search is exponential in the worst case: much larger grids may
        not finish.
        """
        counts, num_goals, _ = bayes_optimal_search(self.size, self.episode_length, int(episodes_per_trial))
        H = self.episode_length
        g, s = Fraction(repr(self.goal_reward)), Fraction(repr(self.step_reward))
        returns = [H * s + (g - s) * Fraction(c, num_goals) for c in counts]
        return torch.tensor([float(r) for r in returns], dtype=torch.float64)

    def bayes_optimal_plan(self, episodes_per_trial: int) -> Tensor:
        """(E, H) long the Bayes-optimal policy's actions while the goal is not yet found.

        The policy: follow row ``k`` in episode ``k`` until a step ends on the goal; then stay
        (no-op) for the rest of that episode and go to the goal by a shortest path in every later
        episode (:meth:`optimal_action`). Its expected per-episode returns are
        :meth:`bayes_optimal_episode_returns` (same search, same tie-break).
        """
        _, _, plan = bayes_optimal_search(self.size, self.episode_length, int(episodes_per_trial))
        return torch.tensor(plan, dtype=torch.long).reshape(int(episodes_per_trial), self.episode_length)


@functools.lru_cache(maxsize=None)
def bayes_optimal_search(
    size: int, episode_length: int, episodes_per_trial: int
) -> tuple[tuple[int, ...], int, tuple[tuple[int, ...], ...]]:
    """Exact Bayes-optimal search of GridNavi: ``(counts, num_goals, plan)``.

    Why it is small: the only information is "this cell is (not) the goal", so before the goal
    is found the policy is one open-loop action sequence (the decision tree has one non-trivial
    branch), and the belief is uniform over the candidate cells not yet entered (only that set
    matters). Once the goal is found the rest is closed form: stay on it (``H - t + 1`` steps on
    the goal when found at step t) and, in each later episode, reach it by a shortest path
    (``v = H - d + 1`` steps on the goal, d its distance from the start). With
    ``goal_reward > step_reward`` every return is ``H * step_reward + (goal_reward - step_reward)
    * (steps on the goal)``, so the search maximizes the expected number of steps on the goal,
    counted unnormalized: ``N_j`` = sum over the candidate goals of the steps on the goal in
    episode j (an integer; the expectation is ``N_j / num_goals``).

    Search: depth-first over (cell, candidate cells not yet entered, step, episode), maximizing
    the key ``(sum_j N_j, N_1, ..., N_E)`` lexicographically (the trial's total first, then
    earlier episodes; the order is compatible with addition, so it is a proper dynamic program).
    Exact pruning:

    * no-ops and moves into a wall are skipped: moving a wasted step to the end of its episode
      finds every later goal one step earlier, so some optimal sequence has none (its key is at
      least as large in every component);
    * a state reached again with a key no larger than before is dropped (the futures are equal);
    * branch and bound on an upper bound of the key: in the current episode the j-th goal found
      is found no earlier than step ``t + max(j, j-th smallest distance to a candidate)``; a goal
      found in a later episode k' contributes at most ``(E - k' + 1) * v`` (its slot term is at
      most v), at most ``H - 1`` goals per episode, the largest v in the earliest episodes.

    Args:
        size, episode_length, episodes_per_trial: grid side (>= 3), H (>= 1), E (>= 1).

    Returns:
        counts: (E,) integers ``N_j``; num_goals: the number of candidate goals; plan: E tuples
        of H actions, the actions while the goal is not found (no-ops pad the end once every
        candidate is ruled out).
    """
    if episodes_per_trial < 1:
        raise ValueError(f"episodes_per_trial must be >= 1, got {episodes_per_trial}")
    _check(size, episode_length, 1.0, 0.0)
    S, H, E = size, episode_length, episodes_per_trial
    cells = [(x, y) for x in range(S) for y in range(S)]
    index = {c: i for i, c in enumerate(cells)}
    goals = [index[c] for c in goal_cells(S)]
    dist = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in cells] for a in cells]
    v = [max(0, H - max(dist[0][i], 1) + 1) for i in range(len(cells))]  # oracle's steps on goal i
    action_of = {(dx, dy): a for a, (dx, dy) in enumerate(_MOVES)}
    nbrs = []  # (next cell, action) of the in-grid moves
    for x, y in cells:
        nbrs.append(
            [
                (index[(x + dx, y + dy)], action_of[(dx, dy)])
                for dx, dy in _MOVES[1:]
                if 0 <= x + dx < S and 0 <= y + dy < S
            ]
        )
    start_mask = sum(1 << g for g in goals)

    def upper(p: int, R: int, t: int, k: int) -> tuple[int, int]:
        """Upper bounds on (future total, future N_k) from cell p, candidates R, step t of episode k."""
        left = [i for i in goals if R >> i & 1]
        dp = dist[p]
        reach = sorted(dp[i] for i in left if dp[i] <= H - t)
        cur = sum(H - t - max(j, reach[j - 1]) + 1 for j in range(1, min(H - t, len(reach)) + 1))
        vs = sorted((v[i] for i in left), reverse=True)
        total, i, cap, m = cur, 0, min(H - t, len(reach)) + H - 1, E - k
        while m > 0 and i < len(vs):
            total += m * sum(vs[i : i + cap])
            i, cap, m = i + cap, H - 1, m - 1
        return total, cur

    best: list = [None, None]  # key (tot, N_1..N_E), plan
    seen: dict = {}
    path: list[int] = []

    def finish(key: tuple) -> None:
        if best[0] is None or key > best[0]:
            best[0], best[1] = key, list(path)

    def dfs(p: int, R: int, t: int, k: int, key: tuple) -> None:
        if t == H:
            if k == E:
                return finish(key)
            p, t, k = 0, 0, k + 1
        if R == 0:
            return finish(key)
        state = (p, R, t, k)
        old = seen.get(state)
        if old is not None and old >= key:
            return
        seen[state] = key
        if best[0] is not None:
            u_tot, u_cur = upper(p, R, t, k)
            bound = (key[0] + u_tot, *key[1:k], key[k] + u_cur)  # later components: unbounded
            if bound < best[0][: k + 1] or (k == E and bound == best[0]):
                return
        # candidates first, then nearer the start (a good first incumbent)
        for q, a in sorted(nbrs[p], key=lambda qa: (not R >> qa[0] & 1, dist[qa[0]][0])):
            path.append(a)
            if R >> q & 1:
                gain = [0] * (E + 1)
                gain[k] = H - t  # found at step t + 1: on the goal for H - t steps
                for j in range(k + 1, E + 1):
                    gain[j] = v[q]
                gain[0] = sum(gain)
                dfs(q, R & ~(1 << q), t + 1, k, tuple(a_ + b_ for a_, b_ in zip(key, gain)))
            else:
                dfs(q, R, t + 1, k, key)
            path.pop()

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, E * (H + 1) + 100))
    try:
        dfs(0, start_mask, 0, 1, (0,) * (E + 1))
    finally:
        sys.setrecursionlimit(limit)
    key, plan = best
    plan = plan + [0] * (E * H - len(plan))
    return tuple(key[1:]), len(goals), tuple(tuple(plan[e * H : (e + 1) * H]) for e in range(E))
