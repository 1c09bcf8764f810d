"""Meta-RL finetuning of an LLM agent with ``trl.GRPOTrainer`` over whole trials.

A GRPO *completion* is one trial: all ``episodes_per_trial`` turns of the LLM on one task, with
the environment's feedback inside the sequence. The rollout function below plays the trials
(``trl.GRPOTrainer(rollout_func=...)``) and returns ``env_mask`` so that only the model's own
tokens carry the policy-gradient loss. The prompts of one GRPO group are the same task, so the
group-relative advantage (Shao et al. 2024, arXiv 2402.03300, Eq. 3) compares trials of equal
difficulty: A_i = (R_i - mean_j R_j) / std_j R_j, with R the trial's reward (e.g. its total
reward, or minus its expected regret).

Everything else (optimizer, clipping, KL, vLLM weight sync, LoRA, DeepSpeed, checkpoints,
logging) is TRL's.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from classic import seeding
from classic.evaluate import run_trials
from mrl_llm.envs.text_env import TextEnv
from mrl_llm.rewards import get_reward
from mrl_llm.rollout.agent import LLMAgent
from mrl_llm.rollout.generation import SamplingConfig
from mrl_llm.train import check_optimizer_fields, check_trl_fields, trl_named_fields

GRPO_SEED_BASE = seeding.STREAMS["grpo"][0]  # training task streams (classic.seeding)


@dataclass
class GRPOCommonConfig:
    """The ``trl.GRPOConfig`` settings every GRPO stage of the project shares: trial GRPO
    (:class:`GRPOStageConfig`) and MRT's reasoning GRPO
    (:class:`mrl_llm.train.mrt.ReasoningGRPOConfig`) add their batch and reward fields.

    Attributes:
        max_steps: optimizer steps.
        learning_rate: peak learning rate.
        num_generations: completions per prompt, a GRPO group (G).
        gradient_accumulation_steps: micro-batches per optimizer step (batch split across them).
        num_iterations: PPO-style updates per batch of rollouts (mu in the GRPO paper, Shao et
            al. 2024, arXiv 2402.03300).
        beta: KL coefficient to the reference (starting) policy.
        epsilon: clipping range of the probability ratio.
        loss_type: TRL loss aggregation ("dapo", "grpo", "dr_grpo", "bnpo", ...).
        scale_rewards: "group", "batch" or "none" (Dr. GRPO, arXiv 2503.20783, argues for none).
        temperature: sampling temperature of rollouts (also used by TRL for the logprobs).
        top_p: nucleus sampling of rollouts, in (0, 1].
        lr_scheduler_type: transformers scheduler name.
        warmup_ratio: fraction of steps of linear warmup.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping.
        use_vllm: generate rollouts with vLLM (GPU; colocate mode).
        vllm_gpu_memory_utilization: vLLM's share of GPU memory in colocate mode.
        vllm_importance_sampling_mode: TRL's correction of the mismatch between vLLM's sampling
            logprobs and the trainer's. Default ``"token_truncate"`` (truncated importance sampling,
            each token's ratio capped at ``vllm_importance_sampling_clip_max``; Yao et al. 2025,
            "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"), not TRL's
            ``"sequence_mask"``: a sequence ratio is the product of every token's, so over a
            100-turn trial or a 16K-token trace small per-token differences (bf16 engine against
            the trainer) multiply past the cap and whole sequences are masked out. TRL logs the
            ratios as ``sampling/importance_sampling_ratio/*`` (in ``metrics.jsonl``).
        vllm_importance_sampling_clip_max: the cap C of those ratios (TRL's default 3.0).
        bf16: bfloat16 mixed precision (GPU): autocast over float32 weights (the project loads
            training weights in float32, :class:`mrl_llm.models.ModelConfig`).
        gradient_checkpointing: trade compute for memory.
        logging_steps: log every k steps.
        save_steps: checkpoint every k steps (the run resumes from the last one).
        seed: trainer seed (and, for trial GRPO, the training task stream).
        trust_remote_code: forwarded to TRL (its vLLM engine loads the model by name).
        trl: any other ``trl.GRPOConfig`` argument, by its TRL name (e.g. ``report_to: [wandb]``,
            ``vllm_enable_sleep_mode: true``); it overrides the fields above. An unknown name is an
            error naming it when the arguments are built (``--dry-run`` builds them).

    Raises:
        ValueError: naming the field, when a value is out of range.
    """

    max_steps: int = 100
    learning_rate: float = 1e-4
    num_generations: int = 8
    gradient_accumulation_steps: int = 1
    num_iterations: int = 1
    beta: float = 0.0
    epsilon: float = 0.2
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = 0.3
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        "token_truncate"
    )
    vllm_importance_sampling_clip_max: float = 3.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 50
    seed: int = 0
    trust_remote_code: bool = False
    trl: dict[str, Any] = field(default_factory=dict)

    #: name of the subclass's "groups per optimizer step" field (for messages and the batch size)
    _groups_field = ""

    def __post_init__(self) -> None:
        groups = self._groups_field
        if not groups:
            raise TypeError("GRPOCommonConfig is a base class: use GRPOStageConfig or ReasoningGRPOConfig")
        for name in (
            "max_steps",
            groups,
            "gradient_accumulation_steps",
            "num_iterations",
            "logging_steps",
            "save_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO compares completions within a group")
        if (getattr(self, groups) * self.num_generations) % self.gradient_accumulation_steps:
            raise ValueError(f"{groups} * num_generations must be divisible by gradient_accumulation_steps")
        check_optimizer_fields(self)
        check_trl_fields("GRPOConfig", self.trl)
        for name in ("temperature", "epsilon"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if not self.vllm_importance_sampling_clip_max >= 1:
            raise ValueError(
                f"vllm_importance_sampling_clip_max must be >= 1, got {self.vllm_importance_sampling_clip_max}"
            )

    @property
    def per_device_train_batch_size(self) -> int:
        """Completions per micro-batch: groups per step x G / gradient_accumulation_steps."""
        return getattr(self, self._groups_field) * self.num_generations // self.gradient_accumulation_steps

    def trl_arguments(self, output_dir: str | os.PathLike, use_cpu: bool | None = None, **fields):
        """The ``trl.GRPOConfig`` of these settings plus ``fields`` (see :func:`make_grpo_config`).

        Every field named as a ``trl.GRPOConfig`` argument goes to TRL as it is
        (:func:`~mrl_llm.train.trl_named_fields`); the batch size is derived, ``warmup_ratio`` is
        passed as TRL's ``warmup_steps`` (a float < 1 is a ratio of total steps); ``fields``, then
        the recipe's ``trl:`` mapping, override them.
        """
        own = trl_named_fields(self, "GRPOConfig", exclude=("gradient_checkpointing", "warmup_ratio"))
        own.update(per_device_train_batch_size=self.per_device_train_batch_size, warmup_steps=self.warmup_ratio)
        return make_grpo_config(output_dir, use_cpu, self.gradient_checkpointing, **{**own, **fields, **self.trl})


@dataclass
class GRPOStageConfig(GRPOCommonConfig):
    """Meta-RL (GRPO over trials) stage settings: :class:`GRPOCommonConfig` plus the fields below.

    A completion is one whole trial (all its episodes); the group's trials share one task.

    Attributes:
        enabled: run the stage.
        tasks_per_step: tasks per optimizer step; the batch is tasks_per_step * G trials.
        reward_funcs: registered reward names (mrl_llm.rewards), e.g. trial_return, negative_regret.
        reward_weights: one weight per reward function (default all 1).
        cross_episode_discount: None (default): TRL's advantage, one group-normalized trial reward
            (``reward_funcs``) for every token of the trial. A number gamma in [0, 1]: LaMer's
            cross-episode return instead (Jiang et al. 2025, arXiv 2512.16848, trajectory discount
            across episodes), per step: a reply at step t of episode n gets
            G_t = sum_{t' >= t in episode n} r_t' + sum_{m > n} gamma^(m - n) R_m (R_m: episode
            m's return), normalized across the GRPO group at the same step (``scale_rewards``);
            gamma = 0 trains each episode for itself, gamma = 1 on the rest of the trial
            (:func:`cross_episode_advantages`). The reward functions are still computed and logged.

    Raises:
        ValueError: naming the field, when a value is out of range or a reward is unknown.
    """

    enabled: bool = True
    tasks_per_step: int = 4
    reward_funcs: list[str] = field(default_factory=lambda: ["trial_return"])
    reward_weights: list[float] | None = None
    cross_episode_discount: float | None = None

    _groups_field = "tasks_per_step"

    def __post_init__(self) -> None:
        super().__post_init__()
        gamma = self.cross_episode_discount
        if gamma is not None and not (math.isfinite(gamma) and 0 <= gamma <= 1):
            raise ValueError(f"cross_episode_discount must be in [0, 1] (or null), got {gamma}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} entries for {len(self.reward_funcs)} reward_funcs"
            )
        for name in self.reward_funcs:
            try:
                get_reward(name)
            except KeyError as err:
                raise ValueError(err.args[0]) from None

    @property
    def trials_per_step(self) -> int:
        """Trials played per optimizer step (tasks_per_step * num_generations)."""
        return self.tasks_per_step * self.num_generations


def cross_episode_returns(rewards: torch.Tensor, episode: torch.Tensor, gamma: float) -> torch.Tensor:
    """LaMer's cross-episode return of every step (Jiang et al. 2025, arXiv 2512.16848).

    G_t = sum_{t' >= t, t' in episode n} r_t' + sum_{m > n} gamma^(m - n) R_m, for step t of
    episode n, with R_m the return of episode m: the reward-to-go inside the episode plus the
    later episodes' returns discounted per episode.

    Args:
        rewards: (N, T) per-step rewards of N trials.
        episode: (N, T) long, the episode (0-based, non-decreasing along T) of each step.
        gamma: the cross-episode discount, in [0, 1].

    Returns:
        (N, T) float64 returns.
    """
    rewards = rewards.double()
    G = torch.zeros_like(rewards)
    T = rewards.shape[1]
    for t in range(T - 1, -1, -1):  # G_t = r_t + G_{t+1} inside an episode, r_t + gamma G_{t+1} across its end
        if t + 1 < T:
            carry = torch.where(episode[:, t + 1] == episode[:, t], 1.0, gamma).double()
            G[:, t] = rewards[:, t] + carry * G[:, t + 1]
        else:
            G[:, t] = rewards[:, t]
    return G


def cross_episode_advantages(
    rewards: torch.Tensor, episode: torch.Tensor, gamma: float, num_generations: int, scale: str = "group"
) -> torch.Tensor:
    """Per-step advantages from :func:`cross_episode_returns`, baselined within each GRPO group.

    A_t = (G_t - mean_group G_t) / (std_group G_t + 1e-4) at each step index t (``scale`` "group"),
    over the whole batch's std ("batch"), or unscaled ("none"), as TRL scales its trial rewards
    (the group mean as baseline: Shao et al. 2024, arXiv 2402.03300; the std: Dr. GRPO's caveat,
    arXiv 2503.20783, is why "none" is offered). Trials of a group are consecutive rows.

    Args:
        rewards, episode: (N, T) as :func:`cross_episode_returns`; N a multiple of num_generations.

    Returns:
        (N, T) float32 advantages.

    Raises:
        ValueError: N is not a multiple of ``num_generations`` or ``scale`` is unknown.
    """
    N, T = rewards.shape
    if N % num_generations:
        raise ValueError(f"{N} trials are not whole groups of {num_generations}")
    G = cross_episode_returns(rewards, episode, gamma).view(N // num_generations, num_generations, T)
    centred = G - G.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (G.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (G.std() + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centred.view(N, T).float()


def token_advantages(step_advantages: torch.Tensor, step_of: list[list[int]]) -> list[list[float]]:
    """Each completion token's advantage: its step's (``step_of``, -1 = environment token: 0).

    Args:
        step_advantages: (N, T) per-step advantages.
        step_of: per trial, the step of each completion token (:attr:`Transcript.step_of`).
    """
    return [[row[s] if s >= 0 else 0.0 for s in steps] for row, steps in zip(step_advantages.tolist(), step_of)]


def make_rollout_func(
    dist,
    text_env: TextEnv,
    tokenizer,
    sampling: SamplingConfig,
    num_generations: int,
    episodes_per_trial: int,
    seed: int = 0,
    cross_episode_discount: float | None = None,
    scale_rewards: str = "group",
):
    """Build ``rollout_func(prompts, trainer) -> dict`` playing one trial per prompt.

    Consecutive blocks of ``num_generations`` prompts (TRL's RepeatSampler puts a group together)
    share one freshly sampled training task. The returned dict has TRL's required keys
    ``prompt_ids``, ``completion_ids``, ``logprobs`` plus ``env_mask`` (1 = model token) and the
    per-trial fields ``trial_return``, ``trial_regret``, ``invalid_actions`` for reward functions.

    Every process of a multi-process run (``accelerate launch``) plays its own task stream,
    seeded from ``seed`` and its rank (:func:`rank_seed`).

    With ``cross_episode_discount``, the function also leaves the per-token advantages of its last
    call in ``rollout_func.token_advantages`` (:func:`cross_episode_advantages`, a reflection
    taking its next step's), for :class:`TrialGRPOTrainer`.

    Raises:
        ValueError: if the number of prompts is not a multiple of ``num_generations``.
    """
    state = {"task_gen": None, "calls": 0, "restored": None}

    def rollout_func(prompts, trainer) -> dict:
        n = len(prompts)
        if n % num_generations:
            raise ValueError(f"rollout_func got {n} prompts, not a multiple of num_generations={num_generations}")
        rank = int(getattr(trainer.accelerator, "process_index", 0))
        if state["task_gen"] is None:
            state["task_gen"] = torch.Generator().manual_seed(rank_seed(GRPO_SEED_BASE + seed, rank))
            if state["restored"] is not None:  # resumed from a checkpoint: continue its stream
                state["task_gen"].set_state(state["restored"])
        tasks = dist.sample_tasks(n // num_generations, state["task_gen"])
        tasks = type(tasks)(*(t.repeat_interleave(num_generations, dim=0) for t in tasks))
        vllm_llm = None
        if getattr(trainer, "use_vllm", False):
            if getattr(trainer.args, "vllm_mode", "colocate") != "colocate":
                raise ValueError(
                    "multi-turn trials need vllm_mode='colocate' (per-turn generation on the local engine)"
                )
            vllm_llm = trainer.vllm_generation.llm
        state["calls"] += 1
        trial_seed = rank_seed(GRPO_SEED_BASE + 7 * seed + 100_003 * state["calls"], rank)
        with generation_model(trainer) as model:
            was_training = model.training
            model.eval()
            agent = LLMAgent(model, tokenizer, text_env, sampling, record=True, vllm_llm=vllm_llm)
            res = run_trials(agent, dist, tasks=tasks, episodes_per_trial=episodes_per_trial, seed=trial_seed)
            trs = agent.finish()
            model.train(was_training)
        if cross_episode_discount is not None:
            episode = torch.tensor([t.episode_of_step for t in trs], dtype=torch.long)
            steps = episode.shape[1]
            adv = cross_episode_advantages(
                res.rewards[:, :steps], episode, cross_episode_discount, num_generations, scale_rewards
            )
            rollout_func.token_advantages = token_advantages(adv, [t.step_of for t in trs])
        invalid = (res.actions == -1).sum(dim=1)
        metrics = getattr(trainer, "_metrics", None)
        if metrics is not None:
            mode = "train" if was_training else "eval"
            metrics[mode]["rollout/trial_return"].append(float(res.total_reward.mean()))
            metrics[mode]["rollout/trial_regret"].append(float(res.final_regret.mean()))
            metrics[mode]["rollout/invalid_rate"].append(res.invalid_rate)
            metrics[mode]["rollout/tokens_per_second"].append(agent.stats()["tokens_per_second"])
        return {
            "prompt_ids": [t.prompt_ids for t in trs],
            "completion_ids": [t.completion_ids for t in trs],
            "logprobs": [t.logprobs for t in trs],
            "env_mask": [t.env_mask for t in trs],
            "trial_return": res.total_reward.tolist(),
            "trial_regret": res.final_regret.tolist(),
            "invalid_actions": invalid.tolist(),
        }

    def get_state() -> dict:
        gen = state["task_gen"]
        return {"calls": state["calls"], "task_gen": gen.get_state() if gen is not None else state["restored"]}

    def set_state(saved: dict) -> None:
        state["calls"], state["restored"] = int(saved["calls"]), saved["task_gen"]
        if state["task_gen"] is not None and saved["task_gen"] is not None:
            state["task_gen"].set_state(saved["task_gen"])

    rollout_func.get_state, rollout_func.set_state = get_state, set_state  # saved with checkpoints
    rollout_func.token_advantages = None
    return rollout_func


def make_grpo_config(
    output_dir: str | os.PathLike, use_cpu: bool | None = None, gradient_checkpointing: bool = False, **fields
):
    """``trl.GRPOConfig`` with the project's defaults (vLLM in colocate mode, one checkpoint kept,
    no external loggers, dropout off, completions not logged) overridden by ``fields``; shared by
    the trial GRPO here and MRT's reasoning GRPO (:mod:`mrl_llm.train.mrt`).

    Raises:
        ValueError: naming a field that ``trl.GRPOConfig`` does not have.
    """
    import dataclasses

    from trl import GRPOConfig

    from mrl_llm.models import activation_checkpointing_kwargs

    known = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown trl.GRPOConfig argument(s) {unknown} (see trl.GRPOConfig for the names)")
    use_cpu = (not torch.cuda.is_available()) if use_cpu is None else use_cpu
    args = {
        "output_dir": str(output_dir),
        "vllm_mode": "colocate",
        "save_total_limit": 1,
        "report_to": [],
        "use_cpu": use_cpu,
        "log_completions": False,
        "disable_dropout": True,
        **activation_checkpointing_kwargs(GRPOConfig, gradient_checkpointing),
    }
    return GRPOConfig(**{**args, **fields})


def trl_engine_max_num_seqs(args) -> int:
    """The ``max_num_seqs`` TRL 1.16 gives its colocated vLLM engine: the rollouts of one generation
    batch of a process (``per_device_train_batch_size x vllm_tensor_parallel_size x
    steps_per_generation``, ``trl/trainer/grpo_trainer.py``)."""
    return args.per_device_train_batch_size * args.vllm_tensor_parallel_size * (args.steps_per_generation or 1)


def gpu_settings(cfg: GRPOCommonConfig, args, model_cfg) -> dict:
    """The resolved GPU-side settings of a GRPO stage, for ``--dry-run``: weight dtypes, vLLM
    (engine share, TRL's ``max_num_seqs``, importance sampling), DeepSpeed (as ``accelerate launch``
    sets it in the environment) and whether the packages these need are installed."""
    import importlib.util

    return {
        "weights": {"training": "float32" + (" (bf16 autocast)" if cfg.bf16 else ""), "inference": model_cfg.dtype},
        "vllm": {
            "use_vllm": cfg.use_vllm,
            "mode": args.vllm_mode,
            "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization if cfg.use_vllm else 0.0,
            "max_num_seqs": trl_engine_max_num_seqs(args),
            "importance_sampling": {
                "correction": args.vllm_importance_sampling_correction,
                "mode": args.vllm_importance_sampling_mode,
                "clip_max": args.vllm_importance_sampling_clip_max,
            },
            "installed": importlib.util.find_spec("vllm") is not None,
        },
        "deepspeed": {
            "under_accelerate_launch": os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true",
            "zero_stage": os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"),
            "installed": importlib.util.find_spec("deepspeed") is not None,
        },
        "trust_remote_code": cfg.trust_remote_code,
        "trl_overrides": dict(cfg.trl),
    }


@contextlib.contextmanager
def generation_model(trainer):
    """The trainer's policy, unwrapped for generation in our own decode loops (HF rollouts, the
    meta-prover): ``trl.models.unwrap_model_for_generation``, which under DeepSpeed ZeRO-3 gathers
    the full weights once (``ds3_gather_for_generation``) so that ranks whose loops run different
    numbers of forward passes do not wait on each other's parameter all-gathers.

    Raises:
        ValueError: under ZeRO-3 with several processes and ``ds3_gather_for_generation: false``
            (each forward would all-gather shards: ranks decoding different lengths deadlock).
    """
    from trl.distributed import DistributedBackend
    from trl.models import unwrap_model_for_generation

    acc = trainer.accelerator
    gather = bool(getattr(trainer.args, "ds3_gather_for_generation", True))
    if not gather and acc.num_processes > 1 and DistributedBackend(acc).is_zero3:
        raise ValueError(
            "HF decoding under ZeRO-3 with several processes needs ds3_gather_for_generation: true "
            "(or use_vllm: true): ranks decoding different lengths would deadlock in all-gathers"
        )
    with unwrap_model_for_generation(trainer.model_wrapped, acc, gather_deepspeed3_params=gather) as model:
        yield model


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s stream derived from ``seed``: ``seed`` itself for rank 0 (a
    single-process run keeps its numbers), else a ``numpy.random.SeedSequence`` mix of both, so the
    ranks of ``accelerate launch`` play disjoint task streams."""
    if rank == 0:
        return int(seed)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])  # < 2**32: safe in seed arithmetic


def grpo_arguments(
    cfg: GRPOStageConfig, output_dir: str | os.PathLike, max_completion_length: int, use_cpu: bool | None = None
):
    """The ``trl.GRPOConfig`` for a stage config (no model needed: used by ``--dry-run`` too)."""
    return cfg.trl_arguments(
        output_dir,
        use_cpu,
        reward_weights=cfg.reward_weights,
        max_completion_length=max_completion_length,
        shuffle_dataset=False,
    )


def trial_completion_length(steps_per_trial: int, sampling: SamplingConfig, text_env: TextEnv | None = None) -> int:
    """Token budget of a whole trial's completion (replies and environment text): each step's reply
    and up to 64 tokens of environment text, each reflection of a reflecting ``text_env`` and 64
    tokens around it, plus the closing tokens."""
    notes = 0
    if text_env is not None and text_env.reflect:
        notes = (text_env.episodes_per_trial - 1) * (text_env.reflection_tokens + 64)
    return steps_per_trial * (sampling.max_action_tokens + 64) + notes + 8


def prompt_dataset(text_env: TextEnv, num_prompts: int):
    """A dataset of identical trial prompts; the task is hidden from the model (sampled by the
    rollout function), as meta-RL requires."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [text_env.prompt()] * num_prompts})


def build_grpo_trainer(
    model,
    tokenizer,
    dist,
    text_env: TextEnv,
    cfg: GRPOStageConfig,
    sampling: SamplingConfig,
    episodes_per_trial: int,
    output_dir,
    peft_config=None,
    callbacks=(),
):
    """A ``trl.GRPOTrainer`` whose rollouts are whole trials (see :func:`make_rollout_func`)."""
    from trl import GRPOTrainer

    from mrl_llm.train.checkpoints import generator_state_callback

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sampling = SamplingConfig(**{**vars(sampling), "temperature": cfg.temperature, "top_p": cfg.top_p})
    max_len = trial_completion_length(episodes_per_trial * dist.episode_length, sampling, text_env)
    args = grpo_arguments(cfg, output_dir, max_len)
    rollout = make_rollout_func(
        dist,
        text_env,
        tokenizer,
        sampling,
        cfg.num_generations,
        episodes_per_trial,
        cfg.seed,
        cfg.cross_episode_discount,
        cfg.scale_rewards,
    )
    dataset = prompt_dataset(text_env, cfg.max_steps * cfg.tasks_per_step * cfg.num_generations)
    cls = GRPOTrainer if cfg.cross_episode_discount is None else trial_grpo_trainer_class()
    return cls(
        model=model,
        reward_funcs=[get_reward(n) for n in cfg.reward_funcs],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        rollout_func=rollout,
        callbacks=[generator_state_callback(rollout.get_state, rollout.set_state), *callbacks],
    )


def trial_grpo_trainer_class():
    """``TrialGRPOTrainer``: ``trl.GRPOTrainer`` with per-token advantages from the rollout
    function (``rollout_func.token_advantages``, the cross-episode return) in place of TRL's one
    advantage per trial. TRL's loss takes (B, T) advantages as they are
    (``GRPOTrainer._compute_loss``: "to support subclasses that provide advantages with shape
    (B, T)"); everything else (ratios, clipping, masks, logging) is TRL's."""
    from trl import GRPOTrainer

    class TrialGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            per_token = getattr(self.rollout_func, "token_advantages", None)
            if per_token is None:
                raise RuntimeError("the rollout function left no per-token advantages")
            ids = out["completion_ids"]
            adv = torch.zeros(ids.shape, dtype=torch.float32)
            if len(per_token) != ids.shape[0]:
                raise RuntimeError(f"{len(per_token)} rows of advantages for {ids.shape[0]} completions")
            for i, row in enumerate(per_token):
                n = min(len(row), ids.shape[1])
                adv[i, :n] = torch.tensor(row[:n])
            out["advantages"] = adv.to(ids.device)
            self.rollout_func.token_advantages = None  # used once
            return out

    return TrialGRPOTrainer


def run_grpo(trainer, output_dir) -> None:
    """Train, resuming from the last complete checkpoint in ``output_dir`` if there is one
    (:func:`~mrl_llm.train.checkpoints.last_complete_checkpoint`: a half-written one is skipped)."""
    from mrl_llm.train.checkpoints import last_complete_checkpoint

    trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))
