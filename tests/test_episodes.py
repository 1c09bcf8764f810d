"""Episode splitting of reasoning traces (MRT, arXiv:2503.07572): exact texts, offset invariants,
the paper's marker rule against a transcription of its analysis code, and tokens mode."""

import random

import pytest

from mrl_llm.reasoning.episodes import (
    MRT_MARKERS,
    Episode,
    EpisodeSplitConfig,
    episode_prefixes,
    num_episodes,
    reasoning_span,
    split_episodes,
)

ONE = EpisodeSplitConfig(min_paragraphs_between=1)


def check_tiling(text, episodes, config=None):
    """Offsets invariants: episodes are exact, contiguous slices tiling the reasoning span."""
    start, end = reasoning_span(text, config)
    assert episodes, "expected at least one episode"
    assert episodes[0].start == start and episodes[-1].end == end
    for e in episodes:
        assert isinstance(e, Episode)
        assert text[e.start : e.end] == e.text
        assert e.start < e.end
    for a, b in zip(episodes[:-1], episodes[1:]):
        assert a.end == b.start
    assert "".join(e.text for e in episodes) == text[start:end]


THREE_ATTEMPTS = (
    "Let me compute 2+3.\n\n"
    "2+3 is 5.\n\n"
    "So the answer is 5.\n\n"
    "Wait, let me recheck the addition.\n\n"
    "2 plus 3: counting up from 2 gives 3, 4, 5.\n\n"
    "Yes, 5.\n\n"
    "Alternatively, use 3+2.\n\n"
    "3+2 is 5 as well.\n\n"
    "So 5."
)


def test_three_attempts_exact_texts():
    eps = split_episodes(THREE_ATTEMPTS)
    assert [e.text for e in eps] == [
        "Let me compute 2+3.\n\n2+3 is 5.\n\nSo the answer is 5.\n\n",
        "Wait, let me recheck the addition.\n\n2 plus 3: counting up from 2 gives 3, 4, 5.\n\nYes, 5.\n\n",
        "Alternatively, use 3+2.\n\n3+2 is 5 as well.\n\nSo 5.",
    ]
    check_tiling(THREE_ATTEMPTS, eps)
    assert num_episodes(THREE_ATTEMPTS) == 3
    assert episode_prefixes(THREE_ATTEMPTS) == [THREE_ATTEMPTS[: e.end] for e in eps]
    assert episode_prefixes(THREE_ATTEMPTS)[-1] == THREE_ATTEMPTS


@pytest.mark.parametrize(
    "text",
    [
        THREE_ATTEMPTS,
        "\n\n  " + THREE_ATTEMPTS + "\n\n \n",  # leading / trailing whitespace
        THREE_ATTEMPTS.replace("\n", "\r\n"),  # Windows newlines
        THREE_ATTEMPTS.replace("\n\n", "\n\n\n\n"),  # several blank lines
        THREE_ATTEMPTS.replace("\n\n", "\n  \t\n \n"),  # whitespace-only lines
        "one paragraph only, no markers",
        "Wait at the very start.\n\nmore\n\nmore\n\nWait, again.",
        "<think>\n" + THREE_ATTEMPTS + "\n</think>\n\nThe answer is 5.",
    ],
)
def test_offsets_invariant(text):
    for cfg in (EpisodeSplitConfig(), ONE, EpisodeSplitConfig(group_size=2)):
        check_tiling(text, split_episodes(text, cfg), cfg)


def test_blank_line_variants_give_the_same_paragraph_structure():
    def words(eps):  # episode texts with all whitespace runs collapsed
        return [" ".join(e.text.split()) for e in eps]

    base = words(split_episodes(THREE_ATTEMPTS))
    assert len(base) == 3
    for variant in (
        THREE_ATTEMPTS.replace("\n", "\r\n"),
        THREE_ATTEMPTS.replace("\n\n", "\n\n\n"),
        THREE_ATTEMPTS.replace("\n\n", "\n \n"),
        "\n\n" + THREE_ATTEMPTS + "\n\n",
    ):
        assert words(split_episodes(variant)) == base


def test_single_line_breaks_do_not_separate_paragraphs():
    text = "a\nb\nc\nWait, no.\r\nd\r\ne\r\nWait, again."
    assert num_episodes(text, ONE) == 1


def test_word_boundary():
    waiting = "Start.\n\nWaiting for the sum.\n\nDone."
    assert num_episodes(waiting, ONE) == 1
    assert num_episodes(waiting, EpisodeSplitConfig(min_paragraphs_between=1, word_boundary=False)) == 2
    for opener in (
        "Wait,",
        "Wait.",
        "Wait!",
        "Wait",
        "But wait,",
        "But wait",
        "Alternatively,",
        "But let me double-check:",
        "But hold on",
        "Is there another way to think about this?",
    ):
        text = f"Start.\n\n{opener} more text.\n\nDone."
        eps = split_episodes(text, ONE)
        assert len(eps) == 2, opener
        assert eps[1].text.startswith(opener)
    # "But waiting" is not "But wait"; a marker in the middle of a paragraph does not cut.
    assert num_episodes("Start.\n\nBut waiting is hard.\n\nDone.", ONE) == 1
    assert num_episodes("Start. Wait, really?\n\nDone.", ONE) == 1
    # Indented marker paragraph still counts (the stripped paragraph starts with the marker).
    assert num_episodes("Start.\n\n   Wait, indented.", ONE) == 2


def test_min_gap_merges_marker_paragraphs_that_come_too_soon():
    paras = ["A0", "A1", "Wait, B2", "B3", "Wait, C4", "C5", "C6", "Alternatively, D7"]
    text = "\n\n".join(paras)
    # Paper rule (gap 3): marker at 2 is too soon (2 - 0 < 3) and does not move prev_i;
    # marker at 4 cuts (4 - 0 >= 3); marker at 7 cuts (7 - 4 >= 3).
    eps = split_episodes(text)
    assert [e.text for e in eps] == [
        "A0\n\nA1\n\nWait, B2\n\nB3\n\n",
        "Wait, C4\n\nC5\n\nC6\n\n",
        "Alternatively, D7",
    ]
    firsts = [e.text.split("\n\n")[0] for e in split_episodes(text, ONE)]
    assert firsts == ["A0", "Wait, B2", "Wait, C4", "Alternatively, D7"]
    gap5 = split_episodes(text, EpisodeSplitConfig(min_paragraphs_between=5))  # only 7 - 0 >= 5
    assert [e.text for e in gap5] == [text[: text.index("Alternatively")], "Alternatively, D7"]
    assert num_episodes(text, EpisodeSplitConfig(min_paragraphs_between=8)) == 1
    # A marker in the first paragraph never cuts (episode 0 starts there anyway).
    assert num_episodes("Wait, first.\n\nsecond", ONE) == 1


def test_max_splits_and_group_size():
    text = "\n\n".join(["x"] + ["Wait, y"] * 6)  # 7 paragraphs, gap 1 -> 7 episodes
    assert num_episodes(text, ONE) == 7
    capped = split_episodes(text, EpisodeSplitConfig(min_paragraphs_between=1, max_splits=2))
    assert len(capped) == 3 and capped[-1].text == "\n\n".join(["Wait, y"] * 5)
    assert num_episodes(text, EpisodeSplitConfig(min_paragraphs_between=1, max_splits=0)) == 1
    grouped = split_episodes(text, EpisodeSplitConfig(min_paragraphs_between=1, group_size=3))
    assert [e.text.count("\n\n") + (0 if e.text.endswith("\n\n") else 1) for e in grouped] == [3, 3, 1]
    check_tiling(text, grouped)


def test_case_sensitivity():
    text = "Start.\n\nwait, lower case.\n\nALTERNATIVELY shouting."
    assert num_episodes(text, ONE) == 1
    insensitive = EpisodeSplitConfig(min_paragraphs_between=1, case_sensitive=False)
    assert [e.text for e in split_episodes(text, insensitive)] == [
        "Start.\n\n",
        "wait, lower case.\n\n",
        "ALTERNATIVELY shouting.",
    ]
    # Custom markers.
    custom = EpisodeSplitConfig(markers=("Hmm",), min_paragraphs_between=1)
    assert num_episodes("a\n\nHmm, ok.\n\nWait, no.", custom) == 2


def test_think_handling():
    text = "<think>\nFirst try.\n\nWait, second try.\n</think>\n\nWait, this is the answer: 5."
    eps = split_episodes(text, ONE)
    assert [e.text for e in eps] == ["\nFirst try.\n\n", "Wait, second try.\n"]
    assert eps[0].start == len("<think>")
    assert eps[-1].end == text.index("</think>")
    prefixes = episode_prefixes(text, ONE, include_empty=True)
    assert prefixes == ["<think>", "<think>\nFirst try.\n\n", "<think>\nFirst try.\n\nWait, second try.\n"]
    # Completions of R1-Distill models carry only the closing tag (the template opens <think>).
    closing_only = "First try.\n\nWait, second.</think>The answer."
    assert [e.text for e in split_episodes(closing_only, ONE)] == ["First try.\n\n", "Wait, second."]
    # Unfinished thinking (no closing tag): everything after <think> is reasoning.
    assert split_episodes("<think>a\n\nWait, b", ONE)[-1].end == len("<think>a\n\nWait, b")
    # strip_think=False: tags are plain text, the answer is part of the last episode.
    raw = EpisodeSplitConfig(min_paragraphs_between=1, strip_think=False)
    eps = split_episodes(text, raw)
    assert eps[0].start == 0 and eps[-1].end == len(text)
    check_tiling(text, eps, raw)
    # Custom tags.
    tags = EpisodeSplitConfig(min_paragraphs_between=1, think_tags=("[T]", "[/T]"))
    assert [e.text for e in split_episodes("[T]a\n\nWait b[/T]ans", tags)] == ["a\n\n", "Wait b"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n \r\n\t", "<think>\n\n</think>The answer is 5.", "<think></think>"])
def test_empty_reasoning_gives_no_episodes(text):
    assert split_episodes(text) == []
    assert num_episodes(text) == 0
    assert episode_prefixes(text, include_empty=True) == []


def paper_break_into_meta_steps(text, max_steps, group_size):
    """Transcription of CMU-AIRe/MRT analysis/code/break_into_meta_steps.ipynb (reference loop)."""
    meta_steps = []
    steps = text.split("\n\n")
    prev_i = 0
    num_s_steps = max_steps
    for i, step in enumerate(steps):
        if num_s_steps == 0:
            break
        if any(step.startswith(m) for m in MRT_MARKERS):
            if prev_i == i or prev_i == i - 1 or prev_i == i - 2:
                continue
            elif prev_i < i:
                meta_steps.append("\n\n".join(steps[prev_i:i]).rstrip("\n"))
                num_s_steps -= 1
            prev_i = i
    if prev_i < len(steps):
        meta_steps.append("\n\n".join(steps[prev_i:]).rstrip("\n"))
    # merge_meta_steps
    return ["\n\n".join(meta_steps[i : i + group_size]) for i in range(0, len(meta_steps), group_size)]


def test_matches_paper_code_on_random_traces():
    pool = ["Compute it.", "So x = 2.", "Waiting helps.", "Check: 2*2=4.", "Hmm."] + [
        f"{m} something." for m in MRT_MARKERS
    ]
    rng = random.Random(0)
    for trial in range(300):
        text = "\n\n".join(rng.choice(pool) for _ in range(rng.randint(1, 40)))
        max_steps = rng.choice([49, 3, 1])
        group_size = rng.choice([1, 2, 3])
        cfg = EpisodeSplitConfig(word_boundary=False, max_splits=max_steps, group_size=group_size)
        ours = split_episodes(text, cfg)
        check_tiling(text, ours, cfg)
        assert [e.text.rstrip("\n") for e in ours] == paper_break_into_meta_steps(text, max_steps, group_size), trial


# ---------------------------------------------------------------------------- tokens mode


@pytest.fixture(scope="module")
def word_tok():
    """A word-level fast tokenizer built in code: words, single whitespace chars, punctuation."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|\s|[^\w\s]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def n_tokens(tok, s):
    return len(tok(s, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("k", [1, 3, 7, 50, 10_000])
def test_tokens_mode_chunk_sizes(word_tok, k):
    text = "<think>\n" + THREE_ATTEMPTS.replace("\n\n", "\r\n\r\n", 2) + "\n</think> 5"
    cfg = EpisodeSplitConfig(mode="tokens", tokens_per_episode=k)
    eps = split_episodes(text, cfg, tokenizer=word_tok)
    check_tiling(text, eps, cfg)
    start, end = reasoning_span(text, cfg)
    total = n_tokens(word_tok, text[start:end])
    assert len(eps) == -(-total // k)
    sizes = [n_tokens(word_tok, e.text) for e in eps]
    assert all(s == k for s in sizes[:-1]) and 1 <= sizes[-1] <= k
    assert sum(sizes) == total
    assert episode_prefixes(text, cfg, word_tok) == [text[: e.end] for e in eps]


def test_tokens_mode_with_project_tokenizer_and_grouping(tiny_tok):
    text = "Wait , let me check the answer . So the answer is 2 ."
    eps = split_episodes(text, EpisodeSplitConfig(mode="tokens", tokens_per_episode=4), tokenizer=tiny_tok)
    check_tiling(text, eps)
    grouped = split_episodes(
        text, EpisodeSplitConfig(mode="tokens", tokens_per_episode=4, group_size=2, max_splits=3), tokenizer=tiny_tok
    )
    check_tiling(text, grouped)
    assert [e.end for e in grouped[:-1]] == [eps[1].end]  # cuts kept: 2nd of the first 3
    assert split_episodes("  \n ", EpisodeSplitConfig(mode="tokens"), tokenizer=None) == []


def test_tokens_mode_needs_an_offset_tokenizer():
    cfg = EpisodeSplitConfig(mode="tokens", tokens_per_episode=2)
    with pytest.raises(ValueError, match="tokenizer"):
        split_episodes("some text", cfg)

    def no_offsets(s, return_offsets_mapping=False, add_special_tokens=True):
        raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")

    with pytest.raises(ValueError, match="tokenizer"):
        split_episodes("some text", cfg, tokenizer=no_offsets)


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mode": "paragraphs"}, "mode"),
        ({"markers": ()}, "markers"),
        ({"markers": "Wait"}, "markers"),
        ({"markers": ("Wait", "")}, "markers"),
        ({"markers": (" Wait",)}, "markers"),
        ({"min_paragraphs_between": 0}, "min_paragraphs_between"),
        ({"max_splits": -1}, "max_splits"),
        ({"group_size": 0}, "group_size"),
        ({"tokens_per_episode": 0}, "tokens_per_episode"),
        ({"think_tags": ("<think>",)}, "think_tags"),
        ({"think_tags": ("<think>", "")}, "think_tags"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EpisodeSplitConfig(**kwargs)


def test_config_defaults_are_the_papers():
    cfg = EpisodeSplitConfig(markers=["Wait", "Alternatively"])
    assert cfg.markers == ("Wait", "Alternatively")
    default = EpisodeSplitConfig()
    assert default.markers == MRT_MARKERS and default.min_paragraphs_between == 3
    assert default.case_sensitive and default.mode == "markers" and default.strip_think
    # Tokens mode does not need markers.
    assert EpisodeSplitConfig(mode="tokens", markers=()).markers == ()
