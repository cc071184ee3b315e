import pickle

import numpy as np
import pytest
import tifffile

from napari_unet_tuner.errors import InputError
from napari_unet_tuner.io import FileImage

zarr = pytest.importorskip("zarr")


def test_compressed_tiff_is_read_tile_by_tile_with_its_axes(tmp_path):
    data = np.arange(3 * 300 * 400, dtype=np.uint16).reshape(3, 300, 400)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, compression="zlib", tile=(128, 128), metadata={"axes": "ZYX"})
    image = FileImage(path)
    assert isinstance(image.array, zarr.Array)  # not decoded whole
    assert image.axes == "ZYX" and image.shape == data.shape and image.dtype == np.uint16
    np.testing.assert_array_equal(image[1, 10:20, 5:9], data[1, 10:20, 5:9])
    # Workers receive the path and reopen the file themselves.
    assert pickle.loads(pickle.dumps(image)).shape == data.shape
    assert len(pickle.dumps(image)) < 1000


def test_plain_files_are_memory_mapped(tmp_path):
    data = np.ones((50, 60), np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    np.save(tmp_path / "plain.npy", data)
    assert isinstance(FileImage(tmp_path / "plain.tif").array, np.memmap)
    assert isinstance(FileImage(tmp_path / "plain.npy").array, np.memmap)


def test_unreadable_inputs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FileImage(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"expected a \.tif"):
        FileImage(tmp_path / "notes.txt")
    group = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="uint8")
    with pytest.raises(InputError, match="plate.zarr/raw"):
        FileImage(tmp_path / "plate.zarr")
    assert FileImage(tmp_path / "plate.zarr" / "raw").shape == (4, 4)
