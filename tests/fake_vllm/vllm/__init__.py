"""A fake ``vllm`` for tests (vLLM 0.31's offline API over a transformers model, CPU only).

Not vLLM: a test puts ``tests/fake_vllm`` first on ``sys.path`` (the ``fake_vllm`` fixture of
``tests/fake_vllm/conftest_helpers.py``) so that ``import vllm`` finds this package. It follows
the real signatures and semantics the project relies on (``LLM``, ``SamplingParams``,
``vllm.inputs.TokensPrompt``, per-request seeding, the start-up memory check) and backs them
with a transformers model so outputs are real; see :mod:`vllm._fake_engine` and, for the
process-wide memory ledger, :mod:`vllm._fake_memory` (``FAKE_MEMORY``).
"""

from vllm._fake_engine import LLM, apply_top_k_top_p
from vllm._fake_memory import FAKE_MEMORY, MemoryLedger
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

__version__ = "0.31.0+fake"
IS_FAKE = True

__all__ = [
    "LLM",
    "SamplingParams",
    "TokensPrompt",
    "RequestOutput",
    "CompletionOutput",
    "FAKE_MEMORY",
    "MemoryLedger",
    "apply_top_k_top_p",
    "IS_FAKE",
]
