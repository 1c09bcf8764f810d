"""The classic bandit experiment: baselines (tuned on training tasks) and RL², evaluated by the
shared protocol on the same held-out tasks, reported as a table, a regret plot and results.json.

``mrl run recipes/classic/rl2_bandit.yaml`` runs :func:`run_classic`; the LLM experiment
(``mrl_llm.experiment``) reuses every piece of it and adds the LLM agents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from classic import seeding
from classic.agents.bandit import (
    EpsilonGreedyAgent,
    GreedyAgent,
    OptimisticThompsonSamplingAgent,
    RandomAgent,
    ThompsonSamplingAgent,
    UCB1Agent,
    check_prior_count,
)
from classic.algos.rl2 import RL2Agent, RL2Policy
from classic.algos.rl2_config import RL2Config
from classic.config import save_resolved, to_dict
from classic.files import OutputConfig, open_stage, prepare_run_dir, write_atomic
from classic.workers import set_threads
from classic.envs.bandit import BanditConfig
from classic.experiments.compare import REFERENCE_PATH, paper_reference  # noqa: F401  (re-exported)
from classic.evaluate import TrialResult, run_trials
from classic.metrics import MetricsLogger
from classic.report import plot_regret, results_table, stage_times_table, write_results_json

DEFAULT_BASELINES = ("Random", "Greedy", "epsilon-greedy", "UCB1", "Thompson sampling", "Gittins")
BASELINES = DEFAULT_BASELINES + ("OTS", "Bayes-optimal")  # Bayes-optimal: exact DP, small k and n only
TUNE_SEED_BASE = seeding.STREAMS["tune"][0]  # tuning tasks: a training stream, disjoint from evaluation streams


@dataclass
class BaselinesConfig:
    """Which non-learned baselines to run and how their hyperparameters are chosen.

    Attributes:
        agents: names among Random, Greedy, epsilon-greedy, UCB1, Thompson sampling, OTS
            (optimistic Thompson sampling), Gittins, Bayes-optimal (exact dynamic programming,
            small k and n only, see ``classic.agents.bayes_optimal``).
        tune: choose UCB1's c, epsilon-greedy's epsilon, Thompson sampling's prior and OTS's
            number of samples and posterior reshaping (jointly) by grid search on training tasks.
        tune_tasks: training tasks per grid point.
        ucb_c: UCB1 exploration scale (used as is when ``tune`` is false).
        ucb_c_grid: grid for c.
        epsilon: epsilon-greedy's exploration rate (used as is when ``tune`` is false).
        epsilon_grid: grid for epsilon (without 0, which is the Greedy row).
        ts_prior: Thompson sampling's symmetric Beta(s, s) prior pseudo-count s (1 = the
            task prior U[0, 1]; used as is when ``tune`` is false).
        ts_prior_grid: grid for s.
        ots_samples: OTS's posterior samples per arm and step.
        ots_samples_grid: grid for it.
        ots_reshape: OTS's posterior reshaping factor rho > 0 (1 = the exact posterior; < 1
            samples from a sharper Beta with the same mean, see ``OptimisticThompsonSamplingAgent``).
        ots_reshape_grid: grid for rho, searched jointly with ``ots_samples_grid``. Default [1.0]:
            the paper's OTS column is not reproduced with rho tuned ([1, 0.5, 0.25, 0.125,
            0.0625] scores near Gittins, e.g. 85.2 against the paper's 67.7 at k=50, n=100).
        prior_count: pseudo-successes and pseudo-failures every arm's statistics start with in
            UCB1, epsilon-greedy and Greedy. 0 (default): textbook, every arm is pulled once
            before its estimate is used. 1: RL²'s Beta(1, 1) initialization ("one success and
            one failure", arXiv 1611.02779, Sec. 4.1), which the Table 1 recipe uses.
    """

    agents: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    tune: bool = True
    tune_tasks: int = 2000
    ucb_c: float = 1.0
    ucb_c_grid: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0])
    epsilon: float = 0.1
    epsilon_grid: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    ts_prior: float = 1.0
    ts_prior_grid: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    ots_samples: int = 1
    ots_samples_grid: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])
    ots_reshape: float = 1.0
    ots_reshape_grid: list[float] = field(default_factory=lambda: [1.0])
    prior_count: float = 0.0

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError(f"agents must name at least one baseline; known: {list(BASELINES)}")
        unknown = [a for a in self.agents if a not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
        if self.tune_tasks < 1:
            raise ValueError(f"tune_tasks must be >= 1, got {self.tune_tasks}")
        if any(not 0.0 <= e <= 1.0 for e in self.epsilon_grid + [self.epsilon]):
            raise ValueError("epsilon and epsilon_grid values must be in [0, 1]")
        if any(not s > 0 for s in self.ts_prior_grid + [self.ts_prior]):
            raise ValueError("ts_prior and ts_prior_grid values must be > 0")
        if any(k < 1 for k in self.ots_samples_grid + [self.ots_samples]):
            raise ValueError("ots_samples and ots_samples_grid values must be >= 1")
        if any(not r > 0 for r in self.ots_reshape_grid + [self.ots_reshape]):
            raise ValueError("ots_reshape and ots_reshape_grid values must be > 0")
        check_prior_count(self.prior_count)


@dataclass
class RL2StageConfig:
    """RL² stage: whether to train it, and its algorithm config.

    Attributes:
        enabled: train and evaluate RL².
        greedy_eval: act greedily (argmax) at evaluation instead of sampling.
        algo: the PPO/GRU settings (``classic.algos.rl2_config.RL2Config``).
        init_from: start training from this saved policy (``policy.pt`` of another run, same
            network shape) instead of a fresh initialization, e.g. a policy trained on shorter
            trials (None: fresh).
    """

    enabled: bool = True
    greedy_eval: bool = False
    algo: RL2Config = field(default_factory=RL2Config)
    init_from: str | None = None


@dataclass
class EvalConfig:
    """Meta-test protocol.

    Attributes:
        num_tasks: held-out tasks (one trial each).
        seed: evaluation seed (tasks are disjoint from every training stream).
        batch_size: tasks run at once by classic agents (None = all).
        llm_batch_size: tasks run at once by LLM agents (memory of the KV cache).
    """

    num_tasks: int = 1000
    seed: int = 0
    batch_size: int | None = None
    llm_batch_size: int = 250

    def __post_init__(self) -> None:
        if self.num_tasks < 2:
            raise ValueError(f"num_tasks must be >= 2 (for a CI), got {self.num_tasks}")
        if self.llm_batch_size < 1:
            raise ValueError(f"llm_batch_size must be >= 1, got {self.llm_batch_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or null: all tasks at once), got {self.batch_size}")


@dataclass
class ClassicExperiment:
    """A classic bandit experiment (``kind: classic`` recipes).

    Attributes:
        name: run name (directory under ``output.root``).
        seed: master seed (RL² training seed is ``rl2.algo.seed``).
        threads: torch CPU threads (None = all cores).
        task: the task distribution (Bernoulli bandit, num_arms k, episodes_per_trial n).
        baselines, rl2, eval, output: the stages' settings.
    """

    name: str = "rl2_bandit"
    seed: int = 0
    threads: int | None = None
    task: BanditConfig = field(default_factory=BanditConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    rl2: RL2StageConfig = field(default_factory=RL2StageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---- baselines ------------------------------------------------------------------------------

def make_baseline(name: str, task: BanditConfig, params: dict):
    """A baseline agent by name, with tuned hyperparameters from ``params``."""
    k = task.num_arms
    if name == "Random":
        return RandomAgent(k)
    if name == "Greedy":
        return GreedyAgent(k, prior_count=params.get("prior_count", 0.0))
    if name == "epsilon-greedy":
        return EpsilonGreedyAgent(k, epsilon=params.get("epsilon", 0.1), prior_count=params.get("prior_count", 0.0))
    if name == "UCB1":
        return UCB1Agent(k, c=params.get("ucb_c", 1.0), prior_count=params.get("prior_count", 0.0))
    if name == "Thompson sampling":
        prior = params.get("ts_prior", 1.0)
        return ThompsonSamplingAgent(k, alpha0=prior, beta0=prior)
    if name == "OTS":
        return OptimisticThompsonSamplingAgent(k, num_samples=int(params.get("ots_samples", 1)), reshape=params.get("ots_reshape", 1.0))
    if name == "Gittins":
        from classic.agents.gittins import GittinsAgent

        return GittinsAgent(k, horizon=task.episodes_per_trial)
    if name == "Bayes-optimal":
        from classic.agents.bayes_optimal import BayesOptimalAgent

        return BayesOptimalAgent(k, horizon=task.episodes_per_trial)
    raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINES)}")


def tune_baselines(task: BanditConfig, cfg: BaselinesConfig, seed: int = 0) -> dict:
    """Grid-search the baselines' hyperparameters on training tasks (never the held-out ones).

    OTS's number of samples and posterior reshaping are searched jointly (their product grid).

    Returns:
        ``{"ucb_c": c, "epsilon": eps, "ts_prior": s, "ots_samples": K, "ots_reshape": rho,
        "prior_count": a (as set, not tuned), "grid": {agent: {"key=value[,key=value]": mean
        total reward}}}``; only the agents in ``cfg.agents`` are searched.
    """
    params = {"ucb_c": cfg.ucb_c, "epsilon": cfg.epsilon, "ts_prior": cfg.ts_prior, "ots_samples": cfg.ots_samples,
              "ots_reshape": cfg.ots_reshape, "prior_count": float(cfg.prior_count)}
    if not cfg.tune:
        return params
    dist = task.make()
    g = torch.Generator().manual_seed(TUNE_SEED_BASE + seed)
    tasks = dist.sample_tasks(cfg.tune_tasks, g)
    grid: dict[str, dict[str, float]] = {}
    a, k = params["prior_count"], task.num_arms
    searches = [  # (agent, grid points as {param key: value}, agent from a grid point)
        ("UCB1", [{"ucb_c": float(v)} for v in cfg.ucb_c_grid], lambda p: UCB1Agent(k, c=p["ucb_c"], prior_count=a)),
        ("epsilon-greedy", [{"epsilon": float(v)} for v in cfg.epsilon_grid],
         lambda p: EpsilonGreedyAgent(k, epsilon=p["epsilon"], prior_count=a)),
        ("Thompson sampling", [{"ts_prior": float(v)} for v in cfg.ts_prior_grid],
         lambda p: ThompsonSamplingAgent(k, alpha0=p["ts_prior"], beta0=p["ts_prior"])),
        ("OTS", [{"ots_samples": int(n), "ots_reshape": float(r)} for n in cfg.ots_samples_grid for r in cfg.ots_reshape_grid],
         lambda p: OptimisticThompsonSamplingAgent(k, num_samples=p["ots_samples"], reshape=p["ots_reshape"])),
    ]
    for agent_name, points, make in searches:
        if agent_name not in cfg.agents or not points:
            continue
        means = [float(run_trials(make(point), dist, tasks=tasks, episodes_per_trial=task.episodes_per_trial,
                                  seed=TUNE_SEED_BASE + seed).total_reward.mean()) for point in points]
        params.update(points[max(range(len(points)), key=means.__getitem__)])
        grid[agent_name] = {",".join(f"{key}={v}" for key, v in point.items()): m for point, m in zip(points, means)}
    params["grid"] = grid
    return params


def evaluate_baselines(task: BanditConfig, cfg: BaselinesConfig, ev: EvalConfig, params: dict, progress: bool = True) -> dict[str, TrialResult]:
    """Every configured baseline on the held-out tasks."""
    dist = task.make()
    out = {}
    names = cfg.agents
    if progress:
        from tqdm.auto import tqdm

        names = tqdm(names, desc="baselines")
    for name in names:
        out[name] = run_trials(make_baseline(name, task, params), dist, ev.num_tasks, task.episodes_per_trial, seed=ev.seed, batch_size=ev.batch_size)
    return out


# ---- RL² --------------------------------------------------------------------------------------

def rl2_fingerprint(task, cfg: RL2StageConfig) -> dict:
    """What a trained RL² policy depends on: the task, the algorithm's settings, the start policy."""
    return {"task": to_dict(task), "algo": to_dict(cfg.algo), "init_from": cfg.init_from}


def rl2_stage(task: BanditConfig, cfg: RL2StageConfig, run_dir: Path, logger: MetricsLogger | None, progress: bool = True) -> RL2Policy:
    """Train RL² (or load the finished policy from ``run_dir/rl2/policy.pt``, or resume its
    training) when ``run_dir/rl2`` was made with the same task and settings
    (:func:`classic.files.open_stage`; otherwise it is redone).

    Raises:
        FileNotFoundError: ``cfg.init_from`` names a missing file.
    """
    from classic.algos.rl2 import RL2Learner, RL2LearnerConfig
    from classic.core import StageRun
    from classic.experiments.compare import Protocol

    stage = run_dir / "rl2"
    open_stage(stage, rl2_fingerprint(task, cfg))
    learner_cfg = RL2LearnerConfig(algo=cfg.algo, greedy_eval=cfg.greedy_eval, init_from=cfg.init_from)
    protocol = Protocol(task.episodes_per_trial, num_tasks=0, seed=0, batch_size=None)
    path = RL2Learner().train(learner_cfg, task.make(), protocol, StageRun(stage, logger.log if logger else None, progress))
    return RL2Policy.load(path)


# ---- the run ---------------------------------------------------------------------------------

def write_report(run_dir: Path, title: str, task, results: dict, times: dict, notes: list[str], extra_json: dict, reference: dict | None = None, wall_time: float | None = None, parallel: tuple[str, ...] = ()) -> None:
    """report.md, regret.png and results.json in ``run_dir``."""
    plot_regret(results, run_dir / "regret.png", title=f"{title}: {task.describe(short=True)}")
    lines = [f"# {title}", "", f"{task.describe()}.", ""]
    lines += ["## Held-out evaluation", "", results_table(results, reference=reference), "", "![cumulative regret](regret.png)", ""]
    lines += ["## Wall time per stage", "", stage_times_table(times, wall_time, parallel), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    write_atomic(run_dir / "report.md", "\n".join(lines))
    write_results_json(run_dir / "results.json", to_dict(task), results, extra={"stage_times_s": times, "wall_time_s": wall_time, **extra_json})


def run_classic(cfg: ClassicExperiment, progress: bool = True) -> Path:
    """Run a classic experiment end to end; returns the run directory."""
    start = time.perf_counter()
    set_threads(cfg.threads)
    run_dir = prepare_run_dir(cfg.name, cfg.output)
    save_resolved(cfg, run_dir / "config.yaml", kind="classic")
    times: dict[str, float] = {}
    with MetricsLogger(run_dir) as logger:
        results, params, notes = classic_stages(cfg, run_dir, logger, times, progress)
    write_report(run_dir, cfg.name, cfg.task, results, times, notes, {"baseline_params": params}, paper_reference(cfg.task), wall_time=time.perf_counter() - start)
    return run_dir


def classic_stages(cfg, run_dir: Path, logger, times: dict, progress: bool = True, rl2: bool = True):
    """Tune and evaluate baselines, then (if ``rl2``) train and evaluate RL²; fills ``times``."""
    t = time.perf_counter()
    params = tune_baselines(cfg.task, cfg.baselines, cfg.seed)
    times["tune baselines"] = time.perf_counter() - t
    t = time.perf_counter()
    results = evaluate_baselines(cfg.task, cfg.baselines, cfg.eval, params, progress)
    times["evaluate baselines"] = time.perf_counter() - t
    notes = [
        f"UCB1 c = {params['ucb_c']}, epsilon-greedy epsilon = {params['epsilon']}, Thompson sampling prior "
        f"Beta({params['ts_prior']}, {params['ts_prior']}), OTS samples = {params['ots_samples']}, "
        f"OTS posterior reshaping = {params.get('ots_reshape', 1.0)}"
        + (" (tuned on training tasks)" if cfg.baselines.tune else " (set in the recipe)"),
        prior_count_note(params.get("prior_count", 0.0)),
        "Gittins = finite-horizon Gittins index with Beta(1,1) priors (classic/agents/gittins.py).",
    ]
    if cfg.rl2.enabled and rl2:
        t = time.perf_counter()
        policy = rl2_stage(cfg.task, cfg.rl2, run_dir, logger, progress)
        times["train RL²"] = time.perf_counter() - t
        evaluate_rl2(cfg, policy, results, times)
    if cfg.rl2.enabled:
        notes.append("RL² = GRU policy trained with PPO + GAE (the paper used TRPO).")
    return results, params, notes


def prior_count_note(prior_count: float) -> str:
    if prior_count > 0:
        return (f"UCB1, epsilon-greedy and Greedy start every arm's statistics at {prior_count:g} success(es) and "
                f"{prior_count:g} failure(s) (Beta({prior_count:g}, {prior_count:g}); the paper's initialization).")
    return "UCB1, epsilon-greedy and Greedy pull every arm once before using its empirical mean."


def evaluate_rl2(cfg, policy: RL2Policy, results: dict, times: dict) -> None:
    """RL² on the held-out tasks, added to ``results`` as "RL²"."""
    t = time.perf_counter()
    agent = RL2Agent(policy, greedy=cfg.rl2.greedy_eval)
    results["RL²"] = run_trials(agent, cfg.task.make(), cfg.eval.num_tasks, cfg.task.episodes_per_trial, seed=cfg.eval.seed, batch_size=cfg.eval.batch_size)
    times["evaluate RL²"] = time.perf_counter() - t


def train_rl2_in_process(task: BanditConfig, cfg: RL2StageConfig, run_dir: str, threads: int = 1) -> float:
    """Entry point of a worker process that trains RL² (one thread) while the parent trains
    something else; writes ``run_dir/rl2/policy.pt`` and returns the training seconds."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    with MetricsLogger(run_dir, tensorboard=True) as logger:
        rl2_stage(task, cfg, Path(run_dir), logger, progress=False)
    return time.perf_counter() - t
