"""MAML's 2D point navigation (arXiv 1703.03400; pytorch-maml-rl ``navigation.py``): clipping,
termination, truncation, batching, the known-goal oracle, the registry."""

import math

import pytest
import torch

from classic.config import RecipeError, from_dict
from classic.core import Box, TaskDistribution
from classic.envs.nav2d import Nav2D, Nav2DConfig, Nav2DState, Nav2DTasks
from classic.registry import TASKS


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tasks(*goals):
    return Nav2DTasks(goal=torch.tensor(goals, dtype=torch.float32))


def test_registry_config_and_make():
    assert TASKS.get("nav2d") is Nav2DConfig
    cfg = Nav2DConfig()
    assert (cfg.episodes_per_trial, cfg.episode_length, cfg.goal_low, cfg.goal_high) == (2, 100, -0.5, 0.5)
    assert (cfg.max_speed, cfg.goal_tolerance) == (0.1, 0.01)
    dist = cfg.make()
    assert isinstance(dist, TaskDistribution)
    assert dist.episode_length == 100 and dist.obs_dim == 2
    assert dist.action_space == Box(-0.1, 0.1, (2,))
    assert "2D navigation" in cfg.describe() and "H=100" in cfg.describe(short=True)
    assert from_dict(Nav2DConfig, {"episode_length": 20, "max_speed": 0.2}) == Nav2DConfig(
        episode_length=20, max_speed=0.2
    )
    with pytest.raises(RecipeError):
        from_dict(Nav2DConfig, {"episode_length": "long"})
    for field, bad in [("episodes_per_trial", 0), ("episode_length", 0), ("max_speed", 0.0), ("goal_tolerance", -1.0)]:
        with pytest.raises(ValueError, match=field):
            Nav2DConfig(**{field: bad})
    with pytest.raises(ValueError, match="goal_low"):
        Nav2DConfig(goal_low=1.0, goal_high=0.0)


def test_sample_tasks_uniform_and_reproducible():
    dist = Nav2D()
    tasks = dist.sample_tasks(20000, _gen(1))
    assert tasks.goal.shape == (20000, 2) and tasks.goal.dtype == torch.float32
    assert bool((tasks.goal >= -0.5).all()) and bool((tasks.goal <= 0.5).all())
    assert abs(float(tasks.goal.mean())) < 0.01
    assert abs(float(tasks.goal.var()) - 1 / 12) < 0.003
    torch.testing.assert_close(dist.sample_tasks(5, _gen(3)).goal, dist.sample_tasks(5, _gen(3)).goal)


def test_reset_starts_at_origin_and_state_leads_with_n():
    dist = Nav2D()
    tasks = dist.sample_tasks(3, _gen())
    state, obs = dist.reset(tasks, _gen())
    assert isinstance(state, Nav2DState)
    assert obs.shape == (3, 2) and bool((obs == 0).all())
    assert all(f.shape[0] == 3 for f in state)
    assert state.t.dtype == torch.long and bool((state.t == 0).all())


def test_actions_are_clipped_into_the_box():
    dist = Nav2D()
    tasks = _tasks([0.4, 0.4], [0.4, 0.4], [0.4, 0.4], [0.4, 0.4])
    state, _ = dist.reset(tasks)
    action = torch.tensor([[5.0, 5.0], [-5.0, 0.05], [float("nan"), 0.1], [float("inf"), float("-inf")]])
    step = dist.step(tasks, state, action, _gen())
    expected = torch.tensor([[0.1, 0.1], [-0.1, 0.05], [0.0, 0.1], [0.1, -0.1]])
    torch.testing.assert_close(step.obs, expected)
    torch.testing.assert_close(step.state.pos, expected)
    # Reward after the move: minus the L2 distance of the new position to the goal.
    torch.testing.assert_close(step.reward, -torch.linalg.vector_norm(expected - tasks.goal, dim=-1))
    torch.testing.assert_close(dist.mean_reward(tasks, state, action), step.reward)
    assert not bool(step.terminated.any()) and not bool(step.truncated.any())
    assert bool((step.state.t == 1).all())


def test_termination_within_tolerance():
    dist = Nav2D()
    tasks = _tasks([0.005, -0.005], [0.05, 0.02], [0.05, 0.02], [0.05, 0.02], [0.3, 0.0])
    state, _ = dist.reset(tasks)
    action = torch.tensor([[0.0, 0.0], [0.045, 0.015], [0.03, 0.02], [0.05, 0.035], [0.1, 0.0]])
    step = dist.step(tasks, state, action)
    # 1: both within 0.01 already; 2: off by 0.005 in each; 3: x off by 0.02; 4: y off by 0.015.
    assert step.terminated.tolist() == [True, True, False, False, False]
    torch.testing.assert_close(step.reward[:2], -torch.tensor([math.hypot(0.005, 0.005)] * 2))


def test_truncation_at_horizon():
    dist = Nav2DConfig(episode_length=7).make()
    tasks = _tasks([0.5, 0.5], [-0.3, 0.2])
    state, _ = dist.reset(tasks)
    for t in range(1, 8):
        step = dist.step(tasks, state, torch.zeros(2, 2))
        state = step.state
        assert step.truncated.tolist() == [t == 7] * 2
        assert not bool(step.terminated.any())
    torch.testing.assert_close(step.reward, -torch.linalg.vector_norm(tasks.goal, dim=-1))


def test_batching_invariance():
    dist = Nav2D()
    tasks = dist.sample_tasks(6, _gen(4))
    actions = [0.3 * torch.randn(6, 2, generator=_gen(10 + t)) for t in range(5)]
    state, _ = dist.reset(tasks)
    batched = []
    for a in actions:
        step = dist.step(tasks, state, a)
        batched.append(step)
        state = step.state
    for i in range(6):
        sub = Nav2DTasks(goal=tasks.goal[i : i + 1])
        s, _ = dist.reset(sub)
        for a, full in zip(actions, batched):
            step = dist.step(sub, s, a[i : i + 1])
            s = step.state
            torch.testing.assert_close(step.obs, full.obs[i : i + 1])
            torch.testing.assert_close(step.reward, full.reward[i : i + 1])
            assert step.terminated.item() == full.terminated[i].item()
            assert step.truncated.item() == full.truncated[i].item()
        torch.testing.assert_close(dist.optimal_episode_return(sub), dist.optimal_episode_return(tasks)[i : i + 1])


def test_reset_rows_selected_by_where():
    """The trial loop resets finished tasks by selecting rows of a fresh state."""
    dist = Nav2D()
    tasks = dist.sample_tasks(4, _gen())
    state, _ = dist.reset(tasks)
    state = dist.step(tasks, state, torch.full((4, 2), 0.1)).state
    fresh, _ = dist.reset(tasks)
    done = torch.tensor([True, False, True, False])
    mixed = Nav2DState(*(torch.where(done.view(-1, *([1] * (f.dim() - 1))), g, f) for f, g in zip(state, fresh)))
    assert mixed.t.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(mixed.pos[1], torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(mixed.pos[0], torch.zeros(2))


def _rollout_return(dist, tasks, policy, generator=None):
    """Sum of rewards of one episode, none after termination; policy(pos, goal) -> (n, 2)."""
    state, _ = dist.reset(tasks)
    total = torch.zeros(tasks.goal.shape[0])
    alive = torch.ones(tasks.goal.shape[0], dtype=torch.bool)
    for _ in range(dist.episode_length):
        step = dist.step(tasks, state, policy(state.pos, tasks.goal))
        total += torch.where(alive, step.reward, torch.zeros_like(step.reward))
        alive &= ~step.terminated
        state = step.state
    return total


def test_oracle_closed_form_examples():
    dist = Nav2D()
    tasks = _tasks([0.25, 0.0], [0.0, 0.0], [-0.5, 0.5], [0.105, 0.0])
    ret = dist.optimal_episode_return(tasks)
    # (0.25, 0): distances 0.15, 0.05, then exactly on the goal (terminates, reward 0).
    # (-0.5, 0.5): along the diagonal, k steps leave sqrt(2) * (0.5 - 0.1 k).
    # (0.105, 0): one step leaves 0.005 < 0.01, which terminates with reward -0.005.
    expected = [-0.2, 0.0, -math.sqrt(2) * (0.4 + 0.3 + 0.2 + 0.1), -0.005]
    torch.testing.assert_close(ret, torch.tensor(expected), atol=1e-5, rtol=0)


def test_oracle_equals_greedy_rollout_and_beats_other_policies():
    dist = Nav2D()
    tasks = dist.sample_tasks(500, _gen(5))
    oracle = dist.optimal_episode_return(tasks)
    assert oracle.shape == (500,)
    greedy = _rollout_return(dist, tasks, lambda pos, goal: (goal - pos).clamp(-0.1, 0.1))
    torch.testing.assert_close(oracle, greedy)
    # Overshooting ("10x the offset", clipped by the env) is full speed too, but misses the landing.
    assert bool((oracle >= _rollout_return(dist, tasks, lambda pos, goal: 10 * (goal - pos)) - 1e-5).all())
    g = _gen(6)
    rand = _rollout_return(dist, tasks, lambda pos, goal: dist.action_space.sample(pos.shape[0], g))
    zero = _rollout_return(dist, tasks, lambda pos, goal: torch.zeros_like(pos))
    assert bool((oracle >= rand - 1e-5).all()) and bool((oracle >= zero - 1e-5).all())

    # Rescaled "head straight for the goal" (same direction, slower in the minor coordinate) is no better.
    def straight(pos, goal):
        d = goal - pos
        return (
            d
            / d.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
            * torch.minimum(d.abs().amax(-1, keepdim=True), torch.tensor(0.1))
        )

    assert bool((oracle >= _rollout_return(dist, tasks, straight) - 1e-5).all())
    torch.testing.assert_close(zero, -dist.episode_length * torch.linalg.vector_norm(tasks.goal, dim=-1))
    assert -1.0 < float(oracle.mean()) < -0.2
