"""Random tabular MDPs as in RL² (Duan et al. 2016, arXiv 1611.02779, Sec. 4.2, Table 2).

A task is a finite MDP with ``S`` states and ``A`` actions: mean rewards ``R(s, a) ~ N(1, 1)``
and transitions ``P(. | s, a) ~ Dirichlet(1, ..., 1)`` (flat), drawn i.i.d. per (s, a). Every
episode lasts ``H`` steps and starts in state 0; the observed reward of a step is
``R(s, a) + N(0, 1)`` noise. A trial is ``episodes_per_trial`` episodes on one task (the paper
uses S=10, A=5, H=10 and n in {10, 25, 50, 75, 100}). Invalid actions (< 0 or >= A; an LLM's
unparseable reply is mapped to ``-1``) earn reward 0 and leave the agent where it is.

The observation is the one-hot encoding of the current state, shape (n, S).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from classic.core import Box, Discrete, Step, TaskDistribution
from classic.registry import TASKS


class MDPTasks(NamedTuple):
    """A batch of tabular MDP tasks.

    Attributes:
        mean_rewards: (n, S, A) float expected immediate reward R(s, a).
        transitions: (n, S, A, S) float P(s' | s, a); the last axis sums to 1.
    """

    mean_rewards: Tensor
    transitions: Tensor


class MDPState(NamedTuple):
    """Environment state of a batch of tabular MDPs.

    Attributes:
        state: (n,) long current state in [0, S).
        t: (n,) long steps already taken in the current episode, in [0, H].
    """

    state: Tensor
    t: Tensor


@TASKS.register("tabular_mdp")
@dataclass(frozen=True)
class TabularMDPConfig:
    """Task configuration of the random tabular MDP distribution (defaults: RL² Table 2).

    Attributes:
        num_states: S, number of states (>= 1).
        num_actions: A, number of actions (>= 2).
        episode_length: H, steps per episode (>= 1).
        episodes_per_trial: n, episodes per trial (>= 1).
        name: the registry name (``task: {name: tabular_mdp}`` in recipes).

    Raises:
        ValueError: naming the offending field, when a value is out of range.
    """

    num_states: int = 10
    num_actions: int = 5
    episode_length: int = 10
    episodes_per_trial: int = 10
    name: str = "tabular_mdp"

    def __post_init__(self) -> None:
        if self.num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {self.num_states}")
        if self.num_actions < 2:
            raise ValueError(f"num_actions must be >= 2, got {self.num_actions}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        if self.episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial must be >= 1, got {self.episodes_per_trial}")

    def describe(self, short: bool = False) -> str:
        """One line for reports, e.g. "tabular MDP, S=10 states, A=5 actions, H=10 steps, n=25 episodes per trial"."""
        if short:
            return f"S={self.num_states}, A={self.num_actions}, H={self.episode_length}, n={self.episodes_per_trial}"
        return (
            f"tabular MDP, S={self.num_states} states, A={self.num_actions} actions, H={self.episode_length} "
            f"steps per episode, n={self.episodes_per_trial} episodes per trial"
        )

    def make(self) -> "TabularMDP":
        return TabularMDP(num_states=self.num_states, num_actions=self.num_actions, episode_length=self.episode_length)


class TabularMDP(TaskDistribution):
    """Batched random tabular MDP task distribution (RL², arXiv 1611.02779, Sec. 4.2).

    Args:
        num_states: S, number of states (>= 1).
        num_actions: A, number of actions (>= 2).
        episode_length: H, steps per episode (>= 1).

    Raises:
        ValueError: when an argument is out of range (the message names it).

    Rewards are unitless; returns are sums of H rewards. Observations are (n, S) one-hot
    floats of the current state. All randomness comes from the ``torch.Generator`` passed in.

    Example:
        >>> dist = TabularMDP(num_states=10, num_actions=5, episode_length=10)
        >>> g = torch.Generator().manual_seed(0)
        >>> tasks = dist.sample_tasks(4, g)
        >>> state, obs = dist.reset(tasks, g)  # obs (4, 10), all one-hot of state 0
        >>> step = dist.step(tasks, state, torch.tensor([0, 1, 4, -1]), g)
        >>> step.reward.shape
        torch.Size([4])
        >>> dist.optimal_episode_return(tasks).shape  # V_0(0) by value iteration
        torch.Size([4])
    """

    def __init__(self, num_states: int = 10, num_actions: int = 5, episode_length: int = 10) -> None:
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        if num_actions < 2:
            raise ValueError(f"num_actions must be >= 2, got {num_actions}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self.episode_length = int(episode_length)
        self.action_space = Discrete(self.num_actions)
        self.observation_space = Box(0.0, 1.0, (self.num_states,))

    # ----------------------------------------------------------------------------- sampling
    def sample_tasks(self, n: int, generator: torch.Generator) -> MDPTasks:
        """Draw ``n`` tasks on the generator's device.

        Returns:
            MDPTasks with mean_rewards (n, S, A) ~ N(1, 1) and transitions (n, S, A, S) ~ flat
            Dirichlet, sampled as normalized Exponential(1) (= Gamma(1)) variates ``-log(1 - U)``.
        """
        S, A, dev = self.num_states, self.num_actions, generator.device
        mean_rewards = 1.0 + torch.randn(n, S, A, generator=generator, device=dev)
        u = torch.rand(n, S, A, S, generator=generator, device=dev)
        gam = -torch.log1p(-u)  # Exponential(1); u in [0, 1) so 1 - u in (0, 1]
        gam = gam + torch.finfo(gam.dtype).tiny  # guard the (measure-zero) all-zero row
        transitions = gam / gam.sum(dim=-1, keepdim=True)
        return MDPTasks(mean_rewards=mean_rewards, transitions=transitions)

    # ------------------------------------------------------------------------------ dynamics
    def _one_hot(self, state: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(state, self.num_states).float()

    def reset(self, tasks: MDPTasks, generator: torch.Generator | None = None) -> tuple[MDPState, Tensor]:
        """Start an episode in state 0 on every task.

        Returns:
            (MDPState with state = t = 0, obs (n, S) one-hot of state 0). Uses no randomness.
        """
        n, dev = tasks.mean_rewards.shape[0], tasks.mean_rewards.device
        zeros = torch.zeros(n, dtype=torch.long, device=dev)
        return MDPState(state=zeros, t=zeros.clone()), self._one_hot(zeros)

    def valid(self, action: Tensor) -> Tensor:
        """(n,) bool, whether each action lies in [0, A)."""
        return (action >= 0) & (action < self.num_actions)

    def mean_reward(self, tasks: MDPTasks, state: MDPState, action: Tensor) -> Tensor:
        """(n,) expected immediate reward R(s, a) of ``action`` in the current state (0 if invalid)."""
        ok = self.valid(action)
        n = action.shape[0]
        idx = torch.arange(n, device=action.device)
        r = tasks.mean_rewards[idx, state.state, action.clamp(0, self.num_actions - 1)]
        return torch.where(ok, r, torch.zeros_like(r))

    def step(self, tasks: MDPTasks, state: MDPState, action: Tensor, generator: torch.Generator) -> Step:
        """Take ``action`` (n,) long in every task.

        Returns:
            Step with obs (n, S) one-hot of the next state, reward (n,) = R(s, a) + N(0, 1)
            (exactly 0 for an invalid action, which also leaves the state unchanged),
            terminated all False, truncated True where the new step count t equals H.
        """
        ok = self.valid(action)
        n = action.shape[0]
        idx = torch.arange(n, device=action.device)
        a = action.clamp(0, self.num_actions - 1)
        mean = self.mean_reward(tasks, state, action)
        noise = torch.randn(n, generator=generator, device=mean.device)
        reward = torch.where(ok, mean + noise, torch.zeros_like(mean))
        probs = tasks.transitions[idx, state.state, a]  # (n, S)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(ok, nxt, state.state)
        t = state.t + 1
        return Step(
            obs=self._one_hot(nxt),
            reward=reward,
            terminated=torch.zeros(n, dtype=torch.bool, device=mean.device),
            truncated=t >= self.episode_length,
            state=MDPState(state=nxt, t=t),
        )

    # --------------------------------------------------------------------------- planning
    def _q_values(self, tasks: MDPTasks) -> Tensor:
        """(n, H, S, A) optimal finite-horizon Q_h(s, a) by backward induction."""
        return finite_horizon_q(tasks.mean_rewards, tasks.transitions, self.episode_length)

    def optimal_values(self, tasks: MDPTasks) -> Tensor:
        """(n, H+1, S) optimal values V_h(s) with V_H = 0 and
        V_h(s) = max_a [R(s, a) + sum_s' P(s' | s, a) V_{h+1}(s')] (finite-horizon value iteration)."""
        Q = self._q_values(tasks)
        n, H, S, _ = Q.shape
        V = Q.new_zeros(n, H + 1, S)
        V[:, :H] = Q.max(dim=-1).values
        return V

    def optimal_policy(self, tasks: MDPTasks) -> Tensor:
        """(n, H, S) long optimal action argmax_a Q_h(s, a) (ties: lowest index)."""
        return self._q_values(tasks).argmax(dim=-1)

    def optimal_episode_return(self, tasks: MDPTasks) -> Tensor:
        """(n,) expected return V_0(0) of the optimal policy that knows the task, per episode."""
        return self.optimal_values(tasks)[:, 0, 0]


def finite_horizon_q(R: Tensor, P: Tensor, horizon: int) -> Tensor:
    """Optimal finite-horizon Q-values of the MDP (R, P) by backward induction (Puterman 1994,
    "Markov Decision Processes", Sec. 4.5): V_H = 0, Q_h = R + P V_{h+1}, V_h = max_a Q_h.

    Args:
        R: (m, S, A) mean rewards.
        P: (m, S, A, S) transition probabilities (rows need not be normalized; used as given).
        horizon: H >= 1.

    Returns:
        (m, H, S, A) Q_h(s, a); what ``TabularMDP`` plans with (its regret reference).

    Raises:
        ValueError: if ``horizon < 1``.
    """
    return backward_induction(lambda v_next: R + torch.einsum("nsat,nt->nsa", P, v_next), horizon, R)


def backward_induction(backup: Callable[[Tensor], Tensor], horizon: int, like: Tensor) -> Tensor:
    """Finite-horizon backward induction with any one-step backup (Puterman 1994, Sec. 4.5):
    V_H = 0, Q_h = backup(V_{h+1}), V_h = max_a Q_h. The plain, the optimistic-sampling (OPSRL)
    and the extended (UCRL2) planners differ only in ``backup``.

    Args:
        backup: maps V_{h+1} (m, S) to Q_h (m, S, A).
        horizon: H >= 1.
        like: a tensor whose first dim is m, last two dims (S, A), dtype and device are used.

    Returns:
        (m, H, S, A) Q_h(s, a) for h = 0 .. H-1.

    Raises:
        ValueError: if ``horizon < 1``.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    m, S, A = like.shape[0], like.shape[-2], like.shape[-1]
    Q = like.new_zeros(m, horizon, S, A)
    v_next = like.new_zeros(m, S)
    for h in range(horizon - 1, -1, -1):
        q = backup(v_next)
        Q[:, h] = q
        v_next = q.max(dim=-1).values
    return Q
