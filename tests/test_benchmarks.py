"""Smoke test of benchmarks/rl2_time_to_target.py: a tiny budget, in-process (one worker)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl2_time_to_target.py"


def _load():
    spec = importlib.util.spec_from_file_location("rl2_time_to_target", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rl2_time_to_target_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MRL_CACHE", str(tmp_path / "cache"))  # Gittins table cache
    bench = _load()
    assert bench.parse_settings("5x100, 10x100") == [(5, 100), (10, 100)]
    out = tmp_path / "ttt.json"
    argv = [
        "--settings",
        "3x10",
        "--workers",
        "1",
        "--iterations",
        "3",
        "--eval-every",
        "2",
        "--eval-tasks",
        "20",
        "--trials-per-batch",
        "8",
        "--num-minibatches",
        "2",
        "--hidden-size",
        "8",
        "--stop-when",
        "never",
        "--out",
        str(out),
        "--quiet",
        "--setting-config",
        '3x10={"head_hidden_size": 4, "ent_coef": 0.05}',
    ]
    results = bench.main(argv)

    (res,) = results
    assert (res["k"], res["n"]) == (3, 10)
    assert (
        res["config"]["head_hidden_size"] == 4
        and res["config"]["ent_coef"] == 0.05
        and res["config"]["hidden_size"] == 8
    )
    assert res["iterations_run"] == 3 and res["env_steps"] == 3 * 8 * 10
    assert [p["iteration"] for p in res["curve"]] == [2, 3]  # every 2 iterations and at the last one
    assert abs(res["target"] - 0.99 * res["gittins"]["mean"]) < 1e-9
    for mode in ("sampled", "greedy"):
        hit = res["reached"][mode]
        reached_in_curve = any(p[f"mean_{mode}"] >= res["target"] for p in res["curve"])
        assert (hit is not None) == reached_in_curve
    record = json.loads(out.read_text())
    assert record["results"][0]["curve"] == res["curve"]
    assert record["machine"]["torch_threads_per_worker"] == 1
    table = capsys.readouterr().out
    assert "| 3 | 10 |" in table and "Gittins" in table


def test_rl2_time_to_target_rejects_bad_setting_configs():
    import argparse

    import pytest

    bench = _load()
    assert bench.parse_setting_config('10x100={"hidden_size": 128}') == ((10, 100), {"hidden_size": 128})
    for bad, what in (
        ("10x100", "KxN="),
        ("10x100={oops", "not JSON"),
        ("10x100=[1]", "JSON object"),
        ('10x100={"nope": 1}', "nope"),
        ('10x100={"hidden_size": 0}', "hidden_size"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=what):
            bench.parse_setting_config(bad)
    with pytest.raises(SystemExit, match="not in --settings"):
        bench.main(["--settings", "3x10", "--setting-config", '5x10={"hidden_size": 8}'])


def test_rl2_mdp_variants_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rl2_mdp_variants", SCRIPT.parent / "rl2_mdp_variants.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_variant('a={"ent_coef": 0.05}') == ("a", {"ent_coef": 0.05})
    for bad in ("a=[1]", "a={oops", "=", "a"):
        try:
            bench.parse_variant(bad)
        except ValueError as err:
            assert bad in str(err)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    out = tmp_path / "curves.json"
    tiny = '{"num_trials_per_batch": 4, "num_minibatches": 2, "hidden_size": 8, "head_hidden_size": 4}'
    results = bench.main(
        [
            "--n",
            "2",
            "--iterations",
            "3",
            "--eval-every",
            "2",
            "--eval-tasks",
            "10",
            "--workers",
            "1",
            "--variant",
            f"tiny={tiny}",
            "--out",
            str(out),
        ]
    )
    (res,) = results
    assert [p["iteration"] for p in res["curve"]] == [2, 3] and res["curve"][-1]["env_steps"] == 3 * 4 * 2 * 10
    assert res["config"]["head_hidden_size"] == 4 and res["config"]["obs_action_reward_input"] is True
    assert json.loads(out.read_text())["results"][0]["curve"] == res["curve"]
    assert "| tiny |" in capsys.readouterr().out


def test_mrt_overhead_smoke(capsys):
    spec = importlib.util.spec_from_file_location(
        "mrt_overhead", Path(__file__).resolve().parent.parent / "benchmarks" / "mrt_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(
        [
            "--steps",
            "1",
            "--prompts-per-step",
            "1",
            "--num-generations",
            "2",
            "--max-completion-length",
            "16",
            "--prover-samples",
            "2",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "| GRPO (outcome) |" in out and "| MRT (progress) |" in out and "| shared prefix, tree attention |" in out
    assert res["same_answers"] is True  # both shared-prefix paths sample exactly what the reference path does
    tree, rows, scratch = res["prover"]
    assert (
        tree[3] == rows[3] == scratch[3] and tree[2] < scratch[2] and rows[2] < scratch[2]
    )  # same answers drawn, fewer tokens encoded


def test_rl2_mdp_behaviour_scores_an_oracle_as_always_optimal_and_counts_tried_actions():
    import torch

    from classic.envs.tabular_mdp import TabularMDP
    from classic.evaluate import sample_eval_tasks

    spec = importlib.util.spec_from_file_location("rl2_mdp_behaviour", SCRIPT.parent / "rl2_mdp_behaviour.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    dist = TabularMDP(num_states=3, num_actions=2, episode_length=4)
    tasks = sample_eval_tasks(dist, 50, 0)
    policy = dist.optimal_policy(tasks)  # (N, H, S)

    class Oracle:  # acts with the true MDP's optimal policy; knows the step from its call count
        name = "oracle"

        def reset(self, num_tasks, generator):
            self.calls = 0

        def act(self, obs, prev_action, prev_reward, terminated, truncated):
            t = self.calls % dist.episode_length
            self.calls += 1
            return policy[torch.arange(50), t, obs.argmax(-1)]

    class First:  # always action 0: one action tried per visited state
        name = "first"

        def reset(self, num_tasks, generator):
            self.num_tasks = num_tasks

        def act(self, obs, prev_action, prev_reward, terminated, truncated):
            return torch.zeros(self.num_tasks, dtype=torch.long)

    oracle = bench.behaviour(Oracle(), dist, tasks, 5, [(0, 2), (2, 5)])
    assert all(w["optimal"] == 1.0 for w in oracle["windows"].values())
    first = bench.behaviour(First(), dist, tasks, 5, [(0, 5)])
    assert first["tried_per_state"] == 1.0
    assert 0.0 < first["best_tried"] < 1.0  # action 0 is the best-reward one in some visited states, not all
    assert first["windows"]["0-5"]["optimal"] < 1.0
    with pytest.raises(SystemExit):
        bench.main(["--policy", "x.pt", "--windows", "5-2"])


def test_maml_iteration_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("maml_iteration", SCRIPT.parent / "maml_iteration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--meta-batch", "2", "--episodes-per-task", "2", "--episode-length", "5", "--repeats", "1"])
    assert [r["variant"] for r in rows] == list(bench.VARIANTS)
    assert all(r["total_s"] > 0 for r in rows) and rows[0]["speedup"] == pytest.approx(1.0)
    assert "| FOMAML (TRPO) |" in capsys.readouterr().out


def test_pearl_steps_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("pearl_steps", SCRIPT.parent / "pearl_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    name = next(iter(bench.VARIANTS))
    rows = bench.main(["--steps", "1", "--meta-batch", "2", "--variants", name])
    assert [r["encoder"] for r in rows] == [True, False] and all(r["steps_per_s"] > 0 for r in rows)
    assert "| ms per step |" in capsys.readouterr().out


def test_env_throughput_mujoco_smoke(capsys):
    pytest.importorskip("mujoco")
    spec = importlib.util.spec_from_file_location("env_throughput", SCRIPT.parent / "env_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--mujoco", "--steps", "2", "--batch-sizes", "2"])
    assert [r["distribution"] for r in rows] == ["cheetah_vel", "ant_dir"]
    assert all(r["ours"] > 0 and r["gymnasium"] > 0 for r in rows)
    assert "gymnasium sync vector env" in capsys.readouterr().out
