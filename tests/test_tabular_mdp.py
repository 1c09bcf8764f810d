"""Random tabular MDP (RL², arXiv 1611.02779, Sec. 4.2): sampling, dynamics, planning, evaluator."""

import pytest
import torch

from classic.envs.base import TaskDistribution
from classic.envs.tabular_mdp import MDPState, MDPTasks, TabularMDP, TabularMDPConfig
from classic.evaluate import mean_ci, run_trials


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_config_validation_and_make():
    dist = TabularMDPConfig().make()
    assert (dist.num_states, dist.num_actions, dist.episode_length, dist.obs_dim) == (10, 5, 10, 10)
    assert isinstance(dist, TaskDistribution)
    for field, bad in [("num_states", 0), ("num_actions", 1), ("episode_length", 0), ("episodes_per_trial", 0)]:
        with pytest.raises(ValueError, match=field):
            TabularMDPConfig(**{field: bad})


def test_sample_shapes_and_distribution():
    dist = TabularMDP()
    tasks = dist.sample_tasks(2000, _gen(1))
    assert isinstance(tasks, MDPTasks)
    assert tasks.mean_rewards.shape == (2000, 10, 5)
    assert tasks.transitions.shape == (2000, 10, 5, 10)
    P = tasks.transitions
    assert bool((P >= 0).all())
    torch.testing.assert_close(P.sum(-1), torch.ones(2000, 10, 5))
    R = tasks.mean_rewards
    # 100k draws of N(1, 1): std of the mean ~ 0.003.
    assert abs(float(R.mean()) - 1.0) < 0.02
    assert abs(float(R.std()) - 1.0) < 0.02
    # Flat Dirichlet(1,...,1) over 10 outcomes: each marginal is Beta(1, 9), mean 0.1, var 0.0081.
    assert abs(float(P.mean()) - 0.1) < 1e-4
    assert abs(float(P.var()) - 9 / (100 * 11)) < 5e-4


def _reference_values(R, P, H):
    """Slow pure-Python finite-horizon value iteration for one task: V[h][s]."""
    S, A = len(R), len(R[0])
    V = [[0.0] * S for _ in range(H + 1)]
    for h in range(H - 1, -1, -1):
        for s in range(S):
            best = -float("inf")
            for a in range(A):
                q = R[s][a]
                for s2 in range(S):
                    q += P[s][a][s2] * V[h + 1][s2]
                best = max(best, q)
            V[h][s] = best
    return V


def test_value_iteration_matches_reference_loop():
    dist = TabularMDP(num_states=4, num_actions=3, episode_length=5)
    tasks = dist.sample_tasks(3, _gen(2))
    V = dist.optimal_values(tasks)
    assert V.shape == (3, 6, 4)
    for i in range(3):
        ref = _reference_values(tasks.mean_rewards[i].tolist(), tasks.transitions[i].tolist(), 5)
        torch.testing.assert_close(V[i], torch.tensor(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist.optimal_episode_return(tasks), V[:, 0, 0])
    pi = dist.optimal_policy(tasks)
    assert pi.shape == (3, 5, 4) and pi.dtype == torch.long


def _policy_value(tasks, pi, H):
    """Exact expected return from state 0 of a (possibly stochastic) policy pi (n, H, S, A)."""
    R, P = tasks.mean_rewards.double(), tasks.transitions.double()
    v = torch.zeros(R.shape[:2], dtype=torch.float64)
    for h in range(H - 1, -1, -1):
        q = R + torch.einsum("nsat,nt->nsa", P, v)
        v = (pi[:, h].double() * q).sum(-1)
    return v[:, 0]


def test_optimal_policy_attains_optimal_return_and_beats_random():
    dist = TabularMDP()
    tasks = dist.sample_tasks(200, _gen(3))
    H, A = dist.episode_length, dist.num_actions
    greedy = torch.nn.functional.one_hot(dist.optimal_policy(tasks), A)
    opt = dist.optimal_episode_return(tasks).double()
    torch.testing.assert_close(_policy_value(tasks, greedy, H), opt, atol=1e-4, rtol=1e-5)
    uniform = torch.full((200, H, dist.num_states, A), 1.0 / A)
    rand = _policy_value(tasks, uniform, H)
    assert bool((rand <= opt + 1e-6).all())
    # Random policy earns E[R] = 1 per step; the optimal one clearly more.
    assert float((opt - rand).mean()) > 3.0


class _OptimalAgent:
    """Plays the known optimal policy: state from the one-hot obs, time step from a counter."""

    name = "optimal"

    def __init__(self, policy):
        self.policy = policy  # (n, H, S)

    def reset(self, num_tasks, generator):
        self.t = torch.zeros(num_tasks, dtype=torch.long)

    def act(self, obs, prev_action, prev_reward, terminated, truncated):
        self.t = torch.where(terminated | truncated, torch.zeros_like(self.t), self.t + 1)
        s = obs.argmax(dim=1)
        return self.policy[torch.arange(obs.shape[0]), self.t, s]


class _RandomAgent:
    name = "random"

    def __init__(self, num_actions):
        self.num_actions = num_actions

    def reset(self, num_tasks, generator):
        self.g = generator

    def act(self, obs, prev_action, prev_reward, terminated, truncated):
        return torch.randint(0, self.num_actions, (obs.shape[0],), generator=self.g)


def test_evaluator_regret_optimal_near_zero_random_positive():
    dist = TabularMDP()
    from classic.evaluate import sample_eval_tasks

    tasks = sample_eval_tasks(dist, 2000, seed=5)
    opt = run_trials(_OptimalAgent(dist.optimal_policy(tasks)), dist, episodes_per_trial=5, tasks=tasks, seed=5)
    assert opt.rewards.shape == (2000, 50)
    stats = mean_ci(opt.final_regret)
    # Pseudo-regret of the optimal policy is zero-mean noise (random transitions only).
    assert stats["ci95"] > 0
    assert abs(stats["mean"]) < 1.5 * stats["ci95"]
    assert abs(stats["mean"]) < 0.3
    rnd = run_trials(_RandomAgent(dist.num_actions), dist, episodes_per_trial=5, tasks=tasks, seed=5)
    rstats = mean_ci(rnd.final_regret)
    assert rstats["mean"] - rstats["ci95"] > 10.0  # ~5 episodes x (several units) per episode
    assert rnd.invalid_rate == 0.0


def test_step_truncation_reset_and_invalid_actions():
    dist = TabularMDP(num_states=6, num_actions=3, episode_length=4)
    g = _gen(7)
    tasks = dist.sample_tasks(5, g)
    state, obs = dist.reset(tasks, g)
    assert isinstance(state, MDPState)
    assert bool((state.state == 0).all()) and bool((state.t == 0).all())
    torch.testing.assert_close(obs, torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 6).float())
    for h in range(dist.episode_length):
        step = dist.step(tasks, state, torch.tensor([0, 1, 2, 1, 0]), g)
        assert step.obs.shape == (5, 6) and step.reward.shape == (5,)
        torch.testing.assert_close(step.obs.sum(1), torch.ones(5))
        assert not bool(step.terminated.any())
        assert bool(step.truncated.all()) == (h == dist.episode_length - 1)
        assert not bool(step.truncated.any()) or h == dist.episode_length - 1
        state = step.state
    # Invalid actions: reward exactly 0, no move, zero mean reward.
    state = MDPState(state=torch.tensor([3, 2, 5, 0, 1]), t=torch.zeros(5, dtype=torch.long))
    bad = torch.tensor([-1, 3, 99, -2, 0])
    step = dist.step(tasks, state, bad, g)
    assert step.reward[:4].eq(0).all()
    assert step.state.state[:4].tolist() == [3, 2, 5, 0]
    mr = dist.mean_reward(tasks, state, bad)
    assert mr[:4].eq(0).all()
    assert float(mr[4]) == float(tasks.mean_rewards[4, 1, 0])
    assert dist.valid(bad).tolist() == [False, False, False, False, True]


def test_observed_reward_noise_is_unit_normal():
    dist = TabularMDP(num_states=3, num_actions=2)
    tasks = dist.sample_tasks(20000, _gen(8))
    state, _ = dist.reset(tasks, _gen(8))
    action = torch.zeros(20000, dtype=torch.long)
    step = dist.step(tasks, state, action, _gen(9))
    noise = step.reward - dist.mean_reward(tasks, state, action)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05


def test_transitions_follow_P():
    dist = TabularMDP(num_states=4, num_actions=2)
    tasks = dist.sample_tasks(1, _gen(10))
    tasks = MDPTasks(*(x.expand(40000, *x.shape[1:]) for x in tasks))
    state, _ = dist.reset(tasks, _gen(11))
    step = dist.step(tasks, state, torch.ones(40000, dtype=torch.long), _gen(12))
    freq = torch.bincount(step.state.state, minlength=4).float() / 40000
    torch.testing.assert_close(freq, tasks.transitions[0, 0, 1], atol=0.015, rtol=0)


def test_determinism_same_seed_same_tasks_and_trajectories():
    dist = TabularMDP()

    def rollout(seed):
        g = _gen(seed)
        tasks = dist.sample_tasks(8, g)
        state, obs = dist.reset(tasks, g)
        traj = []
        for _ in range(dist.episode_length):
            a = torch.randint(-1, dist.num_actions, (8,), generator=g)
            step = dist.step(tasks, state, a, g)
            traj.append((step.obs, step.reward, step.state.state))
            state = step.state
        return tasks, traj

    t1, tr1 = rollout(13)
    t2, tr2 = rollout(13)
    t3, _ = rollout(14)
    for x, y in zip(t1, t2):
        assert torch.equal(x, y)
    for a, b in zip(tr1, tr2):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert not torch.equal(t1.mean_rewards, t3.mean_rewards)
