"""``nnunet-semisup benchmark``: learning curves of several trainers against labeled-only nnU-Net.

From a folder with ``images/`` and ``labels/`` (Decathlon or nnU-Net naming) it

1. draws one fixed test set and one fixed unlabeled pool (the same for every labeled count and seed), and per
   seed and labeled count N a labeled subset of the remaining "labeled pool" (nested across N for one seed);
   with ``--full`` also the upper bound whose labeled set is every non-test case (pool + unlabeled pool);
2. builds one nnU-Net raw dataset per (N, seed) with :func:`~nnunet_semisup.data.benchmark.make_benchmark`
   (symlinks), plans **once** (``nnUNetv2_plan_and_preprocess`` on the smallest dataset, the plans a user with
   that few labeled cases gets; with ``--semisup-plans`` ``nnunet-semisup plan-and-preprocess``, which also sees
   that dataset's unlabeled images) and moves these plans to every other dataset (``nnUNetv2_move_plans_between_datasets`` +
   ``nnUNetv2_preprocess``, as ``self-train`` does), then preprocesses the unlabeled images with them;
3. trains every requested trainer with the same schedule (``nnUNet_semisup_schedule``) through the stock
   ``nnUNetv2_train`` (fold ``all``; ``self-train`` runs ``nnunet-semisup self-train`` whose teacher is the
   LabeledOnlyTrainer model of the same dataset), predicts the test set with the final checkpoint through the
   stock ``nnUNetv2_predict`` and evaluates it;
4. writes ``results.csv``, ``results.md``, ``learning_curve.png`` and ``differences.png`` (see
   :mod:`nnunet_semisup.evaluation.benchmark_report`).

What a seed changes: the labeled subset drawn for every N (the test set and the unlabeled pool stay fixed).
nnU-Net does not seed its training, so every run also has its own initialisation and augmentation: with k
seeds, a trainer's spread covers both the choice of labeled cases and the training randomness. The upper
bound has the same labeled set for every seed, so there a seed is only a repeat of the training.

A run is finished when its final checkpoint, its test predictions and its ``summary.json`` exist; finished
runs are skipped, an interrupted training is continued (``--c``). Everything lives under ``--work-dir``
(its own nnUNet_raw/preprocessed/results), so the user's nnU-Net folders are never touched.

Results outlive the work folder: ``--archive DEST`` (or :func:`archive_results`) copies the manifest, the report
and every finished run's ``summary.json`` and ``run.json`` (a few kB a run, no images or checkpoints) to DEST.
Copied back into a work folder (``cp -r DEST/. WORK/``), archived runs count as finished and are reported but not
retrained, so a study of many CPU hours can be continued on another machine with the same data and options.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunet_semisup import nnunet_commands
from nnunet_semisup.console import Console
from nnunet_semisup.nnunet_commands import use_work_folder

__all__ = [
    "BASELINE",
    "SELF_TRAIN",
    "BenchmarkError",
    "BenchmarkOptions",
    "archive_results",
    "plan_splits",
    "plans_identifier",
    "run_benchmark",
]

BASELINE = "LabeledOnlyTrainer"
SELF_TRAIN = "self-train"
MANIFEST = "benchmark.json"
SUMMARY = "summary.json"
RUN_INFO = "run.json"
FOLD = "all"


class BenchmarkError(ValueError):
    """Bad input or a conflict with an existing work folder; the message names the thing and the fix."""


@dataclass(frozen=True)
class BenchmarkOptions:
    """What ``nnunet-semisup benchmark`` was asked to do (see the module docstring)."""

    data_dir: str
    work_dir: str
    labeled: tuple[int, ...]
    n_test: int
    trainers: tuple[str, ...] = (BASELINE,)
    n_unlabeled: int | None = None
    seeds: tuple[int, ...] = (0,)
    full: bool = False
    schedule: str = ""
    spacing_mm: float | None = None
    configuration: str = "3d_fullres"
    device: str = "cpu"
    num_processes: int = 1
    label_names: dict[str, int] | None = None
    first_id: int = 100
    report_only: bool = False
    semisup_plans: bool = False


@dataclass(frozen=True)
class Run:
    """One trainer on one benchmark dataset."""

    trainer: str
    setting: str  # "semi" or "full"
    n_labeled: int
    seed: int
    key: str  # dataset key, e.g. "n4_s0" or "full_s0"

    @property
    def name(self) -> str:
        return f"{self.trainer}/{self.key}"


@dataclass
class _Splits:
    test: list[str]
    unlabeled: list[str]
    labeled_pool: list[str]
    datasets: dict[str, dict] = field(
        default_factory=dict
    )  # key -> {labeled, unlabeled, test, n, seed, setting}


def plan_splits(case_ids: list[str], labeled: tuple[int, ...], n_test: int, n_unlabeled: int | None,
                seeds: tuple[int, ...], full: bool) -> _Splits:  # fmt: skip
    """The test set, the unlabeled pool and each dataset's labeled cases.

    The test set is :func:`~nnunet_semisup.data.benchmark.split_cases`'s seed-0 test set of all cases; the
    unlabeled pool is a seed-0 draw of ``n_unlabeled`` of the rest (default: all but ``max(labeled)``); the
    labeled set of (N, seed) is the first N of the seed's order of the remaining labeled pool. Raises
    :class:`BenchmarkError` when the counts do not fit.
    """
    from nnunet_semisup.data.benchmark import split_cases

    counts = sorted(set(labeled))
    if not counts or counts[0] < 1:
        raise BenchmarkError(f"--labeled needs positive counts, got {list(labeled)}")
    if n_test < 1:
        raise BenchmarkError(f"--test must be at least 1, got {n_test}")
    total = len(case_ids)
    available = total - n_test
    if n_unlabeled is None:
        n_unlabeled = available - counts[-1]
    if n_unlabeled < 0 or counts[-1] + n_unlabeled > available:
        raise BenchmarkError(
            f"{counts[-1]} labeled (largest --labeled) + {n_unlabeled} unlabeled + {n_test} test cases are "
            f"requested, but the data folder has only {total} cases; lower --labeled, --unlabeled or --test"
        )
    test = split_cases(case_ids, 1, n_test, seed=0).test
    rest = sorted(set(case_ids) - set(test))
    unlabeled = split_cases(rest, 1, n_unlabeled, seed=0).test if n_unlabeled else []
    pool = sorted(set(rest) - set(unlabeled))
    splits = _Splits(test=test, unlabeled=unlabeled, labeled_pool=pool)
    for seed in seeds:
        for n in counts:
            chosen = split_cases(pool, n, 0, 0, seed=seed).labeled
            splits.datasets[f"n{n}_s{seed}"] = {"labeled": chosen, "unlabeled": unlabeled, "test": test,
                                                "n_labeled": n, "seed": seed, "setting": "semi"}  # fmt: skip
        if full:
            splits.datasets[f"full_s{seed}"] = {"labeled": sorted(rest), "unlabeled": [], "test": test,
                                                "n_labeled": len(rest), "seed": seed, "setting": "full"}  # fmt: skip
    return splits


def plan_runs(opts: BenchmarkOptions, splits: _Splits) -> list[Run]:
    """Runs in execution order: per seed, per labeled count (ascending), every trainer (LabeledOnlyTrainer
    first, then as given), the upper bound last. So a stopped benchmark has complete comparisons at the
    smallest counts rather than some trainers at every count."""
    trainers = [BASELINE, *(t for t in opts.trainers if t != BASELINE)]
    runs = []
    for seed in opts.seeds:
        for n in sorted(set(opts.labeled)):
            for trainer in trainers:
                runs.append(Run(trainer, "semi", n, seed, f"n{n}_s{seed}"))
        if opts.full:
            runs.append(Run(BASELINE, "full", splits.datasets[f"full_s{seed}"]["n_labeled"], seed,
                            f"full_s{seed}"))  # fmt: skip
    return runs


def check_trainers(names: tuple[str, ...]) -> None:
    """BenchmarkError naming every trainer that ``nnUNetv2_train -tr`` would not find: searched as nnU-Net searches,
    in the folder that ``nnUNet_extTrainer`` gives it for this package's trainers (see
    :mod:`nnunet_semisup._register`) and in nnU-Net's own trainer folder."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nnunet_semisup._register import TRAINER_SHIM_DIR

    unknown = [n for n in names if n != SELF_TRAIN]
    if unknown:
        unknown = [
            n for n in unknown
            if recursive_find_python_class(TRAINER_SHIM_DIR, n, None, base_folder=TRAINER_SHIM_DIR,
                                           cleanup_imports_from_base_folder=True) is None
        ]  # fmt: skip
    if unknown:
        folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
        unknown = [
            n for n in unknown
            if recursive_find_python_class(folder, n, "nnunetv2.training.nnUNetTrainer") is None
        ]  # fmt: skip
    if unknown:
        raise BenchmarkError(
            f"unknown trainer(s) {unknown}: use class names of nnunet_semisup.trainers or nnU-Net (e.g. "
            f"{BASELINE}, MeanTeacherTrainer, SECLTrainer) or {SELF_TRAIN!r}"
        )


def run_finished(
    run_dir: Path, checkpoint: Path, test_cases: list[str], file_ending: str = ".nii.gz"
) -> bool:
    """Whether a run is done: final checkpoint, a prediction per test case and ``summary.json`` exist, or the run
    was restored from an archive (:func:`archive_results`)."""
    if is_archived(run_dir):
        return True
    predictions = run_dir / "predictions"
    return (
        checkpoint.is_file()
        and (run_dir / SUMMARY).is_file()
        and all((predictions / f"{c}{file_ending}").is_file() for c in test_cases)
    )


def is_archived(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an archived run: its ``summary.json`` and a ``run.json`` marked ``archived``."""
    info = run_dir / RUN_INFO
    return (
        (run_dir / SUMMARY).is_file()
        and info.is_file()
        and bool(json.loads(info.read_text()).get("archived"))
    )


def archive_results(work: Path, dest: Path) -> list[str]:
    """Copy what a benchmark's results are made of from work folder ``work`` to ``dest``: the manifest
    (``benchmark.json``), ``results.csv``/``.md``, ``learning_curve.png``, ``differences.png`` and, of every
    finished run, its
    ``summary.json`` and ``run.json`` (marked ``archived``: copied back into a work folder, the run counts as
    finished). Images, predictions and checkpoints are not copied. Existing files in ``dest`` are overwritten
    one by one (a run archived earlier stays when ``work`` no longer has it). Returns the names of the archived
    runs (``trainer/key``).

    Raises:
        BenchmarkError: ``work`` has no ``benchmark.json`` (not a benchmark work folder).
    """
    import shutil

    work, dest = Path(work), Path(dest)
    if not (work / MANIFEST).is_file():
        raise BenchmarkError(f"{work} is not a benchmark work folder (no {MANIFEST}): nothing to archive")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, "results.csv", "results.md", "learning_curve.png", "differences.png"):
        if (work / name).is_file():
            shutil.copyfile(work / name, dest / name)
    archived = []
    for summary in sorted(work.glob(f"runs/*/*/{SUMMARY}")):
        run_dir = summary.parent
        info_file = run_dir / RUN_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        target = dest / run_dir.relative_to(work)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary, target / SUMMARY)
        (target / RUN_INFO).write_text(json.dumps({**info, "archived": True}, indent=1) + "\n")
        archived.append(f"{run_dir.parent.name}/{run_dir.name}")
    return archived


class _Bench(Console):
    def __init__(self, opts: BenchmarkOptions, work: Path) -> None:
        env = use_work_folder(work, dict(os.environ), nnUNet_semisup_schedule=opts.schedule)
        env.setdefault("nnUNet_def_n_proc", str(opts.num_processes))
        super().__init__(env, error=BenchmarkError)
        self.raw = Path(env["nnUNet_raw"])
        self.preprocessed = Path(env["nnUNet_preprocessed"])
        self.results = Path(env["nnUNet_results"])


def _load_manifest(work: Path, fixed: dict) -> dict:
    path = work / MANIFEST
    if not path.is_file():
        return {"settings": fixed, "ids": {}}
    manifest = json.loads(path.read_text())
    differ = [f"{k}: {manifest['settings'].get(k)!r} there, {v!r} now" for k, v in fixed.items()
              if manifest["settings"].get(k) != v]  # fmt: skip
    if differ:
        raise BenchmarkError(
            f"{work} holds a benchmark with other settings ({'; '.join(differ)}); use another --work-dir (labeled "
            "counts, seeds and trainers may be added to an existing one, nothing else changed)"
        )
    return manifest


def _allocate(manifest: dict, key: str, first_id: int) -> int:
    ids = manifest["ids"]
    if key not in ids:
        ids[key] = max([first_id - 1, *ids.values()]) + 1
        if ids[key] > 999:
            raise BenchmarkError(
                f"no dataset id left below 1000 (first id {first_id}); use a lower --first-id"
            )
    return ids[key]


def _validate(opts: BenchmarkOptions) -> dict:
    """Everything that can be checked before any work: folders, trainers, schedule, counts."""
    from nnunet_semisup.data.benchmark import find_source_cases
    from nnunet_semisup.schedules import parse_schedule

    data = Path(opts.data_dir)
    for sub in ("images", "labels"):
        if not (data / sub).is_dir():
            raise BenchmarkError(f"{data / sub} not found: --data must be a folder with images/ and labels/")
    try:
        parse_schedule(opts.schedule)
    except ValueError as e:
        raise BenchmarkError(f"--schedule: {e}") from None
    if opts.spacing_mm is not None and opts.spacing_mm <= 0:
        raise BenchmarkError(f"--spacing-mm must be positive, got {opts.spacing_mm}")
    if not opts.seeds or any(s < 0 for s in opts.seeds) or len(set(opts.seeds)) != len(opts.seeds):
        raise BenchmarkError(f"--seeds must be distinct non-negative integers, got {list(opts.seeds)}")
    if opts.device not in ("cpu", "cuda", "mps"):
        raise BenchmarkError(f"--device must be cpu, cuda or mps, got {opts.device!r}")
    if not 1 <= opts.first_id <= 999:
        raise BenchmarkError(f"--first-id must be in 1..999, got {opts.first_id}")
    check_trainers(opts.trainers)
    try:
        cases = find_source_cases(str(data / "images"), str(data / "labels"))
    except ValueError as e:
        raise BenchmarkError(f"--data {data}: {e}") from None
    return cases


def plans_identifier(opts: BenchmarkOptions) -> str:
    """The plans every run trains with: ``nnUNetPlans`` (``nnUNetv2_plan_and_preprocess``) or, with
    ``semisup_plans``, ``nnUNetSemiSupPlans`` (``nnunet-semisup plan-and-preprocess``); ``_<X>mm`` appended
    when ``spacing_mm`` sets the target spacing."""
    base = "nnUNetSemiSupPlans" if opts.semisup_plans else "nnUNetPlans"
    return base if opts.spacing_mm is None else f"{base}_{opts.spacing_mm:g}mm"


def run_benchmark(opts: BenchmarkOptions) -> dict:
    """Run (or resume) the benchmark; returns ``{"results_csv", "results_md", "plot", "finished", "missing"}``."""
    cases = _validate(opts)
    splits = plan_splits(sorted(cases), opts.labeled, opts.n_test, opts.n_unlabeled, opts.seeds, opts.full)
    work = Path(opts.work_dir).resolve()
    plans = plans_identifier(opts)
    fixed = {"data_dir": str(Path(opts.data_dir).resolve()), "test": splits.test, "unlabeled": splits.unlabeled,
             "schedule": opts.schedule, "plans": plans, "configuration": opts.configuration}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(work, fixed)
    runs = plan_runs(opts, splits)
    bench = _Bench(opts, work)

    keys = list(dict.fromkeys(r.key for r in runs))
    names = {}
    for key in keys:
        names[key] = f"Dataset{_allocate(manifest, key, opts.first_id):03d}_Bench_{key}"
    for run in runs:
        if run.trainer == SELF_TRAIN:
            _allocate(manifest, f"{SELF_TRAIN}:{run.key}", opts.first_id)
    manifest.setdefault("datasets", {}).update({k: {**splits.datasets[k], "name": names[k]} for k in keys})
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    def model_of(run: Run) -> tuple[str, str]:
        if run.trainer == SELF_TRAIN:
            sid = manifest["ids"][f"{SELF_TRAIN}:{run.key}"]
            return f"Dataset{sid:03d}_Bench_{run.key}_SelfTrain", BASELINE
        return names[run.key], run.trainer

    def checkpoint_of(run: Run) -> Path:
        dataset, trainer = model_of(run)
        folder = nnunet_commands.fold_folder(
            str(bench.results), dataset, trainer, plans, opts.configuration, FOLD
        )
        return folder / nnunet_commands.FINAL_CHECKPOINT

    def run_dir(run: Run) -> Path:
        return work / "runs" / run.trainer / run.key

    todo = [r for r in runs if not run_finished(run_dir(r), checkpoint_of(r), splits.test)]
    bench.say(
        f"Benchmark in {work}: {len(cases)} cases -> {len(splits.test)} test, {len(splits.unlabeled)} unlabeled, "
        f"labeled {sorted(set(opts.labeled))}{f' + all {len(cases) - len(splits.test)}' if opts.full else ''}; "
        f"seeds {list(opts.seeds)}; plans {plans}; schedule {opts.schedule or '(trainer defaults)'}; "
        f"{len(runs)} runs, {len(runs) - len(todo)} already finished"
    )
    failed: list[str] = []
    if todo and not opts.report_only:
        source = _prepare(bench, opts, manifest, splits, keys, names, plans, work)
        prepared: set[str] = set()
        durations: list[float] = []
        for i, run in enumerate(todo, start=1):
            elapsed = time.time() - bench.t0
            eta = f", ETA {_hms(sum(durations) / len(durations) * (len(todo) - i + 1))}" if durations else ""
            bench.say(f"[run {i}/{len(todo)}] {run.trainer}, {run.n_labeled} labeled"
                      f"{' (all)' if run.setting == 'full' else ''}, seed {run.seed} (elapsed {_hms(elapsed)}{eta})")  # fmt: skip
            start = time.time()
            try:
                if run.key not in prepared:  # preprocessing when first needed: the first runs start sooner
                    _prepare_dataset(bench, opts, splits, run.key, names, source, plans, work)
                    prepared.add(run.key)
                _do_run(
                    bench, opts, run, names[run.key], model_of(run), manifest, plans, run_dir(run), splits
                )
            except BenchmarkError as e:  # a failed run must not cost the others; it is reported as missing
                failed.append(f"{run.name}: {e}")
                bench.say(f"    FAILED {run.name}: {e}")
                continue
            durations.append(time.time() - start)

    out = _report(bench, opts, runs, splits, work, plans, run_dir, checkpoint_of)
    if failed:
        raise BenchmarkError(
            f"{len(failed)} run(s) failed (rerun the same command to retry them):\n" + "\n".join(failed)
        )
    return out


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _prepare(bench: _Bench, opts: BenchmarkOptions, manifest: dict, splits: _Splits, keys: list[str],
             names: dict[str, str], plans: str, work: Path) -> str:  # fmt: skip
    """Raw datasets and the one planning (each step idempotent); returns the name of the planned dataset."""
    from nnunet_semisup.data.benchmark import MANIFEST_NAME, BenchmarkSplit, make_benchmark

    for key in keys:
        d = splits.datasets[key]
        folder = bench.raw / names[key]
        if folder.is_dir():
            existing = json.loads((folder / MANIFEST_NAME).read_text())
            if [existing["labeled"], existing["unlabeled"], existing["test"]] != [d["labeled"], d["unlabeled"],
                                                                                  d["test"]]:  # fmt: skip
                raise BenchmarkError(
                    f"{folder} holds another split than this benchmark draws; use another --work-dir"
                )
            continue
        bench.say(f"Building {names[key]}: {len(d['labeled'])} labeled, {len(d['unlabeled'])} unlabeled, "
                  f"{len(d['test'])} test cases")  # fmt: skip
        make_benchmark(str(bench.raw), int(names[key][7:10]), names[key][11:],
                       images_dir=opts.data_dir + "/images", labels_dir=opts.data_dir + "/labels",
                       label_names=opts.label_names, seed=d["seed"], link=True,
                       split=BenchmarkSplit(d["labeled"], d["unlabeled"], d["test"]))  # fmt: skip

    # plan once, on the smallest dataset: the plans a user with that few labeled cases gets from nnU-Net. (nnU-Net
    # sizes the batch from the dataset, at most 5 % of its voxels: planned on the fully labeled hippocampus pool
    # the batch would be 7 instead of 2, making every CPU run several times slower.)
    if "plans_source" not in manifest:
        manifest["plans_source"] = min(keys, key=lambda k: len(splits.datasets[k]["labeled"]))
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    source_key = manifest["plans_source"]
    source = (
        manifest["datasets"][source_key]["name"] if source_key in manifest["datasets"] else names[source_key]
    )
    if not (bench.raw / source).is_dir():
        raise BenchmarkError(
            f"{bench.raw / source}, the dataset the plans come from, is missing; use a new --work-dir"
        )
    if not (bench.preprocessed / source / f"{plans}.json").is_file():
        planner = (
            "nnunet-semisup plan-and-preprocess"
            if opts.semisup_plans
            else "stock nnUNetv2_plan_and_preprocess"
        )
        bench.say(f"Planning once on {source} ({planner}, plans {plans})")
        nnunet_commands.plan_and_preprocess(bench, work / "logs" / "plan.log", int(source[7:10]), opts.configuration,
                                            opts.num_processes, opts.spacing_mm, plans, opts.semisup_plans)  # fmt: skip
    return source


def _prepare_dataset(bench: _Bench, opts: BenchmarkOptions, splits: _Splits, key: str, names: dict[str, str],
                     source: str, plans: str, work: Path) -> None:  # fmt: skip
    """The plans of ``source`` moved to dataset ``key`` and preprocessed, and its unlabeled images (idempotent)."""
    from nnunet_semisup.data.unlabeled import preprocess_unlabeled

    name = names[key]
    if name != source:
        nnunet_commands.move_plans_and_preprocess(bench, work / "prepare" / name / "logs", source, int(name[7:10]),
                                                  name, plans, opts.configuration, opts.num_processes,
                                                  str(bench.raw), str(bench.preprocessed))  # fmt: skip
    if splits.datasets[key]["unlabeled"]:
        report = preprocess_unlabeled(str(bench.raw / name), str(bench.preprocessed / name), opts.configuration,
                                      plans, num_processes=opts.num_processes, progress=False)  # fmt: skip
        if report.processed:
            bench.say(f"{name}: {len(report.processed)} unlabeled cases preprocessed")


def _do_run(bench: _Bench, opts: BenchmarkOptions, run: Run, dataset: str, model: tuple[str, str],
            manifest: dict, plans: str, out: Path, splits: _Splits) -> None:  # fmt: skip
    from nnunet_semisup.evaluation import evaluate_folders, save_summary

    logs = out / "logs"
    start = time.time()
    if run.trainer == SELF_TRAIN:
        sid = manifest["ids"][f"{SELF_TRAIN}:{run.key}"]
        bench.run(logs / "self_train.log", "nnunet-semisup", "self-train", "-d", dataset, "-c", opts.configuration,
                  "-f", FOLD, "-p", plans, "--out-id", str(sid), "--out-name", f"Bench_{run.key}_SelfTrain",
                  "-device", opts.device, "-np", str(opts.num_processes), "--disable_tta")  # fmt: skip
    else:
        nnunet_commands.train(bench, logs / "train.log", dataset, opts.configuration, FOLD, run.trainer, plans,
                              opts.device, str(bench.results), run.trainer)  # fmt: skip
    train_seconds = time.time() - start
    model_dataset, model_trainer = model
    predictions = out / "predictions"
    nnunet_commands.predict(bench, logs / "predict.log", bench.raw / dataset / "imagesTs", predictions, model_dataset,
                            opts.configuration, model_trainer, plans, FOLD, opts.device, disable_tta=True)  # fmt: skip
    dataset_json = json.loads((bench.raw / dataset / "dataset.json").read_text())
    labels = {k: v for k, v in dataset_json["labels"].items() if v != 0 and k != "ignore"}
    summary = evaluate_folders(str(predictions), str(bench.raw / dataset / "labelsTs"), labels=labels)
    info = {**asdict(run), "dataset": dataset, "model_dataset": model_dataset, "model_trainer": model_trainer,
            "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1)}  # fmt: skip
    (out / RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")
    save_summary(summary, str(out / SUMMARY))  # last: its presence marks the run finished
    fg = summary["foreground_mean"]["dice"]
    bench.say(f"    {run.name}: test Dice (mean over classes) {fg:.3f}; {info['total_seconds']:.0f} s")


def _report(bench: _Bench, opts: BenchmarkOptions, runs: list[Run], splits: _Splits, work: Path, plans: str,
            run_dir, checkpoint_of) -> dict:  # fmt: skip
    import platform

    from nnunet_semisup.evaluation.benchmark_report import (
        plot_learning_curve,
        plot_paired_differences,
        results_markdown,
        rows_from_summary,
        write_rows,
    )

    rows, seconds, finished, missing = [], {}, [], []
    for run in runs:
        d = run_dir(run)
        if not run_finished(d, checkpoint_of(run), splits.test):
            missing.append(run.name)
            continue
        finished.append(run.name)
        summary = json.loads((d / SUMMARY).read_text())
        rows += rows_from_summary(summary, run.trainer, run.setting, run.n_labeled, run.seed)
        info = json.loads((d / RUN_INFO).read_text()) if (d / RUN_INFO).is_file() else {}
        seconds.setdefault((run.trainer, run.setting, run.n_labeled), []).append(info.get("total_seconds"))
    out = {"results_csv": str(work / "results.csv"), "results_md": str(work / "results.md"),
           "plot": str(work / "learning_curve.png"), "finished": finished, "missing": missing}  # fmt: skip
    if not rows:
        bench.say("No finished run yet: nothing to report")
        return out
    write_rows(rows, out["results_csv"])
    header = "\n".join([
        "## Benchmark results", "",
        f"- data: `{opts.data_dir}`; {len(splits.test)} fixed test cases, {len(splits.unlabeled)} unlabeled cases "
        f"(fixed pool), labeled counts {sorted(set(opts.labeled))}, seeds {list(opts.seeds)}",
        f"- plans `{plans}` (planned once, moved to every dataset), configuration {opts.configuration}, fold all, "
        f"final checkpoints; schedule `{opts.schedule or 'trainer defaults'}`; device {opts.device} "
        f"({platform.machine()}, {os.cpu_count()} CPUs)",
        f"- finished runs: {len(finished)} of {len(runs)}" + (f"; missing: {', '.join(missing)}" if missing else ""),
        "",
    ])  # fmt: skip
    Path(out["results_md"]).write_text(results_markdown(rows, header, BASELINE, seconds) + "\n")
    title = f"{opts.configuration}, {plans}, schedule {opts.schedule or 'default'}"
    plot_learning_curve(rows, out["plot"], title=title)
    plot_paired_differences(rows, str(work / "differences.png"), BASELINE, title=title)
    bench.say(f"Wrote {out['results_csv']}, {out['results_md']}, {out['plot']}"
              + (f" ({len(missing)} runs not finished)" if missing else ""))  # fmt: skip
    print(Path(out["results_md"]).read_text(), flush=True)
    return out
