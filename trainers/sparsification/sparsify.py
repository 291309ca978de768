"""Sparse labels from dense ones (``nnunet-semisup sparsify``), for benchmarking annotation sparsification.

A new raw nnU-Net dataset is written in which only the voxels on the planned slices (the union of the xy, xz
and yz slices of an annotation plan from ``nnunet-semisup select-slices``) keep their label; every other voxel
gets nnU-Net's ignore label (dataset.json ``"ignore": N``, N = highest label + 1). nnU-Net then masks the loss
on ignore voxels (Eq. 2 of Zheng et al., AAAI 2020) with no change to its code. The source dataset is only read;
an existing dataset with the target id is never touched.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid

import numpy as np

from nnunet_semisup.trainers.sparsification.selection import SelectionError, annotated_mask, validate_plan

PLAN_FILE_NAME = "annotation_plan.json"
# folders of the source that are carried over unchanged (images only, or test labels)
_CARRIED_FOLDERS = ("imagesTs", "labelsTs", "imagesUnlabeled")


class SparsifyError(ValueError):
    """Bad input or an existing target; the message names the file and the fix."""


def sparsify_label(label: np.ndarray, mask: np.ndarray, ignore_label: int) -> np.ndarray:
    """``label`` where ``mask`` is True, ``ignore_label`` elsewhere.

    Args:
        label: (A0, A1, A2) dense label map.
        mask: (A0, A1, A2) bool, the voxels of the planned slices.
        ignore_label: value of the unannotated voxels.

    Returns:
        A new label map of a dtype that holds ``ignore_label``.
    """
    if label.shape != mask.shape:
        raise ValueError(f"label of shape {label.shape} and mask of shape {mask.shape} differ")
    dtype = np.promote_types(label.dtype, np.min_scalar_type(ignore_label))
    return np.where(mask, label, ignore_label).astype(dtype)


def _existing_dataset(raw_root: str, dataset_id: int) -> list[str]:
    return sorted(glob.glob(os.path.join(raw_root, f"Dataset{dataset_id:03d}_*")))


def sparsify_dataset(
    source_folder: str,
    plan: dict,
    raw_root: str,
    out_id: int,
    name: str,
    link: bool = False,
    progress: bool = True,
) -> str:
    """Write ``raw_root/Dataset<out_id>_<name>`` with the sparse labels of ``plan``.

    Images (imagesTr, and imagesTs, labelsTs, imagesUnlabeled when present) are copied (or symlinked with
    ``link``); labelsTr get :func:`sparsify_label`; dataset.json gets ``labels["ignore"]``; the plan is stored as
    ``annotation_plan.json``. Everything is written into a temporary folder that is renamed at the end.

    Returns:
        The new dataset folder.

    Raises:
        SparsifyError: the target id exists, the source already has an ignore label or region labels, or the
            plan does not match the source (case missing, other shape).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    from tqdm import tqdm

    existing = _existing_dataset(raw_root, out_id)
    if existing:
        raise SparsifyError(f"dataset id {out_id} is taken by {existing[0]}: choose another --out-id")
    with open(os.path.join(source_folder, "dataset.json")) as f:
        source_json = json.load(f)
    labels = source_json["labels"]
    if "ignore" in labels:
        raise SparsifyError(
            f"{source_folder}/dataset.json already has an ignore label ({labels['ignore']}): sparsify needs a "
            "densely labeled source"
        )
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise SparsifyError(
            f"{source_folder}/dataset.json uses region labels, which sparsify does not support"
        )
    ignore = max(int(v) for v in labels.values()) + 1

    files = get_filenames_of_train_images_and_targets(source_folder, source_json)
    rw = determine_reader_writer_from_dataset_json(
        source_json, next(iter(files.values()))["images"][0], verbose=False
    )()

    target = os.path.join(raw_root, f"Dataset{out_id:03d}_{name}")
    tmp = os.path.join(raw_root, f".tmp_{uuid.uuid4().hex}_{os.path.basename(target)}")
    os.makedirs(os.path.join(tmp, "imagesTr"))
    os.makedirs(os.path.join(tmp, "labelsTr"))
    transfer = os.symlink if link else shutil.copy2
    try:
        labels_read = {}
        for case in sorted(files):
            seg, properties = rw.read_seg(files[case]["label"])
            labels_read[case] = (seg[0], properties)
        try:
            validate_plan(plan, {c: s.shape for c, (s, _) in labels_read.items()})
        except SelectionError as e:
            raise SparsifyError(f"{e} (plan vs {source_folder}/labelsTr)") from None
        kept = total = 0
        for case in tqdm(sorted(files), desc="sparsifying", disable=not progress):
            seg, properties = labels_read[case]
            if seg.max() >= ignore:
                raise SparsifyError(
                    f"{files[case]['label']} has label {int(seg.max())}, not declared in "
                    f"{source_folder}/dataset.json. sparsify needs a densely labeled source whose labels are all "
                    f"declared; if this dataset is already sparse (label {int(seg.max())} = unannotated), do not "
                    f'sparsify it: declare that value as "ignore" in its dataset.json and train on it directly.'
                )
            mask = annotated_mask(seg.shape, plan["cases"][case])
            kept += int(mask.sum())
            total += mask.size
            out = sparsify_label(seg, mask, ignore)
            rw.write_seg(out, os.path.join(tmp, "labelsTr", case + source_json["file_ending"]), properties)
            for image in files[case]["images"]:
                transfer(os.path.abspath(image), os.path.join(tmp, "imagesTr", os.path.basename(image)))
        for folder in _CARRIED_FOLDERS:
            src = os.path.join(source_folder, folder)
            if os.path.isdir(src):
                os.makedirs(os.path.join(tmp, folder))
                for fname in sorted(os.listdir(src)):
                    transfer(os.path.abspath(os.path.join(src, fname)), os.path.join(tmp, folder, fname))
        new_json = {k: v for k, v in source_json.items() if k not in ("dataset", "name", "description")}
        new_json["labels"] = {**labels, "ignore": ignore}
        new_json["name"] = name
        new_json["description"] = (
            f"Sparse labels of {os.path.basename(os.path.normpath(source_folder))}: {plan['strategy'].upper()} "
            f"plan, one slice in {plan['budget']} per plane; {kept / max(total, 1):.2%} of the training voxels "
            f"labeled, the rest is the ignore label {ignore} (nnunet-semisup sparsify)"
        )
        new_json["numTraining"] = len(files)
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(new_json, f, indent=1)
        with open(os.path.join(tmp, PLAN_FILE_NAME), "w") as f:
            json.dump(plan, f, indent=1)
        if _existing_dataset(raw_root, out_id):
            raise SparsifyError(f"dataset id {out_id} was taken while sparsifying: choose another --out-id")
        os.rename(tmp, target)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return target
