"""The text rendering of the bandit: parser on malformed actions, feedback, tokenizer."""

import pytest

from mrl_llm.envs.text_bandit import INVALID, BanditText


@pytest.mark.parametrize(
    "text,arm",
    [("3", 3), (" 0", 0), ("4\n", 4), ("2.", 2), ("5", INVALID), ("-1", INVALID), ("", INVALID), ("x", INVALID),
     ("3 4", INVALID), ("arm", INVALID), ("<unk>", INVALID), ("12", INVALID), ("3x", INVALID)],
)
def test_plain_parser(text, arm):
    assert BanditText(5, 10).parse_action(text) == arm


@pytest.mark.parametrize(
    "text,arm",
    [("Arm: 2", 2), ("arm 4", 4), ("I will pull Arm #1.", 1), ("Arm: 1 ... no, Arm: 3", 3), ("3", 3),
     ("Arm: 9", INVALID), ("Let me think", INVALID), ("", INVALID), ("Arm: two", INVALID), ("pull 3 then 4", INVALID)],
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
