"""The fake's process-wide accelerator-memory ledger (fake only: vLLM has no such object).

vLLM checks at start-up that the device's free memory covers ``gpu_memory_utilization`` x total
memory (``vllm/v1/worker/utils.py:request_memory``) and refuses otherwise with "Free memory on
device ... is less than desired GPU memory utilization". This ledger models one device of
``total_gib`` GiB shared by everything in the process:

* every live fake ``LLM`` holds ``gpu_memory_utilization`` (its label: ``"vllm.LLM#<k>"``);
  it releases it on ``del`` (reference count 0), on ``llm.llm_engine.engine_core.shutdown()``
  and while asleep (``llm.sleep(level>=1)``; ``llm.wake_up()`` takes it back, refusing like
  start-up when it no longer fits);
* a test reserves what else lives on the device, e.g. a trainer's model and optimizer:
  ``FAKE_MEMORY.reserve("policy+adam", 0.3)`` / ``FAKE_MEMORY.release("policy+adam")``.

API (``from vllm import FAKE_MEMORY``): ``total_gib``, ``holders() -> {label: fraction}``,
``used() -> fraction``, ``free_gib()``, ``reserve(label, fraction)``, ``release(label)``,
``check(fraction, device="cuda:0")`` (raises vLLM's ValueError when ``fraction`` does not fit),
``reset()`` (drop every holder; the test fixture calls it after each test).
"""

from __future__ import annotations

import threading


class MemoryLedger:
    """Fractions of one device's memory held by labelled users; see the module docstring."""

    def __init__(self, total_gib: float = 80.0) -> None:
        self.total_gib = float(total_gib)
        self._holders: dict[str, float] = {}
        self._lock = threading.Lock()

    def holders(self) -> dict[str, float]:
        with self._lock:
            return dict(self._holders)

    def used(self) -> float:
        with self._lock:
            return sum(self._holders.values())

    def free_gib(self) -> float:
        return max(0.0, 1.0 - self.used()) * self.total_gib

    def check(self, fraction: float, device: str = "cuda:0") -> None:
        """Raise vLLM's start-up error when ``fraction`` of the device is not free."""
        free, total = self.free_gib(), self.total_gib
        requested = fraction * total
        if free + 1e-9 < requested:
            raise ValueError(
                f"Free memory on device {device} ({free:.2f}/{total:.2f} GiB) on startup is less than desired GPU "
                f"memory utilization ({fraction}, {requested:.2f} GiB). Decrease GPU memory utilization or reduce GPU "
                "memory used by other processes."
            )

    def reserve(self, label: str, fraction: float, device: str = "cuda:0") -> None:
        """Hold ``fraction`` (in (0, 1]) of the device under ``label``; raises like vLLM when it does not fit."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        with self._lock:
            if label in self._holders:
                raise ValueError(f"{label!r} already holds memory")
        self.check(fraction, device)
        with self._lock:
            self._holders[label] = float(fraction)

    def release(self, label: str) -> None:
        with self._lock:
            self._holders.pop(label, None)

    def reset(self) -> None:
        with self._lock:
            self._holders.clear()


FAKE_MEMORY = MemoryLedger()
