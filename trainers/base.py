"""``SemiSupervisedTrainer``: what every semi-supervised method shares, on top of nnU-Net's trainer.

A method subclass usually overrides three hooks:

- ``initialize`` (call super first) to build extra modules (teacher, heads, second network);
- ``compute_loss(data, target, unlabeled)`` returning ``(loss, {name: scalar})``;
- ``after_optimizer_step`` for EMA updates, and ``get_semisup_state``/``set_semisup_state`` for whatever must
  survive ``--c``.

Everything else (the unlabeled loader next to nnU-Net's labeled one, the training clock and its ramp-up, the
labeled + unlabeled batch and its split under deep supervision, AMP and gradient clipping, extra curves in the log
and progress.png, checkpoint state, a clear message on GPU out-of-memory) lives here once.
:class:`MixedPrecisionMixin` gives nnU-Net's mixed precision a switch that runs it on CPU;
:class:`FewLabeledCasesSplitMixin` makes a leave-one-out split for 2 to 4 labeled cases;
:class:`UserInputErrorExitMixin` stops ``nnUNetv2_train`` on bad input with the message alone (and logs it). The
last three are shared with ``LabeledOnlyTrainer``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_semisup.data.loader import ImageOnlyTransforms, UnlabeledDataLoader
from nnunet_semisup.data.unlabeled import (
    UNLABELED_FOLDER,
    preprocess_unlabeled,
    unlabeled_preprocessed_folder,
    unlabeled_status,
)
from nnunet_semisup.errors import TrainingInputError, UserInputError
from nnunet_semisup.schedules import apply_schedule, sigmoid_rampup
from nnunet_semisup.training_log import SemiSupLocalLogger

SEMISUP_STATE_KEY = "semisup_state"
SEMISUP_STATE_FORMAT = 1


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class MixedPrecisionMixin:
    """nnU-Net's automatic mixed precision (AMP) for the package's trainers, with a switch that runs it on CPU.

    On CUDA nnU-Net runs the forward pass and the loss under ``autocast("cuda")`` (float16) and the backward
    pass through ``GradScaler("cuda")`` (scale, backward, unscale, clip, step, update); on CPU it trains in
    float32 without a scaler. With ``cpu_mixed_precision = True`` a CPU run takes the same code path with
    bfloat16 autocast and ``torch.amp.GradScaler("cpu")``: slow on CPUs without bfloat16 units, and meant for
    checking the AMP path (dtypes, losses kept in float32, scaler bookkeeping, checkpoints) without a GPU.
    """

    cpu_mixed_precision: bool = False

    def initialize(self) -> None:
        super().initialize()
        if self.cpu_mixed_precision and self.device.type == "cpu":
            self.grad_scaler = torch.amp.GradScaler("cpu")

    def autocast_context(self):
        """The autocast context of a training or validation step: float16 on CUDA (as nnU-Net), bfloat16 on
        CPU with ``cpu_mixed_precision``, none otherwise (nnU-Net: CPU autocast is slow, MPS unsupported)."""
        if self.device.type == "cuda":
            return autocast("cuda", enabled=True)
        if self.device.type == "cpu" and self.cpu_mixed_precision:
            return autocast("cpu", dtype=torch.bfloat16)
        return dummy_context()

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's validation step enters autocast on CUDA only; this adds the CPU switch
        with self.autocast_context():
            return super().validation_step(batch)


def atomic_torch_save(obj: object, filename: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a kill never truncates ``filename``."""
    tmp = f"{filename}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_checkpoint_temporaries(folder: str, log=print) -> list[str]:
    """Delete ``*.pth.tmp<pid>`` files that :func:`atomic_torch_save` of a killed process left in ``folder``
    (only those whose process is gone); the checkpoints themselves are never touched. Returns the removed paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        stem, sep, pid = name.rpartition(".pth.tmp")
        if not sep or not stem or not pid.isdigit() or _process_alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        os.remove(path)
        removed.append(path)
        log(f"Removed {path}: an unfinished checkpoint write of a process that was killed")
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


NNUNET_FOLDS = 5  # nnU-Net's default cross-validation (nnUNetTrainer.do_split)
SPLITS_FILE = "splits_final.json"


def leave_one_out_splits(case_ids: list[str]) -> list[dict[str, list[str]]]:
    """One fold per case: fold ``i`` validates on the ``i``-th case (sorted) and trains on all others.

    Args:
        case_ids: the labeled training cases (at least 2).

    Returns:
        nnU-Net's ``splits_final.json`` content, ``[{"train": [...], "val": [case]}, ...]``, ``len(case_ids)``
        folds.
    """
    keys = sorted(case_ids)
    if len(keys) < 2:
        raise ValueError(f"leave-one-out needs at least 2 cases, got {len(keys)}")
    return [{"train": [k for k in keys if k != v], "val": [v]} for v in keys]


class FewLabeledCasesSplitMixin:
    """nnU-Net's ``do_split``, extended to datasets with fewer than 5 labeled training cases.

    nnU-Net's first training of a numbered fold writes a seeded 5-fold split to ``splits_final.json``, which fails
    inside scikit-learn for fewer than 5 cases. Semi-supervised datasets often have 2 to 4 labeled cases, so:

    - 2 to 4 labeled cases and no ``splits_final.json``: a leave-one-out split (as many folds as cases) is
      written, and said so in the training log and on stdout. Leave-one-out keeps every case in the validation
      of exactly one fold, as nnU-Net's 5-fold split does, and it is the only split that trains every fold on
      all but one of so few cases; it is deterministic (sorted case names).
    - 1 (or no) labeled case, or a fold number the split does not have (2 to 4 cases): a
      :class:`~nnunet_semisup.errors.TrainingInputError` naming the fix, fold ``all`` or a
      ``splits_final.json`` of one's own. (nnU-Net would fall back to a random 80:20 split of so few cases for
      a missing fold, a split nobody asked for and that no other fold's validation complements.)

    Everything else is nnU-Net's ``do_split`` unchanged: fold ``all``, an existing ``splits_final.json``
    (honoured as written, whatever the number of cases), 5 or more cases (seeded 5-fold split; a fold beyond the
    file's folds gets nnU-Net's seeded 80:20 split).
    """

    def do_split(self):
        if self.fold == "all":
            return super().do_split()
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        case_ids = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        if len(case_ids) >= NNUNET_FOLDS:
            return super().do_split()
        splits_file = os.path.join(self.preprocessed_dataset_folder_base, SPLITS_FILE)
        dataset = self.plans_manager.dataset_name
        if os.path.isfile(splits_file):
            with open(splits_file) as f:
                n_folds = len(json.load(f))
        else:
            if len(case_ids) < 2:
                found = f"1 labeled training case ({case_ids[0]})" if case_ids else "no labeled training case"
                raise TrainingInputError(
                    f"Dataset {dataset} has {found} in {self.preprocessed_dataset_folder}, and fold {self.fold} "
                    f"needs a cross-validation split with at least 2 cases (one to train on, one to validate "
                    f"on). Train with fold all (nnUNetv2_train {dataset} {self.configuration_name} all -tr "
                    f"{self.__class__.__name__}: trains on every labeled case and validates on the same), or write "
                    f'your own {splits_file} ([{{"train": [...], "val": [...]}}, ...], one entry per fold).'
                )
            splits = leave_one_out_splits(case_ids)
            n_folds = len(splits)
            if self.local_rank == 0:  # every rank would compute the same file
                tmp = f"{splits_file}.tmp{os.getpid()}"
                with open(tmp, "w") as f:
                    json.dump(splits, f, indent=4)
                os.replace(tmp, splits_file)
            self.print_to_log_file(
                f"Only {len(case_ids)} labeled training cases, too few for nnU-Net's {NNUNET_FOLDS}-fold "
                f"cross-validation: created a leave-one-out split instead ({n_folds} folds, 0 to {n_folds - 1}; "
                f"each trains on {len(case_ids) - 1} case(s) and validates on the one left out) in {splits_file}. "
                f"To use another split, replace that file with your own."
            )
        if self.fold >= n_folds:
            raise TrainingInputError(
                f"Fold {self.fold} does not exist: {splits_file} has {n_folds} fold(s) (0 to {n_folds - 1}) for "
                f"the {len(case_ids)} labeled training cases of dataset {dataset}. Train one of folds 0 to "
                f"{n_folds - 1} or fold all, or write your own splits_final.json with more folds."
            )
        return super().do_split()


class UserInputErrorExitMixin:
    """``nnUNetv2_train`` stops with the message alone, no traceback, when the user's data or arguments are at
    fault (a :class:`~nnunet_semisup.errors.UserInputError`, e.g. no or badly named unlabeled images, a split
    that cannot be made): the message goes to nnU-Net's training log (``training_log_*.txt`` in the output
    folder) and to stderr, and the process exits with status 1 (``SystemExit(message)``, whose ``__cause__`` is
    the original error for callers in Python). Every other exception keeps its traceback."""

    @contextmanager
    def exit_on_user_input_error(self) -> Iterator[None]:
        """Turn a :class:`~nnunet_semisup.errors.UserInputError` raised inside into the logged ``SystemExit``."""
        try:
            yield
        except UserInputError as error:
            message = f"ERROR: {error}"
            self.print_to_log_file(message, also_print_to_console=False)
            raise SystemExit(message) from error

    def run_training(self) -> None:
        with self.exit_on_user_input_error():
            super().run_training()


class SemiSupervisedTrainer(
    UserInputErrorExitMixin, FewLabeledCasesSplitMixin, MixedPrecisionMixin, nnUNetTrainer
):
    """Base class of the package's semi-supervised trainers (not a method by itself).

    Class attributes (override in subclasses; nnU-Net's debug.json records them):

    - ``uses_unlabeled_data``: draw an unlabeled batch every iteration (needs imagesUnlabeled).
    - ``unlabeled_batch_size``: None = the labeled batch size.
    - ``rampup_fraction``: the sigmoid ramp-up ``w(t) = w_max * exp(-5 (1 - t/T)^2)`` reaches ``w_max`` after
      ``T = rampup_fraction * num_epochs * num_iterations_per_epoch`` iterations. 1.0 = over the whole run, as
      in the 3D reference implementations (UA-MT: 40 ramp-up "epochs" of 150 iterations = all 6000).
    - ``unlabeled_image_only_augmentation``: see :class:`~nnunet_semisup.data.loader.ImageOnlyTransforms`.
    - ``semisup_log_keys``: names of the extra scalars ``compute_loss`` returns, logged per epoch.
    - ``max_consecutive_nonfinite_steps``: a step whose loss is NaN/inf is skipped (no backward, no optimizer
      or EMA step) with a warning; this many in a row abort the run before weights are corrupted.
    - ``cpu_mixed_precision``: see :class:`MixedPrecisionMixin`.
    - ``requires_3d_volumes``: empty for methods that train on every configuration (2d, 3d_fullres, 3d_lowres, 2D
      datasets); otherwise the reason the method is 3D by definition, and 2D configurations are refused.

    Honours ``nnUNet_semisup_schedule`` (see :mod:`nnunet_semisup.schedules`).
    """

    uses_unlabeled_data: bool = True
    unlabeled_batch_size: int | None = None
    rampup_fraction: float = 1.0
    semisup_log_keys: tuple[str, ...] = ()
    max_consecutive_nonfinite_steps: int = 20
    # "" = any configuration; otherwise why the method needs 3D patches (it then refuses 2D ones at construction)
    requires_3d_volumes: str = ""
    # places the unlabeled patches (uniformly at random; a subclass may bias the placement)
    unlabeled_loader_class: type = UnlabeledDataLoader
    # augment unlabeled patches without resampling their (unused) segmentation: the same images, about half the
    # CPU time per unlabeled batch (ImageOnlyTransforms); not possible with use_mask_for_norm plans
    unlabeled_image_only_augmentation: bool = False

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_schedule(self)
        self.global_step = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite_steps = 0
        self.unlabeled_case_ids: list[str] = []
        self.dataloader_unlabeled = None
        self._semisup_state_restored = False
        self.preprocessed_unlabeled_folder = (
            unlabeled_preprocessed_folder(
                self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier
            )
            if self.preprocessed_dataset_folder_base is not None
            else None
        )
        self.logger.local_logger = SemiSupLocalLogger(self.semisup_log_keys)
        self.check_configuration()
        self.on_init()

    def check_configuration(self) -> None:
        """Refuse, before anything is built or written, a configuration the method is not defined on: with
        ``requires_3d_volumes`` a 2D patch (the ``2d`` configuration of any dataset, every configuration of a
        2D dataset). Raises RuntimeError naming the trainer, the configuration, the reason and what to run."""
        if self.requires_3d_volumes and len(self.configuration_manager.patch_size) != 3:
            raise RuntimeError(
                f"{self.__class__.__name__} is defined on 3D volumes ({self.requires_3d_volumes}), but "
                f"configuration {self.configuration_name!r} of {self.plans_manager.dataset_name} trains on 2D "
                f"patches. Train it with 3d_fullres (or 3d_lowres) of a 3D dataset; docs/user_guide.md "
                f"('Supported configurations') lists what runs where."
            )

    def on_init(self) -> None:
        """Called at the end of ``__init__``, with the plans, the schedule and the logger set up: check the
        method's class attributes and create its own attributes here. (Methods do not override ``__init__``:
        nnU-Net records its signature, and every trainer must keep nnU-Net's.)"""

    # ------------------------------------------------------------------ training clock
    @property
    def total_iterations(self) -> int:
        """Optimizer steps of the whole run, ``num_epochs * num_iterations_per_epoch`` (after the schedule)."""
        return self.num_epochs * self.num_iterations_per_epoch

    def iterations_of(self, fraction: float) -> int:
        """The number of iterations that make ``fraction`` of the run (rounded)."""
        return round(fraction * self.total_iterations)

    @property
    def training_progress(self) -> float:
        """``t / T`` in [0, 1]: optimizer steps taken (``global_step``) over :attr:`total_iterations`."""
        return min(1.0, self.global_step / max(1, self.total_iterations))

    @property
    def rampup_length(self) -> int:
        """T of the sigmoid ramp-up, in iterations."""
        return self.iterations_of(self.rampup_fraction)

    def rampup_weight(self, max_weight: float) -> float:
        """``max_weight * exp(-5 (1 - t/T)^2)`` at the current iteration ``t = self.global_step``."""
        return max_weight * sigmoid_rampup(self.global_step, self.rampup_length)

    # ------------------------------------------------------------------ unlabeled data
    def prepare_unlabeled_data(self) -> None:
        """Find the preprocessed unlabeled cases, preprocessing new or changed ones first (rank 0 only)."""
        dataset_name = self.plans_manager.dataset_name
        raw_dir = os.path.join(nnUNet_raw.get(), dataset_name) if nnUNet_raw.is_set() else None
        if self.local_rank == 0:
            ids, needed = unlabeled_status(
                raw_dir,
                self.preprocessed_dataset_folder_base,
                self.configuration_name,
                self.plans_manager.plans_name,
            )
            if needed:
                self.print_to_log_file(
                    f"Unlabeled images in {os.path.join(raw_dir, UNLABELED_FOLDER)} are new or changed: "
                    f"preprocessing them (same as `nnunet-semisup preprocess-unlabeled`)."
                )
                report = preprocess_unlabeled(
                    raw_dir,
                    self.preprocessed_dataset_folder_base,
                    self.configuration_name,
                    self.plans_manager.plans_name,
                    num_processes=max(1, get_allowed_n_proc_DA() // 2),
                    log=self.print_to_log_file,
                )
                ids = report.case_ids
        if self.is_ddp:
            dist.barrier()
            if self.local_rank != 0:
                ids, _ = unlabeled_status(
                    None,
                    self.preprocessed_dataset_folder_base,
                    self.configuration_name,
                    self.plans_manager.plans_name,
                )
        if not ids:
            where = (
                os.path.join(raw_dir, UNLABELED_FOLDER)
                if raw_dir
                else f"nnUNet_raw/{dataset_name}/{UNLABELED_FOLDER}"
            )
            raise TrainingInputError(
                f"{self.__class__.__name__} trains on unlabeled images, but dataset {dataset_name} has none. Put "
                f"them in {where}/ named like imagesTr (CASE_0000{self.dataset_json['file_ending']}, one file per "
                f"channel) and start again (they are preprocessed automatically, or run `nnunet-semisup "
                f"preprocess-unlabeled -d {dataset_name} -c {self.configuration_name}`). For the labeled-only "
                f"baseline use -tr LabeledOnlyTrainer."
            )
        ids = list(ids)
        if self.is_ddp and len(ids) >= dist.get_world_size():
            # each rank draws from its own share, so no two GPUs train on the same unlabeled case in a step
            ids = ids[self.local_rank :: dist.get_world_size()]
        self.unlabeled_case_ids = ids
        self.print_to_log_file(
            f"Unlabeled training cases: {len(ids)}{' on this rank' if self.is_ddp else ''} "
            f"({self.preprocessed_unlabeled_folder})"
        )

    def get_unlabeled_dataloader(self, folder: str | None = None, case_ids: list[str] | None = None):
        """nnU-Net's training augmentation and threading, applied to random patches of unlabeled cases (or of
        the images of ``case_ids`` in the preprocessed ``folder``, labels unused), placed by
        ``unlabeled_loader_class``."""
        patch_size = self.configuration_manager.patch_size
        rotation_for_da, do_dummy_2d, initial_patch_size, mirror_axes = (
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        transforms = self.get_training_transforms(
            patch_size,
            rotation_for_da,
            None,
            mirror_axes,
            do_dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label,
        )
        if self.unlabeled_image_only_augmentation:
            transforms = ImageOnlyTransforms(transforms, self.configuration_manager.use_mask_for_norm)
        dataset = nnUNetDatasetBlosc2(
            folder or self.preprocessed_unlabeled_folder,
            list(case_ids if case_ids is not None else self.unlabeled_case_ids),
        )
        loader = self.unlabeled_loader_class(
            dataset,
            self.unlabeled_batch_size or self.batch_size,
            initial_patch_size,
            patch_size,
            self.label_manager,
            transforms=transforms,
        )
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(
            data_loader=loader,
            transform=None,
            num_processes=n_proc,
            num_cached=max(6, n_proc // 2),
            seeds=None,
            pin_memory=self.device.type == "cuda",
            wait_time=0.002,
        )

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        if self.uses_unlabeled_data:
            self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        return dataloader_train, dataloader_val

    def next_unlabeled_batch(self) -> torch.Tensor:
        """(B_u, C, *patch) images of the next unlabeled batch, on the training device."""
        return next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)

    def wrap_ddp(
        self, module: torch.nn.Module, sync_batchnorm: bool = True, find_unused_parameters: bool = False
    ) -> DDP:
        """``module`` in its own DDP wrapper (for extra networks and heads that run outside nnU-Net's wrapped
        ``self.network``): rank 0's weights are broadcast, gradients averaged across ranks.
        ``find_unused_parameters``: set when some parameters of ``module`` get no gradient in a step."""
        if sync_batchnorm:
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DDP(
            module,
            device_ids=[self.local_rank] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    # ------------------------------------------------------------------ extra modules
    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """The modules the method holds besides the segmentation network (teachers, heads, decoders, second
        networks), by attribute name, unwrapped from DDP/``torch.compile``: every ``torch.nn.Module`` attribute of
        the trainer except ``network`` and the loss, each once."""
        network = unwrap_network(self.network) if self.network is not None else None
        found: dict[str, torch.nn.Module] = {}
        seen = {id(network), id(getattr(self, "loss", None))}
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module):
                module = unwrap_network(value)
                if id(module) not in seen:
                    seen.add(id(module))
                    found[name] = module
        return found

    def extra_parameter_count(self) -> tuple[int, int]:
        """(parameters of the extra modules not shared with the segmentation network, parameters of the
        segmentation network). Shared parameters (a step module holding the network's encoder) count once, as
        the network's; an EMA teacher is a copy and counts in full."""
        network = unwrap_network(self.network)
        own = {id(p) for p in network.parameters()}
        extra: dict[int, int] = {}
        for module in self.extra_modules().values():
            for p in module.parameters():
                if id(p) not in own:
                    extra[id(p)] = p.numel()
        return sum(extra.values()), sum(p.numel() for p in network.parameters())

    def log_extra_parameters(self) -> None:
        """One log line with the size of the method's extra modules next to the segmentation network's."""
        extra, network = self.extra_parameter_count()
        if extra:
            names = ", ".join(
                name for name, m in self.extra_modules().items() if any(True for _ in m.parameters())
            )
            self.print_to_log_file(
                f"extra modules: {extra:,} parameters ({100 * extra / max(network, 1):.1f} % of the segmentation "
                f"network's {network:,}; {names})"
            )

    # ------------------------------------------------------------------ training loop hooks
    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self.local_rank == 0:
            remove_stale_checkpoint_temporaries(self.output_folder, self.print_to_log_file)
            self.log_extra_parameters()
        if self.uses_unlabeled_data:
            self.prepare_unlabeled_data()
        super().on_train_start()
        if not self._semisup_state_restored:
            self.on_fresh_start()

    def on_fresh_start(self) -> None:
        """Called once at the start of a run that did not resume from a checkpoint, after
        ``-pretrained_weights`` were loaded into the network: sync teachers to the student here."""

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    def compute_loss(
        self, data: torch.Tensor, target: torch.Tensor | list[torch.Tensor], unlabeled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """The training objective of one iteration; the default is nnU-Net's supervised loss alone.

        Args:
            data: (B, C, *patch) labeled images.
            target: nnU-Net's targets, (B, 1, *patch) or a list of those per deep-supervision scale.
            unlabeled: (B_u, C, *patch) unlabeled images, or None when ``uses_unlabeled_data`` is False.

        Returns:
            The scalar loss to minimize, and named scalars to log (``semisup_log_keys``).
        """
        return self.loss(self.network(data), target), {}

    def with_ramped_term(
        self, loss_sup: torch.Tensor, term: str, loss: torch.Tensor, max_weight: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """``loss_sup + w(t) * loss`` with ``w(t)`` = :meth:`rampup_weight` of ``max_weight``, and the terms to log
        under the package's log-key scheme: ``loss_sup``, ``loss_<term>`` and ``<term>_weight``."""
        weight = self.rampup_weight(max_weight)
        return loss_sup + weight * loss, {
            "loss_sup": loss_sup,
            f"loss_{term}": loss,
            f"{term}_weight": weight,
        }

    # ------------------------------------------------------------------ labeled + unlabeled batches
    @staticmethod
    def joint_batch(data: torch.Tensor, unlabeled: torch.Tensor | None) -> torch.Tensor:
        """The labeled images followed by the unlabeled ones, for one forward pass over both.

        Shapes:
            data: (B, C, *patch); unlabeled: (B_u, C, *patch) or None. Returns (B + B_u, C, *patch) (``data``
            itself when ``unlabeled`` is None).
        """
        return torch.cat([data, unlabeled]) if unlabeled is not None else data

    def labeled_loss_and_logits(
        self,
        output: torch.Tensor | list[torch.Tensor],
        target: torch.Tensor | list[torch.Tensor],
        n_labeled: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """nnU-Net's supervised loss (``self.loss``) on the first ``n_labeled`` samples of a network output over a
        :meth:`joint_batch`, and the full-resolution logits of the whole batch.

        Args:
            output: (B + B_u, K, *patch) logits, or with deep supervision a list of those per scale, full
                resolution first (each scale split the same way).
            target: nnU-Net's targets of the labeled samples (a list per scale with deep supervision).
            n_labeled: B.

        Returns:
            The scalar loss and the (B + B_u, K, *patch) full-resolution logits.
        """
        if isinstance(output, (list, tuple)):
            return self.loss([o[:n_labeled] for o in output], target), output[0]
        return self.loss(output[:n_labeled], target), output

    @staticmethod
    def full_resolution_target(target: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """The full-resolution target, (B, 1, *patch) (the first scale under deep supervision)."""
        return target[0] if isinstance(target, (list, tuple)) else target

    def gradient_clipping_groups(self) -> list[Iterable[torch.nn.Parameter]]:
        """Parameter groups whose gradient norms are clipped to 12 separately (as nnU-Net does for its
        network). Add a group per extra network or head that the optimizer trains."""
        return [self.network.parameters()]

    def _clip_gradients(self) -> None:
        for group in self.gradient_clipping_groups():
            torch.nn.utils.clip_grad_norm_(group, 12)

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step, with ``self.global_step`` already counting it (EMA updates)."""

    def train_step(self, batch: dict) -> dict:
        try:
            return self._train_step(batch)
        except torch.OutOfMemoryError as error:  # torch.cuda.OutOfMemoryError is the same class
            # the original message (sizes, allocator state) is kept; nnU-Net's batch sizes are the usual fix
            raise torch.OutOfMemoryError(self.out_of_memory_message(error)) from None

    def _train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        unlabeled = self.next_unlabeled_batch() if self.uses_unlabeled_data else None

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            loss, terms = self.compute_loss(data, target, unlabeled)
        terms = {
            k: float(v.detach().float().cpu()) if torch.is_tensor(v) else float(v) for k, v in terms.items()
        }
        if not self._loss_is_finite(loss):
            return self._skip_nonfinite_step(loss, terms)
        self.consecutive_nonfinite_steps = 0
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._clip_gradients()
            self.optimizer.step()
        self.global_step += 1
        self.after_optimizer_step()
        return {"loss": loss.detach().cpu().numpy(), **terms}

    # ------------------------------------------------------------------ out of memory
    def labeled_batch_setting(self) -> tuple[int, str]:
        """The labeled batch size of one training step on this rank, and where a user changes it."""
        plans_file = os.path.join(
            self.preprocessed_dataset_folder_base, f"{self.plans_manager.plans_name}.json"
        )
        return self.batch_size, (
            f'"batch_size" of configuration "{self.configuration_name}" in {plans_file} (or in a copy of the plans '
            f"under a new name, given to nnUNetv2_train with -p)"
        )

    def out_of_memory_message(self, error: BaseException) -> str:
        """What ran out of memory in a training step, with the batch sizes and how to lower them."""
        labeled, where = self.labeled_batch_setting()
        patch = "x".join(str(p) for p in self.configuration_manager.patch_size)
        if self.uses_unlabeled_data:
            unlabeled_size = self.unlabeled_batch_size or self.batch_size
            unlabeled = (
                f"unlabeled batch {unlabeled_size} "
                f"({'the labeled batch size' if self.unlabeled_batch_size is None else 'unlabeled_batch_size'})"
            )
            unlabeled_fix = (
                f"; the unlabeled batch with a subclass of {self.__class__.__name__} that sets "
                f"unlabeled_batch_size (an int; None = the labeled batch size)"
            )
        else:
            unlabeled, unlabeled_fix = "no unlabeled batch", ""
        ranks = f", per GPU of {dist.get_world_size()}" if self.is_ddp else ""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"{self.device.type.upper()} out of memory in a training step of {self.__class__.__name__} "
            f"(labeled batch {labeled}, {unlabeled}{ranks}; patch {patch}, configuration "
            f"{self.configuration_name}). Lower the labeled batch with {where}{unlabeled_fix}. Training on more "
            f"GPUs (-num_gpus) splits the labeled batch between them. Original error: {first_line}"
        )

    # ------------------------------------------------------------------ numeric guard
    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().to(torch.int32)
        if self.is_ddp:  # every rank skips together, or DDP's gradient all-reduce would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def _skip_nonfinite_step(self, loss: torch.Tensor, terms: dict[str, float]) -> dict:
        """No backward, no optimizer or EMA step; abort after ``max_consecutive_nonfinite_steps`` in a row,
        before anything non-finite reaches the weights or a checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.consecutive_nonfinite_steps += 1
        bad = [k for k, v in terms.items() if not np.isfinite(v)] or ["loss"]
        self.print_to_log_file(
            f"WARNING: non-finite training loss ({', '.join(bad)}) at iteration {self.global_step}: step skipped "
            f"({self.consecutive_nonfinite_steps} in a row, {self.nonfinite_steps} in total)"
        )
        if self.consecutive_nonfinite_steps >= self.max_consecutive_nonfinite_steps:
            raise RuntimeError(
                f"{self.consecutive_nonfinite_steps} consecutive training steps had a non-finite loss "
                f"({', '.join(bad)}); stopping before the weights are corrupted. The last checkpoint in "
                f"{self.output_folder} is untouched: resume from it with --c after fixing the cause (data with "
                f"NaNs, a learning rate too high for AMP), or raise max_consecutive_nonfinite_steps in a subclass."
            )
        return {"loss": np.array(np.nan), **terms, "skipped": True}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        skipped = sum(bool(o.get("skipped")) for o in train_outputs)
        kept = [o for o in train_outputs if not o.get("skipped")] or train_outputs
        super().on_train_epoch_end(kept)
        if skipped:
            self.print_to_log_file(f"skipped {skipped} non-finite step(s) this epoch")
        train_outputs = kept
        summary = []
        for key in self.semisup_log_keys:
            values = np.array([o[key] for o in train_outputs if key in o], dtype=float)
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, values)
                values = np.concatenate(gathered)
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            self.logger.log(key, mean, self.current_epoch)
            summary.append(f"{key} {mean:.4g}")
        if summary:
            self.print_to_log_file("semi-supervised terms: " + ", ".join(summary))

    # ------------------------------------------------------------------ checkpoints
    def get_semisup_state(self) -> dict:
        """Extra state saved under the checkpoint's ``semisup_state`` key; extend it in subclasses."""
        return {
            "format": SEMISUP_STATE_FORMAT,
            "global_step": self.global_step,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def set_semisup_state(self, state: dict) -> None:
        """Restore what :meth:`get_semisup_state` saved (called by ``load_checkpoint``, i.e. on ``--c``)."""
        self.global_step = int(state["global_step"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))

    def checkpoint_network_weights(self) -> dict[str, torch.Tensor]:
        """The state_dict saved as the checkpoint's ``network_weights``, what ``nnUNetv2_predict`` (any ``-chk``)
        predicts with: the trained network by default (a variant that predicts with another network of the
        same architecture returns that one's, in every checkpoint)."""
        return unwrap_network(self.network).state_dict()

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net's checkpoint (same keys, so nnU-Net's predictor and -pretrained_weights read it) plus our
        # state, written atomically.
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": self.checkpoint_network_weights(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            SEMISUP_STATE_KEY: self.get_semisup_state(),
        }
        atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        # nnUNetv2_train --c / --val / --val_best load before training: a checkpoint that does not fit this run
        # (e.g. another schedule) is the user's input too
        with self.exit_on_user_input_error():
            self._load_checkpoint(filename_or_checkpoint)

    def _load_checkpoint(self, filename_or_checkpoint: str) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError(
                "load_checkpoint expects the path of a checkpoint file (nnU-Net 2.8 reads paths only)"
            )
        super().load_checkpoint(filename_or_checkpoint)
        # mmap: the second read only touches the semisup_state tensors, not the whole file again
        checkpoint = torch.load(
            filename_or_checkpoint, map_location=self.device, weights_only=False, mmap=True
        )
        state = checkpoint.get(SEMISUP_STATE_KEY)
        if state is None:
            warnings.warn(
                f"{filename_or_checkpoint} has no {SEMISUP_STATE_KEY!r}: extra state starts fresh "
                f"(teachers copied from the network, ramp-up clock from the epoch counter)",
                stacklevel=2,
            )
            self.global_step = self.current_epoch * self.num_iterations_per_epoch
            return
        self.set_semisup_state(state)
        self._semisup_state_restored = True
