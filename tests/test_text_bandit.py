"""The text rendering of the bandit: parser on malformed actions, feedback, tokenizer."""

import pytest

from mrl_llm.envs.text_bandit import INVALID, BanditText


@pytest.mark.parametrize(
    "text,arm",
    [
        ("3", 3),
        (" 0", 0),
        ("4\n", 4),
        ("2.", 2),
        ("5", INVALID),
        ("-1", INVALID),
        ("", INVALID),
        ("x", INVALID),
        ("3 4", INVALID),
        ("arm", INVALID),
        ("<unk>", INVALID),
        ("12", INVALID),
        ("3x", INVALID),
    ],
)
def test_plain_parser(text, arm):
    assert BanditText(5, 10).parse_action(text) == arm


@pytest.mark.parametrize(
    "text,arm",
    [
        ("Arm: 2", 2),
        ("arm 4", 4),
        ("I will pull Arm #1.", 1),
        ("Arm: 1 ... no, Arm: 3", 3),
        ("3", 3),
        ("Arm: 9", INVALID),
        ("Let me think", INVALID),
        ("", INVALID),
        ("Arm: two", INVALID),
        ("pull 3 then 4", INVALID),
    ],
)
def test_chat_parser(text, arm):
    assert BanditText(5, 10, chat=True).parse_action(text) == arm


def test_feedback_texts():
    plain = BanditText(5, 10)
    assert plain.feedback(3, 1.0, 1, 1.0) == " 1\n"
    assert plain.feedback(INVALID, 0.0, 1, 0.0) == " invalid\n"
    chat = BanditText(5, 10, chat=True)
    assert chat.feedback(2, 0.0, 3, 2.0) == "Arm 2 gave reward 0. Total reward 2 after 3 pulls, 7 left. Which arm next?"
    assert "Invalid" in chat.feedback(INVALID, 0.0, 10, 2.0) and "Which arm" not in chat.feedback(INVALID, 0.0, 10, 2.0)
    assert chat.format_action(4) == "Arm: 4" and plain.format_action(4) == "4"


def test_tiny_tokenizer_round_trips_renderings(tiny_tok):
    for env in (BanditText(5, 100), BanditText(5, 100, chat=True)):
        text = env.instructions() + env.format_action(3) + env.feedback(3, 1.0, 1, 1.0)
        ids = tiny_tok(text, add_special_tokens=False).input_ids
        assert tiny_tok.unk_token_id not in ids, tiny_tok.convert_ids_to_tokens(ids)
        assert tiny_tok.decode(ids) == text
    # a pull is two tokens in the plain rendering: the arm and its outcome
    assert len(tiny_tok("3 1\n", add_special_tokens=False).input_ids) == 2


def test_tiny_tokenizer_saves_and_loads_as_itself(tmp_path, tiny_tok, tiny_model):
    from mrl_llm.models import ModelConfig, load_model_and_tokenizer

    tiny_model.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(ModelConfig(), path=tmp_path)
    text = "Bernoulli bandit with 5 arms and 100 pulls.\n3 1\n0 0\n"
    assert tok(text).input_ids == tiny_tok(text).input_ids
    assert tok.chat_template == tiny_tok.chat_template


# ---------------------------------------------------------------- adversarial replies (issue 15, #19)
def _parse_action_reference(env, text):
    """The previous parse_action, verbatim (regexes that are quadratic on long whitespace runs,
    int() that raises past 4300 digits): the definition the linear parser must agree with."""
    import re

    arm_re = re.compile(r"arm\s*(?:number\s*)?[:#=]?\s*(-?\d+)", re.IGNORECASE)
    int_re = re.compile(r"^\s*(-?\d+)\s*\.?\s*$")
    m = None
    if env.chat:
        found = arm_re.findall(text)
        if found:
            m = found[-1]
    if m is None:
        whole = int_re.match(text)
        m = whole.group(1) if whole else None
    if m is None:
        return INVALID
    arm = int(m)
    return arm if 0 <= arm < env.num_arms else INVALID


_PIECES = [
    "arm",
    "Arm",
    "ARM",
    "number",
    "Number",
    " ",
    "  ",
    "\t",
    "\n",
    ":",
    "#",
    "=",
    "-",
    "0",
    "00",
    "1",
    "3",
    "7",
    "12",
    ".",
    "..",
    "x",
    "\u00a0",
    "\u0663",
    "\u0660",
    "armnumber",
]


def test_parser_agrees_with_the_regex_definition():
    """Random short replies from the pieces the parser reacts to: same arm / INVALID as before."""
    import random

    rng = random.Random(19)
    valid = 0
    envs = [BanditText(k, 10, chat=c) for k in (5, 10, 13) for c in (False, True)]
    for _ in range(20000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 8)))
        for env in envs:
            expected = _parse_action_reference(env, text)
            assert env.parse_action(text) == expected, (env, text)
            valid += expected != INVALID
    assert valid > 10000  # the random replies do reach valid arms


@pytest.mark.parametrize("chat", [False, True])
def test_huge_integer_reply_is_invalid_not_an_error(chat):
    """int() raises ValueError past 4300 digits; the parser's docstring says nothing raises."""
    env = BanditText(5, 10, chat=chat)
    assert env.parse_action("1" * 5000) == INVALID
    assert env.parse_action("-" + "1" * 5000) == INVALID
    assert env.parse_action("0" * 5000 + "3") == 3  # leading zeros, as int("03") == 3
    assert env.parse_action("\u0660" * 5000 + "\u0663") == 3  # Arabic-Indic digits, as int() reads them
    if chat:
        assert env.parse_action("Arm: " + "1" * 5000) == INVALID
        assert env.parse_action("Arm: 2, then Arm: " + "0" * 5000 + "4") == 4


@pytest.mark.parametrize("chat", [False, True])
def test_parse_action_is_linear_time(chat):
    """'3' + 100K spaces + 'x' took ~25 s in the whole-reply regex, 'arm' + 100K spaces + 'x'
    ~90 s in the chat regex (both quadratic in the whitespace run); now a few ms each."""
    import time

    env = BanditText(5, 10, chat=chat)
    ws = " " * 100_000
    t0 = time.perf_counter()
    assert env.parse_action("3" + ws + "x") == INVALID
    assert env.parse_action("3" + ws + "." + ws) == 3
    assert env.parse_action("arm" + ws + "x") == INVALID
    assert env.parse_action("arm number" + ws + ":" + ws + "x") == INVALID
    assert env.parse_action("Arm:" * 20_000 + "x") == INVALID
    assert env.parse_action("arm" + ws + "4") == (4 if chat else INVALID)
    assert time.perf_counter() - t0 < 1.0
