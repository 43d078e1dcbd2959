"""The default `rls3 run` from a fresh runs folder (fixed sets, SAC pre-training, every iteration,
the report), under the code at `--before` and under this checkout, one after the other in one
run, with a per-phase table: wall, CPU (share of the machine's cores) and peak RSS.

    python benchmarks/bench_run.py --before ecc58e8 [--preset quick] [--set KEY=VALUE ...]
        [--after-set KEY=VALUE ...] [--out benchmarks/results/run.json]

With `--after-set` this checkout runs a second time with those settings on top (an option
against the default, same code); `--before` may then be left out. Ratios are last / first.

Each variant runs `rls3 run --preset P --run-dir ...` (the `rls3` command's own allocator set-up,
nothing shared: each builds its sets and pre-trains its agent). A sampler reads /proc every
0.5 s: RSS and CPU time summed over the child's process tree (scene workers, renderers). Phases
are cut at log lines both versions print: the test set ready, SAC pre-trained, iteration 0
evaluated, the last iteration done, exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, git_worktree, machine_info, main, overrides

from rls3.rundir import read_metrics

OUT = "run.json"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

#: (phase, regex of the log line that ends it), in order; the last phase ends at exit
PHASES = [("data sets", re.compile(r"rls3\.loop: test set: ")),
          ("SAC pre-training",
           re.compile(r"rls3\.(agents|pretraining): (pre-trained SAC|reusing the pre)")),
          ("iteration 0 (load VLM, evaluate)", re.compile(r"rls3\.loop: iteration 0 ")),
          ("iterations", None),   # ends at the last "iteration N:" line
          ("report, exit", None)]
ITERATION = re.compile(r"rls3\.loop: iteration (\d+): ")


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--before", default=None, help="git revision of the 'before' code")
    ap.add_argument("--after-set", dest="after_sets", action="append", default=[],
                    metavar="KEY=VALUE", help="also run this checkout with these settings")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")


def _tree(root: int) -> list[int]:
    """`root` and its live descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _usage(pids: list[int]) -> tuple[float, float]:
    """(RSS MB, CPU s) summed over `pids` (a process's CPU includes its waited-for children)."""
    rss = cpu = 0.0
    for p in pids:
        try:
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            f = Path(f"/proc/{p}/stat").read_text()
            f = f[f.rindex(")") + 2:].split()
            cpu += sum(int(x) for x in f[11:15]) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return rss / 2**20, cpu


def _run(code: Path, cmd: list[str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run `cmd` (the code at `code`) in the empty folder `cwd`; samples (t, RSS MB, CPU s) and
    timed stderr lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RLS3_ALLOCATOR")}
    env["PYTHONPATH"] = str(code)
    t0 = time.perf_counter()
    cwd.mkdir(parents=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    lines: list[tuple[float, str]] = []
    samples: list[tuple[float, float, float]] = []
    cpu_seen = 0.0      # a child's CPU leaves the sum when it exits: keep the largest seen

    def pump() -> None:
        assert proc.stderr is not None
        with log.open("w") as f:
            for line in proc.stderr:
                lines.append((time.perf_counter() - t0, line.rstrip()))
                f.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        rss, cpu = _usage(_tree(proc.pid))
        cpu_seen = max(cpu_seen, cpu)
        samples.append((time.perf_counter() - t0, rss, cpu_seen))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"rls3 run failed (exit {proc.returncode}) in {code}; see {log}")
    return {"wall_s": wall, "samples": samples, "lines": lines}


def _phases(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Per phase: wall s, CPU s, CPU share of the cores, peak RSS MB."""
    cuts: list[tuple[float, str]] = []
    lines = out["lines"]
    for name, pattern in PHASES[:3]:
        assert pattern is not None
        hit = next((t for t, line in lines if pattern.search(line)), None)
        cuts.append((hit if hit is not None else (cuts[-1][0] if cuts else 0.0), name))
    # pre-training in a background process ends after iteration 0: phases in the order they end
    cuts.sort(key=lambda c: c[0])
    its = [t for t, line in lines if ITERATION.search(line)]
    cuts.append((its[-1] if its else cuts[-1][0], PHASES[3][0]))
    cuts.append((out["wall_s"], PHASES[4][0]))
    cores = os.cpu_count() or 1
    rows, start = [], 0.0
    for end, name in cuts:
        window = [s for s in out["samples"] if start <= s[0] <= end]
        cpu = (window[-1][2] - window[0][2]) if len(window) > 1 else 0.0
        span = (window[-1][0] - window[0][0]) if len(window) > 1 else 0.0
        rows.append({"phase": name, "wall_s": end - start, "cpu_s": cpu,
                     "cpu_share": cpu / (span * cores) if span > 0 else None,
                     "peak_rss_mb": max((s[1] for s in window), default=None)})
        start = end
    return rows


def run(a: argparse.Namespace) -> dict:
    if a.before is None and not a.after_sets:
        raise SystemExit("give --before REV, --after-set KEY=VALUE or both")
    sets = overrides(a.sets)
    overrides(a.after_sets)  # a malformed one fails here, not after the first run
    res: dict[str, Any] = {"benchmark": "run", "before": a.before, "preset": a.preset,
                           "overrides": sets, "after_sets": a.after_sets,
                           "machine": machine_info(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="rls3-bench-run-") as tmp_dir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        variants: list[tuple[str, Path, list[str]]] = []
        if a.before is not None:
            tree = stack.enter_context(git_worktree(a.before, tmp / "before"))
            variants.append((f"before ({a.before})", tree, []))
        variants.append(("after", ROOT, []))
        if a.after_sets:
            variants.append(("after + " + " ".join(a.after_sets), ROOT, a.after_sets))
        for name, code, extra in variants:
            cwd = tmp / f"cwd-{len(res['runs'])}"       # its data/ and runs/ start empty
            run_dir = cwd / "runs" / "run"
            cmd = [sys.executable, "-m", "rls3.cli", "run", "--preset", a.preset,
                   "--run-dir", str(run_dir), "--set", "progress=false"]
            for kv in [*a.sets, *extra]:
                cmd += ["--set", kv]
            print(f"{name} ...", flush=True)
            out = _run(code, cmd, cwd, tmp / f"{len(res['runs'])}.log")
            recs = read_metrics(run_dir)
            res["runs"][name] = {
                "wall_s": out["wall_s"], "phases": _phases(out),
                "peak_rss_mb": max(s[1] for s in out["samples"]),
                "cpu_s": out["samples"][-1][2] if out["samples"] else None,
                "test": [r["test"]["score"] for r in recs if r.get("test")],
                "val": [r["val"]["score"] for r in recs if r.get("val")],
                "iteration_time_s": [r["time_s"] for r in recs],
                "rss_series": [(round(t, 1), round(m)) for t, m, _ in out["samples"]]}
    runs = list(res["runs"].values())
    b, f = runs[0], runs[-1]
    res["wall_ratio"] = f["wall_s"] / b["wall_s"]
    res["peak_rss_ratio"] = f["peak_rss_mb"] / b["peak_rss_mb"]
    res["machine_after"] = machine_info()
    return res


def table(res: dict, out: Path) -> list[str]:
    names = list(res["runs"])
    lines = [f"`rls3 run --preset {res['preset']}` from a fresh runs folder, "
             f"{' then '.join(names)}, one after the other:", "",
             "| phase | " + " | ".join(f"{n}: wall s / CPU % of cores / peak RSS MB"
                                      for n in names) + " |",
             "|---|" + "---|" * len(names)]
    g = lambda x, fmt: "-" if x is None else format(x, fmt)  # noqa: E731
    cores = res["machine"].get("cpus") or 1
    for ph in res["runs"][names[0]]["phases"]:  # a phase is what ends at its log line
        cells = []
        for n in names:
            p = next(q for q in res["runs"][n]["phases"] if q["phase"] == ph["phase"])
            share = None if p["cpu_share"] is None else 100 * p["cpu_share"]
            cells.append(f"{p['wall_s']:.0f} / {g(share, '.0f')} / "
                         f"{g(p['peak_rss_mb'], '.0f')}")
        lines.append(f"| {ph['phase']} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        r = res["runs"][n]
        share = None if r["cpu_s"] is None else 100 * r["cpu_s"] / (r["wall_s"] * cores)
        cells.append(f"**{r['wall_s']:.0f}** / {g(share, '.0f')} / **{r['peak_rss_mb']:.0f}**")
    lines.append("| **whole run** | " + " | ".join(cells) + " |")
    for n in names:
        order = [p["phase"] for p in res["runs"][n]["phases"]]
        if order != [p["phase"] for p in res["runs"][names[0]]["phases"]]:
            lines.append(f"\n{n}: phases in the order they ended: {', '.join(order)} (SAC "
                         f"pre-training in a background process; its row is the wait for it).")
    lines.append(f"\nWall last / first: **{res['wall_ratio']:.2f}**; peak RSS last / first: "
                 f"**{res['peak_rss_ratio']:.2f}**. Test score per iteration: " + "; ".join(
                     f"{n}: " + " ".join(f"{t:.3f}" for t in res["runs"][n]["test"])
                     for n in names) + ".")
    return lines


def figures(res: dict, out: Path) -> list[Path]:
    """RSS over time of each run: `out` with .png."""
    from _common import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for n, r in res["runs"].items():
        t, m = zip(*r["rss_series"], strict=True) if r["rss_series"] else ((), ())
        ax.plot(t, [x / 1024 for x in m], label=n)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS of the process tree (GiB)")
    ax.legend()
    path = Path(out).with_suffix(".png")
    save_figure(fig, path, res)
    return [path]


if __name__ == "__main__":
    sys.exit(main(__name__))
