"""Per-iteration time and peak memory of trainers relative to nnU-Net's ``nnUNetTrainer``, side by side.

    python benchmarks/overhead.py -d 504 --trainers nnUNetTrainer,MeanTeacherTrainer --reps 3 --iters 6

Needs a planned and preprocessed dataset (with unlabeled images for semi-supervised trainers) and the usual
nnUNet_raw / nnUNet_preprocessed / nnUNet_results variables. Every (repetition, trainer) runs in a fresh
process, in an order rotated per repetition, so peak memory is per trainer and slow drifts of the machine hit
all trainers alike. Each process builds the trainer as ``nnUNetv2_train`` does, pre-fetches batches (data
loading is excluded: it runs in background workers during real training), then times ``train_step`` after
warm-up steps. Memory: peak RSS on CPU (whole process, and the growth during the timed steps), and
``torch.cuda.max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# Forward/backward passes per iteration relative to nnUNetTrainer (forward = 1, backward = 2 units, so
# nnUNetTrainer's labeled batch B costs 3B): the floor a method cannot go below, before any overhead.
EXPECTED_FLOOR = {
    "nnUNetTrainer": ("1 fwd+bwd on B", 1.0),
    "LabeledOnlyTrainer": ("same as nnUNetTrainer", 1.0),
    # student fwd+bwd on labeled+unlabeled (2B), teacher fwd on 2B: (6B + 2B) / 3B
    "MeanTeacherTrainer": ("student fwd+bwd on 2B + teacher fwd on 2B", 8 / 3),
    "MeanTeacherTrainer_PredictTeacher": ("as MeanTeacherTrainer", 8 / 3),
    # M_s and M_d each fwd+bwd on labeled+unlabeled (2B): (6B + 6B) / 3B
    "DTMLTrainer": ("M_s and M_d fwd+bwd on 2B", 4.0),
    "DTMLTrainer_LabeledOnly": ("M_s and M_d fwd+bwd on B", 2.0),
}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(
    dataset: str, configuration: str, plans: str, trainer_name: str, iters: int, warmup: int, device: str
) -> dict:
    """Time ``iters`` training steps of one trainer in this process; returns a JSON-able dict."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.manual_seed(0)
    trainer = get_trainer_from_args(
        dataset, configuration, "all", trainer_name, plans, device=torch.device(device)
    )
    trainer.initialize()
    if getattr(trainer, "uses_unlabeled_data", False):
        trainer.prepare_unlabeled_data()
    dl_train, dl_val = trainer.get_dataloaders()
    n_batches = min(iters + warmup, 4)
    labeled = [next(dl_train) for _ in range(n_batches)]
    unlabeled = None
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        unlabeled = [trainer.next_unlabeled_batch() for _ in range(n_batches)]
        cycle = itertools.cycle(unlabeled)
        trainer.next_unlabeled_batch = lambda: next(cycle)
    for loader in (dl_train, dl_val, getattr(trainer, "dataloader_unlabeled", None)):
        if hasattr(loader, "_finish"):
            loader._finish()
    trainer.network.train()
    if hasattr(trainer, "on_fresh_start"):
        trainer.on_fresh_start()

    times = []
    rss_before = None
    for i in range(warmup + iters):
        if i == warmup:
            rss_before = _rss_mb()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(labeled[i % n_batches])
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "trainer": trainer_name,
        "sec_per_iter": statistics.median(times),
        "times": times,
        "peak_rss_mb": peak_rss,
        "rss_growth_mb": peak_rss - rss_before,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "batch_size": trainer.batch_size,
        "patch_size": list(trainer.configuration_manager.patch_size),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id (planned, preprocessed)")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--trainers", default="nnUNetTrainer,MeanTeacherTrainer")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", default=None, help="write the raw measurements as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        result = worker(args.d, args.c, args.p, args.worker, args.iters, args.warmup, args.device)
        print("RESULT " + json.dumps(result))
        return 0

    trainers = args.trainers.split(",")
    if trainers[0] != "nnUNetTrainer":
        trainers = ["nnUNetTrainer", *[t for t in trainers if t != "nnUNetTrainer"]]
    env = dict(os.environ, nnUNet_n_proc_DA="0", nnUNet_compile=os.environ.get("nnUNet_compile", "f"))
    results: dict[str, list[dict]] = {t: [] for t in trainers}
    for rep in range(args.reps):
        order = trainers[rep % len(trainers) :] + trainers[: rep % len(trainers)]
        for name in order:
            cmd = [sys.executable, __file__, "-d", args.d, "-c", args.c, "-p", args.p, "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--device", args.device, "--worker", name]  # fmt: skip
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"worker for {name} failed (exit {proc.returncode})")
            results[name].append(json.loads(lines[-1][len("RESULT ") :]))
            print(
                f"rep {rep + 1}/{args.reps} {name}: {results[name][-1]['sec_per_iter']:.3f} s/iter",
                flush=True,
            )

    base = results["nnUNetTrainer"]
    print(f"\nDevice {args.device}; batch {base[0]['batch_size']}, patch {base[0]['patch_size']}; "
          f"{args.reps} processes per trainer, median of {args.iters} timed steps each.")  # fmt: skip
    header = (f"{'trainer':<36}{'s/iter':>9}{'ratio':>8}{'(min-max)':>14}{'peak RSS MB':>13}{'ratio':>7}"
              f"{'step mem MB':>13}{'floor':>7}  floor from")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    for name in trainers:
        ratios = [r["sec_per_iter"] / b["sec_per_iter"] for r, b in zip(results[name], base)]
        sec = statistics.median(r["sec_per_iter"] for r in results[name])
        mem_key = "cuda_peak_mb" if args.device == "cuda" else "peak_rss_mb"
        mem = statistics.median(r[mem_key] for r in results[name])
        mem_ratio = mem / statistics.median(b[mem_key] for b in base)
        growth = statistics.median(r["rss_growth_mb"] for r in results[name])
        note, floor = EXPECTED_FLOOR.get(name, ("see the method's README section", float("nan")))
        print(f"{name:<36}{sec:>9.3f}{statistics.median(ratios):>7.2f}x"
              f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>14}{mem:>13.0f}{mem_ratio:>6.2f}x{growth:>13.0f}"
              f"{floor:>6.2f}x  {note}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
