"""RL² + PPO: input encoding, rollout/update consistency, memory handling, smoke training, determinism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from classic.agents.base import Agent
from classic.algos.rl2 import RL2Agent, RL2Policy, collect_trials, ppo_update, train_rl2
from classic.algos.rl2_config import RL2Config
from classic.envs import BernoulliBandit
from classic.evaluate import run_trials

TINY = dict(hidden_size=16, num_trials_per_batch=32, num_minibatches=2, num_iterations=3, update_epochs=2, seed=3)
EPISODES = 12


def _train(**overrides):
    config = RL2Config(**{**TINY, **overrides})
    logs: list[tuple[int, dict]] = []
    policy = train_rl2(config, BernoulliBandit(num_arms=3), EPISODES, log_fn=lambda step, m: logs.append((step, m)))
    return config, policy, logs


# --- input encoding -------------------------------------------------------------------


@pytest.mark.parametrize("action_reward_input", [False, True])
def test_encode_shapes_and_values(action_reward_input):
    policy = RL2Policy(num_actions=4, obs_dim=2, hidden_size=8, action_reward_input=action_reward_input)
    assert policy.input_dim == 4 * (2 if action_reward_input else 1) + 2 + 2
    obs = torch.tensor([[0.5, -1.0], [2.0, 3.0], [0.0, 0.0]])
    x = policy.encode(obs, torch.tensor([-1, 2, 3]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([True, False, True]))
    assert x.shape == (3, policy.input_dim)
    torch.testing.assert_close(x[:, :4], torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))  # -1 -> zeros
    torch.testing.assert_close(x[:, 4], torch.tensor([0.0, 1.0, 0.0]))  # previous reward
    torch.testing.assert_close(x[:, 5], torch.tensor([1.0, 0.0, 1.0]))  # done flag
    torch.testing.assert_close(x[:, 6:8], obs)
    if action_reward_input:
        torch.testing.assert_close(x[:, 8:], torch.tensor([[0.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]))
    # any leading shape (time-major batches)
    xt = policy.encode(
        torch.zeros(5, 3, 2), torch.zeros(5, 3, dtype=torch.long), torch.zeros(5, 3), torch.ones(5, 3, dtype=torch.bool)
    )
    assert xt.shape == (5, 3, policy.input_dim)
    logits, values, h = policy(xt, policy.initial_state(3))
    assert logits.shape == (5, 3, 4) and values.shape == (5, 3) and h.shape == (1, 3, 8)


# --- inner loop -----------------------------------------------------------------------


def test_collect_trials_shapes_and_logprobs_match_sequence_forward():
    dist = BernoulliBandit(num_arms=3)
    g = torch.Generator().manual_seed(0)
    policy = RL2Policy(dist.num_actions, dist.obs_dim, 16, action_reward_input=True, generator=g)
    tasks = dist.sample_tasks(6, g)
    batch = collect_trials(policy, dist, tasks, EPISODES, g)
    T, B = EPISODES, 6
    for name in (
        "prev_actions",
        "prev_rewards",
        "prev_dones",
        "actions",
        "logprobs",
        "values",
        "rewards",
        "dones",
        "mask",
    ):
        assert getattr(batch, name).shape == (T, B), name
    assert batch.obs.shape == (T, B, 1)
    assert bool(batch.mask.all())
    assert batch.dones[:-1].sum() == 0 and bool(batch.dones[-1].all())  # only the trial end is a done
    assert torch.equal(batch.prev_actions[0], torch.full((B,), -1))
    assert torch.equal(batch.prev_actions[1:], batch.actions[:-1])  # row t sees action t-1
    assert torch.equal(batch.prev_rewards[1:], batch.rewards[:-1])
    assert bool(batch.prev_dones.all())  # every bandit episode is one pull
    # Re-running the GRU over the whole recorded trial from the zero state (what ppo_update
    # does with BPTT) reproduces the step-by-step log-probs and values.
    inputs = policy.encode(batch.obs, batch.prev_actions, batch.prev_rewards, batch.prev_dones)
    logits, values, _ = policy(inputs, policy.initial_state(B))
    logp = torch.log_softmax(logits, -1).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, batch.logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, batch.values, rtol=1e-5, atol=1e-5)


def test_first_ppo_epoch_starts_on_policy():
    dist = BernoulliBandit(num_arms=3)
    g = torch.Generator().manual_seed(1)
    config = RL2Config(**{**TINY, "update_epochs": 1, "num_minibatches": 1})
    policy = RL2Policy(dist.num_actions, dist.obs_dim, config.hidden_size, generator=g)
    batch = collect_trials(policy, dist, dist.sample_tasks(config.num_trials_per_batch, g), EPISODES, g)
    stats = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), batch, config, 0.01, g)
    # One minibatch, one epoch: the ratio is exactly 1 when the loss is evaluated.
    assert stats.approx_kl == pytest.approx(0.0, abs=1e-6)
    assert stats.clipfrac == 0.0


# --- memory: carried within a trial, reset between trials -----------------------------


def test_agent_hidden_state_carried_within_and_reset_between_trials():
    torch.manual_seed(0)
    policy = RL2Policy(num_actions=3, obs_dim=1, hidden_size=8, action_reward_input=True)
    agent = RL2Agent(policy)
    assert isinstance(agent, Agent) and agent.name == "RL²"
    n = 4
    obs = torch.zeros(n, 1)
    steps = [
        (torch.full((n,), -1), torch.zeros(n), torch.ones(n, dtype=torch.bool)),
        (torch.tensor([0, 1, 2, 0]), torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.ones(n, dtype=torch.bool)),
        (torch.tensor([2, 2, 1, 0]), torch.tensor([0.0, 1.0, 1.0, 1.0]), torch.ones(n, dtype=torch.bool)),
    ]

    def play():
        agent.reset(n, torch.Generator().manual_seed(5))
        assert torch.equal(agent.h, torch.zeros(1, n, 8))
        hs = []
        for prev_a, prev_r, done in steps:
            action = agent.act(obs, prev_a, prev_r, done, torch.zeros_like(done))
            assert action.shape == (n,) and action.dtype == torch.long
            hs.append(agent.h.clone())
        return hs

    first = play()
    # carried: the state after step t equals the GRU run over the whole prefix from zero
    inputs = torch.stack([policy.encode(obs, a, r, d) for a, r, d in steps])
    _, _, h_seq = policy(inputs, policy.initial_state(n))
    torch.testing.assert_close(first[-1], h_seq)
    assert not torch.allclose(first[1], first[2])
    # reset: a second trial starts from zero again and retraces the first exactly
    second = play()
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    # and the state size follows num_tasks
    agent.reset(7, torch.Generator())
    assert agent.h.shape == (1, 7, 8)


def test_agent_runs_in_evaluator_sampled_and_greedy():
    torch.manual_seed(0)
    policy = RL2Policy(num_actions=3, obs_dim=1, hidden_size=8)
    dist = BernoulliBandit(num_arms=3)
    sampled = run_trials(RL2Agent(policy), dist, num_tasks=20, episodes_per_trial=10, seed=0)
    again = run_trials(RL2Agent(policy), dist, num_tasks=20, episodes_per_trial=10, seed=0)
    assert torch.equal(sampled.actions, again.actions)  # actions drawn from the evaluator's generator
    greedy = RL2Agent(policy, greedy=True)
    assert greedy.name == "RL² (greedy)"
    result = run_trials(greedy, dist, num_tasks=20, episodes_per_trial=10, seed=0)
    assert result.rewards.shape == (20, 10) and result.invalid_rate == 0.0


# --- smoke training and determinism ---------------------------------------------------


def test_smoke_training_changes_parameters_and_logs_finite_losses():
    config, policy, logs = _train()
    init = RL2Policy(
        policy.num_actions,
        policy.obs_dim,
        config.hidden_size,
        config.action_reward_input,
        generator=torch.Generator().manual_seed(config.seed),
    )
    for (name, p0), p1 in zip(init.named_parameters(), policy.parameters()):
        assert not torch.equal(p0, p1), f"{name} did not change"
    assert len(logs) == config.num_iterations
    steps = [s for s, _ in logs]
    assert steps == [config.num_trials_per_batch * EPISODES * (i + 1) for i in range(config.num_iterations)]
    for _, m in logs:
        for key in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac"):
            assert torch.isfinite(torch.tensor(m[key])), key
        assert 0.0 <= m["charts/mean_trial_return"] <= EPISODES
    assert logs[-1][1]["charts/ent_coef"] == pytest.approx(config.ent_coef_final)


def test_same_seed_same_numbers_and_other_seed_differs():
    _, p1, logs1 = _train()
    _, p2, logs2 = _train()
    for (name, a), b in zip(p1.state_dict().items(), p2.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda logs: [(s, {k: v for k, v in m.items() if k != "charts/SPS"}) for s, m in logs]  # noqa: E731
    assert strip(logs1) == strip(logs2)
    _, p3, _ = _train(seed=4)
    assert not torch.equal(p1.actor.weight, p3.actor.weight)


def test_save_load_roundtrip(tmp_path):
    config, policy, _ = _train(num_iterations=1)
    path = tmp_path / "rl2.pt"
    policy.save(path, config)
    loaded = RL2Policy.load(path)
    assert loaded.config == config
    for a, b in zip(policy.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    dist = BernoulliBandit(num_arms=3)
    r1 = run_trials(RL2Agent(policy), dist, num_tasks=10, episodes_per_trial=5, seed=1)
    r2 = run_trials(RL2Agent(loaded), dist, num_tasks=10, episodes_per_trial=5, seed=1)
    assert torch.equal(r1.actions, r2.actions)


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("hidden_size", 0),
        ("num_trials_per_batch", 30),  # not divisible by num_minibatches=4
        ("learning_rate", -1e-3),
        ("gamma", 1.5),
        ("gae_lambda", -0.1),
        ("clip_coef", 0.0),
        ("ent_coef", -0.01),
        ("max_grad_norm", float("nan")),
        ("update_epochs", 1.5),
        ("num_iterations", -1),
        ("target_kl", 0.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RL2Config(**{field: value})


def test_config_derived_values():
    config = RL2Config(num_trials_per_batch=64, num_minibatches=4, num_iterations=10, ent_coef=0.02, ent_coef_final=0.0)
    assert config.minibatch_size == 16
    assert config.total_env_steps(100) == 64 * 10 * 100
    assert config.ent_coef_at(0) == pytest.approx(0.02) and config.ent_coef_at(9) == pytest.approx(0.0)
    assert config.lr_at(0) == config.learning_rate
    assert dataclasses.asdict(config) == config.to_dict()


def test_interrupted_training_resumes_to_the_same_numbers(tmp_path):
    """Train 4 iterations straight, or 2 + crash + resume: same parameters."""
    from classic.algos.rl2 import train_rl2
    from classic.algos.rl2_config import RL2Config
    from classic.envs import BernoulliBandit

    cfg = RL2Config(num_iterations=4, num_trials_per_batch=8, num_minibatches=2, hidden_size=8)
    dist = BernoulliBandit(3)
    straight = train_rl2(cfg, dist, 5)

    class Interrupt(Exception):
        """Stands for a killed run."""

    def crash_after_two(step, metrics):
        if metrics["charts/iteration"] == 2:
            raise Interrupt

    ckpt = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        train_rl2(cfg, dist, 5, log_fn=crash_after_two, checkpoint_path=ckpt, checkpoint_every=1)
    assert ckpt.exists()
    resumed = train_rl2(cfg, dist, 5, checkpoint_path=ckpt, checkpoint_every=1)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_on_iteration_sees_every_update_and_can_stop_training_early():
    seen: list[tuple[int, int]] = []

    def hook(iteration, policy, env_steps):
        assert isinstance(policy, RL2Policy) and not policy.training
        seen.append((iteration, env_steps))
        return iteration == 1  # stop after the second update

    config = RL2Config(**TINY)
    policy = train_rl2(config, BernoulliBandit(num_arms=3), EPISODES, on_iteration=hook)
    assert seen == [(0, 32 * EPISODES), (1, 64 * EPISODES)]
    # It stopped after 2 of the 3 updates, so it differs from the full run.
    _, full, _ = _train()
    assert not torch.equal(policy.actor.weight, full.actor.weight)


def test_obs_action_reward_block_pairs_the_reward_with_the_state_it_was_earned_in():
    policy = RL2Policy(num_actions=3, obs_dim=4, hidden_size=8, obs_action_reward_input=True)
    assert policy.input_dim == 3 + 2 + 4 + 4 * 3
    prev_obs = torch.nn.functional.one_hot(torch.tensor([2, 0]), 4).float()
    x = policy.encode(
        torch.zeros(2, 4), torch.tensor([1, -1]), torch.tensor([0.5, 7.0]), torch.zeros(2, dtype=torch.bool), prev_obs
    )
    block = x[:, -12:].reshape(2, 4, 3)
    expected = torch.zeros(2, 4, 3)
    expected[0, 2, 1] = 0.5  # state 2, action 1 paid 0.5; an invalid action (-1) leaves zeros
    torch.testing.assert_close(block, expected)


def test_obs_action_block_counts_visits_of_the_pair_the_previous_action_was_taken_in(tmp_path):
    policy = RL2Policy(num_actions=3, obs_dim=4, hidden_size=8, obs_action_reward_input=True, obs_action_input=True)
    assert policy.input_dim == 3 + 2 + 4 + 4 * 3 + 4 * 3
    prev_obs = torch.nn.functional.one_hot(torch.tensor([2, 0]), 4).float()
    x = policy.encode(
        torch.zeros(2, 4), torch.tensor([1, -1]), torch.tensor([0.5, 7.0]), torch.zeros(2, dtype=torch.bool), prev_obs
    )
    rewards, visits = x[:, -24:-12].reshape(2, 4, 3), x[:, -12:].reshape(2, 4, 3)
    expected = torch.zeros(2, 4, 3)
    expected[0, 2, 1] = 1.0  # state 2, action 1 was taken; an invalid action (-1) leaves zeros
    torch.testing.assert_close(visits, expected)
    torch.testing.assert_close(rewards, expected * 0.5)
    # the visit block alone, and the flag survives a save/load round trip
    alone = RL2Policy(num_actions=3, obs_dim=4, hidden_size=8, obs_action_input=True)
    torch.testing.assert_close(
        alone.encode(
            torch.zeros(2, 4),
            torch.tensor([1, -1]),
            torch.tensor([0.5, 7.0]),
            torch.zeros(2, dtype=torch.bool),
            prev_obs,
        )[:, -12:].reshape(2, 4, 3),
        expected,
    )
    alone.save(tmp_path / "p.pt")
    assert RL2Policy.load(tmp_path / "p.pt").obs_action_input


def test_obs_action_reward_input_on_an_mdp_is_on_policy_in_the_update_and_trains():
    # ppo_update rebuilds prev_obs by shifting the recorded observations; if that differed
    # from what collect_trials fed the GRU, the first epoch would not start on-policy.
    from classic.envs import TabularMDP

    dist = TabularMDP(num_states=4, num_actions=3, episode_length=3)
    g = torch.Generator().manual_seed(2)
    config = RL2Config(
        **{**TINY, "update_epochs": 1, "num_minibatches": 1, "obs_action_reward_input": True, "obs_action_input": True}
    )
    policy = RL2Policy(
        dist.num_actions, dist.obs_dim, config.hidden_size, True, True, generator=g, obs_action_input=True
    )
    batch = collect_trials(policy, dist, dist.sample_tasks(config.num_trials_per_batch, g), 4, g)
    stats = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), batch, config, 0.01, g)
    assert stats.approx_kl == pytest.approx(0.0, abs=1e-6) and stats.clipfrac == 0.0
    trained = train_rl2(config, dist, 4)
    assert trained.obs_action_reward_input and trained.obs_action_input and trained.input_dim == 3 + 2 + 4 + 3 + 12 + 12
    res = run_trials(RL2Agent(trained), dist, num_tasks=16, episodes_per_trial=4, seed=0)
    assert bool(((res.actions >= 0) & (res.actions < 3)).all())


def test_init_policy_must_have_the_same_shape():
    other = RL2Policy(num_actions=3, obs_dim=1, hidden_size=5, action_reward_input=True)
    with pytest.raises(ValueError, match="init_policy"):
        train_rl2(RL2Config(**TINY), BernoulliBandit(num_arms=3), EPISODES, init_policy=other)


def test_zero_iterations_from_a_warm_start_returns_the_initial_policy():
    _, source, _ = _train()
    policy = train_rl2(
        RL2Config(**{**TINY, "num_iterations": 0}), BernoulliBandit(num_arms=3), EPISODES, init_policy=source
    )
    for (name, a), b in zip(source.state_dict().items(), policy.state_dict().values()):
        assert torch.equal(a, b), name


def test_mlp_heads_read_the_current_state_and_train_on_policy(tmp_path):
    from classic.envs import TabularMDP

    dist = TabularMDP(num_states=4, num_actions=3, episode_length=3)
    g = torch.Generator().manual_seed(4)
    policy = RL2Policy(dist.num_actions, dist.obs_dim, 8, True, True, generator=g, head_hidden_size=6)
    assert isinstance(policy.actor, torch.nn.Sequential) and policy.actor[0].in_features == 8 + 4
    # same hidden state, different current state -> the heads see the difference directly
    h = torch.randn(1, 2, 8, generator=g)
    obs = torch.eye(4)[[0, 3]]
    x = policy.encode(obs, torch.tensor([1, 1]), torch.tensor([0.5, 0.5]), torch.zeros(2, dtype=torch.bool))
    out, _ = policy.gru(x.unsqueeze(0), h)
    expected_logits = policy.actor(torch.cat([out, obs.unsqueeze(0)], dim=-1))
    logits, values, _ = policy(x.unsqueeze(0), h)
    torch.testing.assert_close(logits, expected_logits)
    assert values.shape == (1, 2)
    # on-policy first epoch (the update rebuilds the same inputs), and a save/load round trip
    config = RL2Config(
        **{**TINY, "update_epochs": 1, "num_minibatches": 1, "obs_action_reward_input": True, "head_hidden_size": 6}
    )
    batch = collect_trials(policy, dist, dist.sample_tasks(config.num_trials_per_batch, g), 4, g)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), batch, config, 0.01, g)
    assert stats.approx_kl == pytest.approx(0.0, abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    policy.save(tmp_path / "p.pt", config)
    loaded = RL2Policy.load(tmp_path / "p.pt")
    assert loaded.head_hidden_size == 6 and loaded.config.head_hidden_size == 6
    torch.testing.assert_close(loaded(x.unsqueeze(0), h)[0], policy(x.unsqueeze(0), h)[0])


def test_head_hidden_size_is_checked():
    with pytest.raises(ValueError, match="head_hidden_size"):
        RL2Config(head_hidden_size=-1)


@pytest.mark.parametrize("head_hidden_size", [0, 6])
def test_state_gated_heads_are_one_readout_per_state_against_a_slow_loop(head_hidden_size, tmp_path):
    from classic.envs import TabularMDP

    dist = TabularMDP(num_states=4, num_actions=3, episode_length=3)
    g = torch.Generator().manual_seed(5)
    policy = RL2Policy(
        dist.num_actions,
        dist.obs_dim,
        8,
        True,
        True,
        generator=g,
        head_hidden_size=head_hidden_size,
        state_gated_heads=True,
    )
    with torch.no_grad():  # the actor's output layer starts at gain 0.01; make the check sensitive
        for p in policy.parameters():
            p.normal_(generator=g)
    states = torch.tensor([0, 3, 3, 1, 2])
    obs = torch.eye(4)[states]
    x = policy.encode(
        obs, torch.tensor([1, 0, 2, -1, 1]), torch.randn(5, generator=g), torch.zeros(5, dtype=torch.bool)
    )
    h = torch.randn(1, 5, 8, generator=g)
    logits, values, _ = policy(x.unsqueeze(0), h)
    out, _ = policy.gru(x.unsqueeze(0), h)
    width = head_hidden_size or 8
    for b, s in enumerate(states.tolist()):
        feats = []
        for head in (policy.actor, policy.critic):
            z = out[0, b]
            if head_hidden_size:
                z = torch.tanh(head[0](torch.cat([z, obs[b]])))
            last = head[2] if head_hidden_size else head
            w = last.weight.reshape(last.out_features, 4, width)[:, s]  # state s's own readout
            feats.append(w @ z + last.bias)
        torch.testing.assert_close(logits[0, b], feats[0])
        torch.testing.assert_close(values[0, b], feats[1][0])
    # trains on-policy, and the flag survives a save/load round trip
    config = RL2Config(
        **{
            **TINY,
            "update_epochs": 1,
            "num_minibatches": 1,
            "obs_action_reward_input": True,
            "head_hidden_size": head_hidden_size,
            "state_gated_heads": True,
        }
    )
    trained = train_rl2(config, dist, 4)
    assert trained.state_gated_heads
    trained.save(tmp_path / "p.pt", config)
    loaded = RL2Policy.load(tmp_path / "p.pt")
    assert loaded.state_gated_heads and loaded.config.state_gated_heads
    x = trained.encode(obs, torch.tensor([1, 0, 2, -1, 1]), torch.ones(5), torch.zeros(5, dtype=torch.bool)).unsqueeze(
        0
    )
    h = trained.initial_state(5)
    torch.testing.assert_close(loaded(x, h)[0], trained(x, h)[0])


def test_rl2_on_box_actions_trains_a_gaussian_head_and_acts_in_the_box():
    from classic.envs.nav2d import Nav2DConfig

    dist = Nav2DConfig(episode_length=10).make()
    config = RL2Config(num_iterations=2, num_trials_per_batch=8, num_minibatches=2, hidden_size=8)
    g = torch.Generator().manual_seed(config.seed)
    start = RL2Policy(2, dist.obs_dim, 8, True, generator=g, continuous=True, action_low=-0.1, action_high=0.1)
    policy = train_rl2(config, dist, episodes_per_trial=2)
    assert policy.continuous and policy.spec()["action_high"] == 0.1
    assert not torch.equal(policy.log_std, start.log_std) and not torch.equal(
        policy.gru.weight_ih_l0, start.gru.weight_ih_l0
    )
    batch = collect_trials(policy, dist, dist.sample_tasks(4, torch.Generator().manual_seed(1)), 2, torch.Generator())
    assert batch.actions.shape == (20, 4, 2) and batch.actions.dtype == torch.float32
    # the stored log-probabilities are those of the Gaussian in policy units
    head = torch.zeros(3, 2)
    a = torch.tensor([[0.05, -0.05], [0.0, 0.1], [0.2, 0.0]])
    ref = torch.distributions.Normal(head, policy.log_std.exp()).log_prob(a / 0.1).sum(-1)
    torch.testing.assert_close(policy.log_prob(head, a), ref)
    res = run_trials(RL2Agent(policy, greedy=True), dist, num_tasks=6, episodes_per_trial=2, seed=0)
    assert res.actions.shape == (6, 20, 2) and torch.isfinite(res.total_reward).all()


def test_rl2_refuses_pair_inputs_with_box_actions():
    with pytest.raises(ValueError, match="need discrete actions"):
        RL2Policy(2, 2, 8, obs_action_input=True, continuous=True)
