"""``benchmarks/convergence_report.py`` on results files whose plateau is known (no training)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nnunet_semisup.evaluation.benchmark_report import rows_from_summary, write_rows

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence_report.py"


def _rows(dice: float, setting: str, n: int) -> list[dict]:
    summary = {"per_case": [{"case": f"c{i}", "metrics": {"a": {"dice": dice, "iou": 0, "hd95": 0, "asd": 0},
                                                          "b": {"dice": dice + 0.02, "iou": 0, "hd95": 0,
                                                                "asd": 0}}}
                            for i in range(3)]}  # fmt: skip
    return rows_from_summary(summary, "LabeledOnlyTrainer", setting, n, 0)


def test_table_plateau_gap_and_figure(tmp_path):
    # 2 labeled: 0.60, 0.700, 0.703 -> plateau at 2000 (within 0.005 of 4000); full: 0.80, 0.85, 0.86 -> not
    # reached (only 4000 is within 0.005 of itself)
    for iters, low, full in ((1000, 0.60, 0.80), (2000, 0.700, 0.85), (4000, 0.703, 0.86)):
        folder = tmp_path / f"iters{iters}"
        folder.mkdir()
        write_rows(_rows(low, "semi", 2) + _rows(full, "full", 100), str(folder / "results.csv"))
    (tmp_path / "iters8000").mkdir()  # unfinished schedule: no results yet, ignored
    png = tmp_path / "curve.png"
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(png)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "| 2 | mean | 0.610 | 0.710 | 0.713 | 2000 |" in out
    assert "| 100 (all) | mean | 0.810 | 0.860 | 0.870 | not reached |" in out
    assert "- 2 labeled: 1000 it: +0.200, 2000 it: +0.150, 4000 it: +0.157" in out
    assert png.stat().st_size > 10_000


def test_no_results_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no finished runs" in proc.stderr and "Traceback" not in proc.stderr
