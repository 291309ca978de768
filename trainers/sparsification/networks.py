"""The networks of annotation sparsification (Zheng et al., AAAI 2020).

- 2D networks on 3D data: a 2D U-Net with the 3D plans' stages (``plainconv_unet_2d``), applied slice by slice
  along any plane (``SliceWiseNetwork``, ``network_axis``). Used by ``SparseMultiPlane2DTrainer`` and by the
  multi-plane pseudo-label step, which reorients one trained 2D model to each plane.
- The meta-model's Y-shaped U-Net (``YShapedUNet``), used by ``SelfTrainingMetaTrainer``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_semisup.networks import freeze_deep_supervision_seg_layers
from nnunet_semisup.trainers.sparsification.selection import PLANE_AXIS


def network_axis(plane: str, transpose_forward: list[int]) -> int:
    """Spatial axis of the network's (transposed) input that slices of raw ``plane`` fix.

    nnU-Net's preprocessing transposes the raw (A0, A1, A2) array by ``transpose_forward``; the raw axis
    ``PLANE_AXIS[plane]`` ends up at position ``transpose_forward.index(PLANE_AXIS[plane])``.
    """
    return list(transpose_forward).index(PLANE_AXIS[plane])


class SliceWiseNetwork(nn.Module):
    """A 2D segmentation network applied slice by slice to 3D inputs.

    - 4D input (B, C, H, W): the 2D network itself (training).
    - 5D input (B, C, A0, A1, A2): every slice along spatial axis ``plane_axis`` (0, 1 or 2) is segmented, the
      in-plane size padded to a multiple of ``divisor`` and cropped back; output (B, K, A0, A1, A2) logits in the
      input's axis order (the slice axis moved back where it was).
    """

    def __init__(self, net2d: nn.Module, divisor: tuple[int, int], plane_axis: int = 0):
        super().__init__()
        self.net2d = net2d
        self.divisor = tuple(int(d) for d in divisor)
        self.plane_axis = plane_axis

    @property
    def decoder(self) -> nn.Module:  # nnU-Net toggles deep supervision through network.decoder
        return self.net2d.decoder

    def forward_2d(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(N, C, H, W) -> logits (N, K, H, W) (a list per scale with deep supervision), padding to ``divisor``."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.divisor[0], (-w) % self.divisor[1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        out = self.net2d(x)
        if ph or pw:
            crop = lambda t: t[..., : t.shape[-2] * h // (h + ph), : t.shape[-1] * w // (w + pw)]  # noqa: E731
            out = [crop(t) for t in out] if isinstance(out, (list, tuple)) else crop(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim == 4:
            return self.forward_2d(x)
        if x.ndim != 5:
            raise ValueError(
                f"SliceWiseNetwork expects (B, C, H, W) or (B, C, A0, A1, A2), got {tuple(x.shape)}"
            )
        axis = 2 + self.plane_axis
        moved = x.movedim(axis, 1)  # (B, D, C, h, w)
        b, d = moved.shape[:2]
        out = self.forward_2d(moved.reshape(b * d, *moved.shape[2:]))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.reshape(b, d, *out.shape[1:]).movedim(1, axis)


def plain_convs_per_stage(arch_kwargs: dict) -> list[int] | int:
    """Convolutions per encoder stage of the cascade's plain U-Nets: the plans' ``n_conv_per_stage``
    (``PlainConvUNet`` plans), or nnU-Net's default of 2 per stage for residual-encoder plans (ResEnc presets:
    ``n_blocks_per_stage``), whose stages, features, kernels and strides are kept. Zheng et al.'s base and meta
    models are plain U-Nets; residual blocks are not part of the method."""
    if "n_conv_per_stage" in arch_kwargs:
        return arch_kwargs["n_conv_per_stage"]
    return [2] * int(arch_kwargs["n_stages"])


def plainconv_unet_2d(arch_kwargs: dict, input_channels: int, num_classes: int, deep_supervision: bool):
    """A 2D ``PlainConvUNet`` with the 3D plans' stages, features and convolutions per stage.

    One 2D network serves all three planes, so every stage uses a 3x3 kernel and, in both in-plane directions,
    the largest of the 3D stride's components (anisotropic plans pool some axes later; here all pool together).
    Returns (network, divisor) where divisor is the product of the strides (input sizes are padded to it).
    """
    strides = [[max(s)] * 2 if isinstance(s, (list, tuple)) else [s, s] for s in arch_kwargs["strides"]]
    kwargs = dict(
        n_stages=arch_kwargs["n_stages"],
        features_per_stage=arch_kwargs["features_per_stage"],
        conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * arch_kwargs["n_stages"],
        strides=strides,
        n_conv_per_stage=plain_convs_per_stage(arch_kwargs),
        n_conv_per_stage_decoder=arch_kwargs["n_conv_per_stage_decoder"],
        conv_bias=arch_kwargs.get("conv_bias", True),
        norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
    net = PlainConvUNet(input_channels, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs)
    divisor = int(np.prod([s[0] for s in strides]))
    return net, (divisor, divisor)


class YShapedUNet(nn.Module):
    """Image encoder + A(Y^) encoder (same stages as the plans' PlainConvUNet; plain stages of the ResEnc plans'
    layout, :func:`plain_convs_per_stage`), skips summed, one decoder.

    Input (B, C_img + K + S, *spatial): image channels, K probability channels of A(Y^), S pseudo-label
    channels (ignored here). Output (B, K, *spatial) logits (a list per scale with deep supervision).
    """

    def __init__(self, image_channels: int, num_classes: int, arch_kwargs: dict):
        super().__init__()
        self.image_channels = image_channels
        self.num_classes = num_classes
        enc = {k: arch_kwargs[k] for k in ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
                                           "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
                                           "dropout_op_kwargs", "nonlin", "nonlin_kwargs")}  # fmt: skip
        enc["n_conv_per_stage"] = plain_convs_per_stage(arch_kwargs)  # plain stages also on ResEnc plans
        self.encoder = PlainConvEncoder(image_channels, return_skips=True, **enc)
        self.aux_encoder = PlainConvEncoder(num_classes, return_skips=True, **enc)
        self.decoder = UNetDecoder(self.encoder, num_classes, arch_kwargs["n_conv_per_stage_decoder"], False)
        freeze_deep_supervision_seg_layers(self.decoder)  # no deep supervision: DDP-safe

    def forward(self, x: torch.Tensor):
        c, k = self.image_channels, self.num_classes
        skips = [a + b for a, b in zip(self.encoder(x[:, :c]), self.aux_encoder(x[:, c : c + k]))]
        return self.decoder(skips)
