"""Everything checked before a run folder exists (`check_runnable`): the backend's names,
options, image size and scene workers, the VLM's options and weights file, and whether SAC's
replay buffer fits in memory. Each failure is a ConfigError naming the key; nothing is written."""

from __future__ import annotations

from pathlib import Path

from rls3.backends import get_backend_spec
from rls3.config import Config
from rls3.configerror import ConfigError, require

#: share of the available memory SAC's replay buffer may take before a run is refused
BUFFER_MEMORY_SHARE = 0.8


def check_runnable(cfg: Config) -> None:
    """What can be checked before a run directory is made: the backend's scene/object/option
    names, image size and scene workers, the VLM's options against its adapter, a state-dict file
    given as the clip adapter's weights (read and checked, not converted), and whether SAC's
    replay buffer fits in memory. Raises ConfigError naming the key."""
    spec = get_backend_spec(cfg.backend.name)
    if spec.check is not None:
        spec.check(cfg.backend)
    check_image_size(cfg)
    if cfg.env.workers > 1 and spec.workers_check is not None:
        spec.workers_check(cfg.backend, cfg.env.workers)
    check_vlm(cfg)
    check_memory(cfg)


def check_image_size(cfg: Config) -> None:
    """ConfigError when `env.image_size` is larger than the backend can render here."""
    limit = get_backend_spec(cfg.backend.name).image_limit
    if limit is not None:
        top = limit()
        require(cfg.env.image_size <= top, "env.image_size", cfg.env.image_size,
                f"an integer in [8, {top}]: the {cfg.backend.name} backend's renderer draws at "
                f"most {top} x {top} pixels on this machine")


def check_vlm(cfg: Config) -> None:
    """The VLM's options against its adapter's constructor, a state-dict file given as the
    clip adapter's weights (read and checked, not yet converted), and `loop.overlap`'s need
    for a feedback copy."""
    from rls3.vlm import check_vlm_options, get_vlm_spec, has_feedback_twin

    if cfg.loop.overlap and not has_feedback_twin(cfg.vlm.name):
        raise ConfigError(f"loop.overlap=true needs a CLIP-type VLM (e.g. lite, clip), whose "
                          f"copy for feedback shares its frozen weights; vlm.name="
                          f"{cfg.vlm.name!r} has none: set loop.overlap=false")

    kw = cfg.vlm.build_kwargs()
    options = {**get_vlm_spec(cfg.vlm.name).options,
               **{k: v for k, v in kw.items() if k not in ("weights", "device", "dtype")}}
    try:
        check_vlm_options(cfg.vlm.name, options)
    except ValueError as e:
        raise ConfigError(f"invalid vlm.options={cfg.vlm.options!r}: {e}") from e
    if get_vlm_spec(cfg.vlm.name).adapter == "clip" and cfg.vlm.weights:
        from rls3.vlm.openai_clip import inspect_checkpoint, is_state_dict_source

        if is_state_dict_source(cfg.vlm.weights):
            try:
                inspect_checkpoint(cfg.vlm.weights)
            except (ValueError, OSError) as e:
                raise ConfigError(f"invalid vlm.weights={cfg.vlm.weights!r}: {e}") from e


def check_memory(cfg: Config) -> None:
    """ConfigError when SAC's replay buffer would take more than BUFFER_MEMORY_SHARE of the
    memory available now (the random agent keeps none)."""
    if cfg.agent.name != "sac":
        return
    pool = len(cfg.backend.objects) if cfg.backend.objects is not None else 9
    need, have = replay_buffer_bytes(cfg, pool), available_memory()
    if have is not None and need > BUFFER_MEMORY_SHARE * have:
        raise ConfigError(
            f"invalid agent.buffer_size={cfg.agent.buffer_size}: SAC's replay buffer would "
            f"take {need / 2**30:.1f} GiB, more than {BUFFER_MEMORY_SHARE:.0%} of the "
            f"{have / 2**30:.1f} GiB available; lower it (it needs no more than "
            f"agent.pretrain_steps plus the run's env steps)")


def replay_buffer_bytes(cfg: Config, pool: int = 9, scenes: int | None = None) -> int:
    """SB3 SAC's replay-buffer size in bytes for `cfg` (float32 observations and next
    observations, actions, reward, done and timeout flags per transition)."""
    from rls3.env import OBS_SIZE, relative_size

    if scenes is None:
        v = cfg.backend.train_scenes
        scenes = 5 if v == "train" else 1 if isinstance(v, str) else len(v)
    obs = relative_size(pool, scenes) if cfg.env.observation == "relative" else OBS_SIZE
    return int(cfg.agent.buffer_size) * (2 * obs + 3 + 3) * 4


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
