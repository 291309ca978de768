"""Multi-view pseudo-labels of annotation sparsification (``nnunet-semisup pseudo-labels``; Zheng et al., AAAI
2020, Sec. "Self-Training"): the 2D base model (``SparseMultiPlane2DTrainer``) applied along each of the xy, xz
and yz planes plus the 3D base model give four pseudo-label sets Y^ = {Y^_xy, Y^_xz, Y^_yz, Y^_3d} per case;
their voxel-wise average of class probabilities is A(Y^).

Output folder layout (one file per case in each)::

    OUT/3d/CASE.nii.gz + CASE.npz   the 3D model's segmentation and probabilities ("probabilities": (K, A0, A1, A2))
    OUT/xy/ ...  OUT/xz/ ...  OUT/yz/ ...   the 2D model along each plane, same layout
    OUT/average/CASE.npz            A(Y^): "probabilities" (K, A0, A1, A2) float32, the mean of the four
    OUT/average/CASE.nii.gz         argmax of A(Y^) (the fused pseudo-label)
    OUT/pseudo_labels.json          models, cases, sources

Arrays are in the image's own array order (nnU-Net's reader: (z, y, x) for NIfTI): nnU-Net exports predictions
after undoing its transpose and crop, and the 2D model's slices along xz/yz are moved back into place inside
:class:`~nnunet_semisup.trainers.sparsification.networks.SliceWiseNetwork`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_semisup.precision import full_precision

SOURCES: tuple[str, ...] = ("3d", "xy", "xz", "yz")


class PseudoLabelError(ValueError):
    """Missing model or input; the message names it and the fix."""


def input_cases(raw_dataset_folder: str, dataset_json: dict, folders: Sequence[str]) -> dict[str, list[str]]:
    """{case: [channel files]} of the images in the given sub-folders of a raw dataset (nnU-Net naming)."""
    from nnunetv2.utilities.utils import (
        create_lists_from_splitted_dataset_folder,
        get_identifiers_from_splitted_dataset_folder,
    )

    cases: dict[str, list[str]] = {}
    for folder in folders:
        path = os.path.join(raw_dataset_folder, folder)
        if not os.path.isdir(path):
            continue
        ids = get_identifiers_from_splitted_dataset_folder(path, dataset_json["file_ending"])
        for case, files in zip(
            ids, create_lists_from_splitted_dataset_folder(path, dataset_json["file_ending"], ids)
        ):
            if case in cases:
                raise PseudoLabelError(
                    f"case {case} is in more than one of {list(folders)} of {raw_dataset_folder}"
                )
            cases[case] = files
    return cases


def average_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """A(Y^): the voxel-wise mean of the pseudo-label sets' class probabilities.

    Args:
        probabilities: each (K, A0, A1, A2), all the same shape.

    Returns:
        (K, A0, A1, A2) float32.
    """
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"pseudo-label probabilities differ in shape: {sorted(shapes)}")
    return np.mean(np.stack([p.astype(np.float32) for p in probabilities]), axis=0)


def _predictor(model_folder: str, folds: Sequence[str], device: str, disable_tta: bool):
    from nnunet_semisup.nnunet_commands import load_predictor

    try:
        return load_predictor(model_folder, folds, device, disable_tta)
    except FileNotFoundError as e:
        raise PseudoLabelError(f"{e} (see the README walkthrough)") from None


def predict_pseudo_label_sets(
    dataset: str,
    cases: dict[str, list[str]],
    out_dir: str,
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    trainer_2d: str = "SparseMultiPlane2DTrainer",
    trainer_3d: str = "LabeledOnlyTrainer",
    folds: Sequence[str] = ("0",),
    device: str = "cuda",
    disable_tta: bool = False,
    num_processes: int = 1,
    progress: bool = True,
) -> dict:
    """Write the four pseudo-label sets and A(Y^) of ``cases`` into ``out_dir`` (layout in the module doc).

    Cases whose four sets and average exist already are skipped (resumable). Returns the manifest.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from tqdm import tqdm

    from nnunet_semisup.nnunet_commands import model_folder
    from nnunet_semisup.trainers.sparsification.networks import SliceWiseNetwork, network_axis

    if not cases:
        raise PseudoLabelError(f"no images to pseudo-label for dataset {dataset}")
    models = {
        "3d": str(model_folder(dataset, trainer_3d, plans, configuration)),
        "2d": str(model_folder(dataset, trainer_2d, plans, configuration)),
    }
    for folder in models.values():
        if not os.path.isdir(folder):
            raise PseudoLabelError(
                f"no trained model in {folder}: train it first (see the README walkthrough)"
            )
    names = sorted(cases)
    for source in tqdm(SOURCES, desc="pseudo-label sets", disable=not progress):
        folder = os.path.join(out_dir, source)
        todo = [c for c in names if not os.path.isfile(os.path.join(folder, c + ".npz"))]
        if not todo:
            continue
        os.makedirs(folder, exist_ok=True)
        predictor = _predictor(models["3d" if source == "3d" else "2d"], folds, device, disable_tta)
        if source != "3d":
            if not isinstance(predictor.network, SliceWiseNetwork):
                raise PseudoLabelError(f"{models['2d']} is not a SparseMultiPlane2DTrainer model")
            predictor.network.plane_axis = network_axis(source, predictor.plans_manager.transpose_forward)
        predictor.predict_from_files(
            [cases[c] for c in todo],
            [os.path.join(folder, c) for c in todo],
            save_probabilities=True,
            overwrite=True,
            num_processes_preprocessing=num_processes,
            num_processes_segmentation_export=num_processes,
        )

    with open(os.path.join(models["3d"], "dataset.json")) as f:
        dataset_json = json.load(f)
    first_seg = os.path.join(out_dir, "3d", names[0] + dataset_json["file_ending"])
    rw = determine_reader_writer_from_dataset_json(dataset_json, first_seg, verbose=False)()
    average_dir = os.path.join(out_dir, "average")
    os.makedirs(average_dir, exist_ok=True)
    for case in tqdm(names, desc="averaging", disable=not progress):
        probabilities = []
        for source in SOURCES:
            with np.load(os.path.join(out_dir, source, case + ".npz")) as npz:
                probabilities.append(npz["probabilities"])
        mean = average_probabilities(probabilities)
        np.savez_compressed(os.path.join(average_dir, case + ".npz"), probabilities=mean)
        _, properties = rw.read_seg(os.path.join(out_dir, "3d", case + dataset_json["file_ending"]))
        rw.write_seg(
            mean.argmax(0).astype(np.uint8),
            os.path.join(average_dir, case + dataset_json["file_ending"]),
            properties,
        )
    manifest = {
        "dataset": dataset,
        "configuration": configuration,
        "plans": plans,
        "models": models,
        "folds": list(folds),
        "sources": list(SOURCES),
        "cases": names,
        "file_ending": dataset_json["file_ending"],
    }
    with open(os.path.join(out_dir, "pseudo_labels.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def write_fused_dataset(
    sparse_raw_folder: str,
    pseudo_dir: str,
    raw_root: str,
    out_id: int,
    name: str,
) -> str:
    """The simple variant: a plain nnU-Net raw dataset (no ignore label) whose labelsTr are the fused
    pseudo-labels argmax A(Y^) of every pseudo-labeled case, with the sparse dataset's annotated voxels (its
    non-ignore labels) written over them. Images are symlinked; imagesTs/labelsTs are carried over.

    Returns the new dataset folder. Raises :class:`PseudoLabelError` if the id is taken.
    """
    import glob
    import shutil

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    existing = sorted(glob.glob(os.path.join(raw_root, f"Dataset{out_id:03d}_*")))
    if existing:
        raise PseudoLabelError(f"dataset id {out_id} is taken by {existing[0]}: choose another --fused-id")
    with open(os.path.join(sparse_raw_folder, "dataset.json")) as f:
        sparse_json = json.load(f)
    with open(os.path.join(pseudo_dir, "pseudo_labels.json")) as f:
        manifest = json.load(f)
    ending = sparse_json["file_ending"]
    ignore = sparse_json["labels"].get("ignore")
    cases = input_cases(sparse_raw_folder, sparse_json, ("imagesTr", "imagesUnlabeled"))
    missing = [c for c in cases if c not in manifest["cases"]]
    if missing:
        raise PseudoLabelError(
            f"no pseudo-labels for case(s) {missing} in {pseudo_dir}: run pseudo-labels first"
        )
    target = os.path.join(raw_root, f"Dataset{out_id:03d}_{name}")
    os.makedirs(os.path.join(target, "imagesTr"))
    os.makedirs(os.path.join(target, "labelsTr"))
    rw = determine_reader_writer_from_dataset_json(sparse_json, cases[next(iter(cases))][0], verbose=False)()
    for case, files in cases.items():
        fused, properties = rw.read_seg(os.path.join(pseudo_dir, "average", case + ending))
        fused = fused[0]
        sparse_file = os.path.join(sparse_raw_folder, "labelsTr", case + ending)
        if os.path.isfile(sparse_file):
            sparse, _ = rw.read_seg(sparse_file)
            annotated = sparse[0] != ignore
            fused = np.where(annotated, sparse[0], fused)
        rw.write_seg(fused.astype(np.uint8), os.path.join(target, "labelsTr", case + ending), properties)
        for image in files:
            src = os.path.realpath(image)
            os.symlink(src, os.path.join(target, "imagesTr", os.path.basename(image)))
    for folder in ("imagesTs", "labelsTs"):
        src = os.path.join(sparse_raw_folder, folder)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(target, folder), symlinks=False)
    new_json = {k: v for k, v in sparse_json.items() if k not in ("numUnlabeled", "description")}
    new_json["labels"] = {k: v for k, v in sparse_json["labels"].items() if k != "ignore"}
    new_json["numTraining"] = len(cases)
    new_json["name"] = name
    new_json["description"] = (
        f"Fused multi-view pseudo-labels (argmax A(Y^)) of {os.path.basename(sparse_raw_folder)}, annotated voxels "
        "kept (nnunet-semisup pseudo-labels --fused-id)"
    )
    with open(os.path.join(target, "dataset.json"), "w") as f:
        json.dump(new_json, f, indent=1)
    return target


@full_precision  # cross-entropies of the sets are compared with each other: float32
def nearest_pseudo_label_set(logits, sets):
    """Nearest-neighbour fit: per sample, the pseudo-label set closest to the current output by cross-entropy.

    Args:
        logits: (B, K, *spatial) network output.
        sets: (B, S, *spatial) the S pseudo-label sets as class indices (float or int).

    Returns:
        (B,) long tensor, the index of the set with the lowest mean voxel cross-entropy ``CE(logits, set)``.
    """
    import torch
    import torch.nn.functional as F

    if logits.shape[0] != sets.shape[0] or logits.shape[2:] != sets.shape[2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and sets {tuple(sets.shape)} differ in batch or space"
        )
    log_p = F.log_softmax(logits.float(), 1)
    ce = torch.stack(
        [-log_p.gather(1, sets[:, s : s + 1].long()).flatten(1).mean(1) for s in range(sets.shape[1])], 1
    )  # (B, S)
    return ce.argmin(1)


META_CHANNEL_NAME = "noNorm"


def write_meta_dataset(sparse_raw_folder: str, pseudo_dir: str, raw_root: str, out_id: int, name: str) -> str:
    """The meta dataset of :class:`~nnunet_semisup.trainers.sparsification.meta.SelfTrainingMetaTrainer`.

    Per case (training and unlabeled): channels ``_0000``.. = the image's own channels (symlinked), then K float
    channels of A(Y^), then the four pseudo-label sets (3d, xy, xz, yz) as label-valued channels (all named
    ``noNorm``: nnU-Net leaves their values alone); label = the sparse annotation (all ignore for unlabeled cases).
    imagesTs/labelsTs are carried over (their extra channels are made by ``predict-sparse``).
    """
    import glob

    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    existing = sorted(glob.glob(os.path.join(raw_root, f"Dataset{out_id:03d}_*")))
    if existing:
        raise PseudoLabelError(f"dataset id {out_id} is taken by {existing[0]}: choose another --meta-id")
    with open(os.path.join(sparse_raw_folder, "dataset.json")) as f:
        sparse_json = json.load(f)
    ignore = sparse_json["labels"].get("ignore")
    if ignore is None:
        raise PseudoLabelError(f"{sparse_raw_folder}/dataset.json has no ignore label: not a sparse dataset")
    ending = sparse_json["file_ending"]
    cases = input_cases(sparse_raw_folder, sparse_json, ("imagesTr", "imagesUnlabeled"))
    target = os.path.join(raw_root, f"Dataset{out_id:03d}_{name}")
    os.makedirs(os.path.join(target, "imagesTr"))
    os.makedirs(os.path.join(target, "labelsTr"))
    rw = determine_reader_writer_from_dataset_json(sparse_json, cases[next(iter(cases))][0], verbose=False)()
    num_classes = None
    for case, files in cases.items():
        num_classes = write_meta_inputs(case, files, pseudo_dir, os.path.join(target, "imagesTr"), ending, rw)
        sparse_file = os.path.join(sparse_raw_folder, "labelsTr", case + ending)
        if os.path.isfile(sparse_file):
            os.symlink(os.path.realpath(sparse_file), os.path.join(target, "labelsTr", case + ending))
        else:
            image, properties = rw.read_images(files[:1])
            rw.write_seg(
                np.full(image.shape[1:], ignore, np.uint8),
                os.path.join(target, "labelsTr", case + ending),
                properties,
            )
    for folder in ("imagesTs", "labelsTs"):
        src = os.path.join(sparse_raw_folder, folder)
        if os.path.isdir(src):
            os.symlink(os.path.realpath(src), os.path.join(target, folder))
    channels = dict(sparse_json["channel_names"])
    n = len(channels)
    for i in range(num_classes + len(SOURCES)):
        channels[str(n + i)] = META_CHANNEL_NAME
    new_json = {k: v for k, v in sparse_json.items() if k not in ("numUnlabeled", "description")}
    new_json.update(
        channel_names=channels,
        numTraining=len(cases),
        name=name,
        description=f"Meta dataset of {os.path.basename(sparse_raw_folder)}: image, A(Y^) ({num_classes} channels), "
        f"pseudo-label sets {', '.join(SOURCES)} (nnunet-semisup pseudo-labels --meta-id)",
        semisup_meta={"image_channels": n, "num_classes": num_classes, "sets": list(SOURCES)},
    )
    with open(os.path.join(target, "dataset.json"), "w") as f:
        json.dump(new_json, f, indent=1)
    return target


def write_meta_inputs(case: str, files: list[str], pseudo_dir: str, out_folder: str, ending: str, rw) -> int:
    """Write one case's meta-model input channels into ``out_folder`` (see :func:`write_meta_dataset`).
    The extra channels are written with SimpleITK in the first image's geometry (images SimpleITK can read;
    nnU-Net's ``write_seg`` would cast the probabilities to uint8). Returns K, the number of classes of A(Y^)."""
    import SimpleITK as sitk

    for image in files:
        os.symlink(os.path.realpath(image), os.path.join(out_folder, os.path.basename(image)))
    reference = sitk.ReadImage(files[0])

    def write(array: np.ndarray, channel: int) -> None:
        out = sitk.GetImageFromArray(array.astype(np.float32))
        out.CopyInformation(reference)
        sitk.WriteImage(out, os.path.join(out_folder, f"{case}_{channel:04d}{ending}"), True)

    with np.load(os.path.join(pseudo_dir, "average", case + ".npz")) as npz:
        average = npz["probabilities"]
    channel = len(files)
    for k in range(average.shape[0]):
        write(average[k], channel)
        channel += 1
    for source in SOURCES:
        seg, _ = rw.read_seg(os.path.join(pseudo_dir, source, case + ending))
        write(seg[0], channel)
        channel += 1
    return int(average.shape[0])


def meta_plans(source_plans: dict, dataset_name: str, extra_channels: int) -> dict:
    """The sparse dataset's plans for its meta dataset: same configurations, with ``extra_channels`` more input
    channels that are not normalized (NoNormalization, no mask)."""
    import copy

    plans = copy.deepcopy(source_plans)
    plans["dataset_name"] = dataset_name
    for config in plans["configurations"].values():
        if "normalization_schemes" in config:
            config["normalization_schemes"] = (
                config["normalization_schemes"] + ["NoNormalization"] * extra_channels
            )
            config["use_mask_for_norm"] = config["use_mask_for_norm"] + [False] * extra_channels
    props = plans.get("foreground_intensity_properties_per_channel", {})
    n = len(props)
    for i in range(extra_channels):
        props[str(n + i)] = dict(props.get("0", {}))
    return plans


def prepare_meta_plans(sparse_dataset: str, meta_folder: str, plans: str, preprocessed_root: str) -> str:
    """Write the meta dataset's plans (``meta_plans`` of the sparse dataset's ``plans``), dataset.json and
    fingerprint into ``nnUNet_preprocessed``, ready for ``nnUNetv2_preprocess``. Returns the plans file."""
    from nnunet_semisup.nnunet_commands import install_dataset_files

    src = os.path.join(preprocessed_root, sparse_dataset)
    plans_file = os.path.join(src, plans + ".json")
    if not os.path.isfile(plans_file):
        raise PseudoLabelError(f"{plans_file} not found: plan and preprocess the sparse dataset first")
    with open(plans_file) as f:
        source_plans = json.load(f)
    with open(os.path.join(meta_folder, "dataset.json")) as f:
        meta_json = json.load(f)
    name = os.path.basename(meta_folder)
    extra = len(meta_json["channel_names"]) - meta_json["semisup_meta"]["image_channels"]
    dst = os.path.join(preprocessed_root, name)
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, plans + ".json"), "w") as f:
        json.dump(meta_plans(source_plans, name, extra), f, indent=1)
    install_dataset_files(Path(meta_folder) / "dataset.json", Path(src), Path(dst))
    return os.path.join(dst, plans + ".json")


def predict_sparse_cascade(
    input_folder: str,
    output_folder: str,
    sparse_dataset: str,
    meta_dataset: str,
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    folds: Sequence[str] = ("0",),
    trainer_2d: str = "SparseMultiPlane2DTrainer",
    trainer_3d: str = "LabeledOnlyTrainer",
    trainer_meta: str = "SelfTrainingMetaTrainer",
    device: str = "cuda",
    disable_tta: bool = False,
    num_processes: int = 1,
    progress: bool = True,
) -> str:
    """The cascade on new images: base models (2D along xy, xz, yz; 3D) -> A(Y^) -> meta-model.

    Intermediate results go to ``output_folder/cascade/`` (pseudo-label sets, meta inputs); the meta-model's
    segmentations to ``output_folder/CASE<ending>``. Returns the output folder.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from nnunet_semisup.nnunet_commands import model_folder

    meta_model = str(model_folder(meta_dataset, trainer_meta, plans, configuration))
    if not os.path.isdir(meta_model):
        raise PseudoLabelError(
            f"no trained meta-model in {meta_model}: train {trainer_meta} on {meta_dataset}"
        )
    with open(os.path.join(meta_model, "dataset.json")) as f:
        meta_json = json.load(f)
    ending = meta_json["file_ending"]
    input_folder = os.path.abspath(input_folder)
    cases = input_cases(os.path.dirname(input_folder), meta_json, (os.path.basename(input_folder),))
    if not cases:
        raise PseudoLabelError(f"no images named CASE_0000{ending} in {input_folder}")
    work = os.path.join(output_folder, "cascade")
    pseudo_dir = os.path.join(work, "pseudo_labels")
    predict_pseudo_label_sets(
        sparse_dataset, cases, pseudo_dir, configuration, plans, trainer_2d, trainer_3d, folds, device, disable_tta,
        num_processes, progress,
    )  # fmt: skip
    meta_inputs = os.path.join(work, "meta_inputs")
    if os.path.isdir(meta_inputs):
        import shutil

        shutil.rmtree(meta_inputs)
    os.makedirs(meta_inputs)
    rw = determine_reader_writer_from_dataset_json(meta_json, cases[next(iter(cases))][0], verbose=False)()
    for case, files in cases.items():
        write_meta_inputs(case, files, pseudo_dir, meta_inputs, ending, rw)
    predictor = _predictor(meta_model, folds, device, disable_tta)
    predictor.predict_from_files(
        meta_inputs, output_folder, save_probabilities=False, overwrite=True,
        num_processes_preprocessing=num_processes, num_processes_segmentation_export=num_processes,
    )  # fmt: skip
    return output_folder
