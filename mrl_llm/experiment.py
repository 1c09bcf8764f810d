"""The in-context RL bandit experiment: classic agents and an LLM agent on the same held-out tasks.

Stages (each writes under ``runs/<name>/`` and is reused or resumed when the run is started again):

1. baselines (tuned on training tasks) and RL² — :mod:`classic.experiment`;
2. the LLM: algorithm distillation of Thompson-sampling trials with ``trl.SFTTrainer``;
3. meta-RL finetuning over whole trials with ``trl.GRPOTrainer`` (``rollout_func`` + ``env_mask``);
4. evaluation of the LLM after SFT and after SFT + GRPO by ``classic.evaluate.run_trials``,
   a KV-cache benchmark (tokens/s with and without reusing the cache, same model, same run);
5. report.md, regret.png, results.json, metrics.jsonl + TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from classic.agents.bandit import ThompsonSamplingAgent
from classic.config import save_resolved, to_dict
from classic.envs.bandit import BanditConfig
from classic.evaluate import TrialResult, run_trials
from classic.experiment import (
    BaselinesConfig,
    EvalConfig,
    OutputConfig,
    RL2StageConfig,
    classic_stages,
    evaluate_rl2,
    paper_reference,
    prepare_run_dir,
    set_threads,
    train_rl2_in_process,
    write_report,
)
from classic.algos.rl2 import RL2Policy
from classic.metrics import MetricsLogger
from classic.workers import worker_pool
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.models import ModelConfig, inference_device, load_model_and_tokenizer
from mrl_llm.rollout.agent import LLMAgent, TrialRenderer
from mrl_llm.rollout.generation import SamplingConfig
from mrl_llm.train.checkpoints import open_stage_on_every_rank
from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer, gpu_settings, grpo_arguments, run_grpo
from mrl_llm.train.sft import SFTStageConfig, distillation_dataset, run_sft, sft_arguments, teacher_transcripts

SFT_NAME = "LLM (SFT)"
GRPO_NAME = "LLM (SFT+GRPO)"


@dataclass
class KVCacheBenchmarkConfig:
    """Tokens/s of LLM rollouts with and without KV-cache reuse across turns (same model, same run).

    Attributes:
        enabled: run it after training.
        num_tasks: trials in the measurement (both ways).
    """

    enabled: bool = True
    num_tasks: int = 32


@dataclass
class LLMExperiment:
    """An in-context RL bandit experiment with an LLM agent (``kind: llm`` recipes).

    Attributes:
        name: run name (directory under ``output.root``).
        seed: master seed (tiny-LM initialization; stage seeds are in their groups).
        threads: torch CPU threads (None = all cores).
        parallel_rl2: train RL² in a second process (one thread) while the LLM stages run, so a
            2-core machine uses both cores; off = train it first, in this process.
        task: Bernoulli bandit (num_arms k, episodes_per_trial n).
        baselines: classic baselines evaluated beside the LLM.
        rl2: RL² trained and evaluated beside the LLM.
        model: which LM (``tiny`` or a hub id/path), chat rendering, LoRA.
        sampling: how the LLM samples actions at evaluation (and in rollouts, with grpo.temperature).
        sft: distillation stage; grpo: meta-RL stage; eval: meta-test protocol.
        kv_cache_benchmark: the tokens/s comparison.
        output: run directory.
    """

    name: str = "icrl_bandit_tiny"
    seed: int = 0
    threads: int | None = None
    parallel_rl2: bool = True
    task: BanditConfig = field(default_factory=BanditConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    rl2: RL2StageConfig = field(default_factory=RL2StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kv_cache_benchmark: KVCacheBenchmarkConfig = field(default_factory=KVCacheBenchmarkConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if self.model.trust_remote_code:  # TRL's vLLM engine loads the model by name too
            self.grpo.trust_remote_code = True

    def text_env(self) -> BanditText:
        return BanditText(self.task.num_arms, self.task.episodes_per_trial, chat=self.model.chat)


class MetricsCallback:
    """A ``transformers.TrainerCallback`` forwarding TRL's logs to :class:`MetricsLogger`.

    A stage resumed from checkpoint N replays steps N+1.. that were logged before the interruption;
    resuming is exact, so those lines are already in ``metrics.jsonl`` and are not written twice
    (the steps up to the last one logged under ``prefix`` are skipped).
    """

    def __new__(cls, logger: MetricsLogger, prefix: str):
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            logged_up_to = 0

            def on_train_begin(self, args, state, control, **kwargs):
                if state.global_step > 0:
                    self.logged_up_to = logger.last_step(prefix)

            def on_log(self, args, state, control, logs=None, **kwargs):
                scalars = {f"{prefix}{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                if scalars and int(state.global_step) > self.logged_up_to:
                    logger.log(int(state.global_step), scalars)

        return _CB()


def _final_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "final"


def _save_final(trainer, tokenizer, path: Path):
    """Save the trained model (LoRA merged into the weights) and tokenizer from the main process
    (``Trainer.save_model`` gathers ZeRO-3 shards); returns the model (merged, on every rank)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path)
    else:
        trainer.save_model(str(path))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(path)
    trainer.accelerator.wait_for_everyone()
    return model


def evaluate_llm(model, tokenizer, cfg: LLMExperiment, name: str, num_tasks: int | None = None, use_cache: bool | None = None) -> TrialResult:
    """The LLM agent on the held-out tasks (same tasks and protocol as every other agent), on the
    process's GPU when there is one (:func:`~mrl_llm.models.inference_device`)."""
    import dataclasses

    sampling = cfg.sampling if use_cache is None else dataclasses.replace(cfg.sampling, use_cache=use_cache)
    agent = LLMAgent(model.to(inference_device()).eval(), tokenizer, cfg.text_env(), sampling, name=name)
    res = run_trials(agent, cfg.task.make(), num_tasks or cfg.eval.num_tasks, cfg.task.episodes_per_trial, seed=cfg.eval.seed, batch_size=cfg.eval.llm_batch_size, progress=True)
    res.extra["invalid_examples"] = agent.invalid_replies[:5]
    return res


def sft_fingerprint(cfg: LLMExperiment) -> dict:
    """What the SFT model depends on (its stage folder is redone when this changes)."""
    return {"task": to_dict(cfg.task), "model": to_dict(cfg.model), "sft": to_dict(cfg.sft), "seed": cfg.seed, "teacher": "Thompson sampling"}


def grpo_fingerprint(cfg: LLMExperiment) -> dict:
    """What the GRPO model depends on: its settings, the rollouts' sampling and the start model's."""
    start = sft_fingerprint(cfg) if cfg.sft.enabled else {"model": to_dict(cfg.model), "seed": cfg.seed}
    return {"task": to_dict(cfg.task), "grpo": to_dict(cfg.grpo), "sampling": to_dict(cfg.sampling), "start": start}


def sft_stage(cfg: LLMExperiment, run_dir: Path, logger: MetricsLogger):
    """Distil Thompson sampling into the LM (or load the finished SFT model, or resume its training,
    when ``run_dir/sft`` was made with the same settings: :func:`classic.files.open_stage`); returns
    the model to train with GRPO (float32 weights) and its tokenizer."""
    open_stage_on_every_rank(run_dir / "sft", sft_fingerprint(cfg))
    final = _final_dir(run_dir, "sft")
    if (final / "config.json").exists():
        return load_model_and_tokenizer(cfg.model, path=final, training=True)
    model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seed, training=True)
    renderer = TrialRenderer(tok, cfg.text_env())
    trs = teacher_transcripts(ThompsonSamplingAgent(cfg.task.num_arms), cfg.task.make(), renderer, cfg.sft.num_trials, cfg.task.episodes_per_trial, cfg.sft.seed)
    trainer = run_sft(model, tok, distillation_dataset(trs), cfg.sft, run_dir / "sft", callbacks=[MetricsCallback(logger, "sft/")], peft_config=cfg.model.lora.to_peft())
    return _save_final(trainer, tok, final), tok


def grpo_stage(model, tok, cfg: LLMExperiment, run_dir: Path, logger: MetricsLogger):
    """Meta-RL finetune over trials with GRPO (or load the finished model, or resume, when
    ``run_dir/grpo`` was made with the same settings and start model)."""
    open_stage_on_every_rank(run_dir / "grpo", grpo_fingerprint(cfg))
    final = _final_dir(run_dir, "grpo")
    if (final / "config.json").exists():
        return load_model_and_tokenizer(cfg.model, path=final)
    trainer = build_grpo_trainer(
        model, tok, cfg.task.make(), cfg.text_env(), cfg.grpo, cfg.sampling, cfg.task.episodes_per_trial, run_dir / "grpo",
        peft_config=cfg.model.lora.to_peft(), callbacks=[MetricsCallback(logger, "grpo/")],
    )
    run_grpo(trainer, run_dir / "grpo")
    return _save_final(trainer, tok, final), tok


def kv_cache_benchmark(model, tok, cfg: LLMExperiment) -> dict:
    """Tokens/s of the same rollouts with and without KV-cache reuse; returns both and the speed-up."""
    out = {}
    for use_cache in (True, False):
        res = evaluate_llm(model, tok, cfg, "kv", num_tasks=cfg.kv_cache_benchmark.num_tasks, use_cache=use_cache)
        key = "with_cache" if use_cache else "without_cache"
        out[key] = {"tokens_per_second": res.extra["tokens_per_second"], "wall_time_s": res.wall_time, "encoded_tokens": res.extra["encoded_tokens"]}
    out["speedup"] = out["with_cache"]["tokens_per_second"] / max(out["without_cache"]["tokens_per_second"], 1e-9)
    out["num_tasks"] = cfg.kv_cache_benchmark.num_tasks
    return out


def _start_rl2_process(cfg: LLMExperiment, run_dir: Path, stack: contextlib.ExitStack):
    """Train RL² in a spawned worker (:func:`classic.workers.worker_pool`: it dies with this process,
    and a failure here terminates it); returns the future of its training seconds."""
    pool = stack.enter_context(worker_pool(1))
    return pool.submit(train_rl2_in_process, cfg.task, cfg.rl2, str(run_dir), 1)


def run_llm(cfg: LLMExperiment, progress: bool = True) -> Path:
    """Run the whole chain; returns the run directory (report.md, regret.png, results.json...).

    The LLM is trained first (SFT, then GRPO), then every agent is evaluated. Under ``accelerate
    launch`` every process trains; the main process alone writes the run folder, the config and
    the metrics, runs the classic agents, evaluates and reports, after the other processes have
    returned (nobody waits in a collective while one rank evaluates).
    """
    from accelerate import PartialState

    state = PartialState()
    main = state.is_main_process
    start = time.perf_counter()
    set_threads(cfg.threads)
    run_dir = prepare_run_dir(cfg.name, cfg.output)
    state.wait_for_everyone()  # the main process has made (or remade) the folder
    if main:
        save_resolved(cfg, run_dir / "config.yaml", kind="llm")
    times: dict[str, float] = {}
    extra: dict = {}
    rl2_job = None
    with contextlib.ExitStack() as stack, MetricsLogger(run_dir, enabled=main) as logger:
        if main and cfg.rl2.enabled and cfg.parallel_rl2:
            rl2_job = _start_rl2_process(cfg, run_dir, stack)
        t = time.perf_counter()
        model, tok = sft_stage(cfg, run_dir, logger) if cfg.sft.enabled else load_model_and_tokenizer(cfg.model, seed=cfg.seed, training=True)
        times["SFT (distil Thompson sampling)"] = time.perf_counter() - t
        sft_model = None
        if cfg.grpo.enabled:
            sft_model = _final_dir(run_dir, "sft") if cfg.sft.enabled else None
            t = time.perf_counter()
            model, tok = grpo_stage(model, tok, cfg, run_dir, logger)
            times["GRPO (meta-RL over trials)"] = time.perf_counter() - t
        if not main:
            return run_dir
        results, params, notes = classic_stages(cfg, run_dir, logger, times, progress, rl2=rl2_job is None)
        extra["baseline_params"] = params
        if cfg.grpo.enabled:  # the SFT model, reloaded: GRPO trained the one in memory
            sft = load_model_and_tokenizer(cfg.model, path=sft_model, seed=cfg.seed)[0] if sft_model else load_model_and_tokenizer(cfg.model, seed=cfg.seed)[0]
        else:
            sft = model
        t = time.perf_counter()
        results[SFT_NAME] = evaluate_llm(sft, tok, cfg, SFT_NAME)
        times[f"evaluate {SFT_NAME}"] = time.perf_counter() - t
        del sft
        if cfg.grpo.enabled:
            t = time.perf_counter()
            results[GRPO_NAME] = evaluate_llm(model, tok, cfg, GRPO_NAME)
            times[f"evaluate {GRPO_NAME}"] = time.perf_counter() - t
        if cfg.kv_cache_benchmark.enabled:
            t = time.perf_counter()
            extra["kv_cache"] = kv_cache_benchmark(model, tok, cfg)
            times["KV-cache benchmark"] = time.perf_counter() - t
        if rl2_job is not None:
            times["train RL²"] = rl2_job.result()
            evaluate_rl2(cfg, RL2Policy.load(run_dir / "rl2" / "policy.pt"), results, times)
        for name, res in results.items():
            logger.log(0, {f"eval/{name}/total_reward": float(res.total_reward.mean()), f"eval/{name}/regret": float(res.final_regret.mean())})
    notes += llm_notes(cfg, results, extra)
    parallel = ("train RL²",) if rl2_job is not None else ()
    write_report(run_dir, cfg.name, cfg.task, results, times, notes, extra, paper_reference(cfg.task), wall_time=time.perf_counter() - start, parallel=parallel)
    return run_dir


def llm_notes(cfg: LLMExperiment, results: dict, extra: dict) -> list[str]:
    """Report lines on the LLM agent: invalid actions, SFT vs GRPO, gap to Thompson sampling, KV cache."""
    notes = [
        f"LLM = {'the tiny local LM (' + str(cfg.model.tiny) + ')' if cfg.model.is_tiny else cfg.model.name_or_path}; "
        f"sampled at temperature {cfg.sampling.temperature}; {'chat template' if cfg.model.chat else 'plain-text'} rendering.",
    ]
    reg = {k: float(v.final_regret.mean()) for k, v in results.items()}
    for name in (SFT_NAME, GRPO_NAME):
        if name in results:
            notes.append(f"{name}: invalid-action rate {100 * results[name].invalid_rate:.2f}%.")
    if SFT_NAME in reg and GRPO_NAME in reg:
        d = reg[SFT_NAME] - reg[GRPO_NAME]
        notes.append(f"GRPO changed the LLM's mean cumulative regret from {reg[SFT_NAME]:.2f} to {reg[GRPO_NAME]:.2f} ({'-' if d >= 0 else '+'}{abs(d):.2f}).")
    ts = "Thompson sampling"
    if ts in reg:
        for name in (SFT_NAME, GRPO_NAME):
            if name in reg:
                notes.append(f"{name} regret is {reg[name] - reg[ts]:+.2f} from Thompson sampling's {reg[ts]:.2f} (its teacher).")
    kv = extra.get("kv_cache")
    if kv:
        notes.append(
            f"KV-cache reuse across turns: {kv['with_cache']['tokens_per_second']:.0f} sampled tokens/s vs "
            f"{kv['without_cache']['tokens_per_second']:.0f} re-encoding the history ({kv['speedup']:.1f}x, {kv['num_tasks']} trials each)."
        )
    return notes


def dry_run(cfg: LLMExperiment, out=print) -> dict:
    """Resolve the config and build the trainers' arguments without loading any weights.

    On a machine without a GPU, GPU-only flags (bf16, vLLM) are validated as values and the
    arguments are built with them off, so a GPU recipe can be checked anywhere.
    """
    import dataclasses

    run_dir = Path(cfg.output.root) / cfg.name
    gpu = torch.cuda.is_available()
    sft_cfg = cfg.sft if gpu else dataclasses.replace(cfg.sft, bf16=False)
    grpo_cfg = cfg.grpo if gpu else dataclasses.replace(cfg.grpo, bf16=False, use_vllm=False)
    sft_args = sft_arguments(sft_cfg, run_dir / "sft")
    grpo_args = grpo_arguments(grpo_cfg, run_dir / "grpo", cfg.task.episodes_per_trial * (cfg.sampling.max_action_tokens + 64) + 8)
    peft = cfg.model.lora.to_peft()
    env = cfg.text_env()
    summary = {
        "model": cfg.model.name_or_path,
        "chat": cfg.model.chat,
        "lora": None if peft is None else {"r": peft.r, "alpha": peft.lora_alpha, "target_modules": str(peft.target_modules)},
        "sft": {"enabled": cfg.sft.enabled, "learning_rate": sft_args.learning_rate, "epochs": sft_args.num_train_epochs, "batch": sft_args.per_device_train_batch_size, "bf16": cfg.sft.bf16},
        "grpo": {
            "enabled": cfg.grpo.enabled, "max_steps": grpo_args.max_steps, "learning_rate": grpo_args.learning_rate,
            "num_generations": grpo_args.num_generations, "per_device_train_batch_size": grpo_args.per_device_train_batch_size,
            "use_vllm": cfg.grpo.use_vllm, "vllm_mode": grpo_args.vllm_mode, "bf16": cfg.grpo.bf16, "beta": grpo_args.beta,
            "loss_type": grpo_args.loss_type, "temperature": grpo_args.temperature, "rewards": cfg.grpo.reward_funcs,
        },
        "gpu": {**gpu_settings(cfg.grpo, grpo_args, cfg.model), "vllm_memory_utilization_sum": cfg.grpo.vllm_gpu_memory_utilization if cfg.grpo.use_vllm else 0.0},
        "prompt": env.prompt(),
        "example_feedback": env.feedback(2, 1.0, 1, 1.0),
        "run_dir": str(run_dir),
        "gpu_flags_validated_only": not gpu,
    }
    out(json.dumps(summary, indent=2, default=str))
    return summary
