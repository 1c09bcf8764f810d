"""Model and tokenizer loading: the tiny local default LM, hub/local models, and LoRA.

The tiny LM is a small transformers causal LM (Qwen2 or Llama architecture) built from a config
and a word-level tokenizer defined in this file, so tests and the CPU recipes never download
anything. Real models (e.g. Qwen2.5-0.5B-Instruct) load through the same
:func:`load_model_and_tokenizer` from the hub or a local path.

Example:
    >>> tok = build_tiny_tokenizer()
    >>> model = build_tiny_model(TinyLMConfig(num_layers=2), tok)
    >>> ids = tok("3 1\\n", add_special_tokens=False).input_ids
    >>> tok.decode(ids)
    '3 1\\n'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch

# Words of every plain-text rendering the project produces (see mrl_llm/envs). Anything else maps
# to <unk>, which the text parsers treat as an invalid action.
_WORDS = """
bernoulli bandit with arms and pulls each line is arm then reward the of a an to on in
pull pulled gave total left so far which next invalid action actions turn turns episode
episodes trial you your are have maximize pays probability unknown fixed otherwise numbered
from reply only number e g answer find x for f y candidate check correct wrong try again
wait but alternatively let me double so is not yes no time up stop thinking give my final
Bernoulli Bandit Arm Reward Pull Answer Wait But Alternatively Let Time So Each You Reply
Invalid N Total Which after armed balancing best choice do exploiting exploring first form multi one playing
system user assistant
Dark dark room goal stay down left right or After write
""".split()
_PUNCT = list(".,:;!?-+=*/()[]{}<>'\"#|_%$&@^~`\\")
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
# Merged pieces for the plain bandit rendering's feedback (" 1\n"), like a BPE merge: a pull is
# then two tokens, the arm and its outcome, which halves sequence length for the tiny LM.
FEEDBACK_TOKENS = [" 0\n", " 1\n"]

# ChatML, the template family Qwen2.5 uses; lets the tiny tokenizer exercise the chat code path.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_vocab() -> dict[str, int]:
    """The tiny tokenizer's vocabulary: specials, digits, whitespace, punctuation, words."""
    tokens = list(SPECIAL_TOKENS.values()) + CHAT_TOKENS + [str(d) for d in range(10)]
    tokens += [" ", "\n", "\t"] + _PUNCT + FEEDBACK_TOKENS
    seen = set(tokens)
    for w in _WORDS:
        if w not in seen:
            tokens.append(w)
            seen.add(w)
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` defined in code (no download).

    Pre-tokenization isolates the feedback pieces " 0\\n" / " 1\\n", every digit, whitespace character,
    punctuation mark and word, so
    numbers are spelled digit by digit ("42" -> "4", "2") and decoding is plain concatenation.
    It carries a ChatML chat template so the conversational path can be tested locally.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"<\|im_start\|>|<\|im_end\|>| [01]\n|\d|[A-Za-z]+|\s|[^\sA-Za-z\d]"), behavior="isolated"
    )
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


@dataclass
class TinyLMConfig:
    """Architecture of the tiny local LM.

    Attributes:
        architecture: "qwen2" or "llama" (transformers config class used).
        hidden_size: model width.
        num_layers: transformer blocks.
        num_heads: attention heads (head_dim = hidden_size / num_heads).
        intermediate_size: MLP width.
        max_position_embeddings: longest sequence (tokens) the model is built for.
    """

    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def build_tiny_model(cfg: TinyLMConfig, tokenizer, seed: int = 0):
    """Randomly initialized causal LM of architecture ``cfg`` over ``tokenizer``'s vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = Qwen2Config if cfg.architecture == "qwen2" else LlamaConfig
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@dataclass
class LoRAConfig:
    """LoRA adapter settings (Hu et al. 2021, arXiv 2106.09685), passed to ``peft.LoraConfig``.

    Attributes:
        enabled: wrap the policy in a LoRA adapter for training.
        r: rank; alpha: scaling numerator (scale = alpha / r); dropout: on the adapter input.
        target_modules: module names to adapt ("all-linear" for every linear layer).
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_peft(self):
        """A ``peft.LoraConfig`` for causal LM, or None when disabled."""
        if not self.enabled:
            return None
        from peft import LoraConfig as PeftLoraConfig

        targets = self.target_modules
        target = "all-linear" if targets == ["all-linear"] else list(targets)
        return PeftLoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=target, task_type="CAUSAL_LM"
        )


@dataclass
class ModelConfig:
    """Which LM to use.

    Attributes:
        name_or_path: "tiny" for the local tiny LM, a hub id (e.g. "Qwen/Qwen2.5-0.5B-Instruct")
            or a local directory written by ``save_pretrained``.
        tiny: architecture of the tiny LM (used only when ``name_or_path == "tiny"``).
        dtype: "float32", "bfloat16", "float16" or "auto": the dtype of models loaded for inference
            (evaluation, sampling). Models loaded for training always hold float32 weights, whatever
            this says: AdamW on bf16 weights rounds away every update smaller than half a bf16 step
            (8 bits of mantissa: at lr 1e-6 almost all of them), and TRL's LoRA merge/unmerge at each
            vLLM weight sync drifts a bf16 base. Mixed precision comes from the stage's ``bf16`` flag
            (autocast), or from DeepSpeed, which keeps its own fp32 master weights.
        chat: render trials through the tokenizer's chat template (instruct models); the tiny
            LM uses the compact plain-text rendering.
        attn_implementation: passed to ``from_pretrained`` (e.g. "sdpa", "flash_attention_2").
        lora: optional LoRA adapter for training.
        trust_remote_code: passed to ``from_pretrained``.
    """

    name_or_path: str = "tiny"
    tiny: TinyLMConfig = field(default_factory=TinyLMConfig)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    chat: bool = False
    attn_implementation: str | None = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    trust_remote_code: bool = False

    @property
    def is_tiny(self) -> bool:
        return self.name_or_path == "tiny"


def torch_dtype(name: str):
    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(cfg: ModelConfig, path: str | os.PathLike | None = None):
    """The tokenizer of ``cfg`` (or of the checkpoint at ``path``): padding on the left, a pad token
    (the EOS token when it has none). The tiny tokenizer loads as itself, not as its architecture's.

    Raises:
        OSError: from transformers when a hub id cannot be reached or a path does not exist.
    """
    if path is None and cfg.is_tiny:
        return build_tiny_tokenizer()
    source = str(path) if path is not None else cfg.name_or_path
    if cfg.is_tiny:
        # AutoTokenizer would pick the tokenizer class of the model architecture (Qwen2Tokenizer),
        # which re-splits text its own way; the tiny tokenizer must load as itself.
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(source)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def inference_device() -> torch.device:
    """The device this process runs models on: its CUDA device when CUDA is available (the local
    rank's, ``LOCAL_RANK``, under ``accelerate launch`` or ``torchrun``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_dtype(cfg: ModelConfig, training: bool):
    """The torch dtype (or "auto") weights are loaded in: float32 for training (see
    :class:`ModelConfig` ``dtype``), ``cfg.dtype`` for inference."""
    return torch.float32 if training else torch_dtype(cfg.dtype)


def load_model_and_tokenizer(
    cfg: ModelConfig,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    training: bool = False,
    device: str | torch.device | None = None,
):
    """Load (or, for the tiny LM, build) a causal LM and its tokenizer.

    Args:
        cfg: the model config.
        path: a local checkpoint directory that overrides ``cfg.name_or_path`` (e.g. the SFT
            output that GRPO starts from).
        seed: initialization seed of the tiny LM.
        training: the model will be trained: float32 weights, left where they load (the trainer
            places them, DeepSpeed shards them). Otherwise weights are in ``cfg.dtype`` and moved
            to ``device``.
        device: where an inference model goes (default :func:`inference_device`: the process's
            GPU when there is one).

    Returns:
        (model, tokenizer); the tokenizer pads on the left and has a pad token.

    Raises:
        OSError: from transformers when a hub id cannot be reached or a path does not exist.
    """
    from transformers import AutoModelForCausalLM

    target = None if training else (device if device is not None else inference_device())
    source = str(path) if path is not None else cfg.name_or_path
    tok = load_tokenizer(cfg, path)
    if path is None and cfg.is_tiny:
        model = build_tiny_model(cfg.tiny, tok, seed=seed)
        return (model if target is None else model.to(target)), tok
    kwargs = {"dtype": load_dtype(cfg, training), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return (model if target is None else model.to(target)), tok


def kv_cache_kwarg(model) -> str:
    """The name under which ``model.forward`` takes a KV cache.

    transformers renamed ``past_key_values`` to ``cache`` (5.2x; the old name warns and goes in
    5.40); the project supports both (``transformers>=4.57``). A PEFT wrapper is looked through.

    Returns:
        ``"cache"`` or ``"past_key_values"``.
    """
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_kv_cache(out):
    """The KV cache of a causal-LM forward output (``out.cache``, or ``out.past_key_values`` before
    the rename); None when the forward ran without ``use_cache``."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def activation_checkpointing_kwargs(args_cls, enabled: bool) -> dict:
    """``{field: enabled}`` for activation (gradient) checkpointing in a ``TrainingArguments``
    subclass (``trl.GRPOConfig``, ``trl.SFTConfig``), under its name in the installed transformers:
    ``activation_checkpointing`` (5.2x; ``gradient_checkpointing`` warns there) or
    ``gradient_checkpointing``. Always explicit: ``trl.SFTConfig`` defaults it to True, which
    would silently recompute every forward pass of a stage configured without it."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_cls)}
    return {
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": bool(enabled)
    }


def attention_implementation(model) -> str | None:
    """The transformers attention kernel of ``model`` ("sdpa", "eager", "flash_attention_2",
    ...; None when it has no config). A PEFT wrapper is looked through."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None)


def takes_4d_attention_mask(model) -> bool:
    """Whether ``model``'s attention takes a custom 4D mask (transformers' "sdpa" and "eager"
    kernels do; flash-attention kernels do not)."""
    return attention_implementation(model) in ("sdpa", "eager")


def additive_attention_mask(allowed, dtype):
    """A 4D-ready additive mask from a bool ``allowed`` (True = may attend): 0 there, the
    dtype's minimum elsewhere; works with both "sdpa" and "eager" attention."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
