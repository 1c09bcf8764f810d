"""MRT: meta-reinforcement finetuning with a dense progress reward, as a thin layer over TRL.

Qu et al. 2025, "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning",
arXiv 2503.07572. A reasoning trace is split into episodes (:mod:`mrl_llm.reasoning.episodes`);
the meta-prover (:class:`mrl_llm.reasoning.meta_prover.MetaProver`) estimates after each episode how
likely a forced final answer is to be correct, and the change is the episode's *progress*.
Three trainers from the same pieces:

* outcome-only GRPO: ``trl.GRPOTrainer`` with the ``answer_correct`` reward (the baseline);
* **MRT** (``mode="progress"``, Eq. 2): :class:`mrl_llm.train.trainers.MRTGRPOTrainer` adds ``alpha`` x the progress of
  each episode to the advantages of that episode's tokens (per-token advantages of shape
  (B, T), which ``GRPOTrainer._compute_loss`` accepts);
* **MRT-RL** (``mode="termination"``): for every group, one trace of the current policy is cut
  after a random number of episodes; the group's G rollouts continue from that prefix and their
  advantage is ``R - R_termination``, the termination reward ``J(mu | prefix)`` replacing GRPO's
  group mean (the paper's RL variant, Fig. 6; CMU-AIRe/MRT ``train/rl/README.md``);
* **MRT-STaR** (:func:`mrt_star_dataset`): sample traces, score the progress of their episodes,
  keep the prefixes that make progress and end in a correct forced answer, SFT on them with
  ``trl.SFTTrainer`` (:func:`mrl_llm.train.sft.run_sft`).

Everything else (optimizer, clipping, KL, vLLM generation and weight sync, LoRA, DeepSpeed,
checkpoints and resuming, logging) is TRL's. Prompts are plain text (a chat template, if any, is
applied when the dataset is built), so a prefix can be appended to a prompt as text.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from mrl_llm.rewards import get_reward
from mrl_llm.train.grpo import GRPOCommonConfig, trl_engine_max_num_seqs
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig, token_cuts
from mrl_llm.reasoning.progress import progress_rewards
from mrl_llm.reasoning.episodes import Episode, EpisodeSplitConfig, split_episodes

SplitFn = Callable[[str], Sequence[Episode]]


@dataclass
class ReasoningGRPOConfig(GRPOCommonConfig):
    """GRPO on single-turn reasoning prompts: :class:`~mrl_llm.train.grpo.GRPOCommonConfig`
    (learning rate default 1e-5 here) plus the fields below.

    Attributes:
        prompts_per_step: prompts per optimizer step (batch = prompts_per_step x G completions).
        max_completion_length: most tokens per completion (the training token budget).

    Raises:
        ValueError: naming the field, when a value is out of range.
    """

    learning_rate: float = 1e-5
    prompts_per_step: int = 4
    max_completion_length: int = 256

    _groups_field = "prompts_per_step"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}")


@dataclass
class MRTConfig:
    """What MRT adds to GRPO.

    Attributes:
        mode: "progress" (Eq. 2: per-episode progress bonus on the episode's tokens) or
            "termination" (the RL variant: ``A = R - J(mu | prefix)`` on rollouts continued from
            a random episode cut of a policy trace).
        alpha: weight of the progress bonus (mode "progress").
        credit: "episode" (a token gets its episode's progress, Eq. 2) or "reward_to_go".
        max_episodes: score at most this many episodes per trace (the first ones; the cost of
            the meta-prover is episodes x ``prover.num_samples`` answers per trace).
        termination_scale: "none" or "group" normalization of ``R - R_termination``.
        prefix_counts_against_budget: (mode "termination") score a continuation on the tokens
            that fit in ``max_completion_length`` minus the prefix's tokens, so that prefix +
            continuation has the token budget of a whole trace (as at evaluation); False scores
            the whole continuation (up to ``max_completion_length`` tokens after the prefix).
        prover: the meta-prover (termination suffix, K samples, answer budget, temperature).
        episodes: how traces are split (when no task-specific splitter is given).
    """

    mode: Literal["progress", "termination"] = "progress"
    alpha: float = 1.0
    credit: Literal["episode", "reward_to_go"] = "episode"
    max_episodes: int = 8
    termination_scale: Literal["none", "group"] = "none"
    prefix_counts_against_budget: bool = True
    prover: MetaProverConfig = field(default_factory=MetaProverConfig)
    episodes: EpisodeSplitConfig = field(default_factory=EpisodeSplitConfig)

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {self.max_episodes}")


def grpo_arguments(cfg: ReasoningGRPOConfig, output_dir: str | os.PathLike, use_cpu: bool | None = None):
    """The ``trl.GRPOConfig`` of a stage config (no model needed: ``--dry-run`` builds it too)."""
    return cfg.trl_arguments(output_dir, use_cpu, max_completion_length=cfg.max_completion_length, shuffle_dataset=True)


def default_split_fn(config: EpisodeSplitConfig) -> SplitFn:
    """``text -> episodes`` with :func:`~mrl_llm.reasoning.episodes.split_episodes` and ``config``."""
    return lambda text: split_episodes(text, config)


def _unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


#: Most sequences the MRT trainer asks TRL's engine to run at once (its KV-cache share bounds them anyway).
MAX_ENGINE_SEQS = 1024


def prover_requests(args, mrt: MRTConfig) -> int:
    """Sequences the meta-prover sends to the vLLM engine per generation batch of one process:
    every completion x (at most ``max_episodes`` + 1 cuts) x K answers ("progress"), or one cut x K
    per group ("termination"). TRL sizes its colocated engine's ``max_num_seqs`` for the rollouts
    only (``per_device_train_batch_size x steps_per_generation``), so the prover's requests would
    run in that many serial waves."""
    completions = trl_engine_max_num_seqs(args)
    K = mrt.prover.num_samples
    if mrt.mode == "progress":
        return completions * (mrt.max_episodes + 1) * K
    return max(1, completions // args.num_generations) * K


@contextlib.contextmanager
def trl_engine_sized_for(at_least: int, at_most: int = MAX_ENGINE_SEQS):
    """Within the block, TRL's colocated vLLM engine (``trl.trainer.grpo_trainer.VLLMGeneration``) is
    built with ``max_num_seqs >= min(at_least, at_most)``: vLLM then decodes the meta-prover's
    requests in one wave (its KV-cache share still bounds what runs at once). TRL has no argument
    for it; this wraps the class TRL's trainer constructs, and restores it on exit."""
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.VLLMGeneration
    wanted = min(int(at_least), int(at_most))

    def build(*args, **kwargs):
        kwargs["max_num_seqs"] = max(int(kwargs.get("max_num_seqs") or 0), wanted)
        return original(*args, **kwargs)

    grpo_module.VLLMGeneration = build
    try:
        yield
    finally:
        grpo_module.VLLMGeneration = original


def build_reasoning_trainer(
    model,
    tokenizer,
    dataset,
    cfg: ReasoningGRPOConfig,
    output_dir,
    mrt: MRTConfig | None = None,
    split_fn: SplitFn | None = None,
    peft_config=None,
    callbacks=(),
):
    """Outcome-only GRPO (``mrt=None``) or MRT on a dataset with ``prompt`` and ``answer`` columns.

    The reward is ``answer_correct`` (:mod:`mrl_llm.rewards.math`); both trainers see the same
    batches for the same seed.
    """
    from trl import GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    args = grpo_arguments(cfg, output_dir)
    kwargs = dict(
        model=model,
        reward_funcs=[get_reward("answer_correct")],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    if mrt is None:
        return GRPOTrainer(**kwargs)
    from mrl_llm.train.trainers import MRTGRPOTrainer  # imports trl: only when a trainer is built

    return MRTGRPOTrainer(**kwargs, mrt=mrt, split_fn=split_fn)


# ---------------------------------------------------------------------------------------
# MRT-STaR
# ---------------------------------------------------------------------------------------


@dataclass
class STaRConfig:
    """MRT-STaR data selection.

    Attributes:
        samples_per_prompt: traces sampled per problem.
        min_progress: an episode counts as making progress when ``r_prg > min_progress``.
        max_new_tokens: trace budget.
        temperature: sampling temperature of the traces.
    """

    samples_per_prompt: int = 4
    min_progress: float = 0.0
    max_new_tokens: int = 256
    temperature: float = 1.0


@torch.no_grad()
def mrt_star_dataset(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    star: STaRConfig,
    prover_cfg: MetaProverConfig,
    split_fn: SplitFn,
    generator: torch.Generator,
):
    """MRT-STaR's SFT set: traces cut where progress stops, kept when the forced answer is right.

    For every problem, ``samples_per_prompt`` traces are sampled from ``model``; each is split
    into episodes and the meta-prover gives ``J`` after every episode. A trace is cut after the
    first episode at which J reaches its maximum (later episodes make no progress); it is kept if
    that maximum is > 0 and some episode made progress (``r_prg > min_progress``), and the kept
    example is ``prefix + termination suffix + a correct answer mu sampled there`` -- "traces that maximize
    progress and are followed by correct solutions once thinking terminates" (arXiv 2503.07572,
    Fig. 6). Among a problem's kept traces the shortest is used.

    Returns:
        (``datasets.Dataset`` with ``prompt``/``completion`` columns, stats dict with
        ``sampled``, ``kept``, ``mean_prefix_tokens``).
    """
    import datasets

    from mrl_llm.reasoning.evaluate import sample_traces

    prover = MetaProver(model, tokenizer, prover_cfg)
    eos = tokenizer.eos_token_id
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    traces = sample_traces(
        model, tokenizer, prompts, star.samples_per_prompt, star.max_new_tokens, star.temperature, seed
    )  # batched
    flat_p, flat_c, flat_cuts, texts, episodes, owner = [], [], [], [], [], []
    for i, (prompt, per) in enumerate(zip(prompts, traces)):
        p_ids = tokenizer(prompt)["input_ids"]  # as TRL tokenizes a text prompt
        for t in per:
            body = t[:-1] if t and t[-1] == eos else t
            text = tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            eps = list(split_fn(text))
            flat_p.append(p_ids)
            flat_c.append(body)
            flat_cuts.append([0] + token_cuts(tokenizer, body, [e.end for e in eps]))
            texts.append(text)
            episodes.append(eps)
            owner.append(i)
    sampled = len(flat_c)
    answers_at = prover.sample_answers(flat_p, flat_c, flat_cuts, generator=generator)  # one batched call
    best: dict[int, tuple[str, str]] = {}  # problem -> (prefix, a correct forced answer there)
    for i, text, eps, per_cut in zip(owner, texts, episodes, answers_at):
        j = prover.score(per_cut, answers[i])
        if len(eps) == 0 or float(j.max()) <= 0 or not bool((progress_rewards(j) > star.min_progress).any()):
            continue
        k = int(torch.argmax(j))  # the first cut where J peaks: 0 = the empty prefix
        prefix = text[: eps[k - 1].end] if k else ""
        right = [a for a in per_cut[k] if prover.verifier(prover_cfg.termination_suffix + a, answers[i])]
        if i not in best or len(prefix) < len(best[i][0]):
            best[i] = (prefix, right[0])
    rows_p, rows_c, kept_tokens = [], [], []
    for i in sorted(best):
        prefix, answer_text = best[i]
        rows_p.append(prompts[i])
        rows_c.append(prefix + prover_cfg.termination_suffix + answer_text + (tokenizer.eos_token or ""))
        kept_tokens.append(len(tokenizer(prefix, add_special_tokens=False)["input_ids"]))
    stats = {"sampled": sampled, "kept": len(rows_p), "mean_prefix_tokens": sum(kept_tokens) / max(len(kept_tokens), 1)}
    return datasets.Dataset.from_dict({"prompt": rows_p, "completion": rows_c}), stats
