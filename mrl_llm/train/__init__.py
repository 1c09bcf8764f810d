"""Thin layers over TRL trainers: SFT (algorithm distillation) and GRPO (meta-RL finetuning)."""

from __future__ import annotations

import math


def check_optimizer_fields(cfg) -> None:
    """Validate, when the recipe is read, the optimizer fields TRL / transformers would otherwise
    reject only after minutes of work (or never: a NaN learning rate trains NaNs).

    Checks ``learning_rate`` (finite, > 0), ``warmup_ratio`` (in [0, 1)), ``weight_decay``
    (finite, >= 0), ``lr_scheduler_type`` (a ``transformers.SchedulerType``) and, where the config
    has them, ``num_train_epochs`` (finite, > 0) and ``max_grad_norm`` (finite, > 0).

    Raises:
        ValueError: naming the field and the accepted values.
    """
    from transformers.trainer_utils import SchedulerType

    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {cfg.learning_rate}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {cfg.weight_decay}")
    for name in ("num_train_epochs", "max_grad_norm"):
        value = getattr(cfg, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    known = [s.value for s in SchedulerType]
    if cfg.lr_scheduler_type not in known:
        raise ValueError(f"lr_scheduler_type {cfg.lr_scheduler_type!r} is not a transformers scheduler; known: {known}")


def check_trl_fields(trl_class: str, fields: dict) -> None:
    """Validate a recipe's ``trl:`` passthrough mapping against ``dataclasses.fields(trl.<trl_class>)``
    when the recipe is read (TRL itself checks the values when the config is built).

    Raises:
        ValueError: a key that is not an argument of ``trl.<trl_class>`` (the message names it and
            the closest argument).
    """
    import dataclasses
    import difflib

    import trl

    known = [f.name for f in dataclasses.fields(getattr(trl, trl_class)) if f.init]
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"trl: {key!r} is not a trl.{trl_class} argument{hint}")


def trl_named_fields(cfg, trl_class: str, exclude: tuple[str, ...] = ()) -> dict:
    """The fields of a stage config that are ``trl.<trl_class>`` arguments by name, with their
    values: what the stage passes to TRL as it is (nothing re-listed by hand). ``exclude``: fields
    the caller maps itself (e.g. ``warmup_ratio`` -> ``warmup_steps``)."""
    import dataclasses

    import trl

    known = {f.name for f in dataclasses.fields(getattr(trl, trl_class)) if f.init}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in known and f.name not in exclude}
