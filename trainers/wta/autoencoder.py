"""Winner-take-all (WTA) convolutional autoencoders on the levels of an nnU-Net encoder.

Sital et al., "3D medical image segmentation with labeled and unlabeled data using autoencoders at the example of
liver segmentation in CT images" (no public code), after Makhzani & Frey, "Winner-take-all autoencoders",
NeurIPS 2015 (spatial sparsity): the features of an encoder level are made sparse by keeping, per sample and
per feature map, only the k largest activations, and a single transposed convolution reconstructs the level's
input from those few winners.

Levels. Level ``i`` is ``encoder.stages[i]`` of nnU-Net's planned network (``PlainConvUNet`` /
``ResidualEncoderUNet`` of dynamic-network-architectures). What each level reconstructs:

- level 0 reconstructs the network input (the image patch; after a stem, if the encoder has one, still the image);
- level ``i > 0`` reconstructs the features entering ``stages[i]``, i.e. the output of ``stages[i - 1]``.

The input (= target) of a level ``i > 0`` is detached: each level's autoencoder trains its own stage and its own
decoder only, which is the paper's one autoencoder per resolution level (stacked autoencoders trained greedily,
here simultaneously). A level's decoder is one transposed convolution with the level's stride whose kernel
covers the level's receptive field in its input (:func:`level_receptive_field`), so each winner paints
exactly the input region it sees; its padding centres that region on the winner.

Decoder size. A transposed convolution with ``C_out`` sparse maps, ``C_in`` reconstructed channels and kernel ``K``
has ``C_out * C_in * prod(K)`` weights and costs as many multiply-adds per voxel of the level's output. With
nnU-Net's wide deep stages and the residual encoder's many blocks per stage (ResEnc presets: up to 6 blocks = 12
convolutions, receptive field 47 voxels per axis at 320 features), a receptive-field kernel would hold billions of
weights. Each decoder is therefore sized from its autoencoder, not from the network's widths: its weights are at
most those of the encoder stage it decodes (:func:`decoder_kernel_size`), so the WTA step costs at most one more
pass of the encoder. This is the paper's proportion: its WTA-CAE encoder is three 5^3 CBR blocks of 32 feature
maps (Sital et al. Sec. 3.1, 3.3, 3.4: about 260,000 weights) and its decoder a single transposed convolution to
the 1-channel level input (Sec. 3.3, 3.4) covering their 13^3 footprint (about 70,000 weights), a quarter of the
encoder. Where the budget is below the receptive field the kernel shrinks (odd sizes, largest axes first, never
below the level's stride, which it must tile), and a winner paints the centre of the region it sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semisup.trainers.wta.reconstruction_loss import WTAReconstructionLoss


def winner_take_all(features: torch.Tensor, k: int) -> torch.Tensor:
    """Spatial winner-take-all: keep the ``k`` largest activations of every feature map of every sample.

    Exactly ``min(k, number of voxels)`` entries per ``(sample, channel)`` are kept, also with ties
    (``torch.topk`` picks exactly k indices); all others are set to 0. Gradients flow through the winners only.

    Args:
        features: (B, C, *spatial) feature maps (any number of spatial dims >= 1).
        k: winners per feature map, >= 1.

    Returns:
        (B, C, *spatial), same dtype, with at most k nonzero entries per (b, c) map.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if features.ndim < 3:
        raise ValueError(f"expected (B, C, *spatial) features, got shape {tuple(features.shape)}")
    flat = features.flatten(2)
    n = flat.shape[-1]
    if k >= n:
        return features
    winners = flat.topk(k, dim=-1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, winners, True)
    return (flat * mask).view_as(features)


def level_receptive_field(
    kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]]
) -> tuple[list[int], list[int]]:
    """Receptive field (per spatial dim, in units of the level's input) and total stride of a stack of convs.

    Args:
        kernel_sizes: one kernel size per conv, each a sequence with one entry per spatial dim.
        strides: the stride of each conv, same layout.

    Returns:
        ``(receptive_field, stride)``: ``rf = 1 + sum_j (k_j - 1) * prod_{l<j} s_l`` and ``prod_j s_j``.
    """
    if len(kernel_sizes) != len(strides) or not kernel_sizes:
        raise ValueError(f"need one stride per kernel size, got {len(kernel_sizes)} and {len(strides)}")
    dims = len(kernel_sizes[0])
    field, jump = [1] * dims, [1] * dims
    for kernel, stride in zip(kernel_sizes, strides):
        for d in range(dims):
            field[d] += (int(kernel[d]) - 1) * jump[d]
            jump[d] *= int(stride[d])
    return field, jump


def encoder_level_convs(arch_kwargs: dict, level: int) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides of the convolutions of ``encoder.stages[level]`` of nnU-Net's planned network.

    Args:
        arch_kwargs: ``plans['configurations'][c]['architecture']['arch_kwargs']`` (``PlainConvUNet``:
            ``n_conv_per_stage``; ``ResidualEncoderUNet``: ``n_blocks_per_stage``, two convs a block, plus the
            stem's conv before level 0).

    Returns:
        ``(kernel_sizes, strides)``, one entry per conv, in order; the first conv of the level carries its stride.
    """
    kernel = [int(k) for k in _per_dim(arch_kwargs["kernel_sizes"][level], arch_kwargs)]
    stride = [int(s) for s in _per_dim(arch_kwargs["strides"][level], arch_kwargs)]
    ones = [1] * len(kernel)
    if "n_conv_per_stage" in arch_kwargs:
        n_convs = _per_stage(arch_kwargs["n_conv_per_stage"], level)
    elif "n_blocks_per_stage" in arch_kwargs:
        n_convs = 2 * _per_stage(arch_kwargs["n_blocks_per_stage"], level)
    else:
        raise ValueError(
            "cannot read the encoder's convolutions from the plans: arch_kwargs has neither 'n_conv_per_stage' "
            f"(PlainConvUNet) nor 'n_blocks_per_stage' (ResidualEncoderUNet); keys: {sorted(arch_kwargs)}"
        )
    kernels = [kernel] * n_convs
    strides = [stride] + [ones] * (n_convs - 1)
    if level == 0 and "n_blocks_per_stage" in arch_kwargs:  # ResidualEncoder's stem conv
        kernels, strides = [kernel, *kernels], [ones, *strides]
    return kernels, strides


def encoder_level_weights(arch_kwargs: dict, level: int, in_channels: int) -> int:
    """Convolution weights of ``encoder.stages[level]`` (the stem's too for level 0 of a residual encoder): the
    first convolution maps ``in_channels`` to the level's features, every other one keeps them (biases, norms and
    residual projections left out). The budget of the level's WTA decoder (:func:`decoder_kernel_size`)."""
    kernels, _ = encoder_level_convs(arch_kwargs, level)
    features = int(arch_kwargs["features_per_stage"][level])
    return sum(
        (in_channels if i == 0 else features) * features * int(np.prod(kernel))
        for i, kernel in enumerate(kernels)
    )


def decoder_kernel_size(
    receptive_field: Sequence[int], stride: Sequence[int], in_channels: int, out_channels: int, budget: int
) -> list[int]:
    """The kernel of a level's WTA decoder: its receptive field, shrunk until the decoder has at most ``budget``
    weights (see the module docstring; Sital et al. Sec. 3.3-3.4).

    Args:
        receptive_field, stride: per spatial dim, from :func:`level_receptive_field` (odd fields).
        in_channels: the decoder's input channels (the level's sparse feature maps).
        out_channels: the channels it reconstructs (the level's input).
        budget: the most weights allowed, ``in_channels * out_channels * prod(kernel) <= budget`` (normally
            :func:`encoder_level_weights` of the level).

    Returns:
        Odd kernel sizes per dim: the receptive field where it fits; otherwise the largest axes are reduced by 2
        in turn, never below the smallest odd size that covers the stride. At that floor the budget may still be
        exceeded (a decoder must tile its output).
    """
    kernel = [int(k) for k in receptive_field]
    floor = [max(1, int(s) + 1 - int(s) % 2) for s in stride]  # smallest odd size >= stride
    floor = [min(f, k) for f, k in zip(floor, kernel)]
    while in_channels * out_channels * int(np.prod(kernel)) > budget:
        shrinkable = [d for d in range(len(kernel)) if kernel[d] - 2 >= floor[d]]
        if not shrinkable:
            break
        largest = max(kernel[d] for d in shrinkable)
        for d in shrinkable:
            if kernel[d] == largest:
                kernel[d] -= 2
    return kernel


def _per_stage(value, level: int) -> int:
    return int(value[level]) if isinstance(value, (list, tuple)) else int(value)


def _per_dim(value, arch_kwargs: dict) -> list[int]:
    if isinstance(value, (list, tuple)):
        return list(value)
    dims = 3 if "3d" in str(arch_kwargs.get("conv_op", "Conv3d")).lower() else 2
    return [int(value)] * dims


class WTALevelDecoder(nn.Module):
    """The decoder of one WTA level: a single transposed convolution from the (sparse) level features to the
    level's input (the paper's CBR+upsampling decoder failed to learn; a single transposed conv did).

    Args:
        in_channels: channels of the level's output features.
        out_channels: channels of the level's input (image channels for level 0).
        kernel_size: per spatial dim, usually the level's receptive field (odd).
        stride: per spatial dim, the level's total stride.

    Shapes:
        forward(sparse_features (B, in_channels, *s), output_size (spatial dims of the target))
        -> (B, out_channels, *output_size).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        kernel_size, stride = [int(k) for k in kernel_size], [int(s) for s in stride]
        if len(kernel_size) not in (2, 3) or len(stride) != len(kernel_size):
            raise ValueError(f"kernel_size {kernel_size} and stride {stride} must be 2D or 3D and match")
        transposed = nn.ConvTranspose3d if len(kernel_size) == 3 else nn.ConvTranspose2d
        self.conv = transposed(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=[(k - 1) // 2 for k in kernel_size],  # centres a winner's footprint on the region it sees
        )

    def forward(self, sparse_features: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        return self.conv(sparse_features, output_size=list(output_size))


class WTAAutoencoderHeads(nn.Module):
    """WTA decoders for the first ``len(decoders)`` levels of an nnU-Net encoder, and their loss.

    The encoder itself is not part of this module (it lives in the segmentation network, so its weights keep
    nnU-Net's names); :meth:`forward` takes the level inputs and outputs computed by
    :func:`encoder_level_features`.

    Args:
        in_channels: channels of each level's input (image channels, then ``output_channels[i - 1]``).
        out_channels: channels of each level's output (``encoder.output_channels[i]``).
        kernel_sizes, strides: per level, per spatial dim (see :class:`WTALevelDecoder`).
        k: winners per feature map (Sital et al.: k = 1 was too sparse in 3D, k = 5 used).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        k: int = 5,
    ) -> None:
        super().__init__()
        if (
            not (len(in_channels) == len(out_channels) == len(kernel_sizes) == len(strides))
            or not in_channels
        ):
            raise ValueError(
                "need the same number (>= 1) of in/out channels, kernel sizes and strides per level"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.decoders = nn.ModuleList(
            WTALevelDecoder(c_out, c_in, kernel, stride)
            for c_in, c_out, kernel, stride in zip(in_channels, out_channels, kernel_sizes, strides)
        )
        self.loss = WTAReconstructionLoss()

    @property
    def num_levels(self) -> int:
        return len(self.decoders)

    def reconstruct(self, level: int, level_output: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
        """(B, C_out, *s) level features -> (B, C_in, *output_size) reconstruction of the level's input."""
        return self.decoders[level](winner_take_all(level_output, self.k), output_size)

    def forward(
        self, level_inputs: Sequence[torch.Tensor], level_outputs: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean reconstruction loss over the levels, and the loss of each level.

        Args:
            level_inputs: per level, (B, C_in, *s_in) what the level reconstructs (detached here).
            level_outputs: per level, (B, C_out, *s_out) the level's features (gradient flows into them).

        Returns:
            (scalar mean over levels, [scalar per level]).
        """
        if len(level_inputs) != self.num_levels or len(level_outputs) != self.num_levels:
            raise ValueError(
                f"expected {self.num_levels} level inputs and outputs, got {len(level_inputs)} and "
                f"{len(level_outputs)}"
            )
        losses = []
        for level, (target, features) in enumerate(zip(level_inputs, level_outputs)):
            target = target.detach()
            reconstruction = self.reconstruct(level, features, target.shape[2:])
            losses.append(self.loss(reconstruction, target))
        return torch.stack(losses).mean(), losses


def encoder_level_features(
    encoder: nn.Module, x: torch.Tensor, num_levels: int, detach_level_inputs: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the stem (if any) and the first ``num_levels`` stages of an nnU-Net encoder.

    Args:
        encoder: ``network.encoder`` (has ``stages``, optionally ``stem``).
        x: (B, C, *patch) images.
        detach_level_inputs: feed each level ``i > 0`` a detached input, so that level's loss trains
            ``stages[i]`` only (pretraining, one autoencoder per level); False lets it reach the earlier stages
            too (multi-task training of one shared encoder).

    Returns:
        ``(level_inputs, level_outputs)``: ``level_inputs[0]`` is ``x`` (the image, also after a stem),
        ``level_inputs[i] = level_outputs[i - 1]``; ``level_outputs[i] = stages[i](...)``.
    """
    if not 1 <= num_levels <= len(encoder.stages):
        raise ValueError(f"num_levels must be in [1, {len(encoder.stages)}], got {num_levels}")
    h = encoder.stem(x) if getattr(encoder, "stem", None) is not None else x
    inputs, outputs = [x], []
    for level in range(num_levels):
        if level > 0:
            if detach_level_inputs:
                h = h.detach()
            inputs.append(h)
        h = encoder.stages[level](h)
        outputs.append(h)
    return inputs, outputs


def wta_heads_for_plans(
    arch_kwargs: dict, num_input_channels: int, num_levels: int, k: int = 5
) -> WTAAutoencoderHeads:
    """:class:`WTAAutoencoderHeads` for the first ``num_levels`` levels of the planned encoder, each decoder's
    kernel the level's receptive field within the weights of its encoder stage (:func:`decoder_kernel_size`).

    Args:
        arch_kwargs: ``configuration_manager.network_arch_init_kwargs`` (the plans' ``arch_kwargs``).
        num_input_channels: image channels.
    """
    features = [int(f) for f in arch_kwargs["features_per_stage"]]
    if not 1 <= num_levels <= len(features):
        raise ValueError(f"num_levels must be in [1, {len(features)}] (encoder stages), got {num_levels}")
    level_inputs = [num_input_channels, *features[: num_levels - 1]]
    kernels, strides = [], []
    for level in range(num_levels):
        field, stride = level_receptive_field(*encoder_level_convs(arch_kwargs, level))
        budget = encoder_level_weights(arch_kwargs, level, level_inputs[level])
        kernels.append(decoder_kernel_size(field, stride, features[level], level_inputs[level], budget))
        strides.append(stride)
    return WTAAutoencoderHeads(level_inputs, features[:num_levels], kernels, strides, k)


def weight_norm_phi(fresh: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor]) -> float:
    """The automatic transfer scale ``phi = ||W_fresh|| / ||W_pretrained||`` over the given conv weights.

    Args:
        fresh: name -> weight tensor of a freshly initialized network (nnU-Net's He init).
        pretrained: name -> the same tensors after loading the pretrained weights (same keys and shapes).

    Returns:
        The scalar phi (Frobenius norms over all tensors together).
    """
    if fresh.keys() != pretrained.keys() or not fresh:
        raise ValueError("fresh and pretrained weights must have the same, non-empty set of names")
    fresh_sq = sum(float(v.detach().double().pow(2).sum()) for v in fresh.values())
    pre_sq = sum(float(v.detach().double().pow(2).sum()) for v in pretrained.values())
    if pre_sq == 0.0:
        raise ValueError("the pretrained weights are all zero: cannot scale them")
    return (fresh_sq / pre_sq) ** 0.5


def encoder_conv_parameters(encoder: nn.Module) -> dict[str, torch.nn.Parameter]:
    """Weights and biases of the (transposed) convolutions of an encoder, by name (what phi scales; the
    normalization layers' affine parameters are not scaled)."""
    params = {}
    for name, module in encoder.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            for pname, p in module.named_parameters(recurse=False):
                params[f"{name}.{pname}"] = p
    return params


def huber_loss_per_sample(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) mean Huber (delta 1) loss of each sample (for reporting reconstructions)."""
    return (
        F.smooth_l1_loss(reconstruction.float(), target.float(), reduction="none", beta=1.0)
        .flatten(1)
        .mean(1)
    )


def save_reconstruction_figure(
    images: np.ndarray, reconstructions: np.ndarray, names: Sequence[str], filename: str
) -> None:
    """A PNG with one row per patch: the middle slice (first spatial axis) of the input, its reconstruction and
    the absolute error, channel 0, input and reconstruction on the same grey scale.

    Args:
        images, reconstructions: (N, C, *spatial) arrays (2 or 3 spatial dims).
        names: N row titles.
    """
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    if images.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {images.shape} and {reconstructions.shape}")
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row in range(n):
        image, recon = images[row, 0], reconstructions[row, 0]
        if image.ndim == 3:
            image, recon = image[image.shape[0] // 2], recon[recon.shape[0] // 2]
        low, high = float(image.min()), float(image.max())
        for col, (title, panel, kwargs) in enumerate(
            (
                ("input", image, {"vmin": low, "vmax": high}),
                ("reconstruction", recon, {"vmin": low, "vmax": high}),
                ("|error|", np.abs(image - recon), {}),
            )
        ):
            axes[row, col].imshow(panel, cmap="gray", **kwargs)
            axes[row, col].set_title(f"{names[row]}: {title}", fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(filename, dpi=100)
    plt.close(fig)
