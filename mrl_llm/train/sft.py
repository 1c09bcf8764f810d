"""Algorithm distillation by SFT: teach an LM a classic agent's in-context behaviour.

The teacher (e.g. Thompson sampling) plays training tasks; its trials are rendered as text by the
same :class:`~mrl_llm.rollout.agent.TrialRenderer` the LLM agent uses, and ``trl.SFTTrainer``
trains on them with the loss on the teacher's replies only (``completion_mask`` = the rollout's
``env_mask``), in the spirit of Algorithm Distillation (Laskin et al. 2022, arXiv 2210.14215),
here distilling an expert policy's trials rather than a learning history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from classic.evaluate import run_trials
from mrl_llm.models import activation_checkpointing_kwargs
from mrl_llm.rollout.agent import TrialRenderer, Transcript


@dataclass
class SFTStageConfig:
    """Distillation stage settings (fields map onto ``trl.SFTConfig`` where named alike).

    Attributes:
        enabled: run the stage.
        num_trials: teacher trials rendered as training sequences.
        num_train_epochs: passes over them.
        learning_rate: peak AdamW learning rate.
        per_device_train_batch_size: sequences per step.
        gradient_accumulation_steps: steps per optimizer update.
        lr_scheduler_type: transformers scheduler name.
        warmup_ratio: fraction of steps of linear warmup.
        weight_decay: AdamW weight decay.
        logging_steps: log every k optimizer steps.
        save_steps: checkpoint every k steps (resumable).
        bf16: bfloat16 mixed precision (GPU).
        gradient_checkpointing: trade compute for memory.
        seed: data (teacher trials) and trainer seed.
    """

    enabled: bool = True
    num_trials: int = 3000
    num_train_epochs: float = 3.0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    logging_steps: int = 10
    save_steps: int = 100
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_trials", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.num_train_epochs <= 0:
            raise ValueError("learning_rate and num_train_epochs must be > 0")


# Training streams are seeded below EVAL_SEED_OFFSET (classic.evaluate), so their tasks are disjoint.
SFT_SEED_BASE = 20_000


def teacher_transcripts(teacher, dist, renderer: TrialRenderer, num_trials: int, episodes_per_trial: int, seed: int) -> list[Transcript]:
    """Run ``teacher`` for ``num_trials`` training trials and render each as token ids.

    Returns:
        ``num_trials`` transcripts; ``env_mask`` is 1 on the teacher's reply tokens.
    """
    g = torch.Generator().manual_seed(SFT_SEED_BASE + seed)
    tasks = dist.sample_tasks(num_trials, g)
    res = run_trials(teacher, dist, tasks=tasks, episodes_per_trial=episodes_per_trial, seed=SFT_SEED_BASE + seed)
    actions, rewards = res.actions.tolist(), res.rewards.tolist()
    return [renderer.teacher_trial(a, r) for a, r in zip(actions, rewards)]


def distillation_dataset(transcripts: list[Transcript]):
    """A ``datasets.Dataset`` with ``input_ids`` and ``completion_mask`` (1 = trained on)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [t.prompt_ids + t.completion_ids for t in transcripts],
            "completion_mask": [[0] * len(t.prompt_ids) + t.env_mask for t in transcripts],
        }
    )


def sft_arguments(cfg: SFTStageConfig, output_dir: str | os.PathLike, use_cpu: bool | None = None):
    """The ``trl.SFTConfig`` for a stage config (no model needed: used by ``--dry-run`` too)."""
    from trl import SFTConfig

    use_cpu = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        completion_only_loss=True,
        max_length=None,
        report_to=[],
        use_cpu=use_cpu,
        bf16=cfg.bf16,
        **activation_checkpointing_kwargs(SFTConfig, cfg.gradient_checkpointing),
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def run_sft(model, tokenizer, dataset, cfg: SFTStageConfig, output_dir: str | os.PathLike, callbacks=(), peft_config=None, use_cpu: bool | None = None):
    """Train ``model`` on ``dataset`` with ``trl.SFTTrainer``; resumes from the last checkpoint in
    ``output_dir`` if one exists. Returns the trainer (its ``.model`` is the trained model)."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    output_dir = Path(output_dir)
    args = sft_arguments(cfg, output_dir, use_cpu)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    last = get_last_checkpoint(str(output_dir)) if output_dir.exists() else None
    trainer.train(resume_from_checkpoint=last)
    return trainer
