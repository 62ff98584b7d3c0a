"""The benchmarks keep running: each script's smoke size runs end to end, writes its JSON result
(bench/common.py's runner) and prints its figure last.

No timing is asserted (the figures live in bench/RESULTS.md and bench/results/); only that each
script runs, writes a finite figure with its goal and machine, and, for the memory benchmark, the
facts that do not depend on machine load (ZeRO-3 halves the LM per rank; Adam state covers the
trainable parameters only). Those over ~30 s on a 2-core CPU are marked slow. bench/naming_lab.py
is a measurement script for the built-in world, not a benchmark: it prints one JSON line of
accuracies per measurement instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: int = 600, results_dir: Path | None = None) -> list[str]:
    """Run a benchmark (its JSON result into `results_dir`); its printed lines."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    extra = ["--results-dir", str(results_dir)] if results_dir else []
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed nothing"
    return lines


def last_ratio(lines: list[str], name: str, results_dir: Path) -> float:
    """The figure the benchmark wrote as data (its JSON result), which is also its last line."""
    last = lines[-1]
    assert last.startswith(name), f"the figure must be printed last, got: {last}"
    result = json.loads(next(Path(results_dir).glob("*.json")).read_text())
    value = result["figure"]
    assert value is not None and math.isfinite(value) and value > 0, result
    assert result["machine"] and result["date"] and "goal" in result and "met" in result
    return value


def test_step_overhead_quick(tmp_path):
    lines = run_bench("step_overhead.py", "--quick", results_dir=tmp_path)
    last_ratio(lines, "step_overhead ratio", tmp_path)
    # same math: the engine and the hand-written loop give the same losses from the same start
    drift = next(line for line in lines if "largest per-step difference" in line)
    assert float(drift.rsplit(" ", 1)[1]) < 1e-4


def test_lm_packing_quick(tmp_path):
    lines = run_bench("lm_packing.py", "--quick", results_dir=tmp_path)
    last_ratio(lines, "lm_packing ratio", tmp_path)
    # same math: the packed batch's first loss and gradients are the padded batch's
    drift = next(line for line in lines if "largest gradient difference" in line)
    assert float(drift.rsplit(" ", 1)[1]) < 1e-5
    sizes = next(line for line in lines if line.startswith("first batch:"))
    padded, packed = (int(n) for n in re.findall(r"= (\d+)", sizes))
    assert packed < padded


def test_freeze_savings_quick(tmp_path):
    lines = run_bench("freeze_savings.py", "--quick", results_dir=tmp_path)
    last_ratio(lines, "freeze_savings ratio", tmp_path)
    assert any(line.startswith("FLOP model per token") for line in lines)


@pytest.mark.slow
def test_zero3_memory_quick_halves_the_lm_and_adam_covers_the_prefix_only(tmp_path):
    lines = run_bench("zero3_memory.py", "--quick", results_dir=tmp_path)
    assert last_ratio(lines, "zero3_memory ratio", tmp_path) <= 0.52
    assert "optimizer state = Adam's for the trainable parameters, none for the LM: yes" in lines


@pytest.mark.slow
def test_loader_throughput_quick(tmp_path):
    lines = run_bench("loader_throughput.py", "--quick", results_dir=tmp_path)
    last_ratio(lines, "loader_throughput ratio", tmp_path)
    assert sum(line.startswith("[") and "samples per CPU-second: ours" in line for line in lines) == 2


def test_resume_seek_quick(tmp_path):
    lines = run_bench("resume_seek.py", "--quick", results_dir=tmp_path)
    last_ratio(lines, "resume_seek ratio", tmp_path)
    assert sum("first batch after resume" in line for line in lines) == 2  # each checked equal to the uninterrupted


@pytest.mark.slow
def test_gpu_script_tiny_on_cpu(tmp_path):
    lines = run_bench("gpu.py", "--tiny", results_dir=tmp_path)
    last_ratio(lines, "gpu frozen MFU", tmp_path)
    assert any(" frozen:" in line for line in lines) and any(" trainable:" in line for line in lines)


@pytest.mark.slow
def test_big_lm_quick(tmp_path):
    lines = run_bench("big_lm.py", "--quick", results_dir=tmp_path)
    result = json.loads((tmp_path / "big_lm.json").read_text())
    assert result["figure"] > 0 and result["plan_error"] >= 0 and result["goal"] == 0.65
    assert re.fullmatch(r"big_lm: zero3_2rank_over_zero2_1rank=\d+\.\d+ plan_error=\d+\.\d+", lines[-1]), lines[-1]
    # every rank of every configuration reports, with the plan beside it
    for name, ranks in (("zero2_1rank", 1), ("zero3_2rank", 2), ("zero3_4rank", 4)):
        assert sum(line.split()[0] == name for line in lines if "|" in line) == ranks, name
    assert any(line.startswith("  zero3_2rank ZeRO-3 window: live ") for line in lines)


@pytest.mark.slow
def test_gpu_acceptance_tiny_on_cpu(tmp_path):
    lines = run_bench("gpu_acceptance.py", "--tiny", results_dir=tmp_path)
    last_ratio(lines, "gpu_acceptance mfu", tmp_path)
    assert sum(line.startswith(f"ZeRO-{s}: exit 0") for line in lines for s in (0, 2, 3)) == 3
    assert any(line.startswith("export + caption eval") for line in lines)


def test_naming_lab_runs_and_writes_each_probe(tmp_path):
    lines = run_bench("naming_lab.py", "--mix", "cls:1,swaplook:1,world:1", "--steps", "6", "--every", "2",
                      "--documents", "200", "--probe-items", "10", "--then", "world:1", "--switch-when", "lookup:0",
                      "--then", "cls:1", "--switch-when", "lookup:0", timeout=300)
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # --switch-when: each later mixture from the first measurement that reaches its level on, in order
    assert [r.get("switch") for r in rows] == [2, 4, None]
    assert [r["mixture"] for r in rows] == ["then", "then2", "then2"]
    for row in rows:
        for key in ("cls", "bind", "bindnamed", "namedlook", "swaplook", "hop1", "lookup"):
            assert 0.0 <= row[key] <= 1.0, (key, row)


def test_naming_lab_refuses_a_later_mixture_without_its_switch():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "naming_lab.py"), "--then", "world:1", "--then",
                           "cls:1", "--switch-when", "lookup:0.5"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 2 and "each --then needs a --switch-when" in proc.stderr


def test_naming_lab_documents_write_names_where_they_say():
    import numpy as np

    from tests.support.core_fixtures import bench_module

    naming_lab = bench_module("naming_lab")
    from frozen_scale.world import scenes

    rng = np.random.default_rng(0)
    for i in range(20):
        swapped = naming_lab.document("swaplook", rng, i, 0)
        scene, *questions = swapped.split(" question : ")
        assert not set(scene.split()) & set(scenes.SHAPES), swapped  # names instead of shapes
        assert len(questions) == 2 and "this is a" not in swapped  # both asked, no support
        named = naming_lab.document("namedlook", rng, i, 0)
        words = named.split(" question : ")[0].split()
        assert sum(w in scenes.SHAPES for w in words) == 2
        assert all(words[words.index(w) + 1] in naming_lab.NONSENSE_NAMES for w in words if w in scenes.SHAPES)
    with pytest.raises(ValueError, match="unknown document kind"):
        naming_lab.document("nope", rng, 0, 0)
