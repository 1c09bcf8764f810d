"""Algorithm distillation by SFT: teach an LM a classic agent's in-context behaviour.

The teacher (e.g. Thompson sampling) plays training tasks; its trials are rendered as text by the
same :class:`~mrl_llm.rollout.agent.TrialRenderer` the LLM agent uses, and ``trl.SFTTrainer``
trains on them with the loss on the teacher's replies only (``completion_mask`` = the rollout's
``env_mask``), in the spirit of Algorithm Distillation (Laskin et al. 2022, arXiv 2210.14215),
here distilling an expert policy's trials rather than a learning history.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch

from classic import seeding
from classic.evaluate import run_trials
from mrl_llm.models import (
    activation_checkpointing_kwargs,
    additive_attention_mask,
    attention_implementation,
    takes_4d_attention_mask,
)
from mrl_llm.rollout.agent import TrialRenderer, Transcript
from mrl_llm.train import check_optimizer_fields, check_trl_fields, trl_named_fields


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
        subsample: 1 (default): the teacher plays the trials themselves. k > 1: Algorithm
            Distillation's learning histories (Laskin et al. 2022, arXiv 2210.14215): the teacher
            plays k x episodes_per_trial episodes on each task and every k-th episode is kept
            (:func:`classic.algos.ad.collect_histories`), so a learning teacher (Q-learning) shows
            its improvement across one trial's worth of episodes.
        note_noise: with a reflecting rendering, the probability that a teacher's note is replaced
            in the context by another trial's (not trained on; :func:`teacher_transcripts`), so the
            LM learns to write notes from the reward lines rather than copy its previous note.
        note_weight: with a reflecting rendering, the loss weight of the teacher's note tokens
            (every other trained token weighs 1): a note is ~3 tokens against ~100 action tokens per
            episode, and the first note after the goal pays is the one copy the next episode needs
            (:func:`distillation_dataset`, :class:`LossWeightCollator`). 1.0 (default) is TRL's
            loss unchanged.
        packed_batches: compute each batch without its padding: :class:`PackedBatchCollator`
            packs the batch's sequences into a few rows with block-diagonal attention. Same
            batches, same loss (to float rounding), ~2x faster steps on the search task's traces
            (17 to ~250 tokens, a random batch pads to 2.6x its tokens). Needs "sdpa" or "eager"
            attention (custom 4D masks); a model without them raises ValueError.
        pack_width: tokens per packed row (raised to the batch's longest sequence).
        seed: data (teacher trials) and trainer seed.
        trl: any other ``trl.SFTConfig`` argument by its TRL name (e.g. ``report_to: [tensorboard]``,
            ``optim: adamw_torch_fused``); checked against ``trl.SFTConfig``'s fields when the recipe
            is read, applied over the project's defaults.
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
    subsample: int = 1
    note_noise: float = 0.0
    note_weight: float = 1.0
    packed_batches: bool = False
    pack_width: int = 256
    seed: int = 0
    trl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "num_trials",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_steps",
            "pack_width",
            "subsample",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.note_noise <= 1.0:
            raise ValueError(f"note_noise must be in [0, 1], got {self.note_noise}")
        if not self.note_weight > 0:
            raise ValueError(f"note_weight must be > 0, got {self.note_weight}")
        check_optimizer_fields(self)
        check_trl_fields("SFTConfig", self.trl)


# Training streams are seeded below EVAL_SEED_OFFSET (classic.evaluate), so their tasks are disjoint.
SFT_SEED_BASE = seeding.STREAMS["sft"][0]


def teacher_transcripts(
    teacher,
    dist,
    renderer: TrialRenderer,
    num_trials: int,
    episodes_per_trial: int,
    seed: int,
    subsample: int = 1,
    note_noise: float = 0.0,
) -> list[Transcript]:
    """Run ``teacher`` (any :class:`~classic.core.Agent`) for ``num_trials`` training trials
    (stream ``sft``) and render each as token ids, observations and episode boundaries included.

    With ``subsample`` k > 1 each transcript is a learning history instead: the teacher plays
    ``k * episodes_per_trial`` episodes (``teacher`` made for that many) and every k-th episode
    is rendered (:func:`classic.algos.ad.collect_histories`, fixed-length episodes only).

    With ``note_noise`` p > 0 (reflecting renderings), each of the teacher's notes is, with
    probability p, replaced in the context by another trial's note after the same episode (one
    that differs from it) and not trained on (:meth:`TrialRenderer.teacher_trial`'s
    ``context_notes``); the notes after it stay the teacher's. A model trained only on right notes
    learns to copy its previous note (right in most teacher notes) and keeps a wrong one of its own
    forever; with wrong notes in its context it must read the reward lines instead. Noise
    injection against exposure bias, in the spirit of scheduled sampling (Bengio et al. 2015,
    arXiv 1506.03099).

    Returns:
        ``num_trials`` transcripts; ``env_mask`` is 1 on the teacher's reply tokens (and notes,
        with a reflecting rendering).

    Raises:
        ValueError: ``note_noise`` outside [0, 1].
    """
    if not 0.0 <= note_noise <= 1.0:
        raise ValueError(f"note_noise must be in [0, 1], got {note_noise}")
    g = torch.Generator().manual_seed(SFT_SEED_BASE + seed)
    tasks = dist.sample_tasks(num_trials, g)
    trials = []  # (actions, rewards, obs, terminated, truncated) per trial
    if subsample > 1:
        from classic.algos.ad import collect_histories

        h = collect_histories(teacher, dist, tasks, subsample * episodes_per_trial, subsample, g)
        T = h.actions.shape[1]
        ends = torch.cat([h.new_episode[:, 1:], torch.ones(h.actions.shape[0], 1, dtype=torch.bool)], dim=1)
        for b in range(h.actions.shape[0]):
            trials.append((h.actions[b].tolist(), h.rewards[b].tolist(), h.obs[b], [False] * T, ends[b].tolist()))
    else:
        res = run_trials(
            teacher,
            dist,
            tasks=tasks,
            episodes_per_trial=episodes_per_trial,
            seed=SFT_SEED_BASE + seed,
            keep_trajectories=True,
        )
        for traj in res.trajectories:
            for b in range(traj.num_tasks):
                steps = traj.valid[:, b]
                trials.append(
                    (
                        traj.actions[steps, b].tolist(),
                        traj.rewards[steps, b].tolist(),
                        traj.obs[steps, b],
                        traj.terminated[steps, b].tolist(),
                        traj.truncated[steps, b].tolist(),
                    )
                )
    context = [{} for _ in trials]
    if note_noise > 0 and renderer.env.reflect and trials:
        notes = [renderer.teacher_notes(*trial) for trial in trials]
        for i, own in enumerate(notes):
            for e, note in enumerate(own):
                if float(torch.rand((), generator=g)) >= note_noise:
                    continue
                others = [n[e] for n in notes if e < len(n) and n[e] != note]
                if others:
                    context[i][e] = others[int(torch.randint(len(others), (), generator=g))]
    return [renderer.teacher_trial(*trial, context_notes=ctx) for trial, ctx in zip(trials, context)]


def distillation_dataset(transcripts: list[Transcript], note_weight: float = 1.0):
    """A ``datasets.Dataset`` with ``input_ids`` and ``completion_mask`` (1 = trained on).

    With ``note_weight`` != 1 it also has ``loss_weights`` (per token: ``note_weight`` on a
    reflection's tokens, ``Transcript.reflection_mask``, 1 elsewhere; only trained tokens count),
    which :func:`run_sft` applies (:class:`LossWeightCollator`).

    Raises:
        ValueError: ``note_weight`` != 1 and a transcript without a ``reflection_mask``.
    """
    from datasets import Dataset

    columns = {
        "input_ids": [t.prompt_ids + t.completion_ids for t in transcripts],
        "completion_mask": [[0] * len(t.prompt_ids) + t.env_mask for t in transcripts],
    }
    if note_weight != 1.0:
        if any(len(t.reflection_mask) != len(t.completion_ids) for t in transcripts):
            raise ValueError("note_weight needs transcripts with a reflection_mask (TrialRenderer.teacher_trial's)")
        columns["loss_weights"] = [
            [1.0] * len(t.prompt_ids) + [note_weight if r else 1.0 for r in t.reflection_mask] for t in transcripts
        ]
    return Dataset.from_dict(columns)


def sft_arguments(cfg: SFTStageConfig, output_dir: str | os.PathLike, use_cpu: bool | None = None):
    """The ``trl.SFTConfig`` for a stage config (no model needed: used by ``--dry-run`` too): every
    field named as a ``trl.SFTConfig`` argument as it is, the project's defaults (one checkpoint
    kept, loss on completions only, no external loggers), then the recipe's ``trl:`` mapping."""
    from trl import SFTConfig

    use_cpu = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
    own = trl_named_fields(cfg, "SFTConfig", exclude=("gradient_checkpointing", "warmup_ratio"))
    args = dict(
        output_dir=str(output_dir),
        **own,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps
        save_total_limit=1,
        completion_only_loss=True,
        max_length=None,
        report_to=[],
        use_cpu=use_cpu,
        **activation_checkpointing_kwargs(SFTConfig, cfg.gradient_checkpointing),
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    return SFTConfig(**{**args, **cfg.trl})


class LossWeightCollator:
    """Wraps a padding collator (TRL's, which drops unknown columns): the same batch plus
    ``loss_weights`` (B, T), each example's per-token weights padded with 1 (padding is -100 in
    ``labels``, never counted). :class:`~mrl_llm.train.trainers.DistillationSFTTrainer` weighs each
    trained token's negative log-likelihood by them.

    Raises (when called):
        ValueError: the inner collator flattened the batch (padding-free), so rows no longer match
            examples.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.pad_token_id = getattr(inner, "pad_token_id", None)

    def __call__(self, examples):
        weights = [example["loss_weights"] for example in examples]
        batch = self.inner([{k: v for k, v in example.items() if k != "loss_weights"} for example in examples])
        rows, width = batch["labels"].shape
        if rows != len(examples):
            raise ValueError("loss_weights need one batch row per example (padding_free is not supported)")
        out = torch.ones(rows, width)
        for i, w in enumerate(weights):
            n = min(len(w), width)
            out[i, :n] = torch.as_tensor(w[:n], dtype=out.dtype)
        batch["loss_weights"] = out
        return batch


class PackedBatchCollator:
    """Wraps a padding collator: the same batch, packed into a few rows without padding.

    The inner collator (TRL's) pads the batch and sets its ``labels`` (-100 off the trained
    tokens). Each sequence is then placed whole into a row of at most ``width`` tokens (first fit,
    longest first; ``width`` is raised to the longest sequence), with position ids restarting at
    0 and a block-diagonal causal 4D attention mask, so no token sees another sequence; the first
    label of every sequence is -100, as the causal-LM shift never predicts it in the padded batch.
    The loss, and the number of label tokens transformers normalizes it by, are those of the
    padded batch, while the model computes ~``rows x width`` tokens instead of
    ``batch x longest``.

    Args:
        inner: the padding collator (right padding, ``attention_mask`` of 0/1).
        width: tokens per row.
        mask: "bool" (sdpa: True = attend) or "additive" (eager: 0 / dtype min).
        dtype: dtype of an additive mask.

    Returns (when called on a list of examples):
        {"input_ids": (R, W), "labels": (R, W), "position_ids": (R, W), "attention_mask": (R, 1, W, W),
        "num_real_tokens": () the batch's unpadded token count}, and ``loss_weights`` (R, W) laid
        out like ``labels`` when the inner batch has them (:class:`LossWeightCollator`).
    """

    def __init__(self, inner, width: int = 256, mask: str = "bool", dtype: torch.dtype = torch.float32) -> None:
        if mask not in ("bool", "additive"):
            raise ValueError(f"mask must be 'bool' or 'additive', got {mask!r}")
        self.inner, self.width, self.mask, self.dtype = inner, width, mask, dtype

    def __call__(self, examples):
        batch = self.inner(examples)
        ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"]
        lengths = attn.sum(1).tolist()
        width = max(self.width, max(lengths))
        rows: list[list[int]] = []
        fill: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            for r in range(len(rows)):
                if fill[r] + lengths[i] <= width:
                    rows[r].append(i)
                    fill[r] += lengths[i]
                    break
            else:
                rows.append([i])
                fill.append(lengths[i])
        W = max(fill)
        out_ids = torch.full((len(rows), W), int(getattr(self.inner, "pad_token_id", None) or 0), dtype=ids.dtype)
        out_labels = torch.full((len(rows), W), -100, dtype=labels.dtype)
        weights = batch.get("loss_weights")
        out_weights = torch.ones(len(rows), W) if weights is not None else None
        pos = torch.zeros(len(rows), W, dtype=torch.long)
        allowed = torch.zeros(len(rows), 1, W, W, dtype=torch.bool)
        allowed[:, 0, torch.arange(W), torch.arange(W)] = True  # padding at a row's end sees itself
        for r, members in enumerate(rows):
            o = 0
            for i in members:
                n = lengths[i]
                out_ids[r, o : o + n] = ids[i, :n]
                out_labels[r, o + 1 : o + n] = labels[i, 1:n]
                if out_weights is not None:
                    out_weights[r, o : o + n] = weights[i, :n]
                pos[r, o : o + n] = torch.arange(n)
                allowed[r, 0, o : o + n, o : o + n] = torch.ones(n, n, dtype=torch.bool).tril()
                o += n
        mask = allowed if self.mask == "bool" else additive_attention_mask(allowed, self.dtype)
        out = {
            "input_ids": out_ids,
            "labels": out_labels,
            "position_ids": pos,
            "attention_mask": mask,
            "num_real_tokens": torch.tensor(sum(lengths)),
        }
        if out_weights is not None:
            out["loss_weights"] = out_weights
        return out


def run_sft(
    model,
    tokenizer,
    dataset,
    cfg: SFTStageConfig,
    output_dir: str | os.PathLike,
    callbacks=(),
    peft_config=None,
    use_cpu: bool | None = None,
):
    """Train ``model`` on ``dataset`` with ``trl.SFTTrainer``; resumes from the last checkpoint in
    ``output_dir`` if one exists. Returns the trainer (its ``.model`` is the trained model). A
    dataset with ``loss_weights`` (:func:`distillation_dataset`'s ``note_weight``) trains on the
    weighted loss of :class:`~mrl_llm.train.trainers.DistillationSFTTrainer`.

    Raises:
        ValueError: ``cfg.packed_batches`` with a model whose attention takes no 4D mask.
    """
    from trl import SFTTrainer

    from mrl_llm.train.checkpoints import last_complete_checkpoint

    if cfg.packed_batches and not takes_4d_attention_mask(model):
        raise ValueError(
            "sft.packed_batches needs 'sdpa' or 'eager' attention (4D masks); "
            f"the model uses {attention_implementation(model)!r}"
        )
    output_dir = Path(output_dir)
    args = sft_arguments(cfg, output_dir, use_cpu)
    from mrl_llm.train.trainers import DistillationSFTTrainer

    weighted = "loss_weights" in dataset.column_names
    if weighted:  # keep the column through TRL's dataset preparation (it is no model input)
        args.remove_unused_columns = False
    cls = DistillationSFTTrainer if cfg.packed_batches or weighted else SFTTrainer
    trainer = cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    if weighted:  # TRL's collator drops the weights; ours pads them beside its batch
        trainer.data_collator = LossWeightCollator(trainer.data_collator)
    if cfg.packed_batches:  # TRL's collator pads and sets the labels; ours re-lays its batch
        mask = "bool" if attention_implementation(model) == "sdpa" else "additive"
        trainer.data_collator = PackedBatchCollator(
            trainer.data_collator, cfg.pack_width, mask, next(model.parameters()).dtype
        )
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))
    return trainer
