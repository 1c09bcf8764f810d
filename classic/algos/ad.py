"""Algorithm Distillation: in-context RL by supervised learning on learning histories.

AD (Laskin et al. 2022, arXiv 2210.14215) runs a *source* RL algorithm on many training tasks,
records each run's whole learning history (many episodes on one task, as the algorithm improves),
and trains a causal transformer to predict the source's next action from the history before it,
across episode boundaries:

    L(theta) = - sum_t log P_theta(a_t | h_{t-W+1 .. t})      h_t = (o_t, a_{t-1}, r_{t-1}, new episode)

with a context of W steps spanning several episodes (``context_episodes``), so improving behaviour
is only predictable from the rewards earlier in the context: the model has to learn the improvement
operator, not one policy. At meta-test it acts on held-out tasks with its own history as the
context and no weight update; its return grows across the trial's episodes.

Learning histories may be *subsampled* (``subsample`` = k keeps episodes 0, k, 2k, ... of each run):
its histories then improve k times faster per episode than the source's (the mechanism behind the
paper's observation that AD can learn faster in context than the algorithm it distils).

The source is any registered agent that learns across a trial's episodes (``Q-learning``,
``UCB1``, ``Thompson sampling``, ...): one source run is one trial of ``source_episodes`` episodes of
the platform's trial loop, so the histories are recorded exactly as the evaluator plays.

1. :class:`ADConfig`, :func:`collect_histories`, :func:`step_features` (the tokens).
2. :class:`ADModel` -- a :class:`~classic.algos.sequence.CausalTransformer` with an action head.
3. :func:`train_ad` -- supervised learning on random context windows (checkpoint/resume).
4. :class:`ADAgent` -- in-context acting on the last W steps; :class:`ADLearner` on the platform.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from classic.algos.sequence import CausalTransformer
from classic.config import require_ints, require_numbers
from classic.core import Box, Discrete, MetaLearner, StageRun, TaskDistribution
from classic.files import save_torch
from classic.registry import AGENTS, LEARNERS
from classic.rollout import rollout

BaselineRef = AGENTS.ref

# ---------------------------------------------------------------------------------------------
# 1. Configuration, learning histories, tokens
# ---------------------------------------------------------------------------------------------


@dataclass
class ActionModelConfig:
    """What AD and DPT share: the transformer, its supervised training and how it acts.

    Attributes:
        hidden_size, num_layers, num_heads: the causal transformer's width, blocks and heads.
        num_steps: gradient steps.
        batch_size: sequences per gradient step.
        learning_rate: AdamW step size (linear warm-up over the first 5% of steps, then cosine
            decay to 10%; :func:`lr_at`).
        weight_decay: AdamW weight decay.
        max_grad_norm: global gradient-norm clip.
        obs_one_hot: one-hot each observation coordinate when observations are integer
            coordinates in a Box (Dark Room's ``(x, y)``); otherwise observations enter as they are.
        greedy_eval: act with the most probable action at meta-test instead of sampling (the
            papers' agents sample).
        evaluate_both: also report the other way of acting, as "<name> (greedy)" or
            "<name> (sampled)" (same weights, one more evaluation).
        checkpoint_every: gradient steps between training-state checkpoints.
        seed: seeds the data, the initialization and the batches.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    obs_one_hot: bool = True
    greedy_eval: bool = False
    evaluate_both: bool = True
    checkpoint_every: int = 500
    seed: int = 1

    def __post_init__(self) -> None:
        require_ints(self, ("hidden_size", "num_layers", "num_heads", "batch_size", "checkpoint_every"), minimum=1)
        require_ints(self, ("num_steps",), minimum=0)
        require_numbers(self, ("learning_rate", "max_grad_norm"))
        require_numbers(self, ("weight_decay",), positive=False)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ADConfig(ActionModelConfig):
    """Hyperparameters of Algorithm Distillation (and those of :class:`ActionModelConfig`).

    Attributes:
        num_histories: training tasks, one learning history (source run) each.
        source_episodes: episodes per learning history (the source's trial).
        subsample: keep every ``subsample``-th episode of each history (1: all).
        context_episodes: the context W, in episodes of the (subsampled) history: ``W =
            context_episodes * episode_length`` steps (the paper: 4 episodes on Dark Room); a batch
            holds ``batch_size`` windows of W steps.

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    num_histories: int = 512
    source_episodes: int = 100
    subsample: int = 1
    context_episodes: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        require_ints(self, ("num_histories", "source_episodes", "subsample", "context_episodes"), minimum=1)
        if self.subsample > self.source_episodes:
            raise ValueError(f"subsample ({self.subsample}) must be <= source_episodes ({self.source_episodes})")


class Histories(NamedTuple):
    """Learning histories, task-major, every episode of fixed length H.

    Attributes:
        obs: (N, T, obs_dim) float observations.
        actions: (N, T) long actions the source took.
        rewards: (N, T) float rewards.
        new_episode: (N, T) bool, the step starts an episode.
        episode_returns: (N, E) float return of each kept episode.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    new_episode: Tensor
    episode_returns: Tensor


def collect_histories(
    source, dist: TaskDistribution, tasks: Any, episodes: int, subsample: int, generator: torch.Generator
) -> Histories:
    """One learning history per task: a trial of ``episodes`` episodes of the ``source`` agent
    (:func:`classic.rollout.rollout`), every ``subsample``-th episode kept.

    Raises:
        ValueError: episodes of different lengths (AD and DPT's source pool need fixed-length episodes).
    """
    traj = rollout(source, dist, tasks, episodes, generator)
    if not bool(traj.valid.all()):
        raise ValueError("learning histories need fixed-length episodes (no early termination)")
    keep = (traj.episode[:, 0] % subsample) == 0  # (T,) the same episode layout for every task
    obs = traj.obs[keep].transpose(0, 1).float()
    actions, rewards = traj.actions[keep].T.long(), traj.rewards[keep].T.float()
    new_episode = (traj.step[keep] == 0).T
    E = int(keep.sum()) // dist.episode_length
    returns = rewards.reshape(rewards.shape[0], E, dist.episode_length).sum(-1)
    return Histories(obs, actions, rewards, new_episode, returns)


def obs_features(obs: Tensor, dist: TaskDistribution, one_hot: bool) -> Tensor:
    """(..., F) observation features: per-coordinate one-hot of integer Box coordinates when
    ``one_hot`` and the Box has integer bounds, else the observation itself."""
    space = getattr(dist, "observation_space", None)
    if one_hot and isinstance(space, Box) and float(space.low).is_integer() and float(space.high).is_integer():
        size = int(space.high - space.low + 1)
        idx = (obs - float(space.low)).round().long().clamp(0, size - 1)
        return F.one_hot(idx, size).flatten(-2).float()
    return obs.float()


def step_features(
    obs: Tensor, prev_action: Tensor, prev_reward: Tensor, new_episode: Tensor, dist: TaskDistribution, one_hot: bool
) -> Tensor:
    """The token of one step, ``[obs features, one_hot(prev_action), prev_reward, new episode]``
    (..., F + A + 2); an invalid or absent previous action (-1) is the zero vector."""
    A = int(dist.action_space.n)
    valid = (prev_action >= 0) & (prev_action < A)
    action = F.one_hot(prev_action.clamp(0, A - 1).long(), A).float() * valid.unsqueeze(-1).float()
    parts = [obs_features(obs, dist, one_hot), action, prev_reward.float().unsqueeze(-1)]
    return torch.cat([*parts, new_episode.float().unsqueeze(-1)], dim=-1)


def history_features(h: Histories, dist: TaskDistribution, one_hot: bool) -> Tensor:
    """(N, T, D) tokens of whole histories: step t holds a_{t-1}, r_{t-1} of the (subsampled)
    history, as the agent sees them when it plays the same steps."""
    prev_action = torch.cat([torch.full_like(h.actions[:, :1], -1), h.actions[:, :-1]], dim=1)
    prev_reward = torch.cat([torch.zeros_like(h.rewards[:, :1]), h.rewards[:, :-1]], dim=1)
    return step_features(h.obs, prev_action, prev_reward, h.new_episode, dist, one_hot)


# ---------------------------------------------------------------------------------------------
# 2. The model
# ---------------------------------------------------------------------------------------------


class ADModel(nn.Module):
    """A causal transformer over tokens with a linear head to action logits: AD's model, and DPT's
    (:data:`classic.algos.dpt.DPTModel`).

    Args:
        input_dim: D, token features.
        num_actions: A.
        config: ``hidden_size``, ``num_layers``, ``num_heads`` and, when it has one,
            ``positional_encoding`` (default: sinusoidal positions).
        generator: initialization RNG.
    """

    def __init__(self, input_dim: int, num_actions: int, config: Any, generator=None) -> None:
        super().__init__()
        self.input_dim, self.num_actions = int(input_dim), int(num_actions)
        positions = getattr(config, "positional_encoding", True)
        self.body = CausalTransformer(
            input_dim, config.hidden_size, config.num_layers, config.num_heads, generator, positions
        )
        self.head = nn.Linear(config.hidden_size, num_actions)
        nn.init.normal_(self.head.weight, std=0.02, generator=generator)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T, D) tokens -> (B, T, A) logits of the action at each position (causal)."""
        out, _ = self.body(tokens.transpose(0, 1), None)
        return self.head(out.transpose(0, 1))


# ---------------------------------------------------------------------------------------------
# 3. Training
# ---------------------------------------------------------------------------------------------


def lr_at(config: Any, step: int) -> float:
    """The step size at ``step`` of a config with ``learning_rate`` and ``num_steps`` (AD, DPT):
    linear warm-up over 5% of the steps, then cosine decay to 10% of ``learning_rate``."""
    warm = max(1, config.num_steps // 20)
    if step < warm:
        return config.learning_rate * (step + 1) / warm
    frac = (step - warm) / max(1, config.num_steps - warm)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def sample_windows(tokens: Tensor, actions: Tensor, window: int, batch: int, generator) -> tuple[Tensor, Tensor]:
    """``batch`` random windows of ``window`` consecutive steps from random histories: tokens
    (batch, window, D) and target actions (batch, window)."""
    N, T = actions.shape
    w = min(window, T)
    rows = torch.randint(N, (batch,), generator=generator)
    starts = torch.randint(T - w + 1, (batch,), generator=generator)
    idx = starts.unsqueeze(1) + torch.arange(w)
    return tokens[rows.unsqueeze(1), idx], actions[rows.unsqueeze(1), idx]


def fit_action_model(
    model: nn.Module,
    next_batch: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    config: Any,
    generator: torch.Generator,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    desc: str = "",
) -> None:
    """Supervised training of an action model (AD, DPT): ``config.num_steps`` AdamW steps
    (:func:`lr_at`, gradient clip ``max_grad_norm``) of cross-entropy between the logits at every
    position and the targets of ``next_batch(generator)`` -> tokens (B, T, D), actions (B, T).

    Every ``checkpoint_every`` steps the model, optimizer, generator and step go to
    ``checkpoint_path``, and training resumes from there when the file exists (the same numbers as
    an uninterrupted run). ``log_fn(step, metrics)`` every 50 steps: ``losses/action_nll``,
    ``charts/action_accuracy`` (every position), ``charts/accuracy_last`` (the last position: the
    fullest context), ``charts/learning_rate``, ``charts/steps_per_s``.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    first = 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first = state["step"]
    steps = range(first, config.num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, initial=first, total=config.num_steps)
    model.train()
    start = time.perf_counter()
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step)
        with torch.no_grad():
            x, y = next_batch(generator)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        if progress:
            steps.set_postfix(nll=f"{loss.item():.3f}")
        if log_fn is not None and (step + 1) % 50 == 0:
            hit = logits.argmax(-1) == y
            log_fn(
                step + 1,
                {
                    "losses/action_nll": loss.item(),
                    "charts/action_accuracy": float(hit.float().mean()),
                    "charts/accuracy_last": float(hit[:, -1].float().mean()),
                    "charts/learning_rate": lr_at(config, step),
                    "charts/steps_per_s": (step + 1 - first) / (time.perf_counter() - start),
                },
            )
        if checkpoint_path is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.num_steps):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            save_torch({**state, "generator": generator.get_state(), "step": step + 1}, checkpoint_path)
    model.eval()


def train_ad(
    config: ADConfig,
    dist: TaskDistribution,
    source,
    log_fn: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
) -> tuple[ADModel, Tensor]:
    """Collect the source's learning histories on ``num_histories`` training tasks and train AD.

    Args:
        config: hyperparameters.
        dist: the task distribution (discrete actions, fixed-length episodes).
        source: the source algorithm, an agent that learns across a trial's episodes.
        log_fn: ``log_fn(step, metrics)`` every 50 steps (:func:`fit_action_model`).
        progress: tqdm bar.
        checkpoint_path: training state (model, optimizer, RNG, step, histories' returns) saved
            there every ``checkpoint_every`` steps and resumed from when present.

    Returns:
        ``(model, source_curve)``: the trained model and the source's mean return per kept episode
        of its histories (E,).

    Raises:
        ValueError: the distribution's actions are not discrete.
    """
    if not isinstance(dist.action_space, Discrete):
        raise ValueError(f"Algorithm Distillation needs discrete actions, got {type(dist.action_space).__name__}")
    generator = torch.Generator().manual_seed(config.seed)
    tasks = dist.sample_tasks(config.num_histories, generator)
    with torch.no_grad():
        histories = collect_histories(source, dist, tasks, config.source_episodes, config.subsample, generator)
    tokens = history_features(histories, dist, config.obs_one_hot)
    model = ADModel(tokens.shape[-1], dist.action_space.n, config, generator)
    window = config.context_episodes * dist.episode_length
    fit_action_model(
        model,
        lambda g: sample_windows(tokens, histories.actions, window, config.batch_size, g),
        config,
        generator,
        log_fn,
        progress,
        checkpoint_path,
        desc="AD",
    )
    return model, histories.episode_returns.mean(0)


# ---------------------------------------------------------------------------------------------
# 4. Acting in context, and AD on the platform
# ---------------------------------------------------------------------------------------------


class ADAgent:
    """AD at meta-test: no weight update; each action is predicted from the last W steps of the
    agent's own trial (its tokens, as in training), then sampled (or the argmax with ``greedy``).

    The window is re-encoded at every step (W forward positions per action): training windows start
    at position 0, so a sliding window cannot reuse a key/value cache.

    Args:
        model: a trained :class:`ADModel`.
        dist: the task distribution (for the tokens).
        config: ``context_episodes``, ``obs_one_hot``, ``greedy_eval``.
        name: its name in reports.
    """

    def __init__(self, model: ADModel, dist: TaskDistribution, config: ADConfig, name: str = "AD") -> None:
        self.model, self.dist, self.config, self.name = model.eval(), dist, config, name
        self.window = config.context_episodes * dist.episode_length
        self.generator = torch.Generator().manual_seed(0)

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.generator = generator
        self.tokens: Tensor | None = None  # (n, t, D), the last W - 1 steps at most

    @torch.no_grad()
    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        token = step_features(obs, prev_action, prev_reward, terminated | truncated, self.dist, self.config.obs_one_hot)
        tokens = token.unsqueeze(1) if self.tokens is None else torch.cat([self.tokens, token.unsqueeze(1)], dim=1)
        logits = self.model(tokens)[:, -1]
        self.tokens = tokens[:, -(self.window - 1) :] if self.window > 1 else None
        if self.config.greedy_eval:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(-1)


def both_ways(config, agent, agent_class):
    """``(name, agent)`` of a sequence-model learner (AD, DPT): as configured, then, with
    ``config.algo.evaluate_both``, the same model acting the other way (greedy or sampled)."""
    from dataclasses import replace

    yield config.display_name, agent
    if config.algo.evaluate_both:
        other = replace(config.algo, greedy_eval=not config.algo.greedy_eval)
        name = f"{config.display_name} ({'greedy' if other.greedy_eval else 'sampled'})"
        yield name, agent_class(agent.model, agent.dist, other, name)


def save_model(model: ADModel, path, **extra: Any) -> None:
    """Save an action model (AD's or DPT's) with its sizes and ``extra`` entries (AD: ``source_curve``)."""
    save_torch(
        {"state_dict": model.state_dict(), "input_dim": model.input_dim, "num_actions": model.num_actions, **extra},
        path,
    )


def load_model(path, config: ActionModelConfig) -> tuple[ADModel, dict]:
    """The model saved by :func:`save_model` (in eval mode) and its ``extra`` entries."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = ADModel(ckpt.pop("input_dim"), ckpt.pop("num_actions"), config)
    model.load_state_dict(ckpt.pop("state_dict"))
    return model.eval(), ckpt


def _default_source():
    return AGENTS.get("Q-learning")()


@LEARNERS.register("ad")
@dataclass
class ADLearnerConfig:
    """Algorithm Distillation as a learner of a ``kind: compare`` recipe
    (``learners: [{name: ad, source: {name: Q-learning}, algo: {...}}]``).

    Attributes:
        name: the registry name.
        label: its name in reports (default "AD (<source>)").
        source: the source algorithm, any registered baseline by name with its hyperparameters
            (e.g. ``{name: UCB1}``, ``{name: Q-learning, alpha: 0.5}``); not tuned.
        algo: :class:`ADConfig`.
    """

    name: str = "ad"
    label: str | None = None
    source: BaselineRef = field(default_factory=_default_source)
    algo: ADConfig = field(default_factory=ADConfig)

    @property
    def display_name(self) -> str:
        return self.label or f"AD ({self.source.display_name})"

    @property
    def stage(self) -> str:
        """The stage folder, one per source ("ad_Q-learning")."""
        return f"ad_{self.source.display_name}"

    def learner(self) -> "ADLearner":
        return ADLearner()


class ADLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of AD: histories + training in the stage folder
    (``model.pt``; ``training_state.pt`` to resume); the report gets the source's learning curve."""

    config_class = ADLearnerConfig

    def train(self, config: ADLearnerConfig, dist, protocol, run: StageRun) -> Path:
        path = Path(run.dir) / "model.pt"
        if path.exists():
            return path
        state_path = path.parent / "training_state.pt"
        source = config.source.make(dist, config.algo.source_episodes)
        log_fn = run.log_fn(resuming=state_path.exists())
        model, curve = train_ad(config.algo, dist, source, log_fn, run.progress, state_path)
        save_model(model, path, source_curve=curve)
        return path

    def agent(self, config: ADLearnerConfig, checkpoint: Path, dist) -> ADAgent:
        return ADAgent(load_model(checkpoint, config.algo)[0], dist, config.algo, config.display_name)

    def agents(self, config: ADLearnerConfig, checkpoint: Path, dist):
        """The agent as configured, and with ``evaluate_both`` the same model acting the other way."""
        yield from both_ways(config, self.agent(config, checkpoint, dist), ADAgent)

    def report(self, config: ADLearnerConfig, checkpoint, results: dict, dist, protocol) -> tuple[list[str], dict]:
        """A note: the source's learning curve on the training tasks (mean return of the kept
        episodes of its histories) beside AD's in-context curve on the held-out tasks."""
        curve = load_model(checkpoint, config.algo)[1]["source_curve"]
        k, name = config.algo.subsample, config.display_name
        ad = results[name].episode_returns.double().mean(0) if name in results else None

        def fmt(xs) -> str:
            shown = ", ".join(f"{float(x):.2f}" for x in xs[:12])
            if len(xs) <= 12:
                return shown
            return f"{shown}, ... {float(xs[-1]):.2f} (episode {len(xs)}; all in results.json)"

        line = (
            f"{name}: its source {config.source.display_name}'s mean return per episode of its "
            f"{config.algo.num_histories} learning histories on training tasks (episodes 1, {1 + k}, {1 + 2 * k}, ... "
            f"of each run) was {fmt(curve)}"
        )
        if ad is not None:
            line += f"; {name} in context on the held-out tasks (no weight update): {fmt(ad)}"
        lines = [line + "."]
        return lines, {"source_curve": {name: [float(x) for x in curve]}}
