"""Batched multi-turn decoding sessions: B sequences that grow by environment tokens and by
tokens the model samples, turn after turn.

* :class:`HFSession` runs a transformers causal LM. With ``use_cache=True`` it keeps the KV
  cache of everything fed so far and only encodes the new tokens of each turn (environment
  feedback plus the model's last sampled token, in one forward pass); with ``use_cache=False``
  it re-encodes every whole history before each sampled token (the slow reference, kept for
  the tokens/s comparison and for tests).
* :class:`VLLMSession` sends the full token histories to a vLLM engine each turn (vLLM's
  automatic prefix caching reuses their KV blocks), e.g. ``trainer.vllm_generation.llm`` of a
  ``trl.GRPOTrainer(use_vllm=True, vllm_mode="colocate")``.

Sequences in one batch have different lengths; new tokens are right-padded within a forward
block and masked out (attention mask 0), with explicit position ids so padding never shifts
positions. Sampling uses an explicit ``torch.Generator``: same seed, same tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from mrl_llm.models import kv_cache_kwarg, output_kv_cache


@dataclass
class SamplingConfig:
    """How actions are sampled from the LM.

    Attributes:
        temperature: softmax temperature (> 0); logprobs are of the tempered distribution, as TRL's.
        top_k: keep the k most likely tokens (0 = all).
        max_action_tokens: most tokens per reply.
        use_cache: reuse the KV cache across turns (False re-encodes the history every token).
    """

    temperature: float = 1.0
    top_k: int = 0
    max_action_tokens: int = 1
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_action_tokens < 1:
            raise ValueError(f"max_action_tokens must be >= 1, got {self.max_action_tokens}")


@dataclass
class GenerationStats:
    """Counters of one session: tokens sampled, tokens encoded, seconds spent in the model."""

    sampled_tokens: int = 0
    encoded_tokens: int = 0
    forward_calls: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Sampled tokens per second of model time."""
        return self.sampled_tokens / self.seconds if self.seconds > 0 else 0.0


def _sample(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample one token per row from logits (B, V); returns tokens (B,) and their logprobs (B,)."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return tok, logp.gather(1, tok.unsqueeze(1)).squeeze(1)


class HFSession:
    """Multi-turn batched sampling from a transformers causal LM.

    Args:
        model: a ``PreTrainedModel`` (or peft-wrapped one) with a causal LM head.
        pad_token_id: id used for padding (never attended to).
        batch_size: B, number of sequences.
        use_cache: keep the KV cache across turns (True) or re-encode histories (False).

    Usage::

        s = HFSession(model, tok.pad_token_id, batch_size=4)
        s.append([prompt_ids] * 4)
        tokens, logps = s.sample(max_new_tokens=1, stop_token_ids=set(), temperature=1.0, generator=g)
        s.append(env_feedback_ids)   # (the last sampled tokens are fed together with these)
    """

    def __init__(self, model, pad_token_id: int, batch_size: int, use_cache: bool = True) -> None:
        self.model = model
        self._kv_kwarg = kv_cache_kwarg(model)  # 'cache' or 'past_key_values', looked up once
        self.pad = int(pad_token_id)
        self.B = int(batch_size)
        self.use_cache = use_cache
        self.device = next(model.parameters()).device
        self.pending: list[list[int]] = [[] for _ in range(self.B)]  # fed lazily, at the next forward
        self.history: list[list[int]] = [[] for _ in range(self.B)]  # whole sequences; use_cache=False only
        self.past = None
        self.mask = torch.zeros(self.B, 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(self.B, dtype=torch.long, device=self.device)
        self.last_logits: Tensor | None = None
        self.stats = GenerationStats()

    def append(self, tokens: list[list[int]]) -> None:
        """Queue tokens (one list per row, possibly empty) to be encoded before the next sample."""
        if len(tokens) != self.B:
            raise ValueError(f"expected {self.B} token lists, got {len(tokens)}")
        for row, ids in zip(self.pending, tokens):
            row.extend(int(i) for i in ids)

    @torch.no_grad()
    def _flush(self) -> None:
        lens = [len(p) for p in self.pending]
        if max(lens) == 0:
            return
        start = time.perf_counter()
        if self.use_cache:
            self._forward_cached(lens)
        else:
            self._forward_full()
        self.stats.encoded_tokens += sum(lens) if self.use_cache else sum(len(h) for h in self.history)
        self.stats.forward_calls += 1
        self.stats.seconds += time.perf_counter() - start

    def _forward_cached(self, lens: list[int]) -> None:
        L = max(lens)
        ids = torch.full((self.B, L), self.pad, dtype=torch.long)
        blk_mask = torch.zeros(self.B, L, dtype=torch.long)
        for i, p in enumerate(self.pending):
            if p:
                ids[i, : len(p)] = torch.tensor(p)
                blk_mask[i, : len(p)] = 1
        ids, blk_mask = ids.to(self.device), blk_mask.to(self.device)
        positions = self.pos.unsqueeze(1) + torch.arange(L, device=self.device).unsqueeze(0)
        attn = torch.cat([self.mask, blk_mask], dim=1)
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, **{self._kv_kwarg: self.past}, use_cache=True
        )
        self.past = output_kv_cache(out)
        self.mask = attn
        n_new = torch.tensor(lens, device=self.device)
        last_idx = (n_new - 1).clamp(min=0)
        new_logits = out.logits[torch.arange(self.B, device=self.device), last_idx]
        if self.last_logits is None:
            self.last_logits = new_logits
        else:
            self.last_logits = torch.where((n_new > 0).unsqueeze(1), new_logits, self.last_logits)
        self.pos = self.pos + n_new
        self.pending = [[] for _ in range(self.B)]

    def _forward_full(self) -> None:
        for i, p in enumerate(self.pending):
            self.history[i].extend(p)
        self.pending = [[] for _ in range(self.B)]
        L = max(len(h) for h in self.history)
        ids = torch.full((self.B, L), self.pad, dtype=torch.long)
        mask = torch.zeros(self.B, L, dtype=torch.long)
        for i, h in enumerate(self.history):  # left padding: the last position is the last token
            if h:
                ids[i, L - len(h) :] = torch.tensor(h)
                mask[i, L - len(h) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        self.last_logits = out.logits[:, -1]

    @torch.no_grad()
    def sample(
        self,
        max_new_tokens: int,
        stop_token_ids: set[int],
        temperature: float,
        generator: torch.Generator,
        top_k: int = 0,
        active: list[bool] | None = None,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Sample up to ``max_new_tokens`` per active row, stopping a row at a stop token.

        Returns:
            (tokens, logprobs): per row, the sampled ids (stop token included) and their
            log-probabilities under the tempered distribution; empty lists for inactive rows.
        """
        active = list(active) if active is not None else [True] * self.B
        running = list(active)
        tokens: list[list[int]] = [[] for _ in range(self.B)]
        logps: list[list[float]] = [[] for _ in range(self.B)]
        for _ in range(max_new_tokens):
            if not any(running):
                break
            self._flush()
            start = time.perf_counter()
            tok, lp = _sample(self.last_logits, temperature, top_k, generator)
            self.stats.seconds += time.perf_counter() - start
            tok_l, lp_l = tok.tolist(), lp.tolist()
            for i in range(self.B):
                if running[i]:
                    tokens[i].append(tok_l[i])
                    logps[i].append(lp_l[i])
                    self.pending[i].append(tok_l[i])
                    self.stats.sampled_tokens += 1
                    if tok_l[i] in stop_token_ids:
                        running[i] = False
        return tokens, logps


class VLLMSession:
    """Multi-turn sampling through a vLLM engine (GPU); histories are resent every turn and
    vLLM's automatic prefix caching reuses their KV blocks.

    Args:
        llm: a ``vllm.LLM`` (e.g. ``trainer.vllm_generation.llm`` in TRL's colocate mode).
        batch_size: B.
    """

    def __init__(self, llm, batch_size: int) -> None:
        self.llm = llm
        self.B = int(batch_size)
        self.history: list[list[int]] = [[] for _ in range(self.B)]
        self.stats = GenerationStats()

    def append(self, tokens: list[list[int]]) -> None:
        if len(tokens) != self.B:
            raise ValueError(f"expected {self.B} token lists, got {len(tokens)}")
        for row, ids in zip(self.history, tokens):
            row.extend(int(i) for i in ids)

    def sample(self, max_new_tokens, stop_token_ids, temperature, generator, top_k=0, active=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        active = list(active) if active is not None else [True] * self.B
        rows = [i for i in range(self.B) if active[i]]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        params = SamplingParams(
            temperature=temperature,
            top_k=top_k if top_k > 0 else -1,
            max_tokens=max_new_tokens,
            stop_token_ids=sorted(stop_token_ids),
            logprobs=0,
            seed=seed,
        )
        start = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=self.history[i]) for i in rows], params, use_tqdm=False)
        self.stats.seconds += time.perf_counter() - start
        tokens: list[list[int]] = [[] for _ in range(self.B)]
        logps: list[list[float]] = [[] for _ in range(self.B)]
        for i, out in zip(rows, outs):
            comp = out.outputs[0]
            tokens[i] = list(comp.token_ids)
            logps[i] = [float(d[t].logprob) for d, t in zip(comp.logprobs, comp.token_ids)]
            self.history[i].extend(tokens[i])
            self.stats.sampled_tokens += len(tokens[i])
        self.stats.forward_calls += 1
        return tokens, logps
