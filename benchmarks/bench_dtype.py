"""`vlm.dtype` on the CPU: float32 (the default) against bfloat16 (torch's CPU autocast) for
`lite` with `quick`'s 16-bit prefix cache, side by side: per-sample feedback (one frame per call,
as `loop.feedback: sample` scores), the frozen image prefix of a fine-tuning batch (its first
epoch), fine-tuning epochs on the cached prefixes, and an evaluation; with how far bfloat16 moves
the per-sample losses and the accuracy.

    python benchmarks/bench_dtype.py [--n 128] [--feedback 32] [--epochs 2] [--repeats 3]
        [--out benchmarks/results/dtype.json]

Each repeat builds a fresh adapter per dtype in alternating order; medians of the wall seconds
are reported with the ratio float32 / bfloat16 (above 1: bfloat16 faster). Whether bfloat16
pays depends on the CPU: with AVX512-BF16 or AMX its matrix products run natively, without them
they are emulated and slower (the machine's CPU flags are recorded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import machine_info, main

OUT = "dtype.json"
DTYPES = ("float32", "bfloat16")
PARTS = ("feedback per frame", "prefix + 1st epoch", "epoch (cached)", "evaluate")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=128, help="fine-tuning samples (synthetic renders)")
    ap.add_argument("--feedback", type=int, default=32, help="frames scored one at a time")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs on cached prefixes")
    ap.add_argument("--repeats", type=int, default=3)


def _once(samples: list[Any], held_out: list[Any], dtype: str, args: argparse.Namespace
          ) -> tuple[dict[str, float], dict[str, Any]]:
    """Wall seconds of each part for a fresh `lite` in `dtype`, and its scores."""
    from rls3.vlm import build_vlm

    vlm = build_vlm("lite", seed=0, progress=False, cache_dtype="float16", dtype=dtype)
    t = time.perf_counter()
    losses = [vlm.feedback([s]).per_sample[0] for s in samples[:args.feedback]]
    out = {"feedback per frame": (time.perf_counter() - t) / args.feedback}
    vlm.clear_eval_cache()    # the batch's prefixes are computed below, not reused
    t = time.perf_counter()
    vlm.finetune(samples, 1)
    out["prefix + 1st epoch"] = time.perf_counter() - t
    t = time.perf_counter()
    vlm.finetune(samples, args.epochs)
    out["epoch (cached)"] = (time.perf_counter() - t) / args.epochs
    t = time.perf_counter()
    m = vlm.evaluate(held_out)
    out["evaluate"] = time.perf_counter() - t
    return out, {"feedback_losses": losses, "accuracy": m.score}


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split()
                          if "bf16" in f or f.startswith("amx"))
    return []


def run(args: argparse.Namespace) -> dict:
    from rls3.vlm.synthetic import make_samples

    samples = make_samples(args.n, seed=3, size=224)
    held_out = make_samples(args.n, seed=4, size=224)
    times: dict[str, dict[str, list[float]]] = {d: {p: [] for p in PARTS} for d in DTYPES}
    scores: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for dtype in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
            t, scores[dtype] = _once(samples, held_out, dtype, args)
            for p in PARTS:
                times[dtype][p].append(t[p])
            print(f"repeat {r}: {dtype:9s} " + ", ".join(f"{p} {t[p]:.3f} s" for p in PARTS),
                  flush=True)
    med = {d: {p: statistics.median(times[d][p]) for p in PARTS} for d in DTYPES}
    wide, half = scores["float32"]["feedback_losses"], scores["bfloat16"]["feedback_losses"]
    return {"benchmark": "dtype", "n": args.n, "feedback_frames": args.feedback,
            "epochs": args.epochs, "repeats": args.repeats, "machine": machine_info(),
            "cpu_flags": _cpu_flags(), "median_s": med, "runs": times,
            "speedup": {p: med["float32"][p] / med["bfloat16"][p] for p in PARTS},
            "feedback_loss_max_abs_diff": max(abs(a - b) for a, b in zip(wide, half,
                                                                         strict=True)),
            "accuracy": {d: scores[d]["accuracy"] for d in DTYPES}}


def table(res: dict, out: Path) -> list[str]:
    lines = [f"lite, 224-px synthetic renders, 16-bit prefix cache: {res['feedback_frames']} "
             f"frames fed back one at a time, fine-tuning on {res['n']}, evaluation of "
             f"{res['n']}; medians of {res['repeats']} interleaved repeats; CPU flags "
             f"{', '.join(res['cpu_flags']) or 'none with bf16'}.", "",
             "| part | float32 s | bfloat16 s | x |", "|---|---|---|---|"]
    for p in PARTS:
        lines.append(f"| {p} | {res['median_s']['float32'][p]:.3f} | "
                     f"{res['median_s']['bfloat16'][p]:.3f} | {res['speedup'][p]:.2f} |")
    lines += ["", f"Largest per-sample feedback loss difference: "
              f"{res['feedback_loss_max_abs_diff']:.4f}; accuracy after fine-tuning: float32 "
              f"{res['accuracy']['float32']:.3f}, bfloat16 {res['accuracy']['bfloat16']:.3f}."]
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
