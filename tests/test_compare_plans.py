"""``benchmarks/compare_plans.py`` on two results files whose paired differences are known (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nnunet_semisup.evaluation.benchmark_report import rows_from_summary, write_rows

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_plans.py"


def _folder(
    root: Path,
    plans: str,
    dice: dict[str, float],
    schedule: str = "epochs=20",
    seeds: tuple[int, ...] = (0, 1),
) -> Path:
    root.mkdir()
    settings = {"data_dir": "/d", "test": ["c0", "c1", "c2"], "unlabeled": ["u"], "schedule": schedule,
                "plans": plans, "configuration": "3d_fullres"}  # fmt: skip
    (root / "benchmark.json").write_text(json.dumps({"settings": settings}))
    rows = []
    for trainer, value in dice.items():
        for seed in seeds:
            summary = {"per_case": [{"case": f"c{i}", "metrics": {"a": {"dice": value + 0.01 * i, "iou": 0,
                                                                        "hd95": 0, "asd": 0}}}
                                    for i in range(3)]}  # fmt: skip
            rows += rows_from_summary(summary, trainer, "semi", 2, seed)
    write_rows(rows, str(root / "results.csv"))
    return root


def test_paired_difference_per_trainer_and_class(tmp_path):
    a = _folder(tmp_path / "a", "nnUNetPlans_2mm", {"LabeledOnlyTrainer": 0.70, "FixMatchTrainer": 0.72})
    b = _folder(tmp_path / "b", "nnUNetSemiSupPlans_2mm", {"LabeledOnlyTrainer": 0.75, "OnlyInB": 0.9})
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "A = nnUNetPlans_2mm" in out and "B = nnUNetSemiSupPlans_2mm" in out
    # every (seed, case) pair is 0.05 better with B; trainers in only one folder are not compared
    assert "| LabeledOnlyTrainer | 2 | a | 0.710 | 0.760 | +0.050 [+0.050, +0.050] | 6/0 |" in out
    assert "| LabeledOnlyTrainer | 2 | mean | 0.710 | 0.760 | +0.050" in out
    assert "FixMatchTrainer" not in out and "OnlyInB" not in out


def test_means_are_over_the_seeds_both_folders_have(tmp_path):
    a = _folder(tmp_path / "a", "nnUNetPlans_2mm", {"LabeledOnlyTrainer": 0.70})
    # A's seed 1 is 0.2 lower than its seed 0; B has only seed 0
    rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    lowered = [rows[0]] + [r.replace(",0.7", ",0.5") if ",semi,2,1," in r else r for r in rows[1:]]
    (tmp_path / "a" / "results.csv").write_text("\n".join(lowered) + "\n")
    b = _folder(tmp_path / "b", "nnUNetSemiSupPlans_2mm", {"LabeledOnlyTrainer": 0.75}, seeds=(0,))
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "| LabeledOnlyTrainer | 2 | a | 0.710 | 0.760 | +0.050 [+0.050, +0.050] | 3/0 |" in out
    assert out.rstrip().endswith("| 0 |")


def test_folders_with_other_settings_are_refused(tmp_path):
    a = _folder(tmp_path / "a", "nnUNetPlans_2mm", {"LabeledOnlyTrainer": 0.70})
    b = _folder(tmp_path / "b", "nnUNetSemiSupPlans_2mm", {"LabeledOnlyTrainer": 0.75}, schedule="epochs=5")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode != 0 and "differ in schedule" in proc.stderr
