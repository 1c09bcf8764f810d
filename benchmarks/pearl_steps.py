"""PEARL gradient steps per second on the sparse point robot, for oyster's network sizes and for the
budget recipe's, beside the same SAC step without the context encoder (the peer: what task
inference costs), in one run on this machine.

    python benchmarks/pearl_steps.py                  # all rows, torch's default threads
    python benchmarks/pearl_steps.py --threads 2 --steps 50

A step is :func:`classic.algos.pearl.gradient_step` on a meta-batch: context and RL batches drawn
from per-task buffers filled with prior episodes, the encoder + Q update, then V and the policy.
Prints a table: median milliseconds per step and steps per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from classic.algos.pearl import PEARLConfig, collect, gradient_step, new_state
from classic.envs.point_robot import PointRobotConfig

LABELS = {
    "oyster": "oyster default (300x3 nets, 200x3 encoder; 16 tasks x 256 RL + 64 context)",
    "oyster-sparse": "oyster sparse point robot (context 1024)",
    "budget": "budget recipe (128x2 nets and encoder; 16 tasks x 128 RL + 128 context)",
}
VARIANTS = {
    "oyster": {},
    "oyster-sparse": {"embedding_batch_size": 1024},
    "budget": {
        "hidden_sizes": [128, 128],
        "encoder_hidden_sizes": [128, 128],
        "batch_size": 128,
        "embedding_batch_size": 128,
    },
}


def time_variant(config: PEARLConfig, steps: int, encoder: bool = True) -> float:
    """Median seconds per gradient step over ``steps`` steps after 3 warm-up steps; ``encoder``
    False: the context is one zero transition and z does not enter the loss graph (plain SAC)."""
    dist = PointRobotConfig().make()
    state = new_state(config, dist)
    g = state.generator
    collect(state, dist, torch.arange(config.num_train_tasks), 200, False, True, config)
    times = []
    for i in range(steps + 3):
        ids = torch.randperm(config.num_train_tasks, generator=g)[: config.meta_batch]
        t0 = time.perf_counter()
        rl = state.replay.sample(ids, config.batch_size, g)
        if encoder:
            context = state.encoder_buffers.sample(ids, config.embedding_batch_size, g).context()
        else:
            context = torch.zeros(len(ids), 1, state.nets.context_dim)
        gradient_step(state.nets, state.optimizers, rl, context, config, g)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--meta-batch", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {sorted(VARIANTS)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        config = dataclasses.replace(
            PEARLConfig(num_train_tasks=max(args.meta_batch, 16), meta_batch=args.meta_batch), **VARIANTS[name]
        )
        for encoder in (True, False):
            seconds = time_variant(config, args.steps, encoder)
            label = LABELS[name] if encoder else "  peer: same SAC step without the encoder (z = 0 context)"
            rows.append(
                {"variant": label, "key": name, "encoder": encoder, "step_s": seconds, "steps_per_s": 1.0 / seconds}
            )
    print(f"PEARL gradient step on the sparse point robot, {args.threads} thread(s), median of {args.steps}")
    print("| variant | ms per step | steps/s |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {1000 * r['step_s']:.1f} | {r['steps_per_s']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
