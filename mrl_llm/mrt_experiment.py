"""The MRT experiment (``kind: mrt`` recipes): outcome-only GRPO against MRT from the same start.

Qu et al. 2025, "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning",
arXiv 2503.07572. Stages, each written under ``runs/<name>/`` and reused or resumed when the run
is started again:

1. the start policy: the tiny LM warm-started by SFT on generated search traces
   (``task.kind: search``), or a hub/local reasoning model as is (``task.kind: math``);
2. for every method in ``methods`` and every seed in ``seeds``, from that start with the same
   budget: ``grpo`` (outcome reward only), ``mrt`` (+ alpha x the progress of each episode),
   ``mrt_rl`` (the termination-reward baseline on prefixes) and ``mrt_star`` (SFT on the traces
   that make progress), all through TRL (:mod:`mrl_llm.train.mrt`);
3. evaluation of the start and every trained model on the same held-out problems: accuracy and
   tokens, pass@1 after forced termination against the token budget, normalized regret, maj@k,
   the progress statistics of their traces (:mod:`mrl_llm.reasoning.evaluate`);
4. ``report.md``, ``accuracy_vs_tokens.png``, ``results.json`` (one entry per trained method:
   ``accuracy`` {mean, ci95}, ``mean_tokens``, ...), ``metrics.jsonl`` + TensorBoard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from classic import seeding
from classic.config import save_resolved, to_dict
from classic.distributed import is_main_process
from classic.files import canonical, save_figure, write_atomic
from classic.executor import ExecutorConfig, make_executor
from classic.workers import in_fresh_process
from classic.files import OutputConfig, prepare_run_dir
from classic.workers import set_threads
from classic.metrics import MetricsLogger
from classic.report import stage_times_table
from mrl_llm.reasoning.search_task import SearchTaskConfig, prompt_dataset, sample_problems, sft_dataset, trace_episodes
from classic.evaluate import mean_ci
from mrl_llm.reasoning.evaluate import ReasoningEvalConfig, evaluate_reasoning, tokens_to_reach
from mrl_llm.models import ModelConfig, load_model_and_tokenizer, load_tokenizer
from mrl_llm.reasoning.meta_prover import MetaProverConfig
from mrl_llm.reasoning.episodes import split_episodes
from mrl_llm.train.checkpoints import open_stage_on_every_rank
from mrl_llm.train.grpo import gpu_settings, run_grpo, trl_engine_max_num_seqs
from mrl_llm.train.mrt import (
    MAX_ENGINE_SEQS,
    MRTConfig,
    ReasoningGRPOConfig,
    STaRConfig,
    build_reasoning_trainer,
    grpo_arguments,
    mrt_star_dataset,
    prover_requests,
)
from mrl_llm.train.sft import SFTStageConfig, run_sft, sft_arguments

METHODS = ("grpo", "mrt", "mrt_rl", "mrt_star")
#: Most of a GPU the training and the evaluation vLLM engines may claim together (vLLM refuses to
#: start when the device's free memory is below its share; CUDA contexts and the allocator need the rest).
MAX_VLLM_MEMORY_UTILIZATION = 0.95
# Disjoint problem streams: SFT data, RL prompts, evaluation.
SFT_SEED, TRAIN_SEED, EVAL_SEED = (seeding.STREAMS[s][0] for s in ("mrt_sft", "mrt_train", "mrt_eval"))


@dataclass
class ReasoningTaskConfig:
    """Which problems.

    Attributes:
        kind: "search" (the synthetic find-x task, :mod:`mrl_llm.reasoning.search_task`) or "math"
            (MATH500 / AIME / AMC / GSM8K via :func:`mrl_llm.reasoning.math_data.load_math_dataset`).
        search: the search task and its SFT trace distribution.
        num_train: RL prompts (search: generated; math: the first ones of ``train_dataset``).
        train_dataset, train_path: math training set name and optional local file/directory.
        eval_dataset, eval_path: math evaluation set name and optional local file/directory.
        prompt_template: math prompt, ``{problem}`` replaced by the problem text.
        chat_template: wrap the math prompt in the tokenizer's chat template (generation prompt on).
    """

    kind: Literal["search", "math"] = "search"
    search: SearchTaskConfig = field(default_factory=SearchTaskConfig)
    num_train: int = 2000
    train_dataset: str = "math500"
    train_path: str | None = None
    eval_dataset: str = "aime24"
    eval_path: str | None = None
    prompt_template: str = "{problem} Let's think step by step and output the final answer within \\boxed{{}}."
    chat_template: bool = True

    def __post_init__(self) -> None:
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {self.num_train}")
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{problem}'")


@dataclass
class MRTExperiment:
    """Outcome-GRPO vs MRT (``kind: mrt`` recipes).

    Attributes:
        name: run name (directory under ``output.root``).
        seeds: training seeds of every method (the report pools their evaluations).
        threads: torch CPU threads of each process (None = the cores, shared among ``workers``).
        workers: (method, seed) runs trained and evaluated at once, in that many processes (the
            start policy's SFT and evaluation run before them with ``workers`` x ``threads``
            threads). On 2 cores, 2 workers x 1 thread do the four runs of
            ``mrt_search_tiny`` ~1.3x faster than 1 x 2: the tiny LM's small matmuls use a
            second thread poorly. Ignored under ``accelerate launch`` (several processes).
        executor: where those runs go (:mod:`classic.executor`): ``local`` worker processes, or
            Ray (``{name: ray}``, ``address: auto`` for a running cluster), ``workers`` at once.
        methods: which trainers to run, among ``grpo``, ``mrt``, ``mrt_rl``, ``mrt_star``.
        task: the problems.
        model: the LM (``tiny`` or a hub id/path).
        sft: the warm start of the tiny LM on search traces (``task.kind: search``).
        grpo: the RL budget and settings shared by every RL method.
        mrt: what MRT adds (mode is set per method: ``mrt`` = progress, ``mrt_rl`` = termination).
        star: MRT-STaR data selection (its SFT uses ``sft``'s optimizer settings).
        eval: the evaluation protocol.
        output: run directory.
    """

    name: str = "mrt_search_tiny"
    seeds: list[int] = field(default_factory=lambda: [0])
    threads: int | None = None
    workers: int = 1
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    methods: list[str] = field(default_factory=lambda: ["grpo", "mrt"])
    task: ReasoningTaskConfig = field(default_factory=ReasoningTaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    grpo: ReasoningGRPOConfig = field(default_factory=ReasoningGRPOConfig)
    mrt: MRTConfig = field(default_factory=MRTConfig)
    star: STaRConfig = field(default_factory=STaRConfig)
    eval: ReasoningEvalConfig = field(default_factory=ReasoningEvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods: unknown {unknown}; known: {list(METHODS)}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.workers < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"workers and threads must be >= 1, got {self.workers} and {self.threads}")
        if self.task.kind == "math" and self.model.is_tiny:
            raise ValueError("task.kind 'math' needs a real reasoning model (model.name_or_path), not the tiny LM")
        if self.grpo.use_vllm and self.eval.use_vllm:
            total = self.grpo.vllm_gpu_memory_utilization + self.eval.vllm_gpu_memory_utilization
            if total > MAX_VLLM_MEMORY_UTILIZATION:
                raise ValueError(
                    f"grpo.vllm_gpu_memory_utilization ({self.grpo.vllm_gpu_memory_utilization}) + "
                    f"eval.vllm_gpu_memory_utilization ({self.eval.vllm_gpu_memory_utilization}) = {total:.2f} > "
                    f"{MAX_VLLM_MEMORY_UTILIZATION}: under accelerate launch the main process evaluates while its "
                    "trainer's colocated vLLM engine may still hold its share of the GPU; lower one of them"
                )
        if self.model.trust_remote_code:  # TRL's vLLM engine loads the model by name too
            self.grpo.trust_remote_code = True
        if self.eval.use_vllm and self.model.is_tiny and not self.sft.enabled:
            raise ValueError(
                "eval.use_vllm: vLLM loads a model from disk, and the tiny LM without SFT exists only in memory; "
                "enable sft or evaluate with transformers"
            )
        if (self.workers > 1 or self.executor.name != "local") and uses_vllm(self):
            raise ValueError(
                "workers > 1 (or executor: ray) trains several runs at once on the CPU cores; with vLLM "
                "(grpo.use_vllm or eval.use_vllm) use workers: 1 and the local executor, and several GPUs "
                "through accelerate launch"
            )

    def prover(self) -> MetaProverConfig:
        """The meta-prover config; the search task brings its own termination suffix."""
        if self.task.kind == "search":
            return dataclasses.replace(self.mrt.prover, termination_suffix=self.task.search.termination_suffix)
        return self.mrt.prover


# ---- data --------------------------------------------------------------------------------------


def split_fn_for(cfg: MRTExperiment):
    """``text -> episodes``: the search task's attempt episodes, or the paper's marker split."""
    if cfg.task.kind == "search":
        suffix = cfg.task.search.termination_suffix
        return lambda text: trace_episodes(text, suffix).episodes
    episodes = cfg.mrt.episodes
    return lambda text: split_episodes(text, episodes)


def render_math_prompt(cfg: ReasoningTaskConfig, tokenizer, problem: str) -> str:
    """The text prompt of a math problem: ``cfg.prompt_template``, in the chat template when asked.

    Text prompts are tokenized the way TRL tokenizes them, ``tokenizer(text)`` with the tokenizer's
    special tokens, in training and in evaluation alike. A chat template that starts with the BOS
    token (DeepSeek-R1's does) would then give two BOS tokens when the tokenizer adds one too
    (deepseek-ai/DeepSeek-R1 issue #151), so the template's BOS text is dropped in that case: the
    prompt tokenizes to exactly one BOS.
    """
    text = cfg.prompt_template.format(problem=problem)
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos) :]
    return text


def _adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` starts with the BOS token by itself."""
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def train_prompts(cfg: MRTExperiment, tokenizer):
    """A ``datasets.Dataset`` with ``prompt`` and ``answer`` for the RL methods."""
    t = cfg.task
    if t.kind == "search":
        return prompt_dataset(t.search, t.num_train, TRAIN_SEED)
    from mrl_llm.reasoning.math_data import load_math_dataset

    ds = load_math_dataset(t.train_dataset, path=t.train_path, limit=t.num_train)
    return ds.map(
        lambda r: {"prompt": render_math_prompt(t, tokenizer, r["problem"]), "answer": r["answer"]},
        remove_columns=[c for c in ds.column_names if c not in ("answer",)],
    )


def eval_problems(cfg: MRTExperiment, tokenizer) -> tuple[list[str], list[str]]:
    """(prompts, reference answers) of the held-out problems."""
    t, n = cfg.task, cfg.eval.num_problems
    if t.kind == "search":
        problems = sample_problems(t.search, n, torch.Generator().manual_seed(EVAL_SEED + cfg.eval.seed))
        return [p.prompt for p in problems], [p.answer for p in problems]
    from mrl_llm.reasoning.math_data import load_math_dataset

    ds = load_math_dataset(t.eval_dataset, path=t.eval_path, limit=n)
    return [render_math_prompt(t, tokenizer, r["problem"]) for r in ds], [r["answer"] for r in ds]


# ---- stages ------------------------------------------------------------------------------------


def _save(model, tokenizer, path: Path):
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def _save_trained(trainer, tokenizer, path: Path, lora: bool) -> None:
    """Write a trained policy once: ``Trainer.save_model`` (gathers ZeRO-3 shards, writes from the main
    process), or, for LoRA, the adapter merged into the weights by the main process; every rank
    returns after the files exist."""
    if not lora:
        trainer.save_model(str(path))
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(path)
    elif trainer.accelerator.is_main_process:
        _save(trainer.accelerator.unwrap_model(trainer.model), tokenizer, path)
    trainer.accelerator.wait_for_everyone()


def start_fingerprint(cfg: MRTExperiment) -> dict:
    """What the start policy depends on."""
    out = {"model": to_dict(cfg.model), "seed": cfg.seeds[0]}
    if cfg.sft.enabled:
        out.update(task=to_dict(cfg.task), sft=to_dict(cfg.sft))
    return out


def run_fingerprint(cfg: MRTExperiment, method: str, seed: int) -> dict:
    """What the trained policy of one (method, seed) run depends on."""
    out = {
        "method": method,
        "seed": seed,
        "task": to_dict(cfg.task),
        "start": start_fingerprint(cfg),
        "prover": to_dict(cfg.prover()),
    }
    if method == "mrt_star":
        out.update(star=to_dict(cfg.star), sft=to_dict(cfg.sft))
    else:
        out["grpo"] = to_dict(cfg.grpo)
        if method != "grpo":
            out["mrt"] = to_dict(cfg.mrt)
    return out


def eval_fingerprint(cfg: MRTExperiment, key: str) -> dict:
    """What an entry of ``evals.json`` depends on: the protocol and the policy evaluated."""
    policy = start_fingerprint(cfg) if key == "start" else run_fingerprint(cfg, *_method_seed(key))
    return canonical(
        {"eval": to_dict(cfg.eval), "prover": to_dict(cfg.prover()), "task": to_dict(cfg.task), "policy": policy}
    )


def _method_seed(key: str) -> tuple[str, int]:
    method, seed = key.rsplit("_s", 1)
    return method, int(seed)


def start_policy(cfg: MRTExperiment, run_dir: Path, logger: MetricsLogger) -> Path | None:
    """The directory of the start policy (SFT warm start; reused or resumed only when made with the
    same settings), or None for ``model.name_or_path`` as is."""
    if not cfg.sft.enabled:
        return None
    open_stage_on_every_rank(run_dir / "sft", start_fingerprint(cfg))
    final = run_dir / "sft" / "final"
    if (final / "config.json").exists():
        return final
    if cfg.task.kind != "search":
        raise ValueError(
            "sft.enabled warm-starts on generated search traces; set sft.enabled: false for task.kind 'math'"
        )
    from mrl_llm.train.stages import MetricsCallback

    model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seeds[0], training=True)
    data = sft_dataset(cfg.task.search, cfg.sft.num_trials, SFT_SEED + cfg.sft.seed, tok)
    trainer = run_sft(
        model,
        tok,
        data,
        cfg.sft,
        run_dir / "sft",
        callbacks=[MetricsCallback(logger, "sft/")],
        peft_config=cfg.model.lora.to_peft(),
    )
    _save_trained(trainer, tok, final, cfg.model.lora.to_peft() is not None)
    release_memory(trainer)
    return final


def train_method(
    cfg: MRTExperiment, method: str, seed: int, start: Path | None, run_dir: Path, logger: MetricsLogger
) -> Path:
    """Train one method from the start policy; returns its final directory (reused if present)."""
    from mrl_llm.train.stages import MetricsCallback

    out = run_dir / f"{method}_s{seed}"
    open_stage_on_every_rank(out, run_fingerprint(cfg, method, seed))
    final = out / "final"
    if (final / "config.json").exists():
        return final
    model, tok = load_model_and_tokenizer(cfg.model, path=start, seed=seed, training=True)
    peft = cfg.model.lora.to_peft()
    split = split_fn_for(cfg)
    cb = [MetricsCallback(logger, f"{method}_s{seed}/")]
    if method == "mrt_star":
        prompts = train_prompts(cfg, tok)
        g = torch.Generator().manual_seed(seed)
        from mrl_llm.models import inference_device

        data, stats = mrt_star_dataset(
            model.to(inference_device()), tok, prompts["prompt"], prompts["answer"], cfg.star, cfg.prover(), split, g
        )
        (out).mkdir(parents=True, exist_ok=True)
        write_atomic(out / "star_stats.json", json.dumps(stats, indent=2))
        if len(data) == 0:  # nothing made progress: the method's policy is the start policy
            import warnings

            warnings.warn(f"MRT-STaR kept no trace out of {stats['sampled']}; {method} seed {seed} = the start policy")
            if is_main_process():
                _save(model, tok, final)
            return final
        trainer = run_sft(
            model, tok, data, dataclasses.replace(cfg.sft, seed=seed), out, callbacks=cb, peft_config=peft
        )
    else:
        grpo = dataclasses.replace(cfg.grpo, seed=seed)
        mrt = None
        if method != "grpo":
            mrt = dataclasses.replace(
                cfg.mrt, mode="progress" if method == "mrt" else "termination", prover=cfg.prover()
            )
        trainer = build_reasoning_trainer(
            model, tok, train_prompts(cfg, tok), grpo, out, mrt=mrt, split_fn=split, peft_config=peft, callbacks=cb
        )
        run_grpo(trainer, out)
    _save_trained(trainer, tok, final, peft is not None)
    release_memory(trainer)
    return final


def evaluate_policy(cfg: MRTExperiment, path: Path | None, seed_offset: int = 0) -> dict:
    """:func:`~mrl_llm.reasoning.evaluate.evaluate_reasoning` of a saved policy (None: the
    configured model as is) on the held-out problems; with ``eval.use_vllm`` through a vLLM engine
    (call it in a process that holds no other engine: :func:`run_mrt` uses a fresh one), else with
    transformers on the process's GPU (:func:`~mrl_llm.models.inference_device`)."""
    ev = dataclasses.replace(cfg.eval, seed=cfg.eval.seed + seed_offset)
    if ev.use_vllm:
        from vllm import LLM

        source = str(path) if path is not None else cfg.model.name_or_path
        tok = load_tokenizer(cfg.model, path)
        llm = LLM(
            model=source,
            dtype=cfg.model.dtype if cfg.model.dtype != "float32" else "auto",
            gpu_memory_utilization=ev.vllm_gpu_memory_utilization,
            enable_prefix_caching=True,
            seed=ev.seed,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        prompts, refs = eval_problems(cfg, tok)
        return evaluate_reasoning(None, tok, prompts, refs, ev, cfg.prover(), split_fn_for(cfg), vllm_llm=llm)
    model, tok = load_model_and_tokenizer(cfg.model, path=path, seed=cfg.seeds[0])
    prompts, refs = eval_problems(cfg, tok)
    return evaluate_reasoning(model, tok, prompts, refs, ev, cfg.prover(), split_fn_for(cfg))


def uses_vllm(cfg: MRTExperiment) -> bool:
    """Whether any stage runs a vLLM engine (training rollouts or evaluation)."""
    return cfg.grpo.use_vllm or cfg.eval.use_vllm


def release_memory(trainer=None) -> None:
    """Drop a finished trainer's model, optimizer and vLLM engine, then collect garbage and empty
    the CUDA cache, so the next stage of this process starts with the GPU free (best effort: a
    colocated vLLM engine may keep its share until the process exits, which
    :data:`MAX_VLLM_MEMORY_UTILIZATION` allows for)."""
    import gc

    if trainer is not None:
        trainer.accelerator.free_memory()
        for name in (
            "model",
            "model_wrapped",
            "optimizer",
            "lr_scheduler",
            "ref_model",
            "vllm_generation",
            "deepspeed",
        ):
            if hasattr(trainer, name):
                setattr(trainer, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- aggregation and report ----------------------------------------------------------------


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Pool a method's evaluations over seeds: means of the per-seed numbers; the accuracy's CI
    pools the per-problem accuracies of every seed (units = (seed, problem) pairs), and
    ``seed_accuracy`` lists each seed's mean so the spread across seeds stays visible."""
    runs = list(per_seed.values())
    pooled = [a for r in runs for a in r.get("per_problem_accuracy", [])]
    acc = mean_ci(pooled) if pooled else dict(runs[0]["accuracy"])
    curve_keys = ("accuracy", "mean_tokens")
    budgets = runs[0]["budget_curve"]["budgets"]
    curve = {"budgets": budgets}
    for k in curve_keys:
        curve[k] = [sum(r["budget_curve"][k][i] for r in runs) / len(runs) for i in range(len(budgets))]
    out = {
        "accuracy": acc,
        "seed_accuracy": [r["accuracy"]["mean"] for r in runs],
        "mean_tokens": sum(r["mean_tokens"] for r in runs) / len(runs),
        "finished": sum(r["finished"] for r in runs) / len(runs),
        "normalized_regret": sum(r["normalized_regret"] for r in runs) / len(runs),
        "budget_curve": curve,
        "maj_at_k": {
            k: {m: sum(r["maj_at_k"][k][m] for r in runs) / len(runs) for m in ("accuracy", "mean_tokens")}
            for k in runs[0]["maj_at_k"]
        },
        "seeds": {str(s): r for s, r in per_seed.items()},
    }
    for k in ("episodes", "progress_per_episode", "episodes_with_progress", "J_start", "J_end"):
        if all(k in r for r in runs):
            out[k] = sum(r[k] for r in runs) / len(runs)
    return out


def token_efficiency(results: dict, reference: str = "grpo") -> dict:
    """For every method vs ``reference``: the tokens each needs on its budget curve to reach the
    reference's final (largest-budget) accuracy, and the ratio reference / method
    (> 1: the method gets there with fewer tokens)."""
    if reference not in results:
        return {}
    ref = results[reference]["budget_curve"]
    target = ref["accuracy"][-1]
    ref_tokens = tokens_to_reach(ref["mean_tokens"], ref["accuracy"], target)
    out = {}
    for name, r in results.items():
        c = r["budget_curve"]
        t = tokens_to_reach(c["mean_tokens"], c["accuracy"], target)
        out[name] = {
            "target_accuracy": target,
            "tokens": t,
            "ratio_vs_" + reference: (ref_tokens / t) if t not in (0, float("inf")) else None,
            "mean_tokens_ratio_vs_" + reference: results[reference]["mean_tokens"] / r["mean_tokens"]
            if r["mean_tokens"]
            else None,
        }
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        c = r["budget_curve"]
        axes[0].plot([0] + c["mean_tokens"], [0] + c["accuracy"], marker="o", ms=3, label=name)
        ks = sorted(r["maj_at_k"], key=int)
        axes[1].plot(
            [r["maj_at_k"][k]["mean_tokens"] for k in ks],
            [r["maj_at_k"][k]["accuracy"] for k in ks],
            marker="o",
            ms=3,
            label=name,
        )
    axes[0].set(
        xlabel="tokens per trace (forced termination at the budget)", ylabel="pass@1", title="accuracy vs tokens"
    )
    axes[1].set(
        xlabel="total tokens of k traces",
        ylabel="maj@k",
        title="maj@k vs tokens (k = " + ", ".join(sorted(next(iter(results.values()))["maj_at_k"], key=int)) + ")",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_report(
    cfg: MRTExperiment, run_dir: Path, results: dict, efficiency: dict, train_stats: dict, times: dict, wall: float
) -> None:
    lines = [f"# {cfg.name}: outcome-GRPO vs MRT (Qu et al. 2025, arXiv 2503.07572)", ""]
    lines.append(
        f"Task: {cfg.task.kind}; model: {cfg.model.name_or_path}; seeds {cfg.seeds}; "
        f"{cfg.eval.num_problems} held-out problems x {cfg.eval.samples_per_problem} traces "
        f"(temperature {cfg.eval.temperature}); "
        f"RL budget {cfg.grpo.max_steps} steps x {cfg.grpo.prompts_per_step} prompts x "
        f"{cfg.grpo.num_generations} completions per method and seed."
    )
    lines += [
        "",
        "| model | accuracy | mean tokens | finished | normalized regret | episodes | progress / episode "
        "| J start -> end | tokens to GRPO's accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        eff = efficiency.get(name, {})
        tok = eff.get("tokens")
        tok_s = "—" if tok is None else ("never" if tok == float("inf") else f"{tok:.1f}")
        prog = f"{r['progress_per_episode']:+.3f}" if "progress_per_episode" in r else "—"
        js = f"{r['J_start']:.2f} -> {r['J_end']:.2f}" if "J_start" in r else "—"
        lines.append(
            f"| {name} | {r['accuracy']['mean']:.3f} ± {r['accuracy']['ci95']:.3f} | {r['mean_tokens']:.1f} "
            f"| {r['finished']:.2f} | "
            f"{r['normalized_regret']:.3f} | {r.get('episodes', float('nan')):.2f} | {prog} | {js} | {tok_s} |"
        )
    lines += [
        "",
        "Accuracy: natural final answers, up to the largest budget; ± = 95% CI over (seed, problem) pairs; "
        "per seed: "
        + "; ".join(f"{n} " + ", ".join(f"{a:.3f}" for a in r.get("seed_accuracy", [])) for n, r in results.items())
        + ".",
    ]
    if "grpo" in efficiency:
        lines.append("")
        for name, eff in efficiency.items():
            if name == "grpo":
                continue
            ratio = eff.get("ratio_vs_grpo")
            mt = eff.get("mean_tokens_ratio_vs_grpo")
            reach = (
                f"reaches GRPO's pass@1 at the largest budget ({eff['target_accuracy']:.3f}) "
                f"with {ratio:.2f}x fewer tokens "
                "on its budget curve"
                if ratio is not None
                else f"does not reach GRPO's pass@1 at the largest budget ({eff['target_accuracy']:.3f}) "
                "within the budgets"
            )
            lines.append(
                f"- **{name}** vs grpo: {reach}"
                + (f"; its traces are {mt:.2f}x shorter on average" if mt else "")
                + "."
            )
    lines += ["", "## Accuracy against the token budget (pass@1 after forced termination)", ""]
    names = list(results)
    budgets = results[names[0]]["budget_curve"]["budgets"]
    lines.append("| budget | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for i, b in enumerate(budgets):
        lines.append(f"| {b} | " + " | ".join(f"{results[n]['budget_curve']['accuracy'][i]:.3f}" for n in names) + " |")
    lines += [
        "",
        "## maj@k",
        "",
        "| k | " + " | ".join(f"{n} (acc / tokens)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for k in sorted(results[names[0]]["maj_at_k"], key=int):
        lines.append(
            f"| {k} | "
            + " | ".join(
                f"{results[n]['maj_at_k'][k]['accuracy']:.3f} / {results[n]['maj_at_k'][k]['mean_tokens']:.0f}"
                for n in names
            )
            + " |"
        )
    if train_stats:
        lines += ["", "## Training (means over logged steps)", ""]
        for name, stats in train_stats.items():
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stats.items())))
    main_threads, worker_threads = _threads(cfg)
    lines += [
        "",
        "![accuracy vs tokens](accuracy_vs_tokens.png)",
        "",
        "## Time",
        "",
        f"SFT and the start's evaluation: 1 process x {main_threads} torch thread(s); the runs: "
        + (
            f"{cfg.workers} worker processes x {worker_threads} thread(s), so their times overlap."
            if cfg.workers > 1
            else f"one after another, {main_threads} thread(s)."
        ),
        "",
    ]
    lines.append(stage_times_table(times, wall))
    write_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def _train_stats(run_dir: Path, runs: set[str] | None = None) -> dict:
    """Means of the MRT, reward and vLLM-sampling (TRL's importance ratios) metrics each method logged
    while training (from metrics.jsonl), keyed by ``<method>_s<seed>``; only the ``runs`` given, if any
    (a run folder reused with other
    methods or seeds keeps the earlier runs' lines)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    sums: dict = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if "/" not in k or not isinstance(v, (int, float)):
                continue
            run, metric = k.split("/", 1)
            if runs is not None and run not in runs:
                continue
            if metric.startswith(("mrt/", "sampling/")) or metric in ("reward", "completions/mean_length"):
                s = sums.setdefault(run, {}).setdefault(metric, [0.0, 0])
                s[0] += v
                s[1] += 1
    return {run: {m: a / n for m, (a, n) in sorted(ms.items())} for run, ms in sorted(sums.items())}


def _threads(cfg: MRTExperiment) -> tuple[int, int]:
    """(threads of the main process, threads of each worker)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_worker = cfg.threads if cfg.threads is not None else max(1, cores // cfg.workers)
    return per_worker * cfg.workers, per_worker


def train_and_evaluate(cfg: MRTExperiment, method: str, seed: int, start: Path | None, run_dir: str) -> dict:
    """One (method, seed) run in a worker process: train (or reuse) it, then evaluate it.

    Returns:
        {"key": "<method>_s<seed>", "eval": evaluate_policy's dict, "train_s", "eval_s"}.
    """
    set_threads(_threads(cfg)[1])
    run_dir = Path(run_dir)
    with MetricsLogger(run_dir) as logger:  # appends whole lines: workers may share the file
        t = time.perf_counter()
        final = train_method(cfg, method, seed, start, run_dir, logger)
        train_s = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate_policy(cfg, final, 0)
    return {"key": f"{method}_s{seed}", "eval": ev, "train_s": train_s, "eval_s": time.perf_counter() - t}


def load_evals(cfg: MRTExperiment, run_dir: Path) -> tuple[dict, dict]:
    """The finished evaluations of ``run_dir/evals.json`` that were made with this config's protocol
    and policies (their fingerprints, ``evals.fingerprints.json``, match), and those fingerprints;
    the others are dropped, to be redone."""
    evals_path, prints_path = run_dir / "evals.json", run_dir / "evals.fingerprints.json"
    try:
        evals = json.loads(evals_path.read_text()) if evals_path.exists() else {}
        prints = json.loads(prints_path.read_text()) if prints_path.exists() else {}
    except ValueError:  # not written by write_atomic (an older version): redo them all
        return {}, {}
    keep = {k for k in evals if k in prints and prints[k] == eval_fingerprint(cfg, k)}
    return {k: evals[k] for k in keep}, {k: prints[k] for k in keep}


def _start_policy_worker(cfg: MRTExperiment, run_dir: str) -> Path | None:
    """:func:`start_policy` in a worker process (its own metrics logger)."""
    set_threads(_threads(cfg)[0])
    with MetricsLogger(run_dir) as logger:
        return start_policy(cfg, Path(run_dir), logger)


def _train_worker(cfg: MRTExperiment, method: str, seed: int, start: Path | None, run_dir: str) -> Path:
    """:func:`train_method` in a worker process (its own metrics logger)."""
    set_threads(_threads(cfg)[0])
    with MetricsLogger(run_dir) as logger:
        return train_method(cfg, method, seed, start, Path(run_dir), logger)


def run_mrt(cfg: MRTExperiment) -> Path:
    """Run the whole experiment; returns the run directory.

    * One process, ``workers`` > 1: the (method, seed) runs go to that many worker processes
      (spawned), each training and then evaluating its run.
    * One process with vLLM (``grpo.use_vllm`` or ``eval.use_vllm``): the SFT start, every training
      run and every evaluation run each in a fresh process, so that each vLLM engine (TRL's
      colocated one, the evaluation's) starts on a GPU that no earlier stage still holds.
    * Under ``accelerate launch``: every process trains (SFT start, then each run); the main process
      alone writes the run folder, the config, the metrics and, once every run is trained, evaluates
      them (the evaluation's vLLM engine in a fresh process) and writes the report, while the other
      processes have returned: nobody waits in a collective while one rank evaluates.

    ``evals.json`` is written as each evaluation finishes and finished training runs are reused, so
    an interrupted run resumes with what is done.
    """
    from accelerate import PartialState

    state = PartialState()
    main, single = state.is_main_process, state.num_processes == 1
    isolate = single and uses_vllm(cfg)
    start_time = time.perf_counter()
    main_threads, _ = _threads(cfg)
    set_threads(main_threads)
    run_dir = prepare_run_dir(cfg.name, cfg.output)
    state.wait_for_everyone()  # the main process has made (or remade) the folder
    if main:
        save_resolved(cfg, run_dir / "config.yaml", kind="mrt")
    times: dict[str, float] = {}
    evals_path, prints_path = run_dir / "evals.json", run_dir / "evals.fingerprints.json"
    evals, prints = load_evals(cfg, run_dir)

    def record(key: str, ev: dict) -> None:
        evals[key], prints[key] = ev, eval_fingerprint(cfg, key)
        write_atomic(evals_path, json.dumps(evals, indent=2))
        write_atomic(prints_path, json.dumps(prints, indent=1))

    def evaluate(key: str, label: str, path: Path | None) -> None:
        if key in evals:
            return
        t = time.perf_counter()
        record(
            key, in_fresh_process(evaluate_policy, cfg, path, 0) if cfg.eval.use_vllm else evaluate_policy(cfg, path, 0)
        )
        times[f"evaluate {label}"] = time.perf_counter() - t

    runs = [(m, seed) for m in cfg.methods for seed in cfg.seeds]
    finals: dict[str, Path] = {}
    with MetricsLogger(run_dir, enabled=main) as logger:
        t = time.perf_counter()
        start = (
            in_fresh_process(_start_policy_worker, cfg, str(run_dir)) if isolate else start_policy(cfg, run_dir, logger)
        )
        times["start policy (SFT)"] = time.perf_counter() - t
        if single:
            evaluate("start", "start", start)
        pending = [(m, seed) for m, seed in runs if f"{m}_s{seed}" not in evals]
        if single and (cfg.workers > 1 or cfg.executor.name != "local") and len(pending) > 1:
            t = time.perf_counter()
            jobs = [(cfg, m, seed, start, str(run_dir)) for m, seed in pending]
            with make_executor(cfg.executor, min(cfg.workers, len(pending)), _threads(cfg)[1]) as executor:
                for done in executor.map(train_and_evaluate, jobs):  # in order; each records its evaluation
                    record(done["key"], done["eval"])
                    method, seed = done["key"].rsplit("_s", 1)
                    times[f"train {method} seed {seed}"] = done["train_s"]
                    times[f"evaluate {method} seed {seed}"] = done["eval_s"]
            times[f"{len(pending)} runs in {min(cfg.workers, len(pending))} workers (wall)"] = time.perf_counter() - t
        else:
            for method, seed in runs:
                key = f"{method}_s{seed}"
                t = time.perf_counter()
                if isolate:
                    finals[key] = in_fresh_process(_train_worker, cfg, method, seed, start, str(run_dir))
                else:
                    finals[key] = train_method(cfg, method, seed, start, run_dir, logger)
                times[f"train {method} seed {seed}"] = time.perf_counter() - t
                if single:
                    evaluate(key, f"{method} seed {seed}", finals[key])
    if not main:
        return run_dir
    release_memory()
    evaluate("start", "start", start)
    for method, seed in runs:
        evaluate(f"{method}_s{seed}", f"{method} seed {seed}", finals.get(f"{method}_s{seed}"))
    results: dict = {"start": aggregate({0: evals["start"]})}
    for method in cfg.methods:
        results[method] = aggregate({seed: evals[f"{method}_s{seed}"] for seed in cfg.seeds})
    efficiency = token_efficiency({k: v for k, v in results.items() if k != "start"})
    plot(results, run_dir / "accuracy_vs_tokens.png")
    wall = time.perf_counter() - start_time
    train_stats = _train_stats(run_dir, {f"{m}_s{seed}" for m in cfg.methods for seed in cfg.seeds})
    write_report(cfg, run_dir, results, efficiency, train_stats, times, wall)
    write_atomic(
        run_dir / "results.json",
        json.dumps(
            {**results, "token_efficiency": efficiency, "training": train_stats, "times_s": times, "wall_s": wall},
            indent=2,
            default=str,
        ),
    )
    return run_dir


def dry_run(cfg: MRTExperiment, out=print) -> dict:
    """Resolve the recipe and build the trainers' arguments without loading any weights.

    Off a GPU, GPU-only flags (bf16, vLLM) are validated as values and the arguments are built
    with them off, so a GPU recipe can be checked anywhere.
    """
    gpu = torch.cuda.is_available()
    run_dir = Path(cfg.output.root) / cfg.name
    grpo = cfg.grpo if gpu else dataclasses.replace(cfg.grpo, bf16=False, use_vllm=False)
    args = grpo_arguments(grpo, run_dir / "grpo")
    summary = {
        "model": cfg.model.name_or_path,
        "task": cfg.task.kind,
        "data": {
            "train": cfg.task.train_dataset if cfg.task.kind == "math" else "search (generated)",
            "eval": cfg.task.eval_dataset if cfg.task.kind == "math" else "search (generated)",
        },
        "methods": cfg.methods,
        "seeds": cfg.seeds,
        "grpo": {
            "max_steps": args.max_steps,
            "learning_rate": args.learning_rate,
            "num_generations": args.num_generations,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_completion_length": args.max_completion_length,
            "temperature": args.temperature,
            "beta": args.beta,
            "loss_type": args.loss_type,
            "use_vllm": cfg.grpo.use_vllm,
            "vllm_mode": args.vllm_mode,
            "bf16": cfg.grpo.bf16,
        },
        "gpu": {
            **gpu_settings(cfg.grpo, args, cfg.model),
            "eval_vllm": {
                "use_vllm": cfg.eval.use_vllm,
                "gpu_memory_utilization": cfg.eval.vllm_gpu_memory_utilization if cfg.eval.use_vllm else 0.0,
            },
            "vllm_memory_utilization_sum": (cfg.grpo.vllm_gpu_memory_utilization if cfg.grpo.use_vllm else 0.0)
            + (cfg.eval.vllm_gpu_memory_utilization if cfg.eval.use_vllm else 0.0),
            "vllm_memory_utilization_max": MAX_VLLM_MEMORY_UTILIZATION,
            "meta_prover_sequences_per_generation": (
                req := prover_requests(args, dataclasses.replace(cfg.mrt, mode="progress"))
            ),
            "mrt_engine_max_num_seqs": max(trl_engine_max_num_seqs(args), min(req, MAX_ENGINE_SEQS)),
        },
        "mrt": {
            "alpha": cfg.mrt.alpha,
            "credit": cfg.mrt.credit,
            "max_episodes": cfg.mrt.max_episodes,
            "prover": dataclasses.asdict(cfg.prover()),
            "markers": list(cfg.mrt.episodes.markers),
        },
        "run_dir": str(run_dir),
        "gpu_flags_validated_only": not gpu,
    }
    if cfg.sft.enabled:
        sft = cfg.sft if gpu else dataclasses.replace(cfg.sft, bf16=False)
        summary["sft"] = {
            "learning_rate": sft_arguments(sft, run_dir / "sft").learning_rate,
            "num_examples": cfg.sft.num_trials,
        }
    out(json.dumps(summary, indent=2, default=str))
    return summary
