"""Segmentation throughput against a bare forward pass, and peak memory on a large image.

    .venv/bin/python benchmarks/bench_segmentation.py [--size 8192] [--no-memory]

1. Throughput, side by side in one run, on a 2048 x 2048 mosaic of real HeLa
   frames: the whole pipeline (normalize, tile, predict, blend, instances)
   against a bare forward pass (``predict_proba`` of the inference copy the
   pipeline runs: batch norm folded, channels-last) on the same number of
   tiles of the same shape, and against the plain trained model (batch norm,
   contiguous layout) on the same tiles, alternating, best of ``--repeats``.
   Also the pipeline's time outside the model within the same run, relative
   to its time inside: the overhead free of machine noise.
2. Runtimes and number formats (`InferenceConfig.runtime`, `.precision`),
   side by side, interleaved: torch and OpenVINO, float32 and, where the CPU
   computes it natively, bfloat16: the model's megapixels per second, the
   whole pipeline on a 4096 x 4096 mosaic, and AP@0.5 of the labels against
   torch float32's there and on the held-out images; the default (auto):
   what its probe chose, what the probe cost, and its pipeline time against
   torch float32's. The CPU's model and flags are printed with them.
3. Peak memory: a ``--size`` x ``--size`` uint16 mosaic stored as a chunked
   zarr array is segmented in a fresh process; the peak resident memory
   (VmHWM) above the process's state before the run, minus the labels output,
   is what the pipeline itself needs.
Writes results/segmentation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_review import cpu_flags

from napari_unet_tuner import InferenceConfig, load_checkpoint, segment
from napari_unet_tuner.inference.pipeline import DEFAULT_TILE_SHAPE
from napari_unet_tuner.inference.predictor import make_predictor
from napari_unet_tuner.inference.tiling import tile_starts
from napari_unet_tuner.model.checkpoint import default_checkpoint_path
from napari_unet_tuner.model.unet import inference_copy, memory_format

import datasets

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work"


def mosaic(size: int) -> np.ndarray:
    """A size x size uint16 image tiled from real HeLa frames (mirrored to avoid seams)."""
    images, _ = datasets.hela()
    frame = np.concatenate([images[0], images[10][:, ::-1]], axis=1)
    frame = np.concatenate([frame, frame[::-1]], axis=0)
    reps = (math.ceil(size / frame.shape[0]), math.ceil(size / frame.shape[1]))
    return np.tile(frame, reps)[:size, :size]


def throughput(checkpoint, size: int, repeats: int) -> dict:
    image = mosaic(size)
    # float32 throughout: the model against the pipeline around it, in one format
    # (`runtimes` compares runtimes and formats); the segmentation alone, no object table.
    config = InferenceConfig(device="cpu", precision="fp32", runtime="torch", object_table=False)
    tile = DEFAULT_TILE_SHAPE[2]
    n_tiles = math.prod(len(tile_starts(size, t, round(t * config.overlap))) for t in tile)
    model = checkpoint.build_model("cpu")
    predictor = make_predictor(model, precision="fp32")
    fast = inference_copy(model)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, *tile), dtype=np.float32))
    x_fast = x.contiguous(memory_format=memory_format(2))
    inside = [0.0]

    def timed_predictor(batch):
        t = time.perf_counter()
        out = predictor(batch)
        inside[0] += time.perf_counter() - t
        return out

    # Warm-up, untimed: first calls pay for allocator and kernel set-up.
    segment(image[:512, :512], checkpoint, inference=config)
    pipeline, bare, plain, within = [], [], [], []
    for _ in range(repeats):
        inside[0] = 0.0
        t0 = time.perf_counter()
        labels = segment(image, checkpoint, inference=config, predictor=timed_predictor).labels
        pipeline.append(time.perf_counter() - t0)
        within.append((pipeline[-1] - inside[0]) / inside[0])
        for net, inputs, times in ((fast, x_fast, bare), (model, x, plain)):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n_tiles):
                    net.predict_proba(inputs).contiguous().numpy()
            times.append(time.perf_counter() - t0)
    megapixels = image.size / 1e6
    return {
        "image": f"{size}x{size} HeLa mosaic",
        "tiles": n_tiles,
        "tile_shape": list(tile),
        "objects": int(labels.max()),
        "pipeline_seconds": round(min(pipeline), 2),
        "bare_forward_seconds": round(min(bare), 2),
        "pipeline_mpx_per_s": round(megapixels / min(pipeline), 3),
        "bare_forward_mpx_per_s": round(megapixels / min(bare), 3),
        "plain_model_mpx_per_s": round(megapixels / min(plain), 3),
        "inference_copy_speedup": round(min(plain) / min(bare), 2),
        "overhead": round(min(pipeline) / min(bare) - 1, 3),
        "overhead_within_run": round(min(within), 3),
    }


MEMORY_CHILD = """
import json, sys, time, zarr
from napari_unet_tuner import load_checkpoint, segment, InferenceConfig

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

image = zarr.open(sys.argv[1], mode='r')
ckpt = load_checkpoint(sys.argv[2])
ckpt.build_model('cpu')
base = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')
t0 = time.perf_counter()
config = InferenceConfig(device='cpu', runtime=sys.argv[3])
labels = segment(image, ckpt, inference=config).labels
seconds = time.perf_counter() - t0
peak = status('VmHWM:')
print(json.dumps({'baseline_bytes': base, 'peak_bytes': peak, 'labels_bytes': labels.nbytes,
                  'seconds': seconds, 'objects': int(labels.max())}))
"""


def peak_memory(checkpoint_path: Path, size: int, runtime: str) -> dict:
    import zarr

    WORK.mkdir(exist_ok=True)
    store = WORK / f"mosaic_{size}.zarr"
    if not store.exists():
        z = zarr.open(
            str(store), mode="w", shape=(size, size), chunks=(1024, 1024), dtype=np.uint16
        )
        z[:] = mosaic(size)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(store), str(checkpoint_path), runtime],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    beyond = m["peak_bytes"] - m["baseline_bytes"] - m["labels_bytes"]
    return {
        "image": f"{size}x{size} uint16 zarr (1024x1024 chunks)",
        "runtime": runtime,
        "seconds": round(m["seconds"], 1),
        "mpx_per_s": round(size * size / 1e6 / m["seconds"], 3),
        "objects": m["objects"],
        "labels_output_mb": round(m["labels_bytes"] / 2**20),
        "peak_above_baseline_mb": round((m["peak_bytes"] - m["baseline_bytes"]) / 2**20),
        "peak_beyond_output_mb": round(beyond / 2**20),
    }


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """Measured matmul GFLOP/s in ``dtype`` with torch's threads (best of ``repeats``)."""
    a = torch.randn(2048, 2048).to(dtype)
    b = torch.randn(2048, 2048).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * 2048**3 / best / 1e9


def model_gflop_per_megapixel(checkpoint) -> float:
    """Floating-point operations of one forward pass per megapixel (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = inference_copy(checkpoint.build_model("cpu"))
    x = torch.zeros(1, checkpoint.model_config.in_channels, 256, 256)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / (256 * 256) * 1e6 / 1e9


def runtimes(checkpoint, size: int, repeats: int) -> dict:
    """Each runtime and number format side by side, interleaved, and what ``auto`` chose.

    For every runtime (torch; OpenVINO where installed) in every format this
    CPU offers (float32; bfloat16 where it computes it natively): the
    predictor's own megapixels per second on the default tiles (for torch,
    also as a fraction of the measured matmul peak in that format); the
    whole pipeline on a ``size`` x ``size`` HeLa mosaic; and AP@0.5 of its
    labels against torch float32's, there and on the held-out images. Then
    the default (``runtime="auto"``): its probe's cost with an empty cache
    (conversion included) and with the choice remembered, and its pipeline
    time against torch float32's in the same rounds.
    """
    from napari_unet_tuner.inference.openvino_runtime import openvino_available
    from napari_unet_tuner.inference.predictor import build_predictor
    from napari_unet_tuner.inference.runtime_probe import candidate_precisions
    from napari_unet_tuner.training.metrics import average_precision

    tile = DEFAULT_TILE_SHAPE[2]
    t0 = time.perf_counter()
    _, choice = build_predictor(checkpoint.build_model("cpu"), "cpu", tile_shape=tile)
    cold_probe = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, again = build_predictor(checkpoint.build_model("cpu"), "cpu", tile_shape=tile)
    remembered = time.perf_counter() - t0

    formats = candidate_precisions("auto")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    names = [f"torch {f}" for f in formats]
    if openvino_available():
        names += [f"openvino {f}" for f in formats]
    # The segmentation as the CLI runs it (no object table), then with the
    # table that the API and the widget's review add.
    configs = {
        name: InferenceConfig(
            device="cpu",
            runtime=name.split()[0],
            precision=name.split()[1],
            object_table=False,
        )
        for name in names
    }
    configs["auto"] = InferenceConfig(device="cpu", object_table=False)
    configs["torch fp32 + table"] = InferenceConfig(
        device="cpu", runtime="torch", precision="fp32"
    )
    configs["auto + table"] = InferenceConfig(device="cpu")
    image = mosaic(size)
    batch = np.random.default_rng(0).random((1, 1, *tile), dtype=np.float32)
    flop = model_gflop_per_megapixel(checkpoint)
    predictors = {
        name: build_predictor(
            checkpoint.build_model("cpu"), "cpu", configs[name].precision, configs[name].runtime
        )[0]
        for name in names
    }
    for name in names:  # warm-up, untimed
        predictors[name](batch)
    for config in configs.values():
        segment(image[:512, :512], checkpoint, inference=config)
    model_times = {name: [] for name in names}
    pipeline_times = {name: [] for name in configs}
    labels = {}
    for _ in range(repeats):
        for name in configs:
            if name in predictors:
                t0 = time.perf_counter()
                for _ in range(8):
                    predictors[name](batch)
                model_times[name].append((time.perf_counter() - t0) / 8)
            t0 = time.perf_counter()
            labels[name] = segment(image, checkpoint, inference=configs[name]).labels
            pipeline_times[name].append(time.perf_counter() - t0)
    held_out = [pair for pairs in datasets.held_out_sets().values() for pair in pairs]
    reference = [
        segment(i, checkpoint, inference=configs["torch fp32"]).labels for i, _ in held_out
    ]
    rows = {}
    for name in configs:
        baseline = "torch fp32 + table" if name.endswith("table") else "torch fp32"
        others = [segment(i, checkpoint, inference=configs[name]).labels for i, _ in held_out]
        pairs = zip(reference, others, strict=True)
        agreement = [average_precision(ref, other, 0.5) for ref, other in pairs]
        row = {}
        if name in model_times:
            row["model_mpx_per_s"] = round(batch[0, 0].size / 1e6 / min(model_times[name]), 2)
        if name.startswith("torch") and name in model_times:
            peak = matmul_peak(dtypes[name.split()[1]])
            row["matmul_peak_gflops"] = round(peak)
            row["fraction_of_peak"] = round(row["model_mpx_per_s"] * flop / peak, 3)
        row |= {
            "pipeline_seconds": round(min(pipeline_times[name]), 2),
            "pipeline_mpx_per_s": round(image.size / 1e6 / min(pipeline_times[name]), 2),
            "pipeline_vs_torch_fp32": round(
                min(pipeline_times[baseline]) / min(pipeline_times[name]), 2
            ),
            "objects": int(labels[name].max()),
            "ap50_vs_torch_fp32_mosaic": round(
                average_precision(labels["torch fp32"], labels[name], 0.5), 4
            ),
            "ap50_vs_torch_fp32_held_out": round(float(np.mean(agreement)), 4),
        }
        rows[name] = row
    return {
        "image": f"{size}x{size} HeLa mosaic",
        "tile_shape": list(tile),
        "gflop_per_megapixel": round(flop, 1),
        "auto_choice": choice.label,
        "probe_speeds_mpx_per_s": {k: round(v, 2) for k, v in choice.speeds.items()},
        "probe_seconds_empty_cache": round(cold_probe, 2),
        "probe_seconds_remembered": round(remembered, 2),
        "remembered_choice": again.label,
        "runtimes": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--throughput-size", type=int, default=2048)
    parser.add_argument("--precision-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory run (minutes at 8192)"
    )
    args = parser.parse_args()
    path = args.checkpoint or default_checkpoint_path()
    # An empty cache: the probe's first cost is part of what is measured.
    cache = Path(tempfile.mkdtemp(prefix="unet_tuner_bench_cache_"))
    os.environ["UNET_TUNER_CACHE_DIR"] = str(cache)
    checkpoint = load_checkpoint(path)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "cpu": cpu_flags(),
        "checkpoint": checkpoint.card.name,
        "model": checkpoint.model_config.to_dict(),
        "throughput": throughput(checkpoint, args.throughput_size, args.repeats),
        "runtimes": runtimes(checkpoint, args.precision_size, args.repeats),
    }
    print(json.dumps(report, indent=2), flush=True)
    previous = RESULTS / "segmentation.json"
    if args.no_memory and previous.exists():
        report["memory"] = json.loads(previous.read_text()).get("memory")
    else:
        # The default (auto: OpenVINO where it won the probe) against torch, in turn.
        report["memory"] = peak_memory(path, args.size, "auto")
        report["memory_torch"] = peak_memory(path, args.size, "torch")
    shutil.rmtree(cache, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "segmentation.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
