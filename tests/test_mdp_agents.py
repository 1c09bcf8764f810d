"""Tabular-MDP baselines of RL² Table 2 (classic/agents/mdp.py): posterior updates, planners,
UCRL2's L1-ball maximization, posterior sampling, evaluator runs and validation."""

import random

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from classic.agents.mdp import (
    MDP_BASELINES,
    MDP_DEFAULT_PARAMS,
    MDP_TUNING_GRIDS,
    BEBAgent,
    EpsilonGreedyMDPAgent,
    GreedyMDPAgent,
    OPSRLAgent,
    PSRLAgent,
    UCRL2Agent,
    extended_value_iteration_q,
    finite_horizon_q,
    l1_optimistic_expectation,
    make_mdp_baseline,
    optimistic_sample_q,
    sample_dirichlet,
    sample_gamma,
)
from classic.envs.tabular_mdp import TabularMDP
from classic.evaluate import run_trials


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _one_hot(states, S):
    return torch.nn.functional.one_hot(torch.tensor(states), S).float()


# ------------------------------------------------------------------------------ posterior
def test_posterior_update_matches_slow_conjugate_formulas():
    """Feed a hand-made 2-task sequence (with an invalid action) through act() and compare with
    a slow loop: the reward posterior counts every valid step, the Dirichlet counts every valid
    step except the last of each episode (its successor is never observed)."""
    S, A, H, E = 3, 2, 4, 5
    mu0, var0, noise, alpha0 = 0.5, 2.0, 0.5, 0.7
    agent = GreedyMDPAgent(S, A, H, prior_mean=mu0, prior_var=var0, noise_var=noise, prior_alpha=alpha0)
    rng = random.Random(3)
    n = 2
    agent.reset(n, _gen(0))
    N = np.zeros((n, S, A))
    Y = np.zeros((n, S, A))
    C = np.zeros((n, S, A, S))
    # per task: list of episodes, each a list of (s, a, r) with a = -1 invalid (state unchanged)
    trajs = []
    for _ in range(n):
        eps = []
        for _ in range(E):
            s, ep = 0, []
            for _ in range(H):
                a = -1 if rng.random() < 0.1 else rng.randrange(A)
                ep.append((s, a, rng.gauss(0, 2)))
                s = s if a == -1 else rng.randrange(S)
            eps.append(ep)
        trajs.append(eps)
    # slow reference
    for i in range(n):
        for ep in trajs[i]:
            for h, (s, a, r) in enumerate(ep):
                if a < 0:
                    continue
                N[i, s, a] += 1
                Y[i, s, a] += r
                if h + 1 < H:
                    C[i, s, a, ep[h + 1][0]] += 1
    # drive the agent
    prev_a = [-1] * n
    prev_r = [0.0] * n
    for e in range(E + 1):
        for h in range(H if e < E else 1):
            states = [trajs[i][e][h][0] if e < E else 0 for i in range(n)]
            agent.act(
                _one_hot(states, S),
                torch.tensor(prev_a),
                torch.tensor(prev_r),
                torch.full((n,), h == 0),
                torch.zeros(n, dtype=torch.bool),
            )
            if e < E:
                prev_a = [trajs[i][e][h][1] for i in range(n)]
                prev_r = [trajs[i][e][h][2] if prev_a[i] >= 0 else 0.0 for i in range(n)]
    assert N.sum() > 0.8 * n * E * H and C.sum() < N.sum()
    np.testing.assert_allclose(agent.reward_count.numpy(), N)
    np.testing.assert_allclose(agent.reward_sum.numpy(), Y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(agent.trans_count.numpy(), C)
    mean, prec = agent.reward_posterior()
    prec_ref = 1 / var0 + N / noise
    mean_ref = (mu0 / var0 + Y / noise) / prec_ref
    np.testing.assert_allclose(prec.numpy(), prec_ref, rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(agent.transition_posterior().numpy(), alpha0 + C, rtol=1e-6)
    _, P = agent.posterior_mean_mdp()
    np.testing.assert_allclose(P.numpy(), (alpha0 + C) / (alpha0 + C).sum(-1, keepdims=True), rtol=1e-5)


def test_replans_only_tasks_whose_episode_ended_and_tracks_step():
    S, A, H = 4, 3, 3
    agent = PSRLAgent(S, A, H)
    agent.reset(2, _gen(1))
    obs = _one_hot([0, 0], S)
    a = agent.act(
        obs, torch.tensor([-1, -1]), torch.zeros(2), torch.tensor([True, True]), torch.zeros(2, dtype=torch.bool)
    )
    q_before = agent.q.clone()
    assert agent.h.tolist() == [1, 1]
    agent.act(_one_hot([2, 0], S), a, torch.ones(2), torch.tensor([False, True]), torch.zeros(2, dtype=torch.bool))
    assert torch.equal(agent.q[0], q_before[0])  # mid-episode: plan kept
    assert not torch.equal(agent.q[1], q_before[1])  # new episode: a fresh posterior sample
    assert agent.h.tolist() == [2, 1]


# ------------------------------------------------------------------------------- planning
def test_planner_matches_env_q_and_greedy_plans_in_known_mdp():
    dist = TabularMDP(num_states=6, num_actions=3, episode_length=7)
    tasks = dist.sample_tasks(50, _gen(2))
    Q_env = dist._q_values(tasks)
    torch.testing.assert_close(finite_horizon_q(tasks.mean_rewards, tasks.transitions, 7), Q_env)
    # OPSRL backup with K = 1 and UCRL2's EVI with radius 0 reduce to the same recursion.
    torch.testing.assert_close(optimistic_sample_q(tasks.mean_rewards[:, None], tasks.transitions[:, None], 7), Q_env)
    torch.testing.assert_close(
        extended_value_iteration_q(tasks.mean_rewards, tasks.transitions, torch.zeros(50, 6, 3), 7),
        Q_env,
        rtol=1e-5,
        atol=1e-5,
    )
    # A Greedy agent whose posterior mean equals the task plans the optimal Q and acts optimally.
    agent = GreedyMDPAgent(6, 3, 7)
    agent.reset(50, _gen(0))
    n_obs = 4.0
    agent.reward_count[:] = n_obs
    agent.reward_sum[:] = (1.0 + n_obs) * tasks.mean_rewards - 1.0  # mean = (1 + Y) / (1 + N)
    agent.trans_count[:] = 1000.0 * tasks.transitions - 1.0  # alpha = 1000 P
    a = agent.act(
        _one_hot([0] * 50, 6),
        torch.full((50,), -1),
        torch.zeros(50),
        torch.ones(50, dtype=torch.bool),
        torch.zeros(50, dtype=torch.bool),
    )
    torch.testing.assert_close(agent.q, Q_env, rtol=1e-4, atol=1e-4)
    assert torch.equal(a, dist.optimal_policy(tasks)[:, 0, 0])
    V = dist.optimal_values(tasks)
    torch.testing.assert_close(agent.q.max(-1).values, V[:, :7], rtol=1e-4, atol=1e-4)


def _l1_lp(p_hat, v, radius):
    """max p.v s.t. p >= 0, sum p = 1, sum |p - p_hat| <= radius, as an LP in (p, u)."""
    S = len(v)
    c = np.concatenate([-v, np.zeros(S)])
    eye = np.eye(S)
    A_ub = np.block([[eye, -eye], [-eye, -eye], [np.zeros((1, S)), np.ones((1, S))]])
    b_ub = np.concatenate([p_hat, -p_hat, [radius]])
    A_eq = np.concatenate([np.ones(S), np.zeros(S)])[None]
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=[1.0], bounds=[(0, None)] * (2 * S), method="highs")
    assert res.status == 0
    return -res.fun


def test_ucrl2_l1_inner_max_matches_lp():
    rng = np.random.default_rng(0)
    cases = []
    for S in (2, 3, 5, 10):
        for _ in range(10):
            p = rng.dirichlet(np.full(S, 0.5))
            v = rng.normal(size=S)
            if rng.random() < 0.3:
                v[rng.integers(S)] = v.max()  # ties
            cases.append((p, v, float(rng.choice([0.0, rng.uniform(0, 0.5), rng.uniform(0, 2.5)]))))
    for p, v, r in cases:
        got = float(l1_optimistic_expectation(torch.tensor(p), torch.tensor(v), torch.tensor(r)))
        ref = _l1_lp(p, v, r)
        assert got == pytest.approx(ref, abs=1e-7), (p, v, r)
        assert got >= float(p @ v) - 1e-12
    # batched call agrees with the per-case results
    S = 5
    P = torch.distributions.Dirichlet(torch.ones(S)).sample((4, 3))
    V = torch.randn(4, S)
    R = torch.rand(4, 3) * 2
    out = l1_optimistic_expectation(P, V[:, None, :], R)
    for i in range(4):
        for j in range(3):
            ref = _l1_lp(P[i, j].double().numpy(), V[i].double().numpy(), float(R[i, j]))
            assert float(out[i, j]) == pytest.approx(ref, abs=1e-5)


def test_ucrl2_radii_and_optimism():
    S, A, H = 4, 2, 3
    agent = UCRL2Agent(S, A, H, scale=0.5, delta=0.2)
    agent.reset(1, _gen(0))
    agent.reward_count[0, 1, 0] = 9.0
    agent.trans_count[0, 1, 0, 2] = 4.0
    agent.steps[0] = 20.0
    d_r, d_p = agent.confidence_radii(torch.tensor([0]))
    assert float(d_r[0, 1, 0]) == pytest.approx(0.5 * np.sqrt(14 * np.log(2 * S * A * 20 / 0.2) / 9), rel=1e-5)
    assert float(d_p[0, 1, 0]) == pytest.approx(0.5 * np.sqrt(14 * S * np.log(2 * A * 20 / 0.2) / 4), rel=1e-5)
    assert float(d_p[0, 0, 0]) == pytest.approx(0.5 * np.sqrt(14 * S * np.log(2 * A * 20 / 0.2)), rel=1e-5)
    q = agent.plan(torch.tensor([0]))
    assert float(q.max()) <= H * agent.reward_max + 1e-5  # clipped optimistic rewards


# ------------------------------------------------------------------------------- sampling
def test_posterior_samples_have_posterior_moments():
    S, A, K = 3, 2, 40_000
    agent = PSRLAgent(S, A, 2)
    agent.reset(1, _gen(5))
    agent.reward_count[0] = torch.tensor([[0.0, 1.0], [4.0, 9.0], [2.0, 0.0]])
    agent.reward_sum[0] = torch.tensor([[0.0, 3.0], [-2.0, 18.0], [1.0, 0.0]])
    agent.trans_count[0, 1, 1] = torch.tensor([5.0, 0.0, 2.0])
    agent.trans_count[0, 2, 0] = torch.tensor([0.0, 30.0, 1.0])
    R, P = agent.sample_posterior(torch.tensor([0]), K)
    mean, prec = agent.reward_posterior()
    torch.testing.assert_close(R[0].mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(R[0].var(0), 1 / prec[0], atol=0.03, rtol=0.05)
    alpha = agent.transition_posterior()[0]
    a0 = alpha.sum(-1, keepdim=True)
    torch.testing.assert_close(P[0].mean(0), alpha / a0, atol=0.005, rtol=0)
    torch.testing.assert_close(P[0].var(0), alpha * (a0 - alpha) / (a0**2 * (a0 + 1)), atol=2e-3, rtol=0.05)
    torch.testing.assert_close(P.sum(-1), torch.ones(1, K, S, A))
    # gamma sampler incl. the shape < 1 boost: mean = var = shape
    shape = torch.tensor([0.3, 1.0, 2.5, 40.0]).repeat(50_000, 1)
    x = sample_gamma(shape, _gen(1))
    torch.testing.assert_close(x.mean(0), shape[0], rtol=0.03, atol=0)
    torch.testing.assert_close(x.var(0), shape[0], rtol=0.06, atol=0)
    with pytest.raises(ValueError):
        sample_dirichlet(torch.tensor([1.0, 0.0]), _gen(0))


def test_opsrl_with_one_sample_equals_psrl_and_is_optimistic():
    dist = TabularMDP()
    r_ps = run_trials(PSRLAgent(10, 5, 10), dist, num_tasks=100, episodes_per_trial=5, seed=3)
    r_op = run_trials(OPSRLAgent(10, 5, 10, num_samples=1), dist, num_tasks=100, episodes_per_trial=5, seed=3)
    assert torch.equal(r_ps.actions, r_op.actions)
    assert torch.equal(r_ps.rewards, r_op.rewards)
    # The K-sample backup dominates the plan of every single sample.
    agent = OPSRLAgent(10, 5, 10, num_samples=4)
    agent.reset(30, _gen(2))
    agent.trans_count += torch.rand(30, 10, 5, 10, generator=_gen(3)) * 5
    R, P = agent.sample_posterior(torch.arange(30), 4)
    q_opt = optimistic_sample_q(R, P, 10)
    for k in range(4):
        assert bool((q_opt >= finite_horizon_q(R[:, k], P[:, k], 10) - 1e-5).all())


def test_beb_plans_with_count_bonus_and_reduces_to_greedy():
    agent = BEBAgent(4, 3, 5, beta=2.0)
    agent.reset(6, _gen(0))
    agent.reward_count += torch.randint(0, 6, (6, 4, 3), generator=_gen(1)).float()
    agent.reward_sum += torch.randn(6, 4, 3, generator=_gen(2)) * agent.reward_count
    agent.trans_count += torch.randint(0, 4, (6, 4, 3, 4), generator=_gen(3)).float()
    R, P = agent.posterior_mean_mdp()
    ref = finite_horizon_q(R + 2.0 / (1.0 + agent.reward_count), P, 5)
    torch.testing.assert_close(agent.plan(torch.arange(6)), ref)
    dist = TabularMDP()
    r_beb = run_trials(BEBAgent(10, 5, 10, beta=0.0), dist, num_tasks=50, episodes_per_trial=3, seed=4)
    r_gr = run_trials(GreedyMDPAgent(10, 5, 10), dist, num_tasks=50, episodes_per_trial=3, seed=4)
    assert torch.equal(r_beb.actions, r_gr.actions)


# ------------------------------------------------------------------------------ evaluator
def test_all_agents_valid_deterministic_and_better_than_random():
    dist = TabularMDP()
    regret = {}
    for name in MDP_BASELINES:
        res = [
            run_trials(make_mdp_baseline(name, 10, 5, 10), dist, num_tasks=200, episodes_per_trial=10, seed=0)
            for _ in range(2)
        ]
        assert res[0].agent == name
        acts = res[0].actions
        assert bool(((acts >= 0) & (acts < 5)).all()), name
        assert torch.equal(acts, res[1].actions) and torch.equal(res[0].rewards, res[1].rewards), name
        regret[name] = float(res[0].final_regret.mean())
    for name in ("PSRL", "OPSRL", "UCRL2", "BEB", "Greedy", "epsilon-greedy"):
        assert regret[name] < 0.85 * regret["Random"], (name, regret)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "cls, kwargs, param",
    [
        (EpsilonGreedyMDPAgent, {"epsilon": 1.5}, "epsilon"),
        (EpsilonGreedyMDPAgent, {"epsilon": -0.1}, "epsilon"),
        (OPSRLAgent, {"num_samples": 0}, "num_samples"),
        (OPSRLAgent, {"num_samples": 2.5}, "num_samples"),
        (UCRL2Agent, {"scale": 0.0}, "scale"),
        (UCRL2Agent, {"delta": 1.0}, "delta"),
        (BEBAgent, {"beta": -1.0}, "beta"),
        (GreedyMDPAgent, {"prior_var": 0.0}, "prior_var"),
        (PSRLAgent, {"noise_var": -1.0}, "noise_var"),
        (PSRLAgent, {"prior_alpha": 0.0}, "prior_alpha"),
    ],
)
def test_hyperparameter_validation(cls, kwargs, param):
    with pytest.raises(ValueError, match=param):
        cls(10, 5, 10, **kwargs)


def test_registry():
    for name, shape_kw in [("num_states", (0, 5, 10)), ("num_actions", (10, 1, 10)), ("episode_length", (10, 5, 0))]:
        with pytest.raises(ValueError, match=name):
            make_mdp_baseline("PSRL", *shape_kw)
    with pytest.raises(ValueError, match="PSRL"):
        make_mdp_baseline("Gittins", 10, 5, 10)
    assert set(MDP_TUNING_GRIDS) == {"OPSRL", "UCRL2", "BEB", "epsilon-greedy"} == set(MDP_DEFAULT_PARAMS)
    for name, (param, grid) in MDP_TUNING_GRIDS.items():
        assert 4 <= len(grid) <= 7
        assert set(MDP_DEFAULT_PARAMS[name]) == {param}
        for value in grid:
            assert getattr(make_mdp_baseline(name, 10, 5, 10, **{param: value}), param) == value
        assert getattr(make_mdp_baseline(name, 10, 5, 10), param) == MDP_DEFAULT_PARAMS[name][param]
    assert make_mdp_baseline("epsilon-greedy", 10, 5, 10, epsilon=0.0).name == "epsilon-greedy"
