"""Env steps/s through the Unity bridge against the embedded backend alone, in the same run.

Usage: python benchmarks/bench_bridge.py [--size 224] [--steps 120] [--blocks 3]
           [--scenes kitchen,bedroom] [--action-scales 0.5,0.25,1.0] [--out benchmarks/results/bridge.json]

Both sides run `Rls3Env` on the same scenes, seeds and actions. The bridge side is `UnityBackend` on
the real mlagents `UnityEnvironment`, talking over gRPC to the test peer launched as a stand-in
player process that embeds the same `SimBackend`, so the difference is what the bridge adds:
gRPC + mlagents' pipes, PNG encode/decode, JSON metadata. Blocks alternate (embedded, bridge,
embedded, ...) so a busy machine disturbs both sides alike; the overhead is computed from the
summed times, for several action scales (the share of valid, rendered steps grows as the scale
shrinks, as it does while SAC learns). Target: overhead <= 25% with 224x224 images.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import main, names, runtime

OUT = "bridge.json"
TARGET = 0.25


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=120, help="env steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per side (alternating)")
    ap.add_argument("--scenes", default="kitchen,bedroom")
    ap.add_argument("--t0", type=int, default=40, help="valid frames per episode")
    ap.add_argument("--action-scales", default="0.5,0.25,1.0",
                    help="actions ~ U(-1, 1) * scale; smaller scales give more valid (rendered) "
                         "steps, as a trained policy does. The first one is the headline.")
    ap.add_argument("--no-shadows", action="store_true")
    ap.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    return measure(size=args.size, steps=args.steps, blocks=args.blocks,
                   scenes=names(args.scenes), t0=args.t0,
                   scales=[float(x) for x in names(args.action_scales)],
                   shadows=not args.no_shadows, seed=args.seed)


def table(res: dict, out: Path) -> list[str]:
    lines = [f"{res['image_size']} px, scenes {', '.join(res['scenes'])}, {res['blocks']} "
             f"alternating blocks of {res['steps_per_block']} steps per side; target overhead "
             f"<= {100 * res['target_overhead']:.0f}%.", "",
             "| action scale | valid share | embedded steps/s | bridge steps/s | overhead | "
             "added ms/step |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['action_scale']} | {r['valid_share']:.2f} | "
                     f"{r['embedded_steps_per_s']:.2f} | {r['bridge_steps_per_s']:.2f} | "
                     f"{100 * r['overhead']:+.1f}% | {r['added_ms_per_step']:.1f} |")
    return lines + ["", f"No-op round trip {res['noop_round_trip_ms']:.2f} ms; connecting took "
                        f"{res['connect_s']:.1f} s."]


def run_block(env: Any, seed: int, steps: int, scale: float) -> tuple[float, int]:
    """Seconds for `steps` env steps (resets included) and the number of valid (rendered) steps."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    valid = 0
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, info = env.step((rng.uniform(-1, 1, 3) * scale).astype(np.float32))
        valid += int(info["valid"])
        if term or trunc:
            env.reset()
    return time.perf_counter() - t, valid


def measure(size: int = 224, steps: int = 120, blocks: int = 3,
            scenes: list[str] | None = None, t0: int = 40, scales: list[float] | None = None,
            shadows: bool = True, seed: int = 0) -> dict:
    """Embedded vs bridge env steps/s, alternating blocks; returns the result dict."""
    from rls3.bridges import connect_test_peer
    from rls3.env import EnvConfig, Rls3Env
    from rls3.sim import SimBackend

    scenes = scenes or ["kitchen", "bedroom"]
    scales = scales or [0.5, 0.25, 1.0]
    config = EnvConfig(t0=t0, image_size=size)

    embedded = SimBackend(scenes, shadows=shadows)
    t = time.perf_counter()
    bridge = connect_test_peer(scenes, image_size=size, shadows=shadows, timeout_s=120)
    connect_s = time.perf_counter() - t
    envs = {"embedded": Rls3Env(embedded, config), "bridge": Rls3Env(bridge, config)}
    for backend in (embedded, bridge):  # warm-up: build every scene, bind meshes, first frames
        for i in range(len(scenes)):
            backend.load_scene(i, seed=seed)
            backend.render(size, size)

    load0 = os.getloadavg()
    rows = []
    for scale in scales:
        times: dict[str, list[float]] = {"embedded": [], "bridge": []}
        valid: dict[str, list[int]] = {"embedded": [], "bridge": []}
        for block in range(blocks):
            for side in ("embedded", "bridge") if block % 2 == 0 else ("bridge", "embedded"):
                dt, v = run_block(envs[side], seed + block, steps, scale)
                times[side].append(dt)
                valid[side].append(v)
                print(f"scale {scale:4.2f} block {block} {side:8s} {steps / dt:7.2f} steps/s "
                      f"({v} valid)", flush=True)
        if valid["embedded"] != valid["bridge"]:
            raise RuntimeError(f"the two sides diverged: valid steps {valid}")
        total = {k: sum(v) for k, v in times.items()}
        n = steps * blocks
        per_block = [b / e - 1.0 for b, e in zip(times["bridge"], times["embedded"], strict=True)]
        rows.append({"action_scale": scale, "valid_share": sum(valid["bridge"]) / n,
                     "embedded_steps_per_s": n / total["embedded"],
                     "bridge_steps_per_s": n / total["bridge"],
                     "embedded_samples_per_s": sum(valid["embedded"]) / total["embedded"],
                     "bridge_samples_per_s": sum(valid["bridge"]) / total["bridge"],
                     "overhead": total["bridge"] / total["embedded"] - 1.0,
                     "overhead_per_block": per_block,
                     "added_ms_per_step": (total["bridge"] - total["embedded"]) / n * 1e3})
    load1 = os.getloadavg()

    # pure round trip of one command (no physics, no rendering): the bridge's fixed cost
    n = 100
    t = time.perf_counter()
    for _ in range(n):
        bridge.ping()
    noop_ms = (time.perf_counter() - t) / n * 1e3

    head = rows[0]
    result = {
        "benchmark": "bridge", "image_size": size, "scenes": scenes, "shadows": shadows,
        "steps_per_block": steps, "blocks": blocks, "t0": t0,
        "headline": {"action_scale": head["action_scale"], "overhead": head["overhead"],
                     "embedded_steps_per_s": head["embedded_steps_per_s"],
                     "bridge_steps_per_s": head["bridge_steps_per_s"]},
        "rows": rows, "target_overhead": TARGET,
        "meets_target": {str(r["action_scale"]): r["overhead"] <= TARGET for r in rows},
        "noop_round_trip_ms": noop_ms, "connect_s": connect_s,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": load1,
                    "allocator": runtime.active_allocator()},
    }
    for env in envs.values():
        env.close()
    for r in rows:
        print(f"scale {r['action_scale']:4.2f} | valid {r['valid_share']:.2f} | embedded "
              f"{r['embedded_steps_per_s']:6.2f} steps/s | bridge {r['bridge_steps_per_s']:6.2f} "
              f"steps/s | overhead {100 * r['overhead']:+.1f}% (+{r['added_ms_per_step']:.1f} ms/step)")
    print(f"target <= {100 * TARGET:.0f}% | headline (scale {head['action_scale']}) "
          f"{100 * head['overhead']:+.1f}% | no-op round trip {noop_ms:.2f} ms | "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs")
    return result


if __name__ == "__main__":
    sys.exit(main(__name__))
