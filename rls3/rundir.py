"""Run directories: their format, config and metrics, checkpoints and their manifests, atomic
writes. Reading a run (reports, budgets) needs nothing heavier than this module. The loop says
what a checkpoint holds; writing, committing and reading it back is here (`write_checkpoint`,
`read_checkpoint_state`, `loading`, `save_best_vlm`).

A run directory `runs/{preset}__{agent}__{seed}__{time}/` holds:
  run.json          format marker (format, format_version, rls3 version, allocator, OpenMP policy)
  config.yaml       the resolved config
  metrics.jsonl     one JSON record per finished iteration (append-only)
  tb/               TensorBoard scalars
  data/iter_NNNN/   each iteration's fine-tuning batch (PNG + metadata.jsonl)
  checkpoints/      LATEST.json -> iter_NNNN/ (VLM, agent + replay buffer, RNG states, counters,
                    the fine-tuning replay's references into data/ and the digests of the saved
                    batches, manifest with sizes and SHA-256), committed atomically after each
                    iteration
  best_vlm/         the VLM at its best validation score
  run.log           the log
  run.lock          while a process runs or resumes the run: its PID, under an OS lock (`lock_run`)

A run directory is data, never code: every file is JSON, YAML (safe loader), safetensors, npz
(no pickled objects), PNG or a plain tensor dict read with `torch.load(weights_only=True)`, so
resuming or reporting a run received from someone else cannot run code it carries. A resume also
refuses a `config.yaml` edited since the run was made (`config_sha256` in run.json), a checkpoint
or `best_vlm/` that does not match its manifest, a `LATEST.json` that points outside its
checkpoints folder, and a saved batch that differs from the digest its checkpoint recorded.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
from safetensors import SafetensorError

import rls3
from rls3 import runtime
from rls3.atomic import atomic_create, atomic_folder, atomic_write
from rls3.config import Config, ConfigError, dump_yaml
from rls3.manifest import MANIFEST_FILE, manifest_problems, sha256, write_manifest

log = logging.getLogger(__name__)

RUN_FORMAT = "rls3-run"
#: 2: checkpoints carry the fine-tuning replay state (`loop.replay`); 3: checkpoints hold data
#: only (no pickles) and run.json records the config's digest. Runs of older formats can still be
#: read (reports, budgets) but not continued, for the reason `_NOT_CONTINUABLE` gives.
RUN_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
_NOT_CONTINUABLE = {
    1: "before fine-tuning replay (loop.replay) existed",
    2: "when checkpoints held pickles (rng.pkl, sac.zip, replay_buffer.pkl), which this rls3 "
       "never loads because unpickling a received file can run any code",
}
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "run.log"
LOCK_FILE = "run.lock"
CHECKPOINTS = "checkpoints"
LATEST_FILE = "LATEST.json"
STATE_FILE = "state.json"
BEST_VLM = "best_vlm"
#: what LATEST.json may name: a checkpoint folder beside it
CHECKPOINT_NAME = re.compile(r"iter_(\d{4,})")
#: files of format-2 checkpoints that are pickles; never loaded
PICKLED_FILES = ("rng.pkl", "agent/sac.zip", "agent/replay_buffer.pkl")
#: fields of a metrics record that time the run (a timestamp, seconds, rates): everything else is
#: determined by the config and seed, so two runs compare equal on `without_timings`
TIMING_FIELDS = frozenset({"time", "time_s", "elapsed_s", "samples_per_s"})


class RunDirError(ValueError):
    """A run directory cannot be used (wrong format/version, corrupt checkpoint, ...)."""


# ------------------------------------------------------------------------------------ run dirs
def run_name(cfg: Config, when: datetime | None = None) -> str:
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.preset}__{cfg.agent.name}__{cfg.seed}__{stamp}"


def create_run(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Make a new run directory (format marker + resolved config); nothing runs yet. The folder
    is claimed atomically, so two processes never share one: an automatic name takes the next
    free `-2`, `-3`, ... suffix, and a given folder that another process claimed is refused."""
    where = Path(cfg.runs_dir) if run_dir is None else Path(run_dir)
    bad = folder_problem(where)
    if bad:
        raise RunDirError(f"cannot make a run directory in {str(where)!r}: {bad}")
    run_dir = _new_folder(where, run_name(cfg)) if run_dir is None else where
    taken = RunDirError(f"run directory {str(run_dir)!r} already exists and is not empty; "
                        f"continue it with `rls3 run --resume {run_dir}`")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise taken
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
              "rls3_version": rls3.__version__,
              "created": datetime.now().isoformat(timespec="seconds"),
              **runtime.status().record()}
    marker["config_sha256"] = config_digest(cfg)
    try:  # whoever puts run.json there first owns the folder
        atomic_create(run_dir / RUN_FILE, json.dumps(marker, indent=2))
    except FileExistsError:
        raise taken from None
    atomic_write(run_dir / CONFIG_FILE, cfg.to_yaml())
    return run_dir


def config_digest(cfg: Config) -> str:
    """SHA-256 of `cfg`'s YAML: what run.json records, so an edited config.yaml is noticed on
    resume (layout and comments do not count, settings do)."""
    return hashlib.sha256(cfg.to_yaml().encode()).hexdigest()


def _written_digest(path: Path) -> str | None:
    """SHA-256 of the settings a config.yaml holds, as `config_digest` hashed them when an
    older rls3 wrote the file: a run made before a setting existed hashed a config without it,
    so an unedited folder of an older version still resumes (new settings take their
    defaults, which keep the earlier behaviour)."""
    import yaml

    try:
        return hashlib.sha256(dump_yaml(yaml.safe_load(path.read_text())).encode()).hexdigest()
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _new_folder(parent: Path, name: str) -> Path:
    """`parent/name`, else `name-2`, `name-3`, ...: the first one this process creates itself
    (an exclusive mkdir, so concurrent callers get different folders)."""
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        folder = parent / (name if k == 1 else f"{name}-{k}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RunDirError(f"no free run directory name {name}-N under {str(parent)!r}")


def folder_problem(path: str | Path, existing_read_only: bool = False) -> str | None:
    """Why a folder cannot be made and written at `path` (a file in its place or above it, no
    write permission, a read-only file system), or None. With `existing_read_only` a folder that
    exists already need not be writable (a shared cache that may hold all a run reuses)."""
    p = Path(path)
    while not p.is_dir():
        if os.path.lexists(p):
            if p.is_dir():      # another process made it between the two looks: a folder
                break
            return f"{str(p)!r} is a file, not a folder"
        if p.parent == p:
            return f"{str(p)!r} does not exist"
        p = p.parent
    if p == Path(path) and existing_read_only:
        return None
    if os.access(p, os.W_OK | os.X_OK):
        return None
    read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    return f"{str(p)!r} is " + ("on a read-only file system" if read_only else "not writable")


def check_run_paths(cfg: Config, run_dir: str | Path | None = None) -> None:
    """Before a run folder exists: the run directory (or `runs_dir`), `data.dir` and SAC's
    `agent.pretrained_dir` can be made and written (RunDirError / ConfigError naming the path);
    an existing `data.dir` / `pretrained_dir` may be read-only (it may hold what the run reuses)."""
    if run_dir is not None:
        bad = folder_problem(run_dir)
        if bad:
            raise RunDirError(f"cannot use run directory {str(run_dir)!r}: {bad}")
    checks = [("data.dir", cfg.data.dir, True)]
    if run_dir is None:
        checks.insert(0, ("runs_dir", cfg.runs_dir, False))
    if cfg.agent.name == "sac" and cfg.agent.pretrained_dir:
        checks.append(("agent.pretrained_dir", cfg.agent.pretrained_dir, True))
    for key, path, cache in checks:
        bad = folder_problem(path, existing_read_only=cache)
        if bad:
            raise ConfigError(f"invalid {key}={path!r}: {bad}; it must be a folder this user "
                              f"can write (or create)")


# ------------------------------------------------------------------------------------ ownership
class RunLock:
    """The OS lock (`flock`) on a run directory's `run.lock`, which holds the owner's PID. The
    kernel drops it when its process ends, however it ends: a lock file left by a killed run is
    not in force."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while locked: nobody is using this file any more
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def lock_run(run_dir: str | Path) -> RunLock:
    """Become `run_dir`'s one owner (held until `RunLock.release` or the process's end), or
    RunDirError naming the process that is (another run or --resume of it)."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {str(run_dir)!r}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if holder is None:
                raise RunDirError(f"cannot lock run directory {str(run_dir)!r}: {e}") from e
            raise RunDirError(
                f"run directory {str(run_dir)!r} is in use by process {holder} (a run or "
                f"--resume of it is still going); let it finish or stop it, then continue "
                f"with `rls3 run --resume {run_dir}`") from None
        try:  # the previous owner may have removed the file between our open and our lock
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(path, fd)


def _lock_holder(fd: int) -> str:
    """The PID written in a lock file held by another process ("unknown" if it has not written
    it yet)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def check_run_dir(run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Read and check a run directory's format marker; RunDirError if it is not a usable run
    (for `resume`: one this version can continue)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if os.path.lexists(run_dir) else "does not exist"
        raise RunDirError(f"run directory {str(run_dir)!r} {what}")
    f = run_dir / RUN_FILE
    if not f.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not an rls3 run directory (no {RUN_FILE})")
    try:
        marker = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{str(f)!r} is corrupt: {e}") from e
    if not isinstance(marker, dict) or marker.get("format") != RUN_FORMAT:
        raise RunDirError(f"{str(run_dir)!r} is not an rls3 run directory ({RUN_FILE} has format "
                          f"{marker.get('format') if isinstance(marker, dict) else marker!r})")
    version = marker.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise RunDirError(f"{str(run_dir)!r} has run format version {version!r}; this rls3 "
                          f"reads versions {list(READABLE_FORMAT_VERSIONS)}")
    if resume and version != RUN_FORMAT_VERSION:
        raise RunDirError(f"{str(run_dir)!r} was written in run format {version}, "
                          f"{_NOT_CONTINUABLE[version]}, and cannot be continued by this rls3 "
                          f"(format {RUN_FORMAT_VERSION}); nothing was changed. Its report and "
                          f"budget can still be read; start a new run with `rls3 run --config "
                          f"{run_dir / CONFIG_FILE}`")
    if marker.get("rls3_version") != rls3.__version__:
        raise RunDirError(f"{str(run_dir)!r} was made by rls3 {marker.get('rls3_version')!r}; "
                          f"this is rls3 {rls3.__version__} and cannot continue it exactly "
                          f"(start a new run)")
    return marker


def load_run_config(run_dir: str | Path, resume: bool = False) -> Config:
    """The run's config; for `resume`, RunDirError when config.yaml was edited since the run was
    made (a run cannot mix two configurations)."""
    marker = check_run_dir(run_dir, resume=resume)
    path = Path(run_dir) / CONFIG_FILE
    try:
        cfg = Config.from_yaml(path, base=Config())
    except ConfigError as e:
        raise RunDirError(f"{str(run_dir)!r}: bad {CONFIG_FILE}: {e}") from e
    recorded = marker.get("config_sha256")
    if resume and (recorded is None or (recorded != config_digest(cfg)
                                        and recorded != _written_digest(path))):
        raise RunDirError(f"{str(path)!r} differs from the configuration the run was made with "
                          f"(config_sha256 in {RUN_FILE}); a run cannot continue under another "
                          f"configuration, so nothing was changed: undo the edit, or start a "
                          f"new run with `rls3 run --config {path}`")
    return cfg


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record without its `TIMING_FIELDS` (what reproduces exactly)."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


#: torn metrics files already warned about ((path, size): a report reads each run per figure)
_TORN_WARNED: set[tuple[str, int]] = set()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All metrics records of a run, in order (a torn last line from a crash is skipped, with one
    warning per file and size)."""
    f = Path(run_dir) / METRICS_FILE
    if not f.is_file():
        return []
    out = []
    lines = f.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                seen = (str(f.resolve()), f.stat().st_size)
                if seen not in _TORN_WARNED:
                    _TORN_WARNED.add(seen)
                    log.warning("%s: ignoring a torn last line", f)
                continue
            raise RunDirError(f"{str(f)!r} line {i + 1} is not valid JSON: {e}") from e
    return out


def budget_from_run(run_dir: str | Path, unit: str = "steps") -> int:
    """Total generated samples (env steps, or valid frames for unit="valid") of a run."""
    key = {"steps": "cum_steps", "valid": "cum_valid"}.get(unit)
    if key is None:
        raise ConfigError(f"invalid loop.budget_unit={unit!r}: must be one of ['steps', 'valid']")
    check_run_dir(run_dir)
    recs = [r for r in read_metrics(run_dir) if r.get("iteration", 0) > 0]
    if not recs:
        raise RunDirError(f"run {str(run_dir)!r} has no finished iteration to take a budget from")
    if not recs[-1].get("stop_reason"):
        log.warning("budget run %s has not finished; using its %d iterations so far", run_dir,
                    recs[-1]["iteration"])
    return int(recs[-1][key])


def resolve_budget(cfg: Config) -> Config:
    """`cfg` with `loop.budget` taken from the run `loop.budget_from` names, when it names one and
    no budget is set (the equal-budget baseline); otherwise `cfg` unchanged."""
    if not cfg.loop.budget_from or cfg.loop.budget != 0:
        return cfg
    source = Path(cfg.loop.budget_from)
    if not source.is_dir():
        raise ConfigError(f"invalid loop.budget_from={cfg.loop.budget_from!r}: run directory "
                          f"does not exist")
    return cfg.override({"loop.budget": budget_from_run(source, cfg.loop.budget_unit)})


def append_metrics(run_dir: Path, record: dict[str, Any]) -> int:
    """Append one iteration's record to metrics.jsonl (non-finite floats as null), durably;
    returns the file's new size, which the checkpoint records."""
    path = run_dir / METRICS_FILE
    with open(path, "a") as f:
        f.write(json.dumps(_jsonable(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def truncate_metrics(run_dir: Path, size: int) -> bool:
    """Cut metrics.jsonl back to `size` bytes (the records of the last checkpoint), creating it
    when missing; True when records were dropped."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        path.touch()
        return False
    if path.stat().st_size <= size:
        return False
    with open(path, "r+b") as f:
        f.truncate(size)
    return True


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------------ checkpoints
@contextmanager
def saving(target: Path, run_dir: Path) -> Iterator[None]:
    """Turn an OS error while writing `target` (through `rls3.atomic`: disk full, permissions)
    into a one-line RunDirError naming it; nothing half-written is left, so the run continues
    from its last committed checkpoint."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        raise RunDirError(f"cannot write {str(target)!r}: {e}; nothing half-written was kept, "
                          f"and the run continues from its last checkpoint once the cause is "
                          f"fixed: rls3 run --resume {run_dir}") from e


#: what reading a checkpoint's parts raises when a file is missing, malformed or not data
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError, UnpicklingError,
               EOFError)


@contextmanager
def loading(checkpoint: Path, run_dir: Path) -> Iterator[None]:
    """Turn an error while reading `checkpoint`'s parts (VLM, agent, RNG states) into one
    RunDirError naming it; nothing in the run directory is changed."""
    try:
        yield
    except LOAD_ERRORS as e:
        raise RunDirError(f"checkpoint {str(checkpoint)!r} cannot be loaded: {e}; nothing "
                          f"was changed (to run this configuration again, start a new run: "
                          f"rls3 run --config {run_dir / CONFIG_FILE})") from e


def write_checkpoint(run_dir: Path, iteration: int, state: Mapping[str, Any],
                     write_parts: Callable[[Path], None]) -> Path:
    """Commit iteration `iteration`'s checkpoint `checkpoints/iter_NNNN`: `write_parts(folder)`
    fills it (VLM, agent, RNG states), then the loop's counters `state` and the manifest;
    LATEST.json then names it and older checkpoints are removed. Returns the folder."""
    ck = run_dir / CHECKPOINTS
    ck.mkdir(exist_ok=True)
    for stale in ck.glob(".*"):  # temporaries of a crashed write
        shutil.rmtree(stale, ignore_errors=True)
    name = f"iter_{iteration:04d}"
    final = ck / name
    # a folder `final` can only be left by a crash between its rename and LATEST's update
    # (LATEST names an older one): it is replaced
    with saving(final, run_dir):
        with atomic_folder(final) as tmp:
            write_parts(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(dict(state), indent=1))
            write_manifest(tmp)
        atomic_write(ck / LATEST_FILE, json.dumps({"dir": name, "iteration": iteration}))
    for old in ck.glob("iter_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint_state(run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """The loop's counters `write_checkpoint` recorded in `checkpoint` (RunDirError when they are
    not a JSON object, or when metrics.jsonl is shorter than their `metrics_bytes`)."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        if not isinstance(state, dict):
            raise TypeError(f"{STATE_FILE} must hold a JSON object")
    except (ValueError, TypeError) as e:   # ValueError: bad JSON or bad UTF-8
        raise RunDirError(f"checkpoint {str(checkpoint)!r} is corrupt: bad {STATE_FILE}") from e
    mf = run_dir / METRICS_FILE
    size = state.get("metrics_bytes", 0)
    if not mf.is_file() or mf.stat().st_size < size:
        raise RunDirError(f"{str(mf)!r} is shorter than checkpoint {checkpoint.name} recorded; "
                          f"the run directory is damaged")
    return state


def save_best_vlm(run_dir: Path, iteration: int, save: Callable[[Path], None]) -> None:
    """Replace `best_vlm/` with the VLM `save(folder)` writes, the iteration it is from and a
    manifest (atomically: a crash keeps the previous best)."""
    with saving(run_dir / BEST_VLM, run_dir), atomic_folder(run_dir / BEST_VLM) as tmp:
        save(tmp)
        (tmp / "iteration.json").write_text(json.dumps({"iteration": iteration}))
        write_manifest(tmp)


def verify_manifest(folder: Path) -> None:
    bad = manifest_problems(folder)
    if bad:
        raise RunDirError(f"checkpoint {str(folder)!r} is corrupt: {', '.join(bad)}")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The committed checkpoint folder (verified), or None if the run has none yet. LATEST.json
    may only name an `iter_NNNN` folder beside it (never a path into another run)."""
    ck = Path(run_dir) / CHECKPOINTS
    latest = ck / LATEST_FILE
    if not latest.is_file():
        return None
    try:
        ptr = json.loads(latest.read_text())
        name, iteration = ptr["dir"], ptr["iteration"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise RunDirError(f"{str(latest)!r} is corrupt: {e}") from e
    match = CHECKPOINT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) != iteration:
        raise RunDirError(f"{str(latest)!r} is corrupt: it names {name!r} (iteration "
                          f"{iteration!r}); it may only name a checkpoint folder iter_NNNN of "
                          f"iteration NNNN beside it")
    folder = ck / name
    if folder.is_symlink() or not folder.is_dir():
        raise RunDirError(f"checkpoint {str(folder)!r} named by {LATEST_FILE} is missing (or "
                          f"a symbolic link, which a run's checkpoint never is)")
    verify_manifest(folder)
    return folder


def check_resumable(run_dir: Path, checkpoint: Path | None) -> None:
    """RunDirError when what a resume reads besides the checkpoint's own files is unusable: a
    pickle of an older format inside `checkpoint`, or a `best_vlm/` that does not match its
    manifest (nothing is rewritten: the best VLM's weights cannot be recovered from elsewhere)."""
    if checkpoint is not None:
        pickled = [n for n in PICKLED_FILES if (checkpoint / n).exists()]
        if pickled:
            raise RunDirError(f"checkpoint {str(checkpoint)!r} holds {', '.join(pickled)}, "
                              f"written by an older rls3 as a pickle, which is never loaded "
                              f"(unpickling can run any code); nothing was changed: start a new "
                              f"run with `rls3 run --config {run_dir / CONFIG_FILE}`")
    best = run_dir / BEST_VLM
    bad = manifest_problems(best) if best.exists() else []
    if bad:
        raise RunDirError(f"{str(best)!r} is corrupt: {', '.join(bad)}; nothing was changed. "
                          f"Restore {BEST_VLM}/ from a copy of the run, or delete it and resume "
                          f"(it is written again at the next best validation score; until then "
                          f"`rls3 eval` uses the latest checkpoint)")


def batch_problems(folder: Path, digest: str | None) -> list[str]:
    """How a saved fine-tuning batch differs from the digest of its manifest that a checkpoint
    recorded (a missing or replaced file, a rewritten manifest); empty when it matches."""
    if digest is None:
        return ["its checkpoint recorded no digest for it"]
    mf = folder / MANIFEST_FILE
    if not mf.is_file():
        return [f"no {MANIFEST_FILE}"]
    if sha256(mf) != digest:
        return [f"{MANIFEST_FILE} altered"]
    return manifest_problems(folder)


def vlm_checkpoint(path: str | Path) -> Path:
    """A VLM weights folder from a run directory (its best VLM, else the latest checkpoint's),
    a checkpoint folder, or a VLM folder itself; a folder whose manifest does not match is a
    RunDirError naming the files."""
    p = Path(path)
    if (p / RUN_FILE).is_file():
        check_run_dir(p)
        if not (p / BEST_VLM).is_dir():
            ck = latest_checkpoint(p)
            if ck is None:
                raise RunDirError(f"run {str(p)!r} has no checkpoint yet")
            return ck / "vlm"
        p = p / BEST_VLM
    elif (p / STATE_FILE).is_file() and (p / "vlm").is_dir():
        verify_manifest(p)
        return p / "vlm"
    bad = manifest_problems(p) if (p / MANIFEST_FILE).is_file() else []
    if bad:
        raise RunDirError(f"VLM folder {str(p)!r} is corrupt: {', '.join(bad)} (a run's "
                          f"checkpoints/iter_NNNN holds the weights of its last iteration)")
    return p
