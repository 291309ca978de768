"""CPU cost of feeding each trainer: CPU milliseconds of one augmentation worker per training iteration to produce the
labeled batch and the unlabeled batch(es), next to nnUNetTrainer's, and the number of augmentation workers
(``nnUNet_n_proc_DA``) needed to keep a GPU busy at a given step time.

Each trainer is built as ``nnUNetv2_train`` builds it; its loaders run in this process (``nnUNet_n_proc_DA=0``,
one thread, as one of nnU-Net's workers runs them), and every batch a training iteration draws is timed after a
warm-up draw, in process CPU time (what a worker core spends; a busy shared machine inflates wall-clock time, not
this). Trainers with the same input pipeline (an ablation that only changes a loss weight) are measured
once and reported with the figures of the first. For trainers with unlabeled batches the image-only
augmentation (``unlabeled_image_only_augmentation``, :class:`nnunet_semisup.data.loader.ImageOnlyTransforms`) is
measured too. Sizes: synthetic volumes (``nnunet_semisup.data.synthetic``) of each ``--shapes`` entry, planned
by nnU-Net (patch and batch from its plans), or an already planned dataset (``-d``).

Example::

    python benchmarks/loader_throughput.py --shapes 36x50x36,128x128x128 --gpu-step-ms 250
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["nnUNet_n_proc_DA"] = "0"  # loaders in this process, one batch at a time

import torch

# trainers whose datasets this benchmark does not make (sparse annotations, a meta dataset)
NEEDS_OTHER_DATA = ("SparseMultiPlane2DTrainer", "SelfTrainingMetaTrainer")
FIRST_ID = 540


def dataset_id_of_shape(shape: tuple[int, ...], raw: Path) -> int:
    """The id of the synthetic dataset of ``shape`` in ``raw`` (made by an earlier run), or the next free one."""
    name = "Loader" + "x".join(map(str, shape))
    ids = {int(p.name[7:10]): p.name[11:] for p in raw.glob("Dataset[0-9][0-9][0-9]_*")}
    for dataset_id, dataset_name in ids.items():
        if dataset_name == name:
            return dataset_id
    return max([FIRST_ID - 1, *ids]) + 1


def build_synthetic_dataset(shape: tuple[int, ...], dataset_id: int, work: Path, env: dict) -> None:
    """5 labeled + 3 unlabeled synthetic cases of ``shape``, planned and preprocessed by nnU-Net (once)."""
    from nnunet_semisup.data.synthetic import write_synthetic_cases

    if any(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id}_*/nnUNetPlans.json")):
        return
    source = work / f"source_{dataset_id}"
    write_synthetic_cases(str(source), 9, shape=shape, seed=dataset_id)
    bin_dir = Path(sys.executable).parent
    for cmd in (
        [str(bin_dir / "nnunet-semisup"), "make-benchmark", "--images", str(source / "images"), "--labels",
         str(source / "labels"), "--labeled", "5", "--unlabeled", "3", "--test", "1", "--out-id", str(dataset_id),
         "--name", "Loader" + "x".join(map(str, shape))],
        [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2"],
    ):  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{proc.stderr[-3000:]}")


def pipeline_signature(trainer) -> tuple:
    """What decides the batches an iteration draws: trainers with equal signatures share one measurement."""
    cls = type(trainer)
    return (
        cls.get_dataloaders,
        cls.get_training_transforms,
        trainer.batch_size,
        trainer.oversample_foreground_percent,
        trainer.enable_deep_supervision,
        getattr(trainer, "uses_unlabeled_data", False),
        getattr(trainer, "unlabeled_loader_class", None),
        getattr(trainer, "unlabeled_batch_size", None),
        getattr(trainer, "patch_centre_sampling", None),
    )


def _ms_per_draw(loader, draws: int) -> float:
    """Mean CPU milliseconds per batch: the mean, not the median, because nnU-Net draws its costly spatial
    augmentations (rotation, scaling, elastic) per sample with probability 0.2, so draws vary a lot."""
    next(loader)  # warm-up (file handles, first allocation)
    times = []
    for _ in range(draws):
        start = time.process_time()
        next(loader)
        times.append(time.process_time() - start)
    return 1000 * statistics.fmean(times)


def measure(trainer, draws: int) -> dict[str, float]:
    """Milliseconds per iteration: labeled batch, unlabeled batch(es) and, where there are some, the unlabeled
    batches with image-only augmentation."""
    from nnunet_semisup.trainers.base import SemiSupervisedTrainer

    semisup = isinstance(trainer, SemiSupervisedTrainer) and trainer.uses_unlabeled_data
    if semisup:
        trainer.prepare_unlabeled_data()
    train, _ = trainer.get_dataloaders()
    result = {"labeled": _ms_per_draw(train, draws), "unlabeled": 0.0, "image_only": math.nan}
    extra = getattr(trainer, "dataloader_labeled_images", None)  # images drawn instead of nnU-Net's batch
    if extra is not None:
        result["labeled"] += _ms_per_draw(extra, draws)
    if semisup:
        result["unlabeled"] = _ms_per_draw(trainer.dataloader_unlabeled, draws)
        if not any(trainer.configuration_manager.use_mask_for_norm):
            trainer.unlabeled_image_only_augmentation = True
            result["image_only"] = _ms_per_draw(trainer.get_unlabeled_dataloader(), draws)
    return result


def run_size(args, dataset: str, plans: str, names: list[str]) -> tuple[str, dict[str, dict]]:
    from nnunetv2.run.run_training import get_trainer_from_args

    figures, measured, label = {}, {}, ""
    for name in names:
        trainer = get_trainer_from_args(dataset, "3d_fullres", 0, name, plans, device=torch.device("cpu"))
        trainer.initialize()
        if not label:
            patch = "x".join(map(str, trainer.configuration_manager.patch_size))
            label = f"dataset {dataset}: patch {patch}, batch {trainer.batch_size}"
        signature = pipeline_signature(trainer)
        if signature not in measured:
            measured[signature] = (name, measure(trainer, args.draws))
        first, values = measured[signature]
        figures[name] = {**values, "same_as": None if first == name else first}
    return label, figures


def table(sizes: list[tuple[str, dict[str, dict]]], step_ms: float) -> str:
    """One block per size: ms per iteration (labeled + unlabeled), ratio to nnUNetTrainer, workers needed at
    ``step_ms`` (with the image-only unlabeled pipeline in brackets)."""
    lines = []
    for label, figures in sizes:
        base = figures["nnUNetTrainer"]["labeled"]
        lines += [
            label,
            f"{'trainer':<42}{'labeled':>9}{'unlab.':>9}{'total':>9}{'ratio':>7}{'workers':>9}"
            f"{'unlab. img-only':>17}{'ratio':>7}{'workers':>9}",
        ]
        for name, f in figures.items():
            total = f["labeled"] + f["unlabeled"]
            cheap = f["labeled"] + f["image_only"]
            row = (
                f"{name:<42}{f['labeled']:>9.0f}{f['unlabeled']:>9.0f}{total:>9.0f}{total / base:>7.2f}"
                f"{math.ceil(total / step_ms):>9d}"
            )
            if not math.isnan(f["image_only"]):
                row += f"{f['image_only']:>17.0f}{cheap / base:>7.2f}{math.ceil(cheap / step_ms):>9d}"
            if f["same_as"]:
                row += f"   (pipeline of {f['same_as']})"
            lines.append(row)
        lines.append("")
    lines.append(
        f"ms of one augmentation worker (one CPU core) per training iteration; workers = ceil(total / {step_ms:g} "
        f"ms GPU step), the nnUNet_n_proc_DA that keeps the GPU fed"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", default="36x50x36,128x128x128", help="synthetic volume shapes (z x y x x)"
    )
    parser.add_argument(
        "-d", "--dataset", help="measure this planned dataset instead (nnU-Net folders from env)"
    )
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--work-dir", default="loader_throughput_work")
    parser.add_argument("--trainers", help="comma-separated (default: every trainer on nnU-Net-style data)")
    parser.add_argument("--draws", type=int, default=20, help="timed iterations per pipeline (mean)")
    parser.add_argument("--gpu-step-ms", type=float, default=250.0, help="GPU time per training step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import nnunet_semisup.trainers as trainers

    names = (
        [n.strip() for n in args.trainers.split(",") if n.strip()]
        if args.trainers
        else sorted(
            n for n in trainers.__all__ if n != "SemiSupervisedTrainer" and not n.startswith(NEEDS_OTHER_DATA)
        )
    )
    names = ["nnUNetTrainer", *[n for n in names if n != "nnUNetTrainer"]]
    if args.dataset:
        runs = [(args.dataset, args.plans)]
    else:
        work = Path(args.work_dir).resolve()
        env = dict(os.environ, nnUNet_n_proc_DA="2")
        for key, sub in (
            ("nnUNet_raw", "raw"),
            ("nnUNet_preprocessed", "preprocessed"),
            ("nnUNet_results", "results"),
        ):
            env[key] = os.environ[key] = str(work / sub)
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        runs = []
        for text in args.shapes.split(","):
            shape = tuple(int(v) for v in text.lower().split("x"))
            dataset_id = dataset_id_of_shape(shape, Path(env["nnUNet_raw"]))
            build_synthetic_dataset(shape, dataset_id, work, env)
            runs.append((str(dataset_id), "nnUNetPlans"))
    sizes = [run_size(args, dataset, plans, names) for dataset, plans in runs]
    sys.stdout.write(table(sizes, args.gpu_step_ms) + "\n")


if __name__ == "__main__":
    main()
