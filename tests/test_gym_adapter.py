"""The gymnasium adapter over task distributions."""

import pytest
import torch

gym = pytest.importorskip("gymnasium")

from classic.envs import BernoulliBandit  # noqa: E402
from classic.envs.gym_adapter import TaskDistributionEnv  # noqa: E402


def test_passes_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(TaskDistributionEnv(BernoulliBandit(4), episodes_per_trial=5), skip_render_check=True)


def test_a_trial_is_n_pulls_on_one_task():
    env = TaskDistributionEnv(BernoulliBandit(3), episodes_per_trial=7)
    env.reset(seed=1)
    best = env.unwrapped.task.probs.max().item()
    steps = 0
    while True:
        _, reward, terminated, truncated, info = env.step(0)
        steps += 1
        assert reward in (0.0, 1.0) and info["optimal_episode_return"] == pytest.approx(best)
        if terminated or truncated:
            break
    assert steps == 7 and terminated and not truncated  # a bandit episode terminates


def test_task_resampled_or_fixed():
    env = TaskDistributionEnv(BernoulliBandit(3))
    env.reset(seed=0)
    first = env.task.probs.clone()
    env.reset()
    assert not torch.equal(first, env.task.probs)
    fixed = BernoulliBandit(3).sample_tasks(1, torch.Generator().manual_seed(5))
    env = TaskDistributionEnv(BernoulliBandit(3), task=fixed)
    for seed in (0, 1):
        env.reset(seed=seed)
        assert torch.equal(env.task.probs, fixed.probs)
    with pytest.raises(ValueError, match="batch of one"):
        TaskDistributionEnv(BernoulliBandit(3), task=BernoulliBandit(3).sample_tasks(2, torch.Generator()))


def test_reward_frequency_matches_the_task_and_seeding_repeats():
    env = TaskDistributionEnv(BernoulliBandit(2), episodes_per_trial=4000, resample_task=False)
    env.reset(seed=3)
    p = float(env.task.probs[0, 1])
    rewards = [env.step(1)[1] for _ in range(4000)]
    assert abs(sum(rewards) / 4000 - p) < 0.03
    env2 = TaskDistributionEnv(BernoulliBandit(2), episodes_per_trial=4000, resample_task=False)
    env2.reset(seed=3)
    assert rewards[:50] == [env2.step(1)[1] for _ in range(50)]  # same seed, same task and rewards
    env.reset(seed=3)
    again = [env.step(1)[1] for _ in range(50)]
    env.reset(seed=3)
    assert again == [env.step(1)[1] for _ in range(50)]


def test_tabular_mdp_through_the_adapter():
    from gymnasium.utils.env_checker import check_env

    from classic.envs import TabularMDPConfig

    env = TaskDistributionEnv(TabularMDPConfig().make(), episodes_per_trial=3)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (10,) and obs[0] == 1.0
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        done = terminated or truncated
    assert steps == 30 and truncated and not terminated  # an MDP trial ends by its time limit
