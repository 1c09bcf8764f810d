"""A synthetic verifiable reasoning task for MRT on CPU: find ``x`` with ``f(x) = y`` by
attempt-and-check episodes.

MRT (Qu et al. 2025, "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning",
arXiv:2503.07572) rewards each *episode* of a reasoning trace by its *progress*: the change in
the chance that the model answers correctly when it is stopped after that episode and asked for
its best guess (the "meta-prover"). Testing that on CPU needs a task whose traces are made of
clearly delimited episodes and that a ~1M-parameter LM with the tiny word-level tokenizer of
:mod:`mrl_llm.models` can learn. This module provides it.

**Problem** (``function``). ``"add"``: ``f(x) = x + a`` with ``a`` uniform in 0..9; ``"table"``:
``f`` is a uniformly random permutation of ``{0..N-1}`` shown as a lookup table. ``x`` ranges
over ``0..N-1`` (``N <= 10``, one digit token each) and the question asks for the ``x`` with
``f(x) = y``::

    find x with x+4=11                      (add)
    f:04,10,27,33,42,55,61,76               (table: f(0)=4, f(1)=0, ...)
    find f(x)=6

**Trace** (the completion). Paragraphs separated by one blank line; each paragraph but the last
is one *episode*, an attempt and its check; the last is the answer::

    try 0: 0+4=11? 4 no

    Alternatively try 7: 7+4=11? 11 yes

    But check 7: 7+4=11? 11 yes

    Answer: 7

The ``"add"`` check restates the question (``7+4=11?``, the target copied from the prompt's
``+4=11``), then the value and the verdict, so the comparison is between two nearby numbers: a
~1M-parameter LM learns it from a few minutes of SFT, where it did not learn to compare against
a target far back in the prompt (``"7+4 is 11 yes"``: 45% of its checks right after 470 SFT
steps, against 74% with the restated form). The ``"table"`` check is ``f(7)=6`` (a lookup in the
prompt, harder for a tiny LM). Later attempts open with ``"Wait"`` or ``"Alternatively"``
(chosen at random); after the answer is found, redundant ``"But check"`` episodes may follow.
The last paragraph (``"Answer: 7"``) is the *answer segment*, not an episode. The EOS is the
caller's (:func:`sft_dataset` appends the tokenizer's EOS text to the completion).

**SFT traces** (:func:`sft_trace`) imitate an imperfect searcher, so RL has something to
improve: each fresh attempt goes straight to the right ``x`` with probability ``p_find`` (else to
a uniformly random untried wrong candidate; once all wrong ones are refuted, to the right one);
with probability ``p_repeat`` a later attempt re-tries an already refuted candidate (wasted
compute); after finding the answer, each further double-check happens with probability
``p_double_check`` (at most ``max_double_checks``). A fraction ``p_forced_stop`` of traces is
cut at a uniformly random episode boundary ``k`` in ``{0, ..., m}`` (``m`` episodes) and ends
with the termination suffix and a best guess (the found answer if an earlier episode found it,
else a uniformly random not-yet-tried candidate, never a refuted one)::

    try 0: 0+4=11? 4 no

    Time is up. Answer: 5

This teaches the meta-prover behaviour: answer when forced. :func:`terminate` builds the same
forced-stop input from any episode prefix, the way MRT queries the meta-prover.

**Episodes.** :data:`SEARCH_EPISODES` splits a trace with
:func:`mrl_llm.reasoning.episodes.split_episodes` at every paragraph that starts with one of the
four attempt markers. Plain ``split_episodes`` on a whole trace merges the answer paragraph
into the last episode (it starts with no marker), and a trace forced-stopped at ``k = 0`` is
then one "episode"; :func:`trace_episodes` returns the attempt episodes and the answer segment
separately, with character offsets, and is what the task's counts use.

**Lengths** with the tiny tokenizer (``build_tiny_tokenizer``; digits, punctuation and spaces are
tokens), measured over 10,000 problems of the default trace distribution (seed 0), EOS not
counted:

========================  ==========  ==========
tokens                    add         table
========================  ==========  ==========
prompt                    12-13       35
SFT trace, mean           46.5        40.4
SFT trace, min / p95/max  11/116/232  11/104/206
optimal trace             21-22       19
========================  ==========  ==========

An attempt episode is 17-20 tokens with its separator. The SFT traces average 2.2 episodes
(20% are forced-stopped).

Example:
    >>> cfg = SearchTaskConfig()
    >>> g = torch.Generator().manual_seed(0)
    >>> [p] = sample_problems(cfg, 1, g)
    >>> trace = sft_trace(p, cfg, g)
    >>> verify_answer(trace, p.answer)  # doctest: +SKIP
    True
    >>> attempts_in(optimal_trace(p))
    1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from mrl_llm.reasoning.verifier import extract_answer
from mrl_llm.reasoning.episodes import Episode, EpisodeSplitConfig, split_episodes

#: What MRT appends to an episode prefix to force the final answer (the paper's is "Time is up.
#: Given the time I've spent and the approaches I've tried, I should stop thinking and now write
#: summarily in a few sentences the final answer."; this one fits the tiny vocabulary).
TERMINATION_SUFFIX = "Time is up. Answer:"
#: Opening of the natural answer paragraph.
ANSWER_PREFIX = "Answer:"
#: Paragraph openings of the attempt episodes: first attempt, later attempts, double-check.
FIRST_MARKER = "try"
RETRY_MARKERS = ("Wait try", "Alternatively try")
DOUBLE_CHECK_MARKER = "But check"
#: Episode split of this task's traces: one episode per attempt paragraph.
SEARCH_EPISODES = EpisodeSplitConfig(
    mode="markers",
    markers=("try", "Wait", "Alternatively", "But check"),
    min_paragraphs_between=1,
    strip_think=False,
)
PARAGRAPH_SEP = "\n\n"
MAX_CANDIDATES = 10

_CHECK_RE = re.compile(
    r"^(?:try|Wait try|Alternatively try|But check) (\d+): (?:f\((\d+)\)=|(\d+)\+\d+=\d+\? )(\d+) (yes|no)\s*$"
)
_PARA_SPLIT = re.compile(r"\n[^\S\n]*\n\s*")


@dataclass
class SearchTaskConfig:
    """The search task and its SFT trace distribution.

    Attributes:
        num_candidates: ``N``; ``x`` and ``f(x)`` range over ``0..N-1`` (2 <= N <= 10: one digit
            token each).
        p_find: chance that a fresh attempt of the SFT searcher goes straight to the right ``x``
            (its partial skill at reading the table backwards); otherwise it tries a uniformly
            random untried wrong candidate. In [0, 1]. 0 = blind search.
        p_repeat: chance that an attempt after the first re-tries an already refuted
            candidate (inefficiency RL can remove); only taken while the ``max_attempts``
            budget still leaves room to find the answer afterwards. In [0, 1).
        p_double_check: after the answer is found, chance of each further redundant
            ``"But let me double-check"`` episode (geometric, at most ``max_double_checks``).
            In [0, 1].
        max_double_checks: cap on double-check episodes (>= 0).
        p_forced_stop: fraction of SFT traces cut at a uniformly random episode boundary and
            ended with ``termination_suffix`` and a best guess. In [0, 1].
        max_attempts: cap on attempt episodes before the answer is found (>= num_candidates,
            so the searcher always finds it: repeats are skipped when the budget is tight).
        termination_suffix: the forced-stop suffix; :func:`extract_answer` must read the digit
            that follows it (checked).
        forced_stop_in_prompt: in :func:`sft_dataset`, put a forced-stop trace's cut prefix and
            suffix in the *prompt* and only the guess (``" 5 ."``) in the completion, so the
            model learns to answer when forced without learning to emit the suffix on its own
            (which would make it quit early). ``False`` keeps the whole forced trace in the
            completion.

    Raises:
        ValueError: on an invalid field; the message names the field.

    Example:
        >>> SearchTaskConfig(num_candidates=11)
        Traceback (most recent call last):
        ...
        ValueError: num_candidates must be in [2, 10], got 11
    """

    num_candidates: int = 8
    function: Literal["table", "add"] = "table"
    p_find: float = 0.5
    p_repeat: float = 0.1
    p_double_check: float = 0.25
    max_double_checks: int = 2
    p_forced_stop: float = 0.2
    max_attempts: int = 12
    termination_suffix: str = TERMINATION_SUFFIX
    forced_stop_in_prompt: bool = True

    def __post_init__(self) -> None:
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.num_candidates) or not 2 <= self.num_candidates <= MAX_CANDIDATES:
            raise ValueError(f"num_candidates must be in [2, {MAX_CANDIDATES}], got {self.num_candidates}")
        for name in ("p_find", "p_double_check", "p_forced_stop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        v = self.p_repeat
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"p_repeat must be in [0, 1), got {v!r}")
        if not is_int(self.max_double_checks) or self.max_double_checks < 0:
            raise ValueError(f"max_double_checks must be an int >= 0, got {self.max_double_checks!r}")
        if not is_int(self.max_attempts) or self.max_attempts < self.num_candidates:
            raise ValueError(
                f"max_attempts must be an int >= num_candidates ({self.num_candidates}), got {self.max_attempts!r}"
            )
        s = self.termination_suffix
        if not isinstance(s, str) or not s.strip() or s != s.strip() or "\n" in s:
            raise ValueError(
                f"termination_suffix must be a non-empty one-line string without surrounding whitespace, got {s!r}"
            )
        if extract_answer(f"{s} 3") != "3":
            raise ValueError(f"termination_suffix must end so that extract_answer reads the answer after it, got {s!r}")
        if SEARCH_EPISODES.marker_pattern().match(s):
            raise ValueError(f"termination_suffix must not start with an episode marker, got {s!r}")


class SearchProblem(NamedTuple):
    """One problem.

    Attributes:
        prompt: the problem text, ending with ``"\\n"``.
        answer: the right ``x`` as a string (the ``answer`` column / reference).
        table: ``f`` as ``(f(0), ..., f(N-1))``, a permutation of ``0..N-1``.
        target: ``y``; ``table[int(answer)] == target``.
    """

    prompt: str
    answer: str
    table: tuple[int, ...]
    target: int
    function: str = "table"


class Check(NamedTuple):
    """One well-formed attempt paragraph, ``"<marker> a . f ( x ) = v . yes|no ."``.

    Attributes:
        tried: ``a``, the candidate named after the marker.
        x: the argument of ``f`` in the check (equals ``tried`` in the task's own traces).
        value: the stated ``f(x)``.
        verdict: ``"yes"`` or ``"no"``.
        double_check: the paragraph opens with ``"But let me double-check"``.
    """

    tried: int
    x: int
    value: int
    verdict: str
    double_check: bool


class TraceEpisodes(NamedTuple):
    """A trace cut into attempt episodes and the final answer segment.

    Attributes:
        episodes: the attempt episodes (each carrying its trailing separator), tiling
            ``trace[:answer.start]`` (the whole trace if there is no answer segment).
        answer: the final paragraph when it is an answer (``"So the answer is ..."`` or the
            termination suffix ...), with its offsets; None otherwise (e.g. truncated output).
    """

    episodes: list[Episode]
    answer: Episode | None


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator).item())


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator).item())


def _choice(items: list[int], generator: torch.Generator) -> int:
    return items[_randint(len(items), generator)]


def render_prompt(table: tuple[int, ...] | list[int], target: int, function: str = "table") -> str:
    """The problem text for ``f(i) = table[i]`` and target ``y``: the lookup table itself
    (``function="table"``) or ``x+a`` with ``a = table[0]`` (``function="add"``)."""
    if function == "add":
        return f"find x with x+{table[0]}={target}\n"
    pairs = ",".join(f"{i}{v}" for i, v in enumerate(table))
    return f"f:{pairs}\nfind f(x)={target}\n"


def sample_problems(config: SearchTaskConfig, n: int, generator: torch.Generator) -> list[SearchProblem]:
    """``n`` independent problems: a uniform random permutation ``f`` and a uniform target.

    Args:
        config: the task config (``num_candidates``).
        n: number of problems (>= 0).
        generator: the source of randomness (advanced in place).

    Returns:
        The problems, in order.

    Raises:
        ValueError: if ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = []
    for _ in range(n):
        if config.function == "add":
            a = _randint(10, generator)
            table = tuple(a + i for i in range(config.num_candidates))
        else:
            table = tuple(int(v) for v in torch.randperm(config.num_candidates, generator=generator))
        x = _randint(config.num_candidates, generator)
        out.append(
            SearchProblem(render_prompt(table, table[x], config.function), str(x), table, table[x], config.function)
        )
    return out


def _paragraph(marker: str, a: int, problem: SearchProblem) -> str:
    v = problem.table[a]
    # "a+c=y? v": the question restates the target (copied from the prompt's "+c=y"), then the
    # value and the verdict compare two nearby numbers
    check = f"{a}+{problem.table[0]}={problem.target}? " if problem.function == "add" else f"f({a})="
    return f"{marker} {a}: {check}{v} {'yes' if v == problem.target else 'no'}"


def _answer_paragraph(x: int | str) -> str:
    return f"{ANSWER_PREFIX} {x}"


def terminate(prefix: str, suffix: str = TERMINATION_SUFFIX) -> str:
    """The forced-stop input for the meta-prover: ``prefix`` then ``suffix`` as a new paragraph.

    ``prefix`` is a trace cut after some episodes (as :func:`trace_episodes` /
    ``episode_prefixes`` give it, usually ending with the blank-line separator, or empty); a
    missing separator is added. The model's continuation (``" 5 ."``) is the forced answer.
    """
    if prefix.strip() and not re.search(r"\n[^\S\n]*\n\s*$", prefix):
        prefix = prefix.rstrip() + PARAGRAPH_SEP
    elif not prefix.strip():
        prefix = ""
    return prefix + suffix


def _sample_trace(
    problem: SearchProblem, config: SearchTaskConfig, generator: torch.Generator
) -> tuple[str, int | None]:
    """An SFT trace and, when forced-stopped, the offset just after the suffix (else None)."""
    n = config.num_candidates
    answer = int(problem.answer)
    paragraphs: list[str] = []
    found_at: int | None = None  # number of episodes up to and including the first "yes"
    tried_wrong: list[int] = []
    untried_wrong = [a for a in range(n) if a != answer]
    while found_at is None:
        t = len(paragraphs)
        marker = FIRST_MARKER if t == 0 else RETRY_MARKERS[_randint(2, generator)]
        # a repeat must leave room for the worst case afterwards: every untried wrong, then the answer
        room = t + 1 + len(untried_wrong) + 1 <= config.max_attempts
        if t > 0 and tried_wrong and room and _rand(generator) < config.p_repeat:
            a = _choice(tried_wrong, generator)
        elif not untried_wrong or _rand(generator) < config.p_find:
            a = answer
        else:
            a = _choice(untried_wrong, generator)
            untried_wrong.remove(a)
            tried_wrong.append(a)
        paragraphs.append(_paragraph(marker, a, problem))
        if a == answer:
            found_at = len(paragraphs)
    for _ in range(config.max_double_checks):
        if _rand(generator) >= config.p_double_check:
            break
        paragraphs.append(_paragraph(DOUBLE_CHECK_MARKER, answer, problem))
    if config.p_forced_stop > 0 and _rand(generator) < config.p_forced_stop:
        k = _randint(len(paragraphs) + 1, generator)
        if k >= found_at:
            guess = answer
        else:
            tried = {int(_CHECK_RE.match(p).group(1)) for p in paragraphs[:k]}
            guess = _choice([a for a in range(n) if a not in tried], generator)
        prefix = "".join(p + PARAGRAPH_SEP for p in paragraphs[:k])
        head = terminate(prefix, config.termination_suffix)
        return f"{head} {guess}", len(head)
    return PARAGRAPH_SEP.join([*paragraphs, _answer_paragraph(answer)]), None


def sft_trace(problem: SearchProblem, config: SearchTaskConfig, generator: torch.Generator) -> str:
    """A sampled SFT trace for ``problem`` (see the module docstring for the distribution).

    Every check in it is true to ``problem.table``; it ends with ``"So the answer is x ."`` (the
    right ``x``) or, forced-stopped, with ``config.termination_suffix`` and a best guess that no
    earlier episode refuted. No EOS text.

    Args:
        problem: the problem.
        config: the trace distribution.
        generator: the source of randomness (advanced in place).
    """
    return _sample_trace(problem, config, generator)[0]


def optimal_trace(problem: SearchProblem) -> str:
    """The one-episode trace that tries the right ``x`` first, then answers."""
    attempt = _paragraph(FIRST_MARKER, int(problem.answer), problem)
    return PARAGRAPH_SEP.join([attempt, _answer_paragraph(problem.answer)])


def _is_answer_paragraph(text: str, suffix: str) -> bool:
    s = text.lstrip()
    return s.startswith(ANSWER_PREFIX) or s.startswith(suffix)


def trace_episodes(trace: str, suffix: str = TERMINATION_SUFFIX) -> TraceEpisodes:
    """Split ``trace`` into attempt episodes (:data:`SEARCH_EPISODES`) and the answer segment.

    The answer segment is the last paragraph when it starts with ``"So the answer is"`` or
    ``suffix`` (it runs to the end of ``trace``); everything before it is split by
    :func:`~mrl_llm.reasoning.episodes.split_episodes`, so the episodes tile ``trace[:answer.start]``
    and each carries its trailing separator (``trace[:episodes[j].end]`` is MRT's prefix after
    episode ``j``). For the task's own traces the episodes are exactly the attempt paragraphs.

    Args:
        trace: a completion (no prompt), with or without trailing EOS text.
        suffix: the termination suffix that also opens an answer segment.

    Returns:
        :class:`TraceEpisodes`.
    """
    starts = [0] + [m.end() for m in _PARA_SPLIT.finditer(trace)]
    # paragraphs start at 0 or after a separator (leading whitespace belongs to the first)
    starts = [s for s in starts if s < len(trace) and trace[s:].strip()]
    answer = None
    if starts and _is_answer_paragraph(trace[starts[-1] :], suffix):
        a = starts[-1]
        answer = Episode(trace[a:], a, len(trace))
        head = trace[:a]
    else:
        head = trace
    return TraceEpisodes(split_episodes(head, SEARCH_EPISODES) if head.strip() else [], answer)


def attempts_in(trace: str, suffix: str = TERMINATION_SUFFIX) -> int:
    """Number of attempt episodes of ``trace`` (double-checks included; the answer segment not)."""
    return len(trace_episodes(trace, suffix).episodes)


def parse_checks(trace: str) -> list[Check]:
    """The well-formed attempt paragraphs of ``trace``, in order (malformed ones are skipped)."""
    out = []
    for para in _PARA_SPLIT.split(trace):
        m = _CHECK_RE.match(para.strip())
        if m:
            a, fx, addx, v, verdict = m.groups()
            out.append(
                Check(
                    int(a),
                    int(fx if fx is not None else addx),
                    int(v),
                    verdict,
                    para.strip().startswith(DOUBLE_CHECK_MARKER),
                )
            )
    return out


def sft_dataset(config: SearchTaskConfig, n: int, seed: int, tokenizer):
    """An SFT set for ``trl.SFTTrainer`` in prompt-completion form (loss on the completion only).

    Columns ``"prompt"`` (the problem text) and ``"completion"`` (an :func:`sft_trace` followed
    by ``tokenizer.eos_token``). With ``config.forced_stop_in_prompt``, a forced-stop trace's
    cut prefix and termination suffix are appended to the prompt and the completion is only the
    guess, e.g. ``" 5 .</s>"``. The problems are those of ``sample_problems(config, n,
    Generator().manual_seed(seed))``, so :func:`prompt_dataset` with the same seed has the same
    problems. Same seed, same data.

    Args:
        config: task and trace distribution.
        n: number of examples.
        seed: random seed.
        tokenizer: the tokenizer the model trains with (for its EOS text).

    Returns:
        ``datasets.Dataset`` with string columns ``prompt`` and ``completion``.

    Raises:
        ValueError: if the tokenizer has no EOS token.
    """
    import datasets

    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError("tokenizer must have an eos_token")
    g = torch.Generator().manual_seed(seed)
    problems = sample_problems(config, n, g)
    prompts, completions = [], []
    for p in problems:
        trace, cut = _sample_trace(p, config, g)
        if cut is not None and config.forced_stop_in_prompt:
            prompts.append(p.prompt + trace[:cut])
            completions.append(trace[cut:] + eos)
        else:
            prompts.append(p.prompt)
            completions.append(trace + eos)
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})


def prompt_dataset(config: SearchTaskConfig, n: int, seed: int):
    """Problems for RL (e.g. ``trl.GRPOTrainer``, which forwards ``answer`` to reward functions).

    Returns:
        ``datasets.Dataset`` with string columns ``prompt`` and ``answer``; the problems of
        ``sample_problems(config, n, Generator().manual_seed(seed))``.
    """
    import datasets

    problems = sample_problems(config, n, torch.Generator().manual_seed(seed))
    return datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})


__all__ = [
    "ANSWER_PREFIX",
    "Check",
    "SEARCH_EPISODES",
    "SearchProblem",
    "SearchTaskConfig",
    "TERMINATION_SUFFIX",
    "TraceEpisodes",
    "attempts_in",
    "optimal_trace",
    "parse_checks",
    "prompt_dataset",
    "render_prompt",
    "sample_problems",
    "sft_dataset",
    "sft_trace",
    "terminate",
]
