"""Dark Room (:mod:`classic.envs.darkroom`) rendered as text for an LLM agent, with optional
reflection between episodes.

Two renderings of the same task distribution:

* ``plain`` (the tiny local LM): a header line, then one line per step, ``"<x><y> <action> <reward>\\n"``
  (the cell as two digits on rooms up to 10x10, ``"x,y"`` beyond); the environment writes the cell
  and a space, the model the action (one digit, 0 stay, 1 up, 2 down, 3 left, 4 right), the
  environment the reward; ``"|\\n"`` closes an episode. Example (9x9 room, start (4, 4))::

      Dark room 9x9 with 5 actions 0 stay 1 up 2 down 3 left 4 right. Each line is x y then action then reward.
      44 4 0
      54 2 1
      53 0 1
      |
      44 ...

  ~5 tokens a step with the tiny tokenizer (the generic :class:`~mrl_llm.envs.text_env.DiscreteText`
  takes ~7: ``"4,4 4 0\\n"``).
* ``chat`` (instruct models): the rules in the first user message, one user message per step
  ("Reward 1. You are at (5, 3)."), replies ``"Action: right"`` (a name or its number).

**Reflection** (``reflect=True``; LaMer, Jiang et al. 2025, arXiv 2512.16848, "in-context policy
adaptation via reflection"): at the end of every episode but the last, the environment asks where
the goal is and the *model* writes a short note before the next episode starts, plain
``"goal:53\\n"`` (the cue ``"goal:"`` is the environment's, ``"53\\n"`` the model's; ``"no\\n"``
while no reward has been seen) or chat ``"Goal: 5,3"`` / ``"Goal: unknown"``. The note is model
text (trained on, ``env_mask`` 1); a teacher's note (:meth:`DarkRoomText.teacher_reflection`) names
the last cell that paid a reward in the trial so far, so SFT teaches the LM to write what it has
learnt where its next episode will read it.

Unparseable replies are invalid actions (the room treats them as "stay"); the evaluator counts
them; nothing raises.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from torch import Tensor

from classic.envs.darkroom import MOVES
from mrl_llm.envs.text_env import (
    INVALID,
    TextEnv,
    TrialProgress,
    _index,
    _whole_int,
    last_group,
    register_text_env,
)

#: Action names by index (classic.envs.darkroom's order); "no-op" is written "stay".
ACTION_WORDS: tuple[str, ...] = ("stay", "up", "down", "left", "right")
_ALIASES = {**{w: i for i, w in enumerate(ACTION_WORDS)}, "no-op": 0, "noop": 0}


@functools.lru_cache(maxsize=1)
def _action_re() -> re.Pattern[str]:
    # "Action: right", "action 4", "ACTION=left": every "\s*" is followed by a character it cannot
    # match, so the scan is linear in the reply's length (see text_env._keyword_re).
    names = "|".join(sorted((re.escape(w) for w in _ALIASES), key=len, reverse=True))
    return re.compile(r"action\s*(?:[:#=]\s*)?(" + names + r"|-?\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class DarkRoomText(TextEnv):
    """Text rendering of a Dark Room trial.

    Args:
        size: the room's side.
        episode_length: H, steps per episode.
        episodes_per_trial: episodes in the trial.
        start: the start cell ``(x, y)``.
        chat: conversational rendering (instruct models) instead of the plain one.
        reflect: the model writes a note on where the goal is after every episode but the last.
        reflection_tokens: most tokens of a note (plain: ``"53\\n"`` is 3 tokens of the tiny
            tokenizer; chat: ``"Goal: 5,3"`` and the end-of-turn token ~8 of Qwen2.5's).

    Raises:
        ValueError: ``reflection_tokens`` < 1 with ``reflect``.
    """

    size: int
    episode_length: int
    episodes_per_trial: int
    start: tuple[int, int] = (4, 4)
    chat: bool = False
    reflect: bool = False
    reflection_tokens: int = 16

    def __post_init__(self) -> None:
        if self.reflect and self.reflection_tokens < 1:
            raise ValueError(f"reflection_tokens must be >= 1, got {self.reflection_tokens}")

    # ---- cells --------------------------------------------------------------------------------
    def cell(self, obs: Tensor) -> str:
        """A cell ``obs`` ((2,) floats ``(x, y)``) as text: ``"53"`` (plain, rooms up to 10x10),
        ``"5,3"`` (plain, larger rooms), ``"(5, 3)"`` (chat)."""
        x, y = (int(round(float(v))) for v in obs.reshape(-1)[:2])
        if self.chat:
            return f"({x}, {y})"
        return f"{x}{y}" if self.size <= 10 else f"{x},{y}"

    # ---- prompt -------------------------------------------------------------------------------
    def instructions(self) -> str:
        k, n, h = self.size, self.episodes_per_trial, self.episode_length
        if not self.chat:
            acts = " ".join(f"{i} {w}" for i, w in enumerate(ACTION_WORDS))
            note = " After each episode write goal then x y or no." if self.reflect else ""
            return f"Dark room {k}x{k} with 5 actions {acts}. Each line is x y then action then reward.{note}\n"
        x0, y0 = self.start
        note = (
            " After each episode but the last you will be asked where the goal is: answer 'Goal: x,y' with the "
            "cell that paid you, or 'Goal: unknown'."
            if self.reflect
            else ""
        )
        return (
            f"You are in a dark {k}x{k} room and see only your own cell (x, y): x from 0 (left) to {k - 1} "
            f"(right), y from 0 (bottom) to {k - 1} (top). One cell, the same in every episode, is the goal: "
            "every step that ends on it pays reward 1, every other step pays 0. "
            f"You play {n} episodes of {h} steps, each starting at ({x0}, {y0}); use what earlier episodes "
            "taught you to collect as much reward as you can. Actions: stay, up (y + 1), down (y - 1), "
            f"left (x - 1), right (x + 1); walls stop you.{note} Reply with only 'Action: <name>'."
        )

    def render_reset(self, obs: Tensor) -> str:
        return f"{self.cell(obs)} " if not self.chat else f"Episode 1. You are at {self.cell(obs)}."

    # ---- environment feedback -----------------------------------------------------------------
    def render_step(
        self, obs: Tensor, action: int, reward: float, terminated: bool, truncated: bool, progress: TrialProgress
    ) -> str:
        ended = terminated or truncated
        more = progress.episodes_done < self.episodes_per_trial
        reflecting = ended and more and self.reflect
        if not self.chat:
            head = " invalid" if action == INVALID else ""
            text = f"{head} {reward:g}\n" + ("|\n" if ended else "")
            if reflecting:
                return text + "goal:"  # ":" only ever precedes a note ("xy " precedes an action)
            return text + (f"{self.cell(obs)} " if more else "")
        head = (
            "Invalid reply: answer 'Action: <name>' with stay, up, down, left or right. " if action == INVALID else ""
        )
        text = f"{head}Reward {reward:g}."
        if not ended:
            return f"{text} You are at {self.cell(obs)}."
        text += f" Episode {progress.episodes_done} ended."
        if reflecting:
            return f"{text} Where is the goal? Answer 'Goal: x,y' or 'Goal: unknown'."
        return f"{text} {self.render_next_episode(obs, progress.episodes_done + 1)}" if more else text

    def render_next_episode(self, obs: Tensor, episode: int) -> str:
        """The next episode's opening after a reflection: episode ``episode`` (1-based) starts at ``obs``."""
        return f"{self.cell(obs)} " if not self.chat else f"Episode {episode}. You are at {self.cell(obs)}."

    # ---- actions ------------------------------------------------------------------------------
    def parse_action(self, text: str) -> int:
        """The action in a reply, or :data:`INVALID`; never raises, linear time.

        Plain: the reply must be exactly a digit 0-4 (whitespace and one final ``.`` allowed). Chat:
        the last ``Action: <name or number>`` (case-insensitive; stay/no-op, up, down, left, right),
        else a reply that is only a name or only a number."""
        if not self.chat:
            m = _whole_int(text)
            return _index(m, 5) if m is not None else INVALID
        word = last_group(_action_re(), text)
        word = word if word is not None else text.strip().rstrip(".").strip()
        key = word.lower()
        if key in _ALIASES:
            return _ALIASES[key]
        m = _whole_int(word)
        return _index(m, 5) if m is not None else INVALID

    def format_action(self, action: int) -> str:
        return f"Action: {ACTION_WORDS[action]}" if self.chat else str(action)

    # ---- reflection ----------------------------------------------------------------------------
    def teacher_reflection(self, obs: Tensor, actions: list[int], rewards: list[float]) -> str:
        """The note a teacher writes after an episode: the last cell that paid a reward so far.

        Args:
            obs: (t, 2) the cell each of the trial's first t actions was taken in.
            actions, rewards: those t actions and rewards.

        Returns:
            Plain ``"53\\n"`` / ``"no\\n"``; chat ``"Goal: 5,3"`` / ``"Goal: unknown"``.
        """
        goal = None
        for s in range(len(actions)):
            if rewards[s] > 0:
                dx, dy = MOVES[actions[s]] if 0 <= actions[s] < 5 else (0, 0)
                x = min(max(int(round(float(obs[s, 0]))) + dx, 0), self.size - 1)
                y = min(max(int(round(float(obs[s, 1]))) + dy, 0), self.size - 1)
                goal = (x, y)
        if self.chat:
            return "Goal: unknown" if goal is None else f"Goal: {goal[0]},{goal[1]}"
        if goal is None:
            return "no\n"
        return f"{goal[0]}{goal[1]}\n" if self.size <= 10 else f"{goal[0]},{goal[1]}\n"


@register_text_env("darkroom")
def _darkroom_text(task, dist, episodes_per_trial: int, chat: bool, reflect: bool = False) -> DarkRoomText:
    return DarkRoomText(
        dist.size,
        dist.episode_length,
        episodes_per_trial,
        tuple(dist.start_cell),
        chat=chat,
        reflect=reflect,
        reflection_tokens=16 if chat else 4,
    )
