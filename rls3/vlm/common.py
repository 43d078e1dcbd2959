"""Plumbing shared by every VLM adapter: device/dtype choice, batching, progress bars, image
preprocessing, per-term/per-complexity breakdowns, checkpoint folders and hub-or-folder names."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rls3.captions import Description
from rls3.progress import progress_bar
from rls3.safeload import NotDataError, load_torch_data

log = logging.getLogger(__name__)

#: File every adapter writes into its checkpoint folder: which adapter, which options.
META_FILE = "rls3_vlm.json"
#: Optimizer state written beside the weights when the adapter has fine-tuned.
OPTIMIZER_FILE = "optimizer.pt"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` picks CUDA when present, else the CPU; anything else is passed to `torch.device`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` picks bfloat16 on CUDA and float32 on the CPU; strings like 'bf16' are accepted."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(_DTYPES)}")
    return _DTYPES[key]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for fp32 weights when a half dtype is asked for (on CUDA, and on the CPU,
    where only an explicit `vlm.dtype` asks for it: lite ran x1.3-1.5 faster in bfloat16 on a CPU
    with AVX512-BF16, and learned less; emulated, slower, on CPUs without); float32: a no-op."""
    if device.type in ("cuda", "cpu") and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` over range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def progress(total: int, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    """A progress bar (counting samples by default; `rls3.progress`); `enabled=False` makes it
    silent, and so does a single sample (per-sample feedback scores one frame per call: a bar
    each time only filled the log, two lines per valid frame)."""
    return progress_bar(total=total, desc=desc, unit=unit, enabled=enabled and total > 1)


def resize_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Stack RGB uint8 images (H, W, 3) resized (no crop, so nothing leaves the frame) to
    `size` x `size` with bilinear filtering: an (N, size, size, 3) uint8 array."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i} must be an (H, W, 3) uint8 array, got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        if arr.shape[0] == size and arr.shape[1] == size:
            out[i] = arr
        else:
            out[i] = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return out


def to_pil(images: Sequence[np.ndarray]) -> list[Image.Image]:
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i} must be an (H, W, 3) uint8 array, got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        out.append(Image.fromarray(arr))
    return out


def breakdown(values: Sequence[float], descriptions: Sequence[Description]
              ) -> tuple[float, dict[str, float], dict[int, float]]:
    """Mean of `values` overall, per spatial term (a sample counts for every term it has) and per
    complexity (number of terms). Empty input gives NaN overall and empty dicts."""
    if len(values) != len(descriptions):
        raise ValueError(f"{len(values)} values for {len(descriptions)} descriptions")
    if not values:
        return float("nan"), {}, {}
    per_term: dict[str, list[float]] = {}
    per_cx: dict[int, list[float]] = {}
    for v, d in zip(values, descriptions, strict=True):
        for t in dict.fromkeys(d.terms):
            per_term.setdefault(t, []).append(float(v))
        per_cx.setdefault(d.complexity, []).append(float(v))
    return (float(np.mean(values)),
            {t: float(np.mean(per_term[t])) for t in sorted(per_term)},
            {c: float(np.mean(per_cx[c])) for c in sorted(per_cx)})


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. building randomly initialised layers) under `seed` without touching the
    caller's global torch RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint folder's rls3 metadata; errors name the folder and what was expected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist")
    f = folder / META_FILE
    if not f.is_file():
        raise ValueError(f"{str(folder)!r} is not an rls3 VLM checkpoint (no {META_FILE})")
    meta = json.loads(f.read_text())
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"checkpoint {str(folder)!r} holds a {meta.get('kind')!r} adapter, "
                         f"not {kind!r}")
    return meta


def looks_like_path(name: str) -> bool:
    """True when `name` is meant as a local folder rather than a hub id like 'org/model'."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or name.endswith("/"))


def resolve_source(name: str | Path) -> str:
    """A checkpoint given as a hub id or a local folder: existing folders are returned as absolute
    paths; a path-like name that does not exist raises FileNotFoundError; other names are hub
    ids."""
    s = str(name)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"checkpoint {s!r} is a file; give the folder that holds it")
        return str(p.resolve())
    if isinstance(name, Path) or looks_like_path(s):
        raise FileNotFoundError(f"checkpoint folder {s!r} does not exist")
    return s


def load_hf_config(source: str | Path, what: str, adapter: str) -> tuple[str, Any]:
    """(resolved source, transformers config) of a checkpoint given as a hub name or a local
    folder, with errors naming `what` checkpoint the `adapter` needs: FileNotFoundError for a
    missing folder, ValueError for a folder without config.json or an unreadable config, OSError
    when the hub cannot provide it."""
    from transformers import AutoConfig

    src = resolve_source(source)
    if Path(src).is_dir() and not (Path(src) / "config.json").is_file():
        raise ValueError(f"folder {str(source)!r} is not a transformers checkpoint (no "
                         f"config.json); a {what} checkpoint folder is needed")
    try:
        return src, AutoConfig.from_pretrained(src)
    except OSError as e:
        raise OSError(f"cannot load a {what} checkpoint from {str(source)!r}: it is not a "
                      f"local folder and the hub could not provide it ({e})") from e
    except ValueError as e:
        raise ValueError(f"{str(source)!r} is not a transformers checkpoint the {adapter} "
                         f"adapter can use ({e})") from e


def save_optimizer(folder: Path, optimizer: torch.optim.Optimizer | None) -> None:
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)


def load_optimizer_state(folder: Path) -> dict | None:
    """The optimizer state saved in `folder` (None when there is none), read as data only
    (`rls3.safeload`: NotDataError for anything but tensors and numbers)."""
    f = Path(folder) / OPTIMIZER_FILE
    if not f.is_file():
        return None
    state = load_torch_data(f)
    if not isinstance(state, dict):
        raise NotDataError(f"{str(f)!r} does not hold an optimizer state dict")
    return state


def scale_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every parameter group's learning rate to `factor` times its base rate (the rate it
    had before the first call, kept in the group as "base_lr" so optimizer checkpoints carry
    it)."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 0):
        raise ValueError(f"learning-rate factor must be a finite number >= 0, got {factor!r}")
    for group in optimizer.param_groups:
        base = group.setdefault("base_lr", group["lr"])
        group["lr"] = base * float(factor)


@torch.no_grad()
def weight_snapshot(params: Sequence[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Copies of the named parameters (the weights `shrink_weights` pulls toward)."""
    return {name: p.detach().clone() for name, p in params}


@torch.no_grad()
def shrink_weights(params: Sequence[tuple[str, torch.nn.Parameter]],
                   initial: dict[str, torch.Tensor], factor: float) -> None:
    """w <- w0 + factor * (w - w0) for every named parameter, w0 from `initial`."""
    if not (isinstance(factor, (int, float)) and 0.0 <= factor <= 1.0):
        raise ValueError(f"shrink factor must be in [0, 1], got {factor!r}")
    missing = [name for name, _ in params if name not in initial]
    if missing:
        raise ValueError(f"no initial weights for {len(missing)} trainable parameter(s), "
                         f"e.g. {missing[0]!r}")
    for name, p in params:
        w0 = initial[name].to(device=p.device, dtype=p.dtype)
        p.copy_(w0 + float(factor) * (p - w0))


#: bytes of alignment the CPU kernels expect of a tensor's data (torch's own allocations have it)
ALIGNMENT = 64


@torch.no_grad()
def aligned(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every parameter and buffer whose data is not `ALIGNMENT`-byte aligned
    copied into fresh memory. transformers' `from_pretrained` can leave weights at offsets of a
    memory-mapped safetensors file, and the CPU kernels then round differently in the last bits
    than for the same weights in aligned memory: a resumed run would not repeat the
    uninterrupted one exactly."""
    for m in module.modules():
        for _name, p in m._parameters.items():
            if p is not None and p.data_ptr() % ALIGNMENT:
                p.data = p.data.clone()
        for name, b in m._buffers.items():
            if b is not None and b.data_ptr() % ALIGNMENT:
                m._buffers[name] = b.clone()
    return module

