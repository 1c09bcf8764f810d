"""PEARL (classic/algos/pearl.py): the product-of-Gaussians posterior against the closed form and a
sequential Bayesian update, the KL term, the SAC losses against slow per-transition loops, the
replay buffers, posterior sampling at meta-test, and tiny trainings (parameters change, same seed
same numbers, resume after an interrupt), on the platform."""

import json
import math

import pytest
import torch

from classic.algos.pearl import (
    PEARLAgent,
    PEARLConfig,
    PEARLNetworks,
    TaskReplayBuffers,
    Transitions,
    actor_losses,
    critic_losses,
    kl_to_standard_normal,
    new_state,
    product_of_gaussians,
    scale_action,
    train_pearl,
    unscale_action,
)
from classic.core import Box
from classic.envs.point_robot import PointRobotConfig
from classic.evaluate import run_trials
from classic.registry import LEARNERS

TINY = dict(
    hidden_sizes=[16],
    encoder_hidden_sizes=[16],
    latent_size=3,
    num_train_tasks=6,
    num_initial_steps=20,
    num_tasks_sample=2,
    num_steps_prior=20,
    num_steps_posterior=20,
    num_extra_rl_steps_posterior=20,
    num_train_steps_per_itr=3,
    meta_batch=3,
    batch_size=8,
    embedding_batch_size=8,
    buffer_size=500,
    checkpoint_every=1,
)


def _nets(seed=0, **over) -> PEARLNetworks:
    cfg = PEARLConfig(**{**TINY, **over})
    return PEARLNetworks(2, 2, cfg, generator=torch.Generator().manual_seed(seed)).double(), cfg


def _batch(M=3, b=4, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rl = Transitions(
        obs=torch.randn(M, b, 2, generator=g, dtype=torch.float64),
        action=torch.rand(M, b, 2, generator=g, dtype=torch.float64) * 2 - 1,
        reward=torch.randn(M, b, generator=g, dtype=torch.float64),
        next_obs=torch.randn(M, b, 2, generator=g, dtype=torch.float64),
        terminal=(torch.rand(M, b, generator=g) < 0.3).double(),
    )
    context = torch.randn(M, N, 5, generator=g, dtype=torch.float64)
    return rl, context


def test_product_of_gaussians_matches_the_closed_form_and_a_sequential_bayes_update():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    var = torch.rand(4, 6, 3, generator=g, dtype=torch.float64) + 0.1
    mean, post_var = product_of_gaussians(mu, var)
    # Sequential update: N(m1, v1) N(m2, v2) ∝ N((m1 v2 + m2 v1) / (v1 + v2), v1 v2 / (v1 + v2)).
    m, v = mu[:, 0], var[:, 0]
    for n in range(1, 6):
        m, v = (m * var[:, n] + mu[:, n] * v) / (v + var[:, n]), v * var[:, n] / (v + var[:, n])
    torch.testing.assert_close(mean, m)
    torch.testing.assert_close(post_var, v)
    # The product's density is proportional to the product of the densities (checked at points).
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    log_prod = (
        torch.distributions.Normal(mu[0].unsqueeze(0), var[0].sqrt().unsqueeze(0)).log_prob(x.unsqueeze(1)).sum(1)
    )
    log_post = torch.distributions.Normal(mean[0], post_var[0].sqrt()).log_prob(x)
    diff = log_prod - log_post  # constant in x, per dimension
    torch.testing.assert_close(diff - diff[0], torch.zeros_like(diff))
    # A mask drops factors; no factor at all is the prior N(0, I).
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False
    masked_mean, masked_var = product_of_gaussians(mu, var, mask)
    ref_mean, ref_var = product_of_gaussians(mu[1:2, :3], var[1:2, :3])
    torch.testing.assert_close(masked_mean[1], ref_mean[0])
    torch.testing.assert_close(masked_var[1], ref_var[0])
    assert torch.equal(masked_mean[2], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(masked_var[2], torch.ones(3, dtype=torch.float64))


def test_kl_to_the_standard_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64)
    var = torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.05
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, var.sqrt()), torch.distributions.Normal(torch.zeros_like(mean), 1.0)
    ).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mean, var), ref)


def test_critic_losses_match_a_slow_per_transition_reference():
    nets, cfg = _nets(reward_scale=7.0, gamma=0.9, kl_lambda=0.3)
    rl, context = _batch()
    losses, z = critic_losses(nets, rl, context, cfg, torch.Generator().manual_seed(5))
    eps = torch.randn(3, cfg.latent_size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    M, b = rl.reward.shape
    kl_total, q_err1, q_err2 = 0.0, [], []
    for i in range(M):
        precision_sum = torch.zeros(cfg.latent_size, dtype=torch.float64)
        weighted = torch.zeros(cfg.latent_size, dtype=torch.float64)
        for n in range(context.shape[1]):
            out = nets.encoder(context[i, n])
            mu_n, var_n = out[: cfg.latent_size], torch.log1p(torch.exp(out[cfg.latent_size :]))
            precision_sum = precision_sum + 1 / var_n
            weighted = weighted + mu_n / var_n
        var = 1 / precision_sum
        mean = var * weighted
        kl_total += float(0.5 * (var + mean**2 - 1 - torch.log(var)).sum().detach())
        z_i = mean + var.sqrt() * eps[i]
        torch.testing.assert_close(z[i], z_i)
        for j in range(b):
            x = torch.cat([rl.obs[i, j], rl.action[i, j], z_i])
            v_next = nets.target_vf(torch.cat([rl.next_obs[i, j], z_i]))[0]
            y = 7.0 * rl.reward[i, j] + (1 - rl.terminal[i, j]) * 0.9 * v_next
            q_err1.append(float((nets.qf1(x)[0] - y) ** 2))
            q_err2.append(float((nets.qf2(x)[0] - y) ** 2))
    assert float(losses["kl"]) == pytest.approx(0.3 * kl_total, rel=1e-9)
    assert float(losses["q"]) == pytest.approx(sum(q_err1) / len(q_err1) + sum(q_err2) / len(q_err2), rel=1e-9)
    # The Q loss trains the encoder (z keeps its graph); the target gets no gradient.
    losses["q"].backward()
    assert nets.encoder[0].weight.grad is not None and nets.encoder[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in nets.target_vf.parameters())


def test_actor_losses_match_a_slow_per_transition_reference():
    nets, cfg = _nets(policy_mean_reg=0.01, policy_std_reg=0.02)
    rl, _ = _batch()
    z = torch.randn(3, cfg.latent_size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    losses = actor_losses(nets, rl.obs, z, cfg, torch.Generator().manual_seed(9))
    eps = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    v_terms, pi_terms, means, log_stds = [], [], [], []
    for i in range(3):
        for j in range(4):
            x = torch.cat([rl.obs[i, j], z[i]])
            out = nets.policy.trunk(x)
            mean, log_std = out[:2], out[2:].clamp(-20, 2)
            u = mean + log_std.exp() * eps[i, j]
            a = torch.tanh(u)
            log_pi = (
                torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum() - torch.log(1 - a**2 + 1e-6).sum()
            )
            qa = torch.cat([rl.obs[i, j], a, z[i]])
            min_q = torch.minimum(nets.qf1(qa)[0], nets.qf2(qa)[0])
            v = nets.vf(x)[0]
            v_terms.append(float((v - (min_q - log_pi)) ** 2))
            pi_terms.append(float(log_pi - min_q))
            means.append(mean)
            log_stds.append(log_std)
    reg = 0.01 * float(torch.stack(means).pow(2).mean()) + 0.02 * float(torch.stack(log_stds).pow(2).mean())
    assert float(losses["v"]) == pytest.approx(sum(v_terms) / 12, rel=1e-9)
    assert float(losses["policy"]) == pytest.approx(sum(pi_terms) / 12 + reg, rel=1e-9)
    # z is detached: the actor's losses never reach the encoder.
    (losses["v"] + losses["policy"]).backward()
    assert all(p.grad is None for p in nets.encoder.parameters())


def test_replay_buffers_are_fifo_per_task_and_sample_only_what_is_stored():
    buf = TaskReplayBuffers(num_tasks=2, capacity=5, obs_dim=1, action_dim=1)

    def batch(values):
        v = torch.tensor(values, dtype=torch.float32)
        return Transitions(v[:, None], v[:, None], v, v[:, None], torch.zeros_like(v))

    buf.add(0, batch([1, 2, 3]))
    buf.add(0, batch([4, 5, 6, 7]))  # overwrites 1 and 2
    assert int(buf.size[0]) == 5 and sorted(buf.data.reward[0].tolist()) == [3, 4, 5, 6, 7]
    with pytest.raises(RuntimeError, match="empty buffer"):
        buf.sample(torch.tensor([0, 1]), 4, torch.Generator().manual_seed(0))
    buf.add(1, batch([10]))
    sample = buf.sample(torch.tensor([1, 0]), 50, torch.Generator().manual_seed(0))
    assert sample.reward.shape == (2, 50)
    assert set(sample.reward[0].tolist()) == {10.0} and set(sample.reward[1].tolist()) <= {3.0, 4.0, 5.0, 6.0, 7.0}
    buf.clear(0)
    assert int(buf.size[0]) == 0


def test_action_scaling_round_trips():
    space = Box(-0.1, 0.3, (2,))
    a = torch.rand(5, 2) * 2 - 1
    torch.testing.assert_close(unscale_action(scale_action(a, space), space), a)
    assert bool(space.contains(scale_action(a, space)).all())


def test_meta_test_agent_samples_z_from_the_prior_then_from_the_posterior_on_its_trial():
    cfg = PEARLConfig(**{**TINY, "num_exploration_episodes": 1})
    dist = PointRobotConfig(episode_length=4).make()
    nets = PEARLNetworks(2, 2, cfg, generator=torch.Generator().manual_seed(0))
    agent = PEARLAgent(nets, cfg, dist.action_space)
    zs = []
    act = agent.act

    def recording_act(*args):
        out = act(*args)
        zs.append(agent.z.clone())
        return out

    agent.act = recording_act
    g = torch.Generator().manual_seed(3)
    tasks = dist.sample_tasks(5, g)
    from classic.rollout import rollout

    traj = rollout(agent, dist, tasks, 3, g)
    zs = torch.stack(zs)  # (T, n, L)
    # z is constant within an episode and redrawn at each episode start.
    for e in range(3):
        block = zs[4 * e : 4 * e + 4]
        assert torch.equal(block, block[:1].expand_as(block))
    assert not torch.equal(zs[0], zs[4])
    # The context is every (s, a, r) of the trial before the current step, actions in [-1, 1].
    context = torch.stack(agent.context, dim=1)  # (n, T - 1, 5)
    assert context.shape == (5, 11, 5)
    torch.testing.assert_close(context[..., :2], traj.obs[:-1].transpose(0, 1))
    torch.testing.assert_close(
        context[..., 2:4], unscale_action(dist.action_space.clip(traj.actions[:-1]), dist.action_space).transpose(0, 1)
    )
    torch.testing.assert_close(context[..., 4], traj.rewards[:-1].transpose(0, 1))
    # The posterior at the start of episode 2 is q(z | the 8 transitions of episodes 0 and 1).
    mean, var = nets.posterior(context[:, :8])
    eps = (zs[8] - mean) / var.sqrt()
    assert eps.abs().max() < 6 and not torch.allclose(zs[8], zs[4])


def test_tiny_training_changes_parameters_same_seed_same_numbers_and_resumes(tmp_path):
    dist = PointRobotConfig(episode_length=5).make()
    cfg = PEARLConfig(num_iterations=3, **TINY)
    init = new_state(cfg, dist).nets  # the initialization train_pearl starts from
    a, b = train_pearl(cfg, dist), train_pearl(cfg, dist)
    assert all(not torch.equal(p, q) for p, q in zip(a.encoder.parameters(), init.encoder.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.policy.parameters(), init.policy.parameters()))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    state = tmp_path / "state.pt"
    train_pearl(PEARLConfig(num_iterations=1, **TINY), dist, checkpoint_path=state)
    resumed = train_pearl(cfg, dist, checkpoint_path=state)
    for p, q in zip(a.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    # The trained agent plays the evaluator's trials.
    result = run_trials(PEARLAgent(a, cfg, dist.action_space), dist, num_tasks=4, episodes_per_trial=2)
    assert result.episode_returns.shape == (4, 2) and torch.isfinite(result.episode_returns).all()


def test_config_rejects_bad_values_and_training_needs_box_actions():
    with pytest.raises(ValueError, match="meta_batch"):
        PEARLConfig(num_train_tasks=4, meta_batch=8)
    with pytest.raises(ValueError, match="reward_scale"):
        PEARLConfig(reward_scale=0)
    with pytest.raises(ValueError, match="hidden_sizes"):
        PEARLConfig(hidden_sizes=[])
    from classic.envs.bandit import BernoulliBandit

    with pytest.raises(ValueError, match="Box actions"):
        train_pearl(PEARLConfig(**TINY, num_iterations=1), BernoulliBandit(3))


def test_compare_run_reports_pearl_beside_the_baselines(tmp_path):
    from classic.config import from_dict
    from classic.experiments.compare import CompareExperiment, run_compare

    algo = {**TINY, "num_iterations": 2}
    data = {
        "name": "p",
        "threads": 1,
        "task": {"name": "point_robot", "episodes_per_trial": 2, "episode_length": 5},
        "protocol": {"num_tasks": 4},
        "baselines": [{"name": "Random"}],
        "learners": [{"name": "pearl", "algo": algo}],
        "output": {"root": str(tmp_path)},
    }
    assert LEARNERS.get("pearl")().display_name == "PEARL"
    run_dir = run_compare(from_dict(CompareExperiment, data, source="r.yaml"), progress=False)
    assert (run_dir / "pearl" / "networks.pt").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert math.isfinite(results["agents"]["PEARL"]["total_reward"]["mean"])
    # The sparse point robot defines success (the goal region reached): a rate per episode.
    assert set(results["success_rate"]) == {"Random", "PEARL"} and len(results["success_rate"]["PEARL"]) == 2
    assert "## Success rate per episode" in (run_dir / "report.md").read_text()


def test_latent_size_zero_is_the_multi_task_sac_policy():
    """latent_size 0: no encoder, no z, SAC on every train task's pooled data; its actions depend on
    the state only, never on the trial's rewards (the multi-task policy baseline)."""
    dist = PointRobotConfig(episode_length=4).make()
    cfg = PEARLConfig(**{**TINY, "latent_size": 0, "num_iterations": 2})
    init = new_state(cfg, dist)
    assert init.nets.encoder is None and "context" not in init.optimizers.all()
    nets = train_pearl(cfg, dist)
    assert any(not torch.equal(p, q) for p, q in zip(nets.policy.parameters(), init.nets.policy.parameters()))
    assert all(torch.isfinite(p).all() for p in nets.parameters())
    # The same state gets the same action whatever the trial's history (no task inference).
    agent = PEARLAgent(nets, cfg, dist.action_space)
    agent.reset(2, torch.Generator().manual_seed(0))
    obs = torch.tensor([[0.1, 0.2], [0.1, 0.2]])
    start = torch.ones(2, dtype=torch.bool)
    first = agent.act(obs, torch.zeros(2, 2), torch.zeros(2), start, torch.zeros(2, dtype=torch.bool))
    for _ in range(5):  # different rewards per task, then a new episode
        agent.act(obs, first, torch.tensor([1.0, 0.0]), ~start, ~start)
    again = agent.act(obs, first, torch.tensor([1.0, 0.0]), start, ~start)
    torch.testing.assert_close(again, first)
    assert agent.z.shape == (2, 0)
    with pytest.raises(ValueError, match="latent_size"):
        PEARLConfig(latent_size=-1)
