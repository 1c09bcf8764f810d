import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _single_thread():
    # Tests are tiny; one thread avoids oversubscription on shared 2-core machines.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_tok():
    from mrl_llm.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tok):
    from mrl_llm.models import TinyLMConfig, build_tiny_model

    return build_tiny_model(
        TinyLMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tiny_tok, seed=0
    ).eval()
