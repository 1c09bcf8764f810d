"""``vllm.SamplingParams`` with the fields our code passes and vLLM 0.31's validation."""

from __future__ import annotations

import math
from copy import copy

from vllm.exceptions import VLLMValidationError


class SamplingParams:
    """Sampling parameters of one request (keyword arguments only, as vLLM's msgspec struct).

    Seeding, as vLLM: a request with ``seed`` draws its tokens from a generator seeded with
    ``seed`` (its ``n`` samples from ``seed + index``, ``v1/engine/parallel_sampling.py``), so
    equal seed and equal prompt give equal tokens; without a seed it draws from the engine's
    generator (seeded once by ``LLM(seed=...)``).

    Raises:
        VLLMValidationError: (not a ValueError, as in vLLM) for an out-of-range field.
        TypeError: for a field vLLM does not have.
    """

    def __init__(
        self,
        *,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.n = n
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.repetition_penalty = repetition_penalty
        self.temperature = temperature
        self.top_p = 1.0 if top_p is None else top_p
        self.top_k = top_k
        self.min_p = min_p
        self.seed = seed
        self.stop = stop
        self.stop_token_ids = list(stop_token_ids or [])
        self.ignore_eos = ignore_eos
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.logprobs = logprobs
        self.prompt_logprobs = prompt_logprobs
        self.detokenize = detokenize
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.include_stop_str_in_output = include_stop_str_in_output
        self._verify()

    def _verify(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.", parameter="n", value=self.n)
        if not math.isfinite(self.temperature) or self.temperature < 0.0:
            raise VLLMValidationError(
                f"temperature must be non-negative, got {self.temperature}.",
                parameter="temperature",
                value=self.temperature,
            )
        if self.temperature > 2.0:
            raise VLLMValidationError(
                f"temperature must be in [0, 2], got {self.temperature}.",
                parameter="temperature",
                value=self.temperature,
            )
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(
                f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p", value=self.top_p
            )
        if not isinstance(self.top_k, int):
            raise VLLMValidationError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise VLLMValidationError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens", value=self.max_tokens
            )
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise VLLMValidationError(
                f"logprobs must be non-negative or -1, got {self.logprobs}.", parameter="logprobs", value=self.logprobs
            )
        if self.seed is not None and not isinstance(self.seed, int):
            raise VLLMValidationError(f"seed must be an int, got {self.seed!r}.", parameter="seed", value=self.seed)

    def child(self, index: int) -> "SamplingParams":
        """Sample ``index`` of an ``n > 1`` request: ``n = 1``, seed ``seed + index`` when seeded."""
        c = copy(self)
        c.n = 1
        if self.seed is not None:
            c.seed = self.seed + index
        return c

    def __repr__(self) -> str:
        return (
            f"SamplingParams(n={self.n}, temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, "
            f"seed={self.seed}, stop_token_ids={self.stop_token_ids}, max_tokens={self.max_tokens}, "
            f"logprobs={self.logprobs})"
        )
