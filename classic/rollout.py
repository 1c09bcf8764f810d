"""The one trial loop: an agent plays one trial on each of a batch of tasks.

:func:`rollout` is used by the evaluator (:func:`classic.evaluate.run_trials`) and by every
learner that collects its own experience (RL²'s inner loop is one call to it), so what a learner
trains on is exactly what it is evaluated on.

A trial is ``episodes_per_trial`` (E) episodes on one task, the agent's memory carried across
episode boundaries (RL², Duan et al. 2016, arXiv 1611.02779). Episodes end by termination or by
truncation at ``dist.episode_length`` (H). The loop **auto-resets** each task whose episode ended
(only that task's rows of a freshly reset state are taken), so a task whose episodes terminate
early starts its next episode at once; a task that has finished its E episodes is padded
(``valid`` False) until every task in the batch has finished. At most E * H steps.

Example:
    >>> from classic.envs.bandit import BernoulliBandit
    >>> from classic.agents.bandit import UCB1Agent
    >>> dist = BernoulliBandit(5)
    >>> g = torch.Generator().manual_seed(0)
    >>> traj = rollout(UCB1Agent(5), dist, dist.sample_tasks(8, g), episodes_per_trial=10, generator=g)
    >>> traj.rewards.shape            # (T, B) = (E * H, tasks)
    torch.Size([10, 8])
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import Tensor

from classic.core import ActOutput, Agent, Discrete, TaskDistribution, adapts_by_gradient


class Trajectory(NamedTuple):
    """One trial per task, recorded time-major: T steps (at most E * H), B tasks.

    Row ``t`` holds what the agent saw before acting (``obs`` and the ``prev_*`` fields, exactly
    the arguments of its ``act``), what it did, and what followed.

    Attributes:
        obs: (T, B, obs_dim) float observation the agent acted on.
        prev_actions: (T, B) long ((T, B, *shape) float for Box) previous action as the agent saw it.
        prev_rewards: (T, B) float previous reward as the agent saw it.
        prev_terminated, prev_truncated: (T, B) bool, how the previous step ended its episode
            (``prev_truncated`` True at the first step of the trial).
        actions: (T, B) long or (T, B, *shape) float, the actions as the agent returned them
            (Box actions before the environment's clipping).
        rewards: (T, B) float reward of the step; 0 where ``valid`` is False.
        expected_rewards: (T, B) float expected reward of the step (``dist.mean_reward``) where the
            distribution knows it, else the realized reward; 0 where ``valid`` is False.
        terminated, truncated: (T, B) bool, how the step ended its episode.
        valid: (T, B) bool, the step belongs to the task's trial (False: padding after the task
            finished its E episodes).
        episode: (T, B) long, episode index (0 .. E-1) of the step.
        step: (T, B) long, step index within its episode (0 .. H-1).
        info: per-step tensors the agent returned in :class:`~classic.core.ActOutput`, each (T, B, ...).
    """

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    prev_terminated: Tensor
    prev_truncated: Tensor
    actions: Tensor
    rewards: Tensor
    expected_rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor
    episode: Tensor
    step: Tensor
    info: dict[str, Tensor]

    @property
    def num_tasks(self) -> int:
        return int(self.rewards.shape[1])


def num_tasks_of(tasks: Any) -> int:
    """Leading dimension of a task container (NamedTuple of tensors)."""
    return int(next(iter(tasks)).shape[0])


def slice_tasks(tasks: Any, lo: int, hi: int) -> Any:
    """Tasks ``lo .. hi-1`` of a task container (NamedTuple or tuple of tensors leading with n)."""
    parts = [t[lo:hi] for t in tasks]
    return type(tasks)(*parts) if hasattr(tasks, "_fields") else type(tasks)(parts)


def take_tasks(tasks: Any, index: Tensor) -> Any:
    """Tasks ``index`` (a long tensor of rows, repeats allowed) of a task container (NamedTuple or
    tuple of tensors leading with n)."""
    parts = [t[index] for t in tasks]
    return type(tasks)(*parts) if hasattr(tasks, "_fields") else type(tasks)(parts)


def repeat_tasks(tasks: Any, copies: int) -> Any:
    """Each task of a container repeated ``copies`` times in place: rows ``b * copies .. b * copies
    + copies - 1`` are copies of task ``b`` (a NamedTuple or tuple of tensors leading with n)."""
    parts = [t.repeat_interleave(copies, dim=0) for t in tasks]
    return type(tasks)(*parts) if hasattr(tasks, "_fields") else type(tasks)(parts)


def select_rows(mask: Tensor, new: Any, old: Any) -> Any:
    """Rows of ``new`` where ``mask`` (n,) is True, of ``old`` elsewhere, for a NamedTuple (or a
    tensor) whose tensors lead with n."""
    if isinstance(new, Tensor):
        m = mask.reshape(-1, *([1] * (new.dim() - 1)))
        return torch.where(m, new, old)
    parts = [select_rows(mask, a, b) for a, b in zip(new, old)]
    return type(new)(*parts) if hasattr(new, "_fields") else type(new)(parts)


def rollout(
    agent: Agent,
    dist: TaskDistribution,
    tasks: Any,
    episodes_per_trial: int,
    generator: torch.Generator,
    *,
    progress: bool = False,
    reset_agent: bool = True,
) -> Trajectory:
    """Play one trial of ``episodes_per_trial`` episodes on every task of ``tasks``.

    Per step, in this order (the order every result in the project was measured with): the agent
    acts, the distribution's expected reward is read, the environment steps (all randomness from
    ``generator``), and tasks whose episode ended and that have episodes left are reset (one
    ``dist.reset`` call for the batch, rows selected).

    Args:
        agent: any :class:`~classic.core.Agent`; it is ``reset`` first unless ``reset_agent`` is False.
        dist: the task distribution.
        tasks: B tasks from ``dist.sample_tasks``.
        episodes_per_trial: E >= 1.
        generator: RNG for the environment (and the agent's ``reset``).
        progress: tqdm bar over steps.
        reset_agent: call ``agent.reset(B, generator)`` before the trial.

    Returns:
        A :class:`Trajectory` of T <= E * H rows (fewer when every task finishes early).

    Raises:
        ValueError: ``episodes_per_trial`` < 1.

    Gradients are off (``torch.no_grad``) unless the agent ``adapts_by_gradient``.
    """
    if episodes_per_trial < 1:
        raise ValueError(f"episodes_per_trial must be >= 1, got {episodes_per_trial}")
    n = num_tasks_of(tasks)
    E, H = int(episodes_per_trial), int(dist.episode_length)
    space = dist.action_space
    if reset_agent:
        agent.reset(n, generator)
    grad = contextlib.nullcontext() if adapts_by_gradient(agent) else torch.no_grad()
    rows: list[tuple[Tensor, ...]] = []
    infos: list[dict[str, Tensor]] = []
    steps = range(E * H)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=getattr(agent, "name", "agent"), leave=False)
    with grad:
        state, obs = dist.reset(tasks, generator)
        prev_action = space.empty(n)
        prev_reward = torch.zeros(n)
        prev_terminated = torch.zeros(n, dtype=torch.bool)
        prev_truncated = torch.ones(n, dtype=torch.bool)
        episode = torch.zeros(n, dtype=torch.long)
        t_in_episode = torch.zeros(n, dtype=torch.long)
        valid = torch.ones(n, dtype=torch.bool)
        for _ in steps:
            out = agent.act(obs, prev_action, prev_reward, prev_terminated, prev_truncated)
            action, info = (out.action, out.info) if isinstance(out, ActOutput) else (out, None)
            if isinstance(space, Discrete):
                action = action.long()
            expected = dist.mean_reward(tasks, state, action)
            step = dist.step(tasks, state, action, generator)
            reward = step.reward * valid
            expected = reward if expected is None else expected * valid
            rows.append(
                (
                    obs,
                    prev_action,
                    prev_reward,
                    prev_terminated,
                    prev_truncated,
                    action,
                    reward,
                    expected,
                    step.terminated,
                    step.truncated,
                    valid,
                    episode,
                    t_in_episode,
                )
            )
            if info is not None:
                infos.append(info)
            ended = step.terminated | step.truncated
            episode = episode + (ended & valid).long()
            t_in_episode = torch.where(ended, torch.zeros_like(t_in_episode), t_in_episode + 1)
            valid = valid & (episode < E)
            if isinstance(space, Discrete):
                prev_action = torch.where(dist.valid(action), action, torch.full_like(action, -1))
            else:
                prev_action = space.clip(action)
            prev_reward, prev_terminated, prev_truncated = step.reward, step.terminated, step.truncated
            obs, state = step.obs, step.state
            if not bool(valid.any()):
                break
            restart = ended & valid
            if bool(restart.any()):
                fresh_state, fresh_obs = dist.reset(tasks, generator)
                state = select_rows(restart, fresh_state, state)
                obs = select_rows(restart, fresh_obs, obs)
    columns = [torch.stack(c) for c in zip(*rows)]
    info_stacked = {k: torch.stack([i[k] for i in infos]) for k in infos[0]} if infos else {}
    return Trajectory(*columns, info=info_stacked)


def rollout_adapting(
    agent: Agent, dist: TaskDistribution, tasks: Any, episodes_per_trial: int, generator: torch.Generator
) -> list[Trajectory]:
    """A trial of an agent that adapts by gradient between episodes (MAML, arXiv 1703.03400).

    The agent plays ``agent.episodes_per_adaptation`` (K) copies of each task at once (rows
    ``b * K .. b * K + K - 1`` are task ``b``), one episode at a time: after episode ``e`` of
    every copy it gets that episode's :class:`Trajectory` through ``agent.adapt(trajectory)``
    (its K episodes per task are its adaptation data, e.g. one policy-gradient step), then plays
    episode ``e + 1``. So episode ``e`` is played after ``e`` adaptation steps. The agent is
    ``reset`` once with ``B * K`` tasks; ``adapt`` runs with gradients enabled.

    Args:
        agent: an agent with ``adapts_by_gradient``, ``episodes_per_adaptation`` and ``adapt``.
        dist, tasks, episodes_per_trial, generator: as in :func:`rollout`.

    Returns:
        ``episodes_per_trial`` trajectories of one episode each, over ``B * K`` rows (a row whose
        episode terminates early is padded, ``valid`` False, until every row has finished).
    """
    copies = int(getattr(agent, "episodes_per_adaptation", 1))
    if copies < 1:
        raise ValueError(f"episodes_per_adaptation must be >= 1, got {copies}")
    rows = repeat_tasks(tasks, copies)
    agent.reset(num_tasks_of(rows), generator)
    episodes = []
    for e in range(int(episodes_per_trial)):
        episodes.append(rollout(agent, dist, rows, 1, generator, reset_agent=False))
        if e + 1 < episodes_per_trial:
            with torch.enable_grad():
                agent.adapt(episodes[-1])
    return episodes
