"""``vllm.inputs.TokensPrompt``: as in vLLM, a TypedDict, so calling it builds a plain dict."""

from typing import TypedDict

from typing_extensions import NotRequired


class TokensPrompt(TypedDict):
    """Schema for a tokenized prompt."""

    prompt_token_ids: list[int]
    prompt: NotRequired[str]
