"""RL²: fast reinforcement learning via slow reinforcement learning, trained with PPO.

RL² (Duan et al. 2016, arXiv 1611.02779) meta-learns a bandit/MDP algorithm as the hidden
state of a recurrent policy: the GRU reads (observation, previous action, previous reward,
done flag) at every step and keeps its hidden state across the episodes of a trial, so one
trial on one task is one long episode of a "meta-MDP". The paper optimizes the meta-MDP
with TRPO; here we use PPO with the clipped surrogate (Schulman et al. 2017,
arXiv 1707.06347) and GAE advantages (Schulman et al. 2016, arXiv 1506.02438), and BPTT
through the GRU over whole trials.

The file reads top to bottom like CleanRL ``ppo.py``:

1. :class:`RL2Policy` -- input encoding, GRU, actor and critic heads.
2. :func:`collect_trials` -- the inner loop: the policy acts in a batch of trials, one
   task per trial, and everything is recorded time-major in a :class:`TrialBatch`.
3. :func:`ppo_update` -- the outer loop: PPO epochs over minibatches of whole trials.
4. :func:`train_rl2` -- iterations of collect + update.
5. :class:`RL2Agent` -- the trained policy behind the shared ``Agent`` interface.

The agent samples its actions by default, as the ``Agent`` protocol and the paper do; acting
greedily (``RL2Agent(greedy=True)``) is slightly better, because the entropy bonus leaves some
randomness in the policy. Measured results (three seeds, sampled and greedy, against the
baselines and the paper) are in the README ("RL² on the bandit, by seed").

Example:
    >>> from classic.envs import BernoulliBandit
    >>> from classic.evaluate import run_trials
    >>> dist = BernoulliBandit(num_arms=5)
    >>> policy = train_rl2(RL2Config(), dist, episodes_per_trial=100)   # a few minutes on CPU
    >>> run_trials(RL2Agent(policy), dist, 1000, 100, seed=0).summary()["total_reward"]
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from classic import functional as F
from classic.algos.rl2_config import RL2Config
from classic.algos.sequence import SNAIL, CausalTransformer
from classic.core import ActOutput, Box, MetaLearner, StageRun
from classic.files import save_torch
from classic.registry import LEARNERS
from classic.rollout import rollout

# ---------------------------------------------------------------------------------------
# 1. The policy
# ---------------------------------------------------------------------------------------


class RL2Policy(nn.Module):
    """GRU actor-critic whose hidden state carries what was learned within a trial.

    Input at each step: ``[one_hot(prev_action) (A), prev_reward (1), done (1), obs (obs_dim)]``
    as in the paper, plus, with ``action_reward_input``, ``one_hot(prev_action) * prev_reward``
    (A): ``input_dim = A + 2 + obs_dim`` (+ A). A previous action of -1 (first step of a
    trial, invalid action) encodes as the zero vector. The extra block is our addition, not
    the paper's: it makes "arm i paid r" a linear function of the input, so per-arm reward
    sums are a linear integration for the GRU instead of an AND it must first learn through
    its gates. On the 5-arm bandit it was the largest single gain we measured (same budget
    of 600 x 256 trials, 4 minibatches: 74.96 -> 77.31 held-out sampled return).
    ``obs_action_reward_input`` adds the same for (previous observation, previous action)
    pairs, ``(prev_obs outer one_hot(prev_action)).flatten() * prev_reward`` (obs_dim * A):
    on tabular MDPs (one-hot states) this is "action a in state s paid r", so per-(s, a)
    reward sums are linear too; ``prev_obs`` is the observation the previous action was
    taken in (zeros at the start of a trial). ``obs_action_input`` adds the pair itself,
    ``(prev_obs outer one_hot(prev_action)).flatten()`` (obs_dim * A): "action a was taken in
    state s", so per-(s, a) visit counts are linear as well -- with the reward block, the two
    sufficient statistics of a Gaussian posterior mean (sum and count), as ``one_hot`` and
    ``one_hot * reward`` are for a bandit arm.

    Box actions (``continuous``): the previous action enters as its vector in policy units (zeros
    at the start of a trial) instead of a one-hot, and the actor outputs the mean of a diagonal
    Gaussian in units of the box's half-width, with a state-independent log standard deviation
    (CleanRL's continuous PPO); :meth:`sample` maps draws back to the box (the environment clips).

    The actor and critic are linear heads on the GRU output; init as in CleanRL
    (orthogonal weights, zero biases, actor gain 0.01). With ``head_hidden_size`` > 0 each
    head is instead a one-hidden-layer tanh MLP on ``[GRU output, current obs]``: the readout
    can then depend on the current state multiplicatively (on a tabular MDP, "what did action
    a pay *in this state*"), which a linear head on the GRU output can only get through the
    GRU's gates. Our addition, not the paper's.

    Args:
        num_actions: A, number of discrete actions.
        obs_dim: size of the observation vector.
        hidden_size: GRU hidden units.
        action_reward_input: add the ``one_hot(prev_action) * prev_reward`` block.
        obs_action_reward_input: add the ``prev_obs x one_hot(prev_action) * prev_reward`` block.
        head_hidden_size: 0 for linear actor/critic heads; otherwise the width of their tanh
            hidden layer over ``[GRU output, obs]``.
        generator: RNG for the (orthogonal) initialization; None uses torch's global RNG.
        obs_action_input: add the ``prev_obs x one_hot(prev_action)`` (visit) block.
        state_gated_heads: make the actor and critic output layers linear in
            ``obs outer features`` (one readout per one-hot state) instead of in the features.
        continuous: Box actions of size ``num_actions`` (a Gaussian head) instead of discrete ones.
        action_low, action_high: the Box's bounds (continuous only).
        network: the memory over the trial: ``gru`` (the paper's), ``transformer`` (a causal
            transformer with a key/value cache, :class:`~classic.algos.sequence.CausalTransformer`)
            or ``snail`` (:class:`~classic.algos.sequence.SNAIL`); ``hidden_size`` is its width.
        num_layers, num_heads: the transformer's blocks and attention heads.
        seq_len: the longest trial in steps (SNAIL's number of dense blocks; ignored, and 0 in the
            spec, for the other networks).

    The recurrent state ``h`` is the GRU's hidden state (1, B, hidden_size), the transformer's
    :class:`~classic.algos.sequence.KVCache` or SNAIL's input history: opaque to callers, who get
    it from :meth:`initial_state` and pass back what :meth:`forward` returns.

    Example:
        >>> policy = RL2Policy(num_actions=5, obs_dim=1, hidden_size=32)
        >>> h = policy.initial_state(4)                       # (1, 4, 32)
        >>> x = policy.encode(torch.zeros(4, 1), torch.full((4,), -1), torch.zeros(4), torch.ones(4, dtype=torch.bool))
        >>> logits, value, h = policy(x.unsqueeze(0), h)      # (1, 4, 5), (1, 4), (1, 4, 32)
    """

    def __init__(
        self,
        num_actions: int,
        obs_dim: int,
        hidden_size: int,
        action_reward_input: bool = False,
        obs_action_reward_input: bool = False,
        generator: torch.Generator | None = None,
        head_hidden_size: int = 0,
        obs_action_input: bool = False,
        state_gated_heads: bool = False,
        continuous: bool = False,
        action_low: float = -1.0,
        action_high: float = 1.0,
        network: str = "gru",
        num_layers: int = 1,
        num_heads: int = 4,
        seq_len: int = 0,
    ) -> None:
        super().__init__()
        if network not in ("gru", "transformer", "snail"):
            raise ValueError(f"network must be 'gru', 'transformer' or 'snail', got {network!r}")
        self.network, self.num_layers, self.num_heads = network, int(num_layers), int(num_heads)
        # Only SNAIL's shape depends on the trial length: a GRU or transformer policy trained on one
        # length warm-starts another (rl2_tables' warm_start compares specs).
        self.seq_len = int(seq_len) if network == "snail" else 0
        self.continuous = bool(continuous)
        self.action_low, self.action_high = float(action_low), float(action_high)
        if self.continuous and (obs_action_reward_input or obs_action_input):
            raise ValueError("obs_action_reward_input and obs_action_input need discrete actions (one-hot pairs)")
        self.num_actions = int(num_actions)
        self.obs_dim = int(obs_dim)
        self.hidden_size = int(hidden_size)
        self.action_reward_input = bool(action_reward_input)
        self.obs_action_reward_input = bool(obs_action_reward_input)
        self.head_hidden_size = int(head_hidden_size)
        self.obs_action_input = bool(obs_action_input)
        self.state_gated_heads = bool(state_gated_heads)
        self.input_dim = self.num_actions * (2 if self.action_reward_input else 1) + 2 + self.obs_dim
        # where the current obs sits in the input: [one_hot(prev_action), prev_reward, done, obs, ...]
        self.obs_slice = slice(self.num_actions + 2, self.num_actions + 2 + self.obs_dim)
        if self.obs_action_reward_input:
            self.input_dim += self.obs_dim * self.num_actions
        if self.obs_action_input:
            self.input_dim += self.obs_dim * self.num_actions
        self.config: RL2Config | None = None  # set by train_rl2 / load, for the record
        if network == "gru":
            self.gru = nn.GRU(self.input_dim, self.hidden_size)
            # CleanRL-style init: orthogonal weights, zero biases, small actor output.
            for name, param in self.gru.named_parameters():
                if "weight" in name:
                    for chunk in param.data.chunk(3, dim=0):  # one orthogonal block per gate (r, z, n)
                        nn.init.orthogonal_(chunk, gain=1.0, generator=generator)
                else:
                    nn.init.zeros_(param)
        elif network == "transformer":
            self.memory = CausalTransformer(self.input_dim, self.hidden_size, num_layers, num_heads, generator)
        else:
            self.memory = SNAIL(self.input_dim, self.hidden_size, max(int(seq_len), 2), generator=generator)
        gate = self.obs_dim if self.state_gated_heads else 1  # output layers read obs outer features
        if self.head_hidden_size > 0:
            width, head_in = self.head_hidden_size, self.hidden_size + self.obs_dim
            self.actor = nn.Sequential(nn.Linear(head_in, width), nn.Tanh(), nn.Linear(width * gate, self.num_actions))
            self.critic = nn.Sequential(nn.Linear(head_in, width), nn.Tanh(), nn.Linear(width * gate, 1))
            for layer in (self.actor[0], self.critic[0]):
                nn.init.orthogonal_(layer.weight, gain=math.sqrt(2), generator=generator)
                nn.init.zeros_(layer.bias)
            out_actor, out_critic = self.actor[2], self.critic[2]
        else:
            self.actor = nn.Linear(self.hidden_size * gate, self.num_actions)
            self.critic = nn.Linear(self.hidden_size * gate, 1)
            out_actor, out_critic = self.actor, self.critic
        nn.init.orthogonal_(out_actor.weight, gain=0.01, generator=generator)
        nn.init.zeros_(out_actor.bias)
        nn.init.orthogonal_(out_critic.weight, gain=1.0, generator=generator)
        nn.init.zeros_(out_critic.bias)
        # Box actions: a diagonal Gaussian in units of the box's half-width (CleanRL's continuous PPO:
        # state-independent log standard deviation); the agent maps u in [-1, 1] to the box.
        self.log_std = nn.Parameter(torch.full((self.num_actions,), -0.5)) if self.continuous else None

    def spec(self) -> dict:
        """Constructor arguments (saved in checkpoints)."""
        return {
            "num_actions": self.num_actions,
            "obs_dim": self.obs_dim,
            "hidden_size": self.hidden_size,
            "action_reward_input": self.action_reward_input,
            "obs_action_reward_input": self.obs_action_reward_input,
            "head_hidden_size": self.head_hidden_size,
            "obs_action_input": self.obs_action_input,
            "state_gated_heads": self.state_gated_heads,
            "continuous": self.continuous,
            "action_low": self.action_low,
            "action_high": self.action_high,
            "network": self.network,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "seq_len": self.seq_len,
        }

    def initial_state(self, batch_size: int) -> Any:
        """The state at the start of a trial: the GRU's (1, batch_size, hidden_size) zeros, an
        empty key/value cache or an empty history."""
        if self.network == "gru":
            return torch.zeros(1, batch_size, self.hidden_size)
        return self.memory.initial_state(batch_size)

    def encode(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, done: Tensor, prev_obs: Tensor | None = None
    ) -> Tensor:
        """Build the GRU input from what the agent saw; works for any leading shape ``(...)``.

        Args:
            obs: (..., obs_dim) float.
            prev_action: (...) long; -1 (no/invalid previous action) gives a zero one-hot.
            prev_reward: (...) float.
            done: (...) bool, the previous step ended an episode.
            prev_obs: (..., obs_dim) float, the observation the previous action was taken in
                (zeros at the start of a trial); used only with ``obs_action_reward_input``
                or ``obs_action_input`` (None counts as zeros).

        Returns:
            (..., input_dim) float.
        """
        if self.continuous:  # the previous action in policy units (zeros at the start of a trial)
            one_hot = self.to_policy_units(prev_action.float())
        else:
            valid = (prev_action >= 0) & (prev_action < self.num_actions)
            one_hot = nn.functional.one_hot(prev_action.clamp(0, self.num_actions - 1).long(), self.num_actions).float()
            one_hot = one_hot * valid.unsqueeze(-1).float()
        reward = prev_reward.float().unsqueeze(-1)
        parts = [one_hot, reward, done.float().unsqueeze(-1), obs.float()]
        if self.action_reward_input:
            parts.append(one_hot * reward)
        if self.obs_action_reward_input or self.obs_action_input:
            if prev_obs is None:
                prev_obs = torch.zeros_like(obs)
            pair = (prev_obs.float().unsqueeze(-1) * one_hot.unsqueeze(-2)).flatten(-2)  # (..., obs_dim * A)
            if self.obs_action_reward_input:
                parts.append(pair * reward)
            if self.obs_action_input:
                parts.append(pair)
        return torch.cat(parts, dim=-1)

    def forward(self, inputs: Tensor, h: Any) -> tuple[Tensor, Tensor, Any]:
        """Run the memory (GRU, transformer or SNAIL) over a time-major sequence.

        Args:
            inputs: (T, B, input_dim) encoded inputs.
            h: the state before the first step (:meth:`initial_state`, or what a previous call
                returned).

        Returns:
            ``(logits, values, h)``: logits (T, B, A), values (T, B) in units of the config's
            ``reward_scale``, and the state after the last step.
        """
        out, h = self.gru(inputs, h) if self.network == "gru" else self.memory(inputs, h)
        obs = inputs[..., self.obs_slice]
        if self.head_hidden_size > 0:
            out = torch.cat([out, obs], dim=-1)
            actor_in, critic_in = self.actor[1](self.actor[0](out)), self.critic[1](self.critic[0](out))
            actor_out, critic_out = self.actor[2], self.critic[2]
        else:
            actor_in = critic_in = out
            actor_out, critic_out = self.actor, self.critic
        if self.state_gated_heads:
            actor_in = (obs.unsqueeze(-1) * actor_in.unsqueeze(-2)).flatten(-2)  # (T, B, obs_dim * features)
            critic_in = (obs.unsqueeze(-1) * critic_in.unsqueeze(-2)).flatten(-2)
        return actor_out(actor_in), critic_out(critic_in).squeeze(-1), h

    # ---- the action distribution: categorical logits, or a Gaussian mean in policy units ----
    def to_policy_units(self, action: Tensor) -> Tensor:
        """Box actions (..., d) -> policy units u = (a - centre) / half-width."""
        half = (self.action_high - self.action_low) / 2
        return (action - (self.action_high + self.action_low) / 2) / half

    def to_action(self, u: Tensor) -> Tensor:
        """Policy units (..., d) -> Box actions (unclipped; the environment clips)."""
        half = (self.action_high - self.action_low) / 2
        return u * half + (self.action_high + self.action_low) / 2

    def sample(self, head: Tensor, generator: torch.Generator) -> Tensor:
        """Actions drawn from the head's output (n, A): (n,) long, or (n, d) float Box actions."""
        if not self.continuous:
            return sample_actions(head, generator)
        noise = torch.randn(head.shape, generator=generator, device=head.device)
        return self.to_action(head + self.log_std.exp() * noise)

    def greedy(self, head: Tensor) -> Tensor:
        """The most probable action: argmax of the logits, or the Gaussian mean."""
        return self.to_action(head) if self.continuous else head.argmax(dim=-1)

    def log_prob(self, head: Tensor, actions: Tensor) -> Tensor:
        """(...) log pi(action) from the head's output (..., A) and the actions taken."""
        if not self.continuous:
            return torch.log_softmax(head, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        u = self.to_policy_units(actions)
        return torch.distributions.Normal(head, self.log_std.exp()).log_prob(u).sum(-1)

    def entropy(self, head: Tensor) -> Tensor:
        """(...) entropy of the action distribution."""
        if not self.continuous:
            return F.categorical_entropy(head)
        return torch.distributions.Normal(head, self.log_std.exp()).entropy().sum(-1)

    def save(self, path, config: RL2Config | None = None) -> None:
        """``torch.save`` a checkpoint: ``{"spec", "state_dict", "config"}``."""
        torch.save(
            {"spec": self.spec(), "state_dict": self.state_dict(), "config": config.to_dict() if config else None}, path
        )

    @classmethod
    def load(cls, path) -> "RL2Policy":
        """Rebuild a policy saved with :meth:`save`; the config (if any) is in ``policy.config``."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        policy = cls(**ckpt["spec"])
        policy.load_state_dict(ckpt["state_dict"])
        policy.config = RL2Config(**ckpt["config"]) if ckpt.get("config") else None
        return policy


def sample_actions(logits: Tensor, generator: torch.Generator) -> Tensor:
    """(n,) long samples from categorical ``logits`` (n, A), drawn with ``generator``."""
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------
# 2. Inner loop: act in a batch of trials
# ---------------------------------------------------------------------------------------


class TrialBatch(NamedTuple):
    """One batch of trials recorded time-major; T = steps per trial, B = trials (tasks).

    Row ``t`` holds what the policy saw before acting at step ``t`` (obs, previous action,
    previous reward, done flag) and what followed (action, its log-prob, the value estimate,
    the reward).

    Attributes:
        obs: (T, B, obs_dim) float observations.
        prev_actions: (T, B) long previous actions (-1 at the start of a trial).
        prev_rewards: (T, B) float previous rewards (0 at the start of a trial).
        prev_dones: (T, B) bool, the previous step ended an episode (True at the start).
        actions: (T, B) long actions taken.
        logprobs: (T, B) float log pi(action) at collection time.
        values: (T, B) float critic estimates at collection time (units of ``reward_scale``).
        rewards: (T, B) float rewards (0 on padding steps).
        dones: (T, B) bool, the *trial* ended after step t (each task's last valid step: the meta-episode boundary;
            episode ends inside a trial are not dones, see ``classic.functional``).
        mask: (T, B) bool, step t belongs to the task's trial (False on the padding after a task
            finished its episodes early, :class:`classic.rollout.Trajectory` ``valid``).
    """

    obs: Tensor
    prev_actions: Tensor
    prev_rewards: Tensor
    prev_dones: Tensor
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    rewards: Tensor
    dones: Tensor
    mask: Tensor


class _CollectingAgent:
    """The policy acting in the trial loop during training: samples with the loop's generator and
    returns each action's log-probability and the value estimate as per-step info."""

    name = "RL² (training)"

    def __init__(self, policy: RL2Policy) -> None:
        self.policy = policy

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.h = self.policy.initial_state(num_tasks)
        self.prev_obs: Tensor | None = None
        self.generator = generator

    def act(self, obs, prev_action, prev_reward, terminated, truncated) -> ActOutput:
        x = self.policy.encode(obs, prev_action, prev_reward, terminated | truncated, self.prev_obs)
        self.prev_obs = obs
        head, value, self.h = self.policy(x.unsqueeze(0), self.h)
        head, value = head[0], value[0]
        action = self.policy.sample(head, self.generator)
        return ActOutput(action, {"logprob": self.policy.log_prob(head, action), "value": value})


def collect_trials(
    policy: RL2Policy, dist, tasks: Any, episodes_per_trial: int, generator: torch.Generator
) -> TrialBatch:
    """Play one trial per task with the current policy (the RL² inner loop, batched over tasks).

    One call to the house's trial loop (:func:`classic.rollout.rollout`), so the policy is trained
    on exactly the inputs it is evaluated on. The hidden state starts at zero and is carried
    across the ``episodes_per_trial`` episodes.

    Args:
        policy: the RL² policy.
        dist: a task distribution (``classic.envs``).
        tasks: a batch of B tasks from ``dist.sample_tasks``.
        episodes_per_trial: episodes per trial.
        generator: RNG for the environment and the action samples.

    Returns:
        A :class:`TrialBatch` with T <= ``episodes_per_trial * dist.episode_length`` rows; the
        trial of each task ends (``dones``) at its last valid step.
    """
    traj = rollout(_CollectingAgent(policy), dist, tasks, episodes_per_trial, generator)
    mask = traj.valid
    next_valid = torch.cat([mask[1:], torch.zeros_like(mask[:1])])
    dones = ~next_valid  # the trial (meta-episode) ends after each task's last valid step
    prev_dones = traj.prev_terminated | traj.prev_truncated
    return TrialBatch(
        traj.obs,
        traj.prev_actions,
        traj.prev_rewards,
        prev_dones,
        traj.actions,
        traj.info["logprob"],
        traj.info["value"],
        traj.rewards,
        dones,
        mask,
    )


# ---------------------------------------------------------------------------------------
# 3. Outer loop: PPO over whole trials
# ---------------------------------------------------------------------------------------


class UpdateStats(NamedTuple):
    """Means over the minibatches of one :func:`ppo_update` (floats)."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    explained_variance: float
    epochs_run: int


def ppo_update(
    policy: RL2Policy,
    optimizer: torch.optim.Optimizer,
    batch: TrialBatch,
    config: RL2Config,
    ent_coef: float,
    generator: torch.Generator,
) -> UpdateStats:
    """PPO epochs over ``batch`` (the RL² outer loop), minibatches of whole trials.

    Advantages come from GAE over the whole trial (``config.gamma``, ``config.gae_lambda``);
    each minibatch re-runs the GRU from the zero state over its trials and backpropagates
    through time over the full trial.

    Args:
        policy: the policy to update in place.
        optimizer: its optimizer (the learning rate is set by the caller).
        batch: trials from :func:`collect_trials` with this policy.
        config: PPO hyperparameters.
        ent_coef: entropy bonus coefficient for this update.
        generator: RNG for the minibatch permutation.

    Returns:
        :class:`UpdateStats`.
    """
    scaled_rewards = batch.rewards / config.reward_scale
    last_value = torch.zeros(batch.rewards.shape[1])
    advantages, returns = F.gae(scaled_rewards, batch.values, batch.dones, last_value, config.gamma, config.gae_lambda)
    prev_obs = torch.cat([torch.zeros_like(batch.obs[:1]), batch.obs[:-1]])  # what each previous action saw
    inputs = policy.encode(
        batch.obs, batch.prev_actions, batch.prev_rewards, batch.prev_dones, prev_obs
    )  # (T, B, input_dim)

    num_trials = batch.actions.shape[1]
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clipfrac": 0.0}
    num_updates, epochs_run = 0, 0
    for _ in range(config.update_epochs):
        epochs_run += 1
        perm = torch.randperm(num_trials, generator=generator)
        for idx in perm.split(config.minibatch_size):
            mask = batch.mask[:, idx]
            logits, values, _ = policy(inputs[:, idx], policy.initial_state(len(idx)))
            logp = policy.log_prob(logits, batch.actions[:, idx])
            entropy = F.masked_mean(policy.entropy(logits), mask)

            adv = advantages[:, idx]
            if config.norm_adv:
                adv = F.normalize(adv, mask)
            pg_loss, info = F.ppo_clip_loss(logp, batch.logprobs[:, idx], adv, config.clip_coef, mask)
            v_loss = F.value_loss(
                values,
                returns[:, idx],
                old_values=batch.values[:, idx],
                clip_eps=config.clip_coef if config.clip_vloss else None,
                mask=mask,
            )
            loss = pg_loss - ent_coef * entropy + config.vf_coef * v_loss

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()

            num_updates += 1
            for key, value in (("policy_loss", pg_loss), ("value_loss", v_loss), ("entropy", entropy)):
                sums[key] += float(value.detach())
            sums["approx_kl"] += float(info.approx_kl)
            sums["clipfrac"] += float(info.clipfrac)
        if config.target_kl is not None and float(info.approx_kl) > config.target_kl:
            break

    m = batch.mask
    var_returns = returns[m].var()
    explained_var = float(1.0 - (returns[m] - batch.values[m]).var() / var_returns) if var_returns > 0 else float("nan")
    means = {k: v / num_updates for k, v in sums.items()}
    return UpdateStats(**means, explained_variance=explained_var, epochs_run=epochs_run)


# ---------------------------------------------------------------------------------------
# 4. Training
# ---------------------------------------------------------------------------------------


def train_rl2(
    config: RL2Config,
    dist,
    episodes_per_trial: int,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    on_iteration: Callable[[int, "RL2Policy", int], bool | None] | None = None,
    init_policy: RL2Policy | None = None,
) -> RL2Policy:
    """Meta-train an RL² policy on ``dist`` with PPO.

    Every iteration samples ``config.num_trials_per_batch`` fresh tasks, plays one trial of
    ``episodes_per_trial`` episodes on each (:func:`collect_trials`), then updates the policy
    (:func:`ppo_update`). All randomness (initialization, tasks, environment, actions,
    minibatches) comes from one ``torch.Generator`` seeded with ``config.seed``.

    Args:
        config: hyperparameters.
        dist: a task distribution with discrete actions (``num_actions``, ``obs_dim``).
        episodes_per_trial: episodes per trial.
        log_fn: called as ``log_fn(env_steps, metrics)`` after every iteration, with
            ``charts/`` (mean_trial_return, learning_rate, ent_coef, iteration, SPS) and
            ``losses/`` (policy_loss, value_loss, entropy, approx_kl, clipfrac,
            explained_variance) metrics.
        progress: show a tqdm bar over iterations.
        checkpoint_path: if given, the training state (policy, optimizer, RNG, iteration) is
            saved there every ``checkpoint_every`` iterations, and training resumes from it if
            the file exists; a resumed run gives the same numbers as an uninterrupted one.
        checkpoint_every: iterations between checkpoints.
        on_iteration: called as ``on_iteration(iteration, policy, env_steps)`` after every
            update (and checkpoint); returning True stops training early (the benchmark
            ``benchmarks/rl2_time_to_target.py`` evaluates the policy here). Time spent in it
            is not counted in ``charts/SPS``.
        init_policy: start from these weights instead of a fresh initialization (e.g. a policy
            trained on shorter trials); a checkpoint to resume from takes precedence.

    Returns:
        The trained :class:`RL2Policy` (its ``config`` attribute is ``config``).
    """
    generator = torch.Generator().manual_seed(config.seed)
    policy = RL2Policy(
        dist.action_space.encoded_dim,
        dist.obs_dim,
        config.hidden_size,
        config.action_reward_input,
        config.obs_action_reward_input,
        generator=generator,
        head_hidden_size=config.head_hidden_size,
        obs_action_input=config.obs_action_input,
        state_gated_heads=config.state_gated_heads,
        network=config.network,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        seq_len=episodes_per_trial * dist.episode_length,
        **_box_bounds(dist),
    )
    policy.config = config
    if init_policy is not None:
        if init_policy.spec() != policy.spec():
            raise ValueError(f"init_policy has shape {init_policy.spec()}, this run needs {policy.spec()}")
        policy.load_state_dict(init_policy.state_dict())
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)

    first, env_steps = 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        first, env_steps = ckpt["iteration"] + 1, ckpt["env_steps"]

    iterations = range(first, config.num_iterations)
    if progress:
        from tqdm.auto import tqdm

        iterations = tqdm(iterations, desc="RL²", initial=first, total=config.num_iterations)
    start = time.perf_counter()
    for iteration in iterations:
        lr, ent_coef = config.lr_at(iteration), config.ent_coef_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr

        tasks = dist.sample_tasks(config.num_trials_per_batch, generator)
        policy.eval()
        batch = collect_trials(policy, dist, tasks, episodes_per_trial, generator)
        policy.train()
        stats = ppo_update(policy, optimizer, batch, config, ent_coef, generator)

        env_steps += int(batch.mask.sum())
        mean_return = float(batch.rewards.sum(0).mean())
        if progress:
            iterations.set_postfix(trial_return=f"{mean_return:.2f}")
        if log_fn is not None:
            metrics = {
                "charts/mean_trial_return": mean_return,
                "charts/learning_rate": lr,
                "charts/ent_coef": ent_coef,
                "charts/iteration": iteration,
                "charts/SPS": env_steps / (time.perf_counter() - start),
                "losses/policy_loss": stats.policy_loss,
                "losses/value_loss": stats.value_loss,
                "losses/entropy": stats.entropy,
                "losses/approx_kl": stats.approx_kl,
                "losses/clipfrac": stats.clipfrac,
                "losses/explained_variance": stats.explained_variance,
            }
            log_fn(env_steps, metrics)
        if checkpoint_path is not None and (
            (iteration + 1) % checkpoint_every == 0 or iteration + 1 == config.num_iterations
        ):
            _save_training_state(checkpoint_path, policy, optimizer, generator, iteration, env_steps)
        if on_iteration is not None:
            paused = time.perf_counter()
            policy.eval()
            stop = on_iteration(iteration, policy, env_steps)
            start += time.perf_counter() - paused
            if stop:
                break
    policy.eval()
    return policy


def _box_bounds(dist) -> dict:
    space = dist.action_space
    if isinstance(space, Box):
        return {"continuous": True, "action_low": float(space.low), "action_high": float(space.high)}
    return {}


def _save_training_state(path, policy, optimizer, generator, iteration: int, env_steps: int) -> None:
    """Atomically write what :func:`train_rl2` needs to resume after ``iteration``."""
    state = {
        "policy": policy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "iteration": iteration,
        "env_steps": env_steps,
    }
    save_torch(state, path)


# ---------------------------------------------------------------------------------------
# 5. The trained policy as an Agent
# ---------------------------------------------------------------------------------------


class RL2Agent:
    """A trained :class:`RL2Policy` behind the ``classic.agents.base.Agent`` interface.

    ``reset`` zeroes the hidden state (start of a trial); ``act`` feeds one step and keeps the
    hidden state, so memory persists across the episodes of the trial.

    Args:
        policy: a trained policy.
        greedy: take the most probable action instead of sampling.

    Example:
        >>> agent = RL2Agent(policy)
        >>> result = run_trials(agent, BernoulliBandit(5), num_tasks=1000, episodes_per_trial=100)
    """

    name = "RL²"

    def __init__(self, policy: RL2Policy, greedy: bool = False) -> None:
        self.policy = policy.eval()
        self.greedy = bool(greedy)
        if self.greedy:
            self.name = "RL² (greedy)"
        self.h = policy.initial_state(0)
        self.prev_obs: Tensor | None = None
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.h = self.policy.initial_state(num_tasks)
        self.prev_obs = None
        self.generator = generator

    @torch.no_grad()
    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        x = self.policy.encode(obs, prev_action, prev_reward, terminated | truncated, self.prev_obs)
        self.prev_obs = obs
        logits, _, self.h = self.policy(x.unsqueeze(0), self.h)
        logits = logits[0]
        if self.greedy:
            return self.policy.greedy(logits)
        return self.policy.sample(logits, self.generator)


# ---------------------------------------------------------------------------------------
# 6. RL² on the platform: its recipe section and the MetaLearner
# ---------------------------------------------------------------------------------------


@LEARNERS.register("rl2")
@dataclass
class RL2LearnerConfig:
    """RL² as a learner of a ``kind: compare`` recipe (``learners: [{name: rl2, algo: {...}}]``).

    Attributes:
        name: the registry name.
        label: its name in reports (default "RL²", or "RL² (greedy)" with ``greedy_eval``).
        algo: the PPO/GRU settings (:class:`~classic.algos.rl2_config.RL2Config`).
        greedy_eval: act greedily (argmax / Gaussian mean) at evaluation instead of sampling.
        init_from: start training from this saved policy (``policy.pt`` of another run, same
            network shape) instead of a fresh initialization (None: fresh).
    """

    name: str = "rl2"
    label: str | None = None
    algo: RL2Config = field(default_factory=RL2Config)
    greedy_eval: bool = False
    init_from: str | None = None

    @property
    def display_name(self) -> str:
        return self.label or ("RL² (greedy)" if self.greedy_eval else "RL²")

    def learner(self) -> "RL2Learner":
        return RL2Learner()


class RL2Learner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of RL²: trains with :func:`train_rl2` in the stage
    folder (``policy.pt``; ``training_state.pt`` to resume an interrupted training)."""

    config_class = RL2LearnerConfig

    def train(self, config: RL2LearnerConfig, dist, protocol, run: StageRun) -> Path:
        """Train (or reuse the finished policy, or resume); returns the path of ``policy.pt``.

        Raises:
            FileNotFoundError: ``config.init_from`` names a missing file.
        """
        path = Path(run.dir) / "policy.pt"
        if path.exists():
            return path
        init = None
        if config.init_from:
            if not Path(config.init_from).is_file():
                raise FileNotFoundError(f"init_from: no saved policy at {config.init_from}")
            init = RL2Policy.load(config.init_from)
        log_fn = run.log_fn(resuming=(path.parent / "training_state.pt").exists())
        policy = train_rl2(
            config.algo,
            dist,
            protocol.episodes_per_trial,
            log_fn=log_fn,
            progress=run.progress,
            checkpoint_path=path.parent / "training_state.pt",
            init_policy=init,
        )
        policy.save(path, config.algo)
        return path

    def stage_fingerprint(self, config: RL2LearnerConfig, task) -> dict:
        """The task and the config, and with ``init_from`` the digest of that policy file: a
        policy retrained at the source makes the warm-started stage train again."""
        out = super().stage_fingerprint(config, task)
        if config.init_from and Path(config.init_from).is_file():
            out["init_from_sha256"] = hashlib.sha256(Path(config.init_from).read_bytes()).hexdigest()
        return out

    def agent(self, config: RL2LearnerConfig, checkpoint: Path, dist) -> RL2Agent:
        agent = RL2Agent(RL2Policy.load(checkpoint), greedy=config.greedy_eval)
        agent.name = config.display_name
        return agent
