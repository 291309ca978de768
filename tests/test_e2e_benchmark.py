"""End to end: ``nnunet-semisup benchmark`` on tiny synthetic data (2 labeled counts, LabeledOnlyTrainer and
SECLTrainer, one seed): datasets with the same plans, results files, and a rerun that trains nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _runner(root: Path):
    # the benchmark sets nnU-Net's folders itself (inside --work-dir); nothing of the caller's may leak in
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_n_proc_DA="1", nnUNet_compile="f", nnUNet_def_n_proc="1", PYTHONUNBUFFERED="1")

    def run(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
        exe = Path(sys.executable).parent / args[0]
        proc = subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=root)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    return run


def test_benchmark_builds_trains_reports_and_resumes(tmp_path):
    from nnunet_semisup.data.synthetic import write_synthetic_cases

    run = _runner(tmp_path)
    write_synthetic_cases(str(tmp_path / "src"), 8, shape=(32, 32, 32), seed=5)
    work = tmp_path / "work"
    command = ("nnunet-semisup", "benchmark", "--data", str(tmp_path / "src"), "--work-dir", str(work),
               "--labeled", "2,3", "--test", "2", "--unlabeled", "2", "--trainers", "SECLTrainer",
               "--schedule", "epochs=1,iters=2,val_iters=1", "-device", "cpu", "--label-names", "a,b")  # fmt: skip
    proc = run(*command, timeout=1800)
    assert "[run 4/4] SECLTrainer, 3 labeled, seed 0" in proc.stdout and "ETA" in proc.stdout

    manifest = json.loads((work / "benchmark.json").read_text())
    d2, d3 = manifest["datasets"]["n2_s0"], manifest["datasets"]["n3_s0"]
    assert (
        d2["test"] == d3["test"]
        and d2["unlabeled"] == d3["unlabeled"]
        and set(d2["labeled"]) < set(d3["labeled"])
    )
    # planned once (on the smallest dataset), the same plans moved to the other
    pre = work / "nnUNet_preprocessed"
    plans = {
        k: json.loads((pre / manifest["datasets"][k]["name"] / "nnUNetPlans.json").read_text())
        for k in ("n2_s0", "n3_s0")
    }
    assert manifest["plans_source"] == "n2_s0"  # the smallest dataset
    assert plans["n2_s0"]["configurations"] == plans["n3_s0"]["configurations"]
    assert plans["n2_s0"]["dataset_name"] == manifest["datasets"]["n2_s0"]["name"]

    with open(work / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2  # trainers x counts x test cases x classes
    assert {(r["trainer"], r["n_labeled"]) for r in rows} == {
        (t, n) for t in ("LabeledOnlyTrainer", "SECLTrainer") for n in ("2", "3")
    }
    assert {r["case"] for r in rows} == set(d2["test"]) and {r["class"] for r in rows} == {"a", "b"}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    md = (work / "results.md").read_text()
    assert "| SECLTrainer | 3 |" in md and "p=" in md and "finished runs: 4 of 4" in md
    assert (work / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    for key in ("n2_s0", "n3_s0"):
        info = json.loads((work / "runs" / "SECLTrainer" / key / "run.json").read_text())
        assert info["model_trainer"] == "SECLTrainer" and info["total_seconds"] > 0

    # a second invocation finds every run finished: no console script runs, the report is rewritten
    checkpoint = next((work / "nnUNet_results").rglob("SECLTrainer__*/fold_all/checkpoint_final.pth"))
    mtime = checkpoint.stat().st_mtime_ns
    rerun = run(*command)
    assert "4 runs, 4 already finished" in rerun.stdout
    assert "$ nnUNetv2_" not in rerun.stdout and "[run " not in rerun.stdout
    assert checkpoint.stat().st_mtime_ns == mtime
    with open(work / "results.csv") as f:
        assert list(csv.DictReader(f)) == rows

    # changing a fixed setting of this work folder is refused before anything runs
    refused = run(*[("epochs=2,iters=2,val_iters=1" if a.startswith("epochs=1") else a) for a in command],
                  check=False)  # fmt: skip
    assert refused.returncode == 2 and "other settings" in refused.stderr


def test_semisup_plans_are_planned_from_labeled_and_unlabeled_images_and_trained_with(tmp_path):
    from nnunet_semisup.data.synthetic import write_synthetic_cases

    run = _runner(tmp_path)
    write_synthetic_cases(str(tmp_path / "src"), 7, shape=(32, 32, 32), seed=6)
    work = tmp_path / "work"
    proc = run("nnunet-semisup", "benchmark", "--data", str(tmp_path / "src"), "--work-dir", str(work),
               "--labeled", "2", "--test", "2", "--unlabeled", "3", "--semisup-plans",
               "--schedule", "epochs=1,iters=2,val_iters=1", "-device", "cpu", timeout=1200)  # fmt: skip
    assert (
        "$ nnunet-semisup plan-and-preprocess" in proc.stdout
        and "nnUNetv2_plan_and_preprocess" not in proc.stdout
    )

    manifest = json.loads((work / "benchmark.json").read_text())
    assert manifest["settings"]["plans"] == "nnUNetSemiSupPlans"
    name = manifest["datasets"]["n2_s0"]["name"]
    plans = json.loads((work / "nnUNet_preprocessed" / name / "nnUNetSemiSupPlans.json").read_text())
    assert plans["semisup_planning"]["num_labeled_cases"] == 2
    assert plans["semisup_planning"]["num_unlabeled_cases"] == 3
    assert not (work / "nnUNet_preprocessed" / name / "nnUNetPlans.json").exists()
    checkpoint = work / "nnUNet_results" / name / "LabeledOnlyTrainer__nnUNetSemiSupPlans__3d_fullres"
    assert (checkpoint / "fold_all" / "checkpoint_final.pth").is_file()
    with open(work / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 and {r["trainer"] for r in rows} == {"LabeledOnlyTrainer"}
