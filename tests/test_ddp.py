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

pytestmark = pytest.mark.e2e

WORKER = Path(__file__).with_name("ddp_worker.py")
FOLD = 4  # a fold no other test trains
TRAINERS = ["MeanTeacherTrainer", "SECLTrainer", "DTMLTrainer", "DualSubnetContrastTrainer"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tiny_dataset, tmp_path_factory) -> Path:
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
            [sys.executable, str(WORKER), str(out), str(FOLD), ",".join(TRAINERS)],
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
    assert "network" in r0["modules"] and len(r0["modules"]) >= 2, sorted(r0["modules"])
    for attribute, state in r0["modules"].items():
        other = r1["modules"][attribute]
        assert state.keys() == other.keys(), attribute
        for key, value in state.items():
            assert torch.equal(value, other[key]), f"{trainer}.{attribute}.{key} differs between ranks"
    assert r0["global_step"] == r1["global_step"] == 4


@pytest.mark.parametrize("trainer", TRAINERS)
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
    final = tiny_dataset.output_folder(trainer, str(FOLD)) / "checkpoint_final.pth"
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    assert checkpoint["semisup_state"]["global_step"] == 4
    assert not [n for n in os.listdir(final.parent) if ".pth.tmp" in n]
