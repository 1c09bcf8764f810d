"""MAML and FOMAML for reinforcement learning: a policy initialization that adapts to a new task in a
few policy-gradient steps.

MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
arXiv 1703.03400, Sec. 3.2 and 5.3). The **inner loop** (adaptation, Eq. 1) takes per task ``i``
``theta'_i = theta - alpha * grad_theta L_i(theta)`` with ``L_i`` the vanilla policy-gradient
(REINFORCE) loss on K episodes of task ``i`` played with ``theta``, advantages from a linear
feature baseline fitted per task (Duan et al. 2016, arXiv 1604.06778, App.; the features of
rllab / pytorch-maml-rl). The **outer loop** maximizes the return of episodes played with the
adapted ``theta'_i``, differentiating through the adaptation (second order: the Hessian of
``L_i`` enters the meta-gradient), with TRPO (Schulman et al. 2015, arXiv 1502.05477: mean KL of
the adapted policies <= ``max_kl``, natural-gradient direction by conjugate gradient on
Hessian-vector products of the KL, damping, backtracking line search), as tristandeleu/
pytorch-maml-rl's ``MAMLTRPO``. Options:

- ``first_order``: **FOMAML** (arXiv 1703.03400, Sec. 5.2): the inner gradient is treated as a
  constant, ``d theta'_i / d theta = I``, which drops the Hessian term from the meta-gradient.
- ``outer: ppo``: the PPO clipped surrogate (arXiv 1707.06347) with Adam over the same adapted
  policies, instead of TRPO: cheaper per iteration, no line search.
- ``inner_steps: 0``: the multi-task **pretrained** policy of MAML's Figure 5 (TRPO on the return
  of the unadapted policy over the task distribution); fine-tuned at test with the same inner
  loop. ``num_iterations: 0`` is the **random initialization** fine-tuned the same way.

Adaptation is functional: ``torch.func.functional_call`` evaluates the policy with any parameter
dictionary, ``torch.func.grad`` takes a task's inner gradient and ``torch.func.vmap`` does it for
every task of the meta-batch at once; ordinary autograd differentiates the outer objective
through it (``create_graph`` semantics).

At test time the agent is played by the evaluator through
:func:`classic.rollout.rollout_adapting`: K copies of each held-out task per episode, one
adaptation step after each episode (up to ``test_steps``), so episode ``e`` of the trial is the
return after ``e`` gradient steps (the MAML paper's Figure 5 protocol, fresh episodes for every
step, as pytorch-maml-rl's sampler).

Example:
    >>> from classic.envs.nav2d import Nav2DConfig
    >>> dist = Nav2DConfig().make()
    >>> policy = train_maml(MAMLConfig(num_iterations=100), dist)
    >>> agent = MAMLAgent(policy, MAMLConfig())
    >>> run_trials(agent, dist, num_tasks=40, episodes_per_trial=4).episode_returns.mean(0)
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from classic.config import require_ints, require_numbers, require_widths
from classic.core import Box, MetaLearner, StageRun
from classic.files import save_torch
from classic.registry import LEARNERS
from classic.rollout import Trajectory, repeat_tasks, rollout

Params = dict[str, Tensor]

# ---------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class MAMLConfig:
    """Hyperparameters of MAML / FOMAML (defaults: pytorch-maml-rl ``configs/maml/2d-navigation.yaml``,
    the MAML paper's Sec. 5.3 settings for 2D navigation).

    Attributes:
        hidden_sizes: widths of the policy's hidden layers (tanh).
        init_std: initial standard deviation of the Gaussian policy (a learned, state-independent
            log-std, adapted in the inner loop too).
        fast_lr: alpha, the inner-loop (adaptation) step size.
        inner_steps: adaptation steps during meta-training, each on fresh episodes of the adapted
            policy; 0 trains the multi-task pretrained policy.
        test_steps: adaptation steps at test time (None: after every episode of the trial but the
            last, so a trial of E episodes reports 0 .. E-1 steps).
        test_fast_lr: the inner step sizes at test time, one per step (the last repeats); None:
            ``fast_lr`` for every step. A policy meta-trained for one step overshoots with a
            second step of the same size (pytorch-maml-rl #46; README "MAML on 2D navigation").
        episodes_per_task: K, episodes per task per adaptation step (pytorch-maml-rl
            ``fast-batch-size``); also the copies of each task the agent plays at test time.
        meta_batch_size: tasks per outer-loop iteration.
        num_iterations: outer-loop iterations (meta-batches); 0 keeps the random initialization.
        gamma: discount of the returns the baseline and the advantages are computed from.
        baseline_reg: ridge coefficient of the linear feature baseline's least squares (multiplied
            by 10, up to 5 times, when the system is singular).
        normalize_advantages: standardize the advantages of each task's K episodes.
        first_order: FOMAML (the inner gradient treated as a constant: no Hessian term).
        outer: ``trpo`` (MAML's) or ``ppo``.
        max_kl: TRPO's trust region, mean KL(new || old) of the adapted policies.
        kl_first_order: TRPO's Hessian-vector products of the KL go through the first-order
            adaptation (``d theta' / d theta = I``): a cheaper metric for the natural-gradient
            direction (no third derivatives). The meta-gradient stays second order and the line
            search still checks the exact KL. False: pytorch-maml-rl's exact products.
        kl_hvp: how TRPO's Hessian-vector products of the KL are computed, both exact at the old
            parameters: ``double_backward`` (pytorch-maml-rl's: differentiate the KL's gradient
            again, a third derivative through the adaptation) or ``fisher`` (the Gauss-Newton form
            ``J^T M J v``: a forward-mode product through the adapted policies' outputs, then a
            reverse one; equal because the KL's gradient in the outputs vanishes at the old policy).
        kl_hvp_tasks: the KL's Hessian-vector products (the natural step's metric) on the first
            ``kl_hvp_tasks`` tasks of the meta-batch only (tasks are i.i.d., so this is an unbiased
            estimate of the metric; OpenAI baselines' TRPO takes its Fisher-vector products on every
            5th sample). The meta-gradient and the line search's KL use every task. None: all tasks
            (pytorch-maml-rl).
        cg_iters, cg_damping: conjugate-gradient iterations and damping of TRPO's natural step.
        ls_max_steps, ls_backtrack_ratio: TRPO's backtracking line search.
        ppo_epochs, ppo_clip, ppo_lr: the PPO outer loop's Adam epochs per meta-batch, ratio clip
            and step size.
        seed: seeds the one ``torch.Generator`` of initialization, tasks, environment and actions.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    init_std: float = 1.0
    fast_lr: float = 0.1
    inner_steps: int = 1
    test_steps: int | None = None
    test_fast_lr: list[float] | None = None
    episodes_per_task: int = 20
    meta_batch_size: int = 20
    num_iterations: int = 500
    gamma: float = 0.99
    baseline_reg: float = 1e-5
    normalize_advantages: bool = True
    first_order: bool = False
    outer: Literal["trpo", "ppo"] = "trpo"
    max_kl: float = 0.01
    kl_first_order: bool = False
    kl_hvp: Literal["double_backward", "fisher"] = "double_backward"
    kl_hvp_tasks: int | None = None
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    ppo_epochs: int = 5
    ppo_clip: float = 0.2
    ppo_lr: float = 3e-4
    seed: int = 1

    def __post_init__(self) -> None:
        require_widths(self, ("hidden_sizes",))
        require_ints(
            self, ("episodes_per_task", "meta_batch_size", "cg_iters", "ls_max_steps", "ppo_epochs"), minimum=1
        )
        require_ints(self, ("inner_steps", "num_iterations"), minimum=0)
        if self.test_fast_lr is not None:
            self.test_fast_lr = [float(x) for x in self.test_fast_lr]
            if not self.test_fast_lr or any(not (math.isfinite(x) and x > 0) for x in self.test_fast_lr):
                raise ValueError(f"test_fast_lr must be a non-empty list of numbers > 0, got {self.test_fast_lr!r}")
        if self.test_steps is not None and (not isinstance(self.test_steps, int) or self.test_steps < 0):
            raise ValueError(f"test_steps must be an int >= 0 or null, got {self.test_steps!r}")
        require_numbers(self, ("init_std", "fast_lr", "max_kl", "ppo_clip", "ppo_lr", "baseline_reg"))
        if not 0.0 <= self.cg_damping < math.inf:
            raise ValueError(f"cg_damping must be >= 0, got {self.cg_damping!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not 0.0 < self.ls_backtrack_ratio < 1.0:
            raise ValueError(f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio!r}")
        if self.outer not in ("trpo", "ppo"):
            raise ValueError(f"outer must be 'trpo' or 'ppo', got {self.outer!r}")
        if self.kl_hvp not in ("double_backward", "fisher"):
            raise ValueError(f"kl_hvp must be 'double_backward' or 'fisher', got {self.kl_hvp!r}")
        if self.kl_hvp_tasks is not None and (
            not isinstance(self.kl_hvp_tasks, int) or not 1 <= self.kl_hvp_tasks <= self.meta_batch_size
        ):
            raise ValueError(
                f"kl_hvp_tasks must be an int in [1, meta_batch_size={self.meta_batch_size}] or null, "
                f"got {self.kl_hvp_tasks!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# 2. The policy, used functionally
# ---------------------------------------------------------------------------------------------


class GaussianMLPPolicy(nn.Module):
    """A Gaussian policy: a tanh MLP gives the mean, a learned state-independent ``log_std`` the
    standard deviation (pytorch-maml-rl's ``NormalMLPPolicy``). Actions are unbounded; the task
    distribution clips them into its Box.

    Every method takes the parameter dictionary ``params`` explicitly (``torch.func.functional_call``),
    so the same module evaluates the meta-parameters and any task's adapted parameters.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        hidden_sizes: hidden widths.
        init_std: initial standard deviation.
        generator: draws the Xavier-uniform initial weights (biases 0), for reproducibility.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: list[int],
        init_std: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.action_dim, self.hidden_sizes = int(obs_dim), int(action_dim), list(hidden_sizes)
        sizes = [self.obs_dim, *self.hidden_sizes, self.action_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(a, b)
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), math.log(init_std)))

    def spec(self) -> dict:
        return {"obs_dim": self.obs_dim, "action_dim": self.action_dim, "hidden_sizes": self.hidden_sizes}

    def params(self) -> Params:
        """The meta-parameters as a name -> tensor dictionary (the module's own leaves)."""
        return dict(self.named_parameters())

    def mean_std(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(..., action_dim) mean and standard deviation at observations (..., obs_dim)."""
        mean = functional_call(self, params, (obs,))
        return mean, params["log_std"].exp().clamp(min=1e-6).expand_as(mean)

    def forward(self, obs: Tensor) -> Tensor:
        return self.mean(obs)

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """(...) log pi(a | s) of actions (..., action_dim) at observations (..., obs_dim)."""
        mean, std = self.mean_std(params, obs)
        return gaussian_log_prob(mean, std, actions)

    def save(self, path, config: MAMLConfig | None = None) -> None:
        torch.save({"spec": self.spec(), "state_dict": self.state_dict(), "config": config and config.to_dict()}, path)

    @classmethod
    def load(cls, path) -> "GaussianMLPPolicy":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        policy = cls(**ckpt["spec"])
        policy.load_state_dict(ckpt["state_dict"])
        return policy


def gaussian_log_prob(mean: Tensor, std: Tensor, x: Tensor) -> Tensor:
    """(...) log N(x; mean, diag std^2) summed over the last dimension (no argument validation, so
    it traces without data-dependent checks)."""
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """(...) KL(N(mean_p, std_p) || N(mean_q, std_q)) of diagonal Gaussians over the last dimension."""
    var_p, var_q = std_p.pow(2), std_q.pow(2)
    kl = torch.log(std_q / std_p) + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(-1)


# ---------------------------------------------------------------------------------------------
# 3. Episodes, the linear feature baseline and advantages
# ---------------------------------------------------------------------------------------------


class Episodes(NamedTuple):
    """K episodes on each of B tasks, task-major (the layout adaptation is vmapped over).

    Attributes:
        obs: (B, K, T, obs_dim) float observations the actions were taken at.
        actions: (B, K, T, action_dim) float actions as sampled (before the environment's clipping).
        rewards: (B, K, T) float rewards (0 after the episode's end).
        mask: (B, K, T) float, 1 on the steps of the episode.
        advantages: (B, K, T) float, from :func:`advantages` (zeros until then).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    advantages: Tensor


def episodes_from(traj: Trajectory, copies: int) -> Episodes:
    """One-episode :class:`~classic.rollout.Trajectory` over B * K rows (K copies per task,
    task-major) -> :class:`Episodes` (B, K, T, ...)."""
    T, n = traj.rewards.shape
    B = n // copies

    def tk(x: Tensor) -> Tensor:  # (T, B*K, ...) -> (B, K, T, ...)
        return x.reshape(T, B, copies, *x.shape[2:]).movedim(0, 2)

    mask = tk(traj.valid.float())
    return Episodes(
        obs=tk(traj.obs.float()),
        actions=tk(traj.actions.float()),
        rewards=tk(traj.rewards.float()) * mask,
        mask=mask,
        advantages=torch.zeros_like(mask),
    )


def discounted_returns_to_go(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """(..., T) ``R_t = sum_{l >= 0} gamma^l r_{t+l}`` within each episode (the last axis is time)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """(..., T, 2 * obs_dim + 4) features of the linear feature baseline: ``[s, s^2, t/100,
    (t/100)^2, (t/100)^3, 1]`` (rllab's ``LinearFeatureBaseline``, as pytorch-maml-rl), zero off the
    episode."""
    T = obs.shape[-2]
    time_ = (torch.arange(T, dtype=obs.dtype) / 100.0).expand(*obs.shape[:-1]).unsqueeze(-1)
    feats = torch.cat([obs, obs.pow(2), time_, time_.pow(2), time_.pow(3), torch.ones_like(time_)], dim=-1)
    return feats * mask.unsqueeze(-1)


def fit_linear_baseline(features: Tensor, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Per-task ridge regression of returns on features (the linear feature baseline).

    Solves ``(F^T F + reg I) w = F^T R`` per task in float64 (in float32 the Gram matrix of a policy
    that wanders far, ``s^2`` ~ 100, is numerically singular); when the system is singular, ``reg``
    grows by 10x up to 5 times (rllab / pytorch-maml-rl), then the pseudo-inverse solves it.

    Args:
        features: (B, N, f) float, the rows of each task's steps (masked rows are zeros).
        returns: (B, N) float targets.
        reg: the ridge coefficient.

    Returns:
        (B, f) weights, in the dtype of ``features``.
    """
    f64 = features.double()
    ft = f64.transpose(-1, -2)
    gram, rhs = ft @ f64, ft @ returns.double().unsqueeze(-1)
    eye = torch.eye(features.shape[-1], dtype=torch.float64)
    for _ in range(5):
        w, info = torch.linalg.solve_ex(gram + reg * eye, rhs)
        if bool((info == 0).all()) and bool(torch.isfinite(w).all()):
            return w.squeeze(-1).to(features.dtype)
        reg *= 10.0
    return (torch.linalg.pinv(gram + reg * eye) @ rhs).squeeze(-1).to(features.dtype)


def advantages(episodes: Episodes, gamma: float, reg: float = 1e-5, normalize: bool = True) -> Episodes:
    """Episodes with ``advantages = R_t - b(s_t, t)``: discounted returns-to-go minus the linear
    feature baseline fitted on the same task's K episodes (GAE with lambda = 1, arXiv 1506.02438,
    telescopes to exactly this), standardized per task when ``normalize``."""
    B, K, T = episodes.rewards.shape
    returns = discounted_returns_to_go(episodes.rewards, episodes.mask, gamma)
    feats = baseline_features(episodes.obs, episodes.mask)
    w = fit_linear_baseline(feats.reshape(B, K * T, -1), returns.reshape(B, K * T), reg)
    values = (feats @ w.reshape(B, 1, -1, 1)).squeeze(-1)  # (B, K, T)
    adv = (returns - values) * episodes.mask
    if normalize:
        n = episodes.mask.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
        mean = adv.sum(dim=(1, 2), keepdim=True) / n
        var = ((adv - mean) * episodes.mask).pow(2).sum(dim=(1, 2), keepdim=True) / n
        adv = (adv - mean) / (var.sqrt() + 1e-8) * episodes.mask
    return episodes._replace(advantages=adv)


def episode_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over time within each episode, then over episodes (pytorch-maml-rl's ``weighted_mean``):
    (..., K, T) -> (...)."""
    per_episode = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_episode.mean(-1)


# ---------------------------------------------------------------------------------------------
# 4. The inner loop: adaptation by vanilla policy gradient
# ---------------------------------------------------------------------------------------------


def reinforce_loss(policy: GaussianMLPPolicy, params: Params, ep: Episodes) -> Tensor:
    """() the inner loss of one task: ``-mean(log pi(a_t | s_t) * A_t)`` over its (K, T) steps."""
    logp = policy.log_prob(params, ep.obs, ep.actions)
    return -episode_mean(logp * ep.advantages, ep.mask)


def adapt(
    policy: GaussianMLPPolicy, params: Params, episodes: Episodes, fast_lr: float, first_order: bool, batched: bool
) -> Params:
    """One inner step for every task at once: ``theta'_i = theta_i - alpha * grad L_i(theta_i)``
    (arXiv 1703.03400, Eq. 1), vmapped over the B tasks of ``episodes``.

    Args:
        policy: the module (its structure; the values come from ``params``).
        params: the meta-parameters (shared by every task) or, with ``batched``, per-task
            parameters with a leading (B,) dimension (a second step).
        episodes: (B, K, T, ...) episodes with advantages.
        fast_lr: alpha.
        first_order: FOMAML: the gradient is detached, so ``d theta' / d theta = I``.
        batched: whether ``params`` has the leading task dimension.

    Returns:
        Per-task adapted parameters, each tensor (B, *shape); differentiable w.r.t. ``params``
        (through the Hessian of the inner loss unless ``first_order``).
    """

    def one_task(p: Params, ep: Episodes) -> Params:
        g = grad(lambda q: reinforce_loss(policy, q, ep))(p)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        return {k: p[k] - fast_lr * g[k] for k in p}

    return vmap(one_task, in_dims=(0 if batched else None, 0))(params, episodes)


def batched_log_prob(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> Tensor:
    """(B, K, T) log-probabilities of each task's episodes under its own parameters (B, ...)."""
    return vmap(policy.log_prob)(params, episodes.obs, episodes.actions)


def batched_mean_std(policy: GaussianMLPPolicy, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task means and standard deviations (B, ..., action_dim) at observations (B, ..., obs_dim)."""
    return vmap(policy.mean_std)(params, obs)


# ---------------------------------------------------------------------------------------------
# 5. Collecting episodes: the policy as a platform agent
# ---------------------------------------------------------------------------------------------


class MAMLAgent:
    """A Gaussian MLP policy with per-task parameters behind the platform's ``Agent`` protocol.

    It plays K = ``episodes_per_adaptation`` copies of each task (rows ``b * K .. b * K + K - 1``)
    and adapts between episodes: ``adapt(trajectory)`` takes one inner step per task on the K
    episodes just played (:func:`adapt`, first order: no graph is kept at test time), up to
    ``max_steps`` steps.

    Args:
        policy: the meta-trained initialization.
        config: the fast step size, K, the baseline settings and ``test_steps``.
        name: its name in reports.
        max_steps: adaptation steps before it stops adapting (None: ``config.test_steps``, and
            when that is None too, after every episode).
    """

    adapts_by_gradient = True

    def __init__(
        self, policy: GaussianMLPPolicy, config: MAMLConfig, name: str = "MAML", max_steps: int | None = None
    ) -> None:
        self.policy = policy.eval()
        self.config = config
        self.name = name
        self.episodes_per_adaptation = int(config.episodes_per_task)
        self.max_steps = config.test_steps if max_steps is None else max_steps
        self.params: Params = {}
        self.steps_taken = 0
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        """Every task starts from the meta-parameters; ``num_tasks`` = B * K rows."""
        if num_tasks % self.episodes_per_adaptation:
            raise ValueError(f"{num_tasks} rows are not whole groups of K = {self.episodes_per_adaptation} copies")
        B = num_tasks // self.episodes_per_adaptation
        self.set_params({k: v.detach().expand(B, *v.shape).clone() for k, v in self.policy.params().items()})
        self.generator = generator

    def set_params(self, params: Params) -> None:
        """Per-task parameters (B, ...) to act with (the trainer sets adapted ones)."""
        self.params = params
        self.steps_taken = 0

    @torch.no_grad()
    def act(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor):
        K = self.episodes_per_adaptation
        x = obs.float().reshape(-1, K, obs.shape[-1])  # (B, K, obs_dim)
        mean, std = batched_mean_std(self.policy, self.params, x)
        noise = torch.randn(mean.shape, generator=self.generator, device=mean.device)
        return (mean + std * noise).reshape(obs.shape[0], -1)

    def step_size(self, step: int) -> float:
        """The inner step size of 0-based test-time step ``step`` (``test_fast_lr``, else ``fast_lr``)."""
        sizes = self.config.test_fast_lr
        return self.config.fast_lr if sizes is None else sizes[min(step, len(sizes) - 1)]

    def adapt(self, trajectory: Trajectory) -> None:
        """One inner step per task on the episode just played (K copies per task)."""
        if self.max_steps is not None and self.steps_taken >= self.max_steps:
            return
        cfg = self.config
        ep = episodes_from(trajectory, self.episodes_per_adaptation)
        ep = advantages(ep, cfg.gamma, cfg.baseline_reg, cfg.normalize_advantages)
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        with torch.enable_grad():
            new = adapt(self.policy, params, ep, self.step_size(self.steps_taken), first_order=True, batched=True)
        taken = self.steps_taken + 1
        self.set_params({k: v.detach() for k, v in new.items()})
        self.steps_taken = taken


def sample_episodes(
    agent: MAMLAgent, dist, tasks, params: Params, generator: torch.Generator, config: MAMLConfig
) -> Episodes:
    """K episodes per task with per-task ``params`` (B, ...): one platform rollout over B * K rows,
    then advantages."""
    agent.set_params({k: v.detach() for k, v in params.items()})
    agent.generator = generator
    traj = rollout(agent, dist, repeat_tasks(tasks, config.episodes_per_task), 1, generator, reset_agent=False)
    ep = episodes_from(traj, config.episodes_per_task)
    return advantages(ep, config.gamma, config.baseline_reg, config.normalize_advantages)


# ---------------------------------------------------------------------------------------------
# 6. The outer loop: TRPO (or PPO) through the adaptation
# ---------------------------------------------------------------------------------------------


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``hvp(v) = A v``
    (Hestenes & Stiefel 1952; TRPO's natural-gradient step, arXiv 1502.05477, App. C).

    Args:
        hvp: the matrix-vector product, (d,) -> (d,).
        b: (d,) right-hand side.
        iters: at most this many iterations (exact after d in exact arithmetic).
        tol: stop when the squared residual falls below it.

    Returns:
        (d,) x.
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if float(rr) < tol:
            break
        Ap = hvp(p)
        alpha = rr / p.dot(Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class MetaBatch(NamedTuple):
    """One meta-batch: the adaptation episodes of each inner step and the validation episodes.

    Attributes:
        train: ``inner_steps`` :class:`Episodes` (B, K, T, ...) (empty for the pretrained policy).
        valid: the :class:`Episodes` played with the adapted parameters.
    """

    train: list[Episodes]
    valid: Episodes

    def tasks(self, n: int) -> "MetaBatch":
        """The meta-batch of its first ``n`` tasks (every tensor sliced along B)."""
        first = lambda ep: Episodes(*(x[:n] for x in ep))  # noqa: E731
        return MetaBatch([first(ep) for ep in self.train], first(self.valid))


def adapted_params(policy: GaussianMLPPolicy, batch: MetaBatch, config: MAMLConfig) -> Params:
    """Per-task parameters (B, ...) after the meta-batch's inner steps, from the module's current
    meta-parameters (differentiable through every step)."""
    B = batch.valid.rewards.shape[0]
    params: Params = policy.params()
    if not batch.train:
        return {k: v.expand(B, *v.shape) for k, v in params.items()}
    for i, ep in enumerate(batch.train):
        params = adapt(policy, params, ep, config.fast_lr, config.first_order, batched=i > 0)
    return params


def adapted_policies(policy: GaussianMLPPolicy, batch: MetaBatch, config: MAMLConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The adapted policies on the validation episodes: log-probs (B, K, T) of the actions taken,
    means and standard deviations (B, K, T, action_dim); differentiable w.r.t. the meta-parameters."""
    params = adapted_params(policy, batch, config)
    mean, std = batched_mean_std(policy, params, batch.valid.obs)
    logp = gaussian_log_prob(mean, std, batch.valid.actions)
    return logp, mean, std


def surrogate(
    policy: GaussianMLPPolicy, batch: MetaBatch, config: MAMLConfig, old: tuple[Tensor, Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """TRPO's surrogate loss and mean KL of the adapted policies (pytorch-maml-rl ``surrogate_loss``).

    ``loss = -mean_i mean_t(ratio_t * A_t)`` with ``ratio = pi_theta'(a|s) / pi_old'(a|s)`` on the
    validation episodes, ``kl = mean_i mean_t KL(pi_theta'(.|s) || pi_old'(.|s))``.

    Args:
        old: (log-probs (B, K, T), means, stds) of the adapted policies at the old meta-parameters;
            None: take them from this evaluation (the loss is then -mean A, the KL 0).

    Returns:
        (loss, kl, old) scalars and the old policies' statistics.
    """
    logp, mean, std = adapted_policies(policy, batch, config)
    valid = batch.valid
    if old is None:
        old = (logp.detach(), mean.detach(), std.detach())
    ratio = torch.exp(logp - old[0])
    loss = -episode_mean(ratio * valid.advantages, valid.mask).mean()
    kl = episode_mean(gaussian_kl(mean, std, old[1], old[2]), valid.mask).mean()
    return loss, kl, old


def fisher_kl_hvp(policy: GaussianMLPPolicy, batch: MetaBatch, config: MAMLConfig) -> Callable[[Tensor], Tensor]:
    """Hessian-vector products of TRPO's mean KL at the current (old) meta-parameters, in Gauss-Newton
    form (Schulman et al. 2015, arXiv 1502.05477, App. C: the KL's Hessian at the old policy is the
    Fisher information ``J^T M J``).

    ``J`` is the Jacobian of the adapted policies' outputs (means and standard deviations on the
    validation episodes, through the adaptation) w.r.t. the meta-parameters, ``M`` the KL's Hessian
    in those outputs, diagonal: ``w / sigma^2`` for a mean and ``2 w / sigma^2`` for a standard
    deviation, ``w`` the step's weight in the mean KL. Each product is one ``torch.func.jvp``
    (forward mode through the inner gradient) and one reverse pass of a ``torch.func.vjp`` built
    once; no third derivative. Includes ``cg_damping * v``.

    Returns:
        ``hvp(v)`` on flat vectors in the order of ``policy.parameters()``.
    """
    theta = {k: v.detach() for k, v in policy.params().items()}
    names = list(theta)
    sizes = [theta[k].numel() for k in names]
    hvp_config = dataclasses.replace(config, first_order=config.first_order or config.kl_first_order)
    B = batch.valid.rewards.shape[0]

    def outputs(p: Params) -> tuple[Tensor, Tensor]:
        params = {k: v.expand(B, *v.shape) for k, v in p.items()}
        for i, ep in enumerate(batch.train):
            params = adapt(
                policy, p if i == 0 else params, ep, hvp_config.fast_lr, hvp_config.first_order, batched=i > 0
            )
        return batched_mean_std(policy, params, batch.valid.obs)

    (mean, std), vjp_fn = torch.func.vjp(outputs, theta)
    mask = batch.valid.mask
    w = (mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / (mask.shape[0] * mask.shape[1])).unsqueeze(-1)
    m_mean, m_std = (w / std.pow(2)).detach(), (2 * w / std.pow(2)).detach()

    def hvp(v: Tensor) -> Tensor:
        tangent = {k: part.view_as(theta[k]) for k, part in zip(names, v.split(sizes))}
        _, (j_mean, j_std) = torch.func.jvp(outputs, (theta,), (tangent,))
        (hv,) = vjp_fn((m_mean * j_mean, m_std * j_std))
        return torch.cat([hv[k].reshape(-1) for k in names]) + config.cg_damping * v

    return hvp


def trpo_step(policy: GaussianMLPPolicy, batch: MetaBatch, config: MAMLConfig) -> dict:
    """One TRPO update of the meta-parameters through the adaptation (pytorch-maml-rl ``MAMLTRPO.step``).

    The step direction solves ``(H + damping I) x = g`` by conjugate gradient, with H the Hessian of
    the mean KL at the old parameters (Hessian-vector products by double backward, or in Fisher form
    with ``kl_hvp: fisher``; on the first ``kl_hvp_tasks`` tasks when set) and g the
    surrogate's gradient; it is scaled to KL = ``max_kl`` (``sqrt(2 max_kl / x^T H x)``) and
    backtracked until the surrogate improves and the KL is within ``max_kl``; when no step
    qualifies the parameters stay.

    Returns:
        Diagnostics: ``loss_before``, ``loss_after``, ``kl``, ``line_search_steps``, ``accepted``.
    """
    leaves = list(policy.parameters())
    loss, kl, old = surrogate(policy, batch, config)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, leaves, retain_graph=True)])
    n = config.kl_hvp_tasks
    metric = batch if n is None or n >= batch.valid.rewards.shape[0] else batch.tasks(n)
    if config.kl_hvp == "fisher":
        hvp = fisher_kl_hvp(policy, metric, config)
    else:
        if metric is not batch:
            old_n = tuple(x[:n] for x in old)
            kl_config = dataclasses.replace(config, first_order=config.first_order or config.kl_first_order)
            kl = surrogate(policy, metric, kl_config, old_n)[1]
        elif config.kl_first_order and not config.first_order:
            kl = surrogate(policy, batch, dataclasses.replace(config, first_order=True), old)[1]
        grad_kl = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, leaves, create_graph=True)])

        def hvp(v: Tensor) -> Tensor:
            hv = torch.autograd.grad(grad_kl.dot(v), leaves, retain_graph=True)
            return torch.cat([x.reshape(-1) for x in hv]) + config.cg_damping * v

    step_dir = conjugate_gradient(hvp, g.detach(), config.cg_iters)
    shs = 0.5 * step_dir.dot(hvp(step_dir))
    step = step_dir / torch.sqrt(shs / config.max_kl).clamp(min=1e-12)
    old_vec = nn.utils.parameters_to_vector(leaves).detach().clone()
    loss_before, scale, accepted, new_loss, new_kl = float(loss.detach()), 1.0, False, float(loss.detach()), 0.0
    ls = 0
    with torch.no_grad():
        for ls in range(config.ls_max_steps):
            nn.utils.vector_to_parameters(old_vec - scale * step, leaves)
            new_loss_t, new_kl_t, _ = surrogate(policy, batch, config, old)  # torch.func.grad ignores no_grad
            new_loss, new_kl = float(new_loss_t), float(new_kl_t)
            if new_loss < loss_before and new_kl < config.max_kl:
                accepted = True
                break
            scale *= config.ls_backtrack_ratio
        if not accepted:
            nn.utils.vector_to_parameters(old_vec, leaves)
            new_loss, new_kl = loss_before, 0.0
    return {
        "loss_before": loss_before,
        "loss_after": new_loss,
        "kl": new_kl,
        "line_search_steps": ls + 1,
        "accepted": float(accepted),
    }


def ppo_step(policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer, batch: MetaBatch, config: MAMLConfig) -> dict:
    """``ppo_epochs`` Adam steps on the PPO clipped surrogate (arXiv 1707.06347, Eq. 7) of the adapted
    policies, re-adapting at every step (through the Hessian unless ``first_order``)."""
    old = None
    loss_before = kl = 0.0
    for epoch in range(config.ppo_epochs):
        logp, mean, std = adapted_policies(policy, batch, config)
        valid = batch.valid
        if old is None:
            old = (logp.detach(), mean.detach(), std.detach())
        ratio = torch.exp(logp - old[0])
        clipped = ratio.clamp(1 - config.ppo_clip, 1 + config.ppo_clip)
        loss = -episode_mean(torch.minimum(ratio * valid.advantages, clipped * valid.advantages), valid.mask).mean()
        if epoch == 0:
            loss_before = float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kl = float(episode_mean(gaussian_kl(mean.detach(), std.detach(), old[1], old[2]), valid.mask).mean())
    return {"loss_before": loss_before, "kl": kl}


# ---------------------------------------------------------------------------------------------
# 7. Meta-training
# ---------------------------------------------------------------------------------------------


def sample_meta_batch(policy: GaussianMLPPolicy, agent: MAMLAgent, dist, generator, config: MAMLConfig) -> MetaBatch:
    """Draw ``meta_batch_size`` tasks; play K episodes per task with the meta-parameters, adapt,
    repeat ``inner_steps`` times, then play the validation episodes with the adapted parameters."""
    tasks = dist.sample_tasks(config.meta_batch_size, generator)
    B = config.meta_batch_size
    params = {k: v.detach().expand(B, *v.shape) for k, v in policy.params().items()}
    train = []
    for _ in range(config.inner_steps):
        ep = sample_episodes(agent, dist, tasks, params, generator, config)
        train.append(ep)
        with torch.enable_grad():
            params = adapt(policy, params, ep, config.fast_lr, first_order=True, batched=True)
        params = {k: v.detach() for k, v in params.items()}
    valid = sample_episodes(agent, dist, tasks, params, generator, config)
    return MetaBatch(train, valid)


def train_maml(
    config: MAMLConfig,
    dist,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
) -> GaussianMLPPolicy:
    """Meta-train a policy initialization on ``dist`` (a Box-action task distribution).

    Every iteration draws a meta-batch (:func:`sample_meta_batch`) and updates the meta-parameters
    with :func:`trpo_step` or :func:`ppo_step`. All randomness comes from one generator seeded with
    ``config.seed``; a run resumed from ``checkpoint_path`` gives the same numbers as an
    uninterrupted one.

    Args:
        config: hyperparameters.
        dist: the task distribution (Box actions).
        log_fn: called as ``log_fn(env_steps, metrics)`` after every iteration: ``charts/``
            pre- and post-adaptation mean episode return, iteration time; ``losses/`` the outer
            step's diagnostics.
        progress: a tqdm bar over iterations.
        checkpoint_path: training state saved every ``checkpoint_every`` iterations and at the
            end; training resumes from it when it exists.

    Returns:
        The meta-trained :class:`GaussianMLPPolicy`.

    Raises:
        ValueError: ``dist`` does not have Box actions.
    """
    if not isinstance(dist.action_space, Box):
        raise ValueError(f"MAML's Gaussian policy needs Box actions, the task has {dist.action_space}")
    generator = torch.Generator().manual_seed(config.seed)
    policy = GaussianMLPPolicy(
        dist.obs_dim, dist.action_space.encoded_dim, config.hidden_sizes, config.init_std, generator=generator
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.ppo_lr) if config.outer == "ppo" else None
    first, env_steps = 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        policy.load_state_dict(state["policy"])
        generator.set_state(state["generator"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        first, env_steps = state["iteration"] + 1, state["env_steps"]
    agent = MAMLAgent(policy, config)
    iterations = range(first, config.num_iterations)
    if progress:
        from tqdm.auto import tqdm

        iterations = tqdm(iterations, desc="MAML", initial=first, total=config.num_iterations)
    for iteration in iterations:
        start = time.perf_counter()
        batch = sample_meta_batch(policy, agent, dist, generator, config)
        collected = time.perf_counter()
        if config.outer == "trpo":
            stats = trpo_step(policy, batch, config)
        else:
            stats = ppo_step(policy, optimizer, batch, config)
        done = time.perf_counter()
        episodes = [*batch.train, batch.valid]
        env_steps += int(sum(float(ep.mask.sum()) for ep in episodes))
        returns = [float(ep.rewards.sum(-1).mean()) for ep in episodes]
        if progress:
            iterations.set_postfix(pre=f"{returns[0]:.1f}", post=f"{returns[-1]:.1f}")
        if log_fn is not None:
            metrics = {
                "charts/return_before_adaptation": returns[0],
                "charts/return_after_adaptation": returns[-1],
                "charts/iteration": iteration,
                "charts/sampling_seconds": collected - start,
                "charts/update_seconds": done - collected,
            }
            log_fn(env_steps, {**metrics, **{f"losses/{k}": v for k, v in stats.items()}})
        if checkpoint_path is not None and (
            (iteration + 1) % checkpoint_every == 0 or iteration + 1 == config.num_iterations
        ):
            _save_training_state(checkpoint_path, policy, optimizer, generator, iteration, env_steps)
    return policy.eval()


def _save_training_state(path, policy, optimizer, generator, iteration: int, env_steps: int) -> None:
    """Atomically write what :func:`train_maml` needs to resume after ``iteration``."""
    state = {
        "policy": policy.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "generator": generator.get_state(),
        "iteration": iteration,
        "env_steps": env_steps,
    }
    save_torch(state, path)


# ---------------------------------------------------------------------------------------------
# 8. MAML on the platform
# ---------------------------------------------------------------------------------------------


@LEARNERS.register("maml")
@dataclass
class MAMLLearnerConfig:
    """MAML (and its variants) as a learner of a ``kind: compare`` recipe.

    ``learners: [{name: maml}, {name: maml, algo: {first_order: true}}, {name: maml, algo:
    {inner_steps: 0}}, {name: maml, algo: {num_iterations: 0}}]`` are MAML, FOMAML, the multi-task
    pretrained policy and the random initialization, each fine-tuned at test with the same inner
    loop (arXiv 1703.03400, Figure 5).

    Attributes:
        name: the registry name.
        label: its name in reports (default: "MAML", "FOMAML", "pretrained" or "random init" by
            its settings).
        algo: :class:`MAMLConfig`.
    """

    name: str = "maml"
    label: str | None = None
    algo: MAMLConfig = field(default_factory=MAMLConfig)

    @property
    def display_name(self) -> str:
        if self.label:
            return self.label
        if self.algo.num_iterations == 0:
            return "random init"
        if self.algo.inner_steps == 0:
            return "pretrained"
        return "FOMAML" if self.algo.first_order else "MAML"

    @property
    def stage(self) -> str:
        """Its stage folder without a label: "maml", "fomaml", "pretrained" or "random_init"."""
        return self.display_name.lower().replace(" ", "_")

    def learner(self) -> "MAMLLearner":
        return MAMLLearner()


class MAMLLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of MAML: :func:`train_maml` in the stage folder
    (``policy.pt``; ``training_state.pt`` to resume)."""

    config_class = MAMLLearnerConfig

    def train(self, config: MAMLLearnerConfig, dist, protocol, run: StageRun) -> Path:
        path = Path(run.dir) / "policy.pt"
        if path.exists():
            return path
        state_path = path.parent / "training_state.pt"
        log_fn = run.log_fn(resuming=state_path.exists())
        policy = train_maml(config.algo, dist, log_fn=log_fn, progress=run.progress, checkpoint_path=state_path)
        policy.save(path, config.algo)
        return path

    def agent(self, config: MAMLLearnerConfig, checkpoint: Path, dist) -> MAMLAgent:
        return MAMLAgent(GaussianMLPPolicy.load(checkpoint), config.algo, name=config.display_name)

    def evaluation_batch_size(self, config: MAMLLearnerConfig, protocol) -> int | None:
        """Tasks at once: K copies of each are played, so at most 4096 rows per batch."""
        per_batch = max(1, 4096 // config.algo.episodes_per_task)
        return min(protocol.batch_size or protocol.num_tasks, per_batch)
