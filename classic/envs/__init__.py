"""Batched, functional task distributions."""

from classic.envs.bandit import BanditConfig, BanditState, BanditTasks, BernoulliBandit
from classic.envs.base import Step, TaskDistribution

__all__ = ["BanditConfig", "BanditState", "BanditTasks", "BernoulliBandit", "Step", "TaskDistribution"]
