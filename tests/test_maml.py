"""MAML / FOMAML (classic/algos/maml.py): adaptation against a slow loop, the meta-gradient against
finite differences, FOMAML = MAML minus the Hessian term, conjugate gradient against a direct
solve, the linear feature baseline against least squares, the evaluator's adaptation protocol,
and tiny trainings (parameters change, resume, same seed same numbers)."""

import copy
import dataclasses

import pytest
import torch

from classic.algos.maml import (
    Episodes,
    GaussianMLPPolicy,
    MAMLAgent,
    MAMLConfig,
    MetaBatch,
    adapt,
    advantages,
    baseline_features,
    conjugate_gradient,
    discounted_returns_to_go,
    fit_linear_baseline,
    surrogate,
    train_maml,
    trpo_step,
)
from classic.envs.nav2d import Nav2DConfig
from classic.evaluate import run_trials
from classic.registry import LEARNERS


def _episodes(B=3, K=4, T=6, obs_dim=2, act_dim=2, seed=0, dtype=torch.float64) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, K, T, dtype=dtype)
    mask[0, 1, 4:] = 0  # one episode ended early
    ep = Episodes(
        obs=torch.randn(B, K, T, obs_dim, generator=g, dtype=dtype),
        actions=torch.randn(B, K, T, act_dim, generator=g, dtype=dtype),
        rewards=torch.randn(B, K, T, generator=g, dtype=dtype) * mask,
        mask=mask,
        advantages=torch.zeros(B, K, T, dtype=dtype),
    )
    return advantages(ep, gamma=0.9)


def _policy(seed=0, hidden=(5,)) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(2, 2, list(hidden), init_std=0.7, generator=torch.Generator().manual_seed(seed)).double()


def _slow_inner_loss(policy, ep_b) -> torch.Tensor:
    """One task's REINFORCE loss by loops: mean over episodes of the per-episode time mean."""
    K, T = ep_b.rewards.shape
    per_episode = []
    for k in range(K):
        terms = []
        for t in range(T):
            if ep_b.mask[k, t] > 0:
                mean = policy(ep_b.obs[k, t])
                dist = torch.distributions.Normal(mean, policy.log_std.exp())
                terms.append(dist.log_prob(ep_b.actions[k, t]).sum() * ep_b.advantages[k, t])
        per_episode.append(torch.stack(terms).mean())
    return -torch.stack(per_episode).mean()


def _task(ep: Episodes, b: int) -> Episodes:
    return Episodes(*(x[b] for x in ep))


def test_adapted_parameters_match_a_slow_per_task_loop():
    policy, ep = _policy(), _episodes()
    adapted = adapt(policy, policy.params(), ep, fast_lr=0.3, first_order=False, batched=False)
    for b in range(3):
        clone = copy.deepcopy(policy)
        grads = torch.autograd.grad(_slow_inner_loss(clone, _task(ep, b)), list(clone.parameters()))
        for (name, p), g in zip(clone.named_parameters(), grads):
            assert torch.allclose(adapted[name][b], p - 0.3 * g, atol=1e-10), name


def _meta_batch(policy, seed=1) -> MetaBatch:
    return MetaBatch(train=[_episodes(seed=seed)], valid=_episodes(seed=seed + 1))


def test_meta_gradient_matches_finite_differences():
    """d/d theta of the surrogate through one second-order adaptation step (float64)."""
    policy = _policy()
    cfg = MAMLConfig(fast_lr=0.5, first_order=False)
    batch = _meta_batch(policy)
    _, _, old = surrogate(policy, batch, cfg)
    old = tuple(x.detach() for x in old)
    loss, _, _ = surrogate(policy, batch, cfg, old)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    eps = 1e-6
    for p, g in zip(policy.parameters(), grads):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += eps
                up = float(surrogate(policy, batch, cfg, old)[0])
                p[idx] -= 2 * eps
                down = float(surrogate(policy, batch, cfg, old)[0])
                p[idx] += eps
            assert float(g[idx]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_fomaml_differs_from_maml_exactly_by_the_hessian_term():
    """MAML: (I - alpha H_i) grad_theta' L_val; FOMAML: grad_theta' L_val (arXiv 1703.03400, Sec. 5.2)."""
    policy, alpha = _policy(), 0.4
    batch = MetaBatch(train=[_episodes(B=1, seed=3)], valid=_episodes(B=1, seed=4))
    leaves = list(policy.parameters())
    _, _, old = surrogate(policy, batch, MAMLConfig(fast_lr=alpha))
    old = tuple(x.detach() for x in old)

    def meta_grad(first_order):
        cfg = MAMLConfig(fast_lr=alpha, first_order=first_order)
        return torch.autograd.grad(surrogate(policy, batch, cfg, old)[0], leaves)

    maml, fomaml = meta_grad(False), meta_grad(True)
    # v = grad_theta' L_val at theta' (what FOMAML returns); H v by double backward of the inner loss
    inner = _slow_inner_loss(policy, _task(batch.train[0], 0))
    g_inner = torch.autograd.grad(inner, leaves, create_graph=True)
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_inner, fomaml)), leaves)
    for m, f, h in zip(maml, fomaml, hv):
        assert torch.allclose(m, f - alpha * h, atol=1e-10)
    assert any(not torch.allclose(m, f) for m, f in zip(maml, fomaml))


def test_conjugate_gradient_matches_a_direct_solve():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(8, 8, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=50, tol=1e-30)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-8)
    few = conjugate_gradient(lambda v: A @ v, b, iters=2)
    assert not torch.allclose(few, torch.linalg.solve(A, b), atol=1e-3)


def test_linear_feature_baseline_is_least_squares_and_returns_are_discounted_sums():
    ep = _episodes(B=2, K=5, T=7)
    returns = discounted_returns_to_go(ep.rewards, ep.mask, 0.9)
    for b, k, t in [(0, 0, 0), (1, 3, 2), (0, 1, 3)]:
        ref = sum(0.9**i * float(ep.rewards[b, k, t + i] * ep.mask[b, k, t + i]) for i in range(7 - t))
        assert float(returns[b, k, t]) == pytest.approx(ref, abs=1e-10)
    feats = baseline_features(ep.obs, ep.mask).reshape(2, 35, -1)
    w = fit_linear_baseline(feats, returns.reshape(2, 35), reg=1e-3)
    for b in range(2):  # ridge = least squares on [F; sqrt(reg) I] against [R; 0]
        f = feats.shape[-1]
        A = torch.cat([feats[b], 1e-3**0.5 * torch.eye(f, dtype=feats.dtype)])
        y = torch.cat([returns.reshape(2, 35)[b], torch.zeros(f, dtype=feats.dtype)])
        ref = torch.linalg.lstsq(A, y.unsqueeze(-1)).solution.squeeze(-1)
        assert torch.allclose(w[b], ref, atol=1e-8)


def test_trpo_step_respects_the_trust_region_and_improves_the_surrogate():
    policy = _policy()
    cfg = MAMLConfig(fast_lr=0.3, max_kl=1e-3)
    batch = _meta_batch(policy, seed=7)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = trpo_step(policy, batch, cfg)
    assert stats["accepted"] == 1.0
    assert stats["loss_after"] < stats["loss_before"] and stats["kl"] < 1e-3
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))


@pytest.mark.parametrize(
    "variant",
    [{}, {"first_order": True}, {"kl_first_order": True}, {"inner_steps": 2}, {"inner_steps": 0}],
    ids=["maml", "fomaml", "kl_first_order", "two_steps", "pretrained"],
)
def test_fisher_form_kl_hvp_equals_the_double_backward_hvp(variant):
    """At the old parameters the KL's Hessian is J^T M J: both ways give the same products (float64)."""
    from classic.algos.maml import fisher_kl_hvp

    policy = _policy()
    cfg = MAMLConfig(fast_lr=0.4, cg_damping=1e-3, **variant)
    train = [_episodes(seed=3 + i) for i in range(cfg.inner_steps)]
    batch = MetaBatch(train=train, valid=_episodes(seed=9))
    leaves = list(policy.parameters())
    kl_cfg = dataclasses.replace(cfg, first_order=True) if cfg.kl_first_order else cfg
    _, _, old = surrogate(policy, batch, kl_cfg)
    _, kl, _ = surrogate(policy, batch, kl_cfg, tuple(x.detach() for x in old))
    grad_kl = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, leaves, create_graph=True)])
    hvp = fisher_kl_hvp(policy, batch, cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(grad_kl.shape, generator=g, dtype=torch.float64)
        ref = torch.cat([x.reshape(-1) for x in torch.autograd.grad(grad_kl.dot(v), leaves, retain_graph=True)])
        torch.testing.assert_close(hvp(v), ref + 1e-3 * v, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kl_hvp", ["double_backward", "fisher"])
def test_kl_hvp_tasks_takes_the_metric_on_the_first_tasks_only(monkeypatch, kl_hvp):
    """With kl_hvp_tasks = n the natural step's metric is the KL Hessian of the first n tasks' adapted
    policies (the meta-gradient still uses every task); n = B is the full metric exactly."""
    import classic.algos.maml as maml

    seen = []

    def spy(hvp, b, iters=10, tol=1e-10):
        seen.append((hvp, b))
        return conjugate_gradient(hvp, b, iters, tol)

    monkeypatch.setattr(maml, "conjugate_gradient", spy)
    cfg = MAMLConfig(fast_lr=0.4, cg_damping=1e-3, meta_batch_size=3, kl_hvp=kl_hvp, kl_hvp_tasks=2)
    policy = _policy()
    batch = MetaBatch(train=[_episodes(seed=3)], valid=_episodes(seed=9))
    full = _policy()
    trpo_step(full, batch, dataclasses.replace(cfg, kl_hvp_tasks=None))
    trpo_step(policy, batch, cfg)
    (hvp_full, g_full), (hvp, g) = seen
    torch.testing.assert_close(g, g_full)  # the meta-gradient: all three tasks
    sub = batch.tasks(2)
    assert sub.valid.obs.shape[0] == 2 and sub.train[0].rewards.shape[0] == 2
    ref_policy = _policy()
    leaves = list(ref_policy.parameters())
    _, _, old = surrogate(ref_policy, sub, cfg)
    _, kl, _ = surrogate(ref_policy, sub, cfg, tuple(x.detach() for x in old))
    grad_kl = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, leaves, create_graph=True)])
    v = torch.randn(grad_kl.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.cat([x.reshape(-1) for x in torch.autograd.grad(grad_kl.dot(v), leaves)]) + 1e-3 * v
    torch.testing.assert_close(hvp(v), ref, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(hvp_full(v), ref)
    # n = B: the same update as the full metric.
    same = _policy()
    trpo_step(same, batch, dataclasses.replace(cfg, kl_hvp_tasks=3))
    for a, b in zip(same.parameters(), full.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kl_hvp_tasks"):
        MAMLConfig(meta_batch_size=3, kl_hvp_tasks=4)


class _CountingAgent:
    """Adapts by 'gradient' by counting steps; acts with velocity 0 or toward the goal."""

    adapts_by_gradient = True
    episodes_per_adaptation = 3
    name = "counting"

    def __init__(self, goals):
        self.goals, self.steps = goals, 0

    def reset(self, num_tasks, generator):
        assert num_tasks == 3 * self.goals.shape[0]
        self.steps = 0

    def act(self, obs, prev_action, prev_reward, terminated, truncated):
        goal = self.goals.repeat_interleave(3, dim=0)
        return torch.zeros_like(obs) if self.steps == 0 else (goal - obs).clamp(-0.1, 0.1)

    def adapt(self, trajectory):
        assert torch.is_grad_enabled()
        self.steps += 1


def test_the_evaluator_plays_gradient_adapting_agents_episode_by_episode_on_k_copies():
    dist = Nav2DConfig().make()
    from classic.evaluate import sample_eval_tasks

    tasks = sample_eval_tasks(dist, 5, seed=0)
    agent = _CountingAgent(tasks.goal)
    result = run_trials(agent, dist, tasks=tasks, episodes_per_trial=3)
    assert result.episode_returns.shape == (5, 3)
    still = -100 * tasks.goal.norm(dim=-1)
    assert torch.allclose(result.episode_returns[:, 0], still, atol=1e-4)
    oracle = dist.optimal_episode_return(tasks)
    assert torch.allclose(result.episode_returns[:, 1], oracle, atol=1e-4)
    assert torch.allclose(result.episode_returns[:, 2], oracle, atol=1e-4)
    assert torch.allclose(result.regret[:, 0], oracle - still, atol=1e-3)


def test_the_agent_adapts_between_episodes_and_test_steps_caps_it():
    dist = Nav2DConfig(episode_length=10).make()
    cfg = MAMLConfig(hidden_sizes=[8], episodes_per_task=4, fast_lr=0.5)
    policy = GaussianMLPPolicy(2, 2, [8], generator=torch.Generator().manual_seed(0))
    agent = MAMLAgent(policy, cfg)
    run_trials(agent, dist, num_tasks=3, episodes_per_trial=3)
    assert agent.steps_taken == 2
    assert not torch.equal(agent.params["log_std"][0], policy.log_std.detach())
    capped = MAMLAgent(policy, dataclasses.replace(cfg, test_steps=1))
    run_trials(capped, dist, num_tasks=3, episodes_per_trial=3)
    assert capped.steps_taken == 1


TINY = dict(hidden_sizes=[8], episodes_per_task=3, meta_batch_size=4, cg_iters=3, ls_max_steps=5)


@pytest.mark.parametrize(
    "variant", [{}, {"first_order": True}, {"outer": "ppo", "ppo_epochs": 2}, {"inner_steps": 2}, {"inner_steps": 0}]
)
def test_tiny_training_changes_parameters_and_same_seed_gives_same_numbers(variant):
    dist = Nav2DConfig(episode_length=10).make()
    cfg = MAMLConfig(num_iterations=2, **TINY, **variant)
    init = GaussianMLPPolicy(2, 2, [8], generator=torch.Generator().manual_seed(cfg.seed))
    a, b = train_maml(cfg, dist), train_maml(cfg, dist)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), init.parameters()))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_interrupted_training_resumes_to_the_same_numbers(tmp_path):
    dist = Nav2DConfig(episode_length=10).make()
    full = train_maml(MAMLConfig(num_iterations=4, **TINY), dist)
    state = tmp_path / "state.pt"
    train_maml(MAMLConfig(num_iterations=2, **TINY), dist, checkpoint_path=state, checkpoint_every=1)
    resumed = train_maml(MAMLConfig(num_iterations=4, **TINY), dist, checkpoint_path=state, checkpoint_every=1)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_learner_config_names_its_variants_and_rejects_bad_values():
    cls = LEARNERS.get("maml")
    assert cls().display_name == "MAML"
    assert cls(algo=MAMLConfig(first_order=True)).display_name == "FOMAML"
    assert cls(algo=MAMLConfig(inner_steps=0)).display_name == "pretrained"
    assert cls(algo=MAMLConfig(num_iterations=0)).display_name == "random init"
    with pytest.raises(ValueError, match="fast_lr"):
        MAMLConfig(fast_lr=0)
    with pytest.raises(ValueError, match="outer"):
        MAMLConfig(outer="sgd")


def test_training_needs_box_actions():
    from classic.envs.bandit import BernoulliBandit

    with pytest.raises(ValueError, match="Box actions"):
        train_maml(MAMLConfig(num_iterations=1, **TINY), BernoulliBandit(3))


def test_compare_run_trains_each_variant_in_its_own_stage_and_reports_per_step_returns(tmp_path):
    """A tiny nav2d compare run: MAML, FOMAML, pretrained, random init and the zero action; each
    variant in its own stage folder; episode e of a MAML agent is its return after e steps."""
    import json

    from classic.config import RecipeError, from_dict
    from classic.experiments.compare import CompareExperiment, run_compare

    algo = {"num_iterations": 2, "hidden_sizes": [8], "episodes_per_task": 3, "meta_batch_size": 4, "cg_iters": 3}
    data = {
        "name": "m",
        "threads": 1,
        "task": {"name": "nav2d", "episodes_per_trial": 3, "episode_length": 10},
        "protocol": {"num_tasks": 6},
        "baselines": [{"name": "zero action"}],
        "learners": [
            {"name": "maml", "algo": algo},
            {"name": "maml", "algo": {**algo, "first_order": True}},
            {"name": "maml", "algo": {**algo, "inner_steps": 0}},
            {"name": "maml", "algo": {**algo, "num_iterations": 0}},
        ],
        "output": {"root": str(tmp_path)},
    }
    cfg = from_dict(CompareExperiment, data, source="r.yaml")
    run_dir = run_compare(cfg, progress=False)
    for stage in ("maml", "fomaml", "pretrained", "random_init"):
        assert (run_dir / stage).is_dir(), stage
    assert (run_dir / "maml" / "policy.pt").is_file() and not (run_dir / "random_init" / "training_state.pt").exists()
    results = json.loads((run_dir / "results.json").read_text())
    text = json.dumps(results)
    for name in ("MAML", "FOMAML", "pretrained", "random init", "zero action"):
        assert f'"{name}"' in text
    twin = {**data, "learners": [{"name": "maml", "label": "x", "algo": algo}, {"name": "rl2", "label": "x"}]}
    with pytest.raises((RecipeError, ValueError), match="named 'x'|stage folder"):
        from_dict(CompareExperiment, twin, source="r.yaml")


def test_linear_baseline_survives_far_wandering_policies_in_float32():
    """Positions ~10 make s^2 ~ 100: the float32 Gram matrix is singular; the fit runs in float64."""
    ep = _episodes(B=2, K=20, T=100, dtype=torch.float32)
    ep = ep._replace(obs=ep.obs * 10, rewards=ep.rewards * 400)
    returns = discounted_returns_to_go(ep.rewards, ep.mask, 0.99)
    feats = baseline_features(ep.obs, ep.mask).reshape(2, 2000, -1)
    w = fit_linear_baseline(feats, returns.reshape(2, 2000))
    ref = fit_linear_baseline(feats.double(), returns.reshape(2, 2000).double())
    assert w.dtype == torch.float32 and bool(torch.isfinite(w).all())
    assert torch.allclose(w.double(), ref, rtol=1e-4, atol=1e-4)


def test_test_time_step_sizes_follow_test_fast_lr():
    policy = GaussianMLPPolicy(2, 2, [8], generator=torch.Generator().manual_seed(0))
    agent = MAMLAgent(policy, MAMLConfig(fast_lr=0.1, test_fast_lr=[0.1, 0.05]))
    assert [agent.step_size(s) for s in range(4)] == [0.1, 0.05, 0.05, 0.05]
    assert MAMLAgent(policy, MAMLConfig(fast_lr=0.3)).step_size(2) == 0.3
    with pytest.raises(ValueError, match="test_fast_lr"):
        MAMLConfig(test_fast_lr=[])
