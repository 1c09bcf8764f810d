"""Pure tensor maths shared by the meta-learners: returns, GAE, PPO losses, normalization.

Every function is stateless and works on time-major tensors: a leading time dimension ``T``
followed by any batch shape ``B`` (usually ``(T, B)``). Nothing here knows about networks,
environments or optimizers, so each function can be tested against a slow reference loop
(``tests/test_functional.py``).

Episode-boundary convention (used by :func:`discounted_returns` and :func:`gae`):
    ``dones[t]`` is True when the episode ended *after* step ``t`` at a terminal state, so the
    return at ``t`` does not bootstrap from ``t + 1``. A time-limit truncation that should
    bootstrap is not a ``done`` here; fold it in beforehand by adding
    ``gamma * V(s_truncated)`` to that step's reward and marking it done (the SB3 convention).
    For RL², the "episode" of these functions is the whole trial: the ends of the inner
    episodes are *not* dones, the end of the trial is (Duan et al. 2016, arXiv 1611.02779).

Sources:
    GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
        Advantage Estimation", arXiv 1506.02438, Eq. 16.
    PPO clipped surrogate: Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
        arXiv 1707.06347, Eq. 7; approx-KL estimator k3 (Schulman 2020, "Approximating KL
        Divergence", as used by CleanRL); value clipping as in the OpenAI baselines PPO2 code
        (Engstrom et al. 2020, arXiv 2005.12729, Sec. 3).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scalar mean of ``x`` over the entries where ``mask`` is True (all entries if None).

    Args:
        x: any-shape float tensor.
        mask: optional bool tensor of the same shape (an all-False mask gives 0).
    """
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def normalize(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Standardize ``x`` to zero mean and unit standard deviation.

    Args:
        x: any-shape float tensor.
        mask: optional bool tensor of the same shape; statistics use only the True entries,
            and masked-out entries of the result are set to 0.
        eps: added to the standard deviation.

    Returns:
        Tensor of the shape of ``x``: ``(x - mean) / (std + eps)`` with the unbiased std
        (the CleanRL advantage normalization). With fewer than two (unmasked) entries the
        std is taken as 0.
    """
    if mask is None:
        mean = x.mean()
        std = x.std() if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
        return (x - mean) / (std + eps)
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1.0)
    var = (((x - mean) * m) ** 2).sum() / (n - 1.0).clamp(min=1.0)
    return torch.where(mask, (x - mean) / (var.sqrt() + eps), torch.zeros_like(x))


def discounted_returns(rewards: Tensor, dones: Tensor, last_value: Tensor, gamma: float) -> Tensor:
    """Discounted returns-to-go ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}``.

    Args:
        rewards: (T, B) float rewards.
        dones: (T, B) bool, the episode ended after step ``t`` (see the module docstring).
        last_value: (B,) float bootstrap value of the state after step ``T - 1``
            (used only where ``dones[T - 1]`` is False).
        gamma: discount factor in [0, 1].

    Returns:
        (T, B) float returns.
    """
    not_done = (~dones).to(rewards.dtype)
    returns = torch.empty_like(rewards)
    running = last_value.to(rewards.dtype)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * not_done[t] * running
        returns[t] = running
    return returns


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_value: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv 1506.02438, Eq. 16).

    ``delta_t = r_t + gamma * (1 - done_t) * V_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}``, with ``V_T = last_value``.

    Args:
        rewards: (T, B) float rewards.
        values: (T, B) float value estimates V(s_t) of the states the actions were taken in.
        dones: (T, B) bool, the episode ended (terminally) after step ``t``; no bootstrap
            across it (see the module docstring for truncation).
        last_value: (B,) float V of the state after step ``T - 1``.
        gamma: discount factor in [0, 1].
        lam: GAE lambda in [0, 1]; 0 gives one-step TD errors, 1 gives Monte-Carlo returns
            minus the baseline.

    Returns:
        ``(advantages, returns)``, each (T, B) float; ``returns = advantages + values`` are the
        TD(lambda) value targets.
    """
    not_done = (~dones).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    next_value = last_value.to(rewards.dtype)
    running = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * not_done[t] * next_value - values[t]
        running = delta + gamma * lam * not_done[t] * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


class PPOLossInfo(NamedTuple):
    """Scalar diagnostics of one PPO surrogate evaluation (no gradient).

    Attributes:
        approx_kl: () estimate of KL(old || new), ``mean((ratio - 1) - log ratio)`` (k3).
        clipfrac: () fraction of entries with ``|ratio - 1| > clip_eps``.
    """

    approx_kl: Tensor
    clipfrac: Tensor


def ppo_clip_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_eps: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, PPOLossInfo]:
    """PPO clipped surrogate loss (Schulman et al. 2017, arXiv 1707.06347, Eq. 7), negated.

    ``loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` with
    ``ratio = exp(logp_new - logp_old)``.

    Args:
        logp_new: any-shape float log-probabilities under the current policy (with gradient).
        logp_old: same shape, log-probabilities under the behaviour policy (no gradient).
        advantages: same shape, advantage estimates (normalize them beforehand if wanted).
        clip_eps: clipping range epsilon > 0.
        mask: optional bool, same shape; the mean is taken over the True entries.

    Returns:
        ``(loss, info)``: the scalar loss to minimize and :class:`PPOLossInfo`.
    """
    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
    return loss, PPOLossInfo(approx_kl=approx_kl, clipfrac=clipfrac)


def value_loss(
    values: Tensor,
    returns: Tensor,
    old_values: Tensor | None = None,
    clip_eps: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Squared-error value loss ``0.5 * mean((V - R)^2)``, optionally clipped.

    With ``clip_eps`` and ``old_values`` given, the loss is
    ``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))`` (PPO2 value
    clipping; Engstrom et al. 2020, arXiv 2005.12729, found it rarely helps).

    Args:
        values: any-shape float predictions (with gradient).
        returns: same shape, targets.
        old_values: same shape, predictions at collection time (needed for clipping).
        clip_eps: clipping range in the units of the values, or None for no clipping.
        mask: optional bool, same shape; the mean is over the True entries.

    Returns:
        Scalar loss.

    Raises:
        ValueError: if ``clip_eps`` is given without ``old_values``.
    """
    err = (values - returns) ** 2
    if clip_eps is not None:
        if old_values is None:
            raise ValueError("value_loss: clip_eps needs old_values")
        clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of categorical distributions given by ``logits`` (..., A); returns (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
