"""An LLM as a batched in-context RL agent behind the classic Agent interface.

:class:`LLMAgent` plays ``num_tasks`` trials of any task with a text rendering
(:class:`~mrl_llm.envs.text_env.TextEnv`) at once: its context starts with the instructions and
the first observation, then grows turn by turn with its own replies (model tokens) and the
environment's text (environment tokens: reward, next observation, episode boundaries), so
rewards sit in its context (in-context RL). Because it is an
:class:`~classic.agents.base.Agent`, ``classic.evaluate.run_trials`` scores it exactly like UCB1
or RL². With ``record=True`` it keeps, per trial, the token ids, the ``env_mask`` (1 = model
token, trained on; 0 = environment token, masked) and the sampling logprobs that
``trl.GRPOTrainer(rollout_func=...)`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mrl_llm.envs.text_env import INVALID, TextEnv, TrialProgress
from mrl_llm.rollout.generation import GenerationStats, HFSession, SamplingConfig, VLLMSession


@dataclass
class Transcript:
    """One trial as token ids.

    Attributes:
        prompt_ids: (P,) the instructions' tokens.
        completion_ids: (C,) everything after the prompt: replies and environment feedback.
        env_mask: (C,) 1 for tokens the model sampled, 0 for environment tokens.
        logprobs: (C,) sampling logprob of model tokens, 0.0 at environment tokens.
        step_of: (C,) for each model token the trial step it acts on (a reply to step t: t; a
            reflection after step t: t + 1, the step it prepares), -1 at environment tokens
            (filled by :class:`LLMAgent`; teacher transcripts leave it empty).
        episode_of_step: (T,) the episode (0-based) of each step the agent took.
        reflection_mask: (C,) 1 at the tokens of a reflection written between episodes (the
            teacher's, trained on, or a context note), 0 elsewhere (filled by
            :meth:`TrialRenderer.teacher_trial`; empty otherwise).
    """

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    step_of: list[int] = field(default_factory=list)
    episode_of_step: list[int] = field(default_factory=list)
    reflection_mask: list[int] = field(default_factory=list)


class ChatTurns:
    """Token-level rendering of multi-turn chat through a tokenizer's chat template.

    The text between an assistant reply and the next user message (e.g. ``<|im_end|>\\n
    <|im_start|>user\\n``) and after it (``<|im_end|>\\n<|im_start|>assistant\\n``) is read off the
    template once, so each turn appends only its new tokens to the context and to the KV cache.
    """

    def __init__(self, tokenizer) -> None:
        msgs = [
            {"role": "user", "content": "\x01U0"},
            {"role": "assistant", "content": "\x01A0"},
            {"role": "user", "content": "\x01U1"},
        ]
        s = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        a = s.index("\x01A0") + len("\x01A0")
        u = s.index("\x01U1")
        self.between = s[a:u]
        self.after = s[u + len("\x01U1") :]

    def wrap(self, user_text: str, reply_end: str) -> str:
        """Text from the end of the assistant reply to the next generation prompt.

        ``reply_end`` is the decoded stop token the model ended its reply with (if any); when
        the template's separator starts with it, it is not written twice.
        """
        between = self.between
        if reply_end and between.startswith(reply_end):
            between = between[len(reply_end) :]
        return between + user_text + self.after


class TrialRenderer:
    """Turns a trial into token ids, the same way for rollouts and for distillation data.

    Args:
        tokenizer: the LM's tokenizer (chat template required when ``text_env.chat``).
        text_env: the task's text rendering.
        eos_token_id: extra stop id (e.g. from the model's generation config).
    """

    def __init__(self, tokenizer, text_env: TextEnv, eos_token_id=None) -> None:
        self.tok = tokenizer
        self.env = text_env
        self.chat = ChatTurns(tokenizer) if text_env.chat else None
        self.stop_ids = self._stop_token_ids(eos_token_id)
        self.reflection_stop_ids = self.stop_ids if self.chat is not None else self._line_end_ids()
        self._ids_cache: dict[str, list[int]] = {}
        self._chat_prompt_cache: dict[str, list[int]] = {}

    def _stop_token_ids(self, extra) -> set[int]:
        ids = {self.tok.eos_token_id}
        if self.chat is not None:
            im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
            if isinstance(im_end, int) and im_end != self.tok.unk_token_id:
                ids.add(im_end)
            ids.update([extra] if isinstance(extra, int) else (extra or []))
        else:
            for t in (" ", "\n"):
                tid = self.tok.convert_tokens_to_ids(t)
                if isinstance(tid, int) and tid != self.tok.unk_token_id:
                    ids.add(tid)
        return {int(i) for i in ids if i is not None}

    def _line_end_ids(self) -> set[int]:
        """Plain renderings: a reflection is a line, it stops at the newline (or EOS)."""
        ids = {self.tok.eos_token_id}
        nl = self.tok.convert_tokens_to_ids("\n")
        if isinstance(nl, int) and nl != self.tok.unk_token_id:
            ids.add(nl)
        return {int(i) for i in ids if i is not None}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), memoized."""
        ids = self._ids_cache.get(text)
        if ids is None:
            ids = self.tok(text, add_special_tokens=False).input_ids
            if len(self._ids_cache) < 100_000:
                self._ids_cache[text] = ids
        return ids

    def prompt_ids(self, obs: Tensor | None = None) -> list[int]:
        """Token ids of the trial's prompt: the instructions and the first observation ``obs``
        ((obs_dim,), when given), chat template applied in chat mode."""
        prompt = self.env.prompt(obs)
        if self.chat is None:
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            return bos + self.encode(prompt)
        key = prompt[0]["content"]  # the same first observation on many tasks: template it once
        ids = self._chat_prompt_cache.get(key)
        if ids is None:
            out = self.tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
            ids = list(out["input_ids"] if hasattr(out, "keys") else out)
            if len(self._chat_prompt_cache) < 10_000:
                self._chat_prompt_cache[key] = ids
        return list(ids)

    def reply_ids(self, action: int) -> list[int]:
        """A teacher's reply taking ``action``, ending with the turn's stop token in chat mode."""
        ids = self.encode(self.env.format_action(action))
        if self.chat is not None:
            end = self.tok.convert_tokens_to_ids("<|im_end|>")
            ids = ids + [end if isinstance(end, int) and end != self.tok.unk_token_id else self.tok.eos_token_id]
        return ids

    def reflection_reply_ids(self, text: str) -> list[int]:
        """A teacher's reflection ``text`` as model tokens, ending with the turn's stop token in chat mode."""
        ids = self.encode(text)
        if self.chat is not None:
            end = self.tok.convert_tokens_to_ids("<|im_end|>")
            ids = ids + [end if isinstance(end, int) and end != self.tok.unk_token_id else self.tok.eos_token_id]
        return ids

    def next_episode_ids(self, obs: Tensor, episode: int, reflection: list[int]) -> list[int]:
        """Environment tokens after a reflection (``reflection``: its token ids): episode ``episode``
        (1-based) opens at ``obs`` (:meth:`TextEnv.render_next_episode`)."""
        text = self.env.render_next_episode(obs, episode)
        stops = self.reflection_stop_ids
        end = self.tok.decode(reflection[-1:]) if reflection and reflection[-1] in stops else ""
        if self.chat is not None:
            text = self.chat.wrap(text, end)
        elif reflection and reflection[-1] not in stops:
            text = "\n" + text  # a note cut at reflection_tokens: the episode still opens on its own line
        return self.encode(text)

    def step_ids(
        self,
        obs: Tensor,
        action: int,
        reward: float,
        terminated: bool,
        truncated: bool,
        progress: TrialProgress,
        last_reply: list[int],
    ) -> list[int]:
        """Environment tokens after a reply (:meth:`TextEnv.render_step`; ``last_reply``: the
        reply's token ids)."""
        text = self.env.render_step(obs, action, reward, terminated, truncated, progress)
        end = self.tok.decode(last_reply[-1:]) if last_reply and last_reply[-1] in self.stop_ids else ""
        if self.chat is not None:
            text = self.chat.wrap(text, end)
        elif end and text.startswith(end):
            text = text[len(end) :]
        return self.encode(text)

    def teacher_trial(
        self,
        actions: list[int],
        rewards: list[float],
        obs: Tensor | None = None,
        terminated: list[bool] | None = None,
        truncated: list[bool] | None = None,
        context_notes: dict[int, str] | None = None,
    ) -> Transcript:
        """The transcript of a trial whose steps are given (e.g. a teacher agent's).

        Args:
            actions, rewards: the T steps' actions and rewards.
            obs: (T, obs_dim) the observation each action was taken on (None: empty observations,
                for renderings that show none).
            terminated, truncated: whether step t ended its episode (None: every step does, as
                in a bandit trial).
            context_notes: episode index e (0-based) -> a note written after episode e *instead
                of* the teacher's, as environment tokens (``env_mask`` 0: context, not a target);
                :func:`mrl_llm.train.sft.teacher_transcripts`'s ``note_noise``.

        With a reflecting rendering (``text_env.reflect``), the teacher's reflection
        (:meth:`TextEnv.teacher_reflection` of the trial so far) follows every episode but the
        last, as model tokens (``env_mask`` 1).
        """
        T = len(actions)
        obs, ended = self._steps(T, obs, terminated, truncated)
        notes = self._notes(obs, actions, rewards, ended) if self.env.reflect else []
        context_notes = context_notes or {}
        tr = Transcript(prompt_ids=self.prompt_ids(obs[0]) if T else self.prompt_ids())
        total, episodes = 0.0, 0
        for t, (a, r) in enumerate(zip(actions, rewards)):
            reply = self.reply_ids(a)
            tr.completion_ids += reply
            tr.env_mask += [1] * len(reply)
            tr.reflection_mask += [0] * len(reply)
            if t + 1 < T:
                total += r
                episodes += ended[t]
                term = bool(terminated[t]) if terminated is not None else True
                trunc = bool(truncated[t]) if truncated is not None else False
                fb = self.step_ids(obs[t + 1], a, r, term, trunc, TrialProgress(t + 1, total, episodes), reply)
                tr.completion_ids += fb
                tr.env_mask += [0] * len(fb)
                tr.reflection_mask += [0] * len(fb)
                if self.env.reflect and ended[t]:  # t + 1 < T: another episode follows
                    trained = episodes - 1 not in context_notes
                    note = self.reflection_reply_ids(notes[episodes - 1] if trained else context_notes[episodes - 1])
                    nxt = self.next_episode_ids(obs[t + 1], episodes + 1, note)
                    tr.completion_ids += note + nxt
                    tr.env_mask += [int(trained)] * len(note) + [0] * len(nxt)
                    tr.reflection_mask += [1] * len(note) + [0] * len(nxt)
        tr.logprobs = [0.0] * len(tr.completion_ids)
        return tr

    def teacher_notes(
        self,
        actions: list[int],
        rewards: list[float],
        obs: Tensor | None = None,
        terminated: list[bool] | None = None,
        truncated: list[bool] | None = None,
    ) -> list[str]:
        """The teacher's reflections in :meth:`teacher_trial` (same arguments), one per episode
        but the last; ``[]`` for a rendering without reflection."""
        if not self.env.reflect:
            return []
        obs, ended = self._steps(len(actions), obs, terminated, truncated)
        return self._notes(obs, actions, rewards, ended)

    def _notes(self, obs: Tensor, actions: list[int], rewards: list[float], ended: list[bool]) -> list[str]:
        """:meth:`TextEnv.teacher_reflection` of the trial so far after every episode but the last."""
        return [
            self.env.teacher_reflection(obs[: t + 1], list(actions[: t + 1]), list(rewards[: t + 1]))
            for t in range(len(actions) - 1)
            if ended[t]
        ]

    @staticmethod
    def _steps(
        T: int, obs: Tensor | None, terminated: list[bool] | None, truncated: list[bool] | None
    ) -> tuple[Tensor, list[bool]]:
        """(T, obs_dim) observations (empty ones when None) and whether each step ended its episode
        (every step when ``terminated`` is None, as in a bandit trial)."""
        obs = obs if obs is not None else torch.zeros(T, 0)
        if terminated is None:
            return obs, [True] * T
        return obs, [bool(a) or bool(b) for a, b in zip(terminated, truncated)]


class LLMAgent:
    """A causal LM acting in a text-rendered task, batched over trials.

    Args:
        model: transformers causal LM (ignored when ``vllm_llm`` is given).
        tokenizer: its tokenizer (chat template required when ``text_env.chat``).
        text_env: the task's text rendering (instructions, observations, rewards, action parser).
        sampling: temperature, top-k, reply length, KV-cache reuse.
        name: agent name in reports.
        record: keep per-trial :class:`Transcript` s for training.
        vllm_llm: generate with this ``vllm.LLM`` instead of ``model``.

    Example:
        >>> agent = LLMAgent(model, tok, BanditText(5, 100))          # doctest: +SKIP
        >>> result = run_trials(agent, BernoulliBandit(5), 100, 100)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        text_env: TextEnv,
        sampling: SamplingConfig | None = None,
        name: str = "LLM",
        record: bool = False,
        vllm_llm=None,
    ) -> None:
        self.model = model
        self.tok = tokenizer
        self.env = text_env
        self.sampling = sampling or SamplingConfig()
        self.name = name
        self.record = record
        self.vllm_llm = vllm_llm
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.renderer = TrialRenderer(tokenizer, text_env, gen_eos)
        self.total_stats = GenerationStats()
        self.transcripts: list[Transcript] = []
        self.invalid_replies: list[str] = []
        self.reflections: list[str] = []  # the first 20 reflections written (reflecting renderings)

    # ---- Agent interface ---------------------------------------------------------------------
    def reset(self, num_tasks: int, generator: torch.Generator) -> None:
        if self.record and getattr(self, "_trial", None):
            self.finish()  # evaluation in chunks: keep the previous chunk's transcripts
        self._accumulate_stats()
        self.generator = generator
        self.n = num_tasks
        if self.vllm_llm is not None:
            self.session = VLLMSession(self.vllm_llm, num_tasks)
        else:
            self.session = HFSession(self.model, self.tok.pad_token_id, num_tasks, self.sampling.use_cache)
        self._trial: list[Transcript] = []  # the prompts wait for the first observations
        self.turn = 0
        self.last_action = [INVALID] * num_tasks
        self.last_reply: list[list[int]] = [[] for _ in range(num_tasks)]
        self.total = [0.0] * num_tasks
        self.episodes = [0] * num_tasks

    def act(
        self, obs: Tensor, prev_action: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor
    ) -> Tensor:
        """Sample one reply per trial; returns (B,) long actions (``INVALID`` where a reply does
        not parse). At the first step the prompt (instructions and ``obs``) opens the context;
        after it, the previous step's reward and ``obs`` are appended as environment text."""
        if self.turn == 0:
            prompts = [self.renderer.prompt_ids(o) for o in obs]
            self.session.append(prompts)
            self._trial = [Transcript(prompt_ids=list(p)) for p in prompts]
        else:
            self._append_feedback(obs, prev_reward, terminated, truncated)
        s = self.sampling
        tokens, logps = self.session.sample(
            s.max_action_tokens, self.renderer.stop_ids, s.temperature, self.generator, s.top_k, top_p=s.top_p
        )
        texts = self.tok.batch_decode(tokens, skip_special_tokens=True)
        actions = []
        for i, (ids, lp, text) in enumerate(zip(tokens, logps, texts)):
            a = self.env.parse_action(text)
            if a == INVALID and len(self.invalid_replies) < 20:
                self.invalid_replies.append(text)
            actions.append(a)
            self.last_reply[i] = ids
            if self.record:
                tr = self._trial[i]
                tr.completion_ids += ids
                tr.env_mask += [1] * len(ids)
                tr.logprobs += lp
                tr.step_of += [self.turn] * len(ids)
                tr.episode_of_step.append(self.episodes[i])
        self.last_action = actions
        self.turn += 1
        return torch.tensor(actions, dtype=torch.long)

    def _append_feedback(self, obs: Tensor, prev_reward: Tensor, terminated: Tensor, truncated: Tensor) -> None:
        rewards, term, trunc = prev_reward.tolist(), terminated.tolist(), truncated.tolist()
        feed = []
        for i in range(self.n):
            r = rewards[i] if self.last_action[i] != INVALID else 0.0
            self.total[i] += r
            self.episodes[i] += bool(term[i] or trunc[i])
            progress = TrialProgress(self.turn, self.total[i], self.episodes[i])
            feed.append(
                self.renderer.step_ids(
                    obs[i], self.last_action[i], r, bool(term[i]), bool(trunc[i]), progress, self.last_reply[i]
                )
            )
        self.session.append(feed)
        self._record(feed, model=False)
        if self.env.reflect:
            ended = [bool(a or b) for a, b in zip(term, trunc)]
            active = [e and self.episodes[i] < self.env.episodes_per_trial for i, e in enumerate(ended)]
            if any(active):
                self._reflect(obs, active)

    def _reflect(self, obs: Tensor, active: list[bool]) -> None:
        """The rows in ``active`` ended an episode: the model writes its reflection (model tokens),
        then the environment opens the next episode (environment tokens)."""
        s = self.sampling
        notes, logps = self.session.sample(
            self.env.reflection_tokens,
            self.renderer.reflection_stop_ids,
            s.temperature,
            self.generator,
            s.top_k,
            active=active,
            top_p=s.top_p,
        )
        self._record(notes, model=True, logprobs=logps)
        if len(self.reflections) < 20:
            self.reflections += [self.tok.decode(n, skip_special_tokens=True) for n, a in zip(notes, active) if a]
        nxt = [
            self.renderer.next_episode_ids(obs[i], self.episodes[i] + 1, notes[i]) if active[i] else []
            for i in range(self.n)
        ]
        self.session.append(nxt)
        self._record(nxt, model=False)

    def _record(self, ids: list[list[int]], model: bool, logprobs: list[list[float]] | None = None) -> None:
        """Append one token list per trial to the recorded transcripts (``model``: sampled
        tokens, env_mask 1, with their ``logprobs``; else environment tokens)."""
        if not self.record:
            return
        for i, (tr, row) in enumerate(zip(self._trial, ids)):
            tr.completion_ids += row
            tr.env_mask += [int(model)] * len(row)
            tr.logprobs += list(logprobs[i]) if model else [0.0] * len(row)
            tr.step_of += [self.turn if model else -1] * len(row)  # a reflection prepares the next step

    def finish(self) -> list[Transcript]:
        """Close the current trials: append EOS as an environment token, move them to
        ``self.transcripts`` and return all transcripts recorded so far."""
        if self.record and getattr(self, "_trial", None):
            eos = self.tok.eos_token_id
            for tr in self._trial:
                tr.completion_ids.append(eos)
                tr.env_mask.append(0)
                tr.logprobs.append(0.0)
                tr.step_of.append(-1)
            self.transcripts.extend(self._trial)
            self._trial = []
        self._accumulate_stats()
        return self.transcripts

    def _accumulate_stats(self) -> None:
        st = getattr(self, "session", None)
        if st is None:
            return
        for k in ("sampled_tokens", "encoded_tokens", "forward_calls", "seconds"):
            setattr(self.total_stats, k, getattr(self.total_stats, k) + getattr(st.stats, k))
        st.stats = GenerationStats()

    def stats(self) -> dict:
        """Generation counters over every trial run so far (tokens/s of model time)."""
        self._accumulate_stats()
        t = self.total_stats
        return {
            "sampled_tokens": t.sampled_tokens,
            "encoded_tokens": t.encoded_tokens,
            "model_seconds": t.seconds,
            "tokens_per_second": t.tokens_per_second,
            "use_cache": self.sampling.use_cache,
        }
