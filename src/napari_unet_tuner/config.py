"""Typed configuration objects, one per concern, each with a dict round trip.

The dicts are what a checkpoint stores as JSON, so every field is a plain
JSON value and ``from_dict`` rejects keys it does not know: a typo in a
hand-edited file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from napari_unet_tuner.errors import ConfigError

OutputKind = Literal["boundary3", "boundary3_distance", "foreground"]
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
# Largest U-Net a config may describe: beyond this it is a damaged file, not a
# model (depth 8 already needs tiles of 256 pixels and more).
_MAX_DEPTH = 8
_MAX_FEATURES = 1024


class _DictMixin:
    """``to_dict``/``from_dict`` for flat dataclasses of JSON values."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-compatible dict."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict as written by `to_dict`.

        Raises
        ------
        ConfigError
            If ``data`` has keys the class does not know or values of a wrong type.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
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
class NormalizationConfig(_DictMixin):
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
class InstanceConfig(_DictMixin):
    """How probabilities become instance labels.

    Parameters
    ----------
    threshold : float
        A pixel is foreground where its foreground probability exceeds this.
    seed_threshold : float
        Seeds (one per object) are connected regions where the interior
        probability (``boundary3``) or the distance to the edge
        (``boundary3_distance``) exceeds this; boundary pixels between
        touching objects stay below it, which is what keeps crowded nuclei
        apart.
    min_size : int
        Objects smaller than this many pixels (voxels) are removed.
    split_solidity : float
        Seeds less convex than this (solidity: area over convex-hull area)
        are cut at their narrowings, so that two overlapping nuclei the
        model sees as one blob, with no boundary between them, become two
        objects. A single nucleus is nearly convex (solidity about 0.95);
        two merged ones are waisted. 0 turns splitting off.
    """

    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size: int = 15
    split_solidity: float = 0.0

    def __post_init__(self) -> None:
        for name in ("threshold", "seed_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_size < 0:
            raise ConfigError(f"min_size must be >= 0, got {self.min_size}")
        if not 0.0 <= self.split_solidity <= 1.0:
            raise ConfigError(f"split_solidity must be in [0, 1], got {self.split_solidity}")


@dataclass(frozen=True)
class InferenceConfig(_DictMixin):
    """How a model is run over an image.

    Parameters
    ----------
    tile_shape : tuple of int or None
        Spatial tile size (Y, X) or (Z, Y, X); ``None`` picks one for the
        model's dimensionality (512 x 512 in 2D, 32 x 128 x 128 in 3D).
    overlap : float
        Fraction of the tile shared with each neighbour, in [0, 0.5). The
        default, 128 pixels of a 2D tile, keeps the blended probabilities
        within a few hundredths of a whole-image pass (32 pixels, less than
        the network's field of view, left differences of 0.1-0.4).
    batch_size : int
        Tiles per forward pass.
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU) or a torch device string.
    precision : {"auto", "bf16", "fp32"}
        Number format the model runs in. ``"auto"``: bfloat16 on CPUs that
        compute it natively (AMX or AVX512-BF16: 2-3x faster, the same
        labels), float32 on other CPUs, float16 autocast on CUDA and MPS.
        ``"bf16"`` forces bfloat16 (emulated, slow, on other CPUs);
        ``"fp32"`` forces float32.
    num_threads : int or None
        CPU threads for torch during the run; ``None`` keeps torch's default.
    scale : float
        Resize factor for the spatial axes before the model sees the image,
        for objects of another size than the model was trained on (0.5 for
        nuclei twice as large as it expects, 2 for half). Probabilities are
        resized back, so labels always match the image. Each plane is then
        read whole (not tile by tile).
    """

    tile_shape: tuple[int, ...] | None = None
    overlap: float = 0.25
    batch_size: int = 1
    device: str = "auto"
    precision: Precision = "auto"
    num_threads: int | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        if not 0.1 <= self.scale <= 10:
            raise ConfigError(f"scale must be in [0.1, 10], got {self.scale}")
        if not 0.0 <= self.overlap < 0.5:
            raise ConfigError(f"overlap must be in [0, 0.5), got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tile_shape is not None and any(int(s) < 1 for s in self.tile_shape):
            raise ConfigError(f"tile_shape must be positive, got {self.tile_shape}")


@dataclass(frozen=True)
class ChunkedConfig(_DictMixin):
    """How an image larger than memory is cut into chunks and where they run.

    Parameters
    ----------
    chunk_shape : tuple of int or None
        Spatial size of a chunk, (Y, X) or (Z, Y, X); also the chunk shape of
        the zarr output. ``None``: 2048 x 2048 in 2D, 64 x 512 x 512 in 3D.
        A worker's memory grows with it (about 60 bytes per pixel).
    workers : int or None
        Start a ``dask.distributed`` LocalCluster of this many worker
        processes; ``None`` runs on dask's local threaded scheduler.
    threads_per_worker : int
        Threads of each LocalCluster worker (and torch threads per chunk).
    scheduler : str or None
        Address of a running ``dask.distributed`` scheduler (e.g.
        ``tcp://10.0.0.5:8786``) to run on instead; its workers must see the
        input and output paths.
    memory_limit : str or None
        Memory cap of each LocalCluster worker, e.g. ``"2GB"`` (dask pauses
        and restarts workers that exceed it); ``None``: dask's default.
    """

    chunk_shape: tuple[int, ...] | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    scheduler: str | None = None
    memory_limit: str | None = None

    def __post_init__(self) -> None:
        if self.chunk_shape is not None and any(int(s) < 1 for s in self.chunk_shape):
            raise ConfigError(f"chunk_shape must be positive, got {self.chunk_shape}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"threads_per_worker must be >= 1, got {self.threads_per_worker}")
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError("give either workers (a new local cluster) or a scheduler address")


@dataclass(frozen=True)
class ModelCard(_DictMixin):
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
    normalization: dict[str, Any] = field(default_factory=lambda: NormalizationConfig().to_dict())
    instances: dict[str, Any] = field(default_factory=lambda: InstanceConfig().to_dict())
    training: tuple[dict[str, Any], ...] = ()
    parent: dict[str, Any] | None = None
    created: str = ""
    package_version: str = ""

    @property
    def normalization_config(self) -> NormalizationConfig:
        """The card's normalization as a typed config."""
        return NormalizationConfig.from_dict(self.normalization)

    @property
    def instance_config(self) -> InstanceConfig:
        """The card's default instance settings as a typed config."""
        return InstanceConfig.from_dict(self.instances)


OUTPUT_DESCRIPTIONS: dict[OutputKind, str] = {
    "boundary3": (
        "3 softmax classes per pixel: background, object interior, object boundary. "
        "Labels: seeds are connected regions of interior probability > seed_threshold, "
        "grown by watershed over the foreground (1 - background > threshold)."
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


@dataclass(frozen=True)
class TrainingConfig(_DictMixin):
    """How a model is fine-tuned on annotations; ``None`` means "chosen for you".

    Parameters
    ----------
    mode : {"corrections", "scribbles"}
        How annotations are read (see `napari_unet_tuner.training.targets`).
    scribble_objects : {"whole", "strokes"}
        Scribbles only: objects painted whole (their rim is their boundary) or
        marked by strokes inside them.
    max_seconds : float
        Wall-time budget of the whole run: preparation, steps and validations.
    max_epochs : int
        Upper bound on epochs of ``steps_per_epoch`` steps.
    steps_per_epoch : int
        Optimizer steps between two validations.
    patience : int
        Stop after this many validations without a better score, once a
        better one than the starting model's was found.
    patch_shape : tuple of int or None
        Training patch size; ``None``: 128 x 128 (2D) or 16 x 64 x 64 (3D) on
        the CPU, twice that per axis on a GPU.
    batch_size : int or None
        Patches per step; ``None``: 4 on the CPU, 16 on a GPU.
    learning_rate : float
        Adam step size.
    final_learning_rate : float or None
        Anneal the step size from ``learning_rate`` to this by the end of
        ``max_seconds`` (half a cosine over training time: runs here are
        budgeted in seconds, not steps); ``None`` keeps it constant.
    boundary_weight : float
        Loss weight of the boundary class relative to the other two; high,
        because a missed boundary merges two objects.
    contact_weight : float
        Extra loss weight (a factor on ``boundary_weight``) of boundary pixels
        where two objects touch: higher values separate crowded objects.
    correction_weight : float
        Loss weight of the pixels where a correction differs from the
        prediction it was edited from (and of the corrected and deleted
        objects), relative to the unchanged pixels.
    validation_fraction : float
        Share of the unchanged objects held out (whole objects, by image
        region, the same in every plane) to report how the model generalizes;
        corrections are never held out.
    freeze_encoder_levels : int
        Encoder blocks (from the top) whose weights are not trained.
    freeze_batch_norm : bool or None
        Keep batch-norm statistics fixed; ``None``: when starting from a checkpoint.
    augment : bool
        Random flips, 90-degree rotations, intensity jitter and noise.
    tune_instances : bool
        At each validation, also try other foreground thresholds and seed
        splitting (`InstanceConfig.threshold`, ``split_solidity``) on the
        held-out annotations, preferring the neutral ones (0.5, no
        splitting) unless others score clearly better; the new checkpoint's
        card keeps the settings of its best validation. A model's settings
        suit the images it was made for (the bundled nuclei model's strict
        threshold and seed splitting thin and cut rod-shaped bacteria);
        without held-out annotations the parent's are kept.
    intensity_range : tuple of float
        Augmentation: range of the factor the normalized patch is multiplied
        by (dim or bright nuclei of other microscopes).
    gamma_range : tuple of float
        Augmentation: range of the gamma applied to the normalized patch.
    blur_max : float
        Augmentation: largest Gaussian blur sigma (pixels; 0 = none), for
        out-of-focus or lower-resolution images.
    noise_max : float
        Augmentation: largest standard deviation of added Gaussian noise.
    seed : int
        Seeds patch sampling, augmentation, the split and initialization.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    mixed_precision : bool
        Half-precision autocast on CUDA; bfloat16 autocast on CPUs that
        compute it natively (AVX512-BF16 or AMX), float32 on other CPUs.
    num_threads : int or None
        CPU threads for torch; ``None`` keeps torch's default.
    """

    mode: Literal["corrections", "scribbles"] = "corrections"
    scribble_objects: Literal["whole", "strokes"] = "whole"
    max_seconds: float = 60.0
    max_epochs: int = 200
    steps_per_epoch: int = 20
    patience: int = 6
    patch_shape: tuple[int, ...] | None = None
    batch_size: int | None = None
    learning_rate: float = 1e-3
    final_learning_rate: float | None = None
    boundary_weight: float = 4.0
    contact_weight: float = 1.0
    correction_weight: float = 5.0
    validation_fraction: float = 0.2
    freeze_encoder_levels: int = 0
    freeze_batch_norm: bool | None = None
    augment: bool = True
    tune_instances: bool = True
    intensity_range: tuple[float, float] = (0.8, 1.25)
    gamma_range: tuple[float, float] = (1.0, 1.0)
    blur_max: float = 0.0
    noise_max: float = 0.05
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("corrections", "scribbles"):
            raise ConfigError(f"mode must be 'corrections' or 'scribbles', got {self.mode!r}")
        if self.scribble_objects not in ("whole", "strokes"):
            raise ConfigError(
                f"scribble_objects must be 'whole' or 'strokes', got {self.scribble_objects!r}"
            )
        # NaN passes every comparison: a budget must be a finite positive number.
        if (
            not (0 < self.max_seconds < math.inf)
            or self.max_epochs < 1
            or self.steps_per_epoch < 1
        ):
            raise ConfigError(
                "max_seconds must be a positive number of seconds, and max_epochs and "
                f"steps_per_epoch positive; got {self.max_seconds}, {self.max_epochs}, "
                f"{self.steps_per_epoch}"
            )
        if not 0.0 <= self.validation_fraction < 0.9:
            raise ConfigError(
                f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("intensity_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{name} must be (low, high) with 0 < low <= high")
        if self.learning_rate <= 0 or (
            self.final_learning_rate is not None
            and not 0 < self.final_learning_rate <= self.learning_rate
        ):
            raise ConfigError(
                "learning_rate must be > 0 and final_learning_rate in (0, learning_rate], got "
                f"{self.learning_rate} and {self.final_learning_rate}"
            )
        if self.contact_weight < 1.0:
            raise ConfigError(f"contact_weight must be >= 1, got {self.contact_weight}")
        if self.correction_weight < 1.0:
            raise ConfigError(f"correction_weight must be >= 1, got {self.correction_weight}")
        if self.blur_max < 0 or self.noise_max < 0:
            raise ConfigError("blur_max and noise_max must be >= 0")
