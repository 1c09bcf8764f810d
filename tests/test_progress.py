"""MRT's meta-prover, progress rewards and advantages (mrl_llm.reasoning.meta_prover)."""

import functools
from types import SimpleNamespace

import pytest
import torch

from mrl_llm.models import TinyLMConfig, build_tiny_model, build_tiny_tokenizer
from mrl_llm.reasoning.meta_prover import MetaProver, MetaProverConfig, token_cuts
from mrl_llm.reasoning.progress import mrt_token_advantages, progress_rewards, termination_advantages


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# ---- a stub policy whose success probability is known ----------------------------------


class _StubCache:
    """Holds the token ids seen so far; the stub "attends" to them through the attention mask."""

    def __init__(self, ids):
        self.ids = ids

    def batch_select_indices(self, idx):
        self.ids = self.ids[idx]


class StubProver(torch.nn.Module):
    """P(answer = correct digit) = (number of visible "+" tokens) / 4, capped at 1; the other
    outcome is a wrong digit; after a digit comes eos. Masked-out tokens are invisible, so a wrong
    mask or a wrong cut changes the numbers."""

    def __init__(self, tok, correct="4", wrong="5", tree=False):
        super().__init__()
        # tree=True: declares eager attention, so the prover takes its tree-attention path and
        # passes 4D additive masks (0 = visible), which the stub reads like the 2D ones.
        self.config = SimpleNamespace(_attn_implementation="eager" if tree else None)
        self.w = torch.nn.Parameter(torch.zeros(1))  # for .parameters()
        self.V = len(tok)
        self.plus = tok.convert_tokens_to_ids("+")
        self.right, self.wrong = tok.convert_tokens_to_ids(correct), tok.convert_tokens_to_ids(wrong)
        self.eos = tok.eos_token_id

    def forward(
        self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True, logits_to_keep=0
    ):
        ids = input_ids if past_key_values is None else torch.cat([past_key_values.ids, input_ids], dim=1)
        if attention_mask.dim() == 4:  # (N, 1, Lb, kv): what each new token sees
            plus = ((attention_mask[:, 0] == 0) & (ids == self.plus).unsqueeze(1)).sum(-1)
        else:
            visible = attention_mask.bool()
            plus = torch.cumsum((ids == self.plus) & visible, dim=1)[:, -input_ids.shape[1] :]  # (N, Lb) count so far
        p = (plus.float() / 4).clamp(max=1.0)
        after_digit = (input_ids == self.right) | (input_ids == self.wrong)
        never = torch.full_like(p, -1e9)
        logits = torch.full((*input_ids.shape, self.V), -1e9)
        logits[..., self.right] = torch.where(after_digit, never, torch.log(p.clamp(min=1e-12)))
        logits[..., self.wrong] = torch.where(after_digit, never, torch.log((1 - p).clamp(min=1e-12)))
        logits[..., self.eos] = torch.where(after_digit, torch.zeros_like(p), never)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=_StubCache(ids))


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("shared, tree", [(True, True), (True, False), (False, False)])
def test_stub_policy_success_rates_and_progress_match_the_hand_computed_example(tok, shared, tree):
    # prompt has one "+"; the trace adds one "+" in episode 0, none in episode 1, two in episode 2:
    # J = 1/4, 2/4, 2/4, 4/4 at cuts (0, e0, e1, e2) -> progress 0.25, 0.0, 0.5
    prompt = _ids(tok, "find x + .\n")
    eps = ["try + .\n\n", "wait .\n\n", "so + + .\n\n"]
    trace = _ids(tok, "".join(eps))
    cuts = [0] + torch.tensor([len(_ids(tok, e)) for e in eps]).cumsum(0).tolist()
    prover = MetaProver(
        StubProver(tok, tree=tree),
        tok,
        MetaProverConfig(
            termination_suffix=" answer is ",
            num_samples=4000,
            max_answer_tokens=3,
            temperature=1.0,
            shared_prefix=shared,
        ),
    )
    J = prover.success_rates([prompt], [trace], [cuts], ["4"], generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(J, torch.tensor([0.25, 0.5, 0.5, 1.0]), atol=0.03, rtol=0)
    assert J[-1] == 1.0  # deterministic at p = 1
    torch.testing.assert_close(progress_rewards(J), torch.tensor([0.25, 0.0, 0.5]), atol=0.045, rtol=0)
    assert prover.stats.rows == 4 * 4000


def test_shared_prefix_and_reference_paths_sample_the_same_answers_on_a_real_model(tok):
    model = build_tiny_model(TinyLMConfig(num_layers=2, hidden_size=64, intermediate_size=128), tok, seed=3).eval()
    prompts = [_ids(tok, "find x for f ( x ) = 4 .\n"), _ids(tok, "find y .\n")]
    comps = [_ids(tok, "Let me try 3 . no .\n\nWait , try 4 . yes ."), _ids(tok, "try 1 . no .")]
    cuts = [[0, 6, len(comps[0])], [2]]
    out = {}
    for shared in (True, False):
        prover = MetaProver(
            model,
            tok,
            MetaProverConfig(
                termination_suffix=" so the answer is", num_samples=3, max_answer_tokens=4, shared_prefix=shared
            ),
        )
        queries = [(i, k) for i in range(2) for k in cuts[i]]
        out[shared] = prover._answers_hf(prompts, comps, queries, torch.Generator().manual_seed(1))
        enc = prover.stats.encoded_tokens
        out[(shared, "enc")] = enc
    assert out[True] == out[False]
    assert out[(True, "enc")] < out[(False, "enc")]  # the trace is encoded once, not per row


@pytest.mark.parametrize("tree", [True, False])
def test_trie_sampler_draws_the_same_answers_as_decoding_every_sample_on_its_own(tok, tree, monkeypatch):
    """The prover decodes a trie of the sampled tokens: tree attention (one cache row per source
    trace, 4D masks) or one copied cache row per distinct (prefix, tokens so far) node. A slow
    loop that re-encodes every sample's whole sequence and draws all samples' next tokens from
    one generator must give the same answers token for token."""
    if not tree:
        monkeypatch.setattr("mrl_llm.reasoning.meta_prover.supports_tree_attention", lambda model: False)
    model = build_tiny_model(TinyLMConfig(num_layers=2, hidden_size=64, intermediate_size=128), tok, seed=5).eval()
    prompts = [_ids(tok, "find x for f ( x ) = 4 .\n"), _ids(tok, "find y .\n")]
    comps = [_ids(tok, "Let me try 3 . no .\n\nWait , try 4 . yes ."), _ids(tok, "try 1 . no .")]
    queries = [(0, 0), (0, 6), (0, len(comps[0])), (1, 2)]
    # a random tiny LM is near-uniform over its vocabulary: at 0.2 a query's samples share tokens (so the trie
    # saves rows, asserted below) and still branch
    cfg = MetaProverConfig(termination_suffix=" so the answer is", num_samples=5, max_answer_tokens=4, temperature=0.2)
    shapes = []
    forward = model.forward

    @functools.wraps(forward)
    def recording_forward(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recording_forward
    prover = MetaProver(model, tok, cfg)
    drawn = []  # per step: the (R, V) logits each sample draws from, and which samples run
    draw = prover._draw

    def recording_draw(logits, node, running, sampled, generator):
        drawn.append((logits[node].clone(), running.clone()))
        return draw(logits, node, running, sampled, generator)

    prover._draw = recording_draw
    with torch.no_grad():
        fast = prover._answers_hf(prompts, comps, queries, torch.Generator().manual_seed(2))
    model.forward = forward

    K, R = cfg.num_samples, len(queries) * cfg.num_samples
    rows = [
        list(prompts[i]) + list(comps[i][:k]) + prover.suffix_for(comps[i][:k]) for i, k in queries for _ in range(K)
    ]
    sampled, running, g = [[] for _ in range(R)], [True] * R, torch.Generator().manual_seed(2)
    with torch.no_grad():
        for step in range(cfg.max_answer_tokens):
            logits = torch.stack(
                [model(input_ids=torch.tensor([rows[r] + sampled[r]])).logits[0, -1] for r in range(R)]
            )
            fast_logits, fast_running = drawn[step]  # same context, same positions: same logits
            assert fast_running.tolist() == running
            torch.testing.assert_close(fast_logits[fast_running], logits[fast_running], atol=1e-4, rtol=1e-4)
            toks = torch.multinomial(torch.softmax(logits / cfg.temperature, -1), 1, generator=g).squeeze(1).tolist()
            for r in range(R):
                if running[r]:
                    sampled[r].append(toks[r])
                    running[r] = toks[r] != tok.eos_token_id
            if not any(running):
                break
    texts = tok.batch_decode(sampled, skip_special_tokens=True)
    slow = [texts[q * K : (q + 1) * K] for q in range(len(queries))]
    assert fast == slow
    assert len({a for per in fast for a in per}) > len(queries)  # the samples did branch
    if tree:  # every forward has one row per source trace
        assert {b for b, _ in shapes} == {2}
    else:  # after the source encoding and the suffix blocks: fewer rows than samples per step
        steps = [b for b, w in shapes[2:]]
        assert steps and all(w == 1 for _, w in shapes[2:]) and sum(steps) < R * len(steps)


def test_same_seed_same_success_rates_and_bad_cuts_are_refused(tok):
    prover = MetaProver(
        StubProver(tok), tok, MetaProverConfig(termination_suffix=" answer", num_samples=16, max_answer_tokens=3)
    )
    args = ([_ids(tok, "+ +")], [_ids(tok, "a b")], [[0, 2]], ["4"])
    a = prover.success_rates(*args, generator=torch.Generator().manual_seed(5))
    b = prover.success_rates(*args, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a[0], b[0])
    with pytest.raises(ValueError, match="outside"):
        prover.success_rates([[1]], [[2, 3]], [[3]], ["4"])
    with pytest.raises(ValueError, match="same length"):
        prover.success_rates([[1]], [[2, 3]], [[1], [2]], ["4"])


def test_meta_prover_config_is_checked():
    with pytest.raises(ValueError, match="num_samples"):
        MetaProverConfig(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        MetaProverConfig(temperature=0)
    with pytest.raises(ValueError, match="termination_suffix"):
        MetaProverConfig(termination_suffix="")


def test_token_cuts_find_the_first_token_covering_each_episode_end(tok):
    text = "Let me try 3 .\n\nWait , try 4 .\n\nSo the answer is 4 ."
    ids = _ids(tok, text)
    ends = [text.index("Wait"), text.index("So")]
    cuts = token_cuts(tok, ids, ends)
    for k, e in zip(cuts, ends):
        assert tok.decode(ids[:k]) == text[:e]
    assert token_cuts(tok, ids, [0, len(text)]) == [0, len(ids)]


# ---- advantages against slow references ----------------------------------------------


def _slow_token_advantages(outcome, progress, ends, T, alpha, credit):
    out = torch.zeros(len(outcome), T)
    for i in range(len(outcome)):
        for t in range(T):
            bonus, start = 0.0, 0
            for j, e in enumerate(ends[i]):
                if start <= t < e:
                    bonus = float(progress[i][j]) if credit == "episode" else float(sum(progress[i][j:]))
                start = e
            out[i, t] = float(outcome[i]) + alpha * bonus
    return out


@pytest.mark.parametrize("credit", ["episode", "reward_to_go"])
def test_mrt_token_advantages_match_a_slow_loop(credit):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 25
    outcome = torch.randn(B, generator=g)
    progress, ends = [], []
    for i in range(B):
        m = int(torch.randint(0, 5, (1,), generator=g))
        e = sorted(torch.randint(1, T + 6, (m,), generator=g).tolist())  # may run past T (truncated)
        ends.append(e)
        progress.append(torch.randn(m, generator=g))
    fast = mrt_token_advantages(outcome, progress, ends, T, alpha=0.7, credit=credit)
    slow = _slow_token_advantages(outcome, progress, [[min(x, T) for x in e] for e in ends], T, 0.7, credit)
    torch.testing.assert_close(fast, slow)


def test_mrt_token_advantages_hand_example_and_errors():
    adv = mrt_token_advantages(torch.tensor([1.0]), [torch.tensor([0.5, -0.25])], [[2, 3]], 5, alpha=2.0)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0, 0.5, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="credit"):
        mrt_token_advantages(torch.zeros(1), [torch.zeros(0)], [[]], 3, 1.0, credit="bogus")
    with pytest.raises(ValueError, match="progress values"):
        mrt_token_advantages(torch.zeros(1), [torch.zeros(2)], [[1]], 3, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        mrt_token_advantages(torch.zeros(1), [torch.zeros(0)], [[]], 3, -1.0)


def test_termination_advantages_replace_the_group_mean_by_the_termination_reward():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    term = torch.tensor([0.25] * 3 + [0.5] * 3)
    torch.testing.assert_close(
        termination_advantages(rewards, term, 3), torch.tensor([0.75, -0.25, 0.75, 0.5, -0.5, -0.5])
    )
    std1 = torch.tensor([1.0, 0.0, 1.0]).std()
    scaled = termination_advantages(rewards, term, 3, scale="group")
    torch.testing.assert_close(scaled[:3], torch.tensor([0.75, -0.25, 0.75]) / (std1 + 1e-4))
    torch.testing.assert_close(scaled[3:], torch.tensor([0.5, -0.5, -0.5]) / (rewards[3:].std() + 1e-4))
    with pytest.raises(ValueError, match="multiple"):
        termination_advantages(rewards[:5], term[:5], 3)
    with pytest.raises(ValueError, match="scale"):
        termination_advantages(rewards, term, 3, scale="batch")


def test_suffix_starts_a_new_paragraph_after_a_cut_inside_one(tok):
    prover = MetaProver(
        StubProver(tok), tok, MetaProverConfig(termination_suffix="Answer:", num_samples=1, max_answer_tokens=2)
    )
    text = lambda ids: tok.decode(ids)  # noqa: E731
    assert text(prover.suffix_for(_ids(tok, "try 3: no\n\n"))) == "Answer:"  # an episode end: as is
    assert text(prover.suffix_for(_ids(tok, "try 3: no\n"))) == "\nAnswer:"  # half a separator: completed
    assert text(prover.suffix_for(_ids(tok, "try 3: 3+4"))) == "\n\nAnswer:"  # a token budget mid-line
    assert text(prover.suffix_for([])) == "Answer:"  # the empty prefix: right after the prompt
    plain = MetaProver(StubProver(tok), tok, MetaProverConfig(termination_suffix="Answer:", separator=""))
    assert text(plain.suffix_for(_ids(tok, "try 3: 3+4"))) == "Answer:"
    # both decoding paths give the same answers with mixed suffixes in one batch
    prompt, comp = _ids(tok, "find + +\n"), _ids(tok, "try +\n\nwait + +")
    out = {}
    for shared in (True, False):
        p = MetaProver(
            StubProver(tok),
            tok,
            MetaProverConfig(
                termination_suffix="Answer: ",
                num_samples=50,
                max_answer_tokens=2,
                temperature=1.0,
                shared_prefix=shared,
            ),
        )
        out[shared] = p.sample_answers(
            [prompt], [comp], [[0, 4, len(comp)]], generator=torch.Generator().manual_seed(3)
        )
    assert out[True] == out[False]
