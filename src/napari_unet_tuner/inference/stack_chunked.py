"""Z-stacks larger than memory as 3D objects: the three views band by band, for chunked runs.

A chunked run with ``stack="3d"`` (a 2D model on a Z-stack) first runs the
model on each orientation of the stack (`plan_views`) one band at a time: a
band is a few consecutive XY planes, or a few rows (the XZ view) or
columns (YZ) through the whole depth. The side views thus see every plane
of the stack, as in memory, and no tile is run twice. Each band's
probabilities go to its view's float16 array in the run's work folder,
chunked so that a band fills whole chunks of its own: no two tasks write
one chunk. The segment stage then reads the mean of the views over a chunk
and its halo (`StackViews.read`) instead of running the model.

A band's probabilities are written, then the band is marked done: an
interrupted run redoes the bands not marked, and writing a band twice
writes the same values. Memory per task is one band: its input resampled
to square pixels and its float32 probabilities, about `BAND_BYTES`, or one
plane where a single plane is larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unet_tuner.config import InferenceConfig, ModelConfig
from napari_unet_tuner.inference.image import ImageReader
from napari_unet_tuner.inference.stack_views import ViewPlan, plan_views
from napari_unet_tuner.io import write_bytes_atomic

VIEWS_DIR = "views"
"""Folder of the view arrays and band markers, inside the run's work folder."""
# A band's float32 working arrays (input at square pixels and probabilities)
# stay near this size: a few hundred planes of 2048 pixels make a band.
BAND_BYTES = 256 * 2**20
MAX_BAND_PLANES = 32
# Chunk edge of the view arrays across a band (along it, the band's planes).
VIEW_CHUNK = 256


@dataclass(frozen=True)
class ViewBand:
    """A task of the views stage: consecutive planes of one view of one volume.

    Attributes
    ----------
    index : int
        Position among the run's bands; names the band's marker file.
    view : {"xy", "xz", "yz"}
        The orientation.
    volume : int
        The volume (time point) among the image's volumes, in order.
    batch_index : tuple of int
        The volume's index for an `ImageReader` of ``ZYX`` volumes.
    planes : slice
        The band's planes along the view's axis (Z, Y or X).
    """

    index: int
    view: str
    volume: int
    batch_index: tuple[int, ...]
    planes: slice


@dataclass(frozen=True)
class StackViews:
    """The orientations of a chunked 3D run, their bands and their arrays on disk.

    Attributes
    ----------
    plans : dict of str to ViewPlan
        Each view's plane and tile shape (`plan_views`).
    band_planes : dict of str to int
        Planes per band in each view.
    volume_shape : tuple of int
        ``(Z, Y, X)`` of one volume.
    volumes : int
        Volumes (time points) in the image.
    out_channels : int
        The model's output channels.
    """

    plans: dict[str, ViewPlan]
    band_planes: dict[str, int]
    volume_shape: tuple[int, int, int]
    volumes: int
    out_channels: int

    @classmethod
    def plan(
        cls,
        reader: ImageReader,
        model_config: ModelConfig,
        inference: InferenceConfig,
        tile_shape: tuple[int, int],
        object_diameter: float | None = None,
    ) -> StackViews:
        """Plan the views of ``reader``'s ``ZYX`` volumes for a 2D model.

        ``object_diameter``: the objects' diameter in pixels (chunked runs
        are not resized: the model's), which decides whether the stack is
        deep enough for side views (`stack_views.has_side_views`).
        """
        volume_shape = tuple(reader.spatial_shape)
        plans = plan_views(
            volume_shape,
            inference.anisotropy,
            tile_shape,
            model_config,
            inference.overlap,
            object_diameter,
        )
        channels = model_config.in_channels + 2 * model_config.out_channels
        band_planes = {
            name: min(MAX_BAND_PLANES, max(1, BAND_BYTES // (4 * channels * plane_pixels)))
            for name, plan in plans.items()
            for plane_pixels in [math.prod(plan.plane_shape)]
        }
        return cls(
            plans,
            band_planes,
            volume_shape,
            math.prod(reader.batch_shape),
            model_config.out_channels,
        )

    def bands(self, reader: ImageReader) -> list[ViewBand]:
        """Every band of every view of every volume."""
        out = []
        for volume, batch_index in enumerate(reader.batch_indices()):
            for name, plan in self.plans.items():
                count = self.volume_shape[plan.axis - 1]
                step = self.band_planes[name]
                for start in range(0, count, step):
                    out.append(
                        ViewBand(
                            len(out),
                            name,
                            volume,
                            tuple(batch_index),
                            slice(start, min(count, start + step)),
                        )
                    )
        return out

    def region(self, band: ViewBand) -> tuple[slice, slice, slice]:
        """Return the band's ``(Z, Y, X)`` region of its volume."""
        region = [slice(0, s) for s in self.volume_shape]
        region[self.plans[band.view].axis - 1] = band.planes
        return tuple(region)

    def create(self, work_dir: str | Path) -> None:
        """Create the view arrays in the work folder; keep those an earlier run made."""
        import zarr

        for name, plan in self.plans.items():
            path = _array_path(work_dir, name)
            if path.exists():
                continue
            chunks = [min(VIEW_CHUNK, s) for s in self.volume_shape]
            chunks[plan.axis - 1] = self.band_planes[name]
            zarr.create_array(
                store=str(path),
                shape=(self.volumes, self.out_channels, *self.volume_shape),
                chunks=(1, self.out_channels, *chunks),
                dtype="float16",
                fill_value=0,
            )

    def done(self, work_dir: str | Path) -> set[int]:
        """Return the indices of the bands an earlier run (or this one) finished."""
        return {int(p.stem) for p in (Path(work_dir) / VIEWS_DIR).glob("[0-9]*.done")}

    def write(
        self, work_dir: str | Path, band: ViewBand, probabilities: np.ndarray, checksum: int
    ) -> None:
        """Store a band's ``(C, *region)`` probabilities, then mark it done (its input's CRC)."""
        import zarr

        array = zarr.open_array(str(_array_path(work_dir, band.view)), mode="r+")
        array[(band.volume, slice(None), *self.region(band))] = probabilities.astype(np.float16)
        # Written after the probabilities: its presence means "done".
        write_bytes_atomic(Path(work_dir) / VIEWS_DIR / f"{band.index}.done", b"%d" % checksum)

    def done_checksum(self, work_dir: str | Path, band: ViewBand) -> int:
        """Return the checksum of a finished band's input, as `write` stored it."""
        return int((Path(work_dir) / VIEWS_DIR / f"{band.index}.done").read_bytes())

    def read(self, work_dir: str | Path, volume: int, region: tuple[slice, ...]) -> np.ndarray:
        """Return the views' mean probabilities over ``region`` of ``volume`` (float32)."""
        import zarr

        total = None
        for name in self.plans:
            array = zarr.open_array(str(_array_path(work_dir, name)), mode="r")
            part = np.asarray(array[(volume, slice(None), *region)], np.float32)
            total = part if total is None else np.add(total, part, out=total)
        total /= len(self.plans)
        return total


def _array_path(work_dir: str | Path, view: str) -> Path:
    return Path(work_dir) / VIEWS_DIR / f"{view}.zarr"


def volume_number(reader: ImageReader, batch_index: tuple[int, ...]) -> int:
    """Position of a volume among ``reader.batch_indices()``."""
    if not batch_index:
        return 0
    return int(np.ravel_multi_index(batch_index, reader.batch_shape))


def first_plane(
    batch_index: tuple[int, ...], reader: ImageReader, planar: ImageReader | None
) -> tuple[int, ...]:
    """Return a volume's first plane as ``planar`` indexes it (the volume itself without one)."""
    if planar is None:
        return batch_index
    where = dict(zip(reader.batch_axes, batch_index, strict=True))
    return tuple(where.get(a, 0) for a in planar.batch_axes)
