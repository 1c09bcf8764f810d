"""The project's TRL trainer subclasses, at module top level.

This module imports TRL when it is imported, so the rest of the project imports it only where a
trainer is built (``mrl run`` of a classic recipe never pays TRL's import time).

* :class:`DistillationSFTTrainer`: ``trl.SFTTrainer`` over packed batches (the real-token count in
  TRL's ``num_tokens`` metric) and with per-token loss weights (``loss_weights``).
* :class:`MRTGRPOTrainer`: ``trl.GRPOTrainer`` with MRT's advantages (Qu et al. 2025, arXiv
  2503.07572; :mod:`mrl_llm.train.mrt`). It overrides the private
  ``GRPOTrainer._generate_and_score_completions``: the dense progress reward needs the meta-prover
  between generation and the advantages, per episode and per token, which no public hook
  (``reward_funcs``, ``rollout_func``) can express.
"""

from __future__ import annotations

import contextlib

import torch
from trl import GRPOTrainer, SFTTrainer

from classic import seeding
from mrl_llm.reasoning.meta_prover import MetaProver, token_cuts
from mrl_llm.reasoning.progress import mrt_token_advantages, progress_rewards, termination_advantages
from mrl_llm.rewards import get_reward
from mrl_llm.train.checkpoints import generator_state_callback
from mrl_llm.train.grpo import generation_model
from mrl_llm.train.mrt import (
    MRTConfig,
    SplitFn,
    _unpad,
    default_split_fn,
    prover_requests,
    trl_engine_sized_for,
)


def weighted_token_nll(outputs, labels: torch.Tensor, weights: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Σ_t w_t · (−log p(y_t | y_<t)) over the labelled tokens, divided by their count (or by
    ``num_items_in_batch``, the labelled tokens of the whole accumulated batch, as TRL's and
    transformers' causal-LM loss): with every weight 1 it is TRL's ``nll`` loss.

    Args:
        outputs: the model's outputs with ``logits`` (B, T, V).
        labels: (B, T) token ids, -100 where not trained (unshifted: position t predicts t + 1).
        weights: (B, T) per-token weights, aligned with ``labels``.
        num_items_in_batch: the normaliser (default: the labelled tokens of this batch).

    Returns:
        () the loss.
    """
    logits = outputs.logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(target)
    w = weights[:, 1:].to(nll) * (target != -100)
    count = (target != -100).sum() if num_items_in_batch is None else num_items_in_batch
    return (w * nll).sum() / torch.as_tensor(count, device=nll.device).clamp(min=1)


class DistillationSFTTrainer(SFTTrainer):
    """``trl.SFTTrainer`` for the project's distillation batches.

    * Packed batches (:class:`~mrl_llm.train.sft.PackedBatchCollator`): drops ``num_real_tokens``
      from the inputs and counts it, rather than the 4D mask's entries, in TRL's ``num_tokens``.
    * Per-token loss weights (``loss_weights`` (B, T), :class:`~mrl_llm.train.sft.LossWeightCollator`):
      the loss is :func:`weighted_token_nll` through TRL's ``compute_loss_func`` path (TRL's
      metrics, token accuracy and entropy, are unweighted, from its extra no-grad pass).
    """

    def compute_loss(self, model, inputs, *args, **kwargs):
        real = inputs.pop("num_real_tokens", None)
        weights = inputs.pop("loss_weights", None)
        before = getattr(self, "_total_train_tokens", None)
        own = self.compute_loss_func
        if weights is not None:
            self.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: weighted_token_nll(
                outputs, labels, weights, num_items_in_batch
            )
        try:
            out = super().compute_loss(model, inputs, *args, **kwargs)
        finally:
            self.compute_loss_func = own
        if real is not None and before is not None and model.training:
            self._total_train_tokens = before + int(
                self.accelerator.gather_for_metrics(real.to(self.accelerator.device).reshape(1)).sum()
            )
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out


class MRTGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with MRT's advantages (see the module docstring).

    Args (beyond ``GRPOTrainer``'s):
        mrt: :class:`MRTConfig`.
        split_fn: ``text -> episodes`` of a completion (default: ``mrt.episodes``).
        reference_key: the dataset column with the reference answer (forwarded by TRL).
    """

    def __init__(self, *args, mrt: MRTConfig, split_fn: SplitFn | None = None, reference_key: str = "answer", **kwargs):
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
