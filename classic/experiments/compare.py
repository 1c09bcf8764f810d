"""``kind: compare``: every agent on the same held-out tasks of one task distribution, scored by
the one evaluator.

A compare recipe names its parts from the registries (:mod:`classic.registry`)::

    kind: compare
    name: gridnavi_rl2
    task: {name: gridnavi, episodes_per_trial: 4}
    protocol: {num_tasks: 1000, seed: 0}
    baselines: [{name: Random}]
    learners: [{name: rl2, algo: {num_iterations: 300}}]

Stages, each reused when the run is started again with the same settings:

1. baselines: each one's ``grid`` is searched on training tasks (stream ``tune``), the best
   point is evaluated;
2. learners: each one trains in its own stage folder (``<run>/<stage>/``, opened with the
   fingerprint of the task and its config, :func:`classic.files.open_stage`), then is evaluated;
3. the report: ``report.md`` (results table, return per episode index of the trial beside the
   oracle and the Bayes-optimal bound where the task knows them, each agent's gap), ``regret.png``,
   ``adaptation.png`` and ``results.json`` (``{"task": {...}, "agents": {name: summary}, ...}``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from classic import seeding
from classic.agents.base import BaselineConfig, settings_text
from classic.config import save_resolved, to_dict
from classic.core import StageRun, TaskDistribution
from classic.distributed import is_main_process
from classic.evaluate import TrialResult, run_trials
from classic.executor import ExecutorConfig, make_executor
from classic.files import OutputConfig, open_stage, prepare_run_dir, write_atomic
from classic.metrics import MetricsLogger
from classic.registry import AGENTS, LEARNERS, TASKS
from classic.report import (
    adaptation_table,
    plot_adaptation,
    plot_regret,
    results_table,
    stage_times_table,
    write_results_json,
)
from classic.workers import set_threads

TaskRef, BaselineRef, LearnerRef = TASKS.ref, AGENTS.ref, LEARNERS.ref


def _default_task():
    return TASKS.get("bandit")()


def _default_baselines() -> list:
    return [AGENTS.get(n)() for n in ("Random", "Greedy", "epsilon-greedy", "UCB1", "Thompson sampling", "Gittins")]


def _default_learners() -> list:
    return [LEARNERS.get("rl2")()]


@dataclass
class ProtocolConfig:
    """The meta-test protocol (the trial's length is the task's ``episodes_per_trial``).

    Attributes:
        num_tasks: held-out tasks, one trial each (>= 2, for a CI).
        seed: evaluation seed (held-out tasks: stream ``eval_tasks``; disjoint from training).
        batch_size: tasks run at once (None: all).
        tune_tasks: training tasks per grid point when tuning baselines.
        eval_task: task settings that differ at evaluation (held-out task splits, e.g. Dark Room's
            ``{goal_split: test}`` while learners train on ``train`` goals); empty: the same task.
    """

    num_tasks: int = 1000
    seed: int = 0
    batch_size: int | None = None
    tune_tasks: int = 2000
    eval_task: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_tasks < 2:
            raise ValueError(f"num_tasks must be >= 2 (for a CI), got {self.num_tasks}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or null: all tasks at once), got {self.batch_size}")
        if self.tune_tasks < 1:
            raise ValueError(f"tune_tasks must be >= 1, got {self.tune_tasks}")


@dataclass(frozen=True)
class Protocol:
    """The resolved protocol a learner trains for and the evaluator runs."""

    episodes_per_trial: int
    num_tasks: int
    seed: int
    batch_size: int | None
    tune_tasks: int = 2000


@dataclass
class CompareExperiment:
    """One task distribution, baselines and learners, one evaluator (``kind: compare`` recipes).

    Attributes:
        name: run name (the folder under ``output.root``).
        seed: seed of the tuning stream (and given to learners).
        threads: torch CPU threads (None: all cores; pin it where a recipe quotes numbers).
        workers: learners trained at once: with 2 or more, each learner that trains on the main
            process only (RL², MAML, not the LLM) trains in one of ``workers`` worker processes
            (``workers - 1`` when this process trains an LLM meanwhile) of ``threads`` threads
            (``executor``: local processes or Ray) while this process runs the baselines; the
            same numbers either way (same seeds, same thread count).
        executor: where those workers run (:mod:`classic.executor`).
        task: the task distribution, by registry name (``task: {name: bandit, num_arms: 5}``).
        protocol: held-out tasks, evaluation seed, tuning tasks.
        baselines: hand-designed agents by registry name, each with its own tuning ``grid``.
        learners: meta-learners by registry name (``learners: [{name: rl2, algo: {...}}]``).
        output: where the run writes.

    Raises:
        ValueError: no agent at all, or two agents with one name in reports (set ``label``).
    """

    name: str = "compare"
    seed: int = 0
    threads: int | None = None
    workers: int = 1
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    task: TaskRef = field(default_factory=_default_task)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    baselines: list[BaselineRef] = field(default_factory=_default_baselines)
    learners: list[LearnerRef] = field(default_factory=_default_learners)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.baselines and not self.learners:
            raise ValueError("name at least one baseline or learner")
        names = [b.display_name for b in self.baselines] + [learner.display_name for learner in self.learners]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two agents are named {dup[0]!r} in reports: give one a 'label'")
        stages = [stage_name(learner) for learner in self.learners]
        dup = sorted({n for n in stages if stages.count(n) > 1})
        if dup:
            raise ValueError(f"two learners would train in the stage folder {dup[0]!r}: give one a 'label'")
        self.eval_task_config()  # checks protocol.eval_task

    def eval_task_config(self) -> Any:
        """The task config of the held-out evaluation (``task`` with ``protocol.eval_task`` applied).

        Raises:
            ValueError: ``protocol.eval_task`` names a key the task does not have.
        """
        known = [f.name for f in fields(self.task) if f.name != "name"]
        unknown = [k for k in self.protocol.eval_task if k not in known]
        if unknown:
            raise ValueError(f"protocol.eval_task: the task has no key {unknown[0]!r} (known: {', '.join(known)})")
        return replace(self.task, **self.protocol.eval_task)

    def protocol_for_task(self) -> Protocol:
        p = self.protocol
        return Protocol(self.task.episodes_per_trial, p.num_tasks, p.seed, p.batch_size, p.tune_tasks)


# ---- baselines ------------------------------------------------------------------------------


def tune_baseline(
    config: BaselineConfig, dist: TaskDistribution, episodes_per_trial: int, tasks: Any, seed: int
) -> tuple[BaselineConfig, dict[str, float]]:
    """Search ``config``'s tuning grid on training ``tasks``; returns the best config (first best on
    ties) and ``{"key=value[,key=value]": mean total reward}`` per grid point."""
    grid = config.tuning_grid(dist)
    if not grid:
        return config, {}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    means = []
    for point in points:
        agent = replace(config, grid={}, **point).make(dist, episodes_per_trial)
        result = run_trials(
            agent, dist, tasks=tasks, episodes_per_trial=episodes_per_trial, seed=seeding.stream_seed("tune", seed)
        )
        means.append(float(result.total_reward.mean()))
    best = points[max(range(len(points)), key=means.__getitem__)]
    table = {",".join(f"{k}={v}" for k, v in point.items()): m for point, m in zip(points, means)}
    return replace(config, **best), table


def run_baselines(
    cfg: CompareExperiment,
    dist: TaskDistribution,
    eval_dist: TaskDistribution,
    protocol: Protocol,
    times: dict,
    progress: bool = True,
) -> tuple[dict[str, TrialResult], dict]:
    """Tune (on training tasks of ``dist``) and evaluate every baseline on the held-out tasks of
    ``eval_dist``; returns results and the chosen settings."""
    results, params = {}, {}
    tune_tasks = None
    for config in cfg.baselines:
        name = config.display_name
        if config.tuning_grid(dist):
            t = time.perf_counter()
            if tune_tasks is None:  # drawn once: every baseline is tuned on the same training tasks
                tune_tasks = dist.sample_tasks(cfg.protocol.tune_tasks, seeding.generator("tune", cfg.seed))
            config, grid = tune_baseline(config, dist, protocol.episodes_per_trial, tune_tasks, cfg.seed)
            times[f"tune {name}"] = time.perf_counter() - t
        else:
            grid = {}
        t = time.perf_counter()
        results[name] = run_trials(
            config.make(eval_dist, protocol.episodes_per_trial),
            eval_dist,
            protocol.num_tasks,
            protocol.episodes_per_trial,
            seed=protocol.seed,
            batch_size=protocol.batch_size,
        )
        times[f"evaluate {name}"] = time.perf_counter() - t
        chosen = config.settings()
        params[name] = {"params": chosen, "grid": grid}
    return results, params


# ---- learners -------------------------------------------------------------------------------


def stage_name(config: Any) -> str:
    """The learner's stage folder: its label, else its config's ``stage`` (a learner whose variants
    share a registry name, e.g. MAML's "fomaml", "pretrained"), else its registry name ("rl2"), as a
    file name."""
    text = config.label or getattr(config, "stage", None) or config.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or config.name


def train_learner(
    config: Any,
    cfg: CompareExperiment,
    dist: TaskDistribution,
    protocol: Protocol,
    run_dir: Path,
    logger: MetricsLogger | None,
    times: dict,
    progress: bool = True,
) -> Any:
    """Train one learner on ``dist`` in its stage folder (reused or resumed when its fingerprint
    matches, :meth:`~classic.core.MetaLearner.stage_fingerprint`); returns its checkpoint."""
    learner = config.learner()
    stage = run_dir / stage_name(config)
    fingerprint = learner.stage_fingerprint(config, cfg.task)
    if fingerprint is not None:
        forget = (lambda: logger.forget(f"{stage.name}/")) if logger is not None else None  # its old curve
        open_stage(stage, {k: to_dict(v) if is_dataclass(v) else v for k, v in fingerprint.items()}, on_new=forget)
    t = time.perf_counter()
    checkpoint = learner.train(config, dist, protocol, StageRun(stage, logger, progress, cfg.seed, cfg.task))
    times[f"train {config.display_name}"] = time.perf_counter() - t
    return checkpoint


def train_learner_in_worker(config: Any, cfg: CompareExperiment, run_dir: str) -> tuple[Any, float]:
    """:func:`train_learner` in a worker process (its own metrics logger, appending whole lines to
    the run's ``metrics.jsonl``); returns the checkpoint and the training seconds."""
    set_threads(cfg.threads)
    times: dict[str, float] = {}
    with MetricsLogger(run_dir) as logger:
        checkpoint = train_learner(
            config, cfg, cfg.task.make(), cfg.protocol_for_task(), Path(run_dir), logger, times, progress=False
        )
    return checkpoint, times[f"train {config.display_name}"]


def evaluate_learner(
    config: Any, checkpoint: Any, eval_dist: TaskDistribution, protocol: Protocol, times: dict
) -> dict[str, TrialResult]:
    """Every agent of a trained learner (:meth:`~classic.core.MetaLearner.agents`) on the held-out
    tasks of ``eval_dist``."""
    learner = config.learner()
    batch_size = learner.evaluation_batch_size(config, protocol)
    results = {}
    for name, agent in learner.agents(config, checkpoint, eval_dist):
        t = time.perf_counter()
        results[name] = run_trials(
            agent, eval_dist, protocol.num_tasks, protocol.episodes_per_trial, seed=protocol.seed, batch_size=batch_size
        )
        times[f"evaluate {name}"] = time.perf_counter() - t
        del agent
    return results


# ---- bounds and the report ------------------------------------------------------------------


def bounds(dist: TaskDistribution, protocol: Protocol) -> dict[str, list[float]]:
    """Per-episode expected return of the limits the task knows: the known-task oracle (mean over
    the held-out tasks) and the Bayes-optimal policy; an empty dict when it knows neither."""
    out = {}
    E = protocol.episodes_per_trial
    bayes = dist.bayes_optimal_episode_returns(E)
    if bayes is not None:
        out["Bayes-optimal"] = [float(v) for v in bayes]
    tasks = dist.sample_tasks(protocol.num_tasks, seeding.generator("eval_tasks", protocol.seed))
    oracle = dist.optimal_episode_return(tasks)
    if oracle is not None:
        out["oracle (knows the task)"] = [float(oracle.double().mean())] * E
    return out


REFERENCE_PATH = Path(__file__).resolve().parents[2] / "data" / "reference" / "rl2_tables.json"
PAPER_NAMES = {"TS": "Thompson sampling", "eps-Greedy": "epsilon-greedy", "RL2": "RL²"}


def paper_reference(task: Any) -> dict[str, float]:
    """RL² paper numbers (arXiv 1611.02779, Tables 1 and 2) for this setting, keyed by our agent
    names; empty for other tasks or when ``data/reference`` is absent."""
    if not REFERENCE_PATH.exists():
        return {}
    doc = json.loads(REFERENCE_PATH.read_text())
    if task.name == "bandit":
        cell = doc["table1"]["cells"].get(f"k{task.num_arms}_n{task.episodes_per_trial}", {})
    elif task.name == "tabular_mdp" and (task.num_states, task.num_actions, task.episode_length) == (10, 5, 10):
        cell = doc["table2"]["cells"].get(f"n{task.episodes_per_trial}", {})
    else:
        cell = {}
    return {PAPER_NAMES.get(k, k): v for k, v in cell.items()}


def write_compare_report(
    run_dir: Path,
    cfg: CompareExperiment,
    results: dict,
    params: dict,
    limits: dict,
    times: dict,
    wall: float,
    notes: list[str] = (),
    extra: dict | None = None,
    parallel: list[str] = (),
) -> None:
    """report.md, regret.png (when regret is known), adaptation.png and results.json (``extra``:
    more top-level entries, e.g. a learner's benchmark)."""
    task = cfg.task
    title = f"{cfg.name}: {task.describe(short=True)}"
    lines = [
        f"# {cfg.name}",
        "",
        f"{task.describe()}; {cfg.protocol.num_tasks} held-out tasks (seed {cfg.protocol.seed}).",
        "",
    ]
    lines += ["## Held-out evaluation", "", results_table(results, reference=paper_reference(task)), ""]
    if any(not math.isnan(float(r.final_regret.mean())) for r in results.values()):
        plot_regret(results, run_dir / "regret.png", title=title)
        lines += ["![cumulative regret](regret.png)", ""]
    plot_adaptation(results, run_dir / "adaptation.png", limits, title=title)
    lines += [
        "## Return per episode of the trial (adaptation)",
        "",
        "Mean return of each episode index over the held-out tasks (± 95% CI); the last column is the "
        "trial return's gap to the first bound below the agents (in return units).",
        "",
        adaptation_table(results, limits),
        "",
        "![adaptation curve](adaptation.png)",
        "",
    ]
    if (extra or {}).get("success_rate"):
        lines += [
            "## Success rate per episode",
            "",
            "Fraction of the held-out tasks whose episode of that index succeeded (the task's success "
            "criterion, e.g. the goal region reached).",
            "",
            success_table(extra["success_rate"]),
            "",
        ]
    tuned = {n: p for n, p in params.items() if p["grid"]}
    if params:
        lines += ["## Baselines' settings", ""]
        for n, p in params.items():
            how = " (tuned on training tasks)" if n in tuned else ""
            setting = settings_text(p["params"]) or "no hyperparameters"
            lines.append(f"- {n}: {setting}{how}")
        lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Wall time per stage", "", stage_times_table(times, wall, parallel), ""]
    write_atomic(run_dir / "report.md", "\n".join(lines))
    write_results_json(
        run_dir / "results.json",
        to_dict(task),
        results,
        extra={
            **(extra or {}),
            "stage_times_s": times,
            "wall_time_s": wall,
            "baseline_params": params,
            "bounds": limits,
        },
    )


def run_compare(cfg: CompareExperiment, progress: bool = True) -> Path:
    """Run a compare experiment end to end; returns the run folder.

    Under a multi-process launch (``accelerate launch``), the learners that train on every rank
    (:attr:`~classic.core.MetaLearner.trains_on_every_rank`, the LLM) train first, on every
    process; then the other processes return, and the main process alone runs the baselines and
    the other learners, evaluates and writes the run's files (nobody waits in a collective while
    one rank evaluates).
    """
    start = time.perf_counter()
    set_threads(cfg.threads)
    run_dir = prepare_run_dir(cfg.name, cfg.output)
    main = is_main_process()
    if main:
        save_resolved(cfg, run_dir / "config.yaml", kind="compare")
    dist, eval_dist = cfg.task.make(), cfg.eval_task_config().make()
    protocol = cfg.protocol_for_task()
    times: dict[str, float] = {}
    checkpoints: dict[int, Any] = {}
    every_rank = {i for i, c in enumerate(cfg.learners) if c.learner().trains_on_every_rank}
    in_workers = [i for i in range(len(cfg.learners)) if i not in every_rank] if main and cfg.workers > 1 else []
    parallel: list[str] = []
    with (
        make_executor(
            cfg.executor,
            min(cfg.workers - (1 if every_rank else 0), len(in_workers)),  # the main process trains those
            cfg.threads or 1,
            background=bool(in_workers),
        ) as executor,
        MetricsLogger(run_dir, enabled=main) as logger,
    ):
        jobs = {i: executor.submit(train_learner_in_worker, cfg.learners[i], cfg, str(run_dir)) for i in in_workers}
        for i in sorted(every_rank):
            checkpoints[i] = train_learner(cfg.learners[i], cfg, dist, protocol, run_dir, logger, times, progress)
        if not main:
            return run_dir
        results, params = run_baselines(cfg, dist, eval_dist, protocol, times, progress)
        for i, config in enumerate(cfg.learners):
            if i in jobs:
                checkpoints[i], seconds = jobs[i].result()
                times[f"train {config.display_name}"] = seconds
                parallel.append(f"train {config.display_name}")
            elif i not in checkpoints:
                checkpoints[i] = train_learner(config, cfg, dist, protocol, run_dir, logger, times, progress)
            results.update(evaluate_learner(config, checkpoints[i], eval_dist, protocol, times))
    notes: list[str] = []
    extra: dict[str, Any] = {}
    for i, config in enumerate(cfg.learners):
        t = time.perf_counter()
        more_notes, more = config.learner().report(config, checkpoints[i], results, eval_dist, protocol)
        if more:
            times[f"report {config.display_name}"] = time.perf_counter() - t
        notes += more_notes
        extra.update(more)
    limits = bounds(eval_dist, protocol)
    wall = time.perf_counter() - start
    success = success_rates(eval_dist, results)
    if success:
        extra["success_rate"] = success
    write_compare_report(run_dir, cfg, results, params, limits, times, wall, notes, extra, parallel)
    return run_dir


def success_rates(dist: TaskDistribution, results: dict) -> dict[str, list[float]]:
    """Per agent, the fraction of held-out tasks whose episode e succeeded (the distribution's
    :meth:`~classic.core.TaskDistribution.episode_success`), per episode index; empty when the
    task defines no success."""
    out = {}
    for name, result in results.items():
        if isinstance(result, TrialResult):
            success = dist.episode_success(result.episode_returns)
            if success is None:
                return {}
            out[name] = [float(x) for x in success.double().mean(0)]
    return out


def success_table(success: dict[str, list[float]]) -> str:
    """Markdown table of the success rate per episode index, one row per agent."""
    E = max(len(v) for v in success.values())
    lines = ["| agent | " + " | ".join(f"ep. {e + 1}" for e in range(E)) + " |", "| --- |" + " ---: |" * E]
    for name, rates in success.items():
        lines.append(f"| {name} | " + " | ".join(f"{r:.2f}" for r in rates) + " |")
    return "\n".join(lines) + "\n"
