"""Tests for nnunet_semisup.data.unlabeled (discovery, checks, preprocessing with real nnU-Net plans),
nnunet_semisup.data.loader.UnlabeledDataLoader and the ``preprocess-unlabeled`` command.

The plans come from one run of the real ``nnUNetv2_plan_and_preprocess`` on a tiny dataset (session fixture);
every test works on its own copy of the raw and preprocessed dataset folders.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_semisup.cli import main
from nnunet_semisup.data.unlabeled import (
    MANIFEST_NAME,
    UNLABELED_FOLDER,
    UnlabeledDataError,
    find_unlabeled_cases,
    plans_signature,
    preprocess_unlabeled,
    read_manifest,
    unlabeled_status,
)

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_SemisupTiny"
CONFIG = "3d_fullres"
SHAPE = (16, 24, 20)  # numpy (z, y, x): a 20x24x16 SimpleITK image
LABELS = {"background": 0, "a": 1, "b": 2}
DATASET_JSON = {
    "channel_names": {"0": "MRI"},
    "labels": LABELS,
    "numTraining": 2,
    "file_ending": ".nii.gz",
}
DATASET_JSON_2CH = {**DATASET_JSON, "channel_names": {"0": "T1", "1": "T2"}}


def write_image(path, array: np.ndarray, spacing=None) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or (1.0,) * array.ndim)
    sitk.WriteImage(image, str(path))
    return str(path)


def random_image(seed: int, shape=SHAPE) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 10 + 100).astype(np.float32)


def file_listing(root) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file below ``root``."""
    listing = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            listing[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return listing


def rewrite_raw(path: str, array: np.ndarray) -> None:
    """Overwrite a raw image with other content and a clearly later modification time."""
    mtime = os.stat(path).st_mtime_ns
    write_image(path, array)
    os.utime(path, ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))


# --- find_unlabeled_cases (no plans needed) --------------------------------------------------------------


def make_raw(root, dataset_json=DATASET_JSON, labeled=("lab0",)) -> str:
    """A raw dataset folder with dataset.json and (empty-looking) imagesTr entries; returns its path."""
    raw = os.path.join(root, "raw_dataset")
    os.makedirs(os.path.join(raw, "imagesTr"))
    os.makedirs(os.path.join(raw, UNLABELED_FOLDER))
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump(dataset_json, f)
    for case in labeled:
        for c in range(len(dataset_json["channel_names"])):
            with open(os.path.join(raw, "imagesTr", f"{case}_{c:04d}.nii.gz"), "wb") as f:
                f.write(b"x")
    return raw


def touch(raw: str, name: str, content: bytes = b"not empty") -> str:
    path = os.path.join(raw, UNLABELED_FOLDER, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_find_returns_sorted_cases_with_files_in_channel_order(tmp_path):
    raw = make_raw(tmp_path)
    for name in ("zeta_0000.nii.gz", "alpha_0000.nii.gz", "mid_case_0000.nii.gz"):
        touch(raw, name)
    cases = find_unlabeled_cases(raw, DATASET_JSON)
    assert list(cases) == ["alpha", "mid_case", "zeta"]
    folder = os.path.join(raw, UNLABELED_FOLDER)
    assert cases["mid_case"] == [os.path.join(folder, "mid_case_0000.nii.gz")]


def test_find_two_channel_dataset_lists_channels_in_order(tmp_path):
    raw = make_raw(tmp_path, DATASET_JSON_2CH)
    for name in ("b_0001.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz", "a_0000.nii.gz"):
        touch(raw, name)
    folder = os.path.join(raw, UNLABELED_FOLDER)
    assert find_unlabeled_cases(raw, DATASET_JSON_2CH) == {
        "a": [os.path.join(folder, "a_0000.nii.gz"), os.path.join(folder, "a_0001.nii.gz")],
        "b": [os.path.join(folder, "b_0000.nii.gz"), os.path.join(folder, "b_0001.nii.gz")],
    }


def test_find_absent_or_empty_folder_gives_no_cases(tmp_path):
    raw = make_raw(tmp_path)
    assert find_unlabeled_cases(raw, DATASET_JSON) == {}
    os.rmdir(os.path.join(raw, UNLABELED_FOLDER))
    assert find_unlabeled_cases(raw, DATASET_JSON) == {}


def test_find_ignores_hidden_files_and_subfolders(tmp_path):
    raw = make_raw(tmp_path)
    touch(raw, "case_0000.nii.gz")
    touch(raw, ".DS_Store")
    touch(raw, "._case_0000.nii.gz")
    os.makedirs(os.path.join(raw, UNLABELED_FOLDER, "old_stuff"))
    assert list(find_unlabeled_cases(raw, DATASET_JSON)) == ["case"]


@pytest.mark.parametrize("name", ["case_0000.nrrd", "case_0000.nii", "case_0000.nii.gz.bak", "notes.txt"])
def test_find_wrong_file_ending_names_the_file(tmp_path, name):
    raw = make_raw(tmp_path)
    touch(raw, "good_0000.nii.gz")
    path = touch(raw, name)
    with pytest.raises(UnlabeledDataError, match="wrong file ending") as excinfo:
        find_unlabeled_cases(raw, DATASET_JSON)
    assert path in str(excinfo.value)


@pytest.mark.parametrize("name", ["case.nii.gz", "case_000.nii.gz", "case_00001.nii.gz", "case-0000.nii.gz"])
def test_find_missing_channel_suffix_names_the_file(tmp_path, name):
    raw = make_raw(tmp_path)
    path = touch(raw, name)
    with pytest.raises(UnlabeledDataError, match="channel suffix") as excinfo:
        find_unlabeled_cases(raw, DATASET_JSON)
    assert path in str(excinfo.value)


def test_find_missing_channel_in_two_channel_dataset_names_the_case(tmp_path):
    raw = make_raw(tmp_path, DATASET_JSON_2CH)
    for name in ("ok_0000.nii.gz", "ok_0001.nii.gz", "half_0000.nii.gz"):
        touch(raw, name)
    with pytest.raises(UnlabeledDataError) as excinfo:
        find_unlabeled_cases(raw, DATASET_JSON_2CH)
    message = str(excinfo.value)
    assert "'half'" in message and "half_0001.nii.gz" in message
    assert "'ok'" not in message


def test_find_extra_channel_names_the_case(tmp_path):
    raw = make_raw(tmp_path)
    for name in ("ok_0000.nii.gz", "extra_0000.nii.gz", "extra_0001.nii.gz"):
        touch(raw, name)
    with pytest.raises(UnlabeledDataError, match=r"'extra'.*channels \[0, 1\]"):
        find_unlabeled_cases(raw, DATASET_JSON)


def test_find_only_wrong_channel_number_names_the_case(tmp_path):
    raw = make_raw(tmp_path)
    touch(raw, "shifted_0001.nii.gz")
    with pytest.raises(UnlabeledDataError, match="'shifted'"):
        find_unlabeled_cases(raw, DATASET_JSON)


def test_find_empty_file_names_the_file(tmp_path):
    raw = make_raw(tmp_path)
    touch(raw, "good_0000.nii.gz")
    path = touch(raw, "empty_0000.nii.gz", b"")
    with pytest.raises(UnlabeledDataError, match="empty file") as excinfo:
        find_unlabeled_cases(raw, DATASET_JSON)
    assert path in str(excinfo.value)


def test_find_case_also_in_imagesTr_names_the_case(tmp_path):
    raw = make_raw(tmp_path, labeled=("lab0", "lab1"))
    touch(raw, "lab1_0000.nii.gz")
    touch(raw, "new_0000.nii.gz")
    with pytest.raises(UnlabeledDataError, match="imagesTr") as excinfo:
        find_unlabeled_cases(raw, DATASET_JSON)
    assert "'lab1'" in str(excinfo.value) and "'new'" not in str(excinfo.value)


# --- real nnU-Net plans ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """Raw dataset with 2 labeled cases, planned and preprocessed by the real nnUNetv2_plan_and_preprocess."""
    root = tmp_path_factory.mktemp("nnunet")
    raw = root / "nnUNet_raw" / DATASET_NAME
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i in range(2):
        label = np.zeros(SHAPE, dtype=np.uint8)
        label[3:8, 4 + i : 10 + i, 4:10] = 1
        label[9:14, 12:19, 8 : 15 - i] = 2
        write_image(raw / "imagesTr" / f"lab{i}_0000.nii.gz", random_image(i) + 30 * label)
        write_image(raw / "labelsTr" / f"lab{i}.nii.gz", label)
    with open(raw / "dataset.json", "w") as f:
        json.dump(DATASET_JSON, f)
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
    }
    planner = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess")
    result = subprocess.run(
        [planner, "-d", str(DATASET_ID), "-c", CONFIG, "-np", "1", "-npfp", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    preprocessed = root / "nnUNet_preprocessed" / DATASET_NAME
    assert (preprocessed / "nnUNetPlans.json").is_file()
    return SimpleNamespace(raw=str(raw), preprocessed=str(preprocessed))


@pytest.fixture
def ds(planned_dataset, tmp_path):
    """Fresh copies of the planned raw and preprocessed dataset folders (nnU-Net folder layout), with an
    empty imagesUnlabeled."""
    raw_root = tmp_path / "nnUNet_raw"
    pre_root = tmp_path / "nnUNet_preprocessed"
    raw = shutil.copytree(planned_dataset.raw, raw_root / DATASET_NAME)
    pre = pre_root / DATASET_NAME
    pre.mkdir(parents=True)
    for name in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy2(os.path.join(planned_dataset.preprocessed, name), pre / name)
    os.makedirs(os.path.join(raw, UNLABELED_FOLDER))
    with open(pre / "nnUNetPlans.json") as f:
        plans = json.load(f)
    data_identifier = plans["configurations"][CONFIG]["data_identifier"]
    return SimpleNamespace(
        raw=str(raw),
        pre=str(pre),
        raw_root=str(raw_root),
        pre_root=str(pre_root),
        results_root=str(tmp_path / "nnUNet_results"),
        unlabeled=os.path.join(raw, UNLABELED_FOLDER),
        out=os.path.join(str(pre), f"{data_identifier}_unlabeled"),
        plans=plans,
    )


def add_case(ds, case_id: str, seed: int, shape=SHAPE) -> str:
    return write_image(os.path.join(ds.unlabeled, f"{case_id}_0000.nii.gz"), random_image(seed, shape))


def run(ds, **kwargs):
    return preprocess_unlabeled(ds.raw, ds.pre, CONFIG, num_processes=1, progress=False, **kwargs)


def load_data(ds, case_id: str) -> np.ndarray:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, _, _, _ = nnUNetDatasetBlosc2(ds.out, [case_id]).load_case(case_id)
    return np.array(data)


def test_preprocess_writes_blosc2_cases_and_manifest(ds):
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    report = run(ds)
    assert report.folder == ds.out
    assert os.path.basename(ds.out) == "nnUNetPlans_3d_fullres_unlabeled"
    assert report.processed == ["u1", "u2"] and report.up_to_date == [] and report.removed == []
    assert report.case_ids == ["u1", "u2"]
    assert sorted(os.listdir(ds.out)) == sorted(
        [MANIFEST_NAME, "u1.b2nd", "u1_seg.b2nd", "u1.pkl", "u2.b2nd", "u2_seg.b2nd", "u2.pkl"]
    )
    manifest = read_manifest(ds.out)
    assert sorted(manifest["cases"]) == ["u1", "u2"]
    assert manifest["plans_signature"] == plans_signature(ds.plans, CONFIG)
    data = load_data(ds, "u1")
    assert data.shape == (1, *SHAPE) and data.dtype == np.float32
    # ZScore normalization of the plans was applied
    assert abs(float(data.mean())) < 1e-3 and abs(float(data.std()) - 1) < 1e-2


def test_preprocessed_properties_have_empty_class_locations(ds):
    add_case(ds, "u1", 1)
    run(ds)
    with open(os.path.join(ds.out, "u1.pkl"), "rb") as f:
        properties = pickle.load(f)
    assert properties["class_locations"] == {}
    assert properties["semisup_unlabeled"] is True
    assert list(properties["shape_before_cropping"]) == list(SHAPE)


def test_second_run_processes_nothing(ds):
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    run(ds)
    manifest = read_manifest(ds.out)
    before = file_listing(ds.out)
    report = run(ds)
    assert report.processed == [] and report.removed == []
    assert report.up_to_date == ["u1", "u2"]
    # case files untouched; the manifest is rewritten with the same content
    after = file_listing(ds.out)
    del before[MANIFEST_NAME], after[MANIFEST_NAME]
    assert after == before
    assert read_manifest(ds.out) == manifest


def test_rewritten_raw_file_reprocesses_only_that_case(ds):
    path = add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    run(ds)
    old_u1, old_u2 = load_data(ds, "u1"), load_data(ds, "u2")
    u2_files = {k: v for k, v in file_listing(ds.out).items() if k.startswith("u2")}
    rewrite_raw(path, random_image(99) ** 2 / 50)
    report = run(ds)
    assert report.processed == ["u1"] and report.up_to_date == ["u2"] and report.removed == []
    assert not np.allclose(load_data(ds, "u1"), old_u1)
    np.testing.assert_array_equal(load_data(ds, "u2"), old_u2)
    assert {k: v for k, v in file_listing(ds.out).items() if k.startswith("u2")} == u2_files


def test_touched_raw_file_counts_as_changed(ds):
    path = add_case(ds, "u1", 1)
    run(ds)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == (["u1"], True)
    assert run(ds).processed == ["u1"]


def test_added_case_is_the_only_one_processed(ds):
    add_case(ds, "u1", 1)
    run(ds)
    add_case(ds, "u0", 3)
    report = run(ds)
    assert report.processed == ["u0"] and report.up_to_date == ["u1"]
    assert sorted(read_manifest(ds.out)["cases"]) == ["u0", "u1"]


def test_removed_raw_case_is_removed_from_preprocessed_folder(ds):
    add_case(ds, "u1", 1)
    path = add_case(ds, "u2", 2)
    run(ds)
    os.remove(path)
    report = run(ds)
    assert report.removed == ["u2"] and report.processed == [] and report.up_to_date == ["u1"]
    assert sorted(os.listdir(ds.out)) == sorted([MANIFEST_NAME, "u1.b2nd", "u1_seg.b2nd", "u1.pkl"])
    assert list(read_manifest(ds.out)["cases"]) == ["u1"]


def test_raw_folder_is_never_modified(ds):
    add_case(ds, "u1", 1)
    path = add_case(ds, "u2", 2)
    before = file_listing(ds.raw)
    run(ds)
    run(ds)
    unlabeled_status(ds.raw, ds.pre, CONFIG)
    assert file_listing(ds.raw) == before
    os.remove(path)
    before = file_listing(ds.raw)
    run(ds)
    assert file_listing(ds.raw) == before


def _edit_plans(ds, edit) -> None:
    path = os.path.join(ds.pre, "nnUNetPlans.json")
    with open(path) as f:
        plans = json.load(f)
    edit(plans["configurations"][CONFIG])
    with open(path, "w") as f:
        json.dump(plans, f)


def test_changed_spacing_in_plans_redoes_every_case(ds):
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    run(ds)
    signature = read_manifest(ds.out)["plans_signature"]
    _edit_plans(ds, lambda c: c.update(spacing=[2.0, 2.0, 2.0]))
    assert unlabeled_status(ds.raw, ds.pre, CONFIG)[1] is True
    report = run(ds)
    assert report.processed == ["u1", "u2"] and report.up_to_date == []
    assert read_manifest(ds.out)["plans_signature"] != signature
    assert load_data(ds, "u1").shape == (1, 8, 12, 10)


def test_changed_normalization_in_plans_redoes_every_case(ds):
    add_case(ds, "u1", 1)
    run(ds)
    _edit_plans(ds, lambda c: c.update(normalization_schemes=["NoNormalization"]))
    assert run(ds).processed == ["u1"]
    np.testing.assert_allclose(load_data(ds, "u1")[0], random_image(1), rtol=1e-6)


def test_case_removed_while_plans_changed_leaves_no_files(ds):
    add_case(ds, "u1", 1)
    path = add_case(ds, "u2", 2)
    run(ds)
    os.remove(path)
    _edit_plans(ds, lambda c: c.update(normalization_schemes=["NoNormalization"]))
    run(ds)
    assert sorted(os.listdir(ds.out)) == sorted([MANIFEST_NAME, "u1.b2nd", "u1_seg.b2nd", "u1.pkl"])


def test_partial_files_of_an_interrupted_run_are_replaced(ds):
    add_case(ds, "u1", 1)
    run(ds)
    add_case(ds, "u2", 2)
    # a run killed while writing u2: stray files, no manifest entry
    for name in ("u2.b2nd", "u2_seg.b2nd", "u2.pkl"):
        with open(os.path.join(ds.out, name), "wb") as f:
            f.write(b"\x00garbage")
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == (["u1"], True)
    report = run(ds)
    assert report.processed == ["u2"] and report.up_to_date == ["u1"]
    assert load_data(ds, "u2").shape == (1, *SHAPE)
    with open(os.path.join(ds.out, "u2.pkl"), "rb") as f:
        assert pickle.load(f)["class_locations"] == {}


def test_unreadable_manifest_redoes_everything(ds):
    add_case(ds, "u1", 1)
    run(ds)
    with open(os.path.join(ds.out, MANIFEST_NAME), "w") as f:
        f.write('{"format": 1, "cases": {')  # truncated
    assert read_manifest(ds.out) is None
    assert run(ds).processed == ["u1"]


def test_cases_finished_before_a_failure_are_kept(ds):
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    bad = os.path.join(ds.unlabeled, "zz_bad_0000.nii.gz")
    with open(bad, "wb") as f:
        f.write(np.random.default_rng(0).bytes(2000))
    with pytest.raises(UnlabeledDataError):
        run(ds)
    assert sorted(read_manifest(ds.out)["cases"]) == ["u1", "u2"]
    os.remove(bad)
    report = run(ds)
    assert report.processed == [] and report.up_to_date == ["u1", "u2"]


def test_bad_names_fail_before_anything_is_written(ds):
    add_case(ds, "u1", 1)
    write_image(os.path.join(ds.unlabeled, "u2.nii.gz"), random_image(2))
    with pytest.raises(UnlabeledDataError, match=r"u2\.nii\.gz"):
        run(ds)
    assert not os.path.exists(ds.out)


# --- bad image content -----------------------------------------------------------------------------------


def _assert_error_names(ds, path: str, match: str) -> None:
    with pytest.raises(UnlabeledDataError, match=match) as excinfo:
        run(ds)
    assert path in str(excinfo.value)
    assert not os.path.exists(os.path.join(ds.out, os.path.basename(path).split("_0000")[0] + ".b2nd"))


def test_corrupt_file_error_names_the_file(ds):
    path = os.path.join(ds.unlabeled, "corrupt_0000.nii.gz")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(5000))
    _assert_error_names(ds, path, "could not read")


def test_2d_image_in_3d_dataset_error_names_the_file(ds):
    path = write_image(os.path.join(ds.unlabeled, "flat_0000.nii.gz"), random_image(5, SHAPE[1:]))
    _assert_error_names(ds, path, "flat_0000")


def test_nifti_without_spacing_error_names_the_file(ds):
    # a header with pixdim 0 (readers silently turn it into 1 mm): written by hand, as no writer produces it
    import gzip
    import struct

    plain = write_image(os.path.join(os.path.dirname(ds.raw_root), "spaced.nii"), random_image(6))
    header = bytearray(open(plain, "rb").read())
    header[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4] of the little-endian NIfTI-1 header
    path = os.path.join(ds.unlabeled, "nospacing_0000.nii.gz")
    with gzip.open(path, "wb") as f:
        f.write(bytes(header))
    _assert_error_names(ds, path, "no valid voxel spacing")


def test_label_map_in_images_unlabeled_error_names_the_file(ds):
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:6, 3:9, 3:9] = 1
    label[8:12, 10:20, 5:15] = 2
    path = write_image(os.path.join(ds.unlabeled, "seg_0000.nii.gz"), label)
    _assert_error_names(ds, path, "label map")


def test_binary_label_map_is_also_detected(ds):
    label = np.zeros(SHAPE, dtype=np.int16)
    label[2:6, 3:9, 3:9] = 1
    path = write_image(os.path.join(ds.unlabeled, "seg_0000.nii.gz"), label)
    _assert_error_names(ds, path, "label map")


def test_integer_image_with_many_values_is_not_a_label_map(ds):
    image = np.random.default_rng(0).integers(0, 1000, size=SHAPE).astype(np.int16)
    write_image(os.path.join(ds.unlabeled, "ct_0000.nii.gz"), image)
    assert run(ds).processed == ["ct"]


def test_nan_values_error_names_the_file(ds):
    # ITK's NIfTI reader (SimpleITKIO) turns NaN into 0; nibabel keeps it, so read with nnU-Net's NibabelIO
    path = os.path.join(ds.pre, "nnUNetPlans.json")
    with open(path) as f:
        plans = json.load(f)
    plans["image_reader_writer"] = "NibabelIO"
    with open(path, "w") as f:
        json.dump(plans, f)
    add_case(ds, "good", 1)
    image = random_image(2)
    image[4, 5, 6] = np.nan
    bad = write_image(os.path.join(ds.unlabeled, "nan_0000.nii.gz"), image)
    _assert_error_names(ds, bad, "NaN")


# --- unlabeled_status ------------------------------------------------------------------------------------


def test_status_needs_preprocessing_before_first_run_and_not_after(ds):
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == ([], True)
    assert not os.path.exists(ds.out)  # status writes nothing
    run(ds)
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == (["u1", "u2"], False)


def test_status_sees_added_and_removed_cases(ds):
    add_case(ds, "u1", 1)
    path = add_case(ds, "u2", 2)
    run(ds)
    add_case(ds, "u3", 3)
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == (["u1", "u2"], True)
    run(ds)
    os.remove(path)
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == (["u1", "u2", "u3"], True)


def test_status_without_raw_folder_uses_existing_cases(ds):
    assert unlabeled_status(None, ds.pre, CONFIG) == ([], False)
    add_case(ds, "u1", 1)
    run(ds)
    add_case(ds, "u2", 2)  # not visible without the raw folder
    assert unlabeled_status(None, ds.pre, CONFIG) == (["u1"], False)


def test_status_without_images_unlabeled_and_nothing_preprocessed(ds):
    os.rmdir(ds.unlabeled)
    assert unlabeled_status(ds.raw, ds.pre, CONFIG) == ([], False)
    report = run(ds)
    assert report.case_ids == []


def test_preprocess_without_plans_raises_file_not_found(ds):
    add_case(ds, "u1", 1)
    os.remove(os.path.join(ds.pre, "nnUNetPlans.json"))
    with pytest.raises(FileNotFoundError, match=r"nnUNetPlans\.json"):
        run(ds)


# --- UnlabeledDataLoader ---------------------------------------------------------------------------------


def _loader(ds, case_ids, label_manager=None, batch_size=2, **kwargs):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_semisup.data.loader import UnlabeledDataLoader

    if label_manager is None:
        with open(os.path.join(ds.pre, "dataset.json")) as f:
            label_manager = PlansManager(ds.plans).get_label_manager(json.load(f))
    patch = tuple(PlansManager(ds.plans).get_configuration(CONFIG).patch_size)
    dataset = nnUNetDatasetBlosc2(ds.out, list(case_ids))
    return UnlabeledDataLoader(
        dataset, batch_size, patch, patch, label_manager, transforms=None, **kwargs
    ), patch


def _is_crop_of(patch: np.ndarray, image: np.ndarray) -> bool:
    ranges = [range(i - p + 1) for i, p in zip(image.shape, patch.shape)]
    for x in ranges[0]:
        for y in ranges[1]:
            for z in ranges[2]:
                crop = image[x : x + patch.shape[0], y : y + patch.shape[1], z : z + patch.shape[2]]
                if np.array_equal(crop, patch):
                    return True
    return False


def test_loader_batches_random_patches_of_unlabeled_cases(ds):
    add_case(ds, "big", 1, shape=(20, 30, 24))
    add_case(ds, "small", 2)
    run(ds)
    loader, patch = _loader(ds, ["big", "small"])
    assert loader.oversample_foreground_percent == 0.0
    images = {case_id: load_data(ds, case_id)[0] for case_id in ("big", "small")}
    for _ in range(3):
        batch = loader.generate_train_batch()
        assert tuple(batch["data"].shape) == (2, 1, *patch)
        assert tuple(batch["target"].shape) == (2, 1, *patch)
        assert set(batch["keys"]) <= {"big", "small"}
        for j, case_id in enumerate(batch["keys"]):
            assert _is_crop_of(batch["data"][j, 0].numpy(), images[case_id])


def test_loader_ignores_foreground_oversampling_request(ds):
    add_case(ds, "u1", 1)
    run(ds)
    loader, patch = _loader(ds, ["u1"], oversample_foreground_percent=1.0, probabilistic_oversampling=True)
    assert loader.oversample_foreground_percent == 0.0
    assert tuple(loader.generate_train_batch()["data"].shape) == (2, 1, *patch)


def test_loader_works_with_ignore_label_despite_empty_class_locations(ds):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    run(ds)
    label_manager = LabelManager({"background": 0, "a": 1, "ignore": 2}, None)
    assert label_manager.has_ignore_label
    loader, patch = _loader(ds, ["u1", "u2"], label_manager=label_manager)
    assert loader.has_ignore is False
    batch = loader.generate_train_batch()
    assert tuple(batch["data"].shape) == (2, 1, *patch)
    assert np.isfinite(batch["data"].numpy()).all()
    # nnU-Net's own loader needs class locations here (documents why UnlabeledDataLoader exists)
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    plain = nnUNetDataLoader(nnUNetDatasetBlosc2(ds.out, ["u1"]), 2, patch, patch, label_manager)
    with pytest.raises(KeyError):
        plain.generate_train_batch()


# --- CLI: nnunet-semisup preprocess-unlabeled ------------------------------------------------------------


@pytest.fixture
def nnunet_env(ds, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", ds.raw_root)
    monkeypatch.setenv("nnUNet_preprocessed", ds.pre_root)
    monkeypatch.setenv("nnUNet_results", ds.results_root)
    return ds


CLI_ARGS = ["preprocess-unlabeled", "-d", str(DATASET_ID), "-c", CONFIG, "-np", "1", "--no-progress"]


def test_cli_preprocess_unlabeled_reports_cases(nnunet_env, capsys):
    ds = nnunet_env
    add_case(ds, "u1", 1)
    add_case(ds, "u2", 2)
    assert main(CLI_ARGS) == 0
    out = capsys.readouterr().out
    assert f"Unlabeled cases: 2 ready in {ds.out}" in out
    assert "(2 preprocessed now, 0 up to date, 0 removed)" in out
    assert main([*CLI_ARGS[:2], DATASET_NAME, *CLI_ARGS[3:]]) == 0
    assert "(0 preprocessed now, 2 up to date, 0 removed)" in capsys.readouterr().out


def test_cli_preprocess_unlabeled_bad_file_exits_2_naming_it(nnunet_env, capsys):
    ds = nnunet_env
    add_case(ds, "u1", 1)
    bad = os.path.join(ds.unlabeled, "u2_0000.nrrd")
    write_image(bad, random_image(2))
    assert main(CLI_ARGS) == 2
    err = capsys.readouterr().err
    assert "nnunet-semisup preprocess-unlabeled: error:" in err
    assert bad in err


def test_cli_preprocess_unlabeled_bad_content_exits_2_naming_it(nnunet_env, capsys):
    ds = nnunet_env
    bad = os.path.join(ds.unlabeled, "u1_0000.nii.gz")
    with open(bad, "wb") as f:
        f.write(np.random.default_rng(0).bytes(3000))
    assert main(CLI_ARGS) == 2
    assert bad in capsys.readouterr().err


def test_cli_preprocess_unlabeled_without_plans_exits_2(nnunet_env, capsys):
    ds = nnunet_env
    os.remove(os.path.join(ds.pre, "nnUNetPlans.json"))
    assert main(CLI_ARGS) == 2
    assert "nnUNetPlans.json not found" in capsys.readouterr().err


def test_cli_preprocess_unlabeled_without_images_says_so(nnunet_env, capsys):
    assert main(CLI_ARGS) == 0
    out = capsys.readouterr().out
    assert "No unlabeled images found" in out and "Unlabeled cases: 0 ready" in out


def test_status_without_raw_folder_refuses_cases_made_with_other_plans(ds):
    add_case(ds, "u1", 1)
    run(ds)
    _edit_plans(ds, lambda c: c.update(spacing=[2.0, 2.0, 2.0]))
    with pytest.raises(UnlabeledDataError, match="other plans"):
        unlabeled_status(None, ds.pre, CONFIG)


def test_unlabeled_copy_of_a_test_or_labeled_image_is_warned_about_loudly(ds):
    os.makedirs(os.path.join(ds.raw, "imagesTs"))
    test_image = write_image(os.path.join(ds.raw, "imagesTs", "t0_0000.nii.gz"), random_image(7))
    add_case(ds, "u_fresh", 1)
    # the test scan and a labeled scan copied into imagesUnlabeled under other names
    shutil.copy(test_image, os.path.join(ds.unlabeled, "u_test_copy_0000.nii.gz"))
    shutil.copy(
        os.path.join(ds.raw, "imagesTr", "lab1_0000.nii.gz"), os.path.join(ds.unlabeled, "u_lab_0000.nii.gz")
    )
    logged: list[str] = []
    with pytest.warns(UserWarning, match="same image content") as record:
        report = run(ds, log=logged.append)
    messages = [str(w.message) for w in record if "same image content" in str(w.message)]
    assert len(messages) == 2
    assert any(
        "'u_test_copy'" in m and "imagesTs case 't0'" in m and "not on unseen data" in m for m in messages
    )
    assert any("'u_lab'" in m and "imagesTr case 'lab1'" in m for m in messages)
    assert all(m in logged for m in messages)  # also in the training log when a trainer preprocesses
    assert sorted(report.processed) == ["u_fresh", "u_lab", "u_test_copy"]  # a warning, training goes on
    # unchanged cases are not read again: no warning on the next run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(ds).processed == []


# --- dimensionality: 2D datasets take 2D unlabeled images, 3D datasets 3D ones ---------------------------------
def _one_slice_nifti(path, seed: int) -> str:
    """nnU-Net's convention for 2D data in a 3D format: one slice, spacing 999 along the slice axis."""
    return write_image(path, random_image(seed, (1, 24, 20)), spacing=(1.0, 1.0, 999.0))


def _png(path, seed: int) -> str:
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 20), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("kind", ["one-slice NIfTI, spacing 999", "2D NIfTI", "png"])
def test_2d_images_are_read_in_2d_datasets_as_nnunet_reads_them(tmp_path, kind):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_semisup.data.unlabeled import image_is_2d, read_unlabeled_case

    if kind == "png":
        path, reader, dataset_json = (
            _png(tmp_path / "u_0000.png", 0),
            NaturalImage2DIO,
            {
                **DATASET_JSON,
                "file_ending": ".png",
            },
        )
    elif kind == "2D NIfTI":
        path = write_image(tmp_path / "u_0000.nii.gz", random_image(0, (24, 20)))
        reader, dataset_json = SimpleITKIO, DATASET_JSON
    else:
        path, reader, dataset_json = (
            _one_slice_nifti(tmp_path / "u_0000.nii.gz", 0),
            SimpleITKIO,
            DATASET_JSON,
        )
    data, properties = read_unlabeled_case("u", [path], reader, dataset_json, dataset_is_2d=True)
    labeled_data, labeled_properties = reader().read_images([path])  # what nnU-Net makes of a labeled one
    assert data.shape == labeled_data.shape and data.shape[:2] == (1, 1)
    assert tuple(properties["spacing"]) == tuple(labeled_properties["spacing"]) and image_is_2d(properties)
    # the same file in a 3D dataset: refused, saying what it is and what the dataset needs
    with pytest.raises(UnlabeledDataError, match=r"is a 2D image .*but the dataset's images are 3D") as error:
        read_unlabeled_case("u", [path], reader, dataset_json, dataset_is_2d=False)
    assert path in str(error.value) and "Store the whole 3D volume" in str(error.value)


def test_3d_volume_in_a_2d_dataset_error_names_the_file(tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_semisup.data.unlabeled import read_unlabeled_case

    path = write_image(tmp_path / "vol_0000.nii.gz", random_image(0))
    with pytest.raises(
        UnlabeledDataError, match=r"is a 3D image of shape .*but the dataset's images are 2D"
    ) as e:
        read_unlabeled_case("vol", [path], SimpleITKIO, DATASET_JSON, dataset_is_2d=True)
    assert path in str(e.value) and "spacing 999" in str(e.value)


def test_plans_of_a_2d_dataset_are_recognised(ds):
    from nnunet_semisup.data.unlabeled import plans_are_2d

    assert not plans_are_2d(ds.plans)
    assert plans_are_2d({**ds.plans, "original_median_spacing_after_transp": [999.0, 1.0, 1.0]})
