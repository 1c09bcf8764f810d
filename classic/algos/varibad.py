"""VariBAD: a Bayes-adaptive policy on a learned belief (Zintgraf et al. 2020, "VariBAD: A Very Good
Method for Bayes-Adaptive Deep RL via Meta-Learning", arXiv 1910.08348).

A **recurrent encoder** reads the trial so far, one transition ``(a_{t-1}, r_{t-1}, s_t)`` per step
(GRU hidden state carried across episode boundaries: the BAMDP horizon is the whole trial), and
outputs the belief ``q(m | tau_{:t}) = N(mu_t, diag sigma_t^2)`` over a latent task ``m`` (t = 0 is
the belief before any transition, from the GRU's zero state). A **reward decoder** ``p(r | s', m)``
is trained with the encoder by the ELBO over the *whole* trajectory from *every* belief (Sec. 3.2,
Eq. 10; the settings of lmzintgraf/varibad ``config/gridworld/args_grid_varibad.py``):

    ELBO_t = E_{m ~ q_t} [ sum_j log p(r_j | s'_j, m) ] - KL(q_t || q_{t-1}),     q_{-1} = N(0, I),

summed over t and over the decoded steps j (``vae_avg_elbo_terms``/``vae_avg_reconstruction_terms``
False), averaged over trials. The **policy** (actor-critic MLPs, PPO here; the reference's GridNavi
config uses A2C) acts on ``(s_t, mu_t, log sigma_t^2)`` with the belief detached (the RL loss does
not reach the encoder, ``rlloss_through_encoder`` False). Trials are collected with the platform's
trial loop, stored in a buffer of recent trials for the VAE, and used once by PPO.

Deviations: rewards of the last step of each episode are not decoded (the platform's trial loop
hands the agent the next episode's first observation there, not the state the reward was earned
in; the reference pairs the reward with the reset state); the reward decoder takes the next state
through an MLP embedding (the reference's GridNavi config has one Bernoulli head per cell,
``multihead_for_reward``, which needs a grid-specific state index).

Example:
    >>> from classic.envs.gridnavi import GridNaviConfig
    >>> dist = GridNaviConfig().make()
    >>> nets = train_varibad(VariBADConfig(num_iterations=50), dist, episodes_per_trial=4)
    >>> run_trials(VariBADAgent(nets), dist, num_tasks=200, episodes_per_trial=4).episode_returns.mean(0)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from classic import functional as F
from classic.config import require_ints, require_numbers, require_widths
from classic.core import ActOutput, Discrete, MetaLearner, StageRun
from classic.files import save_torch
from classic.registry import LEARNERS
from classic.rollout import rollout

# ---------------------------------------------------------------------------------------------
# 1. Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class VariBADConfig:
    """Hyperparameters of VariBAD (defaults: varibad's ``args_grid_varibad.py`` where it applies).

    Attributes:
        latent_dim: size of the latent task m (5).
        gru_hidden_size: the encoder GRU's width (64).
        state_embedding_size, reward_embedding_size, action_embedding_size: the encoder's input
            embeddings (32, 8, 0; 0 leaves the action out of the encoder's input).
        reward_decoder_layers: hidden widths of the reward decoder (32, 32).
        reward_loss: ``bernoulli``: the decoder predicts ``P(r > reward_threshold)`` (GridNavi: the
            goal reward) with a binary cross-entropy; ``gaussian``: it predicts r with a squared error.
        reward_threshold: the Bernoulli target's threshold.
        kl_weight: weight of the KL terms (1).
        kl_to_gauss_prior: KL of every belief to N(0, I) instead of to the previous belief (False).
        lr_vae: the encoder's and decoder's Adam step size (1e-3).
        vae_buffer_size: trials kept for the VAE (the most recent).
        vae_batch_num_trials: trials per VAE update (25).
        num_vae_updates: VAE updates per iteration (3).
        policy_layers: hidden widths of the actor and of the critic (tanh; 32, 32).
        num_trials_per_batch: trials collected per iteration (one per task).
        num_iterations: iterations (collect, PPO update, VAE updates).
        lr_policy: the policy's Adam step size (7e-4).
        gamma, gae_lambda: discount and GAE lambda over the whole trial (0.95, 0.95).
        ppo_epochs, num_minibatches, clip_coef, ent_coef, vf_coef, max_grad_norm: PPO.
        norm_adv: standardize advantages per minibatch.
        pretrain_vae_iterations: iterations at the start that only train the VAE.
        checkpoint_every: iterations between training-state checkpoints.
        seed: seeds the one generator of everything.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    latent_dim: int = 5
    gru_hidden_size: int = 64
    state_embedding_size: int = 32
    reward_embedding_size: int = 8
    action_embedding_size: int = 0
    reward_decoder_layers: list[int] = field(default_factory=lambda: [32, 32])
    reward_loss: Literal["bernoulli", "gaussian"] = "bernoulli"
    reward_threshold: float = 0.0
    kl_weight: float = 1.0
    kl_to_gauss_prior: bool = False
    lr_vae: float = 1e-3
    vae_buffer_size: int = 10_000
    vae_batch_num_trials: int = 25
    num_vae_updates: int = 3
    policy_layers: list[int] = field(default_factory=lambda: [32, 32])
    num_trials_per_batch: int = 64
    num_iterations: int = 500
    lr_policy: float = 7e-4
    gamma: float = 0.95
    gae_lambda: float = 0.95
    ppo_epochs: int = 4
    num_minibatches: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    pretrain_vae_iterations: int = 0
    checkpoint_every: int = 25
    seed: int = 1

    def __post_init__(self) -> None:
        require_widths(self, ("reward_decoder_layers", "policy_layers"))
        require_ints(
            self,
            (
                "latent_dim",
                "gru_hidden_size",
                "state_embedding_size",
                "reward_embedding_size",
                "vae_buffer_size",
                "vae_batch_num_trials",
                "num_trials_per_batch",
                "ppo_epochs",
                "num_minibatches",
                "checkpoint_every",
            ),
            minimum=1,
        )
        require_ints(
            self, ("action_embedding_size", "num_vae_updates", "num_iterations", "pretrain_vae_iterations"), minimum=0
        )
        require_numbers(self, ("lr_vae", "lr_policy", "clip_coef", "max_grad_norm"))
        require_numbers(self, ("kl_weight", "ent_coef", "vf_coef"), positive=False)
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.reward_loss not in ("bernoulli", "gaussian"):
            raise ValueError(f"reward_loss must be 'bernoulli' or 'gaussian', got {self.reward_loss!r}")
        if self.num_minibatches > self.num_trials_per_batch:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must be <= "
                f"num_trials_per_batch ({self.num_trials_per_batch})"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# 2. Networks
# ---------------------------------------------------------------------------------------------


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, generator=None) -> nn.Sequential:
    """An MLP with ``activation`` between layers (none after the last), orthogonal init (gain
    sqrt 2 hidden, 1 output), zero biases."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=1.0 if last else math.sqrt(2), generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


class VariBADNetworks(nn.Module):
    """The encoder, the reward decoder and the actor-critic.

    Args:
        obs_dim: size of the observation.
        num_actions: A (Discrete actions).
        config: sizes.
        generator: initialization.

    Encoder input of step t: ``[emb_s(s_t, done_t), emb_r(r_{t-1}), emb_a(one_hot a_{t-1})]`` with
    ``done_t`` 1 where step t starts an episode (VariBAD's ``add_done_info``), ReLU embeddings;
    GRU; a linear head to ``(mu, log sigma^2)`` of size 2 L.
    """

    def __init__(self, obs_dim: int, num_actions: int, config: VariBADConfig, generator=None) -> None:
        super().__init__()
        self.obs_dim, self.num_actions, self.latent_dim = int(obs_dim), int(num_actions), int(config.latent_dim)
        self.state_embedding = mlp([obs_dim + 1, config.state_embedding_size], generator=generator)
        self.reward_embedding = mlp([1, config.reward_embedding_size], generator=generator)
        self.action_embedding = (
            mlp([num_actions, config.action_embedding_size], generator=generator)
            if config.action_embedding_size
            else None
        )
        width = config.state_embedding_size + config.reward_embedding_size + config.action_embedding_size
        self.gru = nn.GRU(width, config.gru_hidden_size)
        for name, p in self.gru.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(p, generator=generator)
            else:
                nn.init.zeros_(p)
        self.latent_head = mlp([config.gru_hidden_size, 2 * config.latent_dim], generator=generator)
        self.decoder_state = mlp([obs_dim, config.state_embedding_size], generator=generator)
        self.reward_decoder = mlp(
            [config.state_embedding_size + config.latent_dim, *config.reward_decoder_layers, 1], generator=generator
        )
        policy_in = obs_dim + 2 * config.latent_dim
        self.actor = mlp([policy_in, *config.policy_layers, num_actions], nn.Tanh, generator=generator)
        self.critic = mlp([policy_in, *config.policy_layers, 1], nn.Tanh, generator=generator)
        with torch.no_grad():
            self.actor[-1].weight.mul_(0.01)
        self.gru_hidden_size = config.gru_hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_head[0].weight.dtype

    # ---- the encoder -------------------------------------------------------------------------
    def encoder_input(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, start: Tensor) -> Tensor:
        """(..., width) embedding of the transition that led to ``obs`` (..., obs_dim): previous
        actions (...) long (-1: none), previous rewards (...), ``start`` (...) bool."""
        parts = [
            self.state_embedding(torch.cat([obs, start.unsqueeze(-1)], dim=-1).to(self.dtype)),
            self.reward_embedding(prev_reward.unsqueeze(-1).to(self.dtype)),
        ]
        if self.action_embedding is not None:
            parts.append(self.action_embedding(Discrete(self.num_actions).encode(prev_action).to(self.dtype)))
        return torch.cat(parts, dim=-1)

    def prior(self, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """The belief before any transition: ``(mu, logvar)`` (batch, L) from the GRU's zero state,
        and that state (1, batch, hidden)."""
        h = torch.zeros(1, batch, self.gru_hidden_size, dtype=self.dtype)
        mu, logvar = self.latent_head(h[0]).chunk(2, dim=-1)
        return mu, logvar, h

    def beliefs(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Beliefs after each transition of a sequence: ``inputs`` (T, B, width) -> ``(mu, logvar)``
        each (T + 1, B, L), row 0 the prior."""
        mu0, logvar0, h0 = self.prior(inputs.shape[1])
        out, _ = self.gru(inputs, h0)
        mu, logvar = self.latent_head(out).chunk(2, dim=-1)
        return torch.cat([mu0.unsqueeze(0), mu]), torch.cat([logvar0.unsqueeze(0), logvar])

    def step_belief(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One encoder step: ``x`` (B, width), ``h`` (1, B, hidden) -> ``(mu, logvar, h')``."""
        out, h = self.gru(x.unsqueeze(0), h)
        mu, logvar = self.latent_head(out[0]).chunk(2, dim=-1)
        return mu, logvar, h

    # ---- the decoder -------------------------------------------------------------------------
    def reward_output(self, next_obs: Tensor, z: Tensor, state_embedding: Tensor | None = None) -> Tensor:
        """(...) the decoder's output for states (..., obs_dim) and latents (..., L): a logit of
        ``r > threshold`` (Bernoulli) or the predicted reward (Gaussian). ``state_embedding``: the
        states' embedding, when already computed (then ``next_obs`` is ignored)."""
        emb = self.decoder_state(next_obs.to(self.dtype)) if state_embedding is None else state_embedding
        return self.reward_decoder(torch.cat([emb.expand(*z.shape[:-1], emb.shape[-1]), z], dim=-1)).squeeze(-1)

    # ---- the policy --------------------------------------------------------------------------
    def policy_input(self, obs: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        return torch.cat([obs.to(mu.dtype), mu, logvar], dim=-1)

    def actor_critic(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (..., A) and values (...) of policy inputs (..., obs_dim + 2 L)."""
        return self.actor(x), self.critic(x).squeeze(-1)

    def spec(self) -> dict:
        return {"obs_dim": self.obs_dim, "num_actions": self.num_actions}


# ---------------------------------------------------------------------------------------------
# 3. The ELBO
# ---------------------------------------------------------------------------------------------


class VAEBatch(NamedTuple):
    """Trials for the VAE, time-major (T steps, B trials), in the agent's view of each step.

    Attributes:
        obs: (T, B, obs_dim) s_t.
        prev_actions: (T, B) long a_{t-1} (-1 at t = 0).
        prev_rewards: (T, B) r_{t-1}.
        starts: (T, B) bool, step t starts an episode.
        rewards: (T, B) r_t.
        valid: (T, B) bool, step t belongs to the trial.
    """

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    starts: Tensor
    rewards: Tensor
    valid: Tensor


def diag_gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """(...) KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0).sum(-1)


def elbo_terms(
    nets: VariBADNetworks, batch: VAEBatch, config: VariBADConfig, generator: torch.Generator
) -> dict[str, Tensor]:
    """The negative ELBO's two parts over a batch of trials (arXiv 1910.08348, Eq. 10).

    Beliefs q_0 .. q_{T-1} (q_t after the t transitions before step t) come from the encoder over
    the trial; from each, one latent ``z_t ~ q_t`` (reparameterized) decodes the reward of every
    decodable step j of the trial, ``r_j`` at state ``s_{j+1}`` (steps that end an episode, and the
    last step, are not decodable: their next state is not recorded).

    Returns:
        ``reconstruction`` = mean over trials of ``sum_t sum_j -log p(r_j | s_{j+1}, z_t)``
        (Bernoulli: binary cross-entropy of ``r_j > reward_threshold``; Gaussian: ``(r_j -
        pred)^2``, the unit-variance negative log-likelihood up to a constant and a factor 1/2)
        and ``kl`` = mean over trials of ``sum_t KL(q_t || q_{t-1})`` with ``q_{-1} = N(0, I)``
        (or every ``KL(q_t || N(0, I))`` with ``kl_to_gauss_prior``), each () with gradient.
    """
    T, B = batch.rewards.shape
    inputs = nets.encoder_input(batch.obs[1:], batch.prev_actions[1:], batch.prev_rewards[1:], batch.starts[1:])
    mu, logvar = nets.beliefs(inputs)  # (T, B, L): q_0 .. q_{T-1}  (the belief after all T is unused)
    mu, logvar = mu[:T], logvar[:T]
    belief_valid = batch.valid.float()  # (T, B)
    if config.kl_to_gauss_prior:
        prev_mu, prev_logvar = torch.zeros_like(mu), torch.zeros_like(logvar)
    else:
        prev_mu = torch.cat([torch.zeros_like(mu[:1]), mu[:-1]])
        prev_logvar = torch.cat([torch.zeros_like(logvar[:1]), logvar[:-1]])
    kl = (diag_gaussian_kl(mu, logvar, prev_mu, prev_logvar) * belief_valid).sum(0).mean()
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
    next_obs = batch.obs[1:]  # s_{j+1} for j = 0 .. T-2
    decodable = (batch.valid[:-1] & batch.valid[1:] & ~batch.starts[1:]).float()  # (T-1, B)
    targets = batch.rewards[:-1]
    # out[t, j, b]: decoder output for z_t and step j of trial b.
    emb = nets.decoder_state(next_obs.to(nets.dtype)).unsqueeze(0)  # (1, T-1, B, E), shared by every z_t
    out = nets.reward_output(next_obs, z.unsqueeze(1).expand(-1, T - 1, -1, -1), state_embedding=emb)
    if config.reward_loss == "bernoulli":
        target = (targets > config.reward_threshold).to(out.dtype).unsqueeze(0).expand_as(out)
        nll = Fn.binary_cross_entropy_with_logits(out, target, reduction="none")
    else:
        nll = (out - targets.unsqueeze(0)).pow(2)
    weight = belief_valid.unsqueeze(1) * decodable.unsqueeze(0)  # (T, T-1, B)
    reconstruction = (nll * weight).sum(dim=(0, 1)).mean()
    return {"reconstruction": reconstruction, "kl": kl}


# ---------------------------------------------------------------------------------------------
# 4. The agent (meta-test and data collection)
# ---------------------------------------------------------------------------------------------


class VariBADAgent:
    """VariBAD behind the platform's ``Agent`` protocol: the encoder updates the belief after every
    transition (its memory, carried across episodes), the policy acts on ``(s, mu, log sigma^2)``.

    Args:
        nets: trained networks.
        name: its name in reports.
        greedy: act with the most likely action instead of sampling.
        record: return each step's log-probability, value and policy input (training).
    """

    def __init__(self, nets: VariBADNetworks, name: str = "VariBAD", greedy: bool = False, record: bool = False):
        self.nets = nets
        self.name = name
        self.greedy = greedy
        self.record = record

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.mu, self.logvar, self.h = self.nets.prior(num_tasks)
        self.first = True

    @torch.no_grad()
    def act(self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor):
        if not self.first:
            x = self.nets.encoder_input(obs, prev_action, prev_reward, terminated | truncated)
            self.mu, self.logvar, self.h = self.nets.step_belief(x, self.h)
        self.first = False
        inp = self.nets.policy_input(obs, self.mu, self.logvar)
        logits, value = self.nets.actor_critic(inp)
        if self.greedy:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(-1)
        if not self.record:
            return action
        logp = torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return ActOutput(action, {"logprob": logp, "value": value, "policy_input": inp})


# ---------------------------------------------------------------------------------------------
# 5. Training
# ---------------------------------------------------------------------------------------------


class TrialBuffer:
    """The most recent ``capacity`` trials of a fixed length T, for the VAE (a ring of tensors)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: VAEBatch | None = None
        self.size = 0
        self.pointer = 0

    def add(self, batch: VAEBatch) -> None:
        """Add trials (T, B, ...)."""
        if self.data is None:
            self.data = VAEBatch(*(torch.zeros(t.shape[0], self.capacity, *t.shape[2:], dtype=t.dtype) for t in batch))
        B = batch.rewards.shape[1]
        idx = (self.pointer + torch.arange(min(B, self.capacity))) % self.capacity
        for store, new in zip(self.data, batch):
            store[: new.shape[0], idx] = new[:, B - len(idx) :]
        self.pointer = (self.pointer + len(idx)) % self.capacity
        self.size = min(self.capacity, self.size + len(idx))

    def sample(self, n: int, generator: torch.Generator) -> VAEBatch:
        idx = torch.randint(self.size, (n,), generator=generator)
        return VAEBatch(*(t[:, idx] for t in self.data))

    def state_dict(self) -> dict:
        return {
            "data": None if self.data is None else [t.clone() for t in self.data],
            "size": self.size,
            "pointer": self.pointer,
        }

    def load_state_dict(self, state: dict) -> None:
        self.data = None if state["data"] is None else VAEBatch(*state["data"])
        self.size, self.pointer = state["size"], state["pointer"]


def ppo_update(
    nets: VariBADNetworks, optimizer, traj, config: VariBADConfig, generator: torch.Generator
) -> dict[str, float]:
    """PPO epochs over one batch of trials (the policy on stored, detached beliefs).

    Advantages by GAE over the whole trial (a BAMDP episode: episode boundaries inside the trial
    are not terminal), ``gamma`` and ``gae_lambda``; minibatches of trials.
    """
    mask = traj.valid
    next_valid = torch.cat([mask[1:], torch.zeros_like(mask[:1])])
    dones = ~next_valid
    values, logprobs, inputs = traj.info["value"], traj.info["logprob"], traj.info["policy_input"]
    advantages, returns = F.gae(
        traj.rewards, values, dones, torch.zeros(mask.shape[1]), config.gamma, config.gae_lambda
    )
    B = mask.shape[1]
    size = max(1, B // config.num_minibatches)
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0}
    updates = 0
    for _ in range(config.ppo_epochs):
        for idx in torch.randperm(B, generator=generator).split(size):
            m = mask[:, idx]
            logits, v = nets.actor_critic(inputs[:, idx])
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(-1, traj.actions[:, idx].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            entropy = F.masked_mean(F.categorical_entropy(logits), m)
            adv = advantages[:, idx]
            if config.norm_adv:
                adv = F.normalize(adv, m)
            pg_loss, info = F.ppo_clip_loss(logp, logprobs[:, idx], adv, config.clip_coef, m)
            v_loss = F.value_loss(v, returns[:, idx], mask=m)
            loss = pg_loss - config.ent_coef * entropy + config.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*nets.actor.parameters(), *nets.critic.parameters()], config.max_grad_norm)
            optimizer.step()
            updates += 1
            sums["policy_loss"] += float(pg_loss.detach())
            sums["value_loss"] += float(v_loss.detach())
            sums["entropy"] += float(entropy.detach())
            sums["approx_kl"] += float(info.approx_kl)
    return {k: v / max(updates, 1) for k, v in sums.items()}


def vae_batch_from(traj) -> VAEBatch:
    """The VAE's view of a platform trajectory (time-major)."""
    return VAEBatch(
        traj.obs.float(),
        traj.prev_actions.long(),
        traj.prev_rewards.float(),
        traj.prev_terminated | traj.prev_truncated,
        traj.rewards.float(),
        traj.valid,
    )


def train_varibad(
    config: VariBADConfig,
    dist,
    episodes_per_trial: int,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
) -> VariBADNetworks:
    """Meta-train VariBAD on ``dist`` (Discrete actions) with trials of ``episodes_per_trial`` episodes.

    Each iteration: ``num_trials_per_batch`` fresh tasks, one trial each with the current encoder
    and policy (the platform's trial loop), the trials into the VAE buffer, a PPO update of the
    policy on them (skipped during ``pretrain_vae_iterations``), then ``num_vae_updates`` ELBO steps
    of the encoder and decoder on ``vae_batch_num_trials`` trials from the buffer. One generator
    (``config.seed``) drives everything; resuming from ``checkpoint_path`` gives the same numbers.

    Returns:
        The trained :class:`VariBADNetworks` (eval mode).

    Raises:
        ValueError: ``dist`` does not have Discrete actions.
    """
    if not isinstance(dist.action_space, Discrete):
        raise ValueError(
            f"this VariBAD has a categorical policy: it needs Discrete actions, the task has {dist.action_space}"
        )
    g = torch.Generator().manual_seed(config.seed)
    nets = VariBADNetworks(dist.obs_dim, dist.action_space.n, config, generator=g)
    policy_params = [*nets.actor.parameters(), *nets.critic.parameters()]
    policy_ids = {id(p) for p in policy_params}
    vae_params = [p for p in nets.parameters() if id(p) not in policy_ids]
    policy_opt = torch.optim.Adam(policy_params, lr=config.lr_policy, eps=1e-5)
    vae_opt = torch.optim.Adam(vae_params, lr=config.lr_vae)
    buffer = TrialBuffer(config.vae_buffer_size)
    first, env_steps = 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        nets.load_state_dict(saved["nets"])
        policy_opt.load_state_dict(saved["policy_opt"])
        vae_opt.load_state_dict(saved["vae_opt"])
        buffer.load_state_dict(saved["buffer"])
        g.set_state(saved["generator"])
        first, env_steps = saved["iteration"] + 1, saved["env_steps"]
    agent = VariBADAgent(nets, record=True)
    iterations = range(first, config.num_iterations)
    if progress:
        from tqdm.auto import tqdm

        iterations = tqdm(iterations, desc="VariBAD", initial=first, total=config.num_iterations)
    for iteration in iterations:
        start = time.perf_counter()
        tasks = dist.sample_tasks(config.num_trials_per_batch, g)
        traj = rollout(agent, dist, tasks, episodes_per_trial, g)
        buffer.add(vae_batch_from(traj))
        env_steps += int(traj.valid.sum())
        stats = {}
        if iteration >= config.pretrain_vae_iterations:
            stats = ppo_update(nets, policy_opt, traj, config, g)
        vae = {"reconstruction": 0.0, "kl": 0.0}
        for _ in range(config.num_vae_updates):
            terms = elbo_terms(nets, buffer.sample(config.vae_batch_num_trials, g), config, g)
            loss = terms["reconstruction"] + config.kl_weight * terms["kl"]
            vae_opt.zero_grad()
            loss.backward()
            vae_opt.step()
            for k in vae:
                vae[k] += float(terms[k].detach()) / config.num_vae_updates
        trial_return = float(traj.rewards.sum(0).mean())
        if progress:
            iterations.set_postfix(trial_return=f"{trial_return:.2f}", rec=f"{vae['reconstruction']:.3g}")
        if log_fn is not None:
            metrics = {
                "charts/mean_trial_return": trial_return,
                "charts/iteration": iteration,
                "charts/iteration_seconds": time.perf_counter() - start,
                **{f"losses/vae_{k}": v for k, v in vae.items()},
                **{f"losses/{k}": v for k, v in stats.items()},
            }
            log_fn(env_steps, metrics)
        if checkpoint_path is not None and (
            (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.num_iterations
        ):
            save_torch(
                {
                    "nets": nets.state_dict(),
                    "policy_opt": policy_opt.state_dict(),
                    "vae_opt": vae_opt.state_dict(),
                    "buffer": buffer.state_dict(),
                    "generator": g.get_state(),
                    "iteration": iteration,
                    "env_steps": env_steps,
                },
                checkpoint_path,
            )
    return nets.eval()


def save_networks(nets: VariBADNetworks, path, config: VariBADConfig) -> None:
    torch.save({"spec": nets.spec(), "state_dict": nets.state_dict(), "config": config.to_dict()}, path)


def load_networks(path, config: VariBADConfig) -> VariBADNetworks:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    nets = VariBADNetworks(**saved["spec"], config=config)
    nets.load_state_dict(saved["state_dict"])
    return nets.eval()


# ---------------------------------------------------------------------------------------------
# 6. VariBAD on the platform
# ---------------------------------------------------------------------------------------------


@LEARNERS.register("varibad")
@dataclass
class VariBADLearnerConfig:
    """VariBAD as a learner of a ``kind: compare`` recipe (``learners: [{name: varibad, algo: {...}}]``).

    Attributes:
        name: the registry name.
        label: its name in reports (default "VariBAD").
        greedy: act with the most likely action at evaluation (default: sample, as in training).
        algo: :class:`VariBADConfig`.
    """

    name: str = "varibad"
    label: str | None = None
    greedy: bool = False
    algo: VariBADConfig = field(default_factory=VariBADConfig)

    @property
    def display_name(self) -> str:
        return self.label or "VariBAD"

    def learner(self) -> "VariBADLearner":
        return VariBADLearner()


class VariBADLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of VariBAD: :func:`train_varibad` in the stage folder
    (``networks.pt``; ``training_state.pt`` to resume)."""

    config_class = VariBADLearnerConfig

    def train(self, config: VariBADLearnerConfig, dist, protocol, run: StageRun) -> Path:
        path = Path(run.dir) / "networks.pt"
        if path.exists():
            return path
        state_path = path.parent / "training_state.pt"
        log_fn = run.log_fn(resuming=state_path.exists())
        nets = train_varibad(
            config.algo,
            dist,
            protocol.episodes_per_trial,
            log_fn=log_fn,
            progress=run.progress,
            checkpoint_path=state_path,
        )
        save_networks(nets, path, config.algo)
        return path

    def agent(self, config: VariBADLearnerConfig, checkpoint: Path, dist) -> VariBADAgent:
        return VariBADAgent(load_networks(checkpoint, config.algo), config.display_name, greedy=config.greedy)
