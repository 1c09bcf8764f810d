"""Dark Room (AD, arXiv 2210.14215; DPT, arXiv 2306.14892): rewards, starts, goal sets and DPT's
held-out split, batching, the known-goal oracle, the registry."""

import pytest
import torch

from classic.config import RecipeError, from_dict, to_dict
from classic.core import Discrete, TaskDistribution
from classic.envs.darkroom import (
    ACTION_NAMES,
    DarkRoom,
    DarkRoomConfig,
    DarkRoomState,
    DarkRoomTasks,
    dpt_goal_split,
    goal_cells,
)
from classic.registry import TASKS

NOOP, UP, DOWN, LEFT, RIGHT = range(5)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tasks(*goals):
    return DarkRoomTasks(goal=torch.tensor(goals, dtype=torch.long))


def _play(dist, tasks, actions):
    """Rewards (T, n) of a fixed action sequence (each (n,) long or an int for every task)."""
    n = tasks.goal.shape[0]
    state, _ = dist.reset(tasks)
    rewards = []
    for a in actions:
        a = torch.full((n,), a) if isinstance(a, int) else a
        step = dist.step(tasks, state, a)
        rewards.append(step.reward)
        state = step.state
    return torch.stack(rewards), state


def test_registry_config_and_presets():
    assert TASKS.get("darkroom") is DarkRoomConfig
    cfg = DarkRoomConfig()
    assert (cfg.size, cfg.episode_length, cfg.episodes_per_trial, cfg.start, cfg.goal_split) == (
        9,
        20,
        10,
        "center",
        "all",
    )
    dist = cfg.make()
    assert isinstance(dist, DarkRoom) and isinstance(dist, TaskDistribution)
    assert dist.action_space == Discrete(5) and dist.obs_dim == 2 and dist.episode_length == 20
    assert len(ACTION_NAMES) == 5 and ACTION_NAMES[0] == "no-op"
    dpt = DarkRoomConfig.dpt()
    assert (dpt.size, dpt.episode_length, dpt.episodes_per_trial, dpt.start, dpt.goal_at_start) == (
        10,
        100,
        40,
        "corner",
        True,
    )
    assert DarkRoomConfig.dpt(goal_split="test").goal_split == "test"
    assert "9x9" in cfg.describe() and "80 goals" in cfg.describe() and "H=20" in cfg.describe(short=True)
    assert "20 goals (test split)" in DarkRoomConfig.dpt(goal_split="test").describe()
    # Recipes: Literal fields are checked, and a config round-trips.
    loaded = from_dict(DarkRoomConfig, {"size": 10, "start": "corner", "goal_split": "test", "episode_length": 100})
    assert loaded == DarkRoomConfig(size=10, start="corner", goal_split="test", episode_length=100)
    assert from_dict(DarkRoomConfig, to_dict(dpt)) == dpt
    with pytest.raises(RecipeError):
        from_dict(DarkRoomConfig, {"start": "middle"})
    for field, bad in [
        ("size", 1),
        ("episode_length", 0),
        ("episodes_per_trial", 0),
        ("start", "middle"),
        ("goal_split", "val"),
    ]:
        with pytest.raises(ValueError, match=field):
            DarkRoomConfig(**{field: bad})


def test_start_positions():
    for cfg, start in [
        (DarkRoomConfig(), (4, 4)),
        (DarkRoomConfig.dpt(), (0, 0)),
        (DarkRoomConfig(size=10), (5, 5)),
        (DarkRoomConfig(start="corner"), (0, 0)),
    ]:
        dist = cfg.make()
        tasks = dist.sample_tasks(5, _gen())
        state, obs = dist.reset(tasks, _gen())
        assert isinstance(state, DarkRoomState)
        assert obs.dtype == torch.float32 and obs.tolist() == [list(map(float, start))] * 5
        assert state.pos.dtype == torch.long and state.pos.tolist() == [list(start)] * 5
        assert state.t.tolist() == [0] * 5
        assert all(f.shape[0] == 5 for f in state)


def test_goals_never_the_start_in_ad_variant():
    dist = DarkRoomConfig().make()
    assert dist.goals.shape == (80, 2) and (4, 4) not in map(tuple, dist.goals.tolist())
    goals = dist.sample_tasks(20000, _gen(1)).goal
    assert goals.dtype == torch.long and bool(((goals >= 0) & (goals <= 8)).all())
    assert not bool((goals == 4).all(dim=-1).any())
    counts = torch.bincount(goals[:, 0] * 9 + goals[:, 1], minlength=81)
    assert counts[40] == 0 and int((counts > 0).sum()) == 80  # every other cell is drawn
    assert counts[counts > 0].float().std() / 250 < 0.15  # ~ uniform, 250 per cell
    # DPT draws over all 100 cells, the start cell included.
    dpt = DarkRoomConfig.dpt().make()
    assert dpt.goals.shape == (100, 2) and [0, 0] in dpt.goals.tolist()


def test_dpt_split_disjoint_covering_and_as_the_reference():
    for size in (9, 10):
        train, test = dpt_goal_split(size)
        cells = {(x, y) for x in range(size) for y in range(size)}
        assert len(train) == int(0.8 * size * size) and len(test) == size * size - len(train)
        assert set(train).isdisjoint(test) and set(train) | set(test) == cells
    # collect_data.py (darkroom_heldout): the cells shuffled by numpy.random.RandomState(0).
    import numpy as np

    goals = np.array([[(j, i) for i in range(10)] for j in range(10)]).reshape(-1, 2)
    np.random.RandomState(seed=0).shuffle(goals)
    assert [tuple(g) for g in goals[80:].tolist()] == list(dpt_goal_split(10)[1])
    assert (3, 7) in dpt_goal_split(10)[1] and (0, 0) in dpt_goal_split(10)[0]
    # Tasks of each split only use its cells; AD's variant still leaves out the centre.
    for split in ("train", "test"):
        dist = DarkRoomConfig.dpt(goal_split=split).make()
        drawn = set(map(tuple, dist.sample_tasks(4000, _gen(2)).goal.tolist()))
        assert drawn == set(goal_cells(10, "corner", split, True))
        assert drawn <= set(dpt_goal_split(10)[0 if split == "train" else 1])
    ad_train = set(goal_cells(9, "center", "train")) | set(goal_cells(9, "center", "test"))
    assert len(ad_train) == 80 and (4, 4) not in ad_train


def test_reward_counting_and_moves():
    dist = DarkRoomConfig().make()  # start (4, 4), H = 20
    # Goal one step right: reward 1 on every step that ends on it.
    rewards, state = _play(dist, _tasks([5, 4]), [RIGHT] + [NOOP] * 19)
    assert rewards.squeeze(1).tolist() == [1.0] * 20 and state.pos.tolist() == [[5, 4]]
    rewards, _ = _play(dist, _tasks([5, 4]), [RIGHT, LEFT, RIGHT, RIGHT, LEFT])
    assert rewards.squeeze(1).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # Each action's move: up is y + 1, down y - 1, left x - 1, right x + 1.
    tasks = _tasks(*[[0, 0]] * 5)
    step = dist.step(tasks, dist.reset(tasks)[0], torch.tensor([NOOP, UP, DOWN, LEFT, RIGHT]))
    assert step.obs.tolist() == [[4.0, 4.0], [4.0, 5.0], [4.0, 3.0], [3.0, 4.0], [5.0, 4.0]]
    # Walls: moves off the grid stay put.
    rewards, state = _play(dist, _tasks([8, 8], [0, 0]), [torch.tensor([UP, DOWN])] * 6)
    assert state.pos.tolist() == [[4, 8], [4, 0]]
    # Goal on the start (DPT): staying earns every step.
    dpt = DarkRoomConfig.dpt().make()
    rewards, _ = _play(dpt, _tasks([0, 0]), [NOOP, LEFT, DOWN, UP, DOWN])
    assert rewards.squeeze(1).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_invalid_actions_are_noops_and_mean_reward():
    dist = DarkRoomConfig().make()
    tasks = _tasks([4, 5], [4, 5], [4, 5], [4, 4 + 1])
    state, _ = dist.reset(tasks)
    state = dist.step(tasks, state, torch.full((4,), UP)).state  # on the goal
    action = torch.tensor([-1, 7, NOOP, DOWN])
    step = dist.step(tasks, state, action)
    assert step.obs.tolist() == [[4.0, 5.0]] * 3 + [[4.0, 4.0]]
    assert step.reward.tolist() == [1.0, 1.0, 1.0, 0.0]
    torch.testing.assert_close(dist.mean_reward(tasks, state, action), step.reward)
    assert dist.valid(action).tolist() == [False, False, True, True]


def test_truncated_at_horizon_never_terminated():
    dist = DarkRoomConfig(episode_length=6).make()
    tasks = dist.sample_tasks(3, _gen())
    state, _ = dist.reset(tasks)
    g = _gen(7)
    for t in range(1, 7):
        step = dist.step(tasks, state, dist.action_space.sample(3, g))
        state = step.state
        assert step.truncated.tolist() == [t == 6] * 3
        assert not bool(step.terminated.any())
        assert state.t.tolist() == [t] * 3


def test_batching_invariance():
    dist = DarkRoomConfig.dpt(episode_length=15).make()
    tasks = dist.sample_tasks(6, _gen(3))
    g = _gen(4)
    actions = [torch.randint(-1, 5, (6,), generator=g) for _ in range(15)]
    rewards, final = _play(dist, tasks, actions)
    for i in range(6):
        sub = DarkRoomTasks(goal=tasks.goal[i : i + 1])
        r, s = _play(dist, sub, [a[i : i + 1] for a in actions])
        torch.testing.assert_close(r, rewards[:, i : i + 1])
        assert s.pos.tolist() == final.pos[i : i + 1].tolist()
        torch.testing.assert_close(dist.optimal_episode_return(sub), dist.optimal_episode_return(tasks)[i : i + 1])


def test_reset_rows_selected_by_where():
    dist = DarkRoomConfig().make()
    tasks = dist.sample_tasks(3, _gen())
    state = dist.step(tasks, dist.reset(tasks)[0], torch.full((3,), RIGHT)).state
    fresh, _ = dist.reset(tasks)
    done = torch.tensor([False, True, False])
    mixed = DarkRoomState(*(torch.where(done.view(-1, *([1] * (f.dim() - 1))), g, f) for f, g in zip(state, fresh)))
    assert mixed.pos.tolist() == [[5, 4], [4, 4], [5, 4]] and mixed.t.tolist() == [1, 0, 1]


def _greedy_return(dist, tasks):
    state, _ = dist.reset(tasks)
    total = torch.zeros(tasks.goal.shape[0])
    for _ in range(dist.episode_length):
        step = dist.step(tasks, state, dist.optimal_action(tasks, state))
        total += step.reward
        state = step.state
    return total


@pytest.mark.parametrize(
    "cfg",
    [
        DarkRoomConfig(),
        DarkRoomConfig.dpt(),
        DarkRoomConfig(episode_length=5),
        DarkRoomConfig.dpt(episode_length=12),
        DarkRoomConfig(size=4, start="corner"),
    ],
)
def test_oracle_equals_greedy_rollout_on_every_goal(cfg):
    dist = cfg.make()
    tasks = DarkRoomTasks(goal=dist.goals.clone())
    oracle = dist.optimal_episode_return(tasks)
    assert oracle.shape == (len(dist.goals),)
    torch.testing.assert_close(oracle, _greedy_return(dist, tasks))
    # Random play never beats it.
    g = _gen(8)
    for _ in range(5):
        rand, _ = _play(dist, tasks, [dist.action_space.sample(len(dist.goals), g) for _ in range(dist.episode_length)])
        assert bool((rand.sum(0) <= oracle).all())


def test_oracle_values():
    ad = DarkRoomConfig().make()
    # H - d + 1 for a goal at Manhattan distance d from the centre; d = 1 .. 8.
    assert ad.optimal_episode_return(_tasks([5, 4], [8, 8], [0, 0], [4, 0])).tolist() == [20.0, 13.0, 13.0, 17.0]
    assert float(ad.optimal_episode_return(DarkRoomTasks(ad.goals)).mean()) == 16.5  # mean d = 4.5
    dpt = DarkRoomConfig.dpt().make()
    assert dpt.optimal_episode_return(_tasks([0, 0], [0, 1], [9, 9])).tolist() == [100.0, 100.0, 83.0]
    short = DarkRoomConfig(episode_length=5).make()
    assert short.optimal_episode_return(_tasks([8, 8], [4, 8], [4, 3])).tolist() == [0.0, 2.0, 5.0]
