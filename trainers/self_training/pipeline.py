"""Pseudo-label self-training, the strongest simple semi-supervised baseline (``nnunet-semisup self-train``).

One round: a teacher trained on the labeled cases of dataset D predicts D's ``imagesUnlabeled``; a new raw
dataset ``Dataset<out-id>_<name>SelfTrain`` holds D's labeled cases plus the pseudo-labeled ones (optionally
with low-confidence voxels set to nnU-Net's ignore label); it gets D's plans unchanged, a ``splits_final.json``
whose validation cases are D's (pseudo-labeled cases are training-only), and a student is trained on it from
scratch. ``--rounds 2`` repeats this with the student as the teacher (dataset ``out-id + 1``, and so on).

Everything runs through the stock console scripts (``nnUNetv2_train``, ``nnUNetv2_predict``,
``nnUNetv2_move_plans_between_datasets``, ``nnUNetv2_preprocess``; see :mod:`nnunet_semisup.nnunet_commands`), so
every model is a normal nnU-Net results folder. Finished steps are recognised and skipped on a rerun. D is never modified; a dataset id that is
taken by anything else is an error, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_semisup import nnunet_commands
from nnunet_semisup.console import Console

MANIFEST_NAME = "semisup_self_training.json"
TEACHER_STAMP = "semisup_teacher.json"
MANIFEST_FORMAT = 1
# dataset.json keys of D that describe D's own folders, not the new dataset
_DROPPED_KEYS = ("dataset", "numUnlabeled", "numTest", "numTraining", "name", "description", "labels")


class SelfTrainingError(ValueError):
    """Bad input or a conflict with existing data. The message names the thing and the fix."""


@dataclass(frozen=True)
class SelfTrainingOptions:
    """What ``nnunet-semisup self-train`` was asked to do (see :func:`run_self_training`)."""

    dataset: str
    configuration: str
    fold: str
    out_id: int
    plans: str = "nnUNetPlans"
    out_name: str | None = None
    rounds: int = 1
    confidence: float | None = None
    teacher_trainer: str = "LabeledOnlyTrainer"
    student_trainer: str = "LabeledOnlyTrainer"
    device: str = "cuda"
    num_processes: int = 1
    disable_tta: bool = False
    copy_images: bool = False


# ----------------------------------------------------------------------------------------------------------
# pure parts


def self_training_splits(source_splits: Sequence[dict], pseudo_case_ids: Sequence[str]) -> list[dict]:
    """The new dataset's folds: fold k trains on D's fold-k training cases plus every pseudo-labeled case and
    validates on exactly D's fold-k validation cases, so the student's validation is comparable with the
    teacher's and never scores a pseudo-label.

    Raises :class:`SelfTrainingError` if a pseudo-labeled id is also a labeled case id of D.
    """
    pseudo = sorted(pseudo_case_ids)
    labeled = {c for split in source_splits for c in (*split["train"], *split["val"])}
    clash = sorted(labeled & set(pseudo))
    if clash:
        raise SelfTrainingError(
            f"case id(s) {clash} are both labeled and unlabeled in the source dataset; rename or remove them in "
            "imagesUnlabeled"
        )
    return [
        {"train": sorted(split["train"]) + pseudo, "val": sorted(split["val"])} for split in source_splits
    ]


def ignore_label_for(labels: dict) -> int:
    """The ignore label value of a dataset.json ``labels`` dict: its own ``ignore`` entry, else the highest
    label + 1 (nnU-Net requires the ignore label to be the highest one).

    Raises :class:`SelfTrainingError` for region-based labels, whose probabilities are not a softmax.
    """
    if "ignore" in labels:
        return int(labels["ignore"])
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise SelfTrainingError(
            "--confidence needs a softmax over classes, but this dataset is region-based (labels with lists); "
            "run self-train without --confidence"
        )
    return max(int(v) for v in labels.values()) + 1


def apply_confidence_filter(
    segmentation: np.ndarray, probabilities: np.ndarray, threshold: float, ignore_label: int
) -> np.ndarray:
    """Set voxels whose maximum class probability is below ``threshold`` to ``ignore_label``.

    Args:
        segmentation: label map, shape ``(*spatial)``.
        probabilities: class probabilities, shape ``(num_classes, *spatial)``, same spatial axis order.
        threshold: in (0, 1].
        ignore_label: value written into low-confidence voxels.

    Returns:
        A new label map (the input is not modified).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if probabilities.ndim != segmentation.ndim + 1 or probabilities.shape[1:] != segmentation.shape:
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not match the segmentation of shape "
            f"{segmentation.shape}: expected (num_classes, {', '.join(map(str, segmentation.shape))})"
        )
    dtype = np.promote_types(segmentation.dtype, np.min_scalar_type(ignore_label))
    filtered = segmentation.astype(dtype, copy=True)
    filtered[probabilities.max(axis=0) < threshold] = ignore_label
    return filtered


def filter_pseudo_label(
    prediction_file: str,
    probabilities_file: str,
    output_file: str,
    threshold: float,
    ignore_label: int,
    reader_writer_class: type,
) -> float:
    """Write ``prediction_file`` with low-confidence voxels set to ``ignore_label`` to ``output_file``.

    nnU-Net 2.8 exports ``probabilities`` (``--save_probabilities``) after reverting its crop and its axis
    transpose, i.e. in the array order of the reader/writer that wrote the prediction (for SimpleITKIO
    ``(classes, z, y, x)``). Reading the prediction with that same reader/writer therefore gives the matching
    array, whatever ``transpose_forward`` the plans use; a shape mismatch stops here instead of silently
    misplacing the mask.

    Returns:
        The fraction of voxels set to ignore.
    """
    rw = reader_writer_class()
    seg, properties = rw.read_seg(prediction_file)
    with np.load(probabilities_file) as npz:
        probabilities = npz["probabilities"]
    try:
        filtered = apply_confidence_filter(seg[0], probabilities, threshold, ignore_label)
    except ValueError as e:
        raise SelfTrainingError(f"{probabilities_file}: {e}") from None
    rw.write_seg(filtered, output_file, properties)
    return float(np.mean(filtered == ignore_label))


def self_training_dataset_json(
    source_json: dict, name: str, num_training: int, ignore_label: int | None
) -> dict:
    """dataset.json of the new dataset: D's channels, file ending and reader settings; D's labels plus
    ``"ignore": ignore_label`` when given (kept last, where nnU-Net wants the highest label)."""
    labels = dict(source_json["labels"])
    if ignore_label is not None:
        labels.pop("ignore", None)
        labels["ignore"] = ignore_label
    extra = {k: v for k, v in source_json.items() if k not in _DROPPED_KEYS}
    return {
        "name": name,
        "description": f"Pseudo-label self-training dataset built by nnunet-semisup from {source_json.get('name')}",
        "labels": labels,
        "numTraining": num_training,
        **extra,
    }


def file_sha256(path: str) -> str:
    """SHA-256 of a file (identifies the teacher checkpoint in manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_dataset_id(roots: dict[str, str], dataset_id: int, folder_name: str, expected: dict) -> bool:
    """Whether ``folder_name`` (id ``dataset_id``) is ours to reuse; raises if the id is taken otherwise.

    Returns True when ``nnUNet_raw/<folder_name>`` exists with a self-training manifest whose settings equal
    ``expected`` (a rerun), False when the id is free. ``roots`` maps ``raw``/``preprocessed``/``results`` to
    nnU-Net's folders.

    Raises :class:`SelfTrainingError` when any of them has another ``Dataset<id>_*`` folder, when the raw
    folder is not a self-training dataset or was made with other settings, or when the preprocessed folder
    exists without the raw one.
    """
    prefix = f"Dataset{dataset_id:03d}_"
    for root in roots.values():
        for other in sorted(Path(root).glob(prefix + "*")) if os.path.isdir(root) else []:
            if other.name != folder_name:
                raise SelfTrainingError(
                    f"dataset id {dataset_id} is taken by {other}; pick another --out-id (nothing is ever "
                    "overwritten)"
                )
    raw = Path(roots["raw"]) / folder_name
    if not raw.is_dir():
        if (Path(roots["preprocessed"]) / folder_name).exists():
            raise SelfTrainingError(
                f"{Path(roots['preprocessed']) / folder_name} exists but {raw} does not; pick another --out-id "
                "or remove that folder yourself"
            )
        return False
    manifest_path = raw / MANIFEST_NAME
    if not manifest_path.is_file():
        raise SelfTrainingError(
            f"dataset id {dataset_id} is taken by {raw}, which was not made by self-train; pick another --out-id"
        )
    manifest = json.loads(manifest_path.read_text())
    differing = sorted(k for k, v in expected.items() if manifest.get(k) != v)
    if differing:
        details = ", ".join(f"{k}: {manifest.get(k)!r} there, {expected[k]!r} now" for k in differing)
        raise SelfTrainingError(
            f"{raw} was made by self-train with other settings ({details}); pick another --out-id to keep both, "
            "or remove it yourself"
        )
    return True


def build_self_training_dataset(
    raw_root: str,
    folder_name: str,
    source_json: dict,
    labeled: dict[str, dict],
    unlabeled: dict[str, list[str]],
    pseudo_labels: dict[str, str],
    ignore_label: int | None,
    manifest: dict,
    copy_images: bool = False,
) -> str:
    """Write ``<raw_root>/<folder_name>`` with the labeled and the pseudo-labeled cases; returns its path.

    Args:
        raw_root: nnUNet_raw.
        folder_name: ``DatasetXXX_Name``.
        source_json: D's dataset.json.
        labeled: D's labeled cases, ``{case: {"images": [...], "label": path}}`` (nnU-Net's
            ``get_filenames_of_train_images_and_targets``).
        unlabeled: ``{case: [image per channel]}`` of D's imagesUnlabeled.
        pseudo_labels: ``{case: label file}`` for every unlabeled case (copied; they are ours).
        ignore_label: declared in dataset.json when not None.
        manifest: written as :data:`MANIFEST_NAME`, completed with the case lists and counts.
        copy_images: copy D's images and labels instead of symlinking them.

    Built in a hidden temporary sibling and renamed into place, so a crash never leaves a half dataset; only
    that temporary folder is ever removed.
    """
    missing = sorted(set(unlabeled) - set(pseudo_labels))
    if missing:
        raise SelfTrainingError(f"no pseudo-label for unlabeled case(s) {missing}")
    file_ending = source_json["file_ending"]
    final = os.path.join(raw_root, folder_name)
    tmp = os.path.join(raw_root, f".tmp_{folder_name}_{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    try:
        for sub in ("imagesTr", "labelsTr"):
            os.mkdir(os.path.join(tmp, sub))

        def put(src: str, rel: str, copy: bool) -> None:
            dst = os.path.join(tmp, rel)
            if copy:
                shutil.copy2(src, dst)
            else:
                os.symlink(os.path.abspath(src), dst)

        for case_id, files in sorted(labeled.items()):
            for c, image in enumerate(files["images"]):
                put(image, f"imagesTr/{case_id}_{c:04d}{file_ending}", copy_images)
            put(files["label"], f"labelsTr/{case_id}{file_ending}", copy_images)
        for case_id, images in sorted(unlabeled.items()):
            for c, image in enumerate(images):
                put(image, f"imagesTr/{case_id}_{c:04d}{file_ending}", copy_images)
            put(pseudo_labels[case_id], f"labelsTr/{case_id}{file_ending}", True)

        dataset_json = self_training_dataset_json(
            source_json, folder_name.split("_", 1)[1], len(labeled) + len(unlabeled), ignore_label
        )
        manifest = {
            **manifest,
            "labeled": sorted(labeled),
            "pseudo_labeled": sorted(unlabeled),
            "counts": {"labeled": len(labeled), "pseudo_labeled": len(unlabeled)},
            "images": "copied" if copy_images else "symlinked to the source dataset",
        }
        for name, content in (("dataset.json", dataset_json), (MANIFEST_NAME, manifest)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(content, f, indent=2)
                f.write("\n")
        if os.path.exists(final):  # appeared while we were writing; os.rename would replace an empty folder
            raise SelfTrainingError(f"{final} appeared while it was being built; nothing was changed there")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------------------------------------
# orchestration


def _train(console: Console, log: Path, dataset_name: str, trainer: str, opts: SelfTrainingOptions,
           what: str) -> Path:  # fmt: skip
    from nnunetv2.paths import nnUNet_results

    return nnunet_commands.train(console, log, dataset_name, opts.configuration, opts.fold, trainer, opts.plans,
                                 opts.device, str(nnUNet_results), what)  # fmt: skip


def _check_source(
    raw_dir: Path, preprocessed_dir: Path, opts: SelfTrainingOptions
) -> tuple[dict, dict, dict]:
    """D's dataset.json, labeled cases and unlabeled cases; clear errors for what self-training cannot use."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from nnunet_semisup.data.unlabeled import UNLABELED_FOLDER, UnlabeledDataError, find_unlabeled_cases

    source_json = json.loads((raw_dir / "dataset.json").read_text())
    plans_file = preprocessed_dir / f"{opts.plans}.json"
    if not plans_file.is_file():
        raise SelfTrainingError(
            f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {raw_dir.name} first (or pass the "
            "right -p PLANS)"
        )
    plans_manager = PlansManager(str(plans_file))
    if opts.configuration not in plans_manager.available_configurations:
        raise SelfTrainingError(
            f"configuration {opts.configuration!r} is not in {plans_file} (available: "
            f"{plans_manager.available_configurations})"
        )
    if plans_manager.get_configuration(opts.configuration).previous_stage_name is not None:
        raise SelfTrainingError(
            f"configuration {opts.configuration!r} is a cascade stage; use 3d_fullres, 3d_lowres or 2d"
        )
    try:
        unlabeled = find_unlabeled_cases(str(raw_dir), source_json)
    except UnlabeledDataError as e:
        raise SelfTrainingError(str(e)) from None
    if not unlabeled:
        raise SelfTrainingError(
            f"{raw_dir / UNLABELED_FOLDER} has no images: put the unlabeled images there, named like imagesTr "
            f"(CASE_0000{source_json['file_ending']})"
        )
    if opts.confidence is not None:
        ignore_label_for(source_json["labels"])  # region-based datasets fail here, before any training
    labeled = get_filenames_of_train_images_and_targets(str(raw_dir), source_json)
    return source_json, labeled, unlabeled


def _source_splits(preprocessed_dir: Path, labeled_ids: list[str], fold: str) -> list[dict] | None:
    """D's folds: its splits_final.json, else nnU-Net's default split of its labeled cases (what D would get);
    None for fold ``all`` with fewer than 5 labeled cases (nnU-Net needs no split for ``all``)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits_file = preprocessed_dir / "splits_final.json"
    if splits_file.is_file():
        splits = json.loads(splits_file.read_text())
    elif len(labeled_ids) >= 5:
        splits = generate_crossval_split(sorted(labeled_ids), seed=12345, n_splits=5)
    else:
        splits = None
    if fold != "all" and (splits is None or int(fold) >= len(splits)):
        raise SelfTrainingError(
            f"fold {fold} is not defined in {splits_file}; use a fold it defines, or fold all"
        )
    return splits


def _pseudo_label(console: Console, opts: SelfTrainingOptions, work: Path, raw_dir: Path, teacher: dict,
                  ignore_label: int | None) -> tuple[dict[str, str], dict[str, float]]:  # fmt: skip
    """Predict imagesUnlabeled with the teacher; returns pseudo-label files (and ignored fractions)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_semisup.data.unlabeled import UNLABELED_FOLDER

    predictions = work / "teacher_predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    stamp = {**teacher, "save_probabilities": opts.confidence is not None, "disable_tta": opts.disable_tta}
    stamp_file = predictions / TEACHER_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) != stamp:
        raise SelfTrainingError(
            f"{predictions} holds predictions of another teacher or other settings (see {stamp_file}); move that "
            "folder away to predict again"
        )
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    nnunet_commands.predict(
        console, work / "logs" / "predict_unlabeled.log", raw_dir / UNLABELED_FOLDER, predictions, teacher["dataset"],
        opts.configuration, teacher["trainer"], opts.plans, opts.fold, opts.device, opts.num_processes,
        disable_tta=opts.disable_tta, save_probabilities=opts.confidence is not None, continue_prediction=True,
    )  # fmt: skip

    source_json = json.loads((raw_dir / "dataset.json").read_text())
    file_ending = source_json["file_ending"]
    predicted = {p.name[: -len(file_ending)]: p for p in predictions.glob(f"*{file_ending}")}
    if opts.confidence is None:
        return {case: str(path) for case, path in predicted.items()}, {}
    filtered_dir = work / f"pseudo_labels_confidence{opts.confidence:g}"
    filtered_dir.mkdir(exist_ok=True)
    plans = PlansManager(str(predictions / "plans.json"))
    reader_writer = plans.image_reader_writer_class
    files, ignored = {}, {}
    for case, path in sorted(predicted.items()):
        out = filtered_dir / path.name
        ignored[case] = filter_pseudo_label(str(path), str(predictions / f"{case}.npz"), str(out),
                                            opts.confidence, ignore_label, reader_writer)  # fmt: skip
        files[case] = str(out)
    console.say(
        f"Confidence filter (max probability < {opts.confidence:g} -> ignore label {ignore_label}): "
        f"{100 * float(np.mean(list(ignored.values()))):.1f} % of the voxels ignored on average"
    )
    return files, ignored


def run_self_training(opts: SelfTrainingOptions) -> dict:
    """Run (or resume) self-training as described in the module docstring.

    Returns ``{"dataset": final dataset name, "trainer": ..., "checkpoint": path, "predict_command": str}``.
    Raises :class:`SelfTrainingError` for bad input, conflicts with existing data, or a failed step.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results

    if opts.rounds < 1:
        raise SelfTrainingError(f"--rounds must be at least 1, got {opts.rounds}")
    if opts.confidence is not None and not 0 < opts.confidence <= 1:
        raise SelfTrainingError(f"--confidence must be in (0, 1], got {opts.confidence}")
    if not 1 <= opts.out_id <= 999 - (opts.rounds - 1):
        raise SelfTrainingError(f"--out-id {opts.out_id} with {opts.rounds} round(s) needs ids up to 999")
    if opts.fold != "all" and not opts.fold.isdigit():
        raise SelfTrainingError(f"fold must be a number or 'all', got {opts.fold!r}")
    roots = {"raw": nnUNet_raw, "preprocessed": nnUNet_preprocessed, "results": nnUNet_results}
    for key, value in roots.items():
        if not value:
            raise SelfTrainingError(f"environment variable nnUNet_{key} is not set (see nnU-Net's set-up)")
    source_name = nnunet_commands.resolve_dataset(opts.dataset, SelfTrainingError, prefix="")
    raw_dir = Path(nnUNet_raw) / source_name
    if not raw_dir.is_dir():
        raise SelfTrainingError(f"{raw_dir} not found: self-training reads the raw images of {source_name}")
    source_json, labeled, unlabeled = _check_source(raw_dir, Path(nnUNet_preprocessed) / source_name, opts)
    base_name = opts.out_name or f"{source_name.split('_', 1)[1]}SelfTrain"
    targets = [
        f"Dataset{opts.out_id + r:03d}_{base_name}" + (f"R{r + 1}" if r else "") for r in range(opts.rounds)
    ]
    ignore_label = ignore_label_for(source_json["labels"]) if opts.confidence is not None else None
    if ignore_label is None and "ignore" in source_json["labels"]:
        ignore_label = int(
            source_json["labels"]["ignore"]
        )  # D's own partial annotations keep their ignore label

    settings = {
        "format": MANIFEST_FORMAT,
        "source_dataset": source_name,
        "configuration": opts.configuration,
        "plans": opts.plans,
        "fold": opts.fold,
        "confidence_threshold": opts.confidence,
        "ignore_label": ignore_label,
    }
    # before any training: a taken id or a dataset of other settings must not cost hours of teacher training
    for r, target_name in enumerate(targets, start=1):
        check_dataset_id(roots, opts.out_id + r - 1, target_name, {**settings, "round": r})

    console = Console(error=SelfTrainingError)
    console.say(
        f"Self-training on {source_name}: {len(labeled)} labeled, {len(unlabeled)} unlabeled cases; "
        f"{opts.rounds} round(s) -> {', '.join(targets)}"
    )
    teacher_dataset, teacher_trainer = source_name, opts.teacher_trainer
    for r, target_name in enumerate(targets, start=1):
        work = Path(nnUNet_results) / target_name / "self_training"
        step = f"[round {r}/{opts.rounds}]"
        log = work / "logs" / "train_teacher.log"
        checkpoint = _train(console, log, teacher_dataset, teacher_trainer, opts, f"{step} teacher")
        teacher = {
            "dataset": teacher_dataset,
            "trainer": teacher_trainer,
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(str(checkpoint)),
        }
        expected = {**settings, "round": r, "teacher": teacher}
        if check_dataset_id(roots, opts.out_id + r - 1, target_name, expected):
            console.say(f"{step} pseudo-labeled dataset: exists ({Path(nnUNet_raw) / target_name})")
        else:
            console.say(f"{step} pseudo-labels: {teacher_trainer} on {teacher_dataset} predicts {len(unlabeled)} "
                        "unlabeled cases")  # fmt: skip
            pseudo, ignored = _pseudo_label(console, opts, work, raw_dir, teacher, ignore_label)
            path = build_self_training_dataset(
                nnUNet_raw, target_name, source_json, labeled, unlabeled, pseudo, ignore_label,
                {**expected, "ignored_fraction": ignored}, opts.copy_images,
            )  # fmt: skip
            console.say(f"{step} pseudo-labeled dataset: wrote {path}")
        splits = _source_splits(Path(nnUNet_preprocessed) / source_name, sorted(labeled), opts.fold)
        nnunet_commands.move_plans_and_preprocess(
            console, work / "logs", source_name, opts.out_id + r - 1, target_name, opts.plans, opts.configuration,
            opts.num_processes, nnUNet_raw, nnUNet_preprocessed,
            None if splits is None else self_training_splits(splits, sorted(unlabeled)),
        )  # fmt: skip
        checkpoint = _train(console, work / "logs" / "train_student.log", target_name, opts.student_trainer, opts,
                            f"{step} student")  # fmt: skip
        teacher_dataset, teacher_trainer = target_name, opts.student_trainer

    command = (
        f"nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d {teacher_dataset} -c {opts.configuration} "
        f"-p {opts.plans} -tr {teacher_trainer} -f {opts.fold}"
    )
    console.say(f"Done. Final model: {checkpoint.parent}")
    print(f"Predict with it:\n  {command}", flush=True)
    return {"dataset": teacher_dataset, "trainer": teacher_trainer, "checkpoint": str(checkpoint),
            "predict_command": command}  # fmt: skip
