"""Resample a raw nnU-Net dataset's training cases to a target spacing (benchmark preparation for sparse labels).

Why: nnU-Net resamples the ignore label like any class (linear interpolation of each label's mask, highest label
written last), so single annotated slices of a sparse dataset vanish under plans coarser than the raw spacing
(e.g. the 2 mm hippocampus demo plans on 1 mm images). Benchmarks therefore select and sparsify slices on a raw
copy that already has the plans' spacing. imagesTr/labelsTr are resampled (images cubic, labels with nnU-Net's
own segmentation resampling); imagesTs, labelsTs and imagesUnlabeled are copied unchanged (nnU-Net resamples them
at prediction time and predictions come back at their own resolution).

python benchmarks/resample_raw.py SOURCE_FOLDER TARGET_FOLDER --spacing 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import SimpleITK as sitk
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape


def resample_case(image_file: str, out_file: str, spacing_xyz: tuple[float, ...], is_seg: bool) -> None:
    image = sitk.ReadImage(image_file)
    array = sitk.GetArrayFromImage(image)[None]  # (1, z, y, x)
    old_zyx = np.array(image.GetSpacing()[::-1])
    new_zyx = np.array(spacing_xyz[::-1])
    shape = np.round(np.array(array.shape[1:]) * old_zyx / new_zyx).astype(int)
    out = resample_data_or_seg_to_shape(
        array.astype(np.float32), shape, old_zyx, new_zyx, is_seg=is_seg, order=1 if is_seg else 3, order_z=0
    )[0]
    result = sitk.GetImageFromArray(out.astype(np.uint8 if is_seg else np.float32))
    result.SetSpacing(tuple(float(s) for s in spacing_xyz))
    result.SetOrigin(image.GetOrigin())
    result.SetDirection(image.GetDirection())
    sitk.WriteImage(result, out_file, useCompression=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--spacing", type=float, nargs="+", required=True, help="mm, one value or x y z")
    args = parser.parse_args()
    spacing = tuple(args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
    if os.path.exists(args.target):
        raise SystemExit(f"{args.target} exists")
    os.makedirs(os.path.join(args.target, "imagesTr"))
    os.makedirs(os.path.join(args.target, "labelsTr"))
    for folder, is_seg in (("imagesTr", False), ("labelsTr", True)):
        for name in sorted(os.listdir(os.path.join(args.source, folder))):
            resample_case(
                os.path.join(args.source, folder, name),
                os.path.join(args.target, folder, name),
                spacing,
                is_seg,
            )
    for folder in ("imagesTs", "labelsTs", "imagesUnlabeled"):
        if os.path.isdir(os.path.join(args.source, folder)):
            shutil.copytree(os.path.join(args.source, folder), os.path.join(args.target, folder))
    with open(os.path.join(args.source, "dataset.json")) as f:
        dataset_json = json.load(f)
    dataset_json["description"] = (
        f"{dataset_json.get('description', '')}; training cases resampled to {spacing} mm"
    )
    with open(os.path.join(args.target, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)


if __name__ == "__main__":
    main()
