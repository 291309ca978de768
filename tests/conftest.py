"""Shared fixtures: a tiny nnU-Net dataset planned once per session, and a runner for the real console
scripts (``nnUNetv2_*`` and ``nnunet-semisup``) of the virtualenv that runs the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import RESUME_FOLD

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd_hippocampus"
BIN = Path(sys.executable).parent
TINY_DATASET_ID = 501
TINY_DATASET_NAME = "Dataset501_Tiny"


@dataclass
class ConsoleRunner:
    """Runs console scripts with nnU-Net's folders pointed into a temporary directory."""

    env: dict[str, str]
    root: Path

    def __call__(self, *args: str, timeout: int = 600, check: bool = True, extra_env: dict | None = None):
        env = dict(self.env, **(extra_env or {}))
        exe = BIN / args[0]
        assert exe.exists(), f"console script {exe} not installed (run the README's test command)"
        proc = subprocess.run(
            [str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited with {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-4000:]}"
                f"\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
            )
        return proc

    @property
    def raw(self) -> Path:
        return Path(self.env["nnUNet_raw"])

    @property
    def preprocessed(self) -> Path:
        return Path(self.env["nnUNet_preprocessed"])

    @property
    def results(self) -> Path:
        return Path(self.env["nnUNet_results"])

    def train(
        self, trainer: str, fold: str = "0", schedule: str = "epochs=1,iters=2,val_iters=1", *extra: str
    ):
        """``nnUNetv2_train`` on the tiny dataset on CPU with a shortened schedule."""
        return self(
            "nnUNetv2_train",
            str(TINY_DATASET_ID),
            "3d_fullres",
            fold,
            "-tr",
            trainer,
            "-device",
            "cpu",
            *extra,
            extra_env={"nnUNet_semisup_schedule": schedule},
        )

    def predict(self, trainer: str, out_name: str, fold: str = "0") -> Path:
        """``nnUNetv2_predict`` of the tiny dataset's test images on CPU (no mirroring, one worker each);
        returns the output folder, after checking there is one segmentation per test label."""
        pred = self.root / out_name
        self(
            "nnUNetv2_predict", "-i", str(self.raw / TINY_DATASET_NAME / "imagesTs"), "-o", str(pred),
            "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-f", fold, "-device", "cpu",
            "--disable_tta", "-npp", "1", "-nps", "1",
        )  # fmt: skip
        labels = sorted(p.name for p in (self.raw / TINY_DATASET_NAME / "labelsTs").glob("*.nii.gz"))
        assert sorted(p.name for p in pred.glob("*.nii.gz")) == labels
        return pred

    def build_trainer(self, trainer: str, fold: int, monkeypatch, schedule: str | None = None):
        """``trainer`` built in this process the way ``nnUNetv2_train`` builds it (CPU), with nnU-Net's folders
        (and the schedule variable, if given) set through ``monkeypatch``."""
        import torch
        from nnunetv2.run.run_training import get_trainer_from_args

        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            monkeypatch.setenv(key, self.env[key])
        if schedule is not None:
            monkeypatch.setenv("nnUNet_semisup_schedule", schedule)
        return get_trainer_from_args(
            str(TINY_DATASET_ID), "3d_fullres", fold, trainer, device=torch.device("cpu")
        )

    def output_folder(self, trainer: str, fold: str = "0") -> Path:
        return self.results / TINY_DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def _base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    # nnUNet_extTrainer deliberately unset: the installed .pth must register our trainers by itself
    env.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_n_proc_DA="1",
        nnUNet_compile="f",
        nnUNet_def_n_proc="1",  # nnU-Net spawns 8 export workers by default: minutes of imports on 2 cores
        PYTHONUNBUFFERED="1",
    )
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> ConsoleRunner:
    """Dataset501_Tiny: 5 labeled, 3 unlabeled, 2 test synthetic 32^3 cases, built with
    ``nnunet-semisup make-benchmark`` and planned/preprocessed with the real ``nnUNetv2_plan_and_preprocess``."""
    from nnunet_semisup.data.synthetic import write_synthetic_cases

    root = tmp_path_factory.mktemp("nnunet")
    runner = ConsoleRunner(_base_env(root), root)
    source = root / "source"
    write_synthetic_cases(str(source), 10, shape=(32, 32, 32), seed=3)
    runner(
        "nnunet-semisup",
        "make-benchmark",
        "--images",
        str(source / "images"),
        "--labels",
        str(source / "labels"),
        "--labeled",
        "5",
        "--unlabeled",
        "3",
        "--test",
        "2",
        "--out-id",
        str(TINY_DATASET_ID),
        "--name",
        "Tiny",
    )
    runner("nnUNetv2_plan_and_preprocess", "-d", str(TINY_DATASET_ID), "-c", "3d_fullres", "-np", "1")
    return runner


@pytest.fixture
def mean_teacher_in_process(tiny_dataset, monkeypatch):
    """An initialized MeanTeacherTrainer (fold 3 of the tiny dataset) built as ``nnUNetv2_train`` builds it,
    whose unlabeled batches are fixed random tensors (no background workers)."""
    import torch

    trainer = tiny_dataset.build_trainer("MeanTeacherTrainer", 3, monkeypatch)
    trainer.initialize()
    trainer.on_fresh_start()
    unlabeled = torch.randn(2, 1, *trainer.configuration_manager.patch_size)
    trainer.next_unlabeled_batch = lambda: unlabeled
    return trainer


@pytest.fixture
def random_batch():
    """``random_batch(trainer)``: a seeded labeled batch shaped like nnU-Net's for ``trainer`` (2 patches;
    targets with values 0-2 at every deep-supervision scale)."""
    import torch

    def make(trainer) -> dict:
        patch = list(trainer.configuration_manager.patch_size)
        generator = torch.Generator().manual_seed(0)
        targets = [
            torch.randint(
                0, 3, (2, 1, *[round(p * s) for p, s in zip(patch, scale)]), generator=generator
            ).float()
            for scale in trainer._get_deep_supervision_scales()
        ]
        return {"data": torch.randn(2, 1, *patch, generator=generator), "target": targets}

    return make


SPARSE_TINY_ID = 520
SPARSE_TINY_NAME = "Dataset520_TinySparse"


@pytest.fixture(scope="session")
def sparse_tiny_dataset(tiny_dataset) -> ConsoleRunner:
    """Dataset520_TinySparse: Dataset501_Tiny's labels kept on an equal-interval plan of one slice in 8 per plane
    (4 xy, 4 xz, 4 yz slices of each 32^3 case), the rest nnU-Net's ignore label 3; made with ``nnunet-semisup
    select-slices`` + ``sparsify`` and planned/preprocessed with ``nnUNetv2_plan_and_preprocess``. The plan is
    ``root/plan_eia_s8.json``."""
    runner = tiny_dataset
    plan = runner.root / "plan_eia_s8.json"
    runner("nnunet-semisup", "select-slices", "-d", str(TINY_DATASET_ID), "--budget", "8", "--strategy", "eia",
           "-o", str(plan), "--no-progress")  # fmt: skip
    runner("nnunet-semisup", "sparsify", "-d", str(TINY_DATASET_ID), "--plan", str(plan), "--out-id",
           str(SPARSE_TINY_ID), "--name", "TinySparse", "--no-progress")  # fmt: skip
    runner("nnUNetv2_plan_and_preprocess", "-d", str(SPARSE_TINY_ID), "-c", "3d_fullres", "-np", "1")
    return runner


META_TINY_ID = 522
META_TINY_NAME = "Dataset522_TinySparseMeta"


@pytest.fixture(scope="session")
def meta_tiny_dataset(sparse_tiny_dataset) -> ConsoleRunner:
    """Dataset522_TinySparseMeta, the meta dataset of the annotation-sparsification cascade on Dataset520: the 2D
    (``SparseMultiPlane2DTrainer``) and 3D (``LabeledOnlyTrainer``) base models trained on fold 0 (1 epoch of 2
    iterations), ``nnunet-semisup pseudo-labels`` into ``root/pseudo`` (also writing Dataset521_TinySparseFused),
    and ``nnUNetv2_preprocess`` of the meta dataset with the plans ``pseudo-labels`` wrote."""
    runner = sparse_tiny_dataset
    schedule = {"nnUNet_semisup_schedule": "epochs=1,iters=2,val_iters=1"}
    for trainer in ("SparseMultiPlane2DTrainer", "LabeledOnlyTrainer"):
        runner("nnUNetv2_train", str(SPARSE_TINY_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu",
               extra_env=schedule)  # fmt: skip
    runner("nnunet-semisup", "pseudo-labels", "-d", str(SPARSE_TINY_ID), "-f", "0", "-o",
           str(runner.root / "pseudo"), "-device", "cpu", "--disable_tta", "--fused-id", "521", "--meta-id",
           str(META_TINY_ID), "--no-progress")  # fmt: skip
    runner("nnUNetv2_preprocess", "-d", str(META_TINY_ID), "-plans_name", "nnUNetPlans", "-c", "3d_fullres",
           "-np", "1")  # fmt: skip
    return runner


@pytest.fixture(scope="session")
def wta_pretrained(tiny_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """A WTAPretrainTrainer checkpoint (built in this process, initial weights: what matters here is that they
    are not the fine-tuning's own initialization), and its network weights."""
    from nnunetv2.run.run_training import get_trainer_from_args

    path = tmp_path_factory.mktemp("wta_pretrained") / "checkpoint_final.pth"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("nnUNet_raw", "nnUNet_preprocessed"):
            mp.setenv(key, tiny_dataset.env[key])
        mp.setenv("nnUNet_results", str(path.parent / "results"))
        torch.manual_seed(7)
        trainer = get_trainer_from_args(
            "501", "3d_fullres", int(RESUME_FOLD), "WTAPretrainTrainer", device=torch.device("cpu")
        )
        trainer.initialize()
        trainer.save_checkpoint(str(path))
    return path, torch.load(path, map_location="cpu", weights_only=False)["network_weights"]


TINY_NETWORK_PLANS = "nnUNetPlansTinyNet"


TINY_ARCH_STAGES = {"n_stages": 3, "features_per_stage": [4, 8, 16], "n_conv_per_stage": [1, 1, 1],
                    "n_conv_per_stage_decoder": [1, 1]}  # fmt: skip


def _tiny_configuration(config: dict, dims: int, identifier: str, patch: int = 16) -> dict:
    """``config`` shrunk to a ``patch``^dims patch and a 3-stage U-Net of 4, 8, 16 features."""
    config = json.loads(json.dumps(config))
    config["data_identifier"] = identifier
    config["patch_size"] = [patch] * dims
    config["architecture"]["arch_kwargs"].update(
        TINY_ARCH_STAGES,
        kernel_sizes=[[3] * dims] * 3,
        strides=[[1] * dims, [2] * dims, [2] * dims],
    )
    return config


TINY_RESENC_PLANS = "nnUNetResEncPlansTinyNet"


def _residual_encoder(config: dict) -> dict:
    """A tiny configuration with nnU-Net's ResEnc presets' network class, ``ResidualEncoderUNet`` (1, 2, 2 residual
    blocks per stage, one convolution per decoder stage, as the presets)."""
    arch = config["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = arch["arch_kwargs"]
    kwargs.pop("n_conv_per_stage", None)
    kwargs.update(n_blocks_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])
    return config


def write_tiny_network_plans(runner: ConsoleRunner, dataset_name: str, residual_encoder: bool = False) -> str:
    """Plans ``nnUNetPlansTinyNet`` for a planned dataset: its ``nnUNetPlans`` with every configuration shrunk to
    a 16^3 (16^2 for ``2d``) patch and a 3-stage U-Net of 4, 8, 16 features (a few milliseconds per step, also under
    bfloat16 autocast on CPU), under their own data identifiers (the preprocessed labeled cases of 3d_fullres, or
    of 2d for a 2D dataset, are copied there; other configurations are preprocessed on demand by
    :func:`preprocess_tiny_network_configuration`; unlabeled cases are preprocessed on demand, so the default
    plans' folders are never rewritten). A 3D dataset also gets a ``2d`` configuration and nnU-Net's low-resolution
    pair ``3d_lowres`` (spacing x2, ``next_stage`` ``3d_cascade_fullres``) + ``3d_cascade_fullres``, which the tiny
    images are too small to get from the planner. Returns the plans identifier; idempotent."""
    import shutil

    plans_name = TINY_RESENC_PLANS if residual_encoder else TINY_NETWORK_PLANS
    base = runner.preprocessed / dataset_name
    target = base / f"{plans_name}.json"
    if target.is_file():
        return plans_name
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["plans_name"] = plans_name
    configs = plans["configurations"]
    copied = "3d_fullres" if "3d_fullres" in configs else "2d"
    source_identifier = configs[copied]["data_identifier"]
    for name in [c for c in ("2d", "3d_fullres") if c in configs]:
        configs[name] = _tiny_configuration(configs[name], 2 if name == "2d" else 3, f"{plans_name}_{name}")
        if residual_encoder:
            configs[name] = _residual_encoder(configs[name])
    if "3d_fullres" in configs and "3d_lowres" not in configs:
        lowres = _tiny_configuration(configs["3d_fullres"], 3, f"{plans_name}_3d_lowres", patch=16)
        lowres["spacing"] = [2 * s for s in configs["3d_fullres"]["spacing"]]
        lowres["median_image_size_in_voxels"] = [
            round(m / 2) for m in configs["3d_fullres"]["median_image_size_in_voxels"]
        ]
        if residual_encoder:
            lowres = _residual_encoder(lowres)
        lowres["batch_dice"] = False
        lowres["next_stage"] = "3d_cascade_fullres"
        configs["3d_lowres"] = lowres
        configs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    shutil.copytree(base / source_identifier, base / configs[copied]["data_identifier"], dirs_exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(plans, indent=2))
    tmp.replace(target)
    return plans_name


def preprocess_tiny_network_configuration(
    runner: ConsoleRunner, dataset_name: str, configuration: str, plans_name: str = TINY_NETWORK_PLANS
) -> None:
    """nnU-Net's ``nnUNetv2_preprocess`` of the labeled cases for ``configuration`` of the tiny-network plans
    (once; :func:`write_tiny_network_plans` first)."""
    plans = json.loads((runner.preprocessed / dataset_name / f"{plans_name}.json").read_text())
    folder = runner.preprocessed / dataset_name / plans["configurations"][configuration]["data_identifier"]
    if folder.is_dir() and any(folder.glob("*.b2nd")):
        return
    dataset_id = dataset_name[len("Dataset") : len("Dataset") + 3]
    runner("nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", plans_name, "-c", configuration,
           "-np", "1")  # fmt: skip


def dataset_of_trainer(trainer_class: type) -> tuple[str, str]:
    """(session fixture that builds the dataset, dataset name) a trainer class trains on in the tests: the sparse
    and meta datasets for the annotation-sparsification trainers, Dataset501_Tiny for every other one."""
    from nnunet_semisup.trainers import SelfTrainingMetaTrainer, SparseMultiPlane2DTrainer

    if issubclass(trainer_class, SparseMultiPlane2DTrainer):
        return "sparse_tiny_dataset", SPARSE_TINY_NAME
    if issubclass(trainer_class, SelfTrainingMetaTrainer):
        return "meta_tiny_dataset", META_TINY_NAME
    return "tiny_dataset", TINY_DATASET_NAME


@pytest.fixture
def tiny_network_trainer(request, monkeypatch, tmp_path):
    """``build(name, configuration="3d_fullres", dataset=None, residual_encoder=False)``: trainer ``name`` of ``nnunet_semisup.trainers``
    built in this process as ``nnUNetv2_train`` builds it (CPU, fold 0, the tiny-network plans of its dataset,
    results under tmp_path, loaders in this process, schedule ``epochs=1,iters=2,val_iters=1``), not yet
    initialized. ``dataset``: (session fixture, dataset name) instead of :func:`dataset_of_trainer`'s; configurations
    other than 3d_fullres are preprocessed on first use; ``residual_encoder``: the ResEnc presets' network class
    (:data:`TINY_RESENC_PLANS`). WTA fine-tuning trainers get ``-pretrained_weights`` from
    a WTAPretrainTrainer checkpoint of the same plans and configuration, as in the documented workflow (``build``
    then initializes them and loads the weights)."""
    import torch
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    import nnunet_semisup.trainers as trainers

    def build(
        name: str,
        configuration: str = "3d_fullres",
        dataset: tuple[str, str] | None = None,
        residual_encoder: bool = False,
    ):
        fixture, dataset_name = dataset or dataset_of_trainer(getattr(trainers, name))
        runner = request.getfixturevalue(fixture)
        plans = write_tiny_network_plans(runner, dataset_name, residual_encoder)
        for key in ("nnUNet_raw", "nnUNet_preprocessed"):
            monkeypatch.setenv(key, runner.env[key])
        monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
        monkeypatch.setenv("nnUNet_n_proc_DA", "0")
        monkeypatch.setenv("nnUNet_semisup_schedule", "epochs=1,iters=2,val_iters=1")
        dataset_id = dataset_name[len("Dataset") : len("Dataset") + 3]
        trainer = get_trainer_from_args(dataset_id, configuration, 0, name, plans, device=torch.device("cpu"))
        if configuration != "3d_fullres":  # after construction, which refuses what a trainer cannot train on
            preprocess_tiny_network_configuration(runner, dataset_name, configuration, plans)
        if isinstance(trainer, trainers.WTAFinetuneTrainer):
            pretrained = tmp_path / f"wta_pretrained_{plans}_{configuration}.pth"
            if not pretrained.is_file():
                torch.manual_seed(7)  # other weights than the fine-tuning's own initialization
                pretraining = get_trainer_from_args(
                    dataset_id, configuration, 0, "WTAPretrainTrainer", plans, device=torch.device("cpu")
                )
                pretraining.initialize()
                pretraining.save_checkpoint(str(pretrained))
            trainer.initialize()
            load_pretrained_weights(trainer.network, str(pretrained), verbose=False)
        return trainer

    return build


@pytest.fixture(scope="session")
def tiny_dataset_tiny_network(tiny_dataset) -> tuple[ConsoleRunner, str]:
    """Dataset501_Tiny with its tiny-network plans (:func:`write_tiny_network_plans`): (runner, plans identifier)."""
    return tiny_dataset, write_tiny_network_plans(tiny_dataset, TINY_DATASET_NAME)


TINY_2D_ID = 530
TINY_2D_NAME = "Dataset530_Tiny2D"


@pytest.fixture(scope="session")
def tiny_2d_dataset(tmp_path_factory) -> ConsoleRunner:
    """Dataset530_Tiny2D, a native 2D dataset: 6 labeled and 3 unlabeled 32x32 grey ``.png`` images (nnU-Net's
    ``NaturalImage2DIO``; middle slices of the synthetic cases, labels 0-2), planned and preprocessed with
    ``nnUNetv2_plan_and_preprocess -c 2d``."""
    import numpy as np
    from PIL import Image

    from nnunet_semisup.data.synthetic import _make_case

    root = tmp_path_factory.mktemp("nnunet2d")
    runner = ConsoleRunner(_base_env(root), root)
    raw = runner.raw / TINY_2D_NAME
    for folder in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        (raw / folder).mkdir(parents=True)
    rng = np.random.default_rng(11)
    for i in range(9):
        image, label = _make_case(rng, (32, 32, 32))
        image, label = image[16], label[16]
        grey = np.clip((image - image.min()) / (np.ptp(image) + 1e-6) * 255, 0, 255).astype(np.uint8)
        folder = "imagesTr" if i < 6 else "imagesUnlabeled"
        Image.fromarray(grey).save(raw / folder / f"case{i:02d}_0000.png")
        if i < 6:
            Image.fromarray(label.astype(np.uint8)).save(raw / "labelsTr" / f"case{i:02d}.png")
    dataset = {
        "channel_names": {"0": "grey"},
        "labels": {"background": 0, "ellipse": 1, "blob": 2},
        "numTraining": 6,
        "file_ending": ".png",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    runner("nnUNetv2_plan_and_preprocess", "-d", str(TINY_2D_ID), "-c", "2d", "-np", "1")
    return runner
