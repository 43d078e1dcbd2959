"""Data efficiency: VLM test score vs cumulative generated data, SAC against random at equal budgets.

    python benchmarks/bench_data_efficiency.py [--seeds 0,1,2] [--parallel 3] [--preset quick]
        [--set KEY=VALUE ...] [--runs-dir runs/comparison] [--out benchmarks/results/comparison]

For every seed: `rls3 run --agent sac --seed S`, then `rls3 run --agent random --seed S
--budget-from <that SAC run>` (the random run generates as many samples, i.e. env steps, as the SAC
run of the same seed). Seeds run as parallel streams (`--parallel`), each process on one torch
thread. The runs' report (report.md + the PNGs of `rls3.plots`, not the runs' heavy data) goes to
`--out`, with a `comparison.json` summary (per agent: final test score, yield, generated samples,
mean ± std over seeds). This is issue 5's committed SAC-vs-random comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, stamp_markdown, write_json  # noqa: E402

RLS3 = [sys.executable, "-m", "rls3.cli"]


def _run_one(args: list[str], log_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        subprocess.run(RLS3 + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)


def _stream(seed: int, preset: str, sets: list[str], runs_dir: Path) -> dict[str, str]:
    """SAC run, then the random run on its budget; returns both run directories."""
    common = ["run", "-q", "--preset", preset, "--seed", str(seed), "--no-report",
              "--set", "progress=false", "--set", "agent.torch_threads=1"]
    for s in sets:
        common += ["--set", s]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sac = runs_dir / f"{preset}__sac__{seed}__{stamp}"
    rnd = runs_dir / f"{preset}__random__{seed}__{stamp}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _run_one(common + ["--agent", "sac", "--run-dir", str(sac)], runs_dir / f"sac_{seed}.log")
    _run_one(common + ["--agent", "random", "--budget-from", str(sac), "--run-dir", str(rnd)],
             runs_dir / f"random_{seed}.log")
    return {"sac": str(sac), "random": str(rnd)}


def summarize(run_dirs: list[Path]) -> dict:
    """Per agent: final test score, test at best validation, yield, generated samples (mean/std)."""
    import numpy as np

    from rls3.loop import load_run_config, read_metrics

    per: dict[str, list[dict]] = {}
    for d in run_dirs:
        cfg = load_run_config(d)
        recs = read_metrics(d)
        if not recs:
            continue
        base, last = recs[0], recs[-1]
        per.setdefault(cfg.agent.name, []).append({
            "run": d.name, "seed": cfg.seed, "iterations": last.get("iteration"),
            "cum_steps": last.get("cum_steps"), "cum_valid": last.get("cum_valid"),
            "yield": last.get("cum_yield"), "test0": (base.get("test") or {}).get("score"),
            "test": (last.get("test") or {}).get("score"),
            "test_max": max((r.get("test") or {}).get("score", float("nan")) for r in recs),
            "elapsed_s": last.get("elapsed_s"), "stop": last.get("stop_reason")})
    out: dict = {"runs": per, "agents": {}}
    for agent, rows in per.items():
        agg = {}
        for k in ("cum_steps", "cum_valid", "yield", "test0", "test", "test_max", "iterations",
                  "elapsed_s"):
            v = [float(r[k]) for r in rows if r.get(k) is not None]
            agg[k] = {"mean": float(np.mean(v)), "std": float(np.std(v))} if v else None
        agg["n"] = len(rows)
        out["agents"][agent] = agg
    return out


def markdown_table(summary: dict) -> list[str]:
    def ms(a: dict | None, d: int = 3) -> str:
        return "-" if not a else f"{a['mean']:.{d}f} ± {a['std']:.{d}f}"

    lines = ["| agent | runs | generated (steps) | valid frames | yield | test before | "
             "test after | best test | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for agent, a in sorted(summary["agents"].items()):
        lines.append(f"| {agent} | {a['n']} | {ms(a['cum_steps'], 0)} | {ms(a['cum_valid'], 0)} | "
                     f"{ms(a['yield'], 3)} | {ms(a['test0'])} | {ms(a['test'])} | "
                     f"{ms(a['test_max'])} | {ms(a['elapsed_s'], 0)} |")
    return lines


def run(seeds: list[int], preset: str = "quick", sets: list[str] | None = None,
        runs_dir: Path = ROOT / "runs" / "comparison", out: Path = ROOT / "benchmarks" / "results"
        / "comparison", parallel: int = 3, command: str = "") -> dict:
    """Run the streams, write the report and comparison.json into `out`; returns the summary."""
    sets = list(sets or [])
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as ex:
        streams = list(ex.map(lambda s: _stream(s, preset, sets, Path(runs_dir)), seeds))
    wall = time.perf_counter() - t
    dirs = [Path(s[k]) for s in streams for k in ("sac", "random")]
    return finish(dirs, out, command, {"preset": preset, "sets": sets, "seeds": seeds,
                                       "parallel": parallel, "wall_s": wall})


def finish(dirs: list[Path], out: Path, command: str = "", extra: dict | None = None) -> dict:
    """Report + comparison.json for finished run directories (also usable on its own)."""
    from rls3.report import write_report

    out = Path(out)
    report = write_report(dirs, out)
    summary = summarize(dirs)
    summary.update({"benchmark": "data_efficiency", **(extra or {}),
                    "run_dirs": [str(d) for d in dirs], "machine": machine_info(),
                    "command": command or " ".join(sys.argv)})
    write_json(out / "comparison.json", summary)
    text = report.read_text()
    report.write_text(stamp_markdown(summary["machine"], summary["command"]) + "\n" + text)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "comparison")
    ap.add_argument("--from-runs", nargs="+", type=Path, default=None,
                    help="only (re)write the report and summary of these finished run dirs")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s]
    if a.from_runs:
        summary = finish(a.from_runs, a.out, command="python " + " ".join(sys.argv))
        print("\n".join(markdown_table(summary)))
        return
    summary = run(seeds, a.preset, a.sets, a.runs_dir, a.out, a.parallel,
                  command="python " + " ".join(sys.argv))
    print("\n".join(markdown_table(summary)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
