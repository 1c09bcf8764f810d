"""Seedable samplers for posterior sampling (Thompson sampling, PSRL): torch's Gamma, Beta and
Dirichlet take no ``torch.Generator``, so every agent's randomness could not follow the
evaluator's seed; these do.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_beta", "sample_dirichlet", "sample_gamma"]


def sample_gamma(shape: Tensor, generator: torch.Generator) -> Tensor:
    """Gamma(shape, 1) samples drawn with an explicit generator.

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables", ACM TOMS 26(3),
    with the boost ``Gamma(a) = Gamma(a + 1) * U^(1/a)`` for ``a < 1``. Only rejected
    entries are redrawn, so a round costs O(#rejected) rather than O(numel) (acceptance is
    > 95% for a >= 1).

    Args:
        shape: any-shape float tensor of shape parameters > 0.
        generator: the torch generator (its device is used).

    Returns:
        Tensor of the same shape and dtype as ``shape``.

    Raises:
        ValueError: if any shape parameter is not > 0.
    """
    if shape.numel() and not bool((shape > 0).all()):
        raise ValueError("sample_gamma: every shape parameter must be > 0")
    dev, dtype = shape.device, shape.dtype
    flat = shape.reshape(-1)
    boost = flat < 1
    a = torch.where(boost, flat + 1.0, flat)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out, ok = _marsaglia_tsang_round(d, c, generator)  # first round dense, no indexing
    todo = (~ok).nonzero().squeeze(1)
    while todo.numel():
        x, ok = _marsaglia_tsang_round(d[todo], c[todo], generator)
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    if bool(boost.any()):
        u = torch.rand(a.shape, generator=generator, device=dev, dtype=dtype)
        out = torch.where(boost, out * u ** (1.0 / flat), out)
    return out.reshape(shape.shape)


def _marsaglia_tsang_round(d: Tensor, c: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One proposal round of Marsaglia & Tsang for 1-D d = a - 1/3, c = 1/sqrt(9d):
    returns (d v, accepted) with v = (1 + c z)^3, z ~ N(0, 1), accepted iff v > 0 and
    ln u < z^2/2 + d - d v + d ln v, u ~ U(0, 1)."""
    z = torch.randn(d.shape, generator=generator, device=d.device, dtype=d.dtype)
    u = torch.rand(d.shape, generator=generator, device=d.device, dtype=d.dtype)
    v = 1.0 + c * z
    v = v * v * v
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d * (1.0 - v + torch.log(v.clamp(min=1e-30))))
    return d * v, ok


def sample_dirichlet(alpha: Tensor, generator: torch.Generator) -> Tensor:
    """Dirichlet(alpha) samples over the last axis: normalized Gamma(alpha_i, 1) variates.

    Args:
        alpha: (..., S) concentration parameters > 0.
        generator: the torch generator.

    Returns:
        (..., S) probability vectors (non-negative, summing to 1 over the last axis).

    Raises:
        ValueError: if any concentration is not > 0 (from :func:`sample_gamma`).
    """
    g = sample_gamma(alpha, generator) + torch.finfo(alpha.dtype).tiny
    return g / g.sum(dim=-1, keepdim=True)


def sample_beta(alpha: Tensor, beta: Tensor, generator: torch.Generator) -> Tensor:
    """Beta(alpha, beta) samples, X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta).

    Args:
        alpha, beta: same-shape float tensors of parameters > 0.
        generator: the torch generator.

    Returns:
        Tensor of the same shape, in (0, 1).

    Raises:
        ValueError: if a parameter is not > 0.
    """
    x = sample_gamma(alpha, generator)
    y = sample_gamma(beta, generator)
    return x / (x + y)
