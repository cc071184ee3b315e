"""How a model is run: tiles, number format, instances, chunks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from napari_unet_tuner.config.base import DictMixin
from napari_unet_tuner.errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
Runtime = Literal["auto", "torch", "openvino"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino")
StackMode = Literal["planes", "3d"]
STACK_MODES: tuple[str, ...] = ("planes", "3d")
"""How a Z-stack is learned and segmented: each plane on its own, or as 3D objects."""
SEGMENT_STACK_MODES: tuple[str, ...] = ("auto", *STACK_MODES)


def parse_diameter(text: str) -> float | Literal["auto"] | None:
    """Read an object diameter as typed: ``"auto"``, ``"none"`` or a size in pixels.

    Raises
    ------
    ValueError
        If ``text`` is none of these.
    """
    word = text.strip().lower()
    if word == "auto":
        return "auto"
    if word in ("none", "off"):
        return None
    value = float(word)
    if not 1 <= value <= 10_000:
        raise ValueError(f"{value:g} px is outside 1-10000")
    return value


@dataclass(frozen=True)
class InstanceConfig(DictMixin):
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
    core_share : float or None
        ``boundary3`` seeds that part, at higher levels of the interior
        probability, into two or more cores each holding at least this
        share of the median seed's size are split into those cores
        (`napari_unet_tuner.inference.seed_levels`): touching nuclei of a
        Z-stack that share one seed. 0 turns it off; ``None`` (the
        default) leaves it to the run: `seed_levels.CORE_SHARE` for 3D
        objects of a Z-stack, off in 2D.
    """

    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size: int = 15
    split_solidity: float = 0.0
    core_share: float | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "seed_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_size < 0:
            raise ConfigError(f"min_size must be >= 0, got {self.min_size}")
        if not 0.0 <= self.split_solidity <= 1.0:
            raise ConfigError(f"split_solidity must be in [0, 1], got {self.split_solidity}")
        if self.core_share is not None and not 0.0 <= self.core_share < 1.0:
            raise ConfigError(f"core_share must be in [0, 1), got {self.core_share}")


@dataclass(frozen=True)
class InferenceConfig(DictMixin):
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
        compute it natively (AMX or AVX512-BF16: about 2x faster, the same
        labels), float32 on other CPUs, float16 autocast on CUDA and MPS.
        ``"bf16"`` forces bfloat16 (emulated, slow, on other CPUs);
        ``"fp32"`` forces float32.
    runtime : {"auto", "torch", "openvino"}
        What runs the model on the CPU. ``"auto"`` (default): the fastest
        here of torch and OpenVINO (if installed: ``napari-unet-tuner[openvino]``)
        at each precision this CPU computes natively, measured once per
        machine, architecture and tile shape and remembered
        (`napari_unet_tuner.inference.runtime_probe`); runs of under 2
        megapixels take torch (converting would cost more than it saves), and
        a fine-tuned model's new weights are converted only for an image
        large enough to earn the conversion back. ``"openvino"``
        converts the model (cached per weights); torch takes over, with a
        warning, wherever OpenVINO is missing or fails. GPUs always run torch.
    num_threads : int or None
        CPU threads for torch during the run; ``None`` keeps torch's default.
    diameter : "auto", float or None
        Object diameter in the image's pixels. ``"auto"`` (default) estimates
        it from the image (`napari_unet_tuner.inference.object_size`) when
        ``scale`` is 1 and the model's card gives its own object size; a
        number is taken as given. Images whose objects are far from the
        model's size are resized to it (this sets the scale); ``None``
        never resizes beyond ``scale``. Automatic size is for 2D models;
        on a Z-stack of 3D objects it is measured on the XY planes fullest
        of nuclei and resizes the stack in XY and Z alike. zarr output
        runs at ``scale``.
    scale : float
        Resize factor for the spatial axes before the model sees the image,
        for objects of another size than the model was trained on (0.5 for
        nuclei twice as large as it expects, 2 for half); a scale other
        than 1 turns the automatic size off. Probabilities are resized
        back, so labels always match the image. Each plane is then read
        whole (not tile by tile).
    stack : {"auto", "planes", "3d"}
        How a 2D model segments a Z-stack: ``"planes"``, each plane on its
        own (its objects numbered apart); ``"3d"``, 3D objects: the model runs
        on the XY, XZ and YZ planes (XY alone for stacks under 48 square
        pixels deep), their probabilities are averaged and seeds grow in 3D
        (`napari_unet_tuner.inference.stack`). ``"auto"`` (default): 3D
        objects when the image's axes are known to hold Z, given by the
        caller or read from the file's metadata (`resolve_stack`); planes
        when the axes are only guessed (a 3D array may be a time series).
        Time series stay frame by frame either way.
    anisotropy : float or None
        Z step over XY pixel size (e.g. 2.0 for 0.5 um planes of 0.25 um
        pixels), for ``stack="3d"``: the XZ and YZ planes are resampled to
        square pixels before the model sees them (not within 1.25x of 1,
        where the model sees no difference). ``None`` (default): from the
        file's metadata (`~napari_unet_tuner.io.FileImage.anisotropy`),
        else measured on the stack's nuclei, taken to be about as tall as
        wide (`napari_unet_tuner.inference.z_step`; 1 when it cannot be
        told); `SegmentationResult.z_step` says which.
    object_table : bool
        Also measure every object and rank it by confidence
        (`SegmentationResult.objects`, `SegmentationResult.possible_misses`;
        `napari_unet_tuner.inference.objects`). In-memory runs only; about
        5 % of the segmentation time.
    """

    tile_shape: tuple[int, ...] | None = None
    overlap: float = 0.25
    batch_size: int = 1
    device: str = "auto"
    precision: Precision = "auto"
    runtime: Runtime = "auto"
    num_threads: int | None = None
    diameter: float | Literal["auto"] | None = "auto"
    scale: float = 1.0
    stack: StackMode | Literal["auto"] = "auto"
    anisotropy: float | None = None
    object_table: bool = True

    def __post_init__(self) -> None:
        if self.stack not in SEGMENT_STACK_MODES:
            raise ConfigError(f"stack must be 'auto', 'planes' or '3d'; got {self.stack!r}")
        if self.anisotropy is not None and not 0.1 <= self.anisotropy <= 20:
            raise ConfigError(f"anisotropy must be in [0.1, 20], got {self.anisotropy}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"runtime must be one of {', '.join(RUNTIMES)}; got {self.runtime!r}"
            )
        if self.diameter is not None and self.diameter != "auto":
            if isinstance(self.diameter, str) or not 1 <= float(self.diameter) <= 10_000:
                raise ConfigError(
                    f"diameter must be 'auto', None or a size in pixels (1-10000); "
                    f"got {self.diameter!r}"
                )
            if self.scale != 1.0:
                raise ConfigError("give either diameter (object size) or scale, not both")
        if not 0.1 <= self.scale <= 10:
            raise ConfigError(f"scale must be in [0.1, 10], got {self.scale}")
        if not 0.0 <= self.overlap < 0.5:
            raise ConfigError(f"overlap must be in [0, 0.5), got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tile_shape is not None and any(int(s) < 1 for s in self.tile_shape):
            raise ConfigError(f"tile_shape must be positive, got {self.tile_shape}")


@dataclass(frozen=True)
class ChunkedConfig(DictMixin):
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


def resolve_stack(
    inference: InferenceConfig, known_axes: str | None, file_anisotropy: float | None = None
) -> InferenceConfig:
    """Return ``inference`` with its stack mode and, where known, its Z step decided.

    ``stack="auto"`` becomes ``"3d"`` when ``known_axes`` (the caller's or
    the file's, never guessed ones) hold Z, ``"planes"`` otherwise.
    ``anisotropy=None`` becomes ``file_anisotropy`` (the file's Z step over
    its pixel size, clipped to the accepted range); without one it stays
    ``None`` for 3D runs, which then measure it on the stack's objects
    (`napari_unet_tuner.inference.z_step`), and becomes 1 otherwise.
    """
    stack = inference.stack
    if stack == "auto":
        stack = "3d" if bool(known_axes) and "Z" in known_axes.upper() else "planes"
    anisotropy = inference.anisotropy
    if anisotropy is None and file_anisotropy:
        anisotropy = min(20.0, max(0.1, float(file_anisotropy)))
    if anisotropy is None and stack != "3d":
        anisotropy = 1.0
    return replace(inference, stack=stack, anisotropy=anisotropy)
