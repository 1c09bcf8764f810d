"""MRT's meta-prover (Qu et al. 2025, arXiv 2503.07572): a sampler that measures how likely the
policy is to answer correctly when it stops thinking after a prefix of its trace.

MRT views a reasoning trace ``z = (z_0, ..., z_{m-1})`` as a sequence of *episodes*
(:mod:`mrl_llm.reasoning.episodes`) and asks after each one how likely the model would be to
answer correctly if it stopped thinking there. The *meta-prover* ``mu`` is the policy itself,
forced to stop after a prefix: the prefix is followed by a termination suffix (for R1-style
models the paper's ``"Time is up. ... I should stop thinking ... </think>"``, see
:data:`R1_TERMINATION_SUFFIX`) and the model samples K answers, each verified against the
reference. With ``c_j = (x, z_0, ..., z_j)``:

    J(mu | c_j)             = mean over K samples of 1[answer ~ mu(. | c_j, suffix) is correct]
    r_prg(z_j; c_{j-1})     = J(mu | c_j) - J(mu | c_{j-1})       (Definition 6.1; c_{-1} = x)

and the MRT objective is the outcome objective plus ``alpha`` times the progress of every
episode, each episode credited with its own progress given the (stale) prefix before it (Eq. 2).
:func:`mrl_llm.reasoning.progress.mrt_token_advantages` turns that into the per-token
advantages of a GRPO update; :func:`~mrl_llm.reasoning.progress.termination_advantages` is the
paper's RL variant, ``A = R - R_termination``, where the
termination reward ``J(mu | prefix)`` replaces GRPO's group-mean baseline (CMU-AIRe/MRT,
``train/rl/README.md``).

On a transformers model the K answers of a prefix are drawn by ancestral sampling on a trie
(samples that agree share their tokens), in one of three ways, same draws, different cost
(``benchmarks/mrt_overhead.py`` measures them):

* ``shared_prefix=True`` with "sdpa" or "eager" attention: one forward pass over
  ``prompt + trace`` per completion builds one KV row; the suffix of every prefix and every
  trie node's next token are appended to that row, and a 4D mask lets each see only its own
  prefix and ancestors (tree attention), so nothing is copied or re-encoded;
* ``shared_prefix=True`` with other attention kernels: each prefix gets a copy of its trace's
  KV row up to its cut, and each trie node a copy of its parent's;
* ``shared_prefix=False``: every prefix is encoded from scratch (the reference).

With vLLM, all prefixes go to one ``llm.generate`` call with ``n=K``, one seed per prefix drawn
from the caller's generator, and vLLM's automatic prefix caching shares their KV blocks. The
engine decodes at most its ``max_num_seqs`` sequences at once (TRL sizes its colocated engine for
the rollouts only; the MRT trainer builds it large enough for the meta-prover,
:func:`mrl_llm.train.mrt.trl_engine_sized_for`): Q prefixes x K samples above that run in
``ceil(Q K / max_num_seqs)`` serial waves, counted in :attr:`ProverStats.waves`.

The HF sampler draws on the model's device (a CPU generator is turned into one there by
:func:`mrl_llm.rollout.generation.device_generator`); only the (R,) drawn tokens go to the host.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from mrl_llm.models import additive_attention_mask, kv_cache_kwarg, output_kv_cache
from mrl_llm.models import takes_4d_attention_mask as supports_tree_attention
from mrl_llm.reasoning.verifier import verify_answer
from mrl_llm.rollout.generation import device_generator, engine_max_num_seqs, seeded_sampling_params

#: The forced-termination text of the paper's analysis code (CMU-AIRe/MRT,
#: ``analysis/code/pass_at_k_given_prefix.py``), appended after a prefix that ends a paragraph.
R1_TERMINATION_SUFFIX = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
    "formulate a final answer based on what I already have.\n</think>\n\n"
    "**Step-by-Step Explanation and Answer:**\n\n1. **"
)


@dataclass
class MetaProverConfig:
    """How J(mu | prefix) is estimated.

    Attributes:
        termination_suffix: text appended after the prefix to force the final answer.
        num_samples: K, answers sampled per prefix (the paper's analysis uses 8).
        max_answer_tokens: most tokens per sampled answer (the paper's analysis: 4096).
        temperature: sampling temperature of the answers (the paper's analysis: 0.6-0.7).
        top_k: keep the k most likely tokens (0 = all).
        shared_prefix: encode each trace once and reuse its KV cache for every prefix (HF path;
            tree attention when the model's attention takes 4D masks).
        max_rows: most (prefix, sample) rows decoded at once by the HF path (memory bound).
        separator: inserted (or completed) between a non-empty prefix and the suffix when the
            prefix does not already end with it, so that a cut inside a paragraph (a token
            budget) still starts the suffix on a new paragraph, as after an episode; "" = never.

    Raises:
        ValueError: naming the field, when a value is out of range.
    """

    termination_suffix: str = R1_TERMINATION_SUFFIX
    num_samples: int = 8
    max_answer_tokens: int = 4096
    temperature: float = 0.7
    top_k: int = 0
    shared_prefix: bool = True
    max_rows: int = 4096
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_answer_tokens", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k!r}")
        if not isinstance(self.termination_suffix, str) or not self.termination_suffix:
            raise ValueError("termination_suffix must be a non-empty string")


@dataclass
class ProverStats:
    """Counters of the meta-prover: rows decoded, tokens encoded and sampled, seconds, and (vLLM)
    the serial scheduling waves, ``ceil(sequences / max_num_seqs)`` per ``generate`` call (0 when
    the engine does not report ``max_num_seqs``)."""

    rows: int = 0
    encoded_tokens: int = 0
    sampled_tokens: int = 0
    seconds: float = 0.0
    waves: int = 0


def token_cuts(tokenizer, completion_ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """Token prefix lengths whose decoded text first covers each character offset.

    Args:
        tokenizer: the HF tokenizer that produced ``completion_ids``.
        completion_ids: the generated token ids (no prompt).
        char_ends: character offsets into ``tokenizer.decode(completion_ids)`` (e.g. the
            ``end`` of each episode), non-decreasing.

    Returns:
        ``k_j`` per offset: the smallest k with ``len(decode(ids[:k])) >= char_ends[j]``
        (binary search, O(log T) decodes each).
    """
    ids = list(completion_ids)

    def length(k: int) -> int:
        return len(tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False))

    cuts, lo_start = [], 0
    for end in char_ends:
        lo, hi = lo_start, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if length(mid) >= end:
                hi = mid
            else:
                lo = mid + 1
        cuts.append(lo)
        lo_start = lo
    return cuts


class MetaProver:
    """mu: the policy forced to stop thinking after a prefix, sampled K times; J = mean success.

    Args:
        model: a transformers causal LM (or peft-wrapped one); ignored when ``vllm_llm`` is given.
        tokenizer: its tokenizer (pad and eos tokens set).
        config: :class:`MetaProverConfig`.
        verifier: ``verifier(answer_text, reference) -> bool``; default
            :func:`mrl_llm.reasoning.verifier.verify_answer`. The answer text is what the model
            sampled after the suffix, prefixed by the suffix itself (so an answer cue such as
            ``"the answer is"`` in the suffix is seen by the extractor).
        vllm_llm: a ``vllm.LLM`` (e.g. ``trainer.vllm_generation.llm``) to sample with instead.

    Example:
        >>> prover = MetaProver(model, tok, MetaProverConfig(termination_suffix=" so the answer is", num_samples=4))
        >>> J = prover.success_rates([prompt_ids], [trace_ids], [[0, 12, 30]], ["5"], generator=g)
        >>> progress_rewards(J[0])  # (2,) progress of the episodes ending at tokens 12 and 30 (reasoning.progress)
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: MetaProverConfig | None = None,
        verifier: Callable[[str, str], bool] | None = None,
        vllm_llm=None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or MetaProverConfig()
        self.verifier = verifier or verify_answer
        self.vllm_llm = vllm_llm
        self.suffix_ids = tokenizer(self.config.termination_suffix, add_special_tokens=False)["input_ids"]
        self._suffix_cache: dict[str, list[int]] = {"": self.suffix_ids}
        self.stats = ProverStats()
        self._warned_waves = False

    def suffix_for(self, prefix_ids: Sequence[int]) -> list[int]:
        """The suffix token ids to append after a completion prefix: the termination suffix,
        preceded by whatever part of ``config.separator`` the prefix's text does not end with."""
        sep = self.config.separator
        if not sep or len(prefix_ids) == 0:
            return self.suffix_ids
        tail = self.tokenizer.decode(
            list(prefix_ids[-8:]), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        missing = sep
        for j in range(len(sep), 0, -1):
            if tail.endswith(sep[:j]):
                missing = sep[j:]
                break
        if missing not in self._suffix_cache:
            self._suffix_cache[missing] = self.tokenizer(
                missing + self.config.termination_suffix, add_special_tokens=False
            )["input_ids"]
        return self._suffix_cache[missing]

    def success_rates(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        cuts: Sequence[Sequence[int]],
        references: Sequence[str],
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """J(mu | prompt + completion[:k]) for every cut k of every completion.

        Args:
            prompt_ids: B prompts (token ids, including any chat template).
            completion_ids: B completions (token ids).
            cuts: per completion, the token prefix lengths to stop at (0 = before any thinking).
            references: B reference answers.
            generator: RNG of the sampler (same seed, same numbers); any device. vLLM: one
                draw seeds the prefixes' requests (:func:`~mrl_llm.rollout.generation.seeded_sampling_params`).

        Returns:
            B float tensors, ``J[i]`` of shape ``(len(cuts[i]),)``, values in [0, 1].

        Raises:
            ValueError: when the lists have different lengths or a cut is outside the completion.
        """
        if len(references) != len(prompt_ids):
            raise ValueError("prompt_ids, completion_ids, cuts and references must have the same length")
        answers = self.sample_answers(prompt_ids, completion_ids, cuts, generator)
        return [self.score(a, ref) for a, ref in zip(answers, references)]

    def score(self, answers: Sequence[Sequence[str]], reference: str) -> Tensor:
        """(len(answers),) success rates of the sampled answers of each cut of one completion."""
        suffix = self.config.termination_suffix
        return torch.tensor(
            [sum(self.verifier(suffix + a, reference) for a in per_cut) / max(len(per_cut), 1) for per_cut in answers],
            dtype=torch.float32,
        )

    def sample_answers(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        cuts: Sequence[Sequence[int]],
        generator: torch.Generator | None = None,
    ) -> list[list[list[str]]]:
        """The K forced answers (text after the suffix) at every cut: ``answers[i][j][s]``.

        Raises:
            ValueError: when the lists have different lengths or a cut is outside the completion.
        """
        B = len(prompt_ids)
        if not (len(completion_ids) == len(cuts) == B):
            raise ValueError("prompt_ids, completion_ids, cuts and references must have the same length")
        for i in range(B):
            for k in cuts[i]:
                if not 0 <= int(k) <= len(completion_ids[i]):
                    raise ValueError(f"cut {k} is outside completion {i} of {len(completion_ids[i])} tokens")
        queries = [(i, int(k)) for i in range(B) for k in cuts[i]]
        out: list[list[list[str]]] = [[] for _ in range(B)]
        if not queries:
            return out
        start = time.perf_counter()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        if self.vllm_llm is not None:
            answers = self._answers_vllm(prompt_ids, completion_ids, queries, g)
        else:
            g = device_generator(g, next(self.model.parameters()).device)  # one per call: reproducible
            answers = self._answers_hf(prompt_ids, completion_ids, queries, g)
        self.stats.seconds += time.perf_counter() - start
        for (i, _), a in zip(queries, answers):
            out[i].append(a)
        return out

    # ---- vLLM: one generate call, prefix caching shares the KV blocks ---------------------
    def _answers_vllm(self, prompt_ids, completion_ids, queries, generator: torch.Generator) -> list[list[str]]:
        from vllm.inputs import TokensPrompt

        cfg = self.config
        params = seeded_sampling_params(
            len(queries),
            generator,
            n=cfg.num_samples,
            temperature=cfg.temperature,
            top_k=cfg.top_k if cfg.top_k > 0 else -1,
            max_tokens=cfg.max_answer_tokens,
        )
        prompts = []
        for i, k in queries:
            prefix = list(completion_ids[i][:k])
            prompts.append(TokensPrompt(prompt_token_ids=list(prompt_ids[i]) + prefix + self.suffix_for(prefix)))
        outs = self.vllm_llm.generate(prompts, params, use_tqdm=False)
        sequences = len(prompts) * cfg.num_samples
        limit = engine_max_num_seqs(self.vllm_llm)
        if limit:
            waves = -(-sequences // limit)
            self.stats.waves += waves
            if waves > 1 and not self._warned_waves:
                self._warned_waves = True
                warnings.warn(
                    f"meta-prover: {len(prompts)} prefixes x {cfg.num_samples} samples = {sequences} sequences on "
                    f"an engine with max_num_seqs={limit}: {waves} serial waves per call "
                    "(build the engine with a larger "
                    "max_num_seqs, as the MRT trainer does, or sample fewer prefixes)",
                    stacklevel=3,
                )
        self.stats.rows += sequences
        answers = []
        for out in outs:
            answers.append([c.text for c in out.outputs])
            self.stats.sampled_tokens += sum(len(c.token_ids) for c in out.outputs)
        return answers

    # ---- transformers ----------------------------------------------------------------------
    @torch.no_grad()
    def _answers_hf(self, prompt_ids, completion_ids, queries, generator: torch.Generator) -> list[list[str]]:
        K = self.config.num_samples
        per_chunk = max(1, self.config.max_rows // K)
        answers: list[list[str]] = []
        for lo in range(0, len(queries), per_chunk):
            chunk = queries[lo : lo + per_chunk]
            answers.extend(self._answer_chunk(prompt_ids, completion_ids, chunk, generator))
        return answers

    def _answer_chunk(self, prompt_ids, completion_ids, queries, generator) -> list[list[str]]:
        model = self.model
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.config.shared_prefix and supports_tree_attention(model):
            return self._answers_tree(prompt_ids, completion_ids, queries, generator, device, pad)
        # One cache row per query (prefix): its K samples share it until their answers differ.
        lengths = torch.tensor([len(prompt_ids[i]) + k for i, k in queries], device=device)
        Q = len(queries)
        if self.config.shared_prefix:
            past, where, L = self._encode_sources(prompt_ids, completion_ids, queries, device, pad)
            past.batch_select_indices(torch.tensor([where[i] for i, _ in queries], device=device))
            attn = (torch.arange(L, device=device).unsqueeze(0) < lengths.unsqueeze(1)).long()
            positions = lengths.clone()
            # First block: the suffix, after the shared prefix.
            blocks = [self.suffix_for(completion_ids[i][:k]) for i, k in queries]
        else:
            past, attn, positions = (
                None,
                torch.zeros(Q, 0, dtype=torch.long, device=device),
                torch.zeros(Q, dtype=torch.long, device=device),
            )
            blocks = [
                list(prompt_ids[i]) + list(completion_ids[i][:k]) + self.suffix_for(completion_ids[i][:k])
                for i, k in queries
            ]
        return self._sample(past, attn, positions, blocks, generator, device, pad)

    def _forward(self, ids, attn, pos, past, kv, last):
        """Logits (N, V) at column ``last`` (N,) of ``ids`` (N, Lb), and the updated cache."""
        N, Lb = ids.shape
        if bool((last == Lb - 1).all()):  # equal blocks: only the last position's logits
            out = self.model(
                input_ids=ids, attention_mask=attn, position_ids=pos, **{kv: past}, use_cache=True, logits_to_keep=1
            )
            return out.logits[:, -1], output_kv_cache(out)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, **{kv: past}, use_cache=True)
        return out.logits[torch.arange(N, device=ids.device), last], output_kv_cache(out)

    def _encode_sources(self, prompt_ids, completion_ids, queries, device, pad):
        """Encode each source sequence (prompt + completion up to its longest cut) once.

        Returns:
            (KV cache with one row per source, {source index: row}, padded length L); a row
            holds its sequence from column 0, padding after it.
        """
        sources = sorted({i for i, _ in queries})
        longest = {i: max(k for j, k in queries if j == i) for i in sources}
        seqs = [list(prompt_ids[i]) + list(completion_ids[i][: longest[i]]) for i in sources]
        L = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, logits_to_keep=1)
        self.stats.encoded_tokens += int(mask.sum())
        return output_kv_cache(out), {i: r for r, i in enumerate(sources)}, L

    def _draw(self, logits: Tensor, node: Tensor, running: Tensor, sampled: list[list[int]], generator) -> Tensor:
        """Next token of every sample from its node's logits (N, V): one ``torch.multinomial``
        over (R, V) on the logits' device (``generator`` lives there); appended to ``sampled``
        for the running samples. Returns the (R,) tokens, on the logits' device; only they
        and ``running`` (R,) are copied to the host."""
        cfg = self.config
        scaled = logits.float() / cfg.temperature
        if cfg.top_k and cfg.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, cfg.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)[node]  # (R, V)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tok_l, run_l = tok.tolist(), running.tolist()
        for r, (t, on) in enumerate(zip(tok_l, run_l)):
            if on:
                sampled[r].append(t)
        self.stats.sampled_tokens += sum(run_l)
        return tok

    def _answers_tree(self, prompt_ids, completion_ids, queries, generator, device, pad) -> list[list[str]]:
        """The shared-prefix path with tree attention: the cache keeps one row per source trace.

        Each source (prompt + trace up to its longest cut) is encoded once. Every query's suffix
        block, and then every trie node's next token, is appended to its source's row; a 4D
        attention mask lets a token see only its own prefix ``[0, len(prompt) + k)``, its block
        and its ancestors in the trie, with the position ids it would have on its own. No cache
        row is copied, whatever the number of cuts and samples. Same draws as :meth:`_sample`.
        """
        model = self.model
        kv = kv_cache_kwarg(model)
        dtype = next(model.parameters()).dtype
        past, where, L = self._encode_sources(prompt_ids, completion_ids, queries, device, pad)
        S = len(where)

        def extend(new_ids, pos, allowed, rows, slots):
            """Append (S, m) tokens; returns the logits (N, V) at (rows, slots)."""
            o = model(
                input_ids=new_ids,
                attention_mask=additive_attention_mask(allowed, dtype).unsqueeze(1),
                position_ids=pos,
                **{kv: past},
                use_cache=True,
            )
            return o.logits[rows, slots], output_kv_cache(o)

        def layout(rows: list[int], widths: list[int]):
            """Slot of each new item in its row, and the widest row."""
            fill, starts = [0] * S, []
            for r, w in zip(rows, widths):
                starts.append(fill[r])
                fill[r] += w
            return starts, max(fill)

        # Suffix blocks: query q's block sits at slots [c_q, c_q + n_q) of its source's row.
        blocks = [self.suffix_for(completion_ids[i][:k]) for i, k in queries]
        rows = [where[i] for i, _ in queries]
        plen = [len(prompt_ids[i]) + k for i, k in queries]
        starts, T = layout(rows, [len(b) for b in blocks])
        new_ids = torch.full((S, T), pad, dtype=torch.long)
        pos = torch.zeros(S, T, dtype=torch.long)
        allowed = torch.zeros(S, T, L + T, dtype=torch.bool)
        allowed[:, torch.arange(T), L + torch.arange(T)] = True  # padding slots see themselves only
        for q, (r, c, b) in enumerate(zip(rows, starts, blocks)):
            n = len(b)
            new_ids[r, c : c + n] = torch.tensor(b, dtype=torch.long)
            pos[r, c : c + n] = plen[q] + torch.arange(n)
            allowed[r, c : c + n, : plen[q]] = True
            allowed[r, c : c + n, L + c : L + c + n] = torch.ones(n, n, dtype=torch.bool).tril()
        self.stats.encoded_tokens += sum(len(b) for b in blocks)
        rows_t = torch.tensor(rows)
        last = torch.tensor([c + len(b) - 1 for c, b in zip(starts, blocks)])
        logits, past = extend(
            new_ids.to(device), pos.to(device), allowed.to(device), rows_t.to(device), last.to(device)
        )
        node_vis, node_pos, node_row = allowed[rows_t, last], pos[rows_t, last], rows_t  # per trie node

        def grow(parent: Tensor, token: Tensor) -> Tensor:
            nonlocal past, node_vis, node_pos, node_row
            parent, token = parent.cpu(), token.cpu()
            crow = node_row[parent]
            slots, m = layout(crow.tolist(), [1] * len(parent))
            slots = torch.tensor(slots)
            C = node_vis.shape[1]
            new_ids = torch.full((S, m), pad, dtype=torch.long)
            pos = torch.zeros(S, m, dtype=torch.long)
            allowed = torch.zeros(S, m, C + m, dtype=torch.bool)
            allowed[:, torch.arange(m), C + torch.arange(m)] = True
            allowed[crow, slots, :C] = node_vis[parent]
            new_ids[crow, slots] = token
            pos[crow, slots] = node_pos[parent] + 1
            logits, past = extend(
                new_ids.to(device), pos.to(device), allowed.to(device), crow.to(device), slots.to(device)
            )
            node_vis, node_pos, node_row = allowed[crow, slots], pos[crow, slots], crow
            return logits

        return self._decode_trie(logits, len(queries), generator, grow)

    def _decode_trie(
        self, logits: Tensor, Q: int, generator, grow: Callable[[Tensor, Tensor], Tensor]
    ) -> list[list[str]]:
        """K answers to each of Q contexts by ancestral sampling on a trie of the drawn tokens.

        ``logits`` (Q, V) are the next-token logits of the Q contexts (the trie's roots). Each
        step draws all R = Q K samples' next tokens in one ``torch.multinomial`` call on their
        nodes' (R, V) probabilities, so a seed gives the same answers as decoding each sample on
        its own; the running samples' distinct (node, token) pairs become the next nodes, whose
        logits ``grow(parent, token)`` returns (N, V), parent indexing the current nodes.
        """
        K, eos = self.config.num_samples, self.tokenizer.eos_token_id
        R = Q * K
        node = torch.arange(Q, device=logits.device).repeat_interleave(K)  # (R,) the trie node of each sample
        running = torch.ones(R, dtype=torch.bool, device=logits.device)
        sampled: list[list[int]] = [[] for _ in range(R)]
        for step in range(self.config.max_answer_tokens):
            tok = self._draw(logits, node, running, sampled, generator)
            running = running & (tok != eos)
            if not bool(running.any()) or step + 1 == self.config.max_answer_tokens:
                break
            V = logits.shape[-1]
            keys, child = torch.unique(node[running] * V + tok[running], return_inverse=True)
            logits = grow(keys // V, keys % V)
            node = torch.zeros_like(node)
            node[running] = child
        self.stats.rows += R
        texts = self.tokenizer.batch_decode(sampled, skip_special_tokens=True)
        return [texts[q * K : (q + 1) * K] for q in range(Q)]

    def _sample(self, past, attn, positions, blocks, generator, device, pad) -> list[list[str]]:
        """K answers per block (:meth:`_decode_trie`) with one copied cache row per trie node.

        Each of the Q blocks (prefix + suffix, or the suffix after a cached prefix) is encoded
        once; its K samples draw their first token from the same logits. From then on the cache
        holds one row per distinct (block, tokens so far) node rather than one per sample, so
        samples that agree (a confident answer) cost one row.
        """
        kv = kv_cache_kwarg(self.model)
        Q = len(blocks)
        n = torch.tensor([len(b) for b in blocks], device=device)
        Lb = int(n.max())
        ids = torch.full((Q, Lb), pad, dtype=torch.long)
        blk = torch.zeros(Q, Lb, dtype=torch.long)
        for q, b in enumerate(blocks):  # left-aligned block, padding after it (masked)
            ids[q, : len(b)] = torch.tensor(b, dtype=torch.long)
            blk[q, : len(b)] = 1
        ids, blk = ids.to(device), blk.to(device)
        pos = positions.unsqueeze(1) + torch.arange(Lb, device=device).unsqueeze(0)
        attn = torch.cat([attn, blk], dim=1)
        logits, past = self._forward(ids, attn, pos, past, kv, n - 1)
        self.stats.encoded_tokens += int(blk.sum())
        positions = positions + n

        def grow(parent: Tensor, token: Tensor) -> Tensor:
            nonlocal past, attn, positions
            if past is not None:
                past.batch_select_indices(parent)
            attn = torch.cat([attn[parent], torch.ones(len(parent), 1, dtype=attn.dtype, device=device)], dim=1)
            positions = positions[parent]
            logits, past = self._forward(
                token.unsqueeze(1),
                attn,
                positions.unsqueeze(1),
                past,
                kv,
                torch.zeros(len(parent), dtype=torch.long, device=device),
            )
            positions = positions + 1
            return logits

        return self._decode_trie(logits, Q, generator, grow)
