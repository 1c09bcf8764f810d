"""The exact Bayes-optimal k-armed bandit policy against brute force, the previous 2-armed DP,
arm-permutation symmetry, the evaluator, and its limits."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from classic.agents import bayes_optimal as bo
from classic.agents.bandit import ThompsonSamplingAgent, UCB1Agent
from classic.agents.bayes_optimal import (
    BAYES_OPTIMAL_LIMITS,
    BayesOptimalAgent,
    bayes_optimal_max_horizon,
    bayes_optimal_supported,
    bayes_optimal_table,
    bayes_optimal_value,
    brute_force_value,
)
from classic.agents.gittins import GittinsAgent
from classic.envs import BernoulliBandit
from classic.evaluate import run_trials


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tables built by tests go to a temporary directory, never to ~/.cache/mrl."""
    monkeypatch.setenv("MRL_CACHE", str(tmp_path / "mrl_cache"))


def two_arm_level_dp(n: int, a0: float = 1.0, b0: float = 1.0):
    """The previous, 2-armed-only implementation (dense levels over [a = n_1, s_1, s_2]), kept as
    a reference: returns V_0 and per level t an int8 array (t+1,)*3 of 0/1 = arm, 2 = tie."""
    v_next = np.zeros((n + 1, n + 1, n + 1))
    decisions = [None] * n
    for t in range(n - 1, -1, -1):
        a = np.arange(t + 1)[:, None, None]
        s1 = np.arange(t + 1)[None, :, None]
        s2 = np.arange(t + 1)[None, None, :]
        p1 = (a0 + s1) / (a0 + b0 + a)
        p2 = (a0 + s2) / (a0 + b0 + (t - a))
        m = t + 1
        vn = v_next[: m + 1, : m + 1, : m + 1]
        q1 = p1 * (1.0 + vn[1 : m + 1, 1 : m + 1, :m]) + (1.0 - p1) * vn[1 : m + 1, :m, :m]
        q2 = p2 * (1.0 + vn[:m, :m, 1 : m + 1]) + (1.0 - p2) * vn[:m, :m, :m]
        decisions[t] = np.where(np.abs(q1 - q2) <= 1e-12, 2, np.where(q1 > q2, 0, 1)).astype(np.int8)
        v_next = np.maximum(q1, q2)
    return float(v_next[0, 0, 0]), decisions


def brute_force_q(n, k, s, f, a0=1.0, b0=1.0):
    """Q-value of each arm at state (s, f) by plain recursion (no symmetry)."""
    q = []
    for i in range(k):
        p = (a0 + s[i]) / (a0 + b0 + s[i] + f[i])
        up, down = list(s), list(f)
        up[i] += 1
        down[i] += 1
        q.append(p * (1 + brute_force_value(n, a0, b0, k, up, f)) + (1 - p) * brute_force_value(n, a0, b0, k, s, down))
    return np.array(q)


def random_states(rng, k, n, count, max_pulls=None):
    """(count, k) successes and failures with total pulls < n (< max_pulls if given)."""
    hi = n if max_pulls is None else max_pulls
    s = np.zeros((count, k), dtype=np.int64)
    f = np.zeros((count, k), dtype=np.int64)
    for r in range(count):
        t = rng.integers(0, hi)
        arms = rng.integers(0, k, size=t)
        wins = rng.random(t) < rng.random()
        np.add.at(s[r], arms[wins], 1)
        np.add.at(f[r], arms[~wins], 1)
    return s, f


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("k,n", [(1, 4), (2, 1), (2, 5), (2, 9), (3, 1), (3, 4), (3, 6), (4, 5), (5, 4), (6, 4)])
@pytest.mark.parametrize("prior", [(1.0, 1.0), (2.0, 0.5)])
def test_dp_matches_brute_force_recursion(k, n, prior):
    """Includes k > n (L = n slots stand for all arms) and k = n."""
    table = bayes_optimal_table(n, *prior, num_arms=k)
    assert table.value == pytest.approx(brute_force_value(n, *prior, num_arms=k), abs=1e-10)


@pytest.mark.parametrize("n", [1, 2, 7, 30, 100])
def test_two_arms_equal_the_previous_dense_dp(n):
    value, decisions = two_arm_level_dp(n)
    table = bayes_optimal_table(n)
    assert table.value == pytest.approx(value, abs=1e-10)
    if n > 30:
        return
    for t in range(n):  # every state of every level: same optimal arms (2 = both)
        a, s1, s2 = np.meshgrid(*(np.arange(t + 1),) * 3, indexing="ij")
        ok = (s1 <= a) & (s2 <= t - a)
        a, s1, s2 = a[ok], s1[ok], s2[ok]
        opt = table.optimal_arms(np.stack([s1, s2], 1), np.stack([a - s1, t - a - s2], 1))
        d = decisions[t][a, s1, s2]
        expect = np.stack([(d == 0) | (d == 2), (d == 1) | (d == 2)], 1)
        assert (opt == expect).all(), t


def test_known_small_values():
    assert bayes_optimal_value(2, 1) == pytest.approx(0.5)  # one pull of a U[0,1] arm
    assert bayes_optimal_value(2, 2) == pytest.approx(0.5 + 7 / 12)  # then stay on a winner (2/3) or switch (1/2)
    assert bayes_optimal_value(3, 2) == pytest.approx(0.5 + 7 / 12)
    assert bayes_optimal_value(1, 50) == 25.0 and bayes_optimal_table(50, num_arms=1).value == pytest.approx(25.0)
    assert bayes_optimal_value(2, 10) == pytest.approx(6.021785714, abs=1e-8)
    assert bayes_optimal_value(3, 10) == pytest.approx(brute_force_value(10, num_arms=3), abs=1e-10)


def test_value_grows_with_arms_then_saturates_and_stays_below_clairvoyant():
    for n in (3, 8, 12):
        v = [bayes_optimal_value(k, n) for k in range(1, n + 3)]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(v)), n
        assert v[n - 1] == v[n] == v[n + 1]  # k >= n: the same problem
    for k, n in ((2, 100), (3, 40)):
        assert bayes_optimal_value(k, n) < n * k / (k + 1)  # E[max of k U[0,1]] = k / (k + 1)
    regret = [100 * 2 / 3 - bayes_optimal_value(2, 100), 50 * 2 / 3 - bayes_optimal_value(2, 50)]
    assert regret[0] < 2 * regret[1]  # sublinear in n


# ------------------------------------------------------------------ states, symmetry, decisions


@pytest.mark.parametrize("k,n", [(3, 7), (2, 8), (5, 4)])
def test_state_values_and_optimal_arms_match_brute_force(k, n):
    rng = np.random.default_rng(k * 100 + n)
    table = bayes_optimal_table(n, num_arms=k)
    s, f = random_states(rng, k, n, 25)
    v = table.state_value(s, f)
    opt = table.optimal_arms(s, f)
    for r in range(len(s)):
        q = brute_force_q(n, k, s[r], f[r])
        assert v[r] == pytest.approx(q.max(), abs=1e-10)
        assert (opt[r] == (q >= q.max() - 1e-9)).all(), (s[r], f[r], q, opt[r])


def test_permuting_arms_gives_the_same_value_and_permuted_decisions():
    rng = np.random.default_rng(0)
    k, n = 3, 25
    table = bayes_optimal_table(n, num_arms=k)
    s, f = random_states(rng, k, n, 500)
    v = table.state_value(s, f)
    opt = table.optimal_arms(s, f)
    for perm in ([1, 0, 2], [2, 0, 1], [0, 2, 1]):
        assert (table.state_value(s[:, perm], f[:, perm]) == v).all()
        assert (table.optimal_arms(s[:, perm], f[:, perm]) == opt[:, perm]).all()
    # arms in identical posterior states are both optimal or both not
    same = (s[:, 0] == s[:, 1]) & (f[:, 0] == f[:, 1])
    assert same.sum() > 5 and (opt[same, 0] == opt[same, 1]).all()
    # and the canonical value equals the brute force on the unreduced state (smaller n)
    t8 = bayes_optimal_table(8, num_arms=3)
    s8, f8 = random_states(rng, 3, 8, 8)
    for r in range(len(s8)):
        for perm in ([0, 1, 2], [2, 1, 0]):
            bf = brute_force_value(8, num_arms=3, successes=s8[r, perm], failures=f8[r, perm])
            assert t8.state_value(s8[r, perm], f8[r, perm])[0] == pytest.approx(bf, abs=1e-10)


def test_state_lookup_errors():
    table = bayes_optimal_table(5, num_arms=3)
    with pytest.raises(ValueError, match="shape"):
        table.state_value(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="outside"):
        table.state_value([[2, 2, 1]], [[0, 0, 0]])  # 5 pulls: past the last level
    with pytest.raises(ValueError, match="non-negative integers"):
        table.state_value([[0.5, 0, 0]], [[0, 0, 0]])


# ------------------------------------------------------------------ agent in the evaluator


def test_agent_earns_v0_and_beats_gittins_and_thompson_three_arms():
    n, tasks, k = 10, 2000, 3
    dist = BernoulliBandit(num_arms=k)
    res = run_trials(BayesOptimalAgent(k, n), dist, num_tasks=tasks, episodes_per_trial=n, seed=0)
    total = res.total_reward.double()
    se = float(total.std()) / math.sqrt(tasks)
    # tasks come from the prior, so the expected total reward is exactly V_0
    assert abs(float(total.mean()) - bayes_optimal_value(k, n)) < 3 * se
    for other in (GittinsAgent(k, n), ThompsonSamplingAgent(k)):
        o = run_trials(other, dist, num_tasks=tasks, episodes_per_trial=n, seed=0)
        # same tasks; expected (pseudo-)regret is a low-variance paired comparison
        diff = (o.final_regret - res.final_regret).double()
        assert float(diff.mean()) > -1.96 * float(diff.std()) / math.sqrt(tasks), other.name


def test_agent_earns_the_dp_value_and_beats_the_heuristics_two_arms():
    n, tasks = 30, 6000
    dist = BernoulliBandit(2)
    res = run_trials(BayesOptimalAgent(2, n), dist, tasks, n, seed=0)
    s = res.summary()["total_reward"]
    assert abs(s["mean"] - bayes_optimal_value(2, n)) < s["ci95"] * 3 / 1.96
    for other in (ThompsonSamplingAgent(2), UCB1Agent(2, c=0.2)):
        o = run_trials(other, dist, tasks, n, seed=0)
        diff = (o.final_regret - res.final_regret).double()
        assert float(diff.mean()) > -1.96 * float(diff.std()) / math.sqrt(tasks)


def test_agent_many_arms_and_ties():
    """k = 10 > n = 6 (unpulled arms beyond the L = n slots); ties broken by the generator."""
    k, n, tasks = 10, 6, 3000
    dist = BernoulliBandit(num_arms=k)
    res = run_trials(BayesOptimalAgent(k, n), dist, num_tasks=tasks, episodes_per_trial=n, seed=1)
    total = res.total_reward.double()
    assert abs(float(total.mean()) - bayes_optimal_value(k, n)) < 3 * float(total.std()) / math.sqrt(tasks)
    first = torch.bincount(res.actions[:, 0], minlength=k).double()
    assert float(first.min()) > 0.7 * tasks / k  # all arms are optimal at the prior: uniform
    again = run_trials(BayesOptimalAgent(k, n), dist, num_tasks=tasks, episodes_per_trial=n, seed=1)
    assert torch.equal(res.actions, again.actions)  # deterministic given the evaluation seed
    # every action is optimal for the state it was taken in
    agent = BayesOptimalAgent(k, n)
    table = agent.table
    s = np.zeros((tasks, k))
    f = np.zeros((tasks, k))
    rows = np.arange(tasks)
    for t in range(n):
        opt = table.optimal_arms(s, f)
        a = res.actions[:, t].numpy()
        assert opt[rows, a].all(), t
        r = res.rewards[:, t].numpy()
        s[rows, a] += r
        f[rows, a] += 1 - r


def test_agent_past_the_horizon_is_greedy():
    res = run_trials(BayesOptimalAgent(2, 4), BernoulliBandit(2), num_tasks=200, episodes_per_trial=9, seed=0)
    assert (res.actions >= 0).all()


# ------------------------------------------------------------------ limits and cache


def test_unsupported_sizes_raise():
    assert bayes_optimal_max_horizon(3) == BAYES_OPTIMAL_LIMITS[3] >= 30
    assert bayes_optimal_max_horizon(2) >= 100
    assert bayes_optimal_supported(3, BAYES_OPTIMAL_LIMITS[3])
    assert not bayes_optimal_supported(3, BAYES_OPTIMAL_LIMITS[3] + 1)
    big = max(BAYES_OPTIMAL_LIMITS)
    assert bayes_optimal_supported(1000, BAYES_OPTIMAL_LIMITS[big])
    assert not bayes_optimal_supported(1000, BAYES_OPTIMAL_LIMITS[big] + 1)
    assert not bayes_optimal_supported(0, 5) and not bayes_optimal_supported(3, 0)
    with pytest.raises(ValueError, match=r"k=3: n<=\d+"):
        BayesOptimalAgent(3, BAYES_OPTIMAL_LIMITS[3] + 1)
    with pytest.raises(ValueError, match="supports only small problems"):
        bayes_optimal_value(5, 100)
    with pytest.raises(ValueError, match="supports only small problems"):
        bayes_optimal_table(BAYES_OPTIMAL_LIMITS[2] + 1, num_arms=2)
    with pytest.raises(ValueError):
        bayes_optimal_table(0)
    with pytest.raises(ValueError):
        bayes_optimal_value(0, 5)
    with pytest.raises(ValueError, match="prior"):
        BayesOptimalAgent(2, 5, alpha0=0.0)


def test_disk_cache_roundtrip_and_corrupt_file(monkeypatch, tmp_path):
    monkeypatch.setattr(bo, "DISK_CACHE_MIN_SECONDS", -1.0)  # cache even tiny tables
    built = bayes_optimal_table(9, num_arms=3, cache=True)
    path = bo._cache_file(3, 9, 1.0, 1.0)
    assert path.is_file() and built.meta["path"] == str(path)
    bo._MEMORY_CACHE.clear()
    loaded = bayes_optimal_table(9, num_arms=3)
    assert loaded.build_seconds == 0.0 and loaded.value == built.value
    for name in ("keys", "offsets", "values", "optimal"):
        assert np.array_equal(getattr(loaded, name), getattr(built, name))
    bo._MEMORY_CACHE.clear()
    path.write_bytes(b"not a table")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = bayes_optimal_table(9, num_arms=3)
    assert any("ignoring unreadable" in str(x.message) for x in w)
    assert again.value == built.value and again.build_seconds > 0
    bo._MEMORY_CACHE.clear()
