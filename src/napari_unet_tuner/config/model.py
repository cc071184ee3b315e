"""What a model is: its architecture, its input normalization, its card."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from napari_unet_tuner.config.base import DictMixin, OutputKind
from napari_unet_tuner.config.inference import InstanceConfig
from napari_unet_tuner.errors import ConfigError

# Largest U-Net a config may describe: beyond this it is a damaged file, not a
# model (depth 8 already needs tiles of 256 pixels and more).
_MAX_DEPTH = 8
_MAX_FEATURES = 1024
# Output channels a model may have: how each count is read (`output_kind`).
_OUTPUT_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class ModelConfig(DictMixin):
    """Architecture of a `~napari_unet_tuner.model.UNet`.

    Parameters
    ----------
    spatial_dims : int
        2 for images (Y, X), 3 for volumes (Z, Y, X).
    in_channels : int
        Number of image channels the model reads.
    out_channels : int
        Number of output channels. 3 for background / interior / boundary
        classes (softmax); 4 for those classes plus each object pixel's
        distance to the object's edge, as a fraction of the object's largest
        (sigmoid), whose peaks seed touching objects apart; 1 for a
        foreground probability (sigmoid).
    features : int
        Feature maps of the first encoder block; each deeper block doubles them.
    depth : int
        Number of encoder (and decoder) blocks, i.e. of 2x2 poolings.
    batch_norm : bool
        Batch normalization between each convolution and its ReLU.
    dropout : float
        Dropout probability after each ReLU (0 disables it).
    """

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 3
    features: int = 16
    depth: int = 4
    batch_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for name in ("in_channels", "out_channels", "features", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.out_channels not in _OUTPUT_CHANNELS:
            raise ConfigError(
                f"out_channels {self.out_channels}: a U-Net here has 1 (foreground), 3 "
                "(background, interior, boundary) or 4 (those and a distance) outputs; "
                "other counts cannot be read as labels"
            )
        if self.depth > _MAX_DEPTH or self.features > _MAX_FEATURES:
            raise ConfigError(
                f"depth {self.depth} and features {self.features}: at most depth "
                f"{_MAX_DEPTH} and {_MAX_FEATURES} features (each level halves the image)"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def output_kind(self) -> OutputKind:
        """How the outputs are read (see `OUTPUT_DESCRIPTIONS`)."""
        if self.out_channels == 1:
            return "foreground"
        return "boundary3_distance" if self.out_channels == 4 else "boundary3"

    @property
    def size_multiple(self) -> int:
        """Spatial sizes the network takes without internal padding."""
        return 2**self.depth


@dataclass(frozen=True)
class NormalizationConfig(DictMixin):
    """Intensity normalization applied to each plane (or volume) and channel.

    Parameters
    ----------
    kind : {"percentile", "none"}
        ``percentile`` maps the ``low`` percentile to 0 and ``high`` to 1.
    low, high : float
        Percentiles in [0, 100].
    max_samples : int
        Percentiles are computed from at most this many evenly strided pixels,
        so that huge lazy images are never loaded whole for statistics.
    """

    kind: Literal["percentile", "none"] = "percentile"
    low: float = 1.0
    high: float = 99.8
    max_samples: int = 1_000_000

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "none"):
            raise ConfigError(
                f"normalization kind must be 'percentile' or 'none', got {self.kind}"
            )
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ConfigError(f"need 0 <= low < high <= 100, got low={self.low}, high={self.high}")


@dataclass(frozen=True)
class ModelCard(DictMixin):
    """What a checkpoint is for, where it came from and how to use it.

    Parameters
    ----------
    name : str
        Short name shown in the widget and by ``unet-tuner info``.
    description : str
        What the model segments, on which kind of images.
    input_axes : str
        Axes of one input sample, e.g. ``"CYX"``.
    channel_names : tuple of str
        One name per input channel, e.g. ``("nuclei",)``.
    outputs : str
        What the output channels mean and how they become labels.
    pixel_size : tuple of float or None
        Pixel (voxel) size in micrometres the model was trained at, if known.
    object_diameter : float or None
        Object diameter, in pixels, that the model segments best: the middle
        of the sizes it was trained on. Segmentation with automatic object
        size resizes images whose objects are far from it
        (`napari_unet_tuner.inference.object_size`); ``None``: unknown, no
        resizing. Fine-tuned models inherit it, and fine-tuning resizes the
        annotated images the same way.
    normalization : dict
        A `NormalizationConfig` as a dict.
    instances : dict
        Default `InstanceConfig` as a dict.
    training : tuple of dict
        Training history, oldest first; each entry names its parent checkpoint.
    parent : dict or None
        ``{"name": ..., "sha256": ...}`` of the checkpoint this one was derived from.
    created : str
        ISO 8601 creation time (UTC).
    package_version : str
        Version of napari-unet-tuner that wrote the file.
    """

    name: str = "unnamed U-Net"
    description: str = ""
    input_axes: str = "CYX"
    channel_names: tuple[str, ...] = ("channel 0",)
    outputs: str = ""
    pixel_size: tuple[float, ...] | None = None
    object_diameter: float | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: NormalizationConfig().to_dict())
    instances: dict[str, Any] = field(default_factory=lambda: InstanceConfig().to_dict())
    training: tuple[dict[str, Any], ...] = ()
    parent: dict[str, Any] | None = None
    created: str = ""
    package_version: str = ""

    def __post_init__(self) -> None:
        # A card comes from a file: what later code reads is checked once, here.
        for name in ("name", "description", "input_axes", "outputs", "created"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"card field {name} must be text, got {getattr(self, name)!r}")
        if not all(isinstance(c, str) for c in self.channel_names):
            raise ConfigError(f"channel_names must be text, got {self.channel_names!r}")
        if self.object_diameter is not None and not _positive_number(self.object_diameter):
            raise ConfigError(
                f"object_diameter must be a positive number of pixels or null, "
                f"got {self.object_diameter!r}"
            )
        if self.pixel_size is not None and not all(_positive_number(s) for s in self.pixel_size):
            raise ConfigError(f"pixel_size must be positive numbers, got {self.pixel_size!r}")
        if not all(isinstance(run, dict) for run in self.training):
            raise ConfigError("training must be a list of records (mappings), one per run")
        if self.parent is not None and not isinstance(self.parent, dict):
            raise ConfigError(f"parent must be a mapping or null, got {self.parent!r}")
        self.normalization_config  # noqa: B018 - raises ConfigError if invalid
        self.instance_config  # noqa: B018

    @property
    def normalization_config(self) -> NormalizationConfig:
        """The card's normalization as a typed config."""
        return NormalizationConfig.from_dict(self.normalization)

    @property
    def instance_config(self) -> InstanceConfig:
        """The card's default instance settings as a typed config."""
        return InstanceConfig.from_dict(self.instances)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


OUTPUT_DESCRIPTIONS: dict[OutputKind, str] = {
    "boundary3": (
        "3 softmax classes per pixel: background, object interior, object boundary. "
        "Labels: seeds are connected regions of interior probability > seed_threshold "
        "with at least one foreground pixel (1 - background > threshold), grown by "
        "watershed over the foreground."
    ),
    "boundary3_distance": (
        "3 softmax classes per pixel (background, object interior, object boundary) and "
        "1 sigmoid channel: distance to the object's edge as a fraction of the object's "
        "largest. Labels: seeds are connected regions of distance > seed_threshold, grown "
        "by watershed on the distance over the foreground (1 - background > threshold)."
    ),
    "foreground": (
        "1 sigmoid channel: foreground probability. Labels: connected regions of "
        "foreground > threshold (touching objects are not split)."
    ),
}
