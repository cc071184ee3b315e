"""The U-Net of Ronneberger et al. (2015), in 2D or 3D.

This module imports nothing but torch at run time: exported bioimage.io
packages ship it as their architecture's source (`ProbabilityUNet`).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from napari_unet_tuner.config import ModelConfig

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by [batch norm,] ReLU [, dropout]."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(2):
            layers.append(
                _CONV[spatial_dims](
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    # A bias before batch norm is cancelled by its mean subtraction.
                    bias=not batch_norm,
                )
            )
            if batch_norm:
                layers.append(_NORM[spatial_dims](out_channels))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(_DROPOUT[spatial_dims](dropout))
        super().__init__(*layers)


class UpConcat(nn.Module):
    """2x2 transposed convolution, concatenation with the skip, `DoubleConv`."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.upsample = _CONV_T[spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = DoubleConv(spatial_dims, 2 * out_channels, out_channels, batch_norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to the size of ``skip`` and merge them."""
        return self.convs(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(nn.Module):
    """U-Net for 2D images or 3D volumes of any size.

    The encoder has ``depth`` blocks (two 3x3 convolutions with ReLU, then 2x2
    max-pooling; features double per block), a bridge of two 3x3 convolutions,
    and a decoder of ``depth`` blocks (2x2 transposed convolution, concatenation
    with the encoder's skip, two 3x3 convolutions; features halve), then a 1x1
    convolution to ``out_channels``.

    Parameters
    ----------
    config : ModelConfig
        The architecture. ``UNet(ModelConfig(...))`` is the only constructor, so
        the config stored in a checkpoint always rebuilds the same network.

    Notes
    -----
    Input of shape ``(N, in_channels, *spatial)``, any spatial size: it is
    padded by reflection (replication where too small to reflect) up to a
    multiple of ``2**depth`` and the output is cropped back to the input size.
    `forward` returns logits of shape ``(N, out_channels, *spatial)``;
    `predict_proba` applies the softmax (several channels) or sigmoid (one).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims, bn, p = config.spatial_dims, config.batch_norm, config.dropout
        widths = [config.features * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList()
        in_ch = config.in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(dims, in_ch, width, bn, p))
            in_ch = width
        self.pool = _POOL[dims](kernel_size=2)
        self.bridge = DoubleConv(dims, widths[-2], widths[-1], bn, p)
        self.up = nn.ModuleList(
            UpConcat(dims, widths[level + 1], widths[level], bn, p)
            for level in reversed(range(config.depth))
        )
        self.final_conv = _CONV[dims](widths[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of the same spatial size as ``x``."""
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects input of shape (N, {cfg.in_channels}, "
                f"{', '.join(['*'] * cfg.spatial_dims)}), got {tuple(x.shape)}"
            )
        spatial = x.shape[2:]
        x = _pad_to_multiple(x, cfg.size_multiple)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip)
        x = self.final_conv(x)
        return x[(..., *(slice(0, s) for s in spatial))]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Return probabilities: softmax over the classes, sigmoid of the other channels.

        ``foreground``: sigmoid. ``boundary3``: softmax. ``boundary3_distance``:
        softmax over the first 3 channels, sigmoid of the distance channel.
        """
        return logits_to_probabilities(self(x), self.config.output_kind)


def logits_to_probabilities(logits: torch.Tensor, output_kind: str) -> torch.Tensor:
    """Apply the softmax and sigmoids that `UNet.predict_proba` describes."""
    if output_kind == "foreground":
        return torch.sigmoid(logits)
    if output_kind == "boundary3_distance":
        return torch.cat(
            [torch.softmax(logits[:, :3], dim=1), torch.sigmoid(logits[:, 3:])], dim=1
        )
    return torch.softmax(logits, dim=1)


class ProbabilityUNet(UNet):
    """A `UNet` built from its config's fields whose forward returns probabilities.

    The entry point of exported bioimage.io packages: their consumers call
    the model and expect its outputs, with no napari-unet-tuner installed.
    Its state dict is the `UNet`'s.

    Parameters
    ----------
    output_kind : str
        ``ModelConfig.output_kind``: how the outputs are read.
    **config
        The fields of a `ModelConfig` (``ModelConfig.to_dict()``).
    """

    def __init__(self, output_kind: str, **config: Any) -> None:
        size_multiple = 2 ** int(config["depth"])
        super().__init__(
            SimpleNamespace(**config, output_kind=output_kind, size_multiple=size_multiple)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return probabilities of the same spatial size as ``x``."""
        return logits_to_probabilities(super().forward(x), self.config.output_kind)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the trailing spatial axes of ``x`` at their end to a multiple of ``multiple``."""
    spatial = x.shape[2:]
    extra = [(-s) % multiple for s in spatial]
    if not any(extra):
        return x
    # F.pad takes (last_lo, last_hi, second_last_lo, ...).
    pad = []
    for e in reversed(extra):
        pad += [0, e]
    mode = "reflect" if all(e < s for e, s in zip(extra, spatial, strict=True)) else "replicate"
    return F.pad(x, pad, mode=mode)


def fold_batch_norm(model: UNet) -> UNet:
    """Return a copy of ``model`` for inference, each batch norm folded into its convolution.

    In eval mode a batch norm is a fixed per-channel scale and shift, which
    the preceding convolution's weights and bias can absorb
    (`torch.nn.utils.fusion.fuse_conv_bn_eval`): same outputs, one pass
    over the feature maps fewer per convolution. ``model`` is not changed;
    the copy is in eval mode and is not meant for training.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if not isinstance(block, DoubleConv):
            continue
        for i in range(len(block) - 1):
            if isinstance(block[i], nn.Conv2d | nn.Conv3d) and isinstance(
                block[i + 1], nn.BatchNorm2d | nn.BatchNorm3d
            ):
                block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                block[i + 1] = nn.Identity()
    return folded


def inference_copy(model: UNet) -> UNet:
    """Return the copy of ``model`` that inference runs: `fold_batch_norm`, channels-last layout.

    Its inputs go faster in the same layout (`memory_format`); on a 2-core
    CPU the copy is about 1.4x as fast as ``model`` (BENCHMARKS.md).
    """
    return fold_batch_norm(model).to(memory_format=memory_format(model.config.spatial_dims))


def memory_format(spatial_dims: int) -> torch.memory_format:
    """Channels-last layout for 2D (NHWC) or 3D (NDHWC) tensors."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
