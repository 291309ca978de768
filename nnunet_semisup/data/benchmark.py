"""Build semi-supervised benchmark datasets in nnU-Net v2 raw format.

A benchmark dataset is an ordinary nnU-Net v2 raw dataset (``imagesTr``/``labelsTr`` hold the N labeled
cases, ``imagesTs``/``labelsTs`` the K test cases) plus ``imagesUnlabeled/`` with the M unlabeled cases
(nnU-Net naming, labels withheld). nnU-Net itself only sees the labeled cases; the semi-supervised
trainers read ``imagesUnlabeled/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["BenchmarkSplit", "find_duplicate_images", "find_source_cases", "make_benchmark", "split_cases"]

MANIFEST_NAME = "semisup_manifest.json"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# dataset.json keys (besides labels/channel_names/file_ending) that change how nnU-Net reads a dataset
# and therefore have to travel with the files when the source is an nnU-Net raw dataset.
_PASSTHROUGH_KEYS = ("regions_class_order", "overwrite_image_reader_writer")


@dataclass
class BenchmarkSplit:
    """Case ids of one benchmark split; each list is sorted and the three are disjoint."""

    labeled: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)


def _shuffle_key(case_id: str, seed: int) -> str:
    # A hash instead of an RNG: the order never changes with numpy/Python versions, and a case's
    # position does not depend on which other cases are present.
    return hashlib.sha256(f"nnunet-semisup:{seed}:{case_id}".encode()).hexdigest()


def split_cases(
    case_ids: Sequence[str],
    n_labeled: int,
    n_test: int,
    n_unlabeled: int | None = None,
    seed: int = 0,
) -> BenchmarkSplit:
    """Split case ids into labeled, unlabeled and test cases, deterministically per seed.

    The ids are sorted and put into one fixed pseudo-random order per seed. The test set is the last
    ``n_test`` cases of that order, so it depends only on (ids, n_test, seed) and stays the same for
    every ``n_labeled`` of a learning curve. The labeled set is the first ``n_labeled`` cases, so
    labeled sets are nested across ``n_labeled`` (and do not depend on ``n_test``); the unlabeled set
    is the next ``n_unlabeled`` cases (default: all cases that are neither labeled nor test).

    Args:
        case_ids: unique case ids (any order).
        n_labeled: number of labeled cases, at least 1.
        n_test: number of test cases, at least 0.
        n_unlabeled: number of unlabeled cases; None takes all remaining ones.
        seed: selects the order.

    Returns:
        The split, each list sorted.

    Raises:
        ValueError: on duplicate ids, ``n_labeled < 1``, negative counts, or counts that exceed the
            available cases.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        duplicates = sorted(c for c, n in Counter(ids).items() if n > 1)
        raise ValueError(f"case ids must be unique, duplicates: {duplicates}")
    if n_labeled < 1:
        raise ValueError(f"n_labeled must be at least 1, got {n_labeled}")
    if n_test < 0:
        raise ValueError(f"n_test must be at least 0, got {n_test}")
    if n_unlabeled is not None and n_unlabeled < 0:
        raise ValueError(f"n_unlabeled must be at least 0 (or None for all the rest), got {n_unlabeled}")
    if n_labeled + n_test > len(ids):
        raise ValueError(
            f"n_labeled ({n_labeled}) + n_test ({n_test}) = {n_labeled + n_test} cases requested, "
            f"but only {len(ids)} are available"
        )
    n_rest = len(ids) - n_labeled - n_test
    if n_unlabeled is None:
        n_unlabeled = n_rest
    elif n_unlabeled > n_rest:
        raise ValueError(
            f"n_unlabeled ({n_unlabeled}) exceeds the {n_rest} cases available after {n_labeled} labeled "
            f"and {n_test} test cases (of {len(ids)} in total)"
        )
    order = sorted(ids, key=lambda c: _shuffle_key(c, seed))
    pool, test = order[: len(order) - n_test], order[len(order) - n_test :]
    return BenchmarkSplit(
        labeled=sorted(pool[:n_labeled]),
        unlabeled=sorted(pool[n_labeled : n_labeled + n_unlabeled]),
        test=sorted(test),
    )


def _list_files(folder: str, file_ending: str) -> dict[str, str]:
    """Stem -> path of the visible files in ``folder`` ending in ``file_ending``; warns about others."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder}")
    found: dict[str, str] = {}
    ignored = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        # Hidden files are macOS resource forks (._x.nii.gz) and the like, never data.
        if entry.startswith(".") or not os.path.isfile(path):
            continue
        if entry.endswith(file_ending) and len(entry) > len(file_ending):
            found[entry[: -len(file_ending)]] = path
        else:
            ignored.append(entry)
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        warnings.warn(
            f"ignoring {len(ignored)} file(s) in {folder} not ending in {file_ending!r}: {shown}",
            stacklevel=3,
        )
    return found


def find_source_cases(
    images_dir: str, labels_dir: str | None, file_ending: str = ".nii.gz"
) -> dict[str, dict]:
    """Find the cases of an image folder (and its label folder), in either naming scheme.

    Two naming schemes are recognized:

    - nnU-Net: ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... (one file per channel), label
      ``CASE<ending>``. Used when every image name ends in a 4-digit channel suffix, unless every image
      also has a label of exactly its own name (then the suffix is part of a Decathlon case id).
    - Decathlon: ``CASE<ending>`` (single channel), label ``CASE<ending>``.

    Hidden files (e.g. macOS ``._CASE.nii.gz``) are skipped silently; files with another ending are
    skipped with a warning.

    Args:
        images_dir: folder with the images.
        labels_dir: folder with the label maps, or None when there are no labels.
        file_ending: file ending of images and labels.

    Returns:
        Case id -> ``{"images": [path per channel, in channel order], "label": path or None}``, sorted
        by case id.

    Raises:
        ValueError: no images, inconsistent or missing channels, or a case without label when
            ``labels_dir`` is given.
    """
    images = _list_files(images_dir, file_ending)
    if not images:
        raise ValueError(f"no images ending in {file_ending!r} found in {images_dir}")
    labels = _list_files(labels_dir, file_ending) if labels_dir is not None else {}

    matches = {stem: _CHANNEL_RE.match(stem) for stem in images}
    nnunet_naming = all(matches.values()) and not (labels and all(stem in labels for stem in images))

    channels: dict[str, dict[int, str]] = {}
    for stem, path in images.items():
        if nnunet_naming:
            m = matches[stem]
            channels.setdefault(m["case"], {})[int(m["channel"])] = path
        else:
            channels[stem] = {0: path}

    n_channels = max(len(c) for c in channels.values())
    cases: dict[str, dict] = {}
    for case_id in sorted(channels):
        found = channels[case_id]
        if sorted(found) != list(range(n_channels)):
            raise ValueError(
                f"case {case_id!r} in {images_dir} has channels {sorted(found)}, expected "
                f"{list(range(n_channels))} (files {case_id}_0000{file_ending} ...)"
            )
        label = None
        if labels_dir is not None:
            if case_id not in labels:
                raise ValueError(
                    f"case {case_id!r} has no label: {os.path.join(labels_dir, case_id + file_ending)} "
                    "does not exist"
                )
            label = labels[case_id]
        cases[case_id] = {"images": [found[c] for c in range(n_channels)], "label": label}

    orphans = sorted(set(labels) - set(cases))
    if orphans:
        warnings.warn(
            f"ignoring {len(orphans)} label(s) in {labels_dir} without image, e.g. {orphans[0]}{file_ending}",
            stacklevel=2,
        )
    return cases


def _check_split(split: BenchmarkSplit, cases: dict, images_dir: str) -> None:
    """ValueError unless the three lists of ``split`` are disjoint, known cases, with at least one labeled."""
    parts = {"labeled": split.labeled, "unlabeled": split.unlabeled, "test": split.test}
    if not split.labeled:
        raise ValueError("an explicit split needs at least one labeled case")
    seen: dict[str, str] = {}
    for part, ids in parts.items():
        for case_id in ids:
            if case_id not in cases:
                raise ValueError(f"case {case_id!r} of the {part} split is not in {images_dir}")
            if case_id in seen:
                raise ValueError(f"case {case_id!r} is in both the {seen[case_id]} and the {part} split")
            seen[case_id] = part


def _label_values(path: str) -> set[int]:
    """The values present in one label file; ValueError naming the file for non-integer values."""
    import SimpleITK as sitk

    uniq = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(path)))
    if not np.all(np.equal(np.mod(uniq, 1), 0)):
        raise ValueError(
            f"label file {path} has non-integer values; label maps must hold integers 0, 1, 2, ..."
        )
    return {int(v) for v in uniq}


def _infer_labels(label_paths: Sequence[str]) -> dict[str, int]:
    """``{"background": 0, "label_<v>": v, ...}`` from the values present in the label files."""
    values: set[int] = {0}
    for path in label_paths:
        values |= _label_values(path)
    ordered = sorted(values)
    if ordered != list(range(len(ordered))):
        raise ValueError(
            f"label values {ordered} are not consecutive (0, 1, 2, ...), which nnU-Net requires; "
            "relabel the source or pass label_names"
        )
    return {"background": 0, **{f"label_{v}": v for v in ordered[1:]}}


def _declared_values(label_names: dict) -> set[int]:
    """Every label value a dataset.json ``labels`` dict declares (region entries are lists of values)."""
    values: set[int] = set()
    for value in label_names.values():
        values |= {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}
    return values


def _check_label_values(label_paths: Sequence[str], label_names: dict) -> None:
    """ValueError naming the first label file that holds a value ``label_names`` does not declare.

    nnU-Net trusts dataset.json: an undeclared value (e.g. 3 when labels 0, 1, 2 are declared because the
    source skips 2) only fails later, as an index error inside the loss of a background worker.
    """
    declared = _declared_values(label_names)
    for path in label_paths:
        extra = sorted(_label_values(path) - declared)
        if extra:
            raise ValueError(
                f"label file {path} holds value(s) {extra}, but the labels {label_names} declare only "
                f"{sorted(declared)}. nnU-Net needs consecutive values 0, 1, 2, ...: relabel the source files "
                "(e.g. map the gap away) or name every value it holds"
            )


def _image_digest(paths: Sequence[str]) -> str:
    """SHA-256 of an image's voxel content (every channel's array, shape and dtype), independent of the file
    format, compression and name, so a copy of a case saved under another name or format is recognised."""
    import SimpleITK as sitk

    digest = hashlib.sha256()
    for path in paths:
        try:
            arr = np.ascontiguousarray(sitk.GetArrayFromImage(sitk.ReadImage(path)))
        except RuntimeError as e:  # SimpleITK's error for unreadable files
            raise ValueError(f"cannot read image {path}: {str(e).strip().splitlines()[-1]}") from e
        digest.update(f"{arr.shape}{arr.dtype}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def find_duplicate_images(
    parts: dict[str, dict[str, Sequence[str]]], skip_unreadable: bool = False
) -> list[tuple[str, str, str, str]]:
    """Cases whose image content is identical across two parts of a dataset (e.g. labeled, unlabeled, test).

    Args:
        parts: part name -> case id -> image files (one per channel).
        skip_unreadable: leave out cases whose files cannot be read (for callers whose own reading reports
            them with more context) instead of raising ``ValueError`` naming the file.

    Returns:
        ``(part_a, case_a, part_b, case_b)`` for every pair of cases in different parts with identical voxel
        content (see :func:`_image_digest`), in the order of ``parts``. Duplicates inside one part are not
        reported: they do not leak information between training and test.
    """
    seen: dict[str, tuple[str, str]] = {}
    duplicates = []
    for part, cases in parts.items():
        for case_id, paths in sorted(cases.items()):
            try:
                key = _image_digest(paths)
            except ValueError:
                if skip_unreadable:
                    continue
                raise
            if key in seen and seen[key][0] != part:
                duplicates.append((*seen[key], part, case_id))
            seen.setdefault(key, (part, case_id))
    return duplicates


def _check_label_names(label_names: dict) -> None:
    if label_names.get("background") != 0:
        raise ValueError(f"label_names must map 'background' to 0, got {label_names}")


def make_benchmark(
    out_dataset_dir_parent: str,
    dataset_id: int,
    name: str,
    *,
    images_dir: str | None = None,
    labels_dir: str | None = None,
    source_dataset_dir: str | None = None,
    n_labeled: int | None = None,
    n_test: int | None = None,
    n_unlabeled: int | None = None,
    seed: int = 0,
    label_names: dict[str, int] | None = None,
    channel_names: dict[str, str] | None = None,
    file_ending: str = ".nii.gz",
    link: bool = False,
    split: BenchmarkSplit | None = None,
) -> str:
    """Build the nnU-Net v2 raw dataset ``<out_dataset_dir_parent>/Dataset<id:03d>_<name>/``.

    Layout: ``imagesTr/CASE_0000<ending>`` + ``labelsTr/CASE<ending>`` (labeled), ``imagesUnlabeled/
    CASE_0000<ending>`` (unlabeled, no labels), ``imagesTs/`` + ``labelsTs/`` (test), ``dataset.json``
    (``numTraining`` = number of labeled cases, plus the extra keys ``numUnlabeled`` and ``numTest``,
    which nnU-Net ignores) and ``semisup_manifest.json`` (source, seed, counts, the three case lists and
    new file -> source file). Case ids are kept from the source; the split is
    :func:`split_cases` ``(all source case ids, n_labeled, n_test, n_unlabeled, seed)``.

    The source is either an ``images_dir``/``labels_dir`` pair (Decathlon or nnU-Net naming, see
    :func:`find_source_cases`) or ``source_dataset_dir``, an nnU-Net raw dataset whose ``imagesTr``/
    ``labelsTr`` cases are split and whose dataset.json labels, channel_names and file_ending are
    reused. Labels: ``label_names`` if given, else the source dataset.json's, else inferred from the
    values in the source label files (``label_<v>``). Channel names: ``channel_names`` if given, else the
    source dataset.json's, else ``{"0": "MRI"}``. nnU-Net picks the intensity normalization from the
    channel name: "CT" gets CT normalization, any other name (e.g. "MRI") per-case z-score.

    Nothing is ever deleted or overwritten, and the source is never modified: the dataset is built in a
    hidden temporary sibling folder and renamed into place at the end, so a crash never leaves a half
    dataset behind.

    Args:
        out_dataset_dir_parent: the nnUNet_raw folder (created if missing).
        dataset_id: nnU-Net dataset id, 1..999.
        name: dataset name (letters, digits, ``_ . -``).
        images_dir: source image folder (with ``labels_dir``), or None when using ``source_dataset_dir``.
        labels_dir: source label folder.
        source_dataset_dir: existing nnU-Net raw dataset folder, or None.
        n_labeled, n_test, n_unlabeled, seed: see :func:`split_cases`.
        label_names: nnU-Net ``labels`` dict, e.g. ``{"background": 0, "anterior": 1, "posterior": 2}``.
        channel_names: nnU-Net ``channel_names`` dict, e.g. ``{"0": "MRI"}``.
        file_ending: file ending of the source files (ignored with ``source_dataset_dir``, whose
            dataset.json decides).
        link: symlink the source files instead of copying them.
        split: an explicit split (case ids of the source) used instead of :func:`split_cases`; then
            ``n_labeled``/``n_test``/``n_unlabeled`` are not used (``nnunet-semisup benchmark`` draws its
            own splits so that the test set and unlabeled pool stay fixed across seeds).

    Returns:
        Path of the new dataset folder.

    Raises:
        FileExistsError: a folder ``Dataset<id:03d>_*`` already exists in ``out_dataset_dir_parent``.
        ValueError: invalid arguments, counts or source data: label files holding values that the labels do
            not declare, or cases of two parts (labeled, unlabeled, test) with identical image content.
    """
    if (
        isinstance(dataset_id, bool)
        or not isinstance(dataset_id, (int, np.integer))
        or not 1 <= dataset_id <= 999
    ):
        raise ValueError(f"dataset_id must be an integer in 1..999, got {dataset_id!r}")
    dataset_id = int(dataset_id)
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must consist of letters, digits, '_', '.', '-', got {name!r}")
    if (source_dataset_dir is None) == (images_dir is None):
        raise ValueError("give either images_dir and labels_dir, or source_dataset_dir (exactly one source)")

    extra_json: dict = {}
    if source_dataset_dir is not None:
        if labels_dir is not None:
            raise ValueError("labels_dir cannot be combined with source_dataset_dir")
        source_dataset_dir = os.path.abspath(source_dataset_dir)
        with open(os.path.join(source_dataset_dir, "dataset.json")) as f:
            source_json = json.load(f)
        file_ending = source_json["file_ending"]
        if label_names is None:
            label_names = source_json["labels"]
        if channel_names is None:
            channel_names = source_json.get("channel_names")
        extra_json = {k: source_json[k] for k in _PASSTHROUGH_KEYS if k in source_json}
        images_dir = os.path.join(source_dataset_dir, "imagesTr")
        labels_dir = os.path.join(source_dataset_dir, "labelsTr")
        source_info: dict = {"source_dataset_dir": source_dataset_dir}
    else:
        if labels_dir is None:
            raise ValueError("labels_dir is required with images_dir (labeled and test cases need labels)")
        source_info = {"images_dir": os.path.abspath(images_dir), "labels_dir": os.path.abspath(labels_dir)}

    parent = os.path.abspath(out_dataset_dir_parent)
    folder_name = f"Dataset{dataset_id:03d}_{name}"

    def check_id_free() -> None:
        existing = sorted(Path(parent).glob(f"Dataset{dataset_id:03d}_*")) if os.path.isdir(parent) else []
        if existing:
            raise FileExistsError(
                f"dataset id {dataset_id} is taken by {existing[0]}; pick another --out-id or remove that "
                "folder yourself (nothing is ever overwritten)"
            )

    check_id_free()

    cases = find_source_cases(images_dir, labels_dir, file_ending)
    n_channels = len(next(iter(cases.values()))["images"])
    if channel_names is None:
        channel_names = {"0": "MRI"}
    channel_names = {str(k): v for k, v in channel_names.items()}
    if set(channel_names) != {str(c) for c in range(n_channels)}:
        raise ValueError(
            f"channel_names {channel_names} do not match the {n_channels} channel(s) found in {images_dir}"
        )
    channel_names = {str(c): channel_names[str(c)] for c in range(n_channels)}
    if split is None:
        if n_labeled is None or n_test is None:
            raise ValueError("give n_labeled and n_test (or an explicit split)")
        split = split_cases(list(cases), n_labeled, n_test, n_unlabeled, seed)
    else:
        _check_split(split, cases, images_dir)
    if label_names is None:
        label_names = _infer_labels([c["label"] for c in cases.values()])
    _check_label_names(label_names)
    _check_label_values([cases[c]["label"] for c in (*split.labeled, *split.test)], label_names)
    duplicates = find_duplicate_images(
        {part: {c: cases[c]["images"] for c in ids}
         for part, ids in (("labeled", split.labeled), ("unlabeled", split.unlabeled), ("test", split.test))}
    )  # fmt: skip
    if duplicates:
        shown = "; ".join(f"{a} case {ca!r} = {b} case {cb!r}" for a, ca, b, cb in duplicates[:5])
        raise ValueError(
            f"{len(duplicates)} case(s) have the same image content in two parts of the split ({shown}). "
            "The benchmark would train on (or pseudo-label) what it tests on: remove the duplicate files "
            f"from the source ({images_dir}) and build it again"
        )

    # (image subfolder, label subfolder or None for withheld labels, case ids)
    parts = [
        ("imagesTr", "labelsTr", split.labeled),
        ("imagesUnlabeled", None, split.unlabeled),
        ("imagesTs", "labelsTs", split.test),
    ]
    os.makedirs(parent, exist_ok=True)
    # Hidden prefix: nnU-Net looks up datasets by the "DatasetXXX" prefix and must not see this one.
    # os.mkdir rather than tempfile.mkdtemp so the final folder gets the umask's permissions, not 0o700.
    tmp = os.path.join(parent, f".tmp_{folder_name}_{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    try:
        files: dict[str, str] = {}
        for image_sub, label_sub, case_ids in parts:
            os.makedirs(os.path.join(tmp, image_sub))
            if label_sub is not None:
                os.makedirs(os.path.join(tmp, label_sub))
            for case_id in case_ids:
                targets = [
                    (f"{image_sub}/{case_id}_{c:04d}{file_ending}", src)
                    for c, src in enumerate(cases[case_id]["images"])
                ]
                if label_sub is not None:
                    targets.append((f"{label_sub}/{case_id}{file_ending}", cases[case_id]["label"]))
                for rel, src in targets:
                    src = os.path.abspath(src)
                    dst = os.path.join(tmp, rel)
                    if link:
                        os.symlink(src, dst)
                    else:
                        shutil.copy2(src, dst)
                    files[rel] = src

        dataset_json = {
            "name": name,
            "description": f"Semi-supervised benchmark built by nnunet-semisup (seed {seed})",
            "channel_names": channel_names,
            "labels": label_names,
            "numTraining": len(split.labeled),
            "file_ending": file_ending,
            **extra_json,
            "numUnlabeled": len(split.unlabeled),
            "numTest": len(split.test),
        }
        manifest = {
            "source": source_info,
            "seed": seed,
            "counts": {
                "labeled": len(split.labeled),
                "unlabeled": len(split.unlabeled),
                "test": len(split.test),
                "source_cases": len(cases),
            },
            "link": link,
            "labeled": split.labeled,
            "unlabeled": split.unlabeled,
            "test": split.test,
            "files": files,
        }
        for fname, content in (("dataset.json", dataset_json), (MANIFEST_NAME, manifest)):
            with open(os.path.join(tmp, fname), "w") as f:
                json.dump(content, f, indent=2)
                f.write("\n")

        # The id may have been taken while we were copying; os.rename would replace an empty folder.
        check_id_free()
        final = os.path.join(parent, folder_name)
        os.rename(tmp, final)
    except BaseException:
        # Only our own temporary folder is removed, never anything that existed before.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
