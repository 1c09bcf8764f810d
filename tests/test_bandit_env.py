"""Bernoulli bandit invariants, the baselines, and the evaluator."""

import math

import pytest
import torch

from classic.agents.bandit import (
    EpsilonGreedyAgent,
    GreedyAgent,
    OptimisticThompsonSamplingAgent,
    RandomAgent,
    ThompsonSamplingAgent,
    UCB1Agent,
    argmax_random_tiebreak,
    sample_beta,
)
from classic.envs import BernoulliBandit
from classic.evaluate import mean_ci, run_trials, sample_eval_tasks


def test_random_policy_earns_half_per_pull():
    dist = BernoulliBandit(5)
    res = run_trials(RandomAgent(5), dist, num_tasks=4000, episodes_per_trial=100, seed=3)
    # E[p_a] = 1/2 under p ~ U[0,1]; 4000 x 100 pulls: std of the mean ~ 0.15.
    assert abs(float(res.total_reward.mean()) - 50.0) < 0.8


def test_step_scores_invalid_actions_zero_and_shapes():
    dist = BernoulliBandit(3)
    g = torch.Generator().manual_seed(0)
    tasks = dist.sample_tasks(6, g)
    tasks = tasks._replace(probs=torch.ones(6, 3))
    state, obs = dist.reset(tasks, g)
    step = dist.step(tasks, state, torch.tensor([0, 1, 2, -1, 3, 7]), g)
    assert obs.shape == (6, 1) and step.obs.shape == (6, 1)
    assert step.reward.tolist() == [1, 1, 1, 0, 0, 0]
    assert step.terminated.all() and not step.truncated.any()


def test_reward_frequency_matches_probability():
    dist = BernoulliBandit(2)
    g = torch.Generator().manual_seed(1)
    tasks = dist.sample_tasks(1, g)._replace(probs=torch.tensor([[0.3, 0.8]]))
    tasks = type(tasks)(probs=tasks.probs.expand(20000, 2))
    state, _ = dist.reset(tasks, g)
    r = dist.step(tasks, state, torch.ones(20000, dtype=torch.long), g).reward
    assert abs(float(r.mean()) - 0.8) < 0.015


def test_optimal_return_and_regret_definition():
    dist = BernoulliBandit(4)
    res = run_trials(GreedyAgent(4), dist, num_tasks=50, episodes_per_trial=20, seed=0)
    tasks = sample_eval_tasks(dist, 50, 0)
    best = tasks.probs.max(1).values
    chosen = tasks.probs.gather(1, res.actions)
    expected = torch.cumsum(best.unsqueeze(1) - chosen, dim=1)
    torch.testing.assert_close(res.regret, expected)
    assert (res.regret[:, 1:] >= res.regret[:, :-1] - 1e-6).all()  # pseudo-regret never decreases


def test_eval_tasks_are_seeded_and_disjoint_from_training_streams():
    dist = BernoulliBandit(5)
    a = sample_eval_tasks(dist, 10, 0).probs
    assert torch.equal(a, sample_eval_tasks(dist, 10, 0).probs)
    assert not torch.equal(a, sample_eval_tasks(dist, 10, 1).probs)
    train = dist.sample_tasks(10, torch.Generator().manual_seed(0)).probs
    assert not torch.equal(a, train)


def _ucb1_reference(succ, pulls, c):
    t = sum(pulls)
    scores = []
    for s, n in zip(succ, pulls):
        scores.append(math.inf if n == 0 else s / n + c * math.sqrt(2 * math.log(t) / n))
    return scores


def test_ucb1_scores_match_reference_loop():
    agent = UCB1Agent(4, c=0.7)
    agent.reset(3, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        a = torch.randint(4, (3,), generator=g)
        r = torch.randint(2, (3,), generator=g).float()
        agent.update(a, r)
    scores = agent.scores()
    for i in range(3):
        ref = _ucb1_reference(agent.successes[i].tolist(), agent.pulls[i].tolist(), 0.7)
        assert scores[i].tolist() == pytest.approx(ref)


def _ucb1_prior_reference(succ, pulls, c, a):
    """RL² (arXiv 1611.02779, Sec. 4.1): the statistics start at a successes and a failures per arm."""
    counts = [n + 2 * a for n in pulls]
    t = sum(counts)
    return [(s + a) / m + c * math.sqrt(2 * math.log(t) / m) for s, m in zip(succ, counts)]


@pytest.mark.parametrize("a", [1.0, 0.5])
def test_ucb1_with_prior_counts_matches_reference_loop(a):
    agent = UCB1Agent(4, c=0.3, prior_count=a)
    agent.reset(3, torch.Generator().manual_seed(0))
    first = agent.scores()
    assert torch.allclose(first, first[:, :1].expand(3, 4))  # no arm is forced first: all equal
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        agent.update(torch.randint(4, (3,), generator=g), torch.randint(2, (3,), generator=g).float())
    scores = agent.scores()
    for i in range(3):
        ref = _ucb1_prior_reference(agent.successes[i].tolist(), agent.pulls[i].tolist(), 0.3, a)
        assert scores[i].tolist() == pytest.approx(ref)


def test_greedy_with_beta11_prior_stays_on_a_winner_and_leaves_a_loser():
    # Beta(1, 1) counts: a first success lifts the arm to 2/3 > 1/2, a first failure drops it to 1/3.
    agent = GreedyAgent(6, prior_count=1.0)
    agent.reset(2, torch.Generator().manual_seed(0))
    first = agent.act(
        torch.zeros(2, 1),
        torch.full((2,), -1),
        torch.zeros(2),
        torch.ones(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bool),
    )
    second = agent.act(
        torch.zeros(2, 1),
        first,
        torch.tensor([1.0, 0.0]),
        torch.ones(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bool),
    )
    assert second[0] == first[0] and second[1] != first[1]
    assert agent.scores()[0, first[0]] == pytest.approx(2 / 3) and agent.scores()[1, first[1]] == pytest.approx(1 / 3)
    # UCB1 with 0 prior counts (the default) pulls every arm once before any is repeated
    plain = run_trials(UCB1Agent(6), BernoulliBandit(6), 20, 6, seed=0).actions
    assert all(sorted(row.tolist()) == list(range(6)) for row in plain)


def test_prior_count_is_checked():
    with pytest.raises(ValueError, match="prior_count"):
        UCB1Agent(3, prior_count=-1)
    with pytest.raises(ValueError, match="prior_count"):
        EpsilonGreedyAgent(3, 0.1, prior_count=float("nan"))


def test_thompson_posterior_is_conjugate_update():
    agent = ThompsonSamplingAgent(3)
    agent.reset(1, torch.Generator().manual_seed(0))
    for a, r in [(0, 1), (0, 0), (2, 1), (0, 1)]:
        agent.update(torch.tensor([a]), torch.tensor([float(r)]))
    alpha, beta = agent.posterior()
    assert alpha.tolist() == [[3.0, 1.0, 2.0]]
    assert beta.tolist() == [[2.0, 1.0, 1.0]]


def test_tiebreak_is_uniform_over_maxima():
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0]]).expand(6000, 4)
    picks = argmax_random_tiebreak(scores, g)
    assert set(picks.tolist()) == {1, 2}
    assert abs(float((picks == 1).float().mean()) - 0.5) < 0.03


@pytest.mark.parametrize(
    "agent_cls", [RandomAgent, GreedyAgent, UCB1Agent, ThompsonSamplingAgent, OptimisticThompsonSamplingAgent]
)
def test_same_seed_same_numbers(agent_cls):
    dist = BernoulliBandit(5)
    r1 = run_trials(agent_cls(5), dist, 64, 30, seed=11)
    r2 = run_trials(agent_cls(5), dist, 64, 30, seed=11)
    assert torch.equal(r1.actions, r2.actions) and torch.equal(r1.rewards, r2.rewards)


def test_baselines_order_on_k5_n100():
    dist = BernoulliBandit(5)
    rand = run_trials(RandomAgent(5), dist, 500, 100, seed=0).total_reward.mean()
    eps = run_trials(EpsilonGreedyAgent(5, 0.1), dist, 500, 100, seed=0).total_reward.mean()
    ts = run_trials(ThompsonSamplingAgent(5), dist, 500, 100, seed=0).total_reward.mean()
    assert rand < eps and rand < ts and ts > 70


def test_mean_ci():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = mean_ci(x)
    assert out["mean"] == pytest.approx(2.5)
    assert out["ci95"] == pytest.approx(1.96 * float(x.std()) / 2)


@pytest.mark.parametrize("num_samples", [1, 3])
def test_ots_score_is_max_of_k_samples_clipped_at_the_mean(num_samples):
    # Under the Beta(1, 1) prior a sample is U[0, 1]; the max M of K of them has P(M <= x) = x^K,
    # so E[max(M, 1/2)] = (1/2)^(K+1) + K/(K+1) * (1 - (1/2)^(K+1)) (closed form).
    agent = OptimisticThompsonSamplingAgent(2, num_samples=num_samples)
    agent.reset(200_000, torch.Generator().manual_seed(0))
    scores = agent.scores()
    assert bool((scores >= 0.5).all())
    half = 0.5 ** (num_samples + 1)
    expected = half + num_samples / (num_samples + 1) * (1 - half)
    assert float(scores.mean()) == pytest.approx(expected, abs=2e-3)
    # After observations the clip point is the posterior mean (alpha / (alpha + beta)).
    agent.reset(50_000, torch.Generator().manual_seed(1))
    for _ in range(8):
        agent.update(torch.zeros(50_000, dtype=torch.long), torch.ones(50_000))
    assert float(agent.scores()[:, 0].min()) >= 9 / 10 - 1e-6


@pytest.mark.parametrize("num_samples,reshape", [(1, 1.0), (1, 0.25), (2, 0.25)])
def test_reshaped_ots_score_matches_numerical_integration(num_samples, reshape):
    # Arm 0 saw 8 successes and 2 failures: posterior Beta(9, 3), mean m = 3/4; reshaped, the
    # sampled Beta is Beta(9 / rho, 3 / rho). The score S = max(theta^(1..K), m) has
    # E[S] = m + int_m^1 (1 - F(x)^K) dx, F the reshaped Beta's cdf, integrated on a fine grid.
    n = 200_000
    agent = OptimisticThompsonSamplingAgent(2, num_samples=num_samples, reshape=reshape)
    agent.reset(n, torch.Generator().manual_seed(0))
    for r in [1.0] * 8 + [0.0] * 2:
        agent.update(torch.zeros(n, dtype=torch.long), torch.full((n,), r))
    scores = agent.scores()[:, 0].double()
    x = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    pdf = (
        torch.distributions.Beta(
            torch.tensor(9 / reshape, dtype=torch.float64), torch.tensor(3 / reshape, dtype=torch.float64)
        )
        .log_prob(x)
        .exp()
    )
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(pdf, x)])
    m = 0.75
    above = x >= m
    expected = m + torch.trapezoid(1 - cdf[above] ** num_samples, x[above])
    assert float(scores.min()) >= m - 1e-6
    assert float(scores.mean()) == pytest.approx(float(expected), abs=1e-3)
    # Reshaping keeps the mean and scales the variance by rho (a + b + 1) / (a + b + rho).
    sharp = OptimisticThompsonSamplingAgent(1, reshape=reshape)
    sharp.reset(n, torch.Generator().manual_seed(1))
    a, b = sharp.posterior()
    draws = sample_beta(a / reshape, b / reshape, torch.Generator().manual_seed(2))
    assert float(draws.var()) == pytest.approx(1 / 12 * reshape * 3 / (2 + reshape), rel=0.02)


def test_ots_tuning_searches_samples_and_reshaping_jointly_on_training_tasks():
    from classic.envs.bandit import BanditConfig
    from classic.experiments.compare import tune_baseline
    from classic.registry import AGENTS
    from classic import seeding

    ots = AGENTS.get("OTS")(grid={"num_samples": [1, 2], "reshape": [1.0, 0.1]})
    dist = BanditConfig(num_arms=5, episodes_per_trial=10).make()
    tasks = dist.sample_tasks(300, seeding.generator("tune", 0))
    best, grid = tune_baseline(ots, dist, 10, tasks, seed=0)
    assert set(grid) == {
        "num_samples=1,reshape=1.0",
        "num_samples=1,reshape=0.1",
        "num_samples=2,reshape=1.0",
        "num_samples=2,reshape=0.1",
    }
    assert max(grid, key=grid.get) == f"num_samples={best.num_samples},reshape={best.reshape}"
    # At n = 10 pulls, exploiting pays: the sharper posterior must win (closed-form intuition, and
    # 6.7 vs 6.0 mean reward measured on 1000 tasks).
    assert best.reshape == 0.1
    with pytest.raises(ValueError, match="reshape"):
        AGENTS.get("OTS")(reshape=0.0)


def test_ots_and_ts_prior_validation():
    with pytest.raises(ValueError, match="num_samples"):
        OptimisticThompsonSamplingAgent(3, num_samples=0)
    with pytest.raises(ValueError, match="reshape"):
        OptimisticThompsonSamplingAgent(3, reshape=0.0)
    with pytest.raises(ValueError, match="alpha0"):
        ThompsonSamplingAgent(3, alpha0=0.0)
