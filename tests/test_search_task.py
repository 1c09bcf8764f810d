"""The synthetic search task for MRT (mrl_llm/envs/search_task.py): problems, SFT traces that
are true to the table, episode counts, answer extraction, tokenization, lengths, determinism."""

import re
import statistics

import pytest
import torch

from mrl_llm.reasoning.search_task import (
    SEARCH_EPISODES,
    TERMINATION_SUFFIX,
    SearchTaskConfig,
    attempts_in,
    optimal_trace,
    parse_checks,
    prompt_dataset,
    sample_problems,
    sft_dataset,
    sft_trace,
    terminate,
    trace_episodes,
)
from mrl_llm.models import build_tiny_tokenizer
from mrl_llm.reasoning.verifier import extract_answer, verify_answer
from mrl_llm.reasoning.episodes import episode_prefixes, split_episodes

CFG = SearchTaskConfig()


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def samples(cfg=CFG, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    problems = sample_problems(cfg, n, g)
    return [(p, sft_trace(p, cfg, g)) for p in problems]


def test_problems_are_permutations_with_the_right_answer():
    for cfg in (CFG, SearchTaskConfig(num_candidates=10), SearchTaskConfig(num_candidates=2, max_attempts=2)):
        for p in sample_problems(cfg, 200, torch.Generator().manual_seed(1)):
            assert sorted(p.table) == list(range(cfg.num_candidates))
            assert p.table[int(p.answer)] == p.target
            pairs = re.findall(r"(\d)(\d)", p.prompt.split("\n")[0])
            assert [(int(a), int(b)) for a, b in pairs] == list(enumerate(p.table))
            assert p.prompt.endswith(f"find f(x)={p.target}\n")


def test_problems_cover_targets_uniformly():
    ps = sample_problems(CFG, 4000, torch.Generator().manual_seed(2))
    counts = torch.bincount(torch.tensor([int(p.answer) for p in ps]), minlength=8)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected each


def check_trace(p, trace, cfg=CFG):
    """Consistency of one SFT trace with its problem; returns whether it was forced-stopped."""
    checks = parse_checks(trace)
    eps, ans = trace_episodes(trace, cfg.termination_suffix)
    assert ans is not None and ans.end == len(trace)
    assert len(eps) == len(checks) == attempts_in(trace, cfg.termination_suffix)
    for c in checks:
        assert c.tried == c.x and c.value == p.table[c.x]
        assert c.verdict == ("yes" if c.value == p.target else "no")
    refuted = {c.x for c in checks if c.verdict == "no"}
    found = any(c.verdict == "yes" for c in checks)
    forced = ans.text.startswith(cfg.termination_suffix)
    guess = extract_answer(trace)
    assert guess is not None and guess.isdigit()
    if not forced:
        assert ans.text == f"Answer: {p.answer}"
        assert found and checks[-1].verdict == "yes"
    else:
        assert int(guess) not in refuted
        if found:
            assert guess == p.answer
    # double-checks only after the answer was found, and only of it
    first_yes = next((i for i, c in enumerate(checks) if c.verdict == "yes"), len(checks))
    assert all(c.double_check == (i > first_yes) for i, c in enumerate(checks))
    assert all(c.verdict == "yes" for c in checks[first_yes:])
    assert len(checks) - first_yes - 1 <= cfg.max_double_checks or not found
    assert sum(c.verdict == "no" for c in checks) <= cfg.max_attempts - 1
    return forced


def test_sft_traces_are_consistent():
    n_forced = 0
    n_repeat = 0
    for p, trace in samples(n=600):
        n_forced += check_trace(p, trace)
        xs = [c.x for c in parse_checks(trace) if c.verdict == "no"]
        n_repeat += len(xs) != len(set(xs))
    assert 60 < n_forced < 180  # p_forced_stop = 0.2 of 600
    assert n_repeat > 0


@pytest.mark.parametrize(
    "cfg",
    [
        SearchTaskConfig(p_find=0.0, p_repeat=0.9, max_attempts=8),  # budget-limited repeats
        SearchTaskConfig(p_find=1.0, p_double_check=1.0, max_double_checks=3, p_forced_stop=1.0),
        SearchTaskConfig(num_candidates=10, p_forced_stop=1.0, termination_suffix="Time is up . So the answer is"),
        SearchTaskConfig(num_candidates=3, p_find=0.0, p_repeat=0.5, max_attempts=3, p_forced_stop=0.5),
    ],
)
def test_sft_traces_are_consistent_for_extreme_configs(cfg):
    for p, trace in samples(cfg, n=200, seed=3):
        check_trace(p, trace, cfg)


def test_blind_search_finds_the_answer_within_budget():
    cfg = SearchTaskConfig(p_find=0.0, p_repeat=0.99, p_forced_stop=0.0, p_double_check=0.0, max_attempts=9)
    for p, trace in samples(cfg, n=100):
        assert 1 <= attempts_in(trace) <= 9
        assert verify_answer(trace, p.answer)


def test_episodes_are_the_attempt_paragraphs():
    for p, trace in samples(n=200, seed=4):
        eps, ans = trace_episodes(trace)
        n = attempts_in(trace)
        assert "".join(e.text for e in eps) + ans.text == trace
        for e in eps:
            assert trace[e.start : e.end] == e.text
            assert e.text.endswith("\n\n") and e.text.count("\n\n") == 1
            assert len(parse_checks(e.text)) == 1
        # plain split_episodes: the answer paragraph joins the last attempt episode
        if n > 0:
            assert len(split_episodes(trace, SEARCH_EPISODES)) == n
            assert episode_prefixes(trace[: ans.start], SEARCH_EPISODES) == [trace[: e.end] for e in eps]
        else:
            assert trace.startswith(TERMINATION_SUFFIX) and eps == [] and ans.start == 0


def test_optimal_trace():
    for p in sample_problems(CFG, 50, torch.Generator().manual_seed(5)):
        t = optimal_trace(p)
        assert t == f"try {p.answer}: f({p.answer})={p.target} yes\n\nAnswer: {p.answer}"
        assert attempts_in(t) == 1 and extract_answer(t) == p.answer


def test_answers_are_read_from_both_endings():
    p = sample_problems(CFG, 1, torch.Generator().manual_seed(6))[0]
    a, wrong = p.answer, str((int(p.answer) + 1) % 8)
    natural = optimal_trace(p)
    forced = terminate("try 1: f(1)=2 no\n\n") + f" {a}"
    assert forced == f"try 1: f(1)=2 no\n\n{TERMINATION_SUFFIX} {a}"
    assert terminate("try 1: f(1)=2 no") == forced[: -len(f" {a}")]
    assert terminate("") == TERMINATION_SUFFIX
    for t in (natural, forced, f"{TERMINATION_SUFFIX} {a}"):
        assert extract_answer(t) == a
        assert verify_answer(t, a) and not verify_answer(t, wrong)
    # reading from sampled traces agrees with the trace's own last paragraph
    for q, t in samples(n=60, seed=7):
        last = t.rsplit("\n\n", 1)[-1]
        assert verify_answer(t, q.answer) == (last.split()[-1] == q.answer)


def test_no_unknown_tokens(tok):
    unk = tok.unk_token_id
    for cfg in (CFG, SearchTaskConfig(num_candidates=10, p_forced_stop=0.5)):
        for p, trace in samples(cfg, n=300, seed=8):
            for text in (p.prompt, trace, optimal_trace(p), p.prompt + trace + tok.eos_token):
                assert unk not in tok(text, add_special_tokens=False).input_ids, text
            ids = tok(p.prompt + trace, add_special_tokens=False).input_ids
            assert tok.decode(ids) == p.prompt + trace


def test_token_lengths_match_the_docstring(tok):
    def n(s):
        return len(tok(s, add_special_tokens=False).input_ids)

    pairs = samples(n=1500, seed=0)
    prompt_len = [n(p.prompt) for p, _ in pairs]
    trace_len = [n(t) for _, t in pairs]
    assert set(prompt_len) == {35}
    assert 35 <= statistics.mean(trace_len) <= 50
    assert min(trace_len) >= 11 and max(trace_len) <= 250
    assert {n(optimal_trace(p)) for p, _ in pairs[:50]} == {19}


def test_sft_dataset_format_and_determinism(tok):
    a = sft_dataset(CFG, 300, 11, tok)
    b = sft_dataset(CFG, 300, 11, tok)
    c = sft_dataset(CFG, 300, 12, tok)
    assert a.column_names == ["prompt", "completion"]
    assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()
    prompts = prompt_dataset(CFG, 300, 11)
    assert prompts.column_names == ["prompt", "answer"]
    assert prompts.to_dict() == prompt_dataset(CFG, 300, 11).to_dict()
    n_forced = 0
    for row, pr in zip(a, prompts):
        assert row["prompt"].startswith(pr["prompt"])
        assert row["completion"].endswith(tok.eos_token) and row["completion"].count(tok.eos_token) == 1
        if row["prompt"] != pr["prompt"]:  # forced stop: prefix + suffix moved into the prompt
            n_forced += 1
            assert row["prompt"].endswith(TERMINATION_SUFFIX)
            assert re.fullmatch(r" \d", row["completion"][: -len(tok.eos_token)])
            assert TERMINATION_SUFFIX not in row["completion"]
        else:
            assert verify_answer(row["completion"][: -len(tok.eos_token)], pr["answer"])
        # the prompt tokenizes as a prefix of prompt + completion (what SFTTrainer masks on)
        p_ids = tok(row["prompt"], add_special_tokens=False).input_ids
        full = tok(row["prompt"] + row["completion"], add_special_tokens=False).input_ids
        assert full[: len(p_ids)] == p_ids and full[-1] == tok.eos_token_id
    assert 30 < n_forced < 90
    whole = sft_dataset(SearchTaskConfig(forced_stop_in_prompt=False), 300, 11, tok)
    assert whole["prompt"] == prompts["prompt"]
    assert sum(TERMINATION_SUFFIX in c for c in whole["completion"]) == n_forced


def test_sft_trace_determinism():
    assert samples(n=50, seed=9) == samples(n=50, seed=9)
    assert samples(n=50, seed=9) != samples(n=50, seed=10)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_candidates": 11}, "num_candidates"),
        ({"num_candidates": 1}, "num_candidates"),
        ({"p_find": 1.5}, "p_find"),
        ({"p_repeat": 1.0}, "p_repeat"),
        ({"p_double_check": -0.1}, "p_double_check"),
        ({"max_double_checks": -1}, "max_double_checks"),
        ({"p_forced_stop": 2}, "p_forced_stop"),
        ({"max_attempts": 7}, "max_attempts"),
        ({"termination_suffix": "Time is up ."}, "termination_suffix"),
        ({"termination_suffix": " Answer:"}, "termination_suffix"),
        ({"termination_suffix": "Wait Answer:"}, "termination_suffix"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SearchTaskConfig(**kwargs)


def test_trace_episodes_on_model_like_outputs():
    t = "try 1: f(1)=2 no\n\nWait try 4:"  # truncated, no answer
    eps, ans = trace_episodes(t)
    assert ans is None and len(eps) == 2 and eps[-1].end == len(t)
    assert trace_episodes("") == ([], None)
    eps, ans = trace_episodes("Answer: 3</s>")
    assert eps == [] and ans.text == "Answer: 3</s>"
