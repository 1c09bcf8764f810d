"""Text renderings (mrl_llm.envs.text_env): any Discrete task as text, the LLM agent reading
observations, teachers named by a recipe line, and the LLM learner in a compare run."""

import json

import pytest
import torch

from classic import seeding
from classic.registry import AGENTS, TASKS
from classic.evaluate import run_trials
from mrl_llm.envs.text_bandit import BanditText
from mrl_llm.envs.text_env import INVALID, DiscreteText, TrialProgress, format_obs, parse_index, text_env_for
from mrl_llm.rollout.agent import LLMAgent, TrialRenderer


def _darkroom(**kw):
    task = TASKS.get("darkroom")(**{"episodes_per_trial": 3, **kw})
    return task, task.make()


def _gridnavi(**kw):
    """A Discrete task without a dedicated rendering (the generic DiscreteText's)."""
    task = TASKS.get("gridnavi")(**{"episodes_per_trial": 3, **kw})
    return task, task.make()


@pytest.mark.parametrize("chat", [False, True])
def test_every_action_round_trips_through_its_reply(chat):
    task, dist = _gridnavi()
    for env in (text_env_for(task, dist, 3, chat), BanditText(7, 10, chat)):
        n = env.num_actions if isinstance(env, DiscreteText) else env.num_arms
        assert [env.parse_action(env.format_action(a)) for a in range(n)] == list(range(n))
        assert env.parse_action(env.format_action(n)) == INVALID  # out of range
        assert env.parse_action("no idea") == INVALID


def test_parse_index_takes_the_last_keyword_match_and_is_linear():
    assert parse_index("Action: 1 ... no, action #3", 5, "action") == 3
    assert parse_index("4", 5) == 4 and parse_index("Action: 4", 5) == INVALID  # plain: only an integer
    assert parse_index("action" + " " * 20000 + "x", 5, "action") == INVALID


def test_the_rendering_is_chosen_by_task_name_and_refuses_box_actions():
    bandit = TASKS.get("bandit")(num_arms=4)
    assert text_env_for(bandit, bandit.make(), 10) == BanditText(4, 10)
    task, dist = _gridnavi()
    assert text_env_for(task, dist, 3) == DiscreteText(5, 3, 15)
    room, room_dist = _darkroom()
    assert type(text_env_for(room, room_dist, 3)).__name__ == "DarkRoomText"
    nav = TASKS.get("nav2d")()
    with pytest.raises(ValueError, match="Box actions"):
        text_env_for(nav, nav.make(), 2)


def test_discrete_text_shows_observations_rewards_and_episode_boundaries():
    env = DiscreteText(5, 2, 3)
    assert format_obs(torch.tensor([4.0, 2.0])) == "4,2" and format_obs(torch.tensor([0.5, -1.25])) == "0.5,-1.25"
    assert env.prompt(torch.tensor([4.0, 4.0])).endswith("reward.\n4,4 ")
    from mrl_llm.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    assert tok.unk_token_id not in tok(env.prompt(torch.tensor([4.0, 4.0]))).input_ids  # the tiny LM reads every word
    mid = env.render_step(torch.tensor([4.0, 3.0]), 1, 0.0, False, False, TrialProgress(1, 0.0, 0))
    assert mid == " 0\n4,3 "
    boundary = env.render_step(torch.tensor([4.0, 4.0]), 2, 1.0, False, True, TrialProgress(3, 1.0, 1))
    assert boundary == " 1\n|\n4,4 "
    chat = DiscreteText(5, 2, 3, chat=True)
    text = chat.render_step(torch.tensor([4.0, 4.0]), INVALID, 0.0, False, True, TrialProgress(3, 0.0, 1))
    assert (
        text.startswith("Invalid reply")
        and "Episode 1 ended. Episode 2." in text
        and text.endswith("Observation: 4,4.")
    )


def test_a_teacher_transcript_on_a_gridworld_holds_every_step_and_boundary(tiny_tok):
    """The SFT data of a multi-episode task: one reply per step, the observation each was taken on,
    and an episode boundary between episodes; env_mask is 1 exactly on the replies."""
    from mrl_llm.train.sft import teacher_transcripts

    task, dist = _gridnavi(episode_length=4)
    env = text_env_for(task, dist, 3)
    renderer = TrialRenderer(tiny_tok, env)
    teacher = AGENTS.get("Random")().make(dist, 3)
    trs = teacher_transcripts(teacher, dist, renderer, 2, 3, seed=0)
    assert len(trs) == 2
    for tr in trs:
        replies = [i for i, m in enumerate(tr.env_mask) if m == 1]
        assert len(replies) == 12  # one token per step: 3 episodes x 4 steps
        text = tiny_tok.decode(tr.prompt_ids + tr.completion_ids, skip_special_tokens=True)
        assert text.count("|\n") == 2 and text.startswith("Each trial is 3 episodes of 4 turns with 5 actions.")
        assert text.count("|\n0,0 ") == 2  # every episode starts at the corner cell
        assert all(tiny_tok.decode([tr.completion_ids[i]]).isdigit() for i in replies)


def test_the_llm_agent_plays_a_gridworld_and_records_env_tokens_across_episodes(tiny_model, tiny_tok):
    task, dist = _darkroom(episode_length=4)
    env = text_env_for(task, dist, 3)
    agent = LLMAgent(tiny_model, tiny_tok, env, record=True)
    res = run_trials(agent, dist, 4, 3, seed=0)
    trs = agent.finish()
    assert res.rewards.shape == (4, 12)
    for i, tr in enumerate(trs):
        assert len(tr.completion_ids) == len(tr.env_mask) == len(tr.logprobs)
        model_tokens = [t for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
        assert len(model_tokens) == 12  # max_action_tokens=1: one sampled token per step
        text = tiny_tok.decode(tr.prompt_ids + tr.completion_ids, skip_special_tokens=True)
        assert text.count("|\n") == 2  # two boundaries between three episodes, written by the environment
        for m, lp in zip(tr.env_mask, tr.logprobs):
            assert (lp <= 0) if m == 1 else (lp == 0.0)
    # the same tokens as the teacher-transcript rendering of the actions and rewards the agent took
    renderer = TrialRenderer(tiny_tok, env)
    traj = run_trials(
        LLMAgent(tiny_model, tiny_tok, env, record=True), dist, 4, 3, seed=0, keep_trajectories=True
    ).trajectories[0]
    for b in range(4):
        a = traj.actions[:, b].tolist()
        if INVALID in a:
            continue  # an invalid reply is rendered from the model's own text, not a canonical one
        ref = renderer.teacher_trial(
            a,
            traj.rewards[:, b].tolist(),
            traj.obs[:, b],
            traj.terminated[:, b].tolist(),
            traj.truncated[:, b].tolist(),
        )
        assert ref.prompt_ids == trs[b].prompt_ids
        assert ref.env_mask == trs[b].env_mask[:-1]  # the agent's transcript ends with a closing EOS


def test_the_sft_teacher_is_any_baseline_named_by_a_recipe_line(tiny_tok):
    """The transcripts hold exactly the teacher's actions (UCB1 here, not Thompson sampling)."""
    from mrl_llm.learners.llm import LLMLearner, LLMLearnerConfig
    from mrl_llm.train.sft import teacher_transcripts

    from classic.config import from_dict
    from classic.experiments.compare import Protocol

    cfg = from_dict(LLMLearnerConfig, {"teacher": {"name": "UCB1", "c": 0.3, "grid": {}}})
    task = TASKS.get("bandit")(num_arms=3, episodes_per_trial=6)
    dist = task.make()
    teacher = LLMLearner().teacher(cfg, dist, Protocol(6, 10, 0, None, 10), seed=0)
    assert type(teacher).__name__ == "UCB1Agent" and teacher.c == 0.3
    renderer = TrialRenderer(tiny_tok, text_env_for(task, dist, 6))
    trs = teacher_transcripts(teacher, dist, renderer, 4, 6, seed=0)
    g = seeding.generator("sft", 0)  # the stream teacher_transcripts draws its tasks from
    ref = run_trials(
        AGENTS.get("UCB1")(c=0.3, grid={}).make(dist, 6),
        dist,
        tasks=dist.sample_tasks(4, g),
        episodes_per_trial=6,
        seed=seeding.stream_seed("sft", 0),
    )
    for tr, actions in zip(trs, ref.actions.tolist()):
        replies = [tiny_tok.decode([t]) for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
        assert [int(r) for r in replies] == actions
    tuned = from_dict(LLMLearnerConfig, {"teacher": {"name": "UCB1", "grid": {"c": [0.05, 2.0]}}})
    assert LLMLearner().teacher(tuned, dist, Protocol(6, 10, 0, None, 50), seed=0).c in (0.05, 2.0)


def test_the_llm_learner_joins_a_compare_run_on_a_gridworld(tmp_path):
    """A compare recipe with the LLM learner on Dark Room: SFT on Random's trials, GRPO on the trial
    return, both agents evaluated beside Random; a rerun reuses both stages and gives the same numbers."""
    from classic.config import from_dict
    from classic.experiments.compare import CompareExperiment, run_compare

    recipe = {
        "name": "room",
        "threads": 1,
        "output": {"root": str(tmp_path)},
        "task": {"name": "darkroom", "episodes_per_trial": 2, "episode_length": 5},
        "protocol": {"num_tasks": 6},
        "baselines": [{"name": "Random"}],
        "learners": [
            {
                "name": "llm",
                "label": "LM",
                "teacher": {"name": "Random"},
                "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}},
                "sft": {"num_trials": 8, "num_train_epochs": 1, "per_device_train_batch_size": 8, "save_steps": 100},
                "grpo": {
                    "max_steps": 1,
                    "num_generations": 2,
                    "tasks_per_step": 2,
                    "save_steps": 100,
                    "reward_funcs": ["trial_return"],
                },
                "eval_batch_size": 3,
                "kv_cache_benchmark": {"enabled": False},
            }
        ],
    }
    run_dir = run_compare(from_dict(CompareExperiment, recipe), progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["agents"]) == {"Random", "LM (SFT)", "LM (SFT+GRPO)"}
    assert (
        results["agents"]["LM (SFT)"]["num_tasks"] == 6
        and len(results["agents"]["LM (SFT)"]["episode_returns"]["mean"]) == 2
    )
    report = (run_dir / "report.md").read_text()
    assert "SFT teacher: Random" in report and "LM (SFT+GRPO): invalid-action rate" in report
    stamp = (run_dir / "LM" / "grpo" / "final" / "model.safetensors").stat().st_mtime_ns
    run_compare(from_dict(CompareExperiment, recipe), progress=False)
    assert (run_dir / "LM" / "grpo" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    again = json.loads((run_dir / "results.json").read_text())["agents"]
    assert again["LM (SFT+GRPO)"]["total_reward"] == results["agents"]["LM (SFT+GRPO)"]["total_reward"]


def test_negative_regret_on_a_task_without_an_oracle_is_refused_before_training(tmp_path):
    from classic.core import StageRun
    from classic.experiments.compare import Protocol
    from mrl_llm.learners.llm import LLMLearner, LLMLearnerConfig
    from mrl_llm.train.grpo import GRPOStageConfig

    task, dist = _darkroom()
    dist.optimal_episode_return = lambda tasks: None
    with pytest.raises(ValueError, match="negative_regret"):
        config = LLMLearnerConfig(grpo=GRPOStageConfig(reward_funcs=["negative_regret"]))
        LLMLearner().train(config, dist, Protocol(3, 2, 0, None), StageRun(tmp_path, task=task))
