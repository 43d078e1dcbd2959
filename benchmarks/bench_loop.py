"""Loop breakdown: where one real iteration of Algorithm 1 spends its time, from cProfile.

    python benchmarks/bench_loop.py [--preset quick] [--agent sac] [--set KEY=VALUE ...]
        [--out benchmarks/results/loop.json] [--pstats FILE]

Runs a fresh run of the preset with `loop.iterations=1` in this process (fixed sets and the
pre-trained SAC come from their caches, as in any second run) and profiles iteration 1 only: from
its `collect` phase to its committed checkpoint (the loop's `on_phase` hook turns the profiler on
and off). Cumulative times of non-overlapping functions give the categories:

  render          SimBackend.render (pyrender, EGL)
  physics/checks  SimBackend.move_object / swap_object / state / load_scene (pybullet)
  RL updates      SAC.train (gradient steps)
  RL rollout      SB3 collect_rollouts minus env steps/resets (policy inference, replay buffer)
  VLM feedback    EpisodeCollector.__call__ (captions, VLM feedback J2, batch sampling)
  fine-tuning     the adapter's finetune
  evaluation      validation + test (Loop._evaluate)
  I/O             batch PNGs, checkpoint, metrics, TensorBoard, best VLM
  overhead        everything else (env bookkeeping, loop, progress): the framework's own cost

The loop's own per-phase wall times (metrics `time_s`) are recorded alongside as a cross-check.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_info, write_json  # noqa: E402

TARGET_OVERHEAD = 0.05

# category -> list of (file suffix, function name); cumulative times are summed
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "render": [("rls3/sim/backend.py", "render")],
    "physics/checks": [("rls3/sim/backend.py", "move_object"), ("rls3/sim/backend.py", "swap_object"),
                       ("rls3/sim/backend.py", "state"), ("rls3/sim/backend.py", "load_scene")],
    "RL updates": [("stable_baselines3/sac/sac.py", "train")],
    "VLM feedback": [("rls3/loop.py", "__call__")],
    "fine-tuning": [("rls3/vlm/contrastive.py", "finetune"), ("rls3/vlm/paligemma.py", "finetune")],
    "evaluation": [("rls3/loop.py", "_evaluate")],
    "I/O": [("rls3/data.py", "write_dataset"), ("rls3/loop.py", "_checkpoint"),
            ("rls3/loop.py", "_append_metrics"), ("rls3/loop.py", "_tb"),
            ("rls3/loop.py", "_save_best")],
}
ROLLOUT = ("stable_baselines3/common/off_policy_algorithm.py", "collect_rollouts")
RANDOM_COLLECT = ("rls3/agents.py", "collect")
ENV_STEP = ("rls3/env.py", "step")
ENV_RESET = ("rls3/env.py", "reset")


def _ct(stats: pstats.Stats, file_suffix: str, func: str) -> float:
    """Cumulative seconds of a function (outermost calls only: recursion is not double counted)."""
    total = 0.0
    for (fn, _, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == func and fn.replace("\\", "/").endswith(file_suffix):
            total += ct
    return total


def breakdown(stats: pstats.Stats, total: float, agent: str) -> dict[str, float]:
    """Seconds per category (see the module docstring); `overhead` is the rest of `total`."""
    sec = {k: sum(_ct(stats, f, n) for f, n in v) for k, v in CATEGORIES.items()}
    env_step = _ct(stats, *ENV_STEP) + _ct(stats, *ENV_RESET)  # physics/render/feedback inside
    if agent == "sac":
        sec["RL rollout"] = max(0.0, _ct(stats, *ROLLOUT) - env_step)
    else:
        sec["RL rollout"] = max(0.0, _ct(stats, *RANDOM_COLLECT) - env_step)
    sec["overhead"] = max(0.0, total - sum(sec.values()))
    return sec


def run(preset: str = "quick", agent: str = "sac", sets: list[str] | None = None,
        pstats_out: Path | None = None, top: int = 25) -> dict:
    from rls3 import loop
    from rls3.config import preset as make_preset

    cfg = make_preset(preset)
    overrides = {"agent.name": agent, "loop.iterations": 1, "progress": False,
                 "early_stopping.enabled": False}
    for s in sets or []:
        k, v = s.split("=", 1)
        import yaml

        overrides[k] = yaml.safe_load(v)
    cfg = cfg.override(overrides)
    prof = cProfile.Profile()
    marks: dict[str, float] = {}

    def on_phase(i: int, name: str) -> None:
        if i == 1 and name == "collect" and "start" not in marks:
            marks["start"] = time.perf_counter()
            prof.enable()
        elif i == 1 and name == "done":
            prof.disable()
            marks["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="rls3-bench-loop-") as tmp:
        cfg = cfg.override({"runs_dir": tmp})
        t = time.perf_counter()
        result = loop.run(cfg, Path(tmp) / "run", on_phase=on_phase)
        run_s = time.perf_counter() - t
        rec = result.records[-1]
    total = marks["end"] - marks["start"]
    stats = pstats.Stats(prof)
    if pstats_out:
        stats.dump_stats(str(pstats_out))
    sec = breakdown(stats, total, agent)
    top_rows = []
    for (fn, line, name), (cc, nc, tt, ct, _c) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:  # type: ignore[attr-defined]
        top_rows.append({"function": f"{Path(fn).name}:{line}({name})", "calls": nc,
                         "self_s": tt, "cum_s": ct})
    return {"benchmark": "loop", "preset": preset, "agent": agent, "overrides": overrides,
            "iteration_s": total, "run_s": run_s, "seconds": sec,
            "fractions": {k: v / total for k, v in sec.items()},
            "overhead_fraction": sec["overhead"] / total, "target_overhead": TARGET_OVERHEAD,
            "meets_target": sec["overhead"] / total <= TARGET_OVERHEAD,
            "loop_time_s": rec.get("time_s"), "steps": rec.get("steps"), "valid": rec.get("valid"),
            "t0": cfg.env.t0, "episodes": cfg.loop.episodes, "image_size": cfg.env.image_size,
            "top_self_time": top_rows, "machine": machine_info()}


def markdown(res: dict) -> list[str]:
    lines = [f"One iteration of `{res['preset']}` ({res['agent']}, T0={res['t0']}, "
             f"E={res['episodes']}, {res['image_size']}px, {res['steps']} env steps, "
             f"{res['valid']} valid): **{res['iteration_s']:.1f} s**, profiled with cProfile.", "",
             "| category | seconds | fraction |", "|---|---|---|"]
    for k, v in sorted(res["seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.2f} | {100 * res['fractions'][k]:.1f}% |")
    lines += ["", f"Framework overhead {100 * res['overhead_fraction']:.1f}% "
              f"(target ≤ {100 * res['target_overhead']:.0f}%: "
              f"**{'met' if res['meets_target'] else 'not met'}**). Loop phase times (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in (res.get("loop_time_s") or {}).items()) + "."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--agent", default="sac")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pstats", type=Path, default=None, help="also dump the raw profile here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loop.json")
    a = ap.parse_args()
    res = run(a.preset, a.agent, a.sets, a.pstats)
    res["command"] = command_line()
    write_json(a.out, res)
    print("\n".join(markdown(res)))
    print("top self time:")
    for r in res["top_self_time"][:15]:
        print(f"  {r['self_s']:7.2f}s self {r['cum_s']:7.2f}s cum {r['calls']:>8} {r['function']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
