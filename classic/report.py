"""Turning evaluation results into the report: markdown tables, the regret plot, ``results.json``.

Every function takes a mapping ``{agent name: result}`` where a result is either a
:class:`~classic.evaluate.TrialResult` or the dict :func:`summarize` makes of one (which is
what ``results.json`` stores under ``"agents"``), so saved results re-render without the
tensors. The row/line label is the mapping key, not ``TrialResult.agent``.

Example:
    >>> results = {"UCB1": run_trials(ucb, dist), "RL2": run_trials(rl2, dist)}  # doctest: +SKIP
    >>> print(results_table(results, reference={"UCB1": 9.8}))  # doctest: +SKIP
    >>> plot_regret(results, "runs/demo/regret.png", title="Bernoulli bandit, k=5")  # doctest: +SKIP
    >>> write_results_json("runs/demo/results.json", {"name": "bandit", "num_arms": 5}, results)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import torch

from classic.evaluate import TrialResult
from classic.files import save_figure, write_atomic

__all__ = [
    "adaptation_curve",
    "adaptation_table",
    "comparison_table",
    "plot_adaptation",
    "load_results_json",
    "plot_regret",
    "regret_curve",
    "results_table",
    "stage_times_table",
    "summarize",
    "write_results_json",
]

Result = Union[TrialResult, Mapping]

_MISSING = "—"


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _curve(values: torch.Tensor) -> dict[str, list[float]]:
    """Mean over tasks of (N, E) values per episode and its 95% CI half-width (1.96 * s / sqrt(N))."""
    values = values.double()
    n = values.shape[0]
    mean = values.mean(dim=0)
    std = values.std(dim=0, unbiased=True) if n > 1 else torch.zeros_like(mean)
    return {"mean": mean.tolist(), "ci95": (1.96 * std / math.sqrt(max(n, 1))).tolist()}


def regret_curve(result: TrialResult) -> dict[str, list[float]]:
    """Mean cumulative regret after each episode and its 95% CI half-width over tasks:
    ``{"mean": [E], "ci95": [E]}``."""
    return _curve(result.regret)


def adaptation_curve(result: TrialResult) -> dict[str, list[float]]:
    """Mean return of each episode index of the trial and its 95% CI half-width over tasks (the
    adaptation, or in-context learning, curve): ``{"mean": [E], "ci95": [E]}``."""
    return _curve(result.episode_returns)


def summarize(result: Result, curve: bool = True) -> dict:
    """The JSON-safe summary of one result (a dict passes through, copied).

    Keys: ``total_reward`` and ``regret`` (``{"mean", "ci95"}``, final cumulative regret),
    ``invalid_rate`` (fraction of steps), ``num_tasks``, ``wall_time_s``, and when available
    ``regret_curve`` (``{"mean": [E], "ci95": [E]}``, per episode) and ``extra`` (the agent's
    own statistics).

    Raises:
        TypeError: ``result`` is neither a TrialResult nor a mapping.
    """
    if isinstance(result, TrialResult):
        out = result.summary()
        if curve:
            out["regret_curve"] = regret_curve(result)
            out["episode_returns"] = adaptation_curve(result)
        if result.extra:
            out["extra"] = _jsonable(result.extra)
        return out
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"expected a TrialResult or a summary dict, got {type(result).__name__}")


# --------------------------------------------------------------------------------------------
# Markdown tables
# --------------------------------------------------------------------------------------------


def results_table(
    results: Mapping[str, Result],
    reference: Mapping[str, float] | None = None,
    extra_columns: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Markdown table, one row per agent, in the order of ``results``.

    Columns: agent; tasks (N); total reward mean ± 95% CI; final cumulative regret mean ± 95%
    CI; invalid-action rate (only when some agent has a nonzero one); "paper" (only when
    ``reference`` names at least one of the agents); evaluation wall time; then
    ``extra_columns``. Missing values show as "—". Mean and CI share the number of decimals
    the CI needs for one significant digit (e.g. ``78.1 ± 0.9``).

    Args:
        results: agent name -> TrialResult or summary dict.
        reference: agent name -> number reported in the paper (same metric as the caller
            states; usually cumulative regret).
        extra_columns: column header -> {agent name -> cell text}.

    Returns:
        The table, ending with a newline.
    """
    summaries = {name: summarize(r, curve=False) for name, r in results.items()}
    reference = dict(reference or {})
    extra_columns = dict(extra_columns or {})
    show_invalid = any((s.get("invalid_rate") or 0) > 0 for s in summaries.values())
    show_paper = any(name in reference for name in summaries)

    header = ["agent", "tasks", "total reward (± 95% CI)", "cum. regret (± 95% CI)"]
    align = ["---", "---:", "---:", "---:"]
    if show_invalid:
        header.append("invalid actions")
        align.append("---:")
    if show_paper:
        header.append("paper")
        align.append("---:")
    header.append("eval time")
    align.append("---:")
    for col in extra_columns:
        header.append(_cell(col))
        align.append("---")

    lines = [_row(header), _row(align)]
    for name, s in summaries.items():
        n = s.get("num_tasks")
        row = [
            _cell(name),
            str(n) if n is not None else _MISSING,
            _fmt_mean_ci(s.get("total_reward")),
            _fmt_mean_ci(s.get("regret")),
        ]
        if show_invalid:
            rate = s.get("invalid_rate")
            row.append(f"{100 * rate:.1f}%" if rate is not None else _MISSING)
        if show_paper:
            row.append(_fmt_number(reference[name]) if reference.get(name) is not None else _MISSING)
        row.append(_fmt_seconds(s.get("wall_time_s")))
        for col, cells in extra_columns.items():
            row.append(_cell(str(cells.get(name, _MISSING))))
        lines.append(_row(row))
    return "\n".join(lines) + "\n"


def comparison_table(
    rows: Mapping[str, Mapping[str, Mapping | None]],
    columns: Iterable[str],
    reference: Mapping[str, Mapping[str, float]] | None = None,
    rounding: float = 0.05,
    key: str = "total_reward",
) -> tuple[str, list[str]]:
    """A paper-style markdown table: one row per setting, one column per agent, each cell
    ``mean ± 95% CI (paper)``, marked † where we differ from the paper by more than our CI.

    Args:
        rows: setting label -> {agent -> summary dict (or None when not run)}.
        columns: agent names, in order.
        reference: setting label -> {agent -> the paper's number}.
        rounding: the paper's rounding half-width, added to our CI before a cell is marked
            (0.05 for numbers printed with one decimal).
        key: which statistic of the summaries (``"total_reward"`` or ``"regret"``).

    Returns:
        ``(table, deviations)``: the table ending with a newline, and one line of text per
        marked cell (``"k=5, n=100 · UCB1: 78.2 ± 1.0 vs 80.0"``).
    """
    columns = list(columns)
    reference = dict(reference or {})
    lines = [_row(["setting"] + [_cell(c) for c in columns]), _row(["---"] + ["---:"] * len(columns))]
    deviations: list[str] = []
    for label, results in rows.items():
        ref = reference.get(label, {})
        cells = [_cell(label)]
        for col in columns:
            stat = (results.get(col) or {}).get(key) if results.get(col) else None
            text = _fmt_mean_ci(stat)
            paper = ref.get(col)
            if paper is not None:
                text += f" ({_fmt_number(paper)})"
                if stat and stat.get("mean") is not None:
                    mean, ci = float(stat["mean"]), float(stat.get("ci95") or 0.0)
                    if abs(mean - float(paper)) > ci + rounding:
                        text += " †"
                        deviations.append(f"{label} · {col}: {_fmt_mean_ci(stat)} vs {_fmt_number(paper)}")
            cells.append(_cell(text))
        lines.append(_row(cells))
    return "\n".join(lines) + "\n", deviations


def stage_times_table(times: Mapping[str, float], wall_time: float | None = None, parallel: Iterable[str] = ()) -> str:
    """Markdown table of wall time per stage (seconds and minutes) with a total row.

    Args:
        times: stage name -> seconds, in the order to show.
        wall_time: the run's measured wall time; shown as the total when given (stages that
            ran in parallel make the sum of the rows larger than it).
        parallel: stages that ran in parallel to the others; marked, and left out of the sum.

    Returns:
        The table, ending with a newline.
    """
    parallel = set(parallel)
    lines = [_row(["stage", "seconds", "minutes"]), _row(["---", "---:", "---:"])]
    total = 0.0
    for stage, seconds in times.items():
        name = _cell(stage) + (" (in parallel)" if stage in parallel else "")
        if stage not in parallel:
            total += float(seconds)
        lines.append(_row([name, f"{seconds:.1f}", f"{seconds / 60:.2f}"]))
    label = "**total (wall clock)**" if wall_time is not None else "**total**"
    total = float(wall_time) if wall_time is not None else total
    lines.append(_row([label, f"**{total:.1f}**", f"**{total / 60:.2f}**"]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _decimals(mean: float, ci: float) -> int:
    if ci > 0 and math.isfinite(ci):
        return min(max(-math.floor(math.log10(ci)), 1), 4)  # at least one decimal: 78.1 ± 2.0
    m = abs(mean)
    return 1 if m >= 10 else 2 if m >= 1 else 3


def _fmt_mean_ci(stat: Mapping | None) -> str:
    if not stat or stat.get("mean") is None:
        return _MISSING
    mean, ci = float(stat["mean"]), float(stat.get("ci95") or 0.0)
    d = _decimals(mean, ci)
    return f"{mean:.{d}f} ± {ci:.{d}f}"


def _fmt_number(x: float) -> str:
    x = float(x)
    return f"{x:.0f}" if abs(x) >= 1e4 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.4g}"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return _MISSING
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot_regret(results: Mapping[str, Result], path: str | Path, title: str | None = None) -> Path:
    """PNG of mean cumulative regret vs pulls (episodes), one line per agent, 95% CI band shaded.

    Uses matplotlib's Agg canvas directly (no pyplot, the global backend is untouched).

    Args:
        results: agent name -> TrialResult, or summary dict holding ``"regret_curve"``.
        path: output PNG; parent folders are created.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a summary dict without ``regret_curve``, or ``results`` empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_regret: no results to plot")
    curves = {}
    for name, r in results.items():
        curve = regret_curve(r) if isinstance(r, TrialResult) else dict(r).get("regret_curve")
        if not curve:
            raise ValueError(f"plot_regret: result for {name!r} has no regret curve")
        curves[name] = curve

    fig = Figure(figsize=(7.0, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", "-.", ":"]
    for i, (name, curve) in enumerate(curves.items()):
        mean = [float("nan") if m is None else float(m) for m in curve["mean"]]
        ci = [0.0 if c is None else float(c) for c in curve["ci95"]]
        x = list(range(1, len(mean) + 1))
        marker = "o" if len(mean) == 1 else None
        (line,) = ax.plot(x, mean, label=name, lw=1.8, ls=styles[(i // 10) % len(styles)], marker=marker)
        lo = [m - c for m, c in zip(mean, ci)]
        hi = [m + c for m, c in zip(mean, ci)]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("pulls (episodes)")
    ax.set_ylabel("cumulative regret")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if max(len(c["mean"]) for c in curves.values()) > 1:
        ax.set_xlim(left=1)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    if len(curves) > 6:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    else:
        ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    return save_figure(fig, path, format="png", bbox_inches="tight")


def plot_adaptation(
    results: Mapping[str, Result],
    path: str | Path,
    bounds: Mapping[str, list[float]] | None = None,
    title: str | None = None,
) -> Path:
    """PNG of the mean return per episode index of the trial (the adaptation curve), one line per
    agent with its 95% CI band, and each of ``bounds`` (e.g. the oracle, Bayes-optimal) dashed.

    Raises:
        ValueError: ``results`` empty, or a summary dict without ``episode_returns``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_adaptation: no results to plot")
    fig = Figure(figsize=(7.0, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # Distinct colours past matplotlib's 10-colour cycle (a merged plot of several runs has ~15 agents);
    # an agent's greedy evaluation is dotted.
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(results) <= 10 else "tab20"]
    for i, (name, r) in enumerate(results.items()):
        curve = adaptation_curve(r) if isinstance(r, TrialResult) else dict(r).get("episode_returns")
        if not curve:
            raise ValueError(f"plot_adaptation: result for {name!r} has no episode returns")
        mean, ci = [float(m) for m in curve["mean"]], [float(c) for c in curve["ci95"]]
        x = list(range(1, len(mean) + 1))
        (line,) = ax.plot(
            x,
            mean,
            label=name,
            lw=1.8,
            marker="o" if len(mean) <= 12 else None,
            ms=3,
            color=cmap(i % cmap.N),
            ls=":" if "greedy" in name else "-",
        )
        ax.fill_between(
            x,
            [m - c for m, c in zip(mean, ci)],
            [m + c for m, c in zip(mean, ci)],
            color=line.get_color(),
            alpha=0.2,
            lw=0,
        )
    for name, values in (bounds or {}).items():
        ax.plot(
            range(1, len(values) + 1),
            values,
            ls="--",
            lw=1.2,
            color="black" if "oracle" in name else "gray",
            label=name,
        )
    ax.set_xlabel("episode of the trial")
    ax.set_ylabel("mean episode return")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return save_figure(fig, path, format="png", bbox_inches="tight")


def adaptation_table(
    results: Mapping[str, Result], bounds: Mapping[str, list[float]] | None = None, max_columns: int = 8
) -> str:
    """Markdown table of the mean return per episode index (± 95% CI), one row per agent, then
    one row per bound; a last column gives the trial return's gap to the first bound (oracle or
    Bayes-optimal) in return units. With more than ``max_columns`` episodes, evenly spaced
    ones are shown (always the first and the last)."""
    curves = {
        name: (adaptation_curve(r) if isinstance(r, TrialResult) else dict(r).get("episode_returns") or {})
        for name, r in results.items()
    }
    E = max((len(c.get("mean", [])) for c in curves.values()), default=0)
    cols = (
        list(range(E))
        if E <= max_columns
        else sorted({round(i * (E - 1) / (max_columns - 1)) for i in range(max_columns)})
    )
    bounds = dict(bounds or {})
    ref_name, ref = next(iter(bounds.items()), (None, None))
    header = ["agent"] + [f"ep. {c + 1}" for c in cols] + ["trial return"]
    if ref is not None:
        header.append(f"gap to {ref_name}")  # in return units: ref trial return - agent's
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]

    def row(name, mean, ci):
        total = sum(mean)
        cells = (
            [_cell(name)]
            + [_fmt_mean_ci({"mean": mean[c], "ci95": ci[c]}) if ci else _fmt_number(mean[c]) for c in cols]
            + [_fmt_number(total)]
        )
        if ref is not None:
            cells.append(_fmt_number(sum(ref) - total))
        lines.append(_row(cells))

    for name, c in curves.items():
        if c.get("mean"):
            row(name, [float(m) for m in c["mean"]], [float(x) for x in c["ci95"]])
    for name, values in bounds.items():
        row(name, [float(v) for v in values], None)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# results.json
# --------------------------------------------------------------------------------------------


def write_results_json(
    path: str | Path,
    task: Mapping | Any,
    results: Mapping[str, Result],
    extra: Mapping | None = None,
) -> Path:
    """Write ``{"task": {...}, "agents": {name: summary}, **extra}`` as JSON.

    Each agent's entry is :func:`summarize` of its result: ``total_reward`` and ``regret`` as
    ``{"mean", "ci95"}``, ``invalid_rate``, ``num_tasks``, ``wall_time_s``, plus
    ``regret_curve`` and ``extra`` when known. Tensors become lists, dataclasses dicts and
    non-finite floats ``null``, so the file is strict JSON. Written atomically.

    Args:
        path: output file; parent folders are created.
        task: a description of the task distribution (dict or config dataclass).
        results: agent name -> TrialResult or summary dict.
        extra: further top-level keys (e.g. ``"stage_times"``, ``"config"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``extra`` uses the reserved keys "task" or "agents".
    """
    extra = dict(extra or {})
    clash = {"task", "agents"} & set(extra)
    if clash:
        raise ValueError(f"write_results_json: extra may not use the reserved keys {sorted(clash)}")
    doc = {
        "task": _jsonable(task),
        "agents": {name: _jsonable(summarize(r)) for name, r in results.items()},
        **{k: _jsonable(v) for k, v in extra.items()},
    }
    return write_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def load_results_json(path: str | Path) -> dict:
    """Read a file written by :func:`write_results_json`; ``doc["agents"]`` feeds the other functions."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        from classic.config import to_dict

        return _jsonable(to_dict(value))
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "tolist", None)):  # numpy
        return _jsonable(value.tolist())
    return str(value)


def merge_runs(docs: Mapping[str, Mapping]) -> tuple[dict, dict]:
    """The agents and bounds of several compare runs on the same held-out tasks, for one plot.

    Args:
        docs: run name -> its ``results.json`` (:func:`load_results_json`).

    Returns:
        (agents, bounds): every run's agents in order (an agent already met in an earlier run, e.g.
        the same baseline, is taken from the first), and the runs' common bounds.

    Raises:
        ValueError: fewer than one run, or runs whose task or bounds (the oracle's per-episode
            return on the held-out tasks, so the tasks themselves) differ, naming both runs.
    """
    if not docs:
        raise ValueError("merge_runs: no runs")
    (first, ref), *rest = docs.items()
    agents: dict = {}
    for name, doc in docs.items():
        for key in ("task", "bounds"):
            if doc.get(key) != ref.get(key):
                raise ValueError(f"runs {first!r} and {name!r} have different {key}: not the same held-out tasks")
        for agent, summary in doc["agents"].items():
            agents.setdefault(agent, summary)
    return agents, dict(ref.get("bounds") or {})


def plot_runs(run_dirs: Iterable[str | Path], path: str | Path, title: str | None = None) -> str:
    """One adaptation plot (PNG at ``path``) of the agents of several compare runs on the same
    task and held-out tasks (e.g. a classic recipe and an LLM recipe); returns its markdown table.

    Raises:
        ValueError: as :func:`merge_runs`; FileNotFoundError: a run without ``results.json``.
    """
    docs = {str(d): load_results_json(Path(d) / "results.json") for d in run_dirs}
    agents, bounds = merge_runs(docs)
    plot_adaptation(agents, path, bounds, title=title)
    return adaptation_table(agents, bounds, max_columns=12)
