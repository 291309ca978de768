"""GPU check of every trainer: a short run of each with nnU-Net's GPU defaults (CUDA AMP and torch.compile) on
hippocampus data at the plans' own resolution, then one table: seconds per iteration and the ratio to
``nnUNetTrainer``, peak GPU memory (``torch.cuda.max_memory_allocated``), whether every loss was finite; then one
``nnUNetv2_predict`` with a checkpoint written by a compiled AMP run, and a 2-rank DDP run when two GPUs exist.

Run it through ``benchmarks/gpu_check.sh`` (which adds a hard time limit). Trainers run in-process one after the
other as ``nnUNetv2_train`` builds them, on one fixed labeled batch (and one unlabeled batch), like
``benchmarks/overhead.py``; the first ``--warmup`` steps (compilation, cuDNN autotuning) are not timed. Trainers
start in the order nnUNetTrainer, one per method family, then the others, until ``--time-limit``; the rest
are listed as not run.

``--device cpu`` runs the same path on CPU (bfloat16 autocast with ``GradScaler("cpu")``, compile forced on with
``--compile-backend``); ``--dry-run`` shortens everything (tests use both, on a tiny dataset given with -d/-p).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("nnUNet_n_proc_DA", "0")  # fixed batches: no background workers

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # benchmarks/overhead.py: building trainers, fixed batches, peak memory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msd_hippocampus"
DATASET_ID = 531
# trainers that need datasets this check does not build (sparse annotations, a meta dataset)
NEEDS_OTHER_DATA = {
    "SparseMultiPlane2DTrainer",
    "SelfTrainingMetaTrainer",
    "SelfTrainingMetaTrainer_Stage1Only",
}


def families() -> list[str]:
    """LabeledOnlyTrainer, then one trainer per method package (``trainers.main_trainers``), so that a new
    method is in the first rows too."""
    import nnunet_semisup.trainers as trainers

    return ["LabeledOnlyTrainer", *trainers.main_trainers()]


def trainer_order(requested: str | None) -> list[str]:
    """nnUNetTrainer, then one trainer per method family (:func:`families`, so a time limit still leaves every
    family in the table), then every other trainer of the package."""
    import nnunet_semisup.trainers as trainers

    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
    else:
        first = families()
        others = sorted(n for n in trainers.__all__ if n not in first and n != "SemiSupervisedTrainer")
        names = [*first, *others]
    names = [n for n in names if n != "nnUNetTrainer"]
    return ["nnUNetTrainer", *[n for n in names if requested or n not in NEEDS_OTHER_DATA]]


def run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def build_dataset(args, env: dict) -> None:
    """A benchmark dataset from the hippocampus images (``make-benchmark``), planned and preprocessed by nnU-Net
    (skipped when already there)."""
    raw = Path(env["nnUNet_raw"])
    if any(raw.glob(f"Dataset{DATASET_ID}_*")):
        return
    bin_dir = Path(sys.executable).parent
    for cmd in (
        [str(bin_dir / "nnunet-semisup"), "make-benchmark", "--images", str(Path(args.data) / "images"),
         "--labels", str(Path(args.data) / "labels"), "--labeled", str(args.labeled), "--unlabeled",
         str(args.unlabeled), "--test", "2", "--out-id", str(DATASET_ID), "--name", "GpuCheck"],
        [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "4"],
    ):  # fmt: skip
        proc = run(cmd, env, 600)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")


def check_trainer(name: str, args) -> dict:
    """Warm-up and timed steps of one trainer: seconds per iteration, peak memory, finite losses."""
    trainer = overhead.build_trainer(name, args)
    if trainer.device.type == "cpu":  # nnU-Net's CUDA AMP path with bfloat16 (see MixedPrecisionMixin)
        trainer.grad_scaler = torch.amp.GradScaler("cpu")
        amp = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    else:
        amp = contextlib.nullcontext  # nnU-Net's train_step enters CUDA autocast itself
    batches, unlabeled = overhead.fixed_batches([trainer], args)
    if unlabeled is not None:
        fixed = unlabeled.to(trainer.device)
        trainer.next_unlabeled_batch = lambda: fixed
    batch = batches[name]
    synchronize = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    losses_finite = True
    overhead.reset_peak_memory(trainer)
    for step in range(args.warmup + args.iters):
        if step == args.warmup:
            synchronize()
            start = time.perf_counter()
        with amp():
            out = trainer.train_step(batch)
        losses_finite &= not out.get("skipped") and all(
            np.isfinite(np.asarray(v, dtype=float)).all() for v in out.values()
        )
    synchronize()
    result = {
        "trainer": name,
        "seconds_per_iteration": (time.perf_counter() - start) / args.iters,
        "peak_mb": overhead.peak_memory_mb(trainer),
        "losses_finite": bool(losses_finite),
        "compiled": type(trainer.network).__name__ == "OptimizedModule",
        "amp": trainer.grad_scaler is not None,
    }
    if name == args.predict_with:
        write_model_folder(trainer)
    return result


def write_model_folder(trainer) -> None:
    """checkpoint_final.pth plus plans.json and dataset.json: what nnUNetv2_predict reads."""
    from batchgenerators.utilities.file_and_folder_operations import save_json

    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    save_json(
        trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"), sort_keys=False
    )
    save_json(trainer.dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"), sort_keys=False)


def predict(args, env: dict, dataset_name: str, out: Path) -> str:
    images = Path(env["nnUNet_raw"]) / dataset_name / "imagesTs"
    shutil.rmtree(out, ignore_errors=True)
    proc = run(
        [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d",
         str(args.dataset), "-p", args.plans, "-c", args.configuration, "-tr", args.predict_with, "-f",
         str(args.fold), "-chk", "checkpoint_final.pth", "-device", args.device, "--disable_tta", "-npp", "1",
         "-nps", "1"],
        # nnU-Net's predictor compiles when nnUNet_compile is on: on CUDA (the GPU path), not for the CPU dry run
        dict(env, nnUNet_compile="t" if args.device == "cuda" else "f"), 600,
    )  # fmt: skip
    n_in = len({p.name.rsplit("_", 1)[0] for p in images.glob("*.nii.gz")})
    n_out = len(list(out.glob("*.nii.gz")))
    if proc.returncode != 0 or n_out != n_in:
        return f"FAILED ({n_out}/{n_in} cases): {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
    return f"ok ({n_out} cases, {args.predict_with}, checkpoint of the compiled AMP run)"


def ddp(args, env: dict) -> str:
    if args.device != "cuda" or torch.cuda.device_count() < 2:
        return "not run (needs two GPUs)"
    trainer = "MeanTeacherTrainer"
    proc = run(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), str(args.dataset), args.configuration, "0", "-tr",
         trainer, "-p", args.plans, "-num_gpus", "2"],
        dict(env, nnUNet_semisup_schedule="epochs=1,iters=5,val_iters=2"), 300,
    )  # fmt: skip
    return f"{trainer}, 2 ranks: " + ("ok" if proc.returncode == 0 else f"FAILED: {proc.stderr[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dry-run", action="store_true", help="1 warm-up + 1 timed step per trainer")
    parser.add_argument("--work-dir", default="gpu_check_work", help="nnU-Net folders when -d is not given")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="images/ + labels/ (default: hippocampus)")
    parser.add_argument("--labeled", type=int, default=10)
    parser.add_argument("--unlabeled", type=int, default=10)
    parser.add_argument("-d", "--dataset", help="an already planned dataset (nnU-Net folders from the env)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("--trainers", help="comma-separated (default: all; nnUNetTrainer always first)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per trainer")
    parser.add_argument("--time-limit", type=float, default=390, help="seconds; no trainer starts after it")
    parser.add_argument("--compile-backend", default="inductor", help="CPU only: torch.compile backend")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.warmup, args.iters = 1, 1
    started = time.perf_counter()

    env = dict(os.environ, nnUNet_compile="t")
    if args.dataset is None:
        work = Path(args.work_dir).resolve()
        for key, sub in (
            ("nnUNet_raw", "raw"),
            ("nnUNet_preprocessed", "preprocessed"),
            ("nnUNet_results", "results"),
        ):
            env[key] = str(work / sub)
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        build_dataset(args, env)
        args.dataset = str(DATASET_ID)
    os.environ.update(
        {k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile")}
    )
    if args.device == "cpu":
        # nnU-Net never compiles on CPU; forced here so that the CPU run takes the GPU path
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        nnUNetTrainer._do_i_compile = lambda self: True
        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)

    names = trainer_order(args.trainers)
    args.predict_with = next((n for n in names if n != "nnUNetTrainer"), names[0])
    results, not_run = [], []
    for name in names:
        if time.perf_counter() - started > args.time_limit:
            not_run.append(name)
            continue
        try:
            results.append(check_trainer(name, args))
        except Exception as error:  # one broken trainer must not hide the others' results
            results.append({"trainer": name, "error": f"{type(error).__name__}: {str(error)[:300]}"})
        torch._dynamo.reset()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset_name = maybe_convert_to_dataset_name(args.dataset)
    prediction = (
        predict(args, env, dataset_name, Path(env["nnUNet_results"]) / "gpu_check_prediction")
        if any(r["trainer"] == args.predict_with and "error" not in r for r in results)
        else "not run (its trainer failed)"
    )
    ddp_result = ddp(args, env)

    base = next((r for r in results if r["trainer"] == "nnUNetTrainer" and "error" not in r), None)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [
        f"GPU check: dataset {dataset_name}, plans {args.plans} {args.configuration}, device {device}, "
        f"AMP + torch.compile, {args.iters} timed steps after {args.warmup} warm-up",
        f"{'trainer':<42}{'s/it':>9}{'ratio':>8}{'peak MB':>10}{'finite':>8}{'compiled':>10}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['trainer']:<42}ERROR {r['error']}")
            continue
        ratio = r["seconds_per_iteration"] / base["seconds_per_iteration"] if base else math.nan
        lines.append(
            f"{r['trainer']:<42}{r['seconds_per_iteration']:>9.3f}{ratio:>8.2f}{r['peak_mb']:>10.0f}"
            f"{'yes' if r['losses_finite'] else 'NO':>8}{'yes' if r['compiled'] else 'no':>10}"
        )
    if not_run:
        lines.append(f"not run (time limit {args.time_limit:.0f} s): {', '.join(not_run)}")
    lines += [f"nnUNetv2_predict: {prediction}", f"DDP: {ddp_result}"]
    print("\n".join(lines), flush=True)
    summary = Path(env["nnUNet_results"]) / "gpu_check.json"
    summary.write_text(
        json.dumps(
            {"results": results, "not_run": not_run, "predict": prediction, "ddp": ddp_result}, indent=2
        )
    )
    failed = any("error" in r or not r["losses_finite"] for r in results) or prediction.startswith("FAILED")
    return 1 if failed or "FAILED" in ddp_result else 0


if __name__ == "__main__":
    sys.exit(main())
