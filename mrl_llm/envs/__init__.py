"""Text renderings of classic task distributions."""

from mrl_llm.envs.math_data import load_math_dataset
from mrl_llm.envs.text_bandit import BanditText

__all__ = ["BanditText", "load_math_dataset"]
