"""The run's VLM from its config: one process, or one replica per process of a data-parallel
launch (torchrun / accelerate launch), the main process's calls forwarded to the others."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from rls3.config import Config, ConfigError
from rls3.vlm import build_vlm
from rls3.vlm.base import VLM
from rls3.vlm.distributed import DataParallel, build_remote, check_processes, serve

log = logging.getLogger(__name__)


def build_vlm_from_config(cfg: Config, weights: str | Path | None = None,
                          parallel: DataParallel | None = None) -> VLM:
    """The run's VLM adapter (seeded with the run seed). With `parallel` (a multi-process
    launch, main process) every process builds its replica and the main process gets a
    `RemoteVLM` that forwards each collective call to the others (see `serve_vlm`)."""
    if parallel is None:
        return build_vlm_replica(cfg, None if weights is None else str(weights))
    log.info("VLM data-parallel over %d processes (%s); this main process alone runs the scene, "
             "the agent and the run directory", parallel.world_size, parallel.device)
    return build_remote(parallel, partial(build_vlm_replica, parallel=parallel), cfg,
                        None if weights is None else str(weights))


def build_vlm_replica(cfg: Config, weights: str | None = None,
                      parallel: DataParallel | None = None) -> VLM:
    """This process's adapter: on a multi-GPU launch each process takes its own GPU and the
    adapter splits its work over the processes (`VLM.distribute`)."""
    kw = cfg.vlm.build_kwargs()
    if weights is not None:
        kw["weights"] = weights
    progress = cfg.progress
    if parallel is not None:
        progress = progress and parallel.is_main
        if parallel.device.type == "cuda" and kw.get("device") in (None, "cuda"):
            kw["device"] = str(parallel.device)
    try:
        vlm = build_vlm(cfg.vlm.name, seed=cfg.seed, progress=progress, **kw)
    except (ValueError, OSError) as e:
        raise ConfigError(f"cannot build VLM {cfg.vlm.name!r}: {e}") from e
    if parallel is not None:
        vlm.distribute(parallel)
    return vlm


def serve_vlm(parallel: DataParallel) -> int:
    """A non-main process of a multi-process run: build the VLM replica and run the main
    process's VLM calls, in its order, until it stops; returns the number of calls."""
    return serve(parallel, partial(build_vlm_replica, parallel=parallel))


def check_launch(cfg: Config, parallel: DataParallel | None) -> None:
    """ConfigError when `vlm.processes` disagrees with the processes actually launched."""
    world = 1 if parallel is None else parallel.world_size
    try:
        check_processes(cfg.vlm.processes, world)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if world > 1 and cfg.loop.overlap:
        raise ConfigError(f"loop.overlap=true runs the VLM's fine-tuning beside the scene in "
                          f"one process; it cannot with {world} VLM processes: set "
                          f"loop.overlap=false")
    if world > 1 and cfg.env.workers > 1:
        log.info("%d scene workers run for the main process only; the %d VLM processes share "
                 "the fine-tuning, feedback and evaluation", cfg.env.workers, world)

