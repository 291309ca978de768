"""Unlabeled images: discovery, validation and preprocessing with the dataset's own plans.

Convention: ``nnUNet_raw/DatasetX/imagesUnlabeled/CASE_XXXX<file_ending>``, named like imagesTr (one file per
channel, ``_0000`` ... ``_{C-1}``). They are preprocessed by the configuration's own preprocessor (normally
nnU-Net's ``DefaultPreprocessor``: same transpose, crop, normalization and resampling as the labeled cases)
into ``nnUNet_preprocessed/DatasetX/<data_identifier>_unlabeled/`` in nnU-Net's blosc2 format. A manifest in
that folder records the plans and every raw file's size and modification time, so reruns only process new or
changed cases, and cases removed from imagesUnlabeled are dropped. Raw data is only ever read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import multiprocessing
import os
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nnunet_semisup.errors import UserInputError

UNLABELED_FOLDER = "imagesUnlabeled"
MANIFEST_NAME = "semisup_unlabeled_manifest.json"
MANIFEST_FORMAT = 1
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class UnlabeledDataError(UserInputError, ValueError):
    """Bad unlabeled input. The message names the file or case and says how to fix it."""


@dataclass
class PreprocessReport:
    """What :func:`preprocess_unlabeled` did."""

    folder: str
    processed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.processed + self.up_to_date)


def unlabeled_preprocessed_folder(preprocessed_dataset_dir: str, data_identifier: str) -> str:
    """``<preprocessed dataset>/<data_identifier>_unlabeled``: a sibling of the labeled preprocessed folder."""
    return os.path.join(preprocessed_dataset_dir, f"{data_identifier}_unlabeled")


def _file_signature(path: str) -> list:
    st = os.stat(path)
    return [os.path.basename(path), st.st_size, st.st_mtime_ns]


def _labeled_case_ids(raw_dataset_dir: str, file_ending: str) -> set[str]:
    folder = os.path.join(raw_dataset_dir, "imagesTr")
    if not os.path.isdir(folder):
        return set()
    ids = set()
    for name in os.listdir(folder):
        if name.endswith(file_ending):
            match = _CHANNEL_RE.match(name[: -len(file_ending)])
            if match:
                ids.add(match["case"])
    return ids


def find_unlabeled_cases(raw_dataset_dir: str, dataset_json: dict) -> dict[str, list[str]]:
    """List and check ``imagesUnlabeled`` of a raw dataset.

    Returns case id -> image files in channel order (empty dict when the folder is absent or empty).
    Raises :class:`UnlabeledDataError` for: a file with another ending than dataset.json's ``file_ending``,
    a name without the ``_XXXX`` channel suffix, a case with missing or extra channels, an empty (0-byte)
    file, and a case id that is also in imagesTr.
    """
    folder = os.path.join(raw_dataset_dir, UNLABELED_FOLDER)
    if not os.path.isdir(folder):
        return {}
    file_ending = dataset_json["file_ending"]
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    cases: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or os.path.isdir(path):
            continue
        if not name.endswith(file_ending):
            raise UnlabeledDataError(
                f"{path}: wrong file ending; dataset.json says file_ending={file_ending!r}. Convert the image to "
                f"{file_ending} (same format as imagesTr) or move it out of {UNLABELED_FOLDER}/."
            )
        match = _CHANNEL_RE.match(name[: -len(file_ending)])
        if match is None:
            raise UnlabeledDataError(
                f"{path}: name lacks the channel suffix; name unlabeled images like imagesTr, "
                f"CASE_0000{file_ending} (one file per channel, _0000 to _{num_channels - 1:04d})."
            )
        if os.path.getsize(path) == 0:
            raise UnlabeledDataError(f"{path}: empty file (0 bytes). Re-export the image or remove it.")
        cases.setdefault(match["case"], {})[int(match["channel"])] = path

    expected = list(range(num_channels))
    for case_id, channels in cases.items():
        if sorted(channels) != expected:
            raise UnlabeledDataError(
                f"unlabeled case {case_id!r} in {folder} has channels {sorted(channels)}, but dataset.json "
                f"declares {num_channels} channel(s) {list(dataset_json['channel_names'].values())}: provide "
                f"exactly {', '.join(f'{case_id}_{c:04d}{file_ending}' for c in expected)}."
            )
    overlap = sorted(set(cases) & _labeled_case_ids(raw_dataset_dir, file_ending))
    if overlap:
        raise UnlabeledDataError(
            f"case id(s) {overlap} are in both imagesTr and {UNLABELED_FOLDER} of {raw_dataset_dir}. A case is "
            f"either labeled or unlabeled: remove it from {UNLABELED_FOLDER}/ (or rename it if it is a "
            f"different scan)."
        )
    return {case_id: [channels[c] for c in expected] for case_id, channels in sorted(cases.items())}


def plans_signature(plans: dict, configuration: str) -> str:
    """Hash of everything in the plans that changes how an image is preprocessed for ``configuration``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    relevant = {
        "configuration": manager.get_configuration(configuration).configuration,
        "transpose_forward": manager.transpose_forward,
        "intensity": manager.foreground_intensity_properties_per_channel,
        "reader": plans.get("image_reader_writer"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(folder: str) -> dict | None:
    """The manifest of a preprocessed unlabeled folder, or None when there is none (or it is unreadable)."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("format") == MANIFEST_FORMAT else None


def _write_manifest(folder: str, manifest: dict) -> None:
    path = os.path.join(folder, MANIFEST_NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _case_files(folder: str, case_id: str) -> list[str]:
    return [os.path.join(folder, case_id + suffix) for suffix in (".b2nd", "_seg.b2nd", ".pkl")]


def image_is_2d(properties: dict) -> bool:
    """Whether nnU-Net's reader read a 2D image: a 2D file (``sitk_stuff`` spacing of length 2; ``.png`` and other
    ``NaturalImage2DIO`` files) or nnU-Net's 1-slice convention for 2D data in 3D formats (spacing 999 along the
    slice axis). Either way nnU-Net stores it as (C, 1, x, y) with spacing (999, sx, sy)."""
    original_spacing = properties.get("sitk_stuff", {}).get("spacing", properties.get("spacing", ()))
    return len(original_spacing) == 2 or 999 in tuple(properties.get("spacing", ()))


def plans_are_2d(plans: dict) -> bool:
    """Whether planned dataset's images are 2D (nnU-Net's mark: spacing 999 in the plans' median spacing)."""
    return 999 in tuple(plans.get("original_median_spacing_after_transp", ()))


def _check_image(
    path_hint: str, data: np.ndarray, properties: dict, dataset_json: dict, dataset_is_2d: bool = False
) -> None:
    num_channels = len(dataset_json["channel_names"])
    kind = "2D" if dataset_is_2d else "3D"
    if data.ndim != 4 or data.shape[0] != num_channels:
        raise UnlabeledDataError(
            f"{path_hint}: read as array of shape {tuple(data.shape)} (channels, x, y, z), but the dataset has "
            f"{num_channels} channel(s) of {kind} images. Store one {kind} image per channel file (CASE_0000, "
            f"CASE_0001, ...), as in imagesTr."
        )
    if data.size == 0 or min(data.shape[1:]) == 0:
        raise UnlabeledDataError(f"{path_hint}: image has no voxels (shape {tuple(data.shape[1:])}).")
    is_2d = image_is_2d(properties) and data.shape[1] == 1
    if is_2d != dataset_is_2d:
        found = (
            "a 2D image (a 2D file, or one slice with spacing 999: nnU-Net's mark of 2D data)"
            if is_2d
            else f"a 3D image of shape {tuple(data.shape[1:])}"
        )
        fix = (
            "Store each 2D image as imagesTr stores them (same file format; one slice with spacing 999 for NIfTI)"
            if dataset_is_2d
            else "Store the whole 3D volume, as in imagesTr"
        )
        raise UnlabeledDataError(f"{path_hint}: is {found}, but the dataset's images are {kind}. {fix}.")
    spacing = np.asarray(properties.get("spacing", ()), dtype=float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise UnlabeledDataError(
            f"{path_hint}: invalid voxel spacing {properties.get('spacing')}. Write the image with a valid "
            f"spacing (the header of imagesTr images shows what is expected)."
        )
    if not np.all(np.isfinite(data)):
        raise UnlabeledDataError(f"{path_hint}: image contains NaN or infinite values. Fix or remove it.")
    label_values = {int(v) for v in dataset_json["labels"].values() if not isinstance(v, (list, tuple))}
    if np.issubdtype(data.dtype, np.integer) or np.all(np.mod(data, 1) == 0):
        values = np.unique(data)
        if 2 <= len(values) <= len(label_values) and set(values.astype(int).tolist()) <= label_values:
            raise UnlabeledDataError(
                f"{path_hint}: looks like a label map (its only values {values.astype(int).tolist()} are label "
                f"values of dataset.json), not an image. {UNLABELED_FOLDER}/ must hold images only."
            )


def _check_nifti_header_spacing(path: str) -> None:
    """A NIfTI-1 header without voxel sizes (pixdim 0) is read as 1 mm by ITK (and nibabel) without a word:
    refuse it. The header is parsed directly because both readers repair the value on load."""
    if not path.endswith((".nii", ".nii.gz")):
        return
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            header = f.read(348)
    except OSError:  # unreadable files were already reported by the image reader
        return
    for endian in "<>":
        if len(header) == 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:  # NIfTI-1
            ndim = struct.unpack(f"{endian}h", header[40:42])[0]
            pixdim = struct.unpack(f"{endian}8f", header[76:108])[1 : 1 + min(max(ndim, 0), 3)]
            if any(not math.isfinite(v) or v <= 0 for v in pixdim):
                raise UnlabeledDataError(
                    f"{path}: the NIfTI header has no valid voxel spacing (pixdim {pixdim}); ITK would silently "
                    f"read it as 1 mm. Write the image with its real spacing (e.g. copy the header of the scan "
                    f"it came from) and run again."
                )
            return


def read_unlabeled_case(
    case_id: str,
    image_files: list[str],
    reader_writer_class: type,
    dataset_json: dict,
    dataset_is_2d: bool = False,
) -> tuple[np.ndarray, dict]:
    """Read one unlabeled case with nnU-Net's reader and check it.

    Returns the image, shape (C, x, y, z) in nnU-Net's axis order ((C, 1, x, y) for 2D images, as nnU-Net reads
    labeled 2D images), and the reader's properties (``spacing`` in mm, same axis order). ``dataset_is_2d``: the
    dataset's labeled images are 2D (:func:`plans_are_2d`, :func:`image_is_2d`); unlabeled images must then be 2D
    too, and 3D otherwise. Raises :class:`UnlabeledDataError`, naming the file and the fix, for an unreadable
    file, a wrong channel count, an image of the other dimensionality, an invalid or missing (NIfTI pixdim 0)
    spacing, NaN/inf values, or a label map put among the images.
    """
    hint = image_files[0] if len(image_files) == 1 else f"unlabeled case {case_id!r} ({image_files})"
    try:
        data, properties = reader_writer_class().read_images(image_files)
    except Exception as e:
        raise UnlabeledDataError(
            f"{hint}: could not read the image ({type(e).__name__}: {e}). Check that the file is a valid "
            f"{dataset_json['file_ending']} image (open it in a viewer) or remove it."
        ) from None
    _check_image(hint, np.asarray(data), properties, dataset_json, dataset_is_2d)
    for path in image_files:
        _check_nifti_header_spacing(path)
    return data, properties


def _preprocess_case(
    case_id: str,
    image_files: list[str],
    output_folder: str,
    plans: dict,
    configuration: str,
    dataset_json: dict,
) -> str:
    """Preprocess one unlabeled case into ``output_folder``; runs in worker processes."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    data, properties = read_unlabeled_case(
        case_id, image_files, plans_manager.image_reader_writer_class, dataset_json, plans_are_2d(plans)
    )
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case_npy(
        data, None, properties, plans_manager, configuration_manager, dataset_json
    )
    # seg is nnU-Net's nonzero mask (-1 outside the crop's nonzero region, 0 inside); no class locations exist,
    # the unlabeled loader samples patches uniformly.
    properties["class_locations"] = {}
    properties["semisup_unlabeled"] = True
    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    patch_size = tuple(configuration_manager.patch_size)
    block_data, chunk_data = comp_blosc2_params(data.shape, patch_size, data.itemsize)
    block_seg, chunk_seg = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)
    for path in _case_files(output_folder, case_id):
        if os.path.exists(path):  # left over by an interrupted run; blosc2 does not overwrite
            os.remove(path)
    nnUNetDatasetBlosc2.save_case(
        data,
        seg,
        properties,
        os.path.join(output_folder, case_id),
        chunks=chunk_data,
        blocks=block_data,
        chunks_seg=chunk_seg,
        blocks_seg=block_seg,
    )
    return case_id


def _duplicate_warnings(
    raw_dataset_dir: str, file_ending: str, cases: dict[str, list[str]], new_cases: list[str]
) -> list[str]:
    """One message per new unlabeled case whose image content equals an imagesTr or imagesTs case.

    Compared by voxel content (:func:`~nnunet_semisup.data.benchmark.find_duplicate_images`), not by name: a
    test scan copied into imagesUnlabeled under another name would make any evaluation on imagesTs
    transductive. Training still goes on (the user may want it); checked only for new or changed cases, so
    an unchanged dataset is not read again at every start.
    """
    from nnunet_semisup.data.benchmark import find_duplicate_images, find_source_cases

    parts: dict[str, dict[str, list[str]]] = {}
    for folder in ("imagesTr", "imagesTs"):
        path = os.path.join(raw_dataset_dir, folder)
        if os.path.isdir(path) and any(n.endswith(file_ending) for n in os.listdir(path)):
            found = find_source_cases(path, None, file_ending)
            parts[folder] = {case_id: entry["images"] for case_id, entry in found.items()}
    parts[UNLABELED_FOLDER] = {case_id: cases[case_id] for case_id in new_cases}
    return [
        f"WARNING: unlabeled case {case_b!r} has the same image content as {part_a} case {case_a!r}. "
        + ("Scores on imagesTs are then not on unseen data. " if part_a == "imagesTs" else "")
        + f"Remove it from {UNLABELED_FOLDER}/ unless this is intended."
        for part_a, case_a, part_b, case_b in find_duplicate_images(parts, skip_unreadable=True)
        if part_b == UNLABELED_FOLDER
    ]


def preprocess_unlabeled(
    raw_dataset_dir: str,
    preprocessed_dataset_dir: str,
    configuration: str,
    plans_identifier: str = "nnUNetPlans",
    num_processes: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PreprocessReport:
    """Preprocess new or changed unlabeled cases of one dataset and configuration (idempotent).

    Reads ``<preprocessed_dataset_dir>/<plans_identifier>.json`` and ``dataset.json`` there, discovers
    ``<raw_dataset_dir>/imagesUnlabeled`` (:func:`find_unlabeled_cases`), and writes only into
    ``<data_identifier>_unlabeled``. If the plans changed since the last run, every case is redone.
    Raises :class:`UnlabeledDataError` for bad input (before anything is written for checks on names,
    and naming the file for checks that need the image).
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    log = log or (lambda _msg: None)
    plans_file = os.path.join(preprocessed_dataset_dir, f"{plans_identifier}.json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(
            f"{plans_file} not found: run nnUNetv2_plan_and_preprocess for this dataset first "
            f"(or pass the right -p PLANS identifier)."
        )
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(preprocessed_dataset_dir, "dataset.json")) as f:
        dataset_json = json.load(f)
    configuration_manager = PlansManager(plans).get_configuration(configuration)
    if configuration_manager.previous_stage_name is not None:
        raise UnlabeledDataError(
            f"configuration {configuration!r} is a cascade stage; semi-supervised training of cascades is not "
            f"supported. Use 3d_fullres, 3d_lowres or 2d."
        )
    cases = find_unlabeled_cases(raw_dataset_dir, dataset_json)
    out_folder = unlabeled_preprocessed_folder(
        preprocessed_dataset_dir, configuration_manager.data_identifier
    )
    report = PreprocessReport(folder=out_folder)

    signature = plans_signature(plans, configuration)
    manifest = read_manifest(out_folder) or {
        "format": MANIFEST_FORMAT,
        "plans_signature": signature,
        "cases": {},
    }
    done: dict[str, list] = manifest["cases"]
    wanted = {case_id: [_file_signature(p) for p in files] for case_id, files in cases.items()}
    for case_id in sorted(set(done) - set(wanted)):
        for path in _case_files(out_folder, case_id):
            if os.path.exists(path):
                os.remove(path)
        del done[case_id]
        report.removed.append(case_id)
    if manifest["plans_signature"] != signature:
        log("Plans changed since the unlabeled cases were preprocessed: redoing all of them.")
        manifest["plans_signature"] = signature
        done.clear()
    todo = [case_id for case_id in wanted if done.get(case_id) != wanted[case_id]]
    report.up_to_date = [case_id for case_id in wanted if case_id not in todo]

    if todo:
        for message in _duplicate_warnings(raw_dataset_dir, dataset_json["file_ending"], cases, todo):
            log(message)
            warnings.warn(message, stacklevel=2)
    os.makedirs(out_folder, exist_ok=True)
    if todo:
        log(f"Preprocessing {len(todo)} unlabeled case(s) into {out_folder}")
    args = [(case_id, cases[case_id], out_folder, plans, configuration, dataset_json) for case_id in todo]
    try:
        for case_id in _run_cases(args, num_processes, progress):
            done[case_id] = wanted[case_id]
            report.processed.append(case_id)
            if len(report.processed) % 50 == 0:  # an interrupted run keeps what it finished
                _write_manifest(out_folder, manifest)
    finally:
        _write_manifest(out_folder, manifest)
    return report


def _run_cases(args: list[tuple], num_processes: int, progress: bool):
    from tqdm import tqdm

    bar = tqdm(total=len(args), desc="Preprocessing unlabeled cases", disable=not progress or not args)
    try:
        if num_processes <= 1 or len(args) <= 1:
            for a in args:
                yield _preprocess_case(*a)
                bar.update()
            return
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(args))) as pool:
            for case_id in pool.imap_unordered(_star_preprocess_case, args):
                yield case_id
                bar.update()
    finally:
        bar.close()


def _star_preprocess_case(a: tuple) -> str:
    return _preprocess_case(*a)


def unlabeled_status(
    raw_dataset_dir: str | None,
    preprocessed_dataset_dir: str,
    configuration: str,
    plans_identifier: str = "nnUNetPlans",
) -> tuple[list[str], bool]:
    """(preprocessed case ids, whether preprocessing is needed) without writing anything.

    Preprocessing is needed when imagesUnlabeled has new, changed or removed cases, or the plans changed.
    Without the raw dataset folder (a cluster node with only nnUNet_preprocessed) the existing preprocessed
    cases are used as they are, unless they were made with other plans (then :class:`UnlabeledDataError`).
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(os.path.join(preprocessed_dataset_dir, f"{plans_identifier}.json")) as f:
        plans = json.load(f)
    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    manifest = read_manifest(unlabeled_preprocessed_folder(preprocessed_dataset_dir, data_identifier))
    done = sorted(manifest["cases"]) if manifest else []
    if raw_dataset_dir is None or not os.path.isdir(raw_dataset_dir):
        if manifest is not None and manifest.get("plans_signature") != plans_signature(plans, configuration):
            raise UnlabeledDataError(
                f"the preprocessed unlabeled cases of {preprocessed_dataset_dir} were made with other plans, and "
                f"the raw images are not available to redo them (nnUNet_raw/<dataset>/{UNLABELED_FOLDER} not "
                f"found). Make them available here, or run `nnunet-semisup preprocess-unlabeled` where they are."
            )
        return done, False
    with open(os.path.join(preprocessed_dataset_dir, "dataset.json")) as f:
        dataset_json = json.load(f)
    cases = find_unlabeled_cases(raw_dataset_dir, dataset_json)
    if manifest is None or manifest.get("plans_signature") != plans_signature(plans, configuration):
        return done, bool(cases) or bool(done)
    wanted = {case_id: [_file_signature(p) for p in files] for case_id, files in cases.items()}
    return done, wanted != manifest["cases"]
