"""``vllm.logprobs.Logprob``: one entry of a token's logprob dict."""

from dataclasses import dataclass


@dataclass
class Logprob:
    """logprob of a token, its rank in the vocabulary (1 = most likely) and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None
