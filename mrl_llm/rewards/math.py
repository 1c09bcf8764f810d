"""The ``answer_correct`` outcome reward of MRT (Qu et al. 2025, arXiv 2503.07572, §4: the binary
outcome reward ``r(x, z) = 1[z is correct]`` that the dense progress bonus is added to), a TRL
reward callable over :func:`mrl_llm.reasoning.verifier.verify_answer`."""

from __future__ import annotations

from mrl_llm.reasoning.verifier import verify_answer
from mrl_llm.rewards import register


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


__all__ = ["answer_correct"]
