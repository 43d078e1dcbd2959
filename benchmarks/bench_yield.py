"""Sampling yield: valid samples per env step (all, and distinct layouts only) for the random agent
and for SAC after intrinsic pre-training, per training scene, with the invalid-reason mix and the
median move, same seeds, same run.

    python benchmarks/bench_yield.py [--preset quick] [--seeds 0,1,2] [--steps 600]
        [--pretrain-steps N] [--out benchmarks/results/yield.json]

SAC is pre-trained exactly as `rls3 run` does it (`rls3.agents.pretrained_sac`, on the intrinsic
reward alone, cached under runs/_pretrained and shared with runs of the same preset and seed), then
acts with its stochastic policy without learning, as at the start of a loop. The random agent acts
uniformly in [-1, 1]^3. Both drive the same `Rls3Env` (the run's env settings, rendering off: yield
does not depend on pixels) over the preset's training scenes, reset with the same seeds; valid steps
are tallied by the scene the step happened in. A valid frame counts as *distinct* when its layout
differs from the episode's previous frame (a policy that only lifts an object scores a high yield
of identical frames). Targets: the paper's 0.95 for SAC; 0.9 over distinct layouts with a median
move >= 5 cm for the `quick` preset's agent.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import (add_tally, ints, machine_info, main, pyplot, roll_yield,
                     save_figure)

OUT = "yield.json"

TARGET = 0.95
TARGET_DISTINCT = 0.9
MIN_MEDIAN_MOVE = 0.05


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600, help="env steps per agent and seed")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="override the preset's agent.pretrain_steps")


def run(args: argparse.Namespace) -> dict:
    return measure(args.preset, tuple(ints(args.seeds)), args.steps, args.pretrain_steps,
                   progress=True)


def measure(preset: str = "quick", seeds: tuple[int, ...] = (0, 1, 2), steps: int = 600,
            pretrain_steps: int | None = None, progress: bool = False) -> dict:
    from rls3.agents import RandomAgent, pretrained_sac  # noqa: F401  (the loop's agents)
    from rls3.backends import make_backend
    from rls3.config import preset as make_preset
    from rls3.env import Rls3Env

    cfg = make_preset(preset)
    if pretrain_steps is not None:
        cfg = cfg.override({"agent.pretrain_steps": pretrain_steps})
    backend = make_backend(cfg.backend, "train")
    env = Rls3Env(backend, replace(cfg.env_config, render=False))
    rows: dict[str, dict[str, dict[str, Any]]] = {"random": {}, "sac": {}}
    timings = {"pretrain_or_load_s": 0.0, "pretrain_or_load_cpu_s": 0.0, "random_s": 0.0,
               "sac_s": 0.0}
    try:
        for seed in seeds:
            t, c = time.perf_counter(), time.process_time()
            sac = pretrained_sac(env, cfg.agent, seed, cfg.backend.name, progress=progress)
            timings["pretrain_or_load_s"] += time.perf_counter() - t
            timings["pretrain_or_load_cpu_s"] += time.process_time() - c
            rng = np.random.default_rng(seed)
            agents = {
                "random": lambda obs, rng=rng: rng.uniform(-1, 1, 3).astype(np.float32),
                "sac": lambda obs, sac=sac: sac.model.predict(obs, deterministic=False)[0],
            }
            for name, act in agents.items():
                t = time.perf_counter()
                tally = roll_yield(env, act, steps, seed)
                timings[f"{name}_s"] += time.perf_counter() - t
                add_tally(rows[name], tally)
    finally:
        env.close()
    scenes = sorted(set(rows["random"]) | set(rows["sac"]))
    def share(c: dict[str, Any], key: str) -> float | None:
        return c.get(key, 0) / c["steps"] if c.get("steps") else None

    def median(moves: list[float]) -> float | None:
        return float(np.median(moves)) if moves else None

    table = []
    for scene in scenes:
        r, s = rows["random"].get(scene, {}), rows["sac"].get(scene, {})
        table.append({"scene": scene,
                      "random_steps": r.get("steps", 0), "random_yield": share(r, "valid"),
                      "random_yield_distinct": share(r, "distinct"),
                      "sac_steps": s.get("steps", 0), "sac_yield": share(s, "valid"),
                      "sac_yield_distinct": share(s, "distinct"),
                      "random_median_move": median(r.get("moves", [])),
                      "sac_median_move": median(s.get("moves", [])),
                      "random_invalid": {k[8:]: v for k, v in r.items() if k.startswith("invalid:")},
                      "sac_invalid": {k[8:]: v for k, v in s.items() if k.startswith("invalid:")}})
    tot = {}
    for name in ("random", "sac"):
        st = sum(c.get("steps", 0) for c in rows[name].values())
        va = sum(c.get("valid", 0) for c in rows[name].values())
        di = sum(c.get("distinct", 0) for c in rows[name].values())
        moves = [m for c in rows[name].values() for m in c.get("moves", [])]
        reasons: dict[str, int] = {}
        for c in rows[name].values():
            for k, v in c.items():
                if k.startswith("invalid:"):
                    reasons[k[8:]] = reasons.get(k[8:], 0) + v
        tot[name] = {"steps": st, "valid": va, "yield": va / st if st else None,
                     "distinct": di, "yield_distinct": di / st if st else None,
                     "median_move": median(moves),
                     "invalid_share": {k: v / st for k, v in sorted(reasons.items())} if st else {}}
    ry, sy = tot["random"]["yield"], tot["sac"]["yield"]
    sd, sm = tot["sac"]["yield_distinct"], tot["sac"]["median_move"]
    return {"benchmark": "yield", "preset": preset, "seeds": list(seeds), "steps_per_seed": steps,
            "pretrain_steps": cfg.agent.pretrain_steps, "t0": cfg.env.t0,
            "scenes": scenes, "rows": table, "total": tot, "target_sac_yield": TARGET,
            "sac_meets_target": bool(sy is not None and sy >= TARGET),
            "target_distinct": TARGET_DISTINCT, "min_median_move": MIN_MEDIAN_MOVE,
            "sac_meets_distinct_target": bool(sd is not None and sd >= TARGET_DISTINCT and
                                              sm is not None and sm >= MIN_MEDIAN_MOVE),
            "observation": cfg.env.observation,
            "agent": {k: getattr(cfg.agent, k) for k in ("gamma", "net_arch", "learning_rate",
                                                          "target_entropy")},
            # steps the random agent needs per valid sample, relative to SAC
            "random_extra_generation": (sy / ry - 1.0) if ry and sy else None,
            "timings_s": timings, "machine": machine_info()}


def table(res: dict, out: Path) -> list[str]:
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"SAC pre-trained {res['pretrain_steps']} steps on the intrinsic reward "
             f"(preset `{res['preset']}`), {res['steps_per_seed']} steps per agent and seed, "
             f"seeds {res['seeds']}.", "",
             "| scene | random yield (distinct) | SAC yield (distinct) | random / SAC median "
             "move (m) | random steps | SAC steps |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['scene']} | {f(r['random_yield'])} ({f(r['random_yield_distinct'])}) "
                     f"| {f(r['sac_yield'])} ({f(r['sac_yield_distinct'])}) | "
                     f"{f(r['random_median_move'])} / {f(r['sac_median_move'])} | "
                     f"{r['random_steps']} | {r['sac_steps']} |")
    t = res["total"]
    lines.append(f"| **all** | **{f(t['random']['yield'])}** ({f(t['random']['yield_distinct'])}) "
                 f"| **{f(t['sac']['yield'])}** ({f(t['sac']['yield_distinct'])}) | "
                 f"{f(t['random']['median_move'])} / {f(t['sac']['median_move'])} | "
                 f"{t['random']['steps']} | {t['sac']['steps']} |")
    for name in ("random", "sac"):
        mix = ", ".join(f"{k} {100 * v:.1f}%" for k, v in t[name]["invalid_share"].items())
        lines.append(f"\nInvalid steps, {name}: {mix or 'none'} of all steps.")
    lines.append(f"\nDistinct-layout target (>= {res['target_distinct']} with a median move >= "
                 f"{100 * res['min_median_move']:.0f} cm): "
                 f"**{'met' if res['sac_meets_distinct_target'] else 'not met'}** "
                 f"(observation `{res['observation']}`, agent {res['agent']}; pre-training or "
                 f"loading took {res['timings_s']['pretrain_or_load_cpu_s']:.0f} CPU s in all).")
    extra = res.get("random_extra_generation")
    lines += ["", f"SAC ≥ {res['target_sac_yield']}: **{'yes' if res['sac_meets_target'] else 'no'}**"
              + ((f"; the random agent needs {100 * extra:.0f}% more steps per valid sample "
                  "than SAC" if extra >= 0 else
                  f"; SAC needs {100 * (1 / (1 + extra) - 1):.0f}% more steps per valid sample "
                  "than the random agent") if extra is not None else "") + "."]
    return lines


def figures(res: dict, out: Path) -> list[Path]:
    """Yield per training scene, random against SAC: `out` with .png."""
    plt = pyplot()
    rows = res["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.bar(x - 0.2, [r["random_yield"] or 0 for r in rows], 0.4, label="random",
           color="tab:orange")
    ax.bar(x + 0.2, [r["sac_yield"] or 0 for r in rows], 0.4,
           label=f"SAC (pre-trained {res['pretrain_steps']} steps)", color="tab:blue")
    ax.axhline(res["target_sac_yield"], color="0.4", ls="--", lw=0.8, label="target 0.95")
    ax.set_xticks(x)
    ax.set_xticklabels([r["scene"] for r in rows])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("valid samples / env step")
    ax.set_title("Sampling yield per training scene")
    ax.legend(fontsize=8)
    return [save_figure(fig, out.with_suffix(".png"), res)]


if __name__ == "__main__":
    sys.exit(main(__name__))
