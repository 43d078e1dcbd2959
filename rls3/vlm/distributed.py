"""Data-parallel VLM fine-tuning, feedback and evaluation over the processes of a multi-process
launch (`torchrun` / `accelerate launch`), through Hugging Face `accelerate`.

What is split and how (the contrastive adapters, `rls3.vlm.contrastive`):

- **fine-tuning**: every process draws the same shuffled mini-batch (same seed); each runs the
  trainable suffixes on its share of the mini-batch's images and distinct texts, the embeddings
  are all-gathered, and every process computes the loss of the *whole* mini-batch (the in-batch
  contrastive loss does not decompose over processes, so it is not computed per shard). The
  local embeddings keep their gradient, scaled by the world size W, so that after the gradients
  are averaged across processes (one all-reduce per step, what DDP does) each weight's gradient
  equals the single-process one; parameters used by the loss itself (the logit scale) get the full
  gradient on every process, which averaging leaves unchanged. Equal up to float rounding.
- **feedback / evaluation**: the groups of `batch_size` consecutive samples (the loss's groups)
  are dealt out to the processes round-robin and the per-sample results gathered, so every
  process returns exactly what one process would (the same groups, computed the same way).

`DataParallel` wraps `accelerate.Accelerator`; `launched_world_size` (in `rls3.runtime`) reads the
launcher's environment; `RemoteVLM` / `serve` let only the main process run the loop (scene,
agent, run directory) while the others execute its VLM calls in the same order.

A process that stalls without dying (stopped, swapping, stuck) would keep the others waiting in
a collective: the main process gives up after ``RLS3_COLLECTIVE_TIMEOUT`` seconds (default 1800,
torch's own for gloo) with a `CollectiveTimeoutError`, and the launcher ends the rest. The other
processes wait far longer (`SERVE_TIMEOUT_S`): between its VLM calls the main process runs the
scene and the agent, which may take hours.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import torch

from rls3.runtime import launched_world_size

log = logging.getLogger(__name__)

#: VLM methods the main process forwards to the other processes (they run collectives inside,
#: or change state every replica must share).
COLLECTIVE_METHODS = ("feedback", "finetune", "evaluate", "load", "set_rng_state",
                      "clear_eval_cache", "set_lr_scale", "remember_initial", "shrink",
                      "restore_initial")


TIMEOUT_VAR = "RLS3_COLLECTIVE_TIMEOUT"
#: seconds the main process waits in a collective for the other processes, unless TIMEOUT_VAR says
DEFAULT_TIMEOUT_S = 1800.0
#: seconds the other processes wait for the main process's next call (it collects meanwhile)
SERVE_TIMEOUT_S = 7 * 24 * 3600.0


class CollectiveTimeoutError(RuntimeError):
    """A collective got no answer from the other processes within the timeout."""


def collective_timeout(environ: dict[str, str] | None = None) -> float:
    """The main process's collective timeout in seconds (`TIMEOUT_VAR`, default
    `DEFAULT_TIMEOUT_S`); ValueError naming the variable for anything but a positive number."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= SERVE_TIMEOUT_S:
        raise ValueError(f"{TIMEOUT_VAR}={raw!r} must be a number of seconds in (0, "
                         f"{SERVE_TIMEOUT_S:.0f}]")
    return value


def check_processes(expected: int | None, world_size: int) -> None:
    """ValueError when a configured process count (`vlm.processes`) disagrees with the number of
    processes actually launched."""
    if expected is not None and expected != world_size:
        raise ValueError(
            f"vlm.processes is {expected} but {world_size} process(es) were launched "
            f"(WORLD_SIZE={world_size}); launch with `torchrun --nproc_per_node {expected}` / "
            f"`accelerate launch --num_processes {expected}`, or set vlm.processes={world_size} "
            f"(or null to accept whatever is launched)")


@dataclass(frozen=True)
class Shards:
    """How W processes split n rows: process q owns rows[starts[q]:starts[q] + sizes[q]]."""

    sizes: tuple[int, ...]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, n: int, world: int) -> Shards:
        """Contiguous near-equal shares (the first n % W processes one row more)."""
        base, extra = divmod(n, world)
        sizes = tuple(base + (q < extra) for q in range(world))
        starts = tuple(sum(sizes[:q]) for q in range(world))
        return cls(sizes, starts)

    @property
    def widest(self) -> int:
        return max(self.sizes)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` in value; its gradient multiplied by `factor` on the way back."""
    return x.detach() + factor * (x - x.detach())


def deal(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Process `rank`'s round-robin share of `items`: items rank, rank + world, ..."""
    return list(items[rank::world])


def undeal(parts: Sequence[Sequence[Any]], n: int) -> list[Any]:
    """The n per-item results of `deal`'s shares (`parts[q]`: process q's, in its order) back in
    item order."""
    world = len(parts)
    return [parts[i % world][i // world] for i in range(n)]


class DataParallel:
    """The process group of a multi-process launch, through `accelerate.Accelerator` (gloo on
    CPUs, NCCL on GPUs; bf16 mixed precision on GPUs)."""

    def __init__(self, mixed_precision: str | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cuda = torch.cuda.is_available()
        if mixed_precision is None:
            mixed_precision = "bf16" if cuda else "no"
        # each process sets its own wait limit: the main one `collective_timeout()`, the others
        # long enough to wait out the main process's scene collection between two VLM calls
        main = int(os.environ.get("RANK", "0")) == 0
        self.timeout_s = collective_timeout() if main else SERVE_TIMEOUT_S
        handler = InitProcessGroupKwargs(timeout=timedelta(seconds=self.timeout_s))
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed_precision,
                                       kwargs_handlers=[handler])
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        log.info("data-parallel VLM: process %d of %d on %s (%s)", self.rank, self.world_size,
                 self.device, self.accelerator.distributed_type)

    def gather_rows(self, local: torch.Tensor, shards: Shards) -> list[torch.Tensor]:
        """All processes' rows (each padded to `shards.widest` in `local`), detached, one tensor
        per process with its padding dropped."""
        from accelerate.utils import gather

        if local.shape[0] != shards.widest:
            raise ValueError(f"local rows {local.shape[0]} != widest shard {shards.widest}")
        with self._collective("gather"):
            full = gather(local.detach().contiguous())
        return [full[q * shards.widest: q * shards.widest + shards.sizes[q]]
                for q in range(self.world_size)]

    def mean_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of `params` over the processes in one flat all-reduce.
        Parameters without a gradient keep none (the optimizer skips them, as with one process);
        every process runs the same modules, so all have the same set."""
        from accelerate.utils import reduce

        live = [p for p in params if p.grad is not None]
        if not live:
            return
        with self._collective("gradient all-reduce"):
            flat = reduce(torch.cat([cast(torch.Tensor, p.grad).reshape(-1) for p in live]),
                          reduction="mean")
        offset = 0
        for p in live:
            n = p.numel()
            cast(torch.Tensor, p.grad).copy_(flat[offset: offset + n].view_as(p))
            offset += n

    def deal(self, items: Sequence[Any]) -> list[Any]:
        """This process's share of `items`, dealt round-robin (`deal`)."""
        return deal(items, self.rank, self.world_size)

    def undeal(self, mine: Sequence[Any], n: int) -> list[Any]:
        """The results of every process's `deal` share of n items, gathered on every process
        and put back in item order."""
        return undeal(self.gather_objects(list(mine)), n)

    def gather_objects(self, obj: Any) -> list[Any]:
        """`obj` of every process, in rank order (on every process)."""
        out: list[Any] = [None] * self.world_size
        with self._collective("all-gather"):
            torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """The main process's `obj`, on every process."""
        from accelerate.utils import broadcast_object_list

        box = [obj]
        with self._collective("broadcast"):
            broadcast_object_list(box, from_process=0)
        return box[0]

    def close(self) -> None:
        """Destroy this process's end of the group before the interpreter exits: left to static
        destructors, gloo's threads can abort a process that finished its work (SIGABRT,
        "terminate called without an active exception") and the launcher then ends the others."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.accelerator.end_training()

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """A collective's timeout as a CollectiveTimeoutError naming it and the limit."""
        try:
            yield
        except RuntimeError as e:
            if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
                raise
            raise CollectiveTimeoutError(
                f"data-parallel process {self.rank} of {self.world_size}: the {what} got no "
                f"answer from the other processes within {self.timeout_s:g} s (one of them "
                f"stalled, was stopped or is stuck); {TIMEOUT_VAR} sets this limit") from e


def init_data_parallel(mixed_precision: str | None = None) -> DataParallel | None:
    """A `DataParallel` when launched with several processes, else None (the single-process
    path, unchanged)."""
    if launched_world_size() <= 1:
        return None
    return DataParallel(mixed_precision)


# ------------------------------------------------------------------------ main process <-> others
class SampleCodec:
    """Sends samples to the other processes once: a sample already sent travels as its number, so
    the receivers hold the same objects across calls (their frozen-prefix caches stay valid).
    The main process decides which numbers to forget (least recently used beyond `capacity`)."""

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[int, tuple[int, Any]] = OrderedDict()   # id(sample) -> (uid, s)
        self._next = 0
        self._dropped: list[int] = []
        self._held: dict[int, Any] = {}                                  # receiver: uid -> s

    def encode(self, samples: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """Wire form of `samples` (uid, or (uid, sample) the first time) and uids to forget."""
        out: list[Any] = []
        for s in samples:
            hit = self._ids.get(id(s))
            if hit is not None and hit[1] is s:
                self._ids.move_to_end(id(s))
                out.append(hit[0])
                continue
            uid, self._next = self._next, self._next + 1
            self._ids[id(s)] = (uid, s)
            out.append((uid, s))
        while len(self._ids) > self.capacity:
            self._dropped.append(self._ids.popitem(last=False)[1][0])
        dropped, self._dropped = self._dropped, []
        return out, dropped

    def decode(self, wire: list[Any], dropped: list[int]) -> list[Any]:
        """The receiver's samples for `wire`."""
        out = []
        for item in wire:
            if isinstance(item, tuple):
                uid, s = item
                self._held[uid] = s
                out.append(s)
            else:
                out.append(self._held[item])
        for uid in dropped:
            self._held.pop(uid, None)
        return out


def _is_samples(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and bool(x) and hasattr(x[0], "description")


class RemoteVLM:
    """The main process's VLM in a multi-process run: each collective call (`COLLECTIVE_METHODS`)
    is first broadcast to the other processes, which run it on their own replica (`serve`), then
    run here; everything else (save, rng_state, last_group_losses...) is local."""

    def __init__(self, vlm: Any, group: DataParallel) -> None:
        self._vlm = vlm
        self._group = group
        self._codec = SampleCodec()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._vlm, name)
        if name in COLLECTIVE_METHODS:
            def call(*args: Any, **kw: Any) -> Any:
                wire: list[tuple[Any, ...]] = []
                for a in args:
                    if _is_samples(a):
                        enc, dropped = self._codec.encode(a)
                        wire.append(("samples", enc, dropped))
                    else:
                        wire.append(("value", a))
                self._group.broadcast(("call", name, wire, kw))
                return attr(*args, **kw)
            return call
        return attr


def build_remote(group: DataParallel, build: Callable[..., Any], *args: Any) -> RemoteVLM:
    """Build the VLM on every process (`build(*args)`, run by the others inside `serve`) and
    return the main process's `RemoteVLM`."""
    group.broadcast(("build", list(args), {}))
    return RemoteVLM(build(*args), group)


def stop_serving(group: DataParallel) -> None:
    """Release the processes waiting in `serve`."""
    group.broadcast(("stop", [], {}))


def serve(group: DataParallel, build: Callable[..., Any]) -> int:
    """Run the main process's VLM calls on this (non-main) process until it says stop; returns
    the number of calls served."""
    codec = SampleCodec()
    vlm: Any = None
    calls = 0
    while True:
        msg = group.broadcast(None)
        kind = msg[0]
        if kind == "stop":
            log.info("process %d: served %d VLM calls", group.rank, calls)
            return calls
        if kind == "build":
            vlm = build(*msg[1])
            continue
        if kind != "call" or vlm is None:
            raise RuntimeError(f"process {group.rank}: unexpected message {kind!r} "
                               f"(VLM built: {vlm is not None})")
        _, name, wire, kw = msg
        args = [codec.decode(a[1], a[2]) if a[0] == "samples" else a[1] for a in wire]
        getattr(vlm, name)(*args, **kw)
        calls += 1
