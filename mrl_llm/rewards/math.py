"""Final-answer extraction and verification for math reasoning tasks, and the
``answer_correct`` outcome reward of MRT (Qu et al. 2025, arXiv 2503.07572, §4: the binary
outcome reward ``r(x, z) = 1[z is correct]`` that the dense progress bonus is added to).

Extraction (:func:`extract_answer`) is plain string processing, so it is fast and
predictable; equivalence (:func:`verify_answer`) is delegated to HuggingFace's
`math-verify <https://github.com/huggingface/Math-Verify>`_ (``parse`` + ``verify``), which
turns LaTeX / plain expressions into SymPy objects and compares them numerically and
symbolically.

Example:
    >>> extract_answer(r"so the total is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> verify_answer(r"... the answer is $\\boxed{0.5}$", r"\\frac12")
    True
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from mrl_llm.rewards import register

# Matches ``\boxed`` and ``\fbox`` but not e.g. ``\boxedfoo``.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# "Answer:", "answer is", "answer is:" (case-insensitive), as in "The final answer is $3$."
_ANSWER_RE = re.compile(r"answer\s*(?::|\bis\b\s*:?)", re.IGNORECASE)
# Answers longer than this are not handed to SymPy (a real final answer is short; a long
# string is a runaway generation and parsing it is slow, or hangs without a timeout).
MAX_ANSWER_CHARS = 1000
# A plain integer ("18", "-3", "007"): compared as int without math-verify (same verdict, ~50x faster).
_INT_RE = re.compile(r"[+-]?\d+")
# Seconds math-verify may spend parsing / comparing one expression (signal-based, so it
# only applies on the main thread; see verify_answer).
TIMEOUT_S = 5


def _read_braced(text: str, start: int) -> str | None:
    """Content of the brace group that opens at ``text[start] == "{"``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are literal and not counted.
    """
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _clean(ans: str) -> str:
    """Strip whitespace, markdown bold, a trailing period, enclosing math delimiters and a
    lone leading currency ``$``."""
    for _ in range(3):  # "**$18$.**" -> "$18$." -> "$18$" -> "18"
        ans = ans.strip().strip("*").strip().rstrip(".").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(ans) >= len(left) + len(right) and ans.startswith(left) and ans.endswith(right):
                ans = ans[len(left) : len(ans) - len(right)]
                break
    if ans.startswith("$") and ans.count("$") == 1:  # a currency sign: "$1,234"
        ans = ans[1:].strip()
    return ans


def _first_line(text: str) -> str:
    """The first non-empty line of ``text`` ("" if there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def extract_answer(completion: str) -> str | None:
    r"""The final answer stated in a model's full response.

    Rules, in order (the first that finds something wins):

    1. the content of the **last** well-formed ``\boxed{...}`` / ``\fbox{...}`` (brace-
       balanced, escaped ``\{ \}`` ignored; an unclosed, e.g. truncated, box is skipped and
       the previous one is used), or of ``\boxed 18`` without braces (up to the next ``$``
       or line end);
    2. the text after the last ``####`` (GSM8K style), to the end of that line;
    3. the text after the last ``Answer:`` / ``answer is`` (case-insensitive), to the end
       of that line.

    Rules 2 and 3 strip markdown ``**``, a trailing period, enclosing ``$...$``,
    ``\(...\)``, ``\[...\]`` and a lone currency ``$`` (``#### $1,234`` -> ``1,234``).

    Args:
        completion (str): the model's response (any length).

    Returns:
        str | None: the answer text, stripped; None when no rule finds a non-empty answer
        (also when ``completion`` is not a string).
    """
    if not isinstance(completion, str) or not completion:
        return None
    for m in reversed(list(_BOX_RE.finditer(completion))):
        i = m.end()
        while i < len(completion) and completion[i] in " \t":
            i += 1
        if i < len(completion) and completion[i] == "{":
            content = _read_braced(completion, i)
        else:  # "\boxed 18": TeX boxes the next token; take up to "$" / end of line
            content = re.split(r"[$\n]", completion[i:], maxsplit=1)[0]
            content = content.strip().rstrip(".")
        if content is not None and content.strip():
            return content.strip()
    pos = completion.rfind("####")
    if pos >= 0:
        ans = _clean(_first_line(completion[pos + 4 :]))
        if ans:
            return ans
    matches = list(_ANSWER_RE.finditer(completion))
    if matches:
        ans = _clean(_first_line(completion[matches[-1].end() :]))
        if ans:
            return ans
    return None


def _math_verify():
    """Import math-verify lazily (it pulls in SymPy and an ANTLR parser, ~0.5 s)."""
    import math_verify
    from math_verify.errors import TimeoutException

    return math_verify, TimeoutException


def _timeout() -> int | None:
    """math-verify's timeouts use ``signal.alarm``, which raises ValueError off the main
    thread; there they are switched off (None)."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str, timeout: int | None) -> list:
    mv, _ = _math_verify()
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    return mv.parse(text, extraction_config=config, parsing_timeout=timeout)


def _boxed(ans: str) -> str:
    """Wrap a bare answer so that math-verify's LaTeX extraction takes all of it."""
    return "\\boxed{" + ans + "}"


def _reference_answer(reference: str) -> str:
    """The bare answer of a reference: the content of its ``\\boxed{}`` if any, cleaned."""
    inner = extract_answer(reference) if _BOX_RE.search(reference) else None
    return _clean(inner if inner is not None else reference)


@lru_cache(maxsize=4096)
def _parse_reference(reference: str, timeout: int | None) -> tuple:
    ans = _reference_answer(reference)
    return tuple(_parse(_boxed(ans), timeout)) if ans else ()


def _render_reference(reference) -> str | None:
    if isinstance(reference, bool) or reference is None:
        return None
    if isinstance(reference, float) and reference.is_integer():
        return str(int(reference))
    if isinstance(reference, (int, float)):
        return str(reference)
    if isinstance(reference, str):
        return reference.strip() or None
    return None


def _plain_int(text: str | None) -> int | None:
    """``int(text)`` when ``text`` is a plain integer (optional sign, digits only), else None."""
    return int(text) if text is not None and len(text) <= MAX_ANSWER_CHARS and _INT_RE.fullmatch(text) else None


def verify_answer(completion: str, reference: str) -> bool:
    r"""Whether a model's response ends with an answer equivalent to ``reference``.

    The prediction is :func:`extract_answer` of ``completion``, wrapped as
    ``\boxed{...}`` and parsed by math-verify; when nothing is extracted, math-verify's own
    extraction runs on the whole completion (its "final answer is" / last-expression
    heuristics). The reference is a bare answer (``"18"``, ``"\frac{1}{2}"``), optionally
    wrapped in ``$...$`` or ``\boxed{}``; ints and floats are accepted (``27.0`` -> ``27``).
    Equivalence is ``math_verify.verify(gold=reference, target=prediction)`` with its
    defaults (numbers compared after rounding to 6 decimals, symbolic simplification,
    strict variables).

    Treated as equivalent (checked in ``tests/test_math_verify.py``): ``\frac{1}{2}``,
    ``0.5``, ``1/2``; ``\dfrac{3}{4}`` and ``\frac34``; ``18``, ``18.0``, ``\boxed{18}``,
    ``18 cm``, ``18\text{ cm}`` (math-verify strips known unit words), ``18^\circ``,
    ``\$18``; ``1,000`` and ``1000``; ``(1, 2]`` and ``(1,2]``; ``x=3`` and ``3`` (the
    right-hand side of an assignment); ``2\sqrt{2}`` and ``\sqrt{8}``; ``\text{(C)}`` and
    ``C``. Not equivalent: ``1/3`` vs ``0.33`` (only 6-decimal agreement counts), ``5`` vs
    ``6``, intervals with different brackets (``(1,2)``, ``(1,2]``, ``[1,2]``). Known
    limits: an answer followed by free text ("Answer: 18 apples, because...") is parsed as
    one product and fails; ``10\%`` equals both ``10`` and ``0.1`` (math-verify's choice).

    Fast path: when both the extracted answer and the reference are plain integers (optional
    sign, digits: ``"18"``, ``"-3"``, ``"007"``) they are compared as ints without math-verify,
    which gives the same verdict (``tests/test_math_verify.py`` checks both paths agree) at a
    small fraction of the cost; reward and meta-prover calls on integer-answer tasks take it.

    Safety: never raises on malformed input (returns False), answers longer than
    :data:`MAX_ANSWER_CHARS` are rejected unparsed, and parsing / comparison run under
    math-verify's :data:`TIMEOUT_S`-second ``signal.alarm`` timeout on the main thread. Off
    the main thread signals are unavailable, so the timeout is disabled there (math-verify
    would otherwise raise); a pathological expression can then take long.

    Args:
        completion (str): the model's full response.
        reference (str | int | float): the ground-truth answer.

    Returns:
        bool: True iff the extracted answer is equivalent to the reference.
    """
    try:
        gold_text = _render_reference(reference)
        if not isinstance(completion, str) or gold_text is None:
            return False
        ans = extract_answer(completion)
        pred_int, gold_int = _plain_int(ans), _plain_int(_reference_answer(gold_text))
        if pred_int is not None and gold_int is not None:
            return pred_int == gold_int
        return _verify_with_math_verify(completion, ans, gold_text)
    except Exception:  # noqa: BLE001 - a reward must not crash training on odd text
        return False


def _verify_with_math_verify(completion: str, ans: str | None, gold_text: str) -> bool:
    """math-verify's verdict on the extracted answer ``ans`` (None: parse the whole completion)."""
    try:
        timeout = _timeout()
        gold = list(_parse_reference(gold_text, timeout))
        if not gold:
            return False
        if ans is not None:
            if len(ans) > MAX_ANSWER_CHARS:
                return False
            pred = _parse(_boxed(ans), timeout)
        else:
            pred = _parse(completion, timeout)
        if not pred:
            return False
        mv, _ = _math_verify()
        return bool(mv.verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a reward must not crash training on odd text
        return False
    except BaseException as e:  # math-verify's TimeoutException derives from BaseException
        _, timeout_exc = _math_verify()
        if isinstance(e, timeout_exc):
            return False
        raise


def _completion_text(completion) -> str:
    """The text of a completion: a string, or the content of the last chat message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            return content if isinstance(content, str) else ""
    return ""


@register("answer_correct")
def answer_correct(prompts, completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's final answer matches the dataset's ``answer``, else 0.0.

    The outcome reward of MRT (arXiv 2503.07572). ``answer`` is the per-example dataset
    column (one reference per completion, as TRL forwards it).

    Args:
        prompts: unused.
        completions (list[str] | list[list[dict]]): responses, as strings or in chat format
            (``[{"role": "assistant", "content": ...}]``; the last message is scored).
        answer (list[str]): reference answers, same length as ``completions``.

    Returns:
        list[float]: 1.0 / 0.0 per completion.

    Raises:
        KeyError: if the dataset field ``answer`` is not passed.
        ValueError: if ``answer`` and ``completions`` differ in length.
    """
    if answer is None:
        raise KeyError("answer_correct reward needs the dataset field 'answer' (reference answers)")
    if len(answer) != len(completions):
        raise ValueError(f"answer_correct: {len(completions)} completions but {len(answer)} answers")
    return [float(verify_answer(_completion_text(c), a)) for c, a in zip(completions, answer)]


__all__ = ["extract_answer", "verify_answer", "answer_correct", "MAX_ANSWER_CHARS", "TIMEOUT_S"]
