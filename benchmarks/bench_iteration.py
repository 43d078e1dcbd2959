"""Before/after: the same `rls3 run` (preset, seed, config) under two code versions side by side.

    python benchmarks/bench_iteration.py --before 0bcce61 [--preset quick] [--iterations 2]
        [--set KEY=VALUE ...] [--repeats 1] [--out benchmarks/results/iteration.json]
    python benchmarks/bench_iteration.py --after-set KEY=VALUE ... [--no-system]

With `--after-set` this checkout also runs with those settings on top (an option against the
default, side by side); without `--before` only this checkout runs; `--no-system` skips the
system-malloc run.

Runs `rls3 run` as child processes, interleaved: the code at git revision `--before` (checked out
into a temporary worktree, under glibc malloc unless `--before-allocator tcmalloc`), this checkout
under its default allocator (tcmalloc where installed) and this checkout with
``RLS3_ALLOCATOR=system`` (what the allocator alone explains). Each child's user/system CPU and
page faults come from wait4. Fixed sets and the pre-trained SAC come from the shared caches, so
every run starts from the same data and agent. Reports each run's per-iteration phase times
(metrics `time_s`), the speed-up of the iterations and whether metrics.jsonl is identical apart
from timings.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, git_worktree, machine_info, main, overrides, run_child

from rls3.rundir import read_metrics, without_timings

OUT = "iteration.json"


def _comparable(recs: list[dict]) -> list[dict]:
    return [without_timings(r) for r in recs]


def _variants(a: argparse.Namespace, tree: Path | None
              ) -> dict[str, tuple[Path, str, list[str]]]:
    """name -> (code root, RLS3_ALLOCATOR, extra `--set` arguments)."""
    out: dict[str, tuple[Path, str, list[str]]] = {}
    if tree is not None:
        out[f"before ({a.before}, {a.before_allocator})"] = (tree, a.before_allocator, [])
    out["after (tcmalloc)"] = (ROOT, "tcmalloc", [])
    if not a.no_system:
        out["after (system malloc)"] = (ROOT, "system", [])
    if a.after_sets:
        out["after (tcmalloc) + " + " ".join(a.after_sets)] = (
            ROOT, "tcmalloc", [x for kv in a.after_sets for x in ("--set", kv)])
    return out


def _settings(preset_name: str, changed: dict) -> list[str]:
    """The run's settings as `--preset` and `--set` arguments: only what differs from the preset,
    so that code older than a new config key still reads them."""
    import yaml

    args = ["--preset", preset_name]
    for k, v in changed.items():
        text = yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip()
        args += ["--set", f"{k}={text}"]
    return args


def _run(code: Path, allocator_name: str, settings: list[str], run_dir: Path) -> dict:
    """One `rls3 run` of the code at `code` (LD_PRELOAD is set here too, for code that predates
    rls3.runtime)."""
    from rls3 import runtime

    extra = {"PYTHONPATH": str(code)}
    if allocator_name == "tcmalloc":
        lib = runtime.find_tcmalloc()
        if lib is None:
            raise SystemExit("tcmalloc is not installed here; run setup.sh as root")
        extra["LD_PRELOAD"] = lib
    cmd = [sys.executable, "-m", "rls3.cli", "run", *settings, "--run-dir",
           str(run_dir), "--no-report", "-q"]
    proc = run_child(cmd, allocator_name, cwd=code, extra_env=extra)
    recs = read_metrics(run_dir)
    return {"process": proc, "records": recs,
            "iteration_time_s": [r["time_s"] for r in recs if r.get("iteration", 0) >= 1]}


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--before", help="git revision of the 'before' code (none: this checkout "
                    "only)")
    ap.add_argument("--before-allocator", default="system", choices=("system", "tcmalloc"))
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--after-set", dest="after_sets", action="append", default=[],
                    metavar="KEY=VALUE", help="also run this checkout with these settings")
    ap.add_argument("--no-system", action="store_true", help="skip the system-malloc run")


def run(a: argparse.Namespace) -> dict:
    from rls3.config import preset

    changed = {"loop.iterations": a.iterations, "early_stopping.enabled": False,
               "progress": False, "seed": a.seed, **overrides(a.sets)}
    preset(a.preset).override(changed).resolved()       # a bad setting fails here, once
    preset(a.preset).override({**changed, **overrides(a.after_sets)}).resolved()
    res: dict = {"benchmark": "iteration", "before": a.before, "preset": a.preset,
                 "overrides": changed, "after_sets": a.after_sets, "machine": machine_info(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="rls3-bench-iter-") as tmp_dir:
        tmp = Path(tmp_dir)
        with contextlib.ExitStack() as stack:
            tree = (stack.enter_context(git_worktree(a.before, tmp / "before"))
                    if a.before else None)
            settings = _settings(a.preset, {**changed, "runs_dir": str(tmp / "runs")})
            variants = _variants(a, tree)
            for rep in range(a.repeats):
                order = list(variants) if rep % 2 == 0 else list(reversed(variants))
                for name in order:
                    code, alloc, extra = variants[name]
                    print(f"[{rep + 1}/{a.repeats}] {name} ...", flush=True)
                    out = _run(code, alloc, settings + extra,
                               tmp / f"run-{rep}-{order.index(name)}")
                    res["runs"].setdefault(name, []).append(out)
    names = list(res["runs"])
    ref = _comparable(res["runs"][names[0]][0]["records"])
    res["identical_metrics"] = {n: all(_comparable(r["records"]) == ref for r in runs)
                                for n, runs in res["runs"].items()}
    res["iteration_s"] = {n: statistics.median(sum(t["total"] for t in r["iteration_time_s"])
                                               for r in runs)
                          for n, runs in res["runs"].items()}
    base = res["iteration_s"][names[0]]
    res["speedup"] = {n: base / v for n, v in res["iteration_s"].items()}
    res["machine_after"] = machine_info()
    return res


def table(res: dict, out: Path) -> list[str]:
    lines = [f"`{res['preset']}`, {res['overrides']['loop.iterations']} iterations, seed "
             f"{res['overrides']['seed']}, each a child process, side by side:", "",
             "| code | iterations s | speed-up | identical metrics | process user s | system s | "
             "minor faults | phases (s, first repeat) |", "|---|---|---|---|---|---|---|---|"]
    for n, runs in res["runs"].items():
        p = runs[0]["process"]
        phases: dict[str, float] = {}
        for t in runs[0]["iteration_time_s"]:
            for k, v in t.items():
                if k != "total":
                    phases[k] = phases.get(k, 0.0) + v
        lines.append(f"| {n} | {res['iteration_s'][n]:.1f} | ×{res['speedup'][n]:.2f} | "
                     f"{res['identical_metrics'][n]} | {p['user_s']:.0f} | {p['sys_s']:.0f} | "
                     f"{p['minflt'] / 1e6:.2f} M | "
                     + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main(__name__))
