"""MRT's progress reward and advantages (Qu et al. 2025, arXiv 2503.07572): pure tensor maths on
the success rates the meta-prover (:mod:`mrl_llm.reasoning.meta_prover`) measures at episode
boundaries."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def progress_rewards(success: Tensor) -> Tensor:
    """Per-episode progress from the success rates at the episode boundaries.

    Args:
        success: (m + 1,) J(mu | c_{j-1}) for j = 0..m: before any episode, then after each.

    Returns:
        (m,) ``r_prg(z_j) = J(c_j) - J(c_{j-1})`` (Qu et al. 2025, arXiv 2503.07572, Def. 6.1).
        They telescope: their sum is ``J(c_{m-1}) - J(x)``.
    """
    return success[1:] - success[:-1]


def mrt_token_advantages(
    outcome_advantages: Tensor,
    progress: Sequence[Tensor],
    episode_token_ends: Sequence[Sequence[int]],
    completion_length: int,
    alpha: float,
    credit: str = "episode",
) -> Tensor:
    """Per-token advantages of MRT: the outcome advantage plus ``alpha`` x the progress of the
    episode the token belongs to (Eq. 2 of arXiv 2503.07572: each episode is credited with its own
    progress given the prefix before it).

    Args:
        outcome_advantages: (B,) sequence-level advantages of the outcome reward (e.g. GRPO's).
        progress: B tensors, ``progress[i]`` of shape (m_i,): ``r_prg`` of each episode.
        episode_token_ends: per completion, the token index where each episode ends
            (exclusive, non-decreasing); episode j covers tokens ``[ends[j-1], ends[j])`` with
            ``ends[-1] = 0``. Tokens after the last episode (the final answer) get no bonus.
        completion_length: T, columns of the result (the padded completion length).
        alpha: weight of the progress term (>= 0).
        credit: ``"episode"`` (each token gets its episode's progress, Eq. 2) or
            ``"reward_to_go"`` (the sum of the progress of its episode and all later ones).

    Returns:
        (B, T) float advantages.

    Raises:
        ValueError: on mismatched lengths, an unknown ``credit`` or a negative ``alpha``.
    """
    B = outcome_advantages.shape[0]
    if len(progress) != B or len(episode_token_ends) != B:
        raise ValueError(
            f"expected {B} progress vectors and episode ends, got {len(progress)} and {len(episode_token_ends)}"
        )
    if credit not in ("episode", "reward_to_go"):
        raise ValueError(f"credit must be 'episode' or 'reward_to_go', got {credit!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    adv = outcome_advantages.float().unsqueeze(1).repeat(1, completion_length)
    for i in range(B):
        ends = [min(int(e), completion_length) for e in episode_token_ends[i]]
        prg = progress[i].float()
        if len(ends) != prg.shape[0]:
            raise ValueError(f"completion {i}: {prg.shape[0]} progress values for {len(ends)} episodes")
        if not ends:
            continue
        if credit == "reward_to_go":
            prg = prg.flip(0).cumsum(0).flip(0)
        ends_t = torch.tensor(ends)
        token_episode = torch.searchsorted(ends_t, torch.arange(completion_length), right=True)  # (T,) episode index
        inside = token_episode < len(ends)
        bonus = torch.zeros(completion_length)
        bonus[inside] = prg[token_episode[inside]].to(bonus.dtype)
        adv[i] += alpha * bonus.to(adv.device)
    return adv


def termination_advantages(
    rewards: Tensor, termination_rewards: Tensor, num_generations: int, scale: str = "none"
) -> Tensor:
    """MRT's RL variant: the termination reward replaces GRPO's group-mean baseline.

    ``A_i = R_i - R_termination``, where ``R_termination = J(mu | prefix)`` is the success rate of
    stopping at the shared prefix of the group (CMU-AIRe/MRT ``train/rl/README.md``; Fig. 6 of
    arXiv 2503.07572). For a rollout that continues reasoning this is the progress of the rest of
    the trace, ``J(end) - J(prefix)``, telescoped.

    Args:
        rewards: (B,) outcome rewards of the rollouts, B = groups x ``num_generations``,
            consecutive rows forming a group.
        termination_rewards: (B,) the group's termination reward, repeated per row.
        num_generations: G, rollouts per group.
        scale: ``"none"`` (the README's form) or ``"group"`` (divide by the group's reward std
            + 1e-4, as GRPO does).

    Returns:
        (B,) advantages.

    Raises:
        ValueError: on shape mismatch, B not a multiple of G, or an unknown ``scale``.
    """
    if rewards.shape != termination_rewards.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and termination_rewards {tuple(termination_rewards.shape)} "
            "must be equal 1-D shapes"
        )
    if rewards.shape[0] % num_generations:
        raise ValueError(f"{rewards.shape[0]} rewards are not a multiple of num_generations={num_generations}")
    adv = rewards - termination_rewards
    if scale == "group":
        std = (
            rewards.view(-1, num_generations).std(dim=1, unbiased=True)
            if num_generations > 1
            else torch.zeros(rewards.shape[0] // num_generations)
        )
        adv = adv / (std.repeat_interleave(num_generations) + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale must be 'none' or 'group', got {scale!r}")
    return adv
