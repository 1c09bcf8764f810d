"""Split a reasoning trace into *episodes*, the unit of MRT's dense progress reward.

MRT ("Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning", Qu et al. 2025,
arXiv:2503.07572) views the thinking trace of an R1-style model as a sequence of episodes
``z_0, z_1, ..., z_{m-1}`` and scores each by the *progress* it makes: the change in the chance
that the model answers correctly when it is stopped after ``z_{0:j}`` (the "meta-prover" is
conditioned on the prefix ``z_{0:j}``). This module cuts a trace into those episodes with exact
character offsets, so the prefixes can be handed to a generator and the per-episode rewards
mapped back onto tokens.

Two modes:

* ``"markers"`` (default) reproduces the paper's analysis code (Sec. 5 and App. D, R1 scaling
  curve; Sec. 8.5.1 and App. E, regret), ``analysis/code/break_into_meta_steps.ipynb`` and
  ``analysis/code/break_into_meta_steps_batched.ipynb`` in github.com/CMU-AIRe/MRT (commit
  fb565a4), function ``break_into_meta_steps``:

  1. ``steps = text.split('\\n\\n')`` (paragraphs);
  2. a paragraph *starts with* one of ``"Wait"``, ``"But wait"``, ``"Alternatively"``,
     ``"Is there another way to think about this?"``, ``"But let me double-check"``,
     ``"But hold on"`` (``str.startswith``: case-sensitive, no word boundary) -> candidate cut;
  3. the candidate at paragraph ``i`` is *skipped* when ``prev_i in (i, i-1, i-2)``, ``prev_i``
     being the first paragraph of the current episode (initially 0), i.e. a cut needs
     ``i - prev_i >= 3`` (every closed episode has >= 3 paragraphs); skipped candidates do not
     move ``prev_i``;
  4. after ``max_steps`` cuts (49 for Omni-MATH, 45 for AIME 2024, 99 in the regret notebook;
     ``analysis/instructions/r1.md``) splitting stops; the rest is the last episode;
  5. ``merge_meta_steps`` then joins every ``group_size`` consecutive episodes into one
     (5 for Omni-MATH, 3 for AIME 2024, 10 in the regret notebook).

  The text being split is the thinking part only: ``analysis/code/pass_at_k_extrapolate.py``
  generates with the R1-Distill chat template (which opens ``<think>``) and
  ``stop_token_ids=[151649]`` (``</think>``). ``analysis/code/pass_at_k_given_prefix.py``
  conditions on ``"\\n\\n".join(episodes[:j+1]) + "\\n\\n"`` (the separator stays in the
  prefix), on the empty prefix, and on the full trace.

* ``"tokens"`` cuts the trace every ``tokens_per_episode`` tokens of a HuggingFace fast
  tokenizer (an extension of this project, not in the paper's code: useful for traces with
  no markers, e.g. the tiny local LM).

Deviations from the paper's code (deliberate, configurable where it matters):

* Paragraphs are separated by one or more blank lines (lines empty or whitespace-only, with
  ``\\n``, ``\\r\\n`` or ``\\r`` line breaks), not by the literal ``"\\n\\n"``; runs of blank
  lines count as one separator, and whitespace-only paragraphs are not paragraphs. The marker
  test is applied to the paragraph with its leading whitespace stripped.
* By default a marker must end at a word boundary (``"Wait,"`` and ``"Wait."`` match,
  ``"Waiting"`` does not); ``word_boundary=False`` restores plain ``startswith``.
* Episodes are contiguous character spans that tile the reasoning text exactly (separators
  and surrounding whitespace included), instead of ``rstrip``-ed strings re-joined with
  ``"\\n\\n"``. Episode ``j`` runs from the start of its first paragraph (the start of the
  reasoning text for ``j = 0``) to the start of episode ``j+1``'s first paragraph, so it
  carries its trailing separator, like the paper's prefixes.
* The ``"\\nWait"``-style ``sample_prefixes`` helper that splits at any line (not paragraph)
  starting with a marker, seen in an unattributed file of the public code index, was not used.

Example:
    >>> trace = "Try x=1.\\n\\nSo f=2.\\n\\nCheck.\\n\\nWait, f(1)=3.\\n\\nSo x=1.</think>x=1"
    >>> [e.text for e in split_episodes(trace)]
    ['Try x=1.\\n\\nSo f=2.\\n\\nCheck.\\n\\n', 'Wait, f(1)=3.\\n\\nSo x=1.']
    >>> num_episodes(trace, EpisodeSplitConfig(min_paragraphs_between=1))
    2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

#: Episode markers of the paper's ``break_into_meta_steps`` (CMU-AIRe/MRT, analysis/code).
MRT_MARKERS: tuple[str, ...] = (
    "Wait",
    "But wait",
    "Alternatively",
    "Is there another way to think about this?",
    "But let me double-check",
    "But hold on",
)

# A paragraph separator: a line break followed by one or more whitespace-only lines.
_LB = r"(?:\r\n|\r(?!\n)|\n)"  # a lone "\r\n" is one line break, never two
_SEPARATOR = re.compile(rf"{_LB}(?:[^\S\r\n]*{_LB})+")
_NON_SPACE = re.compile(r"\S")


class Episode(NamedTuple):
    """One episode of a reasoning trace.

    Attributes:
        text: the episode's text, ``original[start:end]`` (separators included).
        start: character offset of the episode in the original text (inclusive).
        end: character offset of the episode's end in the original text (exclusive).
    """

    text: str
    start: int
    end: int


@dataclass
class EpisodeSplitConfig:
    """How a reasoning trace is cut into episodes (see the module docstring for the sources).

    Attributes:
        mode: ``"markers"`` (paragraphs starting with a marker open episodes, the paper's
            analysis code) or ``"tokens"`` (fixed token budget per episode; needs a tokenizer).
        markers: phrases that open a new episode when a paragraph starts with one of them.
            Default :data:`MRT_MARKERS`. Non-empty strings without surrounding whitespace.
        min_paragraphs_between: a marker paragraph ``i`` opens a new episode only if
            ``i - prev_i >= min_paragraphs_between``, ``prev_i`` being the index of the current
            episode's first paragraph, i.e. every closed episode has at least this many
            paragraphs (paper: 3; 1 = every marker paragraph after the first paragraph cuts).
            Markers mode only.
        max_splits: stop cutting after this many cuts; the rest of the trace is the last
            episode, so there are at most ``max_splits + 1`` episodes before grouping (paper's
            ``max_steps``: 49 Omni-MATH, 45 AIME 2024). ``None`` = no limit. Both modes.
        group_size: merge every ``group_size`` consecutive episodes into one, after
            ``max_splits`` (paper's ``group_size``: 5 Omni-MATH, 3 AIME 2024). Both modes.
        case_sensitive: match markers case-sensitively (paper: yes, ``str.startswith``).
        word_boundary: a marker ending in a word character must not be followed by one
            (``"Waiting"`` is not ``"Wait"``). The paper's code has no such check.
        tokens_per_episode: tokens per episode in tokens mode (the last one may be shorter).
        strip_think: take episodes only from the thinking part: after the first
            ``think_tags[0]`` (if present) and before the next ``think_tags[1]`` (if present).
            The text after the closing tag is the final answer, not an episode. With ``False``
            the whole text is reasoning.
        think_tags: the opening and closing thinking tags.

    Raises:
        ValueError: on an invalid field; the message names the field.

    Example:
        >>> cfg = EpisodeSplitConfig(mode="tokens", tokens_per_episode=256)
        >>> EpisodeSplitConfig(group_size=0)
        Traceback (most recent call last):
        ...
        ValueError: group_size must be >= 1, got 0
    """

    mode: Literal["markers", "tokens"] = "markers"
    markers: tuple[str, ...] = MRT_MARKERS
    min_paragraphs_between: int = 3
    max_splits: int | None = None
    group_size: int = 1
    case_sensitive: bool = True
    word_boundary: bool = True
    tokens_per_episode: int = 512
    strip_think: bool = True
    think_tags: tuple[str, str] = ("<think>", "</think>")

    def __post_init__(self) -> None:
        if self.mode not in ("markers", "tokens"):
            raise ValueError(f"mode must be 'markers' or 'tokens', got {self.mode!r}")
        if isinstance(self.markers, str) or not all(isinstance(m, str) for m in self.markers):
            raise ValueError(f"markers must be a sequence of strings, got {self.markers!r}")
        self.markers = tuple(self.markers)
        if self.mode == "markers" and not self.markers:
            raise ValueError("markers must not be empty in mode 'markers'")
        for m in self.markers:
            if not m or m != m.strip():
                raise ValueError(f"markers must be non-empty and have no surrounding whitespace, got {m!r}")
        if self.min_paragraphs_between < 1:
            raise ValueError(f"min_paragraphs_between must be >= 1, got {self.min_paragraphs_between}")
        if self.max_splits is not None and self.max_splits < 0:
            raise ValueError(f"max_splits must be >= 0 or None, got {self.max_splits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.tokens_per_episode < 1:
            raise ValueError(f"tokens_per_episode must be >= 1, got {self.tokens_per_episode}")
        tags = tuple(self.think_tags)
        if len(tags) != 2 or not all(isinstance(t, str) and t for t in tags):
            raise ValueError(f"think_tags must be two non-empty strings, got {self.think_tags!r}")
        self.think_tags = tags  # type: ignore[assignment]

    def marker_pattern(self) -> re.Pattern[str]:
        """The compiled regex that matches a marker at the start of a (stripped) paragraph."""
        alts = []
        for m in sorted(self.markers, key=len, reverse=True):
            boundary = r"(?!\w)" if self.word_boundary and re.match(r"\w", m[-1]) else ""
            alts.append(re.escape(m) + boundary)
        return re.compile("(?:" + "|".join(alts) + ")", 0 if self.case_sensitive else re.IGNORECASE)


def reasoning_span(text: str, config: EpisodeSplitConfig | None = None) -> tuple[int, int]:
    """Character span ``[start, end)`` of the reasoning part of ``text``.

    With ``config.strip_think`` the span starts right after the first opening tag (or at 0
    without one) and ends at the first closing tag after it (or at ``len(text)``); the text
    from the closing tag on is the final-answer segment. Otherwise it is ``(0, len(text))``.

    Args:
        text: a model output, possibly with ``<think> ... </think>``.
        config: split settings; default :class:`EpisodeSplitConfig`.

    Returns:
        ``(start, end)`` with ``0 <= start <= end <= len(text)``.
    """
    cfg = config or EpisodeSplitConfig()
    if not cfg.strip_think:
        return 0, len(text)
    open_tag, close_tag = cfg.think_tags
    i = text.find(open_tag)
    start = 0 if i < 0 else i + len(open_tag)
    j = text.find(close_tag, start)
    end = len(text) if j < 0 else j
    return start, end


def _paragraph_starts(text: str, start: int, end: int) -> list[int]:
    """Start offsets of the non-blank paragraphs of ``text[start:end]`` (absolute offsets)."""
    starts: list[int] = []
    pos = start
    for sep in _SEPARATOR.finditer(text, start, end):
        if text[pos : sep.start()].strip():
            starts.append(pos)
        pos = sep.end()
    if text[pos:end].strip():
        starts.append(pos)
    return starts


def _marker_cuts(text: str, start: int, end: int, cfg: EpisodeSplitConfig) -> list[int]:
    """Cut offsets (episode starts after the first) in markers mode; the paper's rule."""
    pattern = cfg.marker_pattern()
    paras = _paragraph_starts(text, start, end)
    cuts: list[int] = []
    prev_i = 0
    for i, p in enumerate(paras):
        q = _NON_SPACE.search(text, p, end).start()  # paragraphs are non-blank: never None
        if not pattern.match(text, q, end):
            continue
        if i - prev_i < cfg.min_paragraphs_between:
            continue  # too soon: the marker paragraph stays in the current episode
        cuts.append(p)
        prev_i = i
    return cuts


def _token_cuts(text: str, start: int, end: int, cfg: EpisodeSplitConfig, tokenizer) -> list[int]:
    """Cut offsets in tokens mode: the start of every ``tokens_per_episode``-th token."""
    if tokenizer is None:
        raise ValueError("tokenizer is required in mode 'tokens'")
    try:
        enc = tokenizer(text[start:end], return_offsets_mapping=True, add_special_tokens=False)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, KeyError) as e:
        raise ValueError(
            "tokenizer must support return_offsets_mapping (a HuggingFace fast tokenizer) in mode 'tokens'"
        ) from e
    cuts: list[int] = []
    last = start
    for k in range(cfg.tokens_per_episode, len(offsets), cfg.tokens_per_episode):
        c = start + int(offsets[k][0])
        if last < c < end:  # skip zero-width / non-monotonic offsets
            cuts.append(c)
            last = c
    return cuts


def split_episodes(text: str, config: EpisodeSplitConfig | None = None, tokenizer=None) -> list[Episode]:
    """Split the reasoning part of ``text`` into contiguous episodes.

    Invariants: ``text[e.start:e.end] == e.text``; ``episodes[0].start`` and
    ``episodes[-1].end`` are the bounds of :func:`reasoning_span`; ``episodes[i].end ==
    episodes[i + 1].start``; so ``"".join(e.text for e in episodes)`` is the reasoning text.
    A reasoning part that is empty or whitespace-only gives no episodes.

    Args:
        text: a model output (thinking trace, optionally with ``<think>``/``</think>`` tags).
        config: split settings; default :class:`EpisodeSplitConfig` (the paper's markers).
        tokenizer: a HuggingFace fast tokenizer (mode ``"tokens"`` only), called as
            ``tokenizer(s, return_offsets_mapping=True, add_special_tokens=False)``.

    Returns:
        The episodes, in order.

    Raises:
        ValueError: in mode ``"tokens"`` if ``tokenizer`` is None or cannot return offsets.
    """
    cfg = config or EpisodeSplitConfig()
    start, end = reasoning_span(text, cfg)
    if not text[start:end].strip():
        return []
    if cfg.mode == "markers":
        cuts = _marker_cuts(text, start, end, cfg)
    else:
        cuts = _token_cuts(text, start, end, cfg, tokenizer)
    if cfg.max_splits is not None:
        cuts = cuts[: cfg.max_splits]
    if cfg.group_size > 1:
        # Cut k separates segment k from k+1; keep only cuts that close a whole group.
        cuts = [c for k, c in enumerate(cuts) if (k + 1) % cfg.group_size == 0]
    bounds = [start, *cuts, end]
    return [Episode(text[a:b], a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def episode_prefixes(
    text: str,
    config: EpisodeSplitConfig | None = None,
    tokenizer=None,
    include_empty: bool = False,
) -> list[str]:
    """The prefixes ``text[:episodes[j].end]`` for ``j = 0..m-1`` (what MRT's meta-prover sees).

    Each prefix keeps everything before the reasoning (e.g. ``<think>``) and the separator that
    ends episode ``j``, as ``pass_at_k_given_prefix.py`` in CMU-AIRe/MRT does.

    Args:
        text: a model output.
        config: split settings; default :class:`EpisodeSplitConfig`.
        tokenizer: see :func:`split_episodes`.
        include_empty: also return the "no thinking yet" prefix ``text[:episodes[0].start]``
            first (the paper also evaluates the empty prefix). Ignored when there are no
            episodes.

    Returns:
        ``m`` prefixes (``m + 1`` with ``include_empty``); ``[]`` if there are no episodes.

    Raises:
        ValueError: as :func:`split_episodes`.
    """
    eps = split_episodes(text, config, tokenizer)
    out = [text[: e.end] for e in eps]
    if include_empty and eps:
        out.insert(0, text[: eps[0].start])
    return out


def num_episodes(text: str, config: EpisodeSplitConfig | None = None, tokenizer=None) -> int:
    """Number of episodes of ``text`` (see :func:`split_episodes`)."""
    return len(split_episodes(text, config, tokenizer))
