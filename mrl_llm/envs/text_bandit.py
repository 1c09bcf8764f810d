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

import re
import unicodedata
from dataclasses import dataclass

INVALID = -1
# "Arm: 3", "arm 4", "Arm #1", "arm number 2", "ARM=0" (the last match in a reply counts). The same
# language and matches as r"arm\s*(?:number\s*)?[:#=]?\s*(-?\d+)", written so that no two "\s*"
# can share a run of whitespace (there "\s*[:#=]?\s*" split a run in every possible way:
# quadratic in the whitespace after an "arm"). Here every "\s*" is followed by a character it
# cannot match, so a failing attempt gives each whitespace character back once: linear time.
_ARM_RE = re.compile(r"arm\s*(?:number\s*)?(?:[:#=]\s*)?(-?\d+)", re.IGNORECASE)


def _arm_number(digits: str, num_arms: int) -> int:
    """``int(digits)`` if it is an arm index in [0, num_arms), else ``INVALID``.

    ``digits`` is an optional ``-`` and decimal digits (``\\d``: any Unicode decimal digit, as
    ``int`` reads them), of any length: ``int`` of more than 4300 digits raises ValueError, so
    leading zeros are dropped and a number with more digits than ``num_arms`` is rejected first.
    """
    sign = digits[:1] == "-"
    body = digits[1:] if sign else digits
    significant = body.lstrip("0")
    if len(significant) > len(str(num_arms)):  # maybe other scripts' zeros ("\u0660"): skip them too
        first = next((i for i, c in enumerate(significant) if unicodedata.decimal(c)), len(significant))
        significant = significant[first:]
        if len(significant) > len(str(num_arms)):
            return INVALID
    arm = int(significant or "0")
    arm = -arm if sign else arm
    return arm if 0 <= arm < num_arms else INVALID


def _whole_int(text: str) -> str | None:
    """The integer of a reply that is only an integer: ``text`` matches
    ``\\s*(-?\\d+)\\s*\\.?\\s*`` in full (``" 3"``, ``"4\\n"``, ``"2."``, ``"-1 ."``); else None.

    Linear time (the regex form took over 10 s on ``"3" + " " * 50000 + "x"``): strip the
    whitespace (``str.strip`` and ``\\s`` agree on what whitespace is), one final ``.`` and the
    whitespace before it; what is left must be ``-?\\d+`` (``str.isdecimal`` is ``\\d``).
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1].rstrip()
    digits = body[1:] if body.startswith("-") else body
    return body if digits.isdecimal() else None


@dataclass(frozen=True)
class BanditText:
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

    def prompt(self) -> str | list[dict]:
        """The prompt as GRPO datasets hold it: a string (plain) or a message list (chat)."""
        if self.chat:
            return [{"role": "user", "content": self.instructions()}]
        return self.instructions()

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
        m = None
        if self.chat:
            last = None
            for last in _ARM_RE.finditer(text):
                pass
            if last is not None:
                m = last.group(1)
        if m is None:
            m = _whole_int(text)
        if m is None:
            return INVALID
        return _arm_number(m, self.num_arms)

    def format_action(self, arm: int) -> str:
        """The canonical reply for pulling ``arm`` (what a teacher's transcript contains)."""
        return f"Arm: {arm}" if self.chat else str(arm)

    # ---- environment feedback -----------------------------------------------------------------
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
