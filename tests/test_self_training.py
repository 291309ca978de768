"""Unit tests of the pure parts of ``nnunet-semisup self-train``: splits, the confidence filter (including the
axis order of nnU-Net's exported probabilities), the new dataset's files, and refusing taken dataset ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semisup.trainers.self_training.pipeline import (
    MANIFEST_NAME,
    SelfTrainingError,
    apply_confidence_filter,
    build_self_training_dataset,
    check_dataset_id,
    filter_pseudo_label,
    ignore_label_for,
    self_training_dataset_json,
    self_training_splits,
)


def test_splits_add_every_pseudo_case_to_training_and_keep_validation():
    source = [
        {"train": ["c", "a", "b"], "val": ["d", "e"]},
        {"train": ["d", "e", "a"], "val": ["b", "c"]},
    ]
    splits = self_training_splits(source, ["u2", "u1"])
    assert splits == [
        {"train": ["a", "b", "c", "u1", "u2"], "val": ["d", "e"]},
        {"train": ["a", "d", "e", "u1", "u2"], "val": ["b", "c"]},
    ]
    assert source[0]["train"] == ["c", "a", "b"]  # the input is not modified


def test_splits_refuse_a_case_that_is_both_labeled_and_pseudo_labeled():
    with pytest.raises(SelfTrainingError, match=r"\['d'\]"):
        self_training_splits([{"train": ["a"], "val": ["d"]}], ["d", "u"])


def test_confidence_filter_sets_low_confidence_voxels_to_ignore():
    seg = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    probabilities = np.array(
        [
            [[0.9, 0.1], [0.2, 0.30]],
            [[0.05, 0.8], [0.2, 0.35]],
            [[0.05, 0.1], [0.6, 0.35]],
        ]
    )
    filtered = apply_confidence_filter(seg, probabilities, 0.5, ignore_label=3)
    assert filtered.tolist() == [[0, 1], [2, 3]]
    assert seg.tolist() == [[0, 1], [2, 1]]
    # threshold 1 keeps only certain voxels; an ignore label beyond uint8 widens the dtype
    assert apply_confidence_filter(seg, probabilities, 1.0, 300).tolist() == [[300] * 2] * 2


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_confidence_filter_rejects_thresholds_outside_0_1(threshold):
    with pytest.raises(ValueError, match="threshold"):
        apply_confidence_filter(np.zeros((2, 2)), np.ones((2, 2, 2)), threshold, 2)


def test_confidence_filter_rejects_probabilities_in_another_axis_order():
    seg = np.zeros((2, 3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected \(num_classes, 2, 3, 4\)"):
        apply_confidence_filter(seg, np.ones((2, 4, 2, 3)), 0.5, 2)


def test_ignore_label_is_the_highest_label_plus_one_or_the_datasets_own():
    assert ignore_label_for({"background": 0, "a": 1, "b": 2}) == 3
    assert ignore_label_for({"background": 0, "a": 1, "ignore": 2}) == 2
    with pytest.raises(SelfTrainingError, match="region-based"):
        ignore_label_for({"background": 0, "whole": [1, 2], "core": 2})


def _write_image(path, array, spacing=(1.0, 1.5, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_filter_maps_nnunets_exported_probabilities_back_to_the_image_with_a_transposing_plan(tmp_path):
    """nnU-Net's own export with transpose_forward != identity on an asymmetric volume: the ignore voxels must
    land exactly on the image voxels the network was unsure about."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    image_shape = (4, 5, 6)  # array order of SimpleITKIO: (z, y, x)
    _write_image(tmp_path / "case_0000.nii.gz", np.zeros(image_shape, dtype=np.float32))
    _, properties = SimpleITKIO().read_images([str(tmp_path / "case_0000.nii.gz")])

    transpose_forward, transpose_backward = [2, 0, 1], [1, 2, 0]
    transposed_shape = tuple(image_shape[i] for i in transpose_forward)
    spacing_transposed = [properties["spacing"][i] for i in transpose_forward]
    properties.update(
        shape_before_cropping=transposed_shape,
        shape_after_cropping_and_before_resampling=transposed_shape,
        bbox_used_for_cropping=[[0, s] for s in transposed_shape],
    )
    plans = {
        "dataset_name": "Dataset999_Axes",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": transpose_forward,
        "transpose_backward": transpose_backward,
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "spacing": spacing_transposed,
                "architecture": {
                    "network_class_name": "unused",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0},
            }
        },
    }
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)

    # confident class 1 everywhere except a few asymmetric image voxels where three classes are nearly tied
    unsure_in_image = np.zeros(image_shape, dtype=bool)
    unsure_in_image[0, 1, 2] = unsure_in_image[3, 4, 0] = unsure_in_image[1, 0, 5] = True
    logits = np.zeros((3, *image_shape), dtype=np.float32)
    logits[1] = 10.0
    logits[:, unsure_in_image] = np.array([[0.1], [0.2], [0.0]])
    logits = logits.transpose(
        [0] + [i + 1 for i in transpose_forward]
    )  # the network works in transposed order
    assert logits.shape[1:] == transposed_shape != image_shape
    export_prediction_from_logits(
        torch.from_numpy(np.ascontiguousarray(logits)),
        properties,
        plans_manager.get_configuration("3d_fullres"),
        plans_manager,
        dataset_json,
        str(tmp_path / "case"),
        save_probabilities=True,
    )
    with np.load(tmp_path / "case.npz") as npz:
        assert npz["probabilities"].shape == (3, *image_shape)

    fraction = filter_pseudo_label(
        str(tmp_path / "case.nii.gz"),
        str(tmp_path / "case.npz"),
        str(tmp_path / "filtered.nii.gz"),
        0.5,
        3,
        plans_manager.image_reader_writer_class,
    )
    filtered = sitk.ReadImage(str(tmp_path / "filtered.nii.gz"))
    array = sitk.GetArrayFromImage(filtered)
    assert np.array_equal(array == 3, unsure_in_image)
    assert np.all(array[~unsure_in_image] == 1)
    assert fraction == pytest.approx(3 / unsure_in_image.size)
    assert filtered.GetSpacing() == pytest.approx((1.0, 1.5, 2.0))


def test_dataset_json_keeps_channels_and_reader_and_declares_ignore_last():
    source = {
        "name": "Tiny",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1},
        "numTraining": 5,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "numUnlabeled": 3,
        "numTest": 2,
    }
    out = self_training_dataset_json(source, "TinySelfTrain", 8, ignore_label=2)
    assert out["name"] == "TinySelfTrain" and out["numTraining"] == 8
    assert out["labels"] == {"background": 0, "liver": 1, "ignore": 2}
    assert list(out["labels"])[-1] == "ignore"
    assert out["channel_names"] == {"0": "CT"} and out["file_ending"] == ".nii.gz"
    assert out["overwrite_image_reader_writer"] == "SimpleITKIO"
    assert "numUnlabeled" not in out and "numTest" not in out
    assert "ignore" not in self_training_dataset_json(source, "X", 8, ignore_label=None)["labels"]


def _source_dataset(root):
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "pred"):
        (root / sub).mkdir(parents=True)
    labeled = {}
    for case in ("a", "b"):
        _write_image(root / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((2, 2, 2), dtype=np.float32))
        _write_image(root / "labelsTr" / f"{case}.nii.gz", np.ones((2, 2, 2), dtype=np.uint8))
        labeled[case] = {
            "images": [str(root / "imagesTr" / f"{case}_0000.nii.gz")],
            "label": str(root / "labelsTr" / f"{case}.nii.gz"),
        }
    _write_image(root / "imagesUnlabeled" / "u_0000.nii.gz", np.zeros((2, 2, 2), dtype=np.float32))
    _write_image(root / "pred" / "u.nii.gz", np.full((2, 2, 2), 2, dtype=np.uint8))
    unlabeled = {"u": [str(root / "imagesUnlabeled" / "u_0000.nii.gz")]}
    source_json = {
        "name": "Src",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "x": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    return source_json, labeled, unlabeled, {"u": str(root / "pred" / "u.nii.gz")}


def test_build_dataset_writes_labeled_and_pseudo_cases_dataset_json_and_manifest(tmp_path):
    source_json, labeled, unlabeled, pseudo = _source_dataset(tmp_path / "src")
    raw = tmp_path / "raw"
    raw.mkdir()
    path = build_self_training_dataset(
        str(raw), "Dataset502_SrcSelfTrain", source_json, labeled, unlabeled, pseudo, 2, {"round": 1}
    )
    assert path == str(raw / "Dataset502_SrcSelfTrain")
    assert sorted(os.listdir(raw)) == ["Dataset502_SrcSelfTrain"]  # no temporary folder left
    images = sorted(os.listdir(os.path.join(path, "imagesTr")))
    assert images == ["a_0000.nii.gz", "b_0000.nii.gz", "u_0000.nii.gz"]
    assert sorted(os.listdir(os.path.join(path, "labelsTr"))) == ["a.nii.gz", "b.nii.gz", "u.nii.gz"]
    # images link to the source; the pseudo-label is a copy of ours
    assert os.path.realpath(os.path.join(path, "imagesTr", "u_0000.nii.gz")) == unlabeled["u"][0]
    assert not os.path.islink(os.path.join(path, "labelsTr", "u.nii.gz"))
    u_label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(path, "labelsTr", "u.nii.gz")))
    assert np.all(u_label == 2)
    dataset_json = json.loads((raw / "Dataset502_SrcSelfTrain" / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 3
    assert dataset_json["labels"] == {"background": 0, "x": 1, "ignore": 2}
    manifest = json.loads((raw / "Dataset502_SrcSelfTrain" / MANIFEST_NAME).read_text())
    assert manifest["round"] == 1
    assert manifest["labeled"] == ["a", "b"] and manifest["pseudo_labeled"] == ["u"]
    assert manifest["counts"] == {"labeled": 2, "pseudo_labeled": 1}

    copied = build_self_training_dataset(
        str(raw), "Dataset503_Copy", source_json, labeled, unlabeled, pseudo, None, {}, copy_images=True
    )
    assert not os.path.islink(os.path.join(copied, "imagesTr", "a_0000.nii.gz"))
    assert "ignore" not in json.loads(open(os.path.join(copied, "dataset.json")).read())["labels"]


def test_build_dataset_needs_a_pseudo_label_for_every_unlabeled_case(tmp_path):
    source_json, labeled, unlabeled, _ = _source_dataset(tmp_path / "src")
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(SelfTrainingError, match=r"\['u'\]"):
        build_self_training_dataset(str(raw), "Dataset502_X", source_json, labeled, unlabeled, {}, None, {})
    assert os.listdir(raw) == []


def _roots(tmp_path):
    roots = {k: str(tmp_path / k) for k in ("raw", "preprocessed", "results")}
    for root in roots.values():
        os.makedirs(root)
    return roots


def test_a_free_id_is_free_and_a_taken_id_is_refused_without_touching_it(tmp_path):
    roots = _roots(tmp_path)
    assert check_dataset_id(roots, 502, "Dataset502_TinySelfTrain", {"round": 1}) is False
    other = tmp_path / "raw" / "Dataset502_Other"
    other.mkdir()
    (other / "dataset.json").write_text("{}")
    with pytest.raises(SelfTrainingError, match=r"dataset id 502 is taken by .*Dataset502_Other.*--out-id"):
        check_dataset_id(roots, 502, "Dataset502_TinySelfTrain", {"round": 1})
    assert (other / "dataset.json").read_text() == "{}"
    # the same name, but not made by self-train
    (tmp_path / "raw" / "Dataset503_TinySelfTrain").mkdir()
    with pytest.raises(SelfTrainingError, match="not made by self-train"):
        check_dataset_id(roots, 503, "Dataset503_TinySelfTrain", {"round": 1})
    # an id used only in nnUNet_results by another name counts as taken too
    (tmp_path / "results" / "Dataset504_Else").mkdir()
    with pytest.raises(SelfTrainingError, match="Dataset504_Else"):
        check_dataset_id(roots, 504, "Dataset504_TinySelfTrain", {"round": 1})


def test_our_own_dataset_is_reused_only_with_the_same_settings(tmp_path):
    roots = _roots(tmp_path)
    ours = tmp_path / "raw" / "Dataset502_TinySelfTrain"
    ours.mkdir()
    (ours / MANIFEST_NAME).write_text(json.dumps({"round": 1, "confidence_threshold": 0.5, "fold": "0"}))
    assert check_dataset_id(roots, 502, ours.name, {"round": 1, "confidence_threshold": 0.5}) is True
    with pytest.raises(SelfTrainingError, match=r"confidence_threshold: 0.5 there, 0.9 now"):
        check_dataset_id(roots, 502, ours.name, {"round": 1, "confidence_threshold": 0.9})
