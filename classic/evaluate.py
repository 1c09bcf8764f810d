"""The meta-test protocol shared by every agent, classic or LLM.

``run_trials`` plays ``num_tasks`` held-out tasks for one trial each (``episodes_per_trial``
episodes, memory carried across episodes) and returns a :class:`TrialResult`.

Regret is the expected (pseudo-)regret of Lattimore & Szepesvári (2020, Ch. 4): per episode,
the optimal policy's expected return minus the expected return of the actions taken, when the
distribution exposes ``mean_reward(tasks, state, action)``; otherwise the realized return.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from classic.agents.base import Agent

# Evaluation streams are seeded from this offset so they never coincide with training streams
# (training code seeds its generators with small integers).
EVAL_SEED_OFFSET = 1_000_003


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
    """

    agent: str
    rewards: Tensor
    actions: Tensor
    episode_returns: Tensor
    regret: Tensor
    wall_time: float
    extra: dict = field(default_factory=dict)

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


def mean_ci(x: Tensor) -> dict:
    """Mean and 95% CI half-width of a 1-D sample: {"mean": m, "ci95": 1.96 * s / sqrt(N)}."""
    x = x.double().flatten()
    n = x.numel()
    std = float(x.std(unbiased=True)) if n > 1 else 0.0
    return {"mean": float(x.mean()), "ci95": 1.96 * std / math.sqrt(max(n, 1))}


def sample_eval_tasks(dist, num_tasks: int, seed: int):
    """Held-out tasks: the same ``seed`` always gives the same tasks, disjoint from training streams."""
    g = torch.Generator().manual_seed(EVAL_SEED_OFFSET + int(seed))
    return dist.sample_tasks(num_tasks, g)


def run_trials(
    agent: Agent,
    dist,
    num_tasks: int = 1000,
    episodes_per_trial: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
    tasks=None,
    progress: bool = False,
) -> TrialResult:
    """Run one trial per task and record rewards, actions, returns and regret.

    Args:
        agent: any :class:`~classic.agents.base.Agent`.
        dist: a task distribution (``classic.envs``).
        num_tasks: number of held-out tasks.
        episodes_per_trial: n, episodes per trial.
        seed: evaluation seed; tasks come from :func:`sample_eval_tasks` unless ``tasks`` is given.
        batch_size: tasks run at once (default: all); results depend on it only through RNG order.
        tasks: explicit tasks (overrides ``num_tasks``/``seed`` for task sampling).
        progress: show a tqdm bar over episodes.

    Returns:
        TrialResult with rewards/actions (num_tasks, E*H), episode_returns/regret (num_tasks, E).
    """
    if tasks is None:
        tasks = sample_eval_tasks(dist, num_tasks, seed)
    num_tasks = _leading_dim(tasks)
    batch_size = batch_size or num_tasks
    g = torch.Generator().manual_seed(EVAL_SEED_OFFSET + 7919 * (int(seed) + 1))
    start = time.perf_counter()
    chunks = []
    for lo in range(0, num_tasks, batch_size):
        sub = type(tasks)(*(t[lo : lo + batch_size] for t in tasks))
        chunks.append(_run_chunk(agent, dist, sub, episodes_per_trial, g, progress))
    wall = time.perf_counter() - start
    cat = [torch.cat(parts, dim=0) for parts in zip(*chunks)]
    rewards, actions, ep_returns, ep_expected = cat
    optimal = dist.optimal_episode_return(tasks).unsqueeze(1)
    regret = torch.cumsum(optimal - ep_expected, dim=1)
    name = getattr(agent, "name", type(agent).__name__)
    extra = dict(getattr(agent, "stats", lambda: {})()) if callable(getattr(agent, "stats", None)) else {}
    return TrialResult(name, rewards, actions, ep_returns, regret, wall, extra)


def _leading_dim(tasks) -> int:
    return int(next(iter(tasks)).shape[0])


def _run_chunk(agent, dist, tasks, episodes_per_trial: int, g: torch.Generator, progress: bool):
    n = _leading_dim(tasks)
    H = dist.episode_length
    agent.reset(n, g)
    prev_action = torch.full((n,), -1, dtype=torch.long)
    prev_reward = torch.zeros(n)
    done = torch.ones(n, dtype=torch.bool)
    rewards = torch.zeros(n, episodes_per_trial * H)
    actions = torch.zeros(n, episodes_per_trial * H, dtype=torch.long)
    ep_returns = torch.zeros(n, episodes_per_trial)
    ep_expected = torch.zeros(n, episodes_per_trial)
    has_mean = hasattr(dist, "mean_reward")
    episodes = range(episodes_per_trial)
    if progress:
        from tqdm.auto import tqdm

        episodes = tqdm(episodes, desc=getattr(agent, "name", "agent"), leave=False)
    with torch.no_grad():
        for e in episodes:
            state, obs = dist.reset(tasks, g)
            alive = torch.ones(n, dtype=torch.bool)
            for h in range(H):
                action = agent.act(obs, prev_action, prev_reward, done).long()
                expected = dist.mean_reward(tasks, state, action) if has_mean else None
                step = dist.step(tasks, state, action, g)
                r = step.reward * alive
                t = e * H + h
                rewards[:, t] = r
                actions[:, t] = torch.where(alive, action, torch.full_like(action, -2))
                ep_returns[:, e] += r
                ep_expected[:, e] += (expected * alive) if expected is not None else r
                done = step.terminated | step.truncated
                prev_action = torch.where(dist.valid(action), action, torch.full_like(action, -1)) if hasattr(dist, "valid") else action
                prev_reward = step.reward
                obs, state = step.obs, step.state
                alive = alive & ~done
                if not bool(alive.any()):
                    break
            done = torch.ones(n, dtype=torch.bool)
    return rewards, actions, ep_returns, ep_expected
