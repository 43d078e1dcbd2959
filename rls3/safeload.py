"""Reading torch files that may come from someone else (a received run directory or cache) as
data only: `torch.load(weights_only=True)` unpickles tensors, numbers and containers and refuses
any other object, and a refusal becomes one line that never advises loading the file unsafely."""

from __future__ import annotations

import zipfile
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch


class NotDataError(ValueError):
    """A file meant to hold tensors and numbers holds something else, or cannot be read."""


def load_torch_data(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The tensors/numbers/containers `torch.save` wrote to `path`; NotDataError naming it when
    the file holds any other object (never unpickled) or is not a torch file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except UnpicklingError as e:
        raise NotDataError(f"{str(path)!r} holds objects other than tensors and numbers (a "
                           f"pickle that could run code); it was not loaded") from e
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotDataError(f"{str(path)!r} is not a torch tensor file: {first}") from e
