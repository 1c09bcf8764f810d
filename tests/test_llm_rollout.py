"""Multi-turn LLM rollouts: KV-cache reuse, env_mask, chat rendering, determinism."""

import pytest
import torch

from classic.envs import BernoulliBandit
from classic.evaluate import run_trials
from mrl_llm.envs.text_bandit import INVALID, BanditText
from mrl_llm.envs.text_env import TrialProgress
from mrl_llm.rollout.agent import LLMAgent, TrialRenderer
from mrl_llm.rollout.generation import HFSession, SamplingConfig


def test_cached_logits_match_full_recompute_with_ragged_rows(tiny_model, tiny_tok):
    """Feeding turns of different lengths per row through the KV cache (right-padded blocks)
    gives the same next-token logits as encoding each row's whole history alone."""
    g = torch.Generator().manual_seed(0)
    vocab = len(tiny_tok)
    rows = 3
    cached = HFSession(tiny_model, tiny_tok.pad_token_id, rows, use_cache=True)
    histories = [[] for _ in range(rows)]
    for turn in range(4):
        block = [
            torch.randint(6, vocab, (int(n),), generator=g).tolist() for n in torch.randint(0, 4, (rows,), generator=g)
        ]
        if turn == 0:
            block = [b + [7] for b in block]  # every row needs at least one token to start
        cached.append(block)
        for h, b in zip(histories, block):
            h.extend(b)
        cached._flush()
        for i, h in enumerate(histories):
            with torch.no_grad():
                ref = tiny_model(input_ids=torch.tensor([h])).logits[0, -1]
            torch.testing.assert_close(cached.last_logits[i], ref, atol=2e-4, rtol=1e-4)


def test_cache_and_no_cache_sample_the_same_trials(tiny_model, tiny_tok):
    dist = BernoulliBandit(5)
    out = []
    for use_cache in (True, False):
        agent = LLMAgent(tiny_model, tiny_tok, BanditText(5, 12), SamplingConfig(use_cache=use_cache))
        out.append(run_trials(agent, dist, 8, 12, seed=4))
    assert torch.equal(out[0].actions, out[1].actions)
    assert torch.equal(out[0].rewards, out[1].rewards)


def test_same_seed_same_numbers(tiny_model, tiny_tok):
    dist = BernoulliBandit(5)
    runs = [run_trials(LLMAgent(tiny_model, tiny_tok, BanditText(5, 10)), dist, 16, 10, seed=2) for _ in range(2)]
    assert torch.equal(runs[0].actions, runs[1].actions)
    other = run_trials(LLMAgent(tiny_model, tiny_tok, BanditText(5, 10)), dist, 16, 10, seed=3)
    assert not torch.equal(runs[0].actions, other.actions)


@pytest.mark.parametrize("chat", [False, True])
def test_env_mask_marks_exactly_the_environment_tokens(tiny_model, tiny_tok, chat):
    env = BanditText(4, 6, chat=chat)
    sampling = SamplingConfig(max_action_tokens=3 if chat else 1)
    agent = LLMAgent(tiny_model, tiny_tok, env, sampling, record=True)
    res = run_trials(agent, BernoulliBandit(4), 5, 6, seed=0)
    trs = agent.finish()
    renderer = TrialRenderer(tiny_tok, env)
    for i, tr in enumerate(trs):
        assert len(tr.completion_ids) == len(tr.env_mask) == len(tr.logprobs)
        # Rebuild the expected environment segments from the actions and rewards.
        segments = _runs(tr, 0)  # the last one is the closing EOS
        assert len(segments) == 6  # 5 feedbacks between 6 replies + the closing EOS
        replies = _runs(tr, 1)
        total = 0.0
        for t in range(5):
            a = int(res.actions[i, t])
            r = float(res.rewards[i, t]) if a != INVALID else 0.0
            total += r
            progress = TrialProgress(t + 1, total, t + 1)
            assert segments[t] == renderer.step_ids(torch.zeros(1), a, r, True, False, progress, replies[t])
        assert segments[-1] == [tiny_tok.eos_token_id]
        # model tokens have real (negative) logprobs, environment tokens 0
        for m, lp in zip(tr.env_mask, tr.logprobs):
            assert (lp < 0) if m == 1 else (lp == 0.0)


def _runs(tr, mask_value):
    """Maximal runs of completion tokens whose env_mask equals ``mask_value``."""
    runs, cur = [], []
    for tok, m in zip(tr.completion_ids, tr.env_mask):
        if m == mask_value:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_chat_turns_reproduce_the_chat_template(tiny_tok):
    """Prompt + replies + feedback tokens equal the chat template applied to the conversation."""
    env = BanditText(3, 3, chat=True)
    r = TrialRenderer(tiny_tok, env)
    tr = r.teacher_trial([0, 2, 1], [1.0, 0.0, 1.0])
    msgs = [{"role": "user", "content": env.instructions()}]
    total = 0.0
    for t, (a, rew) in enumerate(zip([0, 2, 1], [1.0, 0.0, 1.0])):
        msgs.append({"role": "assistant", "content": env.format_action(a)})
        if t < 2:
            total += rew
            msgs.append({"role": "user", "content": env.feedback(a, rew, t + 1, total)})
    text = tiny_tok.apply_chat_template(msgs, tokenize=False)
    assert tiny_tok.decode(tr.prompt_ids + tr.completion_ids) + "\n" == text


def test_invalid_actions_are_scored_and_counted(tiny_tok):
    """A model that only ever writes a non-arm token gets reward 0 every pull, no crash."""

    class Constant(torch.nn.Module):
        def __init__(self, vocab, token):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.vocab, self.token = vocab, token

        def forward(self, input_ids, **kw):
            logits = torch.full((*input_ids.shape, self.vocab), -1e4)
            logits[..., self.token] = 0.0
            return type("Out", (), {"logits": logits, "past_key_values": None})()

    bad = tiny_tok.convert_tokens_to_ids("x")
    agent = LLMAgent(Constant(len(tiny_tok), bad), tiny_tok, BanditText(5, 7), SamplingConfig(use_cache=False))
    res = run_trials(agent, BernoulliBandit(5), 4, 7, seed=0)
    assert res.invalid_rate == 1.0
    assert float(res.rewards.sum()) == 0.0
    assert agent.invalid_replies[0] == "x"


def test_kv_cache_encodes_fewer_tokens(tiny_model, tiny_tok):
    stats = {}
    for use_cache in (True, False):
        agent = LLMAgent(tiny_model, tiny_tok, BanditText(5, 20), SamplingConfig(use_cache=use_cache))
        run_trials(agent, BernoulliBandit(5), 4, 20, seed=0)
        stats[use_cache] = agent.stats()
    assert stats[True]["sampled_tokens"] == stats[False]["sampled_tokens"] == 80
    # with the cache each token is encoded once; without, the history is re-encoded every turn
    assert stats[False]["encoded_tokens"] > 5 * stats[True]["encoded_tokens"]


def test_kv_cache_compat_names_what_the_installed_transformers_takes(tiny_model, tiny_tok):
    import dataclasses
    import inspect

    import peft
    from trl import GRPOConfig, SFTConfig

    from mrl_llm.models import activation_checkpointing_kwargs, kv_cache_kwarg, output_kv_cache

    name = kv_cache_kwarg(tiny_model)
    assert name in inspect.signature(tiny_model.forward).parameters
    wrapped = peft.get_peft_model(tiny_model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert kv_cache_kwarg(wrapped) == name  # looks through the PEFT wrapper's (*args, **kwargs)
    ids = torch.tensor([tiny_tok("3 1\n", add_special_tokens=False).input_ids])
    with torch.no_grad():
        out = tiny_model(input_ids=ids, use_cache=True)
        past = output_kv_cache(out)
        assert past is not None and output_kv_cache(tiny_model(input_ids=ids, use_cache=False)) is None
        step = tiny_model(input_ids=ids[:, -1:], **{name: past}, use_cache=True)
    assert step.logits.shape[:2] == (1, 1)
    wrapped.unload()
    for cls in (GRPOConfig, SFTConfig):
        ((field, value),) = activation_checkpointing_kwargs(cls, True).items()
        assert field in {f.name for f in dataclasses.fields(cls)} and value is True
        assert activation_checkpointing_kwargs(cls, False) == {field: False}  # explicit: SFTConfig defaults to True
