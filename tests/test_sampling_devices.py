"""Sampling generators and devices (issue 15, defects 1 and 14), and top-p (defect 16).

A CPU ``torch.Generator`` (``classic.evaluate.run_trials`` makes one) cannot sample CUDA tensors:
``HFSession`` and the meta-prover turn it into a generator on the model's device, seeded from one
draw (``device_generator``), and copy only the drawn tokens to the host. On CPU nothing changes.
The ``gpu`` tests run that on CUDA; they are skipped without it.
"""

import pytest
import torch

from classic.envs import BernoulliBandit
from classic.evaluate import run_trials
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.models import TinyLMConfig, build_tiny_model
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig
from mrl_llm.rollout import generation
from mrl_llm.rollout.agent import LLMAgent
from mrl_llm.rollout.generation import HFSession, SamplingConfig, device_generator, filtered_logprobs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


# ---- device_generator --------------------------------------------------------------------


def test_device_generator_returns_the_callers_generator_on_its_device_and_draws_nothing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert device_generator(g, "cpu") is g
    assert device_generator(g, torch.device("cpu")) is g
    assert torch.equal(g.get_state(), state)  # no draw: CPU numbers are unchanged


def test_device_generator_elsewhere_is_seeded_from_one_draw(monkeypatch):
    """On another device: a new generator seeded from exactly one draw of the caller's, so the
    same seed gives the same stream and the caller's generator advances by one draw. (Exercised
    on CPU by pretending the devices differ; the gpu test below does it for real.)"""
    monkeypatch.setattr(generation, "_same_device", lambda a, b: False)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    d1, d2 = device_generator(g1, "cpu"), device_generator(g2, "cpu")
    assert d1 is not g1
    assert torch.equal(torch.rand(5, generator=d1), torch.rand(5, generator=d2))
    ref = torch.Generator().manual_seed(7)
    torch.randint(0, 2**62, (1,), generator=ref)  # one draw
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=ref))
    other = device_generator(torch.Generator().manual_seed(8), "cpu")
    assert not torch.equal(
        torch.rand(5, generator=device_generator(torch.Generator().manual_seed(7), "cpu")),
        torch.rand(5, generator=other),
    )


def test_hf_session_cpu_draws_are_the_reference_multinomial_draws(tiny_model, tiny_tok):
    """On CPU the session samples from the caller's generator itself: its tokens are those of
    ``torch.multinomial(softmax(logits / T), generator=g)`` with a clone of ``g``."""
    B, T = 6, 0.8
    s = HFSession(tiny_model, tiny_tok.pad_token_id, B)
    s.append([_ids(tiny_tok, "find x .\n")] * B)
    g, ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    toks, lps = s.sample(3, set(), T, g)
    histories = [_ids(tiny_tok, "find x .\n") for _ in range(B)]
    for step in range(3):
        with torch.no_grad():
            logits = torch.stack([tiny_model(input_ids=torch.tensor([h])).logits[0, -1] for h in histories])
        logp = torch.log_softmax(logits / T, dim=-1)
        want = torch.multinomial(logp.exp(), 1, generator=ref).squeeze(1)
        assert [t[step] for t in toks] == want.tolist()
        torch.testing.assert_close(
            torch.tensor([lp[step] for lp in lps]), logp.gather(1, want[:, None])[:, 0], atol=1e-4, rtol=0
        )
        for h, t in zip(histories, want.tolist()):
            h.append(t)
    assert torch.equal(g.get_state(), ref.get_state())


# ---- top-p -------------------------------------------------------------------------------


def _nucleus_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Row by row: temper, keep the top k, then keep tokens (most likely first) while the mass
    before them is below top_p; renormalize. Returns (B, V) log-probabilities."""
    out = torch.full(logits.shape, float("-inf"), dtype=torch.float64)
    for b, row in enumerate(logits.double() / temperature):
        order = sorted(range(row.numel()), key=lambda v: -float(row[v]))
        if top_k:
            order = order[:top_k]
        p = torch.softmax(row[order], dim=0)
        kept, mass = [], 0.0
        for v, pv in zip(order, p.tolist()):
            if mass >= top_p:
                break
            kept.append(v)
            mass += pv
        out[b, kept] = torch.log_softmax(row[kept], dim=0)
    return out


@pytest.mark.parametrize(
    "top_k, top_p, temperature", [(0, 0.9, 1.0), (0, 0.3, 0.7), (5, 0.6, 1.3), (0, 1e-6, 1.0), (0, 1.0, 1.0)]
)
def test_filtered_logprobs_match_a_slow_nucleus_reference(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 40, generator=g) * 3
    got = filtered_logprobs(logits, temperature, top_k, top_p)
    want = _nucleus_reference(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))  # same kept set
    torch.testing.assert_close(got[torch.isfinite(got)].double(), want[torch.isfinite(want)], atol=1e-5, rtol=0)
    if top_p == 1e-6:
        assert (torch.isfinite(got).sum(dim=1) == 1).all()  # only the most likely token


def test_hf_session_top_p_samples_only_inside_the_nucleus(tiny_model, tiny_tok):
    B, p = 64, 0.5
    s = HFSession(tiny_model, tiny_tok.pad_token_id, B)
    s.append([_ids(tiny_tok, "find x .\n")] * B)
    s._flush()
    allowed = torch.isfinite(filtered_logprobs(s.last_logits[:1], 1.0, 0, p))[0]
    toks, lps = s.sample(1, set(), 1.0, torch.Generator().manual_seed(0), top_p=p)
    first = torch.tensor([t[0] for t in toks])
    assert allowed[first].all()
    assert 1 < int(allowed.sum()) < allowed.numel()  # the nucleus is a real cut here
    assert len(set(first.tolist())) > 1


def test_sampling_config_validates_top_p_and_the_agent_passes_it(tiny_model, tiny_tok, monkeypatch):
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            SamplingConfig(top_p=bad)
    assert SamplingConfig(1.0, 0, 1, True).top_p == 1.0  # positional construction still works
    seen = []
    sample = HFSession.sample

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("top_p"))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(HFSession, "sample", spy)
    agent = LLMAgent(tiny_model, tiny_tok, BanditText(5, 4), SamplingConfig(top_p=0.7))
    run_trials(agent, BernoulliBandit(5), 4, 4, seed=0)
    assert seen and set(seen) == {0.7}


# ---- the meta-prover copies tokens, not probabilities, to the host -----------------------


@pytest.mark.parametrize("tree", [True, False])
def test_meta_prover_draw_never_moves_a_rows_by_vocab_tensor(tiny_tok, tree, monkeypatch):
    """Defect 14: ``_draw`` copied the (R, V) probabilities to the host every token. Spy on
    ``Tensor.cpu`` / ``Tensor.to``: no (rows x vocab) tensor may go through them."""
    if not tree:
        monkeypatch.setattr("mrl_llm.reasoning.meta_prover.supports_tree_attention", lambda model: False)
    model = build_tiny_model(TinyLMConfig(num_layers=2, hidden_size=64, intermediate_size=128), tiny_tok, seed=5).eval()
    V = len(tiny_tok)
    moved = []
    real_cpu, real_to = torch.Tensor.cpu, torch.Tensor.to

    def cpu(self, *a, **k):
        moved.append(tuple(self.shape))
        return real_cpu(self, *a, **k)

    def to(self, *a, **k):
        moved.append(tuple(self.shape))
        return real_to(self, *a, **k)

    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=4, max_answer_tokens=3)
    prover = MetaProver(model, tiny_tok, cfg)
    args = ([_ids(tiny_tok, "find x .\n")], [_ids(tiny_tok, "try 3 . no .\n\nwait")], [[0, 4, 8]])
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    monkeypatch.setattr(torch.Tensor, "to", to)
    answers = prover.sample_answers(*args, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert len(answers[0]) == 3 and all(len(a) == 4 for a in answers[0])
    assert prover.stats.sampled_tokens > 0
    assert not [s for s in moved if len(s) == 2 and s[-1] == V], f"(R, V) tensors moved: {moved}"


def test_meta_prover_cpu_answers_are_unchanged_by_the_device_generator(tiny_tok, monkeypatch):
    """Same answers whether the prover samples from the caller's CPU generator or from a clone
    (the helper returns the generator itself on CPU: bit-identical draws)."""
    model = build_tiny_model(TinyLMConfig(num_layers=2, hidden_size=64, intermediate_size=128), tiny_tok, seed=5).eval()
    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=5, max_answer_tokens=4, temperature=0.7)
    args = ([_ids(tiny_tok, "find x .\n")], [_ids(tiny_tok, "try 3 . no .")], [[0, 3]])
    a = MetaProver(model, tiny_tok, cfg).sample_answers(*args, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr("mrl_llm.reasoning.meta_prover.device_generator", lambda g, device: g)
    b = MetaProver(model, tiny_tok, cfg).sample_answers(*args, generator=torch.Generator().manual_seed(4))
    assert a == b


# ---- CUDA ------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
def test_gpu_device_generator_and_hf_session_sample_cuda_logits_with_a_cpu_generator(tiny_model, tiny_tok):
    g = torch.Generator().manual_seed(0)
    d = device_generator(g, "cuda")
    assert d.device.type == "cuda" and device_generator(d, "cuda") is d
    model = tiny_model.cuda()
    runs = []
    for _ in range(2):
        s = HFSession(model, tiny_tok.pad_token_id, 8)
        s.append([_ids(tiny_tok, "find x .\n")] * 8)
        gen = torch.Generator().manual_seed(5)
        toks, lps = s.sample(4, set(), 1.0, gen, top_p=0.9)  # raised "Expected a 'cuda' device type" before
        toks2, _ = s.sample(2, set(), 1.0, gen)
        runs.append((toks, toks2))
        assert all(len(t) == 4 for t in toks) and all(lp <= 0 for row in lps for lp in row)
    assert runs[0] == runs[1]  # same seed, same tokens


@pytest.mark.gpu
@cuda
def test_gpu_run_trials_with_a_cuda_model(tiny_model, tiny_tok):
    model = tiny_model.cuda()
    res = [run_trials(LLMAgent(model, tiny_tok, BanditText(5, 6)), BernoulliBandit(5), 8, 6, seed=1) for _ in range(2)]
    assert torch.equal(res[0].actions, res[1].actions)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("tree", [True, False])
def test_gpu_meta_prover_on_cuda_with_a_cpu_generator(tiny_tok, tree, monkeypatch):
    if not tree:
        monkeypatch.setattr("mrl_llm.reasoning.meta_prover.supports_tree_attention", lambda model: False)
    model = build_tiny_model(TinyLMConfig(num_layers=2, hidden_size=64, intermediate_size=128), tiny_tok, seed=5)
    model = model.eval().cuda()
    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=4, max_answer_tokens=3)
    prover = MetaProver(model, tiny_tok, cfg)
    args = ([_ids(tiny_tok, "find x .\n")], [_ids(tiny_tok, "try 3 . no .\n\nwait")], [[0, 4, 8]], ["3"])
    J = prover.success_rates(*args, generator=torch.Generator().manual_seed(0))
    assert J[0].shape == (3,) and ((J[0] >= 0) & (J[0] <= 1)).all()
    a = prover.sample_answers(*args[:3], generator=torch.Generator().manual_seed(1))
    b = prover.sample_answers(*args[:3], generator=torch.Generator().manual_seed(1))
    assert a == b
