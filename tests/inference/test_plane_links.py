import numpy as np

from napari_unet_tuner.config import InstanceConfig
from napari_unet_tuner.inference.instances import probabilities_to_labels
from napari_unet_tuner.inference.plane_links import link_planes


def disc_probabilities(centres_by_plane, shape=(48, 64), radius=8):
    """boundary3 probabilities of discs: interior inside, boundary on a 1-px rim."""
    depth = len(centres_by_plane)
    probabilities = np.zeros((3, depth, *shape), np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for z, centres in enumerate(centres_by_plane):
        for y, x in centres:
            distance = np.hypot(yy - y, xx - x)
            probabilities[1, z][distance <= radius - 1] = 1.0
            probabilities[2, z][(distance > radius - 1) & (distance <= radius)] = 1.0
    probabilities[0] = 1.0 - probabilities[1] - probabilities[2]
    return probabilities


def test_nuclei_above_one_another_stay_apart_and_a_drifting_one_stays_whole():
    config = InstanceConfig(threshold=0.5, seed_threshold=0.5, min_size=5)
    # Nucleus A in planes 0-2, nucleus B in planes 3-5 shifted 10 px (IoU 0.15
    # with A): linked as seeds in 3D they touch and become one object.
    stacked = disc_probabilities([[(24, 20)]] * 3 + [[(24, 30)]] * 3)
    assert probabilities_to_labels(stacked, "boundary3", config).max() == 1
    labels = link_planes(stacked, "boundary3", config)
    assert labels.max() == 2
    assert (labels[:3][stacked[1, :3] > 0] == 1).all()
    assert (labels[3:][stacked[1, 3:] > 0] == 2).all()
    # A nucleus 2 px further in each plane (IoU about 0.8 plane to plane) is one,
    # beside a second one that appears in plane 3 only.
    drifting = disc_probabilities(
        [[(24, 12 + 2 * z)] + ([(24, 50)] if z == 3 else []) for z in range(6)]
    )
    labels = link_planes(drifting, "boundary3", config)
    assert labels.max() == 2
    assert set(np.unique(labels[:, 24, :30])) == {0, 1}
    assert set(np.unique(labels[3])) == {0, 1, 2} and not (labels[[0, 1, 2, 4, 5]] == 2).any()
    # Each object of a plane links to one object of the plane before at most:
    # a nucleus that splits in two keeps its label on the better match only.
    split = disc_probabilities([[(24, 30)]] * 2 + [[(24, 26), (24, 42)]] * 2)
    labels = link_planes(split, "boundary3", config)
    assert labels.max() == 2 and labels[3, 24, 26] == 1 and labels[3, 24, 42] == 2
