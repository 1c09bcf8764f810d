"""Configuration of RL² trained with PPO (:mod:`classic.algos.rl2`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class RL2Config:
    """Hyperparameters of RL² (Duan et al. 2016, arXiv 1611.02779) trained with PPO + GAE.

    One *iteration* collects ``num_trials_per_batch`` trials (one task each, batched) with the
    current policy and then runs ``update_epochs`` epochs of PPO over them, in
    ``num_minibatches`` minibatches of whole trials (BPTT through the GRU over the trial).

    The defaults are tuned for ``BernoulliBandit(num_arms=5)`` with 100 episodes per trial:
    300 iterations x 256 trials = 7.68M environment steps (what they reach, and in how long: the
    README, "RL² on the bandit, by seed"). Many small minibatches (16 x 16 trials) matter most:
    the budget is bound by BPTT compute, and more gradient steps per trial collected learned much
    faster than bigger minibatches.

    Attributes:
        network: the policy's memory over the trial: ``gru`` (the paper's), ``transformer`` (a
            causal transformer, exact memory of the whole trial) or ``snail`` (Mishra et al. 2018,
            arXiv 1707.03141).
        hidden_size: GRU hidden units (the transformer's and SNAIL's width).
        num_layers, num_heads: the transformer's decoder blocks and attention heads.
        learning_rate: Adam step size at the start of training.
        anneal_lr: decay the step size linearly to 0 over ``num_iterations``.
        num_trials_per_batch: trials (tasks) collected per iteration.
        num_iterations: outer-loop iterations (collect + PPO update); 0 trains nothing (with a
            warm start, ``train_rl2`` returns the initial policy: pure transfer).
        update_epochs: PPO epochs over each batch of trials.
        num_minibatches: minibatches per epoch; each holds whole trials.
        clip_coef: PPO ratio clipping epsilon.
        clip_vloss: clip the value loss (PPO2 style) at ``clip_coef`` in critic units
            (``clip_coef * reward_scale`` in reward units).
        gamma: discount across the whole trial (1.0 = the undiscounted trial return).
        gae_lambda: GAE lambda.
        norm_adv: standardize advantages per minibatch.
        ent_coef: entropy bonus coefficient at the start of training.
        ent_coef_final: entropy coefficient at the end; annealed linearly from ``ent_coef``.
        vf_coef: value-loss coefficient.
        max_grad_norm: global gradient-norm clip.
        target_kl: stop the epochs of an iteration early when approx KL exceeds this (None: never).
        reward_scale: rewards are divided by this before GAE, so the critic predicts returns
            in units of ``reward_scale`` and the value loss stays O(1) for long trials.
        adam_eps: Adam epsilon.
        action_reward_input: also feed ``one_hot(prev_action) * prev_reward`` to the GRU
            (see :class:`~classic.algos.rl2.RL2Policy`).
        obs_action_reward_input: also feed ``prev_obs x one_hot(prev_action) * prev_reward``
            (per state-action reward evidence on tabular MDPs; see ``RL2Policy``).
        obs_action_input: also feed ``prev_obs x one_hot(prev_action)``, the (state, action)
            visit indicator, so per-(s, a) counts are linear in the input as well.
        head_hidden_size: 0 for linear actor/critic heads on the GRU output; otherwise each
            head is a tanh MLP of this width over ``[GRU output, current observation]``.
        state_gated_heads: the heads' output layers read ``obs outer features`` (one linear
            readout per one-hot state; see ``RL2Policy``).
        seed: seeds the one ``torch.Generator`` used for initialization, tasks, actions and
            minibatches; the same seed gives the same numbers.

    Raises:
        ValueError: naming the offending field, when a value is out of range.

    Example:
        >>> cfg = RL2Config(num_iterations=10)
        >>> cfg.minibatch_size
        16
        >>> cfg.total_env_steps(trial_length=100)
        256000
    """

    network: str = "gru"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    learning_rate: float = 3e-3
    anneal_lr: bool = True
    num_trials_per_batch: int = 256
    num_iterations: int = 300
    update_epochs: int = 2
    num_minibatches: int = 16
    clip_coef: float = 0.2
    clip_vloss: bool = False
    gamma: float = 1.0
    gae_lambda: float = 0.95
    norm_adv: bool = True
    ent_coef: float = 0.01
    ent_coef_final: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    reward_scale: float = 10.0
    adam_eps: float = 1e-5
    action_reward_input: bool = True
    obs_action_reward_input: bool = False
    obs_action_input: bool = False
    head_hidden_size: int = 0
    state_gated_heads: bool = False
    seed: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.num_iterations, bool) or not isinstance(self.num_iterations, int) or self.num_iterations < 0:
            raise ValueError(f"num_iterations must be an int >= 0, got {self.num_iterations!r}")
        if self.network not in ("gru", "transformer", "snail"):
            raise ValueError(f"network must be 'gru', 'transformer' or 'snail', got {self.network!r}")
        positive_ints = (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_trials_per_batch",
            "update_epochs",
            "num_minibatches",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(self.head_hidden_size, bool)
            or not isinstance(self.head_hidden_size, int)
            or self.head_hidden_size < 0
        ):
            raise ValueError(f"head_hidden_size must be an int >= 0, got {self.head_hidden_size!r}")
        if self.network == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_trials_per_batch % self.num_minibatches != 0:
            raise ValueError(
                f"num_trials_per_batch ({self.num_trials_per_batch}) must be divisible by "
                f"num_minibatches ({self.num_minibatches})"
            )
        for name in ("learning_rate", "clip_coef", "max_grad_norm", "reward_scale", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("ent_coef", "ent_coef_final", "vf_coef"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None, got {self.target_kl!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    @property
    def minibatch_size(self) -> int:
        """Trials per minibatch."""
        return self.num_trials_per_batch // self.num_minibatches

    @property
    def total_trials(self) -> int:
        """Trials collected over the whole training run."""
        return self.num_trials_per_batch * self.num_iterations

    def total_env_steps(self, trial_length: int) -> int:
        """Environment steps of the whole run for trials of ``trial_length`` steps."""
        return self.total_trials * int(trial_length)

    def ent_coef_at(self, iteration: int) -> float:
        """Entropy coefficient at 0-based ``iteration``: linear from ``ent_coef`` to ``ent_coef_final``."""
        frac = iteration / max(self.num_iterations - 1, 1)
        return self.ent_coef + frac * (self.ent_coef_final - self.ent_coef)

    def lr_at(self, iteration: int) -> float:
        """Adam step size at 0-based ``iteration`` (linear decay to 0 when ``anneal_lr``)."""
        if not self.anneal_lr:
            return self.learning_rate
        return self.learning_rate * (1.0 - iteration / max(self.num_iterations, 1))

    def to_dict(self) -> dict:
        """Plain-dict form (for checkpoints and logs)."""
        return asdict(self)
