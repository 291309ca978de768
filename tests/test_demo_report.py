"""The demo's comparison table and plot, on hand-made evaluation summaries."""

from __future__ import annotations

from nnunet_semisup.demo import comparison_table, plot_comparison


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
