"""The fake ``vllm.LLM``: vLLM's offline API over a transformers causal LM, on CPU.

Follows vLLM 0.31's signatures for what the project calls (``LLM(model, *, dtype, seed,
gpu_memory_utilization, enable_prefix_caching, max_num_seqs, ...)``, ``LLM.generate(prompts,
sampling_params, *, use_tqdm)``, ``sleep`` / ``wake_up``, ``llm.llm_engine.vllm_config`` and
``llm.llm_engine.engine_core.shutdown()``), its sampling order (temperature, then top-k, then
top-p, as ``vllm/v1/sample/ops/topk_topp_sampler.py:apply_top_k_top_p``), its seeding (a seeded
request draws from a generator seeded with its seed; its ``n`` samples from ``seed + index``;
unseeded requests share the engine's generator, seeded by ``LLM(seed=...)``), its outputs
(stop token kept in ``token_ids``; ``logprobs`` dicts with the sampled token and the top k;
``logprobs_mode`` "raw_logprobs" (default: log-softmax of the raw logits) or
"processed_logprobs" (after temperature and filtering, what TRL sets)) and its start-up memory
check (:mod:`vllm._fake_memory`). Every sequence is decoded on its own by re-encoding its whole
history each token (slow, exact; tests use the tiny LM).

``llm.calls`` records every ``generate`` call as ``{"prompts": [token ids], "params": [SamplingParams]}``.
"""

from __future__ import annotations

import itertools

import torch

from vllm._fake_memory import FAKE_MEMORY
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

_ENGINE_IDS = itertools.count()

#: engine arguments the fake accepts and ignores (vLLM's ``EngineArgs`` fields that TRL or we pass).
_IGNORED_ENGINE_ARGS = {
    "tokenizer_mode",
    "skip_tokenizer_init",
    "tensor_parallel_size",
    "quantization",
    "revision",
    "tokenizer_revision",
    "enforce_eager",
    "max_num_batched_tokens",
    "distributed_executor_backend",
    "model_impl",
    "disable_log_stats",
    "kv_cache_memory_bytes",
    "swap_space",
    "cpu_offload_gb",
    "max_logprobs",
    "compilation_config",
    "runner",
}


def apply_top_k_top_p(logits: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """vLLM's filter on (B, V) float logits: top-k (k <= 0: off), then top-p on what is left."""
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)
    if k > 0 and k < logits.shape[-1]:
        kth = logits_sort[:, -k : -k + 1] if k > 1 else logits_sort[:, -1:]
        logits_sort = logits_sort.masked_fill(logits_sort < kth, float("-inf"))
    if p < 1.0:
        probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
        top_p_mask = probs_sum <= 1 - p
        top_p_mask[:, -1] = False
        logits_sort = logits_sort.masked_fill(top_p_mask, float("-inf"))
    return logits_sort.scatter(dim=-1, index=logits_idx, src=logits_sort)


class _SchedulerConfig:
    def __init__(self, max_num_seqs: int, max_model_len: int | None) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len


class _CacheConfig:
    def __init__(self, gpu_memory_utilization: float, enable_prefix_caching: bool) -> None:
        self.gpu_memory_utilization = gpu_memory_utilization
        self.enable_prefix_caching = enable_prefix_caching


class _VllmConfig:
    def __init__(self, scheduler_config, cache_config) -> None:
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config


class _EngineCore:
    def __init__(self, llm: "LLM") -> None:
        self._label = llm._label

    def shutdown(self) -> None:
        """Release the engine's memory (vLLM: stops the engine-core process / executor)."""
        FAKE_MEMORY.release(self._label)


class _LLMEngine:
    def __init__(self, llm: "LLM", vllm_config: _VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.engine_core = _EngineCore(llm)


class LLM:
    """A fake ``vllm.LLM`` over the transformers checkpoint at ``model`` (see the module docstring).

    Raises:
        ValueError: vLLM's "Free memory on device ..." when ``gpu_memory_utilization`` does not
            fit next to the live engines and reservations of :data:`vllm.FAKE_MEMORY`.
        TypeError: for an engine argument the fake does not know.
    """

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | torch.dtype = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        enable_prefix_caching: bool | None = None,
        enable_sleep_mode: bool = False,
        logprobs_mode: str = "raw_logprobs",
        **kwargs,
    ) -> None:
        unknown = set(kwargs) - _IGNORED_ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"the fake has logprobs_mode raw_logprobs and processed_logprobs, got {logprobs_mode!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"GPU memory utilization must be within (0, 1]. Got {gpu_memory_utilization}.")
        self._label = f"vllm.LLM#{next(_ENGINE_IDS)}"
        FAKE_MEMORY.reserve(self._label, gpu_memory_utilization)  # raises vLLM's error when it does not fit
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch_dtype = (
                {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
                    dtype, dtype
                )
                if isinstance(dtype, str)
                else dtype
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype, trust_remote_code=trust_remote_code
            ).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        except BaseException:
            FAKE_MEMORY.release(self._label)
            raise
        self.seed = seed
        self.logprobs_mode = logprobs_mode
        self.enable_sleep_mode = enable_sleep_mode
        self.gpu_memory_utilization = gpu_memory_utilization
        self._generator = torch.Generator().manual_seed(seed)  # unseeded requests
        self._sleeping = False
        self._requests = itertools.count()
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self._eos = {int(e) for e in eos if e is not None}
        config = _VllmConfig(
            _SchedulerConfig(max_num_seqs or 128, max_model_len),
            _CacheConfig(gpu_memory_utilization, bool(enable_prefix_caching)),
        )
        self.llm_engine = _LLMEngine(self, config)
        self.calls: list[dict] = []

    def __del__(self) -> None:
        label = getattr(self, "_label", None)
        if label is not None:
            FAKE_MEMORY.release(label)

    def get_tokenizer(self):
        return self.tokenizer

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        """Level >= 1 frees the engine's device memory (vLLM: weights offloaded / discarded, KV cache discarded)."""
        if level >= 1:
            FAKE_MEMORY.release(self._label)
        self._sleeping = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        if self._sleeping and self._label not in FAKE_MEMORY.holders():
            FAKE_MEMORY.reserve(self._label, self.gpu_memory_utilization)
        self._sleeping = False

    # ---- generation -------------------------------------------------------------------------
    def generate(
        self,
        prompts,
        sampling_params=None,
        *,
        use_tqdm=True,
        lora_request=None,
        priority=None,
        tokenization_kwargs=None,
        mm_processor_kwargs=None,
    ) -> list[RequestOutput]:
        """One :class:`RequestOutput` per prompt (a str, a ``TokensPrompt`` dict, or a list of them);
        ``sampling_params``: one ``SamplingParams`` for every prompt, a list paired with the
        prompts one by one, or None (vLLM's defaults)."""
        if self._sleeping:
            raise RuntimeError("the engine is sleeping: call wake_up() first")
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
            params = list(sampling_params)
        else:
            params = [sampling_params] * len(prompts)
        ids = [self._prompt_ids(p) for p in prompts]
        self.calls.append({"prompts": ids, "params": params})
        outs = []
        for p, prompt_ids, sp in zip(prompts, ids, params):
            rid = str(next(self._requests))
            children = [sp] if sp.n == 1 else [sp.child(i) for i in range(sp.n)]
            completions = [self._decode(prompt_ids, c, index) for index, c in enumerate(children)]
            outs.append(RequestOutput(rid, p if isinstance(p, str) else p.get("prompt"), prompt_ids, completions))
        return outs

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return [int(t) for t in prompt["prompt_token_ids"]]
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self.tokenizer(prompt["prompt"])["input_ids"]
        raise TypeError(f"unsupported prompt {prompt!r}")

    @torch.no_grad()
    def _decode(self, prompt_ids: list[int], sp: SamplingParams, index: int) -> CompletionOutput:
        if not prompt_ids:
            raise ValueError("The decoder prompt cannot be empty")
        gen = torch.Generator().manual_seed(sp.seed) if sp.seed is not None else self._generator
        stops = set(sp.stop_token_ids) | (set() if sp.ignore_eos else self._eos)
        max_tokens = sp.max_tokens if sp.max_tokens is not None else 2**31
        seq, out, lps, cum, finish, stop_reason = list(prompt_ids), [], [], 0.0, "length", None
        for _ in range(max_tokens):
            logits = self.model(input_ids=torch.tensor([seq])).logits[:, -1].float()  # (1, V)
            raw = torch.log_softmax(logits, dim=-1)
            greedy = sp.temperature < 1e-5
            processed = apply_top_k_top_p(logits / (1.0 if greedy else sp.temperature), sp.top_k, sp.top_p)
            if sp.min_p > 0:
                probs = processed.softmax(-1)
                processed = processed.masked_fill(probs < sp.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
            logp = torch.log_softmax(processed, dim=-1)
            if greedy:
                t = int(logits.argmax(-1))
            else:
                t = int(torch.multinomial(logp.exp(), 1, generator=gen))
            report = raw if self.logprobs_mode == "raw_logprobs" else logp
            if sp.logprobs is not None:
                k = report.shape[-1] if sp.logprobs == -1 else sp.logprobs
                ranks = (report[0] > report[0, t]).sum().item() + 1
                entry = {t: Logprob(float(report[0, t]), int(ranks), self.tokenizer.decode([t]))}
                if k:
                    top = torch.topk(report[0], k)
                    for r, (v, j) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                        entry.setdefault(j, Logprob(float(v), r + 1, self.tokenizer.decode([j])))
                lps.append(entry)
            cum += float(report[0, t])
            out.append(t)
            seq.append(t)
            if t in stops and len(out) >= sp.min_tokens:
                finish = "stop"
                stop_reason = t if t in sp.stop_token_ids and t not in self._eos else None
                break
        text = self.tokenizer.decode(out, skip_special_tokens=sp.skip_special_tokens)
        return CompletionOutput(
            index,
            text,
            out,
            cum if sp.logprobs is not None else None,
            lps if sp.logprobs is not None else None,
            finish,
            stop_reason,
        )
