"""The run kit loses nothing (issue 16): run names cannot reach outside the output root, files are
replaced whole or not at all, and a half-written checkpoint is never resumed from."""

from __future__ import annotations

import json
import os

import pytest

from classic.files import OutputConfig, prepare_run_dir
from classic.files import check_run_name, run_folder, save_figure, write_atomic


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/tmp/x", " x", "x ", "a\\b"])
def test_a_run_name_that_leaves_its_folder_is_refused_and_nothing_is_removed(tmp_path, name):
    """With ``output.overwrite``, ``name: ''`` or ``'.'`` removed the whole output root (every other
    run), ``'..'`` its parent; ``'../x'`` and absolute names wrote outside it."""
    root = tmp_path / "runs"
    (root / "other_run").mkdir(parents=True)
    (root / "other_run" / "report.md").write_text("keep me")
    (tmp_path / "sibling.txt").write_text("keep me too")
    with pytest.raises(ValueError, match="run name"):
        prepare_run_dir(name, OutputConfig(root=str(root), overwrite=True))
    assert (root / "other_run" / "report.md").read_text() == "keep me"
    assert (tmp_path / "sibling.txt").exists()


def test_a_plain_name_is_made_and_overwritten_inside_the_root(tmp_path):
    root = tmp_path / "runs"
    run = prepare_run_dir("exp_1", OutputConfig(root=str(root)))
    (run / "old.txt").write_text("x")
    assert (
        prepare_run_dir("exp_1", OutputConfig(root=str(root), overwrite=True)) == run and not (run / "old.txt").exists()
    )
    assert check_run_name("a.b-c_d") == "a.b-c_d"


def test_a_run_folder_that_is_a_link_out_of_the_root_is_refused(tmp_path):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    os.symlink(elsewhere, root / "linked")
    with pytest.raises(ValueError, match="outside output.root"):
        run_folder(root, "linked")
    with pytest.raises(ValueError, match="outside output.root"):
        prepare_run_dir("linked", OutputConfig(root=str(root), overwrite=True))
    assert (elsewhere / "precious.txt").exists()


def test_recipes_name_the_bad_run_name(tmp_path):
    from classic.config import RecipeError
    from mrl_llm.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: compare\nname: ..\n")
    assert (
        main(["run", str(recipe), "--set", f"output.root={tmp_path / 'runs'}", "--set", "output.overwrite=true"]) == 2
    )
    assert tmp_path.exists() and recipe.exists()
    with pytest.raises(RecipeError):
        from mrl_llm.cli import load_experiment

        load_experiment(str(recipe))


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch):
    """``evals.json`` written half (a kill, a full disk) made every rerun crash; now the old
    content stays until the new one is complete."""
    path = tmp_path / "evals.json"
    write_atomic(path, json.dumps({"start": 1}))

    def full_disk(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as f:
            f.write(text[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", full_disk)
    with pytest.raises(OSError):
        write_atomic(path, json.dumps({"start": 1, "grpo_s0": 2}))
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"start": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["evals.json"]  # no temporary left behind


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "regret.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    fig.savefig = killed
    with pytest.raises(Killed):
        save_figure(fig, tmp_path / "regret.png")
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(list(tmp_path.iterdir())) == 1


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    """A checkpoint folder without a valid ``trainer_state.json`` (written last by transformers) is
    not resumed from; transformers' ``get_last_checkpoint`` would take it."""
    from transformers.trainer_utils import get_last_checkpoint

    from mrl_llm.train.checkpoints import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step, state in ((10, "{}"), (20, "{}"), (30, None), (40, '{"trunc')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-40")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


def test_a_grpo_run_resumes_past_a_half_written_checkpoint(tmp_path, tiny_model, tiny_tok):
    """Train 2 steps with a checkpoint each, break the last one as a kill would, train on to 3:
    the run resumes from checkpoint-1 instead of crashing on checkpoint-2."""
    import copy

    from classic.envs import BernoulliBandit
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.generation import SamplingConfig
    from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer, run_grpo

    out = tmp_path / "grpo"

    def trainer(steps):
        cfg = GRPOStageConfig(
            max_steps=steps,
            num_generations=2,
            tasks_per_step=2,
            learning_rate=1e-2,
            save_steps=1,
            trl={"save_total_limit": 3},
        )
        return build_grpo_trainer(
            copy.deepcopy(tiny_model).train(),
            tiny_tok,
            BernoulliBandit(3),
            BanditText(3, 4),
            cfg,
            SamplingConfig(),
            4,
            out,
        )

    run_grpo(trainer(2), out)
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    resumed = trainer(3)
    run_grpo(resumed, out)
    assert resumed.state.global_step == 3
    assert (out / "checkpoint-3" / "trainer_state.json").exists()


HOLDER = """
import sys, time
from classic.files import lock_run

lock_run(sys.argv[1], sys.argv[2])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_running_runs_folder_is_refused_and_removes_nothing(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from classic.files import RunFolderError

    root = tmp_path / "runs"
    (root / "busy").mkdir(parents=True)
    (root / "busy" / "metrics.jsonl").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), "busy"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="in use by another process"):
            prepare_run_dir("busy", OutputConfig(root=str(root), overwrite=True))
        assert (root / "busy" / "metrics.jsonl").exists()
        prepare_run_dir("free", OutputConfig(root=str(root)))  # other names are not affected
    finally:
        holder.kill()
        holder.wait()
    assert prepare_run_dir("busy", OutputConfig(root=str(root), overwrite=True)).exists()  # released with its process


@pytest.mark.parametrize("case", ["directory", "not_utf8", "empty", "root_is_a_file"])
def test_bad_recipe_files_and_roots_are_one_line_errors(tmp_path, capsys, case):
    from mrl_llm.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: compare\nname: x\nbaselines: [{name: Random}]\nlearners: []\n")
    args = ["run", str(recipe), "--set", f"output.root={tmp_path / 'runs'}"]
    if case == "directory":
        args[1] = str(tmp_path)
    elif case == "not_utf8":
        recipe.write_bytes(b"kind: compare\nname: \xff\xfe\n")
    elif case == "empty":
        recipe.write_text("")
        args = args[:2]
    else:
        (tmp_path / "runs").write_text("a file, not a folder")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrl: error:") and "\n" not in err and "Traceback" not in err, err


def test_a_rerun_with_other_settings_redoes_the_stages_they_change(tmp_path):
    """``--set task.num_arms=2`` into a finished 3-arm run evaluated the old 3-action RL² policy and
    the old LLM; each stage is now reused only when its fingerprint matches, and a stage that
    depends on a redone one is redone too."""
    import torch

    from mrl_llm.cli import main
    from test_cli import ROOT, TINY

    args = [
        "run",
        str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        "name=stale",
    ]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    run = tmp_path / "stale"
    stages = ("rl2", "llm/sft", "llm/grpo")
    first = {stage: (run / stage / "stage.json").read_text() for stage in stages}
    sft_weights = (run / "llm" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns

    def logged(prefix):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in lines if any(k.startswith(prefix) for k in r)]

    grpo_steps, sft_steps = logged("llm/grpo/"), logged("llm/sft/")
    assert main(args + ["--set", "learners.llm.grpo.learning_rate=0.002"]) == 0  # only GRPO changes
    assert (run / "llm" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == sft_weights
    assert logged("llm/grpo/") == grpo_steps and logged("llm/sft/") == sft_steps  # one curve each, not two
    assert (run / "rl2" / "stage.json").read_text() == first["rl2"]
    assert (run / "llm" / "grpo" / "stage.json").read_text() != first["llm/grpo"]
    assert main(args + ["--set", "task.num_arms=2"]) == 0
    spec = torch.load(run / "rl2" / "policy.pt", weights_only=True)["spec"]
    assert spec["num_actions"] == 2, spec
    for stage in stages:
        assert json.loads((run / stage / "stage.json").read_text())["task"]["num_arms"] == 2
    results = json.loads((run / "results.json").read_text())
    assert results["task"]["num_arms"] == 2 and results["agents"]["RL²"]["invalid_rate"] == 0.0


def test_mrt_evaluations_are_redone_when_their_protocol_changes(tmp_path):
    import mrl_llm.mrt_experiment as mx
    from classic.config import from_dict

    cfg = from_dict(mx.MRTExperiment, {"name": "m", "methods": ["grpo"], "output": {"root": str(tmp_path)}})
    run = tmp_path / "m"
    run.mkdir()
    prints = {"start": mx.eval_fingerprint(cfg, "start"), "grpo_s0": mx.eval_fingerprint(cfg, "grpo_s0")}
    (run / "evals.json").write_text(json.dumps({"start": {"a": 1}, "grpo_s0": {"a": 2}}))
    (run / "evals.fingerprints.json").write_text(json.dumps(prints))
    assert set(mx.load_evals(cfg, run)[0]) == {"start", "grpo_s0"}
    cfg.eval.num_problems = 7
    assert mx.load_evals(cfg, run) == ({}, {})
    cfg.eval.num_problems = 200
    cfg.grpo.learning_rate = 3e-5  # the trained policy changes, the start does not
    assert set(mx.load_evals(cfg, run)[0]) == {"start"}
    (run / "evals.json").write_text('{"start": {"a"')  # truncated by an older, non-atomic version
    assert mx.load_evals(cfg, run) == ({}, {})


class _Interrupted(Exception):
    pass


def _interrupt_after_saving(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Interrupted

    return Interrupt()


def test_an_interrupted_trial_grpo_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model, tiny_tok):
    """The rollout's training-task stream and call counter are saved with each checkpoint: a run
    killed after checkpoint 2 and resumed ends with the uninterrupted run's weights (before, the
    task stream restarted from its seed: regret 9.383 resumed against 9.416)."""
    import copy

    import torch

    from classic.envs import BernoulliBandit
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.rollout.generation import SamplingConfig
    from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer, run_grpo

    cfg = GRPOStageConfig(
        max_steps=4,
        num_generations=2,
        tasks_per_step=2,
        learning_rate=1e-2,
        save_steps=2,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        reward_funcs=["negative_regret"],
        trl={"save_total_limit": 3},
    )

    def trainer(out, callbacks=()):
        return build_grpo_trainer(
            copy.deepcopy(tiny_model).train(),
            tiny_tok,
            BernoulliBandit(3),
            BanditText(3, 6),
            cfg,
            SamplingConfig(),
            6,
            out,
            callbacks=callbacks,
        )

    straight = trainer(tmp_path / "straight")
    run_grpo(straight, tmp_path / "straight")
    with pytest.raises(_Interrupted):
        run_grpo(trainer(tmp_path / "resumed", [_interrupt_after_saving(2)]), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint-2" / "mrl_streams_rank0.pt").exists()
    resumed = trainer(tmp_path / "resumed")
    run_grpo(resumed, tmp_path / "resumed")
    assert resumed.state.global_step == 4
    regret = lambda t: [h["rollout/trial_regret"] for h in t.state.log_history if "rollout/trial_regret" in h]  # noqa: E731
    assert regret(resumed)[-2:] == regret(straight)[-2:]
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


def test_an_interrupted_mrt_run_resumes_its_meta_prover_stream(tmp_path, tiny_tok):
    """MRT's meta-prover generator is saved with each checkpoint (before, it restarted from its
    seed on resume and the progress rewards, hence the updates, differed)."""
    import torch

    from mrl_llm.reasoning import search_task as st
    from mrl_llm.models import TinyLMConfig, build_tiny_model
    from mrl_llm.reasoning.meta_prover import MetaProverConfig
    from mrl_llm.train.grpo import run_grpo
    from mrl_llm.train.mrt import MRTConfig, ReasoningGRPOConfig, build_reasoning_trainer

    task = st.SearchTaskConfig(function="add")
    data = st.prompt_dataset(task, 16, seed=1)
    cfg = ReasoningGRPOConfig(
        max_steps=2,
        num_generations=2,
        prompts_per_step=2,
        max_completion_length=24,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        save_steps=1,
        trl={"save_total_limit": 3},
    )
    mrt = MRTConfig(
        prover=MetaProverConfig(termination_suffix=task.termination_suffix, num_samples=2, max_answer_tokens=4)
    )

    def trainer(out, callbacks=()):
        model = build_tiny_model(
            TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tiny_tok, seed=0
        )
        return build_reasoning_trainer(
            model,
            tiny_tok,
            data,
            cfg,
            out,
            mrt=mrt,
            split_fn=lambda t: st.trace_episodes(t, task.termination_suffix).episodes,
            callbacks=callbacks,
        )

    straight = trainer(tmp_path / "straight")
    run_grpo(straight, tmp_path / "straight")
    with pytest.raises(_Interrupted):
        run_grpo(trainer(tmp_path / "resumed", [_interrupt_after_saving(1)]), tmp_path / "resumed")
    resumed = trainer(tmp_path / "resumed")
    run_grpo(resumed, tmp_path / "resumed")
    assert resumed.state.global_step == 2
    assert torch.equal(resumed._prover_gen.get_state(), straight._prover_gen.get_state())
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "override, key",
    [
        ("learners.llm.grpo.loss_type=bogus", "grpo.loss_type"),
        ("learners.llm.sft.learning_rate=.nan", "learning_rate"),
        ("learners.llm.sft.num_train_epochs=.inf", "num_train_epochs"),
        ("learners.llm.sft.lr_scheduler_type=bogus", "lr_scheduler_type"),
        ("learners.llm.grpo.lr_scheduler_type=bogus", "lr_scheduler_type"),
        ("learners.llm.grpo.warmup_ratio=-0.5", "warmup_ratio"),
        ("learners.llm.grpo.learning_rate=.inf", "learning_rate"),
        ("learners.llm.eval_batch_size=-1", "eval_batch_size"),
        ("learners.llm.eval_batch_size=0", "eval_batch_size"),
        ("protocol.batch_size=0", "batch_size"),
        ("learners.llm.kv_cache_benchmark.num_tasks=0", "num_tasks"),
    ],
)
def test_values_that_would_crash_later_are_refused_when_the_recipe_is_read(override, key, capsys):
    """These passed ``--dry-run`` (or gave a traceback) and failed after minutes of training."""
    from pathlib import Path

    from mrl_llm.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes/llm/icrl_bandit_tiny.yaml"
    assert main(["run", str(recipe), "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and str(recipe) in err and "\n" not in err, err


def test_a_resumed_stage_does_not_log_its_replayed_steps_twice(tmp_path, tiny_model, tiny_tok):
    import copy

    from classic.envs import BernoulliBandit
    from classic.metrics import MetricsLogger
    from mrl_llm.envs.text_bandit import BanditText
    from mrl_llm.train.stages import MetricsCallback
    from mrl_llm.rollout.generation import SamplingConfig
    from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer, run_grpo

    cfg = GRPOStageConfig(
        max_steps=3, num_generations=2, tasks_per_step=2, save_steps=1, warmup_ratio=0.0, trl={"save_total_limit": 4}
    )
    out = tmp_path / "grpo"

    def trainer(logger, extra=()):
        return build_grpo_trainer(
            copy.deepcopy(tiny_model).train(),
            tiny_tok,
            BernoulliBandit(3),
            BanditText(3, 4),
            cfg,
            SamplingConfig(),
            4,
            out,
            callbacks=[MetricsCallback(logger, "grpo/"), *extra],
        )

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(_Interrupted):
            run_grpo(trainer(logger, [_interrupt_after_saving(2)]), out)
        (out / "checkpoint-2" / "trainer_state.json").unlink()  # killed while saving step 2: resume from 1
        assert logger.last_step("grpo/") == 2
        run_grpo(trainer(logger), out)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "grpo/rollout/trial_regret" in r] == [1, 2, 3]  # step 2 once, not replayed


@pytest.mark.parametrize("where", ["unknown_key", "task.num_arms", "baselines.agents"])
def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys, where):
    """Nine levels of aliases stand for 10^9 strings; the error used to render them whole."""
    import time

    from mrl_llm.cli import main

    levels = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "[" + ", ".join(levels) + "]"  # anchors defined inside the value itself
    head, _, leaf = where.partition(".")
    body = f"{head}: {bomb}" if not leaf else f"{head}:\n  {leaf}: {bomb}"
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("kind: compare\nname: bomb\n" + body + "\n")
    start = time.monotonic()
    assert main(["run", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 10 and "\n" not in err and len(err) < 400, err[:500]
