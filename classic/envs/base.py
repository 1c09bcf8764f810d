"""The task-distribution interface: defined in :mod:`classic.core`, re-exported here for the envs' files."""

from classic.core import Box, Discrete, Step, TaskDistribution

__all__ = ["Box", "Discrete", "Step", "TaskDistribution"]
