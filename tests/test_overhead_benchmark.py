"""``benchmarks/overhead.py`` runs end to end on tiny data, including a trainer with a loader of its own (the 2D
slice sampler of SparseMultiPlane2DTrainer), and prints one row per trainer with its floor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def test_overhead_table_covers_a_3d_and_a_2d_slice_trainer(sparse_tiny_dataset):
    run = sparse_tiny_dataset
    trainers = ["nnUNetTrainer", "LabeledOnlyTrainer", "SparseMultiPlane2DTrainer"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-d", "520", "--device", "cpu", "--reps", "2", "--iters", "1",
         "--threads", "1", "--trainers", ",".join(trainers)],
        env=dict(run.env, nnUNet_compile="f"), capture_output=True, text=True, timeout=600, cwd=run.root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    for name in trainers:
        assert name in rows, proc.stdout
        assert float(rows[name][1]) > 0  # seconds per iteration
    assert rows["nnUNetTrainer"][3] == "1.00"  # the baseline's ratio to itself
    assert rows["LabeledOnlyTrainer"][-1] == "1.00" and rows["SparseMultiPlane2DTrainer"][-1] == "?"
