"""PEARL's sparse point robot (classic/envs/point_robot.py): goals, the sparse reward against a
per-step reference, clipping, the oracle against other policies, the fixed-goal split."""

import math

import pytest
import torch

from classic.evaluate import run_trials
from classic.registry import AGENTS, TASKS


def _dist(**kw):
    return TASKS.get("point_robot")(**kw).make()


def test_goals_lie_on_the_upper_half_circle():
    tasks = _dist().sample_tasks(1000, torch.Generator().manual_seed(0))
    assert torch.allclose(tasks.goal.norm(dim=-1), torch.ones(1000), atol=1e-6)
    assert bool((tasks.goal[:, 1] >= -1e-6).all())
    assert float(tasks.goal[:, 0].min()) < -0.95 and float(tasks.goal[:, 0].max()) > 0.95


def test_sparse_reward_matches_a_per_step_reference_and_actions_are_clipped():
    """oyster's SparsePointEnv: r = -d; zeroed outside goal_radius, + 1 inside."""
    dist = _dist()
    g = torch.Generator().manual_seed(1)
    tasks = dist.sample_tasks(64, g)
    state, obs = dist.reset(tasks, g)
    pos = torch.zeros(64, 2)
    for _ in range(20):
        action = (torch.rand(64, 2, generator=g) - 0.5) * 3  # up to 1.5: clipped to 0.1
        step = dist.step(tasks, state, action, g)
        for i in range(64):
            p = pos[i] + action[i].clamp(-0.1, 0.1)
            d = math.dist(p.tolist(), tasks.goal[i].tolist())
            r = -d
            ref = (r if r >= -0.2 else 0.0) + (1.0 if r >= -0.2 else 0.0)
            assert float(step.reward[i]) == pytest.approx(ref, abs=1e-6)
            pos[i] = p
        assert torch.allclose(step.obs, pos, atol=1e-6) and not bool(step.terminated.any())
        state = step.state
    assert bool(step.truncated.all())


def test_the_oracle_beats_other_policies_and_random_scores_near_zero():
    dist = _dist()
    g = torch.Generator().manual_seed(2)
    tasks = dist.sample_tasks(256, g)
    oracle = dist.optimal_episode_return(tasks)
    assert float(oracle.min()) > 8.0  # ~10 steps to reach the radius, then ~1 per step
    for speed in (0.05, 0.08, 0.1):  # straight lines at other speeds, and a noisy greedy policy
        for noise in (0.0, 0.03):
            state, _ = dist.reset(tasks, g)
            total = torch.zeros(256)
            for _ in range(dist.episode_length):
                direction = tasks.goal - state.pos
                a = speed * direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-9)
                a = a + noise * torch.randn(256, 2, generator=g)
                step = dist.step(tasks, state, a, g)
                total, state = total + step.reward, step.state
            assert bool((total <= oracle + 1e-5).all())
    random = run_trials(AGENTS.get("Random")().make(dist, 3), dist, 200, 3, seed=0)
    assert float(random.total_reward.mean()) < 0.5


def test_the_fixed_goal_split_is_disjoint_and_covers_the_half_circle():
    train, test = _dist(num_goals=100, goal_split="train"), _dist(num_goals=100, goal_split="test")
    a, b = train.goal_angles(), test.goal_angles()
    assert len(a) == 80 and len(b) == 20 and not set(a.tolist()) & set(b.tolist())
    assert float(b.min()) < 0.2 and float(b.max()) > 2.9
    tasks = test.sample_tasks(50, torch.Generator().manual_seed(0))
    allowed = torch.stack([torch.cos(b), torch.sin(b)], dim=-1)
    assert float(torch.cdist(tasks.goal, allowed).min(dim=1).values.max()) < 1e-5
    with pytest.raises(ValueError, match="goal_split needs num_goals"):
        TASKS.get("point_robot")(goal_split="test")
