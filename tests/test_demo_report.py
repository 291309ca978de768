"""The demo's comparison table and plot, on hand-made evaluation summaries; its printed verdict, against the
archived learning curve."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnunet_semisup.demo import VERDICT, Verdict, comparison_table, plot_comparison
from nnunet_semisup.evaluation.benchmark_report import paired_comparison, read_rows, with_class_mean


def _summary(dice_per_case: dict[str, list[float]]) -> dict:
    classes = list(dice_per_case)
    n = len(dice_per_case[classes[0]])
    return {
        "mean": {c: {"dice": sum(v) / n} for c, v in dice_per_case.items()},
        "per_case": [
            {"case": f"c{i}", "metrics": {c: {"dice": dice_per_case[c][i], "hd95": 1.0 + i} for c in classes}}
            for i in range(n)
        ],
    }


def test_comparison_table_reports_differences_to_the_first_trainer_and_wins():
    baseline = _summary({"anterior": [0.5, 0.6, 0.7], "posterior": [0.4, 0.4, 0.4]})
    method = _summary({"anterior": [0.6, 0.5, 0.8], "posterior": [0.4, 0.4, 0.4]})
    table = comparison_table({"LabeledOnlyTrainer": baseline, "MeanTeacherTrainer": method})
    lines = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert set(lines) == {"anterior", "posterior", "mean"}
    # anterior: per-case differences +0.1, -0.1, +0.1 -> mean +0.033, better in 2 of 3 cases
    assert "+0.033" in lines["anterior"] and "2/3" in lines["anterior"]
    assert "+0.000" in lines["posterior"] and "0/3" in lines["posterior"]
    assert "0.600 ± 0.082" in lines["anterior"]  # baseline mean ± population std


def test_plot_comparison_writes_a_png(tmp_path):
    summaries = {"A": _summary({"x": [0.1, 0.2]}), "B": _summary({"x": [0.3, 0.4]})}
    path = tmp_path / "plot.png"
    plot_comparison(summaries, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


ARCHIVE = (
    Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "learning_curve_2mm" / "results.csv"
)


def test_the_demo_prints_what_the_archived_learning_curve_measured():
    # VERDICT is the learning curve's result at the demo's setting: recomputed here from the archived rows
    rows = with_class_mean([r for r in read_rows(str(ARCHIVE)) if r["seed"] in VERDICT.seeds])
    comparison = paired_comparison(rows, VERDICT.trainer, VERDICT.n_labeled, "mean")
    assert comparison is not None
    assert VERDICT.mean_diff == pytest.approx(comparison["mean_diff"], abs=5e-4)
    assert VERDICT.ci == pytest.approx((comparison["ci_low"], comparison["ci_high"]), abs=5e-4)
    per_seed = []
    for seed in VERDICT.seeds:
        ours = _seed_mean(rows, VERDICT.trainer, seed)
        per_seed.append(ours - _seed_mean(rows, "LabeledOnlyTrainer", seed))
    assert VERDICT.seed_diffs == pytest.approx(tuple(per_seed), abs=5e-4)
    # the same comparison at the next labeled count, as printed
    n, diff, ci_low, ci_high = VERDICT.more_labeled
    more = paired_comparison(rows, VERDICT.trainer, n, "mean")
    assert n > VERDICT.n_labeled and more is not None
    assert (diff, ci_low, ci_high) == pytest.approx(
        (more["mean_diff"], more["ci_low"], more["ci_high"]), abs=5e-4
    )
    # it ranks first: no other trainer measured at this count and these seeds has a larger mean difference
    others = {r["trainer"] for r in rows if r["n_labeled"] == VERDICT.n_labeled} - {"LabeledOnlyTrainer"}
    for other in others:
        c = paired_comparison(rows, other, VERDICT.n_labeled, "mean")
        seeds = {r["seed"] for r in rows if r["trainer"] == other and r["n_labeled"] == VERDICT.n_labeled}
        if c is not None and seeds == set(VERDICT.seeds):
            assert c["mean_diff"] <= comparison["mean_diff"] + 1e-12, other


def _seed_mean(rows: list[dict], trainer: str, seed: int) -> float:
    values = [r["dice"] for r in rows if r["trainer"] == trainer and r["seed"] == seed and r["class"] == "mean"
              and r["n_labeled"] == VERDICT.n_labeled and r["setting"] == "semi"]  # fmt: skip
    return sum(values) / len(values)


def test_the_reading_says_plainly_whether_a_trainer_helps():
    loses = Verdict("XTrainer", 2, 2000, (0, 1, 2), -0.004, (-0.012, 0.005), (-0.01, 0.0, 0.002))
    assert not loses.helps and loses.reading().startswith(
        "How to read this: No trainer of this package beats labeled-only nnU-Net reliably"
    )
    assert "-0.004 mean Dice [95 % CI -0.012, +0.005], single runs -0.010 to +0.002" in loses.reading()
    assert "seed 0's labeled cases (there -0.010)" in loses.reading()
    assert "expect a difference of about -0.030 to +0.022" in loses.reading()
    wins = Verdict("XTrainer", 2, 2000, (0, 1, 2), 0.02, (0.01, 0.03), (0.01, 0.02, 0.03))
    assert wins.helps and "XTrainer is the trainer the learning curve recommends" in wins.reading()
    assert "labeled cases the same comparison" not in wins.reading()
    # a gain that does not hold with more labels is said so; one that holds is only reported
    fades = Verdict(
        "XTrainer", 2, 2000, (0, 1, 2), 0.02, (0.01, 0.03), (0.01, 0.02, 0.03), (4, 0.004, -0.014, 0.023)
    )
    assert (
        "With 4 labeled cases the same comparison gave +0.004 [95 % CI -0.014, +0.023]: no measurable gain"
        in (fades.reading())
    )
    holds = Verdict(
        "XTrainer", 2, 2000, (0, 1, 2), 0.02, (0.01, 0.03), (0.01, 0.02, 0.03), (4, 0.01, 0.002, 0.02)
    )
    assert "With 4 labeled cases: +0.010 [95 % CI +0.002, +0.020]." in holds.reading()


def test_a_work_folder_with_another_demo_split_is_refused_before_any_work(tmp_path):
    from nnunet_semisup.data.benchmark import make_benchmark
    from nnunet_semisup.data.synthetic import write_synthetic_cases
    from nnunet_semisup.demo import DATASET_ID, run_demo

    write_synthetic_cases(str(tmp_path / "src"), 6, shape=(16, 16, 16), seed=1)
    raw = tmp_path / "work" / "nnUNet_raw"
    make_benchmark(str(raw), DATASET_ID, "Synthetic", images_dir=str(tmp_path / "src" / "images"),
                   labels_dir=str(tmp_path / "src" / "labels"), n_labeled=2, n_unlabeled=2, n_test=2)  # fmt: skip
    with pytest.raises(SystemExit, match="2 labeled, 2 unlabeled and 2 test cases, not the 3, 1 and 2"):
        run_demo(str(tmp_path / "work"), str(tmp_path / "src"), n_labeled=3, n_unlabeled=1, n_test=2)
    assert not (tmp_path / "work" / "nnUNet_preprocessed" / f"Dataset{DATASET_ID}_Synthetic").exists()
