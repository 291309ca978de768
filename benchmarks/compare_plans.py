"""Paired Dice of the same trainers trained with two plans: two `nnunet-semisup benchmark` work folders (or
archives) that share data, test set, unlabeled pool, labeled draws (seeds) and schedule and differ only in their
plans, e.g. `nnUNetPlans_2mm` (stock planner on the labeled cases) and `nnUNetSemiSupPlans_2mm`
(`--semisup-plans`: labeled + unlabeled images). Prints, per trainer and labeled count found in both, the mean
Dice per class under each plans and the paired difference (B - A) over (seed, test case) with the 95 % two-way
cluster-bootstrap interval of `paired_comparison` (cases are shared across seeds), wins/losses and the Wilcoxon p.

    python benchmarks/compare_plans.py WORK_A WORK_B [--trainers LabeledOnlyTrainer,BCPTrainer]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnunet_semisup.evaluation.benchmark_report import (
    MEAN_CLASS,
    group_stats,
    paired_comparison,
    read_rows,
    with_class_mean,
)


def _settings(work: Path) -> dict:
    return json.loads((work / "benchmark.json").read_text())["settings"]


def compare(work_a: Path, work_b: Path, trainers: list[str] | None = None) -> str:
    """Markdown table of B - A per trainer, labeled count and class; raises ``SystemExit`` when the two folders
    differ in anything but their plans."""
    a, b = _settings(work_a), _settings(work_b)
    differ = [
        k for k in ("data_dir", "test", "unlabeled", "schedule", "configuration") if a.get(k) != b.get(k)
    ]
    if differ:
        raise SystemExit(f"{work_a} and {work_b} differ in {', '.join(differ)}: not a comparison of plans")
    plans_a, plans_b = a["plans"], b["plans"]
    rows_a = [r for r in read_rows(str(work_a / "results.csv")) if r["setting"] == "semi"]
    rows_b = [r for r in read_rows(str(work_b / "results.csv")) if r["setting"] == "semi"]
    tag = lambda r, plans: {**r, "trainer": f"{r['trainer']} @ {plans}"}  # noqa: E731
    rows = with_class_mean([tag(r, plans_a) for r in rows_a] + [tag(r, plans_b) for r in rows_b])
    found = sorted(
        {(r["trainer"], r["n_labeled"]) for r in rows_a} & {(r["trainer"], r["n_labeled"]) for r in rows_b}
    )
    if trainers:
        found = [f for f in found if f[0] in trainers]
    classes = [*dict.fromkeys(r["class"] for r in rows if r["class"] != MEAN_CLASS), MEAN_CLASS]
    lines = [
        f"A = {plans_a} ({work_a}), B = {plans_b} ({work_b}); A and B are means over the seeds both have",
        "",
        "| trainer | labeled | class | A | B | B - A [95 % CI] | B better / worse | p | seeds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for trainer, n in found:
        seeds = sorted({r["seed"] for r in rows_a if r["trainer"] == trainer and r["n_labeled"] == n}
                       & {r["seed"] for r in rows_b if r["trainer"] == trainer and r["n_labeled"] == n})  # fmt: skip
        shared = [r for r in rows if r["seed"] in seeds]
        means = {(s["trainer"], s["class"]): s["mean"] for s in group_stats(shared) if s["n_labeled"] == n}
        for cls in classes:
            c = paired_comparison(shared, f"{trainer} @ {plans_b}", n, cls, baseline=f"{trainer} @ {plans_a}")
            if c is None:
                continue
            ma, mb = means[(f"{trainer} @ {plans_a}", cls)], means[(f"{trainer} @ {plans_b}", cls)]
            lines.append(
                f"| {trainer} | {n} | {cls} | {ma:.3f} | {mb:.3f} | {c['mean_diff']:+.3f} "
                f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {c['wins']}/{c['losses']} | {c['p_value']:.2g} | "
                f"{','.join(map(str, seeds))} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work_a", type=Path, help="benchmark work folder or archive with plans A (the reference)")
    p.add_argument("work_b", type=Path, help="benchmark work folder or archive with plans B")
    p.add_argument(
        "--trainers", default="", help="comma-separated trainers to compare (default: all in both)"
    )
    args = p.parse_args(argv)
    print(compare(args.work_a, args.work_b, [t for t in args.trainers.split(",") if t] or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
