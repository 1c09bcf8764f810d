"""No layer imports a higher one (static scan of import statements, including function-local ones)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module in _imports(path):
            if module.split(".")[0] in forbidden or any(module.startswith(f) for f in forbidden if "." in f):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    return bad


def test_classic_never_imports_the_llm_side():
    assert _violations("classic", ("mrl_llm", "transformers", "trl", "peft", "vllm")) == []


def test_envs_and_the_core_never_import_agents_learners_or_experiments():
    upper = (
        "classic.agents",
        "classic.algos",
        "classic.experiments",
        "classic.tables",
        "classic.evaluate",
        "classic.rollout",
    )
    assert _violations("classic/envs", upper) == []
    core = [
        m
        for m in _imports(ROOT / "classic/core.py") | _imports(ROOT / "classic/registry.py")
        if m.startswith("classic")
    ]
    assert core == []


def test_agents_and_learners_never_import_experiments():
    assert _violations("classic/agents", ("classic.experiments", "classic.tables")) == []
    assert _violations("classic/algos", ("classic.experiments", "classic.tables")) == []
