"""Distillation data, a tiny SFT run, the GRPO rollout function and a tiny GRPO step."""

import copy
from types import SimpleNamespace
from collections import defaultdict

import pytest
import torch

from classic.agents.bandit import ThompsonSamplingAgent
from classic.envs import BernoulliBandit
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.rewards import REWARDS, get_reward
from mrl_llm.rollout.agent import TrialRenderer
from mrl_llm.rollout.generation import SamplingConfig
from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer, make_rollout_func, run_grpo
from mrl_llm.train.sft import SFTStageConfig, distillation_dataset, run_sft, teacher_transcripts


def _changed(before: dict, model) -> float:
    return sum(float((p.detach() - before[n]).abs().sum()) for n, p in model.named_parameters())


def test_distillation_masks_only_teacher_replies(tiny_tok):
    env = BanditText(5, 8)
    trs = teacher_transcripts(ThompsonSamplingAgent(5), BernoulliBandit(5), TrialRenderer(tiny_tok, env), 4, 8, seed=0)
    ds = distillation_dataset(trs)
    arm_ids = {tiny_tok.convert_tokens_to_ids(str(a)) for a in range(5)}
    for row in ds:
        ids, mask = row["input_ids"], row["completion_mask"]
        trained = [i for i, m in zip(ids, mask) if m]
        assert len(trained) == 8 and set(trained) <= arm_ids  # one arm token per pull, nothing else
        assert tiny_tok.decode(ids).count("\n") == 8  # header + 7 feedback lines


def test_teacher_transcripts_are_seeded(tiny_tok):
    env = BanditText(5, 8)
    make = lambda s: teacher_transcripts(
        ThompsonSamplingAgent(5), BernoulliBandit(5), TrialRenderer(tiny_tok, env), 3, 8, seed=s
    )  # noqa: E731
    assert [t.completion_ids for t in make(1)] == [t.completion_ids for t in make(1)]
    assert [t.completion_ids for t in make(1)] != [t.completion_ids for t in make(2)]


def test_tiny_sft_changes_parameters_and_lowers_loss(tmp_path, tiny_model, tiny_tok):
    env = BanditText(5, 10)
    trs = teacher_transcripts(
        ThompsonSamplingAgent(5), BernoulliBandit(5), TrialRenderer(tiny_tok, env), 64, 10, seed=0
    )
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    cfg = SFTStageConfig(
        num_trials=64,
        num_train_epochs=3,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        logging_steps=1,
        save_steps=1000,
    )
    trainer = run_sft(tiny_model, tiny_tok, distillation_dataset(trs), cfg, tmp_path / "sft")
    assert _changed(before, trainer.model) > 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_rewards_registry():
    assert {"trial_return", "negative_regret", "invalid_action_penalty"} <= set(REWARDS)
    assert get_reward("negative_regret")(None, None, trial_regret=[1.5, 0.0]) == [-1.5, 0.0]
    with pytest.raises(KeyError, match="known"):
        get_reward("nope")
    with pytest.raises(ValueError, match="unknown_reward|known"):
        GRPOStageConfig(reward_funcs=["unknown_reward"])


def test_rollout_func_groups_share_a_task(tiny_model, tiny_tok):
    from accelerate import Accelerator

    class FakeTrainer:
        model = model_wrapped = tiny_model
        use_vllm = False
        args = SimpleNamespace(ds3_gather_for_generation=True)
        accelerator = Accelerator(cpu=True)
        _metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    env = BanditText(5, 6)
    fn = make_rollout_func(
        BernoulliBandit(5), env, tiny_tok, SamplingConfig(), num_generations=4, episodes_per_trial=6, seed=0
    )
    out = fn([env.prompt()] * 8, FakeTrainer())
    assert len(out["completion_ids"]) == 8
    for c, m, lp in zip(out["completion_ids"], out["env_mask"], out["logprobs"]):
        assert len(c) == len(m) == len(lp) and sum(m) == 6
    regrets = torch.tensor(out["trial_regret"])
    assert (regrets >= 0).all() and len(out["trial_return"]) == 8
    assert FakeTrainer._metrics["eval"]["rollout/trial_return"]  # the model was in eval mode
    with pytest.raises(ValueError, match="multiple of num_generations"):
        fn([env.prompt()] * 6, FakeTrainer())


def test_tiny_grpo_step_changes_parameters(tmp_path, tiny_model, tiny_tok):
    model = copy.deepcopy(tiny_model).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = GRPOStageConfig(
        max_steps=2,
        num_generations=4,
        tasks_per_step=2,
        learning_rate=1e-2,
        reward_funcs=["negative_regret"],
        save_steps=1000,
    )
    trainer = build_grpo_trainer(
        model, tiny_tok, BernoulliBandit(5), BanditText(5, 8), cfg, SamplingConfig(), 8, tmp_path / "grpo"
    )
    run_grpo(trainer, tmp_path / "grpo")
    assert trainer.state.global_step == 2
    assert _changed(before, trainer.model) > 0
    logs = [h for h in trainer.state.log_history if "rollout/trial_regret" in h]
    assert logs and all(h["completions/mean_length"] == 8 for h in logs)  # model tokens only (env_mask)


def _search_sft_data(tok, n=48):
    from mrl_llm.reasoning.search_task import SearchTaskConfig, sft_dataset

    return sft_dataset(
        SearchTaskConfig(num_candidates=6, p_find=0.5, p_double_check=0.25), n, 0, tok
    )  # traces of ~15-150 tokens


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(tmp_path, tiny_tok, attn):
    """PackedBatchCollator: one padded batch of search traces re-laid into rows of <= 64 tokens
    with block-diagonal masks must give the padded batch's loss and gradients, on fewer tokens."""
    from trl import SFTTrainer

    from mrl_llm.models import TinyLMConfig, build_tiny_model
    from mrl_llm.train.sft import PackedBatchCollator, sft_arguments

    model = build_tiny_model(
        TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=1
    )
    model.set_attn_implementation(attn)
    trainer = SFTTrainer(
        model=model,
        args=sft_arguments(SFTStageConfig(), tmp_path),
        train_dataset=_search_sft_data(tiny_tok),
        processing_class=tiny_tok,
    )
    examples = [trainer.train_dataset[i] for i in range(16)]
    padded = trainer.data_collator(examples)
    packed = PackedBatchCollator(trainer.data_collator, width=64, mask="bool" if attn == "sdpa" else "additive")(
        examples
    )
    assert int(packed.pop("num_real_tokens")) == int(padded["attention_mask"].sum())
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert (packed["labels"][:, 1:] != -100).sum() == (
        padded["labels"][:, 1:] != -100
    ).sum()  # transformers' loss normalizer
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_sft_trains_like_padded_sft(tmp_path, tiny_tok):
    """run_sft with packed_batches: same seed, same batches, so the same parameters (to float
    rounding) as the padded run after a few Adam steps; TRL's token count is the real one."""
    from mrl_llm.models import TinyLMConfig, build_tiny_model

    params, tokens = {}, {}
    start = [
        p.detach().clone()
        for p in build_tiny_model(
            TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=0
        ).parameters()
    ]
    for packed in (False, True):
        model = build_tiny_model(
            TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=0
        )
        cfg = SFTStageConfig(
            num_trials=48,
            num_train_epochs=1,
            learning_rate=3e-3,
            per_device_train_batch_size=16,
            logging_steps=1,
            save_steps=1000,
            packed_batches=packed,
            pack_width=64,
        )
        trainer = run_sft(model, tiny_tok, _search_sft_data(tiny_tok), cfg, tmp_path / f"sft{packed}")
        params[packed] = [p.detach().clone() for p in trainer.model.parameters()]
        tokens[packed] = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(params[True], start))
    for a, b in zip(params[False], params[True]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert tokens[True] == tokens[False]


def test_packed_sft_refuses_an_attention_kernel_without_4d_masks(tmp_path, tiny_tok):
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    cfg = SFTStageConfig(num_trials=4, packed_batches=True)
    with pytest.raises(ValueError, match="packed_batches needs 'sdpa' or 'eager'.*flash_attention_2"):
        run_sft(model, tiny_tok, _search_sft_data(tiny_tok, 4), cfg, tmp_path / "sft")


def test_weighted_nll_is_the_models_loss_at_unit_weights_and_the_weighted_mean_otherwise(tmp_path, tiny_tok):
    """weighted_token_nll against transformers' own causal-LM loss (all weights 1) and a slow loop
    over tokens (random weights), on a padded batch and on the same batch packed (the weights
    re-laid with the labels)."""
    from trl import SFTTrainer

    from mrl_llm.models import TinyLMConfig, build_tiny_model
    from mrl_llm.train.sft import LossWeightCollator, PackedBatchCollator, sft_arguments
    from mrl_llm.train.trainers import weighted_token_nll

    model = build_tiny_model(
        TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=1
    )
    renderer = TrialRenderer(tiny_tok, BanditText(5, 10))
    data = distillation_dataset(
        teacher_transcripts(ThompsonSamplingAgent(5), BernoulliBandit(5), renderer, 12, 10, seed=0)
    )
    g = torch.Generator().manual_seed(0)
    data = data.add_column("loss_weights", [(3 * torch.rand(len(r), generator=g)).tolist() for r in data["input_ids"]])
    args = sft_arguments(SFTStageConfig(), tmp_path, use_cpu=True)
    args.remove_unused_columns = False
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tiny_tok,
    )
    examples = [trainer.train_dataset[i] for i in range(8)]
    batch = LossWeightCollator(trainer.data_collator)(examples)
    assert batch["loss_weights"].shape == batch["labels"].shape
    weights = batch.pop("loss_weights")
    with torch.no_grad():
        out = model(**batch)
        torch.testing.assert_close(weighted_token_nll(out, batch["labels"], torch.ones_like(weights)), out.loss)
        total, count = 0.0, 0
        for b in range(weights.shape[0]):
            logp = out.logits[b].float().log_softmax(-1)
            for t in range(1, weights.shape[1]):
                y = int(batch["labels"][b, t])
                if y != -100:
                    total += float(weights[b, t]) * -float(logp[t - 1, y])
                    count += 1
        expected = torch.tensor(total / count)
        torch.testing.assert_close(weighted_token_nll(out, batch["labels"], weights), expected, rtol=1e-5, atol=1e-6)
        packed = PackedBatchCollator(LossWeightCollator(trainer.data_collator), width=64)(examples)
        packed.pop("num_real_tokens")
        packed_weights = packed.pop("loss_weights")
        torch.testing.assert_close(
            weighted_token_nll(model(**packed), packed["labels"], packed_weights), expected, rtol=1e-4, atol=1e-5
        )
