"""MRT: meta-reinforcement finetuning with a dense progress reward, as a thin layer over TRL.

Qu et al. 2025, "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning",
arXiv 2503.07572. A reasoning trace is split into episodes (:mod:`mrl_llm.reasoning.episodes`);
the meta-prover (:class:`mrl_llm.reasoning.meta_prover.MetaProver`) estimates after each episode how
likely a forced final answer is to be correct, and the change is the episode's *progress*.
Three trainers from the same pieces:

* outcome-only GRPO: ``trl.GRPOTrainer`` with the ``answer_correct`` reward (the baseline);
* **MRT** (``mode="progress"``, Eq. 2): :class:`MRTGRPOTrainer` adds ``alpha`` x the progress of
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

from classic import seeding
from mrl_llm.rewards import get_reward
from mrl_llm.train.checkpoints import generator_state_callback
from mrl_llm.train.grpo import GRPOCommonConfig, generation_model, trl_engine_max_num_seqs
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig, token_cuts
from mrl_llm.reasoning.progress import mrt_token_advantages, progress_rewards, termination_advantages
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


class MRTGRPOTrainer:  # the real base class is bound lazily (trl is imported on first use)
    """Factory: ``MRTGRPOTrainer(..., mrt=MRTConfig, split_fn=..., reference_key="answer")``
    returns an instance of :func:`mrt_trainer_class` (a ``trl.GRPOTrainer`` subclass)."""

    def __new__(cls, *args, **kwargs):
        return mrt_trainer_class()(*args, **kwargs)


_TRAINER_CLASS = None


def mrt_trainer_class():
    """The ``trl.GRPOTrainer`` subclass that implements MRT (built once, on first use)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from trl import GRPOTrainer

    class _MRTGRPOTrainer(GRPOTrainer):
        """``trl.GRPOTrainer`` with MRT's advantages (see the module docstring).

        Args (beyond ``GRPOTrainer``'s):
            mrt: :class:`MRTConfig`.
            split_fn: ``text -> episodes`` of a completion (default: ``mrt.episodes``).
            reference_key: the dataset column with the reference answer (forwarded by TRL).
        """

        def __init__(
            self, *args, mrt: MRTConfig, split_fn: SplitFn | None = None, reference_key: str = "answer", **kwargs
        ):
            seed = kwargs["args"].seed
            self._prover_gen = seeding.generator("meta_prover", seed)
            self._prefix_gen = seeding.generator("prefix", seed)
            streams = generator_state_callback(
                self._stream_state, self._set_stream_state
            )  # first: saved before any other callback runs
            kwargs["callbacks"] = [streams, *(kwargs.get("callbacks") or [])]
            with trl_engine_sized_for(prover_requests(kwargs["args"], mrt)):
                super().__init__(*args, **kwargs)
            self.mrt = mrt
            self.split_fn = split_fn or default_split_fn(mrt.episodes)
            self.reference_key = reference_key

        def _stream_state(self) -> dict:
            return {"prover": self._prover_gen.get_state(), "prefix": self._prefix_gen.get_state()}

        def _set_stream_state(self, saved: dict) -> None:
            self._prover_gen.set_state(saved["prover"])
            self._prefix_gen.set_state(saved["prefix"])

        # -- the meta-prover on the current weights ------------------------------------
        def _engine(self):
            """TRL's colocated vLLM engine, or None (HF decoding)."""
            return self.vllm_generation.llm if self.use_vllm and hasattr(self.vllm_generation, "llm") else None

        def _sync_engine_weights(self) -> None:
            """Push this step's weights to the vLLM engine now if TRL has not yet (TRL does it at the
            start of its own generation, the same way: once per global step)."""
            if self.use_vllm and self.state.global_step != self._last_loaded_step:
                self.vllm_generation.sync_weights()
                self._last_loaded_step = self.state.global_step

        @contextlib.contextmanager
        def _prover(self):
            """The meta-prover on the current weights: TRL's vLLM engine, or the policy unwrapped for
            generation (:func:`~mrl_llm.train.grpo.generation_model`: ZeRO-3 weights gathered once)."""
            tok = self.processing_class
            llm = self._engine()
            if llm is not None:
                yield MetaProver(None, tok, self.mrt.prover, vllm_llm=llm)
                return
            with generation_model(self) as model:
                yield MetaProver(model, tok, self.mrt.prover)

        def _episode_cuts(self, completion_ids: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
            """Per completion: token ends of its (at most ``max_episodes``) episodes, and the
            meta-prover cuts ``[0] + ends``."""
            tok = self.processing_class
            ends_all, cuts_all = [], []
            for ids in completion_ids:
                text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                episodes = list(self.split_fn(text))[: self.mrt.max_episodes]
                ends = token_cuts(tok, ids, [e.end for e in episodes])
                ends_all.append(ends)
                cuts_all.append([0] + ends)
            return ends_all, cuts_all

        # -- MRT-RL: replace prompts by prompt + a random episode prefix of a policy trace --
        def _with_random_prefixes(self, inputs: list[dict]) -> list[dict]:
            G = self.num_generations
            groups = [inputs[i] for i in range(0, len(inputs), G)]
            prompts = [g["prompt"] for g in groups]
            self._sync_engine_weights()  # the prefixes come from this step's policy
            traces = self._sample_traces(prompts)
            new_prompts = []
            for text in traces:
                episodes = list(self.split_fn(text))[: self.mrt.max_episodes]
                j = int(torch.randint(0, len(episodes) + 1, (1,), generator=self._prefix_gen))  # 0 = no prefix
                new_prompts.append(text[: episodes[j - 1].end] if j else "")
            out = []
            for g, (prompt, prefix) in enumerate(zip(prompts, new_prompts)):
                for x in inputs[g * G : (g + 1) * G]:
                    out.append({**x, "prompt": prompt + prefix, "mrt_prefix": prefix})
            return out

        def _within_budget(self, completion_ids: list[list[int]], prefixes: list[str]) -> list[list[int]]:
            """Each continuation cut to ``max_completion_length`` minus its prefix's tokens."""
            tok = self.processing_class
            used = {p: len(tok(p, add_special_tokens=False)["input_ids"]) if p else 0 for p in set(prefixes)}
            return [ids[: max(self.max_completion_length - used[p], 0)] for ids, p in zip(completion_ids, prefixes)]

        @torch.no_grad()
        def _sample_traces(self, prompts: list[str]) -> list[str]:
            """One trace of the current policy per prompt (text), seeded from ``_prefix_gen``. Prompts
            are tokenized as TRL tokenizes text prompts (special tokens added by the tokenizer)."""
            tok = self.processing_class
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._prefix_gen))
            llm = self._engine()
            if llm is not None:
                from vllm import SamplingParams
                from vllm.inputs import TokensPrompt

                params = [
                    SamplingParams(
                        temperature=self.temperature,
                        top_p=self.args.top_p,
                        max_tokens=self.max_completion_length,
                        seed=seed + i,
                    )
                    for i in range(len(prompts))
                ]
                ids = [TokensPrompt(prompt_token_ids=tok(p)["input_ids"]) for p in prompts]
                outs = llm.generate(ids, params, use_tqdm=False)
                return [
                    tok.decode(o.outputs[0].token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    for o in outs
                ]
            with generation_model(self) as model:
                was_training = model.training
                model.eval()
                enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
                torch.manual_seed(seed)
                gen = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.args.top_p,
                    top_k=0,
                    max_new_tokens=self.max_completion_length,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
                model.train(was_training)
            return tok.batch_decode(
                gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

        def _generate_and_score_completions(self, inputs):
            mode = "train" if self.model.training else "eval"
            if self.mrt.mode == "termination" and mode == "train":
                inputs = self._with_random_prefixes(inputs)
            out = super()._generate_and_score_completions(inputs)
            if mode != "train":
                return out
            refs = [str(x[self.reference_key]) for x in inputs]
            prompt_ids = _unpad(out["prompt_ids"], out["prompt_mask"])
            completion_ids = _unpad(out["completion_ids"], out["completion_mask"])
            metrics = self._metrics[mode]
            with self._prover() as prover:
                if self.mrt.mode == "progress":
                    ends, cuts = self._episode_cuts(completion_ids)
                    J = prover.success_rates(prompt_ids, completion_ids, cuts, refs, generator=self._prover_gen)
                    progress = [progress_rewards(j) for j in J]
                    out["advantages"] = mrt_token_advantages(
                        out["advantages"],
                        progress,
                        ends,
                        out["completion_ids"].shape[1],
                        self.mrt.alpha,
                        self.mrt.credit,
                    ).to(out["advantages"].device)
                    flat = torch.cat(progress) if progress else torch.zeros(0)
                    metrics["mrt/episodes"].append(sum(len(e) for e in ends) / max(len(ends), 1))
                    metrics["mrt/progress_mean"].append(float(flat.mean()) if flat.numel() else 0.0)
                    metrics["mrt/J_empty"].append(float(torch.stack([j[0] for j in J]).mean()))
                else:
                    G = self.num_generations
                    firsts = list(range(0, len(prompt_ids), G))
                    J = prover.success_rates(
                        [prompt_ids[i] for i in firsts],
                        [[] for _ in firsts],
                        [[0] for _ in firsts],
                        [refs[i] for i in firsts],
                        generator=self._prover_gen,
                    )
                    term = torch.stack([j[0] for j in J]).repeat_interleave(G)
                    reward_fn = get_reward("answer_correct")
                    if self.mrt.prefix_counts_against_budget:
                        completion_ids = self._within_budget(completion_ids, [x.get("mrt_prefix", "") for x in inputs])
                    texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
                    rewards = torch.tensor(reward_fn(None, texts, answer=refs), dtype=torch.float32)
                    out["advantages"] = termination_advantages(rewards, term, G, self.mrt.termination_scale).to(
                        out["advantages"].device
                    )
                    metrics["mrt/termination_reward"].append(float(term.mean()))
                    metrics["mrt/prefix_chars"].append(sum(len(x.get("mrt_prefix", "")) for x in inputs) / len(inputs))
                metrics["mrt/prover_seconds"].append(prover.stats.seconds)
            return out

    _TRAINER_CLASS = _MRTGRPOTrainer
    return _TRAINER_CLASS


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
