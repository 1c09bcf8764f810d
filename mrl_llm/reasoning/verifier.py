"""Final-answer extraction and verification for math reasoning tasks (the ``answer_correct`` outcome
reward of MRT, :mod:`mrl_llm.rewards.math`, is one call to :func:`verify_answer`).

Extraction (:func:`extract_answer`) is plain string processing in linear time, so it is fast and
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
# When no rule of extract_answer finds an answer, math-verify's own extraction reads only this
# many final characters of the completion (see _math_verify_tail).
MATH_VERIFY_TAIL_CHARS = 2000


def _read_braced(text: str, start: int) -> str | None:
    """Content of the brace group that opens at ``text[start] == "{"``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are literal and not counted. O(length of the scanned text);
    :func:`extract_answer` does not call it once per box (that was quadratic on many unclosed
    boxes) but finds every box's group in one pass (:func:`_box_closes`). Kept as the
    definition the one-pass scan must agree with (``tests/test_math_verify.py`` compares them).
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


# The tokens that matter to brace matching: an escape (a backslash and the character after it,
# which is then literal) or a brace. Any other character is skipped, as _read_braced skips it.
_BRACE_TOKEN_RE = re.compile(r"\\[\s\S]|[{}]")
# The text a brace-less box takes: up to the next "$" or newline.
_TO_STOP_RE = re.compile(r"[^$\n]*")


def _box_closes(text: str, opens: list[int]) -> dict[int, int]:
    """Where the brace group opening at each position in ``opens`` closes, in one O(len(text)) pass.

    Equals ``_read_braced``: for ``j`` in ``opens`` (each ``text[j] == "{"``, sorted), the result
    maps ``j`` to the index of its closing ``}`` (``_read_braced(text, j) == text[j + 1 : close]``);
    unclosed groups are absent. One left-to-right scan from ``opens[0]`` with a stack of open
    braces gives the same matching as a separate scan from each ``j``, because the scan from
    any earlier position reaches ``j`` itself (it can only jump over ``j`` from an escaping
    backslash at ``j - 1``, and a box's ``{`` follows ``\\boxed``/``\\fbox`` or a space/tab).

    Args:
        text (str): the completion.
        opens (list[int]): sorted positions of the ``{`` that open a box's group.

    Returns:
        dict[int, int]: open position -> close position, for the groups that close.
    """
    if not opens:
        return {}
    wanted = set(opens)
    stack: list[int] = []
    closes: dict[int, int] = {}
    for m in _BRACE_TOKEN_RE.finditer(text, opens[0]):
        c = text[m.start()]
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            j = stack.pop()
            if j in wanted:
                closes[j] = m.start()
    return closes


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

    Time is linear in ``len(completion)`` (100 KB: well under 0.1 s): the groups of all boxes
    are matched in one left-to-right pass with a stack of open braces (:func:`_box_closes`),
    not by a scan from each box to the end (which took ~47 s on ``"\\boxed{" * 10000``).

    Args:
        completion (str): the model's response (any length).

    Returns:
        str | None: the answer text, stripped; None when no rule finds a non-empty answer
        (also when ``completion`` is not a string).
    """
    if not isinstance(completion, str) or not completion:
        return None
    n = len(completion)
    starts = []  # where each box's argument starts: after "\boxed" and spaces / tabs
    for m in _BOX_RE.finditer(completion):
        i = m.end()
        while i < n and completion[i] in " \t":
            i += 1
        starts.append(i)
    closes = _box_closes(completion, [i for i in starts if i < n and completion[i] == "{"])
    for i in reversed(starts):
        if i < n and completion[i] == "{":
            close = closes.get(i)
            content = None if close is None else completion[i + 1 : close]
        else:  # "\boxed 18": TeX boxes the next token; take up to "$" / end of line
            content = _TO_STOP_RE.match(completion, i).group().strip().rstrip(".")
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


def _math_verify_tail(completion: str) -> str:
    """The end of ``completion`` that math-verify's own extraction reads (the fallback of
    :func:`verify_answer` when :func:`extract_answer` finds nothing).

    At most :data:`MATH_VERIFY_TAIL_CHARS` characters, starting at the first line start inside
    that window when there is one (so an inline ``$...$`` is not cut in half; the whole
    completion when it is short enough). Why a tail: math-verify's extraction regexes are
    quadratic on adversarial text (``\\( a+`` repeated to 40 KB takes ~10 s in ``parse``, ``\\[ 1 ``
    ~7 s, ``"1 "`` ~4 s; 2 KB of any of them takes < 0.1 s) and it tries to parse every match,
    rightmost first, until one succeeds; a final answer without ``\\boxed``, ``####`` or
    "answer is" is stated at the end of a response, where its heuristics (last expression,
    "final answer ... is") look anyway. The price: such a phrase more than
    :data:`MATH_VERIFY_TAIL_CHARS` characters before the end is no longer seen.
    """
    if len(completion) <= MATH_VERIFY_TAIL_CHARS:
        return completion
    start = len(completion) - MATH_VERIFY_TAIL_CHARS
    line = completion.find("\n", start - 1, len(completion) - 1)  # the window's first line start
    return completion[line + 1 :] if line >= 0 else completion[start:]


def _equation_links(expr) -> list:
    """The equations of a chain ``a = b = c`` in written order (math-verify parses it as an
    ``And`` of ``Eq(a, b)``, ``Eq(b, c)``); ``[expr]`` for a single equation."""
    args = getattr(expr, "_unsorted_args", None)
    if args is None:
        return [expr]
    return [link for arg in args for link in _equation_links(arg)]


def _is_number(expr) -> bool:
    """A SymPy expression without unknowns (``2 + 2``, ``\\pi``, ``\\sqrt{2}``; not ``x``, not ``f(2)``)."""
    return bool(getattr(expr, "is_number", False))


def _counts_by_rhs(expr, timeout: int | None) -> bool:
    r"""Whether a parsed equation (chain) may stand for its last right-hand side.

    math-verify compares a predicted equation with a non-equation gold by the predicted
    chain's last right-hand side, whatever the equation says, so ``\boxed{4=3}`` and
    ``\boxed{2+2=5=3}`` matched ``3``. Here it counts only when

    * it starts with an assignment target: a left side made only of symbols (math-verify's own
      ``is_expr_of_only_symbols``: ``x``, ``y_1``, ``\theta``, ``AB``, ``a+b``, ``f(x)``, ``|x|``) or
      a function application (``f(2)``, ``P(A)``), or with a number (``1+2=3``); and
    * every link between two numbers holds (math-verify's comparison of its two sides, within
      :data:`TIMEOUT_S` seconds for the whole chain on the main thread; a timeout counts as false):
      ``x = 1+2 = 3`` and ``1+2 = 3`` count as ``3``; ``4=3``, ``2+2=5=3``, ``x=5=3`` do not.

    An equation with unknowns next to numbers on the left (``x+1=3``, ``2x=6``, ``x^2=9``)
    is an equation to solve, not a value: it does not count by its right-hand side either.
    """
    from latex2sympy2_extended import is_expr_of_only_symbols
    from math_verify.grader import sympy_expr_eq
    from math_verify.utils import timeout as time_limit
    from sympy.core.function import AppliedUndef

    _, timeout_exc = _math_verify()
    links = _equation_links(expr)
    head = links[0].lhs
    if not (is_expr_of_only_symbols(head) or isinstance(head, AppliedUndef) or _is_number(head)):
        return False

    def links_hold() -> bool:  # one time limit for the whole chain, not one per link
        for link in links:
            if _is_number(link.lhs) and _is_number(link.rhs):
                try:  # math-verify's defaults: 6 decimals, 15 digits of precision
                    if not sympy_expr_eq(link.lhs, link.rhs, float_rounding=6, numeric_precision=15):
                        return False
                except Exception:  # noqa: BLE001 - SymPy failing on odd input: not shown to hold
                    return False
        return True

    try:
        return time_limit(timeout_seconds=timeout)(links_hold)()
    except timeout_exc:
        return False


def _without_false_equations(gold: list, pred: list, timeout: int | None) -> list:
    """``pred`` without the parsed equations that must not count by their right-hand side
    (:func:`_counts_by_rhs`); unchanged when the gold is itself an equation (then math-verify
    compares the two equations whole)."""
    from math_verify.grader import is_equation

    if any(is_equation(g) for g in gold if not isinstance(g, str)):
        return pred
    return [p for p in pred if isinstance(p, str) or not is_equation(p) or _counts_by_rhs(p, timeout)]


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
    extraction runs on the end of the completion (its "final answer is" / last-expression
    heuristics, on the last :data:`MATH_VERIFY_TAIL_CHARS` characters). The reference is a
    bare answer (``"18"``, ``"\frac{1}{2}"``), optionally wrapped in ``$...$`` or ``\boxed{}``;
    ints and floats are accepted (``27.0`` -> ``27``).
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

    Equations: a predicted ``x=3`` matches ``3`` (math-verify takes the right-hand side of an
    assignment), but an equation that is false or is not an assignment does not stand for its
    right-hand side: ``4=3``, ``2+2=5=3``, ``x=5=3``, ``x+1=3``, ``2x=3`` never match ``3``;
    ``f(2)=3``, ``a+b=3``, ``x=1+2=3`` and ``1+2=3`` do (rules in :func:`_counts_by_rhs`). A
    gold equation is compared with a predicted one whole, as math-verify does.

    Safety: never raises on malformed input (returns False), answers longer than
    :data:`MAX_ANSWER_CHARS` are rejected unparsed, and parsing / comparison run under
    math-verify's :data:`TIMEOUT_S`-second ``signal.alarm`` timeout on the main thread. Off
    the main thread signals are unavailable, so the timeout is disabled there (math-verify
    would otherwise raise); a pathological expression can then take long. Length alone
    does not make it slow: extraction is linear, and when nothing is extracted math-verify
    reads only the last :data:`MATH_VERIFY_TAIL_CHARS` characters (:func:`_math_verify_tail`),
    so any completion up to 100 KB is verified in well under 1 s.

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
            pred = _parse(_math_verify_tail(completion), timeout)
        pred = _without_false_equations(gold, pred, timeout)
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


__all__ = ["extract_answer", "verify_answer", "MAX_ANSWER_CHARS", "MATH_VERIFY_TAIL_CHARS", "TIMEOUT_S"]
