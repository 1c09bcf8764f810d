"""The LLM in-context learner: a ``learners:`` entry of a ``kind: compare`` recipe.

An LLM plays whole trials of a task rendered as text (:mod:`mrl_llm.envs.text_env`), rewards in
its context. It is trained in two stages, each in its own folder under the learner's stage folder
(reused, resumed or redone by its own fingerprint, :func:`classic.files.open_stage`):

1. ``sft/``: distillation of a registered teacher agent's trials (any baseline by name,
   Thompson sampling by default; its ``grid`` is searched on training tasks first, as for a
   baseline) with ``trl.SFTTrainer``, the loss on the teacher's reply tokens only: Algorithm
   Distillation with text tokens (Laskin et al. 2022, arXiv 2210.14215);
2. ``grpo/``: meta-RL finetuning over whole trials with ``trl.GRPOTrainer`` (``rollout_func`` +
   ``env_mask``): a GRPO group is several trials of one training task, the reward a trial-level
   one (minus the regret, the return).

Its agents, the LM after SFT and after SFT + GRPO, are evaluated by the one evaluator on the same
held-out tasks as every other agent, and its report lines give the invalid-action rate, the change
GRPO made, the gap to the teacher and the KV-cache benchmark (tokens/s with and without reusing the
cache across turns, same model, same run).

Example recipe section::

    learners:
      - {name: rl2}
      - name: llm
        teacher: {name: UCB1, grid: {}, c: 0.2}
        model: {name_or_path: tiny}
        sft: {num_trials: 8000}
        grpo: {max_steps: 300, reward_funcs: [negative_regret]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from classic import seeding
from classic.agents.base import settings_text
from classic.config import to_dict
from classic.core import MetaLearner, StageRun, TaskDistribution
from classic.evaluate import TrialResult, run_trials
from classic.registry import AGENTS, LEARNERS
from mrl_llm.envs.text_env import TextEnv, text_env_for
from mrl_llm.models import ModelConfig, inference_device, load_model_and_tokenizer
from mrl_llm.rollout.generation import SamplingConfig
from mrl_llm.train.grpo import GRPOStageConfig
from mrl_llm.train.sft import SFTStageConfig


@dataclass
class KVCacheBenchmarkConfig:
    """Tokens/s of LLM rollouts with and without KV-cache reuse across turns (same model, same run).

    Attributes:
        enabled: run it after the evaluation.
        num_tasks: trials in the measurement (both ways).
    """

    enabled: bool = True
    num_tasks: int = 32

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")


def _default_teacher():
    return AGENTS.get("Thompson sampling")(grid={})


@LEARNERS.register("llm")
@dataclass
class LLMLearnerConfig:
    """The LLM in-context learner's recipe section.

    Attributes:
        name: the registry name.
        label: its name in reports (default "LLM"; the agents are "<label> (SFT)" and
            "<label> (SFT+GRPO)").
        model: which LM (``tiny`` or a hub id/path), chat rendering, LoRA.
        sampling: how the LM samples actions at evaluation (and in rollouts, with ``grpo.temperature``).
        teacher: the agent distilled by SFT, any registered baseline (``{name: UCB1, c: 0.2}``);
            its ``grid`` is searched on training tasks first when it has one (default: Thompson
            sampling with the task prior, untuned).
        sft: the distillation stage; grpo: the meta-RL stage.
        reflection: the LM writes a reflection after every episode but the last (LaMer, Jiang
            et al. 2025, arXiv 2512.16848): a note the next episodes read (Dark Room: where the
            goal is); SFT teaches the teacher's notes (:meth:`TextEnv.teacher_reflection`), GRPO
            trains them as the LM's own tokens. Needs a rendering with reflection (ValueError
            when the run starts otherwise).
        eval_batch_size: held-out tasks the LM plays at once (memory of the KV cache).
        kv_cache_benchmark: the tokens/s comparison in the report.

    Raises:
        ValueError: ``eval_batch_size`` < 1.
    """

    name: str = "llm"
    label: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    teacher: AGENTS.ref = field(default_factory=_default_teacher)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    reflection: bool = False
    eval_batch_size: int = 250
    kv_cache_benchmark: KVCacheBenchmarkConfig = field(default_factory=KVCacheBenchmarkConfig)

    def __post_init__(self) -> None:
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.sft.note_noise > 0 and not self.reflection:
            raise ValueError("sft.note_noise replaces reflections in the context: it needs reflection: true")
        if self.sft.note_weight != 1.0 and not self.reflection:
            raise ValueError("sft.note_weight weighs the reflections' tokens: it needs reflection: true")
        if self.model.trust_remote_code:  # TRL's vLLM engine loads the model by name too
            self.grpo.trust_remote_code = True

    @property
    def display_name(self) -> str:
        return self.label or "LLM"

    def stage_names(self) -> list[str]:
        """Report names of the agents, in evaluation order."""
        trained = ["SFT"] if self.sft.enabled else []
        out = [f"{self.display_name} ({'+'.join(trained)})"] if trained else []
        if self.grpo.enabled:
            out.append(f"{self.display_name} ({'+'.join(trained + ['GRPO'])})")
        return out or [f"{self.display_name} (untrained)"]

    def learner(self) -> "LLMLearner":
        return LLMLearner()


@dataclass
class LLMCheckpoint:
    """What training left: the final model of each stage (None: the stage is off) and the text
    rendering the LM was trained on."""

    text_env: TextEnv
    seed: int
    sft: Path | None = None
    grpo: Path | None = None


def _stage_fingerprints(config: LLMLearnerConfig, task: Any, seed: int, text_env: TextEnv) -> tuple[dict, dict]:
    start = {"model": to_dict(config.model), "seed": seed, "rendering": repr(text_env)}
    sft = {"task": to_dict(task), **start, "sft": to_dict(config.sft), "teacher": to_dict(config.teacher)}
    grpo = {
        "task": to_dict(task),
        "grpo": to_dict(config.grpo),
        "sampling": to_dict(config.sampling),
        "start": sft if config.sft.enabled else start,
    }
    return sft, grpo


class LLMLearner(MetaLearner):
    """The :class:`~classic.core.MetaLearner` of the LLM: SFT on a teacher's trials, then GRPO over
    whole trials. Under ``accelerate launch`` every rank trains (``trains_on_every_rank``); the
    main process alone writes the run's files and evaluates."""

    config_class = LLMLearnerConfig
    trains_on_every_rank = True

    def stage_fingerprint(self, config: LLMLearnerConfig, task: Any) -> None:
        return None  # sft/ and grpo/ carry their own fingerprints

    def evaluation_batch_size(self, config: LLMLearnerConfig, protocol: Any) -> int:
        return config.eval_batch_size

    # ---- training -----------------------------------------------------------------------------
    def train(self, config: LLMLearnerConfig, dist: TaskDistribution, protocol: Any, run: StageRun) -> LLMCheckpoint:
        """Run (or reuse, or resume) the SFT and GRPO stages in ``run.dir``.

        Raises:
            ValueError: the task has no text rendering (non-``Discrete`` actions), or a GRPO reward
                needs the regret on a task that has no oracle.
        """
        from accelerate import PartialState

        from mrl_llm.train.checkpoints import open_stage_on_every_rank

        E = protocol.episodes_per_trial
        text_env = text_env_for(run.task, dist, E, chat=config.model.chat, reflect=config.reflection)
        self._check_rewards(config, dist)
        PartialState().wait_for_everyone()  # the main process has prepared the run folder
        stage = Path(run.dir)
        sft_fp, grpo_fp = _stage_fingerprints(config, run.task, run.seed, text_env)
        ckpt = LLMCheckpoint(text_env, run.seed)
        model = tok = None
        if config.sft.enabled:
            open_stage_on_every_rank(stage / "sft", sft_fp, on_new=self._forget(run, "sft"))
            ckpt.sft = stage / "sft" / "final"
            if not (ckpt.sft / "config.json").exists():
                model, tok = self._sft(config, dist, protocol, run, text_env, stage / "sft")
        if config.grpo.enabled:
            open_stage_on_every_rank(stage / "grpo", grpo_fp, on_new=self._forget(run, "grpo"))
            ckpt.grpo = stage / "grpo" / "final"
            if not (ckpt.grpo / "config.json").exists():
                if model is None:
                    model, tok = load_model_and_tokenizer(config.model, path=ckpt.sft, seed=run.seed, training=True)
                self._grpo(model, tok, config, dist, protocol, run, text_env, stage / "grpo")
        return ckpt

    @staticmethod
    def _check_rewards(config: LLMLearnerConfig, dist: TaskDistribution) -> None:
        if config.grpo.enabled and "negative_regret" in config.grpo.reward_funcs:
            import torch

            if dist.optimal_episode_return(dist.sample_tasks(1, torch.Generator().manual_seed(0))) is None:
                raise ValueError(
                    "grpo.reward_funcs: negative_regret needs the task's optimal return, which this "
                    "task does not know; use trial_return"
                )

    @staticmethod
    def _forget(run: StageRun, stage: str):
        """Drops a sub-stage's old curve from the metrics when it starts from scratch."""
        if run.metrics is None:
            return None
        return lambda: run.metrics.forget(f"{Path(run.dir).name}/{stage}/")

    def _metrics_callbacks(self, run: StageRun, stage: str) -> list:
        from mrl_llm.train.stages import MetricsCallback

        return [MetricsCallback(run.metrics, f"{Path(run.dir).name}/{stage}/")] if run.metrics is not None else []

    def teacher(self, config: LLMLearnerConfig, dist: TaskDistribution, protocol: Any, seed: int):
        """The teacher agent, its ``grid`` searched on training tasks (stream ``tune``) first; made
        for ``sft.subsample`` x the trial's episodes (its learning history's length)."""
        teacher = config.teacher
        episodes = protocol.episodes_per_trial * config.sft.subsample
        if teacher.tuning_grid(dist):
            from classic.experiments.compare import tune_baseline

            tasks = dist.sample_tasks(protocol.tune_tasks, seeding.generator("tune", seed))
            teacher, _ = tune_baseline(teacher, dist, episodes, tasks, seed)
        return teacher.make(dist, episodes)

    def _sft(self, config, dist, protocol, run, text_env, out: Path):
        from mrl_llm.rollout.agent import TrialRenderer
        from mrl_llm.train.sft import distillation_dataset, run_sft, teacher_transcripts
        from mrl_llm.train.stages import save_final

        model, tok = load_model_and_tokenizer(config.model, seed=run.seed, training=True)
        renderer = TrialRenderer(tok, text_env)
        teacher = self.teacher(config, dist, protocol, run.seed)
        trs = teacher_transcripts(
            teacher,
            dist,
            renderer,
            config.sft.num_trials,
            protocol.episodes_per_trial,
            config.sft.seed,
            config.sft.subsample,
            config.sft.note_noise,
        )
        trainer = run_sft(
            model,
            tok,
            distillation_dataset(trs, config.sft.note_weight),
            config.sft,
            out,
            callbacks=self._metrics_callbacks(run, "sft"),
            peft_config=config.model.lora.to_peft(),
        )
        return save_final(trainer, tok, out / "final"), tok

    def _grpo(self, model, tok, config, dist, protocol, run, text_env, out: Path):
        from mrl_llm.train.grpo import build_grpo_trainer, run_grpo
        from mrl_llm.train.stages import save_final

        trainer = build_grpo_trainer(
            model,
            tok,
            dist,
            text_env,
            config.grpo,
            config.sampling,
            protocol.episodes_per_trial,
            out,
            peft_config=config.model.lora.to_peft(),
            callbacks=self._metrics_callbacks(run, "grpo"),
        )
        run_grpo(trainer, out)
        save_final(trainer, tok, out / "final")

    # ---- evaluation -----------------------------------------------------------------------------
    def agent(
        self,
        config: LLMLearnerConfig,
        checkpoint: LLMCheckpoint,
        dist: TaskDistribution,
        path=None,
        name: str | None = None,
    ):
        """The LM saved at ``path`` (default: the last stage's; the untrained LM when no stage ran)
        as an :class:`~mrl_llm.rollout.agent.LLMAgent`, on this process's device."""
        from mrl_llm.rollout.agent import LLMAgent

        if path is None:
            path = checkpoint.grpo or checkpoint.sft
        model, tok = load_model_and_tokenizer(config.model, path=path, seed=checkpoint.seed)
        return LLMAgent(
            model.to(inference_device()).eval(),
            tok,
            checkpoint.text_env,
            config.sampling,
            name=name or config.display_name,
        )

    def agents(self, config: LLMLearnerConfig, checkpoint: LLMCheckpoint, dist: TaskDistribution) -> Iterator:
        """The LM after each stage, one at a time (a model is loaded when its turn comes)."""
        paths = [p for p in (checkpoint.sft, checkpoint.grpo) if p is not None] or [None]
        for name, path in zip(config.stage_names(), paths):
            yield name, self.agent(config, checkpoint, dist, path, name)

    # ---- the report ------------------------------------------------------------------------------
    def report(
        self, config: LLMLearnerConfig, checkpoint: LLMCheckpoint, results: dict, dist: TaskDistribution, protocol: Any
    ) -> tuple[list[str], dict]:
        """Notes (LM, invalid actions, GRPO's change, the gap to the teacher) and the KV-cache
        benchmark on the final model (``{"kv_cache": {...}}`` in results.json)."""
        extra = {}
        if config.kv_cache_benchmark.enabled:
            extra["kv_cache"] = self.kv_cache_benchmark(config, checkpoint, dist, protocol)
        return self.notes(config, results, extra), extra

    def kv_cache_benchmark(
        self, config: LLMLearnerConfig, checkpoint: LLMCheckpoint, dist: TaskDistribution, protocol: Any
    ) -> dict:
        """Tokens/s of the same trials with and without KV-cache reuse; both and the speed-up."""
        out: dict[str, Any] = {}
        n = config.kv_cache_benchmark.num_tasks
        final = self.agent(config, checkpoint, dist, name="kv")  # loaded once, played both ways
        for use_cache in (True, False):
            agent = type(final)(
                final.model, final.tok, final.env, dataclasses.replace(config.sampling, use_cache=use_cache), name="kv"
            )
            res = run_trials(
                agent, dist, n, protocol.episodes_per_trial, seed=protocol.seed, batch_size=config.eval_batch_size
            )
            key = "with_cache" if use_cache else "without_cache"
            out[key] = {
                "tokens_per_second": res.extra["tokens_per_second"],
                "wall_time_s": res.wall_time,
                "encoded_tokens": res.extra["encoded_tokens"],
            }
        out["speedup"] = out["with_cache"]["tokens_per_second"] / max(out["without_cache"]["tokens_per_second"], 1e-9)
        out["num_tasks"] = n
        return out

    @staticmethod
    def notes(config: LLMLearnerConfig, results: dict[str, TrialResult], extra: dict) -> list[str]:
        """Report lines on the LLM's agents."""
        m, t = config.model, config.teacher
        teacher = settings_text(t.settings())
        notes = [
            f"{config.display_name} = {'the tiny local LM (' + str(m.tiny) + ')' if m.is_tiny else m.name_or_path}; "
            f"sampled at temperature {config.sampling.temperature}; "
            f"{'chat template' if m.chat else 'plain-text'} rendering"
            f"{', a reflection after every episode (LaMer)' if config.reflection else ''}; "
            f"SFT teacher: {t.display_name}{f' ({teacher})' if teacher else ''}."
        ]
        names = [n for n in config.stage_names() if n in results]
        reg = {k: float(v.final_regret.mean()) for k, v in results.items()}
        for name in names:
            notes.append(f"{name}: invalid-action rate {100 * results[name].invalid_rate:.2f}%.")
        if len(names) == 2 and all(reg[n] == reg[n] for n in names):  # not NaN: the task knows its regret
            before, after = reg[names[0]], reg[names[1]]
            notes.append(
                f"GRPO changed the LLM's mean cumulative regret from {before:.2f} to {after:.2f} "
                f"({'-' if before >= after else '+'}{abs(before - after):.2f})."
            )
        teacher = config.teacher.display_name
        if teacher in reg and reg[teacher] == reg[teacher]:
            for name in names:
                notes.append(
                    f"{name} regret is {reg[name] - reg[teacher]:+.2f} from {teacher}'s {reg[teacher]:.2f} "
                    "(its teacher)."
                )
        kv = extra.get("kv_cache")
        if kv:
            notes.append(
                f"KV-cache reuse across turns: {kv['with_cache']['tokens_per_second']:.0f} sampled tokens/s vs "
                f"{kv['without_cache']['tokens_per_second']:.0f} re-encoding the history ({kv['speedup']:.1f}x, "
                f"{kv['num_tasks']} trials each)."
            )
        return notes

    # ---- --dry-run --------------------------------------------------------------------------------
    def dry_run(self, config: LLMLearnerConfig, task: Any, protocol: Any, stage_dir: Path) -> dict:
        """The trainers' arguments, resolved without loading weights. On a machine without a GPU,
        GPU-only flags (bf16, vLLM) are validated as values and the arguments built with them off,
        so a GPU recipe can be checked anywhere."""
        import torch

        from mrl_llm.train.grpo import gpu_settings, grpo_arguments, trial_completion_length
        from mrl_llm.train.sft import sft_arguments

        gpu = torch.cuda.is_available()
        sft_cfg = config.sft if gpu else dataclasses.replace(config.sft, bf16=False)
        grpo_cfg = config.grpo if gpu else dataclasses.replace(config.grpo, bf16=False, use_vllm=False)
        dist = task.make()
        E = protocol.episodes_per_trial
        env = text_env_for(task, dist, E, chat=config.model.chat, reflect=config.reflection)
        sft_args = sft_arguments(sft_cfg, stage_dir / "sft")
        grpo_args = grpo_arguments(
            grpo_cfg, stage_dir / "grpo", trial_completion_length(E * dist.episode_length, config.sampling, env)
        )
        peft = config.model.lora.to_peft()
        return {
            "model": config.model.name_or_path,
            "chat": config.model.chat,
            "lora": None
            if peft is None
            else {"r": peft.r, "alpha": peft.lora_alpha, "target_modules": str(peft.target_modules)},
            "teacher": to_dict(config.teacher),
            "sft": {
                "enabled": config.sft.enabled,
                "learning_rate": sft_args.learning_rate,
                "epochs": sft_args.num_train_epochs,
                "batch": sft_args.per_device_train_batch_size,
                "bf16": config.sft.bf16,
                "subsample": config.sft.subsample,
                "note_noise": config.sft.note_noise,
                "note_weight": config.sft.note_weight,
            },
            "grpo": {
                "enabled": config.grpo.enabled,
                "max_steps": grpo_args.max_steps,
                "learning_rate": grpo_args.learning_rate,
                "num_generations": grpo_args.num_generations,
                "per_device_train_batch_size": grpo_args.per_device_train_batch_size,
                "use_vllm": config.grpo.use_vllm,
                "vllm_mode": grpo_args.vllm_mode,
                "bf16": config.grpo.bf16,
                "beta": grpo_args.beta,
                "loss_type": grpo_args.loss_type,
                "temperature": grpo_args.temperature,
                "rewards": config.grpo.reward_funcs,
                "cross_episode_discount": config.grpo.cross_episode_discount,
            },
            "gpu": {
                **gpu_settings(config.grpo, grpo_args, config.model),
                "vllm_memory_utilization_sum": config.grpo.vllm_gpu_memory_utilization if config.grpo.use_vllm else 0.0,
            },
            "rendering": type(env).__name__,
            "reflection": env.reflect,
            "prompt": env.prompt(),
            "stage_dir": str(stage_dir),
            "gpu_flags_validated_only": not gpu,
        }
