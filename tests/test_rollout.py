"""The one trial loop (classic.rollout) against the two loops it replaced, and its invariants.

The references below are the evaluator's and RL²'s loops as they were before the platform step
(commit 17ead12), kept verbatim apart from the agent call: the new loop must give the same
actions and rewards for the same seed on bandits and tabular MDPs.
"""

from __future__ import annotations

import torch

from classic.agents.bandit import ThompsonSamplingAgent, UCB1Agent
from classic.agents.mdp import make_mdp_baseline
from classic.algos.rl2 import RL2Agent, RL2Policy, collect_trials, sample_actions
from classic.core import ActOutput, Box, Discrete, Step, TaskDistribution
from classic.envs.bandit import BernoulliBandit
from classic.envs.tabular_mdp import TabularMDP
from classic.evaluate import run_trials
from classic.report import adaptation_curve
from classic.rollout import rollout


def _old_run_chunk(agent, dist, tasks, episodes_per_trial, g):
    """classic/evaluate.py:_run_chunk at 17ead12."""
    n = int(next(iter(tasks)).shape[0])
    H = dist.episode_length
    agent.reset(n, g)
    prev_action = torch.full((n,), -1, dtype=torch.long)
    prev_reward = torch.zeros(n)
    done = torch.ones(n, dtype=torch.bool)
    rewards = torch.zeros(n, episodes_per_trial * H)
    actions = torch.zeros(n, episodes_per_trial * H, dtype=torch.long)
    with torch.no_grad():
        for e in range(episodes_per_trial):
            state, obs = dist.reset(tasks, g)
            alive = torch.ones(n, dtype=torch.bool)
            for h in range(H):
                action = agent.act(obs, prev_action, prev_reward, done, torch.zeros_like(done)).long()
                step = dist.step(tasks, state, action, g)
                r = step.reward * alive
                rewards[:, e * H + h] = r
                actions[:, e * H + h] = torch.where(alive, action, torch.full_like(action, -2))
                done = step.terminated | step.truncated
                prev_action = torch.where(dist.valid(action), action, torch.full_like(action, -1))
                prev_reward = step.reward
                obs, state = step.obs, step.state
                alive = alive & ~done
                if not bool(alive.any()):
                    break
            done = torch.ones(n, dtype=torch.bool)
    return rewards, actions


@torch.no_grad()
def _old_collect_trials(policy, dist, tasks, episodes_per_trial, generator):
    """classic/algos/rl2.py:collect_trials at 17ead12 (actions, log-probs, values, rewards)."""
    n = int(next(iter(tasks)).shape[0])
    h = policy.initial_state(n)
    prev_action = torch.full((n,), -1, dtype=torch.long)
    prev_reward = torch.zeros(n)
    done = torch.ones(n, dtype=torch.bool)
    prev_obs = None
    rows = []
    for _ in range(episodes_per_trial):
        state, obs = dist.reset(tasks, generator)
        alive = torch.ones(n, dtype=torch.bool)
        for _ in range(dist.episode_length):
            x = policy.encode(obs, prev_action, prev_reward, done, prev_obs)
            logits, value, h = policy(x.unsqueeze(0), h)
            logits, value = logits[0], value[0]
            action = sample_actions(logits, generator)
            logprob = torch.log_softmax(logits, dim=-1).gather(1, action.unsqueeze(1)).squeeze(1)
            step = dist.step(tasks, state, action, generator)
            rows.append((action, logprob, value, step.reward * alive))
            done = step.terminated | step.truncated
            prev_action, prev_reward, prev_obs = action, step.reward, obs
            obs, state = step.obs, step.state
            alive = alive & ~done
    return [torch.stack(c) for c in zip(*rows)]


def _pair(dist, agent_factory, episodes, seed=3, n=40):
    tasks = dist.sample_tasks(n, torch.Generator().manual_seed(seed))
    old_r, old_a = _old_run_chunk(agent_factory(), dist, tasks, episodes, torch.Generator().manual_seed(seed + 1))
    traj = rollout(agent_factory(), dist, tasks, episodes, torch.Generator().manual_seed(seed + 1))
    return old_r, old_a, traj


def test_same_actions_and_rewards_as_the_old_evaluator_on_bandits():
    dist = BernoulliBandit(5)
    for factory in (lambda: UCB1Agent(5, c=0.2), lambda: ThompsonSamplingAgent(5)):
        old_r, old_a, traj = _pair(dist, factory, episodes=30)
        assert torch.equal(traj.actions.T, old_a)
        assert torch.equal(traj.rewards.T, old_r)


def test_same_actions_and_rewards_as_the_old_evaluator_on_mdps():
    dist = TabularMDP(num_states=4, num_actions=3, episode_length=5)
    for name in ("PSRL", "UCRL2", "Random"):
        old_r, old_a, traj = _pair(dist, lambda: make_mdp_baseline(name, 4, 3, 5), episodes=6)
        assert torch.equal(traj.actions.T, old_a), name
        assert torch.equal(traj.rewards.T, old_r), name


def test_same_actions_and_rewards_as_the_old_rl2_loop():
    for dist in (BernoulliBandit(4), TabularMDP(num_states=3, num_actions=2, episode_length=4)):
        policy = RL2Policy(dist.num_actions, dist.obs_dim, 8, True, generator=torch.Generator().manual_seed(0))
        tasks = dist.sample_tasks(16, torch.Generator().manual_seed(1))
        actions, logprobs, values, rewards = _old_collect_trials(
            policy, dist, tasks, 5, torch.Generator().manual_seed(2)
        )
        batch = collect_trials(policy, dist, tasks, 5, torch.Generator().manual_seed(2))
        assert torch.equal(batch.actions, actions)
        assert torch.equal(batch.rewards, rewards)
        torch.testing.assert_close(batch.logprobs, logprobs)
        torch.testing.assert_close(batch.values, values)
        assert batch.dones[-1].all() and not batch.dones[:-1].any()


def test_evaluation_of_rl2_matches_its_training_loop():
    """The agent the evaluator plays and the collecting agent see the same inputs: same actions."""
    dist = TabularMDP(num_states=3, num_actions=2, episode_length=4)
    policy = RL2Policy(2, 3, 8, True, generator=torch.Generator().manual_seed(0))
    tasks = dist.sample_tasks(8, torch.Generator().manual_seed(1))
    batch = collect_trials(policy, dist, tasks, 3, torch.Generator().manual_seed(5))
    traj = rollout(RL2Agent(policy), dist, tasks, 3, torch.Generator().manual_seed(5))
    assert torch.equal(batch.actions, traj.actions)


class _Corridor(TaskDistribution):
    """A 1-D walk toward a goal at distance d (the task); terminates on reaching it; Box actions."""

    episode_length = 6
    action_space = Box(-1.0, 1.0, (1,))
    observation_space = Box(-10.0, 10.0, (1,))

    def sample_tasks(self, n, generator):
        return (torch.randint(1, 4, (n,), generator=generator).float(),)

    def reset(self, tasks, generator):
        n = tasks[0].shape[0]
        return (torch.zeros(n), torch.zeros(n, dtype=torch.long)), torch.zeros(n, 1)

    def step(self, tasks, state, action, generator):
        pos, t = state
        pos = pos + self.action_space.clip(action)[:, 0]
        t = t + 1
        term = pos >= tasks[0]
        return Step(pos.unsqueeze(1), -torch.ones_like(pos), term, (t >= self.episode_length) & ~term, (pos, t))


class _Push:
    name = "push"

    def __init__(self, speed):
        self.speed = speed

    def reset(self, num_tasks, generator):
        self.seen = []

    def act(self, obs, prev_action, prev_reward, terminated, truncated):
        self.seen.append((prev_action.clone(), terminated.clone(), truncated.clone()))
        return ActOutput(torch.full((obs.shape[0], 1), self.speed), {"obs": obs[:, 0]})


def test_auto_reset_early_termination_and_padding():
    dist = _Corridor()
    tasks = (torch.tensor([1.0, 3.0]),)
    agent = _Push(5.0)  # clipped to 1: task 0 ends each episode in 1 step, task 1 in 3
    traj = rollout(agent, dist, tasks, 2, torch.Generator().manual_seed(0))
    assert traj.rewards.shape == (6, 2)
    assert traj.valid[:, 0].tolist() == [True, True, False, False, False, False]
    assert traj.valid[:, 1].all()
    assert traj.episode[:, 1].tolist() == [0, 0, 0, 1, 1, 1]
    assert traj.step[:, 1].tolist() == [0, 1, 2, 0, 1, 2]
    assert traj.rewards[:, 0].tolist() == [-1, -1, 0, 0, 0, 0]  # padding scores nothing
    assert traj.info["obs"][:, 1].tolist() == [0, 1, 2, 0, 1, 2]  # reset to the start after termination
    assert traj.prev_terminated[1].tolist() == [True, False] and traj.prev_truncated[0].all()
    assert torch.equal(agent.seen[1][0], torch.ones(2, 1))  # the previous Box action, as clipped


def test_run_trials_on_box_actions_and_nan_regret_without_oracle():
    res = run_trials(_Push(0.5), _Corridor(), num_tasks=4, episodes_per_trial=3, seed=0, keep_trajectories=True)
    assert res.actions.shape == (4, 18, 1) and res.actions.dtype == torch.float32
    assert torch.isnan(res.regret).all()  # the distribution has no optimal_episode_return
    assert res.invalid_rate == 0.0
    assert res.trajectories and res.trajectories[0].obs.shape[1] == 4
    assert len(adaptation_curve(res)["mean"]) == 3


def test_gradients_only_for_agents_that_adapt_by_gradient():
    dist = BernoulliBandit(3)
    tasks = dist.sample_tasks(2, torch.Generator().manual_seed(0))

    class Probe:
        name = "probe"

        def __init__(self, adapts):
            self.adapts_by_gradient = adapts

        def reset(self, num_tasks, generator):
            self.grad = []

        def act(self, obs, prev_action, prev_reward, terminated, truncated):
            self.grad.append(torch.is_grad_enabled())
            return torch.zeros(obs.shape[0], dtype=torch.long)

    for adapts in (False, True):
        probe = Probe(adapts)
        rollout(probe, dist, tasks, 2, torch.Generator())
        assert probe.grad == [adapts, adapts]


def test_spaces():
    assert Discrete(3).encode(torch.tensor([0, 2, -1, 7])).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]]
    box = Box(-0.1, 0.1, (2,))
    assert torch.equal(box.clip(torch.tensor([[5.0, float("nan")]])), torch.tensor([[0.1, 0.0]]))
    assert box.contains(torch.tensor([[0.05, 0.0], [0.2, 0.0]])).tolist() == [True, False]
