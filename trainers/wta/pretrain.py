"""Winner-take-all autoencoder pretraining (the first step of S-TL): Sital et al., "3D medical image segmentation
with labeled and unlabeled data using autoencoders at the example of liver segmentation in CT images" (no public
code). Fine-tuning: :mod:`~nnunet_semisup.trainers.wta.finetune`; multi-task training (S-MTL):
:mod:`~nnunet_semisup.trainers.wta.multitask`."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from torch import nn

from nnunet_semisup.data.loader import CentreGaussianDataLoader, UnlabeledDataLoader
from nnunet_semisup.data.unlabeled import UnlabeledDataError, unlabeled_status
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.wta.autoencoder import (
    WTAAutoencoderHeads,
    encoder_level_features,
    huber_loss_per_sample,
    save_reconstruction_figure,
    wta_heads_for_plans,
)
from nnunet_semisup.training_log import SemiSupLocalLogger

WTA_HEADS_KEY = "wta_decoders"


class WTAPretrainStep(nn.Module):
    """The encoder and the WTA decoders of one pretraining step as one module, so that a single DDP wrap covers
    every parameter that gets a gradient (nnU-Net's wrap of the whole network is never called in training: its
    decoder is unused here). Holds references to the network's encoder and the heads, no copies.

    ``forward(images (B, C, *patch))`` -> (mean WTA loss over the levels, [loss per level]).
    """

    def __init__(self, encoder: nn.Module, heads: WTAAutoencoderHeads, detach_level_inputs: bool = True):
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.detach_level_inputs = detach_level_inputs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs, outputs = encoder_level_features(
            self.encoder, images, self.heads.num_levels, self.detach_level_inputs
        )
        return self.heads(inputs, outputs)


class WTATrainerBase(SemiSupervisedTrainer):
    """What WTA pretraining and multi-task training share (not a method by itself): one WTA decoder per
    encoder level (:class:`nnunet_semisup.trainers.wta.autoencoder.WTAAutoencoderHeads`), trained by nnU-Net's SGD optimizer in an
    extra parameter group, saved under ``semisup_state['wta_decoders']`` and restored by ``--c``.

    The encoder is ``self.network.encoder`` (nnU-Net's planned network, unchanged): its weights keep nnU-Net's
    names, so ``network_weights`` moves into a segmentation network by name (``-pretrained_weights``).
    """

    # winners per feature map: Sital et al. found k = 1 too sparse in 3D and use k = 5
    wta_k: int = 5
    # encoder levels with a WTA autoencoder; None = every encoder stage
    wta_num_levels: int | None = None

    def on_init(self) -> None:
        super().on_init()
        self.num_wta_levels = self._resolve_num_levels()
        # one curve per level, next to the subclass's own keys
        self.semisup_log_keys = tuple(self.semisup_log_keys) + tuple(
            f"loss_wta_level{level}" for level in range(self.num_wta_levels)
        )
        self.logger.local_logger = SemiSupLocalLogger(self.semisup_log_keys)

    def _resolve_num_levels(self) -> int:
        n_stages = len(self.configuration_manager.network_arch_init_kwargs["features_per_stage"])
        levels = n_stages if self.wta_num_levels is None else int(self.wta_num_levels)
        if not 1 <= levels <= n_stages:
            raise ValueError(
                f"{self.__class__.__name__}.wta_num_levels = {self.wta_num_levels}, but the planned encoder "
                f"({self.plans_manager.plans_name}, {self.configuration_name}) has {n_stages} stages: use 1 to "
                f"{n_stages} or None (all)"
            )
        return levels

    def build_wta_heads(self) -> WTAAutoencoderHeads:
        return wta_heads_for_plans(
            self.configuration_manager.network_arch_init_kwargs,
            self.num_input_channels,
            self.num_wta_levels,
            self.wta_k,
        ).to(self.device)

    def configure_optimizers(self):
        # built here (inside initialize(), before the optimizer) so the decoders get their own parameter group
        # with nnU-Net's settings, scheduled by PolyLR like the network
        self.wta_heads = self.build_wta_heads()
        optimizer, lr_scheduler = super().configure_optimizers()
        optimizer.add_param_group({"params": list(self.wta_heads.parameters())})
        return optimizer, lr_scheduler

    def build_wta_step(self) -> nn.Module:
        """The module of one training step (network parts + ``self.wta_heads``) that the subclass calls."""
        raise NotImplementedError

    def initialize(self) -> None:
        super().initialize()
        # the training step's forward runs through one module that holds every trained part; with -num_gpus > 1
        # it gets one DDP wrap (rank 0's decoders broadcast, all gradients averaged). nnU-Net's own wrap of
        # self.network stays for validation and prediction.
        step = self.build_wta_step()
        if self._do_i_compile():
            # training runs through this module, not through nnU-Net's compiled self.network (which holds the
            # same weights and stays for validation): compile it too, before the DDP wrap as nnU-Net does
            step = torch.compile(step)
        n_stages = len(unwrap_network(self.network).encoder.stages)
        self.wta_step = (
            self.wrap_ddp(
                step,
                sync_batchnorm=False,
                find_unused_parameters=self.wta_step_has_unused_parameters(n_stages),
            )
            if self.is_ddp
            else step
        )

    def wta_step_has_unused_parameters(self, n_stages: int) -> bool:
        """Whether some parameters of the step module get no gradient (encoder stages past the WTA levels)."""
        return self.num_wta_levels < n_stages

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.wta_heads.train()

    def gradient_clipping_groups(self):
        return [self.network.parameters(), self.wta_heads.parameters()]

    @property
    def encoder(self) -> torch.nn.Module:
        return unwrap_network(self.network).encoder

    @staticmethod
    def level_terms(per_level: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-level WTA losses (scalars) as the logged terms ``loss_wta_level{i}``."""
        return {f"loss_wta_level{i}": v for i, v in enumerate(per_level)}

    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state[WTA_HEADS_KEY] = self.wta_heads.state_dict()
        state["wta_k"] = self.wta_k
        state["wta_num_levels"] = self.num_wta_levels
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        self.wta_heads.load_state_dict(state[WTA_HEADS_KEY])


class WTAPretrainTrainer(WTATrainerBase):
    """Pretraining of the encoder as stacked winner-take-all autoencoders on labeled + unlabeled images (no
    labels used): level 0 reconstructs the image patch, level ``i > 0`` the features entering ``stages[i]``
    (see :mod:`nnunet_semisup.trainers.wta.autoencoder`); loss = mean over levels of the Huber loss (delta 1).

    Every iteration uses the images of nnU-Net's labeled batch (patches placed uniformly at random: foreground
    oversampling is off, labels are never read) and one unlabeled batch. With ``patch_centre_sampling =
    "gaussian"`` (``WTAPretrainTrainer_CentreGaussian``) both the labeled cases' images and the unlabeled ones are
    drawn with patch centres ~ N(image centre, (size / 4)^2) per axis, for datasets whose images all show the same
    region (Sital et al.); nnU-Net's labeled batch is then not used. Validation reports the reconstruction
    loss of the validation cases' patches (``val_losses``; no Dice: there is no segmentation), there is no
    ``checkpoint_best``, and the final validation writes ``reconstructions.png`` (a few unlabeled patches,
    centre crops, mid slice: input, reconstruction, error) and ``validation/reconstruction_summary.json``.

    ``network_weights`` of ``checkpoint_final.pth`` is the whole planned segmentation network with the pretrained
    encoder (the decoder keeps its initialization), which is what stock ``nnUNetv2_train ... -tr
    WTAFinetuneTrainer -pretrained_weights .../checkpoint_final.pth`` requires.
    """

    # labels are not used in pretraining: patches uniformly at random, like the unlabeled ones
    oversample_foreground_percent_pretrain: float = 0.0
    # unlabeled patches shown in reconstructions.png at the end
    num_reconstruction_examples: int = 4
    # "uniform" (nnU-Net's random placement, any dataset) or "gaussian" around the image centre (sigma = 1/4 of
    # the size; Sital et al., for images that all show the same region)
    patch_centre_sampling: str = "uniform"

    def on_init(self) -> None:
        super().on_init()
        if self.patch_centre_sampling not in ("uniform", "gaussian"):
            raise ValueError(
                f"{self.__class__.__name__}.patch_centre_sampling must be 'uniform' or 'gaussian', got "
                f"{self.patch_centre_sampling!r}"
            )
        self.oversample_foreground_percent = self.oversample_foreground_percent_pretrain
        self.dataloader_labeled_images = None
        # no Dice is computed: never write checkpoint_best (nnU-Net writes it when the EMA Dice beats this)
        self._best_ema = float("-inf")

    @property
    def unlabeled_loader_class(self) -> type:
        return CentreGaussianDataLoader if self.patch_centre_sampling == "gaussian" else UnlabeledDataLoader

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        if self.patch_centre_sampling == "gaussian":
            # the labeled cases' images with the same centre-biased placement (nnU-Net's loader has no hook)
            train_keys, _ = self.do_split()
            self.dataloader_labeled_images = self.get_unlabeled_dataloader(
                self.preprocessed_dataset_folder, sorted(train_keys)
            )
        return dataloader_train, dataloader_val

    def on_train_end(self) -> None:
        super().on_train_end()
        if isinstance(self.dataloader_labeled_images, NonDetMultiThreadedAugmenter):
            self.dataloader_labeled_images._finish()
        self.dataloader_labeled_images = None

    def build_wta_step(self) -> nn.Module:
        return WTAPretrainStep(self.encoder, self.wta_heads, detach_level_inputs=True)

    def compute_loss(self, data, target, unlabeled):
        if self.dataloader_labeled_images is not None:
            data = next(self.dataloader_labeled_images)["data"].to(self.device, non_blocking=True)
        images = self.joint_batch(data, unlabeled)
        loss, per_level = self.wta_step(images)  # through the DDP wrap if any
        return loss, self.level_terms(per_level)

    def wta_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean WTA reconstruction loss over the levels for (B, C, *patch) images, and each level's loss, outside
        DDP (validation runs on rank 0 alone)."""
        loss, per_level = unwrap_network(self.wta_step)(images)
        return loss, self.level_terms(per_level)

    # ------------------------------------------------------------------ validation without Dice
    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast_context():  # the training step's precision, as nnU-Net validates
            loss, _ = self.wta_loss(data)
        return {"loss": float(loss.detach().cpu())}

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        loss = float(np.mean([o["loss"] for o in val_outputs])) if val_outputs else float("nan")
        self.logger.log("val_losses", loss, self.current_epoch)
        # nnU-Net's logger and progress plot expect one Dice entry per epoch: there is none in pretraining
        self.logger.log("mean_fg_dice", float("nan"), self.current_epoch)
        self.logger.log("dice_per_class_or_region", [], self.current_epoch)
        self.print_to_log_file(f"validation reconstruction loss (Huber): {loss:.4f}")

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Reconstructions of a few unlabeled patches (labeled validation cases if there are no unlabeled
        ones) as ``reconstructions.png`` and their per-level losses in ``validation/reconstruction_summary.json``."""
        if self.local_rank != 0:
            return
        self.network.eval()
        self.wta_heads.eval()
        folder, case_ids = self._reconstruction_cases()
        dataset = nnUNetDatasetBlosc2(folder, case_ids)
        patches = torch.stack(
            [torch.from_numpy(self._centre_patch(np.asarray(dataset.load_case(c)[0]))) for c in case_ids]
        ).to(self.device)
        with torch.no_grad():
            _, outputs = encoder_level_features(self.encoder, patches, 1)
            reconstruction = self.wta_heads.reconstruct(0, outputs[0], patches.shape[2:])
            per_case = huber_loss_per_sample(reconstruction, patches).cpu().tolist()
            mean_loss, per_level = self.wta_loss(patches)
        png = os.path.join(self.output_folder, "reconstructions.png")
        save_reconstruction_figure(patches.cpu().numpy(), reconstruction.cpu().numpy(), case_ids, png)
        summary = {
            "source": folder,
            "cases": dict(zip(case_ids, per_case)),
            "mean_level0_loss": float(np.mean(per_case)),
            "mean_loss_all_levels": float(mean_loss),
            "loss_per_level": [float(v) for v in per_level.values()],
            "note": "centre patches of the preprocessed images; Huber loss (delta 1); level 0 = image",
        }
        os.makedirs(os.path.join(self.output_folder, "validation"), exist_ok=True)
        with open(os.path.join(self.output_folder, "validation", "reconstruction_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self.print_to_log_file(
            f"reconstructions of {len(case_ids)} patches: {png}; level-0 Huber loss {summary['mean_level0_loss']:.4f}"
        )

    def _reconstruction_cases(self) -> tuple[str, list[str]]:
        ids = list(self.unlabeled_case_ids)
        if not ids:  # --val only: the unlabeled loader was never prepared
            try:
                ids, _ = unlabeled_status(
                    None,
                    self.preprocessed_dataset_folder_base,
                    self.configuration_name,
                    self.plans_manager.plans_name,
                )
            except UnlabeledDataError:
                ids = []
        if ids:
            return self.preprocessed_unlabeled_folder, sorted(ids)[: self.num_reconstruction_examples]
        _, val_keys = self.do_split()
        return self.preprocessed_dataset_folder, sorted(val_keys)[: self.num_reconstruction_examples]

    def _centre_patch(self, image: np.ndarray) -> np.ndarray:
        """(C, *shape) -> (C, *patch_size) float32 centre crop, zero-padded where the image is smaller. With a 2D
        patch (``2d`` configuration; nnU-Net stores 2D images as (C, 1, x, y)) the middle slice along the first
        axis is cropped, as nnU-Net's 2D training sees slices of that axis."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        while image.ndim - 1 > len(patch):
            image = image[:, image.shape[1] // 2]
        out = np.zeros((image.shape[0], *patch), dtype=np.float32)
        src, dst = [], []
        for size, p in zip(image.shape[1:], patch):
            start = max((size - p) // 2, 0)
            length = min(size, p)
            offset = max((p - size) // 2, 0)
            src.append(slice(start, start + length))
            dst.append(slice(offset, offset + length))
        out[(slice(None), *dst)] = image[(slice(None), *src)]
        return out


class WTAPretrainTrainer_CentreGaussian(WTAPretrainTrainer):
    """Patch centres ~ N(image centre, (size / 4)^2) per axis for labeled and unlabeled images (Sital et al.'s
    placement for datasets whose images all show the same region)."""

    patch_centre_sampling = "gaussian"
