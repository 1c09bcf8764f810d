"""Batched, functional task distributions."""

from classic.envs.bandit import BanditConfig, BanditState, BanditTasks, BernoulliBandit
from classic.envs.base import Step, TaskDistribution
from classic.envs.tabular_mdp import MDPState, MDPTasks, TabularMDP, TabularMDPConfig

__all__ = [
    "BanditConfig",
    "BanditState",
    "BanditTasks",
    "BernoulliBandit",
    "MDPState",
    "MDPTasks",
    "Step",
    "TabularMDP",
    "TabularMDPConfig",
    "TaskDistribution",
]
