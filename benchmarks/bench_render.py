"""Env step (with rendering) vs raw rendering of the same scenes, and random-action yield per scene.

Usage: python benchmarks/bench_render.py [--size 224] [--steps 300] [--scenes a,b]
           [--out benchmarks/results/render.json]

Both timings run in the same process on the same scenes: the raw side renders the layout the env has
just produced, so the ratio isolates what the env adds (checks, state, bookkeeping) over the pixels.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine_info, main, names

OUT = "render.json"
TARGET = 0.20


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=300, help="random steps per scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", default="", help="comma-separated scenes (default: all)")


def run(args: argparse.Namespace) -> dict:
    return measure(args.size, args.steps, args.seed, names(args.scenes) or None)


def measure(size: int = 224, steps: int = 300, seed: int = 0,
            scenes: list[str] | None = None) -> dict:
    """Time env steps against raw renders on each scene; returns the result dict."""
    from rls3.env import EnvConfig, Rls3Env
    from rls3.sim import SimBackend, list_scenes

    rows = []
    for scene in scenes or list_scenes():
        backend = SimBackend([scene])
        env = Rls3Env(backend, EnvConfig(t0=10**6, image_size=size, swap_prob=0.0))
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        env.step(np.zeros(3, np.float32))  # warm-up: builds the scene and binds the meshes
        backend.render(size, size)
        t_env, t_raw, valid = 0.0, 0.0, 0
        for _ in range(steps):
            a = rng.uniform(-1, 1, 3).astype(np.float32)
            t0 = time.perf_counter()
            _, _, _, _, info = env.step(a)
            t_env += time.perf_counter() - t0
            if info["valid"]:
                valid += 1
                t0 = time.perf_counter()
                backend.render(size, size)
                t_raw += time.perf_counter() - t0
        env.close()
        rows.append({"scene": scene, "steps": steps, "valid": valid,
                     "yield": valid / steps,
                     "env_valid_fps": valid / t_env if t_env else 0.0,
                     "raw_render_fps": valid / t_raw if t_raw else 0.0,
                     "env_overhead": t_env / t_raw - 1.0 if t_raw else float("nan")})
        r = rows[-1]
        print(f"{scene:14s} yield {r['yield']:.3f}  env {r['env_valid_fps']:6.1f} valid fps  "
              f"raw {r['raw_render_fps']:6.1f} fps  overhead {100 * r['env_overhead']:+.1f}%")
    te = sum(r["valid"] / r["env_valid_fps"] for r in rows if r["env_valid_fps"])
    tr = sum(r["valid"] / r["raw_render_fps"] for r in rows if r["raw_render_fps"])
    total = {"env_overhead": te / tr - 1.0, "mean_yield": float(np.mean([r["yield"] for r in rows]))}
    print(f"overall env overhead over raw rendering: {100 * total['env_overhead']:+.1f}% "
          f"(target <= +{100 * TARGET:.0f}%), mean random yield {total['mean_yield']:.3f}")
    return {"command": " ".join(sys.argv), "machine": platform.platform(),
            "python": platform.python_version(), "machine_info": machine_info(), "size": size,
            "rows": rows, "total": total}


def table(res: dict, out: Path) -> list[str]:
    t = res["total"]
    lines = [f"{res['size']} px, random actions; the raw side renders the layout the env has just "
             "produced.", "", "| scene | random yield | env valid frames/s | raw renders/s | "
             "env overhead |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['scene']} | {r['yield']:.3f} | {r['env_valid_fps']:.1f} | "
                     f"{r['raw_render_fps']:.1f} | {100 * r['env_overhead']:+.1f}% |")
    return lines + ["", f"Overall env overhead over raw rendering: "
                        f"**{100 * t['env_overhead']:+.1f}%** (target <= +{100 * TARGET:.0f}%); "
                        f"mean random yield {t['mean_yield']:.3f}."]


if __name__ == "__main__":
    sys.exit(main(__name__))
