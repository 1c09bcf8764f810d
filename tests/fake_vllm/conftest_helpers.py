"""Test helpers for vLLM code paths: the fake ``vllm`` package and a saved tiny LM.

Usage in a test module (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from fake_vllm.conftest_helpers import fake_vllm, tiny_lm_dir  # noqa: F401  (fixtures)

    def test_x(fake_vllm, tiny_lm_dir):
        llm = fake_vllm.LLM(model=str(tiny_lm_dir), dtype="float32", gpu_memory_utilization=0.3)

``fake_vllm`` (function scope) puts ``tests/fake_vllm`` first on ``sys.path``, hides any real
``vllm`` modules for the test, yields the fake module (``fake_vllm.FAKE_MEMORY`` is its memory
ledger, see ``tests/fake_vllm/vllm/_fake_memory.py``) and afterwards empties the ledger and
restores ``sys.modules``. ``tiny_lm_dir`` (module scope) is a directory holding the project's
tiny LM and tokenizer (``save_pretrained``), what ``vllm.LLM(model=...)`` loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FAKE_ROOT = Path(__file__).resolve().parent

#: the tiny LM served by the vLLM tests (fast to load, real transformers weights). head_dim 32: vLLM's CPU
#: attention supports head sizes 32, 64, 80, ... (``CPUAttentionBackend.get_supported_head_sizes``); the
#: conftest's ``tiny_model`` (head_dim 16) fails there with "Unsupported CPU attention configuration".
TINY_LM = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)


def _vllm_modules() -> list[str]:
    return [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The fake ``vllm`` module, importable as ``vllm`` for the duration of the test."""
    for name in _vllm_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE_ROOT))
    import vllm

    assert getattr(vllm, "IS_FAKE", False), f"imported {vllm.__file__}, not the fake"
    vllm.FAKE_MEMORY.reset()
    yield vllm
    vllm.FAKE_MEMORY.reset()
    for name in _vllm_modules():  # the fake's modules; monkeypatch then restores any real ones
        sys.modules.pop(name, None)


def save_tiny_lm(path: Path, seed: int = 0) -> Path:
    """Save the tiny LM (:data:`TINY_LM`, ``build_tiny_model`` with ``seed``) and its tokenizer to ``path``."""
    from mrl_llm.models import TinyLMConfig, build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(TinyLMConfig(**TINY_LM), tok, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A directory with the saved tiny LM and tokenizer (one per test module)."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))
