"""GridNavi (VariBAD, arXiv 1910.08348): dynamics, oracle, exact Bayes-optimal returns."""

import functools
import itertools
from fractions import Fraction

import pytest
import torch

from classic.core import TaskDistribution
from classic.envs.gridnavi import (
    GridNavi,
    GridNaviConfig,
    GridNaviState,
    GridNaviTasks,
    bayes_optimal_search,
    goal_cells,
)
from classic.registry import TASKS


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_config_registry_and_validation():
    assert TASKS.get("gridnavi") is GridNaviConfig
    cfg = GridNaviConfig()
    dist = cfg.make()
    assert isinstance(dist, TaskDistribution)
    assert (dist.size, dist.episode_length, dist.action_space.n, dist.obs_dim) == (5, 15, 5, 2)
    assert (dist.observation_space.low, dist.observation_space.high) == (0.0, 4.0)
    assert cfg.episodes_per_trial == 4 and "21 goals" in cfg.describe() and "5x5" in cfg.describe(short=True)
    for field, bad in [("size", 2), ("episode_length", 0), ("episodes_per_trial", 0), ("goal_reward", -0.1)]:
        with pytest.raises(ValueError, match=field):
            GridNaviConfig(**{field: bad})


def test_goals_never_at_start_or_its_neighbours():
    dist = GridNavi()
    cells = set(goal_cells(5))
    assert len(cells) == 21 and not cells & {(0, 0), (0, 1), (1, 0), (1, 1)}
    tasks = dist.sample_tasks(5000, _gen(1))
    assert isinstance(tasks, GridNaviTasks) and tasks.goal.shape == (5000, 2) and tasks.goal.dtype == torch.long
    drawn = {tuple(g) for g in tasks.goal.tolist()}
    assert drawn == cells  # every candidate drawn, nothing else
    counts = torch.tensor([sum(1 for g in tasks.goal.tolist() if tuple(g) == c) for c in sorted(cells)]).float()
    assert float((counts / 5000 - 1 / 21).abs().max()) < 0.02


def test_reset_step_rewards_and_moves():
    dist = GridNavi()
    tasks = GridNaviTasks(goal=torch.tensor([[2, 0]] * 6))
    state, obs = dist.reset(tasks, _gen())
    assert isinstance(state, GridNaviState) and all(f.shape[0] == 6 for f in state)
    assert torch.equal(obs, torch.zeros(6, 2))
    step = dist.step(tasks, state, torch.tensor([0, 1, 2, 3, 4, -1]), _gen())
    assert step.obs.tolist() == [[0, 0], [0, 1], [1, 0], [0, 0], [0, 0], [0, 0]]  # up y+1, right x+1, walls clip
    assert step.reward.tolist() == pytest.approx([-0.1] * 6)
    step2 = dist.step(tasks, step.state, torch.tensor([2, 2, 2, 2, 2, 2]), _gen())
    assert step2.reward.tolist() == pytest.approx([-0.1, -0.1, 1.0, -0.1, -0.1, -0.1])
    # staying on the goal keeps paying; leaving it does not
    step3 = dist.step(tasks, step2.state, torch.tensor([0, 0, 0, 0, 0, 0]), _gen())
    assert step3.reward[2] == pytest.approx(1.0)
    step4 = dist.step(tasks, step3.state, torch.tensor([1] * 6), _gen())
    assert step4.reward[2] == pytest.approx(-0.1)
    # mean_reward is the reward the step gives
    assert torch.equal(dist.mean_reward(tasks, step.state, torch.tensor([2] * 6)), step2.reward)


def test_invalid_actions_are_noop():
    dist = GridNavi()
    tasks = dist.sample_tasks(4, _gen(2))
    state = GridNaviState(pos=torch.tensor([[2, 2], [3, 1], [0, 4], [1, 1]]), t=torch.zeros(4, dtype=torch.long))
    for bad in (-1, 5, 17, -100):
        a = torch.full((4,), bad)
        s_bad = dist.step(tasks, state, a, _gen())
        s_noop = dist.step(tasks, state, torch.zeros(4, dtype=torch.long), _gen())
        assert torch.equal(s_bad.obs, s_noop.obs) and torch.equal(s_bad.reward, s_noop.reward)
        assert torch.equal(s_bad.state.pos, state.pos)
    assert dist.valid(torch.tensor([-1, 0, 4, 5])).tolist() == [False, True, True, False]


def test_truncation_at_H_never_terminated():
    dist = GridNavi(episode_length=7)
    tasks = GridNaviTasks(goal=torch.tensor([[1, 2], [4, 4]]))
    state, _ = dist.reset(tasks, _gen())
    for t in range(1, 8):
        step = dist.step(tasks, state, torch.tensor([1, 2]), _gen())
        assert not step.terminated.any()
        assert step.truncated.tolist() == [t == 7] * 2
        state = step.state
    assert state.t.tolist() == [7, 7]


def test_batch_invariance():
    """The same task gives the same rewards alone and inside a batch of many."""
    dist = GridNavi()
    g = _gen(3)
    tasks = dist.sample_tasks(64, g)
    actions = torch.randint(-1, 6, (15, 64), generator=g)
    state, _ = dist.reset(tasks, g)
    big = []
    for a in actions:
        step = dist.step(tasks, state, a, g)
        big.append(step.reward)
        state = step.state
    big = torch.stack(big)
    for i in (0, 17, 63):
        sub = GridNaviTasks(goal=tasks.goal[i : i + 1])
        state, _ = dist.reset(sub, g)
        for t, a in enumerate(actions[:, i : i + 1]):
            step = dist.step(sub, state, a, g)
            assert torch.equal(step.reward, big[t, i : i + 1])
            state = step.state
        torch.testing.assert_close(dist.optimal_episode_return(sub), dist.optimal_episode_return(tasks)[i : i + 1])


def _play(dist, tasks, plan):
    """Per-episode returns (n, E) of: follow ``plan`` (E, H) until the goal is found, then stay; in
    later episodes go straight to the goal (``plan=None``: know the goal from the start)."""
    n, H = tasks.goal.shape[0], dist.episode_length
    E = 1 if plan is None else plan.shape[0]
    known = torch.full((n,), plan is None)
    out = torch.zeros(n, E, dtype=torch.float64)
    for e in range(E):
        state, _ = dist.reset(tasks, _gen())
        for t in range(H):
            guess = torch.zeros(n, dtype=torch.long) if plan is None else plan[e, t].expand(n)
            a = torch.where(known, dist.optimal_action(tasks, state), guess)
            step = dist.step(tasks, state, a, _gen())
            out[:, e] += step.reward.double()
            known |= step.reward == dist.goal_reward
            state = step.state
    return out


def _all_goals(dist):
    return GridNaviTasks(goal=dist.goals.clone())


def test_oracle_return_equals_greedy_rollout():
    for size, H in [(5, 15), (5, 6), (4, 3), (3, 2)]:
        dist = GridNavi(size=size, episode_length=H)
        tasks = _all_goals(dist)
        got = _play(dist, tasks, None)[:, 0]
        torch.testing.assert_close(dist.optimal_episode_return(tasks).double(), got, rtol=0, atol=1e-5)
    dist = GridNavi()
    tasks = GridNaviTasks(goal=torch.tensor([[4, 4], [2, 0]]))  # d = 8: 7 steps off, 8 on; d = 2: 1 off, 14 on
    assert dist.optimal_episode_return(tasks).tolist() == pytest.approx([-0.7 + 8, -0.1 + 14])


# ---- Bayes-optimal ---------------------------------------------------------------------------

_MOVES = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1), 4: (-1, 0)}


def _brute_force(size, H, E, goal_reward=Fraction(1), step_reward=Fraction(-1, 10)):
    """Exhaustive expectimax over every policy (decision trees over the history of cells and
    rewards), written independently of the module: the belief is the set of candidate goals
    consistent with what was seen, all 5 actions are tried at every node, nothing is closed form.
    Returns the per-episode expected returns (Fractions) of the policy maximizing the trial's
    expected return, ties broken toward earlier episodes (lexicographic on (total, r_1, .., r_E))."""
    cands = [c for c in itertools.product(range(size), repeat=2) if c not in {(0, 0), (0, 1), (1, 0), (1, 1)}]

    @functools.lru_cache(maxsize=None)
    def value(pos, consistent, t, k):
        # summed (not averaged) over the goals in `consistent`: a tuple of E Fractions
        if t == H:
            if k == E - 1:
                return (Fraction(0),) * E
            pos, t, k = (0, 0), 0, k + 1
        best = None
        for a in range(5):
            dx, dy = _MOVES[a]
            nxt = (min(max(pos[0] + dx, 0), size - 1), min(max(pos[1] + dy, 0), size - 1))
            total = [Fraction(0)] * E
            for part in (frozenset(g for g in consistent if g == nxt), frozenset(g for g in consistent if g != nxt)):
                if not part:
                    continue
                r = goal_reward if nxt in part else step_reward
                sub = value(nxt, part, t + 1, k)
                for j in range(E):
                    total[j] += sub[j]
                total[k] += r * len(part)
            key = (sum(total), *total)
            if best is None or key > best[0]:
                best = (key, tuple(total))
        return best[1]

    sums = value((0, 0), frozenset(cands), 0, 0)
    return [s / len(cands) for s in sums]


@pytest.mark.parametrize(
    "size,H,E", [(3, 3, 2), (3, 4, 2), (3, 2, 3), (4, 4, 2), (4, 5, 1), (4, 6, 2), (4, 5, 3), (5, 5, 2)]
)
def test_bayes_optimal_matches_brute_force(size, H, E):
    dist = GridNavi(size=size, episode_length=H)
    want = [float(x) for x in _brute_force(size, H, E)]
    got = dist.bayes_optimal_episode_returns(E)
    assert got.shape == (E,) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_bayes_optimal_plan_achieves_the_values():
    for size, H, E in [(5, 15, 4), (5, 10, 4), (4, 6, 3), (3, 3, 2)]:
        dist = GridNavi(size=size, episode_length=H)
        plan = dist.bayes_optimal_plan(E)
        assert plan.shape == (E, H)
        played = _play(dist, _all_goals(dist), plan).mean(dim=0)  # exact average over the goals
        torch.testing.assert_close(played, dist.bayes_optimal_episode_returns(E), rtol=0, atol=1e-5)


def _sweep(size, H, E):
    """A fixed boustrophedon sweep (up the first column, down the next, ...), the same every episode."""
    acts = []
    for col in range(size):
        acts += [1 if col % 2 == 0 else 3] * (size - 1) + [2]
    acts = (acts + [0] * H)[:H]
    return torch.tensor([acts] * E)


def test_default_values_and_bounds():
    dist = GridNaviConfig().make()
    bayes = dist.bayes_optimal_episode_returns(4)
    # Episode 1: a new candidate at each of steps 2..15 (14 of 21 goals, on the goal 14+13+..+1 = 105
    # goal-steps); then every episode is as good as knowing the goal (240 = sum over goals of 16 - d).
    torch.testing.assert_close(
        bayes, torch.tensor([-1.5 + 1.1 * 105 / 21] + [-1.5 + 1.1 * 240 / 21] * 3, dtype=torch.float64)
    )
    for size, H, E in [(5, 15, 4), (5, 8, 3), (4, 6, 2)]:
        dist = GridNavi(size=size, episode_length=H)
        bayes = dist.bayes_optimal_episode_returns(E)
        goals = _all_goals(dist)
        oracle = dist.optimal_episode_return(goals).double().mean()
        sweep = _play(dist, goals, _sweep(size, H, E)).mean(dim=0)
        assert float(bayes.sum()) >= float(sweep.sum()) - 1e-9
        assert bool((bayes <= oracle + 1e-6).all())
    assert bayes_optimal_search(5, 15, 4) is bayes_optimal_search(5, 15, 4)  # cached per config


def test_bayes_optimal_reward_values_scale():
    """The policy does not depend on the reward values (goal_reward > step_reward): returns are
    H * step_reward + (goal_reward - step_reward) * E[steps on the goal]."""
    a = GridNavi(size=4, episode_length=5).bayes_optimal_episode_returns(2)
    b = GridNavi(size=4, episode_length=5, goal_reward=3.0, step_reward=0.0).bayes_optimal_episode_returns(2)
    steps_on_goal = (a + 0.5) / 1.1
    torch.testing.assert_close(b, 3.0 * steps_on_goal)
    want = [float(x) for x in _brute_force(4, 5, 2, Fraction(3), Fraction(0))]
    assert b.tolist() == pytest.approx(want, abs=1e-12)
