"""Recipe loading: nested dataclasses, type checks, overrides, and errors that name key and file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from classic.config import (
    RecipeError,
    from_dict,
    load_recipe,
    load_yaml,
    parse_override,
    peek_kind,
    save_resolved,
    to_dict,
)

# Throwaway config dataclasses (module level so string annotations resolve).


@dataclass
class TaskCfg:
    num_arms: int = 5
    probs: Optional[list[float]] = None
    family: Literal["bernoulli", "gaussian"] = "bernoulli"


@dataclass
class TrainCfg:
    lr: float = 1e-3
    epochs: int = 10
    betas: tuple[float, ...] = (0.9, 0.999)
    use_gae: bool = True

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class EvalCfg:
    num_tasks: int = 100
    seed: int | None = None


@dataclass
class Recipe:
    name: str
    task: TaskCfg = field(default_factory=TaskCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    seeds: list[int] = field(default_factory=lambda: [0])
    weights: dict[str, float] = field(default_factory=dict)
    eval: EvalCfg | None = None


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def raises(path: Path, *fragments: str):
    """pytest.raises(RecipeError) whose message contains the file and every fragment."""
    pattern = "".join(f"(?=.*{re.escape(f)})" for f in (str(path), *fragments))
    return pytest.raises(RecipeError, match=pattern)


FULL = """\
kind: classic
name: demo
task:
  num_arms: 10
  probs: [0.1, 0.9]
  family: gaussian
train:
  lr: 1e-3
  epochs: 3
  betas: [0.5, 0.6]
seeds: [1, 2, 3]
weights: {a: 1, b: 0.5}
eval:
  num_tasks: 7
"""


def test_nested_round_trip(tmp_path):
    path = write(tmp_path, FULL)
    cfg = load_recipe(Recipe, path)
    assert cfg == Recipe(
        name="demo",
        task=TaskCfg(10, [0.1, 0.9], "gaussian"),
        train=TrainCfg(lr=0.001, epochs=3, betas=(0.5, 0.6)),
        seeds=[1, 2, 3],
        weights={"a": 1.0, "b": 0.5},
        eval=EvalCfg(num_tasks=7),
    )
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.weights["a"], float)
    assert isinstance(cfg.train.betas, tuple)

    plain = to_dict(cfg)
    assert plain["train"]["betas"] == [0.5, 0.6] and plain["eval"] == {"num_tasks": 7, "seed": None}
    out = save_resolved(cfg, tmp_path / "run" / "config.yaml", kind="classic")
    assert peek_kind(out) == "classic"
    assert load_recipe(Recipe, out) == cfg
    assert from_dict(Recipe, plain) == cfg


def test_defaults_and_empty_group(tmp_path):
    cfg = load_recipe(Recipe, write(tmp_path, "name: d\ntrain:\n"))
    assert cfg.train == TrainCfg() and cfg.task == TaskCfg() and cfg.eval is None


def test_string_that_looks_like_float_round_trips(tmp_path):
    cfg = Recipe(name="1e-3")
    out = save_resolved(cfg, tmp_path / "c.yaml")
    assert load_recipe(Recipe, out).name == "1e-3"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "name: d\ntrain:\n  lrr: 0.1\n")
    with raises(path, "unknown key 'train.lrr'", "known: lr, epochs, betas, use_gae", "did you mean 'lr'"):
        load_recipe(Recipe, path)
    path = write(tmp_path, "name: d\nbogus: 1\n", "top.yaml")
    with raises(path, "unknown key 'bogus'"):
        load_recipe(Recipe, path)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("task: {num_arms: five}", ["'task.num_arms' must be int, got str 'five'"]),
        ("task: {num_arms: true}", ["'task.num_arms' must be int, got bool True"]),
        ("task: {num_arms: 2.5}", ["'task.num_arms' must be int, got float 2.5"]),
        ("train: {lr: '0.1'}", ["'train.lr' must be float, got str '0.1'"]),
        ("train: {lr: false}", ["'train.lr' must be float, got bool False"]),
        ("train: {use_gae: 1}", ["'train.use_gae' must be bool, got int 1"]),
        ("seeds: [1, x]", ["'seeds[1]' must be int, got str 'x'"]),
        ("seeds: 3", ["'seeds' must be list[int], got int 3"]),
        ("task: {probs: 3}", ["'task.probs' must be list[float] or None, got int 3"]),
        ("task: {probs: [0.1, a]}", ["'task.probs[1]' must be float, got str 'a'"]),
        ("task: {family: poisson}", ["'task.family' must be one of 'bernoulli', 'gaussian', got str 'poisson'"]),
        ("weights: {a: x}", ["'weights.a' must be float, got str 'x'"]),
        ("eval: {seed: x}", ["'eval.seed' must be int or None, got str 'x'"]),
        ("task: 3", ["'task' must be a mapping of TaskCfg fields, got int 3"]),
    ],
)
def test_wrong_type_names_key_type_and_file(tmp_path, body, fragments):
    path = write(tmp_path, f"name: d\n{body}\n")
    with raises(path, *fragments):
        load_recipe(Recipe, path)


def test_int_accepted_for_float(tmp_path):
    cfg = load_recipe(Recipe, write(tmp_path, "name: d\ntrain: {lr: 1}\n"))
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_optional_list_literal(tmp_path):
    cfg = load_recipe(Recipe, write(tmp_path, "name: d\ntask: {probs: null, family: bernoulli}\neval: null\n"))
    assert cfg.task.probs is None and cfg.eval is None
    cfg = load_recipe(Recipe, write(tmp_path, "name: d\ntask: {probs: [1, 0.5]}\neval: {seed: 3}\n"))
    assert cfg.task.probs == [1.0, 0.5] and cfg.eval == EvalCfg(seed=3)


def test_missing_required_field(tmp_path):
    path = write(tmp_path, "task: {num_arms: 3}\n")
    with raises(path, "missing required key 'name'"):
        load_recipe(Recipe, path)


def test_post_init_error_reraised_with_group_and_file(tmp_path):
    path = write(tmp_path, "name: d\ntrain: {lr: -1}\n")
    with raises(path, "invalid 'train'", "lr must be positive, got -1.0") as info:
        load_recipe(Recipe, path)
    assert isinstance(info.value.__cause__, ValueError)
    path = write(tmp_path, "name: d\n", "ok.yaml")
    with raises(path, "invalid 'train'", "lr must be positive", "after overrides 'train.epochs=2', 'train.lr=0'"):
        load_recipe(Recipe, path, ["train.epochs=2", "train.lr=0"])


@pytest.mark.parametrize(
    "text, parts, value",
    [
        ("a.b.c=3", ["a", "b", "c"], 3),
        ("lr=0.1", ["lr"], 0.1),
        ("lr=1e-4", ["lr"], 1e-4),
        ("x=true", ["x"], True),
        ("x=[1,2]", ["x"], [1, 2]),
        ("x=null", ["x"], None),
        ("x=", ["x"], None),
        ("x=hello world", ["x"], "hello world"),
        ("x=a=b", ["x"], "a=b"),
        ("x={a: 1}", ["x"], {"a": 1}),
        ("x=[1,", ["x"], "[1,"),  # not YAML: kept as text
    ],
)
def test_parse_override(text, parts, value):
    assert parse_override(text) == (parts, value)


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1", ".a=1"])
def test_parse_override_malformed(text):
    with pytest.raises(RecipeError, match="override"):
        parse_override(text)


def test_overrides_apply(tmp_path):
    path = write(tmp_path, FULL)
    cfg = load_recipe(
        Recipe,
        path,
        ["train.epochs=7", "train.lr=0.5", "train.use_gae=false", "seeds=[4,5]", "task.probs=null", "weights.c=2"],
    )
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.5 and cfg.train.use_gae is False
    assert cfg.seeds == [4, 5] and cfg.task.probs is None and cfg.weights == {"a": 1.0, "b": 0.5, "c": 2.0}
    # an override may create a group absent from the file (and one that is null in it)
    cfg = load_recipe(Recipe, write(tmp_path, "name: d\neval: null\n", "n.yaml"), ["eval.num_tasks=3"])
    assert cfg.eval == EvalCfg(num_tasks=3)


def test_override_of_unknown_key(tmp_path):
    path = write(tmp_path, FULL)
    with raises(path, "override 'train.lrr=0.1'", "unknown key 'train.lrr'", "known: lr"):
        load_recipe(Recipe, path, ["train.lrr=0.1"])
    with raises(path, "override 'nope=1'", "unknown key 'nope'"):
        load_recipe(Recipe, path, ["nope=1"])
    with raises(path, "override 'train.lr.x=1'", "'train.lr' is float, not a group"):
        load_recipe(Recipe, path, ["train.lr.x=1"])


def test_override_wrong_type_names_override(tmp_path):
    path = write(tmp_path, FULL)
    with raises(path, "'train.epochs' must be int, got str 'many'", "override 'train.epochs=many'"):
        load_recipe(Recipe, path, ["train.epochs=many"])


def test_yaml_syntax_error_names_file(tmp_path):
    path = write(tmp_path, "name: d\ntrain:\n  lr: [0.1\n")
    with raises(path, "invalid YAML", "line"):
        load_yaml(path)
    with raises(path, "invalid YAML"):
        load_recipe(Recipe, path)
    with raises(path, "invalid YAML"):
        peek_kind(path)


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "name: d\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with raises(path, "duplicate key 'lr'"):
        load_recipe(Recipe, path)


def test_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "- 1\n- 2\n")
    with raises(path, "mapping at the top level"):
        load_yaml(path)


def test_kind(tmp_path):
    assert peek_kind(write(tmp_path, "name: d\n", "a.yaml")) == "compare"
    path = write(tmp_path, "kind: classic\nname: d\n", "b.yaml")
    assert peek_kind(path) == "classic"
    assert load_yaml(path)["kind"] == "classic"
    assert load_recipe(Recipe, path).name == "d"  # kind is not a field of Recipe: dropped
    bad = write(tmp_path, "kind: 3\nname: d\n", "c.yaml")
    with raises(bad, "'kind' must be a non-empty str"):
        peek_kind(bad)


def test_to_dict_rejects_non_dataclass():
    with pytest.raises(TypeError):
        to_dict({"a": 1})
    with pytest.raises(TypeError):
        to_dict(Recipe)
