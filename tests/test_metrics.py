"""Tests for nnunet_semisup.evaluation: binary metrics, surface distances and folder evaluation."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semisup.evaluation import (
    binary_metrics,
    evaluate_folders,
    format_table,
    save_summary,
    surface_distances,
)


def ball(shape: tuple[int, ...], spacing: tuple[float, ...], center_mm: tuple[float, ...], radius_mm: float):
    """Boolean mask of the voxels whose centres lie within ``radius_mm`` of ``center_mm``."""
    grids = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center_mm)) <= radius_mm**2


def brute_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation without cropping or distance transforms: explicit face-neighbour test
    for the surface, all-pairs distances between surface voxel centres."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        inner = tuple(slice(1, -1) for _ in range(mask.ndim))
        has_bg_neighbour = np.zeros_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                has_bg_neighbour |= ~np.roll(padded, step, axis=axis)[inner]
        return np.argwhere(mask & has_bg_neighbour) * np.asarray(spacing)

    p, r = surface_points(pred), surface_points(ref)
    d = np.linalg.norm(p[:, None, :] - r[None, :, :], axis=-1)
    return d.min(axis=1), d.min(axis=0)


# --- binary_metrics / surface_distances ---------------------------------------------------------------


def test_identical_masks():
    mask = ball((20, 20, 20), (1, 1, 1), (10, 9, 8), 5)
    m = binary_metrics(mask, mask.copy(), (1.0, 1.0, 1.0))
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert m["hd95"] == 0.0 and m["asd"] == 0.0
    assert m["n_pred"] == m["n_ref"] == int(mask.sum())


def test_disjoint_cubes_exact_distances_use_spacing_per_axis():
    pred = np.zeros((12, 6, 6), dtype=bool)
    ref = np.zeros_like(pred)
    pred[2:4, 1:3, 1:3] = True
    ref[7:9, 1:3, 1:3] = True
    # Every voxel of a 2x2x2 cube is a surface voxel; along axis 0 half of each cube is 4 voxels from the
    # other cube and half 5 voxels. Axis 0 has spacing 2 mm, so the pooled distances are 8x 8 mm, 8x 10 mm.
    m = binary_metrics(pred, ref, (2.0, 1.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["asd"] == pytest.approx(9.0)
    assert m["hd95"] == pytest.approx(10.0)
    pred_to_ref, ref_to_pred = surface_distances(pred, ref, (2.0, 1.0, 1.0))
    assert sorted(pred_to_ref) == [8.0] * 4 + [10.0] * 4
    assert sorted(ref_to_pred) == [8.0] * 4 + [10.0] * 4


def test_hand_computed_1d_example():
    pred = np.array([0, 1, 1, 1, 0, 0])
    ref = np.array([0, 0, 1, 1, 1, 0])
    # |P∩R| = 2, |P| = |R| = 3, |P∪R| = 4; surfaces are the end voxels {1, 3} and {2, 4}, each 1 voxel
    # (0.5 mm) from the nearest end voxel of the other mask.
    m = binary_metrics(pred, ref, (0.5,))
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["hd95"] == pytest.approx(0.5)
    assert m["asd"] == pytest.approx(0.5)
    assert (m["n_pred"], m["n_ref"]) == (3, 3)


def test_label_values_count_as_foreground():
    ref = np.array([[0, 3, 3], [0, 3, 0]])
    assert binary_metrics(ref, ref > 0, (1.0, 1.0))["dice"] == 1.0


def test_surface_uses_face_connectivity_and_image_border_is_background():
    yy, xx = np.mgrid[-3:4, -3:4]
    diamond = np.abs(yy) + np.abs(xx) <= 2  # 13 voxels; 5 of them have all 4 face neighbours inside
    assert len(surface_distances(diamond, diamond, (1.0, 1.0))[0]) == 8
    full = np.ones((3, 3), dtype=bool)  # only the centre is interior: outside the image is background
    assert len(surface_distances(full, full, (1.0, 1.0))[0]) == 8
    assert binary_metrics(full, full, (1.0, 1.0))["hd95"] == 0.0


def test_surface_distances_match_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    spacing = (1.5, 0.7, 1.1)
    for _ in range(3):
        pred = np.zeros((16, 18, 14), dtype=bool)
        ref = np.zeros_like(pred)
        # Objects away from the origin and near one image border, so cropping and borders both matter.
        pred[3:9, 8:18, 5:12] = rng.random((6, 10, 7)) < 0.6
        ref[5:12, 10:17, 2:9] = rng.random((7, 7, 7)) < 0.6
        got = surface_distances(pred, ref, spacing)
        expected = brute_surface_distances(pred, ref, spacing)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(np.sort(g), np.sort(e))
        pooled = np.concatenate(expected)
        m = binary_metrics(pred, ref, spacing)
        assert m["hd95"] == pytest.approx(np.percentile(pooled, 95))
        assert m["asd"] == pytest.approx(pooled.mean())


def test_concentric_spheres_isotropic():
    center = (16.0, 16.0, 16.0)
    outer = ball((33, 33, 33), (1, 1, 1), center, 10)
    inner = ball((33, 33, 33), (1, 1, 1), center, 6)
    m = binary_metrics(inner, outer, (1.0, 1.0, 1.0))
    assert m["hd95"] == pytest.approx(4.0, abs=1.0)
    assert m["asd"] == pytest.approx(4.0, abs=1.0)
    assert m["dice"] == pytest.approx(2 * 6**3 / (6**3 + 10**3), abs=0.03)
    assert binary_metrics(outer, inner, (1.0, 1.0, 1.0)) == {
        **m,
        "n_pred": m["n_ref"],
        "n_ref": m["n_pred"],
    }


def test_concentric_spheres_anisotropic_grid():
    # Same physical spheres sampled at 2 mm along axis 0: ellipsoids in voxel space, still 4 mm apart.
    spacing = (2.0, 1.0, 1.0)
    shape = (17, 33, 33)
    center = (16.0, 16.0, 16.0)
    outer = ball(shape, spacing, center, 10)
    inner = ball(shape, spacing, center, 6)
    m = binary_metrics(inner, outer, spacing)
    assert m["hd95"] == pytest.approx(4.0, abs=1.0)
    assert m["asd"] == pytest.approx(4.0, abs=1.0)
    # Ignoring the spacing would measure the gap along axis 0 in voxels and shrink the distances.
    assert binary_metrics(inner, outer, (1.0, 1.0, 1.0))["asd"] < m["asd"] - 0.5


def test_shifted_sphere_hd95_is_about_the_shift():
    a = ball((40, 40, 40), (1, 1, 1), (20, 20, 20), 8)
    b = ball((40, 40, 40), (1, 1, 1), (20, 20, 17), 8)
    m = binary_metrics(a, b, (1.0, 1.0, 1.0))
    # A point at angle θ from the shift axis is ≈ 3|cos θ| from the other sphere, with |cos θ| uniform on
    # the sphere: HD95 ≈ 0.95 * 3, ASD ≈ 3 / 2.
    assert m["hd95"] == pytest.approx(3.0, abs=0.5)
    assert m["asd"] == pytest.approx(1.5, abs=0.3)


def test_both_empty_convention():
    empty = np.zeros((4, 5, 6), dtype=bool)
    assert binary_metrics(empty, empty, (2.0, 1.0, 0.5)) == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "asd": 0.0,
        "n_pred": 0,
        "n_ref": 0,
    }


def test_one_empty_convention_is_image_diagonal():
    empty = np.zeros((4, 5, 6), dtype=bool)
    full = empty.copy()
    full[1, 2, 3] = True
    diagonal = math.sqrt((4 * 2.0) ** 2 + (5 * 1.0) ** 2 + (6 * 0.5) ** 2)
    for pred, ref in ((empty, full), (full, empty)):
        m = binary_metrics(pred, ref, (2.0, 1.0, 0.5))
        assert m["dice"] == 0.0 and m["iou"] == 0.0
        assert m["hd95"] == pytest.approx(diagonal)
        assert m["asd"] == pytest.approx(diagonal)
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(empty, full, (2.0, 1.0, 0.5))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        binary_metrics(np.zeros((4, 5)), np.zeros((4, 6)), (1.0, 1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        surface_distances(np.ones((3, 3)), np.ones((3, 3, 1)), (1.0, 1.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 1.0, 0.0), (1.0, -1.0, 1.0), (1.0, np.nan, 1.0), None])
def test_bad_spacing_raises(spacing):
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(mask, mask, spacing)


# --- evaluate_folders / format_table / save_summary -----------------------------------------------------

# Arrays are (z, y, x); SimpleITK spacing is (x, y, z), so the array-axis spacing is (2, 1, 1).
SITK_SPACING = (1.0, 1.0, 2.0)
SHAPE = (6, 8, 10)
DIAGONAL = math.sqrt((6 * 2.0) ** 2 + 8**2 + 10**2)


def write(path, array: np.ndarray, spacing=SITK_SPACING) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path):
    """Two cases, labels 1 and 2.

    caseA: prediction == reference.
    caseB: label 1 is a 2x2x2 block shifted by one voxel (2 mm) along z, label 2 is missed entirely.
    """
    ref_a = np.zeros(SHAPE)
    ref_a[1:3, 1:4, 1:4] = 1
    ref_a[3:5, 4:7, 5:9] = 2
    ref_b = np.zeros(SHAPE)
    ref_b[1:3, 2:4, 2:4] = 1
    ref_b[3:5, 5:7, 6:9] = 2
    pred_b = np.zeros(SHAPE)
    pred_b[2:4, 2:4, 2:4] = 1
    write(tmp_path / "ref" / "caseA.nii.gz", ref_a)
    write(tmp_path / "pred" / "caseA.nii.gz", ref_a)
    write(tmp_path / "ref" / "caseB.nii.gz", ref_b)
    write(tmp_path / "pred" / "caseB.nii.gz", pred_b)
    return str(tmp_path / "pred"), str(tmp_path / "ref")


def test_evaluate_folders_values(folders):
    summary = evaluate_folders(*folders)
    json.dumps(summary, allow_nan=False)
    assert summary["labels"] == {"label_1": 1, "label_2": 2}
    assert set(summary["metric_names"]) >= {"dice", "iou", "hd95", "asd"}
    assert [c["case"] for c in summary["per_case"]] == ["caseA", "caseB"]

    a, b = (c["metrics"] for c in summary["per_case"])
    for label in ("label_1", "label_2"):
        assert a[label]["dice"] == 1.0 and a[label]["hd95"] == 0.0
    # caseB label 1: overlap 4 of 8+8 voxels; the half outside the other block is 2 mm (one z voxel) away,
    # the overlapping half 0 mm, in both directions.
    assert b["label_1"]["dice"] == pytest.approx(0.5)
    assert b["label_1"]["iou"] == pytest.approx(1 / 3)
    assert b["label_1"]["asd"] == pytest.approx(1.0)
    assert b["label_1"]["hd95"] == pytest.approx(2.0)
    assert b["label_2"] == {
        "dice": 0.0,
        "iou": 0.0,
        "hd95": DIAGONAL,
        "asd": DIAGONAL,
        "n_pred": 0,
        "n_ref": 12,
    }

    assert summary["mean"]["label_1"]["dice"] == pytest.approx(0.75)
    assert summary["std"]["label_1"]["dice"] == pytest.approx(0.25)
    assert summary["mean"]["label_2"]["hd95"] == pytest.approx(DIAGONAL / 2)
    assert summary["std"]["label_2"]["dice"] == pytest.approx(0.5)
    assert summary["foreground_mean"]["dice"] == pytest.approx((0.75 + 0.5) / 2)
    assert summary["foreground_mean"]["asd"] == pytest.approx((0.5 + DIAGONAL / 2) / 2)


def test_evaluate_folders_named_labels_and_table(folders):
    summary = evaluate_folders(*folders, labels={"liver": 1, "tumour": 2})
    assert list(summary["mean"]) == ["liver", "tumour"]
    assert summary["mean"]["liver"]["dice"] == pytest.approx(0.75)
    table = format_table(summary)
    assert "liver" in table and "tumour" in table and "foreground mean" in table
    assert "0.750 ± 0.250" in table
    assert f"{DIAGONAL / 2:.2f} ± {DIAGONAL / 2:.2f}" in table
    with pytest.raises(ValueError, match="unknown metric"):
        format_table(summary, metrics=("dice", "volume"))


def test_evaluate_folders_labels_found_in_other_cases(tmp_path):
    # Label 2 appears in caseB's reference only: caseA's prediction of it is a false positive (one empty),
    # while label 3 exists in no reference and is not evaluated.
    ref_a = np.zeros(SHAPE)
    ref_a[1:3, 1:3, 1:3] = 1
    pred_a = ref_a.copy()
    pred_a[4, 4, 4] = 2
    pred_a[5, 7, 9] = 3
    ref_b = np.zeros(SHAPE)
    ref_b[1:3, 1:3, 1:3] = 2
    write(tmp_path / "ref" / "caseA.nii.gz", ref_a)
    write(tmp_path / "pred" / "caseA.nii.gz", pred_a)
    write(tmp_path / "ref" / "caseB.nii.gz", ref_b)
    write(tmp_path / "pred" / "caseB.nii.gz", ref_b)
    summary = evaluate_folders(str(tmp_path / "pred"), str(tmp_path / "ref"))
    assert summary["labels"] == {"label_1": 1, "label_2": 2}
    a, b = (c["metrics"] for c in summary["per_case"])
    assert a["label_2"]["dice"] == 0.0 and a["label_2"]["hd95"] == pytest.approx(DIAGONAL)
    assert b["label_1"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0, "n_pred": 0, "n_ref": 0}


def test_evaluate_folders_parallel_matches_serial(folders):
    assert evaluate_folders(*folders, num_processes=2) == evaluate_folders(*folders)


def test_missing_prediction_names_case(folders):
    pred_dir, ref_dir = folders
    os.remove(os.path.join(pred_dir, "caseB.nii.gz"))
    with pytest.raises(FileNotFoundError, match="caseB") as info:
        evaluate_folders(pred_dir, ref_dir)
    assert "caseA" not in str(info.value)


def test_extra_prediction_warns(folders):
    pred_dir, ref_dir = folders
    write(os.path.join(pred_dir, "caseC.nii.gz"), np.zeros(SHAPE))
    with pytest.warns(UserWarning, match="caseC"):
        summary = evaluate_folders(pred_dir, ref_dir)
    assert [c["case"] for c in summary["per_case"]] == ["caseA", "caseB"]


def test_spacing_mismatch_names_case(folders):
    pred_dir, ref_dir = folders
    write(os.path.join(pred_dir, "caseB.nii.gz"), np.zeros(SHAPE), spacing=(1.0, 1.0, 2.5))
    with pytest.raises(ValueError, match=r"caseB.*spacing"):
        evaluate_folders(pred_dir, ref_dir)


def test_spacing_within_tolerance_is_accepted(folders):
    pred_dir, ref_dir = folders
    write(os.path.join(pred_dir, "caseA.nii.gz"), np.zeros(SHAPE), spacing=(1.0, 1.0, 2.0001))
    evaluate_folders(pred_dir, ref_dir)


def test_shape_mismatch_names_case(folders):
    pred_dir, ref_dir = folders
    write(os.path.join(pred_dir, "caseA.nii.gz"), np.zeros((6, 8, 11)))
    with pytest.raises(ValueError, match=r"caseA.*shape"):
        evaluate_folders(pred_dir, ref_dir)


def test_save_summary_roundtrip(folders, tmp_path):
    summary = evaluate_folders(*folders)
    path = tmp_path / "out" / "summary.json"
    path.parent.mkdir()
    save_summary(summary, str(path))
    assert json.loads(path.read_text()) == summary
    assert os.listdir(path.parent) == ["summary.json"]


def test_evaluate_cli_takes_the_file_ending_of_the_labels_json(tmp_path):
    label = np.zeros(SHAPE)
    label[1:3, 1:4, 1:4] = 1
    for folder in ("ref", "pred"):
        write(tmp_path / folder / "caseA.nrrd", label)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "file_ending": ".nrrd"}))
    cli = str(Path(sys.executable).parent / "nnunet-semisup")
    base = [cli, "evaluate", "-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred")]
    ok = subprocess.run([*base, "--labels-json", str(dataset_json)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "organ" in ok.stdout and json.loads((tmp_path / "pred" / "semisup_summary.json").read_text())
    # without the dataset.json nothing says .nrrd: the error names the fix, no traceback
    bad = subprocess.run(base, capture_output=True, text=True)
    assert bad.returncode == 2 and "--file-ending" in bad.stderr and "Traceback" not in bad.stderr
