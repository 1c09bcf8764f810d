"""The meta-test protocol shared by every agent, classic or LLM: the evaluator.

``run_trials`` plays ``num_tasks`` held-out tasks for one trial each (``episodes_per_trial``
episodes, memory carried across episodes) and returns a :class:`TrialResult`.

Regret is the expected (pseudo-)regret of Lattimore & Szepesvári (2020, Ch. 4): per episode,
the optimal policy's expected return minus the expected return of the actions taken, when the
distribution exposes ``mean_reward(tasks, state, action)``; otherwise the realized return.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from classic import seeding
from classic.core import Agent, TaskDistribution, adapts_by_gradient
from classic.rollout import Trajectory, num_tasks_of, rollout, rollout_adapting, slice_tasks

# Evaluation streams start at this offset (:mod:`classic.seeding`, streams eval_tasks and eval_play).
EVAL_SEED_OFFSET = seeding.STREAMS["eval_tasks"][0]


@dataclass
class TrialResult:
    """Per-task outcomes of one trial on each of ``num_tasks`` tasks.

    Attributes:
        agent: agent name.
        rewards: (num_tasks, T) float per-step rewards, T = episodes_per_trial * episode_length.
        actions: (num_tasks, T) long actions (-1 = invalid).
        episode_returns: (num_tasks, E) float realized return of each episode.
        regret: (num_tasks, E) float cumulative regret after each episode.
        wall_time: seconds spent in ``run_trials`` (agent + env).
        extra: free-form per-agent statistics (e.g. LLM tokens/s).
        trajectories: the time-major trajectories of each batch, when ``run_trials`` kept them.
    """

    agent: str
    rewards: Tensor
    actions: Tensor
    episode_returns: Tensor
    regret: Tensor
    wall_time: float
    extra: dict = field(default_factory=dict)
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_reward(self) -> Tensor:
        """(num_tasks,) total reward of each trial."""
        return self.rewards.sum(dim=1)

    @property
    def final_regret(self) -> Tensor:
        """(num_tasks,) cumulative regret at the end of each trial."""
        return self.regret[:, -1]

    @property
    def invalid_rate(self) -> float:
        """Fraction of steps whose action was invalid (-1; -2 marks steps after an episode ended early)."""
        if self.actions.dtype != torch.long:
            return 0.0
        return float((self.actions == -1).float().mean())

    def summary(self) -> dict:
        """Means and 95% CIs (normal approximation, 1.96 * std / sqrt(N))."""
        return {
            "total_reward": mean_ci(self.total_reward),
            "regret": mean_ci(self.final_regret),
            "invalid_rate": self.invalid_rate,
            "num_tasks": self.num_tasks,
            "wall_time_s": self.wall_time,
        }


def mean_ci(x: Tensor | Sequence[float]) -> dict:
    """Mean and 95% CI half-width of a sample (a tensor or a sequence of numbers, flattened):
    ``{"mean": m, "ci95": 1.96 * s / sqrt(N)}`` (normal approximation, s the unbiased standard
    deviation; 0 for one value, NaN for none)."""
    x = torch.as_tensor(x if isinstance(x, Tensor) else [float(v) for v in x], dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        return {"mean": float("nan"), "ci95": float("nan")}
    std = float(x.std(unbiased=True)) if n > 1 else 0.0
    return {"mean": float(x.mean()), "ci95": 1.96 * std / math.sqrt(max(n, 1))}


def sample_eval_tasks(dist, num_tasks: int, seed: int):
    """Held-out tasks: the same ``seed`` always gives the same tasks, disjoint from training streams
    (:mod:`classic.seeding` stream ``eval_tasks``)."""
    return dist.sample_tasks(num_tasks, seeding.generator("eval_tasks", seed))


def run_trials(
    agent: Agent,
    dist: TaskDistribution,
    num_tasks: int = 1000,
    episodes_per_trial: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    tasks=None,
    progress: bool = False,
    keep_trajectories: bool = False,
) -> TrialResult:
    """Run one trial per task (:func:`classic.rollout.rollout`) and record rewards, actions,
    returns and regret.

    Args:
        agent: any :class:`~classic.core.Agent`.
        dist: a task distribution (``classic.envs``).
        num_tasks: number of held-out tasks.
        episodes_per_trial: E, episodes per trial.
        seed: evaluation seed; tasks come from :func:`sample_eval_tasks` unless ``tasks`` is given.
        batch_size: tasks run at once (default: all); results depend on it only through RNG order.
        tasks: explicit tasks (overrides ``num_tasks``/``seed`` for task sampling).
        progress: show a tqdm bar over steps.
        keep_trajectories: keep each batch's :class:`~classic.rollout.Trajectory` in
            ``TrialResult.trajectories`` (observations, actions, rewards per step); for an agent
            that adapts by gradient, one trajectory per episode over its K copies of each task.

    An agent that ``adapts_by_gradient`` (MAML) plays its trial through
    :func:`~classic.rollout.rollout_adapting`: K = ``agent.episodes_per_adaptation`` copies of
    each task, a gradient step after each episode; its per-task numbers are the means over the
    K copies (its actions: the first copy's), so episode ``e`` is its return after ``e`` steps.

    Returns:
        TrialResult with rewards/actions (num_tasks, E*H), episode_returns/regret (num_tasks, E);
        regret is NaN when the distribution has no ``optimal_episode_return``.
    """
    if tasks is None:
        tasks = sample_eval_tasks(dist, num_tasks, seed)
    num_tasks = num_tasks_of(tasks)
    batch_size = batch_size or num_tasks
    g = seeding.generator("eval_play", seed)
    start = time.perf_counter()
    chunks, trajectories = [], []
    for lo in range(0, num_tasks, batch_size):
        sub = slice_tasks(tasks, lo, lo + batch_size)
        if adapts_by_gradient(agent):
            episodes = rollout_adapting(agent, dist, sub, episodes_per_trial, g)
            chunks.append(_per_task_adapting(episodes, dist.episode_length, agent.episodes_per_adaptation))
            if keep_trajectories:
                trajectories.extend(episodes)
            continue
        traj = rollout(agent, dist, sub, episodes_per_trial, g, progress=progress)
        chunks.append(_per_task(traj, episodes_per_trial, dist.episode_length))
        if keep_trajectories:
            trajectories.append(traj)
    wall = time.perf_counter() - start
    rewards, actions, ep_returns, ep_expected = (torch.cat(parts, dim=0) for parts in zip(*chunks))
    optimal = dist.optimal_episode_return(tasks)
    if optimal is None:
        regret = torch.full_like(ep_expected, float("nan"))
    else:
        regret = torch.cumsum(optimal.unsqueeze(1) - ep_expected, dim=1)
    name = getattr(agent, "name", type(agent).__name__)
    extra = dict(getattr(agent, "stats", lambda: {})()) if callable(getattr(agent, "stats", None)) else {}
    return TrialResult(name, rewards, actions, ep_returns, regret, wall, extra, trajectories)


def _per_task(traj: Trajectory, episodes_per_trial: int, episode_length: int):
    """(rewards (B, E*H), actions (B, E*H[, *shape]), episode returns (B, E), expected (B, E)) from a
    time-major trajectory; slot e * H + h holds step h of episode e (actions -2 / NaN in slots no
    step filled: after an early episode end)."""
    E, H = episodes_per_trial, episode_length
    B = traj.num_tasks
    slot = (traj.episode.clamp(max=E - 1) * H + traj.step).T  # (B, T)
    keep = traj.valid.T
    rows = torch.arange(B).unsqueeze(1).expand_as(slot)
    rewards = torch.zeros(B, E * H)
    rewards[rows[keep], slot[keep]] = traj.rewards.T[keep].float()
    act = traj.actions.transpose(0, 1)  # (B, T, ...)
    if act.dtype == torch.long:
        actions = torch.full((B, E * H), -2, dtype=torch.long)
    else:
        actions = torch.full((B, E * H, *act.shape[2:]), float("nan"))
    actions[rows[keep], slot[keep]] = act[keep]
    ep = traj.episode.T.clamp(max=E - 1)
    ep_returns = torch.zeros(B, E).scatter_add_(1, ep, traj.rewards.T.float() * keep)
    ep_expected = torch.zeros(B, E).scatter_add_(1, ep, traj.expected_rewards.T.float() * keep)
    return rewards, actions, ep_returns, ep_expected


def _per_task_adapting(episodes: list[Trajectory], episode_length: int, copies: int):
    """:func:`_per_task` of a gradient-adapting agent's trial (one trajectory per episode over
    B * K rows, K copies per task): per-task means over the K copies, the first copy's actions."""
    parts = [_per_task(traj, 1, episode_length) for traj in episodes]
    rewards, actions, ep_returns, ep_expected = (torch.cat(p, dim=1) for p in zip(*parts))
    return (
        rewards.reshape(-1, copies, rewards.shape[1]).mean(1),
        actions[::copies],
        ep_returns.reshape(-1, copies, ep_returns.shape[1]).mean(1),
        ep_expected.reshape(-1, copies, ep_expected.shape[1]).mean(1),
    )
