"""Tabular Q-learning (AD's source), Algorithm Distillation and the Decision-Pretrained Transformer:
updates against a hand computation, the dataset builders against the source run, labels against
the oracle, causality, tiny trainings (parameters change, same seed, resume) and compare runs."""

from __future__ import annotations

import json

import pytest
import torch

from classic.agents.q_learning import QLearningAgent, QLearningConfig, num_states, state_index
from classic.algos.ad import (
    ADAgent,
    ADConfig,
    ADModel,
    collect_histories,
    history_features,
    step_features,
    train_ad,
)
from classic.algos.dpt import DPTAgent, DPTConfig, DPTModel, pretraining_batch, query_features, train_dpt
from classic.envs.bandit import BernoulliBandit
from classic.envs.darkroom import DarkRoomConfig
from classic.evaluate import run_trials
from classic.rollout import rollout

SMALL_ROOM = dict(size=4, episode_length=6)
AD_TINY = dict(
    num_histories=16, source_episodes=6, subsample=2, context_episodes=2, hidden_size=16, num_layers=1,
    num_heads=2, num_steps=4, batch_size=4, checkpoint_every=2,
)  # fmt: skip
DPT_TINY = dict(
    context_size=8, hidden_size=16, num_layers=1, num_heads=2, num_steps=4, batch_size=4, checkpoint_every=2
)


def _room():
    return DarkRoomConfig(**SMALL_ROOM).make()


def _baseline(name: str, **params):
    from classic.registry import AGENTS

    return AGENTS.get(name)(**params)


# --- Q-learning -------------------------------------------------------------------------------


def test_state_index_numbers_dark_room_cells_and_one_hot_states():
    dist = _room()
    assert num_states(dist) == 16
    obs = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 3.0]])
    assert state_index(obs, dist).tolist() == [0, 6, 15]
    from classic.envs.tabular_mdp import TabularMDPConfig

    mdp = TabularMDPConfig(num_states=4).make()
    assert num_states(mdp) == 4
    assert state_index(torch.eye(4)[[2, 0]], mdp).tolist() == [2, 0]


def test_q_learning_applies_watkins_update_and_does_not_bootstrap_across_episodes():
    dist = _room()
    agent = QLearningAgent(dist, alpha=0.5, gamma=0.9, epsilon=0.0, q_init=1.0)
    agent.reset(1, torch.Generator().manual_seed(0))
    no = torch.zeros(1, dtype=torch.bool)
    a0 = agent.act(torch.tensor([[2.0, 2.0]]), torch.tensor([-1]), torch.zeros(1), no, ~no)
    s0 = 2 * 4 + 2
    # Reward 0 then the next state (1, 2): Q[s0, a0] <- 1 + 0.5 * (0 + 0.9 * 1 - 1) = 0.95.
    a1 = agent.act(torch.tensor([[1.0, 2.0]]), a0, torch.zeros(1), no, no)
    assert agent.q[0, s0, a0].item() == pytest.approx(0.95)
    # The episode ends (truncated): the next update does not bootstrap: 1 + 0.5 * (1 - 1) = 1.0 -> 1.
    agent.act(torch.tensor([[2.0, 2.0]]), a1, torch.ones(1), no, ~no)
    assert agent.q[0, 1 * 4 + 2, a1].item() == pytest.approx(1.0)
    agent.act(torch.tensor([[2.0, 2.0]]), a1, torch.zeros(1), no, ~no)
    assert agent.q[0, 2 * 4 + 2, int(agent.prev_action)].item() == pytest.approx(1.0)  # untouched entry


def test_q_learning_improves_across_the_trial_on_dark_room():
    dist = DarkRoomConfig().make()
    r = run_trials(QLearningConfig().make(dist, 60), dist, num_tasks=100, episodes_per_trial=60, seed=0)
    curve = r.episode_returns.double().mean(0)
    assert curve[-10:].mean() > 2 * curve[:5].mean()
    with pytest.raises(ValueError, match="tabular"):
        from classic.envs.nav2d import Nav2DConfig

        QLearningConfig().make(Nav2DConfig().make(), 2)


# --- Algorithm Distillation -------------------------------------------------------------------


def test_histories_reproduce_the_source_run_and_subsample_whole_episodes():
    dist = _room()
    tasks = dist.sample_tasks(5, torch.Generator().manual_seed(0))
    source = QLearningConfig(epsilon=0.2).make(dist, 6)
    h = collect_histories(source, dist, tasks, 6, 2, torch.Generator().manual_seed(1))
    ref = rollout(QLearningConfig(epsilon=0.2).make(dist, 6), dist, tasks, 6, torch.Generator().manual_seed(1))
    keep = ref.episode[:, 0] % 2 == 0  # episodes 0, 2, 4
    assert h.actions.shape == (5, 3 * 6)
    assert torch.equal(h.actions, ref.actions[keep].T)
    assert torch.equal(h.rewards, ref.rewards[keep].T)
    assert torch.equal(h.obs, ref.obs[keep].transpose(0, 1))
    assert h.new_episode[:, ::6].all() and h.new_episode.sum() == 5 * 3
    torch.testing.assert_close(h.episode_returns, ref.rewards.T.reshape(5, 6, 6).sum(-1)[:, ::2])
    # Tokens: step t carries the action and reward of step t - 1 of the *subsampled* history.
    x = history_features(h, dist, one_hot=True)
    A = 5
    prev = x[:, 7, 8 : 8 + A].argmax(-1)  # obs one-hot (4 + 4), then the previous action
    assert torch.equal(prev, h.actions[:, 6]) and torch.equal(x[:, 7, 8 + A], h.rewards[:, 6])
    assert torch.equal(x[:, 6, 8 : 8 + A].argmax(-1), h.actions[:, 5])  # across the kept boundary
    assert (x[:, 0, 8 : 8 + A] == 0).all()


def test_ad_model_is_causal_and_the_agent_acts_on_its_last_window():
    dist = _room()
    cfg = ADConfig(**AD_TINY)
    model = ADModel(8 + 5 + 2, 5, cfg, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 10, 15, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 6:] += 1.0
    torch.testing.assert_close(model(x)[:, :6], model(y)[:, :6])
    # The agent's prediction at each step is the model on the last W = 2 * 6 tokens of its trial.
    agent = ADAgent(model, dist, ADConfig(**{**AD_TINY, "greedy_eval": True}))
    g = torch.Generator().manual_seed(2)
    traj = rollout(agent, dist, dist.sample_tasks(3, g), 4, g)
    tokens = step_features(
        traj.obs, traj.prev_actions, traj.prev_rewards, traj.prev_terminated | traj.prev_truncated, dist, True
    ).transpose(0, 1)  # (3, T, D)
    for t in (0, 5, 11, 12, 23):
        window = tokens[:, max(0, t - 11) : t + 1]
        assert torch.equal(model(window)[:, -1].argmax(-1), traj.actions[t])


def test_ad_training_changes_parameters_same_seed_same_numbers_and_resumes(tmp_path):
    dist = _room()
    cfg = ADConfig(**AD_TINY)
    source = lambda: QLearningConfig().make(dist, 6)  # noqa: E731
    a, curve = train_ad(cfg, dist, source())
    b, _ = train_ad(cfg, dist, source())
    init = ADModel(a.input_dim, 5, cfg, generator=torch.Generator().manual_seed(cfg.seed))
    assert curve.shape == (3,)
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), init.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), init.state_dict().values()))
    state = tmp_path / "state.pt"
    train_ad(ADConfig(**{**AD_TINY, "num_steps": 2}), dist, source(), checkpoint_path=state)
    resumed, _ = train_ad(cfg, dist, source(), checkpoint_path=state)
    for p, q in zip(a.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="subsample"):
        ADConfig(source_episodes=2, subsample=3)


# --- DPT --------------------------------------------------------------------------------------


def test_dpt_labels_are_optimal_actions_and_tokens_are_the_sampled_transitions():
    dist = _room()
    batch = pretraining_batch(dist, 64, 5, DPTConfig(**DPT_TINY), torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (64, 6, 3 * 8 + 5 + 1)  # [s, a, r, s', r * s']
    # The label moves the query cell one step closer to the goal (or stays on it): optimal.
    pos, goal = batch.query_state.pos, batch.tasks.goal
    moves = torch.tensor([(0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)])
    before = (goal - pos).abs().sum(-1)
    after = (goal - (pos + moves[batch.labels]).clamp(0, 3)).abs().sum(-1)
    assert torch.equal(after, (before - 1).clamp(min=0))
    # The query token is the query cell with no action, reward or next cell.
    torch.testing.assert_close(batch.tokens[:, 0], query_features(pos.float(), dist, True, True))
    assert (batch.tokens[:, 0, 8:] == 0).all()
    # Transitions: s' is s moved by a, and the reward is 1 exactly when s' is the goal.
    t = batch.tokens[:, 1:]
    s = torch.stack([t[..., :4].argmax(-1), t[..., 4:8].argmax(-1)], -1)
    a, r = t[..., 8:13].argmax(-1), t[..., 13]
    s2 = torch.stack([t[..., 14:18].argmax(-1), t[..., 18:22].argmax(-1)], -1)
    assert torch.equal(s2, (s + moves[a]).clamp(0, 3))
    assert torch.equal(r, (s2 == goal.unsqueeze(1)).all(-1).float())
    torch.testing.assert_close(t[..., 22:], r.unsqueeze(-1) * t[..., 14:22])
    bandit = BernoulliBandit(4)
    b = pretraining_batch(bandit, 16, 3, DPTConfig(**DPT_TINY), torch.Generator().manual_seed(1))
    assert torch.equal(b.labels, b.tasks.probs.argmax(-1))


def test_dpt_training_changes_parameters_same_seed_same_numbers_and_resumes(tmp_path):
    dist = _room()
    cfg = DPTConfig(**DPT_TINY)
    a, b = train_dpt(cfg, dist), train_dpt(cfg, dist)
    init = DPTModel(a.input_dim, 5, cfg, generator=torch.Generator().manual_seed(cfg.seed))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), init.state_dict().values()))
    state = tmp_path / "state.pt"
    train_dpt(DPTConfig(**{**DPT_TINY, "num_steps": 2}), dist, checkpoint_path=state)
    resumed = train_dpt(cfg, dist, checkpoint_path=state)
    for p, q in zip(a.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)


def test_dpt_agent_context_is_the_earlier_episodes_transitions():
    dist = _room()
    cfg = DPTConfig(**{**DPT_TINY, "context_size": 9, "greedy_eval": True})
    model = DPTModel(3 * 8 + 5 + 1, 5, cfg, generator=torch.Generator().manual_seed(0))
    agent = DPTAgent(model, dist, cfg)
    g = torch.Generator().manual_seed(3)
    traj = rollout(agent, dist, dist.sample_tasks(2, g), 3, g)
    # After two episodes of 6 steps the context holds the last 9 of their 10 transitions whose next
    # state the agent saw (each episode's last step, followed by a reset, is left out).
    assert agent.context.shape == (2, 9, 30)
    from classic.algos.dpt import transition_features

    obs, act, rew = traj.obs.transpose(0, 1), traj.actions.T, traj.rewards.T
    seen = [1, 2, 3, 4, 6, 7, 8, 9, 10]
    expected = transition_features(
        obs[:, seen], act[:, seen], rew[:, seen], obs[:, [t + 1 for t in seen]], dist, True, True
    )
    torch.testing.assert_close(agent.context, expected)
    # One-step episodes (bandits): every pull is in the context.
    bandit = BernoulliBandit(3)
    cfg_b = DPTConfig(**{**DPT_TINY, "context_size": 50})
    agent_b = DPTAgent(DPTModel(3 * 1 + 3 + 1, 3, cfg_b), bandit, cfg_b)
    rollout(agent_b, bandit, bandit.sample_tasks(2, g), 7, g)
    assert agent_b.context.shape == (2, 6, 7)


# --- on the platform --------------------------------------------------------------------------


def test_compare_run_reports_ad_with_its_source_curve_and_dpt(tmp_path):
    from classic.config import from_dict
    from classic.experiments.compare import CompareExperiment, run_compare

    data = {
        "name": "d",
        "threads": 1,
        "task": {"name": "darkroom", "episodes_per_trial": 3, **SMALL_ROOM},
        "protocol": {"num_tasks": 6},
        "baselines": [{"name": "Random"}, {"name": "Q-learning"}],
        "learners": [
            {"name": "ad", "source": {"name": "Q-learning", "epsilon": 0.1}, "algo": AD_TINY},
            {"name": "dpt", "algo": DPT_TINY},
        ],
        "output": {"root": str(tmp_path)},
    }
    run_dir = run_compare(from_dict(CompareExperiment, data, source="r.yaml"), progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert {"AD (Q-learning)", "DPT", "Q-learning", "Random"} <= set(results["agents"])
    assert {"AD (Q-learning) (greedy)", "DPT (greedy)"} <= set(results["agents"])  # evaluate_both
    report = (run_dir / "report.md").read_text()
    assert "AD (Q-learning): its source Q-learning" in report
    assert len(results["source_curve"]["AD (Q-learning)"]) == 3


def test_systematic_search_finds_the_goal_then_plays_the_oracle():
    from classic.registry import AGENTS

    dist = DarkRoomConfig().make()
    agent = AGENTS.get("Systematic search")().make(dist, 10)
    g = torch.Generator().manual_seed(0)
    tasks = dist.sample_tasks(64, g)
    traj = rollout(agent, dist, tasks, 10, g)
    returns = traj.rewards.T.reshape(64, 10, 20).sum(-1)
    oracle = dist.optimal_episode_return(tasks)
    found = (returns > 0).float().argmax(-1)  # first episode that reached the goal
    assert (returns.sum(-1) > 0).all()  # every goal found within the trial
    for b in range(64):
        later = returns[b, found[b] + 1 :]
        assert torch.equal(later, oracle[b].expand_as(later))  # straight there, every later episode
    # The first episode sweeps new cells: no cell is stood on twice before the goal is seen.
    first = traj.obs[:20].round().long()
    for b in range(64):
        if returns[b, 0] == 0:
            cells = {tuple(c) for c in first[:, b].tolist()}
            assert len(cells) >= 16
    with pytest.raises(ValueError, match="grid"):
        AGENTS.get("Systematic search")().make(BernoulliBandit(3), 10)


def test_systematic_search_with_fixed_ties_sweeps_the_same_cells_in_every_task_until_the_goal_pays():
    from classic.agents.grid_search import GridSearchAgent
    from classic.registry import AGENTS

    dist = DarkRoomConfig().make()
    agent = AGENTS.get("Systematic search")(tie_break="fixed").make(dist, 10)
    g = torch.Generator().manual_seed(0)
    tasks = dist.sample_tasks(64, g)
    traj = rollout(agent, dist, tasks, 10, g)
    paid = traj.rewards.T > 0  # (64, 200)
    first = torch.where(paid.any(-1), paid.float().argmax(-1), torch.full((64,), 200))
    sweep = traj.actions.T[first.argmax()]  # the longest unrewarded prefix
    for b in range(64):
        assert torch.equal(traj.actions.T[b, : first[b]], sweep[: first[b]])
    assert (first < 200).all()  # and it still finds every goal
    # The same prefix under another generator (no randomness left), and a random tie-break differs.
    again = rollout(agent, dist, tasks, 10, torch.Generator().manual_seed(1))
    assert torch.equal(again.actions, traj.actions)
    noisy = rollout(AGENTS.get("Systematic search")().make(dist, 10), dist, tasks, 10, g)
    assert not torch.equal(noisy.actions, traj.actions)
    with pytest.raises(ValueError, match="tie_break"):
        GridSearchAgent(dist, "lowest")


def test_rewarded_queries_are_the_rewarded_next_states_of_the_dataset():
    dist = _room()
    cfg = DPTConfig(**{**DPT_TINY, "rewarded_query_prob": 1.0})
    batch = pretraining_batch(dist, 256, 40, cfg, torch.Generator().manual_seed(0))
    r = batch.tokens[:, 1:, 13]
    hit = r.max(1).values > 0
    on_goal = (batch.query_state.pos == batch.tasks.goal).all(-1)
    assert hit.any() and (~hit).any()
    assert on_goal[hit].all()  # the one rewarded cell of Dark Room is the goal; label: stay
    assert (batch.labels[hit] == 0).all()
    torch.testing.assert_close(batch.tokens[:, 0, :8], query_features(batch.query_state.pos.float(), dist, True)[:, :8])
    with pytest.raises(ValueError, match="rewarded_query_prob"):
        DPTConfig(rewarded_query_prob=1.5)


def test_dpt_source_contexts_are_windows_of_the_source_trials_the_online_agent_would_keep():
    from classic.algos.dpt import collect_source_pool, source_window, transition_features

    dist = _room()
    source = _baseline("Systematic search").make(dist, 3)
    g = torch.Generator().manual_seed(0)
    pool = collect_source_pool(source, dist, 32, 3, g)
    # 3 episodes of 6 steps, each episode's last transition left out: 5 per episode.
    assert pool.obs.shape == (32, 15, 2) and pool.actions.shape == (32, 15) and pool.per_episode == 5
    moves = torch.tensor([(0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)])
    s, s2 = pool.obs.long(), pool.next_obs.long()
    assert torch.equal(s2, (s + moves[pool.actions]).clamp(0, 3))  # next state: the move's cell
    assert torch.equal(pool.rewards, (s2 == pool.tasks.goal.unsqueeze(1)).all(-1).float())
    # Every episode starts at the start cell: transitions 0, 5 and 10 leave it.
    assert (pool.obs[:, [0, 5, 10]] == 2).all()
    cfg = DPTConfig(**{**DPT_TINY, "context_states": "source"})
    batch = source_window(pool, dist, 64, 8, cfg, torch.Generator().manual_seed(1))
    assert batch.tokens.shape == (64, 9, 30)
    starts = (0, 2, 7)  # windows of 8 ending after episode 2 or 3, or (after episode 1) starting the trial
    for b in range(64):
        match = [
            st
            for st in starts
            if any(
                torch.equal(
                    batch.tokens[b, 1:],
                    transition_features(
                        pool.obs[r, st : st + 8], pool.actions[r, st : st + 8], pool.rewards[r, st : st + 8],
                        pool.next_obs[r, st : st + 8], dist, True, True,
                    ),
                )
                for r in range(32)
            )
        ]  # fmt: skip
        assert match, b
    pos, goal = batch.query_state.pos, batch.tasks.goal
    before = (goal - pos).abs().sum(-1)
    after = (goal - (pos + moves[batch.labels]).clamp(0, 3)).abs().sum(-1)
    assert torch.equal(after, (before - 1).clamp(min=0))  # labels: the optimal actions
    with pytest.raises(ValueError, match="source_episodes"):
        source_window(pool, dist, 4, 16, cfg, g)


def test_dpt_trains_on_a_source_and_refuses_the_source_mode_without_one():
    dist = _room()
    cfg = DPTConfig(**{**DPT_TINY, "context_states": "source", "num_source_histories": 8, "source_episodes": 2})
    source = _baseline("Posterior sampling", sampling="step").make(dist, 2)
    a, b = train_dpt(cfg, dist, source=source), train_dpt(cfg, dist, source=source)
    init = DPTModel(a.input_dim, 5, cfg, generator=torch.Generator().manual_seed(cfg.seed))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), init.state_dict().values()))
    with pytest.raises(ValueError, match="context_source"):
        train_dpt(cfg, dist)
    with pytest.raises(ValueError, match="rewarded_query_prob"):
        DPTConfig(context_states="source", rewarded_query_prob=0.5)
