"""The ``nnunet-semisup`` commands of annotation sparsification (Zheng et al., AAAI 2020), in pipeline order:

nnunet-semisup select-slices -d D --budget 10 [--strategy ra|eia] [--features autoencoder|pixels|mod:Class]
nnunet-semisup sparsify -d D --plan PLAN.json --out-id ID [--name NAME] [--link]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _raw_dataset_folder(dataset: str) -> str:
    if os.path.isdir(dataset):
        return os.path.abspath(dataset)
    from nnunetv2.paths import nnUNet_raw

    from nnunet_semisup.cli import _resolve_dataset

    return os.path.join(nnUNet_raw.require(), _resolve_dataset(dataset))


def _cmd_select_slices(args: argparse.Namespace) -> int:
    from nnunet_semisup.selection import SelectionError, make_extractor, plan_summary, select_slices

    folder = _raw_dataset_folder(args.d)
    name = os.path.basename(folder)
    output = args.o or f"annotation_plan_{name}_{args.strategy}_s{args.budget}.json"
    summary_file = os.path.splitext(output)[0] + ".txt"
    for path in (output, summary_file):
        if os.path.exists(path) and not args.overwrite:
            print(
                f"nnunet-semisup select-slices: error: {path} exists (use -o or --overwrite)", file=sys.stderr
            )
            return 2
    try:
        extractor = make_extractor(args.features) if args.strategy == "ra" else None
        plan = select_slices(folder, args.budget, args.strategy, extractor, progress=not args.no_progress)
    except SelectionError as e:
        print(f"nnunet-semisup select-slices: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(plan, f, indent=1)
    summary = plan_summary(plan)
    with open(summary_file, "w") as f:
        f.write(summary + "\n")
    print(summary)
    print(f"\nPlan: {output}\nSummary: {summary_file}")
    return 0


def add_sparsification_parsers(sub: argparse._SubParsersAction) -> None:
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
