"""MuJoCo task distributions (classic/envs/mujoco_locomotion.py): the batched functional physics
against gymnasium's own environment step by step, the rewards against a slow per-environment
reference, resets, termination, and a platform trial."""

import math

import pytest
import torch

pytest.importorskip("mujoco")
gymnasium = pytest.importorskip("gymnasium")

from classic.envs.mujoco_locomotion import AntDirConfig, CheetahDirConfig, CheetahVelConfig  # noqa: E402
from classic.registry import TASKS  # noqa: E402

CASES = [
    (CheetahVelConfig(goal_high=3.0), "HalfCheetah-v5", {}),
    (CheetahDirConfig(), "HalfCheetah-v5", {}),
    (AntDirConfig(), "Ant-v5", {"include_cfrc_ext_in_observation": False}),
]


def _slow_reward(config, goal: float, x_before: float, x_after: float, action, dt: float) -> float:
    """One environment's reward written out from the papers' formulas."""
    v = (x_after - x_before) / dt
    ctrl = sum(float(a) ** 2 for a in action)
    if config.name == "cheetah_vel":
        return -abs(v - goal) - 0.05 * ctrl
    if config.name == "cheetah_dir":
        return goal * v - 0.05 * ctrl
    return goal * v - 0.005 * ctrl + 1.0


@pytest.mark.parametrize("config,env_id,kwargs", CASES, ids=lambda c: getattr(c, "name", None))
def test_batched_steps_match_gymnasium_and_rewards_match_a_slow_reference(config, env_id, kwargs):
    dist = config.make()
    g = torch.Generator().manual_seed(0)
    n = 5
    tasks = dist.sample_tasks(n, g)
    state, obs = dist.reset(tasks, g)
    envs = [gymnasium.make(env_id, **kwargs).unwrapped for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.set_state(dist._qpos(state.physics)[i].numpy(), dist._qvel(state.physics)[i].numpy())
        torch.testing.assert_close(torch.as_tensor(env._get_obs()).float(), obs[i])
    for _ in range(6):
        action = 2.4 * torch.rand(n, dist.nu, generator=g) - 1.2  # some outside [-1, 1]: clipped
        step = dist.step(tasks, state, action, g)
        for i, env in enumerate(envs):
            x_before = float(env.data.qpos[0])
            clipped = action[i].clamp(-1, 1).numpy()
            o, _, _, _, _ = env.step(clipped)
            x_after = float(env.data.qpos[0])
            torch.testing.assert_close(torch.as_tensor(o).float(), step.obs[i], atol=1e-5, rtol=1e-5)
            ref = _slow_reward(config, float(tasks.goal[i]), x_before, x_after, clipped, env.dt)
            assert float(step.reward[i]) == pytest.approx(ref, rel=1e-4, abs=1e-4)
        state = step.state
    assert dist.obs_dim == obs.shape[1] == (17 if env_id.startswith("Half") else 27)


def test_tasks_resets_and_registry():
    g = torch.Generator().manual_seed(1)
    vel = CheetahVelConfig().make()
    goals = vel.sample_tasks(1000, g).goal
    assert 0 <= float(goals.min()) and float(goals.max()) <= 2 and float(goals.mean()) == pytest.approx(1.0, abs=0.1)
    dirs = CheetahDirConfig().make().sample_tasks(1000, g).goal
    assert set(dirs.tolist()) == {-1.0, 1.0}
    state, obs = vel.reset(vel.sample_tasks(200, g), g)
    qpos = vel._qpos(state.physics)
    assert float((qpos - torch.as_tensor(vel.init_qpos)).abs().max()) <= 0.1
    assert state.t.eq(0).all() and torch.isfinite(obs).all()
    assert TASKS.get("cheetah_vel") is CheetahVelConfig and TASKS.get("ant_dir") is AntDirConfig
    with pytest.raises(ValueError, match="goal_low"):
        CheetahVelConfig(goal_low=3.0, goal_high=2.0)


def test_ant_terminates_when_the_torso_leaves_the_healthy_range_and_truncates_at_h():
    dist = AntDirConfig(episode_length=3).make()
    g = torch.Generator().manual_seed(0)
    tasks = dist.sample_tasks(2, g)
    state, _ = dist.reset(tasks, g)
    qpos, qvel = dist._qpos(state.physics).clone(), dist._qvel(state.physics).clone()
    qpos[0, 2] = 1.5  # torso above the healthy range (it falls 1.2 cm in one 0.05 s step)
    state = state._replace(physics=dist.states_from(qpos, qvel))
    step = dist.step(tasks, state, torch.zeros(2, dist.nu), g)
    assert step.terminated.tolist() == [True, False] and not step.truncated.any()
    for _ in range(2):
        step = dist.step(tasks, step.state, torch.zeros(2, dist.nu), g)
    assert bool(step.truncated[1])


def test_a_platform_trial_runs_on_the_cheetah():
    from classic.agents.zero import ZeroActionAgent
    from classic.evaluate import run_trials

    dist = CheetahVelConfig(episode_length=5).make()
    result = run_trials(ZeroActionAgent(dist.action_space), dist, num_tasks=3, episodes_per_trial=2)
    assert result.episode_returns.shape == (3, 2) and bool(torch.isfinite(result.episode_returns).all())
    assert not math.isnan(float(result.total_reward.mean()))


def test_mujoco_warnings_do_not_write_a_log_file_in_the_working_directory(tmp_path, monkeypatch):
    """MuJoCo's default handler appends warnings to ./MUJOCO_LOG.TXT; ours routes them to Python."""
    from classic.envs import mujoco_locomotion

    import mujoco

    monkeypatch.chdir(tmp_path)
    mujoco_locomotion._gymnasium_model.cache_clear()
    dist = CheetahDirConfig().make()
    data = mujoco.MjData(dist.model)
    data.qvel[0] = math.nan  # an unstable simulation: MuJoCo warns
    with pytest.warns(RuntimeWarning, match="MuJoCo: Nan"):
        mujoco.mj_step(dist.model, data)
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
