"""The Bernoulli bandit (classic.envs.bandit) rendered as text for an LLM agent.

Two renderings of the same task distribution:

* ``plain`` (the tiny local LM): a header line, then one line per pull, ``"<arm> <reward>\\n"``;
  the model writes the arm, the environment writes `` <reward>\\n``. Example::

      Bernoulli bandit with 5 arms and 100 pulls. Each line is arm then reward.
      3 1
      0 0

* ``chat`` (instruct models): a user message with the rules, then one user message per pull
  with the outcome; the assistant replies ``"Arm: N"``.

Unparseable or out-of-range replies are invalid actions: the environment scores them 0, says so
in the feedback, and the evaluator counts them (``TrialResult.invalid_rate``); nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mrl_llm.envs.text_env import INVALID, TextEnv, TrialProgress, parse_index, register_text_env


@dataclass(frozen=True)
class BanditText(TextEnv):
    """Text rendering of a ``num_arms``-armed Bernoulli bandit trial of ``episodes_per_trial`` pulls.

    Args:
        num_arms: k.
        episodes_per_trial: n, pulls per trial.
        chat: use the conversational rendering (instruct models) instead of the plain one.
    """

    num_arms: int
    episodes_per_trial: int
    chat: bool = False

    # ---- prompt -------------------------------------------------------------------------------
    def instructions(self) -> str:
        """The trial's opening text (plain header line, or the first user message in chat)."""
        k, n = self.num_arms, self.episodes_per_trial
        if not self.chat:
            return f"Bernoulli bandit with {k} arms and {n} pulls. Each line is arm then reward.\n"
        return (
            f"You are playing a multi-armed bandit with {k} arms, numbered 0 to {k - 1}. Each arm pays "
            f"reward 1 with a fixed probability unknown to you, and 0 otherwise. You have {n} pulls; "
            "maximize your total reward, balancing exploring arms and exploiting the best one. "
            "Reply with only your choice, in the form 'Arm: N'. Which arm do you pull first?"
        )

    # ---- actions ------------------------------------------------------------------------------
    def parse_action(self, text: str) -> int:
        """Arm index in [0, num_arms) from the model's reply, or ``INVALID`` (-1).

        Plain: the reply must be exactly an integer (surrounding whitespace and one final ``.``
        allowed). Chat: the last ``Arm: N`` (case-insensitive, ``Arm N``/``arm #N``/``arm number N``
        accepted), else a reply that is only an integer.

        Any string is parsed in time linear in its length and nothing raises: an integer of
        any length out of range (``"1" * 5000``) is ``INVALID``.

        Args:
            text (str): the model's reply.

        Returns:
            int: the arm, or ``INVALID``.
        """
        return parse_index(text, self.num_arms, "arm" if self.chat else None)

    def format_action(self, arm: int) -> str:
        """The canonical reply for pulling ``arm`` (what a teacher's transcript contains)."""
        return f"Arm: {arm}" if self.chat else str(arm)

    # ---- environment feedback -----------------------------------------------------------------
    def render_step(
        self, obs: Tensor, action: int, reward: float, terminated: bool, truncated: bool, progress: TrialProgress
    ) -> str:
        """:meth:`feedback` (a pull is a one-step episode: the observation and the episode
        boundary carry nothing to show)."""
        return self.feedback(action, reward, progress.steps_done, progress.total_reward)

    def feedback(self, action: int, reward: float, pulls_done: int, total_reward: float) -> str:
        """Text the environment writes after the agent's reply.

        Args:
            action: parsed arm, or ``INVALID``.
            reward: reward of that pull (0 for invalid actions).
            pulls_done: pulls taken so far in the trial, including this one.
            total_reward: reward accumulated so far, including this one.
        """
        r = int(round(reward))
        if not self.chat:
            return " invalid\n" if action == INVALID else f" {r}\n"
        left = self.episodes_per_trial - pulls_done
        head = (
            f"Invalid reply: answer 'Arm: N' with N from 0 to {self.num_arms - 1}. Reward 0."
            if action == INVALID
            else f"Arm {action} gave reward {r}."
        )
        tail = f" Total reward {int(round(total_reward))} after {pulls_done} pulls, {left} left."
        return head + tail + (" Which arm next?" if left > 0 else "")


@register_text_env("bandit")
def _bandit_text(task, dist, episodes_per_trial: int, chat: bool) -> BanditText:
    return BanditText(task.num_arms, episodes_per_trial, chat=chat)
