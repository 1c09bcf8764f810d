"""LLM meta-RL: in-context RL trials, meta-RL finetuning (GRPO over trials), MRT."""
