"""Non-learned Bernoulli-bandit baselines, batched over tasks.

All agents keep per-task success/failure counts (n, k) updated from ``prev_action`` and
``prev_reward``; ties are broken uniformly at random.

Sources:
    UCB1: Auer, Cesa-Bianchi & Fischer 2002, "Finite-time Analysis of the Multiarmed Bandit
        Problem" (index mean + sqrt(2 ln t / n_i)).
    Thompson sampling: Thompson 1933; Beta(1, 1) prior, Chapelle & Li 2011.
    Optimistic Thompson sampling (OTS): Chapelle & Li 2011, "An Empirical Evaluation of Thompson
        Sampling" (NeurIPS), Sec. 4: a sample is never below the posterior mean; with
        ``num_samples`` > 1, the max of several posterior samples (May et al. 2012, JMLR 13);
        posterior reshaping (same paper, Sec. 4) scales the sampled posterior's variance.
    epsilon-greedy / Greedy: Sutton & Barto 2018, Sec. 2.2-2.3.
    Prior-count initialization (``prior_count``): RL² (Duan et al. 2016, arXiv 1611.02779,
        Sec. 4.1) initializes UCB1's statistics "with exactly one success and one failure,
        which corresponds to a Beta(1, 1) prior", so no arm is forced to be pulled first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from classic.agents.base import BaselineConfig, needs
from classic.registry import AGENTS
from classic.agents.sampling import sample_beta, sample_gamma  # noqa: F401  (re-exported)


def argmax_random_tiebreak(scores: Tensor, generator: torch.Generator, tol: float = 1e-12) -> Tensor:
    """(n,) argmax of scores (n, k), ties broken uniformly at random."""
    best = scores.max(dim=1, keepdim=True).values
    is_best = scores >= best - tol
    noise = torch.rand(scores.shape, generator=generator)
    return torch.where(is_best, noise, torch.full_like(noise, -1.0)).argmax(dim=1)


class CountingBanditAgent(ABC):
    """Base class: maintains successes (n, k) and pulls (n, k) counts for ``num_arms`` arms."""

    name = "counting"

    def __init__(self, num_arms: int) -> None:
        self.num_arms = int(num_arms)
        self.successes = torch.zeros(0, self.num_arms)
        self.pulls = torch.zeros(0, self.num_arms)
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.successes = torch.zeros(num_tasks, self.num_arms)
        self.pulls = torch.zeros(num_tasks, self.num_arms)
        self.generator = generator

    def update(self, prev_action: Tensor, prev_reward: Tensor) -> None:
        ok = (prev_action >= 0) & (prev_action < self.num_arms)
        if not bool(ok.any()):
            return
        idx = prev_action.clamp(0, self.num_arms - 1).unsqueeze(1)
        w = ok.float().unsqueeze(1)
        self.pulls.scatter_add_(1, idx, w)
        self.successes.scatter_add_(1, idx, w * prev_reward.float().unsqueeze(1))

    @abstractmethod
    def scores(self) -> Tensor:
        """(n, k) score per arm; the agent pulls the argmax."""

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        self.update(prev_action, prev_reward)
        return argmax_random_tiebreak(self.scores(), self.generator)


class RandomAgent(CountingBanditAgent):
    """Pulls an arm uniformly at random."""

    name = "Random"

    def scores(self) -> Tensor:
        return torch.zeros_like(self.pulls)


class EpsilonGreedyAgent(CountingBanditAgent):
    """Pulls the arm with the best estimated mean, or a uniformly random one with probability epsilon.

    Two ways to start, chosen by ``prior_count``:

    - ``prior_count = 0`` (default): the empirical mean s_i / n_i, and an unpulled arm scores
      ``init_value`` (default 1.0, optimistic), so every arm is tried once before exploiting.
    - ``prior_count = a > 0``: every arm's statistics start with a pseudo-successes and a
      pseudo-failures, so the estimate is the Beta(a, a) posterior mean (s_i + a) / (n_i + 2a)
      and nothing forces a first pull of each arm (a = 1 is RL²'s Beta(1, 1) initialization,
      arXiv 1611.02779, Sec. 4.1).

    With epsilon = 0 this is the Greedy baseline of RL².

    Args:
        num_arms: k.
        epsilon: exploration probability in [0, 1].
        init_value: score of an unpulled arm when ``prior_count`` is 0.
        prior_count: pseudo-count a >= 0 of successes and of failures per arm.

    Raises:
        ValueError: epsilon outside [0, 1] or a negative ``prior_count``.
    """

    name = "epsilon-greedy"

    def __init__(self, num_arms: int, epsilon: float = 0.1, init_value: float = 1.0, prior_count: float = 0.0) -> None:
        super().__init__(num_arms)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)
        self.init_value = float(init_value)
        self.prior_count = check_prior_count(prior_count)
        if epsilon == 0.0:
            self.name = "Greedy"

    def scores(self) -> Tensor:
        if self.prior_count > 0:
            return (self.successes + self.prior_count) / (self.pulls + 2 * self.prior_count)
        return torch.where(
            self.pulls > 0, self.successes / self.pulls.clamp(min=1), torch.full_like(self.pulls, self.init_value)
        )

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        greedy = super().act(obs, prev_action, prev_reward, terminated, truncated)
        if self.epsilon == 0.0:
            return greedy
        n = greedy.shape[0]
        explore = torch.rand(n, generator=self.generator) < self.epsilon
        random_arm = torch.randint(self.num_arms, (n,), generator=self.generator)
        return torch.where(explore, random_arm, greedy)


class GreedyAgent(EpsilonGreedyAgent):
    """epsilon-greedy with epsilon = 0."""

    def __init__(self, num_arms: int, init_value: float = 1.0, prior_count: float = 0.0) -> None:
        super().__init__(num_arms, epsilon=0.0, init_value=init_value, prior_count=prior_count)


class UCB1Agent(CountingBanditAgent):
    """UCB1 (Auer et al. 2002): argmax_i mean_i + c * sqrt(2 ln t / T_i).

    - ``prior_count = 0`` (default, textbook UCB1): pull each arm once, then mean_i = s_i / n_i,
      T_i = n_i and t = sum_i n_i.
    - ``prior_count = a > 0`` (RL², arXiv 1611.02779, Sec. 4.1, with a = 1): the statistics
      start with a successes and a failures per arm: mean_i = (s_i + a) / (n_i + 2a),
      T_i = n_i + 2a and t = sum_i T_i; no arm is forced to be pulled first.

    Args:
        num_arms: k.
        c: exploration scale (1.0 is the original UCB1).
        prior_count: pseudo-count a >= 0 of successes and of failures per arm.

    Raises:
        ValueError: a negative ``prior_count``.
    """

    name = "UCB1"

    def __init__(self, num_arms: int, c: float = 1.0, prior_count: float = 0.0) -> None:
        super().__init__(num_arms)
        self.c = float(c)
        self.prior_count = check_prior_count(prior_count)

    def scores(self) -> Tensor:
        a = self.prior_count
        if a > 0:
            count = self.pulls + 2 * a
            mean = (self.successes + a) / count
            t = count.sum(dim=1, keepdim=True)
            return mean + self.c * torch.sqrt(2.0 * torch.log(t) / count)
        t = self.pulls.sum(dim=1, keepdim=True).clamp(min=1)
        mean = self.successes / self.pulls.clamp(min=1)
        bonus = self.c * torch.sqrt(2.0 * torch.log(t) / self.pulls.clamp(min=1))
        return torch.where(self.pulls > 0, mean + bonus, torch.full_like(mean, math.inf))


def check_prior_count(prior_count: float) -> float:
    """``float(prior_count)``; raises ValueError unless it is a finite number >= 0."""
    if not (isinstance(prior_count, (int, float)) and math.isfinite(prior_count) and prior_count >= 0):
        raise ValueError(f"prior_count must be a finite number >= 0, got {prior_count!r}")
    return float(prior_count)


class ThompsonSamplingAgent(CountingBanditAgent):
    """Thompson sampling with a Beta(alpha0, beta0) prior (default Beta(1, 1) = uniform).

    Each step samples theta_i ~ Beta(alpha0 + s_i, beta0 + f_i) and pulls argmax theta_i.
    """

    name = "Thompson sampling"

    def __init__(self, num_arms: int, alpha0: float = 1.0, beta0: float = 1.0) -> None:
        super().__init__(num_arms)
        if not (alpha0 > 0 and beta0 > 0):
            raise ValueError(f"the Beta prior needs alpha0 > 0 and beta0 > 0, got ({alpha0}, {beta0})")
        self.alpha0, self.beta0 = float(alpha0), float(beta0)

    def posterior(self) -> tuple[Tensor, Tensor]:
        """Beta posterior parameters (alpha, beta), each (n, k)."""
        return self.alpha0 + self.successes, self.beta0 + self.pulls - self.successes

    def scores(self) -> Tensor:
        a, b = self.posterior()
        return sample_beta(a, b, self.generator)


class OptimisticThompsonSamplingAgent(ThompsonSamplingAgent):
    """Optimistic Thompson sampling (OTS): Thompson sampling whose score is never below the mean.

    Each step draws ``num_samples`` samples theta_i^(1..K) ~ Beta(a_i / rho, b_i / rho) per arm,
    where Beta(a_i, b_i) = Beta(alpha0 + s_i, beta0 + f_i) is the posterior, and scores arm i by
    ``max(theta_i^(1), ..., theta_i^(K), a_i / (a_i + b_i))``. This is the optimistic sampling of
    Chapelle & Li 2011 (NeurIPS, Sec. 4; May et al. 2012, JMLR 13) with K = 1 and rho = 1. K > 1
    is more optimistic (the score is the K-th order statistic, clipped at the mean). rho is
    posterior reshaping (Chapelle & Li 2011, Sec. 4): the reshaped Beta keeps the posterior mean
    and has variance a b / ((a + b)^2 (a + b + rho) / rho), about rho times the posterior's, so
    rho < 1 explores less. RL² (arXiv 1611.02779, Table 1) reports the agent as "OTS" without
    its settings; we tune K, and rho when its grid asks (``BaselinesConfig.ots_reshape_grid``), on
    training tasks.

    Args:
        num_arms: k.
        num_samples: K >= 1 posterior samples per arm and step.
        alpha0, beta0: Beta prior (default Beta(1, 1), the RL² task prior U[0, 1]).
        reshape: rho > 0, the posterior reshaping factor (1 = the exact posterior).

    Raises:
        ValueError: ``num_samples`` < 1, a prior parameter <= 0 or ``reshape`` <= 0.
    """

    name = "OTS"

    def __init__(
        self, num_arms: int, num_samples: int = 1, alpha0: float = 1.0, beta0: float = 1.0, reshape: float = 1.0
    ) -> None:
        super().__init__(num_arms, alpha0, beta0)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples}")
        if not (math.isfinite(reshape) and reshape > 0):
            raise ValueError(f"reshape must be a finite number > 0, got {reshape!r}")
        self.num_samples = int(num_samples)
        self.reshape = float(reshape)

    def scores(self) -> Tensor:
        a, b = self.posterior()
        n, k = a.shape
        shape = (self.num_samples, n, k)
        draws = sample_beta(
            (a / self.reshape).unsqueeze(0).expand(shape), (b / self.reshape).unsqueeze(0).expand(shape), self.generator
        )
        return torch.maximum(draws.max(dim=0).values, a / (a + b))


# ------------------------------------------------------------------------------------ registry
# Each baseline's recipe section (classic.registry.AGENTS). Greedy and epsilon-greedy apply to
# bandits and to tabular MDPs (classic.agents.mdp), with each family's default grid.

UCB1_GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0]
EPSILON_GRID = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
TS_PRIOR_GRID = [0.25, 0.5, 1.0, 2.0]
OTS_SAMPLES_GRID = [1, 2, 3, 5, 10]


def _num_arms(name: str, dist) -> int:
    from classic.envs.bandit import BernoulliBandit

    if not isinstance(dist, BernoulliBandit):
        raise needs("a Bernoulli bandit (task: {name: bandit})", name, dist)
    return dist.num_arms


def _is_mdp(dist) -> bool:
    from classic.envs.tabular_mdp import TabularMDP

    return isinstance(dist, TabularMDP)


@AGENTS.register("Greedy")
@dataclass
class GreedyConfig(BaselineConfig):
    """Greedy (epsilon = 0): bandits (:class:`GreedyAgent`) or tabular MDPs (certainty equivalence,
    ``classic.agents.mdp.GreedyMDPAgent``).

    Attributes:
        prior_count: bandits only: pseudo-successes and pseudo-failures per arm (0: pull each arm once).
    """

    name: str = "Greedy"
    prior_count: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prior_count(self.prior_count)

    def make(self, dist, episodes_per_trial: int):
        if _is_mdp(dist):
            from classic.agents.mdp import make_mdp_baseline

            return make_mdp_baseline("Greedy", dist.num_states, dist.num_actions, dist.episode_length)
        return GreedyAgent(_num_arms(self.name, dist), prior_count=self.prior_count)


@AGENTS.register("epsilon-greedy")
@dataclass
class EpsilonGreedyConfig(BaselineConfig):
    """epsilon-greedy on bandits (:class:`EpsilonGreedyAgent`) or tabular MDPs (``EpsilonGreedyMDPAgent``).

    Attributes:
        epsilon: exploration rate in [0, 1]; None: 0.1 on bandits, 0.03 on MDPs (their tuned defaults).
        prior_count: bandits only, as :class:`GreedyConfig`.
    """

    name: str = "epsilon-greedy"
    epsilon: float | None = None
    prior_count: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prior_count(self.prior_count)
        if self.epsilon is not None and not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    def default_grid(self, dist):
        if _is_mdp(dist):
            from classic.agents.mdp import MDP_TUNING_GRIDS

            return {"epsilon": list(MDP_TUNING_GRIDS["epsilon-greedy"][1])}
        return {"epsilon": list(EPSILON_GRID)}

    def make(self, dist, episodes_per_trial: int):
        if _is_mdp(dist):
            from classic.agents.mdp import MDP_DEFAULT_PARAMS, make_mdp_baseline

            eps = MDP_DEFAULT_PARAMS["epsilon-greedy"]["epsilon"] if self.epsilon is None else self.epsilon
            return make_mdp_baseline(
                "epsilon-greedy", dist.num_states, dist.num_actions, dist.episode_length, epsilon=eps
            )
        eps = 0.1 if self.epsilon is None else self.epsilon
        return EpsilonGreedyAgent(_num_arms(self.name, dist), epsilon=eps, prior_count=self.prior_count)


@AGENTS.register("UCB1")
@dataclass
class UCB1Config(BaselineConfig):
    """UCB1 (Auer et al. 2002) on bandits; ``c`` tuned over :data:`UCB1_GRID` by default.

    Attributes:
        c: exploration scale.
        prior_count: pseudo-successes and pseudo-failures per arm (1: RL²'s Beta(1, 1) start).
    """

    name: str = "UCB1"
    c: float = 1.0
    prior_count: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prior_count(self.prior_count)

    def default_grid(self, dist):
        return {"c": list(UCB1_GRID)}

    def make(self, dist, episodes_per_trial: int):
        return UCB1Agent(_num_arms(self.name, dist), c=self.c, prior_count=self.prior_count)


@AGENTS.register("Thompson sampling")
@dataclass
class ThompsonSamplingConfig(BaselineConfig):
    """Thompson sampling with a symmetric Beta(s, s) prior; ``prior`` tuned by default.

    Attributes:
        prior: the pseudo-count s > 0 (1 = the task prior U[0, 1]).
    """

    name: str = "Thompson sampling"
    prior: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prior > 0:
            raise ValueError(f"prior must be > 0, got {self.prior}")

    def default_grid(self, dist):
        return {"prior": list(TS_PRIOR_GRID)}

    def make(self, dist, episodes_per_trial: int):
        return ThompsonSamplingAgent(_num_arms(self.name, dist), alpha0=self.prior, beta0=self.prior)


@AGENTS.register("OTS")
@dataclass
class OTSConfig(BaselineConfig):
    """Optimistic Thompson sampling (:class:`OptimisticThompsonSamplingAgent`); ``num_samples`` and
    ``reshape`` searched jointly (default grid: samples over :data:`OTS_SAMPLES_GRID`, reshape 1).

    Attributes:
        num_samples: posterior samples per arm and step (>= 1).
        reshape: posterior reshaping rho > 0 (1 = the exact posterior).
    """

    name: str = "OTS"
    num_samples: int = 1
    reshape: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1 or not self.reshape > 0:
            raise ValueError(f"num_samples must be >= 1 and reshape > 0, got {self.num_samples}, {self.reshape}")

    def default_grid(self, dist):
        return {"num_samples": list(OTS_SAMPLES_GRID), "reshape": [1.0]}

    def make(self, dist, episodes_per_trial: int):
        return OptimisticThompsonSamplingAgent(
            _num_arms(self.name, dist), num_samples=int(self.num_samples), reshape=self.reshape
        )
