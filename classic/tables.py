"""RL² Tables 1 and 2 (Duan et al. 2016, arXiv 1611.02779) regenerated end to end, with the
exact Bayes-optimal limit and a horizon-generalization study beside them.

``mrl run recipes/classic/rl2_tables.yaml`` runs :func:`run_tables`:

1. **Settings.** Every Table 1 cell (Bernoulli bandits, k arms x n pulls), every Table 2 row
   (random tabular MDPs, n episodes), and the small bandit settings where the Bayes-optimal
   policy is computable, each as one *setting*: baselines tuned on training tasks, RL²
   trained for that setting, everyone evaluated on the same held-out tasks. A setting writes
   ``settings/<name>/`` with ``report.md``, ``regret.png``, ``results.json`` (its resolved task
   config under ``"task"``), ``config.yaml`` and the RL² policy. Settings run in ``workers``
   processes of ``threads`` torch threads each, longest first.
2. **Tables.** ``report.md`` and ``results.json`` at the top hold both tables as
   ``mean ± 95% CI (paper)``, cells that differ from the paper by more than our CI marked †,
   the gap of every agent to the Bayes-optimal value, and the horizon study (RL² trained on
   one n, evaluated on another).

A finished setting is reused when the run starts again with the same settings for it (its
resolved config is stored in ``settings/<name>/setting.json``, with that of the setting
whose policy it starts from, if any); a changed one is redone, keeping its trained RL² policy
when only the baselines or the evaluation changed; an interrupted RL² training resumes from
its checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from classic import seeding
from classic.algos.rl2 import RL2Agent, RL2Policy
from classic.config import save_resolved, to_dict
from classic.files import adopt_stage, write_atomic
from classic.workers import worker_pool
from classic.envs.bandit import BanditConfig
from classic.envs.tabular_mdp import TabularMDPConfig
from classic.evaluate import run_trials, sample_eval_tasks
from classic.experiment import (
    REFERENCE_PATH,
    BaselinesConfig,
    ClassicExperiment,
    EvalConfig,
    OutputConfig,
    RL2StageConfig,
    paper_reference,
    prior_count_note,
    prepare_run_dir,
    rl2_fingerprint,
    rl2_stage,
    run_classic,
    set_threads,
    write_report,
)
from classic.metrics import MetricsLogger
from classic.report import _jsonable, comparison_table, load_results_json

TUNE_SEED_BASE = seeding.STREAMS["tune"][0]  # the same training stream as the bandit baselines' tuning

# Table columns in the paper's order: (paper's name, our agent name).
TABLE1_COLUMNS = (("Random", "Random"), ("Gittins", "Gittins"), ("TS", "Thompson sampling"), ("OTS", "OTS"),
                  ("UCB1", "UCB1"), ("eps-Greedy", "epsilon-greedy"), ("Greedy", "Greedy"), ("RL2", "RL²"))
TABLE2_COLUMNS = (("Random", "Random"), ("PSRL", "PSRL"), ("OPSRL", "OPSRL"), ("UCRL2", "UCRL2"), ("BEB", "BEB"),
                  ("eps-Greedy", "epsilon-greedy"), ("Greedy", "Greedy"), ("RL2", "RL²"))
TABLE1_AGENTS = ["Random", "Gittins", "Thompson sampling", "OTS", "UCB1", "epsilon-greedy", "Greedy"]


def _table1_baselines() -> BaselinesConfig:
    return BaselinesConfig(agents=list(TABLE1_AGENTS))


@dataclass
class BanditTable:
    """Table 1: Bernoulli bandits, every ``num_arms`` x ``episodes_per_trial`` combination.

    Attributes:
        enabled: run the table.
        num_arms: values of k.
        episodes_per_trial: values of n.
        baselines: which baselines and how they are tuned (shared by all cells).
        rl2: the RL² stage; ``algo`` is the base config of every cell.
        rl2_overrides: per-cell changes to ``rl2.algo``, keyed ``"n500"``, ``"k50"`` or
            ``"k50_n500"`` (applied in that order, the most specific last), e.g.
            ``{"n500": {"num_trials_per_batch": 64}}``.
        warm_start: cells with n = key start RL² from the trained policy of the cell with the
            same k and n = value (a curriculum over trial length), e.g. ``{500: 100}``; those
            cells run after the ones they start from. Chains (``{500: 100, 100: 10}``) are
            allowed, cycles raise ``ValueError``.
    """

    enabled: bool = True
    num_arms: list[int] = field(default_factory=lambda: [5, 10, 50])
    episodes_per_trial: list[int] = field(default_factory=lambda: [10, 100, 500])
    baselines: BaselinesConfig = field(default_factory=_table1_baselines)
    rl2: RL2StageConfig = field(default_factory=RL2StageConfig)
    rl2_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    warm_start: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_overrides(self.rl2, self.rl2_overrides)
        _check_warm_start(self.warm_start, self.episodes_per_trial)


def _check_warm_start(warm_start: dict[int, int], episodes_per_trial: list[int]) -> None:
    for n, source in warm_start.items():
        if source not in episodes_per_trial or n not in episodes_per_trial or source == n:
            raise ValueError(f"warm_start {{{n}: {source}}}: both must be distinct values of episodes_per_trial {episodes_per_trial}")
    for n in warm_start:  # chains (100 -> 25 -> 10) are fine; cycles are not
        seen, m = [n], warm_start[n]
        while m in warm_start:
            if m in seen:
                raise ValueError(f"warm_start has a cycle: {' -> '.join(str(v) for v in seen + [m])}")
            seen.append(m)
            m = warm_start[m]


@dataclass
class MDPTable:
    """Table 2: random tabular MDPs, one row per ``episodes_per_trial``.

    Attributes:
        enabled: run the table.
        num_states, num_actions, episode_length: the MDP (paper: 10, 5, 10).
        episodes_per_trial: values of n.
        agents: baselines among ``classic.agents.mdp.MDP_BASELINES``.
        tune: grid-search each baseline's hyperparameter on training tasks.
        tune_tasks: training tasks per grid point.
        params: fixed hyperparameters per agent (used when ``tune`` is false, and for agents
            without a grid), e.g. ``{"BEB": {"beta": 1.0}}``.
        grids: replace an agent's tuning grid, e.g. ``{"UCRL2": [0.05, 0.1, 0.2]}``.
        rl2: the RL² stage; ``algo`` is the base config of every row.
        rl2_overrides: per-row changes to ``rl2.algo``, keyed ``"n100"``.
        warm_start: rows with n = key start RL² from the trained policy of the row n = value,
            e.g. ``{100: 25, 25: 10}`` (chains allowed, cycles raise ``ValueError``); those rows run
            after the ones they start from.
    """

    enabled: bool = True
    num_states: int = 10
    num_actions: int = 5
    episode_length: int = 10
    episodes_per_trial: list[int] = field(default_factory=lambda: [10, 25, 50, 75, 100])
    agents: list[str] = field(default_factory=lambda: ["Random", "PSRL", "OPSRL", "UCRL2", "BEB", "epsilon-greedy", "Greedy"])
    tune: bool = True
    tune_tasks: int = 500
    params: dict[str, dict[str, float]] = field(default_factory=dict)
    grids: dict[str, list[float]] = field(default_factory=dict)
    rl2: RL2StageConfig = field(default_factory=RL2StageConfig)
    rl2_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    warm_start: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from classic.agents.mdp import MDP_BASELINES

        for group, names in (("agents", self.agents), ("params", list(self.params)), ("grids", list(self.grids))):
            unknown = [a for a in names if a not in MDP_BASELINES]
            if unknown:
                raise ValueError(f"{group}: unknown MDP baselines {unknown}; known: {list(MDP_BASELINES)}")
        TabularMDPConfig(self.num_states, self.num_actions, self.episode_length)  # validates
        if self.tune_tasks < 1:
            raise ValueError(f"tune_tasks must be >= 1, got {self.tune_tasks}")
        _check_overrides(self.rl2, self.rl2_overrides)
        _check_warm_start(self.warm_start, self.episodes_per_trial)


@dataclass
class BayesOptimalStudy:
    """Small bandit settings solved exactly, so every agent's gap to the Bayes-optimal value shows.

    Attributes:
        enabled: run the study.
        settings: ``[k, n]`` pairs (each must be supported by ``classic.agents.bayes_optimal``).
        rl2: also train and evaluate RL² on them (with Table 1's RL² settings and overrides).
    """

    enabled: bool = True
    settings: list[tuple[int, int]] = field(default_factory=lambda: [(2, 10), (2, 100), (3, 10), (3, 30), (5, 10), (10, 10), (50, 10)])
    rl2: bool = True


@dataclass
class HorizonStudy:
    """RL² trained on one trial length n and evaluated on others (the paper did not do this).

    Uses the policies the tables trained: bandit cells with ``bandit_num_arms`` arms and the
    MDP rows; the train and test lengths are the table's own values of n.

    Attributes:
        enabled: run the study.
        bandit_num_arms: k of the bandit cells used.
        mdp: include the MDP rows.
    """

    enabled: bool = True
    bandit_num_arms: int = 5
    mdp: bool = True


@dataclass
class TablesExperiment:
    """``kind: tables`` recipes: both RL² tables, the Bayes-optimal gaps and the horizon study.

    Attributes:
        name: run directory under ``output.root``.
        seed: master seed (baseline tuning streams); RL² uses ``rl2.algo.seed``.
        workers: settings run in parallel processes.
        threads: torch threads per worker.
        bandit, mdp, bayes_optimal, horizon: the parts.
        eval: held-out protocol (the same tasks for every agent of a setting).
        output: where to write.
    """

    name: str = "rl2_tables"
    seed: int = 0
    workers: int = 2
    threads: int = 1
    bandit: BanditTable = field(default_factory=BanditTable)
    mdp: MDPTable = field(default_factory=MDPTable)
    bayes_optimal: BayesOptimalStudy = field(default_factory=BayesOptimalStudy)
    horizon: HorizonStudy = field(default_factory=HorizonStudy)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {self.workers} and {self.threads}")
        if self.bayes_optimal.enabled:
            from classic.agents.bayes_optimal import bayes_optimal_supported

            bad = [list(s) for s in self.bayes_optimal.settings if not bayes_optimal_supported(*s)]
            if bad:
                raise ValueError(f"bayes_optimal.settings {bad} are not supported by the exact DP (classic/agents/bayes_optimal.py)")


def _check_overrides(stage: RL2StageConfig, overrides: dict[str, dict[str, Any]]) -> None:
    for key, changes in overrides.items():
        try:
            replace(stage.algo, **changes)
        except TypeError as err:
            raise ValueError(f"rl2_overrides[{key!r}]: {err}") from None
        except ValueError as err:
            raise ValueError(f"rl2_overrides[{key!r}]: {err}") from None


def rl2_for(stage: RL2StageConfig, overrides: dict[str, dict[str, Any]], keys: list[str]) -> RL2StageConfig:
    """``stage`` with the overrides of ``keys`` (least specific first) applied to its algo."""
    algo = stage.algo
    for key in keys:
        if key in overrides:
            algo = replace(algo, **overrides[key])
    return replace(stage, algo=algo)


# ---- settings ----------------------------------------------------------------------------------

@dataclass
class Setting:
    """One cell/row: what a worker runs. ``kind`` is "bandit" or "mdp"."""

    name: str
    kind: str
    task: Any
    rl2: RL2StageConfig
    agents: list[str]
    cost: float  # relative cost estimate, for longest-first scheduling
    after: str | None = None  # a setting that must finish first (its policy is our RL² start)


def plan_settings(cfg: TablesExperiment) -> list[Setting]:
    """All settings of the run, each once (a Bayes-optimal setting that is also a Table 1 cell
    is one setting with the Bayes-optimal row added)."""
    out: dict[str, Setting] = {}
    b = cfg.bandit

    def bandit_setting(k: int, n: int, rl2_on: bool) -> Setting:
        rl2 = rl2_for(b.rl2, b.rl2_overrides, [f"n{n}", f"k{k}", f"k{k}_n{n}"])
        rl2 = replace(rl2, enabled=b.rl2.enabled and rl2_on)
        after = None
        if rl2.enabled and n in b.warm_start and k in b.num_arms:
            after = f"bandit_k{k}_n{b.warm_start[n]}"
            rl2 = replace(rl2, init_from=str(Path(cfg.output.root) / cfg.name / "settings" / after / "rl2" / "policy.pt"))
        cost = (rl2.algo.total_env_steps(n) * (1 + k / 50) if rl2.enabled else 0.0) + 2e3 * n * k
        return Setting(f"bandit_k{k}_n{n}", "bandit", BanditConfig(k, n), rl2, list(b.baselines.agents), cost, after)

    if b.enabled:
        for k in b.num_arms:
            for n in b.episodes_per_trial:
                s = bandit_setting(k, n, True)
                out[s.name] = s
    if cfg.bayes_optimal.enabled:
        for k, n in cfg.bayes_optimal.settings:
            s = out.get(f"bandit_k{k}_n{n}") or bandit_setting(k, n, cfg.bayes_optimal.rl2)
            if "Bayes-optimal" not in s.agents:
                s.agents = s.agents + ["Bayes-optimal"]
            out[s.name] = s
    m = cfg.mdp
    if m.enabled:
        for n in m.episodes_per_trial:
            task = TabularMDPConfig(m.num_states, m.num_actions, m.episode_length, n)
            rl2 = rl2_for(m.rl2, m.rl2_overrides, [f"n{n}"])
            after = None
            if rl2.enabled and n in m.warm_start:
                after = f"mdp_n{m.warm_start[n]}"
                rl2 = replace(rl2, init_from=str(Path(cfg.output.root) / cfg.name / "settings" / after / "rl2" / "policy.pt"))
            cost = (rl2.algo.total_env_steps(n * m.episode_length) * 1.5 if rl2.enabled else 0.0) + 5e4 * n
            out[f"mdp_n{n}"] = Setting(f"mdp_n{n}", "mdp", task, rl2, list(m.agents), cost, after)
    return sorted(out.values(), key=lambda s: -s.cost)


def _fingerprint(cfg: TablesExperiment, setting: Setting) -> dict:
    """What a finished setting was run with; a warm-started setting includes its source's
    fingerprint, so that retraining the source reruns the settings that start from it."""
    part = cfg.bandit.baselines if setting.kind == "bandit" else replace(cfg.mdp, episodes_per_trial=[], rl2_overrides={}, warm_start={})
    out = json.loads(json.dumps({
        "kind": setting.kind, "task": _without_name(to_dict(setting.task)), "agents": setting.agents, "rl2": to_dict(setting.rl2),
        "baselines": to_dict(part), "eval": to_dict(cfg.eval), "seed": cfg.seed,
    }, default=str))
    if setting.after is not None:
        source = {s.name: s for s in plan_settings(cfg)}.get(setting.after)
        if source is not None:
            out["warm_start_source"] = _fingerprint(cfg, source)
    return out


def _without_name(task: dict) -> dict:
    """The task's settings without its registry name (fingerprints written before tasks had one
    stay valid)."""
    return {k: v for k, v in task.items() if k != "name"}


RL2_OUTPUTS = ("rl2", "metrics.jsonl", "tensorboard")  # what a setting keeps when only its evaluation changed


def _rl2_part(fingerprint: dict) -> dict:
    """The part of a fingerprint that RL² training depends on: the task, the RL² stage, the seed
    and, recursively, the same part of the warm-start source."""
    out = {k: fingerprint.get(k) for k in ("kind", "task", "rl2", "seed")}
    if isinstance(fingerprint.get("warm_start_source"), dict):
        out["warm_start_source"] = _rl2_part(fingerprint["warm_start_source"])
    return out


def _same_setting(stored: Any, current: Any) -> bool:
    """Whether a finished setting's stored config matches the current one. A key the stored
    config lacks matches when its current value is None or False: an option added to the code
    later, switched off, changes nothing that was run."""
    if isinstance(stored, dict) and isinstance(current, dict):
        if any(k not in current for k in stored):
            return False
        return all(_same_setting(stored[k], current[k]) if k in stored else current[k] in (None, False) for k in current)
    return stored == current


def run_setting(cfg: TablesExperiment, setting: Setting, settings_root: str) -> dict:
    """Run one setting in this process (a worker); returns ``{"name", "reused", "wall_time_s"}``."""
    set_threads(cfg.threads)
    run_dir = Path(settings_root) / setting.name
    marker = run_dir / "setting.json"
    fingerprint = _fingerprint(cfg, setting)
    if marker.exists() and (run_dir / "results.json").exists():
        stored = json.loads(marker.read_text())
        if _same_setting(stored, fingerprint):
            return {"name": setting.name, "reused": True, "wall_time_s": load_results_json(run_dir / "results.json").get("wall_time_s")}
        # The recipe changed for this setting: redo it, keeping a trained policy it still fits.
        keep = RL2_OUTPUTS if setting.rl2.enabled and _same_setting(_rl2_part(stored), _rl2_part(fingerprint)) else ()
        for path in run_dir.iterdir():
            if path.name in keep:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    elif marker.exists():
        marker.unlink()
    if setting.rl2.enabled:  # this function decided above whether the RL² folder still fits
        adopt_stage(run_dir / "rl2", rl2_fingerprint(setting.task, setting.rl2))
    start = time.perf_counter()
    if setting.kind == "bandit":
        sub = ClassicExperiment(
            name=setting.name, seed=cfg.seed, threads=cfg.threads, task=setting.task,
            baselines=replace(cfg.bandit.baselines, agents=setting.agents), rl2=setting.rl2,
            eval=cfg.eval, output=OutputConfig(root=str(settings_root)),
        )
        run_classic(sub, progress=False)
    else:
        run_mdp_setting(cfg, setting, run_dir)
    write_atomic(marker, json.dumps(fingerprint, indent=1) + "\n")
    return {"name": setting.name, "reused": False, "wall_time_s": time.perf_counter() - start}


def tune_mdp_baselines(task: TabularMDPConfig, spec: MDPTable, seed: int = 0) -> tuple[dict, dict]:
    """Grid-search each MDP baseline's hyperparameter on training tasks (never the held-out ones).

    Returns:
        ``(params, grid)``: agent -> {hyperparameter: chosen value}, and agent ->
        {value: mean total reward on the training tasks}.
    """
    from classic.agents.mdp import MDP_TUNING_GRIDS, make_mdp_baseline

    params = {name: dict(spec.params.get(name, {})) for name in spec.agents}
    grid: dict[str, dict[str, float]] = {}
    if not spec.tune:
        return params, grid
    dist = task.make()
    g = torch.Generator().manual_seed(TUNE_SEED_BASE + seed)
    tasks = dist.sample_tasks(spec.tune_tasks, g)
    for name in spec.agents:
        if name not in MDP_TUNING_GRIDS:
            continue
        key, values = MDP_TUNING_GRIDS[name]
        values = spec.grids.get(name, values)
        scores = {}
        for v in values:
            agent = make_mdp_baseline(name, task.num_states, task.num_actions, task.episode_length, **{**params[name], key: v})
            res = run_trials(agent, dist, tasks=tasks, episodes_per_trial=task.episodes_per_trial, seed=TUNE_SEED_BASE + seed)
            scores[str(v)] = float(res.total_reward.mean())
        params[name][key] = max(values, key=lambda v: scores[str(v)])
        grid[name] = scores
    return params, grid


def run_mdp_setting(cfg: TablesExperiment, setting: Setting, run_dir: Path) -> None:
    """A Table 2 row: tune and evaluate the MDP baselines, train and evaluate RL², write the report."""
    from classic.agents.mdp import make_mdp_baseline

    start = time.perf_counter()
    task: TabularMDPConfig = setting.task
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(task, run_dir / "config.yaml")
    times: dict[str, float] = {}
    t = time.perf_counter()
    params, grid = tune_mdp_baselines(task, cfg.mdp, cfg.seed)
    times["tune baselines"] = time.perf_counter() - t
    dist, ev, n = task.make(), cfg.eval, task.episodes_per_trial
    t = time.perf_counter()
    results = {}
    for name in setting.agents:
        agent = make_mdp_baseline(name, task.num_states, task.num_actions, task.episode_length, **params.get(name, {}))
        results[name] = run_trials(agent, dist, ev.num_tasks, n, seed=ev.seed, batch_size=ev.batch_size)
    times["evaluate baselines"] = time.perf_counter() - t
    chosen = {name: p for name, p in params.items() if p}
    notes = [f"Hyperparameters {chosen}" + (" (tuned on training tasks)" if cfg.mdp.tune else " (set in the recipe)")]
    if setting.rl2.enabled:
        t = time.perf_counter()
        with MetricsLogger(run_dir) as logger:
            policy = rl2_stage(task, setting.rl2, run_dir, logger, progress=False)
        times["train RL²"] = time.perf_counter() - t
        t = time.perf_counter()
        results["RL²"] = run_trials(RL2Agent(policy, greedy=setting.rl2.greedy_eval), dist, ev.num_tasks, n, seed=ev.seed, batch_size=ev.batch_size)
        times["evaluate RL²"] = time.perf_counter() - t
        notes.append("RL² = GRU policy trained with PPO + GAE (the paper used TRPO).")
    write_report(run_dir, setting.name, task, results, times, notes, {"baseline_params": params, "tuning_grid": grid},
                 paper_reference(task), wall_time=time.perf_counter() - start)


# ---- the run ---------------------------------------------------------------------------------

def run_tables(cfg: TablesExperiment, progress: bool = True) -> Path:
    """Run every setting (in parallel workers), then the studies, then write the tables."""
    start = time.perf_counter()
    run_dir = prepare_run_dir(cfg.name, cfg.output)
    save_resolved(cfg, run_dir / "config.yaml", kind="tables")
    settings = plan_settings(cfg)
    root = run_dir / "settings"
    root.mkdir(exist_ok=True)
    done: dict[str, dict] = {}

    def report_done(info: dict) -> None:
        done[info["name"]] = info
        if progress:
            how = "reused" if info["reused"] else f"{(info['wall_time_s'] or 0) / 60:.1f} min"
            print(f"[{len(done)}/{len(settings)}] {info['name']} ({how})", flush=True)

    # Waves by warm-start depth: a setting that starts from another's policy runs after it.
    by_name = {s.name: s for s in settings}

    def depth(s: Setting) -> int:
        return 0 if s.after is None or s.after not in by_name else 1 + depth(by_name[s.after])

    waves = [[s for s in settings if depth(s) == d] for d in range(max(map(depth, settings), default=0) + 1)]
    if cfg.workers > 1 and len(settings) > 1:
        with worker_pool(min(cfg.workers, len(settings))) as pool:
            for wave in waves:
                futures = [pool.submit(run_setting, cfg, s, str(root)) for s in wave]
                for f in futures:
                    report_done(f.result())
    else:
        for s in [s for wave in waves for s in wave]:
            report_done(run_setting(cfg, s, str(root)))
    set_threads(cfg.workers * cfg.threads)
    t = time.perf_counter()
    horizon = horizon_study(cfg, root) if cfg.horizon.enabled else {}
    horizon_time = time.perf_counter() - t
    write_tables_report(cfg, run_dir, settings, done, horizon, horizon_time, time.perf_counter() - start)
    return run_dir


def _load(root: Path, name: str) -> dict | None:
    path = root / name / "results.json"
    return load_results_json(path) if path.exists() else None


def horizon_study(cfg: TablesExperiment, root: Path) -> dict:
    """RL² trained with trials of n_train episodes, evaluated with trials of n_test.

    Returns:
        ``{"bandit": {...}, "mdp": {...}}``, each ``{"n": [values], "rl2": {"train n": {"test n":
        summary}}, "reference": {"test n": {agent: mean}}}``; reference rows are the same
        setting's Gittins/UCB1 (bandit) or PSRL/OPSRL (MDP) on the same held-out tasks.
    """
    out = {}
    parts = []
    if cfg.bandit.enabled and cfg.bandit.rl2.enabled and cfg.horizon.bandit_num_arms in cfg.bandit.num_arms:
        k = cfg.horizon.bandit_num_arms
        parts.append(("bandit", sorted(cfg.bandit.episodes_per_trial), lambda n: f"bandit_k{k}_n{n}", lambda n: BanditConfig(k, n), ("Gittins", "UCB1"), cfg.bandit.rl2.greedy_eval))
    if cfg.horizon.mdp and cfg.mdp.enabled and cfg.mdp.rl2.enabled:
        m = cfg.mdp
        parts.append(("mdp", sorted(m.episodes_per_trial), lambda n: f"mdp_n{n}", lambda n: TabularMDPConfig(m.num_states, m.num_actions, m.episode_length, n), ("PSRL", "OPSRL"), m.rl2.greedy_eval))
    for label, ns, name_of, task_of, ref_agents, greedy in parts:
        table: dict[str, dict[str, dict]] = {}
        for n_train in ns:
            path = root / name_of(n_train) / "rl2" / "policy.pt"
            if not path.exists():
                continue
            policy = RL2Policy.load(path)
            row = {}
            for n_test in ns:
                doc = _load(root, name_of(n_test))
                if n_test == n_train and doc and "RL²" in doc["agents"]:
                    row[str(n_test)] = _strip(doc["agents"]["RL²"])
                    continue
                task = task_of(n_test)
                dist = task.make()
                tasks = sample_eval_tasks(dist, cfg.eval.num_tasks, cfg.eval.seed)
                res = run_trials(RL2Agent(policy, greedy=greedy), dist, tasks=tasks, episodes_per_trial=n_test, seed=cfg.eval.seed)
                row[str(n_test)] = _strip(res.summary())
            table[str(n_train)] = row
        reference = {}
        for n_test in ns:
            doc = _load(root, name_of(n_test))
            if doc:
                reference[str(n_test)] = {a: _strip(doc["agents"][a]) for a in ref_agents if a in doc["agents"]}
        out[label] = {"n": ns, "rl2": table, "reference": reference, "trained_from": _warm_starts(cfg, label, name_of)}
    return out


def _warm_starts(cfg: TablesExperiment, label: str, name_of) -> dict[str, str]:
    """{n_train: how that cell's RL² policy was made} for cells that start from another cell's policy."""
    planned = {s.name: s for s in plan_settings(cfg)}
    out = {}
    for n, source in (cfg.bandit if label == "bandit" else cfg.mdp).warm_start.items():
        setting = planned.get(name_of(n))
        if setting is None:
            continue
        its = setting.rl2.algo.num_iterations
        out[str(n)] = f"the n={source} policy as is" if its == 0 else f"the n={source} policy fine-tuned for {its} iterations"
    return out


def _strip(summary: dict) -> dict:
    return {k: summary[k] for k in ("total_reward", "regret", "num_tasks") if k in summary}


def _setting_label(setting: Setting) -> str:
    t = setting.task
    return f"k={t.num_arms}, n={t.episodes_per_trial}" if setting.kind == "bandit" else f"n={t.episodes_per_trial}"


def write_tables_report(cfg: TablesExperiment, run_dir: Path, settings: list[Setting], done: dict, horizon: dict, horizon_time: float, wall: float) -> None:
    """The top-level ``report.md`` and ``results.json``."""
    root = run_dir / "settings"
    docs = {s.name: _load(root, s.name) for s in settings}
    paper = json.loads(REFERENCE_PATH.read_text()) if REFERENCE_PATH.exists() else {}
    lines = [f"# {cfg.name}: RL² (Duan et al. 2016, arXiv 1611.02779) Tables 1 and 2, reproduced", ""]
    lines += [
        f"Mean total reward per trial ± 95% CI over {cfg.eval.num_tasks} held-out tasks (eval seed {cfg.eval.seed}); "
        "the paper's number in parentheses; † marks a cell that differs from the paper by more than our CI "
        "(plus 0.05 for the paper's rounding). Baselines' hyperparameters are tuned on training tasks "
        "(values in each setting's results.json). RL² is trained per setting by this project (GRU + PPO; the paper used TRPO).",
        "",
    ]
    out: dict[str, Any] = {"source": paper.get("source"), "eval": to_dict(cfg.eval)}
    deviations: list[str] = []
    for part, kind, columns, cells_key in (("Table 1: Bernoulli bandits", "bandit", TABLE1_COLUMNS, "table1"),
                                           ("Table 2: random tabular MDPs", "mdp", TABLE2_COLUMNS, "table2")):
        rows, refs, table_json = {}, {}, {}
        enabled = cfg.bandit.enabled if kind == "bandit" else cfg.mdp.enabled
        if not enabled:
            continue
        grid_settings = [s for s in settings if s.kind == kind and (kind == "mdp" or (s.task.num_arms in cfg.bandit.num_arms and s.task.episodes_per_trial in cfg.bandit.episodes_per_trial))]
        grid_settings.sort(key=lambda s: (s.task.episodes_per_trial, getattr(s.task, "num_arms", 0)))
        for s in grid_settings:
            doc = docs.get(s.name)
            if doc is None:
                continue
            label = _setting_label(s)
            rows[label] = doc["agents"]
            ref_key = f"k{s.task.num_arms}_n{s.task.episodes_per_trial}" if kind == "bandit" else f"n{s.task.episodes_per_trial}"
            ref = paper.get(cells_key, {}).get("cells", {}).get(ref_key, {}) if (kind == "bandit" or _paper_mdp(cfg)) else {}
            refs[label] = {ours: ref[theirs] for theirs, ours in columns if theirs in ref}
            table_json[s.name] = {"task": doc["task"], "agents": {a: _strip(v) for a, v in doc["agents"].items()},
                                  "paper": refs[label], "baseline_params": _params_without_grid(doc.get("baseline_params")),
                                  "wall_time_s": doc.get("wall_time_s")}
        names = [ours for _, ours in columns]
        text, dev = comparison_table(rows, names, refs)
        deviations += [f"{part.split(':')[0]} · {d}" for d in dev]
        lines += [f"## {part}", "", text, ""]
        lines += ["Regret plots: " + ", ".join(f"[{_setting_label(s)}](settings/{s.name}/regret.png)" for s in grid_settings if docs.get(s.name)), ""]
        out[cells_key] = table_json
    if deviations:
        lines += ["### Cells that differ from the paper by more than the CI", ""] + [f"- {d}" for d in deviations] + [""]
        lines += ["Where our protocol differs from the paper's, and so where to expect differences:", ""]
        lines += [f"- {d}" for d in protocol_differences(cfg)] + [""]
    out["deviations"] = deviations
    gap_text, gap_json = bayes_gap_section(cfg, settings, docs)
    lines += gap_text
    out["bayes_optimal"] = gap_json
    lines += horizon_section(horizon)
    out["horizon_generalization"] = horizon
    lines += ["## Wall time", "", f"{cfg.workers} worker process(es) x {cfg.threads} torch thread(s).", "",
              "| setting | minutes | RL² training (min) |", "|---|---:|---:|"]
    times = {}
    for s in sorted(settings, key=lambda s: (s.kind, getattr(s.task, 'num_arms', 0), s.task.episodes_per_trial)):
        doc = docs.get(s.name) or {}
        secs = doc.get("wall_time_s")
        rl2_secs = (doc.get("stage_times_s") or {}).get("train RL²")
        times[s.name] = {"wall_time_s": secs, "train_rl2_s": rl2_secs, "reused_this_run": done.get(s.name, {}).get("reused")}
        lines.append(f"| {s.name} | {secs / 60:.1f} | {rl2_secs / 60 if rl2_secs else 0:.1f} |" if secs else f"| {s.name} | — | — |")
    lines += [f"| horizon study (evaluation only) | {horizon_time / 60:.1f} | |", f"| **total (wall clock, this run)** | **{wall / 60:.1f}** | |", ""]
    out["settings"] = times
    out["wall_time_s"] = wall
    write_atomic(run_dir / "report.md", "\n".join(lines))
    write_atomic(run_dir / "results.json", json.dumps(_jsonable(out), indent=2, allow_nan=False) + "\n")


def protocol_differences(cfg: TablesExperiment) -> list[str]:
    """What this project's baselines do differently from the paper's (for the report)."""
    a = cfg.bandit.baselines.prior_count
    init = prior_count_note(a) + ("" if a > 0 else " The paper started UCB1's statistics at one success and one "
                                                   "failure (`bandit.baselines.prior_count: 1`).")
    b = cfg.bandit.baselines
    reshaped = b.ots_reshape != 1.0 or (b.tune and any(r != 1.0 for r in b.ots_reshape_grid))
    ots = ("OTS: the paper names it without its settings; ours scores max(K posterior draws, mean) with draws from the "
           "posterior reshaped to Beta(a/ρ, b/ρ) (Chapelle & Li 2011, Sec. 4)"
           + (", K and ρ tuned jointly on training tasks; ρ < 1 explores less, and the tuned OTS scores near Gittins, "
              "far above the paper's OTS." if reshaped else
              " at ρ = 1, the exact posterior, K tuned on training tasks; it scores below the paper's OTS, and with ρ "
              "tuned too (`bandit.baselines.ots_reshape_grid`) near Gittins, far above it."))
    return [
        "Gittins: ours is the exact finite-horizon index, Bayes-optimal to within the CI wherever the exact optimum is "
        "computable (see the gap table); the paper describes its Gittins baseline as the infinite-horizon discounted "
        "index, used although the trials are finite, so ours scores higher, most at n=500.",
        init,
        ots,
        "MDP Greedy and ε-greedy plan in the posterior-mean MDP of the task prior (an untried action keeps the prior "
        "mean reward 1, so they explore); the paper's MAP-based versions scored lower.",
        "RL²: PPO with a budget of minutes on CPU; the paper trained with TRPO on batches of about 250k steps.",
    ]


def _paper_mdp(cfg: TablesExperiment) -> bool:
    m = cfg.mdp
    return (m.num_states, m.num_actions, m.episode_length) == (10, 5, 10)


def _params_without_grid(params: dict | None) -> dict | None:
    return {k: v for k, v in params.items() if k != "grid"} if params else params


def bayes_gap_section(cfg: TablesExperiment, settings: list[Setting], docs: dict) -> tuple[list[str], dict]:
    """Markdown and JSON of every agent's gap to the exact Bayes-optimal value V_0(k, n)."""
    if not cfg.bayes_optimal.enabled:
        return [], {}
    from classic.agents.bayes_optimal import bayes_optimal_value

    rows, out = [], {}
    agents: list[str] = []
    for k, n in cfg.bayes_optimal.settings:
        doc = docs.get(f"bandit_k{k}_n{n}")
        if not doc or "Bayes-optimal" not in doc["agents"]:
            continue
        v0 = bayes_optimal_value(k, n)
        bo = doc["agents"]["Bayes-optimal"]["regret"]
        gaps = {}
        for a, s in doc["agents"].items():
            # E[regret_a] - E[regret_BO] = V_0 - E[reward_a] exactly (the optimal arm's value
            # cancels), and on the same tasks it is far less noisy than V_0 - mean reward.
            ci = math.hypot(s["regret"]["ci95"], bo["ci95"]) if a != "Bayes-optimal" else 0.0
            gaps[a] = {"mean": s["regret"]["mean"] - bo["mean"], "ci95": ci,
                       "v0_minus_mean_reward": v0 - s["total_reward"]["mean"]}
        out[f"k{k}_n{n}"] = {"bayes_optimal_value": v0, "gap": gaps}
        rows.append((f"k={k}, n={n}", v0, gaps, doc["agents"]["Bayes-optimal"]["total_reward"]))
        agents += [a for a in gaps if a not in agents and a != "Bayes-optimal"]
    if not rows:
        return [], out
    lines = ["## Gap to the Bayes-optimal policy", "",
             "V_0 = the exact Bayes-optimal expected total reward under the task prior (dynamic programming over Beta "
             "posteriors, classic/agents/bayes_optimal.py); the Bayes-optimal agent's measured mean is beside it as a "
             "check. Each agent's cell: its gap V_0 - E[total reward], estimated on the same held-out tasks as its mean "
             "cumulative regret minus the Bayes-optimal agent's (the two are equal in expectation; the difference "
             "cancels the per-task luck), ± 95% CI (the two CIs combined as if independent, so conservative).", "",
             "| setting | V_0 | Bayes-optimal measured | " + " | ".join(agents) + " |", "|---|---:|---:|" + "---:|" * len(agents)]
    for label, v0, gaps, measured in rows:
        cells = [f"{gaps[a]['mean']:.2f} ± {gaps[a]['ci95']:.2f}" if a in gaps else "—" for a in agents]
        lines.append(f"| {label} | {v0:.3f} | {measured['mean']:.2f} ± {measured['ci95']:.2f} | " + " | ".join(cells) + " |")
    return lines + [""], out


def horizon_section(horizon: dict) -> list[str]:
    lines = []
    for label, part in horizon.items():
        ns = part["n"]
        title = "bandit" if label == "bandit" else "tabular MDP"
        lines += [f"## Horizon generalization ({title})", "",
                  "RL² trained with trials of n_train episodes (rows), evaluated with trials of n_test (columns): mean total "
                  "reward ± 95% CI on the held-out tasks; the last rows are baselines built for each n_test.", "",
                  "| n_train \\ n_test | " + " | ".join(str(n) for n in ns) + " |", "|---|" + "---:|" * len(ns)]
        for n_train, row in part["rl2"].items():
            cells = [f"{row[str(n)]['total_reward']['mean']:.1f} ± {row[str(n)]['total_reward']['ci95']:.1f}" if str(n) in row else "—" for n in ns]
            origin = part.get("trained_from", {}).get(str(n_train))
            lines.append(f"| RL² (n_train={n_train}{'; ' + origin if origin else ''}) | " + " | ".join(cells) + " |")
        ref_agents = sorted({a for r in part["reference"].values() for a in r})
        for a in ref_agents:
            cells = [f"{part['reference'][str(n)][a]['total_reward']['mean']:.1f}" if a in part["reference"].get(str(n), {}) else "—" for n in ns]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


__all__ = [
    "BanditTable", "BayesOptimalStudy", "HorizonStudy", "MDPTable", "Setting", "TablesExperiment",
    "horizon_study", "plan_settings", "rl2_for", "run_setting", "run_tables", "tune_mdp_baselines",
]
