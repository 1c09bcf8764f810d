"""A fake ``vllm`` package for tests (``tests/fake_vllm/vllm``); see ``conftest_helpers.py``."""
