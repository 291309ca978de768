"""Tables, statistics and the learning-curve plot of ``nnunet-semisup benchmark`` (pure functions on rows).

A *row* is one test case x class of one run: ``{"trainer", "setting", "n_labeled", "seed", "case", "class",
"dice", "iou", "hd95", "asd"}``. ``setting`` is ``"semi"`` for the labeled-count runs and ``"full"`` for the
fully labeled upper bound (every non-test case labeled). The pseudo class ``"mean"`` (per case, the mean over
the foreground classes) is added by :func:`with_class_mean`.

Statistics: mean and standard deviation (``ddof=0``, as in ``nnunet-semisup evaluate``) over all
(test case, seed) pairs of a trainer and labeled count; differences to the baseline are paired on
(seed, test case) and tested with the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``,
default ``zero_method="wilcox"``: zero differences are dropped; all differences zero gives p = 1).

The Wilcoxon test treats every (seed, case) pair as independent, but every seed is scored on the same test
cases, so pairs of one case are correlated. The confidence interval of the mean difference therefore comes
from a two-way cluster bootstrap (:func:`paired_bootstrap_ci`): each replicate draws seeds with replacement
and, independently, test cases with replacement (one case draw shared by all seeds), which keeps the
correlation between seeds that share a case. With one seed it is the ordinary case bootstrap.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "CSV_COLUMNS",
    "curve_data",
    "gap_closed",
    "group_stats",
    "paired_bootstrap_ci",
    "paired_comparison",
    "plot_learning_curve",
    "plot_paired_differences",
    "read_rows",
    "results_markdown",
    "rows_from_summary",
    "with_class_mean",
    "write_rows",
]

METRICS = ("dice", "iou", "hd95", "asd")
CSV_COLUMNS = ("trainer", "setting", "n_labeled", "seed", "case", "class", *METRICS)
MEAN_CLASS = "mean"


def rows_from_summary(summary: dict, trainer: str, setting: str, n_labeled: int, seed: int) -> list[dict]:
    """One row per test case x class of an :func:`~nnunet_semisup.evaluation.evaluate_folders` summary."""
    return [
        {
            "trainer": trainer,
            "setting": setting,
            "n_labeled": int(n_labeled),
            "seed": int(seed),
            "case": entry["case"],
            "class": cls,
            **{m: float(values[m]) for m in METRICS},
        }
        for entry in summary["per_case"]
        for cls, values in entry["metrics"].items()
    ]


def write_rows(rows: Iterable[dict], path: str) -> None:
    """Write rows as CSV with the columns :data:`CSV_COLUMNS`."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def read_rows(path: str) -> list[dict]:
    """Rows of a CSV written by :func:`write_rows`, with numbers parsed."""
    with open(path, newline="") as f:
        return [
            {
                **row,
                "n_labeled": int(row["n_labeled"]),
                "seed": int(row["seed"]),
                **{m: float(row[m]) for m in METRICS},
            }
            for row in csv.DictReader(f)
        ]


def _classes(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["class"] for r in rows if r["class"] != MEAN_CLASS))


def with_class_mean(rows: Sequence[dict]) -> list[dict]:
    """``rows`` plus, per (trainer, setting, n_labeled, seed, case), a row of class ``"mean"`` holding the mean
    of each metric over the foreground classes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["class"] != MEAN_CLASS:
            groups.setdefault((r["trainer"], r["setting"], r["n_labeled"], r["seed"], r["case"]), []).append(
                r
            )
    extra = [
        {**members[0], "class": MEAN_CLASS, **{m: float(np.mean([x[m] for x in members])) for m in METRICS}}
        for members in groups.values()
    ]
    return [*(r for r in rows if r["class"] != MEAN_CLASS), *extra]


def _runs(rows: Sequence[dict]) -> list[tuple[str, str, int]]:
    """(trainer, setting, n_labeled) in first-seen order, the baseline's settings first among equals."""
    return list(dict.fromkeys((r["trainer"], r["setting"], r["n_labeled"]) for r in rows))


def _values(rows: Sequence[dict], trainer: str, setting: str, n: int, cls: str, metric: str) -> dict:
    """(seed, case) -> value."""
    return {
        (r["seed"], r["case"]): r[metric]
        for r in rows
        if r["trainer"] == trainer and r["setting"] == setting and r["n_labeled"] == n and r["class"] == cls
    }


def group_stats(rows: Sequence[dict], metric: str = "dice") -> list[dict]:
    """Per (trainer, setting, n_labeled, class): ``mean``, ``std`` (ddof=0) and ``n`` over (seed, case) pairs,
    and ``n_seeds``. Classes include ``"mean"`` if the rows do (see :func:`with_class_mean`)."""
    out = []
    classes = list(dict.fromkeys(r["class"] for r in rows))
    for trainer, setting, n in _runs(rows):
        for cls in classes:
            values = _values(rows, trainer, setting, n, cls, metric)
            if not values:
                continue
            arr = np.array(list(values.values()), dtype=float)
            out.append({"trainer": trainer, "setting": setting, "n_labeled": n, "class": cls,
                        "mean": float(arr.mean()), "std": float(arr.std()), "n": len(arr),
                        "n_seeds": len({seed for seed, _ in values})})  # fmt: skip
    return out


def paired_comparison(
    rows: Sequence[dict], trainer: str, n_labeled: int, cls: str, baseline: str = "LabeledOnlyTrainer",
    metric: str = "dice", setting: str = "semi",
) -> dict | None:  # fmt: skip
    """``trainer`` minus ``baseline`` at the same labeled count, paired on (seed, test case).

    Returns ``{"mean_diff", "ci_low", "ci_high", "wins", "losses", "n_pairs", "p_value"}`` (wins: pairs where
    ``trainer`` is higher), or None when no pair exists. ``ci_low``/``ci_high``: the 95 % two-way cluster
    bootstrap interval of :func:`paired_bootstrap_ci`. ``p_value`` is the two-sided Wilcoxon signed-rank test
    of the differences (1.0 when every difference is zero; it ignores that seeds share test cases).
    """
    from scipy.stats import wilcoxon

    diffs = _paired_differences(rows, trainer, n_labeled, cls, baseline, metric, setting)
    if not diffs:
        return None
    diff = np.array(list(diffs.values()), dtype=float)
    p_value = 1.0 if np.all(diff == 0) else float(wilcoxon(diff).pvalue)
    ci_low, ci_high = paired_bootstrap_ci(diffs)
    return {
        "mean_diff": float(diff.mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "n_pairs": len(diffs),
        "p_value": p_value,
    }


def paired_bootstrap_ci(
    diffs: dict[tuple[int, str], float], level: float = 0.95, n_boot: int = 4000, rng_seed: int = 0
) -> tuple[float, float]:
    """Percentile confidence interval of the mean paired difference by a two-way cluster bootstrap.

    ``diffs`` maps (seed, test case) to a difference. Each of ``n_boot`` replicates draws the seeds with
    replacement and, independently, the test cases with replacement; the case draw is shared by all seeds
    (seeds are scored on the same test cases), and the replicate's statistic is the mean over the drawn
    (seed, case) cells that exist. Deterministic for a given ``rng_seed``. Raises ``ValueError`` when ``diffs``
    is empty or ``level`` is not in (0, 1).
    """
    if not diffs:
        raise ValueError("paired_bootstrap_ci needs at least one (seed, case) difference")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    seeds = sorted({seed for seed, _ in diffs})
    cases = sorted({case for _, case in diffs})
    table = np.full((len(seeds), len(cases)), np.nan)
    for (seed, case), value in diffs.items():
        table[seeds.index(seed), cases.index(case)] = value
    rng = np.random.default_rng(rng_seed)
    seed_draw = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    case_draw = rng.integers(0, len(cases), size=(n_boot, len(cases)))
    stats = np.array([np.nanmean(table[np.ix_(s, c)]) for s, c in zip(seed_draw, case_draw)])
    stats = stats[np.isfinite(stats)]
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def _paired_differences(rows: Sequence[dict], trainer: str, n_labeled: int, cls: str, baseline: str, metric: str,
                        setting: str = "semi") -> dict[tuple[int, str], float]:  # fmt: skip
    """(seed, case) -> ``trainer`` minus ``baseline`` (its ``"semi"`` runs) at ``n_labeled``, sorted by key, for
    the pairs both have."""
    ours = _values(rows, trainer, setting, n_labeled, cls, metric)
    base = _values(rows, baseline, "semi", n_labeled, cls, metric)
    return {k: ours[k] - base[k] for k in sorted(set(ours) & set(base))}


def per_seed_differences(rows: Sequence[dict], trainer: str, n_labeled: int, cls: str,
                         baseline: str = "LabeledOnlyTrainer", metric: str = "dice") -> dict[int, float]:  # fmt: skip
    """Seed -> mean over test cases of ``trainer`` minus ``baseline`` at ``n_labeled`` (paired on the cases
    both have for that seed; seeds with no pair are left out). A difference of the same sign on every seed says
    that the gain does not hinge on one draw of labeled cases; the spread says what one run can show."""
    by_seed: dict[int, list[float]] = {}
    for (seed, _case), diff in _paired_differences(rows, trainer, n_labeled, cls, baseline, metric).items():
        by_seed.setdefault(seed, []).append(diff)
    return {seed: float(np.mean(values)) for seed, values in by_seed.items()}


def gap_closed(rows: Sequence[dict], trainer: str, n_labeled: int, cls: str,
               baseline: str = "LabeledOnlyTrainer", metric: str = "dice") -> float | None:  # fmt: skip
    """The fraction of the gap between ``baseline`` at ``n_labeled`` and the fully labeled upper bound that
    ``trainer`` closes: (trainer - baseline) / (full - baseline). ``trainer`` and ``baseline``: means over the
    (seed, case) pairs of the seeds both have; the bound: the mean over all its runs (its labeled set is the same
    for every seed, so its seeds are repeats of one training and one run is enough). 1 = as good as full labels,
    0 = no gain, negative = worse than the baseline. None when a run is missing or the gap is not positive (no
    room to close)."""
    ours = _values(rows, trainer, "semi", n_labeled, cls, metric)
    base = _values(rows, baseline, "semi", n_labeled, cls, metric)
    full = _full_values(rows, baseline, cls, metric)
    seeds = {s for s, _ in ours} & {s for s, _ in base}
    if not seeds or not full:
        return None
    mean = lambda d: float(np.mean([v for (s, _c), v in d.items() if s in seeds]))  # noqa: E731
    gap = float(np.mean(list(full.values()))) - mean(base)
    if gap <= 0:
        return None
    return (mean(ours) - mean(base)) / gap


def _full_values(rows: Sequence[dict], trainer: str, cls: str, metric: str) -> dict:
    """(seed, case) -> value of the upper-bound run (setting ``"full"``) of ``trainer``."""
    return {
        (r["seed"], r["case"]): r[metric]
        for r in rows
        if r["trainer"] == trainer and r["setting"] == "full" and r["class"] == cls
    }


def _label(trainer: str, setting: str, n: int) -> str:
    return f"{trainer} (all {n} labeled)" if setting == "full" else trainer


def curve_data(rows: Sequence[dict], cls: str, metric: str = "dice") -> dict[str, dict]:
    """Per trainer (semi setting): ``{"x": labeled counts ascending, "mean", "std", "seed_means": {seed: [..]}}``
    and per upper-bound run (key ``"<trainer> (all N labeled)"``) the same with one x; lists align with x."""
    stats = [s for s in group_stats(rows, metric) if s["class"] == cls]
    out: dict[str, dict] = {}
    for s in sorted(stats, key=lambda s: s["n_labeled"]):
        trainer, setting, n = s["trainer"], s["setting"], s["n_labeled"]
        entry = out.setdefault(_label(trainer, setting, n), {"x": [], "mean": [], "std": [], "per_seed": []})
        entry["x"].append(n)
        entry["mean"].append(s["mean"])
        entry["std"].append(s["std"])
        by_seed: dict[int, list[float]] = {}
        for (seed, _case), value in _values(rows, trainer, setting, n, cls, metric).items():
            by_seed.setdefault(seed, []).append(value)
        entry["per_seed"].append({seed: float(np.mean(v)) for seed, v in by_seed.items()})
    for entry in out.values():
        per_seed = entry.pop("per_seed")
        seeds = sorted({seed for point in per_seed for seed in point})
        entry["seed_means"] = {seed: [point.get(seed, math.nan) for point in per_seed] for seed in seeds}
    return out


def _save_figure(fig, axes, path: str, title: str) -> None:
    """Legend in the last panel, optional title, then write ``path`` and free the figure."""
    import matplotlib.pyplot as plt

    axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curve(rows: Sequence[dict], path: str, metric: str = "dice", title: str = "") -> None:
    """Dice vs labeled count, one panel per class and one for the class mean; one line per trainer (mean over
    test cases and seeds) with a band of +- one std; per-seed means as dots when there are several seeds; the
    fully labeled upper bound as a dashed horizontal line with its band."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    rows = with_class_mean(rows)
    classes = [*_classes(rows), MEAN_CLASS]
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4.5), squeeze=False)
    counts = sorted({r["n_labeled"] for r in rows if r["setting"] == "semi"})
    for ax, cls in zip(axes[0], classes):
        for i, (name, d) in enumerate(curve_data(rows, cls, metric).items()):
            mean, std = np.array(d["mean"]), np.array(d["std"])
            if "labeled)" in name and len(d["x"]) == 1:  # upper bound
                ax.axhline(mean[0], color="k", ls="--", lw=1.2, label=f"{name}")
                ax.axhspan(mean[0] - std[0], mean[0] + std[0], color="k", alpha=0.07)
                continue
            color = f"C{i}"
            ax.plot(d["x"], mean, "o-", color=color, label=name)
            ax.fill_between(d["x"], mean - std, mean + std, color=color, alpha=0.15)
            if len(d["seed_means"]) > 1:
                for seed_means in d["seed_means"].values():
                    ax.plot(d["x"], seed_means, ".", color=color, alpha=0.6)
        if counts:
            ax.set_xscale("log", base=2)
            ax.set_xticks(counts, [str(c) for c in counts])
            ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.set_xlabel("labeled cases")
        ax.set_ylabel(f"test {metric} (mean ± std over cases x seeds)")
        ax.set_title(cls)
        ax.grid(alpha=0.3)
    _save_figure(fig, axes, path, title)


def plot_paired_differences(rows: Sequence[dict], path: str, baseline: str = "LabeledOnlyTrainer",
                            metric: str = "dice", title: str = "") -> bool:  # fmt: skip
    """The verdict's figure: per labeled count one panel, per trainer one row, the mean paired difference to
    ``baseline`` over (seed, test case) with its 95 % cluster-bootstrap interval (:func:`paired_comparison`), one
    marker per class and the class mean in black; the seeds behind each row in its label. Returns False (no
    file) when no trainer has a pair with the baseline."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    rows = with_class_mean(rows)
    classes = [*_classes(rows), MEAN_CLASS]
    counts = sorted({r["n_labeled"] for r in rows if r["setting"] == "semi"})
    trainers = list(dict.fromkeys(t for t, s, _ in _runs(rows) if s == "semi" and t != baseline))
    panels = []
    for n in counts:
        entries = []
        for trainer in trainers:
            comps = {cls: paired_comparison(rows, trainer, n, cls, baseline, metric) for cls in classes}
            if comps[MEAN_CLASS] is None:
                continue
            seeds = sorted({s for s, _ in _values(rows, trainer, "semi", n, MEAN_CLASS, metric)}
                           & {s for s, _ in _values(rows, baseline, "semi", n, MEAN_CLASS, metric)})  # fmt: skip
            entries.append((f"{trainer}\n(seeds {','.join(map(str, seeds))})", comps))
        if entries:
            panels.append((n, entries))
    if not panels:
        return False
    height = 1.8 + 0.55 * max(len(e) for _, e in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), height), squeeze=False)
    offsets = np.linspace(-0.22, 0.22, len(classes))
    for ax, (n, entries) in zip(axes[0], panels):
        for row, (_label, comps) in enumerate(entries):
            for k, cls in enumerate(classes):
                c = comps[cls]
                if c is None:
                    continue
                y = row + offsets[k]
                color = "k" if cls == MEAN_CLASS else f"C{k}"
                err = [[c["mean_diff"] - c["ci_low"]], [c["ci_high"] - c["mean_diff"]]]
                ax.errorbar(c["mean_diff"], y, xerr=err, fmt="o", color=color, capsize=3, ms=4,
                            label=cls if row == 0 else None)  # fmt: skip
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(entries)), [label for label, _ in entries], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} difference to {baseline}\n(mean, 95 % CI over seeds x test cases)")
        ax.set_title(f"{n} labeled cases")
        ax.grid(axis="x", alpha=0.3)
    _save_figure(fig, axes, path, title)
    return True


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def results_markdown(
    rows: Sequence[dict], header: str = "", baseline: str = "LabeledOnlyTrainer", seconds: dict | None = None
) -> str:
    """The markdown report: Dice and HD95 mean ± std per class and labeled count, the paired Dice
    difference to ``baseline`` (wins/losses over pairs, Wilcoxon p) and its mean per seed. ``seconds`` maps
    (trainer, setting, n_labeled) to a list of wall-clock seconds per run (training + prediction), shown in a
    last table."""
    rows = with_class_mean(rows)
    classes = [*_classes(rows), MEAN_CLASS]
    runs = _runs(rows)
    runs.sort(key=lambda t: (t[1] == "full", t[2], t[0] != baseline))
    lines = [header] if header else []

    for metric, title, digits in (("dice", "Dice", 3), ("hd95", "HD95 (mm)", 2)):
        stats = {
            (s["trainer"], s["setting"], s["n_labeled"], s["class"]): s for s in group_stats(rows, metric)
        }
        lines += [f"### Test {title}: mean ± std over test cases x seeds", "",
                  "| trainer | labeled | " + " | ".join(classes) + " | pairs |",
                  "|---|---:|" + "---:|" * len(classes) + "---:|"]  # fmt: skip
        for trainer, setting, n in runs:
            cells = []
            for cls in classes:
                s = stats.get((trainer, setting, n, cls))
                cells.append("" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
            pairs = stats[(trainer, setting, n, classes[-1])]
            count = f"{n} (all)" if setting == "full" else str(n)
            lines.append(f"| {trainer} | {count} | " + " | ".join(cells) + f" | {pairs['n']} |")
        lines.append("")

    lines += [f"### Dice difference to {baseline} (paired over test cases x seeds)", "",
              "Each cell: mean difference [95 % cluster-bootstrap CI over seeds and test cases], pairs better / "
              "worse, two-sided Wilcoxon signed-rank p; then the fraction of the gap to the fully labeled upper "
              "bound that the trainer closes (when the upper bound was run).", "",
              "| trainer | labeled | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]  # fmt: skip
    for trainer, setting, n in runs:
        if trainer == baseline or setting != "semi":
            continue
        cells = []
        for cls in classes:
            c = paired_comparison(rows, trainer, n, cls, baseline)
            if c is None:
                cells.append("n/a")
                continue
            cell = (f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] "
                    f"({c['wins']}/{c['losses']}, p={_fmt_p(c['p_value'])})")  # fmt: skip
            closed = gap_closed(rows, trainer, n, cls, baseline)
            cells.append(cell if closed is None else f"{cell}; gap closed {closed:+.0%}")
        lines.append(f"| {trainer} | {n} | " + " | ".join(cells) + " |")
    lines.append("")

    seeds = sorted({r["seed"] for r in rows if r["setting"] == "semi"})
    lines += [f"### Mean Dice difference to {baseline} per seed (mean over test cases)", "",
              "| trainer | labeled | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---:|" + "---:|" * len(seeds)]  # fmt: skip
    for trainer, setting, n in runs:
        if trainer == baseline or setting != "semi":
            continue
        by_seed = per_seed_differences(rows, trainer, n, MEAN_CLASS, baseline)
        cells = [f"{by_seed[s]:+.3f}" if s in by_seed else "" for s in seeds]
        lines.append(f"| {trainer} | {n} | " + " | ".join(cells) + " |")
    lines.append("")

    if seconds:
        lines += ["### Wall-clock seconds per run (training + test prediction), mean over seeds", "",
                  "| trainer | labeled | seconds | runs |", "|---|---:|---:|---:|"]  # fmt: skip
        for trainer, setting, n in runs:
            secs = [s for s in seconds.get((trainer, setting, n), []) if s is not None]
            if secs:
                count = f"{n} (all)" if setting == "full" else str(n)
                lines.append(f"| {trainer} | {count} | {np.mean(secs):.0f} | {len(secs)} |")
        lines.append("")
    return "\n".join(lines)
