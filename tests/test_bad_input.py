"""Bad input, in one place: every kind of user mistake the package checks, through the entry point a user
runs (``nnunet-semisup`` commands, or the trainer hook ``nnUNetv2_train`` calls), on a copy of the tiny dataset. Each case must fail with
an error that names the file or case and says what to do, write nothing into nnUNet_raw (listing and SHA-256 of
every file before and after) and leave every existing checkpoint (``*.pth`` under nnUNet_results) unchanged.

The detailed behaviour of the unlabeled-data checks (every variant of a bad name, what is kept when a case fails
half way, the NaN check with nnU-Net's NibabelIO) is tested in ``tests/test_unlabeled_data.py``; the functions of
``evaluate`` in ``tests/test_metrics.py``; the budget arithmetic in ``tests/test_selection.py``. Here each case
is one short set-up and the same assertions.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_semisup.cli import main

pytestmark = pytest.mark.e2e  # the planned tiny dataset

NAME = "Dataset501_Tiny"


def _digest(root: Path, pattern: str = "*") -> dict[str, str]:
    """relative path -> SHA-256 of every file below ``root`` matching ``pattern``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }


class Copy:
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results of a copy of Dataset501_Tiny in ``root`` (environment set
    with monkeypatch): raw images and labels (imagesUnlabeled empty), the plans and dataset.json, and an
    existing checkpoint of an earlier run."""

    def __init__(self, tiny_dataset, root: Path, monkeypatch):
        self.raw_root, self.pre_root, self.results = root / "raw", root / "pre", root / "results"
        self.raw = self.raw_root / NAME
        shutil.copytree(tiny_dataset.raw / NAME, self.raw, ignore=shutil.ignore_patterns("imagesUnlabeled"))
        (self.raw / "imagesUnlabeled").mkdir()
        self.pre = self.pre_root / NAME
        self.pre.mkdir(parents=True)
        for name in ("nnUNetPlans.json", "dataset.json"):
            shutil.copy2(tiny_dataset.preprocessed / NAME / name, self.pre / name)
        # the labeled cases' preprocessed data, read-only for the trainers here (a link, no copy)
        (self.pre / "nnUNetPlans_3d_fullres").symlink_to(
            tiny_dataset.preprocessed / NAME / "nnUNetPlans_3d_fullres"
        )
        self.checkpoint = self.results / NAME / "MeanTeacherTrainer__nnUNetPlans__3d_fullres" / "fold_0"
        self.checkpoint.mkdir(parents=True)
        torch.save(
            {"network_weights": {"w": torch.arange(4.0)}, "current_epoch": 7},
            self.checkpoint / "checkpoint_latest.pth",
        )
        monkeypatch.setenv("nnUNet_raw", str(self.raw_root))
        monkeypatch.setenv("nnUNet_preprocessed", str(self.pre_root))
        monkeypatch.setenv("nnUNet_results", str(self.results))
        monkeypatch.setenv("nnUNet_n_proc_DA", "0")
        self.before: tuple[dict, dict] | None = None

    def snapshot(self) -> None:
        """Call once the bad input is in place."""
        self.before = (_digest(self.raw_root), _digest(self.results, "*.pth"))

    def assert_untouched(self) -> None:
        raw, checkpoints = self.before
        assert _digest(self.raw_root) == raw, "nnUNet_raw changed"
        assert _digest(self.results, "*.pth") == checkpoints, "a checkpoint changed"
        assert checkpoints, "the existing checkpoint is gone"

    def unlabeled(self, name: str) -> Path:
        return self.raw / "imagesUnlabeled" / name

    def trainer(self, name: str):
        from nnunetv2.run.run_training import get_trainer_from_args

        return get_trainer_from_args("501", "3d_fullres", 0, name, device=torch.device("cpu"))


@pytest.fixture
def data(tiny_dataset, tmp_path, monkeypatch) -> Copy:
    return Copy(tiny_dataset, tmp_path, monkeypatch)


def _write(path: Path, array: np.ndarray, spacing=None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing or (1.0,) * array.ndim)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _image(seed: int = 0, shape=(32, 32, 32)) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 10 + 100).astype(np.float32)


def _cli_error(capsys, *argv: str) -> str:
    """Run ``nnunet-semisup ARGV`` in-process; it must exit with status 2 and a one-line error (no traceback)."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


def _preprocess_unlabeled_error(data: Copy, capsys) -> str:
    data.snapshot()
    err = _cli_error(
        capsys, "preprocess-unlabeled", "-d", "501", "-c", "3d_fullres", "-np", "1", "--no-progress"
    )
    data.assert_untouched()
    return err


# --- imagesUnlabeled: what `nnunet-semisup preprocess-unlabeled` and every trainer's start check ------------------
# (the trainers call the same preprocess_unlabeled before training; tests/test_unlabeled_data.py has each variant)


def _label_map() -> np.ndarray:
    label = np.zeros((32, 32, 32), dtype=np.uint8)
    label[4:10, 4:10, 4:10] = 1
    label[14:24, 14:24, 14:24] = 2
    return label


def _wrong_channel_count(d: Copy, tmp: Path) -> str:
    _write(d.unlabeled("u1_0000.nii.gz"), _image(1))
    _write(d.unlabeled("u1_0001.nii.gz"), _image(2))  # the dataset has one channel
    return "'u1'"


def _wrong_file_ending(d: Copy, tmp: Path) -> str:
    return str(_write(d.unlabeled("u1_0000.nrrd"), _image(1)))


def _empty_file(d: Copy, tmp: Path) -> str:
    d.unlabeled("u1_0000.nii.gz").write_bytes(b"")
    return str(d.unlabeled("u1_0000.nii.gz"))


def _corrupt_file(d: Copy, tmp: Path) -> str:
    d.unlabeled("u1_0000.nii.gz").write_bytes(np.random.default_rng(0).bytes(5000))
    return str(d.unlabeled("u1_0000.nii.gz"))


def _no_spacing(d: Copy, tmp: Path) -> str:
    plain = _write(tmp / "spaced.nii", _image(6))
    header = bytearray(plain.read_bytes())
    header[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)  # pixdim[1:4] of the NIfTI-1 header
    with gzip.open(d.unlabeled("u1_0000.nii.gz"), "wb") as f:
        f.write(bytes(header))
    return str(d.unlabeled("u1_0000.nii.gz"))


def _other_dimensionality(d: Copy, tmp: Path) -> str:
    return str(_write(d.unlabeled("u1_0000.nii.gz"), _image(1, (32, 32))))


def _label_map_in_images_unlabeled(d: Copy, tmp: Path) -> str:
    return str(_write(d.unlabeled("seg_0000.nii.gz"), _label_map()))


def _case_in_images_tr_too(d: Copy, tmp: Path) -> str:
    labeled = sorted((d.raw / "imagesTr").iterdir())[0]
    shutil.copy2(labeled, d.unlabeled(labeled.name))
    return repr(labeled.name[: -len("_0000.nii.gz")])


UNLABELED_CASES = {
    # case: (puts the bad input into imagesUnlabeled and returns the file or case the error must name, the fix)
    "wrong channel count": (_wrong_channel_count, "provide exactly u1_0000.nii.gz"),
    "wrong file ending": (_wrong_file_ending, "Convert the image to .nii.gz"),
    "empty file": (_empty_file, "Re-export the image or remove it"),
    "corrupt file": (_corrupt_file, "Check that the file is a valid .nii.gz image"),
    "image without spacing": (_no_spacing, "Write the image with its real spacing"),
    "image of another dimensionality (2D in a 3D dataset)": (
        _other_dimensionality,
        "Store the whole 3D volume",
    ),
    "label map in imagesUnlabeled": (_label_map_in_images_unlabeled, "must hold images only"),
    "case ID in both imagesTr and imagesUnlabeled": (
        _case_in_images_tr_too,
        "remove it from imagesUnlabeled/",
    ),
}


@pytest.mark.parametrize("case", list(UNLABELED_CASES))
def test_bad_unlabeled_input(case, data, capsys, tmp_path):
    make, fix = UNLABELED_CASES[case]
    names = make(data, tmp_path)
    err = _preprocess_unlabeled_error(data, capsys)
    assert names in err, err
    assert fix in err, err
    # nothing half-made is left for training to pick up
    out = data.pre / "nnUNetPlans_3d_fullres_unlabeled"
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix == ".b2nd"]


def test_no_unlabeled_images_for_a_method_that_needs_them(data):
    # nnUNetv2_train ... -tr MeanTeacherTrainer on a dataset without imagesUnlabeled/ (the folder is empty)
    trainer = data.trainer("MeanTeacherTrainer")
    data.snapshot()
    with pytest.raises(RuntimeError) as excinfo:
        trainer.on_train_start()
    data.assert_untouched()
    message = str(excinfo.value)
    assert f"dataset {NAME} has none" in message
    assert str(data.raw / "imagesUnlabeled") in message  # where to put them
    assert "-tr LabeledOnlyTrainer" in message and "preprocess-unlabeled" in message


@pytest.mark.parametrize("case", ["no unlabeled images", "wrong file ending"])
def test_trainer_start_errors_exit_with_the_message_and_write_it_to_the_training_log(data, tmp_path, case):
    # what nnUNetv2_train calls: run_training. The user's data is at fault: SystemExit(message), which Python
    # prints without a traceback (exit status 1; tests/test_few_labeled_cases.py runs the console script)
    from nnunet_semisup.data.unlabeled import UnlabeledDataError
    from nnunet_semisup.errors import TrainingInputError

    if case == "wrong file ending":
        _wrong_file_ending(data, tmp_path)
    trainer = data.trainer("MeanTeacherTrainer")
    data.snapshot()
    with pytest.raises(SystemExit) as excinfo:
        trainer.run_training()
    data.assert_untouched()
    message = str(excinfo.value.code)
    expected = {"no unlabeled images": TrainingInputError, "wrong file ending": UnlabeledDataError}[case]
    assert isinstance(excinfo.value.__cause__, expected)
    assert message == f"ERROR: {excinfo.value.__cause__}"
    log = "".join(p.read_text() for p in Path(trainer.output_folder).glob("training_log_*.txt"))
    assert message in log


# --- annotation sparsification --------------------------------------------------------------------------------


def test_sparse_dataset_without_ignore_label(data, capsys, tmp_path):
    # labels with unannotated voxels marked 3, but dataset.json declares only 0, 1, 2
    label_file = sorted((data.raw / "labelsTr").iterdir())[0]
    sparse = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    sparse[::2] = 3
    _write(label_file, sparse.astype(np.uint8))
    plan = tmp_path / "plan.json"
    assert (
        main(
            [
                "select-slices",
                "-d",
                "501",
                "--budget",
                "8",
                "--strategy",
                "eia",
                "-o",
                str(plan),
                "--no-progress",
            ]
        )
        == 0
    )

    # sparsify refuses it, naming the label file and what to do instead
    data.snapshot()
    err = _cli_error(capsys, "sparsify", "-d", "501", "--plan", str(plan), "--out-id", "530", "--no-progress")
    data.assert_untouched()
    assert str(label_file) in err and "has label 3" in err
    assert 'declare that value as "ignore"' in err
    assert not [p.name for p in data.raw_root.iterdir() if p.name != NAME]  # no new dataset, no temporary

    # the 2D base model refuses a dataset without an ignore label before reading any data
    trainer = data.trainer("SparseMultiPlane2DTrainer")
    with pytest.raises(RuntimeError) as excinfo:
        trainer.get_dataloaders()
    data.assert_untouched()
    message = str(excinfo.value)
    assert f"{data.pre}/dataset.json" in message and "has no 'ignore' label" in message
    assert "nnunet-semisup sparsify" in message and 'as "ignore"' in message


def test_slice_budget_larger_than_the_number_of_slices(data, capsys, tmp_path):
    plan = tmp_path / "plan.json"
    data.snapshot()
    err = _cli_error(capsys, "select-slices", "-d", "501", "--budget", "64", "--strategy", "eia", "-o", str(plan),
                     "--no-progress")  # fmt: skip
    data.assert_untouched()
    assert "only 32 slice(s) but a budget of one slice in 64" in err
    assert "case " in err and "plane " in err  # the case and plane that are too small
    assert "Use --budget 32 or less" in err
    assert not plan.exists() and not plan.with_suffix(".txt").exists()


# --- evaluate -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mismatch", ["shape", "spacing"])
def test_evaluate_with_mismatched_geometry(data, capsys, tmp_path, mismatch):
    label = _label_map()
    ref = _write(tmp_path / "ref" / "case1.nii.gz", label)
    if mismatch == "shape":
        pred = _write(tmp_path / "pred" / "case1.nii.gz", label[:, :, :30])
    else:
        pred = _write(tmp_path / "pred" / "case1.nii.gz", label, spacing=(2.0, 2.0, 2.0))
    data.snapshot()
    err = _cli_error(capsys, "evaluate", "--ref", str(ref.parent), "--pred", str(pred.parent))
    data.assert_untouched()
    assert f"case 'case1': prediction {mismatch}" in err and str(pred) in err and str(ref) in err
    assert "predict the images that belong to these references" in err
    assert not (pred.parent / "semisup_summary.json").exists()


# --- WTA fine-tuning -----------------------------------------------------------------------------------------


def test_pretrained_checkpoint_from_different_plans(data, monkeypatch):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    # a WTAPretrainTrainer checkpoint whose plans had another spacing (same architecture: loads without error)
    pretrain = data.trainer("WTAPretrainTrainer")
    pretrain.initialize()
    path = data.results / "pretrain" / "checkpoint_final.pth"
    path.parent.mkdir()
    pretrain.save_checkpoint(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["init_args"]["plans"]["plans_name"] = "nnUNetPlans_other"
    checkpoint["init_args"]["plans"]["configurations"]["3d_fullres"]["spacing"] = [2.0, 2.0, 2.0]
    torch.save(checkpoint, path)

    # nnUNetv2_train 501 3d_fullres 0 -tr WTAFinetuneTrainer -pretrained_weights PATH, up to the transfer
    monkeypatch.setattr(
        sys, "argv", ["nnUNetv2_train", "501", "3d_fullres", "0", "-pretrained_weights", str(path)]
    )
    finetune = data.trainer("WTAFinetuneTrainer")
    finetune.initialize()
    load_pretrained_weights(finetune.network, str(path))
    before = {k: v.clone() for k, v in finetune.network.state_dict().items()}
    data.snapshot()
    with pytest.raises(RuntimeError) as excinfo:
        finetune.on_fresh_start()
    data.assert_untouched()
    message = str(excinfo.value)
    assert str(path) in message and "'nnUNetPlans_other'" in message and "in spacing" in message
    assert "Pretrain with the same -p and configuration" in message
    # stopped before the transfer: the encoder was not rescaled
    assert all(torch.equal(before[k], v) for k, v in finetune.network.state_dict().items())
    assert json.dumps(finetune.get_semisup_state()["phi"]) == "null"
