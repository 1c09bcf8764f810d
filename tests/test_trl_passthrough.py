"""The ``trl:`` passthrough of the SFT and GRPO stages: checked against TRL's own config fields when
the recipe is read, applied over the project's defaults, and ``report_to`` reaching TRL's loggers."""

from __future__ import annotations

from pathlib import Path

import pytest

from classic.config import RecipeError, load_recipe
from classic.agents.bandit import ThompsonSamplingAgent
from classic.envs.bandit import BernoulliBandit
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.rollout.agent import TrialRenderer
from mrl_llm.train.sft import SFTStageConfig, distillation_dataset, run_sft, sft_arguments, teacher_transcripts

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_an_unknown_trl_key_is_one_line_naming_it_and_the_file(stage):
    from classic.experiments.compare import CompareExperiment

    recipe = str(ROOT / "recipes/llm/icrl_bandit_tiny.yaml")
    with pytest.raises(
        RecipeError,
        match=rf"icrl_bandit_tiny.yaml: invalid 'learners\[1\]\.{stage}': trl: 'lerning_rate' "
        r"is not a trl\.(SFT|GRPO)Config argument; did you mean 'learning_rate'\?",
    ):
        load_recipe(CompareExperiment, recipe, [f"learners.llm.{stage}.trl.lerning_rate=1"])


def test_a_known_trl_key_is_set_on_the_built_sft_config(tmp_path):
    cfg = SFTStageConfig(trl={"report_to": ["tensorboard"], "max_grad_norm": 0.25, "optim": "adamw_torch"})
    args = sft_arguments(cfg, tmp_path, use_cpu=True)
    assert args.report_to == ["tensorboard"] and args.max_grad_norm == 0.25 and args.optim == "adamw_torch"
    assert sft_arguments(SFTStageConfig(), tmp_path, use_cpu=True).report_to in ([], "none", ["none"])


def test_report_to_tensorboard_writes_trls_event_files(tmp_path, tiny_model, tiny_tok):
    pytest.importorskip("tensorboard")
    env = BanditText(3, 4)
    cfg = SFTStageConfig(
        num_trials=8,
        num_train_epochs=1,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=100,
        trl={"report_to": ["tensorboard"]},
    )
    trs = teacher_transcripts(ThompsonSamplingAgent(3), BernoulliBandit(3), TrialRenderer(tiny_tok, env), 8, 4, seed=0)
    trainer = run_sft(tiny_model, tiny_tok, distillation_dataset(trs), cfg, tmp_path / "sft")
    assert trainer.state.global_step >= 1
    assert list(tmp_path.rglob("events.out.tfevents*")), "TRL's TensorBoard callback wrote no event file"
