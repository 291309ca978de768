"""nnU-Net's DDP code path (``-num_gpus N``) for every trainer that adds networks, heads or teachers: two
processes with the gloo backend on CPU (see ``tests/ddp_worker.py`` for what is substituted and why)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import method_package, method_packages

pytestmark = pytest.mark.e2e

WORKER = Path(__file__).with_name("ddp_worker.py")
FOLD = 4  # a fold no other test trains
# trainer -> the dataset it trains on (its session fixture builds it)
DATASETS = {
    "MeanTeacherTrainer": "Dataset501_Tiny",
    "SECLTrainer": "Dataset501_Tiny",
    "DTMLTrainer": "Dataset501_Tiny",
    "DualSubnetContrastTrainer": "Dataset501_Tiny",
    "WTAPretrainTrainer": "Dataset501_Tiny",
    "WTAFinetuneTrainer": "Dataset501_Tiny",  # -pretrained_weights: WTAPretrainTrainer's DDP run just before
    "WTAMultiTaskTrainer": "Dataset501_Tiny",
    "SparseMultiPlane2DTrainer": "Dataset520_TinySparse",
    "SelfTrainingMetaTrainer": "Dataset522_TinySparseMeta",
    "FixMatchTrainer": "Dataset501_Tiny",
    "UniMatchTrainer": "Dataset501_Tiny",  # its feature-perturbation hook inside nnU-Net's DDP-wrapped network
    "BCPTrainer": "Dataset501_Tiny",
}
TRAINERS = list(DATASETS)
# trainers with networks, heads or teachers besides nnU-Net's self.network
EXTRA_MODULES = [
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
    "WTAPretrainTrainer",
    "WTAMultiTaskTrainer",
    "FixMatchTrainer",
    "UniMatchTrainer",
    "BCPTrainer",
]
UNLABELED = EXTRA_MODULES  # the trainers that draw unlabeled batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _folder(run, trainer: str) -> Path:
    return run.results / DATASETS[trainer] / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{FOLD}"


def _spec(run, trainer: str) -> str:
    """The worker's ``NAME@DATASET[@PRETRAINED]``."""
    spec = f"{trainer}@{DATASETS[trainer][len('Dataset') : len('Dataset') + 3]}"
    if trainer == "WTAFinetuneTrainer":
        spec += f"@{_folder(run, 'WTAPretrainTrainer') / 'checkpoint_final.pth'}"
    return spec


@pytest.fixture(scope="module")
def ddp_results(tiny_dataset, meta_tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(
        tiny_dataset.env,
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        nnUNet_semisup_schedule="epochs=2,iters=2,val_iters=1",
        nnUNet_n_proc_DA="0",  # the two ranks already use both cores
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(out),
                str(FOLD),
                ",".join(_spec(tiny_dataset, t) for t in TRAINERS),
            ],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tiny_dataset.root,
        )
        for rank in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{log[-6000:]}"
    return out


def _load(out: Path, trainer: str, rank: int) -> dict:
    return torch.load(out / f"{trainer}_rank{rank}.pt", weights_only=False)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_network_head_and_teacher_is_identical_on_both_ranks(ddp_results, trainer):
    # the ranks started from different random weights and trained on different batches: only a working DDP
    # wrap (broadcast at wrap time, gradient averaging) and teachers made after the wrap keep them equal
    r0, r1 = _load(ddp_results, trainer, 0), _load(ddp_results, trainer, 1)
    assert r0["modules"].keys() == r1["modules"].keys()
    assert "network" in r0["modules"], sorted(r0["modules"])
    if trainer in EXTRA_MODULES:
        assert len(r0["modules"]) >= 2, sorted(r0["modules"])
    for attribute, state in r0["modules"].items():
        other = r1["modules"][attribute]
        assert state.keys() == other.keys(), attribute
        for key, value in state.items():
            assert torch.equal(value, other[key]), f"{trainer}.{attribute}.{key} differs between ranks"
    assert r0["global_step"] == r1["global_step"] == 4


@pytest.mark.parametrize("trainer", UNLABELED)
def test_ranks_sample_disjoint_unlabeled_cases(ddp_results, trainer, tiny_dataset):
    r0, r1 = _load(ddp_results, trainer, 0), _load(ddp_results, trainer, 1)
    assert r0["unlabeled_case_ids"] and r1["unlabeled_case_ids"]
    assert not set(r0["unlabeled_case_ids"]) & set(r1["unlabeled_case_ids"])
    all_ids = {
        p.name[: -len("_0000.nii.gz")]
        for p in (tiny_dataset.raw / "Dataset501_Tiny" / "imagesUnlabeled").iterdir()
    }
    assert set(r0["unlabeled_case_ids"]) | set(r1["unlabeled_case_ids"]) == all_ids


@pytest.mark.parametrize("trainer", TRAINERS)
def test_only_rank_zero_writes_checkpoints(ddp_results, trainer, tiny_dataset):
    r0, r1 = _load(ddp_results, trainer, 0), _load(ddp_results, trainer, 1)
    assert "checkpoint_final.pth" in r0["checkpoint_writes"]
    assert r1["checkpoint_writes"] == []
    final = _folder(tiny_dataset, trainer) / "checkpoint_final.pth"
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["semisup_state"]["global_step"] == 4
    assert not [n for n in os.listdir(final.parent) if ".pth.tmp" in n]


def test_finetuning_got_the_pretrained_encoder_on_both_ranks(ddp_results, tiny_dataset):
    # both ranks loaded the DDP pretraining's checkpoint and scaled it by the same phi before training: the
    # frozen encoder stages are exactly the pretrained ones times phi on both ranks
    pretrained_path = _folder(tiny_dataset, "WTAPretrainTrainer") / "checkpoint_final.pth"
    pretrained = torch.load(pretrained_path, map_location="cpu", weights_only=False)["network_weights"]
    final = torch.load(
        _folder(tiny_dataset, "WTAFinetuneTrainer") / "checkpoint_final.pth",
        map_location="cpu",
        weights_only=False,
    )
    phi = final["semisup_state"]["phi"]
    assert isinstance(phi, float) and final["semisup_state"]["pretrained_from"] == str(pretrained_path)
    frozen = [k for k in pretrained if k.startswith("encoder.stages.0.") and ".conv." in k]
    assert frozen
    for rank in range(2):
        weights = _load(ddp_results, "WTAFinetuneTrainer", rank)["modules"]["network"]
        for key in frozen:
            torch.testing.assert_close(weights[key], pretrained[key] * phi)


def test_every_method_package_trains_under_ddp():
    assert method_packages() <= {method_package(n) for n in TRAINERS}
