"""Report rendering (tables, results.json, regret plot) and the metrics logger."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import pytest
import torch

from classic.evaluate import TrialResult, mean_ci
from classic.metrics import MetricsLogger, read_metrics
from classic.report import (
    load_results_json,
    plot_regret,
    regret_curve,
    results_table,
    stage_times_table,
    summarize,
    write_results_json,
)


def fake_result(name: str, seed: int, num_tasks: int = 20, episodes: int = 15, invalid: float = 0.0) -> TrialResult:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.bernoulli(torch.full((num_tasks, episodes), 0.7), generator=g)
    actions = torch.randint(0, 5, (num_tasks, episodes), generator=g)
    if invalid:
        actions[torch.rand(num_tasks, episodes, generator=g) < invalid] = -1
    per_ep = torch.rand(num_tasks, episodes, generator=g) * (0.3 + 0.1 * seed)
    return TrialResult(
        agent=name,
        rewards=rewards,
        actions=actions,
        episode_returns=rewards.clone(),
        regret=per_ep.cumsum(dim=1),
        wall_time=1.5 + seed,
        extra={"tokens_per_s": torch.tensor(12.5)} if seed == 2 else {},
    )


@pytest.fixture
def results():
    return {"UCB1": fake_result("ucb", 0), "Thompson": fake_result("ts", 1), "RL2 | gru": fake_result("rl2", 2)}


def test_table_has_every_agent_and_formatted_numbers(results):
    table = results_table(results)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(results)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    header = lines[0]
    assert "total reward" in header and "regret" in header and "paper" not in header and "invalid" not in header
    assert "RL2 \\| gru" in table  # pipes escaped
    for name, line in zip(results, lines[2:]):
        r = results[name]
        tot, reg = mean_ci(r.total_reward), mean_ci(r.final_regret)
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells[1] == str(r.num_tasks)
        for cell, stat in ((cells[2], tot), (cells[3], reg)):
            # mean and CI share the decimals that give the CI one significant digit
            d = -math.floor(math.log10(stat["ci95"]))
            assert cell == f"{stat['mean']:.{d}f} ± {stat['ci95']:.{d}f}"
        assert cells[-1].endswith(" s")


def test_table_reference_invalid_and_extra_columns(results):
    results["Bad"] = fake_result("bad", 3, invalid=0.25)
    table = results_table(
        results, reference={"UCB1": 9.8, "nobody": 1.0}, extra_columns={"train time": {"Bad": "3 min"}}
    )
    lines = table.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    assert header[4:] == ["invalid actions", "paper", "eval time", "train time"]
    ucb = [c.strip() for c in lines[2].strip("|").split(" | ")]
    bad = [c.strip() for c in lines[-1].strip("|").split(" | ")]
    assert ucb[4] == "0.0%" and ucb[5] == "9.8" and ucb[7] == "—"
    assert bad[4] == f"{100 * results['Bad'].invalid_rate:.1f}%" and bad[5] == "—" and bad[7] == "3 min"


def test_results_json_shape_and_round_trip(tmp_path, results):
    path = write_results_json(
        tmp_path / "out" / "results.json",
        {"name": "bernoulli_bandit", "num_arms": 5},
        results,
        extra={"stage_times": {"eval": 1.25}},
    )
    doc = json.loads(path.read_text())
    assert doc["task"] == {"name": "bernoulli_bandit", "num_arms": 5}
    assert doc["stage_times"] == {"eval": 1.25}
    assert list(doc["agents"]) == list(results)
    for name, r in results.items():
        entry = doc["agents"][name]
        assert set(entry["total_reward"]) == {"mean", "ci95"} and set(entry["regret"]) == {"mean", "ci95"}
        assert entry["total_reward"]["mean"] == pytest.approx(float(r.total_reward.mean()))
        assert entry["regret"]["mean"] == pytest.approx(float(r.final_regret.mean()))
        assert entry["invalid_rate"] == 0.0 and entry["num_tasks"] == r.num_tasks
        assert len(entry["regret_curve"]["mean"]) == r.regret.shape[1]
    assert doc["agents"]["RL2 | gru"]["extra"] == {"tokens_per_s": 12.5}
    # saved summaries re-render exactly like the live results
    loaded = load_results_json(path)
    assert results_table(loaded["agents"], {"UCB1": 3.0}) == results_table(results, {"UCB1": 3.0})
    with pytest.raises(ValueError, match="reserved"):
        write_results_json(tmp_path / "x.json", {}, results, extra={"agents": 1})


def test_results_json_accepts_dataclass_task_and_nonfinite(tmp_path, results):
    @dataclass
    class Task:
        num_arms: int = 5

    summary = summarize(results["UCB1"])
    summary["regret"] = {"mean": float("nan"), "ci95": float("inf")}
    path = write_results_json(tmp_path / "r.json", Task(), {"UCB1": summary})
    doc = json.loads(path.read_text())  # strict JSON: NaN/inf became null
    assert doc["task"] == {"num_arms": 5} and doc["agents"]["UCB1"]["regret"] == {"mean": None, "ci95": None}
    assert "—" in results_table(doc["agents"])


def test_regret_curve_matches_mean_ci(results):
    r = results["UCB1"]
    curve = regret_curve(r)
    assert curve["mean"][-1] == pytest.approx(mean_ci(r.final_regret)["mean"])
    assert curve["ci95"][-1] == pytest.approx(mean_ci(r.final_regret)["ci95"])


def test_plot_writes_png(tmp_path, results):
    path = plot_regret(results, tmp_path / "plots" / "regret.png", title="Bernoulli bandit")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # from saved summaries too
    saved = {k: summarize(v) for k, v in results.items()}
    assert plot_regret(saved, tmp_path / "again.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="no regret curve"):
        plot_regret({"x": {"regret": {"mean": 1.0, "ci95": 0.0}}}, tmp_path / "bad.png")


def test_stage_times_table():
    table = stage_times_table({"train rl2": 90.0, "eval": 30.0})
    assert "| train rl2 | 90.0 | 1.50 |" in table
    assert "| **total** | **120.0** | **2.00** |" in table


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path / "run", prefix="rl2/") as logger:
        with_tensorboard = logger.tensorboard_enabled
        logger.log(0, {"charts/episodic_return": 1.0, "losses/value": torch.tensor(0.5)})
        logger.log(10, {"charts/episodic_return": float("nan")})
        with pytest.raises(TypeError):
            logger.log(20, {"charts/x": "high"})
    with MetricsLogger(tmp_path / "run", tensorboard=False) as logger:  # a second stage appends
        logger.log(5, {"eval/regret": 3})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == read_metrics(tmp_path / "run")
    assert len(records) == 3
    assert records[0]["step"] == 0 and isinstance(records[0]["time"], float)
    assert records[0]["rl2/charts/episodic_return"] == 1.0 and records[0]["rl2/losses/value"] == 0.5
    assert records[1]["rl2/charts/episodic_return"] is None
    assert records[2] == {"step": 5, "time": records[2]["time"], "eval/regret": 3.0}
    if with_tensorboard:
        events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents*"))
        assert events and events[0].stat().st_size > 0
    with pytest.raises(RuntimeError, match="closed"):
        logger.log(6, {"eval/regret": 1.0})


def test_metrics_logger_without_tensorboard(tmp_path, monkeypatch):
    import classic.metrics as metrics

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    monkeypatch.setattr(metrics, "_TB_WARNED", False)
    with pytest.warns(RuntimeWarning, match="TensorBoard logging disabled"):
        logger = MetricsLogger(tmp_path, prefix="s/")
    assert not logger.tensorboard_enabled
    logger.log(1, {"eval/x": 2.0})
    logger.close()
    logger.close()  # idempotent
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["s/eval/x"] == 2.0


def test_stage_times_parallel_stages_not_summed():
    from classic.report import stage_times_table

    table = stage_times_table({"a": 60.0, "b": 30.0, "rl2": 80.0}, parallel=["rl2"])
    assert "rl2 (in parallel)" in table and "**90.0**" in table
    table = stage_times_table({"a": 60.0, "rl2": 80.0}, wall_time=75.0, parallel=["rl2"])
    assert "total (wall clock)" in table and "**75.0**" in table
