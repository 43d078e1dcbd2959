"""SAC pre-training speed: the loop's update schedule (one gradient step of `batch_size` per env
step, what pre-training used before `agent.pretrain_*`) against the preset's pre-training schedule,
same seeds, side by side in one run, with the distinct-layout yield each one reaches.

    python benchmarks/bench_pretrain.py [--preset quick] [--seeds 0,1,2] [--steps 600]
        [--pretrain-steps N] [--candidate KEY=VALUE ...] [--before REV [--before-set KEY=VALUE ...]]
        [--out benchmarks/results/pretrain.json]

Each (seed, schedule) pre-trains from scratch into a temporary folder (never the shared cache),
timed for wall and CPU, interleaved by seed so that machine load hits both alike; the agent then
acts with its stochastic policy without learning for `--steps` env steps per seed (rendering off,
as `bench_yield`): yield, distinct-layout yield and median move. The target is a >= 2x faster
pre-training at the same distinct-layout yield. `--candidate` adds a third schedule: the preset's
agent settings with these `agent.*` overrides (e.g. agent.pretrain_train_freq=8). `--before REV`
adds the preset's schedule under the code at git revision REV (in a child process per seed, timed
inside it alike): what a code change did to the same pre-training. `--before-set` overrides the
preset of that side, for a revision whose preset differed in what pre-training depends on (e.g.
`--before ecc58e8 --before-set env.t0=8`: the code before issue 23, whose `quick` had T0 = 32 and
no pre-training schedule, on today's episodes; the child needs only what that code had).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_tally, git_worktree, ints, machine_info, main, overrides, roll_yield

OUT = "pretrain.json"

LOOP, PRESET, CANDIDATE = "loop schedule", "preset schedule", "candidate"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600, help="evaluation env steps per seed")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="override the preset's agent.pretrain_steps")
    ap.add_argument("--candidate", action="append", default=[], metavar="KEY=VALUE",
                    help="agent.* override of a third schedule (repeatable)")
    ap.add_argument("--before", default=None, metavar="REV",
                    help="also the preset schedule under the code at this git revision")
    ap.add_argument("--before-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the --before side's preset (repeatable)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)


def _one(env: Any, agent_cfg: Any, seed: int, backend_name: str, steps: int
         ) -> tuple[float, float, dict[str, Any]]:
    """Pre-train one agent from scratch (a temporary cache), then roll its stochastic policy:
    (wall s, CPU s, per-scene tally)."""
    from rls3.agents import pretrained_sac

    with tempfile.TemporaryDirectory(prefix="rls3-pretrain-") as tmp:
        a = replace(agent_cfg, pretrained_dir=tmp)
        t, c = time.perf_counter(), time.process_time()
        sac = pretrained_sac(env, a, seed, backend_name, progress=True)
        wall, cpu = time.perf_counter() - t, time.process_time() - c

    def act(obs: Any) -> Any:
        return sac.model.predict(obs, deterministic=False)[0]

    return wall, cpu, roll_yield(env, act, steps, seed)


def _warm(env: Any) -> None:
    """Build every scene before any timing (the first use of a scene builds it, ~1 s each): each
    side, in-process or a child, is then timed on built scenes alike."""
    for i in range(len(env.backend.scene_names)):
        env.backend.load_scene(i, seed=0)


def _before(tree: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """`_one` with the preset's own schedule, in a child running the code in `tree`: its wall s,
    CPU s, tally and the schedule it pre-trained with."""
    cmd = [sys.executable, __file__, "--child", str(seed), "--preset", args.preset,
           "--steps", str(args.steps), "--out", os.devnull]
    cmd += [f"--before-set={s}" for s in args.before_set]
    if args.pretrain_steps is not None:
        cmd += ["--pretrain-steps", str(args.pretrain_steps)]
    env = dict(os.environ, RLS3_BENCH_CODE=str(tree))
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.PIPE, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> dict | None:
    from rls3.backends import make_backend
    from rls3.config import preset as make_preset
    from rls3.env import Rls3Env

    cfg = make_preset(args.preset)
    if args.pretrain_steps is not None:
        cfg = cfg.override({"agent.pretrain_steps": args.pretrain_steps})
    if args.child is not None:   # the --before side: one seed, its preset schedule, that code
        cfg = cfg.override(overrides(args.before_set))
        env = Rls3Env(make_backend(cfg.backend, "train"), replace(cfg.env_config, render=False))
        _warm(env)
        try:
            wall, cpu, tally = _one(env, cfg.agent, args.child, cfg.backend.name, args.steps)
        finally:
            env.close()
        try:   # the update schedule pre-training ran with there (older code: the loop's)
            from rls3.agents import pretrain_schedule
            sched = pretrain_schedule(cfg.agent)
        except ImportError:
            sched = cfg.agent
        print(json.dumps({"wall_s": wall, "cpu_s": cpu, "tally": tally, "schedule": {
            k: getattr(sched, k) for k in ("train_freq", "gradient_steps", "batch_size")}}))
        return None

    from rls3.agents import pretrain_schedule
    from rls3.config import PRETRAIN_SCHEDULE

    agents = {LOOP: replace(cfg.agent, **{k: None for k in PRETRAIN_SCHEDULE}),
              PRESET: cfg.agent}
    if args.candidate:
        sets = overrides(args.candidate)
        if not all(k.startswith("agent.") for k in sets):
            raise SystemExit(f"--candidate takes agent.* settings only, got {sorted(sets)}")
        agents[CANDIDATE] = cfg.override(sets).agent
    backend = make_backend(cfg.backend, "train")
    env = Rls3Env(backend, replace(cfg.env_config, render=False))
    _warm(env)
    before = (f"preset schedule, before ({', '.join([args.before, *args.before_set])})"
              if args.before else "")
    names = list(agents) + ([before] if args.before else [])
    rows: dict[str, dict[str, Any]] = {v: {"wall_s": [], "cpu_s": [], "tallies": {}}
                                       for v in names}
    before_schedule: dict[str, int] = {}
    with ExitStack() as stack:
        stack.callback(env.close)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rls3-before-")))
        tree = stack.enter_context(git_worktree(args.before, tmp / "tree")) if args.before \
            else None
        for seed in ints(args.seeds):
            for name in names:
                if name == before:
                    assert tree is not None
                    r = _before(tree, seed, args)
                    wall, cpu, tally = r["wall_s"], r["cpu_s"], r["tally"]
                    before_schedule = r["schedule"]
                else:
                    wall, cpu, tally = _one(env, agents[name], seed, cfg.backend.name,
                                            args.steps)
                rows[name]["wall_s"].append(wall)
                rows[name]["cpu_s"].append(cpu)
                add_tally(rows[name]["tallies"], tally)
    out: dict[str, Any] = {}
    for name, r in rows.items():
        t = r["tallies"].values()
        steps = sum(c["steps"] for c in t)
        moves = [m for c in t for m in c["moves"]]
        out[name] = {"schedule": before_schedule if name == before else
                     {k: getattr(pretrain_schedule(agents[name]), k)
                      for k in PRETRAIN_SCHEDULE.values()},
                     "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                     "steps_per_s": [cfg.agent.pretrain_steps / w for w in r["wall_s"]],
                     "eval_steps": steps,
                     "yield": sum(c["valid"] for c in t) / steps,
                     "yield_distinct": sum(c["distinct"] for c in t) / steps,
                     "median_move": float(np.median(moves)) if moves else None}
    speedup = sum(out[LOOP]["wall_s"]) / sum(out[PRESET]["wall_s"])
    extra: dict[str, Any] = {}
    if args.before:
        extra = {"before": args.before, "before_set": args.before_set,
                 "code_speedup": sum(out[before]["wall_s"]) / sum(out[PRESET]["wall_s"]),
                 "code_speedup_cpu": sum(out[before]["cpu_s"]) / sum(out[PRESET]["cpu_s"]),
                 "code_yield_distinct_change":
                     out[PRESET]["yield_distinct"] - out[before]["yield_distinct"]}
    if CANDIDATE in out:
        extra |= {"candidate": args.candidate,
                  "candidate_speedup": sum(out[LOOP]["wall_s"]) / sum(out[CANDIDATE]["wall_s"]),
                  "candidate_yield_distinct_change":
                      out[CANDIDATE]["yield_distinct"] - out[LOOP]["yield_distinct"]}
    return {**extra,"benchmark": "pretrain", "preset": args.preset, "seeds": ints(args.seeds),
            "pretrain_steps": cfg.agent.pretrain_steps, "eval_steps_per_seed": args.steps,
            "variants": out, "speedup": speedup,
            "yield_distinct_change": out[PRESET]["yield_distinct"] - out[LOOP]["yield_distinct"],
            "machine": machine_info()}


def table(res: dict, out: Any) -> list[str]:
    lines = [f"SAC pre-training, preset `{res['preset']}`, {res['pretrain_steps']} steps, seeds "
             f"{res['seeds']} (each from scratch, interleaved); then {res['eval_steps_per_seed']} "
             f"steps per seed of the stochastic policy without learning.", "",
             "| schedule (train_freq, gradient_steps, batch) | wall s per seed | CPU s per seed "
             "| steps/s | yield | distinct yield | median move (m) |",
             "|---|---|---|---|---|---|---|"]
    for name, v in res["variants"].items():
        s = v["schedule"]
        lines.append(f"| {name} ({s['train_freq']}, {s['gradient_steps']}, {s['batch_size']}) | "
                     f"{np.mean(v['wall_s']):.1f} | {np.mean(v['cpu_s']):.1f} | "
                     f"{np.mean(v['steps_per_s']):.0f} | {v['yield']:.3f} | "
                     f"{v['yield_distinct']:.3f} | {v['median_move']:.3f} |")
    lines.append(f"\nSpeed-up of the preset schedule: **{res['speedup']:.2f}x** (wall, summed over "
                 f"seeds); distinct-layout yield {res['yield_distinct_change']:+.3f}.")
    if "before" in res:
        lines.append(f"This code against {res['before']} (the preset schedule): "
                     f"**{res['code_speedup']:.2f}x** wall, {res['code_speedup_cpu']:.2f}x CPU; "
                     f"distinct-layout yield {res['code_yield_distinct_change']:+.3f}.")
    if "candidate" in res:
        lines.append(f"Candidate ({' '.join(res['candidate'])}) against the loop schedule: "
                     f"**{res['candidate_speedup']:.2f}x**; distinct-layout yield "
                     f"{res['candidate_yield_distinct_change']:+.3f}.")
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
