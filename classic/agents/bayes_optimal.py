"""The exact Bayes-optimal policy for k-armed Bernoulli bandits with Beta priors, by finite-
horizon dynamic programming (backward induction) over Beta posteriors.

Sources: Bellman 1956, "A problem in the sequential design of experiments", Sankhya 16:221-229
(the Bernoulli bandit as a DP over posterior states); Berry & Fristedt 1985, "Bandit Problems:
Sequential Allocation of Experiments", Chapman & Hall (finite-horizon Bernoulli bandits with
independent Beta priors solved by backward induction); Gittins 1979, "Bandit processes and
dynamic allocation indices", JRSS B 41(2):148-177, and Gittins, Glazebrook & Weber 2011,
"Multi-armed Bandit Allocation Indices", Ch. 1 (the index policy is optimal for discounted
infinite horizons only, hence the exact finite-horizon DP here; ``classic.agents.gittins`` has
the finite-horizon index heuristic).

With independent Beta(alpha0, beta0) priors on the arms and a horizon of n pulls, the posterior
of arm i after s_i successes and f_i failures is Beta(alpha0 + s_i, beta0 + f_i), and the
Bayes-optimal value of an information state x = ((s_1, f_1), ..., (s_k, f_k)) with
t = sum_i (s_i + f_i) pulls made satisfies the Bellman equation

    V(x) = max_i  p_i(x) (1 + V(x + success_i)) + (1 - p_i(x)) V(x + failure_i),
    p_i(x) = (alpha0 + s_i) / (alpha0 + beta0 + s_i + f_i),        V(x) = 0 when t = n.

Implementation (any k, small n):

* Arm-permutation symmetry: V depends on x only through the multiset of per-arm states, so a
  state is stored once, as its per-arm states sorted. A per-arm state (s, f) with m = s + f is
  numbered ``m (m + 1) / 2 + s`` (0 = unpulled); a level-t state is the ascending tuple of its L
  largest per-arm numbers, L = min(k, n). At most t < n arms have been pulled at a level t < n,
  so for k > n the L = n slots always hold every pulled arm plus at least one unpulled arm, and
  the other k - L unpulled arms are copies of it: the table for k >= n is the table for k = n.
  The tuple is encoded as one int64 in mixed radix (the r-th largest per-arm state of a level
  t < n has at most (n - 1) / r pulls, which bounds each digit; see ``_radices``).
* Levels t = 0..n-1 are generated forwards, each state of level t + 1 exactly once from its
  canonical predecessor (one pull less on its largest per-arm state), then solved backwards,
  vectorized per level in numpy: children are re-sorted by one bubble pass and found by binary
  search in the next level's sorted keys.

Sizes and single-core build times (shared 2-core machine; ``build_seconds``, excluding loads
from the disk cache) are in :data:`BAYES_OPTIMAL_LIMITS`. When the tasks are drawn from the prior
(p_i ~ U[0, 1] = Beta(1, 1), as in RL² Table 1, arXiv 1611.02779), ``V_0`` *is* the best
expected total reward any agent can get, the limit every other row of a table is measured
against (:func:`bayes_optimal_value`).

Example:
    >>> round(bayes_optimal_value(2, 10), 4)   # expected total reward, 2 arms, 10 pulls
    6.0218
    >>> round(bayes_optimal_value(3, 10), 4)
    6.4096
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from classic.agents.bandit import CountingBanditAgent, _num_arms
from classic.agents.base import BaselineConfig
from classic.registry import AGENTS
from classic.agents.gittins import _check_int

__all__ = [
    "BAYES_OPTIMAL_LIMITS",
    "BayesOptimalAgent",
    "BayesOptimalTable",
    "bayes_optimal_max_horizon",
    "bayes_optimal_supported",
    "bayes_optimal_table",
    "bayes_optimal_value",
    "brute_force_value",
]

# Bump when the table algorithm or layout changes (invalidates on-disk caches).
TABLE_VERSION = 1

# Largest supported horizon n per number of arms k; the entry for the largest k listed applies to
# every larger k (for k >= n the state space does not depend on k). Chosen so that a table stays
# under ~250 MB (17 bytes per state: int64 key, float64 value, decision bits), its build peaks
# under ~1 GB and takes at most ~10 s on one core. Measured builds (states, table size, seconds
# on one core of a shared 2-core machine, peak resident memory of the process):
#   k=1  n=1000:  0.5 M                      k=2  n=100:   2.2 M,  38 MB, 0.4 s
#   k=2  n=150:  11.0 M, 187 MB, 3.4 s, 0.55 GB    k=3  n=50:    4.9 M,  83 MB, 1.6 s, 0.4 GB
#   k=3  n=60:   13.8 M, 235 MB, 4.8 s, 0.7 GB     k=4  n=40:   13.7 M, 233 MB, 7.3 s, 0.8 GB
#   k=5  n=32:   11.0 M, 187 MB, 6.1 s, 0.8 GB     k=6  n=28:    8.2 M, 140 MB, 7.1 s, 0.8 GB
#   k=7  n=25:    4.6 M,  78 MB, 4.5 s, 0.6 GB     k=8  n=24:    4.1 M,  69 MB, 3.7 s, 0.6 GB
#   k>=9 n=22: 1.9 M (k=9) to 2.3 M (k>=22), 46 MB, 1.5-7.5 s, 0.8 GB
#   k>=n, n=10: 2,296 states, 0.01 s (RL² Table 1's n=10 rows, k = 5, 10, 50)
# Beyond: k=3 n=70 builds in 16 s but needs 573 MB (1.3 GB peak); k=2 n=200: 584 MB, 13 s;
# for n >= 24 and large k the state key no longer fits in int64.
BAYES_OPTIMAL_LIMITS: dict[int, int] = {1: 1000, 2: 150, 3: 60, 4: 40, 5: 32, 6: 28, 7: 25, 8: 24, 9: 22}

# Arms whose Q-values are within TIE_TOL of the best are all optimal (the expected loss of taking
# any of them is < TIE_TOL per step). Arms in identical posterior states have bitwise-equal Q.
TIE_TOL = 1e-11


def bayes_optimal_max_horizon(num_arms: int) -> int:
    """Largest horizon n for which the exact table of ``num_arms`` arms is supported.

    Raises:
        ValueError: if num_arms is not an integer >= 1.
    """
    k = _check_int("num_arms", num_arms, 1)
    return BAYES_OPTIMAL_LIMITS[min(k, max(BAYES_OPTIMAL_LIMITS))]


def bayes_optimal_supported(num_arms: int, horizon: int) -> bool:
    """Whether the exact Bayes-optimal table for (k, n) = (num_arms, horizon) is supported, i.e.
    k >= 1, 1 <= n <= ``bayes_optimal_max_horizon(k)`` (see :data:`BAYES_OPTIMAL_LIMITS`)."""
    try:
        k = _check_int("num_arms", num_arms, 1)
        n = _check_int("horizon", horizon, 1)
    except ValueError:
        return False
    return n <= bayes_optimal_max_horizon(k)


def _limits_text() -> str:
    kmax = max(BAYES_OPTIMAL_LIMITS)
    parts = [f"k={k}: n<={n}" for k, n in sorted(BAYES_OPTIMAL_LIMITS.items()) if k < kmax]
    parts.append(f"k>={kmax}: n<={BAYES_OPTIMAL_LIMITS[kmax]}")
    return ", ".join(parts)


def _check_supported(num_arms, horizon) -> tuple[int, int]:
    k = _check_int("num_arms", num_arms, 1)
    n = _check_int("horizon", horizon, 1)
    if n > bayes_optimal_max_horizon(k):
        raise ValueError(
            f"the exact Bayes-optimal DP supports only small problems ({_limits_text()}); got num_arms={k}, horizon={n}"
        )
    return k, n


def _check_prior(alpha0, beta0) -> tuple[float, float]:
    for name, v in (("alpha0", alpha0), ("beta0", beta0)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not (math.isfinite(v) and v > 0)
        ):
            raise ValueError(f"prior parameters must be finite and > 0, got {name}={v!r}")
    return float(alpha0), float(beta0)


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


@dataclass
class BayesOptimalTable:
    """Values and decisions of the Bayes-optimal k-armed policy for every reachable state.

    Layout: level t = 0..n-1 (pulls made) holds its canonical states (see the module docstring)
    at rows ``offsets[t]:offsets[t + 1]``, sorted by ``keys``.

    Attributes:
        num_arms: k.
        horizon: n, pulls per trial.
        alpha0, beta0: the Beta prior of every arm.
        value: V_0 at the prior, the Bayes-optimal expected total reward.
        slots: L = min(k, n), per-arm states stored per state.
        keys: (S,) int64 encoded canonical states, ascending within each level.
        offsets: (n + 1,) int64 level boundaries into ``keys``, ``values``, ``optimal``.
        values: (S,) float64 V (expected reward still to come under the optimal policy).
        optimal: (S,) unsigned ints, bit j set iff pulling the arm in sorted slot j is optimal.
        build_seconds: wall time of the build (0 when loaded from the disk cache).
    """

    num_arms: int
    horizon: int
    alpha0: float
    beta0: float
    value: float
    slots: int
    keys: np.ndarray
    offsets: np.ndarray
    values: np.ndarray
    optimal: np.ndarray
    build_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def num_states(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.values.nbytes + self.optimal.nbytes + self.offsets.nbytes)

    def _canonical(self, successes, failures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows into the table, per-arm sorted slot (N, k) and level (N,) of the given counts.

        Raises:
            ValueError: on shapes other than (N, k), negative or non-integer counts, or a level
                outside [0, n).
        """
        s, f = _as_float_array(successes), _as_float_array(failures)
        if s.ndim == 1:
            s, f = s[None], f[None]
        k, n, L = self.num_arms, self.horizon, self.slots
        if s.shape != f.shape or s.ndim != 2 or s.shape[1] != k:
            raise ValueError(f"successes and failures must both have shape (N, {k}), got {s.shape} and {f.shape}")
        si, fi = np.rint(s).astype(np.int64), np.rint(f).astype(np.int64)
        if (
            (si < 0).any()
            or (fi < 0).any()
            or np.abs(s - si).max(initial=0) > 1e-6
            or np.abs(f - fi).max(initial=0) > 1e-6
        ):
            raise ValueError("successes and failures must be non-negative integers")
        m = si + fi
        t = m.sum(axis=1)
        if (t >= n).any():
            raise ValueError(f"states with {int(t.max())} pulls are outside the horizon-{n} table (levels 0..{n - 1})")
        idx = m * (m + 1) // 2 + si
        order = np.argsort(idx, axis=1, kind="stable")
        top = np.take_along_axis(idx, order[:, k - L :], axis=1)
        key = _encode([top[:, c] for c in range(L)], _radices(n, L))
        rows = np.empty(len(t), dtype=np.int64)
        for level in np.unique(t):
            sel = np.nonzero(t == level)[0]
            lo, hi = int(self.offsets[level]), int(self.offsets[level + 1])
            pos = lo + np.searchsorted(self.keys[lo:hi], key[sel])
            if (pos >= hi).any() or (self.keys[np.minimum(pos, hi - 1)] != key[sel]).any():  # pragma: no cover - a bug
                raise RuntimeError("state missing from the Bayes-optimal table")
            rows[sel] = pos
        slot = np.empty_like(order)
        np.put_along_axis(slot, order, np.maximum(np.arange(k) - (k - L), 0)[None].repeat(len(t), 0), axis=1)
        return rows, slot, t

    def state_value(self, successes, failures) -> np.ndarray:
        """V at the given states: the expected reward still to come under the Bayes-optimal
        policy, given per-arm ``successes`` and ``failures`` (N, k) (or (k,)) with fewer than n
        pulls in total. Returns (N,) float64.

        Raises:
            ValueError: see ``_canonical``.
        """
        rows, _, _ = self._canonical(successes, failures)
        return self.values[rows]

    def optimal_arms(self, successes, failures) -> np.ndarray:
        """(N, k) bool: which arms are Bayes-optimal to pull next (several on ties, always
        including all arms in the same posterior state). Inputs as in :meth:`state_value`."""
        rows, slot, _ = self._canonical(successes, failures)
        bits = self.optimal[rows].astype(np.uint64)[:, None]
        return ((bits >> slot.astype(np.uint64)) & np.uint64(1)).astype(bool)


def _as_float_array(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _radices(n: int, L: int) -> list[int]:
    """Mixed-radix digits of the state key: at a level t < n the per-arm state in sorted slot c
    (rank r = L - c from the largest) has m <= (n - 1) // r pulls, so a number < R_c =
    (M + 1)(M + 2) / 2 with M = (n - 1) // r.

    Raises:
        ValueError: if the key does not fit in int64 (prod R_c >= 2^63).
    """
    R = [((n - 1) // r + 1) * ((n - 1) // r + 2) // 2 for r in range(L, 0, -1)]
    if sum(math.log2(x) for x in R) >= 62.9:
        raise ValueError(f"num_arms >= {L}, horizon={n}: the state key does not fit in int64")
    return R


def _encode(cols: list[np.ndarray], R: list[int]) -> np.ndarray:
    key = np.asarray(cols[0], dtype=np.int64).copy()
    for c in range(1, len(cols)):
        key *= R[c]
        key += cols[c]
    return key


def _build(k: int, n: int, a0: float, b0: float) -> BayesOptimalTable:
    start = time.perf_counter()
    L = min(k, n)
    P = (n + 1) * (n + 2) // 2
    R = _radices(n, L)
    m_of = np.repeat(np.arange(n + 1, dtype=np.int64), np.arange(1, n + 2))
    s_of = np.arange(P, dtype=np.int64) - m_of * (m_of + 1) // 2
    p_of = (a0 + s_of) / (a0 + b0 + m_of)

    def encode(cols: list[np.ndarray]) -> np.ndarray:
        return _encode(cols, R)

    def decode(key: np.ndarray) -> list[np.ndarray]:
        cols = []
        for c in range(L - 1, -1, -1):
            cols.append(key % R[c])
            key = key // R[c]
        return cols[::-1]

    def child(cols: list[np.ndarray], j: int, success: bool) -> list[np.ndarray]:
        """Slot j pulled; (m, s) -> (m + 1, s + 1) or (m + 1, s); the new value moves right."""
        out = list(cols)
        out[j] = cols[j] + m_of[cols[j]] + (2 if success else 1)
        for q in range(j, L - 1):
            lo, hi = np.minimum(out[q], out[q + 1]), np.maximum(out[q], out[q + 1])
            out[q], out[q + 1] = lo, hi
        return out

    def find(level: np.ndarray, query: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(level, query)
        if (pos >= len(level)).any() or (level[np.minimum(pos, len(level) - 1)] != query).any():  # pragma: no cover
            raise RuntimeError("Bayes-optimal DP: a child state is missing from the next level (a bug)")
        return pos

    # Forward: level t + 1 from level t. A level-(t+1) state is generated only from its canonical
    # predecessor (undo one pull of its largest per-arm state y': a success if y' has one, else a
    # failure), i.e. by a pull whose result y' is >= every per-arm state of the parent, taken on
    # the last of equal slots. Every state is thus generated exactly once.
    keys = [np.zeros(1, dtype=np.int64)]
    for t in range(n - 1):
        cols = decode(keys[t])
        top = cols[L - 1]
        parts = []
        for j in range(L):
            c = cols[j]
            last_of_equal = (c != cols[j + 1]) if j < L - 1 else np.ones(c.shape, dtype=bool)
            ys = c + m_of[c] + 2
            yf = c + m_of[c] + 1
            for y, ok in ((ys, last_of_equal & (ys >= top)), (yf, last_of_equal & (yf >= top) & (s_of[c] == 0))):
                sel = np.nonzero(ok)[0]
                if sel.size:
                    out = [cc[sel] for cc in cols]
                    del out[j]
                    out.append(y[sel])
                    parts.append(encode(out))
        level = np.concatenate(parts)
        level.sort()
        keys.append(level)
    sizes = [len(x) for x in keys]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    mask_dtype = np.uint8 if L <= 8 else np.uint16 if L <= 16 else np.uint32 if L <= 32 else np.uint64
    values = np.empty(offsets[-1], dtype=np.float64)
    optimal = np.empty(offsets[-1], dtype=mask_dtype)

    # Backward.
    v_next = None
    for t in range(n - 1, -1, -1):
        cols = decode(keys[t])
        N = sizes[t]
        Q = np.empty((N, L))
        for j in range(L):
            p = p_of[cols[j]]
            if v_next is None:
                Q[:, j] = p
                continue
            vs = v_next[find(keys[t + 1], encode(child(cols, j, True)))]
            vf = v_next[find(keys[t + 1], encode(child(cols, j, False)))]
            Q[:, j] = vf + p * (1.0 + vs - vf)
        v = Q.max(axis=1)
        best = Q >= (v - TIE_TOL)[:, None]
        bits = np.zeros(N, dtype=np.uint64)
        for j in range(L):
            bits |= best[:, j].astype(np.uint64) << np.uint64(j)
        values[offsets[t] : offsets[t + 1]] = v
        optimal[offsets[t] : offsets[t + 1]] = bits.astype(mask_dtype)
        v_next = v
    return BayesOptimalTable(
        num_arms=k,
        horizon=n,
        alpha0=a0,
        beta0=b0,
        value=float(v_next[0]),
        slots=L,
        keys=np.concatenate(keys),
        offsets=offsets,
        values=values,
        optimal=optimal,
        build_seconds=time.perf_counter() - start,
    )


def _cache_dir() -> Path:
    env = os.environ.get("MRL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mrl"


def _cache_file(L: int, n: int, a0: float, b0: float) -> Path:
    return _cache_dir() / f"bayes_optimal_v{TABLE_VERSION}_L{L}_n{n}_a{a0:g}_b{b0:g}.npz"


_MEMORY_CACHE: dict[tuple, BayesOptimalTable] = {}
DISK_CACHE_MIN_SECONDS = 1.0  # tables that build faster than this are not written to disk
MEMORY_CACHE_SIZE = 4  # tables kept in memory (least recently used dropped; up to ~250 MB each)


def bayes_optimal_table(
    horizon: int,
    alpha0: float = 1.0,
    beta0: float = 1.0,
    *,
    num_arms: int = 2,
    check_limits: bool = True,
    cache: bool = True,
    disk_cache: bool = True,
) -> BayesOptimalTable:
    """Solve the k-armed Bernoulli bandit with i.i.d. Beta priors exactly (backwards from t = n).

    The last ``MEMORY_CACHE_SIZE`` tables are memoized in memory and, when ``disk_cache`` and
    the build took more than ``DISK_CACHE_MIN_SECONDS``, stored as ``.npz`` under
    ``$MRL_CACHE`` (default ``~/.cache/mrl``); an unreadable cache file is ignored (rebuilt).
    The cache is never needed for correctness. For k > n the table of k = n is used (same
    states and values; see the module docstring).

    Args:
        horizon: n >= 1 pulls.
        alpha0, beta0: Beta prior parameters (finite, > 0), the same for every arm.
        num_arms: k >= 1.
        check_limits: refuse (k, n) beyond :data:`BAYES_OPTIMAL_LIMITS` (False: build anyway;
            memory is ~17 bytes per state, about C(n + 2L, 2L) / L! states for L = min(k, n)).
        cache: use/store the in-memory and on-disk caches (False: always rebuild).
        disk_cache: also read/write the on-disk cache (ignored when cache is False).

    Returns:
        A :class:`BayesOptimalTable`; ``.value`` is V_0.

    Raises:
        ValueError: on a non-integer or non-positive horizon or num_arms, a non-positive prior
            parameter, or an unsupported (k, n) (if ``check_limits``).
    """
    k = _check_int("num_arms", num_arms, 1)
    n = _check_int("horizon", horizon, 1)
    a0, b0 = _check_prior(alpha0, beta0)
    if check_limits:
        _check_supported(k, n)
    L = min(k, n)
    key = (L, n, a0, b0)
    table = _MEMORY_CACHE.get(key) if cache else None
    path = _cache_file(L, n, a0, b0)
    if table is None and cache and disk_cache and path.is_file():
        table = _load(path, L, n, a0, b0)
    if table is None:
        table = _build(L, n, a0, b0)
        if cache and disk_cache and table.build_seconds > DISK_CACHE_MIN_SECONDS:
            _save(table, path)
    if cache:
        _MEMORY_CACHE.pop(key, None)
        _MEMORY_CACHE[key] = table  # most recently used last
        while len(_MEMORY_CACHE) > MEMORY_CACHE_SIZE:
            del _MEMORY_CACHE[next(iter(_MEMORY_CACHE))]
    if table.num_arms != k:  # k > n: same arrays, the agent maps the extra unpulled arms to slot 0
        table = BayesOptimalTable(
            k,
            n,
            a0,
            b0,
            table.value,
            L,
            table.keys,
            table.offsets,
            table.values,
            table.optimal,
            table.build_seconds,
            dict(table.meta),
        )
    return table


def _save(table: BayesOptimalTable, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            keys=table.keys,
            offsets=table.offsets,
            values=table.values,
            optimal=table.optimal,
            meta=np.array([table.slots, table.horizon, table.alpha0, table.beta0, TABLE_VERSION], dtype=np.float64),
        )
        os.replace(tmp, path)
        table.meta["path"] = str(path)
    except OSError:  # read-only cache directory: the table stays in memory only
        table.meta["path"] = None


def _load(path: Path, L: int, n: int, a0: float, b0: float) -> BayesOptimalTable | None:
    try:
        with np.load(path, allow_pickle=False) as d:
            meta = d["meta"].tolist()
            keys, offsets, values, optimal = d["keys"], d["offsets"], d["values"], d["optimal"]
        ok = (
            meta == [L, n, a0, b0, TABLE_VERSION]
            and offsets.shape == (n + 1,)
            and keys.shape == values.shape == optimal.shape
        )
        ok = ok and int(offsets[-1]) == keys.shape[0] and keys.dtype == np.int64 and values.dtype == np.float64
        if not ok:
            raise ValueError("layout or parameters differ")
        return BayesOptimalTable(
            L, n, a0, b0, float(values[0]), L, keys, offsets, values, optimal, 0.0, {"path": str(path)}
        )
    except Exception as err:  # corrupt or incompatible file: rebuild it
        warnings.warn(f"ignoring unreadable Bayes-optimal cache {path}: {err}", RuntimeWarning, stacklevel=3)
        return None


def bayes_optimal_value(num_arms: int, horizon: int, alpha0: float = 1.0, beta0: float = 1.0) -> float:
    """V_0: the Bayes-optimal expected total reward of a horizon-n trial of a k-armed Bernoulli
    bandit with i.i.d. Beta(alpha0, beta0) arm means (Beta(1, 1): p_i ~ U[0, 1], RL²'s bandits).
    No agent's expected total reward on tasks drawn from the prior can exceed it.

    Raises:
        ValueError: on an unsupported (k, n) (see :data:`BAYES_OPTIMAL_LIMITS`) or bad prior.
    """
    k, n = _check_supported(num_arms, horizon)
    if k == 1:  # every policy pulls the one arm: n * prior mean
        a0, b0 = _check_prior(alpha0, beta0)
        return n * a0 / (a0 + b0)
    return bayes_optimal_table(n, alpha0, beta0, num_arms=k).value


def brute_force_value(
    horizon: int,
    alpha0: float = 1.0,
    beta0: float = 1.0,
    num_arms: int = 2,
    successes: tuple[int, ...] | None = None,
    failures: tuple[int, ...] | None = None,
) -> float:
    """The same value by plain memoized recursion over the full state (s_1, f_1, ..., s_k, f_k),
    without symmetry reduction (a slow reference, small k and n only).

    Args:
        horizon: n, total pulls of the trial (including those already in the start state).
        alpha0, beta0: Beta prior of every arm.
        num_arms: k.
        successes, failures: start state (k ints each; default all zero).

    Returns:
        V at the start state: the expected reward of the remaining pulls.
    """
    s0 = tuple(successes) if successes is not None else (0,) * num_arms
    f0 = tuple(failures) if failures is not None else (0,) * num_arms

    @cache
    def v(state: tuple[int, ...]) -> float:
        if sum(state) >= horizon:
            return 0.0
        best = -1.0
        for i in range(num_arms):
            s, f = state[2 * i], state[2 * i + 1]
            p = (alpha0 + s) / (alpha0 + beta0 + s + f)
            up = list(state)
            up[2 * i] += 1
            down = list(state)
            down[2 * i + 1] += 1
            best = max(best, p * (1.0 + v(tuple(up))) + (1.0 - p) * v(tuple(down)))
        return best

    return v(tuple(x for pair in zip(s0, f0) for x in pair))


# --------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------


class BayesOptimalAgent(CountingBanditAgent):
    """Acts by the exact Bayes-optimal table of (k, n) = (num_arms, horizon).

    Each step the live per-task counts (successes, pulls) of all tasks are mapped to their
    canonical table rows (sorted per-arm states, one binary search per level) and the agent
    pulls an optimal arm. Ties (arms within ``TIE_TOL`` of the best Q-value; always the case for
    arms in identical posterior states, e.g. all unpulled arms, which are symmetric) are broken
    uniformly at random with the generator given to :meth:`reset`. Past the horizon (more than n
    pulls in a trial) it pulls the arm with the largest posterior mean, the Bayes-optimal choice
    for one more pull. The table is built (or loaded from the cache) in the constructor.

    Args:
        num_arms: k.
        horizon: n, the trial length the table is solved for.
        alpha0, beta0: Beta prior of every arm.

    Raises:
        ValueError: on an unsupported (k, n) (see :func:`bayes_optimal_supported` and
            :data:`BAYES_OPTIMAL_LIMITS`) or a non-positive prior parameter.
    """

    name = "Bayes-optimal"

    def __init__(self, num_arms: int, horizon: int, alpha0: float = 1.0, beta0: float = 1.0) -> None:
        k, n = _check_supported(num_arms, horizon)
        super().__init__(k)
        self.horizon = n
        self.alpha0, self.beta0 = _check_prior(alpha0, beta0)
        self.table = bayes_optimal_table(n, self.alpha0, self.beta0, num_arms=k)

    def scores(self) -> Tensor:
        failures = self.pulls - self.successes
        mean = (self.alpha0 + self.successes) / (self.alpha0 + self.beta0 + self.pulls)
        inside = self.pulls.sum(dim=1) < self.horizon
        if not bool(inside.any()):
            return mean
        rows = torch.nonzero(inside).squeeze(1)
        opt = self.table.optimal_arms(self.successes[rows], failures[rows])
        out = mean.clone()
        out[rows] = torch.from_numpy(opt).to(mean.dtype)  # 1 = optimal; ties broken by the base class
        return out


@AGENTS.register("Bayes-optimal")
@dataclass
class BayesOptimalConfig(BaselineConfig):
    """Bayes-optimal on Bernoulli bandits: the exact Bayes-optimal policy (dynamic programming; small k and n only)."""

    name: str = "Bayes-optimal"

    def make(self, dist, episodes_per_trial: int):
        return BayesOptimalAgent(_num_arms(self.name, dist), horizon=episodes_per_trial)
