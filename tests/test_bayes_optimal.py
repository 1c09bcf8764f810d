"""The exact Bayes-optimal 2-armed bandit policy against brute force and in the evaluator."""

import math

import pytest

from classic.agents.bandit import ThompsonSamplingAgent, UCB1Agent
from classic.agents.bayes_optimal import BayesOptimalAgent, bayes_optimal_table, brute_force_value
from classic.envs import BernoulliBandit
from classic.evaluate import run_trials


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("prior", [(1.0, 1.0), (2.0, 0.5)])
def test_dp_matches_brute_force_recursion(n, prior):
    assert bayes_optimal_table(n, *prior).value == pytest.approx(brute_force_value(n, *prior), abs=1e-10)


def test_known_small_values():
    assert bayes_optimal_table(1).value == pytest.approx(0.5)  # one pull of a U[0,1] arm
    assert bayes_optimal_table(2).value == pytest.approx(0.5 + 7 / 12)  # then stay on a winner (2/3) or switch (1/2)


def test_value_below_clairvoyant_and_regret_grows_slowly():
    for n in (10, 50, 100):
        v = bayes_optimal_table(n).value
        clairvoyant = n * 2 / 3  # E[max(p1, p2)] = 2/3 for p ~ U[0,1]
        assert v < clairvoyant
    regret = [100 * 2 / 3 - bayes_optimal_table(100).value, 50 * 2 / 3 - bayes_optimal_table(50).value]
    assert regret[0] < 2 * regret[1]  # sublinear in n


def test_agent_earns_the_dp_value_and_beats_the_heuristics():
    n, tasks = 30, 6000
    dist = BernoulliBandit(2)
    res = run_trials(BayesOptimalAgent(2, n), dist, tasks, n, seed=0)
    s = res.summary()["total_reward"]
    # tasks come from the prior, so the expected total reward is exactly V_0
    assert abs(s["mean"] - bayes_optimal_table(n).value) < s["ci95"]
    for other in (ThompsonSamplingAgent(2), UCB1Agent(2, c=0.2)):
        o = run_trials(other, dist, tasks, n, seed=0)
        # same tasks, expected regret is a low-variance paired comparison
        diff = (o.final_regret - res.final_regret).double()
        assert float(diff.mean()) > -1.96 * float(diff.std()) / math.sqrt(tasks)


def test_only_two_arms():
    with pytest.raises(ValueError, match="2 arms"):
        BayesOptimalAgent(3, 10)
    with pytest.raises(ValueError):
        bayes_optimal_table(0)
