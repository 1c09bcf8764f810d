"""benchmarks/gpu_smoke.py: the table, the exit code, SKIPPED without CUDA, every check's code on the CPU (--cpu)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
ROW = re.compile(r"^\| (\w+) \| (PASS|FAIL|SKIPPED) \| ([0-9.]+) \| (.*) \|$")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=300):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA, whatever the machine has
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(SCRIPT.parents[1]),
    )


def _rows(stdout: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(4)) for m in map(ROW.match, stdout.splitlines()) if m}


def test_without_cuda_every_check_is_named_skipped_and_the_exit_code_is_0():
    bench = _load()
    proc = _run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(proc.stdout)
    assert list(rows) == list(bench.CHECKS)  # every check, in order, named
    assert all(status == "SKIPPED" and "no CUDA device" in why for status, why in rows.values())
    assert "| check | result | seconds | detail |" in proc.stdout
    assert "0 PASS, 0 FAIL, 9 SKIPPED" in proc.stdout


def test_only_selects_checks_in_table_order_and_refuses_unknown_names():
    bench = _load()
    assert bench.parse_only("mrt_step, generator_device") == ["generator_device", "mrt_step"]
    assert bench.parse_only(None) == list(bench.CHECKS)
    for bad in ("nope", "generator_device,nope", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown check"):
            bench.parse_only(bad)
    proc = _run("--only", "nope")
    assert proc.returncode == 2 and "unknown check" in proc.stderr


def test_a_failing_check_is_reported_with_its_exceptions_last_line_and_the_others_still_run(monkeypatch, capsys):
    bench = _load()

    def boom(ctx):
        raise RuntimeError("first line\nExpected a 'cuda' device type for generator but found 'cpu'")

    checks = {
        "boom": (boom, False),
        "fine": (lambda ctx: (True, "ok"), False),
        "bad": (lambda ctx: (False, "no"), False),
        "needs_vllm": (boom, True),
    }
    monkeypatch.setattr(bench, "CHECKS", checks)
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)  # vllm is not installed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert bench.main(["--cpu"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert rows["boom"] == ("FAIL", "RuntimeError: Expected a 'cuda' device type for generator but found 'cpu'")
    assert rows["fine"] == ("PASS", "ok") and rows["bad"] == ("FAIL", "no")
    assert rows["needs_vllm"][0] == "SKIPPED" and "vllm is not installed" in rows["needs_vllm"][1]
    assert bench.main(["--cpu", "--vllm", "--only", "needs_vllm,fine"]) == 1  # --vllm: a missing vllm is a FAIL
    rows = _rows(capsys.readouterr().out)
    assert rows["needs_vllm"][0] == "FAIL" and list(rows) == ["fine", "needs_vllm"]  # table order
    assert bench.main(["--cpu", "--only", "fine,needs_vllm"]) == 0  # passes and skips only: exit 0


def test_table_cells_escape_pipes(capsys):
    bench = _load()
    bench.print_table([bench.Result("x", "PASS", 1.0, "a | b\nc")], "## t")
    assert "| x | PASS | 1.0 | a \\| b c |" in capsys.readouterr().out


def test_fast_checks_pass_on_the_cpu():
    """generator device, the three meta-prover paths in fp32/bf16, LoRA merge drift, bf16 AdamW."""
    proc = _run("--cpu", "--only", "generator_device,meta_prover_paths,lora_merge_drift,bf16_adamw")
    rows = _rows(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert list(rows) == ["generator_device", "meta_prover_paths", "lora_merge_drift", "bf16_adamw"]
    assert all(status == "PASS" for status, _ in rows.values()), rows
    assert "same seed same tokens: True" in rows["generator_device"][1]
    assert "fp32: same answers as scratch tree 100% rows 100%" in rows["meta_prover_paths"][1]
    assert "bf16 params" in rows["bf16_adamw"][1] and "fp32 params 100.0%" in rows["bf16_adamw"][1]


@pytest.mark.slow
def test_evaluation_and_training_checks_pass_on_the_cpu():
    """HF evaluation (after a few seconds of SFT), two trial-GRPO steps and one MRT step, in bf16 mixed precision."""
    proc = _run("--cpu", "--only", "hf_evaluation,grpo_steps,mrt_step", timeout=600)
    rows = _rows(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert all(status == "PASS" for status, _ in rows.values()) and len(rows) == 3, rows
    assert "same seed same actions: True" in rows["hf_evaluation"][1]
    assert "2 step(s)" in rows["grpo_steps"][1] and "1 step(s)" in rows["mrt_step"][1]
    assert proc.stdout.lstrip().startswith("## GPU smoke on CPU")  # trainer logs go to stderr: stdout is the table


def test_a_check_runs_in_a_fresh_process_and_reports_back(tmp_path):
    """What the vLLM checks do (their engines keep memory until the process exits)."""
    bench = _load()
    args = argparse.Namespace(model=None, cpu=True, threads=1, child_timeout=300)
    res = bench.run_child("bf16_adamw", args, tmp_path)
    assert res.status == "PASS" and "fp32 params 100.0%" in res.detail
