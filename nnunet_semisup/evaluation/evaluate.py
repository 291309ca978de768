"""Evaluate a folder of predicted segmentations against a folder of reference segmentations.

Backend of ``nnunet-semisup evaluate``. Files are paired by name; every non-zero label value is a
foreground class evaluated one-vs-rest with :func:`~nnunet_semisup.evaluation.metrics.binary_metrics`
(see that module for the metric, surface and empty-mask definitions).
"""

import contextlib
import json
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_semisup.evaluation.metrics import binary_metrics

__all__ = ["METRIC_NAMES", "evaluate_folders", "format_table", "save_summary"]

METRIC_NAMES = ("dice", "iou", "hd95", "asd", "n_pred", "n_ref")

_SPACING_RTOL = 1e-3
_HEADERS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 [mm]", "asd": "ASD [mm]"}
_DECIMALS = {"dice": 3, "iou": 3, "hd95": 2, "asd": 2}


def _list_cases(folder: str, file_ending: str) -> list[str]:
    """Sorted case ids (file names without ``file_ending``) of the files in ``folder``."""
    return sorted(
        name[: -len(file_ending)]
        for name in os.listdir(folder)
        if name.endswith(file_ending)
        and len(name) > len(file_ending)
        and os.path.isfile(os.path.join(folder, name))
    )


def _check_labels(labels: Mapping[str, int]) -> dict[str, int]:
    """Validate a ``name -> value`` mapping of foreground classes; return it with plain-int values."""
    if not labels:
        raise ValueError("labels is empty: give at least one foreground class as name -> value")
    checked = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value == 0:
            raise ValueError(f"label {name!r} must map to a non-zero integer value, got {value!r}")
        checked[str(name)] = int(value)
    if len(set(checked.values())) != len(checked):
        raise ValueError(f"labels map several names to the same value: {checked}")
    return checked


def _read(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Image array (SimpleITK axis order, e.g. z, y, x) and its spacing in the same axis order."""
    image = sitk.ReadImage(path)
    # GetSpacing() is in x, y, z order, the array axes are reversed.
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def _foreground_values(array: np.ndarray, what: str) -> set[int]:
    """Non-zero values of a label image; ValueError if any is not an integer."""
    values = np.unique(array)
    values = values[values != 0]
    if not np.array_equal(values, np.round(values)):
        raise ValueError(f"{what} holds non-integer values, not a label image: {values[:10].tolist()}")
    return {int(v) for v in values}


# what to do about a prediction whose geometry is not the reference's
_GEOMETRY_FIX = (
    "Predictions are compared voxel by voxel with the reference of the same file name: predict the images that "
    "belong to these references (nnUNetv2_predict writes each prediction in its input image's shape and "
    "spacing), and check that --pred and --ref hold the same cases, not resampled copies."
)


def _evaluate_case(
    case: str, pred_path: str, ref_path: str, label_values: Sequence[int] | None
) -> tuple[str, dict[int, dict[str, float]], set[int]]:
    """Metrics of one case for each label value (all non-zero values of pred and ref when ``None``).

    Returns the case id, ``{value: metrics}`` and the non-zero values of the reference.
    """
    pred, pred_spacing = _read(pred_path)
    ref, ref_spacing = _read(ref_path)
    if pred.shape != ref.shape:
        raise ValueError(
            f"case {case!r}: prediction shape {pred.shape} ({pred_path}) differs from reference shape "
            f"{ref.shape} ({ref_path}). {_GEOMETRY_FIX}"
        )
    if not np.allclose(pred_spacing, ref_spacing, rtol=_SPACING_RTOL, atol=0):
        raise ValueError(
            f"case {case!r}: prediction spacing {pred_spacing} ({pred_path}) differs from reference spacing "
            f"{ref_spacing} ({ref_path}). {_GEOMETRY_FIX}"
        )
    ref_values = _foreground_values(ref, f"case {case!r} reference {ref_path}")
    if label_values is None:
        label_values = sorted(ref_values | _foreground_values(pred, f"case {case!r} prediction {pred_path}"))
    metrics = {v: binary_metrics(pred == v, ref == v, ref_spacing) for v in label_values}
    return case, metrics, ref_values


def evaluate_folders(
    pred_dir: str,
    ref_dir: str,
    file_ending: str = ".nii.gz",
    labels: Mapping[str, int] | None = None,
    num_processes: int = 1,
) -> dict:
    """Per-case, per-class metrics of the predictions in ``pred_dir`` against the references in ``ref_dir``.

    Args:
        pred_dir: folder of predicted label images ``<case><file_ending>``.
        ref_dir: folder of reference label images; every one needs a prediction of the same name
            (extra predictions are ignored with a warning). Each pair must have the same array shape
            and spacing (relative tolerance 1e-3).
        file_ending: file name suffix of the images, anything SimpleITK reads.
        labels: foreground classes to evaluate as ``name -> integer label value`` (0 is background).
            ``None`` evaluates every non-zero value found in the reference files, named ``label_<v>``.
        num_processes: cases evaluated in parallel (spawned worker processes when > 1).

    Returns:
        A JSON-serializable dict::

            {"metric_names": [...], "labels": {name: value},
             "per_case": [{"case": id, "metrics": {name: {metric: value}}}],
             "mean": {name: {metric: mean over cases}}, "std": {name: {metric: std over cases}},
             "foreground_mean": {metric: mean over classes of the per-class means}}

        ``std`` is the population standard deviation (``ddof=0``).

    Raises:
        FileNotFoundError: no reference files, or a reference case without a prediction (named).
        ValueError: shape or spacing mismatch within a case (named), non-integer label images, bad
            ``labels``, or no foreground value in any reference when ``labels`` is ``None``.
    """
    ref_cases = _list_cases(ref_dir, file_ending)
    if not ref_cases:
        raise FileNotFoundError(
            f"no reference files ending in {file_ending!r} in {ref_dir}; if the dataset uses another format, "
            "pass its file ending (--file-ending .nrrd, or --labels-json with the dataset.json)"
        )
    pred_cases = set(_list_cases(pred_dir, file_ending))
    missing = [case for case in ref_cases if case not in pred_cases]
    if missing:
        raise FileNotFoundError(
            f"no prediction in {pred_dir} for {len(missing)} reference case(s) of {ref_dir}: {missing}"
        )
    extra = sorted(pred_cases - set(ref_cases))
    if extra:
        warnings.warn(
            f"ignoring {len(extra)} prediction(s) in {pred_dir} without a reference in {ref_dir}: {extra}",
            stacklevel=2,
        )
    labels = None if labels is None else _check_labels(labels)
    label_values = None if labels is None else list(labels.values())

    jobs = [
        (case, *(os.path.join(folder, case + file_ending) for folder in (pred_dir, ref_dir)), label_values)
        for case in ref_cases
    ]
    if num_processes > 1 and len(jobs) > 1:
        # spawn: fork is unsafe once threaded libraries (SimpleITK, torch) have started threads.
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = pool.starmap(_evaluate_case, jobs)
    else:
        results = [_evaluate_case(*job) for job in jobs]

    if labels is None:
        values = sorted(set().union(*(ref_values for _, _, ref_values in results)))
        if not values:
            raise ValueError(f"no foreground label in the reference files of {ref_dir}; pass labels")
        labels = {f"label_{v}": v for v in values}

    # With labels=None a case was evaluated on its own values only; a global label missing from both its
    # prediction and reference is an (exact) both-empty result.
    both_empty = binary_metrics(np.zeros(1, dtype=bool), np.zeros(1, dtype=bool), (1.0,))
    per_case = [
        {"case": case, "metrics": {name: dict(metrics.get(v, both_empty)) for name, v in labels.items()}}
        for case, metrics, _ in results
    ]

    def over_cases(reduce, name: str, metric: str) -> float:
        return float(reduce([entry["metrics"][name][metric] for entry in per_case]))

    mean = {name: {m: over_cases(np.mean, name, m) for m in METRIC_NAMES} for name in labels}
    std = {name: {m: over_cases(np.std, name, m) for m in METRIC_NAMES} for name in labels}
    return {
        "metric_names": list(METRIC_NAMES),
        "labels": dict(labels),
        "per_case": per_case,
        "mean": mean,
        "std": std,
        "foreground_mean": {m: float(np.mean([mean[name][m] for name in labels])) for m in METRIC_NAMES},
    }


def _cell(metric: str, value: float) -> str:
    return f"{value:.{_DECIMALS.get(metric, 1)}f}"


def format_table(summary: dict, metrics: Sequence[str] = ("dice", "iou", "hd95", "asd")) -> str:
    """Fixed-width text table of a :func:`evaluate_folders` summary.

    One row per class with ``mean ± std`` over cases, then a ``foreground mean`` row (mean over classes
    of the per-class means). Dice/IoU have 3 decimals, distances (mm) 2.
    """
    unknown = [m for m in metrics if m not in summary["metric_names"]]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; the summary has {summary['metric_names']}")
    header = ["class", *(_HEADERS.get(m, m) for m in metrics)]
    mean, std = summary["mean"], summary["std"]
    rows = [
        [name, *(f"{_cell(m, mean[name][m])} ± {_cell(m, std[name][m])}" for m in metrics)]
        for name in summary["labels"]
    ]
    footer = ["foreground mean", *(_cell(m, summary["foreground_mean"][m]) for m in metrics)]
    widths = [max(len(row[i]) for row in [header, *rows, footer]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        return "  ".join(cells)

    rule = "-" * len(line(header))
    title = f"{len(summary['per_case'])} cases, mean ± std over cases"
    return "\n".join([title, line(header), rule, *map(line, rows), rule, line(footer)])


def save_summary(summary: dict, path: str) -> None:
    """Write ``summary`` as indented JSON to ``path`` atomically (temp file in the same folder + rename)."""
    path = os.fspath(path)
    # Same folder so that os.replace is an atomic rename on one file system; plain open() respects umask.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
