"""The shell every VLM adapter shares: its settings, the seeded fine-tuning generator and its
state, the data-parallel group, the optimizer, the pulls toward the initial weights, and the
checkpoint skeleton around the adapter's own weight files. Adapters fill in the model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from rls3.optim import keeping_foreach
from rls3.vlm.common import (META_FILE, check_positive, load_optimizer_state, read_meta,
                             resolve_device, resolve_dtype, save_optimizer, scale_learning_rate,
                             seeded_generator, shrink_weights, weight_snapshot, write_meta)

if TYPE_CHECKING:
    from rls3.vlm.distributed import DataParallel


class AdapterShell:
    """What is not the model in a `VLM` adapter. A subclass provides `module` (the `nn.Module`
    holding every weight), `_make_optimizer`, the checkpoint hooks `_save_weights` /
    `_load_weights` / `_checkpoint_options`, and `feedback` / `evaluate` / `finetune`."""

    name: str
    #: the adapter kind written into checkpoints (`rls3.vlm.ADAPTERS` key)
    kind: ClassVar[str]
    #: the checkpoint format `save` writes
    checkpoint_format: ClassVar[int] = 1
    #: whether `load` also takes a folder without rls3 metadata (any checkpoint of the kind)
    plain_folders: ClassVar[bool] = True
    module: nn.Module

    def __init__(self, name: str, *, device: str | torch.device | None, dtype:
                 str | torch.dtype | None, batch_size: int, lr: float, weight_decay: float,
                 grad_clip: float | None, seed: int, progress: bool) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_positive("lr", lr)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.name = name
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.grad_clip = grad_clip
        self.seed = int(seed)
        self.progress = progress
        self._generator = seeded_generator(seed)
        self._optimizer: torch.optim.Optimizer | None = None
        self._initial: dict[str, torch.Tensor] | None = None    # w0 of `shrink`
        #: per optimizer step of the last `finetune` call given `groups`: group -> mean loss of
        #: that group's samples in the step's mini-batch (groups absent from it are left out)
        self.last_group_losses: list[dict[int, float]] = []
        #: the process group of a multi-process launch (`distribute`); None: one process
        self.parallel: DataParallel | None = None

    # ----------------------------------------------------------------- processes and RNG
    def distribute(self, group: DataParallel | None) -> None:
        """Split fine-tuning, feedback and evaluation over `group`'s processes (every process
        must then make the same calls with the same samples); None: one process again."""
        self.parallel = group if group is not None and group.world_size > 1 else None

    def rng_state(self) -> torch.Tensor:
        """State of the fine-tuning shuffle generator (for exact resumption)."""
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    # ----------------------------------------------------------------- trainable weights
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; kept across `finetune` calls and checkpoints."""
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        return self._optimizer

    def set_lr_scale(self, factor: float) -> None:
        """Run the next fine-tuning steps at `factor` times each parameter group's base learning
        rate (`loop.finetune.lr_schedule`)."""
        scale_learning_rate(self.optimizer, factor)

    def remember_initial(self) -> None:
        """Keep a copy of the trainable weights as they are now: the w0 `shrink` pulls toward."""
        self._initial = weight_snapshot(self.trainable_parameters())

    def shrink(self, factor: float) -> None:
        """w <- w0 + factor * (w - w0) on the trainable weights (`loop.finetune.shrink`)."""
        if self._initial is None:
            raise RuntimeError(f"{self.name}: shrink needs remember_initial() first")
        shrink_weights(self.trainable_parameters(), self._initial, factor)

    def restore_initial(self) -> None:
        """The trainable weights back to `remember_initial`'s copy and a fresh optimizer: the
        adapter as it was built, its frozen-prefix caches kept (offline re-training)."""
        if self._initial is None:
            raise RuntimeError(f"{self.name}: restore_initial needs remember_initial() first")
        shrink_weights(self.trainable_parameters(), self._initial, 0.0)
        self._optimizer = None

    def clear_eval_cache(self) -> None:
        """Forget what is cached per sample (nothing here; adapters with caches override)."""

    # ----------------------------------------------------------------- checkpoints
    def save(self, path: str | Path) -> None:
        """Write the weights (`_save_weights`), the rls3 metadata (kind, name, format and
        `_checkpoint_options`) and the optimizer state into folder `path`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(folder)
        write_meta(folder, {"kind": self.kind, "name": self.name,
                            "format": self.checkpoint_format, **self._checkpoint_options()})
        save_optimizer(folder, self._optimizer)

    def load(self, path: str | Path) -> None:
        """Replace the weights by those `save` wrote into `path` (or, where `plain_folders`,
        any checkpoint folder of the kind); restores the optimizer state when the folder has
        one. The w0 of `remember_initial` is kept (a resumed run pulls toward the run's)."""
        folder = Path(path)
        meta = None
        if not self.plain_folders or (folder / META_FILE).is_file():
            meta = read_meta(folder, self.kind)
        self._load_weights(folder, meta)
        self._forget_weights()
        self._restore_optimizer(folder)

    def _save_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def _checkpoint_options(self) -> dict[str, Any]:
        """What the metadata holds besides kind, name and format."""
        return {}

    def _load_weights(self, folder: Path, meta: dict[str, Any] | None) -> None:
        """Put the weights of checkpoint `folder` (its metadata `meta`, None for a plain
        folder) into this adapter."""
        raise NotImplementedError

    def _forget_weights(self) -> None:
        """Drop what was built on the replaced weights: the optimizer (and caches)."""
        self._optimizer = None

    def _restore_optimizer(self, folder: Path) -> None:
        state = load_optimizer_state(folder)
        if state is not None:
            with keeping_foreach(self.optimizer):
                self.optimizer.load_state_dict(state)

    def _resume_optimizer_from(self, weights: str | Path | None) -> None:
        """After building from `weights`: restore the optimizer state a checkpoint folder holds
        (hub names and state-dict files hold none)."""
        if weights is not None and Path(str(weights)).expanduser().is_dir():
            self._restore_optimizer(Path(str(weights)).expanduser())
