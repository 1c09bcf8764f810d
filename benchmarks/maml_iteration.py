"""Time of one MAML meta-iteration on 2D navigation: sampling (meta-batch x K episodes x H steps,
one platform rollout over B * K rows per inner step) and the outer update, for each outer-loop
variant of classic/algos/maml.py, in one run on this machine.

    python benchmarks/maml_iteration.py                      # 20 tasks x 20 episodes x 100 steps
    python benchmarks/maml_iteration.py --threads 2 --repeats 5

Prints a table: median seconds per iteration (sampling, update, total) and the speed-up over
second-order MAML with exact TRPO Hessian-vector products (pytorch-maml-rl's MAMLTRPO).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from classic.algos.maml import GaussianMLPPolicy, MAMLAgent, MAMLConfig, ppo_step, sample_meta_batch, trpo_step
from classic.envs.nav2d import Nav2DConfig

VARIANTS = {
    "MAML (TRPO; exact KL HVP)": {},
    "MAML (TRPO; exact KL HVP in Fisher form)": {"kl_hvp": "fisher"},
    "MAML (TRPO; exact KL HVP on 5 of the tasks)": {"kl_hvp_tasks": 5},
    "MAML (TRPO; first-order KL HVP)": {"kl_first_order": True},
    "MAML (PPO outer loop)": {"outer": "ppo"},
    "FOMAML (TRPO)": {"first_order": True},
    "FOMAML (PPO outer loop)": {"first_order": True, "outer": "ppo"},
}


def time_variant(config: MAMLConfig, repeats: int, episode_length: int) -> tuple[float, float]:
    """Median (sampling, update) seconds of ``repeats`` iterations after one warm-up."""
    dist = Nav2DConfig(episode_length=episode_length).make()
    generator = torch.Generator().manual_seed(config.seed)
    policy = GaussianMLPPolicy(dist.obs_dim, 2, config.hidden_sizes, config.init_std, generator=generator)
    agent = MAMLAgent(policy, config)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.ppo_lr)
    sampling, update = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        batch = sample_meta_batch(policy, agent, dist, generator, config)
        t1 = time.perf_counter()
        if config.outer == "trpo":
            trpo_step(policy, batch, config)
        else:
            ppo_step(policy, optimizer, batch, config)
        t2 = time.perf_counter()
        if i:
            sampling.append(t1 - t0)
            update.append(t2 - t1)
    return statistics.median(sampling), statistics.median(update)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--episodes-per-task", type=int, default=20)
    parser.add_argument("--episode-length", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = MAMLConfig(meta_batch_size=args.meta_batch, episodes_per_task=args.episodes_per_task)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        variant = dict(VARIANTS[name])
        if "kl_hvp_tasks" in variant:
            variant["kl_hvp_tasks"] = min(variant["kl_hvp_tasks"], args.meta_batch)
        config = dataclasses.replace(base, **variant)
        sampling, update = time_variant(config, args.repeats, args.episode_length)
        rows.append({"variant": name, "sampling_s": sampling, "update_s": update, "total_s": sampling + update})
    reference = rows[0]["total_s"]
    print(
        f"MAML meta-iteration on nav2d: {args.meta_batch} tasks x {args.episodes_per_task} episodes x "
        f"{args.episode_length} steps, {args.threads} thread(s), median of {args.repeats}"
    )
    print(f"| variant | sampling (s) | update (s) | total (s) | speed-up vs {rows[0]['variant']} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        r["speedup"] = reference / r["total_s"]
        times = f"{r['sampling_s']:.3f} | {r['update_s']:.3f} | {r['total_s']:.3f}"
        print(f"| {r['variant']} | {times} | {r['speedup']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
