"""How MRT's paper evaluates test-time compute: accuracy against tokens (arXiv 2503.07572, Sec. 7).

For one model and a set of problems with reference answers:

* **pass@1 after forced termination at increasing token budgets**: a sampled trace is cut at
  ``b`` tokens and the model is forced to answer (the meta-prover's termination suffix); a trace
  that finished on its own before ``b`` keeps its own answer;
* **normalized regret** of that curve: ``1 - (area under pass@1 against tokens) / B`` over
  ``[0, B]``, B the largest budget, the oracle being 1 (the paper's regret notebook,
  CMU-AIRe/MRT ``analysis/code/regret.ipynb``; curve starts at (0, 0));
* **maj@k against tokens**: majority vote over the final answers of k independent traces, with
  the tokens of all k;
* **token efficiency**: the tokens a model needs on its budget curve to reach a target accuracy
  (e.g. the outcome-GRPO model's), by linear interpolation; the ratio of two models' tokens.

Every accuracy comes with a 95% CI over problems (normal approximation of the per-problem
means).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from classic.evaluate import mean_ci
from mrl_llm.reasoning.verifier import extract_answer, verify_answer
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig


@dataclass
class ReasoningEvalConfig:
    """Evaluation settings.

    Attributes:
        num_problems: held-out problems.
        samples_per_problem: traces per problem (pass@1 averages over them; maj@k uses them).
        max_new_tokens: the largest budget (traces are sampled up to it).
        budgets: token budgets of the pass@1 curve (sorted, <= max_new_tokens); empty = 8
            evenly spaced up to ``max_new_tokens``.
        maj_k: the k of maj@k (each <= samples_per_problem).
        temperature: sampling temperature of the traces.
        forced_answer_samples: answers sampled at each forced termination (J's K).
        progress_samples: answers per episode prefix for the progress statistics of the
            evaluation traces (0 = skip them).
        seed: evaluation seed (problems and sampling).
        use_vllm: sample traces and forced answers with a ``vllm.LLM`` built from the saved
            model (GPU; prefix caching shares the prefixes of the forced answers).
        vllm_gpu_memory_utilization: that engine's share of GPU memory.
    """

    num_problems: int = 200
    samples_per_problem: int = 4
    max_new_tokens: int = 256
    budgets: list[int] = field(default_factory=list)
    maj_k: list[int] = field(default_factory=lambda: [1, 2, 4])
    temperature: float = 1.0
    forced_answer_samples: int = 1
    progress_samples: int = 4
    seed: int = 0
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.8

    def __post_init__(self) -> None:
        for name in ("num_problems", "samples_per_problem", "max_new_tokens", "forced_answer_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(b < 1 or b > self.max_new_tokens for b in self.budgets) or self.budgets != sorted(set(self.budgets)):
            raise ValueError(
                f"budgets must be increasing values in [1, max_new_tokens={self.max_new_tokens}], got {self.budgets}"
            )
        if self.progress_samples < 0:
            raise ValueError(f"progress_samples must be >= 0, got {self.progress_samples}")
        if any(k < 1 or k > self.samples_per_problem for k in self.maj_k):
            raise ValueError(
                f"maj_k values must be in [1, samples_per_problem={self.samples_per_problem}], got {self.maj_k}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def resolved_budgets(self) -> list[int]:
        if self.budgets:
            return list(self.budgets)
        step = self.max_new_tokens / 8
        return sorted({max(1, round(step * i)) for i in range(1, 9)})


@torch.no_grad()
def sample_traces(
    model,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 64,
    vllm_llm=None,
) -> list[list[list[int]]]:
    """``num_samples`` completions (token ids, EOS included when the model stopped) per prompt.

    Sampling uses ``model.generate`` with ``torch.manual_seed`` set from ``seed`` per batch
    (same seed, same traces), or ``vllm_llm.generate`` with ``n=num_samples`` when given: one
    request per prompt, each with its own seed (:func:`~mrl_llm.rollout.generation.seeded_sampling_params`
    from a generator seeded with ``seed``), so equal prompts do not share their traces and the
    same ``seed`` gives the same traces. Prompts are tokenized as TRL tokenizes text prompts,
    ``tokenizer(text)`` with the tokenizer's special tokens, so evaluation starts from the training
    rollouts' prompt ids.

    Returns:
        ``traces[p][s]``: the token ids of sample s of prompt p.
    """
    if vllm_llm is not None:
        from vllm.inputs import TokensPrompt

        from mrl_llm.rollout.generation import seeded_sampling_params

        params = seeded_sampling_params(
            len(prompts),
            torch.Generator().manual_seed(int(seed)),
            n=num_samples,
            temperature=temperature,
            max_tokens=max_new_tokens,
        )
        ids = [TokensPrompt(prompt_token_ids=tokenizer(p)["input_ids"]) for p in prompts]
        out = []
        for o in vllm_llm.generate(ids, params, use_tqdm=False):
            per = []
            for c in o.outputs:
                t = list(c.token_ids)
                if c.finish_reason == "stop" and (not t or t[-1] != tokenizer.eos_token_id):
                    t.append(tokenizer.eos_token_id)
                per.append(t)
            out.append(per)
        return out
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    flat = [p for p in prompts for _ in range(num_samples)]
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        for b, lo in enumerate(range(0, len(flat), batch_size)):
            enc = tokenizer(flat[lo : lo + batch_size], return_tensors="pt", padding=True).to(device)
            torch.manual_seed(seed * 1_000_003 + b)
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                ids = []
                for t in row:
                    ids.append(t)
                    if t == tokenizer.eos_token_id:
                        break
                out.append(ids)  # (padding only ever follows the EOS)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [out[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def majority_answer(texts: Sequence[str]) -> str | None:
    """The most frequent extracted final answer (first seen wins ties); None if none has one."""
    answers = [a for a in (extract_answer(t) for t in texts) if a is not None]
    if not answers:
        return None
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def normalized_regret(budgets: Sequence[float], accuracy: Sequence[float]) -> float:
    """``1 - trapz([0] + acc, [0] + budgets) / budgets[-1]`` (oracle accuracy 1 at every budget)."""
    xs = [0.0] + [float(b) for b in budgets]
    ys = [0.0] + [float(a) for a in accuracy]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return 1.0 - area / xs[-1]


def tokens_to_reach(budgets: Sequence[float], accuracy: Sequence[float], target: float) -> float:
    """The smallest budget at which the (linearly interpolated, from (0, 0)) curve reaches
    ``target``; ``inf`` if it never does."""
    xs = [0.0] + [float(b) for b in budgets]
    ys = [0.0] + [float(a) for a in accuracy]
    for i in range(1, len(xs)):
        if ys[i] >= target:
            if ys[i] == ys[i - 1]:
                return xs[i]
            return xs[i - 1] + (target - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1])
    return float("inf")


def evaluate_reasoning(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[str],
    cfg: ReasoningEvalConfig,
    prover_cfg: MetaProverConfig,
    split_fn=None,
    vllm_llm=None,
) -> dict:
    """Accuracy, tokens, the forced-termination budget curve, normalized regret and maj@k.

    Args:
        model, tokenizer: the policy (transformers).
        prompts, references: problems (plain-text prompts) and reference answers.
        cfg: :class:`ReasoningEvalConfig`.
        prover_cfg: the forced-termination suffix and answer budget (``num_samples`` is
            replaced by ``cfg.forced_answer_samples``).
        split_fn: ``text -> episodes``; when given, episodes per trace are reported too.
        vllm_llm: a ``vllm.LLM`` of the same weights to sample with (``model`` is then unused).

    Returns:
        A JSON-able dict: ``accuracy`` {mean, ci95} (natural answers, unlimited up to
        ``max_new_tokens``) and ``per_problem_accuracy``, ``mean_tokens``, ``finished`` (fraction that
        stopped on their own),
        ``budget_curve`` {budgets, accuracy, ci95, mean_tokens}, ``normalized_regret``,
        ``maj_at_k`` {k: {accuracy, ci95, mean_tokens}}, and with ``split_fn`` the
        :func:`progress_statistics` of the traces.
    """
    eos = tokenizer.eos_token_id
    traces = sample_traces(
        model,
        tokenizer,
        prompts,
        cfg.samples_per_problem,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.seed,
        vllm_llm=vllm_llm,
    )
    texts = [
        [tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False) for t in per]
        for per in traces
    ]
    lengths = [[len(t) - (1 if t and t[-1] == eos else 0) for t in per] for per in traces]
    finished = [[bool(t) and t[-1] == eos for t in per] for per in traces]
    natural = [[verify_answer(x, ref) for x in per] for per, ref in zip(texts, references)]
    per_problem = [sum(r) / len(r) for r in natural]
    out: dict = {
        "accuracy": mean_ci(per_problem),
        "per_problem_accuracy": per_problem,
        "mean_tokens": sum(map(sum, lengths)) / sum(map(len, lengths)),
        "finished": sum(map(sum, finished)) / sum(map(len, finished)),
    }
    # forced termination at each budget (traces that finished earlier keep their own answer)
    budgets = cfg.resolved_budgets()
    from dataclasses import replace

    prover = MetaProver(model, tokenizer, replace(prover_cfg, num_samples=cfg.forced_answer_samples), vllm_llm=vllm_llm)
    p_ids = [tokenizer(p)["input_ids"] for p in prompts]
    flat_p, flat_c, flat_cuts, flat_ref, index = [], [], [], [], []
    for i, per in enumerate(traces):
        for s, t in enumerate(per):
            body = t[: lengths[i][s]]
            cuts = [b for b in budgets if not (finished[i][s] and lengths[i][s] <= b)]
            flat_p.append(p_ids[i])
            flat_c.append(body)
            flat_cuts.append([min(b, len(body)) for b in cuts])
            flat_ref.append(references[i])
            index.append((i, s, cuts))
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    J = prover.success_rates(flat_p, flat_c, flat_cuts, flat_ref, generator=torch.Generator().manual_seed(cfg.seed))
    if model is not None:
        model.train(was_training)
    forced = {(i, s): dict(zip(cuts, j.tolist())) for (i, s, cuts), j in zip(index, J)}
    acc_b, ci_b, tok_b = [], [], []
    for b in budgets:
        per_problem, toks = [], []
        for i, per in enumerate(traces):
            vals = []
            for s in range(len(per)):
                vals.append(forced[(i, s)][b] if b in forced[(i, s)] else float(natural[i][s]))
                toks.append(min(lengths[i][s], b))
            per_problem.append(sum(vals) / len(vals))
        m = mean_ci(per_problem)
        acc_b.append(m["mean"])
        ci_b.append(m["ci95"])
        tok_b.append(sum(toks) / len(toks))
    out["budget_curve"] = {"budgets": budgets, "accuracy": acc_b, "ci95": ci_b, "mean_tokens": tok_b}
    out["normalized_regret"] = normalized_regret(budgets, acc_b)
    maj = {}
    for k in cfg.maj_k:
        per_problem = [
            float(verify_answer(f"Answer: {a}", ref)) if (a := majority_answer(per[:k])) is not None else 0.0
            for per, ref in zip(texts, references)
        ]
        m = mean_ci(per_problem)
        maj[str(k)] = {
            "accuracy": m["mean"],
            "ci95": m["ci95"],
            "mean_tokens": sum(sum(l[:k]) for l in lengths) / len(lengths),
        }
    out["maj_at_k"] = maj
    if split_fn is not None:
        out.update(
            progress_statistics(
                model, tokenizer, p_ids, traces, lengths, texts, references, split_fn, prover_cfg, cfg, vllm_llm
            )
        )
    return out


def progress_statistics(
    model,
    tokenizer,
    prompt_ids,
    traces,
    lengths,
    texts,
    references,
    split_fn,
    prover_cfg: MetaProverConfig,
    cfg: ReasoningEvalConfig,
    vllm_llm=None,
) -> dict:
    """Episodes per trace and, with ``cfg.progress_samples`` > 0, the progress of the episodes
    of the evaluation traces: ``J`` before any episode and after each (the meta-prover with
    ``progress_samples`` answers), ``r_prg = J(c_j) - J(c_{j-1})`` (arXiv 2503.07572, Def. 6.1).

    Returns:
        {"episodes": mean episodes per trace, and with samples: "progress_per_episode" (mean
        r_prg over all episodes), "J_start" (mean J before thinking), "J_end" (mean J after
        the last episode), "episodes_with_progress" (fraction with r_prg > 0)}.
    """
    from dataclasses import replace

    from mrl_llm.reasoning.meta_prover import token_cuts
    from mrl_llm.reasoning.progress import progress_rewards

    flat_p, flat_c, flat_cuts, refs, counts = [], [], [], [], []
    for i, per in enumerate(traces):
        for s, t in enumerate(per):
            episodes = list(split_fn(texts[i][s]))
            counts.append(len(episodes))
            body = t[: lengths[i][s]]
            flat_p.append(prompt_ids[i])
            flat_c.append(body)
            flat_cuts.append([0] + token_cuts(tokenizer, body, [e.end for e in episodes]))
            refs.append(references[i])
    out = {"episodes": sum(counts) / max(len(counts), 1)}
    if cfg.progress_samples == 0:
        return out
    prover = MetaProver(model, tokenizer, replace(prover_cfg, num_samples=cfg.progress_samples), vllm_llm=vllm_llm)
    J = prover.success_rates(flat_p, flat_c, flat_cuts, refs, generator=torch.Generator().manual_seed(cfg.seed + 1))
    prg = torch.cat([progress_rewards(j) for j in J]) if J else torch.zeros(0)
    out.update(
        {
            "progress_per_episode": float(prg.mean()) if prg.numel() else float("nan"),
            "episodes_with_progress": float((prg > 0).float().mean()) if prg.numel() else float("nan"),
            "J_start": float(torch.stack([j[0] for j in J]).mean()),
            "J_end": float(torch.stack([j[-1] for j in J]).mean()),
        }
    )
    return out
