"""MuJoCo locomotion task distributions of the meta-RL papers: HalfCheetah-Vel, HalfCheetah-Dir and
Ant-Dir, on gymnasium's MuJoCo v5 models (optional extra ``mujoco``: ``pip install -e ".[mujoco]"``).

A task is a tensor: the target velocity (HalfCheetah-Vel) or the direction +-1 (the -Dir tasks).
The physics is functional like every distribution of the house: the state is each row's full
MuJoCo physics state (``mjSTATE_FULLPHYSICS``: time, qpos, qvel, ...) as an (n, nstate) float64
tensor, and a step is one ``mujoco.rollout.rollout`` call over the batch (C threads, no Python loop
per environment): ``frame_skip`` physics steps with the action held, as gymnasium's
``do_simulation``. The reward is computed from the task tensor and the state before and after
(``v_x = (x' - x) / dt``, ``dt = frame_skip * timestep`` = 0.05 s):

* **HalfCheetah-Vel** (MAML, arXiv 1703.03400, Sec. 5.3; PEARL, arXiv 1903.08254):
  ``r = -|v_x - v_goal| - 0.05 ||a||^2``. Two variants as configuration: MAML's ``v_goal ~ U[0, 2]``
  with 100-step episodes (the defaults) and PEARL's / VariBAD's ``U[0, 3]`` with 200 steps
  (``goal_high: 3.0, episode_length: 200``).
* **HalfCheetah-Dir**: ``r = d * v_x - 0.05 ||a||^2``, ``d`` in {-1, +1}.
* **Ant-Dir** (MAML's forward/backward ant): ``r = d * v_x - 0.005 ||a||^2 + 1`` (the survival
  reward), ``d`` in {-1, +1}; the episode terminates when the torso's height leaves [0.2, 1.0]
  (gymnasium's ``healthy_z_range``). Deviation: no contact cost and no contact forces in the
  observation (gymnasium's ``include_cfrc_ext_in_observation=False``), which would need a Python
  pass per environment.

Resets follow gymnasium v5's ``reset_model``: ``qpos = init_qpos + U(-0.1, 0.1)``, ``qvel =
init_qvel + 0.1 N(0, 1)``, drawn from the distribution's generator. Observations are gymnasium's
(``qpos`` without the x (Ant: x, y) position, then ``qvel``): 17 numbers for the cheetah, 27 for
the ant. Actions are Box(-1, 1) (the models' control ranges), clipped.

Example:
    >>> dist = CheetahVelConfig().make()
    >>> g = torch.Generator().manual_seed(0)
    >>> tasks = dist.sample_tasks(8, g)                  # target velocities (8,) in [0, 2]
    >>> state, obs = dist.reset(tasks, g)                # obs (8, 17)
    >>> step = dist.step(tasks, state, torch.zeros(8, 6), g)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from classic.core import Box, Step, TaskDistribution
from classic.registry import TASKS


class LocomotionTasks(NamedTuple):
    """A batch of locomotion tasks.

    Attributes:
        goal: (n,) float, the target velocity (m/s) or the direction (+-1).
    """

    goal: Tensor


class LocomotionState(NamedTuple):
    """Physics state of a batch of episodes.

    Attributes:
        physics: (n, nstate) float64, MuJoCo's ``mjSTATE_FULLPHYSICS`` vector of each row.
        t: (n,) long, steps taken in the current episode.
    """

    physics: Tensor
    t: Tensor


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python's ``warnings`` (``RuntimeWarning``) unless a handler is set:
    by default MuJoCo appends them to ``MUJOCO_LOG.TXT`` in the working directory, a file outside
    any run's output root (gymnasium's v5 models trigger a compiler deprecation warning on load)."""
    import warnings

    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2))


@functools.lru_cache(maxsize=None)
def _gymnasium_model(env_id: str):
    """(model, init_qpos, init_qvel, frame_skip) of a gymnasium MuJoCo environment."""
    try:
        import gymnasium
        import mujoco  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError('the MuJoCo task distributions need the optional extra: pip install -e ".[mujoco]"') from err
    route_mujoco_warnings()
    env = gymnasium.make(env_id).unwrapped
    return env.model, env.init_qpos.copy(), env.init_qvel.copy(), int(env.frame_skip)


class MujocoLocomotion(TaskDistribution):
    """A batched, functional MuJoCo locomotion task distribution (see the module docstring).

    Args:
        env_id: the gymnasium model, ``HalfCheetah-v5`` or ``Ant-v5``.
        objective: ``velocity`` (``-|v_x - goal|``) or ``direction`` (``goal * v_x``).
        episode_length: H.
        goal_low, goal_high: the target velocity's range (``velocity``).
        ctrl_cost_weight: ``c`` in ``- c ||a||^2``.
        healthy_reward: added every step (Ant: 1).
        healthy_z_range: (low, high) torso height outside of which the episode terminates; None:
            never.
        reset_noise_scale: gymnasium's reset noise.
        threads: MuJoCo threads of a batched step (None: torch's thread count).
    """

    def __init__(
        self,
        env_id: str,
        objective: str,
        episode_length: int,
        goal_low: float = 0.0,
        goal_high: float = 2.0,
        ctrl_cost_weight: float = 0.05,
        healthy_reward: float = 0.0,
        healthy_z_range: tuple[float, float] | None = None,
        reset_noise_scale: float = 0.1,
        threads: int | None = None,
    ) -> None:
        import mujoco

        self._mujoco = mujoco
        self.env_id, self.objective = env_id, objective
        self.model, self.init_qpos, self.init_qvel, self.frame_skip = _gymnasium_model(env_id)
        self.episode_length = int(episode_length)
        self.goal_low, self.goal_high = float(goal_low), float(goal_high)
        self.ctrl_cost_weight, self.healthy_reward = float(ctrl_cost_weight), float(healthy_reward)
        self.healthy_z_range = healthy_z_range
        self.reset_noise_scale = float(reset_noise_scale)
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.nq, self.nv, self.nu = int(self.model.nq), int(self.model.nv), int(self.model.nu)
        self.spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.nstate = int(mujoco.mj_stateSize(self.model, self.spec))
        self.skip_xy = 2 if env_id.startswith("Ant") else 1
        self.action_space = Box(low=-1.0, high=1.0, shape=(self.nu,))
        obs_dim = self.nq - self.skip_xy + self.nv
        self.observation_space = Box(low=-math.inf, high=math.inf, shape=(obs_dim,))
        self.threads = threads
        self._datas: list = []

    # ---------------------------------------------------------------------------- state layout
    def _qpos(self, physics: Tensor) -> Tensor:
        return physics[:, 1 : 1 + self.nq]  # FULLPHYSICS = [time, qpos, qvel, act, ...]

    def _qvel(self, physics: Tensor) -> Tensor:
        return physics[:, 1 + self.nq : 1 + self.nq + self.nv]

    def observation(self, physics: Tensor) -> Tensor:
        """(n, obs_dim) float32: qpos without the x (Ant: x, y) coordinates, then qvel."""
        return torch.cat([self._qpos(physics)[:, self.skip_xy :], self._qvel(physics)], dim=-1).float()

    def _data_pool(self) -> list:
        threads = self.threads or max(1, torch.get_num_threads())
        while len(self._datas) < threads:
            self._datas.append(self._mujoco.MjData(self.model))
        return self._datas[:threads]

    # ------------------------------------------------------------------------------ protocol
    def sample_tasks(self, n: int, generator: torch.Generator) -> LocomotionTasks:
        """Draw ``n`` goals: velocities U[goal_low, goal_high], or directions +-1 (fair coin)."""
        if self.objective == "velocity":
            u = torch.rand(n, generator=generator)
            return LocomotionTasks(goal=self.goal_low + (self.goal_high - self.goal_low) * u)
        return LocomotionTasks(goal=torch.randint(2, (n,), generator=generator).float() * 2 - 1)

    def reset(self, tasks: LocomotionTasks, generator: torch.Generator) -> tuple[LocomotionState, Tensor]:
        """gymnasium v5's ``reset_model`` for every row (noise from ``generator``)."""
        n = tasks.goal.shape[0]
        s = self.reset_noise_scale
        qpos = (
            torch.as_tensor(self.init_qpos)
            + (2 * torch.rand(n, self.nq, generator=generator, dtype=torch.float64) - 1) * s
        )
        qvel = torch.as_tensor(self.init_qvel) + s * torch.randn(n, self.nv, generator=generator, dtype=torch.float64)
        physics = self.states_from(qpos, qvel)
        return LocomotionState(physics=physics, t=torch.zeros(n, dtype=torch.long)), self.observation(physics)

    def states_from(self, qpos: Tensor, qvel: Tensor) -> Tensor:
        """(n, nstate) full physics states at time 0 with the given (n, nq) qpos and (n, nv) qvel."""
        mujoco = self._mujoco
        data = mujoco.MjData(self.model)
        out = np.empty((qpos.shape[0], self.nstate))
        for i in range(qpos.shape[0]):
            mujoco.mj_resetData(self.model, data)
            data.qpos[:] = qpos[i].numpy()
            data.qvel[:] = qvel[i].numpy()
            mujoco.mj_getState(self.model, data, out[i], self.spec)
        return torch.from_numpy(out)

    def simulate(self, physics: Tensor, action: Tensor) -> Tensor:
        """(n, nstate) states after ``frame_skip`` physics steps with the (n, nu) controls held."""
        from mujoco import rollout

        n = physics.shape[0]
        control = np.repeat(action.detach().double().numpy()[:, None, :], self.frame_skip, axis=1)
        states, _ = rollout.rollout(
            self.model,
            self._data_pool(),
            np.ascontiguousarray(physics.numpy()),
            np.ascontiguousarray(control),
            nstep=self.frame_skip,
        )
        return torch.from_numpy(np.ascontiguousarray(states[:, -1])).reshape(n, self.nstate)

    def reward(
        self, tasks: LocomotionTasks, physics: Tensor, next_physics: Tensor, action: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(reward, terminated)``, each (n,), of the transition ``physics -> next_physics`` under
        the clipped ``action`` (the formulas of the module docstring)."""
        v = (self._qpos(next_physics)[:, 0] - self._qpos(physics)[:, 0]) / self.dt
        goal = tasks.goal.double()
        objective = -(v - goal).abs() if self.objective == "velocity" else goal * v
        reward = objective - self.ctrl_cost_weight * action.double().pow(2).sum(-1) + self.healthy_reward
        if self.healthy_z_range is None:
            terminated = torch.zeros_like(reward, dtype=torch.bool)
        else:
            z = self._qpos(next_physics)[:, 2]
            low, high = self.healthy_z_range
            terminated = ~((z >= low) & (z <= high) & torch.isfinite(next_physics).all(-1))
        return reward.float(), terminated

    def step(self, tasks: LocomotionTasks, state: LocomotionState, action: Tensor, generator=None) -> Step:
        """Apply the clipped (n, nu) ``action`` for ``frame_skip`` physics steps on every row."""
        action = self.action_space.clip(action)
        physics = self.simulate(state.physics, action)
        reward, terminated = self.reward(tasks, state.physics, physics, action)
        t = state.t + 1
        return Step(
            obs=self.observation(physics),
            reward=reward,
            terminated=terminated,
            truncated=(t >= self.episode_length) & ~terminated,
            state=LocomotionState(physics=physics, t=t),
        )


# ---------------------------------------------------------------------------------------------
# Configurations (registry names)
# ---------------------------------------------------------------------------------------------


def _check(episodes_per_trial: int, episode_length: int) -> None:
    if episodes_per_trial < 1:
        raise ValueError(f"episodes_per_trial must be >= 1, got {episodes_per_trial}")
    if episode_length < 1:
        raise ValueError(f"episode_length must be >= 1, got {episode_length}")


@TASKS.register("cheetah_vel")
@dataclass(frozen=True)
class CheetahVelConfig:
    """HalfCheetah-Vel (defaults: MAML's, ``v_goal ~ U[0, 2]``, 100 steps; PEARL's and VariBAD's:
    ``goal_high: 3.0, episode_length: 200``).

    Attributes:
        name: registry name.
        episodes_per_trial: episodes per trial.
        episode_length: H.
        goal_low, goal_high: the target velocity's range (m/s).
        ctrl_cost_weight: weight of ``||a||^2``.

    Raises:
        ValueError: naming the offending field.
    """

    name: str = "cheetah_vel"
    episodes_per_trial: int = 2
    episode_length: int = 100
    goal_low: float = 0.0
    goal_high: float = 2.0
    ctrl_cost_weight: float = 0.05

    def __post_init__(self) -> None:
        _check(self.episodes_per_trial, self.episode_length)
        if not self.goal_low <= self.goal_high:
            raise ValueError(f"goal_low must be <= goal_high, got {self.goal_low} > {self.goal_high}")

    def describe(self, short: bool = False) -> str:
        if short:
            return f"HalfCheetah-Vel U[{self.goal_low:g}, {self.goal_high:g}], H={self.episode_length}"
        return (
            f"HalfCheetah-Vel (MuJoCo HalfCheetah-v5), target velocity U[{self.goal_low:g}, {self.goal_high:g}] m/s, "
            f"reward -|v - v_goal| - {self.ctrl_cost_weight:g} |a|^2, H={self.episode_length} steps per episode, "
            f"n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> MujocoLocomotion:
        return MujocoLocomotion(
            "HalfCheetah-v5", "velocity", self.episode_length, self.goal_low, self.goal_high, self.ctrl_cost_weight
        )


@TASKS.register("cheetah_dir")
@dataclass(frozen=True)
class CheetahDirConfig:
    """HalfCheetah-Dir: run forward (+1) or backward (-1), 100 steps (MAML's).

    Attributes:
        name, episodes_per_trial, episode_length, ctrl_cost_weight: as :class:`CheetahVelConfig`.
    """

    name: str = "cheetah_dir"
    episodes_per_trial: int = 2
    episode_length: int = 100
    ctrl_cost_weight: float = 0.05

    def __post_init__(self) -> None:
        _check(self.episodes_per_trial, self.episode_length)

    def describe(self, short: bool = False) -> str:
        if short:
            return f"HalfCheetah-Dir, H={self.episode_length}"
        return (
            f"HalfCheetah-Dir (MuJoCo HalfCheetah-v5), direction +-1, reward d v - {self.ctrl_cost_weight:g} |a|^2, "
            f"H={self.episode_length} steps per episode, n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> MujocoLocomotion:
        return MujocoLocomotion(
            "HalfCheetah-v5", "direction", self.episode_length, ctrl_cost_weight=self.ctrl_cost_weight
        )


@TASKS.register("ant_dir")
@dataclass(frozen=True)
class AntDirConfig:
    """Ant-Dir: run forward (+1) or backward (-1) along x, 200 steps, survival reward 1, terminated
    when the torso's height leaves [0.2, 1.0].

    Attributes:
        name, episodes_per_trial, episode_length, ctrl_cost_weight: as :class:`CheetahVelConfig`.
        healthy_reward: the survival reward per step.
    """

    name: str = "ant_dir"
    episodes_per_trial: int = 2
    episode_length: int = 200
    ctrl_cost_weight: float = 0.005
    healthy_reward: float = 1.0

    def __post_init__(self) -> None:
        _check(self.episodes_per_trial, self.episode_length)

    def describe(self, short: bool = False) -> str:
        if short:
            return f"Ant-Dir, H={self.episode_length}"
        return (
            f"Ant-Dir (MuJoCo Ant-v5), direction +-1, reward d v - {self.ctrl_cost_weight:g} |a|^2 + "
            f"{self.healthy_reward:g}, H={self.episode_length} steps per episode, n={self.episodes_per_trial} "
            "episodes per trial"
        )

    def make(self) -> MujocoLocomotion:
        return MujocoLocomotion(
            "Ant-v5",
            "direction",
            self.episode_length,
            ctrl_cost_weight=self.ctrl_cost_weight,
            healthy_reward=self.healthy_reward,
            healthy_z_range=(0.2, 1.0),
        )
