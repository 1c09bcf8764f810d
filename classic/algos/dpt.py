"""Decision-Pretrained Transformer: in-context RL by predicting the optimal action.

DPT (Lee et al. 2023, arXiv 2306.14892) pretrains a causal transformer on (in-context dataset,
query state) -> optimal action: for a task tau, an in-context dataset D = {(s_j, a_j, r_j, s'_j)}
collected by some behaviour, a query state s_q, and the label a* = pi*_tau(s_q) from the policy that
knows the task. The sequence is ``[query, (s_1, a_1, r_1, s'_1), ..., (s_n, a_n, r_n, s'_n)]`` and
the model predicts a* at every position j (from the query and the first j transitions), so one
sample trains every context size 0 .. n (DPT, Sec. 3, Eq. 1; the reference code's ``net.py``
puts the query first the same way):

    L(theta) = - sum_{j=0..n} log M_theta(a* | s_q, D_j)

At deployment (online, DPT Sec. 4.2) the agent plays episodes on a new task: its in-context
dataset is the transitions of its earlier episodes of the trial (added when an episode ends, the
last ``context_size`` kept), the query is its current state, and it *samples* its action from the
predicted distribution, which the paper shows is posterior sampling (Thompson sampling) in
disguise (Theorem 1).

Pretraining data is drawn fresh for every batch from the training task distribution (unlimited,
the distribution's hooks :meth:`~classic.core.TaskDistribution.sample_states` and
:meth:`~classic.core.TaskDistribution.optimal_action`): states uniform over the task's states,
actions from a per-dataset random distribution ``p ~ Dirichlet(1)`` over the actions (DPT's
bandit datasets; diverse, from near-uniform to concentrated on one action like a learner's
data), query states uniform. Alternatively (``context_states: source``) the in-context datasets
are windows of a registered baseline's trials (e.g. posterior sampling), so that they look like
the contexts the deployed agent builds; labels and queries are unchanged. DPT's held-out Dark
Room goals are the task configuration
(``goal_split: train`` for pretraining, ``protocol.eval_task: {goal_split: test}``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from classic.algos.ad import (
    ActionModelConfig,
    ADModel,
    BaselineRef,
    both_ways,
    collect_histories,
    fit_action_model,
    load_model,
    obs_features,
    save_model,
)
from classic.config import require_ints, require_numbers
from classic.core import Discrete, MetaLearner, StageRun, TaskDistribution
from classic.registry import LEARNERS
from classic.rollout import take_tasks

# ---------------------------------------------------------------------------------------------
# 1. Configuration and pretraining data
# ---------------------------------------------------------------------------------------------


@dataclass
class DPTConfig(ActionModelConfig):
    """Hyperparameters of DPT (and those of :class:`~classic.algos.ad.ActionModelConfig`; a batch
    holds ``batch_size`` (dataset, query) samples, fresh each step).

    Attributes:
        context_size: n, transitions per in-context dataset (and the most the agent keeps).
        context_states: where the dataset's transitions come from: ``uniform`` (a uniformly
            random state each, DPT's Dark Room pretraining), ``episodes`` (consecutive episodes
            from the task's start, as the agent collects them online; the behaviour is still the
            per-dataset Dirichlet action distribution) or ``source`` (a trial of the learner's
            ``context_source``, any registered baseline: the last ``context_size`` transitions
            after a uniformly random number of its episodes, with the episode-final transitions
            left out as the online agent leaves them out; from a pool of ``num_source_histories``
            trials of ``source_episodes`` episodes collected once on the training tasks).
        num_source_histories: trials in the ``source`` pool (one training task each).
        source_episodes: episodes per source trial (enough to hold ``context_size`` transitions).
        dirichlet_alpha: concentration of the per-dataset action distribution.
        rewarded_query_prob: probability that a sample's query state is the next state of a
            rewarded transition of its dataset (one drawn uniformly among those with the dataset's
            highest reward, when it has a positive one) instead of a uniform state; 0: DPT's uniform
            queries. Our addition: under uniform queries the states an optimal agent dwells in
            (Dark Room's goal, where the label is "stay") are 1/|S| of the labels.
        reward_next_obs_input: add ``reward * next-obs features`` to each transition token, so "the
            state that paid r" is linear in the input (our addition, not the paper's, as RL²'s
            ``action_reward_input``).
        positional_encoding: sinusoidal positions on the tokens; False (default): none, the
            in-context dataset being a set (the query is told apart by its empty action field).
        num_layers: 3 (the shared default is 2).

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    num_layers: int = 3
    context_size: int = 200
    context_states: str = "uniform"
    num_source_histories: int = 2048
    source_episodes: int = 4
    dirichlet_alpha: float = 1.0
    rewarded_query_prob: float = 0.0
    reward_next_obs_input: bool = True
    positional_encoding: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ints(self, ("context_size", "num_source_histories", "source_episodes"), minimum=1)
        if self.context_states not in ("uniform", "episodes", "source"):
            raise ValueError(f"context_states must be 'uniform', 'episodes' or 'source', got {self.context_states!r}")
        require_numbers(self, ("dirichlet_alpha",))
        if not 0.0 <= self.rewarded_query_prob <= 1.0:
            raise ValueError(f"rewarded_query_prob must be in [0, 1], got {self.rewarded_query_prob!r}")
        if self.context_states == "source" and self.rewarded_query_prob > 0:
            raise ValueError("rewarded_query_prob works with context_states 'uniform' or 'episodes', not 'source'")


def transition_features(
    obs: Tensor,
    action: Tensor,
    reward: Tensor,
    next_obs: Tensor,
    dist: TaskDistribution,
    one_hot: bool,
    reward_next_obs: bool = False,
) -> Tensor:
    """The token of transitions ``[obs features, one_hot(action), reward, next-obs features]``
    (..., 2F + A + 1), and with ``reward_next_obs`` also ``reward * next-obs features`` (+ F)."""
    A = int(dist.action_space.n)
    a = F.one_hot(action.clamp(0, A - 1).long(), A).float()
    s, s2 = obs_features(obs, dist, one_hot), obs_features(next_obs, dist, one_hot)
    r = reward.float().unsqueeze(-1)
    return torch.cat([s, a, r, s2, *([r * s2] if reward_next_obs else [])], dim=-1)


def query_features(obs: Tensor, dist: TaskDistribution, one_hot: bool, reward_next_obs: bool = False) -> Tensor:
    """The query token ``[obs features, 0 (A), 0, 0 (F)]`` (..., 2F + A + 1) (+ F zeros with
    ``reward_next_obs``)."""
    s = obs_features(obs, dist, one_hot)
    rest = int(dist.action_space.n) + 1 + s.shape[-1] * (2 if reward_next_obs else 1)
    return torch.cat([s, torch.zeros(*s.shape[:-1], rest)], dim=-1)


class SourcePool(NamedTuple):
    """Trials of a source agent on training tasks, as the transitions an online DPT agent keeps.

    Attributes:
        tasks: the N tasks (the distribution's task container).
        obs, next_obs: (N, T, obs_dim) float, T = E * L transitions, L = H - 1 per episode (the
            episode-final transition left out: the agent never sees where it led), L = 1 for
            one-step episodes (whose next state is the start state itself).
        actions: (N, T) long.
        rewards: (N, T) float.
        per_episode: L.
    """

    tasks: Any
    obs: Tensor
    next_obs: Tensor
    actions: Tensor
    rewards: Tensor
    per_episode: int


def collect_source_pool(
    source, dist: TaskDistribution, num: int, episodes: int, generator: torch.Generator
) -> SourcePool:
    """One trial of ``episodes`` episodes of the ``source`` agent on each of ``num`` training tasks
    (AD's :func:`~classic.algos.ad.collect_histories`), as the transitions the online agent keeps.

    Raises:
        ValueError: episodes of different lengths (the pool needs fixed-length episodes).
    """
    tasks = dist.sample_tasks(num, generator)
    h = collect_histories(source, dist, tasks, episodes, 1, generator)
    if dist.episode_length == 1:  # every pull is kept; its next state is the start state again
        return SourcePool(tasks, h.obs, h.obs, h.actions, h.rewards, 1)
    # s' of step t is the observation of step t + 1, unless step t ended its episode (left out).
    keep = ~torch.cat([h.new_episode[0, 1:], torch.ones(1, dtype=torch.bool)])  # (T,) same layout per task
    next_obs = h.obs.roll(-1, dims=1)
    return SourcePool(
        tasks, h.obs[:, keep], next_obs[:, keep], h.actions[:, keep], h.rewards[:, keep], dist.episode_length - 1
    )


class PretrainingBatch(NamedTuple):
    """DPT pretraining samples.

    Attributes:
        tokens: (B, 1 + n, D) ``[query, transitions]``.
        labels: (B,) long, the optimal action at each query state.
        tasks: the B tasks.
        query_state: their query states (the distribution's state container).
    """

    tokens: Tensor
    labels: Tensor
    tasks: Any
    query_state: Any


def pretraining_batch(
    dist: TaskDistribution,
    batch: int,
    context_size: int,
    config: DPTConfig,
    generator: torch.Generator,
    pool: SourcePool | None = None,
) -> PretrainingBatch:
    """``batch`` fresh pretraining samples, one task each: n transitions with Dirichlet-weighted
    actions (from uniform states, or in consecutive episodes from the start: ``context_states``)
    or, given a ``pool``, a window of a source trial (:func:`source_window`); a uniform query
    state and its optimal action.

    Raises:
        ValueError: the distribution does not define ``sample_states`` / ``optimal_action``.
    """
    if pool is not None:
        return source_window(pool, dist, batch, context_size, config, generator)
    tasks = dist.sample_tasks(batch, generator)
    probe = dist.sample_states(tasks, generator)
    if probe is None:
        raise ValueError(f"DPT needs a task distribution with sample_states and optimal_action; {type(dist).__name__}")
    A = int(dist.action_space.n)
    probs = _dirichlet(batch, A, config.dirichlet_alpha, generator)  # torch's Dirichlet takes no generator
    tokens, rewards, next_states, next_obs = [], [], [], []
    episodes = config.context_states == "episodes"
    if episodes:
        state, obs = dist.reset(tasks, generator)
    for _ in range(context_size):
        if not episodes:
            state, obs = dist.sample_states(tasks, generator)
        action = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        step = dist.step(tasks, state, action, generator)
        tokens.append(
            transition_features(
                obs, action, step.reward, step.obs, dist, config.obs_one_hot, config.reward_next_obs_input
            )
        )
        rewards.append(step.reward.float())
        next_states.append(step.state)
        next_obs.append(step.obs)
        if episodes:
            state, obs = step.state, step.obs
            ended = step.terminated | step.truncated
            if bool(ended.any()):
                if not bool(ended.all()):
                    raise ValueError("context_states 'episodes' needs fixed-length episodes")
                state, obs = dist.reset(tasks, generator)
    q_state, q_obs = dist.sample_states(tasks, generator)
    if config.rewarded_query_prob > 0 and context_size > 0:
        q_state, q_obs = _rewarded_queries(
            q_state, q_obs, torch.stack(rewards, 1), next_states, next_obs, config.rewarded_query_prob, generator
        )
    label = dist.optimal_action(tasks, q_state)
    if label is None:
        raise ValueError(f"DPT needs optimal_action on the task distribution; {type(dist).__name__} has none")
    query = query_features(q_obs, dist, config.obs_one_hot, config.reward_next_obs_input)
    return PretrainingBatch(torch.stack([query, *tokens], dim=1), label.long(), tasks, q_state)


def source_window(
    pool: SourcePool, dist: TaskDistribution, batch: int, context_size: int, config: DPTConfig, generator
) -> PretrainingBatch:
    """``batch`` samples from a source pool: a trial drawn uniformly, a number of its episodes k
    drawn uniformly from 1 .. E, the n = ``context_size`` transitions ending with episode k (those
    starting the trial when k episodes hold fewer than n), a uniform query state, its optimal action.

    Raises:
        ValueError: the pool's trials hold fewer than n transitions.
    """
    N, T = pool.actions.shape
    if T < context_size:
        raise ValueError(
            f"source trials hold {T} transitions, fewer than context_size={context_size}: raise source_episodes"
        )
    row = torch.randint(N, (batch,), generator=generator)
    k = torch.randint(1, T // pool.per_episode + 1, (batch,), generator=generator)
    start = (k * pool.per_episode - context_size).clamp(0, T - context_size)
    cols = start.unsqueeze(1) + torch.arange(context_size)  # (B, n)
    rows = row.unsqueeze(1)
    tokens = transition_features(
        pool.obs[rows, cols],
        pool.actions[rows, cols],
        pool.rewards[rows, cols],
        pool.next_obs[rows, cols],
        dist,
        config.obs_one_hot,
        config.reward_next_obs_input,
    )
    tasks = take_tasks(pool.tasks, row)
    q_state, q_obs = dist.sample_states(tasks, generator)
    label = dist.optimal_action(tasks, q_state)
    query = query_features(q_obs, dist, config.obs_one_hot, config.reward_next_obs_input)
    return PretrainingBatch(torch.cat([query.unsqueeze(1), tokens], dim=1), label.long(), tasks, q_state)


def _rewarded_queries(q_state, q_obs, rewards: Tensor, next_states: list, next_obs: list, prob: float, generator):
    """With probability ``prob`` per sample, the query becomes the next state (and observation) of
    one of its dataset's best-rewarded transitions (drawn uniformly among them), where the best
    reward is positive. ``rewards`` (B, n); ``next_states`` n state containers (NamedTuples of
    tensors, batch first); ``next_obs`` n (B, obs_dim)."""
    B, n = rewards.shape
    best = rewards == rewards.max(1, keepdim=True).values
    pick = torch.where(best, torch.rand(B, n, generator=generator), torch.full((B, n), -1.0)).argmax(1)
    use = (torch.rand(B, generator=generator) < prob) & (rewards.max(1).values > 0)
    rows = torch.arange(B)

    def choose(current: Tensor, steps: list) -> Tensor:
        chosen = torch.stack(steps, 1)[rows, pick]  # (B, ...)
        return torch.where(use.view(B, *[1] * (current.dim() - 1)), chosen, current)

    state = type(q_state)(
        *(choose(f, [getattr(s, name) for s in next_states]) for name, f in q_state._asdict().items())
    )
    return state, choose(q_obs, next_obs)


def _dirichlet(n: int, k: int, alpha: float, generator: torch.Generator) -> Tensor:
    """(n, k) Dirichlet(alpha) draws from ``generator``: normalized Gamma(alpha, 1) variables, each
    Gamma drawn as -log of a product of uniforms for integer alpha (alpha = 1: exponentials) and by
    Marsaglia-Tsang otherwise."""
    if float(alpha).is_integer():
        u = torch.rand(n, k, int(alpha), generator=generator).clamp(min=1e-12)
        g = -u.log().sum(-1)
    else:
        g = _gamma_marsaglia_tsang(n, k, float(alpha), generator)
    return g / g.sum(-1, keepdim=True)


def _gamma_marsaglia_tsang(n: int, k: int, alpha: float, generator: torch.Generator) -> Tensor:
    """Gamma(alpha, 1) (n, k) by Marsaglia & Tsang (2000), with the alpha < 1 boost ``G(a+1) U^(1/a)``."""
    boost = alpha < 1
    a = alpha + 1 if boost else alpha
    d = a - 1 / 3
    c = 1 / (9 * d) ** 0.5
    out = torch.empty(n, k)
    todo = torch.ones(n, k, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(n, k, generator=generator)
        v = (1 + c * x) ** 3
        u = torch.rand(n, k, generator=generator)
        ok = (v > 0) & (u.clamp(min=1e-12).log() < 0.5 * x**2 + d - d * v + d * v.clamp(min=1e-12).log())
        take = ok & todo
        out[take] = (d * v)[take]
        todo &= ~take
    if boost:
        out = out * torch.rand(n, k, generator=generator).clamp(min=1e-12) ** (1 / alpha)
    return out


# ---------------------------------------------------------------------------------------------
# 2. Model and training
# ---------------------------------------------------------------------------------------------


#: DPT's model: :class:`~classic.algos.ad.ADModel` over ``[query, transitions]`` (B, 1 + n, D) ->
#: (B, 1 + n, A) logits of the optimal action at the query after each prefix of the dataset
#: (position 0: the query alone); positions per ``DPTConfig.positional_encoding``.
DPTModel = ADModel


def train_dpt(
    config: DPTConfig,
    dist: TaskDistribution,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    source=None,
) -> DPTModel:
    """Pretrain DPT on fresh batches from ``dist`` (the training tasks).

    Args:
        config: hyperparameters.
        dist: the training task distribution (discrete actions, with ``sample_states`` and
            ``optimal_action``).
        log_fn: ``log_fn(step, metrics)`` every 50 steps (:func:`~classic.algos.ad.fit_action_model`;
            ``charts/accuracy_last`` is the accuracy with the full dataset in context).
        progress: tqdm bar.
        checkpoint_path: training state saved every ``checkpoint_every`` steps; resumed from.
        source: the agent whose trials are the in-context datasets under ``context_states:
            source`` (:func:`collect_source_pool`, collected from ``config.seed`` before training).

    Raises:
        ValueError: discrete actions or the hooks missing; ``context_states: source`` without a
            source.
    """
    if not isinstance(dist.action_space, Discrete):
        raise ValueError(f"DPT needs discrete actions, got {type(dist.action_space).__name__}")
    pool = None
    if config.context_states == "source":
        if source is None:
            raise ValueError("context_states 'source' needs the learner's context_source (a baseline)")
        g = torch.Generator().manual_seed(config.seed + 1)
        pool = collect_source_pool(source, dist, config.num_source_histories, config.source_episodes, g)
    generator = torch.Generator().manual_seed(config.seed)
    probe = pretraining_batch(dist, 2, 1, config, torch.Generator().manual_seed(0), pool).tokens
    model = DPTModel(probe.shape[-1], dist.action_space.n, config, generator)

    def next_batch(g: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens, label, _, _ = pretraining_batch(dist, config.batch_size, config.context_size, config, g, pool)
        return tokens, label.unsqueeze(1).expand(tokens.shape[:2])

    fit_action_model(model, next_batch, config, generator, log_fn, progress, checkpoint_path, desc="DPT")
    return model


# ---------------------------------------------------------------------------------------------
# 3. Online deployment and DPT on the platform
# ---------------------------------------------------------------------------------------------


class DPTAgent:
    """DPT deployed online (DPT Sec. 4.2): the in-context dataset is the transitions of the trial's
    earlier episodes (the last ``context_size``; an episode's last transition, whose next state the
    agent does not see, left out unless episodes are one step), added when an episode ends; each action is
    sampled from the predicted distribution of the optimal action at the current state (or its
    argmax with ``greedy_eval``). No weight update. The query comes first in the sequence (DPT's
    layout), so every step re-encodes ``[query, context]``: no key/value cache across steps.

    Args:
        model: a trained :class:`DPTModel`.
        dist: the task distribution (for the tokens).
        config: ``context_size``, ``obs_one_hot``, ``greedy_eval``.
        name: its name in reports.
    """

    def __init__(self, model: DPTModel, dist: TaskDistribution, config: DPTConfig, name: str = "DPT") -> None:
        self.model, self.dist, self.config, self.name = model.eval(), dist, config, name
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.context: Tensor | None = None  # (n, c, D) transitions of finished episodes
        self.episode: list[Tensor] = []  # tokens of the current episode's transitions
        self.prev_obs: Tensor | None = None

    @torch.no_grad()
    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        cfg = self.config
        ended = terminated | truncated
        if self.prev_obs is not None and (self.dist.episode_length == 1 or not bool(ended.all())):
            # The previous step's transition (s, a, r, s'), s' being this observation. When that step
            # ended its episode, this observation is the next episode's start, not s': the
            # transition is left out (the state it reached is unknown to the agent), except for
            # one-step episodes (bandits), whose next state is the start state itself.
            self.episode.append(
                transition_features(
                    self.prev_obs, prev_action, prev_reward, obs, self.dist, cfg.obs_one_hot, cfg.reward_next_obs_input
                )
            )
        if bool(ended.any()) and not bool(ended.all()):
            raise ValueError("DPT's online agent needs fixed-length episodes (every task's episode ends together)")
        if self.episode and bool(ended.all()):
            new = torch.stack(self.episode, dim=1)
            self.context = new if self.context is None else torch.cat([self.context, new], dim=1)
            self.context = self.context[:, -cfg.context_size :]
            self.episode = []
        query = query_features(obs.float(), self.dist, cfg.obs_one_hot, cfg.reward_next_obs_input).unsqueeze(1)
        tokens = query if self.context is None else torch.cat([query, self.context], dim=1)
        logits = self.model(tokens)[:, -1]
        self.prev_obs = obs.float()
        if cfg.greedy_eval:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(-1)


@LEARNERS.register("dpt")
@dataclass
class DPTLearnerConfig:
    """DPT as a learner of a ``kind: compare`` recipe (``learners: [{name: dpt, algo: {...}}]``).

    Attributes:
        name: the registry name.
        label: its name in reports (default "DPT").
        context_source: the agent whose trials are the pretraining in-context datasets under
            ``algo.context_states: source``: any registered baseline by name with its
            hyperparameters (e.g. ``{name: Posterior sampling}``); not tuned.
        algo: :class:`DPTConfig`.
    """

    name: str = "dpt"
    label: str | None = None
    context_source: BaselineRef | None = None
    algo: DPTConfig = field(default_factory=DPTConfig)

    @property
    def display_name(self) -> str:
        return self.label or "DPT"

    def learner(self) -> "DPTLearner":
        return DPTLearner()


class DPTLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of DPT: pretraining in the stage folder (``model.pt``;
    ``training_state.pt`` to resume)."""

    config_class = DPTLearnerConfig

    def train(self, config: DPTLearnerConfig, dist, protocol, run: StageRun) -> Path:
        path = Path(run.dir) / "model.pt"
        if path.exists():
            return path
        state_path = path.parent / "training_state.pt"
        log_fn = run.log_fn(resuming=state_path.exists())
        source = None
        if config.context_source is not None:
            source = config.context_source.make(dist, config.algo.source_episodes)
        save_model(train_dpt(config.algo, dist, log_fn, run.progress, state_path, source), path)
        return path

    def agent(self, config: DPTLearnerConfig, checkpoint: Any, dist) -> DPTAgent:
        return DPTAgent(load_model(checkpoint, config.algo)[0], dist, config.algo, config.display_name)

    def agents(self, config: DPTLearnerConfig, checkpoint: Any, dist):
        """The agent as configured, and with ``evaluate_both`` the same model acting the other way."""
        yield from both_ways(config, self.agent(config, checkpoint, dist), DPTAgent)
