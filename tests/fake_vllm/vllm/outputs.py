"""``vllm.outputs``: what ``LLM.generate`` returns (the fields our code and TRL read)."""

from dataclasses import dataclass, field

from vllm.logprobs import Logprob


@dataclass
class CompletionOutput:
    """One sample of a request: ``token_ids`` (stop token included, as vLLM), ``text`` (special
    tokens skipped), ``logprobs`` (per token, ``{token_id: Logprob}`` with the sampled token and
    the top ``SamplingParams.logprobs`` ones; None when not requested), ``finish_reason``
    ("stop" at EOS or a stop token, "length" at ``max_tokens``) and ``stop_reason`` (the stop
    token id; None at EOS or length)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The outputs of one prompt: ``outputs`` has ``n`` :class:`CompletionOutput` s."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True
