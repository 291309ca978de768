"""Markdown table of the 3d_fullres plans written by benchmarks/planners_hippocampus.sh.

python benchmarks/planners_table.py PREPROCESSED_DIR FEW_ID ALL_ID
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROWS = [  # (planner label, dataset key, plans stem)
    ("nnU-Net ExperimentPlanner", "few", "nnUNetPlans"),
    ("nnUNetSemiSupPlanner", "few", "nnUNetSemiSupPlans"),
    ("nnU-Net ExperimentPlanner", "all", "nnUNetPlans"),
    ("nnU-Net nnUNetPlannerResEncM", "few", "nnUNetResEncUNetMPlans"),
    ("nnUNetSemiSupPlannerResEncM", "few", "nnUNetSemiSupResEncUNetMPlans"),
    ("nnU-Net nnUNetPlannerResEncM", "all", "nnUNetResEncUNetMPlans"),
]


def main(preprocessed: str, few_id: str, all_id: str) -> None:
    folders = {
        key: next(Path(preprocessed).glob(f"Dataset{i}_*")) for key, i in (("few", few_id), ("all", all_id))
    }
    print(
        "| target | planner | cases (labeled + unlabeled) | spacing (mm) | median shape | patch | batch | "
        "stages | one batch covers: labeled voxels | all planned voxels |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for suffix, target in (("", "native"), ("_2mm", "2 mm")):
        for label, key, stem in ROWS:
            plans_file = folders[key] / f"{stem}{suffix}.json"
            if not plans_file.is_file():
                continue
            plans = json.loads(plans_file.read_text())
            c = plans["configurations"]["3d_fullres"]
            n_labeled = json.loads((folders[key] / "dataset.json").read_text())["numTraining"]
            n_unlabeled = plans.get("semisup_planning", {}).get("num_unlabeled_cases", 0)
            median = math.prod(c["median_image_size_in_voxels"])
            batch_voxels = c["batch_size"] * math.prod(c["patch_size"])
            print(
                f"| {target} | {label} | {n_labeled} + {n_unlabeled} | "
                f"{'x'.join(f'{s:g}' for s in c['spacing'])} | "
                f"{'x'.join(str(round(s)) for s in c['median_image_size_in_voxels'])} | "
                f"{'x'.join(map(str, c['patch_size']))} | {c['batch_size']} | "
                f"{c['architecture']['arch_kwargs']['n_stages']} | "
                f"{100 * batch_voxels / (median * n_labeled):.1f} % | "
                f"{100 * batch_voxels / (median * (n_labeled + n_unlabeled)):.1f} % |"
            )


if __name__ == "__main__":
    main(*sys.argv[1:4])
