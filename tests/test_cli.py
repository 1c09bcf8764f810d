"""`mrl run`: recipe validation, dry runs of the shipped recipes, and a tiny end-to-end run."""

import json
from pathlib import Path

import pytest

from mrl_llm.cli import load_experiment, main

ROOT = Path(__file__).resolve().parent.parent
# recipes/accelerate/ holds accelerate launcher configs, not mrl recipes
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_dry_run(recipe, capsys):
    assert main(["run", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resolves to" in out


def test_qwen_dark_room_recipe_builds_chat_reflection_and_cross_episode_arguments(capsys):
    assert main(["run", str(ROOT / "recipes/llm/darkroom_icrl_qwen.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("# trainer arguments") :].split("\n", 1)[1])["LLM"]
    assert summary["chat"] is True and summary["lora"]["r"] == 16 and summary["grpo"]["use_vllm"] is True
    assert summary["rendering"] == "DarkRoomText" and summary["reflection"] is True
    assert summary["grpo"]["cross_episode_discount"] == 0.9
    prompt = summary["prompt"][0]["content"]
    assert "Action: <name>" in prompt and "Goal: x,y" in prompt


def test_qwen_recipe_builds_chat_lora_vllm_arguments(capsys):
    assert main(["run", str(ROOT / "recipes/llm/icrl_bandit_qwen.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("# trainer arguments") :].split("\n", 1)[1])["LLM"]
    assert summary["chat"] is True and summary["lora"]["r"] == 16
    assert summary["grpo"]["use_vllm"] is True and summary["grpo"]["vllm_mode"] == "colocate"
    assert summary["model"].startswith("Qwen/Qwen2.5")
    assert summary["teacher"]["name"] == "Thompson sampling" and "Arm: N" in summary["prompt"][0]["content"]


@pytest.mark.parametrize(
    "name, model",
    [
        ("mrt_r1_distill_1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
        ("mrt_deepscaler_1.5b", "agentica-org/DeepScaleR-1.5B-Preview"),
    ],
)
def test_gpu_mrt_recipes_carry_the_papers_settings(name, model, capsys):
    import yaml

    assert main(["run", str(ROOT / f"recipes/llm/{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("# trainer arguments") :].split("\n", 1)[1])
    g = summary["grpo"]
    assert summary["model"] == model and summary["methods"] == ["grpo", "mrt"]
    assert g["num_generations"] == 4 and g["learning_rate"] == 1e-6 and g["temperature"] == 0.9
    assert g["use_vllm"] is True and g["vllm_mode"] == "colocate" and g["bf16"] is True
    assert summary["mrt"]["prover"]["termination_suffix"].startswith("Time is up.")
    acc = yaml.safe_load((ROOT / "recipes/accelerate/deepspeed_zero3.yaml").read_text())
    assert (
        acc["distributed_type"] == "DEEPSPEED"
        and acc["deepspeed_config"]["zero_stage"] == 3
        and acc["mixed_precision"] == "bf16"
    )


def test_malformed_recipe_names_key_and_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: compare\ntask:\n  name: bandit\n  num_arms: 5\n  episodes: 100\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "task.episodes" in err
    bad.write_text("kind: compare\nlearners:\n  - name: llm\n    grpo:\n      num_generations: one\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learners[0].grpo.num_generations" in err
    bad.write_text("kind: compare\nlearners:\n  - name: llm\n    grpo:\n      num_generations: 1\n")
    assert main(["run", str(bad)]) == 2
    assert "num_generations must be >= 2" in capsys.readouterr().err
    assert main(["run", str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml"), "--set", "learners.llm.sft.lr=1"]) == 2
    assert "sft.lr" in capsys.readouterr().err
    assert (
        main(["run", str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml"), "--set", "learners.llm.teacher.name=UBC1"]) == 2
    )
    assert "did you mean 'UCB1'" in capsys.readouterr().err


def test_overrides_apply(tmp_path):
    kind, cfg = load_experiment(
        str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml"),
        ["learners.llm.grpo.max_steps=7", "task.num_arms=3", "learners.llm.teacher={name: UCB1, c: 0.3}"],
    )
    llm = cfg.learners[1]
    assert kind == "compare" and llm.grpo.max_steps == 7 and cfg.task.num_arms == 3
    assert llm.teacher.name == "UCB1" and llm.teacher.c == 0.3


TINY = [
    "task.episodes_per_trial=8",
    "task.num_arms=3",
    "protocol.tune_tasks=50",
    "protocol.num_tasks=20",
    "baselines=[{name: Random}, {name: UCB1}, {name: Thompson sampling}]",
    "learners.rl2.algo.num_iterations=2",
    "learners.rl2.algo.num_trials_per_batch=16",
    "learners.llm.model.tiny.hidden_size=32",
    "learners.llm.model.tiny.num_layers=1",
    "learners.llm.model.tiny.num_heads=2",
    "learners.llm.model.tiny.intermediate_size=64",
    "learners.llm.sft.num_trials=32",
    "learners.llm.sft.num_train_epochs=1",
    "learners.llm.sft.per_device_train_batch_size=16",
    "learners.llm.grpo.max_steps=2",
    "learners.llm.grpo.num_generations=2",
    "learners.llm.grpo.tasks_per_step=2",
    "learners.llm.grpo.save_steps=1",
    "learners.llm.eval_batch_size=10",
    "learners.llm.kv_cache_benchmark.num_tasks=4",
]


def test_tiny_end_to_end_run_writes_report_and_resumes(tmp_path):
    recipe = str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml")
    args = ["run", recipe, "--set", f"output.root={tmp_path}", "--set", "name=e2e"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    run = tmp_path / "e2e"
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == {"num_arms": 3, "episodes_per_trial": 8, "name": "bandit"}
    agents = results["agents"]
    assert {"Random", "UCB1", "Thompson sampling", "RL²", "LLM (SFT)", "LLM (SFT+GRPO)"} <= set(agents)
    for entry in agents.values():
        assert set(entry["total_reward"]) >= {"mean", "ci95"} and set(entry["regret"]) >= {"mean", "ci95"}
    report = (run / "report.md").read_text()
    for name in agents:
        assert name in report
    assert "invalid" in report.lower() and "KV-cache" in report
    assert (run / "regret.png").stat().st_size > 1000
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").stat().st_size > 0
    assert (run / "llm" / "sft" / "final" / "config.json").exists() and (
        run / "llm" / "grpo" / "final" / "config.json"
    ).exists()
    assert any((run / "llm" / "grpo").glob("checkpoint-*"))
    assert json.loads((run / "results.json").read_text())["kv_cache"]["num_tasks"] == 4
    # A second run reuses the finished stages and reproduces the same numbers.
    assert main(args) == 0
    again = json.loads((run / "results.json").read_text())["agents"]
    for name in agents:
        assert again[name]["total_reward"]["mean"] == pytest.approx(agents[name]["total_reward"]["mean"])


def test_classic_recipe_end_to_end_with_bayes_optimal_row(tmp_path):
    args = [
        "run",
        str(ROOT / "recipes/classic/rl2_bandit.yaml"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        "name=c",
        "--set",
        "task.num_arms=2",
        "--set",
        "task.episodes_per_trial=10",
        "--set",
        "protocol.num_tasks=200",
        "--set",
        "baselines=[{name: Random}, {name: UCB1}, {name: Bayes-optimal}]",
        "--set",
        "protocol.tune_tasks=50",
        "--set",
        "learners.rl2.algo.num_iterations=2",
        "--set",
        "learners.rl2.algo.num_trials_per_batch=16",
    ]
    assert main(args) == 0
    results = json.loads((tmp_path / "c" / "results.json").read_text())
    agents = results["agents"]
    assert set(agents) == {"Random", "UCB1", "Bayes-optimal", "RL²"}
    assert agents["Bayes-optimal"]["regret"]["mean"] < agents["Random"]["regret"]["mean"]
    assert (tmp_path / "c" / "rl2" / "policy.pt").exists() and (tmp_path / "c" / "report.md").exists()


def test_plot_merges_runs_on_the_same_held_out_tasks(tmp_path, capsys):
    """`mrl plot A B -o F.png`: one plot and table with both runs' agents (a shared baseline once);
    runs on other tasks are refused, naming them."""
    from classic.report import write_results_json

    curve = lambda m: {"episode_returns": {"mean": m, "ci95": [0.1] * len(m)}}  # noqa: E731
    task, bounds = {"name": "darkroom", "size": 9}, {"known-goal oracle": [16.9, 16.9]}
    write_results_json(
        tmp_path / "a/results.json", task, {"Random": curve([0.2, 0.2]), "AD": curve([3, 14])}, extra={"bounds": bounds}
    )
    write_results_json(
        tmp_path / "b/results.json",
        task,
        {"Random": curve([9, 9]), "LLM (SFT)": curve([2, 8])},
        extra={"bounds": bounds},
    )
    out = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert out.stat().st_size > 0 and "AD" in table and "LLM (SFT)" in table and "known-goal oracle" in table
    assert table.count("Random") == 1 and "0.2" in table  # the first run's Random
    write_results_json(
        tmp_path / "c/results.json", {"name": "darkroom", "size": 10}, {"X": curve([1, 1])}, extra={"bounds": bounds}
    )
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "c"), "-o", str(out)]) == 2
    assert "different task" in capsys.readouterr().err
