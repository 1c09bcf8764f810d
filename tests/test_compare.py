"""``kind: compare``: registries, tagged-union recipes, the one experiment end to end and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classic.config import RecipeError, from_dict, load_recipe
from classic.experiments.compare import CompareExperiment, run_compare, tune_baseline
from classic.registry import AGENTS, LEARNERS, TASKS, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]

TINY_RL2 = {"name": "rl2", "algo": {"num_iterations": 2, "num_trials_per_batch": 16, "num_minibatches": 2}}


def _cfg(tmp_path, **over):
    data = {
        "name": "c",
        "threads": 1,
        "task": {"name": "bandit", "num_arms": 3, "episodes_per_trial": 10},
        "protocol": {"num_tasks": 50, "tune_tasks": 20},
        "baselines": [{"name": "Random"}, {"name": "UCB1", "grid": {"c": [0.1, 1.0]}}],
        "learners": [TINY_RL2],
        "output": {"root": str(tmp_path)},
    }
    data.update(over)
    return from_dict(CompareExperiment, data, source="r.yaml")


def test_registries_list_every_part_and_unknown_names_list_the_known_ones():
    assert {"bandit", "tabular_mdp", "nav2d", "darkroom"} <= set(TASKS.names())
    assert {"Random", "UCB1", "Thompson sampling", "Gittins", "PSRL", "UCRL2"} <= set(AGENTS.names())
    assert "rl2" in LEARNERS.names()
    with pytest.raises(
        RegistryError, match=r"unknown task distribution 'bandt'.*known: .*bandit.*did you mean 'bandit'"
    ):
        TASKS.get("bandt")


def test_registry_refuses_a_second_class_under_one_name_and_a_missing_name_field():
    from dataclasses import dataclass

    reg = Registry("thing")

    @reg.register("a")
    @dataclass
    class A:
        name: str = "a"

    with pytest.raises(RegistryError, match="registered twice"):

        @reg.register("a")
        @dataclass
        class B:
            name: str = "a"

    with pytest.raises(TypeError, match="needs a field name = 'c'"):

        @reg.register("c")
        @dataclass
        class C:
            x: int = 0


def test_recipe_errors_name_the_dotted_key_and_the_file(tmp_path):
    with pytest.raises(RecipeError, match=r"r.yaml: 'task.name': unknown task distribution 'nope' \(known: bandit"):
        _cfg(tmp_path, task={"name": "nope"})
    with pytest.raises(RecipeError, match=r"r.yaml: unknown key 'baselines\[1\].cc'.*did you mean 'c'"):
        _cfg(tmp_path, baselines=[{"name": "Random"}, {"name": "UCB1", "cc": 1}])
    with pytest.raises(RecipeError, match=r"r.yaml: 'learners\[0\]' must be a mapping with a 'name' key"):
        _cfg(tmp_path, learners=[{"algo": {}}])
    with pytest.raises(RecipeError, match="grid: UCB1 has no hyperparameter 'epsilon'"):
        _cfg(tmp_path, baselines=[{"name": "UCB1", "grid": {"epsilon": [0.1]}}])
    with pytest.raises(RecipeError, match="two agents are named 'UCB1'.*label"):
        _cfg(tmp_path, baselines=[{"name": "UCB1"}, {"name": "UCB1", "c": 0.2}])
    with pytest.raises(RecipeError, match="protocol.eval_task: the task has no key 'goal_split'"):
        _cfg(tmp_path, protocol={"num_tasks": 10, "eval_task": {"goal_split": "test"}})
    with pytest.raises(RecipeError, match="name at least one baseline or learner"):
        _cfg(tmp_path, baselines=[], learners=[])


def test_overrides_reach_list_items_by_name_label_or_index():
    path = str(ROOT / "recipes/classic/rl2_bandit.yaml")
    cfg = load_recipe(
        CompareExperiment,
        path,
        ["learners.rl2.algo.num_iterations=7", "baselines.UCB1.c=0.3", "baselines.0.label=uniform", "task.num_arms=3"],
    )
    assert cfg.learners[0].algo.num_iterations == 7 and cfg.task.num_arms == 3
    ucb = next(b for b in cfg.baselines if b.name == "UCB1")
    assert ucb.c == 0.3 and cfg.baselines[0].display_name == "uniform"
    with pytest.raises(RecipeError, match="'learners' has no item 'maml' \\(items: rl2\\)"):
        load_recipe(CompareExperiment, path, ["learners.maml.x=1"])
    with pytest.raises(RecipeError, match="unknown key 'learners\\[0\\].algo.num_iter'"):
        load_recipe(CompareExperiment, path, ["learners.rl2.algo.num_iter=1"])


def test_tuning_picks_the_best_grid_point_on_training_tasks():
    import torch

    cfg = AGENTS.get("UCB1")(grid={"c": [0.0, 0.2, 50.0]})
    dist = TASKS.get("bandit")(num_arms=3).make()
    tasks = dist.sample_tasks(200, torch.Generator().manual_seed(0))
    best, table = tune_baseline(cfg, dist, 30, tasks, seed=0)
    assert set(table) == {"c=0.0", "c=0.2", "c=50.0"}
    assert best.c == float(max(table, key=table.get).split("=")[1])
    assert table["c=50.0"] < table["c=0.2"]  # c=50 explores uniformly


def test_compare_end_to_end_report_and_resume_after_an_interruption(tmp_path, monkeypatch):
    from classic.algos import rl2

    cfg = _cfg(tmp_path)
    calls = {"n": 0}
    real_agent = rl2.RL2Learner.agent

    def interrupted(self, *a, **k):  # the run dies after training, before evaluating RL²
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(rl2.RL2Learner, "agent", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, progress=False)
    policy = tmp_path / "c" / "rl2" / "policy.pt"
    stamp = policy.stat().st_mtime_ns
    monkeypatch.setattr(rl2.RL2Learner, "agent", real_agent)
    trained = {"n": 0}
    real_train = rl2.train_rl2
    monkeypatch.setattr(rl2, "train_rl2", lambda *a, **k: trained.__setitem__("n", 1) or real_train(*a, **k))
    run_dir = run_compare(cfg, progress=False)
    assert trained["n"] == 0 and policy.stat().st_mtime_ns == stamp  # the finished stage is reused
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["task"] == {"num_arms": 3, "episodes_per_trial": 10, "name": "bandit"}
    assert set(doc["agents"]) == {"Random", "UCB1", "RL²"}
    assert len(doc["agents"]["RL²"]["episode_returns"]["mean"]) == 10
    assert "oracle (knows the task)" in doc["bounds"] and doc["baseline_params"]["UCB1"]["grid"]
    report = (run_dir / "report.md").read_text()
    assert "Return per episode of the trial" in report and "gap to oracle" in report
    assert (run_dir / "adaptation.png").stat().st_size > 1000
    # a clean run into another folder gives the same numbers
    clean = run_compare(_cfg(tmp_path, name="clean"), progress=False)
    again = json.loads((clean / "results.json").read_text())["agents"]
    for name, entry in doc["agents"].items():
        assert again[name]["total_reward"] == entry["total_reward"]


def test_a_changed_learner_config_redoes_its_stage(tmp_path):
    run_compare(_cfg(tmp_path, baselines=[]), progress=False)
    policy = tmp_path / "c" / "rl2" / "policy.pt"
    stamp = policy.stat().st_mtime_ns
    other = dict(TINY_RL2, algo=dict(TINY_RL2["algo"], hidden_size=8))
    run_compare(_cfg(tmp_path, baselines=[], learners=[other]), progress=False)
    assert policy.stat().st_mtime_ns != stamp


def _rl2_steps(run_dir, prefix="rl2/"):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if any(k.startswith(prefix) for k in r)]


def test_a_redone_stage_drops_its_old_curve_from_the_metrics(tmp_path):
    """A rerun with other RL² settings retrained RL² and appended a second curve under rl2/ to the
    first one (the plots then mixed two trainings); the redone stage's old lines are dropped."""
    run_dir = run_compare(_cfg(tmp_path, baselines=[]), progress=False)
    first = _rl2_steps(run_dir)
    assert first and first == sorted(set(first))
    with open(run_dir / "metrics.jsonl", "a") as f:  # another stage's line stays
        f.write(json.dumps({"step": 1, "time": 0.0, "other/x": 1.0}) + "\n")
    other = dict(TINY_RL2, algo=dict(TINY_RL2["algo"], hidden_size=8))
    run_compare(_cfg(tmp_path, baselines=[], learners=[other]), progress=False)
    assert _rl2_steps(run_dir) == first  # one curve, the new training's (same number of steps)
    assert _rl2_steps(run_dir, "other/") == [1]
    run_compare(_cfg(tmp_path, baselines=[], learners=[other]), progress=False)  # reused: nothing dropped or added
    assert _rl2_steps(run_dir) == first


def test_a_resumed_rl2_training_logs_each_step_once(tmp_path, monkeypatch):
    from classic.algos import rl2

    real = rl2.train_rl2
    algo = dict(TINY_RL2["algo"], num_iterations=4)

    def killed_after_three(*a, **k):
        calls = {"n": 0}

        def stop(iteration, policy, env_steps):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # killed after iteration 3 was logged; the checkpoint is of iteration 2
            return False

        return real(*a, **{**k, "checkpoint_every": 2, "on_iteration": stop})

    monkeypatch.setattr(rl2, "train_rl2", killed_after_three)
    cfg = _cfg(tmp_path, baselines=[], learners=[dict(TINY_RL2, algo=algo)])
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, progress=False)
    assert len(_rl2_steps(tmp_path / "c")) == 3
    monkeypatch.setattr(rl2, "train_rl2", lambda *a, **k: real(*a, **{**k, "checkpoint_every": 2}))
    run_compare(cfg, progress=False)
    steps = _rl2_steps(tmp_path / "c")
    assert len(steps) == 4 and steps == sorted(set(steps))


def test_metrics_logger_forget_drops_only_its_prefix(tmp_path):
    from classic.metrics import MetricsLogger, read_metrics

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"a/x": 1.0, "b/y": 2.0})
        logger.log(2, {"a/x": 3.0})
        logger.log(3, {"ab/z": 4.0})
        assert logger.forget("a/") == 2
        logger.log(4, {"a/x": 5.0})  # still appends after the rewrite
    records = read_metrics(tmp_path)
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 1, "b/y": 2.0},
        {"step": 3, "ab/z": 4.0},
        {"step": 4, "a/x": 5.0},
    ]


def test_a_logger_keeps_its_lines_when_another_logger_rewrites_the_file(tmp_path):
    # Two stages training in parallel share metrics.jsonl; one starting over forgets its old curve by
    # replacing the file. The other must not go on appending to the replaced (unlinked) file.
    from classic.metrics import MetricsLogger, read_metrics

    with MetricsLogger(tmp_path, tensorboard=False) as a, MetricsLogger(tmp_path, tensorboard=False) as b:
        a.log(1, {"a/x": 1.0})
        b.log(1, {"b/y": 1.0})
        assert a.forget("a/") == 1
        b.log(2, {"b/y": 2.0})
        a.log(2, {"a/x": 2.0})
    records = [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(tmp_path)]
    assert records == [{"step": 1, "b/y": 1.0}, {"step": 2, "b/y": 2.0}, {"step": 2, "a/x": 2.0}]


def test_learners_trained_in_a_worker_process_give_the_same_numbers(tmp_path):
    """workers: 2 trains RL² in a spawned process beside the baselines (the LLM's stages, in the
    main job): the same results.json agents as training it here."""
    a = json.loads((run_compare(_cfg(tmp_path, name="a"), progress=False) / "results.json").read_text())
    b_dir = run_compare(_cfg(tmp_path, name="b", workers=2), progress=False)
    b = json.loads((b_dir / "results.json").read_text())
    for name, entry in a["agents"].items():
        assert b["agents"][name]["total_reward"] == entry["total_reward"], name
    assert "train RL² (in parallel)" in (b_dir / "report.md").read_text()
    assert any(
        k.startswith("rl2/") for line in (b_dir / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)
    )


def test_two_learners_in_one_stage_folder_are_refused(tmp_path):
    """RL² and RL² (greedy) have distinct report names but would both train in "rl2"."""
    with pytest.raises((RecipeError, ValueError), match="stage folder 'rl2'"):
        _cfg(tmp_path, learners=[TINY_RL2, {**TINY_RL2, "greedy_eval": True}])
