"""VLM adapter throughput: images/s of evaluation and fine-tuning, and the adapter's evaluation
against a bare forward pass of the same model on the same tensors in the same run.

    python benchmarks/bench_vlm.py                     # lite on synthetic images, this CPU
    python benchmarks/bench_vlm.py --vlm clip-tiny --n 128
    python benchmarks/bench_vlm.py --data DIR          # a dataset folder (rls3.data) instead

"Bare forward" = the model's own image and text towers (`image_prefix`/`image_suffix`,
`text_prefix`/`text_suffix`) on pixel and token tensors prepared beforehand, batch for batch
what `evaluate` feeds them (the same `batch_size` groups and the same distinct texts per group).
`evaluate` adds what the pipeline costs on top: decoding/resizing images, tokenising, the
contrastive loss and accuracy, device transfers, progress bookkeeping. Overhead = t_eval/t_bare - 1
(target <= 15%). Runs are interleaved and the median of `--repeats` is reported, because a shared
CPU drifts; the load average before and after is recorded with the numbers, and so is the process
CPU time of each phase (less sensitive than wall time to other processes on the machine).
Also timed side by side: feedback on the n samples followed by fine-tuning on every second one
(as the loop does with eta = 1/2), with and without reusing the feedback's frozen image prefixes;
and feedback on `--episode` samples in one call (`loop.feedback: episode`) against one call per
sample (`loop.feedback: sample`), with the largest difference of their per-sample hardness.

By default every figure is measured twice, in child processes under each allocator side by side
(`--allocators tcmalloc,system`: tcmalloc, which rls3 runs under, and glibc malloc), each with its
user/system CPU seconds and minor page faults (per figure from getrusage, per child from wait4).

Writes benchmarks/results/vlm.json (or --out; the first allocator's figures at the top level, every
allocator's under `by_allocator`) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine_info, main, run_per_allocator, rusage_now

import torch  # noqa: E402  (after _common: the allocator is chosen before torch loads)

from rls3.vlm import build_vlm  # noqa: E402
from rls3.vlm.common import batches  # noqa: E402
from rls3.vlm.contrastive import ContrastiveVLM, text_table  # noqa: E402

OUT = "vlm.json"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--vlm", default="lite")
    ap.add_argument("--n", type=int, default=256, help="samples")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--source-size", type=int, default=224, help="synthetic image size (px)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", default=None, help="dataset folder instead of synthetic images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episode", type=int, default=32,
                    help="samples scored at once vs one by one (quick's T0)")
    ap.add_argument("--allocators", default="tcmalloc,system",
                    help="comma-separated; each runs in its own child process side by side")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def load_samples(args: argparse.Namespace) -> list:
    if args.data:
        from rls3.data import read_dataset
        return read_dataset(args.data)[: args.n]
    from rls3.vlm.synthetic import make_samples
    return make_samples(args.n, seed=args.seed, size=args.source_size)


def _on(x: Any, device: torch.device) -> Any:
    """A tensor, or a dict of them (the towers' inputs), on `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in x.items()}


def bare_forward(vlm: ContrastiveVLM, samples: list) -> callable:
    """Prepare the tensors evaluate() would build; return a function timing only the towers."""
    prepared = []
    for sl in batches(len(samples), vlm.batch_size):
        chunk = samples[sl]
        texts = text_table([s.description for s in chunk])
        prepared.append((_on(vlm.image_inputs([s.image for s in chunk]), vlm.device),
                         _on(vlm.text_inputs(list(texts.texts)), vlm.device)))

    @torch.no_grad()
    def run() -> None:
        vlm.module.eval()
        for x, tok in prepared:
            vlm.image_suffix(vlm.image_prefix(x))
            vlm.text_suffix(vlm.text_prefix(tok))
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()

    return run


CPU: list[float] = []  # process CPU seconds of every `timed` call, in order
USAGE: list[dict[str, float]] = []  # user/system seconds and page faults of every `timed` call


def timed(fn) -> float:
    """Wall seconds of fn(); its process CPU seconds go to CPU (steadier on a shared machine),
    its user/system CPU and page faults to USAGE."""
    r0, c0, t0 = rusage_now(), time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    CPU.append(time.process_time() - c0)
    r1 = rusage_now()
    USAGE.append({k: r1[k] - r0[k] for k in ("user_s", "sys_s", "minflt")})
    return wall


def _median_usage(rows: list[dict[str, float]]) -> dict[str, float]:
    """Median user/system seconds and page faults over repeats of one figure."""
    return {k: statistics.median(r[k] for r in rows) for k in ("user_s", "sys_s", "minflt")}


#: figure -> (key of its images/s in the result, key of its entry in `usage`)
FIGURES = {"evaluate": ("eval_img_per_s", "evaluate"), "bare forward": ("bare_img_per_s", "bare"),
           "fine-tune": ("finetune_img_per_s", "finetune"),
           "feedback batch": ("feedback_batch_img_per_s", "feedback_batch"),
           "feedback 1-by-1": ("feedback_per_sample_img_per_s", "feedback_per_sample")}


def markdown_allocators(res: dict) -> list[str]:
    """The figures of each allocator side by side (images/s; per call user / system CPU seconds
    and minor page faults), then each child process as a whole."""
    names = res["allocators"]
    by = res["by_allocator"]
    a, b = names[:2]
    lines = [f"`{res['vlm']}`, {res['n']} samples at {res['source_size']} px, each allocator in "
             f"its own child process: images/s (user s / system s / minor faults per call).", "",
             "| figure | " + " | ".join(names) + f" | {a} ÷ {b} |",
             "|---|" + "---|" * (len(names) + 1)]
    for fig, (key, ukey) in FIGURES.items():
        cells = []
        for n in names:
            u = by[n]["usage"][ukey]
            cells.append(f"{by[n][key]:.1f} ({u['user_s']:.1f} / {u['sys_s']:.1f} / "
                         f"{u['minflt'] / 1e3:.0f} k)")
        lines.append(f"| {fig} | " + " | ".join(cells)
                     + f" | ×{res['allocator_speedup'][fig]:.2f} |")
    lines.append("")
    for n in names:
        p = res["process"][n]
        lines.append(f"- whole child under {n}: wall {p['wall_s']:.1f} s, user {p['user_s']:.1f} s,"
                     f" system {p['sys_s']:.1f} s, {p['minflt'] / 1e6:.2f} M minor faults, load "
                     f"{p['loadavg_before'][0]:.1f} → {p['loadavg_after'][0]:.1f}")
    return lines


def table(res: dict, out: Path) -> list[str]:
    """Every allocator side by side (`markdown_allocators`), or one process's figures."""
    if "by_allocator" in res:
        return markdown_allocators(res)
    med = statistics.median
    f = lambda x, unit: "-" if x is None else f"{x:.1f} {unit}"  # noqa: E731
    reuse, noreuse = res["feedback_finetune_reuse_s"], res["feedback_finetune_noreuse_s"]
    rows = [("evaluate (adapter)", f(res["eval_img_per_s"], "img/s"),
             f"median {med(res['eval_s']):.2f} s of {res['repeats']}"),
            ("bare forward", f(res["bare_img_per_s"], "img/s"),
             f"median {med(res['bare_s']):.2f} s"),
            ("overhead", f"{100 * res['eval_overhead']:.1f} %", "target <= 15% (wall time)"),
            ("overhead (CPU time)", f"{100 * res['eval_overhead_cpu']:.1f} %",
             f"process CPU s: eval {med(res['eval_cpu_s']):.1f}, "
             f"bare {med(res['bare_cpu_s']):.1f}"),
            ("evaluate, warm cache", f(res.get("eval_cached_img_per_s"), "img/s"),
             "same set again: frozen prefix cached"),
            (f"fine-tune ({res['epochs']} epochs)", f(res["finetune_img_per_s"], "img/s"),
             f"{res['finetune_s']:.2f} s incl. frozen-feature caching"),
            ("feedback + fine-tune", f"×{res['feedback_finetune_speedup']:.2f}",
             f"reusing feedback prefixes: median {med(reuse):.2f} s vs {med(noreuse):.2f} s "
             f"({res['n']} fed back, every second one kept, 1 epoch)")]
    if "feedback_per_sample_s" in res:      # results from before it was measured have none
        single, batch = res["feedback_per_sample_s"], res["feedback_batch_s"]
        rows.append(("feedback per sample", f"×{res['feedback_per_sample_slowdown']:.2f}",
                     f"{res['feedback_episode']} calls of 1: median {med(single):.2f} s vs one "
                     f"call {med(batch):.2f} s; hardness differs by <= "
                     f"{res['feedback_hardness_max_abs_diff']:.1e}"))
    return [f"`{res['vlm']}` on {res['device']} ({res['torch_threads']} threads), {res['n']} "
            f"samples, batch {res['batch_size']}, load average {res['loadavg_before'][0]:.1f} → "
            f"{res['loadavg_after'][0]:.1f}.", "", "| figure | rate | note |", "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def compare_allocators(args: argparse.Namespace, allocators: list[str]) -> dict:
    """Run this benchmark once per allocator in child processes; their results side by side
    (the first allocator's figures stay at the top level for older readers)."""
    passed = [x for k, v in vars(args).items()
              if k not in ("child", "out", "allocators") and v is not None
              for x in (f"--{k.replace('_', '-')}", str(v))]
    by, process = run_per_allocator(
        lambda name, out: [sys.executable, __file__, "--child", "--out", str(out), *passed],
        allocators)
    first = dict(by[allocators[0]])
    first.update({"by_allocator": by, "process": process, "allocators": allocators,
                  "command": command_line()})
    a, b = allocators[:2]
    first["allocator_speedup"] = {
        fig: by[a][key] / by[b][key] for fig, (key, _) in FIGURES.items()}
    return first


def run(args: argparse.Namespace) -> dict:
    allocators = [x for x in args.allocators.split(",") if x]
    if not args.child and len(allocators) > 1:
        return compare_allocators(args, allocators)
    from rls3 import runtime

    here = "tcmalloc" if runtime.active_allocator() == "tcmalloc" else "system"
    if not args.child and allocators != [here]:
        raise SystemExit(f"--allocators {args.allocators}: this process runs under {here}; give "
                         f"two allocators (side by side) or set RLS3_ALLOCATOR")
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    vlm = build_vlm(args.vlm, batch_size=args.batch_size, device=args.device, progress=False,
                    seed=args.seed)
    if not isinstance(vlm, ContrastiveVLM):
        raise SystemExit(f"{args.vlm!r} is not a contrastive adapter; this benchmark times "
                         "lite/clip")
    samples = load_samples(args)
    # the adapter caches the frozen-prefix outputs of evaluated samples (the loop re-evaluates
    # fixed sets); the adapter-vs-bare comparison times the uncached pipeline, and the warm-cache
    # rate of a re-evaluated set is reported on its own
    cache_samples = getattr(vlm, "eval_cache_samples", 0)
    vlm.eval_cache_samples = 0
    bare = bare_forward(vlm, samples)
    vlm.evaluate(samples[: args.batch_size])      # warm-up: kernels for the shapes
    bare()

    t_eval, t_bare, c_eval, c_bare = [], [], [], []
    u_eval, u_bare = [], []
    for _ in range(args.repeats):                 # interleaved, so drift hits both alike
        t_eval.append(timed(lambda: vlm.evaluate(samples)))
        c_eval.append(CPU[-1])
        u_eval.append(USAGE[-1])
        t_bare.append(timed(bare))
        c_bare.append(CPU[-1])
        u_bare.append(USAGE[-1])
    t_cached = None
    if cache_samples:
        vlm.eval_cache_samples = cache_samples
        vlm.evaluate(samples)                     # fills the cache
        t_cached = statistics.median(timed(lambda: vlm.evaluate(samples))
                                     for _ in range(args.repeats))
        vlm.clear_eval_cache()
        vlm.eval_cache_samples = 0
    t_ft = timed(lambda: vlm.finetune(samples, args.epochs))
    c_ft = CPU[-1]
    u_ft = USAGE[-1]
    # the loop fine-tunes a subset (eta = 1/2) of the samples it has just fed back: feedback +
    # the first fine-tuning call (frozen features + 1 epoch), reusing the feedback's frozen image
    # prefixes or not (feedback_cache_samples = 0), interleaved
    # Each timed call gets fresh copies of the samples: the adapter recognises a sample it has
    # fine-tuned before (by identity) and would reuse its prefix whatever the feedback kept.
    kept = samples[::2]
    keep_cap = vlm.feedback_cache_samples
    t_reuse, t_noreuse = [], []
    vlm.feedback(samples)                         # warm-up: kernels for the kept batch's shapes
    vlm.finetune(kept, 1)
    for _ in range(args.repeats):
        for cap, acc in ((keep_cap, t_reuse), (0, t_noreuse)):
            vlm.feedback_cache_samples = cap
            fresh = [copy.copy(s) for s in samples]

            def feedback_then_finetune(fresh: list = fresh) -> None:   # this iteration's copies
                vlm.feedback(fresh)
                vlm.finetune(fresh[::2], 1)
            acc.append(timed(feedback_then_finetune))
    vlm.feedback_cache_samples = keep_cap
    # per-episode feedback (one call) vs per-sample feedback (one call per valid frame)
    episode = samples[: args.episode]
    t_batch, t_single, hard_diff = [], [], 0.0
    u_batch, u_single = [], []
    for _ in range(args.repeats):
        t_batch.append(timed(lambda: vlm.feedback(episode)))
        u_batch.append(USAGE[-1])
        batched = vlm.feedback(episode).hardness
        t_single.append(timed(lambda: [vlm.feedback([s]) for s in episode]))
        u_single.append(USAGE[-1])
        single = [vlm.feedback([s]).hardness[0] for s in episode]
        hard_diff = max(hard_diff, max(abs(a - b) for a, b in zip(batched, single, strict=True)))
    load_after = os.getloadavg()

    n = len(samples)
    e, b = statistics.median(t_eval), statistics.median(t_bare)
    ce, cb = statistics.median(c_eval), statistics.median(c_bare)
    result = {
        "vlm": args.vlm, "options": getattr(vlm, "options", {}), "n": n,
        "batch_size": args.batch_size, "epochs": args.epochs, "repeats": args.repeats,
        "source_size": args.source_size, "data": args.data or "synthetic",
        "device": str(vlm.device), "dtype": str(vlm.dtype), "torch_threads":
            torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "eval_s": t_eval, "bare_s": t_bare, "finetune_s": t_ft,
        "eval_img_per_s": n / e, "bare_img_per_s": n / b,
        "finetune_img_per_s": n * args.epochs / t_ft, "finetune_cpu_s": c_ft,
        "eval_overhead": e / b - 1.0,
        "eval_cpu_s": c_eval, "bare_cpu_s": c_bare, "eval_overhead_cpu": ce / cb - 1.0,
        "eval_img_per_cpu_s": n / ce, "bare_img_per_cpu_s": n / cb,
        "feedback_finetune_reuse_s": t_reuse, "feedback_finetune_noreuse_s": t_noreuse,
        "feedback_finetune_speedup": statistics.median(t_noreuse) / statistics.median(t_reuse),
        "feedback_episode": len(episode), "feedback_batch_s": t_batch,
        "feedback_per_sample_s": t_single,
        "feedback_per_sample_slowdown": statistics.median(t_single) / statistics.median(t_batch),
        "feedback_hardness_max_abs_diff": hard_diff,
        "feedback_batch_img_per_s": len(episode) / statistics.median(t_batch),
        "feedback_per_sample_img_per_s": len(episode) / statistics.median(t_single),
        "eval_cached_s": t_cached,
        "eval_cached_img_per_s": n / t_cached if t_cached else None,
        "trainable_params": sum(p.numel() for _, p in vlm.trainable_parameters()),
        "total_params": sum(p.numel() for p in vlm.module.parameters()),
        # median user/system CPU seconds and minor page faults of one timed call per figure
        "usage": {"evaluate": _median_usage(u_eval), "bare": _median_usage(u_bare),
                  "finetune": u_ft, "feedback_batch": _median_usage(u_batch),
                  "feedback_per_sample": _median_usage(u_single)},
        "machine": machine_info(), "command": command_line(),
    }
    return result


if __name__ == "__main__":
    sys.exit(main(__name__))
