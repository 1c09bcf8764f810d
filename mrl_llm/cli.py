"""``mrl`` command line: ``mrl run RECIPE [--set key.sub=value ...] [--dry-run]``, and
``mrl plot RUN [RUN ...] -o FILE.png``: one adaptation plot of several compare runs on the same
held-out tasks (:func:`classic.report.plot_runs`).

A recipe's top-level ``kind`` picks the experiment: ``compare`` (the default: any task
distribution, baselines and learners, the LLM among them, by registry name,
:class:`classic.experiments.compare.CompareExperiment`), ``tables`` (RL² Tables 1 and 2 in
full, a sweep of compare runs, :class:`classic.tables.TablesExperiment`) or ``mrt``
(outcome-GRPO vs MRT on reasoning problems, :class:`mrl_llm.mrt_experiment.MRTExperiment`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from classic.config import RecipeError, load_recipe, load_yaml, peek_kind, to_dict
from classic.files import RunFolderError, check_run_name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrl", description="Meta-RL for LLMs and classic agents on the same tasks.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe (YAML) end to end")
    run.add_argument("recipe", help="path to a recipe YAML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set grpo.max_steps=10 (repeatable)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the config and build trainer arguments without loading weights or training",
    )
    plot = sub.add_parser(
        "plot", help="one adaptation plot of several compare runs on the same held-out tasks (e.g. classic + LLM)"
    )
    plot.add_argument("runs", nargs="+", help="run folders (each with its results.json)")
    plot.add_argument("-o", "--out", required=True, help="the PNG to write")
    plot.add_argument("--title", default=None, help="the plot's title")
    return p


def _plot(args) -> int:
    from classic.report import plot_runs

    try:
        table = plot_runs(args.runs, args.out, title=args.title)
    except (ValueError, FileNotFoundError) as err:
        print(f"mrl: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {args.out}")
    return 0


def load_experiment(path: str, overrides=()):
    """(kind, config) for a recipe file; raises RecipeError naming the key and the file."""
    kind, cfg = _load_experiment(path, overrides)
    try:
        check_run_name(cfg.name)
    except ValueError as err:
        raise RecipeError(f"{path}: {err}") from None
    return kind, cfg


def _load_experiment(path: str, overrides=()):
    kind = peek_kind(path)
    if kind == "compare":
        from classic.experiments.compare import CompareExperiment

        return kind, load_recipe(CompareExperiment, path, overrides)
    if kind == "tables":
        from classic.tables import TablesExperiment

        return kind, load_recipe(TablesExperiment, path, overrides)
    if kind == "mrt":
        from mrl_llm.mrt_experiment import MRTExperiment

        return kind, load_recipe(MRTExperiment, path, overrides)
    raise RecipeError(f"{path}: unknown kind {kind!r} (known: compare, mrt, tables)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plot":
        return _plot(args)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        kind, cfg = load_experiment(args.recipe, args.overrides)
    except (RecipeError, FileNotFoundError) as err:
        print(f"mrl: error: {err}", file=sys.stderr)
        return 2
    if not load_yaml(args.recipe):
        print(
            f"mrl: error: {args.recipe}: the recipe is empty (a run needs at least its kind: and name:)",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        print(f"# {args.recipe} (kind: {kind}) resolves to:")
        print(json.dumps(to_dict(cfg), indent=2, default=str))
        if kind == "compare":
            from classic.experiments.compare import stage_name

            run_dir = Path(cfg.output.root) / cfg.name
            described = {
                c.display_name: c.learner().dry_run(c, cfg.task, cfg.protocol_for_task(), run_dir / stage_name(c))
                for c in cfg.learners
            }
            described = {k: v for k, v in described.items() if v is not None}
            if described:
                print("# trainer arguments (no weights loaded):")
                print(json.dumps(described, indent=2, default=str))
        if kind == "mrt":
            from mrl_llm.mrt_experiment import dry_run as mrt_dry_run

            print("# trainer arguments (no weights loaded):")
            mrt_dry_run(cfg)
        return 0
    try:
        print(_run(kind, cfg))
    except RunFolderError as err:
        print(f"mrl: error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(kind: str, cfg) -> str:
    """Run the experiment; returns the line saying what it wrote."""
    if kind == "compare":
        from classic.experiments.compare import run_compare

        return f"wrote {run_compare(cfg)}/report.md, adaptation.png, results.json"
    if kind == "mrt":
        from mrl_llm.mrt_experiment import run_mrt

        return f"wrote {run_mrt(cfg)}/report.md, accuracy_vs_tokens.png, results.json"
    from classic.tables import run_tables

    return f"wrote {run_tables(cfg)}/report.md, results.json and settings/*/ (report.md, regret.png, results.json each)"


if __name__ == "__main__":
    sys.exit(main())
