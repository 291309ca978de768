"""``nnunet-semisup plan-and-preprocess``: nnUNetv2_plan_and_preprocess with plans that see the unlabeled images.

nnunet-semisup plan-and-preprocess -d D [D ...] [-c 2d 3d_fullres 3d_lowres] [-pl ExperimentPlanner|ResEncM|...]
    [-np N [N ...]] [-npfp N] [-gpu_memory_target GB] [-overwrite_target_spacing X Y Z]
    [-overwrite_plans_name NAME] [--verify_dataset_integrity] [--no_pp] [--clean] [--verbose] [--no_pbar]

The flags are nnUNetv2_plan_and_preprocess's, with its spelling. Not offered: ``-fpe`` (the fingerprint
extractor is this package's) and ``-preprocessor_name`` (the plans keep nnU-Net's ``DefaultPreprocessor``).
"""

from __future__ import annotations

import argparse

from nnunet_semisup.cli_args import report_error

PLANNER_HELP = (
    "nnU-Net planner to extend: ExperimentPlanner (default; plans nnUNetSemiSupPlans), nnUNetPlannerResEncM/L/XL "
    "or short ResEncM/L/XL (plans nnUNetSemiSupResEncUNet{M,L,XL}Plans)"
)


def _cmd_plan_and_preprocess(args: argparse.Namespace) -> int:
    from nnunet_semisup.data.unlabeled import UnlabeledDataError

    from .experiment_planners import PLANNERS
    from .plan_and_preprocess import PlanningInputError, plan_and_preprocess_dataset

    planner_class = PLANNERS.get(args.pl)
    if planner_class is None:
        return report_error(
            "plan-and-preprocess", ValueError(f"unknown -pl {args.pl!r}; choose one of {', '.join(PLANNERS)}")
        )
    for dataset_id in args.d:
        try:
            report = plan_and_preprocess_dataset(
                dataset_id,
                planner_class,
                configurations=args.c,
                num_processes=args.np,
                num_processes_fingerprint=args.npfp,
                verify_dataset_integrity=args.verify_dataset_integrity,
                clean=args.clean,
                preprocess=not args.no_pp,
                gpu_memory_target_in_gb=args.gpu_memory_target,
                overwrite_target_spacing=args.overwrite_target_spacing,
                overwrite_plans_name=args.overwrite_plans_name,
                verbose=args.verbose,
                progress=not args.no_pbar,
            )
        except (PlanningInputError, UnlabeledDataError) as e:
            return report_error("plan-and-preprocess", e)
        for note in report.notes:
            print(f"Note: {note}")
        print(
            f"{report.dataset_name}: plans {report.plans_identifier} from {report.num_labeled} labeled + "
            f"{report.num_unlabeled} unlabeled cases"
            + (f"; preprocessed {', '.join(report.preprocessed_configurations)}" if not args.no_pp else "")
            + f". Train with: nnUNetv2_train {dataset_id} CONFIG FOLD -tr TRAINER -p {report.plans_identifier}"
        )
    return 0


def add_parsers(subparsers) -> None:
    """Add ``plan-and-preprocess`` to the ``nnunet-semisup`` sub-command parsers."""
    p = subparsers.add_parser(
        "plan-and-preprocess",
        help="nnUNetv2_plan_and_preprocess with spacing, shape and batch size planned from labeled + unlabeled "
        "images; also preprocesses imagesUnlabeled",
        description="Extracts nnU-Net's fingerprint plus the spacing and shape of imagesUnlabeled "
        "(dataset_fingerprint_semisup.json), plans with the semi-supervised variant of -pl (stock preprocessor and "
        "network classes; plans nnUNetSemiSupPlans, or nnUNetSemiSupResEncUNet{M,L,XL}Plans), and preprocesses "
        "labeled and unlabeled cases. Use the plans with `nnUNetv2_train ... -p PLANS` and "
        "`nnUNetv2_predict ... -p PLANS`. See docs/planners.md.",
    )
    p.add_argument("-d", nargs="+", type=int, required=True, help="dataset id(s)")
    p.add_argument("-pl", default="ExperimentPlanner", help=PLANNER_HELP)
    p.add_argument(
        "-c",
        nargs="+",
        default=["2d", "3d_fullres", "3d_lowres"],
        help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres; missing ones are skipped)",
    )
    p.add_argument(
        "-np",
        type=int,
        nargs="+",
        default=None,
        help="preprocessing processes: one number, or one per configuration (default: 8 for 2d, 4 for "
        "3d_fullres, 8 for 3d_lowres)",
    )
    p.add_argument("-npfp", type=int, default=8, help="fingerprint extraction processes (default: 8)")
    p.add_argument(
        "-gpu_memory_target",
        type=float,
        default=None,
        help="GPU memory target in GB (default: the planner's)",
    )
    p.add_argument(
        "-overwrite_target_spacing",
        type=float,
        nargs="+",
        default=None,
        metavar="MM",
        help="target spacing of 3d_fullres in mm, 3 numbers in nnU-Net's axis order (then also set "
        "-overwrite_plans_name)",
    )
    p.add_argument("-overwrite_plans_name", default=None, help="plans identifier (default: the planner's)")
    p.add_argument(
        "--verify_dataset_integrity", action="store_true", help="run nnU-Net's dataset integrity check first"
    )
    p.add_argument("--no_pp", action="store_true", help="fingerprint and plans only, no preprocessing")
    p.add_argument(
        "--clean",
        action="store_true",
        help="redo the fingerprints even if they exist (after the data changed)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="nnU-Net's verbose planning and preprocessing output"
    )
    p.add_argument("--no_pbar", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_plan_and_preprocess)
