"""MRT inside trl.GRPOTrainer, MRT-STaR selection, the reasoning evaluation and the experiment."""

import contextlib
import json

import pytest
import torch

from mrl_llm.reasoning import search_task as st
from mrl_llm.reasoning.evaluate import (
    ReasoningEvalConfig,
    evaluate_reasoning,
    majority_answer,
    normalized_regret,
    tokens_to_reach,
)
from mrl_llm.models import TinyLMConfig, build_tiny_model, build_tiny_tokenizer
from mrl_llm.reasoning.meta_prover import MetaProverConfig, ProverStats
from mrl_llm.reasoning.progress import mrt_token_advantages
from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, STaRConfig, build_reasoning_trainer, mrt_star_dataset

TINY = TinyLMConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
PROVER = MetaProverConfig(termination_suffix=st.TERMINATION_SUFFIX, num_samples=2, max_answer_tokens=3, temperature=1.0)


def split(text):
    return st.trace_episodes(text).episodes


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


class FixedProver:
    """Stands in for MetaProver: J = 0.25 x (index of the cut), whatever the text."""

    def __init__(self, constant=None):
        self.constant = constant
        self.stats = ProverStats()
        self.calls = []

    def success_rates(self, prompt_ids, completion_ids, cuts, references, generator=None):
        self.calls.append((prompt_ids, completion_ids, cuts))
        if self.constant is not None:
            return [torch.full((len(c),), self.constant) for c in cuts]
        return [0.25 * torch.arange(len(c), dtype=torch.float32) for c in cuts]


def _trainer(tok, tmp_path, mode, monkeypatch, prover):
    model = build_tiny_model(TINY, tok, seed=0)
    data = st.prompt_dataset(st.SearchTaskConfig(function="add"), 16, seed=1)
    cfg = ReasoningGRPOConfig(
        max_steps=1,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=48,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        save_steps=100,
    )
    mrt = MRTConfig(mode=mode, alpha=1.0, prover=PROVER)
    trainer = build_reasoning_trainer(
        model,
        tok,
        data,
        cfg,
        tmp_path / mode,
        mrt=mrt,
        split_fn=lambda t: [st.Episode(t[:1], 0, 1), st.Episode(t[1:3], 1, 3)] if len(t) >= 3 else [],
    )
    monkeypatch.setattr(trainer, "_prover", lambda: contextlib.nullcontext(prover))
    return trainer, model


def test_mrt_progress_mode_puts_each_episodes_progress_on_its_tokens_and_trains(tok, tmp_path, monkeypatch):
    prover = FixedProver()
    trainer, model = _trainer(tok, tmp_path, "progress", monkeypatch, prover)
    seen = {}
    base = type(trainer).__mro__[1]._generate_and_score_completions

    def spy(self, inputs):
        out = base(self, inputs)
        seen["base"] = out["advantages"].clone()
        return out

    monkeypatch.setattr(type(trainer).__mro__[1], "_generate_and_score_completions", spy)
    before = [p.detach().clone() for p in model.parameters()]
    inputs = [dict(trainer.train_dataset[0]) for _ in range(4)] + [dict(trainer.train_dataset[1]) for _ in range(4)]
    out = trainer._generate_and_score_completions(inputs)
    adv = out["advantages"]
    assert adv.dim() == 2 and adv.shape == out["completion_ids"].shape
    comp = [row[m.bool()].tolist() for row, m in zip(out["completion_ids"], out["completion_mask"])]
    ends, cuts = trainer._episode_cuts(comp)
    progress = [0.25 * torch.ones(len(e)) for e in ends]  # J = 0, .25, .5 -> progress .25 each
    torch.testing.assert_close(adv, mrt_token_advantages(seen["base"], progress, ends, adv.shape[1], 1.0))
    assert any(len(e) for e in ends) and prover.calls[0][2] == cuts
    # a training step with these advantages moves the weights (outcome rewards are ~0 here)
    monkeypatch.undo()
    monkeypatch.setattr(trainer, "_prover", lambda: contextlib.nullcontext(prover))
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_mrt_rl_mode_continues_from_a_policy_prefix_with_the_termination_baseline(tok, tmp_path, monkeypatch):
    prover = FixedProver(constant=0.5)
    trainer, model = _trainer(tok, tmp_path, "termination", monkeypatch, prover)
    monkeypatch.setattr(
        trainer,
        "_sample_traces",
        lambda prompts: ["try 1: 1+2 is 3 no\n\nWait try 2: 2+2 is 4 yes\n\nAnswer: 2"] * len(prompts),
    )
    inputs = [dict(trainer.train_dataset[0]) for _ in range(4)] + [dict(trainer.train_dataset[1]) for _ in range(4)]
    new = trainer._with_random_prefixes(inputs)
    for g in range(2):
        group = new[g * 4 : (g + 1) * 4]
        assert len({x["prompt"] for x in group}) == 1  # one prefix per group
        assert group[0]["prompt"] == inputs[g * 4]["prompt"] + group[0]["mrt_prefix"]
        assert group[0]["mrt_prefix"] in ("", "t", "try 1: 1+2 is 3 no\n\nWait try 2: 2+2 is 4 yes\n\nAnswer: 2"[:3])
    out = trainer._generate_and_score_completions(inputs)
    # A = R - J(prefix) with J = 0.5 and a 0/1 outcome reward: -0.5 or +0.5 on every completion (a random
    # model mostly answers wrong: -0.5)
    adv = out["advantages"]
    assert torch.isclose(adv.abs(), torch.full_like(adv, 0.5)).all() and (adv < 0).float().mean() >= 0.5
    assert all(c == [0] for c in prover.calls[-1][2])  # J at the prefix itself (cut 0 of an empty completion)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_mrt_rl_scores_a_continuation_on_what_fits_in_the_budget_left_by_its_prefix(tok, tmp_path, monkeypatch):
    trainer, _ = _trainer(tok, tmp_path, "termination", monkeypatch, FixedProver(constant=0.0))
    prefix = "try 1: 1+2 is 3 no\n\n"
    used = len(tok(prefix, add_special_tokens=False)["input_ids"])
    assert 0 < used < 48
    rows = [list(range(40)), list(range(40)), list(range(60))]
    cut = trainer._within_budget(rows, ["", prefix, prefix * 10])
    assert cut[0] == rows[0] and cut[1] == rows[1][: 48 - used] and cut[2] == []
    # the reward sees the cut text: an answer past the budget does not count
    answer = tok("Answer: 3", add_special_tokens=False)["input_ids"]
    filler = tok("1 " * 100, add_special_tokens=False)["input_ids"][: 48 - len(answer)]
    assert len(filler) == 48 - len(answer)
    inputs = [{**dict(trainer.train_dataset[0]), "answer": "3"} for _ in range(4)]
    monkeypatch.setattr(
        trainer,
        "_with_random_prefixes",
        lambda xs: [{**x, "prompt": x["prompt"] + prefix, "mrt_prefix": prefix} for x in xs],
    )
    base = type(trainer).__mro__[1]

    def fake(self, xs):
        ids = torch.tensor([filler + answer] * len(xs))
        return {
            "prompt_ids": torch.ones(len(xs), 2, dtype=torch.long),
            "prompt_mask": torch.ones(len(xs), 2, dtype=torch.long),
            "completion_ids": ids,
            "completion_mask": torch.ones_like(ids),
            "advantages": torch.zeros(len(xs)),
        }

    monkeypatch.setattr(base, "_generate_and_score_completions", fake)
    assert torch.equal(
        trainer._generate_and_score_completions(inputs)["advantages"], torch.zeros(4)
    )  # R = 0: cut before the answer
    trainer.mrt.prefix_counts_against_budget = False
    assert torch.equal(
        trainer._generate_and_score_completions(inputs)["advantages"], torch.ones(4)
    )  # R = 1 - J(prefix) = 1


def test_mrt_star_keeps_the_prefix_where_progress_peaks_and_a_correct_forced_answer(tok, monkeypatch):
    import mrl_llm.train.mrt as mrt_mod

    class StubProver:
        def __init__(self, model, tokenizer, cfg):
            from mrl_llm.reasoning.verifier import verify_answer

            self.verifier = verify_answer
            self.config = cfg

        def sample_answers(self, prompt_ids, completion_ids, cuts, generator=None):
            # J per cut: 0, 1/2, 1, 1/2 -> peaks after episode 2; the first trace only ever 0
            out = []
            for i, c in enumerate(cuts):
                right = [[" 9"], [" 3", " 9"], [" 3", " 3"], [" 3", " 9"]] if i % 2 else [[" 9"]] * 4
                out.append([right[j % 4] for j in range(len(c))])
            return out

        def score(self, answers, reference):
            return torch.tensor(
                [
                    sum(self.verifier(self.config.termination_suffix + a, reference) for a in per) / len(per)
                    for per in answers
                ]
            )

    monkeypatch.setattr(mrt_mod, "MetaProver", StubProver)
    model = build_tiny_model(TINY, tok, seed=0)
    three = lambda t: (
        [st.Episode(t[:1], 0, 1), st.Episode(t[1:2], 1, 2), st.Episode(t[2:3], 2, 3)] if len(t) >= 3 else []
    )
    data, stats = mrt_star_dataset(
        model,
        tok,
        ["find x with x+1=4\n"],
        ["3"],
        STaRConfig(samples_per_prompt=2, max_new_tokens=8),
        PROVER,
        three,
        torch.Generator().manual_seed(0),
    )
    assert stats["sampled"] == 2 and stats["kept"] == 1 and len(data) == 1
    row = data[0]
    assert row["completion"].endswith(st.TERMINATION_SUFFIX + " 3" + tok.eos_token)
    assert len(row["completion"]) == 2 + len(
        st.TERMINATION_SUFFIX + " 3" + tok.eos_token
    )  # cut after 2 episodes (2 chars)


def test_budget_metrics_on_hand_examples():
    assert normalized_regret([10, 20], [0.5, 1.0]) == pytest.approx(1 - (10 * 0.25 + 10 * 0.75) / 20)
    assert tokens_to_reach([10, 20, 30], [0.2, 0.6, 0.6], 0.4) == pytest.approx(15.0)
    assert tokens_to_reach([10, 20], [0.2, 0.3], 0.5) == float("inf")
    assert tokens_to_reach([10, 20], [0.5, 0.5], 0.5) == pytest.approx(10.0)
    assert majority_answer(["Answer: 3", "Answer: 4", "Answer: 4", "nothing"]) == "4"
    assert majority_answer(["Answer: 3", "Answer: 4"]) == "3"
    assert majority_answer(["none"]) is None


def test_evaluate_reasoning_smoke_and_determinism(tok):
    model = build_tiny_model(TINY, tok, seed=1)
    probs = st.sample_problems(st.SearchTaskConfig(function="add"), 3, torch.Generator().manual_seed(0))
    ev = ReasoningEvalConfig(
        num_problems=3, samples_per_problem=2, max_new_tokens=12, budgets=[4, 8, 12], maj_k=[1, 2], progress_samples=2
    )
    a = evaluate_reasoning(model, tok, [p.prompt for p in probs], [p.answer for p in probs], ev, PROVER, split)
    b = evaluate_reasoning(model, tok, [p.prompt for p in probs], [p.answer for p in probs], ev, PROVER, split)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["budget_curve"]["budgets"] == [4, 8, 12] and len(a["budget_curve"]["accuracy"]) == 3
    assert all(t <= b_ for t, b_ in zip(a["budget_curve"]["mean_tokens"], [4, 8, 12]))
    assert 0 <= a["normalized_regret"] <= 1 and set(a["maj_at_k"]) == {"1", "2"} and "episodes" in a
    with pytest.raises(ValueError, match="budgets"):
        ReasoningEvalConfig(max_new_tokens=8, budgets=[16])
    with pytest.raises(ValueError, match="maj_k"):
        ReasoningEvalConfig(samples_per_problem=2, maj_k=[4])


@pytest.mark.slow
def test_mrt_recipe_end_to_end_on_a_tiny_budget(tmp_path):
    from classic.config import load_recipe
    from mrl_llm.mrt_experiment import MRTExperiment, run_mrt

    sets = [
        f"output.root={tmp_path}",
        "seeds=[0]",
        "methods=[grpo,mrt]",
        "sft.num_trials=32",
        "sft.num_train_epochs=1",
        "grpo.max_steps=1",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "task.num_train=4",
        "eval.num_problems=3",
        "eval.samples_per_problem=2",
        "eval.max_new_tokens=16",
        "eval.budgets=[8,16]",
        "eval.maj_k=[1,2]",
        "eval.progress_samples=1",
        "model.tiny.num_layers=1",
        "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64",
        "model.tiny.num_heads=2",
        "threads=1",
    ]
    cfg = load_recipe(MRTExperiment, "recipes/llm/mrt_search_tiny.yaml", sets)
    run_dir = run_mrt(cfg)
    res = json.loads((run_dir / "results.json").read_text())
    for name in ("start", "grpo", "mrt"):
        assert set(res[name]["accuracy"]) == {"mean", "ci95"} and res[name]["mean_tokens"] > 0
    assert (run_dir / "report.md").exists() and (run_dir / "accuracy_vs_tokens.png").exists()
    assert (run_dir / "mrt_s0" / "final" / "config.json").exists()
    # a second run reuses every finished stage
    evals = (run_dir / "evals.json").read_text()
    run_mrt(cfg)
    assert (run_dir / "evals.json").read_text() == evals


def test_mrt_runs_in_worker_processes_give_the_same_numbers_as_in_one_process(tmp_path):
    """workers: 2 trains and evaluates the (method, seed) runs in spawned processes; every run is
    seeded, so the evaluations must equal those of the single-process run, and the report lists
    the worker layout."""
    from classic.config import load_recipe
    from mrl_llm.mrt_experiment import MRTExperiment, run_mrt

    sets = [
        "seeds=[0]",
        "methods=[grpo,mrt]",
        "sft.num_trials=32",
        "sft.num_train_epochs=1",
        "grpo.max_steps=2",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "task.num_train=4",
        "eval.num_problems=3",
        "eval.samples_per_problem=2",
        "eval.max_new_tokens=16",
        "eval.budgets=[8,16]",
        "eval.maj_k=[1,2]",
        "eval.progress_samples=2",
        "model.tiny.num_layers=1",
        "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64",
        "model.tiny.num_heads=2",
        "threads=1",
    ]
    evals = {}
    for workers in (1, 2):
        cfg = load_recipe(
            MRTExperiment,
            "recipes/llm/mrt_search_tiny.yaml",
            sets + [f"output.root={tmp_path / str(workers)}", f"workers={workers}"],
        )
        run_dir = run_mrt(cfg)
        evals[workers] = json.loads((run_dir / "evals.json").read_text())
    assert set(evals[2]) == {"start", "grpo_s0", "mrt_s0"}
    assert evals[2] == evals[1]
    report = (run_dir / "report.md").read_text()
    assert "2 worker processes x 1 thread(s)" in report and "train mrt seed 0" in report


def test_mrt_config_and_experiment_validation():
    from mrl_llm.mrt_experiment import MRTExperiment

    with pytest.raises(ValueError, match="alpha"):
        MRTConfig(alpha=-1)
    with pytest.raises(ValueError, match="num_generations"):
        ReasoningGRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="methods"):
        MRTExperiment(methods=["ppo"])


def test_both_grpo_stage_configs_map_their_shared_fields_onto_trl():
    from mrl_llm.train.grpo import GRPOCommonConfig, GRPOStageConfig
    from mrl_llm.train.grpo import grpo_arguments as trial_grpo_arguments
    from mrl_llm.train.mrt import grpo_arguments as reasoning_grpo_arguments

    shared = dict(
        top_p=0.9,
        weight_decay=0.01,
        num_iterations=2,
        beta=0.04,
        epsilon=0.3,
        max_steps=7,
        gradient_accumulation_steps=2,
    )
    trial = trial_grpo_arguments(
        GRPOStageConfig(tasks_per_step=3, num_generations=4, **shared),
        "/tmp/unused",
        max_completion_length=64,
        use_cpu=True,
    )
    reasoning = reasoning_grpo_arguments(
        ReasoningGRPOConfig(prompts_per_step=3, num_generations=4, max_completion_length=64, **shared),
        "/tmp/unused",
        use_cpu=True,
    )
    for args in (trial, reasoning):
        for name, value in shared.items():
            assert getattr(args, name) == value, name
        assert args.per_device_train_batch_size == 6 and args.max_completion_length == 64  # 3 groups x 4 / 2
    assert trial.shuffle_dataset is False and reasoning.shuffle_dataset is True
    assert ReasoningGRPOConfig().learning_rate == 1e-5 and GRPOStageConfig().learning_rate == 1e-4
    with pytest.raises(ValueError, match="prompts_per_step \\* num_generations"):
        ReasoningGRPOConfig(prompts_per_step=3, num_generations=3, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="tasks_per_step must be >= 1"):
        GRPOStageConfig(tasks_per_step=0)
    with pytest.raises(ValueError, match="top_p"):
        GRPOStageConfig(top_p=0)
    with pytest.raises(TypeError, match="base class"):
        GRPOCommonConfig()


def test_training_statistics_are_means_per_run_and_only_of_this_runs_methods_and_seeds(tmp_path):
    from mrl_llm.mrt_experiment import _train_stats

    lines = [
        {"step": 1, "grpo_s0/reward": 0.2, "grpo_s0/loss": 9.0, "mrt_rl_s0/reward": 0.9},
        {
            "step": 2,
            "grpo_s0/reward": 0.4,
            "grpo_s0/mrt/progress_mean": 0.1,
            "note": "text",
            "grpo_s0/sampling/importance_sampling_ratio/min": 0.5,
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    stats = _train_stats(tmp_path, {"grpo_s0", "mrt_s0"})
    assert stats == {
        "grpo_s0": {
            "reward": pytest.approx(0.3),
            "mrt/progress_mean": pytest.approx(0.1),
            "sampling/importance_sampling_ratio/min": pytest.approx(0.5),
        }
    }
    assert set(_train_stats(tmp_path)) == {"grpo_s0", "mrt_rl_s0"}
