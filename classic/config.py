"""Typed recipes: YAML files turned into nested config dataclasses, with errors that name the key and the file.

A recipe is one YAML mapping whose groups map one-to-one onto dataclass fields. Loading it
validates every value against the field annotations with pydantic (v2, in strict mode over the
recipe written as JSON: a mapping builds a dataclass, a list a tuple or set, a string a
``Path``; a string or a bool is never taken for a number, an int is taken for a float), with a
*discriminated union* for every field annotated with a registry's ``ref`` (``task: {name:
gridnavi, ...}``: the ``name`` picks the config class, :mod:`classic.registry`). The first
problem becomes a one-line :class:`RecipeError` naming the full dotted key and the file::

    recipes/x.yaml: unknown key 'train.lrr' (known: lr, epochs); did you mean 'lr'?
    recipes/x.yaml: 'task.num_arms' must be int, got str 'five'
    recipes/x.yaml: invalid 'train': lr must be positive, got -1.0

Field types are whatever pydantic validates (dataclasses, ``int``, ``float``, ``bool``, ``str``,
``Optional[X]`` / ``X | None``, unions, ``Literal[...]``, ``list[X]``, ``tuple[...]``,
``set[X]``, ``dict[K, V]``, ``pathlib.Path``, ``Enum`` by value, ``Any``). Field annotations
may be strings (``from __future__ import annotations``), so config dataclasses must be
importable at module level (not defined inside a function) when they refer to each other. A
``ValueError`` raised by a ``__post_init__`` is reported against its group. Overrides
(``--set a.b.c=value``) are applied to the mapping before validation; they reach list items by
``label``, ``name`` or index.

YAML is read with a safe loader that also reads ``1e-3`` as a float (plain YAML 1.1 reads it
as the string "1e-3") and rejects duplicate keys.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Train:
    ...     lr: float = 1e-3
    ...     epochs: int = 10
    >>> @dataclass
    ... class Recipe:
    ...     name: str = "demo"
    ...     train: Train = field(default_factory=Train)
    >>> cfg = load_recipe(Recipe, "recipes/demo.yaml", ["train.lr=3e-4"])  # doctest: +SKIP
    >>> save_resolved(cfg, "runs/demo/config.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import json
import pathlib
import re
import reprlib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from classic.files import write_atomic
from classic.registry import RegistryError, RegistryRef

__all__ = [
    "DEFAULT_KIND",
    "RecipeError",
    "from_dict",
    "load_recipe",
    "load_yaml",
    "parse_override",
    "peek_kind",
    "save_resolved",
    "to_dict",
]

T = TypeVar("T")

#: Value of :func:`peek_kind` for a recipe without a top-level ``kind:`` key.
DEFAULT_KIND = "compare"

_NONE = type(None)


class RecipeError(ValueError):
    """A recipe (YAML file or override) that does not fit its config dataclass.

    The message always starts with the source (the file path as given, or ``<dict>``) and
    names the full dotted key at fault.
    """


# --------------------------------------------------------------------------------------------
# YAML reading and writing
# --------------------------------------------------------------------------------------------

_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.1 floats, plus exponent floats without a dot or an exponent sign ("1e-3", "5E4").
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_RESOLVERS = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "-+0123456789.":
    _RESOLVERS.setdefault(_first, []).append((_FLOAT_TAG, _FLOAT_RE))


class _RecipeLoader(yaml.SafeLoader):
    """Safe loader: ``1e-3`` is a float, duplicate keys are an error."""

    yaml_implicit_resolvers = _RESOLVERS

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # keys merged in with "<<" may legitimately be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


class _RecipeDumper(yaml.SafeDumper):
    """Safe dumper that quotes strings :class:`_RecipeLoader` would read as floats ("1e-3")."""

    yaml_implicit_resolvers = _RESOLVERS


def _yaml_error(source: str, err: yaml.YAMLError) -> RecipeError:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if problem is None:
        return RecipeError(f"{source}: invalid YAML: {err}")
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return RecipeError(f"{source}: invalid YAML{where}: {problem}" + (f" ({context})" if context else ""))


def load_yaml(path: str | Path) -> dict:
    """Read a recipe file into a plain mapping (the top-level ``kind:`` key included).

    Args:
        path: YAML file. An empty file reads as ``{}``.

    Returns:
        The top-level mapping.

    Raises:
        FileNotFoundError: no such file.
        RecipeError: a directory, a file that is not UTF-8, a YAML syntax error or duplicate key
            (message names the file, line and column), or a top level that is not a mapping.
    """
    source = str(path)
    if Path(path).is_dir():
        raise RecipeError(f"{source}: is a directory, not a recipe file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{source}: not UTF-8 text (byte {err.start}): a recipe is a YAML text file") from None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping at the top level, got {_describe(data)}")
    return data


def peek_kind(path: str | Path, default: str = DEFAULT_KIND) -> str:
    """The value of the recipe's top-level ``kind:`` key, so a CLI can pick the dataclass to build.

    Args:
        path: YAML file.
        default: returned when the file has no ``kind:`` key.

    Raises:
        RecipeError: invalid YAML, or ``kind`` present but not a non-empty string.
    """
    return _kind_of(load_yaml(path), str(path), default)


def _kind_of(data: Mapping, source: str, default: str = DEFAULT_KIND) -> str:
    if "kind" not in data:
        return default
    kind = data["kind"]
    if not isinstance(kind, str) or not kind:
        raise RecipeError(f"{source}: 'kind' must be a non-empty str, got {_describe(kind)}")
    return kind


# --------------------------------------------------------------------------------------------
# Building dataclasses
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Ctx:
    source: str
    overrides: dict[str, str]  # dotted key -> override text that set it

    def error(self, key: str, message: str, group: bool = False) -> RecipeError:
        """RecipeError for ``key``, crediting the override that set it (or, for a ``group``
        error, the overrides under it)."""
        origin = None
        parts = key.replace("[", ".[").split(".") if key else []
        for i in range(len(parts), 0, -1):  # the longest overridden prefix of key
            origin = self.overrides.get(".".join(parts[:i]).replace(".[", "["))
            if origin is not None:
                break
        suffix = f" (set by override '{origin}')" if origin is not None else ""
        if origin is None and group:
            inside = [text for k, text in self.overrides.items() if not key or k.startswith(key + ".")]
            if inside:
                suffix = f" (after overrides {', '.join(repr(t) for t in inside)})"
        return RecipeError(f"{self.source}: {message}{suffix}")


def load_recipe(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """Build the config dataclass ``cls`` from a YAML recipe and ``--set``-style overrides.

    A top-level ``kind:`` key (see :func:`peek_kind`) is dropped unless ``cls`` has a ``kind``
    field. A group whose YAML value is empty (``train:`` with nothing under it) or absent
    takes the field's defaults; for an ``Optional`` dataclass field, an explicit ``null``
    stays ``None``.

    Args:
        cls: a dataclass type; nested dataclass fields are built from sub-mappings.
        path: YAML file.
        overrides: strings ``"a.b.c=value"``, applied in order after the file; ``value`` is
            parsed as YAML (``3``, ``0.1``, ``1e-3``, ``true``, ``[1, 2]``, ``null``,
            ``{x: 1}``), falling back to the raw string when it is not valid YAML.

    Returns:
        An instance of ``cls``.

    Raises:
        RecipeError: YAML error, unknown key (in the file or an override), wrong type,
            missing required field, or a ``ValueError`` raised by a ``__post_init__``; the
            message names the dotted key and the file (and the override when one set it).
        TypeError: ``cls`` is not a dataclass or its annotations cannot be resolved.
    """
    data = load_yaml(path)
    if "kind" in data and "kind" not in _init_fields(_require_dataclass(cls)):
        _kind_of(data, str(path))  # validates it
        data.pop("kind")
    return from_dict(cls, data, source=str(path), overrides=overrides)


def from_dict(cls: type[T], data: Mapping, overrides: Iterable[str] = (), *, source: str = "<dict>") -> T:
    """Like :func:`load_recipe` but from an in-memory mapping (not modified).

    Args:
        cls: a dataclass type.
        data: the recipe mapping.
        overrides: ``"a.b.c=value"`` strings, as in :func:`load_recipe`.
        source: name used at the start of error messages.

    Raises:
        RecipeError, TypeError: as :func:`load_recipe`.
    """
    _require_dataclass(cls)
    ctx = _Ctx(source, {})
    data = copy.deepcopy(dict(data)) if isinstance(data, Mapping) else data
    for text in overrides:
        parts, value = parse_override(text, source)
        _check_override_path(cls, parts, text, ctx)
        _apply_override(data, parts, value, text, ctx)
        ctx.overrides[".".join(parts)] = text
    return _build(cls, data, "", ctx)


def parse_override(text: str, source: str = "<override>") -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into ``(["a", "b", "c"], parsed value)``.

    The value is parsed as a YAML scalar/list/mapping (``"3"`` -> 3, ``"[1,2]"`` -> [1, 2],
    ``"null"`` or ``""`` -> None); text that is not valid YAML stays a string.

    Raises:
        RecipeError: no ``=``, or an empty key component.
    """
    if "=" not in text:
        raise RecipeError(f"{source}: override '{text}' must look like 'a.b.c=value'")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"{source}: override '{text}' has an empty key")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader)
    except yaml.YAMLError:
        value = raw
    return parts, value


def _require_dataclass(cls):
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    return cls


@functools.lru_cache(maxsize=None)
def _init_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (field, resolved type) for the fields ``cls.__init__`` takes."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError) as err:
        raise TypeError(
            f"cannot resolve the field types of {cls.__qualname__}: {err} (define config dataclasses at module level)"
        ) from err
    return {f.name: (f, hints.get(f.name, f.type)) for f in dataclasses.fields(cls) if f.init}


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _unknown_key(key: str, name: Any, known: list[str]) -> str:
    msg = f"unknown key '{_join(key, str(name))}' (known: {', '.join(known) or 'none'})"
    close = difflib.get_close_matches(str(name), known, n=1)
    return msg + (f"; did you mean '{close[0]}'?" if close else "")


#: Most nodes a recipe may hold (a YAML alias bomb shares its lists; written out it would be huge).
MAX_RECIPE_NODES = 1_000_000


def _build(cls: type, data: Any, key: str, ctx: _Ctx):
    """Validate ``data`` into ``cls`` with pydantic (strict JSON-mode rules: a mapping builds a
    dataclass, a list a tuple or set, a string a Path; no string or bool is taken for a number,
    an int is taken for a float) and tagged unions for registry fields; the first error becomes a
    one-line :class:`RecipeError` naming the dotted key."""
    from pydantic import ValidationError

    if not isinstance(data, Mapping):
        what = f"'{key}'" if key else "the recipe"
        raise ctx.error(key, f"{what} must be a mapping of {cls.__name__} fields, got {_describe(data)}")
    data = _fill_empty_groups(data, cls)
    _check_size(data, ctx)
    try:
        text = json.dumps(data, allow_nan=True, default=str)
    except (TypeError, ValueError) as err:
        raise ctx.error(key, f"the recipe holds a value with no JSON form ({err})") from None
    try:
        return _adapter(cls, _registry_sizes()).validate_json(text, strict=True)
    except ValidationError as err:
        error, cause = _translate(err.errors(include_url=False)[0], cls, data, ctx)
        raise error from cause


def _unwrap_optional(tp) -> tuple[Any, bool]:
    """(X, True) for Optional[X] / X | None; (tp, False) otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not _NONE]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
    return tp, False


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _registry_sizes() -> tuple[int, ...]:
    from classic.registry import AGENTS, LEARNERS, TASKS

    return tuple(r.size for r in (TASKS, AGENTS, LEARNERS))


@functools.lru_cache(maxsize=None)
def _adapter(cls: type, registry_sizes: tuple[int, ...]):
    """The pydantic ``TypeAdapter`` of ``cls`` (rebuilt when a registry gains a part: its unions
    list the parts registered when it was built)."""
    from pydantic import TypeAdapter

    _forbid_extra(cls, set())
    return TypeAdapter(cls)


def _forbid_extra(tp: Any, seen: set) -> None:
    """Mark every dataclass reachable from ``tp`` with pydantic's ``extra="forbid"`` (an unknown key
    is an error), through registry fields too."""
    from pydantic import ConfigDict

    if id(tp) in seen:
        return
    seen.add(id(tp))
    if isinstance(tp, type) and issubclass(tp, RegistryRef):
        for name in tp.registry.names():
            _forbid_extra(tp.registry.get(name), seen)
        return
    if _is_dataclass_type(tp):
        if "__pydantic_config__" not in tp.__dict__:
            tp.__pydantic_config__ = ConfigDict(extra="forbid")
        for _, sub in _init_fields(tp).values():
            _forbid_extra(sub, seen)
        return
    for arg in get_args(tp):
        _forbid_extra(arg, seen)


def _fill_empty_groups(value: Any, tp: Any) -> Any:
    """A group whose value is empty (``train:`` with nothing under it) takes the field's defaults:
    ``None`` becomes ``{}`` for a non-Optional dataclass field, recursively through dataclasses,
    registry parts (an unknown ``name`` is left for the validation to report) and lists."""
    inner, optional = _unwrap_optional(tp)
    if isinstance(inner, type) and issubclass(inner, RegistryRef) and isinstance(value, Mapping):
        try:
            inner = inner.registry.get(value.get("name"))
        except RegistryError:
            return value
    if _is_dataclass_type(inner):
        if value is None and not optional:
            return {}
        if not isinstance(value, Mapping):
            return value
        fields = _init_fields(inner)
        return {k: _fill_empty_groups(v, fields[k][1]) if k in fields else v for k, v in value.items()}
    if get_origin(inner) is list and isinstance(value, list):
        item = (get_args(inner) or (Any,))[0]
        return [_fill_empty_groups(v, item) for v in value]
    return value


def _check_size(data: Any, ctx: _Ctx) -> None:
    """Refuse a recipe of more than :data:`MAX_RECIPE_NODES` values (counted with shared lists
    counted each time they appear, as they would be written out)."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_RECIPE_NODES:
            raise ctx.error("", f"the recipe holds more than {MAX_RECIPE_NODES:,} values (a YAML alias bomb?)")
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _translate(error: dict, cls: type, data: Any, ctx: _Ctx) -> tuple[RecipeError, BaseException | None]:
    """The :class:`RecipeError` of pydantic's first ``error`` (and the exception to chain)."""
    kind, loc = error["type"], tuple(error["loc"])
    tp: Any = cls
    key, value, parent = "", data, ""
    i = 0
    while i < len(loc):
        part = loc[i]
        inner, _ = _unwrap_optional(tp)
        if isinstance(inner, type) and issubclass(inner, RegistryRef):
            try:
                tp = inner.registry.get(part)  # the tag pydantic put in the location
            except RegistryError:
                break
            i += 1
            continue
        if _is_dataclass_type(inner):
            fields = _init_fields(inner)
            if part not in fields:
                parent = key
                break
            parent, key, tp = key, _join(key, str(part)), fields[part][1]
            value = value.get(part) if isinstance(value, Mapping) else None
        elif get_origin(inner) in (list, tuple, set, frozenset) and isinstance(part, int):
            args = get_args(inner)
            if get_origin(inner) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                tp = args[part] if part < len(args) else Any
            else:
                tp = args[0] if args else Any
            key = f"{key}[{part}]"
            value = value[part] if isinstance(value, (list, tuple)) and part < len(value) else None
        elif get_origin(inner) in (dict, Mapping):
            kt, vt = get_args(inner) if len(get_args(inner)) == 2 else (Any, Any)
            if i + 1 < len(loc) and loc[i + 1] == "[key]":
                raw = _dict_key(value, part)
                sub = _join(key, str(part))
                message = f"key {raw!r} of '{key}' must be {_type_name(kt)}, got {type(raw).__name__}"
                return ctx.error(sub, message), None
            key, tp = _join(key, str(part)), vt
            value = value.get(_dict_key(value, part)) if isinstance(value, Mapping) else None
        else:
            break  # a union's member tag: the error is the union's, at this key
        i += 1
    inner, _ = _unwrap_optional(tp)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = list(_init_fields(inner)) if _is_dataclass_type(inner) else []
        name = loc[-1]
        return ctx.error(_join(parent, str(name)), _unknown_key(parent, name, known)), None
    if kind in ("missing_argument", "missing"):
        return ctx.error(key, f"missing required key '{key}' ({_type_name(tp)})"), None
    if kind in ("value_error", "assertion_error"):
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, RecipeError):
            return original, original.__cause__
        what = f"'{key}'" if key else "recipe"
        return ctx.error(key, f"invalid {what}: {original}", group=True), original
    if isinstance(inner, type) and issubclass(inner, RegistryRef):
        registry = inner.registry
        if kind == "union_tag_invalid" and isinstance(value, Mapping):
            try:
                registry.get(value.get("name"))
            except RegistryError as err:
                return ctx.error(_join(key, "name"), f"'{_join(key, 'name')}': {err}"), None
        return ctx.error(
            key,
            f"'{key}' must be a mapping with a 'name' key naming a {registry.what} "
            f"(known: {', '.join(registry.names())}), got {_describe(value)}",
        ), None
    if _is_dataclass_type(inner) and not isinstance(value, Mapping):
        what = f"'{key}'" if key else "the recipe"
        return ctx.error(key, f"{what} must be a mapping of {inner.__name__} fields, got {_describe(value)}"), None
    if kind in ("too_short", "too_long") and get_origin(inner) is tuple:
        expected = f"{_type_name(tp)} ({len(get_args(inner))} items)"
        return ctx.error(key, f"'{key}' must be {expected}, got {_describe(value)}"), None
    return ctx.error(key, f"'{key}' must be {_type_name(tp)}, got {_describe(value)}"), None


def _dict_key(mapping: Any, part: Any) -> Any:
    """The key of ``mapping`` that pydantic's JSON location ``part`` (a string) stands for."""
    if isinstance(mapping, Mapping) and part not in mapping:
        for k in mapping:
            if str(k) == str(part):
                return k
    return part


def _check_override_path(cls: type, parts: list[str], text: str, ctx: _Ctx) -> None:
    """Raise unless ``parts`` names a field (or a key inside a dict field) of ``cls``."""
    tp: Any = cls
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        inner, _ = _unwrap_optional(tp)
        if isinstance(inner, type) and issubclass(inner, RegistryRef):
            return  # the keys under it depend on its 'name': checked when the config is built
        if get_origin(inner) is list:  # an item, by its label, name or index
            args = get_args(inner)
            tp = args[0] if args else Any
            continue
        if _is_dataclass_type(inner):
            fields = _init_fields(inner)
            if part not in fields:
                raise RecipeError(f"{ctx.source}: override '{text}': {_unknown_key(parent, part, list(fields))}")
            tp = fields[part][1]
        elif get_origin(inner) in (dict, Mapping):
            args = get_args(inner)
            tp = args[1] if len(args) == 2 else Any
        elif inner in (Any, dict, Mapping):
            tp = Any
        else:
            raise RecipeError(
                f"{ctx.source}: override '{text}': '{parent}' is {_type_name(inner)}, not a group of keys"
            )


def _apply_override(data: Any, parts: list[str], value: Any, text: str, ctx: _Ctx) -> None:
    if not isinstance(data, dict):
        raise RecipeError(f"{ctx.source}: override '{text}': the recipe is not a mapping")
    node = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, text, ctx, ".".join(parts[:i]))
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, (dict, list)):
            dotted = ".".join(parts[: i + 1])
            raise RecipeError(f"{ctx.source}: override '{text}': '{dotted}' is {_describe(child)}, not a mapping")
        node = child
    if isinstance(node, list):
        raise RecipeError(f"{ctx.source}: override '{text}': name a key inside the list item, not the item")
    node[parts[-1]] = value


def _list_item(items: list, part: str, text: str, ctx: _Ctx, where: str) -> dict:
    """The mapping in ``items`` whose ``label`` or ``name`` is ``part`` (or the item at index ``part``)."""
    for item in items:
        if isinstance(item, dict) and part in (item.get("label"), item.get("name")):
            return item
    if part.isdigit() and int(part) < len(items) and isinstance(items[int(part)], dict):
        return items[int(part)]
    names = [str(i.get("label") or i.get("name")) for i in items if isinstance(i, dict)]
    raise RecipeError(f"{ctx.source}: override '{text}': '{where}' has no item {part!r} (items: {', '.join(names)})")


def _type_name(tp: Any) -> str:
    """Human-readable annotation: ``int``, ``list[float]``, ``int or None``, ``one of 'a', 'b'``."""
    if tp is _NONE or tp is None:
        return "None"
    if tp is Any:
        return "any value"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if not args:
            return name
        return f"{name}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _describe(value: Any) -> str:
    """``str 'five'``, ``int 3``, ``None``: the type and a short repr of an offending value."""
    if value is None:
        return "None"
    text = _SHORT_REPR.repr(value)  # bounded: a YAML alias bomb shares its lists, repr() would expand them all
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, 60, 60
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 6
    return r


_SHORT_REPR = _short_repr()


# --------------------------------------------------------------------------------------------
# Writing configs back
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> dict:
    """A dataclass instance as a plain, YAML/JSON-safe dict, recursively.

    Only ``__init__`` fields are kept, so ``from_dict(type(obj), to_dict(obj))`` rebuilds an
    equal object. Tuples and sets become lists, ``Path`` becomes str, ``Enum`` its value,
    numpy/torch scalars and arrays plain numbers and lists.

    Raises:
        TypeError: ``obj`` is not a dataclass instance, or a value has no plain equivalent
            (the message names its dotted key).
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(obj).__name__}")
    return _plain(obj, "")


def _plain(value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), _join(key, f.name)) for f in dataclasses.fields(value) if f.init}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, key)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {_plain(k, key): _plain(v, _join(key, str(k))) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [_plain(v, key) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if callable(getattr(value, "tolist", None)):  # numpy / torch
        return _plain(value.tolist(), key)
    raise TypeError(f"to_dict: '{key}' holds a {type(value).__name__}, which has no YAML/JSON form")


def save_resolved(obj: Any, path: str | Path, kind: str | None = None) -> Path:
    """Write the resolved config (defaults and overrides applied) as YAML.

    Args:
        obj: a config dataclass instance (or an already plain dict).
        path: output file; parent folders are created.
        kind: when given, written first as the top-level ``kind:`` key so that the file is
            itself a runnable recipe.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else _plain(dict(obj), "")
    if kind is not None:
        data = {"kind": kind, **{k: v for k, v in data.items() if k != "kind"}}
    text = yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return write_atomic(path, text)


# ---------------------------------------------------------------------------------------------
# Range checks for config dataclasses' __post_init__ (the ValueError names the field)
# ---------------------------------------------------------------------------------------------


def require_ints(config: Any, names: Iterable[str], minimum: int) -> None:
    """Raise ``ValueError`` naming the first field of ``names`` that is not an int >= ``minimum``
    (a bool is not an int here)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{name} must be {what}, got {value!r}")


def require_numbers(config: Any, names: Iterable[str], positive: bool = True) -> None:
    """Raise ``ValueError`` naming the first field of ``names`` that is not a finite number > 0
    (``positive``) or >= 0."""
    import math

    for name in names:
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value <= 0 if positive else value < 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def require_widths(config: Any, names: Iterable[str]) -> None:
    """Normalize list-of-widths fields to lists of ints; raise ``ValueError`` naming the first one
    that is empty or holds a width < 1."""
    for name in names:
        sizes = [int(h) for h in getattr(config, name)]
        if not sizes or any(h < 1 for h in sizes):
            raise ValueError(f"{name} must be a non-empty list of positive ints, got {sizes}")
        setattr(config, name, sizes)
