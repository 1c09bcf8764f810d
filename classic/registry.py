"""Registries: name -> config class, one per kind of part (task distributions, baseline agents,
meta-learners).

Each part registers itself in its own file with a decorator on its config dataclass, so adding a
task, a baseline or a learner is one new file::

    @TASKS.register("gridnavi")
    @dataclass(frozen=True)
    class GridNaviConfig:
        name: str = "gridnavi"
        episodes_per_trial: int = 4
        def make(self) -> GridNavi: ...

A registered config class has a ``name`` field whose default is its registered name. Recipes
name the part (``task: {name: gridnavi, episodes_per_trial: 4}``); the recipe loader
(:mod:`classic.config`) picks the config class by that name (a tagged union) for any field
annotated with ``registry.ref``. An unknown name is a :class:`RegistryError` listing the known
ones.

The modules of a registry's packages are imported the first time the registry is read, so a new
file in ``classic/envs/``, ``classic/agents/`` or ``classic/algos/`` needs no edit elsewhere.
Other packages (e.g. ``mrl_llm``'s learners) add themselves with :meth:`Registry.add_package`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Any, Callable, ClassVar, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown or duplicate name; the message lists the known names."""


class RegistryRef:
    """Base of the marker types :attr:`Registry.ref`: a config field annotated with one holds a
    config of that registry, picked by its ``name`` key (for pydantic, which builds recipes: a
    tagged union of every registered config class, discriminated by ``name``)."""

    registry: ClassVar["Registry"]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        reg = cls.registry
        choices = {name: handler.generate_schema(reg.get(name)) for name in reg.names()}
        return core_schema.tagged_union_schema(choices, discriminator="name")


class Registry:
    """Name -> registered config class (a dataclass with a ``name`` field).

    Args:
        what: what the registry holds, for messages ("task distribution").
        packages: packages whose modules are imported before the first lookup.
    """

    def __init__(self, what: str, packages: tuple[str, ...] = ()) -> None:
        self.what = what
        self._packages = list(packages)
        self._imported: set[str] = set()
        self._entries: dict[str, type] = {}
        self.ref: type[RegistryRef] = type(f"{what.title().replace(' ', '')}Ref", (RegistryRef,), {"registry": self})

    def add_package(self, package: str) -> None:
        """Also import every module of ``package`` before lookups (for parts outside ``classic``)."""
        if package not in self._packages:
            self._packages.append(package)

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering a config dataclass under ``name``.

        Raises:
            RegistryError: ``name`` is taken by another class.
            TypeError: the class is not a dataclass with a ``name`` field defaulting to ``name``.
        """

        def deco(cls: type[T]) -> type[T]:
            fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            if "name" not in fields or fields["name"].default != name:
                raise TypeError(f"{cls.__qualname__}: a registered {self.what} config needs a field name = {name!r}")
            old = self._entries.get(name)
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise RegistryError(
                    f"{self.what} {name!r} is registered twice ({old.__qualname__}, {cls.__qualname__})"
                )
            self._entries[name] = cls
            return cls

        return deco

    def _import_all(self) -> None:
        for package in self._packages:
            if package in self._imported:
                continue
            self._imported.add(package)
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if info.name.startswith("_"):
                    continue
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except ModuleNotFoundError as err:  # a part behind an optional extra (gymnasium, ...)
                    if (err.name or "").split(".")[0] in ("classic", "mrl_llm"):
                        raise

    @property
    def size(self) -> int:
        """How many parts are registered so far (without importing the packages)."""
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._import_all()
        return list(self._entries)

    def get(self, name: Any) -> type:
        """The config class registered as ``name``.

        Raises:
            RegistryError: unknown name; the message lists the known ones and the closest match.
        """
        self._import_all()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        known = list(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {self.what} {name!r} (known: {', '.join(known)}){hint}")


#: Task distributions: configs with ``make() -> TaskDistribution`` and ``episodes_per_trial``.
TASKS = Registry("task distribution", ("classic.envs",))
#: Baseline (hand-designed) agents: configs with ``make(dist, task) -> Agent`` and a tuning ``grid``.
AGENTS = Registry("baseline", ("classic.agents",))
#: Meta-learners: configs with ``learner() -> MetaLearner``.
LEARNERS = Registry("learner", ("classic.algos",))
