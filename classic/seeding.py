"""Named, disjoint random streams: one place for every seed offset of the house.

Every stage draws its tasks and its randomness from a ``torch.Generator`` seeded by
:func:`stream_seed` ``(stream, seed)``: the run's seed plus the stream's base. Bases are far
apart, so the held-out tasks never coincide with training, tuning or distillation tasks of the
same seed, and changing one stage's seed leaves the other stages' draws unchanged. The values
are the ones every result in the README was measured with; changing a base changes numbers.

Example:
    >>> g = generator("eval_tasks", 0)        # the held-out tasks of evaluation seed 0
    >>> stream_seed("tune", 3)
    30003
"""

from __future__ import annotations

import torch

#: stream -> (base, multiplier): seed of ``stream`` for run seed s is base + multiplier * s.
STREAMS: dict[str, tuple[int, int]] = {
    "rl2": (0, 1),  # RL² training (its config's seed as is)
    "tune": (30_000, 1),  # baselines' tuning tasks and their play
    "sft": (20_000, 1),  # distillation trials of the SFT teacher
    "grpo": (40_000, 1),  # GRPO rollout task stream (per rank, see mrl_llm.train.grpo)
    "eval_tasks": (1_000_003, 1),  # held-out tasks
    "eval_play": (1_000_003 + 7919, 7919),  # the environment and agents' randomness at evaluation
    "meta_prover": (10_007, 10_007),  # MRT meta-prover samples
    "prefix": (20_011, 20_011),  # MRT episode-prefix sampling
    "mrt_sft": (1_000, 1),  # MRT warm-start problems
    "mrt_train": (2_000, 1),  # MRT training problems
    "mrt_eval": (3_000, 1),  # MRT held-out problems
}


#: Streams whose integer seeds may coincide with another stream's for some run seeds. They draw
#: sampling noise (MRT's meta-prover and prefix cuts), never tasks; moving them would change MRT's
#: measured numbers. Every other pair of streams is disjoint for run seeds 0..99.
SAMPLER_STREAMS = ("meta_prover", "prefix")


def stream_seed(stream: str, seed: int) -> int:
    """The integer seed of ``stream`` for run seed ``seed``.

    Raises:
        KeyError: unknown stream (the message lists the known ones).
    """
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r} (known: {', '.join(STREAMS)})")
    base, mult = STREAMS[stream]
    return base + mult * int(seed)


def generator(stream: str, seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`stream_seed` ``(stream, seed)``."""
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(stream_seed(stream, seed))
