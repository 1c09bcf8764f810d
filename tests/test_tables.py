"""The tables experiment (RL² Tables 1 and 2): planning, a tiny end-to-end run, reuse, recipe errors."""

from __future__ import annotations

import json

import pytest

from classic.config import RecipeError, from_dict, load_recipe
from classic.report import comparison_table
from classic.tables import TablesExperiment, _warm_starts, plan_settings, protocol_differences, run_tables

TINY_RL2 = {"hidden_size": 8, "num_trials_per_batch": 8, "num_minibatches": 2, "num_iterations": 2, "update_epochs": 1}


def tiny(tmp_path, workers: int = 1, executor: str = "local") -> TablesExperiment:
    return from_dict(
        TablesExperiment,
        {
            "name": "tables",
            "workers": workers,
            "executor": {"name": executor},
            "bandit": {
                "num_arms": [2, 3],
                "episodes_per_trial": [3, 4],
                "baselines": [
                    {"name": "Random"},
                    {"name": "Gittins"},
                    {"name": "Thompson sampling", "grid": {"prior": [1.0]}},
                    {"name": "OTS", "grid": {"num_samples": [1, 2]}},
                    {"name": "UCB1", "prior_count": 1, "grid": {"c": [0.2, 1.0]}},
                    {"name": "epsilon-greedy", "prior_count": 1, "grid": {"epsilon": [0.1]}},
                    {"name": "Greedy", "prior_count": 1},
                ],
                "learners": [{"name": "rl2", "algo": TINY_RL2}],
                "tune_tasks": 16,
                "overrides": {"n4": {"learners.rl2.algo.hidden_size": 4}},
            },
            "mdp": {
                "num_states": 3,
                "num_actions": 2,
                "episode_length": 3,
                "episodes_per_trial": [2, 3],
                "tune_tasks": 8,
                "learners": [{"name": "rl2", "algo": TINY_RL2}],
            },
            "bayes_optimal": {"settings": [[2, 3], [3, 4], [2, 5]]},
            "horizon": {"bandit_num_arms": 2},
            "protocol": {"num_tasks": 20},
            "output": {"root": str(tmp_path)},
        },
    )


def _rl2(setting):
    return next(c for c in setting.recipe.learners if c.name == "rl2")


def test_plan_has_every_cell_once_with_overrides_most_specific_last(tmp_path):
    cfg = tiny(tmp_path)
    settings = {s.name: s for s in plan_settings(cfg)}
    assert set(settings) == {
        "bandit_k2_n3",
        "bandit_k2_n4",
        "bandit_k3_n3",
        "bandit_k3_n4",
        "bandit_k2_n5",
        "mdp_n2",
        "mdp_n3",
    }
    names = {n: [b.display_name for b in s.recipe.baselines] for n, s in settings.items()}
    assert "Bayes-optimal" in names["bandit_k3_n4"] and "Bayes-optimal" not in names["bandit_k3_n3"]
    assert _rl2(settings["bandit_k2_n4"]).algo.hidden_size == 4 and _rl2(settings["bandit_k2_n3"]).algo.hidden_size == 8
    cfg.bandit.overrides = {
        "n4": {"learners.rl2.algo.hidden_size": 4, "learners.rl2.algo.seed": 5},
        "k2_n4": {"learners.rl2.algo.hidden_size": 2},
    }
    cell = {s.name: s for s in plan_settings(cfg)}["bandit_k2_n4"]
    assert _rl2(cell).algo.hidden_size == 2 and _rl2(cell).algo.seed == 5
    assert [c.name for c in {s.name: s for s in plan_settings(cfg)}["bandit_k2_n5"].recipe.learners] == ["rl2"]
    cfg.bayes_optimal.rl2 = False  # the study's extra cell, then without learners
    assert {s.name: s for s in plan_settings(cfg)}["bandit_k2_n5"].recipe.learners == []


def test_tiny_run_writes_both_tables_and_reuses_finished_settings(tmp_path, capsys):
    cfg = tiny(tmp_path)
    run_dir = run_tables(cfg, progress=True)
    report = (run_dir / "report.md").read_text()
    for text in (
        "## Table 1: Bernoulli bandits",
        "## Table 2: random tabular MDPs",
        "## Gap to the Bayes-optimal policy",
        "## Horizon generalization (bandit)",
        "## Horizon generalization (tabular MDP)",
        "| k=3, n=4 |",
        "| n=3 |",
    ):
        assert text in report, text
    doc = json.loads((run_dir / "results.json").read_text())
    assert set(doc["table1"]) == {"bandit_k2_n3", "bandit_k2_n4", "bandit_k3_n3", "bandit_k3_n4"}
    assert set(doc["table2"]) == {"mdp_n2", "mdp_n3"}
    assert doc["table2"]["mdp_n3"]["task"] == {
        "num_states": 3,
        "num_actions": 2,
        "episode_length": 3,
        "episodes_per_trial": 3,
        "name": "tabular_mdp",
    }
    assert set(doc["table2"]["mdp_n3"]["agents"]) == {
        "Random",
        "PSRL",
        "OPSRL",
        "UCRL2",
        "BEB",
        "epsilon-greedy",
        "Greedy",
        "RL²",
    }
    assert doc["table2"]["mdp_n3"]["paper"] == {}  # not the paper's MDP size
    assert doc["table1"]["bandit_k3_n4"]["baseline_params"]["UCB1"]["params"]["prior_count"] == 1.0
    assert "OTS" in report.split("## Table 1")[1].split("\n")[2]  # the columns are the agents the recipe names
    gap = doc["bayes_optimal"]["k3_n4"]
    assert gap["gap"]["Bayes-optimal"]["mean"] == 0.0 and gap["bayes_optimal_value"] > 0
    assert gap["gap"]["Bayes-optimal"]["v0_minus_mean_reward"] == pytest.approx(0.0, abs=1.0)
    assert set(doc["horizon_generalization"]["bandit"]["rl2"]) == {"3", "4"}
    for name in ("bandit_k2_n3", "mdp_n2"):
        setting = tmp_path / "tables" / "settings" / name
        assert (setting / "regret.png").stat().st_size > 0 and (setting / "rl2" / "policy.pt").exists()
        assert "task" in json.loads((setting / "results.json").read_text())
    capsys.readouterr()

    # Same recipe again: every setting is reused. One changed cell: only that one is redone.
    run_tables(cfg, progress=True)
    assert capsys.readouterr().out.count("reused") == 7
    cfg.bandit.overrides["k3_n3"] = {"learners.rl2.algo.seed": 9}
    run_tables(cfg, progress=True)
    out = capsys.readouterr().out
    assert out.count("reused") == 6 and "bandit_k3_n3 (" in out and "bandit_k3_n3 (reused)" not in out


def test_a_changed_baseline_grid_redoes_the_baselines_but_keeps_the_trained_rl2_policy(tmp_path):
    cfg = tiny(tmp_path)
    cfg.bandit.num_arms, cfg.bandit.episodes_per_trial = [2], [3]
    cfg.mdp.episodes_per_trial = [2]
    cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    root = tmp_path / "tables" / "settings"
    run_tables(cfg, progress=False)
    policies = {name: (root / name / "rl2" / "policy.pt").read_bytes() for name in ("bandit_k2_n3", "mdp_n2")}
    for name in policies:
        (root / name / "rl2" / "policy.pt").touch()
    stamps = {name: (root / name / "rl2" / "policy.pt").stat().st_mtime_ns for name in policies}
    metrics_lines = len((root / "bandit_k2_n3" / "metrics.jsonl").read_text().splitlines())

    cfg.bandit.baselines[3].grid = {"num_samples": [1], "reshape": [1.0, 0.5]}  # baselines only: RL² is not retrained
    cfg.mdp.tune_tasks = 4
    run_tables(cfg, progress=False)
    for name in policies:
        assert (root / name / "rl2" / "policy.pt").stat().st_mtime_ns == stamps[name], name
    params = json.loads((root / "bandit_k2_n3" / "results.json").read_text())["baseline_params"]
    assert params["OTS"]["params"]["reshape"] in (1.0, 0.5) and len(params["OTS"]["grid"]) == 2
    assert len((root / "bandit_k2_n3" / "metrics.jsonl").read_text().splitlines()) >= metrics_lines  # training log kept

    cfg.bandit.overrides["k2_n3"] = {"learners.rl2.algo.seed": 9}  # the RL² stage changed: retrained
    run_tables(cfg, progress=False)
    assert (root / "bandit_k2_n3" / "rl2" / "policy.pt").read_bytes() != policies["bandit_k2_n3"]
    assert (root / "mdp_n2" / "rl2" / "policy.pt").stat().st_mtime_ns == stamps["mdp_n2"]


def test_two_workers_give_the_same_numbers_as_one(tmp_path):
    one = tiny(tmp_path / "a")
    two = tiny(tmp_path / "b", workers=2)
    for cfg in (one, two):
        cfg.bandit.num_arms, cfg.bandit.episodes_per_trial = [2], [3]
        cfg.mdp.episodes_per_trial = [2]
        cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    a = json.loads((run_tables(one, progress=False) / "results.json").read_text())
    b = json.loads((run_tables(two, progress=False) / "results.json").read_text())
    for table in ("table1", "table2"):
        for name, cell in a[table].items():
            assert cell["agents"] == b[table][name]["agents"], name


def test_comparison_table_marks_cells_outside_the_ci():
    rows = {
        "k=5, n=100": {
            "UCB1": {"total_reward": {"mean": 78.2, "ci95": 1.0}},
            "RL²": {"total_reward": {"mean": 75.0, "ci95": 1.0}},
        }
    }
    text, dev = comparison_table(rows, ["UCB1", "RL²", "Gittins"], {"k=5, n=100": {"UCB1": 78.0, "RL²": 78.7}})
    assert "78.2 ± 1.0 (78.0) |" in text and "75.0 ± 1.0 (78.7) † |" in text and text.rstrip().endswith("— |")
    assert dev == ["k=5, n=100 · RL²: 75.0 ± 1.0 vs 78.7"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("bandit.overrides={n10: {learners.rl2.algo.hidden_sise: 3}}", "hidden_sise"),
        ("mdp.baselines=[{name: PSRL}, {name: Oracle}]", "Oracle"),
        ("bayes_optimal.settings=[[9, 500]]", "bayes_optimal.settings"),
        ("workers=0", "workers"),
    ],
)
def test_malformed_tables_recipe_names_the_problem(override, key):
    with pytest.raises(RecipeError, match=key):
        load_recipe(TablesExperiment, "recipes/classic/rl2_tables.yaml", [override])


def test_shipped_recipe_resolves_to_the_papers_grid():
    cfg = load_recipe(TablesExperiment, "recipes/classic/rl2_tables.yaml")
    names = {s.name for s in plan_settings(cfg)}
    assert {f"bandit_k{k}_n{n}" for k in (5, 10, 50) for n in (10, 100, 500)} <= names
    assert {f"mdp_n{n}" for n in (10, 25, 50, 75, 100)} <= names


def test_warm_start_trains_the_longer_cell_from_the_shorter_cells_policy(tmp_path):
    import torch

    from classic.algos.rl2 import RL2Policy

    cfg = tiny(tmp_path)
    cfg.mdp.enabled = cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    cfg.bandit.num_arms = [2]
    cfg.bandit.overrides = {"n4": {"learners.rl2.algo.learning_rate": 1e-9}}
    cfg.bandit.warm_start = {4: 3}
    settings = {s.name: s for s in plan_settings(cfg)}
    assert settings["bandit_k2_n4"].after == "bandit_k2_n3" and settings["bandit_k2_n3"].after is None
    run_tables(cfg, progress=False)
    root = tmp_path / "tables" / "settings"
    short, long = (RL2Policy.load(root / f"bandit_k2_n{n}" / "rl2" / "policy.pt") for n in (3, 4))
    fresh = RL2Policy(2, 1, 8, True, generator=torch.Generator().manual_seed(cfg.bandit.learners[0].algo.seed))
    for (name, a), b, c in zip(short.state_dict().items(), long.state_dict().values(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # lr ~ 0: the n=4 cell kept the n=3 weights
    assert not torch.allclose(short.actor.weight, fresh.actor.weight)
    assert _warm_starts(cfg, "bandit", lambda n: f"bandit_k2_n{n}") == {
        "4": "the n=3 policy fine-tuned for 2 iterations"
    }
    cfg.bandit.overrides = {"n4": {"learners.rl2.algo.num_iterations": 0}}
    assert _warm_starts(cfg, "bandit", lambda n: f"bandit_k2_n{n}") == {"4": "the n=3 policy as is"}
    assert _warm_starts(cfg, "mdp", lambda n: f"mdp_n{n}") == {}


def test_warm_start_must_name_two_cells_of_the_table():
    with pytest.raises(RecipeError, match="warm_start"):
        load_recipe(TablesExperiment, "recipes/classic/rl2_tables.yaml", ["bandit.warm_start={500: 7}"])
    with pytest.raises(RecipeError, match="warm_start"):
        load_recipe(TablesExperiment, "recipes/classic/rl2_tables.yaml", ["mdp.warm_start={100: 7}"])


def test_mdp_warm_start_orders_the_rows_and_starts_from_the_shorter_rows_policy(tmp_path):
    cfg = tiny(tmp_path)
    cfg.bandit.enabled = cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    n_short, n_long = cfg.mdp.episodes_per_trial[:2]
    cfg.mdp.episodes_per_trial = [n_short, n_long]
    cfg.mdp.warm_start = {n_long: n_short}
    cfg.mdp.overrides = {f"n{n_long}": {"learners.rl2.algo.num_iterations": 0}}
    settings = {s.name: s for s in plan_settings(cfg)}
    assert settings[f"mdp_n{n_long}"].after == f"mdp_n{n_short}" and settings[f"mdp_n{n_short}"].after is None
    assert _rl2(settings[f"mdp_n{n_long}"]).init_from.endswith(f"mdp_n{n_short}/rl2/policy.pt")
    assert _warm_starts(cfg, "mdp", lambda n: f"mdp_n{n}") == {str(n_long): f"the n={n_short} policy as is"}
    run_tables(cfg, progress=False)
    from classic.algos.rl2 import RL2Policy

    import torch

    root = tmp_path / "tables" / "settings"
    short, long = (RL2Policy.load(root / f"mdp_n{n}" / "rl2" / "policy.pt") for n in (n_short, n_long))
    for (name, a), b in zip(short.state_dict().items(), long.state_dict().values()):
        assert torch.equal(a, b), name


def test_mdp_warm_start_chains_run_in_order_and_a_retrained_source_reruns_what_starts_from_it(tmp_path):
    import json

    import torch

    from classic.algos.rl2 import RL2Policy
    from classic.tables import _fingerprint, _same_setting

    cfg = tiny(tmp_path, workers=2)
    cfg.bandit.enabled = cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    cfg.mdp.episodes_per_trial = [2, 3, 4]
    cfg.mdp.warm_start = {4: 3, 3: 2}  # 4 -> 3 -> 2
    cfg.mdp.overrides = {"n3": {"learners.rl2.algo.num_iterations": 0}, "n4": {"learners.rl2.algo.num_iterations": 0}}
    settings = {s.name: s for s in plan_settings(cfg)}
    assert settings["mdp_n4"].after == "mdp_n3" and settings["mdp_n3"].after == "mdp_n2"
    run_tables(cfg, progress=False)  # mdp_n4 must wait for mdp_n3, which waits for mdp_n2
    root = tmp_path / "tables" / "settings"
    first, last = (RL2Policy.load(root / f"mdp_n{n}" / "rl2" / "policy.pt") for n in (2, 4))
    for (name, a), b in zip(first.state_dict().items(), last.state_dict().values()):
        assert torch.equal(a, b), name
    stored = json.loads((root / "mdp_n4" / "setting.json").read_text())
    assert _same_setting(stored, _fingerprint(cfg, settings["mdp_n4"]))
    cfg.mdp.overrides["n2"] = {"learners.rl2.algo.learning_rate": 1e-4}  # retrain the source two links up
    changed = {s.name: s for s in plan_settings(cfg)}
    assert not _same_setting(stored, _fingerprint(cfg, changed["mdp_n4"]))


def test_warm_start_cycles_are_refused():
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(TablesExperiment, "recipes/classic/rl2_tables.yaml", ["mdp.warm_start={25: 50, 50: 25}"])


def test_a_setting_stored_before_an_option_existed_still_matches_while_the_option_is_off():
    from classic.tables import _same_setting

    stored = {"rl2": {"algo": {"hidden_size": 64}}, "agents": ["UCB1"]}
    assert _same_setting(
        stored, {"rl2": {"algo": {"hidden_size": 64, "new_flag": False}, "init_from": None}, "agents": ["UCB1"]}
    )
    assert not _same_setting(stored, {"rl2": {"algo": {"hidden_size": 64, "new_flag": True}}, "agents": ["UCB1"]})
    assert not _same_setting(stored, {"rl2": {"algo": {"hidden_size": 32}}, "agents": ["UCB1"]})
    assert not _same_setting(stored, {"rl2": {"algo": {}}, "agents": ["UCB1"]})
    assert not _same_setting({"learners": [{"a": 1}]}, {"learners": [{"a": 1}, {"b": 2}]})


def test_protocol_differences_follow_the_recipe(tmp_path):
    cfg = tiny(tmp_path)
    assert any("Beta(1, 1)" in line for line in protocol_differences(cfg))
    cfg.bandit.baselines[4].prior_count = 0.0
    assert any("prior_count: 1" in line for line in protocol_differences(cfg))


def test_ray_executor_gives_the_same_results_json_as_the_local_one(tmp_path):
    """The same sweep on a local Ray instance (2 CPUs) and on local worker processes: identical
    results.json, cell by cell, and a rerun on Ray reuses every finished setting."""
    pytest.importorskip("ray")
    runs = {}
    for engine in ("local", "ray"):
        cfg = tiny(tmp_path / engine, workers=2, executor=engine)
        cfg.bandit.num_arms, cfg.bandit.episodes_per_trial = [2], [3, 4]
        cfg.mdp.episodes_per_trial = [2]
        cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
        runs[engine] = json.loads((run_tables(cfg, progress=False) / "results.json").read_text())
    for table in ("table1", "table2"):
        for name, cell in runs["local"][table].items():
            assert cell["agents"] == runs["ray"][table][name]["agents"], name
            assert cell["baseline_params"] == runs["ray"][table][name]["baseline_params"], name
    cfg = tiny(tmp_path / "ray", workers=2, executor="ray")
    cfg.bandit.num_arms, cfg.bandit.episodes_per_trial = [2], [3, 4]
    cfg.mdp.episodes_per_trial = [2]
    cfg.bayes_optimal.enabled = cfg.horizon.enabled = False
    again = json.loads((run_tables(cfg, progress=False) / "results.json").read_text())
    assert all(v["reused_this_run"] for v in again["settings"].values())
