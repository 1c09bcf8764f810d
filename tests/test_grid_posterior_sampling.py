"""Posterior sampling over a grid's goal cell: PSRL and a Bayes-optimal DPT's per-step sampling,
checked against exact probabilities enumerated by a slow loop, and the known-goal invariant."""

from __future__ import annotations

import itertools

import pytest
import torch

from classic.agents.grid_posterior_sampling import GridPosteriorSamplingAgent
from classic.envs.bandit import BernoulliBandit
from classic.envs.darkroom import DarkRoomConfig
from classic.envs.grid import GridState, GridTasks
from classic.registry import AGENTS
from classic.rollout import rollout

MODES = [("episode", "episodes"), ("step", "episodes"), ("episode", "steps"), ("step", "steps")]


def _first_episode_find_rate(sampling: str, n: int = 20000) -> float:
    dist = DarkRoomConfig(size=3, episode_length=2, episodes_per_trial=1).make()
    g = torch.Generator().manual_seed(0)
    traj = rollout(GridPosteriorSamplingAgent(dist, sampling), dist, dist.sample_tasks(n, g), 1, g)
    return float((traj.rewards.sum(0) > 0).float().mean())


def _oracle_cell(dist, pos: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    state = GridState(pos=torch.tensor([pos]), t=torch.zeros(1, dtype=torch.long))
    a = int(dist.optimal_action(GridTasks(goal=torch.tensor([target])), state))
    dx, dy = dist.moves[a].tolist()
    return (pos[0] + dx, pos[1] + dy)


def test_psrl_and_per_step_sampling_find_the_goal_at_the_enumerated_rates():
    # 3x3 room, start (1, 1), 8 goals, 2-step episodes, prior uniform over the 8 goal cells.
    dist = DarkRoomConfig(size=3, episode_length=2).make()
    goals = [tuple(c) for c in dist.goals.tolist()]
    assert len(goals) == 8
    psrl = per_step = 0.0
    for goal, t1, t2 in itertools.product(goals, goals, goals):
        # PSRL: one target for both steps; per-step: a fresh target each step (the posterior is
        # the prior throughout the first episode under context "episodes").
        a = _oracle_cell(dist, (1, 1), t1)
        psrl += (goal in (a, _oracle_cell(dist, a, t1))) / 8**3
        per_step += (goal in (a, _oracle_cell(dist, a, t2))) / 8**3
    assert psrl == pytest.approx(12 / 64)  # 4 neighbours (1 cell each), 4 diagonals (2 cells each)
    assert abs(_first_episode_find_rate("episode") - psrl) < 0.012  # 4 standard errors at n = 20000
    assert abs(_first_episode_find_rate("step") - per_step) < 0.012


@pytest.mark.parametrize("sampling,context", MODES)
def test_every_episode_after_the_goal_paid_is_the_oracles(sampling, context):
    dist = DarkRoomConfig().make()
    agent = AGENTS.get("Posterior sampling")(sampling=sampling, context=context).make(dist, 10)
    g = torch.Generator().manual_seed(1)
    tasks = dist.sample_tasks(128, g)
    returns = rollout(agent, dist, tasks, 10, g).rewards.T.reshape(128, 10, 20).sum(-1)
    oracle = dist.optimal_episode_return(tasks)
    found = returns > 0
    assert found.any(-1).float().mean() > 0.2  # PSRL finds ~40% of goals in 10 episodes of 20 steps
    first = found.float().argmax(-1)
    for b in torch.nonzero(found.any(-1)).squeeze(-1).tolist():
        later = returns[b, int(first[b]) + 1 :]
        assert torch.equal(later, oracle[b].expand_as(later))


def test_targets_come_from_the_prior_and_never_from_ruled_out_cells():
    dist = DarkRoomConfig(goal_split="test").make()
    test_cells = {tuple(c) for c in dist.goals.tolist()}
    g = torch.Generator().manual_seed(2)
    tasks = dist.sample_tasks(256, g)
    for prior in ("grid", "tasks"):
        agent = GridPosteriorSamplingAgent(dist, "episode", "steps", prior)
        traj = rollout(agent, dist, tasks, 1, g)
        assert traj.rewards.shape[0] == 20
    # prior "tasks": every first target is one of the distribution's (held-out) goal cells.
    agent = GridPosteriorSamplingAgent(dist, "step", "episodes", "tasks")
    agent.reset(256, g)
    state, obs = dist.reset(tasks, g)
    none = torch.zeros(256, dtype=torch.long)
    agent.act(obs, none, none.float(), none.bool(), torch.ones(256, dtype=torch.bool))
    assert {tuple(c) for c in agent.target.tolist()} <= test_cells
    # Under context "steps" a cell the agent stood on without reward is never the target again.
    agent = GridPosteriorSamplingAgent(dist, "episode", "steps")
    agent.reset(256, g)
    state, obs = dist.reset(tasks, g)
    prev_a, prev_r = none, none.float()
    ruled_out = torch.zeros(256, 81, dtype=torch.bool)
    for t in range(20):
        action = agent.act(obs, prev_a, prev_r, none.bool(), torch.full((256,), t == 0))
        idx = agent.target[:, 0] * 9 + agent.target[:, 1]
        assert not ruled_out[torch.arange(256), idx].any()
        step = dist.step(tasks, state, action, g)
        cell = step.state.pos[:, 0] * 9 + step.state.pos[:, 1]
        ruled_out[torch.arange(256), cell] |= step.reward == 0
        state, obs, prev_a, prev_r = step.state, step.obs, action, step.reward


def test_bad_settings_and_tasks_raise():
    dist = DarkRoomConfig().make()
    with pytest.raises(ValueError, match="sampling"):
        GridPosteriorSamplingAgent(dist, sampling="trial")
    with pytest.raises(ValueError, match="prior"):
        GridPosteriorSamplingAgent(dist, prior="uniform")
    with pytest.raises(ValueError, match="grid"):
        AGENTS.get("Posterior sampling")().make(BernoulliBandit(3), 10)
