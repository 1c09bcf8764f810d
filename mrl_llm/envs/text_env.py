"""Text renderings of task distributions: what an LLM agent reads and writes in a trial.

A :class:`TextEnv` turns a trial of a :class:`~classic.core.TaskDistribution` with
:class:`~classic.core.Discrete` actions into text: the instructions that open the trial, the text
the environment writes after each of the agent's replies (:meth:`TextEnv.render_step`: the reward,
the next observation, an episode boundary), and the parser that reads an action back from a reply
(:meth:`TextEnv.parse_action`; anything unparseable is :data:`INVALID`, which the task scores as
an invalid action and the evaluator counts: nothing raises).

Renderings register under the task's registry name (:func:`text_env_for`); a task without one gets
:class:`DiscreteText`, a generic rendering of any ``Discrete``-action task (observations as numbers),
so every such task can be played by an LLM before anyone writes it a dedicated rendering.
The Bernoulli bandit's rendering is :class:`mrl_llm.envs.text_bandit.BanditText`, Dark Room's
:class:`mrl_llm.envs.text_darkroom.DarkRoomText` (with reflections between episodes).

Two styles, chosen by ``chat``: ``plain`` (the tiny local LM: one line per step, the model writes
only the action) and ``chat`` (instruct models: one user message per step, the assistant replies).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

INVALID = -1


@dataclass(frozen=True)
class TrialProgress:
    """Where the trial stands after a step (for renderings that state it).

    Attributes:
        steps_done: steps taken in the trial, including this one.
        total_reward: reward accumulated in the trial, including this step's (invalid actions
            count 0).
        episodes_done: episodes finished in the trial, including one this step ended.
    """

    steps_done: int
    total_reward: float
    episodes_done: int


class TextEnv(ABC):
    """A task distribution's trial as text (one rendering; the task itself stays in ``classic``).

    Attributes:
        chat: conversational rendering (instruct models) instead of the plain one.
        episodes_per_trial: episodes in the trial (what the instructions announce).
        reflect: the model writes a note (a *reflection*, LaMer, arXiv 2512.16848) after every
            episode but the last: :meth:`render_step` then ends an episode with the
            environment's cue, the model writes up to ``reflection_tokens`` tokens, and
            :meth:`render_next_episode` opens the next episode. Renderings that support it
            implement those and :meth:`teacher_reflection`; the default is off.
        reflection_tokens: most tokens of one reflection.
    """

    chat: bool
    episodes_per_trial: int
    reflect: bool = False
    reflection_tokens: int = 0

    @abstractmethod
    def instructions(self) -> str:
        """The trial's opening text (the plain header, or the first user message in chat)."""

    def render_reset(self, obs: Tensor) -> str:
        """Text after the instructions, before the first reply: the first observation (``obs``:
        (obs_dim,)); empty when there is nothing to show (the bandit)."""
        return ""

    def prompt(self, obs: Tensor | None = None) -> str | list[dict]:
        """The trial's prompt: the instructions and, given ``obs``, the first observation; a
        string (plain) or a message list (chat). Without ``obs``, the instructions alone (what a
        GRPO dataset holds: the rollout function renders each trial's own prompt)."""
        text = self.instructions()
        first = self.render_reset(obs) if obs is not None else ""
        if self.chat:
            return [{"role": "user", "content": f"{text} {first}" if first else text}]
        return text + first

    @abstractmethod
    def render_step(
        self, obs: Tensor, action: int, reward: float, terminated: bool, truncated: bool, progress: TrialProgress
    ) -> str:
        """Environment text after a reply.

        Args:
            obs: (obs_dim,) the observation the agent acts on next (the next episode's first one
                when this step ended an episode).
            action: the parsed action, or :data:`INVALID`.
            reward: the step's reward (0 for an invalid action).
            terminated: the step ended its episode (goal reached, ...).
            truncated: the episode hit its time limit with this step.
            progress: where the trial stands.
        """

    @abstractmethod
    def parse_action(self, text: str) -> int:
        """The action index in the model's reply, or :data:`INVALID`; never raises."""

    @abstractmethod
    def format_action(self, action: int) -> str:
        """The canonical reply taking ``action`` (what a teacher's transcript contains)."""

    # ---- reflection (renderings with ``reflect``) -------------------------------------------------
    def render_next_episode(self, obs: Tensor, episode: int) -> str:
        """Environment text after a reflection: episode ``episode`` (1-based) starts at ``obs``
        ((obs_dim,)).

        Raises:
            NotImplementedError: the rendering has no reflection.
        """
        raise NotImplementedError(f"{type(self).__name__} has no reflection between episodes")

    def teacher_reflection(self, obs: Tensor, actions: list[int], rewards: list[float]) -> str:
        """The reflection a teacher writes after an episode, from the trial so far (``obs``: (t,
        obs_dim) the observation each of the first t actions was taken on).

        Raises:
            NotImplementedError: the rendering has no reflection.
        """
        raise NotImplementedError(f"{type(self).__name__} has no reflection between episodes")


# ---- reading an action ----------------------------------------------------------------------


# "Arm: 3", "arm 4", "Arm #1", "arm number 2", "ARM=0" (keyword "arm"; the last match in a reply
# counts). The same language and matches as r"arm\s*(?:number\s*)?[:#=]?\s*(-?\d+)", written so that no two "\s*"
# can share a run of whitespace (there "\s*[:#=]?\s*" split a run in every possible way:
# quadratic in the whitespace after an "arm"). Here every "\s*" is followed by a character it
# cannot match, so a failing attempt gives each whitespace character back once: linear time.
@functools.lru_cache(maxsize=16)
def _keyword_re(keyword: str) -> re.Pattern[str]:
    return re.compile(re.escape(keyword) + r"\s*(?:number\s*)?(?:[:#=]\s*)?(-?\d+)", re.IGNORECASE)


def _index(digits: str, num_arms: int) -> int:
    """``int(digits)`` if it is an index in [0, num_arms), else ``INVALID``.

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


def last_group(pattern: re.Pattern[str], text: str) -> str | None:
    """Group 1 of the last match of ``pattern`` in ``text`` (a reply's last stated action counts),
    or None; one left-to-right scan."""
    found = None
    for found in pattern.finditer(text):
        continue
    return found.group(1) if found is not None else None


def parse_index(text: str, n: int, keyword: str | None = None) -> int:
    """The index in [0, n) a reply names, or :data:`INVALID`.

    With a ``keyword`` (chat renderings: ``"arm"``, ``"action"``): the last ``<keyword>: N``
    (case-insensitive; ``<keyword> N``, ``<keyword> #N``, ``<keyword> number N`` accepted), else a
    reply that is only an integer. Without one (plain renderings): the reply must be exactly an
    integer (surrounding whitespace and one final ``.`` allowed).

    Any string is parsed in time linear in its length and nothing raises: an integer of any
    length out of range (``"1" * 5000``) is ``INVALID``.
    """
    m = last_group(_keyword_re(keyword), text) if keyword else None
    if m is None:
        m = _whole_int(text)
    if m is None:
        return INVALID
    return _index(m, n)


# ---- the renderings' registry ---------------------------------------------------------------

_RENDERINGS: dict[str, Callable[..., TextEnv]] = {}


def register_text_env(task_name: str):
    """Decorator: ``factory(task_config, dist, episodes_per_trial, chat) -> TextEnv`` renders the
    task registered (in :data:`classic.registry.TASKS`) as ``task_name``; a factory whose
    rendering can reflect takes ``reflect=True`` too."""

    def deco(factory):
        _RENDERINGS[task_name] = factory
        return factory

    return deco


def _import_renderings() -> None:
    import mrl_llm.envs as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"mrl_llm.envs.{info.name}")


def text_env_for(
    task_config: Any, dist: Any, episodes_per_trial: int, chat: bool = False, reflect: bool = False
) -> TextEnv:
    """The text rendering of ``task_config``'s task: its registered rendering, else
    :class:`DiscreteText`; ``reflect`` asks for reflections between episodes (:class:`TextEnv`).

    Raises:
        ValueError: the task's actions are not ``Discrete`` (an LLM's reply names one action), or
            ``reflect`` on a task whose rendering has no reflection.
    """
    from classic.core import Discrete

    if not isinstance(dist.action_space, Discrete):
        raise ValueError(
            f"task {task_config.name!r} has {type(dist.action_space).__name__} actions; the LLM agent "
            "needs Discrete actions (a reply names one action)"
        )
    _import_renderings()
    factory = _RENDERINGS.get(task_config.name)
    can_reflect = factory is not None and "reflect" in inspect.signature(factory).parameters
    if reflect and not can_reflect:
        raise ValueError(f"the text rendering of task {task_config.name!r} has no reflection between episodes")
    if factory is None:
        env = DiscreteText(dist.action_space.n, episodes_per_trial, dist.episode_length, chat)
    else:
        env = factory(task_config, dist, episodes_per_trial, chat, **({"reflect": True} if reflect else {}))
    if reflect and not env.reflect:
        raise ValueError(f"the text rendering of task {task_config.name!r} has no reflection between episodes")
    return env


# ---- the generic rendering ----------------------------------------------------------------


def format_obs(obs: Tensor) -> str:
    """An observation as text: whole numbers as integers, others to 3 significant digits,
    comma-separated (``tensor([4., 2.])`` -> ``"4,2"``)."""
    values = [float(v) for v in obs.reshape(-1).tolist()]
    return ",".join(str(int(v)) if v.is_integer() else f"{v:.3g}" for v in values)


@dataclass(frozen=True)
class DiscreteText(TextEnv):
    """Any task with ``num_actions`` discrete actions as text.

    Plain (words the tiny tokenizer knows): a header, then one line per step,
    ``"<observation> <action> <reward>\\n"``: the
    environment writes the observation and a space, the model the action, the environment the
    reward; a line ``"|\\n"`` closes each episode. Chat: one user message per step with the
    observation (and the previous reward); the assistant replies ``"Action: N"``.

    Args:
        num_actions: actions 0 .. num_actions - 1.
        episodes_per_trial: episodes in the trial.
        episode_length: steps per episode (at most).
        chat: conversational rendering.
    """

    num_actions: int
    episodes_per_trial: int
    episode_length: int
    chat: bool = False

    def instructions(self) -> str:
        k, n, h = self.num_actions, self.episodes_per_trial, self.episode_length
        if not self.chat:
            # words of the tiny tokenizer's vocabulary (mrl_llm.models): x is the observation
            return (
                f"Each trial is {n} episodes of {h} turns with {k} actions. Each line is x then action then reward.\n"
            )
        return (
            f"You act in an environment with {k} actions, numbered 0 to {k - 1}, for {n} episodes of at most "
            f"{h} steps each. The task stays the same across episodes: use what earlier episodes taught you "
            "to collect as much reward as you can. Reply with only your choice, in the form 'Action: N'."
        )

    def render_reset(self, obs: Tensor) -> str:
        return f"{format_obs(obs)} " if not self.chat else f"Episode 1. Observation: {format_obs(obs)}."

    def render_step(self, obs, action, reward, terminated, truncated, progress):
        ended = terminated or truncated
        more = progress.episodes_done < self.episodes_per_trial
        if not self.chat:
            head = " invalid" if action == INVALID else ""
            text = f"{head} {reward:g}\n" + ("|\n" if ended else "")
            return text + (f"{format_obs(obs)} " if more else "")
        head = (
            f"Invalid reply: answer 'Action: N' with N from 0 to {self.num_actions - 1}. " if action == INVALID else ""
        )
        text = f"{head}Reward {reward:g}."
        if ended:
            text += f" Episode {progress.episodes_done} ended."
            if more:
                text += f" Episode {progress.episodes_done + 1}."
        return text + (f" Observation: {format_obs(obs)}." if more else "")

    def parse_action(self, text: str) -> int:
        return parse_index(text, self.num_actions, "action" if self.chat else None)

    def format_action(self, action: int) -> str:
        return f"Action: {action}" if self.chat else str(action)
