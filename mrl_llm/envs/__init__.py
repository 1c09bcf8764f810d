"""Text renderings of classic task distributions."""

from mrl_llm.envs.text_bandit import BanditText

__all__ = ["BanditText"]
