"""Env step (with rendering) vs raw rendering of the same scenes, random-action yield per scene, and
rls3's memoised pyrender passes against pyrender as shipped.

Usage: python benchmarks/bench_render.py [--size 224] [--steps 300] [--scenes a,b]
           [--layouts 6] [--repeats 5] [--out benchmarks/results/render.json]

Both timings run in the same process on the same scenes: the raw side renders the layout the env has
just produced, so the ratio isolates what the env adds (checks, state, bookkeeping) over the pixels.
The pass comparison renders the same layouts with pyrender as shipped and with `rls3.sim.render`'s
memoised per-frame work, interleaved, checks the pixels are equal, and times the GL calls that do
the pixel work (clears, draws, flushes, blits, reads): what is left once Python costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, main, names

OUT = "render.json"
TARGET = 0.20


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=300, help="random steps per scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", default="", help="comma-separated scenes (default: all)")
    ap.add_argument("--layouts", type=int, default=6,
                    help="layouts per scene in the pass comparison (0: skip it)")
    ap.add_argument("--repeats", type=int, default=5, help="renders per layout and path")


def run(args: argparse.Namespace) -> dict:
    res = measure(args.size, args.steps, args.seed, names(args.scenes) or None)
    if args.layouts > 0:
        res["passes"] = compare_passes(args.size, args.layouts, args.repeats, args.seed,
                                       names(args.scenes) or None)
    return res


#: the GL entry points pyrender's passes call that do the pixel work
GL_WORK = ("glClear", "glDrawElementsInstanced", "glDrawArraysInstanced", "glFlush",
           "glBlitFramebuffer", "glReadPixels")


@contextlib.contextmanager
def gl_timer(acc: list[float]) -> Iterator[None]:
    """Inside the block, the seconds spent in `GL_WORK` calls made by pyrender's renderer (its
    own imported names) or through `OpenGL.GL` (rls3.sim.render) add up in acc[0]."""
    import OpenGL.GL
    import pyrender.renderer

    modules = (pyrender.renderer, OpenGL.GL)
    saved = {(m, n): getattr(m, n) for m in modules for n in GL_WORK}

    def timed(f: Any) -> Any:
        def call(*a: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a)
            finally:
                acc[0] += time.perf_counter() - t
        return call

    for (m, n), f in saved.items():
        setattr(m, n, timed(f))
    try:
        yield
    finally:
        for (m, n), f in saved.items():
            setattr(m, n, f)


def compare_passes(size: int, layouts: int, repeats: int, seed: int,
                   scenes: list[str] | None = None) -> dict:
    """ms per frame of pyrender as shipped and of the memoised passes on the same layouts (paths
    alternating per layout), the GL calls' share, and whether every pixel agrees."""
    from rls3.sim import SimBackend, list_scenes
    from rls3.sim.render import shipped_pyrender

    backend = SimBackend(scenes or list_scenes())
    rng = np.random.default_rng(seed)
    paths = ("shipped", "memoised")
    wall = {p: 0.0 for p in paths}
    gl = {p: [0.0] for p in paths}
    frames, identical = 0, True
    try:
        for i, scene in enumerate(backend.scene_names):
            for k in range(layouts):
                backend.load_scene(i, seed=seed * 1000 + 10 * i + k)
                backend.move_object(int(rng.integers(3)), tuple(rng.uniform(-0.05, 0.05, 3)))
                images = {}
                for p in (paths if k % 2 == 0 else paths[::-1]):
                    with shipped_pyrender() if p == "shipped" else contextlib.nullcontext():
                        images[p] = backend.render(size, size)    # warm: binds new meshes
                        t = time.perf_counter()
                        with gl_timer(gl[p]):
                            for _ in range(repeats):
                                backend.render(size, size)
                        wall[p] += time.perf_counter() - t
                identical &= bool(np.array_equal(images["shipped"], images["memoised"]))
                frames += repeats
            print(f"{scene:14s} shipped {1000 * wall['shipped'] / frames:6.1f} ms  memoised "
                  f"{1000 * wall['memoised'] / frames:6.1f} ms per frame (running means)")
    finally:
        backend.close()
    ms = {p: 1000 * wall[p] / frames for p in paths}
    gl_ms = {p: 1000 * gl[p][0] / frames for p in paths}
    out = {"frames_per_path": frames, "ms_per_frame": ms, "gl_ms_per_frame": gl_ms,
           "speedup": ms["shipped"] / ms["memoised"], "pixel_identical": identical,
           "python_ms_per_frame": {p: ms[p] - gl_ms[p] for p in paths}}
    print(f"memoised passes x{out['speedup']:.2f} ({ms['shipped']:.1f} -> {ms['memoised']:.1f} "
          f"ms/frame; GL calls {gl_ms['shipped']:.1f} / {gl_ms['memoised']:.1f}); pixels "
          f"{'identical' if identical else 'DIFFER'}")
    return out


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
    lines += ["", f"Overall env overhead over raw rendering: "
                  f"**{100 * t['env_overhead']:+.1f}%** (target <= +{100 * TARGET:.0f}%); "
                  f"mean random yield {t['mean_yield']:.3f}."]
    p = res.get("passes")
    if p:
        ms, gl = p["ms_per_frame"], p["gl_ms_per_frame"]
        lines += ["", f"pyrender's passes, {p['frames_per_path']} frames per path (same layouts, "
                      "interleaved):", "", "| path | ms / frame | in GL calls | in Python |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {ms[k]:.1f} | {gl[k]:.1f} | {p['python_ms_per_frame'][k]:.1f} |"
                  for k in ("shipped", "memoised")]
        lines += ["", f"Memoised passes **x{p['speedup']:.2f}**, pixels "
                      f"{'identical' if p['pixel_identical'] else '**different**'}."]
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
