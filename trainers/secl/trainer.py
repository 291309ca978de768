"""``SECLTrainer``: Xiang et al., "Self-Ensembling Contrastive Learning for Semi-Supervised Medical Image
Segmentation" (no public code; this is a reference implementation), and its sampling/ablation variants."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semisup.schedules import ema_update
from nnunet_semisup.trainers.base import SemiSupervisedTrainer, unwrap_network
from nnunet_semisup.trainers.secl.cube_sampling import (
    anatomical_cube_slots,
    crop_cubes,
    cube_starts,
    effective_cube_size,
    fit_region_grid,
    minimum_crop_size,
    region_grid,
    region_masks,
)
from nnunet_semisup.trainers.secl.info_nce_loss import InfoNCELoss
from nnunet_semisup.trainers.secl.projection_head import ProjectionHead
from nnunet_semisup.trainers.secl.view_augmentation import ViewAugmentation


def make_ema_teacher(student_parts: nn.ModuleDict) -> nn.ModuleDict:
    """The EMA teacher of SECL: a copy of the student's parts (encoder, projector; a decoder too when it makes
    pseudo-labels) that never receives gradients and has deep supervision off. One deep copy of the whole
    dict, so modules shared between parts (nnU-Net's decoder holds the encoder) stay shared in the copy and
    the parameter order matches the student's for :func:`~nnunet_semisup.schedules.ema_update`."""
    teacher = copy.deepcopy(student_parts).requires_grad_(False).eval()
    if "decoder" in teacher:
        teacher["decoder"].deep_supervision = False
    return teacher


@torch.no_grad()
def half_resolution_logits(
    encoder: nn.Module, decoder: nn.Module, images: torch.Tensor
) -> torch.Tensor | None:
    """Logits of the decoder's deep-supervision head one stage below full resolution, computed without the
    full-resolution decoder stage (the most expensive one); None where the decoder is not structured like
    dynamic_network_architectures' ``UNetDecoder`` (``transpconvs``, ``stages``, ``seg_layers``; >= 2 stages).

    Shapes:
        images: (B, C, *patch). Returns (B, num_classes, *patch / finest stride).
    """
    if (
        not all(hasattr(decoder, a) for a in ("transpconvs", "stages", "seg_layers"))
        or len(decoder.stages) < 2
    ):
        return None
    skips = encoder(images)
    x = skips[-1]
    finest = len(decoder.stages) - 1
    for s in range(finest):  # UNetDecoder.forward up to (not including) the full-resolution stage
        x = decoder.stages[s](torch.cat((decoder.transpconvs[s](x), skips[-(s + 2)]), dim=1))
    return decoder.seg_layers[finest - 1](x)


class SECLTrainer(SemiSupervisedTrainer):
    """Supervised nnU-Net loss on labeled patches plus a ramped-up contrastive loss on unlabeled cubes:
    ``L = L_s + lambda(t) L_c`` with ``lambda(t) = 0.1 exp(-5 (1 - t/t_max)^2)``.

    Every iteration, K cubes are cropped from the (nnU-Net-augmented) unlabeled patches, around the anatomical
    centre of each substructure that the current model predicts there (anatomical-aware sampling, AACS; the
    paper's best). Two random views of the cubes (flip, rotation, scale, elastic, intensity shift; see
    :class:`~nnunet_semisup.trainers.secl.view_augmentation.ViewAugmentation`) go through the student encoder + projector (with
    gradient) and through the teacher encoder + projector (no gradient, no decoder). L_c is InfoNCE: a cube's
    other view is its positive, the 2(K-1) other views of the minibatch its negatives. The teacher is an EMA
    of the student's encoder and projector (Eq. 3), decay ``alpha`` from the first step.

    ``network_weights`` in the checkpoint is the stock nnU-Net network (the student), which nnU-Net validates
    and ``nnUNetv2_predict -tr SECLTrainer`` uses; the projector and the teacher are saved in
    ``semisup_state`` (``projector``; ``teacher`` with ``encoder.*`` and ``projector.*`` keys).
    """

    contrast_weight: float = 0.1  # lambda_max of the ramp-up (Xiang et al.)
    ema_decay: float = 0.9  # alpha of Eq. 3, the paper's best (0 = single model, 0.99 too slow)
    temperature: float = (
        0.1  # tau of Eq. 2 (no value given): Chaitanya et al. 2020's, see docs/methods/secl.md
    )
    projector_hidden_dim: int = 256  # shallow MLP (paper: "low-dimensional"); see README
    projector_out_dim: int = 128  # SimCLR's / Chaitanya et al.'s embedding size
    projector_pooled_size: int = 2  # bottleneck pooled to 2^3 cells, not 1: see ProjectionHead
    sampling: str = "anatomical"  # "anatomical" (AACS) or "region" (RACS)
    num_cubes: int | None = None  # AACS: K >= C; None = one cube per foreground class and unlabeled image
    cube_size: int = 24  # cube edge in voxels, capped at the patch (RACS: at the region); see README
    region_grid: tuple[int, ...] = (2, 2, 2)  # RACS partitions per axis (fewer where the patch is small)
    pseudo_label_source: str = "student"  # or "teacher" (the teacher then also keeps an EMA decoder)
    pseudo_labels_at_half_resolution: bool = True  # cube centres need no full-resolution map; see README
    semisup_log_keys = ("loss_sup", "loss_contrast", "contrast_weight", "cubes_anchored")

    def planar_region_grid(self, ndim: int) -> tuple[int, ...]:
        """``region_grid`` for patches of ``ndim`` axes: as given when it has one entry per axis; the 3D default's
        last ``ndim`` entries for 2D patches (nnU-Net's 2D patches are the last two axes of the volume: the
        paper's cubes and regions become squares, which is all RACS needs)."""
        grid = (self.region_grid,) * ndim if isinstance(self.region_grid, int) else tuple(self.region_grid)
        return grid[-ndim:] if len(grid) > ndim else grid

    def initialize(self) -> None:
        if self.sampling not in ("anatomical", "region"):
            raise ValueError(
                f"{self.__class__.__name__}.sampling must be 'anatomical' or 'region', got {self.sampling!r}"
            )
        if self.pseudo_label_source not in ("student", "teacher"):
            raise ValueError(
                f"{self.__class__.__name__}.pseudo_label_source must be 'student' or 'teacher', "
                f"got {self.pseudo_label_source!r}"
            )
        super().initialize()  # builds the projector through configure_optimizers
        student = unwrap_network(self.network)
        # the projector only runs outside nnU-Net's DDP wrapper, so it needs its own for gradient averaging
        self.projector_for_training = (
            self.wrap_ddp(self.projector, sync_batchnorm=False) if self.is_ddp else self.projector
        )
        # made from the unwrapped student after nnU-Net's DDP wrap, never wrapped, never given gradients
        self.student_parts = nn.ModuleDict({"encoder": student.encoder, "projector": self.projector})
        if self.pseudo_label_source == "teacher":
            self.student_parts["decoder"] = student.decoder
        self.teacher = make_ema_teacher(self.student_parts)
        self.contrastive_loss = InfoNCELoss(self.temperature)
        self.view_augmentation = ViewAugmentation(
            flip_axes=tuple(range(len(self.configuration_manager.patch_size)))
        )

        patch_size = self.configuration_manager.patch_size
        total_strides = torch.tensor(student.encoder.strides).prod(dim=0).tolist()
        minimum = minimum_crop_size(total_strides, patch_size)
        self.cube_shape = effective_cube_size(self.cube_size, patch_size, minimum)
        self.region_grid_shape = fit_region_grid(
            self.planar_region_grid(len(patch_size)), patch_size, minimum
        )
        self.foreground_classes = (
            list(self.label_manager.regions_class_order)
            if self.label_manager.has_regions
            else list(range(1, self.label_manager.num_segmentation_heads))
        )
        if self.sampling == "anatomical":
            self.print_to_log_file(
                f"SECL AACS: cubes {self.cube_shape} around classes {self.foreground_classes}, K = "
                f"{self.num_cubes or 'unlabeled batch size x classes'}; pseudo-labels from the "
                f"{self.pseudo_label_source}"
            )
        else:
            self.print_to_log_file(
                f"SECL RACS: region grid {self.region_grid_shape} over the patch {patch_size}"
            )

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        # The projector trains with the network (same SGD, poly learning rate and weight decay). It is built
        # here, before nnU-Net hands the optimizer on, so that its momentum is part of the optimizer state that
        # --c restores.
        self.projector = ProjectionHead(
            unwrap_network(self.network).encoder.output_channels[-1],
            len(self.configuration_manager.patch_size),
            self.projector_hidden_dim,
            self.projector_out_dim,
            self.projector_pooled_size,
        ).to(self.device)
        optimizer.add_param_group({"params": list(self.projector.parameters())})
        return optimizer, lr_scheduler

    def gradient_clipping_groups(self):
        return [*super().gradient_clipping_groups(), self.projector.parameters()]

    def on_fresh_start(self) -> None:
        # after -pretrained_weights were loaded into the student
        self.teacher.load_state_dict(self.student_parts.state_dict())

    # ------------------------------------------------------------------ contrastive minibatch
    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *patch) images -> (B, *patch) label map predicted by the student (or the EMA teacher).

        By default from the half-resolution deep-supervision head (trained by nnU-Net's loss), upsampled by
        nearest neighbour: locating cube centres needs no full-resolution map, and skipping the decoder's
        full-resolution stage saves about a quarter of this extra forward pass.
        """
        if self.pseudo_label_source == "teacher":
            encoder, decoder = self.teacher["encoder"], self.teacher["decoder"]
        else:
            student = unwrap_network(self.network)
            encoder, decoder = student.encoder, student.decoder
        logits = (
            half_resolution_logits(encoder, decoder, images)
            if self.pseudo_labels_at_half_resolution
            else None
        )
        if logits is None:
            logits = decoder(encoder(images))
            if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
                logits = logits[0]
        if self.label_manager.has_regions:
            seg = torch.stack([self.label_manager.convert_logits_to_segmentation(x) for x in logits])
        else:
            seg = logits.argmax(dim=1)
        if seg.shape[1:] != images.shape[2:]:
            seg = F.interpolate(seg[:, None].float(), size=images.shape[2:], mode="nearest")[:, 0].long()
        return seg

    def contrastive_minibatch(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, float]]:
        """Cubes to contrast from the unlabeled patches, with InfoNCE's masks (None = pair form).

        Shapes:
            images: (B, C, *patch). Returns cubes (K, C, *cube), masks (K, 2K) or None, and scalars to log.
        """
        spatial = images.shape[2:]
        if self.sampling == "anatomical":
            slots = anatomical_cube_slots(self.pseudo_labels(images), self.foreground_classes, self.num_cubes)
            starts = cube_starts(slots.centres, self.cube_shape, spatial)
            cubes = crop_cubes(images, slots.image_index, starts, self.cube_shape)
            return cubes, None, None, {"cubes_anchored": slots.anchored.float().mean().item()}
        starts, size = region_grid(spatial, self.region_grid_shape, self.cube_shape)
        batch, regions = images.shape[0], starts.shape[0]
        image_index = torch.arange(batch).repeat_interleave(regions)
        cubes = crop_cubes(images, image_index, starts.repeat(batch, 1), size)
        positive, negative = region_masks(torch.arange(regions).repeat(batch))
        return cubes, positive, negative, {}

    # ------------------------------------------------------------------ objective and EMA
    def compute_loss(self, data, target, unlabeled):
        loss_sup = self.loss(self.network(data), target)
        if unlabeled is None:
            return loss_sup, {"loss_sup": loss_sup}
        cubes, positive, negative, extra = self.contrastive_minibatch(unlabeled)
        z_student = self.projector_for_training(
            self.student_parts["encoder"](self.view_augmentation(cubes))[-1]
        )
        with torch.no_grad():
            z_teacher = self.teacher["projector"](self.teacher["encoder"](self.view_augmentation(cubes))[-1])
        loss_contrast = self.contrastive_loss(z_student, z_teacher, positive, negative)
        objective, terms = self.with_ramped_term(loss_sup, "contrast", loss_contrast, self.contrast_weight)
        return objective, {**terms, **extra}

    def after_optimizer_step(self) -> None:
        if self.uses_unlabeled_data:
            # plain EMA from the first step (Eq. 3), no warm-up: the alpha ablation is about this decay
            ema_update(self.teacher, self.student_parts, self.ema_decay)

    # ------------------------------------------------------------------ checkpoint
    def get_semisup_state(self) -> dict:
        state = super().get_semisup_state()
        state["projector"] = self.projector.state_dict()
        state["teacher"] = self.teacher.state_dict()
        return state

    def set_semisup_state(self, state: dict) -> None:
        super().set_semisup_state(state)
        self.projector.load_state_dict(state["projector"])
        self.teacher.load_state_dict(state["teacher"])


class SECLTrainer_RACS(SECLTrainer):
    """SECL with region-aware sampling (RACS): every unlabeled patch is cut into a grid of regions; the same
    region of different images and both views are positives, other regions negatives. Needs roughly aligned
    images (see README): on unaligned data "same region" is not "same anatomy"."""

    sampling = "region"
    semisup_log_keys = ("loss_sup", "loss_contrast", "contrast_weight")


class SECLTrainer_alpha0(SECLTrainer):
    """Ablation: EMA decay 0, the teacher is the current student (a single model, no self-ensembling)."""

    ema_decay = 0.0


class SECLTrainer_alpha099(SECLTrainer):
    """Ablation: EMA decay 0.99, a slow teacher (the paper finds it worse than 0.9)."""

    ema_decay = 0.99


class SECLTrainer_NoContrast(SECLTrainer):
    """Ablation: contrastive weight 0, i.e. nnU-Net's supervised loss alone on the same schedule (unlabeled
    images are not loaded; the projector and teacher are built but never trained)."""

    contrast_weight = 0.0
    uses_unlabeled_data = False
    semisup_log_keys = ("loss_sup",)
