"""Text renderings of task distributions (:mod:`mrl_llm.envs.text_env`): what an LLM agent reads and
writes in a trial. The reasoning tasks (search, math) are in :mod:`mrl_llm.reasoning`."""

from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.envs.text_env import DiscreteText, TextEnv, text_env_for

__all__ = ["BanditText", "DiscreteText", "TextEnv", "text_env_for"]
