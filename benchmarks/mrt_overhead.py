"""What MRT costs on top of outcome-only GRPO, and what the meta-prover's shared-prefix batching saves.

    python benchmarks/mrt_overhead.py [--model runs/mrt_search_tiny/sft/final] [--steps 4]
        [--prompts-per-step 4] [--num-generations 8] [--max-completion-length 96]
        [--prover-samples 4] [--threads 2]

1. Time per training step of ``trl.GRPOTrainer`` (outcome reward) and of MRT (progress mode,
   :class:`mrl_llm.train.trainers.MRTGRPOTrainer`) at the same batch, from the same weights, on the
   search task's prompts; the meta-prover's share of MRT's step.
2. The meta-prover alone on the same traces: J at every episode boundary with tree attention
   (one cache row per trace, 4D masks; the default with sdpa/eager attention), with one copied
   cache row per trie node (the shared-prefix path for other attention kernels), and with every
   (prefix, sample) row encoded from scratch; seconds, tokens encoded, and whether all three
   sampled the same answers.

Without ``--model`` the tiny LM is freshly initialized (the timings are about shapes, not skill;
a warm-started model writes traces with more episodes, so pass one for realistic numbers).
Prints two markdown tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", help="a saved model directory (e.g. runs/mrt_search_tiny/sft/final); default: a fresh tiny LM"
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=96)
    p.add_argument("--prover-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--function", default="add", choices=["add", "table"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mrl_llm.reasoning import search_task as st
    from mrl_llm.reasoning.evaluate import sample_traces
    from mrl_llm.models import ModelConfig, load_model_and_tokenizer
    from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig, token_cuts
    from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, build_reasoning_trainer

    task = st.SearchTaskConfig(function=args.function)
    prover_cfg = MetaProverConfig(
        termination_suffix=task.termination_suffix,
        num_samples=args.prover_samples,
        max_answer_tokens=3,
        temperature=1.0,
    )
    split = lambda text: st.trace_episodes(text, task.termination_suffix).episodes  # noqa: E731
    data = st.prompt_dataset(task, args.steps * args.prompts_per_step * args.num_generations, seed=7)

    def load():
        return load_model_and_tokenizer(ModelConfig(), path=args.model, seed=0)

    grpo = ReasoningGRPOConfig(
        max_steps=args.steps,
        num_generations=args.num_generations,
        prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion_length,
        save_steps=10_000,
        logging_steps=1,
    )
    rows, step_s = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, mrt in (("GRPO (outcome)", None), ("MRT (progress)", MRTConfig(mode="progress", prover=prover_cfg))):
            model, tok = load()
            trainer = build_reasoning_trainer(
                model, tok, data, grpo, Path(tmp) / name.split()[0], mrt=mrt, split_fn=split
            )
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
            hist = trainer.state.log_history
            prover = sum(h.get("mrt/prover_seconds", 0.0) for h in hist)
            length = [h["completions/mean_length"] for h in hist if "completions/mean_length" in h]
            step_s[name] = wall / args.steps
            rows.append((name, wall / args.steps, prover / args.steps, sum(length) / max(len(length), 1)))

    print(
        f"## Training step, {args.prompts_per_step} prompts x {args.num_generations} completions, "
        f"up to {args.max_completion_length} tokens, "
        f"{args.prover_samples} forced answers per episode boundary, {args.threads} threads\n"
    )
    print("| trainer | seconds / step | meta-prover s / step | mean completion tokens |")
    print("|---|---:|---:|---:|")
    for name, s, pr, ln in rows:
        print(f"| {name} | {s:.2f} | {pr:.2f} | {ln:.1f} |")
    ratio = step_s["MRT (progress)"] / step_s["GRPO (outcome)"]
    print(f"\nMRT / GRPO time per step: {ratio:.2f}x\n")

    # the meta-prover alone, shared prefix vs from scratch, on the same traces
    model, tok = load()
    problems = st.sample_problems(
        task, args.prompts_per_step * args.num_generations // 2, torch.Generator().manual_seed(11)
    )
    traces = sample_traces(model, tok, [q.prompt for q in problems], 2, args.max_completion_length, 1.0, seed=3)
    p_ids, c_ids, cuts, refs = [], [], [], []
    for q, per in zip(problems, traces):
        for t in per:
            body = t[:-1] if t and t[-1] == tok.eos_token_id else t
            text = tok.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            p_ids.append(tok(q.prompt, add_special_tokens=False)["input_ids"])
            c_ids.append(body)
            cuts.append([0] + token_cuts(tok, body, [e.end for e in split(text)]))
            refs.append(q.answer)
    from dataclasses import replace

    import mrl_llm.reasoning.meta_prover as progress_module

    prover_rows, answers = [], {}
    tree_support = progress_module.supports_tree_attention
    for name, shared, tree in (
        ("shared prefix, tree attention", True, True),
        ("shared prefix, copied rows", True, False),
        ("from scratch", False, False),
    ):
        progress_module.supports_tree_attention = tree_support if tree else (lambda model: False)
        try:
            prover = MetaProver(model, tok, replace(prover_cfg, shared_prefix=shared))
            start = time.perf_counter()
            answers[name] = prover.sample_answers(p_ids, c_ids, cuts, generator=torch.Generator().manual_seed(0))
            prover_rows.append((name, time.perf_counter() - start, prover.stats.encoded_tokens, prover.stats.rows))
        finally:
            progress_module.supports_tree_attention = tree_support
    n_prefixes = sum(len(c) for c in cuts)
    print(f"## Meta-prover: {len(c_ids)} traces, {n_prefixes} prefixes x {args.prover_samples} answers\n")
    print("| method | seconds | tokens encoded | answers |")
    print("|---|---:|---:|---:|")
    for name, s, enc, r in prover_rows:
        print(f"| {name} | {s:.3f} | {enc} | {r} |")
    same = all(a == answers["from scratch"] for a in answers.values())
    scratch = prover_rows[-1]
    print(
        "\nagainst from scratch: "
        + "; ".join(
            f"{name} {scratch[1] / s:.2f}x faster, {scratch[2] / max(enc, 1):.1f}x fewer tokens encoded"
            for name, s, enc, _ in prover_rows[:-1]
        )
        + f"; same answers: {same}"
    )
    return {"step_seconds": step_s, "mrt_over_grpo": ratio, "prover": prover_rows, "same_answers": same}


if __name__ == "__main__":
    main()
