"""The exact Bayes-optimal policy for two-armed Bernoulli bandits, by dynamic programming over
Beta posteriors (Bellman 1956; Gittins, Glazebrook & Weber 2011, Ch. 1).

With independent Beta(alpha0, beta0) priors on the arms and a horizon of n pulls, the posterior
after s_i successes in n_i pulls of arm i is Beta(alpha0 + s_i, beta0 + n_i - s_i), and the
Bayes-optimal value satisfies

    V_t(x) = max_i  p_i(x) (1 + V_{t+1}(x + success_i)) + (1 - p_i(x)) V_{t+1}(x + failure_i),
    p_i(x) = (alpha0 + s_i) / (alpha0 + beta0 + n_i),        V_n = 0,

over information states x at t pulls. For k = 2, x = (a, s_1, s_2) with a = n_1 (so n_2 = t - a),
and a level holds (t+1)^3 entries; the whole table for n = 100 takes about a second in numpy.
When the tasks are drawn from the prior (p_i ~ U[0, 1] = Beta(1, 1), as in RL² Table 1,
arXiv 1611.02779), ``V_0`` *is* the best expected total reward any agent can get, the limit
every other row of the table is measured against.

Example:
    >>> table = bayes_optimal_table(horizon=10)
    >>> round(table.value, 3)   # expected total reward of the Bayes-optimal 2-armed policy
    6.67
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from classic.agents.bandit import CountingBanditAgent

TIE, ARM0, ARM1 = 2, 0, 1


@dataclass
class BayesOptimalTable:
    """Decisions of the Bayes-optimal 2-armed policy.

    Attributes:
        horizon: n, pulls per trial.
        value: V_0 at the prior, the Bayes-optimal expected total reward.
        decisions: per t in [0, n), an int8 array (t+1, t+1, t+1) indexed [a, s_1, s_2]:
            0 or 1 = the arm to pull, 2 = both arms are optimal (ties within 1e-12).
    """

    horizon: int
    value: float
    decisions: list[np.ndarray]


@lru_cache(maxsize=8)
def bayes_optimal_table(horizon: int, alpha0: float = 1.0, beta0: float = 1.0) -> BayesOptimalTable:
    """Solve the 2-armed Bernoulli bandit with Beta priors exactly, backwards from t = n.

    Args:
        horizon: n >= 1 pulls.
        alpha0, beta0: Beta prior parameters (> 0), the same for both arms.

    Returns:
        The value at the prior and every level's decisions.

    Raises:
        ValueError: on a horizon < 1 or a non-positive prior parameter.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if alpha0 <= 0 or beta0 <= 0:
        raise ValueError(f"prior parameters must be > 0, got alpha0={alpha0}, beta0={beta0}")
    n = int(horizon)
    v_next = np.zeros((n + 1, n + 1, n + 1))  # V_n over [a, s1, s2]
    decisions: list[np.ndarray] = [None] * n  # type: ignore[list-item]
    for t in range(n - 1, -1, -1):
        a = np.arange(t + 1)[:, None, None]
        s1 = np.arange(t + 1)[None, :, None]
        s2 = np.arange(t + 1)[None, None, :]
        p1 = (alpha0 + s1) / (alpha0 + beta0 + a)
        p2 = (alpha0 + s2) / (alpha0 + beta0 + (t - a))
        m = t + 1  # slice the next level's table [a', s1', s2'] with a', s' in [0, t+1]
        vn = v_next[: m + 1, : m + 1, : m + 1]
        q1 = p1 * (1.0 + vn[1 : m + 1, 1 : m + 1, :m]) + (1.0 - p1) * vn[1 : m + 1, :m, :m]
        q2 = p2 * (1.0 + vn[:m, :m, 1 : m + 1]) + (1.0 - p2) * vn[:m, :m, :m]
        v = np.maximum(q1, q2)
        dec = np.where(np.abs(q1 - q2) <= 1e-12, TIE, np.where(q1 > q2, ARM0, ARM1)).astype(np.int8)
        decisions[t] = dec
        v_next = np.zeros((t + 1, t + 1, t + 1))
        v_next[...] = v
    return BayesOptimalTable(horizon=n, value=float(v_next[0, 0, 0]), decisions=decisions)


def brute_force_value(horizon: int, alpha0: float = 1.0, beta0: float = 1.0) -> float:
    """The same value by plain recursion over (s1, f1, s2, f2) (a slow reference, small n only)."""

    @lru_cache(maxsize=None)
    def v(s1: int, f1: int, s2: int, f2: int) -> float:
        if s1 + f1 + s2 + f2 == horizon:
            return 0.0
        p1 = (alpha0 + s1) / (alpha0 + beta0 + s1 + f1)
        p2 = (alpha0 + s2) / (alpha0 + beta0 + s2 + f2)
        q1 = p1 * (1 + v(s1 + 1, f1, s2, f2)) + (1 - p1) * v(s1, f1 + 1, s2, f2)
        q2 = p2 * (1 + v(s1, f1, s2 + 1, f2)) + (1 - p2) * v(s1, f1, s2, f2 + 1)
        return max(q1, q2)

    return v(0, 0, 0, 0)


class BayesOptimalAgent(CountingBanditAgent):
    """Acts by the exact Bayes-optimal table (2 arms; ties broken uniformly at random).

    Args:
        num_arms: must be 2.
        horizon: n, the trial length the table is solved for.
        alpha0, beta0: Beta prior of both arms.

    Raises:
        ValueError: if num_arms != 2.
    """

    name = "Bayes-optimal"

    def __init__(self, num_arms: int, horizon: int, alpha0: float = 1.0, beta0: float = 1.0) -> None:
        if num_arms != 2:
            raise ValueError(f"the exact Bayes-optimal DP is implemented for 2 arms, got {num_arms}")
        super().__init__(num_arms)
        self.table = bayes_optimal_table(int(horizon), float(alpha0), float(beta0))

    def scores(self) -> Tensor:
        pulls = self.pulls.long().numpy()
        succ = self.successes.long().numpy()
        t = pulls.sum(axis=1)
        out = np.zeros(pulls.shape, dtype=np.float32)
        for level in np.unique(t):  # in a trial every task is at the same level
            if level >= self.table.horizon:  # past the horizon: nothing left to gain
                continue
            rows = np.nonzero(t == level)[0]
            d = self.table.decisions[level][pulls[rows, 0], succ[rows, 0], succ[rows, 1]]
            for arm in (ARM0, ARM1):
                out[rows[d == arm], arm] = 1.0
        return torch.from_numpy(out)  # all-zero rows (ties) are broken at random by the base class
