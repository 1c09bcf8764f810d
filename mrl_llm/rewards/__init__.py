"""Reward callables for ``trl.GRPOTrainer``, registered by name so recipes can name them.

Every reward has TRL's signature ``(prompts, completions, **fields) -> list[float | None]``;
the trial rewards read the per-trial fields that the rollout function returns
(``trial_return``, ``trial_regret``, ``invalid_actions``), which TRL forwards as keyword args.
"""

from __future__ import annotations

from typing import Callable

REWARDS: dict[str, Callable] = {}


def register(name: str):
    """Decorator: make a reward function available to recipes under ``name``."""

    def deco(fn):
        REWARDS[name] = fn
        fn.__name__ = name
        return fn

    return deco


def get_reward(name: str) -> Callable:
    """The reward registered as ``name``; KeyError lists the known names."""
    try:
        return REWARDS[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(REWARDS)}") from None


@register("trial_return")
def trial_return(prompts, completions, trial_return=None, **kwargs) -> list[float]:
    """Total environment reward of the trial (sum over its episodes)."""
    if trial_return is None:
        raise KeyError("trial_return reward needs the rollout field 'trial_return'")
    return [float(r) for r in trial_return]


@register("negative_regret")
def negative_regret(prompts, completions, trial_regret=None, **kwargs) -> list[float]:
    """Minus the trial's expected cumulative regret, sum_t (p* - p_{a_t}) (lower-variance
    than the realized return: the Bernoulli noise of each pull is integrated out)."""
    if trial_regret is None:
        raise KeyError("negative_regret reward needs the rollout field 'trial_regret'")
    return [-float(r) for r in trial_regret]


@register("invalid_action_penalty")
def invalid_action_penalty(prompts, completions, invalid_actions=None, **kwargs) -> list[float]:
    """Minus the number of invalid (unparseable) actions in the trial."""
    if invalid_actions is None:
        raise KeyError("invalid_action_penalty reward needs the rollout field 'invalid_actions'")
    return [-float(x) for x in invalid_actions]


__all__ = ["REWARDS", "register", "get_reward", "trial_return", "negative_regret", "invalid_action_penalty"]

from mrl_llm.rewards.math import answer_correct  # noqa: E402,F401  (registers it)
