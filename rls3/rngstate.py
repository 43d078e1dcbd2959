"""A checkpoint's random-generator states as data, never as a pickle: Python's, numpy's legacy
global and the loop's sample stream go into `rng.json`, torch's CPU generator and the VLM's
fine-tuning shuffle (byte tensors) into `rng.safetensors`. Reading checks every value's type and
size, so a received run directory cannot hand the resumed process anything but numbers."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from rls3.vlm.base import VLM

RNG_FILE = "rng.json"
RNG_TENSORS_FILE = "rng.safetensors"
RNG_FORMAT = 1
#: Python's Mersenne Twister state: 624 words plus the position
_PY_WORDS = 625
#: numpy's legacy global state (MT19937): 624 words
_NP_WORDS = 624


class RngStateError(ValueError):
    """A checkpoint's RNG state files are missing or malformed (the message names the file)."""


@dataclass(frozen=True)
class RngStates:
    """Every generator state a resumed run needs to continue bit-identically."""

    python: tuple[Any, ...]        # random.getstate()
    numpy: tuple[Any, ...]         # np.random.get_state(legacy=True)
    torch: Tensor                  # torch.get_rng_state(), uint8
    loop: dict[str, Any]           # the loop's numpy Generator: bit_generator.state
    vlm: Tensor | None             # VLM.rng_state() (uint8), None when the adapter has none

    @classmethod
    def capture(cls, loop_rng: np.random.Generator, vlm: VLM) -> RngStates:
        """The states now (the global generators, `loop_rng` and `vlm`'s)."""
        vlm_state = vlm.rng_state()
        if vlm_state is not None and not isinstance(vlm_state, torch.Tensor):
            raise TypeError(f"{type(vlm).__name__}.rng_state() returned a "
                            f"{type(vlm_state).__name__}; a checkpoint stores a tensor or None")
        numpy_state = cast("tuple[Any, ...]", np.random.get_state(legacy=True))  # legacy: a tuple
        loop_state = cast("dict[str, Any]", loop_rng.bit_generator.state)      # a fresh dict
        return cls(random.getstate(), numpy_state, torch.get_rng_state(), loop_state, vlm_state)

    def restore(self, loop_rng: np.random.Generator, vlm: VLM) -> None:
        """Put every state back (the VLM's through `set_rng_state`)."""
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        loop_rng.bit_generator.state = self.loop
        if self.vlm is not None:
            vlm.set_rng_state(self.vlm)

    def write(self, folder: Path) -> None:
        """Write `rng.json` and `rng.safetensors` into `folder`."""
        version, words, gauss = self.python
        name, keys, pos, has_gauss, cached = self.numpy
        doc = {"format": RNG_FORMAT, "python": [version, list(words), gauss],
               "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss),
                         float(cached)],
               "loop": self.loop}
        (folder / RNG_FILE).write_text(json.dumps(doc))
        tensors = {"torch": self.torch.contiguous()}
        if self.vlm is not None:
            tensors["vlm"] = self.vlm.contiguous()
        save_file(tensors, str(folder / RNG_TENSORS_FILE))

    @classmethod
    def read(cls, folder: Path) -> RngStates:
        """The states `write` left in `folder`; RngStateError naming the file when one is
        missing or holds anything but well-formed states."""
        doc_file, tensor_file = folder / RNG_FILE, folder / RNG_TENSORS_FILE
        try:
            doc = json.loads(doc_file.read_text())
        except (OSError, ValueError) as e:
            raise RngStateError(f"{str(doc_file)!r} cannot be read: {e}") from e
        try:
            tensors = load_file(str(tensor_file))
        except (OSError, SafetensorError) as e:
            raise RngStateError(f"{str(tensor_file)!r} cannot be read: {e}") from e
        try:
            return cls(_python_state(doc["python"]), _numpy_state(doc["numpy"]),
                       _byte_tensor(tensors, "torch", torch.get_rng_state().numel()),
                       _loop_state(doc["loop"]),
                       _byte_tensor(tensors, "vlm", None) if "vlm" in tensors else None)
        except (KeyError, TypeError, ValueError) as e:
            raise RngStateError(f"{str(folder)!r}: malformed RNG state in {RNG_FILE} / "
                                f"{RNG_TENSORS_FILE}: {e!r}") from e


def _ints(values: Any, n: int, what: str) -> list[int]:
    if not isinstance(values, list) or len(values) != n or not all(
            type(v) is int and 0 <= v < 2**32 for v in values):
        raise ValueError(f"{what} must be {n} unsigned 32-bit integers")
    return values


def _python_state(v: Any) -> tuple[Any, ...]:
    """`random.getstate()` from its JSON form [version, words, gauss_next]."""
    if not isinstance(v, list) or len(v) != 3 or type(v[0]) is not int or not (
            v[2] is None or isinstance(v[2], float)):
        raise ValueError("python: expected [version, words, gauss_next]")
    return v[0], tuple(_ints(v[1], _PY_WORDS, "python words")), v[2]


def _numpy_state(v: Any) -> tuple[Any, ...]:
    """`np.random.get_state(legacy=True)` from its JSON form."""
    if not isinstance(v, list) or len(v) != 5 or v[0] != "MT19937" or type(v[2]) is not int \
            or type(v[3]) is not int or not isinstance(v[4], float):
        raise ValueError("numpy: expected ['MT19937', keys, pos, has_gauss, cached_gaussian]")
    keys = np.asarray(_ints(v[1], _NP_WORDS, "numpy keys"), dtype=np.uint32)
    return v[0], keys, v[2], v[3], v[4]


def _loop_state(v: Any) -> dict[str, Any]:
    """A PCG64 `bit_generator.state` (checked by numpy when it is set)."""
    if not isinstance(v, dict) or v.get("bit_generator") != "PCG64":
        raise ValueError("loop: expected a PCG64 bit_generator state")
    try:
        np.random.Generator(np.random.PCG64()).bit_generator.state = v  # numpy validates it
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"loop: not a valid PCG64 state ({e})") from e
    return v


def _byte_tensor(tensors: dict[str, torch.Tensor], key: str, n: int | None) -> torch.Tensor:
    t = tensors[key]
    if t.dtype != torch.uint8 or t.dim() != 1 or (n is not None and t.numel() != n):
        raise ValueError(f"{key}: expected a 1-D uint8 tensor"
                         + (f" of {n} bytes" if n is not None else ""))
    return t
