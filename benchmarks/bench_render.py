"""Env step (with rendering) vs raw rendering of the same scenes, and random-action yield per scene.

Usage: python benchmarks/bench_render.py [--size 224] [--steps 300] [--out benchmarks/results/render.json]
Both timings run in the same process on the same scenes: the raw side renders the layout the env has
just produced, so the ratio isolates what the env adds (checks, state, bookkeeping) over the pixels.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from rls3.env import EnvConfig, Rls3Env
from rls3.sim import SimBackend, list_scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=300, help="random steps per scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/render.json"))
    args = ap.parse_args()

    rows = []
    for scene in list_scenes():
        backend = SimBackend([scene])
        env = Rls3Env(backend, EnvConfig(t0=10**6, image_size=args.size, swap_prob=0.0))
        env.reset(seed=args.seed)
        rng = np.random.default_rng(args.seed)
        env.step(np.zeros(3, np.float32))  # warm-up: builds the scene and binds the meshes
        backend.render(args.size, args.size)
        t_env, t_raw, valid = 0.0, 0.0, 0
        for _ in range(args.steps):
            a = rng.uniform(-1, 1, 3).astype(np.float32)
            t0 = time.perf_counter()
            _, _, _, _, info = env.step(a)
            t_env += time.perf_counter() - t0
            if info["valid"]:
                valid += 1
                t0 = time.perf_counter()
                backend.render(args.size, args.size)
                t_raw += time.perf_counter() - t0
        env.close()
        rows.append({"scene": scene, "steps": args.steps, "valid": valid,
                     "yield": valid / args.steps,
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
          f"(target <= +20%), mean random yield {total['mean_yield']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.platform(),
                                    "python": platform.python_version(), "size": args.size,
                                    "rows": rows, "total": total}, indent=2))


if __name__ == "__main__":
    main()
