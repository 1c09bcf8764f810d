"""classic.functional against slow per-element reference loops and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from classic import functional as F


def _random_rollout(T: int, B: int, seed: int, p_done: float = 0.15):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, B, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, generator=g, dtype=torch.float64)
    dones = torch.rand(T, B, generator=g) < p_done
    dones[T // 2, 0] = True  # at least one episode boundary in the middle
    last_value = torch.randn(B, generator=g, dtype=torch.float64)
    return rewards, values, dones, last_value


def _gae_reference(rewards, values, dones, last_value, gamma, lam):
    """Per-element GAE: for every (t, b), sum (gamma*lam)^k delta_{t+k} up to the episode end."""
    T, B = rewards.shape
    adv = torch.zeros(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                next_v = float(last_value[b]) if k == T - 1 else float(values[k + 1, b])
                nonterminal = 0.0 if bool(dones[k, b]) else 1.0
                delta = float(rewards[k, b]) + gamma * nonterminal * next_v - float(values[k, b])
                total += weight * delta
                if bool(dones[k, b]):
                    break
                weight *= gamma * lam
            adv[t, b] = total
    return adv


def _returns_reference(rewards, dones, last_value, gamma):
    T, B = rewards.shape
    out = torch.zeros(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            total, weight, ended = 0.0, 1.0, False
            for k in range(t, T):
                total += weight * float(rewards[k, b])
                if bool(dones[k, b]):
                    ended = True
                    break
                weight *= gamma
            if not ended:
                total += weight * float(last_value[b])
            out[t, b] = total
    return out


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (1.0, 0.5), (0.5, 0.8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_reference_loop(gamma, lam, seed):
    rewards, values, dones, last_value = _random_rollout(T=17, B=5, seed=seed)
    adv, ret = F.gae(rewards, values, dones, last_value, gamma, lam)
    ref = _gae_reference(rewards, values, dones, last_value, gamma, lam)
    assert adv.shape == (17, 5) and ret.shape == (17, 5)
    torch.testing.assert_close(adv, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ret, ref + values, rtol=1e-10, atol=1e-10)


def test_gae_lambda_one_is_monte_carlo_minus_baseline():
    rewards, values, dones, last_value = _random_rollout(T=12, B=4, seed=3)
    adv, ret = F.gae(rewards, values, dones, last_value, gamma=0.97, lam=1.0)
    mc = F.discounted_returns(rewards, dones, last_value, gamma=0.97)
    torch.testing.assert_close(ret, mc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(adv, mc - values, rtol=1e-10, atol=1e-10)


def test_gae_does_not_bootstrap_across_done():
    # One step before a done: advantage must be r - V, whatever the values after it.
    rewards = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    values = torch.tensor([[0.5], [0.25], [100.0]], dtype=torch.float64)
    dones = torch.tensor([[False], [True], [False]])
    adv, _ = F.gae(rewards, values, dones, torch.tensor([7.0], dtype=torch.float64), gamma=1.0, lam=1.0)
    assert adv[1, 0].item() == pytest.approx(2.0 - 0.25)
    assert adv[0, 0].item() == pytest.approx(1.0 + 2.0 - 0.5)
    assert adv[2, 0].item() == pytest.approx(3.0 + 7.0 - 100.0)


@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
def test_discounted_returns_matches_reference(gamma):
    rewards, _, dones, last_value = _random_rollout(T=15, B=6, seed=4)
    torch.testing.assert_close(
        F.discounted_returns(rewards, dones, last_value, gamma),
        _returns_reference(rewards, dones, last_value, gamma),
        rtol=1e-10,
        atol=1e-10,
    )


def _ppo_reference(logp_new, logp_old, adv, eps, mask=None):
    terms, kls, clipped = [], [], []
    flat = zip(logp_new.flatten().tolist(), logp_old.flatten().tolist(), adv.flatten().tolist())
    keep = [True] * logp_new.numel() if mask is None else mask.flatten().tolist()
    for (ln, lo, a), k in zip(flat, keep):
        if not k:
            continue
        r = math.exp(ln - lo)
        rc = min(max(r, 1 - eps), 1 + eps)
        terms.append(-min(r * a, rc * a))
        kls.append((r - 1) - (ln - lo))
        clipped.append(1.0 if abs(r - 1) > eps else 0.0)
    n = len(terms)
    return sum(terms) / n, sum(kls) / n, sum(clipped) / n


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3])
@pytest.mark.parametrize("use_mask", [False, True])
def test_ppo_clip_loss_matches_reference(eps, use_mask):
    g = torch.Generator().manual_seed(5)
    shape = (9, 7)
    logp_old = torch.randn(shape, generator=g, dtype=torch.float64) - 1.0
    logp_new = logp_old + 0.4 * torch.randn(
        shape, generator=g, dtype=torch.float64
    )  # many ratios outside the clip range
    adv = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(shape, generator=g) < 0.7) if use_mask else None
    loss, info = F.ppo_clip_loss(logp_new, logp_old, adv, eps, mask)
    ref_loss, ref_kl, ref_cf = _ppo_reference(logp_new, logp_old, adv, eps, mask)
    assert 0.0 < ref_cf < 1.0  # the test exercises both branches
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert info.approx_kl.item() == pytest.approx(ref_kl, rel=1e-10, abs=1e-12)
    assert info.clipfrac.item() == pytest.approx(ref_cf)


def test_ppo_clip_loss_gradient_is_zero_when_clipped_in_the_advantage_direction():
    logp_old = torch.zeros(2, dtype=torch.float64)
    logp_new = torch.log(torch.tensor([1.5, 0.5], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)  # ratio already pushed past 1 +/- eps
    loss, _ = F.ppo_clip_loss(logp_new, logp_old, adv, clip_eps=0.2)
    loss.backward()
    assert torch.equal(logp_new.grad, torch.zeros(2, dtype=torch.float64))


def test_ppo_clip_loss_equals_vanilla_pg_at_ratio_one():
    g = torch.Generator().manual_seed(6)
    logp = torch.randn(20, generator=g, dtype=torch.float64).requires_grad_()
    adv = torch.randn(20, generator=g, dtype=torch.float64)
    loss, info = F.ppo_clip_loss(logp, logp.detach(), adv, clip_eps=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-adv.mean().item())
    torch.testing.assert_close(logp.grad, -adv / 20)
    assert info.approx_kl.item() == 0.0 and info.clipfrac.item() == 0.0


def test_value_loss_unclipped_and_clipped():
    v = torch.tensor([1.0, 2.0, 3.0, -1.0], dtype=torch.float64)
    v_old = torch.tensor([0.0, 2.5, 3.0, 0.0], dtype=torch.float64)
    ret = torch.tensor([2.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    assert F.value_loss(v, ret).item() == pytest.approx(0.5 * (1 + 0 + 9 + 4) / 4)
    ref = []
    for vi, oi, ri in zip(v.tolist(), v_old.tolist(), ret.tolist()):
        vc = oi + min(max(vi - oi, -0.2), 0.2)
        ref.append(max((vi - ri) ** 2, (vc - ri) ** 2))
    assert F.value_loss(v, ret, v_old, clip_eps=0.2).item() == pytest.approx(0.5 * sum(ref) / 4)
    mask = torch.tensor([True, False, True, False])
    assert F.value_loss(v, ret, mask=mask).item() == pytest.approx(0.5 * (1 + 9) / 2)
    with pytest.raises(ValueError, match="old_values"):
        F.value_loss(v, ret, clip_eps=0.2)


def test_normalize():
    g = torch.Generator().manual_seed(7)
    x = 3.0 + 5.0 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = F.normalize(x)
    assert y.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert y.std().item() == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(y, (x - x.mean()) / (x.std() + 1e-8))


def test_normalize_with_mask_uses_only_kept_entries():
    x = torch.tensor([1.0, 2.0, 3.0, 1000.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False])
    y = F.normalize(x, mask)
    kept = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(y[:3], (kept - 2.0) / (kept.std() + 1e-8))
    assert y[3].item() == 0.0


def test_categorical_entropy():
    logits = torch.log(torch.tensor([[0.5, 0.5], [1.0, 1e-30], [0.25, 0.75]], dtype=torch.float64))
    expected = [math.log(2), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    torch.testing.assert_close(
        F.categorical_entropy(logits), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0
    )
