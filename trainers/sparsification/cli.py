"""The ``nnunet-semisup`` verbs of annotation sparsification (Zheng et al., AAAI 2020), in pipeline order:

nnunet-semisup select-slices -d D --budget 10 [--strategy ra|eia] [--features autoencoder|pixels|mod:Class]
nnunet-semisup sparsify -d D --plan PLAN.json --out-id ID [--name NAME] [--link]
nnunet-semisup pseudo-labels -d D [--fused-id ID] [--meta-id ID] [--trainer-2d T] [--trainer-3d T] ...
nnunet-semisup predict-sparse -i IN -o OUT -d D --meta-dataset M [--trainer-meta T] ...
"""

from __future__ import annotations

import argparse
import json
import os

from nnunet_semisup.cli_args import add_device_arguments, deprecated_alias, report_error
from nnunet_semisup.nnunet_commands import raw_dataset_folder, resolve_dataset


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the sparsification sub-commands to ``nnunet-semisup``'s sub-parsers."""
    p = sub.add_parser(
        "select-slices",
        help="annotation plan: which slices (xy, xz, yz) of each training case to annotate",
        description="Representative annotation (RA: autoencoder features, cosine similarity, greedy max-cover) or "
        "equal-interval annotation (EIA) of K = floor(D / budget) slices per case and plane. Writes a JSON plan "
        "and a text summary; the source dataset is only read.",
    )
    p.add_argument("-d", required=True, help="raw dataset name, id or folder (its imagesTr are planned)")
    p.add_argument("--budget", type=int, required=True, help="s_k: one slice in every s_k per plane")
    p.add_argument("--strategy", choices=("ra", "eia"), default="ra", help="default: ra")
    p.add_argument(
        "--features",
        default="autoencoder",
        help="slice feature extractor for ra: autoencoder (default), pixels, or package.module:Class",
    )
    p.add_argument("-o", help="plan file (default: ./annotation_plan_<dataset>_<strategy>_s<budget>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_select_slices)

    p = sub.add_parser(
        "sparsify",
        help="new raw dataset where only the planned slices keep their labels (rest: nnU-Net's ignore label)",
        description="For benchmarking annotation sparsification from dense labels: copies dataset D's images "
        "(and imagesTs, labelsTs, imagesUnlabeled) into Dataset<out-id>_<name>; labelsTr keep their labels on the "
        "planned xy, xz and yz slices only, every other voxel is the ignore label (dataset.json 'ignore' = highest "
        "label + 1). D is never modified; an existing dataset id is refused.",
    )
    p.add_argument("-d", required=True, help="dense source dataset: name, id or folder")
    p.add_argument("--plan", required=True, help="annotation plan from select-slices")
    p.add_argument("--out-id", type=int, required=True, help="id of the new dataset")
    p.add_argument("--name", help="name of the new dataset (default: <source name>Sparse<STRATEGY><budget>)")
    p.add_argument("--raw-dir", help="nnUNet_raw folder to write into (default: $nnUNet_raw)")
    p.add_argument("--link", action="store_true", help="symlink images instead of copying them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sparsify)

    p = sub.add_parser(
        "pseudo-labels",
        help="four pseudo-label sets (2D model along xy, xz, yz + 3D model) and their average A(Y^)",
        description="Predicts every training (imagesTr) and unlabeled (imagesUnlabeled) case of the sparse dataset D "
        "with the 3D base model and the SparseMultiPlane2DTrainer model along each plane; writes OUT/{3d,xy,xz,yz}/ "
        "and OUT/average/ (A(Y^) probabilities + argmax). Finished sets are skipped on a rerun. With --fused-id "
        "also writes the simple variant's dataset: labels = argmax A(Y^) with the annotated voxels kept.",
    )
    p.add_argument(
        "-d", required=True, help="sparse dataset (name, id or folder) the base models were trained on"
    )
    p.add_argument("-c", default="3d_fullres", help="configuration of both base models (default: 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds of the base models (default: 0)")
    p.add_argument("--trainer-2d", default="SparseMultiPlane2DTrainer", help="2D base model trainer")
    p.add_argument(
        "--trainer-3d",
        default="LabeledOnlyTrainer",
        help="3D base model trainer (default: LabeledOnlyTrainer)",
    )
    p.add_argument("-o", help="output folder (default: $nnUNet_results/<dataset>/pseudo_labels)")
    p.add_argument("--fused-id", type=int, help="also write the fused pseudo-label dataset with this id")
    p.add_argument("--fused-name", help="name of the fused dataset (default: <name>Fused)")
    p.add_argument(
        "--meta-id", type=int, help="also write the meta-model's dataset (SelfTrainingMetaTrainer)"
    )
    p.add_argument("--meta-name", help="name of the meta dataset (default: <name>Meta)")
    add_device_arguments(p)
    for old, new in (("--tr2d", "--trainer-2d"), ("--tr3d", "--trainer-3d")):
        deprecated_alias(p, old, new)
    p.set_defaults(func=_cmd_pseudo_labels)

    p = sub.add_parser(
        "predict-sparse",
        help="the cascade on new images: base models -> A(Y^) -> SelfTrainingMetaTrainer model",
        description="Runs the 3D and the 2D (xy, xz, yz) base models of sparse dataset D on the images of -i, "
        "averages their probabilities (A(Y^)) and segments with the meta-model trained on the meta dataset. "
        "Intermediate results are kept in OUT/cascade/.",
    )
    p.add_argument("-i", required=True, help="input folder (nnU-Net naming CASE_0000.nii.gz)")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="sparse dataset of the base models (name or id)")
    p.add_argument("--meta-dataset", required=True, help="meta dataset of the meta-model (name or id)")
    p.add_argument("-c", default="3d_fullres", help="configuration (default: 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds of all models (default: 0)")
    p.add_argument(
        "--trainer-2d",
        default="SparseMultiPlane2DTrainer",
        help="2D base model trainer (default: SparseMultiPlane2DTrainer)",
    )
    p.add_argument(
        "--trainer-3d",
        default="LabeledOnlyTrainer",
        help="3D base model trainer (default: LabeledOnlyTrainer)",
    )
    p.add_argument(
        "--trainer-meta",
        default="SelfTrainingMetaTrainer",
        help="meta-model trainer (default: SelfTrainingMetaTrainer)",
    )
    add_device_arguments(p)
    for old, new in (("--tr2d", "--trainer-2d"), ("--tr3d", "--trainer-3d"), ("--tr-meta", "--trainer-meta"),
                     ("--meta-d", "--meta-dataset")):  # fmt: skip
        deprecated_alias(p, old, new)
    p.set_defaults(func=_cmd_predict_sparse)


def _cmd_select_slices(args: argparse.Namespace) -> int:
    from nnunet_semisup.trainers.sparsification.selection import (
        SelectionError,
        make_extractor,
        plan_summary,
        select_slices,
    )

    folder = raw_dataset_folder(args.d)
    name = os.path.basename(folder)
    output = args.o or f"annotation_plan_{name}_{args.strategy}_s{args.budget}.json"
    summary_file = os.path.splitext(output)[0] + ".txt"
    for path in (output, summary_file):
        if os.path.exists(path) and not args.overwrite:
            return report_error("select-slices", FileExistsError(f"{path} exists (use -o or --overwrite)"))
    try:
        extractor = make_extractor(args.features) if args.strategy == "ra" else None
        plan = select_slices(folder, args.budget, args.strategy, extractor, progress=not args.no_progress)
    except SelectionError as e:
        return report_error("select-slices", e)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(plan, f, indent=1)
    summary = plan_summary(plan)
    with open(summary_file, "w") as f:
        f.write(summary + "\n")
    print(summary)
    print(f"\nPlan: {output}\nSummary: {summary_file}")
    return 0


def _cmd_sparsify(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_raw

    from nnunet_semisup.trainers.sparsification.sparsify import SparsifyError, sparsify_dataset

    source = raw_dataset_folder(args.d)
    with open(args.plan) as f:
        plan = json.load(f)
    name = (
        args.name
        or f"{os.path.basename(source).split('_', 1)[-1]}Sparse{plan['strategy'].upper()}{plan['budget']}"
    )
    try:
        out = sparsify_dataset(
            source,
            plan,
            args.raw_dir or nnUNet_raw.require(),
            args.out_id,
            name,
            args.link,
            not args.no_progress,
        )
    except (SparsifyError, OSError) as e:
        return report_error("sparsify", e)
    with open(os.path.join(out, "dataset.json")) as f:
        print(f"Wrote {out}: {json.load(f)['description']}")
    print(f"Next: nnUNetv2_plan_and_preprocess -d {args.out_id} -c 3d_fullres")
    return 0


def _cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from nnunetv2.paths import nnUNet_raw

    from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import (
        PseudoLabelError,
        input_cases,
        predict_pseudo_label_sets,
        write_fused_dataset,
    )

    folder = raw_dataset_folder(args.d)
    dataset = os.path.basename(folder)
    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    try:
        cases = input_cases(folder, dataset_json, ("imagesTr", "imagesUnlabeled"))
        out = args.o or os.path.join(os.environ.get("nnUNet_results", "."), dataset, "pseudo_labels")
        predict_pseudo_label_sets(
            dataset, cases, out, args.c, args.p, args.trainer_2d, args.trainer_3d, args.f, args.device, args.disable_tta,
            args.np, not args.no_progress,
        )  # fmt: skip
        print(f"Pseudo-label sets {', '.join(('3d', 'xy', 'xz', 'yz'))} and their average A(Y^) of {len(cases)} "
              f"cases: {out}")  # fmt: skip
        if args.fused_id is not None:
            name = args.fused_name or f"{dataset.split('_', 1)[-1]}Fused"
            target = write_fused_dataset(folder, out, nnUNet_raw.require(), args.fused_id, name)
            print(
                f"Fused pseudo-label dataset: {target}\nNext: nnUNetv2_plan_and_preprocess -d {args.fused_id}"
            )
        if args.meta_id is not None:
            from nnunetv2.paths import nnUNet_preprocessed

            from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import (
                prepare_meta_plans,
                write_meta_dataset,
            )

            name = args.meta_name or f"{dataset.split('_', 1)[-1]}Meta"
            target = write_meta_dataset(folder, out, nnUNet_raw.require(), args.meta_id, name)
            prepare_meta_plans(dataset, target, args.p, nnUNet_preprocessed.require())
            print(
                f"Meta dataset: {target} (plans {args.p} of {dataset}, extended)\nNext: nnUNetv2_preprocess -d "
                f"{args.meta_id} -plans_name {args.p} -c {args.c}; nnUNetv2_train {args.meta_id} {args.c} FOLD "
                f"-p {args.p} -tr SelfTrainingMetaTrainer"
            )
    except PseudoLabelError as e:
        return report_error("pseudo-labels", e)
    return 0


def _cmd_predict_sparse(args: argparse.Namespace) -> int:
    from nnunet_semisup.trainers.sparsification.multiview_pseudo_labels import (
        PseudoLabelError,
        predict_sparse_cascade,
    )

    try:
        predict_sparse_cascade(
            args.i, args.o, resolve_dataset(args.d), resolve_dataset(args.meta_dataset), args.c, args.p, args.f,
            args.trainer_2d, args.trainer_3d, args.trainer_meta, args.device, args.disable_tta, args.np, not args.no_progress,
        )  # fmt: skip
    except PseudoLabelError as e:
        return report_error("predict-sparse", e)
    print(f"Segmentations: {args.o}")
    return 0
