"""SAC settings for the data-generation agent: yield (all and distinct layouts), median move and
invalid-reason mix as pre-training goes on, for a few variants of the `quick` agent side by side.

    python benchmarks/bench_agent_settings.py [--steps 40000] [--chunk 5000] [--eval-steps 600]
        [--variants NAME ...] [--out benchmarks/results/agent_settings.json]

Each variant is the `quick` preset with some `--set`-style overrides (see `VARIANTS`). SAC learns on
the intrinsic reward (rendering off, as in pre-training) in chunks; after each chunk its stochastic
policy acts for `--eval-steps` steps without learning (from a fixed reset seed) and the yield, the
distinct-layout yield, the median move of the moved object and the invalid reasons are recorded with
the process CPU seconds spent so far. Variants run one after the other in this process (one torch
thread), so their CPU times compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import machine_info, main

OUT = "agent_settings.json"

#: name -> overrides of the quick preset
VARIANTS: dict[str, dict] = {
    "paper-agent": {"env.observation": "paper", "agent.gamma": 0.99,
                    "agent.net_arch": [256, 256], "agent.learning_rate": 3e-4},
    "relative-gamma0-lr3e-4": {"agent.learning_rate": 3e-4},
    "quick": {},
    "quick-small-steps": {"env.max_step_xy": 0.25, "env.max_step_z": 0.3},
    "quick-entropy-1": {"agent.target_entropy": -1.0},
}


def _evaluate(env, model, steps: int, seed: int = 123) -> dict:
    obs, _ = env.reset(seed=seed)
    valid = distinct = 0
    moves: list[float] = []
    reasons: dict[str, int] = {}
    for _ in range(steps):
        action = model.predict(obs, deterministic=False)[0]
        obs, _, term, trunc, info = env.step(action)
        valid += info["valid"]
        distinct += info["distinct"]
        if info["valid"]:
            moves.append(info["move"])
        else:
            reasons[info["reason"]] = reasons.get(info["reason"], 0) + 1
        if term or trunc:
            obs, _ = env.reset()
    return {"yield": valid / steps, "yield_distinct": distinct / steps,
            "median_move": float(np.median(moves)) if moves else None,
            "invalid_share": {k: v / steps for k, v in sorted(reasons.items())}}


def run_variant(name: str, steps: int, chunk: int, eval_steps: int, seed: int = 0) -> list[dict]:
    import torch

    from rls3.agents import SACAgent
    from rls3.backends import make_backend
    from rls3.config import preset
    from rls3.env import Rls3Env

    torch.set_num_threads(1)
    cfg = preset("quick").override(VARIANTS[name])
    env = Rls3Env(make_backend(cfg.backend, "train"), replace(cfg.env_config, render=False))
    try:
        agent = SACAgent.new(env, cfg.agent, seed)
        rows, done, c0 = [], 0, time.process_time()
        while done < steps:
            n = min(chunk, steps - done)
            agent.model.learn(n, reset_num_timesteps=False)
            done += n
            row = {"steps": done, "cpu_s": round(time.process_time() - c0, 1),
                   **_evaluate(env, agent.model, eval_steps)}
            rows.append(row)
            print(name, row, flush=True)
        return rows
    finally:
        env.close()


def table(res: dict, out: Path) -> list[str]:
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"Pre-training on the intrinsic reward, evaluated every {res['chunk']} steps "
             f"({res['eval_steps']} stochastic steps each).", "",
             "| variant | steps | CPU s | yield | distinct | median move (m) |",
             "|---|---|---|---|---|---|"]
    for name, rows in res["variants"].items():
        for r in rows:
            lines.append(f"| {name} | {r['steps']} | {r['cpu_s']:.0f} | {f(r['yield'])} | "
                         f"{f(r['yield_distinct'])} | {f(r['median_move'])} |")
    return lines


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--steps", type=int, default=40_000)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--eval-steps", type=int, default=600)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))


def run(args: argparse.Namespace) -> dict:
    return {"benchmark": "agent_settings", "chunk": args.chunk, "eval_steps": args.eval_steps,
            "overrides": {v: VARIANTS[v] for v in args.variants},
            "variants": {v: run_variant(v, args.steps, args.chunk, args.eval_steps)
                         for v in args.variants},
            "machine": machine_info()}


if __name__ == "__main__":
    sys.exit(main(__name__))
