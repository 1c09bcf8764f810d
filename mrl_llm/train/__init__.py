"""Thin layers over TRL trainers: SFT (algorithm distillation) and GRPO (meta-RL finetuning)."""
