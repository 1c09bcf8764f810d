"""LLM meta-RL: in-context RL trials, meta-RL finetuning (GRPO over trials), MRT.

Importing the package adds its learners (:mod:`mrl_llm.learners`) to the platform's registry, so a
``kind: compare`` recipe can name ``{name: llm}`` beside the classic learners.
"""

from classic.registry import LEARNERS

LEARNERS.add_package("mrl_llm.learners")
