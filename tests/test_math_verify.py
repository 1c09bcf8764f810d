"""Answer extraction and math-verify equivalence (mrl_llm.reasoning.verifier), and the
registered ``answer_correct`` reward."""

from __future__ import annotations

import threading

import pytest

from mrl_llm.reasoning.verifier import MAX_ANSWER_CHARS, extract_answer, verify_answer
from mrl_llm.rewards import get_reward
from mrl_llm.rewards.math import answer_correct


# ---------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "completion, expected",
    [
        (r"so $x = \boxed{18}$.", "18"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"first \boxed{1}, wait, actually \boxed{2}", "2"),  # last box wins
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are not counted
        (r"\boxed {7}", "7"),
        (r"so it is $\boxed 5$", "5"),  # \boxed without braces
        (r"\fbox{9}", "9"),
        (r"\boxed{1} and then \boxed{2", "1"),  # an unclosed (truncated) box is skipped
        ("Janet makes 9 * 2 = 18.\n#### 18", "18"),
        ("#### 5\nno wait\n#### 1,234.", "1,234"),  # last ####, period stripped
        ("#### $1,234", "1,234"),  # currency sign
        ("Answer: 42", "42"),
        ("Answer:\n$7$", "7"),
        (r"The final answer is $\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The answer is: **42**.", "42"),
        ("answer is 3. Hmm, no. The answer is 4.", "4"),
        (r"#### 3 beats Answer: 4 and \boxed{5} beats both", "5"),
        ("#### 3\nAnswer: 4", "3"),  # #### before Answer:
        ("I have no idea.", None),
        ("", None),
        (r"\boxed{}", None),
        ("Answer:", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("bad", [None, 18, ["\\boxed{1}"], b"\\boxed{1}"])
def test_extract_answer_non_string_is_none(bad):
    assert extract_answer(bad) is None


# ---------------------------------------------------------------- equivalence
EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"),
    (r"\frac{1}{2}", "1/2"),
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac{3}{4}", r"\frac34"),
    ("18", "18.0"),
    ("18", r"\boxed{18}"),
    ("18", "18 cm"),
    ("18", r"18\text{ cm}"),
    ("18", r"18^\circ"),
    ("1000", "1,000"),
    ("(1, 2]", "(1,2]"),
    ("3", "x=3"),
    ("x=3", "3"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
    (r"\text{(C)}", "C"),
]
NOT_EQUIVALENT = [
    ("1/3", "0.33"),
    (r"\frac13", "0.33"),
    ("5", "6"),
    ("(1,2)", "[1,2]"),
    ("(1,2]", "[1,2]"),
    ("(1,2]", "(1,2)"),
    ("18", "180"),
    (r"\sqrt{8}", "2"),
]


@pytest.mark.parametrize("reference, predicted", EQUIVALENT)
def test_equivalent_answers_verify(reference, predicted):
    assert verify_answer(f"Some reasoning. The answer is $\\boxed{{{predicted}}}$.", reference)


@pytest.mark.parametrize("reference, predicted", NOT_EQUIVALENT)
def test_non_equivalent_answers_fail(reference, predicted):
    assert not verify_answer(f"Some reasoning. The answer is $\\boxed{{{predicted}}}$.", reference)


@pytest.mark.parametrize("reference", ["18", "$18$", r"\boxed{18}", " 18 ", 18, 18.0])
def test_reference_forms(reference):
    assert verify_answer(r"... so \boxed{18}", reference)
    assert not verify_answer(r"... so \boxed{17}", reference)


@pytest.mark.parametrize("reference", [r"\frac{1}{2}", r"$\frac12$", "0.5", r"\boxed{\frac{1}{2}}"])
def test_reference_forms_fraction(reference):
    assert verify_answer("so the answer is 1/2", reference)
    assert not verify_answer("so the answer is 1/3", reference)


def test_verify_uses_last_box_and_other_formats():
    assert verify_answer(r"maybe \boxed{5}? no: \boxed{6}", "6")
    assert not verify_answer(r"maybe \boxed{5}? no: \boxed{6}", "5")
    assert verify_answer("She makes 9 * 2 = 18 dollars.\n#### 18", "18")
    assert verify_answer("Total: 70,000 dollars.\n#### 70,000", "70000")
    assert verify_answer("Answer: $\\frac{3}{4}$.", "0.75")


def test_verify_falls_back_to_math_verify_extraction():
    # no \boxed, ####, Answer: -> math-verify's own heuristics on the whole text
    assert extract_answer(r"Thus $x = \frac{1}{2}$") is None
    assert verify_answer(r"Thus $x = \frac{1}{2}$", "0.5")
    assert not verify_answer(r"Thus $x = \frac{1}{3}$", "0.5")


@pytest.mark.parametrize(
    "completion, reference",
    [
        (None, "1"),
        (r"\boxed{1}", None),
        (r"\boxed{1}", ""),
        (r"\boxed{1}", ["1"]),
        (r"\boxed{1}", True),
        (r"\boxed{\frac{1}{", "1"),
        ("}}}{{{\\frac", "1"),
        (r"\boxed{\frac{}{}}", r"\frac{1}{"),
        (r"\boxed{)(][}", "1"),
        (r"\boxed{\left(}", "1"),
        ("", "1"),
        ("\\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "1" * (MAX_ANSWER_CHARS + 1)),
        ("\x00\x01\\boxed{\x02}", "1"),
    ],
)
def test_malformed_input_returns_false(completion, reference):
    assert verify_answer(completion, reference) is False


def test_verify_off_main_thread():
    """math-verify's signal-based timeout raises off the main thread; verify_answer must
    switch it off there and still give the right verdicts."""
    results = {}

    def work():
        results["right"] = verify_answer(r"\boxed{\frac{1}{2}}", "0.5")
        results["wrong"] = verify_answer(r"\boxed{\frac{1}{3}}", "0.5")

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert results == {"right": True, "wrong": False}


def test_integer_fast_path_agrees_with_math_verify():
    """Plain integers skip math-verify; the verdict must be math-verify's own on every pair
    (signs, leading zeros, -0, big ints, near misses, boxed references)."""
    import random

    from mrl_llm.reasoning.verifier import _plain_int, _verify_with_math_verify

    rng = random.Random(0)
    numbers = ["0", "-0", "+0", "5", "05", "007", "+5", "-5", "10", "12345678901234567890", "12345678901234567891"]
    numbers += [str(rng.randint(-(10**6), 10**6)) for _ in range(20)]
    pairs = [(a, b) for a in numbers for b in numbers]
    pairs += [(str(n), str(n + d)) for n in (rng.randint(0, 10**9) for _ in range(30)) for d in (0, 1)]
    checked = 0
    for pred, gold in pairs + [("5", r"\boxed{5}"), ("6", r"$\boxed{5}$")]:
        completion = f"try 3: no\n\nAnswer: {pred}"
        fast = verify_answer(completion, gold)
        slow = _verify_with_math_verify(completion, pred, gold)
        assert fast == slow, (pred, gold)
        checked += 1
    assert checked > 1000
    assert _plain_int("1,000") is None and _plain_int("1.5") is None and _plain_int("x=3") is None


# ---------------------------------------------------------------- long and adversarial completions (issue 15, #17)
def _extract_answer_reference(completion):
    """The previous extract_answer, verbatim: a scan from every box to its close or the end
    (quadratic on many unclosed boxes). The definition the one-pass version must agree with."""
    import re

    from mrl_llm.reasoning.verifier import _ANSWER_RE, _BOX_RE, _clean, _first_line, _read_braced

    if not isinstance(completion, str) or not completion:
        return None
    for m in reversed(list(_BOX_RE.finditer(completion))):
        i = m.end()
        while i < len(completion) and completion[i] in " \t":
            i += 1
        if i < len(completion) and completion[i] == "{":
            content = _read_braced(completion, i)
        else:
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


_PIECES = [
    "\\boxed",
    "\\fbox",
    "\\boxedx",
    "\\",
    "\\\\",
    "\\{",
    "\\}",
    "{",
    "{",
    "}",
    "}",
    " ",
    "\t",
    "\n",
    "$",
    ".",
    "#",
    "####",
    "Answer:",
    "answer is",
    "*",
    "1",
    "x",
    "\u00a0",
]


def test_extract_answer_agrees_with_the_quadratic_definition():
    """Random short strings built from the pieces every rule reacts to: the linear extractor
    returns exactly what the old one did (same answer, same None)."""
    import random

    rng = random.Random(17)
    found = 0
    for _ in range(20000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 14)))
        expected = _extract_answer_reference(text)
        assert extract_answer(text) == expected, repr(text)
        found += expected is not None
    assert found > 5000  # the random strings do exercise the rules


def test_box_closes_equals_read_braced():
    import random

    from mrl_llm.reasoning.verifier import _box_closes, _read_braced

    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(["{", "}", "\\", "\\{", "a", "\\boxed{", " "]) for _ in range(rng.randint(1, 20)))
        # every "{" not preceded by a backslash can start a box's group
        opens = [j for j, c in enumerate(text) if c == "{" and (j == 0 or text[j - 1] != "\\")]
        closes = _box_closes(text, opens)
        for j in opens:
            content = _read_braced(text, j)
            assert (content is None) == (j not in closes), (text, j)
            if content is not None:
                assert text[j + 1 : closes[j]] == content, (text, j)


def test_many_unclosed_boxes_are_linear_time():
    """'\\boxed{' * 10000 took ~47 s (each box scanned to the end); now a few ms. The answers
    are the old ones: nothing, or the one closed box before / after the unclosed ones."""
    import time

    junk = "\\boxed{" * 10000  # 70 KB
    t0 = time.perf_counter()
    assert verify_answer(junk, "3") is False
    assert extract_answer(junk) is None
    assert extract_answer(junk + "\\boxed{3}") == "3"
    assert extract_answer("\\boxed{3}" + junk) == "3"
    assert extract_answer("\\boxed{3} " + "\\boxed $" * 12000) == "3"  # brace-less boxes with empty content
    assert extract_answer("\\boxed{3}" + "\\boxed{ }" * 10000) == "3"
    assert verify_answer("\\boxed{3}" + junk, "3") is True
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    "unit",
    [
        "\\boxed{",
        "\\boxed ",
        "\\fbox{\\",
        "{",
        "####",
        "answer:",
        "answer" + " " * 50,
        "\\( a+",
        "\\[ 1 ",
        "1 ",
        "$\\frac{",
        "$$ x ",
        "final answer to it is ",
    ],
)
def test_any_100kb_completion_verifies_within_a_second(unit):
    """100 KB of text that stresses one rule (or math-verify's own extraction, which is
    quadratic on e.g. '\\( a+' repeated: it took the whole 5 s timeout on 40 KB)."""
    import time

    text = (unit * (100_000 // len(unit) + 1))[:100_000]
    t0 = time.perf_counter()
    verify_answer(text, "3")
    verify_answer(text, r"\frac{1}{2}")
    assert time.perf_counter() - t0 < 2.0  # two calls, each well under 1 s


def test_fallback_reads_the_end_of_a_long_completion():
    """math-verify's own extraction (nothing boxed, no ####, no 'answer is') reads the last
    MATH_VERIFY_TAIL_CHARS characters, from a line start: the final statement still counts."""
    import time

    junk = "\\( a+" * 20000
    t0 = time.perf_counter()
    assert verify_answer(junk + "\nThus $x = \\frac{1}{2}$", "0.5")
    assert not verify_answer(junk + "\nThus $x = \\frac{1}{3}$", "0.5")
    assert time.perf_counter() - t0 < 2.0

    from mrl_llm.reasoning.verifier import MATH_VERIFY_TAIL_CHARS, _math_verify_tail

    short = "a\nb $1$"
    assert _math_verify_tail(short) == short
    long = "x" * 5000 + "\n" + "$y$ " * 100 + "\n" + "z" * (MATH_VERIFY_TAIL_CHARS - 10)
    tail = _math_verify_tail(long)
    assert long.endswith(tail) and tail == "z" * (MATH_VERIFY_TAIL_CHARS - 10)
    one_line = "w" * 10 * MATH_VERIFY_TAIL_CHARS
    assert _math_verify_tail(one_line) == "w" * MATH_VERIFY_TAIL_CHARS


# ---------------------------------------------------------------- equations (issue 15, #18)
@pytest.mark.parametrize("boxed", ["4=3", "2+2=5=3", "x=5=3", "4 = 3 = x", "x+1=3", "2x=3", "x^2=3", "1+1=3"])
def test_false_or_unsolved_equation_is_not_its_right_hand_side(boxed):
    """math-verify compares a predicted equation with a plain gold by its last right-hand side,
    even when the equation is false (4=3): that must not earn the reward."""
    assert verify_answer(f"so $\\boxed{{{boxed}}}$", "3") is False


@pytest.mark.parametrize(
    "boxed", ["x=3", "y = 3", r"\theta=3", "x_1=3", "f(2)=3", "f(x)=3", "a+b=3", "x=1+2=3", "1+2=3", r"x=\frac{6}{2}"]
)
def test_assignment_or_true_equation_counts_by_its_value(boxed):
    assert verify_answer(f"so $\\boxed{{{boxed}}}$", "3") is True
    assert verify_answer(f"so $\\boxed{{{boxed}}}$", "4") is False


def test_equations_in_math_verify_fallback_and_equation_gold():
    assert verify_answer("so we get $4=3$", "3") is False  # math-verify's own extraction: same rule
    assert verify_answer("so we get $x=3$", "3") is True
    assert verify_answer(r"\boxed{y=2x+1}", "y = 2x + 1") is True  # equation vs equation: whole
    assert verify_answer(r"\boxed{x=3}", "x=3") is True
    results = {}  # off the main thread (no signal-based time limit) the same verdicts

    def work():
        results["false"] = verify_answer(r"\boxed{2+2=5=3}", "3")
        results["chain"] = verify_answer(r"\boxed{x=1+2=3}", "3")

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert results == {"false": False, "chain": True}


# ---------------------------------------------------------------- reward
def test_answer_correct_is_registered():
    assert get_reward("answer_correct") is answer_correct


def test_answer_correct_strings_and_chat():
    completions = [r"\boxed{18}", "#### 17", "no answer", r"\boxed{\frac{1}{2}}"]
    answers = ["18", "18", "18", "0.5"]
    assert answer_correct(["p"] * 4, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0]
    chat = [
        [{"role": "assistant", "content": r"\boxed{3}"}],
        [{"role": "assistant", "content": r"\boxed{3}"}, {"role": "assistant", "content": r"\boxed{4}"}],
        [],
    ]
    assert answer_correct([[{"role": "user", "content": "q"}]] * 3, chat, answer=["3", "3", "3"]) == [1.0, 0.0, 0.0]
    out = answer_correct(["p"], [r"\boxed{2}"], answer=["2"], trial_return=[1.0])  # extra fields ignored
    assert out == [1.0] and isinstance(out[0], float)


def test_answer_correct_needs_answer():
    with pytest.raises(KeyError, match="answer"):
        answer_correct(["p"], [r"\boxed{1}"])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        answer_correct(["p", "p"], [r"\boxed{1}", r"\boxed{1}"], answer=["1"])
