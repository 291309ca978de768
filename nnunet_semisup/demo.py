"""The demo: labeled-only nnU-Net vs the trainer the learning curve ranks first, at the learning curve's own
setting, through the stock nnU-Net console scripts, with every nnU-Net folder under one work folder.

The setting is the learning curve's seed-0 run at its smallest labeled count (docs/benchmarks.md): MSD
Hippocampus, the same 2 labeled, 100 unlabeled and 40 test cases (drawn by the benchmark's own
:func:`~nnunet_semisup.benchmark_runner.plan_splits`), 2 mm plans, 2000 iterations. Under its table the demo
prints what the learning curve measured there over three seeds (:data:`VERDICT`): the difference to expect from
one run, and plainly whether any trainer helps reliably.

Steps: make-benchmark -> nnUNetv2_plan_and_preprocess -> preprocess-unlabeled -> nnUNetv2_train (each
trainer, same schedule, fold ``all``) -> nnUNetv2_predict on the test cases -> evaluate -> table and plot.
Finished steps are skipped when the demo is run again with the same work folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_semisup import nnunet_commands
from nnunet_semisup.console import Console
from nnunet_semisup.nnunet_commands import use_work_folder

DATASET_ID = 504


# how far one training's randomness moves a run's mean test Dice at the learning curve's setting (repeated
# labeled-only runs of one draw, docs/benchmarks.md)
RUN_SPREAD = 0.02


@dataclass(frozen=True)
class Verdict:
    """What the learning curve measured at the demo's setting for its best-ranked trainer: the mean paired
    difference in mean Dice over classes to LabeledOnlyTrainer over (seed, test case), its 95 % two-way
    cluster-bootstrap interval, and the difference of each seed's run (mean over test cases)."""

    trainer: str
    n_labeled: int
    iterations: int
    seeds: tuple[int, ...]
    mean_diff: float
    ci: tuple[float, float]
    seed_diffs: tuple[float, ...]
    # the same trainer at the learning curve's next labeled count: (n_labeled, mean_diff, ci low, ci high), or None
    more_labeled: tuple[int, float, float, float] | None = None

    @property
    def helps(self) -> bool:
        """Reliably better: the interval excludes zero on the positive side."""
        return self.ci[0] > 0

    def reading(self) -> str:
        """The text printed under the demo's table."""
        runs = f"single runs {min(self.seed_diffs):+.3f} to {max(self.seed_diffs):+.3f}"
        measured = (
            f"over seeds {', '.join(map(str, self.seeds))} of the learning curve ({self.n_labeled} labeled cases, "
            f"{self.iterations} iterations) {self.trainer} minus LabeledOnlyTrainer was {self.mean_diff:+.3f} mean "
            f"Dice [95 % CI {self.ci[0]:+.3f}, {self.ci[1]:+.3f}], {runs}"
        )
        if self.helps:
            head = f"{self.trainer} is the trainer the learning curve recommends at this setting: {measured}."
        else:
            head = (
                "No trainer of this package beats labeled-only nnU-Net reliably at this setting. "
                f"{self.trainer} ranks first: {measured}."
            )
        low, high = min(self.seed_diffs) - RUN_SPREAD, max(self.seed_diffs) + RUN_SPREAD
        more = ""
        if self.more_labeled is not None:
            n, diff, ci_low, ci_high = self.more_labeled
            if ci_low > 0:
                more = f" With {n} labeled cases: {diff:+.3f} [95 % CI {ci_low:+.3f}, {ci_high:+.3f}]."
            else:
                more = (
                    f" With {n} labeled cases the same comparison gave {diff:+.3f} [95 % CI {ci_low:+.3f}, "
                    f"{ci_high:+.3f}]: {'a loss' if ci_high < 0 else 'no measurable gain'}, so do not expect this "
                    "difference with more labels."
                )
        return (
            f"How to read this: {head} This run repeats seed {self.seeds[0]}'s labeled cases (there "
            f"{self.seed_diffs[0]:+.3f}); training randomness alone moves one run's mean Dice by about {RUN_SPREAD}, "
            f"so expect a difference of about {low:+.3f} to {high:+.3f}.{more} See docs/benchmarks.md."
        )


# the learning curve at the demo's setting (benchmarks/results/learning_curve_2mm, docs/benchmarks.md);
# tests/test_demo_report.py recomputes these numbers from the archived results
VERDICT = Verdict(
    trainer="BCPTrainer",
    n_labeled=2,
    iterations=2000,
    seeds=(0, 1, 2),
    mean_diff=0.0401,
    ci=(0.02152, 0.06387),
    seed_diffs=(0.0257, 0.0340, 0.0607),
    more_labeled=(4, 0.0041, -0.0136, 0.0234),
)


def default_data_dir() -> Path | None:
    """``$NNUNET_SEMISUP_DEMO_DATA``, else ``../shared/data/msd_hippocampus`` seen from the current folder."""
    candidates = [
        os.environ.get("NNUNET_SEMISUP_DEMO_DATA"),
        Path.cwd().parent / "shared/data/msd_hippocampus",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "images").is_dir():
            return Path(candidate)
    return None


class _Demo(Console):
    def __init__(self, work_dir: Path, schedule: str) -> None:
        import torch

        env = use_work_folder(
            work_dir,
            dict(os.environ),
            nnUNet_semisup_schedule=schedule,
            # nnU-Net's default of 8 export workers costs minutes of imports on a small machine
            nnUNet_def_n_proc=str(min(4, os.cpu_count() or 1)),
        )
        super().__init__(env, error=SystemExit)
        self.work = work_dir
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def log(self, name: str) -> Path:
        """Where a step's whole output goes: ``logs/<name>.log`` of the work folder."""
        return self.work / "logs" / f"{name}.log"


def run_demo(
    work_dir: str = "demo_work",
    data_dir: str | None = None,
    n_labeled: int = VERDICT.n_labeled,
    n_unlabeled: int = 100,
    n_test: int = 40,
    epochs: int = VERDICT.iterations // 100,
    iters: int = 100,
    trainers: list[str] | None = None,
    spacing_mm: float | None = 2.0,
) -> int:
    """Run the demo; returns 0. See the module docstring for the steps. The split is the benchmark's
    (:func:`~nnunet_semisup.benchmark_runner.plan_splits`, seed 0), so with the defaults the demo repeats the
    learning curve's seed-0 run of LabeledOnlyTrainer and :data:`VERDICT`'s trainer."""
    from nnunet_semisup.benchmark_runner import plan_splits
    from nnunet_semisup.data.benchmark import BenchmarkSplit, find_source_cases, make_benchmark
    from nnunet_semisup.data.synthetic import write_synthetic_cases
    from nnunet_semisup.data.unlabeled import preprocess_unlabeled
    from nnunet_semisup.evaluation import evaluate_folders, format_table, save_summary

    trainers = trainers or ["LabeledOnlyTrainer", VERDICT.trainer]
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = _Demo(work, f"epochs={epochs},iters={iters},val_iters=2")
    raw = Path(demo.env["nnUNet_raw"])
    plans = "nnUNetPlans" if spacing_mm is None else f"nnUNetPlans_demo{spacing_mm:g}mm"

    source = Path(data_dir) if data_dir else default_data_dir()
    existing = sorted(raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    if existing:
        dataset_dir = existing[0]
        name = dataset_dir.name.split("_", 1)[1]  # Hippocampus or Synthetic
        demo.say(f"[1/6] Reusing {dataset_dir}")
    else:
        if source is not None:
            name, label_names = "Hippocampus", {"background": 0, "anterior": 1, "posterior": 2}
            demo.say(f"[1/6] Building the benchmark from {source} (MSD Hippocampus, CC-BY-SA 4.0)")
        else:
            name, label_names = "Synthetic", None
            source = work / "synthetic_source"
            demo.say(f"[1/6] No hippocampus data found (--data): generating synthetic cases in {source}")
            if not (source / "images").is_dir():
                write_synthetic_cases(str(source), n_labeled + n_unlabeled + n_test, seed=0)
        cases = sorted(find_source_cases(str(source / "images"), str(source / "labels")))
        drawn = plan_splits(cases, (n_labeled,), n_test, n_unlabeled, (0,), full=False).datasets[
            f"n{n_labeled}_s0"
        ]
        split = BenchmarkSplit(drawn["labeled"], drawn["unlabeled"], drawn["test"])
        dataset_dir = Path(
            make_benchmark(str(raw), DATASET_ID, name, images_dir=str(source / "images"),
                           labels_dir=str(source / "labels"), label_names=label_names, seed=0, split=split)
        )  # fmt: skip
    manifest = json.loads((dataset_dir / "semisup_manifest.json").read_text())
    counts = [len(manifest[k]) for k in ("labeled", "unlabeled", "test")]
    if counts != [n_labeled, n_unlabeled, n_test]:
        raise SystemExit(
            f"nnunet-semisup demo: {work} holds a demo dataset with {counts[0]} labeled, {counts[1]} unlabeled and "
            f"{counts[2]} test cases, not the {n_labeled}, {n_unlabeled} and {n_test} asked for: use another "
            "--work-dir (or delete this one)"
        )
    demo.say(
        f"      {dataset_dir}: {len(manifest['labeled'])} labeled, {len(manifest['unlabeled'])} unlabeled, "
        f"{len(manifest['test'])} test cases"
    )

    preprocessed = Path(demo.env["nnUNet_preprocessed"]) / dataset_dir.name
    if not (preprocessed / f"{plans}_3d_fullres").is_dir():
        demo.say(f"[2/6] Planning and preprocessing (stock nnU-Net, plans {plans})")
        nnunet_commands.plan_and_preprocess(
            demo, demo.log("plan"), DATASET_ID, "3d_fullres", 2, spacing_mm, plans
        )
    else:
        demo.say(f"[2/6] Plans {plans} and preprocessed data exist")

    demo.say("[3/6] Preprocessing the unlabeled images with the same plans")
    report = preprocess_unlabeled(str(dataset_dir), str(preprocessed), "3d_fullres", plans, num_processes=2)
    demo.say(f"      {len(report.case_ids)} unlabeled cases ready ({len(report.processed)} new)")

    train_seconds = {}
    for i, trainer in enumerate(trainers):
        final = nnunet_commands.fold_folder(demo.env["nnUNet_results"], dataset_dir.name, trainer, plans,
                                            "3d_fullres", "all") / nnunet_commands.FINAL_CHECKPOINT  # fmt: skip
        if final.is_file():
            demo.say(f"[4/6] {trainer}: already trained ({final})")
            continue
        schedule = demo.env["nnUNet_semisup_schedule"]
        demo.say(f"[4/6] Training {trainer} ({i + 1}/{len(trainers)}), schedule {schedule}")
        start = time.time()
        nnunet_commands.train(demo, demo.log(f"train_{trainer}"), dataset_dir.name, "3d_fullres", "all", trainer,
                              plans, demo.device, demo.env["nnUNet_results"], f"[4/6] {trainer}")  # fmt: skip
        train_seconds[trainer] = round(time.time() - start, 1)

    summaries = {}
    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    labels = {k: v for k, v in dataset_json["labels"].items() if v != 0}
    expected = {p.name for p in (dataset_dir / "labelsTs").glob("*.nii.gz")}
    for trainer in trainers:
        prediction = work / "predictions" / f"{trainer}__{plans}"
        if not prediction.is_dir() or not expected <= {p.name for p in prediction.glob("*.nii.gz")}:
            demo.say(f"[5/6] Predicting the test cases with {trainer} (stock nnUNetv2_predict)")
            nnunet_commands.predict(demo, demo.log(f"predict_{trainer}"), dataset_dir / "imagesTs", prediction,
                                    dataset_dir.name, "3d_fullres", trainer, plans, "all", demo.device,
                                    disable_tta=True)  # fmt: skip
        summary = evaluate_folders(str(prediction), str(dataset_dir / "labelsTs"), labels=labels)
        save_summary(summary, str(prediction / "semisup_summary.json"))
        summaries[trainer] = summary

    demo.say("[6/6] Results on the held-out test cases (final checkpoints, same plans and schedule)")
    table = comparison_table(summaries)
    print(table)
    for trainer in trainers:
        print(f"\n{trainer}:\n{format_table(summaries[trainer])}")
    setting = (n_labeled, n_unlabeled, n_test, epochs * iters, spacing_mm)
    if name != "Synthetic" and setting == (VERDICT.n_labeled, 100, 40, VERDICT.iterations, 2.0):
        print(f"\n{VERDICT.reading()}")
    else:
        print(f"\nHow to read this: this run's setting (labeled, unlabeled, test cases, iterations, spacing mm "
              f"{setting}{', synthetic data' if name == 'Synthetic' else ''}) is not the learning curve's, so what "
              "it measured does not apply here. See docs/benchmarks.md.")  # fmt: skip
    plot_path = work / "demo_comparison.png"
    plot_comparison(summaries, str(plot_path))
    results_json = {"plans": plans, "schedule": demo.env["nnUNet_semisup_schedule"], "table": table,
                    "train_seconds": train_seconds, "total_seconds": round(time.time() - demo.t0, 1),
                    "summaries": summaries}  # fmt: skip
    (work / "demo_results.json").write_text(json.dumps(results_json, indent=1))
    demo.say(f"Done. Plot: {plot_path}; per-case metrics: {work / 'predictions'}/*/semisup_summary.json")
    return 0


def comparison_table(summaries: dict[str, dict]) -> str:
    """Per-class Dice and HD95 (mean +- std over test cases) of each trainer, and the Dice difference to the
    first trainer (the labeled-only baseline) with the number of test cases where it is better."""
    names = list(summaries)
    baseline = summaries[names[0]]
    classes = list(baseline["mean"])
    header = f"{'class':<12}" + "".join(f"{n + ' Dice':>30}{'HD95 mm':>14}" for n in names)
    if len(names) > 1:
        header += "".join(f"{'dDice ' + n:>34}{'wins':>8}" for n in names[1:])
    lines = [header, "-" * len(header)]
    for cls in [*classes, "mean"]:
        row = f"{cls:<12}"
        for n in names:
            dice, hd = _case_values(summaries[n], cls, "dice"), _case_values(summaries[n], cls, "hd95")
            row += f"{_mean(dice):>22.3f} ± {_std(dice):.3f}{_mean(hd):>14.2f}"
        for n in names[1:]:
            diff = [
                a - b
                for a, b in zip(_case_values(summaries[n], cls, "dice"), _case_values(baseline, cls, "dice"))
            ]
            row += f"{_mean(diff):>+34.3f}{sum(d > 0 for d in diff):>5}/{len(diff):<2}"
        lines.append(row)
    return "\n".join(lines)


def _case_values(summary: dict, cls: str, metric: str) -> list[float]:
    if cls == "mean":  # per case, the mean over classes
        per_class = [_case_values(summary, c, metric) for c in summary["mean"]]
        return [sum(v) / len(v) for v in zip(*per_class)]
    return [case["metrics"][cls][metric] for case in summary["per_case"]]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _std(values: list[float]) -> float:
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5 if values else float("nan")


def plot_comparison(summaries: dict[str, dict], path: str) -> None:
    """Box plots of per-case Dice per class, one box per trainer."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    classes = list(summaries[names[0]]["mean"])
    fig, axes = plt.subplots(1, len(classes), figsize=(4.5 * len(classes), 4.5), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        ax.boxplot([_case_values(summaries[n], cls, "dice") for n in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("Trainer", "") for n in names], rotation=15)
        ax.set_title(f"{cls}: Dice per test case")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.suptitle("Labeled-only vs semi-supervised (same plans and schedule, final checkpoints)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
