"""Scene workers (issue 14): collection throughput (valid frames/s) and one quick iteration's wall
time at `env.workers` = 1 and 2, side by side in one run, with the machine's load recorded.

    python benchmarks/bench_workers.py [--fast] [--workers 1,2] [--repeats 1]
                                       [--out benchmarks/results/workers.json]

Two measurements, each at every N in turn (N = 1, 2, then reversed on a second repeat, so a load
drift does not favour one side):

* loop: a fresh two-iteration run of the `quick` preset scaled down (T0 = 16, E = 4, 224 px, K = 1,
  20-frame validation/test sets, SAC pre-trained 1000 steps, cached and shared by every N); from
  iteration 2's record: valid frames / collection seconds (env + SAC + per-sample feedback, the
  loop's `generate + feedback`), valid frames / `generate` alone, and the iteration's wall time
  (`time_s.total`: collection, fine-tuning, validation, test).
* env: random actions through N envs (N = 1: `Rls3Env` in process; N > 1: the run's
  `make_workers`, frames pickled back to the main process), no VLM: valid frames/s.

Also the cost of sending one 224-px `Frame` through the pipe (pickle + unpickle). The load average
(os.getloadavg) and the CPU seconds of the main process and of the worker processes are recorded
before/after each measurement.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ints, machine_info, main

OUT = "workers.json"
BASE: dict[str, Any] = {
    "env.t0": 16, "loop.episodes": 4, "env.image_size": 224, "loop.k": 1, "loop.iterations": 2,
    "data.val_size": 20, "data.test_size": 20, "agent.pretrain_steps": 1000,
    "early_stopping.enabled": False, "progress": False, "tensorboard": False,
}
FAST: dict[str, Any] = {"env.t0": 4, "loop.episodes": 2, "env.image_size": 64,
                        "data.val_size": 6, "data.test_size": 6, "agent.pretrain_steps": 200}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers count once they exit
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _measured(fn: Any) -> dict[str, Any]:
    """Run `fn()` and add wall time, load before/after and CPU seconds (main, workers)."""
    load0, (m0, k0), t = _load(), _cpu(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    m1, k1 = _cpu()
    return {**out, "wall_s": wall, "load_before": load0, "load_after": _load(),
            "cpu_main_s": m1 - m0, "cpu_workers_s": k1 - k0}


def loop_point(workers: int, overrides: dict[str, Any], root: Path) -> dict[str, Any]:
    """A fresh two-iteration run at `workers`; iteration 2's collection and wall time."""
    from rls3 import loop
    from rls3.config import preset

    cfg = preset("quick").override({**overrides, "env.workers": workers,
                                    "runs_dir": str(root / "runs"),
                                    "data.dir": str(root / "data"),
                                    "agent.pretrained_dir": str(root / "pre")})
    res = loop.run(cfg, root / "runs" / f"w{workers}-{time.time_ns()}")
    rec = res.records[-1]
    ts = rec["time_s"]
    collect = ts["generate"] + ts["feedback"]
    return {"workers": workers, "iteration_s": ts["total"], "time_s": ts, "steps": rec["steps"],
            "valid": rec["valid"], "episodes": rec["episodes"],
            "abandoned_episodes": rec.get("abandoned_episodes", 0),
            "collect_s": collect, "valid_per_s": rec["valid"] / collect,
            "valid_per_s_generate": rec["valid"] / ts["generate"]}


def env_point(workers: int, steps: int, size: int, seed: int = 0) -> dict[str, Any]:
    """Random actions through `workers` envs (no VLM): valid frames/s, frames in the main
    process."""
    from dataclasses import replace

    from rls3.backends import make_backend

    from rls3.config import preset
    from rls3.env import Rls3Env
    from rls3.workers import make_workers

    cfg = preset("quick")
    env_cfg = replace(cfg.env_config, image_size=size)
    rng = np.random.default_rng(seed)
    if workers == 1:
        env = Rls3Env(make_backend(cfg.backend, "train"), env_cfg)
        try:
            for _ in range(len(env.backend.scene_names)):  # warm-up: every scene built once
                env.reset()
            env.reset(seed=seed)
            for _ in range(5):  # and rendered into
                _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            valid, t = 0, time.perf_counter()
            for _ in range(steps):
                _, _, term, trunc, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
                valid += bool(info["valid"])
                if term or trunc:
                    env.reset()
            dt = time.perf_counter() - t
        finally:
            env.close()
        return {"workers": 1, "steps": steps, "valid": valid, "seconds": dt,
                "steps_per_s": steps / dt, "valid_per_s": valid / dt}
    t_start = time.perf_counter()
    vec = make_workers(cfg.backend, env_cfg, workers, {})
    start_s = time.perf_counter() - t_start
    try:
        from rls3.sim.backend import resolve_scenes

        for _ in resolve_scenes(cfg.backend.train_scenes):  # warm-up: every scene built in each
            vec.env_method("reset")
        vec.seed(seed)
        vec.reset()
        for _ in range(5):
            vec.step(rng.uniform(-1, 1, (workers, 3)).astype(np.float32))
        n = max(1, steps // workers)
        valid, t = 0, time.perf_counter()
        for _ in range(n):
            _, _, _, infos = vec.step(rng.uniform(-1, 1, (workers, 3)).astype(np.float32))
            valid += sum(bool(i["valid"]) for i in infos)
        dt = time.perf_counter() - t
    finally:
        vec.close()
    return {"workers": workers, "steps": n * workers, "valid": valid, "seconds": dt,
            "steps_per_s": n * workers / dt, "valid_per_s": valid / dt, "start_s": start_s}


def frame_pipe_cost(size: int, reps: int = 50) -> dict[str, Any]:
    """Seconds and bytes to pickle + unpickle one rendered `Frame` (what a worker sends back)."""
    from rls3.backends import make_backend
    from rls3.config import preset
    from rls3.env import Frame

    backend = make_backend(preset("quick").backend, "train")
    try:
        state = backend.load_scene(0, seed=0)
        frame = Frame(backend.render(size, size), state, 1)
    finally:
        backend.close()
    blob = pickle.dumps({"frame": frame}, protocol=pickle.HIGHEST_PROTOCOL)
    t = time.perf_counter()
    for _ in range(reps):
        pickle.loads(pickle.dumps({"frame": frame}, protocol=pickle.HIGHEST_PROTOCOL))
    return {"image_size": size, "bytes": len(blob), "seconds": (time.perf_counter() - t) / reps}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fast", action="store_true", help="a smoke run (tiny sizes)")
    ap.add_argument("--workers", default="1,2", help="comma-separated N values")
    ap.add_argument("--repeats", type=int, default=1, help="passes over N (alternating order)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return measure(args.fast, ints(args.workers), args.repeats)


def measure(fast: bool, workers: list[int], repeats: int) -> dict[str, Any]:
    overrides = {**BASE, **(FAST if fast else {})}
    size = int(overrides["env.image_size"])
    env_steps = 60 if fast else 300
    order = [n for r in range(repeats) for n in (workers if r % 2 == 0 else workers[::-1])]
    t0, load0 = time.perf_counter(), _load()
    with tempfile.TemporaryDirectory(prefix="rls3-bench-workers-") as tmp:
        root = Path(tmp)
        # warm-up (discarded): fixed sets, pre-training cache, first-run costs
        warm = _measured(lambda: loop_point(1, {**overrides, "loop.iterations": 1}, root))
        print(f"warm-up: {warm['wall_s']:.1f} s (discarded)", flush=True)
        loops, envs = [], []
        for n in order:
            r = _measured(lambda n=n: loop_point(n, overrides, root))
            loops.append(r)
            print(f"loop N={n}: {r['valid_per_s']:.2f} valid frames/s collecting, iteration "
                  f"{r['iteration_s']:.1f} s, load {r['load_before'][0]}->{r['load_after'][0]}",
                  flush=True)
        for n in order:
            r = _measured(lambda n=n: env_point(n, env_steps, size))
            envs.append(r)
            print(f"env N={n}: {r['valid_per_s']:.2f} valid frames/s, load "
                  f"{r['load_before'][0]}->{r['load_after'][0]}", flush=True)
    pipe = frame_pipe_cost(size)
    return {"benchmark": "workers", "fast": fast, "base": overrides, "order": order,
            "loop": loops, "env": envs, "frame_pipe": pipe, "load_start": load0,
            "load_end": _load(), "wall_s": time.perf_counter() - t0, "machine": machine_info()}


def _mean(rows: list[dict[str, Any]], n: int, key: str) -> float:
    return float(np.mean([r[key] for r in rows if r["workers"] == n]))


def table(res: dict[str, Any], out: Path) -> list[str]:
    b = res["base"]
    lines = [f"`quick` scaled down: T0={b['env.t0']}, E={b['loop.episodes']}, "
             f"{b['env.image_size']} px, K={b['loop.k']}, val/test {b['data.val_size']}/"
             f"{b['data.test_size']}, SAC pre-trained {b['agent.pretrain_steps']} steps; "
             f"iteration 2 of a fresh run per row. Load average (1 min) before -> after each "
             f"row; CPU seconds of the main process and of the worker processes.", "",
             "| N | collect valid frames/s | (env + SAC only) | iteration s | steps | valid "
             "| abandoned eps | load | CPU main / workers s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["loop"]:
        lines.append(f"| {r['workers']} | {r['valid_per_s']:.2f} | {r['valid_per_s_generate']:.2f}"
                     f" | {r['iteration_s']:.1f} | {r['steps']} | {r['valid']} | "
                     f"{r['abandoned_episodes']} | {r['load_before'][0]:.1f} -> "
                     f"{r['load_after'][0]:.1f} | {r['cpu_main_s']:.0f} / "
                     f"{r['cpu_workers_s']:.0f} |")
    lines += ["", "Env only (random actions, rendering on, no VLM):", "",
              "| N | env steps/s | valid frames/s | load | CPU main / workers s |",
              "|---|---|---|---|---|"]
    for r in res["env"]:
        lines.append(f"| {r['workers']} | {r['steps_per_s']:.1f} | {r['valid_per_s']:.2f} | "
                     f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} | "
                     f"{r['cpu_main_s']:.0f} / {r['cpu_workers_s']:.0f} |")
    ns = sorted({r["workers"] for r in res["loop"]})
    if len(ns) >= 2:
        a, z = ns[0], ns[-1]

        def ratio(rows: list[dict[str, Any]], key: str) -> float:
            return _mean(rows, z, key) / _mean(rows, a, key)

        lines += ["", f"N={z} vs N={a} (means over repeats): collection "
                      f"×{ratio(res['loop'], 'valid_per_s'):.2f}, iteration time "
                      f"×{ratio(res['loop'], 'iteration_s'):.2f}, env-only valid frames/s "
                      f"×{ratio(res['env'], 'valid_per_s'):.2f}."]
    p = res["frame_pipe"]
    lines += [f"One {p['image_size']}-px frame through the pipe: {p['bytes'] / 1024:.0f} KiB, "
              f"{p['seconds'] * 1e3:.2f} ms pickle + unpickle."]
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
