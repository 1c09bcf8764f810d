"""GPU smoke test: what the CUDA path of the LLM stages must do and the CPU test suite cannot show.

    python benchmarks/gpu_smoke.py [--model PATH] [--vllm] [--only NAME[,NAME]] [--cpu] [--threads N]

One script, sized for a few minutes on one H100/H200 (at most 8, the two vLLM start-ups
included; each vLLM check is stopped after ``--child-timeout`` seconds, default 300). Every check
runs even when another fails (an exception is reported as FAIL with its last line) and prints
one row of a markdown table ``| check | result | seconds | detail |``; the exit code is 1 when a
check FAILED, 0 otherwise. Without CUDA (and without ``--cpu``) every check is SKIPPED, named in
the table, and the exit code is 0.

Checks (all on ``cuda``; ``--cpu`` runs the same code on the CPU so that it is exercised in CI):

* ``generator_device``: :class:`mrl_llm.rollout.generation.HFSession` samples CUDA logits with a
  CPU ``torch.Generator`` (what ``classic.evaluate`` creates; issue 15 defect 1): must not
  raise, same seed same tokens, another seed other tokens; KV cache vs re-encoding (reported).
* ``hf_evaluation``: ``classic.evaluate.run_trials`` of an :class:`~mrl_llm.rollout.agent.LLMAgent`
  on ``BernoulliBandit(5)``, 64 tasks x 20 pulls, twice with seed 0: same actions; invalid rate
  and regret reported (the tiny LM is first distilled from Thompson sampling for a few seconds).
* ``meta_prover_paths``: :class:`mrl_llm.reasoning.meta_prover.MetaProver` on search-task traces by its
  three HF paths (shared prefix with tree attention, shared prefix with copied cache rows,
  every prefix from scratch), same prompts, cuts and generator, in float32 and bfloat16. float32:
  the three paths draw the same answers and their first-token logits agree (tight); bfloat16:
  the fraction of identical answers is reported (rounding may legitimately change a draw),
  logits agree loosely, J has one value per cut in [0, 1].
* ``lora_merge_drift``: peft LoRA on a ``Linear(1536, 1536)`` base, ``merge_adapter`` /
  ``unmerge_adapter`` 200 times (TRL's weight sync to vLLM does one cycle per step; defect 7):
  how far the frozen base weights drift, bf16 base vs fp32 base. PASS when the fp32 base stays
  within float32 rounding (a few ulp, relative drift <= 1e-5); the bf16 drift is reported.
  (In float32 too ``(w + d) - d != w`` for some weights, so the fraction of changed weights is
  not 0 in either dtype; the size of the change is what differs, ~2^16 times.)
* ``bf16_adamw``: 5 AdamW steps at lr 1e-6 on a ``Linear(1536, 1536)`` with bf16 parameters, fp32
  parameters, and fp32 parameters under bf16 autocast (defect 6): fraction of weights changed.
  PASS when both fp32-parameter runs change >= 99% of the weights; the bf16 fraction is reported.
* ``grpo_steps``: two trial-GRPO steps (:func:`mrl_llm.train.grpo.build_grpo_trainer`, bf16 mixed
  precision, 2 tasks x 2 trials of ``BernoulliBandit(3)``, 5 pulls): the parameters change.
* ``grpo_steps_vllm``: the same with ``use_vllm=True`` (colocate, ``gpu_memory_utilization`` 0.2),
  plus :class:`~mrl_llm.rollout.generation.VLLMSession` on the trainer's engine: 32 rows with the
  same history must not all draw the same tokens (defect 5).
* ``mrt_step``: one MRT step (:func:`mrl_llm.train.mrt.build_reasoning_trainer` with
  ``MRTConfig(mode="progress")``) on the search task (:mod:`mrl_llm.reasoning.search_task`), bf16
  mixed precision, the HF meta-prover on the training device: the parameters change (the tiny LM
  is first warm-started by SFT on search traces so that rewards and progress are not all 0).
* ``mrt_step_vllm``: the same with ``use_vllm=True`` (the meta-prover then samples with the
  trainer's engine).

The vLLM checks run when ``vllm`` is installed (``--vllm`` makes them required: FAIL if it is
not), each in a fresh Python process (a colocated engine keeps its memory until the process
ends). Without ``--model`` the LM is the project's tiny LM built in code (no download); with
``--model PATH`` (a local directory) checks 1-3 and 5-6 use that model, loaded in float32
(a hub model is rendered through its chat template).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the tiny LM of the smoke checks (small: the checks are about code paths, not skill)
TINY_ARCH = dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128)
#: vLLM's share of the device memory per engine (on the CPU backend: of the host memory)
VLLM_GPU_UTIL, VLLM_CPU_UTIL = 0.2, 0.15
CHILD_TIMEOUT_S = 300
RESULT_TAG = "GPU_SMOKE_RESULT "


@dataclass
class Result:
    """One row of the table: ``status`` is PASS, FAIL or SKIPPED; ``seconds`` wall time."""

    name: str
    status: str
    seconds: float
    detail: str


@dataclass
class Context:
    """What the checks share: the device, the model source, and models built once.

    Attributes:
        device: "cuda" or "cpu".
        model_path: a local model directory (None: the tiny LM).
        workdir: scratch directory (trainer outputs, saved warm starts for the vLLM children).
    """

    device: str
    model_path: str | None
    workdir: Path

    # ---- models -------------------------------------------------------------------------------
    @functools.cached_property
    def tiny(self) -> bool:
        return self.model_path is None or _is_tiny_checkpoint(self.model_path)

    @property
    def chat(self) -> bool:
        """Render bandit trials through the chat template (real instruct models)."""
        return not self.tiny

    @property
    def action_tokens(self) -> int:
        return 1 if self.tiny else 8

    def fresh_model(self):
        """(model on ``device`` in float32, eval mode, tokenizer): the tiny LM or ``--model``."""
        from mrl_llm.models import (
            ModelConfig,
            TinyLMConfig,
            build_tiny_model,
            build_tiny_tokenizer,
            load_model_and_tokenizer,
        )

        if self.model_path is None:
            tok = build_tiny_tokenizer()
            model = build_tiny_model(TinyLMConfig(**TINY_ARCH), tok, seed=0)
        else:
            cfg = ModelConfig() if self.tiny else ModelConfig(name_or_path=self.model_path, chat=True)
            model, tok = load_model_and_tokenizer(cfg, path=self.model_path)
        return model.float().to(self.device).eval(), tok

    def warm_dir(self, kind: str) -> Path:
        """A saved model directory for ``kind`` ("bandit" or "search"): ``--model`` as is, or the
        tiny LM after a short SFT on that task's teacher data (built once, then reused by the
        vLLM child processes, which get the same ``workdir``)."""
        if self.model_path is not None:
            return Path(self.model_path)
        out = self.workdir / f"warm_{kind}"
        if not (out / "config.json").exists():
            model, tok = self.fresh_model()
            model.train()
            if kind == "bandit":
                _bandit_sft(model, tok, self.workdir / f"sft_{kind}")
            else:
                _search_sft(model, tok, self.workdir / f"sft_{kind}")
            model.save_pretrained(out)
            tok.save_pretrained(out)
        return out

    def warm_model(self, kind: str):
        """(model on ``device`` in float32, tokenizer) loaded from :meth:`warm_dir`; its
        ``name_or_path`` is that directory (what TRL hands to vLLM)."""
        from mrl_llm.models import ModelConfig, load_model_and_tokenizer

        path = self.warm_dir(kind)
        cfg = ModelConfig() if self.tiny else ModelConfig(name_or_path=str(path), chat=True)
        model, tok = load_model_and_tokenizer(cfg, path=path)
        return model.float().to(self.device), tok

    def use_cpu(self) -> bool:
        return self.device == "cpu"


def _is_tiny_checkpoint(path: str) -> bool:
    """Whether a saved model directory holds the project's tiny LM (its tokenizer's vocabulary)."""
    from mrl_llm.models import tiny_vocab

    p = Path(path) / "tokenizer.json"
    if not p.exists():
        return False
    try:
        vocab = json.loads(p.read_text())["model"]["vocab"]
    except (KeyError, TypeError, ValueError):
        return False
    return isinstance(vocab, dict) and vocab == tiny_vocab()


def _bandit_sft(model, tok, out: Path) -> None:
    """Distil Thompson sampling into the tiny LM on 5-arm/20-pull and 3-arm/5-pull trials."""
    from classic.agents.bandit import ThompsonSamplingAgent
    from classic.envs.bandit import BernoulliBandit
    from datasets import concatenate_datasets
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.agent import TrialRenderer
    from mrl_llm.train.sft import SFTStageConfig, distillation_dataset, run_sft, teacher_transcripts

    parts = []
    for k, n, trials in ((5, 20, 96), (3, 5, 64)):
        renderer = TrialRenderer(tok, BanditText(k, n))
        trs = teacher_transcripts(ThompsonSamplingAgent(k), BernoulliBandit(k), renderer, trials, n, seed=0)
        parts.append(distillation_dataset(trs))
    cfg = SFTStageConfig(
        num_trials=160,
        num_train_epochs=3.0,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        warmup_ratio=0.0,
        logging_steps=1000,
        save_steps=100_000,
    )
    run_sft(model, tok, concatenate_datasets(parts), cfg, out, use_cpu=next(model.parameters()).device.type == "cpu")


SEARCH = dict(num_candidates=3, function="add", p_find=0.5, p_double_check=0.25, max_attempts=4)


def _search_sft(model, tok, out: Path) -> None:
    """Warm-start the tiny LM on search-task traces (so that MRT sees non-zero rewards)."""
    from mrl_llm.reasoning.search_task import SearchTaskConfig, sft_dataset
    from mrl_llm.train.sft import SFTStageConfig, run_sft

    data = sft_dataset(SearchTaskConfig(**SEARCH), 256, 1_000, tok)
    cfg = SFTStageConfig(
        num_trials=256,
        num_train_epochs=3.0,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        warmup_ratio=0.0,
        logging_steps=1000,
        save_steps=100_000,
    )
    run_sft(model, tok, data, cfg, out, use_cpu=next(model.parameters()).device.type == "cpu")


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model) -> tuple[int, int]:
    """(parameter tensors that changed, parameter tensors)."""
    after = dict(model.named_parameters())
    n = sum(not torch.equal(b, after[k].detach().float().cpu()) for k, b in before.items() if k in after)
    return n, len(before)


def _release() -> None:
    """Collect garbage and give cached device memory back (call after ``del``-ing the objects)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# checks: each returns (passed, one-line detail)
# ---------------------------------------------------------------------------------------------


def check_generator_device(ctx: Context) -> tuple[bool, str]:
    """HFSession on ``ctx.device`` logits with a CPU generator: no error, seeded, multi-turn."""
    import inspect

    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.agent import TrialRenderer
    from mrl_llm.rollout.generation import HFSession

    model, tok = ctx.fresh_model()
    renderer = TrialRenderer(tok, BanditText(5, 20, chat=ctx.chat))
    prompt = renderer.prompt_ids()
    B = 8
    # rows of different lengths: a few pulls of history on some of them
    histories = [prompt + sum((renderer.encode(f"{a} {a % 2}\n") for a in range(i % 3)), []) for i in range(B)]
    top_p = "top_p" in inspect.signature(HFSession.sample).parameters

    def draw(seed: int, use_cache: bool, **kw):
        s = HFSession(model, tok.pad_token_id, B, use_cache=use_cache)
        s.append(histories)
        g = torch.Generator().manual_seed(seed)  # a CPU generator, as classic.evaluate creates
        t1, l1 = s.sample(max_new_tokens=4, stop_token_ids=set(), temperature=1.0, generator=g, **kw)
        s.append([renderer.encode(" 1\n")] * B)  # a second turn after environment tokens
        t2, l2 = s.sample(max_new_tokens=4, stop_token_ids=set(), temperature=1.0, generator=g, **kw)
        return [a + b for a, b in zip(t1, t2)], [a + b for a, b in zip(l1, l2)]

    a, lp = draw(0, True)
    b, _ = draw(0, True)
    c, _ = draw(1, True)
    d, _ = draw(0, False)
    n = sum(len(r) for r in a)
    ok_lp = all(math.isfinite(x) and x <= 1e-6 for r in lp for x in r)
    agree = sum(x == y for ra, rd in zip(a, d) for x, y in zip(ra, rd))
    ok = a == b and a != c and ok_lp and all(len(r) == 8 for r in a)
    detail = (
        f"CPU generator, {ctx.device} logits: {n} tokens, same seed same tokens: {a == b}, "
        f"other seed differs: {a != c}, "
        f"logprobs finite <= 0: {ok_lp}; KV cache vs re-encoding: {agree}/{n} tokens agree"
    )
    if top_p:
        p1, _ = draw(0, True, top_p=0.9)
        p2, _ = draw(0, True, top_p=0.9)
        ok = ok and p1 == p2
        detail += f"; top_p=0.9 seeded: {p1 == p2}"
    return ok, detail


def check_hf_evaluation(ctx: Context) -> tuple[bool, str]:
    """classic.evaluate.run_trials of LLMAgent on the device: seeded, few invalid actions."""
    from classic.envs.bandit import BernoulliBandit
    from classic.evaluate import run_trials
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.agent import LLMAgent
    from mrl_llm.rollout.generation import SamplingConfig

    model, tok = ctx.warm_model("bandit")
    model.eval()
    runs = []
    for _ in range(2):
        sampling = SamplingConfig(max_action_tokens=ctx.action_tokens)
        agent = LLMAgent(model, tok, BanditText(5, 20, chat=ctx.chat), sampling)
        runs.append(run_trials(agent, BernoulliBandit(5), num_tasks=64, episodes_per_trial=20, seed=0))
    r1, r2 = runs
    same = torch.equal(r1.actions, r2.actions)
    shape_ok = tuple(r1.actions.shape) == (64, 20)
    # the tiny LM distilled here writes valid arms (~15% invalid on CPU); a --model is only reported
    limit = 0.5 if ctx.model_path is None else 1.0
    ok = same and shape_ok and r1.invalid_rate <= limit
    s = r1.summary()
    return ok, (
        f"64 tasks x 20 pulls: same seed same actions: {same}, invalid rate {r1.invalid_rate:.3f} "
        f"(limit {limit}), regret {s['regret']['mean']:.2f} +- {s['regret']['ci95']:.2f}, "
        f"{r1.extra.get('tokens_per_second', 0):.0f} tok/s, "
        f"{r1.wall_time:.1f} s/run"
    )


def _prover_inputs(tok, n: int = 6):
    """Prompts, completions (search-task SFT traces), cuts at their episode ends, references."""
    from mrl_llm.reasoning import search_task as st
    from mrl_llm.reasoning.meta_prover import token_cuts

    cfg = st.SearchTaskConfig(**SEARCH)
    g = torch.Generator().manual_seed(11)
    problems = st.sample_problems(cfg, n, g)
    P, C, cuts, refs = [], [], [], []
    for q in problems:
        trace = st.sft_trace(q, cfg, g)
        episodes = st.trace_episodes(trace, cfg.termination_suffix).episodes
        ids = tok(trace, add_special_tokens=False)["input_ids"]
        P.append(tok(q.prompt, add_special_tokens=False)["input_ids"])
        C.append(ids)
        cuts.append([0] + token_cuts(tok, ids, [e.end for e in episodes]))
        refs.append(q.answer)
    return P, C, cuts, refs, cfg.termination_suffix


def check_meta_prover_paths(ctx: Context) -> tuple[bool, str]:
    """The meta-prover's tree / copied-rows / from-scratch paths against each other, fp32 and bf16."""
    import mrl_llm.reasoning.meta_prover as progress
    from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig

    model, tok = ctx.fresh_model()
    P, C, cuts, refs, suffix = _prover_inputs(tok)
    base_cfg = MetaProverConfig(termination_suffix=suffix, num_samples=4, max_answer_tokens=4, temperature=1.0)
    tree_support = progress.supports_tree_attention
    tree_taken = bool(tree_support(model))
    paths = (("tree", True, True), ("rows", True, False), ("scratch", False, False))
    n_cuts = sum(map(len, cuts))
    ok, parts = True, [f"{len(P)} traces, {n_cuts} cuts x {base_cfg.num_samples} answers, tree attention: {tree_taken}"]
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        m = copy.deepcopy(model).to(dtype)
        answers, J, logits, enc = {}, {}, {}, {}
        for path, shared, tree in paths:
            progress.supports_tree_attention = tree_support if tree else (lambda _model: False)
            try:
                prover = MetaProver(m, tok, replace(base_cfg, shared_prefix=shared))
                first: list[torch.Tensor] = []
                draw = getattr(prover, "_draw", None)
                if draw is not None:  # record the roots' next-token logits (the first draw)

                    def recording(*args, _draw=draw, _first=first, **kwargs):
                        if not _first:
                            _first.append(args[0].detach().float().cpu().clone())
                        return _draw(*args, **kwargs)

                    prover._draw = recording
                answers[path] = prover.sample_answers(P, C, cuts, generator=torch.Generator().manual_seed(0))
                J[path] = [prover.score(a, r) for a, r in zip(answers[path], refs)]
                logits[path] = first[0] if first else None
                enc[path] = prover.stats.encoded_tokens
            finally:
                progress.supports_tree_attention = tree_support
        # shapes and ranges, every path
        for path in answers:
            for i, per_cut in enumerate(answers[path]):
                if len(per_cut) != len(cuts[i]) or any(len(a) != base_cfg.num_samples for a in per_cut):
                    ok = False
                    parts.append(f"{name} {path}: wrong answer shape at trace {i}")
                if J[path][i].shape != (len(cuts[i]),) or not bool(((J[path][i] >= 0) & (J[path][i] <= 1)).all()):
                    ok = False
                    parts.append(f"{name} {path}: J outside [0, 1] or wrong shape at trace {i}")
        flat = {p: [s for per in answers[p] for a in per for s in a] for p in answers}
        ref = flat["scratch"]
        same = {p: sum(x == y for x, y in zip(flat[p], ref)) / max(len(ref), 1) for p in ("tree", "rows")}
        diffs = {}
        for p in ("tree", "rows"):
            if logits[p] is not None and logits["scratch"] is not None and logits[p].shape == logits["scratch"].shape:
                diffs[p] = float((logits[p] - logits["scratch"]).abs().max())
        scale = float(logits["scratch"].abs().max()) if logits["scratch"] is not None else 1.0
        tol = 1e-3 * max(1.0, scale) if dtype == torch.float32 else 0.05 * max(1.0, scale) + 0.05
        logits_ok = all(v <= tol for v in diffs.values())
        J_mean = float(torch.cat(J["scratch"]).mean())
        if dtype == torch.float32:
            fewer = enc["tree"] < enc["scratch"] and enc["rows"] < enc["scratch"]
            ok = ok and same["tree"] == 1.0 and same["rows"] == 1.0 and logits_ok and fewer
            logit_diffs = ", ".join(f"{p} {v:.1e}" for p, v in diffs.items())
            parts.append(
                f"fp32: same answers as scratch tree {same['tree']:.0%} rows {same['rows']:.0%}, "
                f"first-token logits max abs diff {logit_diffs} (tol {tol:.0e}), tokens encoded "
                f"tree/rows/scratch {enc['tree']}/{enc['rows']}/{enc['scratch']}, mean J {J_mean:.2f}"
            )
        else:
            ok = ok and logits_ok
            logit_diffs = ", ".join(f"{p} {v:.2f}" for p, v in diffs.items())
            parts.append(
                f"bf16: identical answers tree {same['tree']:.0%} rows {same['rows']:.0%}, "
                f"logits max abs diff {logit_diffs} (tol {tol:.2f}), mean J {J_mean:.2f}"
            )
        if not diffs:
            parts.append(f"{name}: first-token logits not compared (MetaProver._draw not found)")
        del m
        _release()
    return ok, "; ".join(parts)


def check_lora_merge_drift(ctx: Context, cycles: int = 200, width: int = 1536) -> tuple[bool, str]:
    """merge/unmerge a LoRA adapter ``cycles`` times into a bf16 and an fp32 base (TRL's vLLM sync)."""
    from peft import LoraConfig, get_peft_model

    out = {}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(width, width, bias=False)).to(ctx.device, dtype)
        w0 = base[0].weight.detach().clone()
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["0"], init_lora_weights=False))
        layer = model.base_model.model[0]
        with torch.no_grad():  # a trained adapter: delta std 1% of the base weights' std
            delta = layer.get_delta_weight("default").float()
            layer.lora_B["default"].weight.mul_(0.01 * w0.float().std() / delta.std())
        for _ in range(cycles):
            model.merge_adapter()
            model.unmerge_adapter()
        w = layer.base_layer.weight.detach()
        drift = (w.float() - w0.float()).abs()
        out[name] = (
            float((w != w0).float().mean()),
            float(drift.max()) / float(w0.float().abs().max()),
            float(drift.max()),
        )
        del model, base, layer
        _release()
    bf, fp = out["bf16"], out["fp32"]
    ok = fp[1] <= 1e-5
    return ok, (
        f"{cycles} merge/unmerge cycles, Linear({width}): fp32 base {fp[0]:.2%} of weights changed, "
        f"max abs dW {fp[2]:.1e} ({fp[1]:.1e} of max abs W, limit 1e-5); bf16 base {bf[0]:.2%} changed, "
        f"max abs dW {bf[2]:.1e} ({bf[1]:.1e} of max abs W)"
    )


def check_bf16_adamw(ctx: Context, steps: int = 5, lr: float = 1e-6, width: int = 1536) -> tuple[bool, str]:
    """AdamW at a small learning rate on bf16 parameters loses updates; fp32 parameters do not."""
    frac = {}
    torch.manual_seed(0)
    x = torch.randn(64, width, device=ctx.device)
    for name, dtype, autocast in (
        ("bf16 params", torch.bfloat16, False),
        ("fp32 params", torch.float32, False),
        ("fp32 params + bf16 autocast", torch.float32, True),
    ):
        torch.manual_seed(1)
        lin = torch.nn.Linear(width, width).to(ctx.device, dtype)
        w0 = lin.weight.detach().clone()
        opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=0.0)
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast(ctx.device, dtype=torch.bfloat16, enabled=autocast):
                loss = lin(x.to(dtype)).float().pow(2).mean()
            loss.backward()
            opt.step()
        frac[name] = float((lin.weight.detach() != w0).float().mean())
        del lin, opt
        _release()
    ok = frac["fp32 params"] >= 0.99 and frac["fp32 params + bf16 autocast"] >= 0.99
    changed = ", ".join(f"{k} {v:.1%}" for k, v in frac.items())
    return ok, f"{steps} AdamW steps at lr {lr:g}, Linear({width}), weights changed: {changed}"


def _vllm_session_rows(llm, prompt: list[int], rows: int = 32) -> str:
    """Issue 15 defect 5 on a real engine: ``rows`` rows with one history, one ``VLLMSession.sample``."""
    from mrl_llm.rollout.generation import VLLMSession

    session = VLLMSession(llm, rows)
    session.append([prompt] * rows)
    tokens, logps = session.sample(4, set(), 1.0, torch.Generator().manual_seed(0))
    if any(not 1 <= len(t) <= 4 or len(lp) != len(t) for t, lp in zip(tokens, logps)):  # a row may stop at EOS
        lengths = sorted({len(t) for t in tokens})
        raise AssertionError(f"VLLMSession returned replies of lengths {lengths}, expected 4 tokens each")
    return len({tuple(t) for t in tokens})


def _train(trainer, before: dict[str, torch.Tensor], steps: int) -> tuple[bool, str]:
    """``trainer.train()``; (steps done and parameters changed, what happened)."""
    try:
        trainer.train()
    except Exception as err:  # noqa: BLE001 -- reported with what was checked before training
        traceback.print_exc(file=sys.stderr)
        return False, f"training raised {_last_line(err)}"
    n, total = _changed(before, trainer.model)
    done = trainer.state.global_step
    return done == steps and n > 0, f"{done} step(s), {n}/{total} parameter tensors changed"


def _grpo(ctx: Context, use_vllm: bool) -> tuple[bool, str]:
    from classic.envs.bandit import BernoulliBandit
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.agent import TrialRenderer
    from mrl_llm.rollout.generation import SamplingConfig
    from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer

    model, tok = ctx.warm_model("bandit")
    model.train()
    before = _snapshot(model)
    cfg = GRPOStageConfig(
        max_steps=2,
        num_generations=2,
        tasks_per_step=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        reward_funcs=["negative_regret"],
        save_steps=100_000,
        bf16=True,
        use_vllm=use_vllm,
        vllm_gpu_memory_utilization=VLLM_CPU_UTIL if ctx.use_cpu() else VLLM_GPU_UTIL,
    )
    out = ctx.workdir / ("grpo_vllm" if use_vllm else "grpo")
    text_env = BanditText(3, 5, chat=ctx.chat)
    sampling = SamplingConfig(max_action_tokens=ctx.action_tokens)
    trainer = build_grpo_trainer(model, tok, BernoulliBandit(3), text_env, cfg, sampling, 5, out)
    parts, ok = [f"bf16, {'vLLM colocate' if use_vllm else 'HF rollouts'}"], True
    if use_vllm:  # before training: the engine holds the weights it loaded from disk
        distinct = _vllm_session_rows(trainer.vllm_generation.llm, TrialRenderer(tok, text_env).prompt_ids())
        ok = distinct > 1
        parts.append(f"VLLMSession, 32 rows with one history: {distinct} distinct replies")
    trained, what = _train(trainer, before, 2)
    parts.append(what)
    if trained:
        logs = [h for h in trainer.state.log_history if "reward" in h]
        parts.append("reward std per step " + ", ".join(f"{h.get('reward_std', float('nan')):.2f}" for h in logs))
        parts.append("invalid rate " + ", ".join(f"{h.get('rollout/invalid_rate', float('nan')):.2f}" for h in logs))
    del trainer, model
    _release()
    return ok and trained, "; ".join(parts)


def check_grpo_steps(ctx: Context) -> tuple[bool, str]:
    """Two trial-GRPO steps with HF rollouts on the device, bf16 mixed precision."""
    return _grpo(ctx, use_vllm=False)


def check_grpo_steps_vllm(ctx: Context) -> tuple[bool, str]:
    """Two trial-GRPO steps with the colocated vLLM engine."""
    return _grpo(ctx, use_vllm=True)


def _mrt(ctx: Context, use_vllm: bool) -> tuple[bool, str]:
    from mrl_llm.reasoning import search_task as st
    from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig
    from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, build_reasoning_trainer

    task = st.SearchTaskConfig(**SEARCH)
    model, tok = ctx.warm_model("search")
    model.train()
    before = _snapshot(model)
    data = st.prompt_dataset(task, 16, seed=2_000)
    cfg = ReasoningGRPOConfig(
        max_steps=1,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=64,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        save_steps=100_000,
        bf16=True,
        use_vllm=use_vllm,
        vllm_gpu_memory_utilization=VLLM_CPU_UTIL if ctx.use_cpu() else VLLM_GPU_UTIL,
    )
    prover_cfg = MetaProverConfig(
        termination_suffix=task.termination_suffix, num_samples=4, max_answer_tokens=3, temperature=1.0
    )
    suffix = task.termination_suffix
    trainer = build_reasoning_trainer(
        model,
        tok,
        data,
        cfg,
        ctx.workdir / ("mrt_vllm" if use_vllm else "mrt"),
        mrt=MRTConfig(mode="progress", prover=prover_cfg),
        split_fn=lambda text: st.trace_episodes(text, suffix).episodes,
    )
    how = "vLLM colocate (meta-prover on the engine)" if use_vllm else "HF rollouts and meta-prover"
    parts, ok = [f"bf16, {how}"], True
    if use_vllm:  # the vLLM meta-prover on the trainer's engine, before training
        P, C, cuts, refs, _ = _prover_inputs(tok)
        J = MetaProver(None, tok, prover_cfg, vllm_llm=trainer.vllm_generation.llm).success_rates(P, C, cuts, refs)
        ok = all(j.shape == (len(c),) and bool(((j >= 0) & (j <= 1)).all()) for j, c in zip(J, cuts))
        mean = float(torch.cat(J).mean())
        parts.append(f"vLLM meta-prover: J at {sum(map(len, cuts))} cuts in [0, 1]: {ok}, mean {mean:.2f}")
    trained, what = _train(trainer, before, 1)
    parts.append(what)
    if trained:
        log = {k: v for h in trainer.state.log_history for k, v in h.items()}
        nan = float("nan")
        parts.append(
            f"reward {log.get('reward', nan):.2f} (std {log.get('reward_std', nan):.2f}), episodes/trace "
            f"{log.get('mrt/episodes', nan):.1f}, mean progress {log.get('mrt/progress_mean', nan):+.3f}, "
            f"J(empty) {log.get('mrt/J_empty', nan):.2f}, prover {log.get('mrt/prover_seconds', nan):.2f} s"
        )
    del trainer, model
    _release()
    return ok and trained, "; ".join(parts)


def check_mrt_step(ctx: Context) -> tuple[bool, str]:
    """One MRT (progress) step with HF rollouts and the HF meta-prover on the device."""
    return _mrt(ctx, use_vllm=False)


def check_mrt_step_vllm(ctx: Context) -> tuple[bool, str]:
    """One MRT (progress) step with the colocated vLLM engine."""
    return _mrt(ctx, use_vllm=True)


#: name -> (check, needs vLLM)
CHECKS: dict[str, tuple[Callable[[Context], tuple[bool, str]], bool]] = {
    "generator_device": (check_generator_device, False),
    "hf_evaluation": (check_hf_evaluation, False),
    "meta_prover_paths": (check_meta_prover_paths, False),
    "lora_merge_drift": (check_lora_merge_drift, False),
    "bf16_adamw": (check_bf16_adamw, False),
    "grpo_steps": (check_grpo_steps, False),
    "grpo_steps_vllm": (check_grpo_steps_vllm, True),
    "mrt_step": (check_mrt_step, False),
    "mrt_step_vllm": (check_mrt_step_vllm, True),
}


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def _last_line(err: BaseException) -> str:
    """The exception's last message line, prefixed by its type: ``"RuntimeError: Expected a 'cuda' ..."``."""
    lines = [ln.strip() for ln in "".join(traceback.format_exception_only(type(err), err)).splitlines() if ln.strip()]
    kind = type(err).__name__
    last = lines[-1] if lines else kind
    return last if last.split(":")[0].endswith(kind) else f"{kind}: {last}"


def run_check(name: str, ctx: Context) -> Result:
    """Run one check in this process; an exception is a FAIL with its last line."""
    fn, _ = CHECKS[name]
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs: stdout is the table
            ok, detail = fn(ctx)
        status = "PASS" if ok else "FAIL"
    except Exception as err:  # noqa: BLE001 -- every check runs, whatever the others do
        traceback.print_exc(file=sys.stderr)
        status, detail = "FAIL", _last_line(err)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Result(name, status, time.perf_counter() - start, detail)


def run_child(name: str, args: argparse.Namespace, workdir: Path) -> Result:
    """Run one check in a fresh Python process (vLLM engines keep their memory until exit)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--child", "--workdir", str(workdir)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model]
    if args.cpu:
        cmd += ["--cpu"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        why = f"timed out after {args.child_timeout} s (fresh process)"
        return Result(name, "FAIL", time.perf_counter() - start, why)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            r = json.loads(line[len(RESULT_TAG) :])
            if r["status"] == "FAIL":
                sys.stderr.write(proc.stderr[-4000:])
            return Result(name, r["status"], time.perf_counter() - start, r["detail"])
    sys.stderr.write(proc.stderr[-4000:])
    tail = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    why = f"process exited {proc.returncode}: {tail[-1] if tail else 'no output'}"
    return Result(name, "FAIL", time.perf_counter() - start, why)


def print_table(results: list[Result], header: str) -> None:
    """The markdown table ``| check | result | seconds | detail |`` (``|`` in a detail escaped), then counts."""
    print(header + "\n")
    print("| check | result | seconds | detail |")
    print("|---|---|---:|---|")
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        print(f"| {r.name} | {r.status} | {r.seconds:.1f} | {detail} |")
    print()
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIPPED")}
    print(", ".join(f"{v} {k}" for k, v in counts.items()))


def _versions() -> str:
    out = [f"torch {torch.__version__}"]
    for mod in ("transformers", "trl", "peft", "accelerate", "vllm"):
        if importlib.util.find_spec(mod) is None:
            out.append(f"{mod} -")
            continue
        try:
            from importlib.metadata import version

            out.append(f"{mod} {version(mod if mod != 'vllm' else _vllm_dist())}")
        except Exception:  # noqa: BLE001 -- a version string is informative only
            out.append(f"{mod} ?")
    return ", ".join(out)


def _vllm_dist() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            version(dist)
            return dist
        except PackageNotFoundError:
            continue
    return "vllm"


def parse_only(text: str | None) -> list[str]:
    """The check names of ``--only`` ("a,b"), in table order; all checks when None."""
    if text is None:
        return list(CHECKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check(s) {unknown or [text]}; known: {', '.join(CHECKS)}")
    return [n for n in CHECKS if n in names]


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the table; returns the exit code (1 when a check FAILED, else 0).

    Raises:
        SystemExit: from argparse, on an unknown ``--only`` name or a ``--model`` that is not a directory.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a local model directory (default: the tiny LM, built in code)")
    p.add_argument("--vllm", action="store_true", help="require the vLLM checks (FAIL when vllm is not installed)")
    p.add_argument(
        "--only",
        type=parse_only,
        default=None,
        metavar="NAME[,NAME]",
        help=f"run only these checks: {', '.join(CHECKS)}",
    )
    p.add_argument("--cpu", action="store_true", help="run every check on the CPU (exercises the code without a GPU)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: 1 with --cpu, torch's own otherwise)"
    )
    p.add_argument("--child-timeout", type=int, default=CHILD_TIMEOUT_S, help="seconds per vLLM check (fresh process)")
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.only if args.only is not None else list(CHECKS)
    if args.model and not Path(args.model).is_dir():
        p.error(f"--model {args.model}: not a directory")
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything touches CUDA: trainers pick the CPU too
    if args.threads is None and args.cpu:
        args.threads = 1  # shared small machines: one thread is faster than two contending ones
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = (not args.cpu) and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    have_vllm = importlib.util.find_spec("vllm") is not None

    if not cuda and not args.cpu:
        why = "no CUDA device (torch.cuda.is_available() is False); --cpu runs it on the CPU"
        results = [Result(n, "SKIPPED", 0.0, why) for n in names]
        print_table(results, f"## GPU smoke: no CUDA device, {len(results)} checks skipped ({_versions()})")
        return 0

    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu_smoke_")
        workdir = Path(tmp.name)
    ctx = Context(device=device, model_path=args.model, workdir=workdir)
    results = []
    try:
        for name in names:
            _, needs_vllm = CHECKS[name]
            if args.child:
                r = run_check(name, ctx)
                print(RESULT_TAG + json.dumps({"status": r.status, "detail": r.detail}), flush=True)
                results.append(r)
                continue
            if needs_vllm and not have_vllm:
                status = "FAIL" if args.vllm else "SKIPPED"
                why = "vllm is not installed (pip install '.[vllm]')"
                why += "" if args.vllm else "; with --vllm this is a FAIL"
                results.append(Result(name, status, 0.0, why))
            elif needs_vllm:
                results.append(run_child(name, args, workdir))
            else:
                results.append(run_check(name, ctx))
            r = results[-1]
            print(f"[gpu_smoke] {r.name}: {r.status} ({r.seconds:.1f} s)", file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.child:
        return 0
    where = torch.cuda.get_device_name(0) if cuda else f"CPU ({args.threads} thread{'s' * (args.threads != 1)}, --cpu)"
    model = args.model or "tiny LM " + ", ".join(f"{k}={v}" for k, v in TINY_ARCH.items())
    print_table(results, f"## GPU smoke on {where}: {model} ({_versions()})")
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
