"""Answer extraction and math-verify equivalence (mrl_llm.rewards.math), and the
registered ``answer_correct`` reward."""

from __future__ import annotations

import threading

import pytest

from mrl_llm.rewards import extract_answer, get_reward, verify_answer
from mrl_llm.rewards.math import MAX_ANSWER_CHARS, answer_correct


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

    from mrl_llm.rewards.math import _plain_int, _verify_with_math_verify

    rng = random.Random(0)
    numbers = ["0", "-0", "+0", "5", "05", "007", "+5", "-5", "10", "12345678901234567890", "12345678901234567891"]
    numbers += [str(rng.randint(-10**6, 10**6)) for _ in range(20)]
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
