"""Dice against schedule length for the convergence study of ``benchmarks/convergence.sh``.

Reads ``WORK/iters<N>/results.csv`` (one ``nnunet-semisup benchmark`` work folder per schedule length), prints a
markdown table (test Dice per class and labeled count, mean over test cases and seeds, for every schedule),
the plateau reading, and draws Dice against iterations, one line per labeled count::

    python benchmarks/convergence_report.py WORK [--out docs/benchmarks_convergence.png] [--tolerance 0.005]

Plateau rule: a labeled count has plateaued at the shortest schedule whose mean Dice (over classes) is within
``--tolerance`` of the longest schedule's; where only the longest is, the plateau is "not reached" (a longer
schedule is needed to know). The gap that a semi-supervised method can close at a count is the
fully labeled bound minus that count, at the same schedule.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nnunet_semisup.evaluation.benchmark_report import MEAN_CLASS, group_stats, read_rows, with_class_mean


def load(work: Path, trainer: str) -> dict[int, list[dict]]:
    """Iterations -> rows of ``trainer`` from every ``iters<N>/results.csv`` under ``work``."""
    out = {}
    for csv in sorted(work.glob("iters*/results.csv")):
        match = re.fullmatch(r"iters(\d+)", csv.parent.name)
        if match:
            out[int(match.group(1))] = [r for r in read_rows(str(csv)) if r["trainer"] == trainer]
    return out


def table(by_iters: dict[int, list[dict]]) -> dict[tuple[str, int], dict[str, dict[int, tuple[float, int]]]]:
    """(setting, n_labeled) -> class -> iterations -> (mean Dice, number of (seed, case) pairs)."""
    out: dict = {}
    for iters, rows in by_iters.items():
        for s in group_stats(with_class_mean(rows), "dice"):
            out.setdefault((s["setting"], s["n_labeled"]), {}).setdefault(s["class"], {})[iters] = (
                s["mean"],
                s["n"],
            )
    return out


def plateau(curve: dict[int, tuple[float, int]], tolerance: float) -> int | str | None:
    """The shortest schedule within ``tolerance`` of the longest one; ``"not reached"`` when only the longest
    itself is (the curve still moves: a longer schedule is needed to know); None with fewer than two schedules."""
    if len(curve) < 2:
        return None
    longest = curve[max(curve)][0]
    at = min(it for it, (dice, _n) in curve.items() if abs(dice - longest) <= tolerance)
    return "not reached" if at == max(curve) else at


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="WORK folder of benchmarks/convergence.sh")
    parser.add_argument("--trainer", default="LabeledOnlyTrainer")
    parser.add_argument("--out", type=Path, help="PNG of Dice against iterations")
    parser.add_argument("--tolerance", type=float, default=0.005, help="plateau tolerance in mean Dice")
    args = parser.parse_args(argv)

    data = table(load(args.work, args.trainer))
    if not data:
        print(f"no finished runs of {args.trainer} under {args.work}/iters*/results.csv", file=sys.stderr)
        return 2
    runs = sorted(data, key=lambda k: (k[0] == "full", k[1]))
    schedules = sorted({it for per_class in data.values() for c in per_class.values() for it in c})
    classes = [c for c in data[runs[0]] if c != MEAN_CLASS] + [MEAN_CLASS]

    print(f"### {args.trainer}: test Dice (mean over test cases x seeds) against iterations\n")
    print("| labeled | class | " + " | ".join(f"{it} it" for it in schedules) + " | plateau |")
    print("|---|---|" + "---:|" * (len(schedules) + 1))
    for key in runs:
        label = f"{key[1]} (all)" if key[0] == "full" else str(key[1])
        for cls in classes:
            curve = data[key].get(cls, {})
            cells = [f"{curve[it][0]:.3f}" if it in curve else "" for it in schedules]
            at = plateau(curve, args.tolerance) if cls == MEAN_CLASS else None
            print(f"| {label} | {cls} | " + " | ".join(cells) + f" | {at if at else ''} |")
    full = [k for k in runs if k[0] == "full"]
    if full:
        print("\nGap to the fully labeled bound (mean Dice over classes):")
        for key in runs:
            if key[0] == "full":
                continue
            gaps = [
                f"{it} it: {data[full[0]][MEAN_CLASS][it][0] - data[key][MEAN_CLASS][it][0]:+.3f}"
                for it in schedules
                if it in data[key][MEAN_CLASS] and it in data[full[0]][MEAN_CLASS]
            ]
            print(f"- {key[1]} labeled: " + ", ".join(gaps))

    if args.out:
        import matplotlib

        matplotlib.use("agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(classes), figsize=(4.5 * len(classes), 4), squeeze=False)
        for ax, cls in zip(axes[0], classes):
            for i, key in enumerate(runs):
                curve = data[key].get(cls, {})
                xs = sorted(curve)
                label = f"all {key[1]} labeled" if key[0] == "full" else f"{key[1]} labeled"
                ax.plot(xs, [curve[x][0] for x in xs], "o--" if key[0] == "full" else "o-", color=f"C{i}",
                        label=label)  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks(schedules, [str(s) for s in schedules])
            ax.minorticks_off()
            ax.set_xlabel("training iterations (one run each)")
            ax.set_ylabel("test Dice")
            ax.set_title(cls)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8, loc="lower right")
        fig.suptitle(f"{args.trainer}: convergence (final checkpoints)")
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        plt.close(fig)
        print(f"\nfigure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
