"""Tables, statistics, plot, splits, skip logic and input checks of ``nnunet-semisup benchmark`` (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunet_semisup.benchmark_runner import (
    BenchmarkError,
    BenchmarkOptions,
    Run,
    archive_results,
    plan_runs,
    plan_splits,
    run_benchmark,
    run_finished,
)
from nnunet_semisup.evaluation.benchmark_report import (
    curve_data,
    gap_closed,
    group_stats,
    paired_bootstrap_ci,
    paired_comparison,
    per_seed_differences,
    plot_learning_curve,
    plot_paired_differences,
    read_rows,
    results_markdown,
    rows_from_summary,
    with_class_mean,
    write_rows,
)

CLASSES = ("anterior", "posterior")
CASES = [f"case_{i}" for i in range(6)]


def _summary(dice: dict[str, list[float]]) -> dict:
    """An evaluate_folders-like summary with per-case Dice (and HD95 = 10 * (1 - Dice))."""
    return {
        "per_case": [
            {
                "case": case,
                "metrics": {
                    cls: {
                        "dice": dice[cls][i],
                        "iou": dice[cls][i] / 2,
                        "hd95": 10 * (1 - dice[cls][i]),
                        "asd": 1.0,
                    }
                    for cls in dice
                },
            }
            for i, case in enumerate(CASES)
        ]
    }


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """LabeledOnly and MeanTeacher at 4 and 16 labeled cases, seeds 0 and 1, plus the upper bound."""
    rng = np.random.default_rng(0)
    out = []
    for seed in (0, 1):
        for n in (4, 16):
            base = {cls: list(rng.uniform(0.3, 0.7, len(CASES))) for cls in CLASSES}
            better = {cls: [v + rng.uniform(-0.05, 0.2) for v in base[cls]] for cls in CLASSES}
            out += rows_from_summary(_summary(base), "LabeledOnlyTrainer", "semi", n, seed)
            out += rows_from_summary(_summary(better), "MeanTeacherTrainer", "semi", n, seed)
        full = {cls: list(rng.uniform(0.8, 0.9, len(CASES))) for cls in CLASSES}
        out += rows_from_summary(_summary(full), "LabeledOnlyTrainer", "full", 40, seed)
    return out


def _dice(rows, trainer, n, cls, setting="semi"):
    return {
        (r["seed"], r["case"]): r["dice"]
        for r in rows
        if r["trainer"] == trainer and r["n_labeled"] == n and r["class"] == cls and r["setting"] == setting
    }


def test_rows_have_one_entry_per_trainer_count_seed_case_class(rows):
    assert len(rows) == (2 * 2 * 2 + 2) * len(CASES) * len(CLASSES)
    keys = {(r["trainer"], r["setting"], r["n_labeled"], r["seed"], r["case"], r["class"]) for r in rows}
    assert len(keys) == len(rows)


def test_csv_round_trip(rows, tmp_path):
    write_rows(rows, str(tmp_path / "results.csv"))
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "trainer,setting,n_labeled,seed,case,class,dice,iou,hd95,asd"
    back = read_rows(str(tmp_path / "results.csv"))
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        assert a["trainer"] == b["trainer"] and a["n_labeled"] == b["n_labeled"] and a["seed"] == b["seed"]
        assert b["dice"] == pytest.approx(a["dice"], abs=1e-12)


def test_class_mean_is_the_per_case_mean_over_classes(rows):
    extended = with_class_mean(rows)
    assert len(extended) == len(rows) * 3 // 2
    mean = _dice(extended, "MeanTeacherTrainer", 16, "mean")
    for key, value in mean.items():
        parts = [_dice(rows, "MeanTeacherTrainer", 16, cls)[key] for cls in CLASSES]
        assert value == pytest.approx(np.mean(parts))
    assert with_class_mean(extended) == extended  # idempotent


def test_group_stats_pool_cases_and_seeds(rows):
    stats = group_stats(with_class_mean(rows))
    by_key = {(s["trainer"], s["setting"], s["n_labeled"], s["class"]): s for s in stats}
    for (trainer, setting, n, cls), s in by_key.items():
        values = np.array(list(_dice(with_class_mean(rows), trainer, n, cls, setting).values()))
        assert s["n"] == 2 * len(CASES) and s["n_seeds"] == 2
        assert s["mean"] == pytest.approx(values.mean())
        assert s["std"] == pytest.approx(values.std(ddof=0))
    assert ("LabeledOnlyTrainer", "full", 40, "posterior") in by_key


def test_paired_comparison_matches_scipy(rows):
    for n in (4, 16):
        for cls in CLASSES:
            ours, base = _dice(rows, "MeanTeacherTrainer", n, cls), _dice(rows, "LabeledOnlyTrainer", n, cls)
            diff = np.array([ours[k] - base[k] for k in sorted(base)])
            c = paired_comparison(rows, "MeanTeacherTrainer", n, cls)
            assert c["n_pairs"] == 12
            assert c["mean_diff"] == pytest.approx(diff.mean())
            assert c["wins"] == int((diff > 0).sum()) and c["losses"] == int((diff < 0).sum())
            assert c["p_value"] == pytest.approx(wilcoxon(diff).pvalue)
            assert 0 < c["p_value"] <= 1


def test_paired_comparison_pairs_on_seed_and_case_only():
    # the baseline has an extra case and the order of rows differs: only matching (seed, case) pairs count
    a = rows_from_summary(_summary({"x": [0.5, 0.6, 0.7, 0.8, 0.9, 0.4]}), "T", "semi", 4, 0)
    b = rows_from_summary(_summary({"x": [0.4, 0.6, 0.5, 0.9, 0.1, 0.4]}), "LabeledOnlyTrainer", "semi", 4, 0)
    a = a[:5][::-1]
    c = paired_comparison(a + b, "T", 4, "x")
    diff = np.array([0.1, 0.0, 0.2, -0.1, 0.8])
    assert c["n_pairs"] == 5 and c["wins"] == 3 and c["losses"] == 1
    assert c["mean_diff"] == pytest.approx(diff.mean())
    assert c["p_value"] == pytest.approx(wilcoxon(diff).pvalue)
    # no baseline at that count: no comparison; identical results: p = 1
    assert paired_comparison(a + b, "T", 16, "x") is None
    same = rows_from_summary(_summary({"x": [0.5] * 6}), "T", "semi", 4, 0)
    same_base = rows_from_summary(_summary({"x": [0.5] * 6}), "LabeledOnlyTrainer", "semi", 4, 0)
    assert paired_comparison(same + same_base, "T", 4, "x")["p_value"] == 1.0


def test_cluster_bootstrap_interval_brackets_the_mean_and_resamples_shared_cases():
    # two seeds scored on the same four cases; case c3 is hard for the trainer under both seeds
    diffs = {(seed, f"c{i}"): d for seed in (0, 1) for i, d in enumerate((0.10, 0.12, 0.08, -0.30))}
    low, high = paired_bootstrap_ci(diffs)
    mean = float(np.mean(list(diffs.values())))
    assert low < mean < high
    assert paired_bootstrap_ci(diffs) == (low, high)  # deterministic
    # the case draw is shared by the seeds: every replicate mean is a mean over whole cases, so the interval
    # equals that of the one-seed bootstrap of the per-case means (same rng draws for the cases)
    per_case = {(0, f"c{i}"): d for i, d in enumerate((0.10, 0.12, 0.08, -0.30))}
    one_seed = paired_bootstrap_ci(per_case)
    assert (low, high) == pytest.approx(one_seed, abs=0.02)
    # no spread: a zero-width interval; constant +0.05: exactly +0.05
    assert paired_bootstrap_ci({(0, "a"): 0.05, (0, "b"): 0.05}) == pytest.approx((0.05, 0.05))
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_ci({})


def test_gap_closed_is_the_fraction_of_the_way_to_full_labels():
    base = rows_from_summary(_summary({"x": [0.5] * 6}), "LabeledOnlyTrainer", "semi", 4, 0)
    full = rows_from_summary(_summary({"x": [0.9] * 6}), "LabeledOnlyTrainer", "full", 40, 0)
    half = rows_from_summary(_summary({"x": [0.7] * 6}), "T", "semi", 4, 0)
    worse = rows_from_summary(_summary({"x": [0.4] * 6}), "W", "semi", 4, 0)
    rows = base + full + half + worse
    assert gap_closed(rows, "T", 4, "x") == pytest.approx(0.5)
    assert gap_closed(rows, "W", 4, "x") == pytest.approx(-0.25)
    assert gap_closed(base + half, "T", 4, "x") is None  # no upper bound run
    # seeds 0 and 1 of the trainer and the baseline, one run of the bound (the same labeled set for every seed)
    base1 = rows_from_summary(_summary({"x": [0.3] * 6}), "LabeledOnlyTrainer", "semi", 4, 1)
    half1 = rows_from_summary(_summary({"x": [0.6] * 6}), "T", "semi", 4, 1)
    assert gap_closed(rows + base1 + half1, "T", 4, "x") == pytest.approx((0.65 - 0.4) / (0.9 - 0.4))


def test_markdown_shows_means_differences_and_p_values(rows):
    md = results_markdown(rows, "## header", seconds={("MeanTeacherTrainer", "semi", 4): [100.0, 300.0]})
    assert md.startswith("## header")
    stats = {(s["trainer"], s["setting"], s["n_labeled"], s["class"]): s for s in group_stats(rows)}
    s = stats[("MeanTeacherTrainer", "semi", 16, "anterior")]
    assert f"{s['mean']:.3f} ± {s['std']:.3f}" in md
    c = paired_comparison(rows, "MeanTeacherTrainer", 16, "posterior")
    p = f"{c['p_value']:.2g}" if c["p_value"] < 0.01 else f"{c['p_value']:.2f}"
    ci = f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
    assert f"{c['mean_diff']:+.3f} {ci} ({c['wins']}/{c['losses']}, p={p})" in md
    closed = gap_closed(rows, "MeanTeacherTrainer", 16, "posterior")
    assert f"gap closed {closed:+.0%}" in md
    assert "| LabeledOnlyTrainer | 40 (all) |" in md
    assert "| MeanTeacherTrainer | 4 | 200 | 2 |" in md
    # the baseline is not compared with itself, the upper bound not with the baseline
    diff_table = md.split("Dice difference")[1].split("Wall-clock")[0]
    assert "| LabeledOnlyTrainer |" not in diff_table
    # per seed: the mean over cases of the paired differences of that seed alone
    rows_mean = with_class_mean(rows)
    for seed in (0, 1):
        ours = {k: v for k, v in _dice(rows_mean, "MeanTeacherTrainer", 4, "mean").items() if k[0] == seed}
        base = _dice(rows_mean, "LabeledOnlyTrainer", 4, "mean")
        expected = np.mean([ours[k] - base[k] for k in ours])
        assert per_seed_differences(rows_mean, "MeanTeacherTrainer", 4, "mean")[seed] == pytest.approx(
            expected
        )
    by_seed = per_seed_differences(rows_mean, "MeanTeacherTrainer", 16, "mean")
    assert f"| MeanTeacherTrainer | 16 | {by_seed[0]:+.3f} | {by_seed[1]:+.3f} |" in md
    # a seed the trainer lacks is left out, not averaged as zero
    one_seed = [r for r in rows_mean if not (r["trainer"] == "MeanTeacherTrainer" and r["seed"] == 1)]
    assert set(per_seed_differences(one_seed, "MeanTeacherTrainer", 4, "mean")) == {0}


def test_curve_data_and_plot(rows, tmp_path):
    data = curve_data(with_class_mean(rows), "mean")
    mt = data["MeanTeacherTrainer"]
    assert mt["x"] == [4, 16]
    expected = np.array(list(_dice(with_class_mean(rows), "MeanTeacherTrainer", 16, "mean").values()))
    assert mt["mean"][1] == pytest.approx(expected.mean()) and mt["std"][1] == pytest.approx(expected.std())
    assert sorted(mt["seed_means"]) == [0, 1]
    seed1 = [
        v for (s, _), v in _dice(with_class_mean(rows), "MeanTeacherTrainer", 4, "mean").items() if s == 1
    ]
    assert mt["seed_means"][1][0] == pytest.approx(np.mean(seed1))
    assert data["LabeledOnlyTrainer (all 40 labeled)"]["x"] == [40]
    path = tmp_path / "curve.png"
    plot_learning_curve(rows, str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_paired_differences_plot(rows, tmp_path):
    path = tmp_path / "differences.png"
    assert plot_paired_differences(rows, str(path), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    only_baseline = [r for r in rows if r["trainer"] == "LabeledOnlyTrainer"]
    assert not plot_paired_differences(only_baseline, str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


# ---------------------------------------------------------------------------------------------------------
# splits, runs, skip logic, input checks

IDS = [f"c{i:03d}" for i in range(60)]


def test_splits_keep_test_set_and_unlabeled_pool_fixed_across_counts_and_seeds():
    s = plan_splits(IDS, (4, 16), 10, 20, (0, 1, 2), full=True)
    assert len(s.test) == 10 and len(s.unlabeled) == 20 and len(s.labeled_pool) == 30
    assert not set(s.test) & set(s.unlabeled)
    for d in s.datasets.values():
        assert d["test"] == s.test
        assert not set(d["labeled"]) & set(s.test)
        if d["setting"] == "semi":
            assert d["unlabeled"] == s.unlabeled and len(d["labeled"]) == d["n_labeled"]
            assert set(d["labeled"]) <= set(s.labeled_pool)
        else:
            assert d["unlabeled"] == [] and sorted(d["labeled"]) == sorted(set(IDS) - set(s.test))
    for seed in (0, 1, 2):  # nested per seed
        assert set(s.datasets[f"n4_s{seed}"]["labeled"]) < set(s.datasets[f"n16_s{seed}"]["labeled"])
    assert s.datasets["n4_s0"]["labeled"] != s.datasets["n4_s1"]["labeled"]  # a seed changes the draw
    # other labeled counts, same test set and pool
    other = plan_splits(IDS, (8,), 10, 20, (0,), full=False)
    assert other.test == s.test and other.unlabeled == s.unlabeled


def test_splits_reject_counts_that_do_not_fit():
    with pytest.raises(BenchmarkError, match="only 60 cases"):
        plan_splits(IDS, (4, 40), 10, 20, (0,), full=False)
    with pytest.raises(BenchmarkError, match="positive"):
        plan_splits(IDS, (0, 4), 10, None, (0,), full=False)
    # default pool: everything the largest count does not need
    assert len(plan_splits(IDS, (4, 16), 10, None, (0,), full=False).unlabeled) == 34


def test_run_order_completes_each_labeled_count_before_the_next():
    opts = BenchmarkOptions(
        "d", "w", (16, 4), 10, trainers=("SECLTrainer", "self-train"), seeds=(0,), full=True
    )
    runs = plan_runs(opts, plan_splits(IDS, (4, 16), 10, 20, (0,), True))
    assert [(r.trainer, r.setting, r.n_labeled) for r in runs] == [
        ("LabeledOnlyTrainer", "semi", 4), ("SECLTrainer", "semi", 4), ("self-train", "semi", 4),
        ("LabeledOnlyTrainer", "semi", 16), ("SECLTrainer", "semi", 16), ("self-train", "semi", 16),
        ("LabeledOnlyTrainer", "full", 50),
    ]  # fmt: skip
    assert [r.key for r in runs] == ["n4_s0"] * 3 + ["n16_s0"] * 3 + ["full_s0"]


def test_run_finished_needs_checkpoint_predictions_and_summary(tmp_path):
    run_dir, checkpoint = tmp_path / "run", tmp_path / "model" / "checkpoint_final.pth"
    (run_dir / "predictions").mkdir(parents=True)
    checkpoint.parent.mkdir()
    assert not run_finished(run_dir, checkpoint, ["a", "b"])
    checkpoint.write_bytes(b"x")
    (run_dir / "predictions" / "a.nii.gz").write_bytes(b"x")
    (run_dir / "summary.json").write_text("{}")
    assert not run_finished(run_dir, checkpoint, ["a", "b"])  # a test prediction is missing
    (run_dir / "predictions" / "b.nii.gz").write_bytes(b"x")
    assert run_finished(run_dir, checkpoint, ["a", "b"])
    (run_dir / "summary.json").unlink()
    assert not run_finished(run_dir, checkpoint, ["a", "b"])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from nnunet_semisup.data.synthetic import write_synthetic_cases

    folder = tmp_path_factory.mktemp("src")
    write_synthetic_cases(str(folder), 8, shape=(12, 12, 12))
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trainers": ("LabeledOnlyTrainer", "NoSuchTrainer")}, "unknown trainer.*NoSuchTrainer"),
        ({"labeled": (2, 7)}, "only 8 cases"),
        ({"data_dir": "/nonexistent/folder"}, "images not found"),
        ({"schedule": "epochs=two"}, "--schedule"),
        ({"seeds": (0, 0)}, "--seeds"),
    ],
)
def test_bad_input_fails_before_anything_is_written(source, tmp_path, changes, message):
    opts = BenchmarkOptions(str(source), str(tmp_path / "work"), (2, 4), 2, schedule="epochs=1", **{})
    opts = BenchmarkOptions(**{**opts.__dict__, **changes})
    with pytest.raises(BenchmarkError, match=message):
        run_benchmark(opts)
    assert not (tmp_path / "work").exists()


def test_a_work_folder_of_other_settings_is_refused(source, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "benchmark.json").write_text(json.dumps({"settings": {"schedule": "epochs=5"}, "ids": {}}))
    opts = BenchmarkOptions(str(source), str(work), (2,), 2, schedule="epochs=1", report_only=True)
    with pytest.raises(BenchmarkError, match=r"other settings.*schedule"):
        run_benchmark(opts)


def test_run_names():
    assert Run("SECLTrainer", "semi", 4, 1, "n4_s1").name == "SECLTrainer/n4_s1"


def test_archived_runs_count_as_finished_in_another_work_folder(source, tmp_path):
    """--archive keeps the report and each finished run's summary; copied into a new work folder, the runs are
    reported as finished without a checkpoint or predictions (a study continued on another machine)."""
    import shutil

    from nnunet_semisup.evaluation import evaluate_folders, save_summary

    def options(work):
        return BenchmarkOptions(str(source), str(work), (2,), 2, schedule="epochs=1", report_only=True)

    work = tmp_path / "work"
    assert run_benchmark(options(work))["missing"] == ["LabeledOnlyTrainer/n2_s0"]
    test_cases = json.loads((work / "benchmark.json").read_text())["settings"]["test"]
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in test_cases:
        shutil.copyfile(source / "labels" / f"{case}.nii.gz", labels / f"{case}.nii.gz")
    run_dir = work / "runs" / "LabeledOnlyTrainer" / "n2_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "predictions").mkdir()
    save_summary(evaluate_folders(str(labels), str(labels)), str(run_dir / "summary.json"))
    (run_dir / "run.json").write_text(json.dumps({"total_seconds": 12.5}))
    # a summary without checkpoint or predictions is not a finished run in its own work folder
    assert not run_finished(run_dir, tmp_path / "checkpoint_final.pth", test_cases)

    archive = tmp_path / "archive"
    assert archive_results(work, archive) == ["LabeledOnlyTrainer/n2_s0"]
    archived_run = archive / "runs" / "LabeledOnlyTrainer" / "n2_s0"
    assert sorted(p.name for p in archived_run.iterdir()) == ["run.json", "summary.json"]
    assert json.loads((archived_run / "run.json").read_text()) == {"total_seconds": 12.5, "archived": True}

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(archive, elsewhere)
    result = run_benchmark(options(elsewhere))
    assert result["finished"] == ["LabeledOnlyTrainer/n2_s0"] and result["missing"] == []
    rows = read_rows(result["results_csv"])
    assert {r["case"] for r in rows} == set(test_cases) and all(float(r["dice"]) == 1.0 for r in rows)


def test_archive_refuses_a_folder_that_is_not_a_benchmark(tmp_path):
    with pytest.raises(BenchmarkError, match="not a benchmark work folder"):
        archive_results(tmp_path, tmp_path / "archive")
