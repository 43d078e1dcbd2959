"""Multi-tensor (`foreach`) Adam against torch's per-parameter CPU loop, side by side: `lite`
fine-tuning epochs on cached frozen prefixes and SAC pre-training steps, same seeds, interleaved,
with the check that both give the same losses and weights bit for bit.

    python benchmarks/bench_optim.py [--n 128] [--epochs 2] [--sac-steps 3000] [--repeats 3]
        [--out benchmarks/results/optim.json]

Each repeat runs every (part, implementation) once in alternating order; the median wall and
process-CPU seconds per implementation are reported with the ratio per-parameter / foreach.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import machine_info, main

OUT = "optim.json"
IMPLS = ("per-parameter", "foreach")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=128, help="fine-tuning samples (synthetic renders)")
    ap.add_argument("--epochs", type=int, default=2, help="timed fine-tuning epochs")
    ap.add_argument("--sac-steps", type=int, default=3000, help="SAC pre-training env steps")
    ap.add_argument("--repeats", type=int, default=3)


def _lite_epochs(samples: list[Any], epochs: int, foreach: bool) -> tuple[float, float, Any]:
    """Wall and CPU seconds of `epochs` fine-tuning epochs of a fresh `lite` (its prefixes
    cached by one untimed epoch first), and (losses, weights)."""
    from rls3.vlm import build_vlm

    vlm = build_vlm("lite", seed=0, progress=False, cache_dtype="float16")
    for g in vlm.optimizer.param_groups:
        g["foreach"] = foreach
    vlm.finetune(samples, 1)
    t, c = time.perf_counter(), time.process_time()
    losses = vlm.finetune(samples, epochs)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    weights = {n: p.detach().clone() for n, p in vlm.trainable_parameters()}
    return wall, cpu, (losses, weights)


def _sac_pretraining(steps: int, foreach: bool) -> tuple[float, float, Any]:
    """Wall and CPU seconds of `quick`'s SAC pre-training for `steps` env steps (rendering off,
    into a temporary cache), and its policy weights."""
    import rls3.agents as agents
    from rls3.backends import make_backend
    from rls3.config import preset
    from rls3.env import Rls3Env

    cfg = preset("quick").override({"agent.pretrain_steps": steps})
    backend = make_backend(cfg.backend, "train")
    env = Rls3Env(backend, replace(cfg.env_config, render=False))
    saved = agents.ADAM_KWARGS
    agents.ADAM_KWARGS = {"foreach": foreach}
    try:
        with tempfile.TemporaryDirectory(prefix="rls3-optim-") as tmp:
            a = replace(cfg.agent, pretrained_dir=tmp, pretrain_background=False)
            t, c = time.perf_counter(), time.process_time()
            sac = agents.pretrained_sac(env, a, 0, cfg.backend.name)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        agents.ADAM_KWARGS = saved
        env.close()
    return wall, cpu, {k: v.clone() for k, v in sac.model.policy.state_dict().items()}


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, tuple):
        return a[0] == b[0] and _same(a[1], b[1])
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def run(args: argparse.Namespace) -> dict:
    from rls3.vlm.synthetic import make_samples

    samples = make_samples(args.n, seed=3, size=224)
    parts = {"lite fine-tuning": lambda fe: _lite_epochs(samples, args.epochs, fe),
             "SAC pre-training": lambda fe: _sac_pretraining(args.sac_steps, fe)}
    times: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {i: {"wall_s": [], "cpu_s": []} for i in IMPLS} for p in parts}
    identical = {p: True for p in parts}
    for r in range(args.repeats):
        for part, fn in parts.items():
            outs = {}
            for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
                wall, cpu, outs[impl] = fn(impl == "foreach")
                times[part][impl]["wall_s"].append(wall)
                times[part][impl]["cpu_s"].append(cpu)
                print(f"repeat {r}: {part:17s} {impl:13s} {wall:6.2f} s wall, {cpu:6.2f} s CPU",
                      flush=True)
            identical[part] &= _same(outs["per-parameter"], outs["foreach"])
    rows = {}
    for part in parts:
        med = {i: {k: statistics.median(v) for k, v in times[part][i].items()} for i in IMPLS}
        rows[part] = {"median": med, "runs": times[part], "identical": identical[part],
                      "speedup_wall": med["per-parameter"]["wall_s"] / med["foreach"]["wall_s"],
                      "speedup_cpu": med["per-parameter"]["cpu_s"] / med["foreach"]["cpu_s"]}
    return {"benchmark": "optim", "n": args.n, "epochs": args.epochs,
            "sac_steps": args.sac_steps, "repeats": args.repeats, "machine": machine_info(),
            "parts": rows}


def table(res: dict, out: Path) -> list[str]:
    lines = [f"lite: {res['epochs']} epochs x {res['n']} samples (cached prefixes); SAC: "
             f"{res['sac_steps']} pre-training steps; medians of {res['repeats']} interleaved "
             "repeats.", "", "| part | per-parameter wall s | foreach wall s | x wall | x CPU | "
             "same bits |", "|---|---|---|---|---|---|"]
    for part, r in res["parts"].items():
        m = r["median"]
        lines.append(f"| {part} | {m['per-parameter']['wall_s']:.2f} | "
                     f"{m['foreach']['wall_s']:.2f} | {r['speedup_wall']:.2f} | "
                     f"{r['speedup_cpu']:.2f} | {'yes' if r['identical'] else 'NO'} |")
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
