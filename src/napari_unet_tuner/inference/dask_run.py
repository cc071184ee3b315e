"""Running a chunked run's tasks: on threads, a LocalCluster or a dask.distributed cluster."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from napari_unet_tuner.config import ChunkedConfig
from napari_unet_tuner.inference.chunk_tasks import Chunk, RunSpec

log = logging.getLogger(__name__)


# dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=64 KiB, which also
# turns off glibc's adaptive mmap threshold: every large tensor is then mmapped
# and unmapped, and torch runs 1.8x slower (2.7 s vs 1.5 s for ten 256 x 256
# forward passes here). A fixed 32 MiB mmap threshold with trimming above
# 256 MiB makes a worker as fast as a plain process (1.4 s).
_WORKER_ENVIRON = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
}


@contextmanager
def local_cluster(config: ChunkedConfig) -> Iterator[ChunkedConfig]:
    """Start the LocalCluster a config asks for; yield the config pointing at it.

    A config without ``workers`` is yielded unchanged. Several runs (a batch
    of files) can share one cluster this way.
    """
    if config.workers is None:
        yield config
        return
    import dask
    from distributed import LocalCluster

    with (
        dask.config.set(_WORKER_ENVIRON),
        LocalCluster(
            n_workers=config.workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            memory_limit=config.memory_limit or "auto",
            # ":0": any free port, so that several clusters never collide on 8787.
            dashboard_address=":0",
        ) as cluster,
    ):
        log.info("dask LocalCluster: %d workers at %s", config.workers, cluster.scheduler_address)
        yield dataclasses.replace(config, workers=None, scheduler=cluster.scheduler_address)


@contextmanager
def dask_client(config: ChunkedConfig) -> Iterator[Any]:
    """Yield a dask.distributed client for the config, or None for the threaded scheduler."""
    if config.workers is None and config.scheduler is None:
        yield None
        return
    from distributed import Client

    with local_cluster(config) as running, Client(running.scheduler) as client:
        yield client


def run_tasks(
    client: Any,
    function: Callable,
    spec: RunSpec,
    jobs: Sequence[tuple[Chunk, Any]],
    threads: int,
) -> Iterator[Chunk]:
    """Run ``function(spec, chunk, arg)`` for every job on dask; yield chunks as they finish.

    Closing the iterator cancels what has not started (on the threaded
    scheduler: after the current batch).
    """
    import dask

    if client is None:
        for first in range(0, len(jobs), threads):
            batch = jobs[first : first + threads]
            # A partial keeps dask from looking inside the arguments: a dask
            # array in ``spec`` must stay lazy, not be computed whole first.
            tasks = [
                dask.delayed(functools.partial(function, spec, chunk, arg))()
                for chunk, arg in batch
            ]
            dask.compute(*tasks, scheduler="threads", num_workers=threads)
            yield from (chunk for chunk, _ in batch)
        return
    from distributed import as_completed

    shipped = client.scatter(spec, broadcast=True, hash=False)
    futures = {
        client.submit(function, shipped, chunk, arg, pure=False): chunk for chunk, arg in jobs
    }
    try:
        for future in as_completed(futures):
            future.result()  # raises the task's error here, in the caller
            yield futures[future]
    finally:
        client.cancel(list(futures))
