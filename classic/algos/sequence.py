"""Sequence models over a trial: the memory of RL², Algorithm Distillation and DPT.

Each model maps a time-major input sequence to features with a *state* carried between calls, the
GRU's calling convention, so a policy can be fed a whole trial at once (training) or one step at a
time (acting) with the same numbers:

    out, state = model(inputs, state)      # inputs (T, B, input_dim) -> out (T, B, width)

- :class:`CausalTransformer`: a GPT-style decoder (pre-LayerNorm blocks, causal self-attention,
  sinusoidal positions; Vaswani et al. 2017, arXiv 1706.03762; Radford et al. 2019). Its state is a
  :class:`KVCache`, the keys and values of every earlier step, so acting step by step costs one
  query per step and equals recomputing the whole prefix.
- :class:`SNAIL`: temporal-convolution blocks (stacks of dilated causal convolutions with gated
  activations, densely concatenated) interleaved with causal attention blocks (Mishra et al. 2018,
  arXiv 1707.03141, Sec. 3 and App. B). Its state is the input history, recomputed at each call
  (exact, O(T^2) over a trial).

Nothing here looks at the future: output t depends on inputs 0..t only (tested by perturbing later
inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# ---------------------------------------------------------------------------------------------
# Positions and the key/value cache
# ---------------------------------------------------------------------------------------------


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """(T, dim) sinusoidal encodings of integer ``positions`` (T,) (Vaswani et al. 2017, arXiv
    1706.03762, Sec. 3.5): ``PE[t, 2i] = sin(t / 10000^(2i/dim))``, ``PE[t, 2i+1] = cos(...)``."""
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) * 2 / dim)
    angle = positions.float().unsqueeze(-1) * freq  # (T, half)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)[..., :dim]


class KVCache:
    """Keys and values of the steps seen so far, per layer: the recurrent state of a
    :class:`CausalTransformer`.

    Buffers are (B, heads, capacity, head_dim), grown by doubling, so appending T steps one at a
    time costs O(T) copies in all (not O(T^2)).

    Attributes:
        length: steps stored (the position of the next step).
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` (B, H, T, dh) after the cached steps of ``layer``; returns the keys and
        values of every step so far (B, H, length + T, dh). Call for each layer, then :meth:`advance`."""
        t, new = self.length, k.shape[2]
        keys = self.keys[layer]
        if keys is None or keys.shape[2] < t + new:
            capacity = max(2 * (t + new), 16)
            grown_k = k.new_empty(*k.shape[:2], capacity, k.shape[3])
            grown_v = v.new_empty(*v.shape[:2], capacity, v.shape[3])
            if keys is not None and t:
                grown_k[:, :, :t] = keys[:, :, :t]
                grown_v[:, :, :t] = self.values[layer][:, :, :t]
            self.keys[layer], self.values[layer] = grown_k, grown_v
        self.keys[layer][:, :, t : t + new] = k
        self.values[layer][:, :, t : t + new] = v
        return self.keys[layer][:, :, : t + new], self.values[layer][:, :, : t + new]

    def advance(self, steps: int) -> None:
        self.length += int(steps)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention of T new queries (B, H, T, dh) over the S >= T keys and values
    (B, H, S, dh) of every step so far, the queries being the last T steps: query i sees keys
    0 .. S - T + i."""
    T, S = q.shape[2], k.shape[2]
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v)
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


# ---------------------------------------------------------------------------------------------
# The causal transformer
# ---------------------------------------------------------------------------------------------


class _Block(nn.Module):
    """Pre-LayerNorm decoder block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GPT-2)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        B, T, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        att = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, W)
        x = x + self.proj(att)
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """A causal transformer over a trial with a key/value cache as its state.

    Args:
        input_dim: D, features per step.
        width: d_model, also the output width.
        num_layers: decoder blocks.
        num_heads: attention heads (``width`` must be divisible by it).
        generator: initialization RNG (normal(0, 0.02) weights, GPT-2's; the input embedding
            uniform in +-1/sqrt(input_dim), so sparse one-hot inputs are not drowned by the
            positions).
        positions: add sinusoidal position encodings; False: none (the causal mask alone orders
            the steps, "NoPE"; for set-like inputs such as DPT's in-context dataset).

    Raises:
        ValueError: ``width`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        input_dim: int,
        width: int,
        num_layers: int,
        num_heads: int,
        generator: torch.Generator | None = None,
        positions: bool = True,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        self.width, self.num_layers, self.positions = int(width), int(num_layers), bool(positions)
        self.embed = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(_Block(width, num_heads) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02, generator=generator)
                nn.init.zeros_(module.bias)
        bound = 1.0 / math.sqrt(input_dim)
        nn.init.uniform_(self.embed.weight, -bound, bound, generator=generator)

    def initial_state(self, batch_size: int) -> KVCache:
        """An empty cache: the start of a trial (``batch_size`` is fixed by the first call)."""
        return KVCache(self.num_layers)

    def forward(self, inputs: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache | None]:
        """Features of T new steps after the ``state.length`` steps already in ``state``.

        Args:
            inputs: (T, B, input_dim).
            state: the cache of earlier steps (updated in place and returned); None: no earlier
                steps and nothing kept.

        Returns:
            ``(out, state)``: out (T, B, width).
        """
        T = inputs.shape[0]
        start = state.length if state is not None else 0
        x = self.embed(inputs.transpose(0, 1))  # (B, T, W)
        if self.positions:
            x = x + sinusoidal_positions(torch.arange(start, start + T, device=inputs.device), self.width)
        for layer, block in enumerate(self.blocks):
            x = block(x, state, layer)
        if state is not None:
            state.advance(T)
        return self.ln_f(x).transpose(0, 1), state


# ---------------------------------------------------------------------------------------------
# SNAIL
# ---------------------------------------------------------------------------------------------


class _DenseBlock(nn.Module):
    """SNAIL's DenseBlock(R, D): a causal convolution of kernel 2 and dilation R, gated
    ``tanh(xf) * sigmoid(xg)``, its D channels concatenated to the input (arXiv 1707.03141, App. B)."""

    def __init__(self, channels: int, dilation: int, filters: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C + filters, T)
        xf, xg = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)
        return torch.cat([x, torch.tanh(xf) * torch.sigmoid(xg)], dim=1)


class _AttentionBlock(nn.Module):
    """SNAIL's AttentionBlock(K, V): single-head causal attention, its V channels concatenated to
    the input."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(channels, key_size), nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C + V, T)
        h = x.transpose(1, 2)
        q, k, v = self.query(h), self.key(h), self.value(h)
        att = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True)
        return torch.cat([x, att.squeeze(1).transpose(1, 2)], dim=1)


class SNAIL(nn.Module):
    """SNAIL's RL architecture (Mishra et al. 2018, arXiv 1707.03141, App. C.2 for bandits and MDPs):
    ``TC(T, filters) -> TC(T, filters) -> Attention(key, value)`` over a linear embedding, then a
    linear layer to ``width`` features.

    TC(T, D) stacks ``ceil(log2 T)`` DenseBlocks of dilations 1, 2, 4, ..., so every output sees the
    whole trial.

    Args:
        input_dim: D, features per step.
        width: output features.
        seq_len: T, the longest trial (sets the number of dense blocks; longer inputs still work,
            with a receptive field of ``2^ceil(log2 T)`` steps before the attention).
        filters: channels each DenseBlock adds (the paper: 32).
        key_size, value_size: the attention block's (the paper: 16, 16 for MDPs).
        generator: initialization RNG (every weight and bias uniform in +-1/sqrt(fan_in), torch's
            default range, drawn from it).

    The state passed between calls is the (B, t, D) input history; each call recomputes the
    whole history (exact; O(T^2) over a trial of T steps).
    """

    def __init__(
        self,
        input_dim: int,
        width: int,
        seq_len: int,
        filters: int = 32,
        key_size: int = 16,
        value_size: int = 16,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.width = int(width)
        depth = max(1, math.ceil(math.log2(max(int(seq_len), 2))))
        channels = 2 * filters
        self.embed = nn.Linear(input_dim, channels)
        layers: list[nn.Module] = []
        for _ in range(2):  # two TC blocks
            for i in range(depth):
                layers.append(_DenseBlock(channels, 2**i, filters))
                channels += filters
        layers.append(_AttentionBlock(channels, key_size, value_size))
        channels += value_size
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(channels, width)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                bound = 1.0 / math.sqrt(module.weight[0].numel())  # fan-in
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.uniform_(-bound, bound, generator=generator)

    def initial_state(self, batch_size: int) -> Tensor:
        """(B, 0, D) the empty input history (D is fixed by the first call)."""
        return torch.zeros(batch_size, 0, 0)

    def forward(self, inputs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Features (T, B, width) of T new steps after the history ``state`` (B, t, D); returns
        the history extended by them (None stays None)."""
        x = inputs.transpose(0, 1)  # (B, T, D)
        history = x if state is None or state.shape[1] == 0 else torch.cat([state, x], dim=1)
        h = self.embed(history).transpose(1, 2)  # (B, C, t + T)
        for layer in self.layers:
            h = layer(h)
        out = torch.relu(self.out(h.transpose(1, 2)))[:, -inputs.shape[0] :]
        return out.transpose(0, 1), (history if state is not None else None)
