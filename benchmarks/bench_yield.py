"""Sampling yield: valid samples per env step for the random agent and for SAC after intrinsic
pre-training, per training scene, same seeds, same run.

    python benchmarks/bench_yield.py [--preset quick] [--seeds 0,1,2] [--steps 600]
        [--pretrain-steps N] [--out benchmarks/results/yield.json]

SAC is pre-trained exactly as `rls3 run` does it (`rls3.agents.pretrained_sac`, on the intrinsic
reward alone, cached under runs/_pretrained and shared with runs of the same preset and seed), then
acts with its stochastic policy without learning, as at the start of a loop. The random agent acts
uniformly in [-1, 1]^3. Both drive the same `Rls3Env` (the run's env settings, rendering off: yield
does not depend on pixels) over the preset's training scenes, reset with the same seeds; valid steps
are tallied by the scene the step happened in. The paper's target for SAC is >= 0.95.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import finish, machine_info  # noqa: E402

TARGET = 0.95


def _roll(env, act, steps: int, seed: int) -> dict[str, dict[str, int]]:
    """`steps` env steps with `act(obs)`; per scene: steps, valid, and invalid reasons."""
    obs, info = env.reset(seed=seed)
    tally: dict[str, dict[str, int]] = {}
    for _ in range(steps):
        obs, _, term, trunc, info = env.step(act(obs))
        t = tally.setdefault(info["scene"], {"steps": 0, "valid": 0})
        t["steps"] += 1
        t["valid"] += int(info["valid"])
        if not info["valid"]:
            key = f"invalid:{info.get('reason', '?')}"
            t[key] = t.get(key, 0) + 1
        if term or trunc:
            obs, info = env.reset()
    return tally


def run(preset: str = "quick", seeds: tuple[int, ...] = (0, 1, 2), steps: int = 600,
        pretrain_steps: int | None = None, progress: bool = False) -> dict:
    from rls3.agents import RandomAgent, pretrained_sac  # noqa: F401  (the loop's agents)
    from rls3.config import make_backend, preset as make_preset
    from rls3.env import Rls3Env

    cfg = make_preset(preset)
    if pretrain_steps is not None:
        cfg = cfg.override({"agent.pretrain_steps": pretrain_steps})
    backend = make_backend(cfg.backend, "train")
    env = Rls3Env(backend, replace(cfg.env_config, render=False))
    rows: dict[str, dict[str, dict[str, int]]] = {"random": {}, "sac": {}}
    timings = {"pretrain_or_load_s": 0.0, "random_s": 0.0, "sac_s": 0.0}
    try:
        for seed in seeds:
            t = time.perf_counter()
            sac = pretrained_sac(env, cfg.agent, seed, cfg.backend.name, progress=progress)
            timings["pretrain_or_load_s"] += time.perf_counter() - t
            rng = np.random.default_rng(seed)
            agents = {
                "random": lambda obs: rng.uniform(-1, 1, 3).astype(np.float32),
                "sac": lambda obs: sac.model.predict(obs, deterministic=False)[0],
            }
            for name, act in agents.items():
                t = time.perf_counter()
                tally = _roll(env, act, steps, seed)
                timings[f"{name}_s"] += time.perf_counter() - t
                for scene, c in tally.items():
                    acc = rows[name].setdefault(scene, {})
                    for k, v in c.items():
                        acc[k] = acc.get(k, 0) + v
    finally:
        env.close()
    scenes = sorted(set(rows["random"]) | set(rows["sac"]))
    table = []
    for scene in scenes:
        r, s = rows["random"].get(scene, {}), rows["sac"].get(scene, {})
        table.append({"scene": scene,
                      "random_steps": r.get("steps", 0), "random_yield":
                          r.get("valid", 0) / r["steps"] if r.get("steps") else None,
                      "sac_steps": s.get("steps", 0), "sac_yield":
                          s.get("valid", 0) / s["steps"] if s.get("steps") else None,
                      "random_invalid": {k[8:]: v for k, v in r.items() if k.startswith("invalid:")},
                      "sac_invalid": {k[8:]: v for k, v in s.items() if k.startswith("invalid:")}})
    tot = {}
    for name in ("random", "sac"):
        st = sum(c.get("steps", 0) for c in rows[name].values())
        va = sum(c.get("valid", 0) for c in rows[name].values())
        tot[name] = {"steps": st, "valid": va, "yield": va / st if st else None}
    ry, sy = tot["random"]["yield"], tot["sac"]["yield"]
    return {"benchmark": "yield", "preset": preset, "seeds": list(seeds), "steps_per_seed": steps,
            "pretrain_steps": cfg.agent.pretrain_steps, "t0": cfg.env.t0,
            "scenes": scenes, "rows": table, "total": tot, "target_sac_yield": TARGET,
            "sac_meets_target": bool(sy is not None and sy >= TARGET),
            # steps the random agent needs per valid sample, relative to SAC
            "random_extra_generation": (sy / ry - 1.0) if ry and sy else None,
            "timings_s": timings, "machine": machine_info()}


def markdown(res: dict) -> list[str]:
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"SAC pre-trained {res['pretrain_steps']} steps on the intrinsic reward "
             f"(preset `{res['preset']}`), {res['steps_per_seed']} steps per agent and seed, "
             f"seeds {res['seeds']}.", "",
             "| scene | random yield | SAC yield | random steps | SAC steps |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['scene']} | {f(r['random_yield'])} | {f(r['sac_yield'])} | "
                     f"{r['random_steps']} | {r['sac_steps']} |")
    t = res["total"]
    lines.append(f"| **all** | **{f(t['random']['yield'])}** | **{f(t['sac']['yield'])}** | "
                 f"{t['random']['steps']} | {t['sac']['steps']} |")
    extra = res.get("random_extra_generation")
    lines += ["", f"SAC ≥ {res['target_sac_yield']}: **{'yes' if res['sac_meets_target'] else 'no'}**"
              + ((f"; the random agent needs {100 * extra:.0f}% more steps per valid sample "
                  "than SAC" if extra >= 0 else
                  f"; SAC needs {100 * (1 / (1 + extra) - 1):.0f}% more steps per valid sample "
                  "than the random agent") if extra is not None else "") + "."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600, help="env steps per agent and seed")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="override the preset's agent.pretrain_steps")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "yield.json")
    a = ap.parse_args()
    res = run(a.preset, tuple(int(s) for s in a.seeds.split(",") if s), a.steps,
              a.pretrain_steps, progress=True)
    finish(res, a.out, markdown)


if __name__ == "__main__":
    main()
