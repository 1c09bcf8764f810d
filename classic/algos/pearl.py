"""PEARL: off-policy meta-RL by probabilistic context variables (Rakelly et al. 2019, "Efficient
Off-Policy Meta-Reinforcement Learning via Probabilistic Context Variables", arXiv 1903.08254).

A task is inferred, not adapted to by gradient. A permutation-invariant **context encoder** maps
every transition ``c_n = (s, a, r)`` of a task to a Gaussian factor ``N(mu_n, sigma_n^2)`` over a
latent ``z`` (dimension L); the posterior is their **product** (Sec. 4.1, Eq. 3 and App. A),

    sigma^2 = 1 / sum_n 1 / sigma_n^2,        mu = sigma^2 * sum_n mu_n / sigma_n^2,

and ``q(z | c)`` is regularized towards the prior ``N(0, I)`` by ``kl_lambda * KL(q(z|c) || N(0,
I))`` (the information bottleneck of Eq. 4). A **soft actor-critic** (Haarnoja et al. 2018, arXiv
1801.01290: twin Q-functions, a state-value function V with a Polyak-averaged target, a tanh-
Gaussian policy, entropy weight 1 with the reward multiplied by ``reward_scale``) acts on ``(s,
z)``. The encoder is trained through the Q-functions' Bellman error plus the KL term; the policy
and V see ``z`` detached (Sec. 4.2, Figure 2).

Data (Algorithm 1): every train task has its own replay buffer (the RL batch is drawn from it)
and its own *encoder buffer* of recently collected transitions (the context is drawn from it,
so the context matches what the current policy explores). Every iteration a few train tasks are
re-collected: episodes with ``z`` from the prior, then episodes with ``z`` from the posterior on
the task's encoder buffer (resampled every episode), each task's encoder buffer replaced by
them; then ``num_train_steps_per_itr`` gradient steps, each on a meta-batch of tasks.

Meta-test (posterior sampling, Sec. 4.3): in a trial the agent samples ``z`` from the prior for
its first ``num_exploration_episodes`` episode(s), then at the start of every later episode from
the posterior on everything it has seen in the trial, and acts with the policy's mean action.

Settings are katerakelly/oyster's (``configs/default.py``, ``configs/sparse-point-robot.json``),
with the differences listed in the README section "PEARL".

Example:
    >>> from classic.envs.point_robot import PointRobotConfig
    >>> dist = PointRobotConfig().make()
    >>> nets = train_pearl(PEARLConfig(num_iterations=20), dist)
    >>> run_trials(PEARLAgent(nets, PEARLConfig()), dist, num_tasks=100, episodes_per_trial=3)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from classic.config import require_ints, require_numbers, require_widths
from classic.core import Box, MetaLearner, StageRun
from classic.files import save_torch
from classic.registry import LEARNERS
from classic.rollout import num_tasks_of, select_rows

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the tanh-Gaussian policy's clamp (rlkit)

# ---------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class PEARLConfig:
    """Hyperparameters of PEARL (defaults: oyster's ``configs/default.py`` except where noted).

    Attributes:
        latent_size: L, the dimension of z (oyster 5). 0: no encoder and no z, i.e. SAC on the
            train tasks' pooled data with the same collection and budget: the *multi-task policy*
            baseline (one policy for every task, no task inference; PEARL Sec. 6.1's comparison).
        hidden_sizes: widths of the actor's, the Q-functions' and V's hidden layers (oyster [300] * 3).
        encoder_hidden_sizes: widths of the context encoder's hidden layers (oyster [200] * 3).
        num_train_tasks: train tasks drawn once from the distribution, each with its own buffers
            (oyster's sparse point robot: 80).
        num_iterations: data-collection / training iterations.
        num_initial_steps: transitions per train task collected with z from the prior before
            training.
        num_tasks_sample: train tasks re-collected per iteration.
        num_steps_prior: transitions per re-collected task with z from the prior (into both buffers).
        num_steps_posterior: transitions per re-collected task with z from the posterior on its
            encoder buffer, resampled every episode (into both buffers).
        num_extra_rl_steps_posterior: as ``num_steps_posterior`` but into the replay buffer only.
        num_train_steps_per_itr: gradient steps per iteration.
        meta_batch: tasks per gradient step.
        batch_size: RL transitions per task per gradient step.
        embedding_batch_size: context transitions per task per gradient step (and per posterior
            inference during collection).
        buffer_size: capacity of each task's replay buffer, in transitions (oldest overwritten).
        gamma: discount.
        reward_scale: rewards are multiplied by it in the Bellman target (the inverse of SAC's
            entropy temperature).
        kl_lambda: weight of KL(q(z|c) || N(0, I)) in the encoder's loss.
        use_information_bottleneck: False: z is the mean of the encoder's per-transition means
            (deterministic, no KL).
        soft_target_tau: Polyak rate of V's target network.
        policy_lr, qf_lr, vf_lr, context_lr: Adam step sizes.
        policy_mean_reg, policy_std_reg: weights of the policy's mean^2 and log_std^2 penalties.
        num_exploration_episodes: at meta-test, episodes played with z from the prior before the
            agent switches to the posterior (oyster ``num_exp_traj_eval``).
        deterministic_eval: act with the policy's mean action at meta-test (oyster); False: sample.
        checkpoint_every: iterations between training-state checkpoints.
        seed: seeds the one generator of tasks, initialization, sampling and environment.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    latent_size: int = 5
    hidden_sizes: list[int] = field(default_factory=lambda: [300, 300, 300])
    encoder_hidden_sizes: list[int] = field(default_factory=lambda: [200, 200, 200])
    num_train_tasks: int = 80
    num_iterations: int = 500
    num_initial_steps: int = 2000
    num_tasks_sample: int = 5
    num_steps_prior: int = 400
    num_steps_posterior: int = 0
    num_extra_rl_steps_posterior: int = 400
    num_train_steps_per_itr: int = 2000
    meta_batch: int = 16
    batch_size: int = 256
    embedding_batch_size: int = 64
    buffer_size: int = 100_000
    gamma: float = 0.99
    reward_scale: float = 5.0
    kl_lambda: float = 0.1
    use_information_bottleneck: bool = True
    soft_target_tau: float = 0.005
    policy_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    context_lr: float = 3e-4
    policy_mean_reg: float = 1e-3
    policy_std_reg: float = 1e-3
    num_exploration_episodes: int = 1
    deterministic_eval: bool = True
    checkpoint_every: int = 10
    seed: int = 1

    def __post_init__(self) -> None:
        require_widths(self, ("hidden_sizes", "encoder_hidden_sizes"))
        require_ints(
            self,
            (
                "num_train_tasks",
                "num_tasks_sample",
                "meta_batch",
                "batch_size",
                "embedding_batch_size",
                "buffer_size",
                "checkpoint_every",
            ),
            minimum=1,
        )
        require_ints(
            self,
            (
                "latent_size",
                "num_iterations",
                "num_initial_steps",
                "num_steps_prior",
                "num_steps_posterior",
                "num_extra_rl_steps_posterior",
                "num_train_steps_per_itr",
                "num_exploration_episodes",
            ),
            minimum=0,
        )
        require_numbers(self, ("reward_scale", "policy_lr", "qf_lr", "vf_lr", "context_lr", "soft_target_tau"))
        require_numbers(self, ("kl_lambda", "policy_mean_reg", "policy_std_reg"), positive=False)
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if self.soft_target_tau > 1:
            raise ValueError(f"soft_target_tau must be in (0, 1], got {self.soft_target_tau!r}")
        if self.meta_batch > self.num_train_tasks:
            raise ValueError(f"meta_batch ({self.meta_batch}) must be <= num_train_tasks ({self.num_train_tasks})")
        if self.num_tasks_sample > self.num_train_tasks:
            raise ValueError(
                f"num_tasks_sample ({self.num_tasks_sample}) must be <= num_train_tasks ({self.num_train_tasks})"
            )
        if self.num_iterations > 0 and self.num_initial_steps + self.num_steps_prior + self.num_steps_posterior == 0:
            raise ValueError(
                "the encoder buffers stay empty: set num_initial_steps, num_steps_prior or num_steps_posterior"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# 2. The posterior over z: product of Gaussians
# ---------------------------------------------------------------------------------------------


def product_of_gaussians(mu: Tensor, var: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The normalized product of N Gaussian factors per task (PEARL, arXiv 1903.08254, App. A).

    Args:
        mu: (..., N, L) factor means.
        var: (..., N, L) factor variances (clamped to >= 1e-7, as oyster).
        mask: optional (..., N) bool, the factors that exist (False rows contribute nothing; with no
            factor at all the result is the prior N(0, I), the product's empty case).

    Returns:
        ``(mean, var)``, each (..., L): ``var = 1 / sum_n 1 / var_n`` and ``mean = var * sum_n
        mu_n / var_n``, the product over the factors only, as oyster's ``_product_of_gaussians``
        (the prior is not one of the factors). A task whose ``mask`` is all False gets ``(0, 1)``.
    """
    precision = 1.0 / var.clamp(min=1e-7)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    total = precision.sum(-2)
    empty = total <= 0
    post_var = 1.0 / torch.where(empty, torch.ones_like(total), total)
    post_mean = post_var * (precision * mu).sum(-2)
    return post_mean.masked_fill(empty, 0.0), post_var.masked_fill(empty, 1.0)


def kl_to_standard_normal(mean: Tensor, var: Tensor) -> Tensor:
    """(...) KL(N(mean, diag var) || N(0, I)) summed over the last dimension (nats):
    ``0.5 * sum(var + mean^2 - 1 - log var)``."""
    return 0.5 * (var + mean.pow(2) - 1.0 - var.log()).sum(-1)


# ---------------------------------------------------------------------------------------------
# 3. Networks
# ---------------------------------------------------------------------------------------------


def mlp(sizes: list[int], generator: torch.Generator | None = None) -> nn.Sequential:
    """ReLU MLP with the given layer widths (input first, output last); rlkit's initialization:
    hidden weights fan-in uniform, biases 0.1, the output layer uniform in +-3e-3."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        bound = 3e-3 if last else 1.0 / math.sqrt(a)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            if last:
                linear.bias.uniform_(-bound, bound, generator=generator)
            else:
                linear.bias.fill_(0.1)
        layers.append(linear)
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TanhGaussianPolicy(nn.Module):
    """pi(a | s, z): a Gaussian over pre-tanh actions, squashed by tanh into [-1, 1]^A.

    Args:
        in_dim: obs_dim + L.
        action_dim: A.
        hidden_sizes: hidden widths.
        generator: initialization.
    """

    def __init__(self, in_dim: int, action_dim: int, hidden_sizes: list[int], generator=None) -> None:
        super().__init__()
        self.trunk = mlp([in_dim, *hidden_sizes, 2 * action_dim], generator)
        self.action_dim = action_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., A) mean and log-std (clamped to [-20, 2]) of the pre-tanh Gaussian."""
        mean, log_std = self.trunk(x).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A reparameterized sample: ``(action, log_prob, mean, log_std)``.

        ``action = tanh(mean + std * eps)`` (..., A) and ``log_prob`` (...) its density with the
        tanh change of variables, ``log N(u) - sum log(1 - tanh(u)^2 + 1e-6)`` (SAC, arXiv
        1801.01290, App. C).
        """
        mean, log_std = self(x)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        u = mean + std * eps
        action = torch.tanh(u)
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - torch.log(1.0 - action.pow(2) + 1e-6).sum(-1)
        return action, log_prob, mean, log_std


class PEARLNetworks(nn.Module):
    """Every network of PEARL: the context encoder, the actor, Q1, Q2, V and V's target.

    Args:
        obs_dim, action_dim: the task distribution's sizes.
        config: the sizes (``latent_size``, ``hidden_sizes``, ``encoder_hidden_sizes``).
        generator: initialization.

    The context of a transition is ``(s, a, r)`` with ``a`` the policy's action in [-1, 1]^A:
    ``context_dim = obs_dim + action_dim + 1``.
    """

    def __init__(self, obs_dim: int, action_dim: int, config: PEARLConfig, generator=None) -> None:
        super().__init__()
        L, hidden = config.latent_size, config.hidden_sizes
        self.obs_dim, self.action_dim, self.latent_size = int(obs_dim), int(action_dim), int(L)
        self.context_dim = self.obs_dim + self.action_dim + 1
        # latent_size 0: the multi-task policy, no encoder (factors are (..., N, 0) and z is (..., 0)).
        self.encoder = mlp([self.context_dim, *config.encoder_hidden_sizes, 2 * L], generator) if L > 0 else None
        self.policy = TanhGaussianPolicy(obs_dim + L, action_dim, hidden, generator)
        self.qf1 = mlp([obs_dim + action_dim + L, *hidden, 1], generator)
        self.qf2 = mlp([obs_dim + action_dim + L, *hidden, 1], generator)
        self.vf = mlp([obs_dim + L, *hidden, 1], generator)
        self.target_vf = mlp([obs_dim + L, *hidden, 1], generator)
        self.target_vf.load_state_dict(self.vf.state_dict())
        self.target_vf.requires_grad_(False)
        self.bottleneck = bool(config.use_information_bottleneck)

    def factors(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Per-transition Gaussian factors of contexts (..., N, context_dim): means and variances
        (..., N, L), the variance through softplus (oyster)."""
        if self.encoder is None:
            empty = context.new_zeros(*context.shape[:-1], 0)
            return empty, empty
        out = self.encoder(context)
        mu, raw = out[..., : self.latent_size], out[..., self.latent_size :]
        return mu, F.softplus(raw)

    def posterior(self, context: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | c): ``(mean, var)`` (..., L) of contexts (..., N, context_dim) (``mask`` (..., N)
        marks real transitions). Without the information bottleneck: the mean of the factor means
        and zero variance."""
        return self.combine(*self.factors(context), mask)

    def combine(self, mu: Tensor, var: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z | c) from per-transition factors (..., N, L) already encoded (see :meth:`posterior`)."""
        if self.bottleneck:
            return product_of_gaussians(mu, var, mask)
        if mask is None:
            return mu.mean(-2), torch.zeros_like(mu[..., 0, :])
        m = mask.unsqueeze(-1).to(mu.dtype)
        return (mu * m).sum(-2) / m.sum(-2).clamp(min=1.0), torch.zeros_like(mu[..., 0, :])

    def sample_z(self, mean: Tensor, var: Tensor, generator: torch.Generator) -> Tensor:
        """A reparameterized z ~ N(mean, var), (..., L); without the bottleneck the mean itself."""
        if not self.bottleneck:
            return mean
        return mean + var.sqrt() * torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)

    def prior_z(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, L) z ~ N(0, I) (without the bottleneck: zeros, the deterministic latent's prior)."""
        if not self.bottleneck:
            return torch.zeros(n, self.latent_size)
        return torch.randn(n, self.latent_size, generator=generator, device=generator.device)

    def q_values(self, obs: Tensor, action: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([obs, action, z], dim=-1)
        return self.qf1(x).squeeze(-1), self.qf2(x).squeeze(-1)

    def spec(self) -> dict:
        return {"obs_dim": self.obs_dim, "action_dim": self.action_dim}


# ---------------------------------------------------------------------------------------------
# 4. Per-task replay buffers
# ---------------------------------------------------------------------------------------------


class Transitions(NamedTuple):
    """A batch of transitions; every tensor leads with the same dimensions (e.g. (M, b)).

    Attributes:
        obs: (..., obs_dim) s.
        action: (..., A) a, the policy's action in [-1, 1]^A.
        reward: (...) r, the environment's reward.
        next_obs: (..., obs_dim) s'.
        terminal: (...) float, 1 where s' is terminal (a time limit is not).
    """

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    terminal: Tensor

    def context(self) -> Tensor:
        """(..., obs_dim + A + 1) the encoder's input ``(s, a, r)``."""
        return torch.cat([self.obs, self.action, self.reward.unsqueeze(-1)], dim=-1)


class TaskReplayBuffers:
    """One FIFO buffer of transitions per task, stored as (num_tasks, capacity, ...) tensors.

    Args:
        num_tasks: T.
        capacity: transitions per task; the oldest are overwritten once full.
        obs_dim, action_dim: sizes.
    """

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, action_dim: int) -> None:
        self.capacity = int(capacity)
        # Uninitialized: only rows below ``size`` are ever read, and the pages of a large buffer are
        # not resident until written (oyster's numpy buffers behave the same way).
        self.data = Transitions(
            torch.empty(num_tasks, capacity, obs_dim),
            torch.empty(num_tasks, capacity, action_dim),
            torch.empty(num_tasks, capacity),
            torch.empty(num_tasks, capacity, obs_dim),
            torch.empty(num_tasks, capacity),
        )
        self.size = torch.zeros(num_tasks, dtype=torch.long)
        self.pointer = torch.zeros(num_tasks, dtype=torch.long)

    def add(self, task: int, batch: Transitions) -> None:
        """Append transitions (n, ...) to task ``task``'s buffer."""
        n = int(batch.reward.shape[0])
        if n == 0:
            return
        n_kept = min(n, self.capacity)
        idx = (self.pointer[task] + torch.arange(n_kept)) % self.capacity
        for store, new in zip(self.data, batch):
            store[task, idx] = new[n - n_kept :].to(store.dtype)
        self.pointer[task] = (self.pointer[task] + n_kept) % self.capacity
        self.size[task] = min(self.capacity, int(self.size[task]) + n_kept)

    def clear(self, task: int) -> None:
        self.size[task] = 0
        self.pointer[task] = 0

    def sample(self, tasks: Tensor, batch_size: int, generator: torch.Generator) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement from each of ``tasks`` (M,):
        a :class:`Transitions` of (M, batch_size, ...).

        Raises:
            RuntimeError: one of the tasks' buffers is empty.
        """
        sizes = self.size[tasks]
        if bool((sizes == 0).any()):
            raise RuntimeError(f"sampling from an empty buffer (tasks {tasks[sizes == 0].tolist()})")
        u = torch.rand(len(tasks), batch_size, generator=generator)
        rows = (u * sizes.unsqueeze(1)).long().clamp(max=self.capacity - 1)
        return Transitions(*(store[tasks.unsqueeze(1), rows] for store in self.data))

    def state_dict(self) -> dict:
        """The filled part only: columns ``0 .. max(size) - 1`` of every task."""
        filled = int(self.size.max()) if len(self.size) else 0
        return {
            "data": [t[:, :filled].clone() for t in self.data],
            "size": self.size.clone(),
            "pointer": self.pointer.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        for store, saved in zip(self.data, state["data"]):
            store[:, : saved.shape[1]].copy_(saved)
        self.size.copy_(state["size"])
        self.pointer.copy_(state["pointer"])


# ---------------------------------------------------------------------------------------------
# 5. The losses and the gradient step
# ---------------------------------------------------------------------------------------------


def critic_losses(
    nets: PEARLNetworks, rl: Transitions, context: Tensor, config: PEARLConfig, generator: torch.Generator
) -> tuple[dict[str, Tensor], Tensor]:
    """The encoder's and the Q-functions' losses on a meta-batch (PEARL, arXiv 1903.08254, Eq. 4-5).

    Args:
        nets: the networks.
        rl: the RL batch, tensors (M, b, ...) for M tasks.
        context: (M, N, context_dim) each task's context batch.
        config: ``gamma``, ``reward_scale``, ``kl_lambda``.
        generator: draws z ~ q(z | c).

    Returns:
        ``(losses, z)``: ``losses["kl"]`` = ``kl_lambda * sum_tasks KL(q(z|c_i) || N(0, I))``
        (0 without the bottleneck), ``losses["q"]`` = ``mean (Q1(s,a,z) - y)^2 + mean (Q2 - y)^2``
        with ``y = reward_scale * r + (1 - terminal) * gamma * V_target(s', z)`` (no gradient through
        ``y``); ``z`` (M, L) the sampled latents (with the encoder's graph).
    """
    mean, var = nets.posterior(context)
    z = nets.sample_z(mean, var, generator)
    kl = config.kl_lambda * kl_to_standard_normal(mean, var).sum() if nets.bottleneck else mean.new_zeros(())
    zb = z.unsqueeze(1).expand(*rl.reward.shape, z.shape[-1])
    q1, q2 = nets.q_values(rl.obs, rl.action, zb)
    with torch.no_grad():
        target_v = nets.target_vf(torch.cat([rl.next_obs, zb], dim=-1)).squeeze(-1)
        y = config.reward_scale * rl.reward + (1.0 - rl.terminal) * config.gamma * target_v
    q = (q1 - y).pow(2).mean() + (q2 - y).pow(2).mean()
    return {"kl": kl, "q": q}, z


def actor_losses(
    nets: PEARLNetworks, obs: Tensor, z: Tensor, config: PEARLConfig, generator: torch.Generator
) -> dict[str, Tensor]:
    """V's and the policy's losses (SAC, arXiv 1801.01290, Eq. 5 and 12, entropy weight 1), with z
    detached (PEARL Sec. 4.2).

    Args:
        obs: (M, b, obs_dim) states of the RL batch.
        z: (M, L) the tasks' latents.

    Returns:
        ``v`` = ``mean (V(s,z) - [min_j Q_j(s, a~pi, z) - log pi(a|s,z)])^2`` (target without
        gradient) and ``policy`` = ``mean [log pi(a|s,z) - min_j Q_j(s, a, z)]`` plus
        ``policy_mean_reg * mean(mean^2) + policy_std_reg * mean(log_std^2)``.
    """
    zb = z.detach().unsqueeze(1).expand(*obs.shape[:-1], z.shape[-1])
    x = torch.cat([obs, zb], dim=-1)
    action, log_pi, mean, log_std = nets.policy.sample(x, generator)
    q1, q2 = nets.q_values(obs, action, zb)
    min_q = torch.minimum(q1, q2)
    v = nets.vf(x).squeeze(-1)
    v_loss = (v - (min_q - log_pi).detach()).pow(2).mean()
    policy_loss = (log_pi - min_q).mean()
    policy_loss = (
        policy_loss + config.policy_mean_reg * mean.pow(2).mean() + config.policy_std_reg * log_std.pow(2).mean()
    )
    return {"v": v_loss, "policy": policy_loss, "log_pi": log_pi.detach().mean()}


class PEARLOptimizers:
    """Adam for each of PEARL's parts (oyster's separate optimizers and step sizes)."""

    def __init__(self, nets: PEARLNetworks, config: PEARLConfig) -> None:
        self.context = (
            torch.optim.Adam(nets.encoder.parameters(), lr=config.context_lr) if nets.encoder is not None else None
        )
        self.q = torch.optim.Adam([*nets.qf1.parameters(), *nets.qf2.parameters()], lr=config.qf_lr)
        self.v = torch.optim.Adam(nets.vf.parameters(), lr=config.vf_lr)
        self.policy = torch.optim.Adam(nets.policy.parameters(), lr=config.policy_lr)

    def all(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name (``context`` absent without an encoder, ``latent_size`` 0)."""
        opts = {"context": self.context, "q": self.q, "v": self.v, "policy": self.policy}
        return {name: opt for name, opt in opts.items() if opt is not None}


def gradient_step(
    nets: PEARLNetworks,
    optimizers: PEARLOptimizers,
    rl: Transitions,
    context: Tensor,
    config: PEARLConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """One PEARL gradient step on a meta-batch (oyster's ``_take_step`` order): the encoder and the
    Q-functions on ``kl + q``; then V and the policy with the updated Q-functions; then V's target
    moves by ``soft_target_tau``.

    Returns:
        The losses and diagnostics as floats.
    """
    for opt in optimizers.all().values():
        opt.zero_grad(set_to_none=True)
    critic, z = critic_losses(nets, rl, context, config, generator)
    (critic["kl"] + critic["q"]).backward()
    if optimizers.context is not None:
        optimizers.context.step()
    optimizers.q.step()
    for opt in optimizers.all().values():
        opt.zero_grad(set_to_none=True)
    actor = actor_losses(nets, rl.obs, z.detach(), config, generator)
    (actor["v"] + actor["policy"]).backward()
    optimizers.v.step()
    optimizers.policy.step()
    with torch.no_grad():
        for target, source in zip(nets.target_vf.parameters(), nets.vf.parameters()):
            target.lerp_(source, config.soft_target_tau)
    return {
        "q_loss": critic["q"].item(),
        "kl_loss": critic["kl"].item(),
        "v_loss": actor["v"].item(),
        "policy_loss": actor["policy"].item(),
        "log_pi": float(actor["log_pi"]),
        "z_abs_mean": float(z.detach().abs().mean()) if z.numel() else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# 6. Acting: data collection and the meta-test agent
# ---------------------------------------------------------------------------------------------


def scale_action(action: Tensor, space: Box) -> Tensor:
    """Policy actions in [-1, 1] to the Box ``[low, high]`` (rlkit's ``NormalizedBoxEnv``)."""
    return space.low + (action + 1.0) * (0.5 * (space.high - space.low))


def unscale_action(action: Tensor, space: Box) -> Tensor:
    """Environment actions in ``[low, high]`` back to [-1, 1]."""
    width = space.high - space.low
    if width == 0:
        return torch.zeros_like(action)
    return (2.0 * (action - space.low) / width - 1.0).clamp(-1.0, 1.0)


@torch.no_grad()
def collect_episodes(
    nets: PEARLNetworks, dist, tasks: Any, z: Tensor, generator: torch.Generator, deterministic: bool = False
) -> tuple[Transitions, Tensor]:
    """One episode per row of ``tasks`` with a fixed latent per row (training data collection).

    PEARL's buffers need s' of every transition, that of the time-limit step included (V(s') is
    bootstrapped there), which the platform's trial loop does not record; this is that loop for
    one episode, with the same order of calls (act, step) and auto-padding of rows that end early.

    Args:
        nets: the actor.
        dist: the task distribution (Box actions).
        tasks: n tasks.
        z: (n, L) each row's latent.
        generator: environment and action noise.
        deterministic: act with the mean action.

    Returns:
        ``(transitions, valid)``: :class:`Transitions` of (n, H, ...) and (n, H) bool, the steps
        that happened.
    """
    n, H, space = num_tasks_of(tasks), int(dist.episode_length), dist.action_space
    state, obs = dist.reset(tasks, generator)
    alive = torch.ones(n, dtype=torch.bool)
    rows = []
    for _ in range(H):
        x = torch.cat([obs.float(), z], dim=-1)
        if deterministic:
            action = torch.tanh(nets.policy(x)[0])
        else:
            action = nets.policy.sample(x, generator)[0]
        step = dist.step(tasks, state, scale_action(action, space), generator)
        rows.append((obs.float(), action, step.reward.float(), step.obs.float(), step.terminated.float(), alive))
        alive = alive & ~(step.terminated | step.truncated)
        state, obs = step.state, step.obs
        if not bool(alive.any()):
            break
    cols = [torch.stack(c, dim=1) for c in zip(*rows)]
    return Transitions(*cols[:5]), cols[5]


class PEARLAgent:
    """A trained PEARL behind the platform's ``Agent`` protocol (posterior sampling at meta-test).

    Per trial and task: z ~ N(0, I) for the first ``num_exploration_episodes`` episodes (a fresh
    sample at each episode start), then at each episode start z ~ q(z | c) on every transition
    ``(s, a, r)`` of the trial so far; actions are the policy's mean (``deterministic_eval``) or
    samples, scaled to the Box.

    Args:
        nets: trained networks.
        config: ``num_exploration_episodes``, ``deterministic_eval``.
        action_space: the distribution's Box (actions are scaled into it).
        name: its name in reports.
    """

    def __init__(self, nets: PEARLNetworks, config: PEARLConfig, action_space: Box, name: str = "PEARL") -> None:
        self.nets = nets.eval()
        self.config = config
        self.space = action_space
        self.name = name
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.context: list[Tensor] = []  # (n, context_dim) per step: the trial's transitions
        self.factors: list[tuple[Tensor, Tensor]] = []  # their Gaussian factors, (n, L) each
        self.prev_obs: Tensor | None = None
        self.episode = torch.full((num_tasks,), -1, dtype=torch.long)
        self.z = torch.zeros(num_tasks, self.nets.latent_size)

    @torch.no_grad()
    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        obs = obs.float()
        if self.prev_obs is not None:
            a = unscale_action(prev_action.float().reshape(obs.shape[0], -1), self.space)
            transition = torch.cat([self.prev_obs, a, prev_reward.float().reshape(-1, 1)], dim=-1)
            self.context.append(transition)
            self.factors.append(self.nets.factors(transition))  # each transition is encoded once
        start = terminated | truncated
        if bool(start.any()):
            self.episode = self.episode + start.long()
            z = self.nets.prior_z(obs.shape[0], self.generator)
            explore = self.episode < self.config.num_exploration_episodes
            if self.context and not bool(explore[start].all()):
                mu, var = (torch.stack(f, dim=1) for f in zip(*self.factors))
                mean, var = self.nets.combine(mu, var)
                posterior = self.nets.sample_z(mean, var, self.generator)
                z = torch.where(explore.unsqueeze(-1), z, posterior)
            self.z = select_rows(start, z, self.z)
        self.prev_obs = obs
        x = torch.cat([obs, self.z], dim=-1)
        if self.config.deterministic_eval:
            action = torch.tanh(self.nets.policy(x)[0])
        else:
            action = self.nets.policy.sample(x, self.generator)[0]
        return scale_action(action, self.space)


# ---------------------------------------------------------------------------------------------
# 7. Meta-training (Algorithm 1)
# ---------------------------------------------------------------------------------------------


class PEARLState(NamedTuple):
    """Everything :func:`train_pearl` carries between iterations (and checkpoints)."""

    nets: PEARLNetworks
    optimizers: PEARLOptimizers
    replay: TaskReplayBuffers
    encoder_buffers: TaskReplayBuffers
    tasks: Any
    generator: torch.Generator


def _episodes_for(steps: int, horizon: int) -> int:
    return -(-steps // horizon) if steps > 0 else 0


def collect(
    state: PEARLState, dist, task_ids: Tensor, steps: int, posterior: bool, to_encoder: bool, config: PEARLConfig
) -> int:
    """Collect about ``steps`` transitions on each task of ``task_ids`` (oyster's ``collect_data``).

    With the prior, every episode of every task is one row of a single batched episode (z
    resampled per episode). With the posterior, episodes are played one after another, batched
    over tasks, z drawn before each from q(z | c) on ``embedding_batch_size`` transitions of the
    task's encoder buffer (the first from the prior when that buffer is still empty).

    Returns:
        The number of environment steps taken.
    """
    if steps <= 0 or len(task_ids) == 0:
        return 0
    nets, g, H = state.nets, state.generator, int(dist.episode_length)
    episodes = _episodes_for(steps, H)
    taken = 0
    rounds = [task_ids] * episodes if posterior else [task_ids.repeat_interleave(episodes)]
    for ids in rounds:
        tasks = type(state.tasks)(*(t[ids] for t in state.tasks))
        z = nets.prior_z(len(ids), g)
        if posterior:
            filled = state.encoder_buffers.size[ids] > 0
            if bool(filled.any()):
                with torch.no_grad():
                    ctx = state.encoder_buffers.sample(ids[filled], config.embedding_batch_size, g).context()
                    mean, var = nets.posterior(ctx)
                    z[filled] = nets.sample_z(mean, var, g)
        batch, valid = collect_episodes(nets, dist, tasks, z, g)
        for row, task in enumerate(ids.tolist()):
            keep = valid[row]
            part = Transitions(*(t[row][keep] for t in batch))
            state.replay.add(task, part)
            if to_encoder:
                state.encoder_buffers.add(task, part)
        taken += int(valid.sum())
    return taken


def new_state(config: PEARLConfig, dist) -> PEARLState:
    """Networks, optimizers, buffers and the train tasks of a fresh run (all from ``config.seed``)."""
    if not isinstance(dist.action_space, Box):
        raise ValueError(f"PEARL's tanh-Gaussian policy needs Box actions, the task has {dist.action_space}")
    g = torch.Generator().manual_seed(config.seed)
    tasks = dist.sample_tasks(config.num_train_tasks, g)
    obs_dim, action_dim = dist.obs_dim, dist.action_space.encoded_dim
    nets = PEARLNetworks(obs_dim, action_dim, config, generator=g)
    return PEARLState(
        nets,
        PEARLOptimizers(nets, config),
        TaskReplayBuffers(config.num_train_tasks, config.buffer_size, obs_dim, action_dim),
        TaskReplayBuffers(config.num_train_tasks, config.buffer_size, obs_dim, action_dim),
        tasks,
        g,
    )


def train_pearl(
    config: PEARLConfig,
    dist,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
) -> PEARLNetworks:
    """Meta-train PEARL on ``dist`` (Algorithm 1 of arXiv 1903.08254).

    Before the first iteration every train task gets ``num_initial_steps`` transitions with z from
    the prior. Each iteration re-collects ``num_tasks_sample`` random train tasks (:func:`collect`:
    their encoder buffers cleared, then prior, posterior and extra-RL episodes), then takes
    ``num_train_steps_per_itr`` :func:`gradient_step` s on meta-batches of ``meta_batch`` distinct
    train tasks. One generator (``config.seed``) drives everything; a run resumed from
    ``checkpoint_path`` (written every ``checkpoint_every`` iterations and at the end, buffers
    included) gives the same numbers as an uninterrupted one.

    Args:
        config: hyperparameters.
        dist: the task distribution (Box actions).
        log_fn: ``log_fn(env_steps, metrics)`` after every iteration (losses, the return of the
            collected prior and posterior episodes, timings).
        progress: a tqdm bar over iterations.
        checkpoint_path: the training state file to resume from and write.

    Returns:
        The trained :class:`PEARLNetworks` (eval mode).

    Raises:
        ValueError: ``dist`` does not have Box actions.
    """
    state = new_state(config, dist)
    first, env_steps = 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        first, env_steps = _load_training_state(checkpoint_path, state)
    elif config.num_iterations > 0:
        every = torch.arange(config.num_train_tasks)
        env_steps += collect(state, dist, every, config.num_initial_steps, False, True, config)
    nets, g = state.nets, state.generator
    iterations = range(first, config.num_iterations)
    if progress:
        from tqdm.auto import tqdm

        iterations = tqdm(iterations, desc="PEARL", initial=first, total=config.num_iterations)
    for iteration in iterations:
        start = time.perf_counter()
        chosen = torch.randperm(config.num_train_tasks, generator=g)[: config.num_tasks_sample]
        for task in chosen.tolist():
            state.encoder_buffers.clear(task)
        steps_before = env_steps
        env_steps += collect(state, dist, chosen, config.num_steps_prior, False, True, config)
        prior_return = _recent_return(state.encoder_buffers, chosen, config.num_steps_prior, dist)
        env_steps += collect(state, dist, chosen, config.num_steps_posterior, True, True, config)
        env_steps += collect(state, dist, chosen, config.num_extra_rl_steps_posterior, True, False, config)
        collected = time.perf_counter()
        stats: dict[str, float] = {}
        for _ in range(config.num_train_steps_per_itr):
            ids = torch.randperm(config.num_train_tasks, generator=g)[: config.meta_batch]
            context = state.encoder_buffers.sample(ids, config.embedding_batch_size, g).context()
            rl = state.replay.sample(ids, config.batch_size, g)
            step_stats = gradient_step(nets, state.optimizers, rl, context, config, g)
            for k, v in step_stats.items():
                stats[k] = stats.get(k, 0.0) + v / config.num_train_steps_per_itr
        done = time.perf_counter()
        if progress:
            iterations.set_postfix(prior=f"{prior_return:.2f}", q=f"{stats.get('q_loss', 0):.3g}")
        if log_fn is not None:
            metrics = {
                "charts/prior_episode_return": prior_return,
                "charts/iteration": iteration,
                "charts/env_steps_this_iteration": env_steps - steps_before,
                "charts/sampling_seconds": collected - start,
                "charts/update_seconds": done - collected,
            }
            log_fn(env_steps, {**metrics, **{f"losses/{k}": v for k, v in stats.items()}})
        if checkpoint_path is not None and (
            (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.num_iterations
        ):
            _save_training_state(checkpoint_path, state, iteration, env_steps)
    return nets.eval()


def _recent_return(buffers: TaskReplayBuffers, tasks: Tensor, steps: int, dist) -> float:
    """Mean episode return of the prior episodes just added to the encoder buffers of ``tasks``
    (their first ``steps`` transitions after the clear), nan when none."""
    if steps <= 0:
        return float("nan")
    H = int(dist.episode_length)
    total = sum(float(buffers.data.reward[t, : min(steps, int(buffers.size[t]))].sum()) for t in tasks.tolist())
    episodes = len(tasks) * _episodes_for(steps, H)
    return total / max(episodes, 1)


def _save_training_state(path, state: PEARLState, iteration: int, env_steps: int) -> None:
    """Atomically write what :func:`train_pearl` needs to resume after ``iteration``."""
    save_torch(
        {
            "nets": state.nets.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in state.optimizers.all().items()},
            "replay": state.replay.state_dict(),
            "encoder_buffers": state.encoder_buffers.state_dict(),
            "generator": state.generator.get_state(),
            "iteration": iteration,
            "env_steps": env_steps,
        },
        path,
    )


def _load_training_state(path, state: PEARLState) -> tuple[int, int]:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state.nets.load_state_dict(saved["nets"])
    for k, opt in state.optimizers.all().items():
        opt.load_state_dict(saved["optimizers"][k])
    state.replay.load_state_dict(saved["replay"])
    state.encoder_buffers.load_state_dict(saved["encoder_buffers"])
    state.generator.set_state(saved["generator"])
    return saved["iteration"] + 1, saved["env_steps"]


def save_networks(nets: PEARLNetworks, path, config: PEARLConfig) -> None:
    torch.save({"spec": nets.spec(), "state_dict": nets.state_dict(), "config": config.to_dict()}, path)


def load_networks(path, config: PEARLConfig) -> PEARLNetworks:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    nets = PEARLNetworks(**saved["spec"], config=config)
    nets.load_state_dict(saved["state_dict"])
    return nets.eval()


# ---------------------------------------------------------------------------------------------
# 8. PEARL on the platform
# ---------------------------------------------------------------------------------------------


@LEARNERS.register("pearl")
@dataclass
class PEARLLearnerConfig:
    """PEARL as a learner of a ``kind: compare`` recipe (``learners: [{name: pearl, algo: {...}}]``).

    Attributes:
        name: the registry name.
        label: its name in reports (default "PEARL").
        algo: :class:`PEARLConfig`.
    """

    name: str = "pearl"
    label: str | None = None
    algo: PEARLConfig = field(default_factory=PEARLConfig)

    @property
    def display_name(self) -> str:
        return self.label or "PEARL"

    def learner(self) -> "PEARLLearner":
        return PEARLLearner()


class PEARLLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of PEARL: :func:`train_pearl` in the stage folder
    (``networks.pt``; ``training_state.pt`` to resume)."""

    config_class = PEARLLearnerConfig

    def train(self, config: PEARLLearnerConfig, dist, protocol, run: StageRun) -> Path:
        path = Path(run.dir) / "networks.pt"
        if path.exists():
            return path
        state_path = path.parent / "training_state.pt"
        log_fn = run.log_fn(resuming=state_path.exists())
        nets = train_pearl(config.algo, dist, log_fn=log_fn, progress=run.progress, checkpoint_path=state_path)
        save_networks(nets, path, config.algo)
        return path

    def agent(self, config: PEARLLearnerConfig, checkpoint: Path, dist) -> PEARLAgent:
        return PEARLAgent(load_networks(checkpoint, config.algo), config.algo, dist.action_space, config.display_name)
