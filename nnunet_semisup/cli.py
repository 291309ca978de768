"""``nnunet-semisup``: the commands nnU-Net has no verb for.

nnunet-semisup trainer-dir
nnunet-semisup preprocess-unlabeled -d D -c CONFIG [-p PLANS] [-np N]
nnunet-semisup make-benchmark (--images DIR --labels DIR | --source-dataset D) --labeled N --test K ...
nnunet-semisup evaluate --ref DIR --pred DIR [-o summary.json]
nnunet-semisup demo [--work-dir DIR]
nnunet-semisup benchmark --data DIR --work-dir DIR --labeled 4,16 --trainers A,B [--seeds 0,1] [--full]
and the verbs of the methods:
nnunet-semisup self-train -d D -c CONFIG -f FOLD --out-id ID [--confidence T] [--rounds R] ...
nnunet-semisup predict-dtml -i IN -o OUT -d D -c CONFIG [-tr DTMLTrainer] [-f F ...] [--source dist|average]
nnunet-semisup predict-dual-subnet -i IN -o OUT -d D -c CONFIG [-tr DualSubnetContrastTrainer] [--source b|average]
nnunet-semisup select-slices / sparsify / pseudo-labels / predict-sparse (annotation sparsification)

This module is the one part of the core that imports ``trainers/``: it builds the top parser and adds each
method's verbs from that method's ``trainers/<method>/cli.py`` (``add_parsers(sub)``), so a method's command line
lives with the method. Nothing imports this module back."""

from __future__ import annotations

import argparse
import json
import os
import sys

from nnunet_semisup.cli_args import deprecated_alias, report_error
from nnunet_semisup.nnunet_commands import resolve_dataset
from nnunet_semisup.trainers.dtml import cli as dtml_cli
from nnunet_semisup.trainers.dual_subnet import cli as dual_subnet_cli
from nnunet_semisup.trainers.self_training import cli as self_training_cli
from nnunet_semisup.trainers.sparsification import cli as sparsification_cli

# in the order their verbs are listed by --help
METHOD_CLIS = (self_training_cli, dtml_cli, dual_subnet_cli, sparsification_cli)


def _cmd_trainer_dir(args: argparse.Namespace) -> int:
    from nnunet_semisup._register import TRAINER_SHIM_DIR

    print(TRAINER_SHIM_DIR)
    return 0


def _cmd_preprocess_unlabeled(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_semisup.data.unlabeled import UnlabeledDataError, preprocess_unlabeled

    dataset_name = resolve_dataset(args.d)
    try:
        report = preprocess_unlabeled(
            os.path.join(nnUNet_raw.require(), dataset_name),
            os.path.join(nnUNet_preprocessed.require(), dataset_name),
            args.c,
            plans_identifier=args.p,
            num_processes=args.np,
            progress=not args.no_progress,
            log=print,
        )
    except (UnlabeledDataError, FileNotFoundError, RuntimeError) as e:
        return report_error("preprocess-unlabeled", e)
    if not report.case_ids:
        print(
            f"No unlabeled images found in {os.path.join(nnUNet_raw.get(), dataset_name, 'imagesUnlabeled')}."
        )
    print(
        f"Unlabeled cases: {len(report.case_ids)} ready in {report.folder} "
        f"({len(report.processed)} preprocessed now, {len(report.up_to_date)} up to date, "
        f"{len(report.removed)} removed)"
    )
    return 0


def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_raw

    from nnunet_semisup.data.benchmark import make_benchmark

    if (args.images is None) == (args.source_dataset is None):
        raise SystemExit(
            "nnunet-semisup make-benchmark: give either --images (and --labels) or --source-dataset"
        )
    source_dataset_dir = None
    if args.source_dataset is not None:
        source_dataset_dir = (
            args.source_dataset
            if os.path.isdir(args.source_dataset)
            else os.path.join(nnUNet_raw.require(), resolve_dataset(args.source_dataset))
        )
    label_names = None
    if args.label_names:
        label_names = {"background": 0}
        label_names.update({name: i + 1 for i, name in enumerate(args.label_names.split(","))})
    channel_names = (
        {str(i): name for i, name in enumerate(args.channel_names.split(","))} if args.channel_names else None
    )
    try:
        out = make_benchmark(
            args.raw_dir or nnUNet_raw.require(),
            args.out_id,
            args.name,
            images_dir=args.images,
            labels_dir=args.labels,
            source_dataset_dir=source_dataset_dir,
            n_labeled=args.labeled,
            n_test=args.test,
            n_unlabeled=args.unlabeled,
            seed=args.seed,
            label_names=label_names,
            channel_names=channel_names,
            link=args.link,
        )
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
    ) as e:  # the user's data or arguments: no traceback
        return report_error("make-benchmark", e)
    with open(os.path.join(out, "semisup_manifest.json")) as f:
        manifest = json.load(f)
    print(
        f"Wrote {out}: {len(manifest['labeled'])} labeled, {len(manifest['unlabeled'])} unlabeled, "
        f"{len(manifest['test'])} test cases (seed {args.seed})"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nnunet_semisup.evaluation import evaluate_folders, format_table, save_summary

    labels = None
    file_ending = args.file_ending
    if args.labels_json:
        with open(args.labels_json) as f:
            dataset_json = json.load(f)
        labels = {k: v for k, v in dataset_json["labels"].items() if k != "background" and v != 0}
        # the dataset's own file ending unless --file-ending says otherwise
        file_ending = file_ending or dataset_json.get("file_ending")
    file_ending = file_ending or ".nii.gz"
    try:
        summary = evaluate_folders(
            args.pred, args.ref, file_ending=file_ending, labels=labels, num_processes=args.np
        )
    except (ValueError, FileNotFoundError) as e:  # bad input: the message names the case, files and fix
        return report_error("evaluate", e)
    print(format_table(summary))
    output = args.o or os.path.join(args.pred, "semisup_summary.json")
    save_summary(summary, output)
    print(f"Per-case metrics: {output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_semisup.demo import run_demo

    given = {"n_labeled": args.labeled, "n_unlabeled": args.unlabeled, "n_test": args.test, "epochs": args.epochs,
             "iters": args.iters}  # fmt: skip
    return run_demo(
        work_dir=args.work_dir,
        data_dir=args.data,
        trainers=args.trainers.split(",") if args.trainers else None,
        spacing_mm=None if args.spacing_mm <= 0 else args.spacing_mm,
        **{k: v for k, v in given.items() if v is not None},
    )


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nnunet_semisup.benchmark_runner import (
        BenchmarkError,
        BenchmarkOptions,
        archive_results,
        run_benchmark,
    )

    def ints(text: str, flag: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise SystemExit(
                f"nnunet-semisup benchmark: {flag} takes comma-separated integers, got {text!r}"
            ) from None

    label_names = None
    if args.label_names:
        label_names = {"background": 0, **{n: i + 1 for i, n in enumerate(args.label_names.split(","))}}
    options = BenchmarkOptions(
        data_dir=args.data,
        work_dir=args.work_dir,
        labeled=ints(args.labeled, "--labeled"),
        n_test=args.test,
        trainers=tuple(t.strip() for t in args.trainers.split(",") if t.strip()),
        n_unlabeled=args.unlabeled,
        seeds=ints(args.seeds, "--seeds"),
        full=args.full,
        schedule=args.schedule,
        spacing_mm=None if args.spacing_mm <= 0 else args.spacing_mm,
        configuration=args.c,
        device=args.device,
        num_processes=args.np,
        label_names=label_names,
        first_id=args.first_id,
        report_only=args.report_only,
        semisup_plans=args.semisup_plans,
    )
    try:
        run_benchmark(options)
    except BenchmarkError as e:
        if args.archive:  # the finished runs are worth keeping even when one failed
            archive_results(Path(args.work_dir), Path(args.archive))
        return report_error("benchmark", e)
    if args.archive:
        runs = archive_results(Path(args.work_dir), Path(args.archive))
        print(f"Archived the report and {len(runs)} finished run(s) to {args.archive}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``nnunet-semisup`` argument parser (one sub-command per verb)."""
    # plain text: the module docstring's reST markup would show as is in --help
    parser = argparse.ArgumentParser(
        prog="nnunet-semisup",
        description="The commands of nnunet-semisup that nnU-Net has no verb for: preprocessing unlabeled "
        "images, building benchmark datasets, evaluation, the demo and benchmarks, and the verbs of some methods "
        "(self-training, prediction with a second network, annotation sparsification). Training and standard "
        "prediction use nnU-Net's own commands (nnUNetv2_train -tr TRAINER, nnUNetv2_predict). "
        "'nnunet-semisup COMMAND -h' describes each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "trainer-dir",
        help="print the folder to put in nnUNet_extTrainer",
        description="Prints the folder of the trainer shims. A regular pip install registers the trainers by "
        "itself; after an editable install run: export nnUNet_extTrainer=$(nnunet-semisup trainer-dir).",
    )
    p.set_defaults(func=_cmd_trainer_dir)

    p = sub.add_parser(
        "preprocess-unlabeled",
        help="preprocess nnUNet_raw/DatasetX/imagesUnlabeled with the dataset's plans (only new cases)",
        description="Checks the unlabeled images (names, channels, ending, readability) and preprocesses new "
        "or changed ones with the configuration's own nnU-Net preprocessor into "
        "nnUNet_preprocessed/DatasetX/<data identifier>_unlabeled/. Optional: the semi-supervised trainers do "
        "the same when they start. Run nnUNetv2_plan_and_preprocess for the configuration first.",
    )
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-np", type=int, default=4, help="worker processes (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_preprocess_unlabeled)

    p = sub.add_parser(
        "make-benchmark",
        help="build a raw nnU-Net dataset with N labeled, M unlabeled and K test cases",
        description="Source: a folder pair --images/--labels (nnU-Net or Decathlon naming) or an existing raw "
        "dataset (--source-dataset). Deterministic per --seed; the test set depends only on the seed and --test, "
        "and labeled sets are nested across --labeled values.",
    )
    p.add_argument("--images", help="folder of images (CASE.nii.gz or CASE_0000.nii.gz)")
    p.add_argument("--labels", help="folder of label maps CASE.nii.gz")
    p.add_argument("--source-dataset", help="existing nnU-Net raw dataset (name, id or folder)")
    p.add_argument("--labeled", type=int, required=True, help="number of labeled cases (imagesTr/labelsTr)")
    p.add_argument(
        "--unlabeled", type=int, default=None, help="number of unlabeled cases (default: all the rest)"
    )
    p.add_argument("--test", type=int, required=True, help="number of test cases (imagesTs/labelsTs)")
    p.add_argument("--out-id", type=int, required=True, help="id of the new dataset")
    p.add_argument("--name", default="SemiSup", help="name of the new dataset (DatasetXXX_NAME)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the case draw (default: 0)")
    p.add_argument("--label-names", help="comma-separated names of labels 1, 2, ... (default: inferred)")
    p.add_argument(
        "--channel-names", help="comma-separated channel names (default: MRI; 'CT' for CT normalization)"
    )
    p.add_argument("--raw-dir", help="nnUNet_raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--link", action="store_true", help="symlink instead of copying images")
    p.set_defaults(func=_cmd_make_benchmark)

    p = sub.add_parser(
        "evaluate",
        help="per-case and per-class Dice, IoU, HD95 and ASD (mm)",
        description="Scores the predicted label maps in --pred against the references in --ref (matched by file "
        "name; shape and spacing must agree): per case and class Dice, IoU, HD95 and ASD in mm, their means "
        "and standard deviations. Prints a table and writes the JSON summary (default: "
        "PRED/semisup_summary.json). Conventions for empty classes: docs/user_guide.md.",
    )
    p.add_argument("--ref", required=True, help="folder of reference label maps")
    p.add_argument("--pred", required=True, help="folder of predicted label maps (same file names)")
    p.add_argument("-o", help="output JSON (default: PRED/semisup_summary.json)")
    p.add_argument(
        "--labels-json", help="dataset.json whose 'labels' name the classes (default: values found)"
    )
    p.add_argument(
        "--file-ending",
        default=None,
        help="file ending of predictions and references (default: the --labels-json dataset's, else .nii.gz)",
    )
    p.add_argument("-np", type=int, default=1, help="worker processes")
    deprecated_alias(p, "-ref", "--ref")
    deprecated_alias(p, "-pred", "--pred")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="labeled-only vs the learning curve's best-ranked trainer at its 2-labeled-case setting",
        description="Builds the learning curve's seed-0 benchmark dataset (MSD Hippocampus: 2 labeled, 100 "
        "unlabeled, 40 test cases), plans it at 2 mm, trains LabeledOnlyTrainer and the trainer the learning curve "
        "ranks first with its schedule (2000 iterations, fold all), predicts and scores the test cases, and prints "
        "the table with what the learning curve measured over three seeds; all with nnU-Net's console scripts "
        "under --work-dir. Finished steps are skipped when run again. See docs/benchmarks.md.",
    )
    p.add_argument(
        "--work-dir", default="demo_work", help="folder for all nnU-Net folders (default: ./demo_work)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="images/labels folder (default: $NNUNET_SEMISUP_DEMO_DATA, else ../shared/data/msd_hippocampus, "
        "else generated data)",
    )
    p.add_argument("--labeled", type=int, default=None, help="labeled training cases (default: 2)")
    p.add_argument("--unlabeled", type=int, default=None, help="unlabeled training cases (default: 100)")
    p.add_argument("--test", type=int, default=None, help="test cases (default: 40)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every training (default: 20)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: 100)")
    p.add_argument(
        "--spacing-mm",
        type=float,
        default=2.0,
        help="target spacing in mm of the demo's plans, for CPU speed (default 2; 0 = nnU-Net's own plans)",
    )
    p.add_argument(
        "--trainers",
        default=None,
        help="comma-separated trainer class names (default: LabeledOnlyTrainer and the learning curve's "
        "best-ranked trainer)",
    )
    deprecated_alias(p, "--spacing", "--spacing-mm")
    p.set_defaults(func=_cmd_demo)

    # the verbs of the methods, each from its own trainers/<method>/cli.py
    for method_cli in METHOD_CLIS:
        method_cli.add_parsers(sub)
    from nnunet_semisup.planners.cli import add_parsers as add_planner_parsers  # plan-and-preprocess

    add_planner_parsers(sub)

    p = sub.add_parser(
        "benchmark",
        help="learning curves: every trainer vs LabeledOnlyTrainer on several labeled counts (resumable)",
        description="Builds benchmark datasets (fixed test set and unlabeled pool, per seed a labeled draw for each "
        "--labeled count; --full adds the fully labeled upper bound), plans once and moves the plans to every "
        "dataset, trains each trainer with the same schedule (fold all, final checkpoint), predicts the test set "
        "with nnUNetv2_predict, evaluates, and writes results.csv, results.md and learning_curve.png into "
        "--work-dir. Finished runs are skipped when run again. See docs/benchmarks.md.",
    )
    p.add_argument(
        "--data", required=True, help="folder with images/ and labels/ (Decathlon or nnU-Net naming)"
    )
    p.add_argument("--work-dir", required=True, help="folder for all datasets, models and results")
    p.add_argument("--labeled", required=True, help="comma-separated labeled counts, e.g. 5,10,20")
    p.add_argument("--test", type=int, required=True, help="number of test cases (fixed for every run)")
    p.add_argument(
        "--unlabeled", type=int, default=None, help="unlabeled pool size (default: all but max --labeled)"
    )
    p.add_argument(
        "--trainers",
        default="LabeledOnlyTrainer",
        help="comma-separated trainer class names and/or 'self-train' (LabeledOnlyTrainer is always run)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds: each draws its own labeled subsets")
    p.add_argument("--full", action="store_true", help="also the upper bound: all non-test cases labeled")
    p.add_argument(
        "--schedule", default="", help="nnUNet_semisup_schedule for every run, e.g. epochs=8,iters=40"
    )
    p.add_argument(
        "--spacing-mm",
        type=float,
        default=0,
        help="plan at this isotropic spacing (e.g. 2 on CPU; 0 = nnU-Net's)",
    )
    p.add_argument(
        "--semisup-plans",
        action="store_true",
        help="plan with nnunet-semisup plan-and-preprocess (labeled + unlabeled images; plans nnUNetSemiSupPlans) "
        "instead of nnUNetv2_plan_and_preprocess (see docs/planners.md)",
    )
    p.add_argument("-c", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default: cuda")
    p.add_argument("-np", type=int, default=1, help="processes for planning/preprocessing (default: 1)")
    p.add_argument("--label-names", help="comma-separated names of labels 1, 2, ... (default: label_<v>)")
    p.add_argument("--first-id", type=int, default=100, help="first dataset id inside the work folder")
    p.add_argument("--report-only", action="store_true", help="only write the report of the finished runs")
    p.add_argument(
        "--archive",
        metavar="DEST",
        help="afterwards copy the report and every finished run's summary (no images or checkpoints) to DEST; "
        "copied back into a work folder (cp -r DEST/. WORK/), those runs count as finished",
    )
    deprecated_alias(p, "--device", "-device")
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nnunet-semisup`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
