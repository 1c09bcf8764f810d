"""Environment steps per second of the batched task distributions under a uniform-random policy.

    python benchmarks/env_throughput.py [--steps 200] [--batch-sizes 1000 16000] [--threads 1]

Prints one markdown table: distribution, device, batch size, steps/s (env transitions per
second, summed over the batch). Runs on CPU, and on CUDA when a GPU is available. Where the
optional dependency gymnax (JAX) is installed, gymnax's BernoulliBandit-misc is measured in the
same run (jit + vmap over the batch) and the ratio is printed.

    python benchmarks/env_throughput.py --mujoco [--batch-sizes 16 256] [--threads 1]

measures the MuJoCo task distributions (classic/envs/mujoco_locomotion.py: one batched
``mujoco.rollout`` call per step) against gymnasium's own vector environment of the same model
and size (``gymnasium.make_vec(..., vectorization_mode="sync")``: one Python ``step`` per
environment), uniform-random actions, in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from classic.envs import BernoulliBandit


def distributions() -> dict:
    out = {"BernoulliBandit(k=5)": BernoulliBandit(5)}
    if importlib.util.find_spec("classic.envs.tabular_mdp") is not None:
        from classic.envs.tabular_mdp import TabularMDPConfig

        out["TabularMDP(S=10, A=5, H=10)"] = TabularMDPConfig().make()
    return out


def torch_steps_per_second(dist, batch: int, steps: int, device: str) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    tasks = dist.sample_tasks(batch, g)
    state, _ = dist.reset(tasks, g)
    for warm in (True, False):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5 if warm else steps):
            action = torch.randint(dist.num_actions, (batch,), generator=g, device=device)
            step = dist.step(tasks, state, action, g)
            state = step.state
            done = step.terminated | step.truncated
            if bool(done.all()):
                state, _ = dist.reset(tasks, g)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return batch * steps / elapsed


def gymnax_steps_per_second(batch: int, steps: int) -> float | None:
    """gymnax's BernoulliBandit-misc in its best case: the whole random-policy rollout compiled
    (``jax.lax.scan`` over steps of a ``vmap`` over the batch, under ``jit``)."""
    try:
        import gymnax
        import jax
    except ImportError:
        return None
    env, params = gymnax.make("BernoulliBandit-misc")
    sample = env.action_space(params).sample

    def one_step(carry, _):
        key, state = carry
        key, k_act, k_step = jax.random.split(key, 3)
        actions = jax.vmap(sample)(jax.random.split(k_act, batch))
        state = jax.vmap(env.step, in_axes=(0, 0, 0, None))(jax.random.split(k_step, batch), state, actions, params)[1]
        return (key, state), None

    @jax.jit
    def rollout(key):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, batch), params)
        return jax.lax.scan(one_step, (key, state), None, length=steps)[0]

    jax.block_until_ready(rollout(jax.random.PRNGKey(0)))  # compile
    start = time.perf_counter()
    jax.block_until_ready(rollout(jax.random.PRNGKey(1)))
    return batch * steps / (time.perf_counter() - start)


def mujoco_rows(batch_sizes: list[int], steps: int) -> list[dict]:
    """Steps/s of each MuJoCo task distribution and of gymnasium's sync vector env of its model."""
    import gymnasium
    import numpy as np

    from classic.envs.mujoco_locomotion import AntDirConfig, CheetahVelConfig

    rows = []
    for config, env_id, kwargs in (
        (CheetahVelConfig(episode_length=10**6), "HalfCheetah-v5", {}),
        (AntDirConfig(episode_length=10**6), "Ant-v5", {"include_cfrc_ext_in_observation": False}),
    ):
        dist = config.make()
        for b in batch_sizes:
            g = torch.Generator().manual_seed(0)
            tasks = dist.sample_tasks(b, g)
            state, _ = dist.reset(tasks, g)
            start = time.perf_counter()
            for _ in range(steps):
                step = dist.step(tasks, state, 2 * torch.rand(b, dist.nu, generator=g) - 1, g)
                state = step.state
            ours = b * steps / (time.perf_counter() - start)
            envs = gymnasium.make_vec(env_id, num_envs=b, vectorization_mode="sync", **kwargs)
            envs.reset(seed=0)
            rng = np.random.default_rng(0)
            start = time.perf_counter()
            for _ in range(steps):
                envs.step(rng.uniform(-1, 1, size=(b, dist.nu)))
            peer = b * steps / (time.perf_counter() - start)
            envs.close()
            rows.append({"distribution": config.name, "batch": b, "ours": ours, "gymnasium": peer})
    return rows


def main(argv: list[str] | None = None) -> list[dict] | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mujoco", action="store_true", help="the MuJoCo task distributions against gymnasium's vector env")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.mujoco:
        rows = mujoco_rows(args.batch_sizes or [16, 256], args.steps)
        print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps per measurement\n")
        print("| distribution | batch | ours (steps/s) | gymnasium sync vector env (steps/s) | ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            ratio = r["ours"] / r["gymnasium"]
            print(f"| {r['distribution']} | {r['batch']} | {r['ours']:,.0f} | {r['gymnasium']:,.0f} | {ratio:.2f}x |")
        return rows
    args.batch_sizes = args.batch_sizes or [1000, 16000]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.steps} steps per measurement\n")
    print("| distribution | device | batch | steps/s | vs gymnax |")
    print("| --- | --- | ---: | ---: | ---: |")
    for b in args.batch_sizes:
        gx = gymnax_steps_per_second(b, args.steps)
        for name, dist in distributions().items():
            for device in devices:
                sps = torch_steps_per_second(dist, b, args.steps, device)
                ratio = f"{sps / gx:.2f}x" if (gx and name.startswith("Bernoulli")) else "—"
                print(f"| {name} | {device} | {b} | {sps:,.0f} | {ratio} |")
        if gx is not None:
            print(f"| gymnax BernoulliBandit-misc | jax-cpu | {b} | {gx:,.0f} | 1.00x |")
    if gymnax_steps_per_second(2, 1) is None:
        print("\n(gymnax not installed: `pip install gymnax` to add its BernoulliBandit-misc to the table)")
    return None


if __name__ == "__main__":
    main()
