"""Self-training's verb of ``nnunet-semisup``: ``self-train`` (teacher -> pseudo-labels -> student)."""

from __future__ import annotations

import argparse

from nnunet_semisup.cli_args import deprecated_alias, report_error

DESCRIPTION = (
    "Trains a teacher on dataset D's labeled cases (skipped if trained), predicts D/imagesUnlabeled, writes a new "
    "raw dataset Dataset<out-id>_<name>SelfTrain with the labeled and the pseudo-labeled cases, gives it D's plans "
    "and D's validation split, and trains a student on it. Finished steps are skipped when run again. D is never "
    "modified."
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``self-train`` to ``nnunet-semisup``'s sub-parsers."""
    p = sub.add_parser(
        "self-train",
        help="pseudo-label self-training: teacher -> pseudo-labels -> new dataset -> student (resumable)",
        description=DESCRIPTION,
    )
    p.add_argument("-d", required=True, help="source dataset name or id (with imagesUnlabeled)")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-f", required=True, help="fold (0-4 or all); validation cases are D's for this fold")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument(
        "--out-id", type=int, required=True, help="id of the new dataset (round r uses id + r - 1)"
    )
    p.add_argument("--out-name", help="name of the new dataset (default: <source name>SelfTrain)")
    p.add_argument("--rounds", type=int, default=1, help="rounds; the student of one is the next's teacher")
    p.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="voxels whose max softmax probability is below this get the ignore label (default: keep all)",
    )
    p.add_argument("--teacher-trainer", default="LabeledOnlyTrainer", help="trainer of the first teacher")
    p.add_argument("--student-trainer", default="LabeledOnlyTrainer", help="trainer of the students")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="default: cuda")
    p.add_argument(
        "-np", type=int, default=None, help="processes for predict/preprocess (default: nnU-Net's)"
    )
    p.add_argument("--disable_tta", action="store_true", help="no mirroring when predicting pseudo-labels")
    p.add_argument("--copy-images", action="store_true", help="copy D's images instead of symlinking them")
    deprecated_alias(p, "--device", "-device")
    deprecated_alias(p, "--disable-tta", "--disable_tta")
    p.set_defaults(func=_cmd_self_train)


def _cmd_self_train(args: argparse.Namespace) -> int:
    from nnunetv2.configuration import default_num_processes

    from nnunet_semisup.trainers.self_training.pipeline import (
        SelfTrainingError,
        SelfTrainingOptions,
        run_self_training,
    )

    options = SelfTrainingOptions(
        dataset=args.d,
        configuration=args.c,
        fold=args.f,
        out_id=args.out_id,
        plans=args.p,
        out_name=args.out_name,
        rounds=args.rounds,
        confidence=args.confidence,
        teacher_trainer=args.teacher_trainer,
        student_trainer=args.student_trainer,
        device=args.device,
        num_processes=args.np or default_num_processes,
        disable_tta=args.disable_tta,
        copy_images=args.copy_images,
    )
    try:
        run_self_training(options)
    except SelfTrainingError as e:
        return report_error("self-train", e)
    return 0
