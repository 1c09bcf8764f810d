"""The agent interface (defined in :mod:`classic.core`, re-exported here) and the base of every
registered baseline's config.

A baseline is a hand-designed agent (UCB1, Thompson sampling, PSRL, ...). Its file registers a
config dataclass in :data:`classic.registry.AGENTS`; recipes name it
(``baselines: [{name: UCB1, grid: {c: [0.1, 0.2]}}]``). The config's fields are the agent's
hyperparameters; ``grid`` lists values of some of them to tune on training tasks (the product of
the lists is searched; the point with the best mean total reward is evaluated).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from classic.core import ActOutput, Agent, TaskDistribution, adapts_by_gradient

__all__ = ["ActOutput", "Agent", "BaselineConfig", "adapts_by_gradient"]


@dataclass
class BaselineConfig:
    """Base of the registered baseline configs.

    Attributes:
        name: the registry name (set by each subclass).
        label: the agent's name in reports (default: ``name``).
        grid: hyperparameter -> values searched on training tasks; None takes the baseline's
            default grid for the task (:meth:`default_grid`), ``{}`` tunes nothing.

    Raises:
        ValueError: a grid key that is not a hyperparameter of this baseline, or an empty list.
    """

    name: str = ""
    label: str | None = None
    grid: dict[str, list[Any]] | None = None

    def __post_init__(self) -> None:
        params = self.hyperparameters()
        for key, values in (self.grid or {}).items():
            if key not in params:
                raise ValueError(
                    f"grid: {self.name} has no hyperparameter {key!r} (known: {', '.join(params) or 'none'})"
                )
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key} must be a non-empty list of values")

    @classmethod
    def hyperparameters(cls) -> list[str]:
        """The tunable fields (every field but name, label and grid)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "label", "grid")]

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def settings(self) -> dict[str, Any]:
        """The hyperparameters' values, by name."""
        return {k: getattr(self, k) for k in self.hyperparameters()}

    def default_grid(self, dist: TaskDistribution) -> dict[str, list[Any]]:
        """The grid searched when ``grid`` is None (none by default)."""
        return {}

    def tuning_grid(self, dist: TaskDistribution) -> dict[str, list[Any]]:
        return self.default_grid(dist) if self.grid is None else dict(self.grid)

    def make(self, dist: TaskDistribution, episodes_per_trial: int) -> Agent:
        """The agent for trials of ``episodes_per_trial`` episodes on ``dist``.

        Raises:
            ValueError: the baseline does not apply to this task distribution (the message says which it needs).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make(dist, episodes_per_trial)")


def needs(what: str, name: str, dist: TaskDistribution) -> ValueError:
    """The error a baseline raises on a task distribution it does not apply to."""
    return ValueError(f"baseline {name!r} needs {what}, not {type(dist).__name__}")


def settings_text(params: dict[str, Any]) -> str:
    """``"alpha = 1.0, gamma = 0.9"`` (None values left out), or "" when there are none."""
    return ", ".join(f"{k} = {v}" for k, v in params.items() if v is not None)
