"""The protocols every layer of the house is written against: spaces, task distributions, agents
and meta-learners.

A *task distribution* is functional and batched (gymnax style, in torch): a task is an explicit
tensor container passed to ``reset`` and ``step``, never hidden in the environment object, and
every tensor leads with the batch dimension ``n`` (number of tasks played at once). A *trial* is
``episodes_per_trial`` episodes on one task with the agent's memory carried across episode
boundaries (RL², Duan et al. 2016, arXiv 1611.02779). The one trial loop that plays agents on
task distributions is :func:`classic.rollout.rollout`.

Spaces are two small classes, :class:`Discrete` and :class:`Box`, with the batched operations
the trial loop and the learners need (validity mask, clipping, encoding of a previous action);
gymnasium's spaces are numpy-based and per-environment, ours act on (n, ...) torch tensors.

Example:
    >>> space = Box(low=-0.1, high=0.1, shape=(2,))
    >>> space.clip(torch.tensor([[0.5, -0.5]]))
    tensor([[ 0.1000, -0.1000]])
    >>> Discrete(5).encode(torch.tensor([2, -1]))  # one-hot; -1 (no/invalid action) is zeros
    tensor([[0., 0., 1., 0., 0.],
            [0., 0., 0., 0., 0.]])
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Spaces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Discrete:
    """``n`` discrete actions ``0 .. n-1``; a batch of actions is an (n_tasks,) long tensor.

    ``-1`` is the invalid action (an LLM's unparseable reply): environments score it, never raise.
    """

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Discrete(n) needs an int n >= 1, got {self.n!r}")

    shape: ClassVar[tuple[int, ...]] = ()
    dtype: ClassVar[torch.dtype] = torch.long

    @property
    def encoded_dim(self) -> int:
        """Size of :meth:`encode`'s last dimension (the one-hot width ``n``)."""
        return self.n

    def contains(self, action: Tensor) -> Tensor:
        """(...) bool: which actions index one of the ``n`` choices."""
        return (action >= 0) & (action < self.n)

    def encode(self, action: Tensor) -> Tensor:
        """(..., n) float one-hot of (...) long actions; invalid actions (-1, out of range) encode as zeros."""
        ok = self.contains(action)
        one_hot = torch.nn.functional.one_hot(action.clamp(0, self.n - 1).long(), self.n).float()
        return one_hot * ok.unsqueeze(-1).float()

    def empty(self, num_tasks: int, device: torch.device | str | None = None) -> Tensor:
        """(num_tasks,) long ``-1``: the previous action at the start of a trial."""
        return torch.full((num_tasks,), -1, dtype=torch.long, device=device)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """(num_tasks,) long uniform actions."""
        return torch.randint(self.n, (num_tasks,), generator=generator, device=generator.device)


@dataclass(frozen=True)
class Box:
    """Continuous actions or observations in ``[low, high]`` of shape ``shape``.

    A batch is an (n_tasks, *shape) float tensor. Environments clip actions into the box.

    Args:
        low, high: bounds, one number for every coordinate.
        shape: the event shape, e.g. ``(2,)`` for a 2-D velocity.
    """

    low: float
    high: float
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.low <= self.high:
            raise ValueError(f"Box needs low <= high, got low={self.low}, high={self.high}")

    dtype: ClassVar[torch.dtype] = torch.float32

    @property
    def encoded_dim(self) -> int:
        """Size of :meth:`encode`'s last dimension (the flattened event size)."""
        return math.prod(self.shape)

    def contains(self, action: Tensor) -> Tensor:
        """(n,) bool: finite and inside the box in every coordinate."""
        flat = action.reshape(action.shape[0], -1) if action.dim() > 1 else action.reshape(-1, 1)
        return (torch.isfinite(flat) & (flat >= self.low) & (flat <= self.high)).all(dim=-1)

    def clip(self, action: Tensor) -> Tensor:
        """``action`` clipped into ``[low, high]`` (NaN becomes 0)."""
        return torch.nan_to_num(action.float(), nan=0.0).clamp(self.low, self.high)

    def encode(self, action: Tensor) -> Tensor:
        """(..., prod(shape)) float: the flattened action."""
        return action.float().reshape(*action.shape[: action.dim() - len(self.shape)], self.encoded_dim)

    def empty(self, num_tasks: int, device: torch.device | str | None = None) -> Tensor:
        """(num_tasks, *shape) zeros: the previous action at the start of a trial."""
        return torch.zeros((num_tasks, *self.shape), device=device)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """(num_tasks, *shape) uniform points of the box."""
        u = torch.rand((num_tasks, *self.shape), generator=generator, device=generator.device)
        return self.low + (self.high - self.low) * u


Space = Discrete | Box


# ---------------------------------------------------------------------------------------------
# Task distributions
# ---------------------------------------------------------------------------------------------


class Step(NamedTuple):
    """Result of one environment step; every field leads with ``n``.

    Attributes:
        obs: (n, obs_dim) float observation after the step.
        reward: (n,) float reward of the step.
        terminated: (n,) bool, the episode reached a terminal state.
        truncated: (n,) bool, the episode hit its time limit (not terminal).
        state: the environment state after the step (distribution-specific).
    """

    obs: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    state: Any


class TaskDistribution(ABC):
    """A batched, functional distribution over tasks (MDPs).

    Subclasses set ``episode_length`` and the two spaces and implement ``sample_tasks``,
    ``reset`` and ``step``. The oracle methods below have defaults; a distribution overrides the
    ones it can compute, and the evaluator and the reports use what is there (no ``hasattr``
    probes).

    Attributes:
        episode_length: H, the most steps an episode can take (``step`` truncates at H).
        action_space: :class:`Discrete` or :class:`Box`.
        observation_space: a :class:`Box` of shape ``(obs_dim,)``.
    """

    episode_length: int
    action_space: Space
    observation_space: Box

    @property
    def obs_dim(self) -> int:
        """Size of the (flat) observation vector."""
        return self.observation_space.encoded_dim

    @abstractmethod
    def sample_tasks(self, n: int, generator: torch.Generator) -> Any:
        """Draw ``n`` tasks; returns a NamedTuple whose tensors lead with ``n``."""

    @abstractmethod
    def reset(self, tasks: Any, generator: torch.Generator) -> tuple[Any, Tensor]:
        """Start an episode on every task; returns ``(state, obs)`` with obs (n, obs_dim).

        The state is a NamedTuple of tensors leading with ``n`` (the trial loop resets the tasks
        whose episode ended by selecting rows of a fresh state).
        """

    @abstractmethod
    def step(self, tasks: Any, state: Any, action: Tensor, generator: torch.Generator) -> Step:
        """Take ``action`` ((n,) long for Discrete, (n, *shape) float for Box).

        Invalid discrete actions (< 0 or >= n) are scored, never raised; Box actions are clipped.
        """

    # ---- oracle methods: defaults say "not known" -----------------------------------------
    def valid(self, action: Tensor) -> Tensor:
        """(n,) bool, whether each action is valid in the action space."""
        return self.action_space.contains(action)

    def mean_reward(self, tasks: Any, state: Any, action: Tensor) -> Tensor | None:
        """(n,) expected reward of ``action`` in ``state`` (for pseudo-regret), or None when unknown.

        Regret is the expected (pseudo-)regret of Lattimore & Szepesvári (2020, Ch. 4) when this is
        known, and the realized regret otherwise.
        """
        return None

    def optimal_episode_return(self, tasks: Any) -> Tensor | None:
        """(n,) expected return per episode of the optimal policy that knows the task (the oracle),
        or None when the distribution cannot compute it."""
        return None

    def optimal_action(self, tasks: Any, state: Any) -> Tensor | None:
        """(n,) an action of the optimal policy that knows the task, in ``state`` (the labels of
        DPT's pretraining, arXiv 2306.14892), or None when the distribution does not define it."""
        return None

    def sample_states(self, tasks: Any, generator: torch.Generator) -> tuple[Any, Tensor] | None:
        """``(state, obs)`` of a state drawn uniformly from each task's state space, a step from
        which is a valid step of an episode (DPT's in-context datasets and query states), or None
        when the distribution does not define it."""
        return None

    def episode_success(self, episode_returns: Tensor) -> Tensor | None:
        """(N, E) bool, which episodes succeeded, from their returns (N, E) (e.g. reached the goal
        region of a sparse-reward task), or None when the task has no success criterion; the
        reports show the success rate per episode where it is defined."""
        return None

    def bayes_optimal_episode_returns(self, episodes_per_trial: int) -> Tensor | None:
        """(episodes_per_trial,) expected return of each episode of a trial under the Bayes-optimal
        policy (the limit of any agent that does not know the task), or None when not computed."""
        return None


# ---------------------------------------------------------------------------------------------
# Agents
# ---------------------------------------------------------------------------------------------


class ActOutput(NamedTuple):
    """What ``Agent.act`` may return instead of a bare action tensor.

    Attributes:
        action: (n,) long or (n, *shape) float.
        info: per-step tensors (each leading with ``n``) the trial loop stacks time-major into
            ``Trajectory.info`` (e.g. a learner's log-probabilities and value estimates).
    """

    action: Tensor
    info: dict[str, Tensor]


@runtime_checkable
class Agent(Protocol):
    """A batched agent acting in ``num_tasks`` trials at once (the RL² interface, arXiv 1611.02779).

    ``reset`` starts a trial (memory cleared); ``act`` is called once per environment step with
    what happened at the previous step, so memory persists across episode boundaries.

    Args of ``act``:
        obs: (n, obs_dim) float observation.
        prev_action: the previous action, (n,) long (-1 at the first step of a trial and after an
            invalid action) or (n, *shape) float for Box actions (zeros at the first step).
        prev_reward: (n,) float, previous reward (0 at the first step).
        terminated: (n,) bool, the previous step ended its episode in a terminal state.
        truncated: (n,) bool, the previous step ended its episode at the time limit; True at the
            first step of a trial (the boundary before the first episode), so
            ``terminated | truncated`` is "this step starts an episode".

    Returns:
        The actions, or an :class:`ActOutput` (actions plus per-step info).

    Attributes:
        name: the agent's name in reports.
        adapts_by_gradient: True for agents that take gradient steps at test time (MAML): the
            evaluator plays them through :func:`classic.rollout.rollout_adapting`, on
            ``episodes_per_adaptation`` (K) copies of each task, one episode at a time, calling
            their ``adapt(trajectory)`` between episodes with autograd enabled. Agents without
            it run under ``no_grad``, one trial per task.
    """

    name: str

    def reset(self, num_tasks: int, generator: torch.Generator) -> None: ...

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor | ActOutput: ...


def adapts_by_gradient(agent: Agent) -> bool:
    """Whether the evaluator must run ``agent`` with gradients enabled (its ``adapts_by_gradient``)."""
    return bool(getattr(agent, "adapts_by_gradient", False))


# ---------------------------------------------------------------------------------------------
# Meta-learners
# ---------------------------------------------------------------------------------------------


@dataclass
class StageRun:
    """What a learner's ``train`` gets from the experiment running it.

    Attributes:
        dir: the learner's stage folder, already opened with the fingerprint of the task and the
            learner's config (:func:`classic.files.open_stage`): what is in it was made with the
            same settings, so the learner resumes from it or reuses its result.
        metrics: the run's metrics log (:class:`classic.metrics.MetricsLogger`: ``log(step, scalars)``
            writes metrics.jsonl and TensorBoard, ``last_step(prefix)``), or None.
        progress: show progress bars.
        seed: the experiment's seed.
        task: the task distribution's config (the recipe's ``task``), for learners that need more
            than the distribution object (e.g. its text rendering, chosen by registry name).
    """

    dir: Any
    metrics: Any = None
    progress: bool = False
    seed: int = 0
    task: Any = None

    def log_fn(self, resuming: bool):
        """``log_fn(step, metrics)`` for a trainer: writes ``metrics`` under ``"<stage folder>/"``
        (e.g. ``maml/charts/...``) to the run's metrics log; when ``resuming`` (a training state is
        in the folder), steps up to the last one already logged are skipped. None without a log."""
        if self.metrics is None:
            return None
        prefix = f"{os.path.basename(os.fspath(self.dir))}/"
        logged = self.metrics.last_step(prefix) if resuming else 0
        metrics_log = self.metrics

        def log_fn(step, metrics):
            if step > logged:
                metrics_log.log(step, {f"{prefix}{k}": v for k, v in metrics.items()})

        return log_fn


class MetaLearner:
    """A meta-learner on the platform: trained on tasks from a distribution (the outer loop), it
    yields an :class:`Agent` that adapts to a new task within a trial (the inner loop).

    Subclasses implement :meth:`train` and :meth:`agent`; the other methods are hooks with
    defaults that fit a learner with one trained policy.

    Attributes:
        config_class: the dataclass of its recipe section (with a ``name`` field).
        trains_on_every_rank: under a multi-process launch (``accelerate launch``) every rank
            trains it (a distributed trainer), before the main process runs anything else; other
            learners train on the main process only.
    """

    config_class: type
    trains_on_every_rank: bool = False

    def train(self, config: Any, dist: TaskDistribution, protocol: Any, run: StageRun) -> Any:
        """Meta-train on ``dist`` (``protocol`` gives ``episodes_per_trial``); ``run`` is the stage
        folder (where it resumes from), the metrics log and progress. Returns what :meth:`agent`
        needs, usually the path of the saved policy."""
        raise NotImplementedError(f"{type(self).__name__} must implement train")

    def agent(self, config: Any, checkpoint: Any, dist: TaskDistribution) -> Agent:
        """The trained learner behind the :class:`Agent` protocol."""
        raise NotImplementedError(f"{type(self).__name__} must implement agent")

    def agents(self, config: Any, checkpoint: Any, dist: TaskDistribution) -> Iterator[tuple[str, Agent]]:
        """Every agent the learner reports, as (name in reports, agent) pairs, built one at a time
        (e.g. an LLM after SFT and after SFT + GRPO, MAML after 0..3 gradient steps); default: the
        one :meth:`agent`."""
        yield config.display_name, self.agent(config, checkpoint, dist)

    def stage_fingerprint(self, config: Any, task: Any) -> dict | None:
        """What the stage folder's content depends on (it is redone when this changes); None: the
        learner settles sub-stages of its folder itself (their own fingerprints). Dataclass values
        are written as their recipe mappings."""
        return {"task": task, "learner": config}

    def evaluation_batch_size(self, config: Any, protocol: Any) -> int | None:
        """Tasks its agents play at once at evaluation (default: the protocol's)."""
        return protocol.batch_size

    def report(
        self, config: Any, checkpoint: Any, results: dict, dist: TaskDistribution, protocol: Any
    ) -> tuple[list[str], dict]:
        """Lines for the report and entries for ``results.json`` once every agent is evaluated
        (``results``: name -> TrialResult of all agents); default: none."""
        return [], {}

    def dry_run(self, config: Any, task: Any, protocol: Any, stage_dir: Any) -> dict | None:
        """What ``mrl run --dry-run`` shows of its training settings, resolved without training or
        loading weights (e.g. the trainers' arguments); default: nothing."""
        return None
