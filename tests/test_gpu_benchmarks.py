"""``benchmarks/gpu_check.sh`` (its CPU dry run: the GPU path with bfloat16 AMP and torch.compile on the tiny
dataset, the table, one nnUNetv2_predict) and ``benchmarks/loader_throughput.py`` (on the tiny dataset) run end
to end and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()}


def test_gpu_check_dry_run_on_cpu(tiny_dataset_tiny_network):
    run, plans = tiny_dataset_tiny_network
    proc = subprocess.run(
        [str(BENCHMARKS / "gpu_check.sh"), "--device", "cpu", "--dry-run", "-d", "501", "-p", plans,
         "--trainers", "MeanTeacherTrainer", "--compile-backend", "eager"],
        env=dict(run.env, PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True, text=True, timeout=900, cwd=run.root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    for name in ("nnUNetTrainer", "MeanTeacherTrainer"):
        assert name in rows, proc.stdout
        seconds, _, peak_mb, finite, compiled = rows[name][1:6]
        assert float(seconds) > 0 and float(peak_mb) > 0 and finite == "yes" and compiled == "yes"
    assert rows["nnUNetTrainer"][2] == "1.00"
    assert "nnUNetv2_predict: ok (2 cases, MeanTeacherTrainer" in proc.stdout
    assert "DDP: not run (needs two GPUs)" in proc.stdout
    summary = json.loads((run.results / "gpu_check.json").read_text())
    assert [r["trainer"] for r in summary["results"]] == ["nnUNetTrainer", "MeanTeacherTrainer"]
    assert all(r["amp"] for r in summary["results"])


def test_loader_throughput_table(tiny_dataset):
    trainers = ["MeanTeacherTrainer", "SECLTrainer", "SECLTrainer_NoContrast"]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loader_throughput.py"), "-d", "501", "--draws", "1",
         "--gpu-step-ms", "1", "--trainers", ",".join(trainers)],
        env=tiny_dataset.env, capture_output=True, text=True, timeout=600, cwd=tiny_dataset.root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    base = rows["nnUNetTrainer"]
    assert base[3] == base[1] and base[4] == "1.00"  # labeled only: total = labeled, ratio to itself 1
    mean_teacher = rows["MeanTeacherTrainer"]
    labeled, unlabeled, total = (float(v) for v in mean_teacher[1:4])
    assert unlabeled > 0 and abs(total - labeled - unlabeled) <= 1
    assert int(mean_teacher[5]) >= total  # workers at a 1 ms GPU step: one per ms of loading
    assert float(mean_teacher[6]) > 0  # image-only unlabeled augmentation measured
    assert rows["SECLTrainer"][-1] == "MeanTeacherTrainer)"  # same pipeline, measured once
    assert float(rows["SECLTrainer_NoContrast"][2]) == 0  # no unlabeled batch
