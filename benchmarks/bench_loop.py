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

The loop's own per-phase wall times (metrics `time_s`) are recorded alongside as a cross-check,
and so are, per loop phase, the process's wall, user and system CPU seconds, minor page faults and
thread count (from getrusage at every phase change).

By default the iteration runs twice, in child processes under each allocator side by side
(`--allocators tcmalloc,system`: tcmalloc, what rls3 uses, and glibc malloc), each child's whole
user/system CPU and page faults taken from wait4; `--no-profile` times without cProfile's overhead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from _common import (command_line, machine_info, main, overrides, pyplot, run_per_allocator,
                     rusage_now, save_figure)

from rls3.rundir import without_timings

OUT = "loop.json"
#: an earlier measurement kept beside the result (same preset and machine) that `table` compares
BEFORE = "loop_before_eval_cache.json"
TARGET_OVERHEAD = 0.05

# category -> list of (file suffix, function name); cumulative times are summed
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "render": [("rls3/sim/backend.py", "render")],
    "physics/checks": [("rls3/sim/backend.py", "move_object"), ("rls3/sim/backend.py", "swap_object"),
                       ("rls3/sim/backend.py", "state"), ("rls3/sim/backend.py", "load_scene")],
    "RL updates": [("stable_baselines3/sac/sac.py", "train")],
    "VLM feedback": [("rls3/collector.py", "__call__"), ("rls3/collector.py", "score_step")],
    "fine-tuning": [("rls3/vlm/contrastive.py", "finetune"), ("rls3/vlm/paligemma.py", "finetune")],
    "evaluation": [("rls3/loop.py", "_evaluate")],
    "I/O": [("rls3/data.py", "write_dataset"), ("rls3/loop.py", "_checkpoint"),
            ("rls3/rundir.py", "append_metrics"), ("rls3/loop.py", "_tb"),
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


def _phase_usage(marks: list[tuple[str, float, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per loop phase: wall seconds, user/system CPU, page faults, the most threads seen at its
    ends and CPU seconds per thread group (llvmpipe renderer, python/torch, ...)."""
    out: dict[str, dict[str, float]] = {}
    for (name, t0, r0), (_, t1, r1) in zip(marks, marks[1:], strict=False):
        row = out.setdefault(name, {"wall_s": 0.0, "user_s": 0.0, "sys_s": 0.0, "minflt": 0,
                                    "threads": 0})
        row["wall_s"] += t1 - t0
        for k in ("user_s", "sys_s", "minflt"):
            row[k] += r1[k] - r0[k]
        row["threads"] = max(row["threads"], r0["threads"], r1["threads"])
        by = row.setdefault("thread_cpu_s", {})
        for k, v in r1["thread_cpu"].items():
            by[k] = by.get(k, 0.0) + v - r0["thread_cpu"].get(k, 0.0)
    return out


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--agent", default="sac")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pstats", type=Path, default=None, help="also dump the raw profile here")
    ap.add_argument("--allocators", default="tcmalloc,system",
                    help="comma-separated; each runs in its own child process side by side")
    ap.add_argument("--no-profile", action="store_true", help="time without cProfile")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                    help="what cProfile counts: wall seconds or the process's CPU seconds")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> dict:
    """One process (`--child`), or one child per allocator side by side."""
    if args.child:
        return measure(args.preset, args.agent, args.sets, args.pstats,
                       profile=not args.no_profile, timer=args.timer)
    allocators = [x for x in args.allocators.split(",") if x]

    def child(name: str, out: Path) -> list[str]:
        cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--agent",
               args.agent, "--out", str(out), "--timer", args.timer] + [f"--set={x}"
                                                                      for x in args.sets]
        if args.no_profile:
            cmd.append("--no-profile")
        if args.pstats:
            cmd += ["--pstats", str(args.pstats.with_suffix(f".{name}.pstats"))]
        return cmd

    runs, process = run_per_allocator(child, allocators)
    first = runs[allocators[0]]
    res = dict(first)  # the first allocator's figures stay at the top level
    res["command"] = command_line()  # this process's, not the child's
    res.update({"runs": runs, "process": process, "allocators": allocators})
    if len(allocators) > 1:
        second = runs[allocators[1]]
        res.update({"speedup": second["iteration_s"] / first["iteration_s"],
                    "identical_metrics": (without_timings(first.get("record") or {})
                                          == without_timings(second.get("record") or {}))})
    return res


def measure(preset: str = "quick", agent: str = "sac", sets: list[str] | None = None,
            pstats_out: Path | None = None, top: int = 25, profile: bool = True,
            timer: str = "wall") -> dict:
    from rls3 import loop
    from rls3.config import preset as make_preset

    changed = {"agent.name": agent, "loop.iterations": 1, "progress": False,
               "early_stopping.enabled": False, **overrides(sets or [])}
    cfg = make_preset(preset).override(changed)
    # cpu: the process's CPU seconds (all threads) per function, steadier on a loaded machine
    prof = cProfile.Profile(time.process_time) if timer == "cpu" else cProfile.Profile()
    marks: dict[str, float] = {}
    phases: list[tuple[str, float, dict[str, float]]] = []

    def on_phase(i: int, name: str) -> None:
        if i == 1 and name == "collect" and "start" not in marks:
            marks["start"] = time.perf_counter()
            if profile:
                prof.enable()
        elif i == 1 and name == "done":
            if profile:
                prof.disable()
            marks["end"] = time.perf_counter()
        if i == 1:
            phases.append((name, time.perf_counter(), rusage_now()))

    with tempfile.TemporaryDirectory(prefix="rls3-bench-loop-") as tmp:
        # resolved first: the pre-trained SAC cache stays <runs_dir>/_pretrained of the checkout
        cfg = cfg.resolved().override({"runs_dir": tmp})
        t = time.perf_counter()
        result = loop.run(cfg, Path(tmp) / "run", on_phase=on_phase)
        run_s = time.perf_counter() - t
        rec = result.records[-1]
    total = marks["end"] - marks["start"]
    if profile and timer == "cpu":
        total = sum(r["user_s"] + r["sys_s"] for r in _phase_usage(phases).values())
    sec: dict[str, float] = {}
    top_rows = []
    if profile:
        stats = pstats.Stats(prof)
        if pstats_out:
            stats.dump_stats(str(pstats_out))
        sec = breakdown(stats, total, agent)
        for (fn, line, name), (_cc, nc, tt, ct, _c) in sorted(
                stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:  # type: ignore[attr-defined]
            top_rows.append({"function": f"{Path(fn).name}:{line}({name})", "calls": nc,
                             "self_s": tt, "cum_s": ct})
    return {"benchmark": "loop", "preset": preset, "agent": agent, "overrides": changed,
            "profiled": profile, "timer": timer, "iteration_s": marks["end"] - marks["start"],
            "profiled_total_s": total, "run_s": run_s, "seconds": sec,
            "fractions": {k: v / total for k, v in sec.items()},  # of profiled_total_s
            "overhead_fraction": sec["overhead"] / total if sec else None,
            "target_overhead": TARGET_OVERHEAD,
            "meets_target": sec["overhead"] / total <= TARGET_OVERHEAD if sec else None,
            "phases": _phase_usage(phases),
            "loop_time_s": rec.get("time_s"), "steps": rec.get("steps"), "valid": rec.get("valid"),
            "record": rec,
            "t0": cfg.env.t0, "episodes": cfg.loop.episodes, "image_size": cfg.env.image_size,
            "top_self_time": top_rows, "machine": machine_info()}


def markdown_one(res: dict) -> list[str]:
    lines = [f"One iteration of `{res['preset']}` ({res['agent']}, T0={res['t0']}, "
             f"E={res['episodes']}, {res['image_size']}px, {res['steps']} env steps, "
             f"{res['valid']} valid, allocator {res['machine'].get('allocator')}): "
             f"**{res['iteration_s']:.1f} s**" + (", profiled with cProfile." if res["profiled"]
                                                  else ", not profiled."), ""]
    if res["seconds"]:
        unit = "CPU seconds" if res.get("timer") == "cpu" else "seconds"
        lines += [f"| category | {unit} | fraction |", "|---|---|---|"]
        for k, v in sorted(res["seconds"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.2f} | {100 * res['fractions'][k]:.1f}% |")
        lines += ["", f"Framework overhead {100 * res['overhead_fraction']:.1f}% "
                  f"(target ≤ {100 * res['target_overhead']:.0f}%: "
                  f"**{'met' if res['meets_target'] else 'not met'}**)."]
    lines += ["", "| phase | wall s | user s | system s | minor faults | threads | CPU s by "
              "thread |", "|---|---|---|---|---|---|---|"]
    for k, r in res["phases"].items():
        by = ", ".join(f"{n} {v:.1f}" for n, v in sorted(r.get("thread_cpu_s", {}).items(),
                                                           key=lambda kv: -kv[1]) if v >= 0.05)
        lines.append(f"| {k} | {r['wall_s']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
                     f"{r['minflt'] / 1e3:.0f} k | {r['threads']} | {by} |")
    return lines


def table(res: dict, out: Path) -> list[str]:
    """The allocators side by side, each one's breakdown, and the comparison with `BEFORE`
    when that file lies beside `out`."""
    return markdown(res) + before_note(res, out.with_name(BEFORE))


def before_note(res: dict, path: Path) -> list[str]:
    """A paragraph comparing `res` with the earlier measurement at `path` (none if absent)."""
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    sb, fb = before["seconds"], before["fractions"]
    return ["", f"Before the frozen-prefix evaluation cache (same preset, same machine, "
                f"[{path.name}]({path.name})): "
                f"{before['iteration_s']:.1f} s per iteration, evaluation "
                f"{sb['evaluation']:.1f} s ({100 * fb['evaluation']:.1f}%) — then the "
                f"largest category; validation + test phases "
                f"{before['loop_time_s']['validate'] + before['loop_time_s']['test']:.1f} s "
                f"vs {res['loop_time_s']['validate'] + res['loop_time_s']['test']:.1f} s now. "
                "Absolute seconds depend on the machine's load at the time "
                f"(load average {before['machine']['loadavg'][0]:.1f} before, "
                f"{res['machine']['loadavg'][0]:.1f} now)."]


def markdown(res: dict) -> list[str]:
    if len(res.get("runs", {})) < 2:
        return markdown_one(res)
    names = list(res["runs"])
    lines = ["Side by side (child processes, same config and seed; whole process from wait4):", "",
             "| allocator | iteration s | process wall s | user s | system s | minor faults | "
             "load before→after |", "|---|---|---|---|---|---|---|"]
    for a in names:
        r, p = res["runs"][a], res["process"][a]
        lines.append(f"| {a} | {r['iteration_s']:.1f} | {p['wall_s']:.1f} | {p['user_s']:.1f} | "
                     f"{p['sys_s']:.1f} | {p['minflt'] / 1e6:.2f} M | "
                     f"{p['loadavg_before'][0]:.1f}→{p['loadavg_after'][0]:.1f} |")
    if "speedup" in res:
        lines += ["", f"Iteration speed-up of {names[0]} over {names[1]}: "
                  f"**×{res['speedup']:.2f}**; metrics identical apart from timings: "
                  f"**{res['identical_metrics']}**."]
    for a in names:
        lines += ["", f"### {a}", ""] + markdown_one(res["runs"][a])
    return lines


def figures(res: dict, out: Path) -> list[Path]:
    """The share of one iteration per category: `out`'s name with _breakdown.png."""
    if not res.get("fractions"):
        return []
    plt = pyplot()
    items = sorted(res["fractions"].items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.barh([k for k, _ in items][::-1], [100 * v for _, v in items][::-1],
            color=["tab:red" if k == "overhead" else "tab:blue" for k, _ in items][::-1])
    ax.axvline(100 * res["target_overhead"], color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("% of one iteration")
    ax.set_title(f"Where one iteration goes ({res['iteration_s']:.1f} s, "
                 f"{res['preset']}, {res['agent']})")
    return [save_figure(fig, out.with_name(f"{out.stem}_breakdown.png"), res)]


if __name__ == "__main__":
    sys.exit(main(__name__))
