"""A training job killed with SIGKILL (mid-epoch, or in the middle of writing a checkpoint) resumes with
``nnUNetv2_train ... --c`` from its last complete checkpoint, for every trainer of the package: real
``nnUNetv2_train`` processes, killed for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

FOLD = "3"  # a fold no other test trains through the console scripts
EPOCHS, ITERS = 3, 3
SCHEDULE = f"epochs={EPOCHS},iters={ITERS},val_iters=1,save_every=1"
TRAINERS = [
    "LabeledOnlyTrainer",
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
]
# injected into the training process through PYTHONPATH: hang between writing a checkpoint and renaming it
SITECUSTOMIZE = """
import os, time
_marker = os.environ.get("SEMISUP_TEST_HANG_BEFORE_RENAME")
if _marker:
    _replace = os.replace
    def _hanging_replace(src, dst, *args, **kwargs):
        # the new checkpoint is completely written to its temporary file; hang before it replaces the old one
        if os.path.basename(str(dst)) == "checkpoint_latest.pth" and os.path.exists(dst):
            open(_marker, "w").close()
            time.sleep(3600)
        return _replace(src, dst, *args, **kwargs)
    os.replace = _hanging_replace
"""


def _train_process(run, trainer: str, fold: str, extra_env: dict | None = None) -> subprocess.Popen:
    """``nnUNetv2_train`` in its own process group (so the kill also takes its data-augmentation workers)."""
    env = dict(run.env, nnUNet_semisup_schedule=SCHEDULE, **(extra_env or {}))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), "501", "3d_fullres", fold, "-tr", trainer,
         "-device", "cpu"],
        env=env, cwd=run.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data-augmentation workers
    proc.wait(timeout=60)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}")
        if time.time() > deadline:
            _kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _global_step(checkpoint: dict) -> int | None:
    state = checkpoint.get("semisup_state")
    return None if state is None else state["global_step"]


def _finish_with_resume(run, trainer: str, folder: Path, resumed_from_epoch: int) -> None:
    logs_before = set(folder.glob("training_log_*.txt"))
    run.train(trainer, FOLD, SCHEDULE, "--c")
    final = _load(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS
    # the clock continued instead of restarting: EPOCHS * ITERS steps in all, whatever epoch the kill hit
    if _global_step(final) is not None:
        assert _global_step(final) == EPOCHS * ITERS
    (new_log,) = set(folder.glob("training_log_*.txt")) - logs_before
    epochs_run = [int(m) for m in re.findall(r": Epoch (\d+)\s*$", new_log.read_text(), flags=re.MULTILINE)]
    assert epochs_run == list(range(resumed_from_epoch, EPOCHS)), epochs_run
    assert not [p.name for p in folder.iterdir() if ".pth.tmp" in p.name]


@pytest.mark.parametrize("trainer", TRAINERS)
def test_sigkill_mid_epoch_resumes_from_last_checkpoint(tiny_dataset, trainer):
    run = tiny_dataset
    folder = run.output_folder(trainer, FOLD)
    latest = folder / "checkpoint_latest.pth"
    proc = _train_process(run, trainer, FOLD)
    # the first checkpoint_latest is written after epoch 0; kill while epoch 1 trains
    _wait_for(latest.is_file, proc, "the first checkpoint")
    _wait_for(
        lambda: any("Epoch 1" in p.read_text() for p in folder.glob("training_log_*.txt")), proc, "epoch 1"
    )
    _kill(proc)
    assert not (folder / "checkpoint_final.pth").exists()

    checkpoint = _load(latest)  # complete and readable, whatever the kill interrupted
    epoch = checkpoint["current_epoch"]
    assert epoch in range(1, EPOCHS), epoch
    if trainer != "LabeledOnlyTrainer":
        assert _global_step(checkpoint) == epoch * ITERS
    _finish_with_resume(run, trainer, folder, resumed_from_epoch=epoch)


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tiny_dataset, tmp_path):
    run = tiny_dataset
    trainer = "MeanTeacherTrainer"
    folder = run.output_folder(trainer, "2")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "hanging"
    proc = _train_process(
        run, trainer, "2", {"PYTHONPATH": str(hooks), "SEMISUP_TEST_HANG_BEFORE_RENAME": str(marker)}
    )
    # epoch 0's checkpoint_latest exists; epoch 1's is fully written to a temporary file when the kill comes
    _wait_for(marker.exists, proc, "the second checkpoint write")
    _kill(proc)
    leftovers = [p for p in folder.iterdir() if ".pth.tmp" in p.name]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0

    checkpoint = _load(folder / "checkpoint_latest.pth")
    assert checkpoint["current_epoch"] == 1 and _global_step(checkpoint) == ITERS
    logs_before = set(folder.glob("training_log_*.txt"))
    run.train(trainer, "2", SCHEDULE, "--c")
    final = _load(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS and _global_step(final) == EPOCHS * ITERS
    assert not leftovers[0].exists(), "the killed write's temporary file was not cleaned up"
    (new_log,) = set(folder.glob("training_log_*.txt")) - logs_before
    assert "unfinished checkpoint write" in new_log.read_text()
