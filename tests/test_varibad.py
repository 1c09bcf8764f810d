"""VariBAD (classic/algos/varibad.py): the ELBO's terms against a hand computation step by step,
the agent's online beliefs against the encoder over the whole trajectory, PPO leaving the encoder
alone, and tiny trainings (parameters change, same seed same numbers, resume), on the platform."""

import json

import pytest
import torch

from classic.algos.varibad import (
    VariBADAgent,
    VariBADConfig,
    VariBADNetworks,
    diag_gaussian_kl,
    elbo_terms,
    ppo_update,
    train_varibad,
    vae_batch_from,
)
from classic.envs.gridnavi import GridNaviConfig
from classic.evaluate import run_trials
from classic.registry import LEARNERS
from classic.rollout import rollout

TINY = dict(
    latent_dim=2,
    gru_hidden_size=6,
    state_embedding_size=4,
    reward_embedding_size=3,
    reward_decoder_layers=[5],
    policy_layers=[8],
    num_trials_per_batch=4,
    num_minibatches=2,
    ppo_epochs=2,
    vae_batch_num_trials=3,
    num_vae_updates=2,
    checkpoint_every=1,
)


def _trajectory(config, episodes=2, episode_length=4, n=3, seed=0, nets=None):
    dist = GridNaviConfig(size=3, episode_length=episode_length).make()
    nets = nets or VariBADNetworks(2, 5, config, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    traj = rollout(VariBADAgent(nets, record=True), dist, dist.sample_tasks(n, g), episodes, g)
    return dist, nets, traj


@pytest.mark.parametrize("reward_loss,kl_to_prior", [("bernoulli", False), ("gaussian", True)])
def test_elbo_terms_match_a_hand_computation(reward_loss, kl_to_prior):
    cfg = VariBADConfig(**TINY, reward_loss=reward_loss, kl_to_gauss_prior=kl_to_prior, action_embedding_size=2)
    _, nets, traj = _trajectory(cfg)
    nets = nets.double()
    batch = vae_batch_from(traj)
    # Make a reward positive somewhere so the Bernoulli target has both classes.
    batch = batch._replace(
        rewards=batch.rewards.clone().index_put_((torch.tensor([2]), torch.tensor([1])), torch.tensor(1.0))
    )
    terms = elbo_terms(nets, batch, cfg, torch.Generator().manual_seed(7))
    T, B = batch.rewards.shape
    eps = torch.randn(T, B, cfg.latent_dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rec_total, kl_total = 0.0, 0.0
    with torch.no_grad():
        for b in range(B):
            mu, logvar, h = nets.prior(1)
            beliefs = [(mu[0], logvar[0])]
            for t in range(1, T):
                x = nets.encoder_input(
                    batch.obs[t, b : b + 1],
                    batch.prev_actions[t, b : b + 1],
                    batch.prev_rewards[t, b : b + 1],
                    batch.starts[t, b : b + 1],
                )
                mu, logvar, h = nets.step_belief(x, h)
                beliefs.append((mu[0], logvar[0]))
            prev = (torch.zeros(cfg.latent_dim, dtype=torch.float64), torch.zeros(cfg.latent_dim, dtype=torch.float64))
            for t, (mu_t, logvar_t) in enumerate(beliefs):
                ref = prev if not kl_to_prior else (torch.zeros_like(mu_t), torch.zeros_like(mu_t))
                var_q, var_p = logvar_t.exp(), ref[1].exp()
                kl_total += float(0.5 * (ref[1] - logvar_t + (var_q + (mu_t - ref[0]) ** 2) / var_p - 1).sum())
                prev = (mu_t, logvar_t)
                z = mu_t + (0.5 * logvar_t).exp() * eps[t, b]
                for j in range(T - 1):
                    if batch.starts[j + 1, b]:
                        continue  # the step that ended an episode: its next state is not recorded
                    out = nets.reward_output(batch.obs[j + 1, b], z)
                    r = batch.rewards[j, b]
                    if reward_loss == "bernoulli":
                        p = torch.sigmoid(out)
                        y = float(r > 0)
                        rec_total -= float(y * torch.log(p) + (1 - y) * torch.log(1 - p))
                    else:
                        rec_total += float((out - r) ** 2)
    assert float(terms["kl"].detach()) == pytest.approx(kl_total / B, rel=1e-9)
    assert float(terms["reconstruction"].detach()) == pytest.approx(rec_total / B, rel=1e-9)


def test_diag_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    lq, lp = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    Normal = torch.distributions.Normal
    ref = torch.distributions.kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)
    torch.testing.assert_close(diag_gaussian_kl(mq, lq, mp, lp), ref)


def test_online_beliefs_equal_the_encoder_over_the_whole_trajectory():
    """What the policy acted on (stored per step) is what the ELBO's encoder computes for the trial."""
    cfg = VariBADConfig(**TINY)
    _, nets, traj = _trajectory(cfg, episodes=3)
    batch = vae_batch_from(traj)
    with torch.no_grad():
        inputs = nets.encoder_input(batch.obs[1:], batch.prev_actions[1:], batch.prev_rewards[1:], batch.starts[1:])
        mu, logvar = nets.beliefs(inputs)
    T = batch.rewards.shape[0]
    stored = traj.info["policy_input"]  # (T, B, obs + 2 L)
    torch.testing.assert_close(stored[..., 2 : 2 + cfg.latent_dim], mu[:T])
    torch.testing.assert_close(stored[..., 2 + cfg.latent_dim :], logvar[:T])


def test_ppo_update_changes_the_policy_only():
    cfg = VariBADConfig(**TINY)
    _, nets, traj = _trajectory(cfg, n=4)
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    opt = torch.optim.Adam([*nets.actor.parameters(), *nets.critic.parameters()], lr=1e-2)
    ppo_update(nets, opt, traj, cfg, torch.Generator().manual_seed(0))
    after = nets.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("actor.", "critic.")) for k in changed)


def test_tiny_training_changes_parameters_same_seed_same_numbers_and_resumes(tmp_path):
    dist = GridNaviConfig(size=3, episode_length=4).make()
    cfg = VariBADConfig(num_iterations=3, **TINY)
    init = VariBADNetworks(2, 5, cfg, generator=torch.Generator().manual_seed(cfg.seed))
    a, b = train_varibad(cfg, dist, 2), train_varibad(cfg, dist, 2)
    for part in ("gru", "reward_decoder", "actor"):
        assert any(
            not torch.equal(p, q) for p, q in zip(getattr(a, part).parameters(), getattr(init, part).parameters())
        ), part
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    state = tmp_path / "state.pt"
    train_varibad(VariBADConfig(num_iterations=1, **TINY), dist, 2, checkpoint_path=state)
    resumed = train_varibad(cfg, dist, 2, checkpoint_path=state)
    for p, q in zip(a.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    result = run_trials(VariBADAgent(a), dist, num_tasks=5, episodes_per_trial=2)
    assert result.episode_returns.shape == (5, 2)


def test_config_rejects_bad_values_and_training_needs_discrete_actions():
    with pytest.raises(ValueError, match="reward_loss"):
        VariBADConfig(reward_loss="poisson")
    with pytest.raises(ValueError, match="gamma"):
        VariBADConfig(gamma=1.5)
    from classic.envs.nav2d import Nav2DConfig

    with pytest.raises(ValueError, match="Discrete actions"):
        train_varibad(VariBADConfig(**TINY, num_iterations=1), Nav2DConfig().make(), 2)


def test_compare_run_reports_varibad_beside_the_bayes_optimal_bound(tmp_path):
    from classic.config import from_dict
    from classic.experiments.compare import CompareExperiment, run_compare

    data = {
        "name": "v",
        "threads": 1,
        "task": {"name": "gridnavi", "size": 3, "episodes_per_trial": 2, "episode_length": 4},
        "protocol": {"num_tasks": 4},
        "baselines": [{"name": "Random"}],
        "learners": [{"name": "varibad", "algo": {**TINY, "num_iterations": 2}}],
        "output": {"root": str(tmp_path)},
    }
    assert LEARNERS.get("varibad")().display_name == "VariBAD"
    run_dir = run_compare(from_dict(CompareExperiment, data, source="r.yaml"), progress=False)
    assert (run_dir / "varibad" / "networks.pt").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert "VariBAD" in results["agents"] and "Bayes-optimal" in results["bounds"]
