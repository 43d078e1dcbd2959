"""Data efficiency: VLM test score vs generated data for random, SAC with the paper's episode
feedback and SAC with per-sample feedback, with the hardness of what each generates.

    python benchmarks/bench_data_efficiency.py [--seeds 0,1,2] [--parallel 2] [--preset quick]
        [--agents random,sac,sac-sample] [--set KEY=VALUE ...] [--runs-dir runs/comparison]
        [--out benchmarks/results/comparison]

Every (agent, seed) is one `rls3 run` of the preset (the same iterations, early-stopping rules
and VLM); the agents differ only in how the data is generated:
  random      uniform actions, ignoring every reward (its hardness is still recorded)
  sac         the preset's SAC with `loop.feedback=episode`, `loop.reward_norm=none`, beta = 10
              (the paper's J2 reward on each episode's completing step)
  sac-sample  the preset's SAC with `loop.feedback=sample`, `loop.reward_norm=running`, beta = 1
              (each valid step rewarded with its own standardised hardness)
Both SAC variants share one pre-trained agent per seed (the cache key does not include the
feedback). Runs go in parallel (`--parallel`), each on one torch thread. The runs' report
(report.md + the PNGs of `rls3.plots`) and `comparison.json` go to `--out`: per agent the final
test score, yield (all and distinct layouts), hardness per iteration, and the answer to "does a
SAC variant reach random's final test score with <= 60% of random's generated data (env steps)?".
`--from-runs DIR ...` only writes the report and summary of finished runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, command_line, ints, machine_info, main, names, stamp_markdown

OUT = "comparison"
RESULT = "comparison.json"

RLS3 = [sys.executable, "-m", "rls3.cli"]
#: agent label -> `rls3 run` arguments
AGENTS: dict[str, list[str]] = {
    "random": ["--agent", "random"],
    "sac": ["--agent", "sac", "--set", "loop.feedback=episode", "--set", "loop.reward_norm=none",
            "--set", "loop.beta=10"],
    "sac-sample": ["--agent", "sac", "--set", "loop.feedback=sample",
                   "--set", "loop.reward_norm=running", "--set", "loop.beta=1"],
}
#: a SAC variant "reaches random with less data" when it matches random's final test score
#: within this share of random's generated steps (the issue's question)
DATA_SHARE = 0.6


def _run_one(args: list[str], log_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        subprocess.run(RLS3 + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)


def _job(agent: str, seed: int, preset: str, sets: list[str], runs_dir: Path) -> Path:
    """One `rls3 run` of `agent` on `seed`; returns its run directory."""
    args = ["run", "-q", "--preset", preset, "--seed", str(seed), "--no-report",
            "--set", "progress=false", "--set", "agent.torch_threads=1", *AGENTS[agent]]
    for s in sets:
        args += ["--set", s]
    d = runs_dir / f"{preset}__{agent}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _run_one(args + ["--run-dir", str(d)], runs_dir / f"{agent}_{seed}.log")
    return d


def _label(d: Path) -> str:
    from rls3.rundir import load_run_config
    from rls3.plots import agent_label

    cfg = load_run_config(d)
    return agent_label(cfg.agent.name, cfg.loop.feedback)


def summarize(run_dirs: list[Path]) -> dict:
    """Per agent: scores, yields, hardness per iteration (mean/std over seeds) and the
    data-efficiency answer against random."""
    import numpy as np

    from rls3.rundir import load_run_config, read_metrics

    per: dict[str, list[dict]] = {}
    for d in run_dirs:
        cfg = load_run_config(d)
        recs = read_metrics(d)
        if not recs:
            continue
        base, last = recs[0], recs[-1]
        it = [r for r in recs if r.get("iteration", 0) > 0]
        per.setdefault(_label(d), []).append({
            "run": d.name, "seed": cfg.seed, "iterations": last.get("iteration"),
            "cum_steps": last.get("cum_steps"), "cum_valid": last.get("cum_valid"),
            "yield": last.get("cum_yield"),
            "yield_distinct": sum(r.get("distinct") or 0 for r in it) / last["cum_steps"]
            if last.get("cum_steps") else None,
            "move_median": float(np.median([r["move_median"] for r in it
                                            if r.get("move_median") is not None]))
            if any(r.get("move_median") is not None for r in it) else None,
            "test0": (base.get("test") or {}).get("score"),
            "test": (last.get("test") or {}).get("score"),
            "test_max": max((r.get("test") or {}).get("score", float("nan")) for r in recs),
            "curve": [[r.get("cum_steps"), (r.get("test") or {}).get("score")] for r in recs],
            "hardness": [r.get("hardness_mean") for r in it],
            "elapsed_s": last.get("elapsed_s"), "stop": last.get("stop_reason")})
    out: dict = {"runs": per, "agents": {}}
    for agent, rows in per.items():
        agg: dict = {}
        for k in ("cum_steps", "cum_valid", "yield", "yield_distinct", "move_median", "test0",
                  "test", "test_max", "iterations", "elapsed_s"):
            v = [float(r[k]) for r in rows if r.get(k) is not None]
            agg[k] = {"mean": float(np.mean(v)), "std": float(np.std(v))} if v else None
        n_it = max(len(r["hardness"]) for r in rows)
        h = np.full((len(rows), n_it), np.nan)
        for i, r in enumerate(rows):
            h[i, :len(r["hardness"])] = [np.nan if x is None else x for x in r["hardness"]]
        with np.errstate(all="ignore"):
            agg["hardness_per_iteration"] = {
                "mean": [None if np.isnan(x) else float(x) for x in np.nanmean(h, axis=0)],
                "std": [None if np.isnan(x) else float(x) for x in np.nanstd(h, axis=0)]}
        agg["n"] = len(rows)
        out["agents"][agent] = agg
    out["answer"] = _answer(out)
    return out


def _answer(summary: dict) -> dict:
    """Does a SAC variant reach random's mean final test score with <= DATA_SHARE of random's
    mean generated steps? And is its hardness above random's in the later iterations?"""
    import numpy as np

    agents = summary["agents"]
    if "random" not in agents or not agents["random"].get("test"):
        return {}
    target = agents["random"]["test"]["mean"]
    budget = agents["random"]["cum_steps"]["mean"]
    res: dict = {"random_final_test": target, "random_steps": budget, "share": DATA_SHARE}
    rh = agents["random"]["hardness_per_iteration"]
    for agent, rows in summary["runs"].items():
        if agent == "random":
            continue
        reach = []
        for r in rows:   # steps at the first iteration whose test score reaches random's final
            hit = next((s for s, t in r["curve"][1:] if t is not None and t >= target), None)
            reach.append(hit)
        got = [x for x in reach if x is not None]
        ah = agents[agent]["hardness_per_iteration"]
        n = min(len(ah["mean"]), len(rh["mean"]))
        later = range(n // 2, n)
        above = [i + 1 for i in later
                 if None not in (ah["mean"][i], rh["mean"][i], ah["std"][i], rh["std"][i])
                 and ah["mean"][i] - rh["mean"][i] > max(ah["std"][i], rh["std"][i])]
        res[agent] = {
            "steps_to_reach": reach,
            "seeds_reaching": len(got),
            "mean_share_of_random_steps": float(np.mean(got)) / budget if got else None,
            "reaches_within_share": bool(len(got) == len(reach) and
                                         max(got) <= DATA_SHARE * budget) if got else False,
            "later_iterations": [i + 1 for i in later],
            "later_iterations_harder_than_random_by_1std": above,
        }
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--parallel", type=int, default=2, help="seeds run side by side")
    ap.add_argument("--agents", default=",".join(AGENTS), help=f"subset of {list(AGENTS)}")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "comparison")
    ap.add_argument("--from-runs", nargs="+", type=Path, default=None,
                    help="only (re)write the report and summary of these finished run dirs")


def run(args: argparse.Namespace) -> dict:
    if args.from_runs:
        return report(args.from_runs, args.out)
    return measure(ints(args.seeds), args.preset, args.sets, args.runs_dir, args.out,
                   args.parallel, agents=tuple(names(args.agents)))


def table(summary: dict, out: Path) -> list[str]:
    return markdown_table(summary) + ["", f"Full report with all figures: "
                                          f"[{out.name}/report.md]({out.name}/report.md)."]


def figures(summary: dict, out: Path) -> list[Path]:
    """The report's test score against generated data and its yield figure (drawn with the
    report, from the run directories)."""
    return [p for p in (out / "fig5_score_vs_data.png", out / "yield.png") if p.is_file()]


def markdown_table(summary: dict) -> list[str]:
    def ms(a: dict | None, d: int = 3) -> str:
        return "-" if not a else f"{a['mean']:.{d}f} ± {a['std']:.{d}f}"

    lines = ["| agent | runs | generated (steps) | valid frames | yield | yield (distinct) | "
             "median move (m) | test before | test after | best test | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for agent, a in sorted(summary["agents"].items()):
        lines.append(f"| {agent} | {a['n']} | {ms(a['cum_steps'], 0)} | {ms(a['cum_valid'], 0)} | "
                     f"{ms(a['yield'], 3)} | {ms(a.get('yield_distinct'), 3)} | "
                     f"{ms(a.get('move_median'), 3)} | {ms(a['test0'])} | {ms(a['test'])} | "
                     f"{ms(a['test_max'])} | {ms(a['elapsed_s'], 0)} |")
    lines += ["", "Hardness of the generated samples per iteration (mean ± std over seeds):", "",
              "| agent | " + " | ".join(f"it {i + 1}" for i in range(max(
                  len(a["hardness_per_iteration"]["mean"]) for a in summary["agents"].values())))
              + " |"]
    lines.append("|---" * (1 + len(lines[-1].split("|")) - 3) + "|")
    for agent, a in sorted(summary["agents"].items()):
        h = a["hardness_per_iteration"]
        lines.append(f"| {agent} | " + " | ".join(
            "-" if m is None else f"{m:.3f} ± {s:.3f}" for m, s in zip(h["mean"], h["std"], strict=True))
            + " |")
    ans = summary.get("answer") or {}
    if ans:
        lines += ["", f"Random's final test score {ans['random_final_test']:.3f} after "
                      f"{ans['random_steps']:.0f} generated steps (mean over seeds)."]
        for agent, a in ans.items():
            if not isinstance(a, dict):
                continue
            share = a["mean_share_of_random_steps"]
            lines.append(
                f"- {agent}: {a['seeds_reaching']}/{len(a['steps_to_reach'])} seeds reach it"
                + (f", after {100 * share:.0f}% of random's steps on average" if share else "")
                + f"; within {100 * ans['share']:.0f}%: "
                f"**{'yes' if a['reaches_within_share'] else 'no'}**. Later iterations "
                f"{a['later_iterations']}: hardness above random's by more than one std in "
                f"{a['later_iterations_harder_than_random_by_1std'] or 'none'}.")
    return lines


def measure(seeds: list[int], preset: str = "quick", sets: list[str] | None = None,
            runs_dir: Path = ROOT / "runs" / "comparison",
            out: Path = ROOT / "benchmarks" / "results" / "comparison", parallel: int = 2,
            agents: tuple[str, ...] = tuple(AGENTS)) -> dict:
    """Run every (agent, seed) and write the report into `out`; returns the summary. A seed's
    SAC variants run one after the other (the first pre-trains, the second reuses its cache)."""
    sets = list(sets or [])
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise SystemExit(f"unknown agents {unknown}; known: {list(AGENTS)}")
    t = time.perf_counter()

    def stream(seed: int) -> list[Path]:
        return [_job(a, seed, preset, sets, Path(runs_dir)) for a in agents]

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as ex:
        dirs = [d for ds in ex.map(stream, seeds) for d in ds]
    wall = time.perf_counter() - t
    return report(dirs, out, {"preset": preset, "sets": sets, "seeds": seeds,
                              "agent_variants": list(agents), "parallel": parallel,
                              "wall_s": wall})


def report(dirs: list[Path], out: Path, extra: dict | None = None) -> dict:
    """The report of finished run directories in `out` (report.md, stamped with this command
    line, and its figures); returns the summary (`main` writes it as comparison.json)."""
    from rls3.report import write_report

    out = Path(out)
    path = write_report(dirs, out)
    summary = summarize(dirs)
    summary.update({"benchmark": "data_efficiency", **(extra or {}),
                    "run_dirs": [str(d) for d in dirs], "machine": machine_info(),
                    "command": command_line()})
    text = path.read_text()
    path.write_text(stamp_markdown(summary["machine"], summary["command"]) + "\n" + text)
    return summary


if __name__ == "__main__":
    sys.exit(main(__name__))
