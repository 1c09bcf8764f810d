"""Dark Room as text (mrl_llm.envs.text_darkroom): the round trip of every action, the rendering,
reflections between episodes, env_mask across episode boundaries, KV-cached multi-episode sampling
against full recomputation, and LaMer's cross-episode return (mrl_llm.train.grpo)."""

import re

import pytest
import torch

from classic.envs.grid import GridTasks
from classic.evaluate import run_trials
from classic.registry import AGENTS, TASKS
from mrl_llm.envs.text_darkroom import ACTION_WORDS, DarkRoomText
from mrl_llm.envs.text_env import INVALID, TrialProgress, text_env_for
from mrl_llm.rollout.agent import LLMAgent, TrialRenderer
from mrl_llm.rollout.generation import SamplingConfig
from mrl_llm.train.grpo import cross_episode_advantages, cross_episode_returns, token_advantages


def _room(**kw):
    task = TASKS.get("darkroom")(**{"episodes_per_trial": 3, "episode_length": 5, **kw})
    return task, task.make()


class _Biased(torch.nn.Module):
    """The tiny LM with +``bias`` on some tokens' logits (actions that parse, notes that end)."""

    def __init__(self, model, tokens, bias=6.0):
        super().__init__()
        from mrl_llm.models import kv_cache_kwarg

        self.inner, self.kv = model, kv_cache_kwarg(model)
        self.register_buffer("bias", torch.zeros(model.config.vocab_size))
        self.bias[tokens] = bias

    def forward(self, input_ids, past_key_values=None, **kw):
        out = self.inner(input_ids=input_ids, **{self.kv: past_key_values}, **kw)
        out.logits = out.logits + self.bias
        return out


@pytest.fixture()
def room_lm(tiny_model, tiny_tok):
    ids = [tiny_tok.convert_tokens_to_ids(t) for t in ["0", "1", "2", "3", "4", "\n", "no"]]
    return _Biased(tiny_model, ids).eval()


@pytest.mark.parametrize("chat", [False, True])
def test_every_action_round_trips_and_anything_else_is_invalid(chat):
    env = DarkRoomText(9, 20, 10, chat=chat)
    assert [env.parse_action(env.format_action(a)) for a in range(5)] == [0, 1, 2, 3, 4]
    for junk in ("", "5", "-1", "goal", "Action: north", "1" * 5000, "action" + " " * 20000 + "x"):
        assert env.parse_action(junk) == INVALID
    if chat:  # names or numbers, the last "Action:" counts, case-insensitive; "no-op" is "stay"
        assert env.parse_action("Action: left ... no, ACTION: Right") == 4
        assert env.parse_action("action 2") == 2 and env.parse_action("Action: no-op") == 0
        assert env.parse_action(" up. ") == 1 and env.parse_action("3") == 3
    else:
        assert env.parse_action(" 3\n") == 3 and env.parse_action("left") == INVALID


def test_the_plain_rendering_is_one_short_line_per_step_with_episode_boundaries(tiny_tok):
    task, dist = _room()
    env = text_env_for(task, dist, 3)
    assert env == DarkRoomText(9, 5, 3, (4, 4), reflection_tokens=4)
    prompt = env.prompt(torch.tensor([4.0, 4.0]))
    assert prompt.endswith("reward.\n44 ") and tiny_tok.unk_token_id not in tiny_tok(prompt).input_ids
    assert env.render_step(torch.tensor([5.0, 4.0]), 4, 0.0, False, False, TrialProgress(1, 0.0, 0)) == " 0\n54 "
    end = env.render_step(torch.tensor([4.0, 4.0]), 0, 1.0, False, True, TrialProgress(5, 2.0, 1))
    assert end == " 1\n|\n44 "
    last = env.render_step(torch.tensor([4.0, 4.0]), INVALID, 0.0, False, True, TrialProgress(15, 2.0, 3))
    assert last == " invalid 0\n|\n"
    assert len(tiny_tok(" 0\n54 4", add_special_tokens=False).input_ids) == 5  # a step is 5 tokens
    assert DarkRoomText(12, 5, 3).cell(torch.tensor([11.0, 3.0])) == "11,3"  # two digits only up to 10x10
    reflecting = text_env_for(task, dist, 3, reflect=True)
    assert reflecting.render_step(torch.tensor([4.0, 4.0]), 0, 1.0, False, True, TrialProgress(5, 2.0, 1)) == (
        " 1\n|\ngoal:"
    )
    assert reflecting.render_next_episode(torch.tensor([4.0, 4.0]), 2) == "44 "
    assert tiny_tok.unk_token_id not in tiny_tok(reflecting.prompt(torch.tensor([4.0, 4.0]))).input_ids
    with pytest.raises(ValueError, match="no reflection"):
        bandit = TASKS.get("bandit")(num_arms=3)
        text_env_for(bandit, bandit.make(), 10, reflect=True)


def test_the_chat_rendering_names_cells_and_asks_for_a_reflection():
    env = DarkRoomText(9, 5, 3, chat=True, reflect=True)
    assert env.prompt(torch.tensor([4.0, 4.0]))[0]["content"].endswith("Episode 1. You are at (4, 4).")
    step = env.render_step(torch.tensor([5.0, 4.0]), 4, 0.0, False, False, TrialProgress(1, 0.0, 0))
    assert step == "Reward 0. You are at (5, 4)."
    end = env.render_step(torch.tensor([4.0, 4.0]), 0, 1.0, False, True, TrialProgress(5, 1.0, 1))
    assert end.startswith("Reward 1. Episode 1 ended. Where is the goal?")
    assert env.render_next_episode(torch.tensor([4.0, 4.0]), 2) == "Episode 2. You are at (4, 4)."
    plain_end = DarkRoomText(9, 5, 3, chat=True).render_step(
        torch.tensor([4.0, 4.0]), 0, 1.0, False, True, TrialProgress(5, 1.0, 1)
    )
    assert plain_end == "Reward 1. Episode 1 ended. Episode 2. You are at (4, 4)."


def test_the_teacher_reflection_names_the_last_cell_that_paid():
    env = DarkRoomText(9, 5, 3, reflect=True)
    obs = torch.tensor([[4.0, 4.0], [5.0, 4.0], [5.0, 3.0], [5.0, 3.0]])
    actions = [4, 2, 0, 0]  # right, down onto the goal (5, 3), stay
    assert env.teacher_reflection(obs[:2], actions[:2], [0.0, 0.0]) == "no\n"
    assert env.teacher_reflection(obs, actions, [0.0, 1.0, 1.0, 1.0]) == "53\n"
    wall = torch.tensor([[8.0, 8.0]])  # a move into the wall stays put: (8, 8) paid
    assert env.teacher_reflection(wall, [4], [1.0]) == "88\n"
    chat = DarkRoomText(9, 5, 3, chat=True, reflect=True)
    assert chat.teacher_reflection(obs, actions, [0.0, 1.0, 1.0, 1.0]) == "Goal: 5,3"
    assert chat.teacher_reflection(obs[:1], actions[:1], [0.0]) == "Goal: unknown"


@pytest.mark.parametrize("reflect", [False, True])
def test_a_teacher_transcript_holds_every_step_boundary_and_note(tiny_tok, reflect):
    from mrl_llm.train.sft import teacher_transcripts

    task, dist = _room()
    env = text_env_for(task, dist, 3, reflect=reflect)
    teacher = AGENTS.get("Systematic search")().make(dist, 3)
    trs = teacher_transcripts(teacher, dist, TrialRenderer(tiny_tok, env), 4, 3, seed=0)
    for tr in trs:
        text = tiny_tok.decode(tr.prompt_ids + tr.completion_ids, skip_special_tokens=True)
        assert text.count("|\n") == 2 and text.split("\n")[1].startswith("44 ")
        # each later episode opens at the start cell, after the note when there is one
        assert len(re.findall(r"\|\ngoal:(?:no|\d\d)\n44 " if reflect else r"\|\n44 ", text)) == 2
        model = [tiny_tok.decode([t]) for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
        # the model's tokens: 15 one-digit replies and (reflect) two notes, "no\n" or two digits and "\n"
        assert model.count("\n") == (2 if reflect else 0)
        assert len(model) - 3 * model.count("\n") + model.count("no") == 15


def test_env_mask_across_episode_boundaries_with_reflections(room_lm, tiny_tok):
    """The agent's recorded trial is exactly the renderer's tokens for the actions, rewards,
    observations and notes it took: replies and notes are model tokens (env_mask 1), rewards,
    cells, boundaries, cues and each episode's opening are environment tokens (0)."""
    task, dist = _room()
    env = text_env_for(task, dist, 3, reflect=True)
    agent = LLMAgent(room_lm, tiny_tok, env, record=True)
    res = run_trials(agent, dist, 6, 3, seed=1, keep_trajectories=True)
    trs = agent.finish()
    traj = res.trajectories[0]
    r = TrialRenderer(tiny_tok, env)
    assert agent.reflections  # notes were written
    for b, tr in enumerate(trs):
        ids, mask = [], []
        model = [t for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
        pos, total, episodes, T = 0, 0.0, 0, traj.actions.shape[0]
        for t in range(T):
            a = int(traj.actions[t, b])
            reply = model[pos : pos + 1]  # max_action_tokens = 1
            pos += 1
            ids += reply
            mask += [1]
            if t + 1 == T:
                break
            rew = float(traj.rewards[t, b]) if a != INVALID else 0.0
            total += rew
            ended = bool(traj.truncated[t, b] or traj.terminated[t, b])
            episodes += ended
            prog = TrialProgress(t + 1, total, episodes)
            fb = r.step_ids(traj.obs[t + 1, b], a, rew, False, bool(traj.truncated[t, b]), prog, reply)
            ids += fb
            mask += [0] * len(fb)
            if ended:
                note = []
                while pos < len(model) and len(note) < env.reflection_tokens:
                    note.append(model[pos])
                    pos += 1
                    if note[-1] in r.reflection_stop_ids:
                        break
                nxt = r.next_episode_ids(traj.obs[t + 1, b], episodes + 1, note)
                ids += note + nxt
                mask += [1] * len(note) + [0] * len(nxt)
        assert pos == len(model)
        assert tr.completion_ids[:-1] == ids and tr.env_mask[:-1] == mask  # the agent closes with EOS
        assert len(tr.step_of) == len(tr.completion_ids) and tr.episode_of_step == [0] * 5 + [1] * 5 + [2] * 5
        steps = [s for s, m in zip(tr.step_of, tr.env_mask) if m == 1]
        assert steps == sorted(steps) and set(steps) == set(range(15))  # notes prepare steps 5 and 10
        text = tiny_tok.decode(tr.prompt_ids + tr.completion_ids, skip_special_tokens=True)
        assert text.count("|\ngoal:") == 2


@pytest.mark.parametrize("reflect", [False, True])
def test_kv_cached_multi_episode_sampling_matches_full_recomputation(room_lm, tiny_tok, reflect):
    task, dist = _room()
    env = text_env_for(task, dist, 3, reflect=reflect)
    out = []
    for use_cache in (True, False):
        agent = LLMAgent(room_lm, tiny_tok, env, SamplingConfig(use_cache=use_cache), record=True)
        res = run_trials(agent, dist, 5, 3, seed=3)
        out.append((res, [t.completion_ids for t in agent.finish()]))
    (a, ta), (b, tb) = out
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert ta == tb  # the same replies, notes and environment tokens
    assert (a.actions != INVALID).float().mean() > 0.5  # the biased LM mostly plays


def test_a_reflecting_teacher_trial_matches_its_chat_template(tiny_tok):
    """Chat: the trial's tokens are the chat template of its messages, notes as assistant turns."""
    env = DarkRoomText(9, 2, 2, chat=True, reflect=True)
    r = TrialRenderer(tiny_tok, env)
    obs = torch.tensor([[4.0, 4.0], [5.0, 4.0], [4.0, 4.0], [5.0, 4.0]])
    tr = r.teacher_trial([4, 0, 4, 0], [1.0, 1.0, 1.0, 1.0], obs, [False] * 4, [False, True, False, True])
    msgs = [{"role": "user", "content": env.prompt(obs[0])[0]["content"]}]
    for t, a in enumerate([4, 0, 4, 0]):
        msgs.append({"role": "assistant", "content": f"Action: {ACTION_WORDS[a]}"})
        if t == 0 or t == 2:
            msgs.append({"role": "user", "content": "Reward 1. You are at (5, 4)."})
        if t == 1:
            msgs.append(
                {"role": "user", "content": env.render_step(obs[2], 0, 1.0, False, True, TrialProgress(2, 2, 1))}
            )
            msgs.append({"role": "assistant", "content": "Goal: 5,4"})
            msgs.append({"role": "user", "content": "Episode 2. You are at (4, 4)."})
    text = tiny_tok.apply_chat_template(msgs, tokenize=False)
    nl = tiny_tok.convert_tokens_to_ids("\n")  # the template closes the last turn with a newline
    assert tr.prompt_ids + tr.completion_ids + [nl] == tiny_tok(text, add_special_tokens=False).input_ids
    notes = [t for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
    assert tiny_tok.decode(notes).count("<|im_end|>") == 5  # four replies and one note


# ---- LaMer's cross-episode return ---------------------------------------------------------------


def _slow_returns(rewards, episode, gamma):
    """G_t = sum_{t' >= t in episode n} r_t' + sum_{m > n} gamma^(m-n) R_m, term by term."""
    N, T = rewards.shape
    out = torch.zeros(N, T, dtype=torch.float64)
    for i in range(N):
        eps = episode[i].tolist()
        R = {}
        for t in range(T):
            R[eps[t]] = R.get(eps[t], 0.0) + float(rewards[i, t])
        for t in range(T):
            n = eps[t]
            within = sum(float(rewards[i, u]) for u in range(t, T) if eps[u] == n)
            later = sum(gamma ** (m - n) * R[m] for m in R if m > n)
            out[i, t] = within + later
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.6, 1.0])
def test_cross_episode_returns_match_the_definition(gamma):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 12, generator=g)
    episode = torch.tensor([[0] * 4 + [1] * 4 + [2] * 4] * 3 + [[0] * 2 + [1] * 7 + [2] * 3] * 3)
    torch.testing.assert_close(cross_episode_returns(rewards, episode, gamma), _slow_returns(rewards, episode, gamma))
    if gamma == 1.0:  # the whole rest of the trial: the plain reward-to-go
        rtg = rewards.double().flip(1).cumsum(1).flip(1)
        torch.testing.assert_close(cross_episode_returns(rewards, episode, gamma), rtg)


def test_cross_episode_advantages_are_baselined_within_each_group_and_step():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(8, 6, generator=g)
    episode = torch.tensor([[0, 0, 0, 1, 1, 1]] * 8)
    adv = cross_episode_advantages(rewards, episode, 0.5, num_generations=4, scale="none")
    G = _slow_returns(rewards, episode, 0.5)
    ref = (G.view(2, 4, 6) - G.view(2, 4, 6).mean(1, keepdim=True)).view(8, 6)
    torch.testing.assert_close(adv, ref.float())
    scaled = cross_episode_advantages(rewards, episode, 0.5, num_generations=4, scale="group")
    torch.testing.assert_close(scaled.view(2, 4, 6).std(1), torch.ones(2, 6), atol=1e-3, rtol=1e-3)
    same = cross_episode_advantages(torch.ones(4, 6), episode[:4], 0.5, num_generations=4)
    assert torch.equal(same, torch.zeros(4, 6))  # equal trials: no signal
    with pytest.raises(ValueError, match="groups"):
        cross_episode_advantages(rewards[:6], episode[:6], 0.5, num_generations=4)
    toks = token_advantages(torch.tensor([[1.0, 2.0, 3.0]]), [[-1, 0, -1, 1, 1, -1, 2, -1]])
    assert toks == [[0.0, 1.0, 0.0, 2.0, 2.0, 0.0, 3.0, 0.0]]


def test_grpo_with_the_cross_episode_return_and_reflections_trains(tiny_tok, tmp_path):
    """One GRPO step with per-token (cross-episode) advantages on reflecting Dark Room trials
    changes the weights; the config refuses a discount outside [0, 1]."""
    from mrl_llm.models import TinyLMConfig, build_tiny_model
    from mrl_llm.train.grpo import GRPOStageConfig, build_grpo_trainer

    with pytest.raises(ValueError, match="cross_episode_discount"):
        GRPOStageConfig(cross_episode_discount=1.5)
    # a 2x2 room whose goal is the start cell: an untrained LM's trials differ in reward (it mostly
    # stays, on the goal; a valid move leaves it)
    task, dist = _room(episodes_per_trial=2, episode_length=3, size=2, start="corner", goal_at_start=True)
    dist.sample_tasks = lambda n, generator: GridTasks(goal=torch.zeros(n, 2, dtype=torch.long))
    env = text_env_for(task, dist, 2, reflect=True)
    model = build_tiny_model(TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tiny_tok)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = GRPOStageConfig(
        max_steps=1,
        num_generations=4,
        tasks_per_step=4,
        save_steps=10,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        cross_episode_discount=0.5,
    )
    trainer = build_grpo_trainer(model, tiny_tok, dist, env, cfg, SamplingConfig(), 2, tmp_path)
    assert type(trainer).__name__ == "TrialGRPOTrainer"
    trainer.train()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


def test_sft_on_learning_histories_renders_every_kth_episode_of_the_teachers_run(tiny_tok):
    """sft.subsample = k: the transcript of a task is the teacher's k x E-episode run with episodes
    0, k, 2k, ... kept (AD's learning histories), the replies exactly that run's actions."""
    from classic import seeding
    from classic.rollout import rollout
    from mrl_llm.train.sft import teacher_transcripts

    task, dist = _room(episode_length=4)
    env = text_env_for(task, dist, 3)
    make = lambda: AGENTS.get("Q-learning")().make(dist, 9)  # noqa: E731
    trs = teacher_transcripts(make(), dist, TrialRenderer(tiny_tok, env), 5, 3, seed=0, subsample=3)
    g = seeding.generator("sft", 0)  # the stream teacher_transcripts draws from
    traj = rollout(make(), dist, dist.sample_tasks(5, g), 9, g)
    kept = traj.episode[:, 0] % 3 == 0
    for b, tr in enumerate(trs):
        replies = [int(tiny_tok.decode([t])) for t, m in zip(tr.completion_ids, tr.env_mask) if m == 1]
        assert replies == traj.actions[kept, b].tolist()
        text = tiny_tok.decode(tr.completion_ids, skip_special_tokens=True)
        assert text.count("|\n") == 2  # three kept episodes


def test_note_noise_replaces_context_notes_with_other_trials_and_trains_only_the_teachers():
    """sft.note_noise = p: a replaced note is another trial's note after the same episode, differs
    from the teacher's, is not trained on (env_mask 0); every other token, and every kept note, is
    the noiseless transcript's; p = 0 is the noiseless transcripts exactly."""
    from mrl_llm.models import build_tiny_tokenizer
    from mrl_llm.train.sft import teacher_transcripts

    tok = build_tiny_tokenizer()
    task, dist = _room(episodes_per_trial=6, episode_length=12)
    env = text_env_for(task, dist, 6, reflect=True)
    r = TrialRenderer(tok, env)
    make = lambda: AGENTS.get("Systematic search")().make(dist, 6)  # noqa: E731
    clean = teacher_transcripts(make(), dist, r, 24, 6, seed=0)
    same = teacher_transcripts(make(), dist, r, 24, 6, seed=0, note_noise=0.0)
    noisy = teacher_transcripts(make(), dist, r, 24, 6, seed=0, note_noise=0.5)
    nl = tok.convert_tokens_to_ids("\n")
    goal = tok.convert_tokens_to_ids("goal")

    def notes(tr):  # (text, trained) of each note: the tokens after "goal", ":" up to the newline
        ids, out = tr.completion_ids, []
        for i, t in enumerate(ids):
            if t == goal:
                j = ids.index(nl, i + 2)
                out.append((tok.decode(ids[i + 2 : j + 1]), tr.env_mask[i + 2]))
        return out

    def replies(tr):  # the trained tokens outside the notes
        ids, m, out, i = tr.completion_ids, tr.env_mask, [], 0
        while i < len(ids):
            if ids[i] == goal:
                i = ids.index(nl, i + 2) + 1
                continue
            out += [ids[i]] if m[i] else []
            i += 1
        return out

    replaced = kept = 0
    all_notes = [[n for n, _ in notes(tr)] for tr in clean]
    for c, s, n in zip(clean, same, noisy):
        assert (s.completion_ids, s.env_mask) == (c.completion_ids, c.env_mask)
        assert len(notes(c)) == len(notes(n)) == 5
        for e, ((truth, trained_c), (note, trained_n)) in enumerate(zip(notes(c), notes(n))):
            assert trained_c == 1
            if trained_n:
                assert note == truth
                kept += 1
            else:
                assert note != truth and note in [a[e] for a in all_notes]
                replaced += 1
        # the replies (and what the environment wrote) are untouched, and still the only trained tokens besides notes
        strip = lambda tr: re.sub(r"goal:[^\n]*\n", "", tok.decode(tr.completion_ids))  # noqa: E731
        assert strip(n) == strip(c)
        assert replies(n) == replies(c)
    assert replaced > 20 and kept > 20
    with pytest.raises(ValueError, match="note_noise"):
        teacher_transcripts(make(), dist, r, 2, 6, seed=0, note_noise=1.5)


def test_note_noise_without_reflection_is_a_recipe_error_naming_the_file():
    from pathlib import Path

    from classic.experiments.compare import CompareExperiment
    from classic.config import RecipeError, load_recipe

    recipe = str(Path(__file__).resolve().parents[1] / "recipes/llm/darkroom_icrl_tiny.yaml")
    with pytest.raises(
        RecipeError, match=r"darkroom_icrl_tiny.yaml: invalid 'learners\[0\]': sft.note_noise .* reflection"
    ):
        load_recipe(CompareExperiment, recipe, ["learners.llm.reflection=false", "learners.llm.sft.note_noise=0.3"])
    with pytest.raises(RecipeError, match=r"note_noise must be in \[0, 1\]"):
        load_recipe(CompareExperiment, recipe, ["learners.llm.sft.note_noise=2"])
    with pytest.raises(
        RecipeError, match=r"darkroom_icrl_tiny.yaml: invalid 'learners\[0\]': sft.note_weight .* reflection"
    ):
        load_recipe(CompareExperiment, recipe, ["learners.llm.reflection=false", "learners.llm.sft.note_weight=5"])
    with pytest.raises(RecipeError, match=r"note_weight must be > 0"):
        load_recipe(CompareExperiment, recipe, ["learners.llm.sft.note_weight=0"])


def test_note_weight_weighs_exactly_the_teacher_notes_and_trains(tmp_path, tiny_tok):
    """sft.note_weight: the loss_weights column is the weight on every note token (the tokens the
    teacher writes after the cue, up to its newline) and 1 on every other token; SFT on it runs
    through the weighted loss (parameters change, a different path from the unweighted run)."""
    from mrl_llm.models import TinyLMConfig, build_tiny_model
    from mrl_llm.train.sft import SFTStageConfig, distillation_dataset, run_sft, teacher_transcripts

    task, dist = _room(episodes_per_trial=4, episode_length=8)
    r = TrialRenderer(tiny_tok, text_env_for(task, dist, 4, reflect=True))
    trs = teacher_transcripts(AGENTS.get("Systematic search")().make(dist, 4), dist, r, 16, 4, seed=0)
    assert "loss_weights" not in distillation_dataset(trs).column_names  # 1.0: TRL's loss as is
    ds = distillation_dataset(trs, note_weight=4.0)
    goal, colon, nl = (tiny_tok.convert_tokens_to_ids(t) for t in ("goal", ":", "\n"))
    for tr, row in zip(trs, ds):
        ids, w = row["input_ids"], row["loss_weights"]
        P = len(tr.prompt_ids)
        expected = [1.0] * len(ids)
        for i in range(P, len(ids) - 1):
            if ids[i] == goal and ids[i + 1] == colon:
                j = ids.index(nl, i + 2)
                expected[i + 2 : j + 1] = [4.0] * (j - i - 1)
        assert w == expected
        assert sum(x == 4.0 for x in w) >= 3 * 2  # three notes of >= 2 tokens
        assert all(m for m, x in zip(row["completion_mask"], w) if x == 4.0)  # notes are trained tokens
    params, first_loss = [], []
    for weight in (1.0, 4.0):
        model = build_tiny_model(
            TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=0
        )
        start = [p.detach().clone() for p in model.parameters()]
        cfg = SFTStageConfig(
            num_trials=16, num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1, note_weight=weight
        )
        trainer = run_sft(model, tiny_tok, distillation_dataset(trs, weight), cfg, tmp_path / str(weight), use_cpu=True)
        assert sum(float((p.detach() - q).abs().sum()) for p, q in zip(trainer.model.parameters(), start)) > 0
        params.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
        first_loss.append(next(h["loss"] for h in trainer.state.log_history if "loss" in h))
    assert not torch.allclose(params[0], params[1])
    assert first_loss[1] > 1.2 * first_loss[0]  # same model and batch: the notes' loss counted 4 times
    with pytest.raises(ValueError, match="reflection_mask"):
        from mrl_llm.rollout.agent import Transcript

        distillation_dataset([Transcript(prompt_ids=[1], completion_ids=[2, 3], env_mask=[1, 1])], note_weight=2.0)
