"""Per-iteration training time and peak memory of trainers relative to the first one (nnU-Net's own), on the
same plans and the same fixed batches.

Every trainer is built in-process exactly as ``nnUNetv2_train`` builds it, then ``train_step`` is timed on one
fixed labeled batch (and one fixed unlabeled batch for semi-supervised trainers), so data loading and
augmentation are not part of the measurement. Trainers are interleaved: each repetition times ``--iters``
steps of every trainer in turn, so a slow phase of a shared machine hits all of them alike. Reported: median
seconds per iteration over the repetitions with min-max, and the median of the per-repetition ratios to the
first trainer; on CPU also process CPU seconds per iteration, which a busy shared machine disturbs less than
wall-clock time (use ``--threads 1`` there so idle threads do not spin on the count). With ``--memory`` each trainer also runs alone in a fresh process for its peak memory
(Linux's resident-set high-water mark on CPU, reset after set-up; ``torch.cuda.max_memory_allocated`` on
CUDA).

Example (a planned dataset, e.g. made by ``nnunet-semisup make-benchmark`` + ``nnUNetv2_plan_and_preprocess``)::

    nnUNet_compile=f python benchmarks/overhead.py -d 511 -c 3d_fullres --device cpu \\
        --trainers nnUNetTrainer,SECLTrainer,SECLTrainer_RACS --reps 7 --iters 3 --memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# fixed batches come from single-threaded loaders; no background workers competing for the cores
os.environ.setdefault("nnUNet_n_proc_DA", "0")

import torch
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semisup.trainers.base import SemiSupervisedTrainer

# Forward/backward passes per iteration relative to nnUNetTrainer (forward = 1, backward = 2 units, so its
# labeled batch B costs 3B): the floor a method cannot go below, printed next to the measured ratio.
EXPECTED_FLOOR = {
    "nnUNetTrainer": 1.0,
    "LabeledOnlyTrainer": 1.0,
    "MeanTeacherTrainer": 8 / 3,  # student fwd+bwd on labeled+unlabeled (2B) + teacher fwd on 2B
    "MeanTeacherTrainer_PredictTeacher": 8 / 3,
    "DTMLTrainer": 4.0,  # M_s and M_d fwd+bwd on 2B
    "DTMLTrainer_LabeledOnly": 2.0,  # M_s and M_d fwd+bwd on B
    # subnets A and B fwd+bwd on labeled + unlabeled (2B each); heads and losses on a bounded voxel sample
    "DualSubnetContrastTrainer": 4.0,
    "DualSubnetContrastTrainer_NoReg": 4.0,
    "DualSubnetContrastTrainer_NoProto": 4.0,
    "DualSubnetContrastTrainer_PrintedLambda": 4.0,
    "DualSubnetContrastTrainer_RisingT": 4.0,
    "DualSubnetContrastTrainer_Drop80": 4.0,
    "DualSubnetContrastTrainer_RampU": 4.0,
    "DualSubnetContrastTrainer_GlobalEntropy": 4.0,
    "DualSubnetContrastTrainer_CodeObjective": 2.0,  # A and B fwd+bwd on the labeled batch B only
    # WTA: encoder stages + one transposed conv per level on labeled+unlabeled (2B), no segmentation decoder;
    # the encoder is roughly half of the U-Net's work, so about half of a fwd+bwd on 2B
    "WTAPretrainTrainer": 1.0,
    # WTAFinetuneTrainer: no floor; frozen encoder stages need no weight gradients, so it is cheaper than
    # nnUNetTrainer by an amount that depends on how many stages are frozen
    # the network on B + the first two encoder stages and their decoders on B_u = B
    "WTAMultiTaskTrainer": 4 / 3,
    # SelfTrainingMetaTrainer(_Stage1Only): no floor; a second encoder (for A(Y^)) but no deep supervision, so
    # its cost relative to nnUNetTrainer depends on how the encoder and the deep-supervision heads split the work
    # SparseMultiPlane2DTrainer trains a 2D U-Net on 16 slices per iteration: not a multiple of the 3D step
    # FixMatch: student fwd+bwd on labeled + one strong view (2B) + teacher (or no-grad student) fwd on B_u = B
    "FixMatchTrainer": 7 / 3,
    "FixMatchTrainer_SelfTeacher": 7 / 3,
    "FixMatchTrainer_NoCutMix": 7 / 3,
    "FixMatchTrainer_Threshold0": 7 / 3,
    "FixMatchTrainer_ConfidentDice": 7 / 3,
    "FixMatchTrainer_RampUp": 7 / 3,
    # UniMatch: student fwd+bwd on labeled + two strong views + the feature-perturbed weak view (4B) + teacher on B
    "UniMatchTrainer": 13 / 3,
    "UniMatchTrainer_NoFP": 10 / 3,  # labeled + two strong views (3B) + teacher on B
    # BCP: student fwd+bwd on B mixed patches (half X_in, half X_out) + teacher fwd on B_u = B. BCPTrainer's
    # first 12 % of iterations (the ones a benchmark from iteration 0 times) are the pre-training stage:
    # nnU-Net's step on copy-pasted labeled patches, floor 1
    "BCPTrainer": 1.0,
    "BCPTrainer_NoPretrain": 4 / 3,
}


def build_trainer(name: str, args: argparse.Namespace):
    trainer = get_trainer_from_args(
        args.dataset, args.configuration, args.fold, name, args.plans, device=torch.device(args.device)
    )
    trainer.initialize()
    trainer.network.train()
    return trainer


def _has_own_loader(trainer) -> bool:
    """Whether the trainer labels its batches with a loader of its own (e.g. the 2D slices of
    ``SparseMultiPlane2DTrainer``) instead of nnU-Net's 3D patches."""
    own = type(trainer).get_dataloaders
    return own not in (nnUNetTrainer.get_dataloaders, SemiSupervisedTrainer.get_dataloaders)


def fixed_batches(trainers: list, args: argparse.Namespace) -> tuple[dict[str, dict], torch.Tensor | None]:
    """One labeled batch per trainer (nnU-Net's training loader's, shared by all trainers that train on it; a
    trainer with a loader of its own, such as the 2D slice sampler, or with another deep-supervision setting
    gets one from its own loader) and, if any trainer needs one, one unlabeled batch."""
    torch.manual_seed(args.seed)
    # nnU-Net's own loaders (the unbound call skips the unlabeled loader of semi-supervised trainers)
    loader, _ = nnUNetTrainer.get_dataloaders(trainers[0])
    shared = next(loader)
    batches = {}
    for trainer in trainers:
        name = type(trainer).__name__
        # (a semi-supervised trainer that extends get_dataloaders still trains on nnU-Net's labeled patches);
        # a trainer without deep supervision (e.g. the meta-model) needs full-resolution targets only
        own = (
            _has_own_loader(trainer) or trainer.enable_deep_supervision != trainers[0].enable_deep_supervision
        )
        if own and not getattr(trainer, "uses_unlabeled_data", False):
            own_loader, _ = trainer.get_dataloaders()
            batches[name] = next(own_loader)
        else:
            batches[name] = shared
    semisup = [t for t in trainers if isinstance(t, SemiSupervisedTrainer) and t.uses_unlabeled_data]
    if not semisup:
        return batches, None
    semisup[0].prepare_unlabeled_data()
    return batches, next(semisup[0].get_unlabeled_dataloader())["data"]


def time_steps(trainer, batch: dict, iters: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per ``train_step`` over ``iters`` steps."""
    synchronize = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        trainer.train_step(batch)
    synchronize()
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


def prepare(trainers: list, batches: dict[str, dict], unlabeled: torch.Tensor | None) -> None:
    for trainer in trainers:
        batch = batches[type(trainer).__name__]
        if isinstance(trainer, SemiSupervisedTrainer) and trainer.uses_unlabeled_data:
            fixed = unlabeled.to(trainer.device)
            trainer.next_unlabeled_batch = lambda fixed=fixed: fixed
        for _ in range(2):  # warm-up (allocator, cuDNN autotuning, torch.compile)
            trainer.train_step(batch)


def reset_peak_memory(trainer) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's resident-set high-water mark (clear_refs 5),
    so the setup (trainer search imports, data loading) does not mask the training steps' peak."""
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory_mb(trainer) -> float:
    if trainer.device.type == "cuda":
        return torch.cuda.max_memory_allocated(trainer.device) / 2**20
    with open("/proc/self/status") as f:
        high_water_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return high_water_kb / 1024


def run_single(args: argparse.Namespace) -> None:
    """Child process of --memory: one trainer alone, its peak memory as JSON on the last line."""
    trainer = build_trainer(args.single, args)
    batches, unlabeled = fixed_batches([trainer], args)
    reset_peak_memory(trainer)
    prepare([trainer], batches, unlabeled)
    time_steps(trainer, batches[args.single], args.iters)
    sys.stdout.write(json.dumps({"trainer": args.single, "peak_mb": peak_memory_mb(trainer)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument(
        "--trainers", default="nnUNetTrainer,SECLTrainer", help="comma-separated; first = baseline"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per trainer and repetition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="also peak memory, one process per trainer")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        run_single(args)
        return

    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    trainers = [build_trainer(name, args) for name in names]
    batches, unlabeled = fixed_batches(trainers, args)
    prepare(trainers, batches, unlabeled)
    seconds = {name: [] for name in names}
    cpu_seconds = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
        for name in order:
            wall, cpu = time_steps(trainers[names.index(name)], batches[name], args.iters)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)

    memory = {}
    if args.memory:
        for name in names:
            proc = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--single", name],
                capture_output=True,
                text=True,
                check=True,
            )
            memory[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]

    base = names[0]
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    width = max(28, max(len(n) for n in names) + 2)
    lines = [
        f"dataset {args.dataset} {args.configuration}, patch {trainers[0].configuration_manager.patch_size}, "
        f"batch {trainers[0].batch_size}, device {device}; {args.reps} repetitions x {args.iters} steps",
        f"{'trainer':<{width}}{'s/it median':>12}{'min-max':>18}{'ratio':>8}{'ratio min-max':>16}"
        + (f"{'CPU s/it':>10}{'CPU ratio':>11}" if args.device == "cpu" else "")
        + (f"{'peak MB':>10}" if memory else "")
        + f"{'floor':>7}",
    ]
    for name in names:
        times = seconds[name]
        ratios = [t / b for t, b in zip(times, seconds[base])]
        cpu_ratios = [t / b for t, b in zip(cpu_seconds[name], cpu_seconds[base])]
        lines.append(
            f"{name:<{width}}{statistics.median(times):>12.3f}{f'{min(times):.3f}-{max(times):.3f}':>18}"
            f"{statistics.median(ratios):>8.2f}{f'{min(ratios):.2f}-{max(ratios):.2f}':>16}"
            + (
                f"{statistics.median(cpu_seconds[name]):>10.3f}{statistics.median(cpu_ratios):>11.2f}"
                if args.device == "cpu"
                else ""
            )
            + (f"{memory[name]:>10.0f}" if memory else "")
            + (f"{EXPECTED_FLOOR[name]:>7.2f}" if name in EXPECTED_FLOOR else f"{'?':>7}")
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
