"""Scaling: time per loop iteration as T0, E and the image size grow (>= 3 points each), and env
throughput with SB3 vectorised envs at 1 and 2 worker processes.

    python benchmarks/bench_scaling.py [--fast] [--agent sac] [--out benchmarks/results/scaling.json]

Each point is a fresh two-iteration run of a small base config (the `quick` preset scaled down:
T0=8, E=2, 64 px, K=1, 20-frame validation/test sets, SAC pre-trained 300 steps) with one knob
changed; the time is the loop's own `time_s.total` of iteration 2 (collection, feedback,
fine-tuning, validation, test), with its phase split. A first run (discarded) warms the process
up. Vectorised envs: `SubprocVecEnv` with 1 and 2
processes (spawned; each builds its own simulator) stepping random actions with rendering on, the
way SB3 would feed a multi-env SAC; `DummyVecEnv` (in process) is the 1-process reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_info, main, pyplot, save_figure

OUT = "scaling.json"
BASE = {"env.t0": 8, "loop.episodes": 2, "env.image_size": 64, "loop.k": 1,
        "data.val_size": 20, "data.test_size": 20, "agent.pretrain_steps": 300,
        "loop.iterations": 2, "early_stopping.enabled": False, "progress": False,
        "tensorboard": False}
SWEEPS = {"env.t0": [8, 16, 32], "loop.episodes": [2, 4, 8], "env.image_size": [64, 96, 160]}
FAST_SWEEPS = {"env.t0": [4, 8], "loop.episodes": [1, 2], "env.image_size": [48, 64]}  # smoke only


def iteration_time(overrides: dict, agent: str = "sac", preset: str = "quick") -> dict:
    """One fresh two-iteration run; the loop's phase times of iteration 2 (iteration 1 also
    builds the scenes on first visit, a one-time cost)."""
    from rls3 import loop
    from rls3.config import preset as make_preset

    cfg = make_preset(preset).override({**overrides, "agent.name": agent})
    with tempfile.TemporaryDirectory(prefix="rls3-bench-scaling-") as tmp:
        t = time.perf_counter()
        res = loop.run(cfg.override({"runs_dir": tmp}), Path(tmp) / "run")
        wall = time.perf_counter() - t
    rec = res.records[-1]
    return {"iteration_s": rec["time_s"]["total"], "time_s": rec["time_s"],
            "steps": rec.get("steps"), "valid": rec.get("valid"), "run_wall_s": wall}


def _make_env(size: int):  # module level: picklable for SubprocVecEnv
    from rls3.backends import make_backend
    from rls3.config import preset
    from rls3.env import Rls3Env

    cfg = preset("quick")
    from dataclasses import replace

    return Rls3Env(make_backend(cfg.backend, "train"), replace(cfg.env_config, image_size=size))


class _Factory:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self):
        return _make_env(self.size)


def vec_throughput(n_envs: int, kind: str, steps: int, size: int, seed: int = 0) -> dict:
    """Env steps/s (all workers together) of an SB3 VecEnv over the train scenes."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [_Factory(size) for _ in range(n_envs)]
    vec = SubprocVecEnv(fns, start_method="spawn") if kind == "subproc" else DummyVecEnv(fns)
    try:
        vec.seed(seed)
        vec.reset()
        rng = np.random.default_rng(seed)
        act = lambda: rng.uniform(-1, 1, (n_envs, 3)).astype(np.float32)  # noqa: E731
        for _ in range(5):  # warm-up: scenes built, meshes bound
            vec.step(act())
        n_steps = max(1, steps // n_envs)
        valid = 0
        t = time.perf_counter()
        for _ in range(n_steps):
            _, _, _, infos = vec.step(act())
            valid += sum(int(i.get("valid", False)) for i in infos)
        dt = time.perf_counter() - t
    finally:
        vec.close()
    total = n_steps * n_envs
    return {"kind": kind, "n_envs": n_envs, "steps": total, "valid": valid, "seconds": dt,
            "steps_per_s": total / dt, "valid_per_s": valid / dt}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--agent", default="sac")


def run(args: argparse.Namespace) -> dict:
    return measure(args.fast, args.agent)


def measure(fast: bool = False, agent: str = "sac") -> dict:
    sweeps = FAST_SWEEPS if fast else SWEEPS
    base = dict(BASE)
    if fast:
        base.update({"env.t0": 4, "loop.episodes": 1, "env.image_size": 48,
                     "agent.pretrain_steps": 100, "data.val_size": 10, "data.test_size": 10})
    rows = []
    t = time.perf_counter()
    cache: dict[tuple, dict] = {}
    # warm-up (discarded): the first run in a process pays one-time costs (EGL context, kernels)
    warm = iteration_time({**base, "env.image_size": 32}, agent)
    print(f"warm-up: {warm['iteration_s']:.1f} s/iteration (discarded)", flush=True)
    for knob, values in sweeps.items():
        for v in values:
            ov = {**base, knob: v}
            key = tuple(sorted(ov.items()))
            if key not in cache:
                cache[key] = iteration_time(ov, agent)
            r = cache[key]
            rows.append({"knob": knob, "value": v, **r})
            print(f"{knob}={v}: {r['iteration_s']:.1f} s/iteration "
                  f"({r['steps']} steps, {r['valid']} valid)", flush=True)
    size = 48 if fast else 96
    steps = 40 if fast else 200
    vec = [vec_throughput(1, "dummy", steps, size), vec_throughput(1, "subproc", steps, size),
           vec_throughput(2, "subproc", steps, size)]
    for v in vec:
        print(f"{v['kind']} x{v['n_envs']}: {v['steps_per_s']:.1f} steps/s", flush=True)
    return {"benchmark": "scaling", "fast": fast, "agent": agent, "base": base, "rows": rows,
            "vec_envs": vec, "vec_image_size": size,
            "vec_speedup_2_vs_1": vec[2]["steps_per_s"] / vec[1]["steps_per_s"],
            "wall_s": time.perf_counter() - t, "machine": machine_info()}


def table(res: dict, out: Path) -> list[str]:
    b = res["base"]
    lines = [f"Base: T0={b['env.t0']}, E={b['loop.episodes']}, {b['env.image_size']} px, "
             f"K={b['loop.k']}, val/test {b['data.val_size']}/{b['data.test_size']} frames, "
             f"agent {res['agent']}; one knob changed per row. Seconds per iteration "
             "(collect = generate + feedback).", "",
             "| knob | value | s / iteration | collect | fine-tune | val + test | env steps | valid |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ts = r["time_s"]
        lines.append(f"| {r['knob']} | {r['value']} | {r['iteration_s']:.1f} | "
                     f"{ts.get('generate', 0) + ts.get('feedback', 0):.1f} | "
                     f"{ts.get('finetune', 0):.1f} | {ts.get('validate', 0) + ts.get('test', 0):.1f} "
                     f"| {r['steps']} | {r['valid']} |")
    lines += ["", f"SB3 vectorised envs ({res['vec_image_size']} px, random actions, rendering on):",
              "", "| VecEnv | processes | env steps/s | valid frames/s |", "|---|---|---|---|"]
    for v in res["vec_envs"]:
        lines.append(f"| {v['kind']} | {v['n_envs']} | {v['steps_per_s']:.1f} | "
                     f"{v['valid_per_s']:.1f} |")
    lines += ["", f"2 processes vs 1: ×{res['vec_speedup_2_vs_1']:.2f}."]
    return lines


def figures(res: dict, out: Path) -> list[Path]:
    """Seconds per iteration against each knob, and the VecEnv rates: `out` with .png."""
    plt = pyplot()
    knobs = list(dict.fromkeys(r["knob"] for r in res["rows"]))
    fig, axes = plt.subplots(1, len(knobs) + 1, figsize=(4 * (len(knobs) + 1), 3.8))
    for ax, k in zip(axes, knobs, strict=False):
        rs = [r for r in res["rows"] if r["knob"] == k]
        ax.plot([r["value"] for r in rs], [r["iteration_s"] for r in rs], "o-")
        ax.set_xlabel(k)
        ax.set_ylabel("s / iteration")
        ax.grid(alpha=0.3)
    v = res["vec_envs"]
    axes[-1].bar([f"{x['kind']}\nx{x['n_envs']}" for x in v], [x["steps_per_s"] for x in v])
    axes[-1].set_ylabel("env steps/s")
    axes[-1].set_title("SB3 VecEnv")
    fig.suptitle("Scaling")
    return [save_figure(fig, out.with_suffix(".png"), res)]


if __name__ == "__main__":
    sys.exit(main(__name__))
