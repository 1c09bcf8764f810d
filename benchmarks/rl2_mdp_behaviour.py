"""Where RL² loses to Greedy on the random tabular MDPs of RL² Table 2: exploration or exploitation.

    python benchmarks/rl2_mdp_behaviour.py --policy runs/rl2_tables/settings/mdp_n25/rl2/policy.pt
        [--n 100] [--tasks 500] [--agents Greedy PSRL] [--windows 0-10 20-30 50-60 90-100]

Runs the saved RL² policy (sampling its actions, as in the tables) and the named MDP baselines
(``classic.agents.mdp``, default hyperparameters) on the same ``--tasks`` held-out tasks of
evaluation seed 0, with trials of ``--n`` episodes, and prints per agent:

- per window of episodes: the mean episode return, the fraction of steps whose action is the
  true MDP's optimal one (finite-horizon value iteration on the true task, at that state and
  step), and the fraction whose action has the highest true mean reward in that state;
- over the whole trial: actions tried per visited state (out of A), and the fraction of visited
  states whose highest-mean-reward action was tried at least once.

A policy that tries the best action as often as Greedy but takes the optimal action less often
late in the trial loses in exploitation (reading its per-(state, action) estimates), not in
exploration.

What it measured (2026-12-03, 2-core CPU, the Table 2 recipe's n=25 policy, n=100, 500 tasks):

=========  ================  ================  ==============  ========================
agent      return/episode    optimal action    actions tried   best action tried
           (eps 0-10 / 90-100)  (0-10 / 90-100)   per state
=========  ================  ================  ==============  ========================
RL²        14.99 / 18.20     0.376 / 0.543     3.40 / 5        0.783
Greedy     15.56 / 19.52     0.406 / 0.618     2.97 / 5        0.727
=========  ================  ================  ==============  ========================

RL² explores more than Greedy (more actions tried, the best one found in more states) and still
takes the optimal action less often at the end (0.543 against 0.618): its gap is exploitation.
A 256-unit GRU, 200 more fine-tuning iterations at n=25, a fine-tune at n=50 and gamma 0.999 or
1 did not close it (README, Table 2).
"""

from __future__ import annotations

import argparse
import sys

import torch

from classic.envs.tabular_mdp import TabularMDP
from classic.evaluate import run_trials, sample_eval_tasks


class _RecordStates:
    """Wraps an agent and records the state index it sees at every step."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.name = getattr(agent, "name", type(agent).__name__)
        self.states: list[torch.Tensor] = []

    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        self.states = []
        self.agent.reset(num_tasks, generator)

    def act(self, obs, prev_action, prev_reward, terminated, truncated):
        self.states.append(obs.argmax(-1))
        return self.agent.act(obs, prev_action, prev_reward, terminated, truncated)

    def __getattr__(self, key):
        return getattr(self.agent, key)


def behaviour(
    agent, dist: TabularMDP, tasks, episodes_per_trial: int, windows: list[tuple[int, int]], seed: int = 0
) -> dict:
    """Exploration and exploitation statistics of one agent on ``tasks``.

    Returns:
        ``{"windows": {"lo-hi": {"return", "optimal", "myopic"}}, "tried_per_state",
        "best_tried"}``: per window of episodes [lo, hi) the mean episode return, the fraction of
        steps taking the true optimal action (finite-horizon, that state and step) and the
        fraction taking the highest-mean-reward action of that state; then actions tried per
        visited state and the fraction of visited states whose best-reward action was tried.
    """
    rec = _RecordStates(agent)
    res = run_trials(rec, dist, tasks=tasks, episodes_per_trial=episodes_per_trial, seed=seed)
    states = torch.stack(rec.states, dim=1)  # (N, T)
    actions = res.actions
    n, steps = states.shape
    horizon = dist.episode_length
    rows = torch.arange(n).unsqueeze(1).expand(n, steps)
    step_in_episode = (torch.arange(steps) % horizon).unsqueeze(0).expand(n, steps)
    episode = torch.arange(steps) // horizon
    optimal = dist.optimal_policy(tasks)  # (N, H, S)
    took_optimal = (actions == optimal[rows, step_in_episode, states]).float()
    best_reward = tasks.mean_rewards.argmax(-1)  # (N, S)
    took_myopic = (actions == best_reward.gather(1, states)).float()
    out = {"windows": {}}
    for lo, hi in windows:
        mask = (episode >= lo) & (episode < hi)
        out["windows"][f"{lo}-{hi}"] = {
            "return": float(res.episode_returns[:, lo:hi].mean()),
            "optimal": float(took_optimal[:, mask].mean()),
            "myopic": float(took_myopic[:, mask].mean()),
        }
    tried = torch.zeros(n, dist.num_states, dist.num_actions, dtype=torch.bool)
    valid = actions >= 0
    tried[rows[valid], states[valid], actions[valid]] = True
    visited = tried.any(-1)
    out["tried_per_state"] = float(tried.sum(-1)[visited].float().mean())
    out["best_tried"] = float(tried.gather(2, best_reward.unsqueeze(-1)).squeeze(-1)[visited].float().mean())
    return out


def _window(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) >= int(hi):
        raise argparse.ArgumentTypeError(f"window {text!r} is not LO-HI with LO < HI (episodes)")
    return int(lo), int(hi)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True, help="a saved RL² policy.pt (RL2Policy.save)")
    p.add_argument("--n", type=int, default=100, help="episodes per trial")
    p.add_argument("--tasks", type=int, default=500, help="held-out tasks (evaluation seed 0)")
    p.add_argument("--agents", nargs="*", default=["Greedy"], help="MDP baselines to compare with")
    p.add_argument("--windows", nargs="*", type=_window, default=None, help="episode windows LO-HI")
    args = p.parse_args(argv)
    from classic.agents.mdp import make_mdp_baseline
    from classic.algos.rl2 import RL2Agent, RL2Policy

    windows = args.windows or [(0, min(10, args.n)), (max(0, args.n - 10), args.n)]
    if any(hi > args.n for _, hi in windows):
        p.error(f"a window ends after episode {args.n}")
    dist = TabularMDP()
    tasks = sample_eval_tasks(dist, args.tasks, 0)
    agents = {"RL²": RL2Agent(RL2Policy.load(args.policy))}
    for name in args.agents:
        agents[name] = make_mdp_baseline(name, dist.num_states, dist.num_actions, dist.episode_length)
    results = {name: behaviour(agent, dist, tasks, args.n, windows) for name, agent in agents.items()}
    labels = [f"{lo}-{hi}" for lo, hi in windows]
    print(
        "| agent | "
        + " | ".join(f"eps {w}: return / optimal / myopic-best" for w in labels)
        + " | tried per state | best tried |"
    )
    print("|---|" + "---:|" * (len(labels) + 2))
    for name, r in results.items():
        cells = [
            f"{r['windows'][w]['return']:.2f} / {r['windows'][w]['optimal']:.3f} / {r['windows'][w]['myopic']:.3f}"
            for w in labels
        ]
        print(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {r['tried_per_state']:.2f} / {dist.num_actions} | {r['best_tried']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
