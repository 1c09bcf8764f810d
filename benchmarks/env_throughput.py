"""Environment steps per second of the batched task distributions under a uniform-random policy.

    python benchmarks/env_throughput.py [--steps 200] [--batch-sizes 1000 16000] [--threads 1]

Prints one markdown table: distribution, device, batch size, steps/s (env transitions per
second, summed over the batch). Runs on CPU, and on CUDA when a GPU is available. Where the
optional dependency gymnax (JAX) is installed, gymnax's BernoulliBandit-misc is measured in the
same run (jit + vmap over the batch) and the ratio is printed.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 16000])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()
