"""Planning from labeled + unlabeled images (``nnunet_semisup.planners``) against nnU-Net's own planners, on
synthetic raw datasets whose geometry makes the right fingerprint and plans computable by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nnunet_semisup.data.synthetic import write_synthetic_cases

# Labeled cases: 3 of 24x24x16 voxels (SimpleITK x, y, z) at 1 x 1 x 2 mm; unlabeled: 4 of 32^3 at 1.5 mm.
# nnU-Net's axis order is (z, y, x): labeled spacing (2, 1, 1), shape (16, 24, 24); unlabeled (1.5,)*3, (32,)*3.
# Medians over the 7 cases: spacing (1.5, 1.5, 1.5), 4 of the 7 values on each axis; nnU-Net alone: (2, 1, 1).
# Resampled to 1.5 mm the labeled cases are (21, 16, 16), so the median shape is (32, 32, 32) (nnU-Net alone at
# its own (2, 1, 1): (16, 24, 24)).
LABELED = dict(n=3, shape=(24, 24, 16), spacing=(1.0, 1.0, 2.0))
UNLABELED = dict(n=4, shape=(32, 32, 32), spacing=(1.5, 1.5, 1.5))
LABELED_SPACING, LABELED_SHAPE = [2.0, 1.0, 1.0], [16, 24, 24]
UNLABELED_SPACING, UNLABELED_SHAPE = [1.5, 1.5, 1.5], [32, 32, 32]

GEOMETRY_ID, NO_UNLABELED_ID, CORRUPT_ID = 530, 531, 532


def write_raw_dataset(
    raw: Path, dataset_id: int, name: str, channel: str = "CT", unlabeled: dict | None = UNLABELED
) -> Path:
    """nnU-Net raw dataset ``Dataset<id>_<name>`` with LABELED cases in imagesTr/labelsTr and ``unlabeled``
    (None: no imagesUnlabeled folder) in imagesUnlabeled; returns its folder."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    source = raw.parent / f"source{dataset_id}"
    write_synthetic_cases(str(source / "l"), LABELED["n"], LABELED["shape"], LABELED["spacing"], seed=1)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for image in sorted((source / "l" / "images").iterdir()):
        case = image.name.removesuffix(".nii.gz")
        shutil.move(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.move(source / "l" / "labels" / image.name, folder / "labelsTr" / image.name)
    if unlabeled is not None:
        write_synthetic_cases(
            str(source / "u"), unlabeled["n"], unlabeled["shape"], unlabeled["spacing"], seed=2, prefix="unl"
        )
        (folder / "imagesUnlabeled").mkdir()
        for image in sorted((source / "u" / "images").iterdir()):
            case = image.name.removesuffix(".nii.gz")
            shutil.move(image, folder / "imagesUnlabeled" / f"{case}_0000.nii.gz")
    dataset_json = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": LABELED["n"],
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


@pytest.fixture(scope="module")
def nnunet_dirs(tmp_path_factory):
    """nnU-Net's three folders in a temporary directory, set in the environment for this module."""
    root = tmp_path_factory.mktemp("planners")
    dirs = {key: root / key for key in ("raw", "preprocessed", "results")}
    with pytest.MonkeyPatch.context() as mp:
        for key, path in dirs.items():
            path.mkdir()
            mp.setenv(f"nnUNet_{key}", str(path))
        mp.setenv("nnUNet_def_n_proc", "1")
        yield dirs


@pytest.fixture(scope="module")
def geometry_dataset(nnunet_dirs):
    """Dataset530: the CT dataset of the module docstring, fingerprinted (stock + semi-supervised)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

    from nnunet_semisup.planners.fingerprint import SemiSupervisedFingerprintExtractor

    write_raw_dataset(nnunet_dirs["raw"], GEOMETRY_ID, "Geometry")
    extract_fingerprint_dataset(GEOMETRY_ID, SemiSupervisedFingerprintExtractor, 1, show_progress_bar=False)
    return nnunet_dirs["preprocessed"] / f"Dataset{GEOMETRY_ID}_Geometry"


def _plan(planner_class, dataset_id: int) -> dict:
    """Plan with ``planner_class`` and return the plans file it wrote."""
    from nnunetv2.paths import nnUNet_preprocessed

    planner = planner_class(dataset_id)
    planner.plan_experiment()
    return _load(
        Path(nnUNet_preprocessed.require()) / planner.dataset_name / f"{planner.plans_identifier}.json"
    )


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}/{key}").items()}
    return {prefix: tree}


def test_fingerprint_adds_unlabeled_geometry_and_keeps_labeled_statistics(geometry_dataset):
    semisup = _load(geometry_dataset / "dataset_fingerprint_semisup.json")
    stock = _load(geometry_dataset / "dataset_fingerprint.json")

    assert stock["spacings"] == [LABELED_SPACING] * 3  # nnU-Net's own file: labeled cases only
    assert semisup["spacings"] == [LABELED_SPACING] * 3 + [UNLABELED_SPACING] * 4
    assert semisup["shapes_after_crop"] == [LABELED_SHAPE] * 3 + [UNLABELED_SHAPE] * 4
    assert semisup["labeled_case_ids"] == ["synth_001", "synth_002", "synth_003"]
    assert semisup["unlabeled_case_ids"] == ["unl_001", "unl_002", "unl_003", "unl_004"]
    # intensity statistics (CT normalisation) and the crop ratio (use_mask_for_norm) stay the labeled ones
    for key in ("foreground_intensity_properties_per_channel", "median_relative_size_after_cropping"):
        assert semisup[key] == stock[key]


def test_fingerprint_is_redone_when_the_unlabeled_cases_change(geometry_dataset, nnunet_dirs):
    from nnunet_semisup.planners.fingerprint import SemiSupervisedFingerprintExtractor

    unlabeled = nnunet_dirs["raw"] / f"Dataset{GEOMETRY_ID}_Geometry" / "imagesUnlabeled"
    added = unlabeled / "unl_005_0000.nii.gz"
    shutil.copy(unlabeled / "unl_001_0000.nii.gz", added)
    try:
        fingerprint = SemiSupervisedFingerprintExtractor(GEOMETRY_ID, 1).run()
        assert fingerprint["unlabeled_case_ids"][-1] == "unl_005"
        assert fingerprint["spacings"] == [LABELED_SPACING] * 3 + [UNLABELED_SPACING] * 5
    finally:
        added.unlink()
        fingerprint = SemiSupervisedFingerprintExtractor(GEOMETRY_ID, 1).run()
    assert len(fingerprint["unlabeled_case_ids"]) == 4


@pytest.mark.parametrize(
    "stock_name, semisup_name",
    [("ExperimentPlanner", "nnUNetSemiSupPlanner")]
    + [(f"nnUNetPlannerResEnc{s}", f"nnUNetSemiSupPlannerResEnc{s}") for s in ("M", "L", "XL")],
)
def test_plans_differ_from_nnunet_only_in_geometry(geometry_dataset, stock_name, semisup_name):
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets import residual_encoder_unet_planners

    from nnunet_semisup.planners import experiment_planners

    stock_class = getattr(default_experiment_planner, stock_name, None) or getattr(
        residual_encoder_unet_planners, stock_name
    )
    stock = _plan(stock_class, GEOMETRY_ID)
    semisup = _plan(getattr(experiment_planners, semisup_name), GEOMETRY_ID)

    fullres = semisup["configurations"]["3d_fullres"]
    assert fullres["spacing"] == UNLABELED_SPACING
    assert fullres["median_image_size_in_voxels"] == [32, 32, 32]
    assert stock["configurations"]["3d_fullres"]["spacing"] == LABELED_SPACING
    assert stock["configurations"]["3d_fullres"]["median_image_size_in_voxels"] == LABELED_SHAPE
    assert semisup["original_median_spacing_after_transp"] == UNLABELED_SPACING
    assert semisup["experiment_planner_used"] == stock_name  # nnU-Net can resolve only its own planners
    assert semisup["semisup_planning"]["num_unlabeled_cases"] == 4

    geometry = (
        "spacing",
        "median_image_size_in_voxels",
        "patch_size",
        "batch_size",
        "architecture/arch_kwargs",
    )
    allowed = (
        "/plans_name",
        "/semisup_planning",
        "/original_median_spacing",
        "/original_median_shape",
    ) + tuple(
        f"/configurations/{c}/{key}" for c in ("2d", "3d_fullres") for key in (*geometry, "data_identifier")
    )
    stock_flat, semisup_flat = _flatten(stock), _flatten(semisup)
    differing = {
        k for k in stock_flat.keys() | semisup_flat.keys() if stock_flat.get(k) != semisup_flat.get(k)
    }
    assert not {k for k in differing if not k.startswith(allowed)}, "plans differ outside the geometry"
    assert "/configurations/3d_fullres/patch_size" in differing
    # what must be nnU-Net's: preprocessor, normalisation, network class, intensity statistics
    for c in ("2d", "3d_fullres"):
        assert semisup["configurations"][c]["preprocessor_name"] == "DefaultPreprocessor"
        assert semisup["configurations"][c]["normalization_schemes"] == ["CTNormalization"]
        assert (
            semisup["configurations"][c]["architecture"]["network_class_name"]
            == stock["configurations"][c]["architecture"]["network_class_name"]
        )
        assert semisup["configurations"][c]["data_identifier"] == f"{semisup['plans_name']}_{c}"
    assert (
        semisup["foreground_intensity_properties_per_channel"]
        == stock["foreground_intensity_properties_per_channel"]
    )


def test_batch_cap_counts_labeled_and_unlabeled_voxels(geometry_dataset):
    """nnU-Net: batch <= round(0.05 * dataset voxels / patch voxels), dataset voxels = median voxels *
    numTraining. With 3 labeled + 4 unlabeled cases the semi-supervised planner counts 7/3 of that."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    from nnunet_semisup.planners.experiment_planners import nnUNetSemiSupPlanner

    spacing, median_shape = (1.0, 1.0, 1.0), (32, 32, 32)
    # the labeled voxel count for which the cap is 5 patches of 32^3 over 7 cases (2.14 -> 2 over 3)
    labeled_voxels = 5 * 32**3 / 0.05 * 3 / 7
    semisup = nnUNetSemiSupPlanner(GEOMETRY_ID).get_plans_for_configuration(
        spacing, median_shape, "x", labeled_voxels, {}
    )
    stock = ExperimentPlanner(GEOMETRY_ID).get_plans_for_configuration(
        spacing, median_shape, "x", labeled_voxels, {}
    )
    assert semisup["patch_size"] == stock["patch_size"] == (32, 32, 32)
    assert (stock["batch_size"], semisup["batch_size"]) == (2, 5)


def _cli(*args: str) -> int:
    from nnunet_semisup.cli import main

    return main(["plan-and-preprocess", *args])


def test_without_unlabeled_images_plans_equal_nnunets_with_a_note(nnunet_dirs, capsys):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    write_raw_dataset(nnunet_dirs["raw"], NO_UNLABELED_ID, "NoUnlabeled", channel="MRI", unlabeled=None)
    assert _cli("-d", str(NO_UNLABELED_ID), "--no_pp", "-npfp", "1", "--no_pbar") == 0
    assert "has no imagesUnlabeled/ images" in capsys.readouterr().out

    folder = nnunet_dirs["preprocessed"] / f"Dataset{NO_UNLABELED_ID}_NoUnlabeled"
    semisup = _flatten(_load(folder / "nnUNetSemiSupPlans.json"))
    stock = _flatten(_plan(ExperimentPlanner, NO_UNLABELED_ID))
    differing = {k for k in stock.keys() | semisup.keys() if stock.get(k) != semisup.get(k)}
    assert differing == {
        "/plans_name",
        "/configurations/2d/data_identifier",
        "/configurations/3d_fullres/data_identifier",
        "/semisup_planning/planner",
        "/semisup_planning/fingerprint",
        "/semisup_planning/num_labeled_cases",
        "/semisup_planning/num_unlabeled_cases",
    }


def test_corrupt_unlabeled_image_is_named_before_anything_is_written(nnunet_dirs, capsys):
    folder = write_raw_dataset(nnunet_dirs["raw"], CORRUPT_ID, "Corrupt")
    broken = folder / "imagesUnlabeled" / "unl_003_0000.nii.gz"
    broken.write_bytes(b"not an image")

    assert _cli("-d", str(CORRUPT_ID), "-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no_pbar") == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "could not read the image" in err and "Traceback" not in err
    assert not (nnunet_dirs["preprocessed"] / f"Dataset{CORRUPT_ID}_Corrupt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "999"], "dataset 999 not found"),
        (["-d", str(GEOMETRY_ID), "-overwrite_target_spacing", "2", "2"], "takes 3 numbers"),
        (["-d", str(GEOMETRY_ID), "-c", "2d", "3d_fullres", "-np", "1", "2", "3"], "one per configuration"),
        (["-d", str(GEOMETRY_ID), "-pl", "nnUNetPlannerResEncXXL"], "unknown -pl"),
    ],
)
def test_bad_options_are_one_line_errors(geometry_dataset, capsys, args, message):
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
