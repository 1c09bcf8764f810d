"""Sequence models over a trial (classic/algos/sequence.py) and RL² with them as its memory:
causality, cached stepping equal to full recomputation, training."""

from __future__ import annotations

import pytest
import torch

from classic.algos.rl2 import RL2Agent, RL2Policy, collect_trials, train_rl2
from classic.algos.rl2_config import RL2Config
from classic.algos.sequence import SNAIL, CausalTransformer, KVCache, sinusoidal_positions
from classic.envs import BernoulliBandit
from classic.evaluate import run_trials


def _models():
    g = torch.Generator().manual_seed(0)
    return {
        "transformer": CausalTransformer(5, 16, num_layers=2, num_heads=4, generator=g).double(),
        "snail": SNAIL(5, 16, seq_len=12, filters=4, key_size=4, value_size=4).double(),
    }


@pytest.mark.parametrize("name", ["transformer", "snail"])
def test_no_output_depends_on_a_later_input(name):
    model = _models()[name]
    x = torch.randn(12, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, _ = model(x, None)
    for t in (0, 5, 11):
        y = x.clone()
        y[t:] += torch.randn(y[t:].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
        out2, _ = model(y, None)
        torch.testing.assert_close(out2[:t], out[:t], rtol=0, atol=1e-12)
        assert not torch.allclose(out2[t], out[t])  # ... and step t does see its own input


@pytest.mark.parametrize("name", ["transformer", "snail"])
@pytest.mark.parametrize("chunks", [[1] * 12, [3, 1, 4, 4], [12]])
def test_stepping_with_the_state_equals_the_whole_sequence(name, chunks):
    model = _models()[name]
    x = torch.randn(12, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    full, _ = model(x, None)
    state, outs, t = model.initial_state(3), [], 0
    for n in chunks:
        out, state = model(x[t : t + n], state)
        outs.append(out)
        t += n
    torch.testing.assert_close(torch.cat(outs), full, rtol=1e-10, atol=1e-10)


def test_kv_cache_grows_by_doubling_and_keeps_every_step():
    cache = KVCache(num_layers=1)
    ks = [torch.full((2, 1, 1, 3), float(i)) for i in range(40)]
    for k in ks:
        keys, values = cache.append(0, k, -k)
        cache.advance(1)
    assert cache.length == 40 and cache.keys[0].shape[2] >= 40
    torch.testing.assert_close(keys, torch.cat(ks, dim=2))
    torch.testing.assert_close(values, -torch.cat(ks, dim=2))


def test_sinusoidal_positions_are_the_closed_form():
    pe = sinusoidal_positions(torch.arange(7), 6)
    t, i = 5, 1
    assert pe[t, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(t / 10000 ** (2 * i / 6))).item(), abs=1e-6)
    assert pe[t, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(t / 10000 ** (2 * i / 6))).item(), abs=1e-6)


@pytest.mark.parametrize("network", ["transformer", "snail"])
def test_rl2_with_a_sequence_model_collects_on_policy_trains_and_reloads(network, tmp_path):
    dist = BernoulliBandit(num_arms=3)
    cfg = RL2Config(
        network=network, hidden_size=16, num_layers=1, num_heads=2, num_trials_per_batch=8, num_minibatches=2,
        num_iterations=2, update_epochs=1, seed=3,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    policy = RL2Policy(3, 1, 16, action_reward_input=True, generator=g, network=network, num_heads=2, seq_len=10)
    batch = collect_trials(policy, dist, dist.sample_tasks(4, g), 10, g)
    # The step-by-step log-probs and values (with the cache) equal one pass over the whole trial.
    inputs = policy.encode(batch.obs, batch.prev_actions, batch.prev_rewards, batch.prev_dones)
    logits, values, _ = policy(inputs, policy.initial_state(4))
    logp = torch.log_softmax(logits, -1).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, batch.logprobs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, batch.values, rtol=1e-5, atol=1e-5)
    # Training changes the memory's parameters; the same seed gives the same numbers.
    a, b = train_rl2(cfg, dist, 10), train_rl2(cfg, dist, 10)
    init = RL2Policy(**a.spec(), generator=torch.Generator().manual_seed(3))
    assert any(not torch.equal(p, q) for p, q in zip(a.memory.parameters(), init.memory.parameters()))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    a.save(tmp_path / "p.pt", cfg)
    loaded = RL2Policy.load(tmp_path / "p.pt")
    assert loaded.network == network and loaded.config.network == network
    r1 = run_trials(RL2Agent(a), dist, num_tasks=5, episodes_per_trial=10, seed=1).episode_returns
    r2 = run_trials(RL2Agent(loaded), dist, num_tasks=5, episodes_per_trial=10, seed=1).episode_returns
    assert torch.equal(r1, r2)


def test_rl2_network_choice_is_validated():
    with pytest.raises(ValueError, match="network"):
        RL2Config(network="lstm")
    with pytest.raises(ValueError, match="num_heads"):
        RL2Config(network="transformer", hidden_size=10, num_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        CausalTransformer(3, 10, 1, 4)
