"""Expose any task distribution as a single-task ``gymnasium.Env``, so other libraries
(Stable-Baselines3, CleanRL scripts, ...) can be pointed at it.

One gymnasium episode is one *trial*: ``episodes_per_trial`` episodes of the same task, played
back to back (a meta-RL agent with memory sees the task's episodes in one stream, as in RL²,
Duan et al. 2016, arXiv 1611.02779). The task is resampled at every ``reset`` (meta-RL), or
held fixed (a plain single-MDP environment).

Example:
    >>> from classic.envs import BernoulliBandit
    >>> env = TaskDistributionEnv(BernoulliBandit(5), episodes_per_trial=100)
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("classic.envs.gym_adapter needs gymnasium: pip install gymnasium") from err


class TaskDistributionEnv(gym.Env):
    """A task distribution as a ``gymnasium.Env`` (discrete actions, Box observations).

    Args:
        dist: a task distribution (``classic.envs``), e.g. ``BernoulliBandit(5)``.
        episodes_per_trial: task episodes per gymnasium episode (>= 1).
        resample_task: draw a new task at every ``reset`` (True) or keep the first one.
        task: a fixed task (a batch of one, e.g. ``dist.sample_tasks(1, g)``); implies
            ``resample_task=False``.

    Step semantics: ``terminated`` is the task's own termination at the end of the trial's last
    episode; ``truncated`` is True when the trial ends by its episode count otherwise (a time
    limit). ``info`` carries ``episode_in_trial`` and, when the distribution knows it, the
    optimal expected return per episode (``optimal_episode_return``).

    Raises:
        ValueError: if ``episodes_per_trial`` < 1 or ``task`` is not a batch of one.
    """

    metadata = {"render_modes": []}

    def __init__(self, dist, episodes_per_trial: int = 1, resample_task: bool = True, task: Any = None) -> None:
        if episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {episodes_per_trial}")
        if task is not None and int(next(iter(task)).shape[0]) != 1:
            raise ValueError("task must be a batch of one task (leading dimension 1)")
        self.dist = dist
        self.episodes_per_trial = int(episodes_per_trial)
        self.resample_task = resample_task and task is None
        self.task = task
        self.action_space = spaces.Discrete(dist.num_actions)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dist.obs_dim,), dtype=np.float32)
        self._generator = torch.Generator().manual_seed(0)
        self._state = None
        self._episode = 0

    def _obs(self, obs: torch.Tensor) -> np.ndarray:
        return obs[0].detach().cpu().numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._generator = torch.Generator().manual_seed(int(seed))
        if self.task is None or self.resample_task:
            self.task = self.dist.sample_tasks(1, self._generator)
        self._state, obs = self.dist.reset(self.task, self._generator)
        self._episode = 0
        return self._obs(obs), self._info()

    def _info(self) -> dict:
        info = {"episode_in_trial": self._episode}
        if hasattr(self.dist, "optimal_episode_return"):
            info["optimal_episode_return"] = float(self.dist.optimal_episode_return(self.task)[0])
        return info

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor([int(action)], dtype=torch.long)
        step = self.dist.step(self.task, self._state, a, self._generator)
        reward = float(step.reward[0])
        obs, self._state = step.obs, step.state
        terminated = truncated = False
        if bool(step.terminated[0] or step.truncated[0]):
            self._episode += 1
            if self._episode >= self.episodes_per_trial:
                terminated = bool(step.terminated[0])
                truncated = not terminated
            else:
                self._state, obs = self.dist.reset(self.task, self._generator)
        return self._obs(obs), reward, terminated, truncated, self._info()
