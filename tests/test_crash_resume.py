"""A training job killed with SIGKILL (mid-epoch, or in the middle of writing a checkpoint) resumes with
``nnUNetv2_train ... --c`` from its last complete checkpoint, for every trainer of the package: real
``nnUNetv2_train`` processes, killed for real."""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
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
# with SEMISUP_TEST_ALL_KILLS=1 every trainer is killed; by default (CI time) the trainers added last whose resume
# has nothing process-specific are covered by test_exact_resume_in_process only (they passed the kill test too).
# WTAFinetuneTrainer is always killed: its resume (nnUNetv2_train --c without -pretrained_weights) must not
# transfer the pretrained encoder a second time, which only the real command line shows.
ALL_KILLS = os.environ.get("SEMISUP_TEST_ALL_KILLS") == "1"
_ONLY_WITH_ALL_KILLS = pytest.mark.skipif(
    not ALL_KILLS, reason="covered by test_exact_resume_in_process; SEMISUP_TEST_ALL_KILLS=1 kills it too"
)
TRAINERS = [
    "LabeledOnlyTrainer",
    "MeanTeacherTrainer",
    "SECLTrainer",
    "DTMLTrainer",
    "DualSubnetContrastTrainer",
    pytest.param("WTAPretrainTrainer", marks=_ONLY_WITH_ALL_KILLS),
    # -pretrained_weights (fixture wta_pretrained); --c must not transfer (scale by phi) a second time
    "WTAFinetuneTrainer",
    pytest.param("WTAMultiTaskTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("SparseMultiPlane2DTrainer", marks=_ONLY_WITH_ALL_KILLS),
    # the stage (random set / nearest-neighbour fit) follows the restored clock
    pytest.param("SelfTrainingMetaTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("FixMatchTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("UniMatchTrainer", marks=_ONLY_WITH_ALL_KILLS),
    pytest.param("BCPTrainer", marks=_ONLY_WITH_ALL_KILLS),
]
NEW_TRAINERS = [
    "WTAPretrainTrainer",
    "WTAFinetuneTrainer",
    "WTAMultiTaskTrainer",
    "SparseMultiPlane2DTrainer",
    "SelfTrainingMetaTrainer",
    "FixMatchTrainer",
    "UniMatchTrainer",
    "BCPTrainer",
]
# these trainers' processes load data in the main process (nnUNet_n_proc_DA=0), which saves CI time (every
# augmentation worker is a Python start-up); LabeledOnlyTrainer and MeanTeacherTrainer run with workers, so the
# kill of a process group with its workers is tested with them
NO_DA_WORKERS = {"SECLTrainer", "DTMLTrainer", "DualSubnetContrastTrainer", *NEW_TRAINERS}
# trainers that need another dataset than Dataset501_Tiny: (session fixture that builds it, dataset)
DATASETS = {
    "SparseMultiPlane2DTrainer": ("sparse_tiny_dataset", "Dataset520_TinySparse"),
    "SelfTrainingMetaTrainer": ("meta_tiny_dataset", "Dataset522_TinySparseMeta"),
}
# entries of semisup_state that a trainer built from scratch does not have: a resumed run must get them from
# the checkpoint (the ramp-up clock global_step is checked for every trainer)
EXTRA_STATE = {
    "MeanTeacherTrainer": ["teacher"],
    "SECLTrainer": ["projector", "teacher"],
    "DTMLTrainer": ["dist_network"],
    "DualSubnetContrastTrainer": ["subnet_b", "heads"],
    "WTAPretrainTrainer": ["wta_decoders"],
    "WTAFinetuneTrainer": ["phi", "pretrained_from"],
    "WTAMultiTaskTrainer": ["wta_decoders", "gamma"],
    "SparseMultiPlane2DTrainer": [],
    "SelfTrainingMetaTrainer": ["set_generator"],
    "FixMatchTrainer": ["teacher"],
    "UniMatchTrainer": ["teacher"],
    "BCPTrainer": ["teacher"],
}
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


def _train_process(
    run, trainer: str, fold: str, extra_env: dict | None = None, dataset: str = "501", extra: tuple = ()
) -> subprocess.Popen:
    """``nnUNetv2_train`` in its own process group (so the kill also takes its data-augmentation workers)."""
    env = dict(run.env, nnUNet_semisup_schedule=SCHEDULE, **(extra_env or {}))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), dataset, "3d_fullres", fold, "-tr", trainer,
         "-device", "cpu", *extra],
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


def _finish_with_resume(
    run,
    trainer: str,
    folder: Path,
    resumed_from_epoch: int,
    dataset: str = "501",
    extra_env: dict | None = None,
) -> None:
    logs_before = set(folder.glob("training_log_*.txt"))
    run("nnUNetv2_train", dataset, "3d_fullres", FOLD, "-tr", trainer, "-device", "cpu", "--c",
        extra_env={"nnUNet_semisup_schedule": SCHEDULE, **(extra_env or {})})  # fmt: skip
    final = _load(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == EPOCHS
    # the clock continued instead of restarting: EPOCHS * ITERS steps in all, whatever epoch the kill hit
    if _global_step(final) is not None:
        assert _global_step(final) == EPOCHS * ITERS
    (new_log,) = set(folder.glob("training_log_*.txt")) - logs_before
    epochs_run = [int(m) for m in re.findall(r": Epoch (\d+)\s*$", new_log.read_text(), flags=re.MULTILINE)]
    assert epochs_run == list(range(resumed_from_epoch, EPOCHS)), epochs_run
    assert not [p.name for p in folder.iterdir() if ".pth.tmp" in p.name]


def _assert_same(saved, restored, where: str) -> None:
    """``restored`` equals ``saved`` exactly (tensors bit for bit, nested dicts and lists, NaN == NaN)."""
    if torch.is_tensor(saved):
        assert torch.is_tensor(restored) and saved.shape == restored.shape, where
        assert torch.equal(saved.cpu(), restored.cpu()), f"{where} differs from the checkpoint"
    elif isinstance(saved, dict):
        assert isinstance(restored, dict) and saved.keys() == restored.keys(), where
        for key in saved:
            _assert_same(saved[key], restored[key], f"{where}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert isinstance(restored, (list, tuple)) and len(saved) == len(restored), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(saved, float) and math.isnan(saved):
        assert isinstance(restored, float) and math.isnan(restored), where
    else:
        assert saved == restored, f"{where}: {restored!r} != checkpoint's {saved!r}"


def _differs(a, b) -> bool:
    try:
        _assert_same(a, b, "")
    except AssertionError:
        return True
    return False


def _assert_checkpoint_restores_everything(
    run, dataset: str, trainer_name: str, path: Path, monkeypatch, results: Path
) -> None:
    """A trainer built as ``nnUNetv2_train ... --c`` builds it, loading ``path`` as ``--c`` does: network, optimizer
    (momentum, per-group lr), epoch and every entry of ``semisup_state`` come back exactly as saved, and the
    method's extra state (``EXTRA_STATE``) is one a fresh trainer does not have."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network

    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, run.env[key])
    monkeypatch.setenv("nnUNet_results", str(results))  # its log goes there, not into the killed run's folder
    monkeypatch.setenv("nnUNet_semisup_schedule", SCHEDULE)
    saved = _load(path)
    trainer = get_trainer_from_args(
        dataset, "3d_fullres", int(FOLD), trainer_name, device=torch.device("cpu")
    )
    if not isinstance(trainer, SemiSupervisedTrainer):
        return  # LabeledOnlyTrainer: nnU-Net's own checkpoint, nothing of ours to restore
    trainer.initialize()
    fresh = copy.deepcopy(trainer.get_semisup_state())  # state_dicts share storage with the modules
    trainer.load_checkpoint(str(path))  # what --c does (nnU-Net's maybe_load_checkpoint)
    assert trainer.current_epoch == saved["current_epoch"]
    _assert_same(saved["network_weights"], unwrap_network(trainer.network).state_dict(), "network_weights")
    _assert_same(saved["optimizer_state"], trainer.optimizer.state_dict(), "optimizer_state")
    _assert_same(saved["semisup_state"], trainer.get_semisup_state(), "semisup_state")
    for key in ["global_step", *EXTRA_STATE[trainer_name]]:
        assert key in saved["semisup_state"], key
        assert _differs(saved["semisup_state"][key], fresh[key]), f"{key}: a fresh trainer has the same value"
    if trainer_name == "WTAFinetuneTrainer":
        # the frozen encoder stages stay frozen after --c (no gradient, whatever the checkpoint's epoch), and
        # unfreezing still happens on schedule in the resumed run
        frozen, finetuned = trainer.encoder_stage_split()
        assert frozen and finetuned
        assert not any(p.requires_grad for m in frozen for p in m.parameters())
        assert all(p.requires_grad for m in finetuned for p in m.parameters())
        trainer.unfreeze_epoch = trainer.current_epoch
        trainer.on_train_epoch_start()
        assert all(p.requires_grad for m in frozen for p in m.parameters())
    if trainer_name == "WTAMultiTaskTrainer":
        # calibration (25 iterations) continues from the restored sums: one per step so far
        assert trainer.gamma_count == saved["semisup_state"]["global_step"]
    if trainer_name == "SelfTrainingMetaTrainer":
        assert trainer.stage == saved["semisup_state"]["stage"]


@pytest.fixture(scope="module")
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
            "501", "3d_fullres", int(FOLD), "WTAPretrainTrainer", device=torch.device("cpu")
        )
        trainer.initialize()
        trainer.save_checkpoint(str(path))
    return path, _load(path)["network_weights"]


def _assert_finetune_kept_the_transfer(folder: Path, wta_pretrained, phi_before_kill: float) -> None:
    """The resumed fine-tuning did not transfer again: same phi, frozen stages exactly pretrained * phi."""
    path, pretrained = wta_pretrained
    final = _load(folder / "checkpoint_final.pth")
    state = final["semisup_state"]
    assert state["phi"] == phi_before_kill and state["pretrained_from"] == str(path)
    weights = final["network_weights"]
    stages = sorted({int(k.split(".")[2]) for k in weights if k.startswith("encoder.stages.")})
    frozen = [k for k in weights if k.startswith("encoder.stages.") and int(k.split(".")[2]) < stages[-2]]
    assert any(".conv." in k for k in frozen)
    for key in frozen:  # convolutions (also named all_modules.0) scaled by phi, normalization as transferred
        scaled = ".conv." in key or ".all_modules.0." in key
        expected = pretrained[key] * phi_before_kill if scaled else pretrained[key]
        torch.testing.assert_close(weights[key], expected, rtol=0, atol=0)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_sigkill_mid_epoch_resumes_from_last_checkpoint(
    request, tiny_dataset, trainer, monkeypatch, tmp_path
):
    fixture, dataset_name = DATASETS.get(trainer, ("tiny_dataset", "Dataset501_Tiny"))
    run = request.getfixturevalue(fixture)
    dataset = dataset_name[len("Dataset") : len("Dataset") + 3]
    extra = ()
    if trainer == "WTAFinetuneTrainer":
        pretrained = request.getfixturevalue("wta_pretrained")
        extra = ("-pretrained_weights", str(pretrained[0]))
    folder = run.results / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{FOLD}"
    shutil.rmtree(folder, ignore_errors=True)  # a run of another test on this fold would fake the checkpoint
    latest = folder / "checkpoint_latest.pth"
    workers = {"nnUNet_n_proc_DA": "0"} if trainer in NO_DA_WORKERS else {}
    proc = _train_process(run, trainer, FOLD, workers, dataset=dataset, extra=extra)
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
    _assert_checkpoint_restores_everything(run, dataset, trainer, latest, monkeypatch, tmp_path / "results")
    _finish_with_resume(run, trainer, folder, resumed_from_epoch=epoch, dataset=dataset, extra_env=workers)
    if trainer == "WTAFinetuneTrainer":
        _assert_finetune_kept_the_transfer(folder, pretrained, checkpoint["semisup_state"]["phi"])
    if trainer == "SelfTrainingMetaTrainer":  # 9 iterations: stage 1 for the first 4, stage 2 at the end
        assert _load(folder / "checkpoint_final.pth")["semisup_state"]["stage"] == 2


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


def _module_states(trainer) -> dict:
    """Every module of the trainer (network, teachers, heads, ...), its optimizer and its semisup_state."""
    from nnunet_semisup.trainers.base import unwrap_network

    modules = {
        name: unwrap_network(module).state_dict()
        for name, module in vars(trainer).items()
        if isinstance(module, torch.nn.Module) and any(True for _ in module.state_dict())
    }
    return copy.deepcopy(
        {
            "modules": modules,
            "optimizer": trainer.optimizer.state_dict(),
            "semisup": trainer.get_semisup_state(),
        }
    )


@pytest.mark.parametrize("trainer", NEW_TRAINERS)
def test_exact_resume_in_process(request, trainer, monkeypatch, tmp_path):
    """Train two steps, save a checkpoint, build a new trainer and load it as --c does: every state is restored
    (see _assert_checkpoint_restores_everything), and the next step of the resumed trainer is bit for bit the
    next step of the uninterrupted one (same batch): nothing a step depends on was left out of the checkpoint."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    fixture, dataset_name = DATASETS.get(trainer, ("tiny_dataset", "Dataset501_Tiny"))
    run = request.getfixturevalue(fixture)
    dataset = dataset_name[len("Dataset") : len("Dataset") + 3]
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(key, run.env[key])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_semisup_schedule", SCHEDULE)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loaders in this process

    def build():
        return get_trainer_from_args(dataset, "3d_fullres", int(FOLD), trainer, device=torch.device("cpu"))

    torch.manual_seed(0)
    first = build()
    if trainer == "WTAFinetuneTrainer":  # nnUNetv2_train ... -pretrained_weights PATH
        path, _ = request.getfixturevalue("wta_pretrained")
        monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "-pretrained_weights", str(path)])
        first.initialize()
        load_pretrained_weights(first.network, str(path))
    first.on_train_start()
    first.on_train_epoch_start()
    for _ in range(2):
        first.train_step(next(first.dataloader_train))
    checkpoint = tmp_path / "checkpoint_latest.pth"
    first.save_checkpoint(str(checkpoint))

    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "--c"])
    _assert_checkpoint_restores_everything(
        run, dataset, trainer, checkpoint, monkeypatch, tmp_path / "results"
    )
    torch.manual_seed(1)  # other random initial weights: only the checkpoint can make them equal
    resumed = build()
    resumed.load_checkpoint(str(checkpoint))
    resumed.on_train_start()  # as nnUNetv2_train --c: no fresh start (WTA fine-tuning: no second transfer)
    # (no on_train_epoch_start: the checkpoint was taken mid-epoch, with that epoch's learning rate)
    batch = next(first.dataloader_train)
    if first.uses_unlabeled_data:
        unlabeled = first.next_unlabeled_batch()
        first.next_unlabeled_batch = resumed.next_unlabeled_batch = lambda: unlabeled
    # the same random draws for both (strong views, CutMix and copy-paste boxes are drawn in the step)
    torch.manual_seed(2)
    first.train_step(batch)
    torch.manual_seed(2)
    resumed.train_step(batch)
    assert resumed.global_step == first.global_step == 3
    _assert_same(_module_states(first), _module_states(resumed), trainer)
