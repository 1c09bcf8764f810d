"""Wall-clock time and environment steps RL² needs to come within 1% of Gittins on Bernoulli bandits.

    python benchmarks/rl2_time_to_target.py [--settings 5x100,10x100] [--workers 2] [--eval-every 10]
        [--eval-tasks 1000] [--iterations N] [--trials-per-batch N] [--hidden-size N] [--lr X]
        [--seed N] [--max-train-seconds S] [--stop-when both|any|never] [--out PATH]
        [--setting-config KxN='{"key": value, ...}' ...]

What is measured. For each setting ``KxN`` (k arms, n pulls per trial):

1. The target: the finite-horizon Gittins index policy (``GittinsAgent(k, n)``) is run on a
   fixed validation set, the ``--eval-tasks`` held-out tasks of evaluation seed 0
   (``run_trials(..., seed=0)``, the tasks the result tables use, disjoint from training);
   the target is ``0.99 x`` its mean total reward.
2. RL² (``classic.algos.rl2.train_rl2``, default :class:`RL2Config` unless overridden; the
   flags apply to every setting, ``--setting-config`` then overrides fields of one setting,
   e.g. the Table 1 recipe's k=10, n=100 cell: ``--setting-config 10x100='{"hidden_size": 128,
   "head_hidden_size": 64, "ent_coef": 0.05, "num_iterations": 600}'``) is trained, and every
   ``--eval-every`` iterations (and at the last one) the current policy is evaluated on the
   same tasks twice: sampling its actions (``RL2Agent(policy)``, how the agent acts by default
   and in the paper) and taking the most probable action (``RL2Agent(policy, greedy=True)``).
   The two are reported as separate rows of the result: "sampled" and "greedy" each have their
   own time to target.
3. Time to target of a mode = training wall-clock seconds (collection + PPO updates; the
   evaluations and the Gittins baseline are excluded from this clock) and environment steps
   at the first evaluation whose mean total reward is >= the target. By default training
   stops once both modes have reached it (``--stop-when``), or when the iteration budget
   (``--iterations``) or ``--max-train-seconds`` runs out; then "not reached in X s" is
   printed with the best mean seen.

"2 CPU cores": the settings run in parallel, one per worker process (``multiprocessing``
spawn, ``--threads`` torch threads each, default 1), so the benchmark takes about as long as
the slowest setting. ``--workers 1`` runs them one after another in this process.

Caveats. The target is a point estimate on a fixed task set (the 95% CIs of Gittins and RL²
on 1000 tasks are about +-1 reward at k=5), and the first of many evaluations to cross it is
an optimistic pick; the curve in the JSON output shows whether the policy stays above.
Stopping early also cuts the learning-rate / entropy annealing of ``RL2Config``, which is
scheduled over ``--iterations``: a shorter ``--iterations`` anneals sooner, and can reach
the target in fewer steps or not at all. The training clock starts cold (it includes torch's
first-call warm-up, about a second). The machine is shared, so times vary with its load (the
load average is printed), and the two workers compete for the same 2 cores.

Output: a markdown table (one row per setting) on stdout, progress on stderr, and the full
result (machine, arguments, config, per-evaluation curve: iteration, env_steps,
train_seconds, mean_sampled, mean_greedy) as JSON in ``--out``
(default ``runs/benchmarks/rl2_time_to_target.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

# Runnable from the repository root without installing the package.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import torch

from classic.agents.gittins import GittinsAgent
from classic.algos.rl2 import RL2Agent, train_rl2
from classic.algos.rl2_config import RL2Config
from classic.envs.bandit import BanditConfig
from classic.evaluate import mean_ci, run_trials, sample_eval_tasks

TARGET_FRACTION = 0.99
EVAL_SEED = 0
MODES = ("sampled", "greedy")


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"5x100,10x100"`` -> ``[(5, 100), (10, 100)]`` (k arms, n pulls per trial)."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            k, n = (int(v) for v in item.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"setting {item!r} is not of the form KxN, e.g. 5x100") from None
        BanditConfig(num_arms=k, episodes_per_trial=n)  # validates k >= 2, n >= 1
        out.append((k, n))
    if not out:
        raise argparse.ArgumentTypeError("no settings given")
    return out


def parse_setting_config(text: str) -> tuple[tuple[int, int], dict]:
    """``'10x100={"hidden_size": 128}'`` -> ``((10, 100), {"hidden_size": 128})``."""
    key, sep, body = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--setting-config {text!r} is not of the form KxN='{{json}}'")
    (setting,) = parse_settings(key)
    try:
        overrides = json.loads(body)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--setting-config {key}: not JSON ({e})") from None
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError(f"--setting-config {key}: expected a JSON object, got {body!r}")
    try:
        RL2Config(**overrides)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"--setting-config {key}: {e}") from None
    return setting, overrides


def make_config(args: argparse.Namespace) -> RL2Config:
    """Default :class:`RL2Config` with the command-line overrides applied."""
    overrides = {
        "num_iterations": args.iterations,
        "num_trials_per_batch": args.trials_per_batch,
        "num_minibatches": args.num_minibatches,
        "hidden_size": args.hidden_size,
        "learning_rate": args.lr,
        "seed": args.seed,
    }
    return RL2Config(**{k: v for k, v in overrides.items() if v is not None})


def machine_info(threads: int, workers: int) -> dict:
    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average": load,
        "torch": torch.__version__,
        "torch_threads_per_worker": threads,
        "workers": workers,
        "python": platform.python_version(),
    }


def run_setting(job: dict) -> dict:
    """Gittins target + RL² training with periodic evaluation for one (k, n); runs in a worker.

    ``job`` holds ``k``, ``n``, ``config`` (an RL2Config dict), ``eval_tasks``, ``eval_every``,
    ``max_train_seconds``, ``stop_when``, ``threads`` and ``verbose``.
    """
    wall_start = time.perf_counter()
    torch.set_num_threads(job["threads"])
    k, n = job["k"], job["n"]
    tag = f"[k={k} n={n}]"
    config = RL2Config(**job["config"])
    dist = BanditConfig(num_arms=k, episodes_per_trial=n).make()
    tasks = sample_eval_tasks(dist, job["eval_tasks"], EVAL_SEED)

    def log(msg: str) -> None:
        if job["verbose"]:
            print(f"{tag} {msg}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    gittins = run_trials(GittinsAgent(k, n), dist, episodes_per_trial=n, seed=EVAL_SEED, tasks=tasks).summary()[
        "total_reward"
    ]
    target = TARGET_FRACTION * gittins["mean"]
    log(
        f"Gittins {gittins['mean']:.2f} +- {gittins['ci95']:.2f} ({time.perf_counter() - t:.1f} s); target {target:.2f}"
    )

    curve: list[dict] = []
    reached: dict[str, dict | None] = {m: None for m in MODES}
    best: dict[str, dict | None] = {m: None for m in MODES}
    clock = {"eval_s": 0.0, "train_s": 0.0, "iterations": 0, "env_steps": 0}
    every, budget = job["eval_every"], job["max_train_seconds"]

    def on_iteration(iteration: int, policy, env_steps: int) -> bool:
        paused = time.perf_counter()
        train_s = paused - train_start - clock["eval_s"]
        clock.update(train_s=train_s, iterations=iteration + 1, env_steps=env_steps)
        out_of_time = budget is not None and train_s >= budget
        last = iteration + 1 == config.num_iterations
        if not ((iteration + 1) % every == 0 or last or out_of_time):
            return False
        point = {"iteration": iteration + 1, "env_steps": env_steps, "train_seconds": round(train_s, 3)}
        for mode in MODES:
            r = run_trials(
                RL2Agent(policy, greedy=mode == "greedy"), dist, episodes_per_trial=n, seed=EVAL_SEED, tasks=tasks
            )
            stats = mean_ci(r.total_reward)
            point[f"mean_{mode}"] = stats["mean"]
            point[f"ci95_{mode}"] = stats["ci95"]
            if best[mode] is None or stats["mean"] > best[mode]["mean"]:
                best[mode] = {**stats, "iteration": iteration + 1}
            if reached[mode] is None and stats["mean"] >= target:
                reached[mode] = {"train_seconds": train_s, "env_steps": env_steps, "iteration": iteration + 1, **stats}
        curve.append(point)
        log(
            f"it {iteration + 1:4d}  {_steps(env_steps):>6} steps  {train_s:7.1f} s  "
            f"sampled {point['mean_sampled']:6.2f}  greedy {point['mean_greedy']:6.2f}  (target {target:.2f})"
        )
        clock["eval_s"] += time.perf_counter() - paused
        done = [reached[m] is not None for m in MODES]
        stop = {"both": all(done), "any": any(done), "never": False}[job["stop_when"]]
        return stop or out_of_time

    train_start = time.perf_counter()
    train_rl2(config, dist, n, on_iteration=on_iteration)
    return {
        "k": k,
        "n": n,
        "eval_tasks": job["eval_tasks"],
        "gittins": gittins,
        "target": target,
        "reached": reached,
        "best": best,
        "iterations_run": clock["iterations"],
        "env_steps": clock["env_steps"],
        "train_seconds": clock["train_s"],
        "eval_seconds": clock["eval_s"],
        "wall_seconds": time.perf_counter() - wall_start,
        "config": config.to_dict(),
        "curve": curve,
    }


def _steps(x: int) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else str(x)


def format_table(results: list[dict]) -> str:
    def to_target(res: dict, mode: str) -> str:
        hit = res["reached"][mode]
        if hit is None:
            return f"not reached in {res['train_seconds']:.0f} s ({_steps(res['env_steps'])} steps)"
        return f"{hit['train_seconds']:.0f} s, {_steps(hit['env_steps'])} steps (it {hit['iteration']})"

    def best(res: dict, mode: str) -> str:
        b = res["best"][mode]
        return "—" if b is None else f"{b['mean']:.2f} ± {b['ci95']:.2f}"

    lines = [
        (
            "| k | n | Gittins | target (0.99×) | RL² best, sampled | RL² best, greedy | to target, sampled "
            "| to target, greedy | iterations | train s | wall s |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        g = r["gittins"]
        lines.append(
            f"| {r['k']} | {r['n']} | {g['mean']:.2f} ± {g['ci95']:.2f} | {r['target']:.2f} "
            f"| {best(r, 'sampled')} | {best(r, 'greedy')} | {to_target(r, 'sampled')} | {to_target(r, 'greedy')} "
            f"| {r['iterations_run']} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = RL2Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--settings",
        type=parse_settings,
        default=parse_settings("5x100,10x100"),
        help="comma-separated KxN (arms x pulls per trial); default 5x100,10x100",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="settings trained in parallel, one process each (default 2; 1 = in this process)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--eval-every", type=int, default=10, help="iterations between evaluations (default 10)")
    p.add_argument(
        "--eval-tasks", type=int, default=1000, help="held-out tasks (eval seed 0) per evaluation (default 1000)"
    )
    p.add_argument(
        "--iterations", type=int, default=None, help=f"iteration budget (RL2Config default {d.num_iterations})"
    )
    p.add_argument(
        "--trials-per-batch", type=int, default=None, help=f"trials per iteration (default {d.num_trials_per_batch})"
    )
    p.add_argument(
        "--num-minibatches", type=int, default=None, help=f"PPO minibatches per epoch (default {d.num_minibatches})"
    )
    p.add_argument("--hidden-size", type=int, default=None, help=f"GRU hidden units (default {d.hidden_size})")
    p.add_argument("--lr", type=float, default=None, help=f"Adam step size (default {d.learning_rate:g})")
    p.add_argument("--seed", type=int, default=None, help=f"training seed (default {d.seed})")
    p.add_argument(
        "--max-train-seconds",
        type=float,
        default=None,
        help="stop a setting after this much training time (default: no limit)",
    )
    p.add_argument(
        "--stop-when",
        choices=("both", "any", "never"),
        default="both",
        help="stop when both modes / either mode reached the target, or never (full curve); default both",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/benchmarks/rl2_time_to_target.json"),
        help="JSON output (curve and all numbers)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--setting-config",
        type=parse_setting_config,
        action="append",
        default=[],
        metavar="KxN=JSON",
        help="RL2Config fields for one setting, on top of the flags above (repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    for name in ("workers", "threads", "eval_every", "eval_tasks"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    config = make_config(args)
    per_setting = dict(args.setting_config)
    unknown = set(per_setting) - set(args.settings)
    if unknown:
        raise SystemExit(f"--setting-config for {sorted(unknown)}, which are not in --settings")
    workers = min(args.workers, len(args.settings))
    machine = machine_info(args.threads, workers)
    jobs = [
        {
            "k": k,
            "n": n,
            "config": {**config.to_dict(), **per_setting.get((k, n), {})},
            "eval_tasks": args.eval_tasks,
            "eval_every": args.eval_every,
            "max_train_seconds": args.max_train_seconds,
            "stop_when": args.stop_when,
            "threads": args.threads,
            "verbose": not args.quiet,
        }
        for k, n in args.settings
    ]
    print(
        f"{machine['cpu_model'] or 'CPU'}: {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
        f"load average {machine['load_average']}; torch {machine['torch']}, "
        f"{workers} worker process(es) x {args.threads} thread(s)"
    )
    budget = f"{config.num_iterations} iterations x {config.num_trials_per_batch} trials"
    if args.max_train_seconds is not None:
        budget += f", at most {args.max_train_seconds:g} s training"
    print(
        f"RL² budget per setting: {budget}; hidden {config.hidden_size}, lr {config.learning_rate:g}, "
        f"seed {config.seed}; "
        f"eval every {args.eval_every} iterations on {args.eval_tasks} held-out tasks (seed {EVAL_SEED}); "
        f"target {TARGET_FRACTION:g} x Gittins",
        flush=True,
    )
    for (k, n), overrides in per_setting.items():
        print(f"k={k}, n={n} overrides: {json.dumps(overrides)}", flush=True)
    print(flush=True)

    start = time.perf_counter()
    if workers == 1:
        previous = torch.get_num_threads()
        try:
            results = [run_setting(job) for job in jobs]
        finally:
            torch.set_num_threads(previous)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_setting, jobs))
    total = time.perf_counter() - start

    print(format_table(results))
    print(
        f"\nTotal wall time {total:.0f} s. Times to target are training seconds (evaluation excluded); "
        "'sampled' acts by sampling the policy, 'greedy' by its argmax."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_fraction": TARGET_FRACTION,
        "total_wall_seconds": total,
        "results": results,
    }
    args.out.write_text(json.dumps(record, indent=1))
    print(f"Curves and numbers: {args.out}")
    return results


if __name__ == "__main__":
    main()
