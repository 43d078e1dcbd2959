"""Does the agent's data teach the VLM more than random data, in the loop and as a dataset?
Paired seeds, the paper's set sizes, every variant against random.

    python benchmarks/bench_sampler.py [--seeds 0,1,2,3,4] [--variants random,sac,...]
        [--parallel 2] [--runs-dir runs/sampler] [--data-dir data/sampler]
        [--val-size 500] [--test-size 1000] [--data-seed 1] [--no-value]
        [--out benchmarks/results/sampler]

Every (variant, seed) is one `rls3 run` of the `quick` preset with early stopping off (every run
does all its iterations, so test curves line up), one torch thread, the fixed validation/test
sets of `--data-seed` at the paper's sizes (generated once, shared by every run), and the same
run seed for every variant (paired: same SAC pre-training, same episode seeds, same VLM
initialisation). A variant is an agent plus `--set` overrides (`VARIANTS`); one marked
`replay_of` is not run but computed offline from that variant's saved batches with
`rls3.value.replay_schedule` (exact for the random agent, whose data does not depend on the
VLM). Finished runs are kept and skipped when the script is started again (it resumes).

Per variant: test after every iteration, its area under the curve (mean over iterations 1..N),
final and best-validation test, generated steps, valid frames, wall and CPU seconds of the
iterations, and the dataset's own value (`rls3.value.dataset_value`: a fresh VLM trained on the
run's kept samples at the loop's compute); paired differences against random with 95%
t-intervals. Figures: test against valid frames, generated steps and wall seconds.
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
from typing import Any

from _common import ROOT, command_line, ints, machine_info, main, pyplot, save_figure

OUT = "sampler"
RESULT = "sampler.json"

#: variant -> agent, `--set` overrides, and (optionally) the variant whose saved batches an
#: offline schedule replay uses instead of a run
VARIANTS: dict[str, dict[str, Any]] = {
    "random": {"agent": "random", "sets": []},
    "sac": {"agent": "sac", "sets": []},
    "sac-cosine": {"agent": "sac", "sets": ["loop.finetune.lr_schedule=cosine"]},
    "sac-shrink": {"agent": "sac", "sets": ["loop.finetune.shrink=0.5"]},
    "sac-learnability": {"agent": "sac", "sets": ["loop.signal=learnability"]},
    "sac-t8": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16"]},
    "random-t8": {"agent": "random", "sets": ["env.t0=8", "loop.episodes=16"]},
    # selection (`loop.keep: hardest`): twice the frames generated (T0 = 16, a new room and layout
    # per valid frame as at T0 = 8), each episode's 8 hardest of 16 kept: the same 128 per iteration
    "sac-hard": {"agent": "sac", "sets": ["env.t0=16", "env.scene_every=1", "loop.episodes=16",
                                          "loop.eta=0.5", "loop.keep=hardest"]},
    "random-hard": {"agent": "random", "sets": ["env.t0=16", "env.scene_every=1",
                                                "loop.episodes=16", "loop.eta=0.5",
                                                "loop.keep=hardest"]},
    # SAC rewarded for learnability p(1 - p) instead of hardness, at quick's T0 = 8
    "sac-learn-t8": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16",
                                              "loop.signal=learnability"]},
    # diversity through SAC's entropy target (SB3's auto is -3 for the 3 action dims)
    "sac-ent-t8": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16",
                                            "agent.target_entropy=0"]},
    # captions about the object the step moved (`loop.caption_pair: moved`), both agents
    "sac-moved": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16",
                                           "loop.caption_pair=moved"]},
    "random-moved": {"agent": "random", "sets": ["env.t0=8", "loop.episodes=16",
                                                 "loop.caption_pair=moved"]},
    # the agent says where on its surface the object goes (`env.action: place`), captions about
    # that object: its action decides the relation each frame is scored and trained on
    "sac-place": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16", "env.action=place",
                                           "loop.caption_pair=moved"]},
    "random-place": {"agent": "random", "sets": ["env.t0=8", "loop.episodes=16",
                                                 "env.action=place", "loop.caption_pair=moved"]},
    # term balance: SAC also paid 2x the rarity of its frame's spatial terms (`loop.term_balance`);
    # the random agent ignores rewards, so random-t8 is its pair
    "sac-terms": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16",
                                           "loop.term_balance=2"]},
    # SAC learning harder from the VLM's feedback: 8 gradient steps per env step in the loop
    # (pre-training keeps `quick`'s schedule)
    "sac-utd8": {"agent": "sac", "sets": ["env.t0=8", "loop.episodes=16",
                                          "agent.gradient_steps=8"]},
    # `quick` before it took T0 = 8 (the rows named sac and random in results/sampler)
    "sac-t32": {"agent": "sac", "sets": ["env.t0=32", "loop.episodes=4"]},
    "random-t32": {"agent": "random", "sets": ["env.t0=32", "loop.episodes=4"]},
    "random-cosine": {"agent": "random", "sets": ["loop.finetune.lr_schedule=cosine"],
                      "replay_of": "random"},
    "random-shrink": {"agent": "random", "sets": ["loop.finetune.shrink=0.5"],
                      "replay_of": "random"},
    # SAC's saved batches under another schedule: what the schedule makes of the same samples
    # (in the loop SAC's data would also change with the VLM it is fed back by)
    "sac-data-cosine": {"agent": "sac", "sets": ["loop.finetune.lr_schedule=cosine"],
                        "replay_of": "sac"},
    "sac-data-shrink": {"agent": "sac", "sets": ["loop.finetune.shrink=0.5"],
                        "replay_of": "sac"},
}


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """A name from VARIANTS, or NAME=AGENT[:KEY=VALUE;KEY=VALUE...][@REPLAY_OF] for an ad-hoc
    variant."""
    if "=" not in spec.split(":")[0]:
        if spec not in VARIANTS:
            raise SystemExit(f"unknown variant {spec!r}; known: {sorted(VARIANTS)} (or "
                             f"NAME=AGENT:KEY=VALUE;...)")
        return spec, VARIANTS[spec]
    name, rest = spec.split("=", 1)
    rest, _, replay_of = rest.partition("@")
    agent, _, sets = rest.partition(":")
    v: dict[str, Any] = {"agent": agent, "sets": [s for s in sets.split(";") if s]}
    if replay_of:
        v["replay_of"] = replay_of
    return name, v


# ------------------------------------------------------------------------------------ running
def _common_sets(args: argparse.Namespace) -> list[str]:
    return ["progress=false", "agent.torch_threads=1", "early_stopping.enabled=false",
            f"data.val_size={args.val_size}", f"data.test_size={args.test_size}",
            f"data.seed={args.data_seed}", f"data.dir={Path(args.data_dir).resolve()}",
            f"runs_dir={Path(args.runs_dir).resolve()}",
            # every stored row ran before `quick` held lite's prefix cache in 16 bits: keep
            # float32 so new rows pair with them (`--set vlm.cache_dtype=float16` for the new)
            "vlm.cache_dtype=null", *args.set]


def _finished(run_dir: Path) -> bool:
    state = run_dir / "checkpoints" / "LATEST.json"
    if not state.is_file():
        return False
    from rls3.rundir import latest_checkpoint

    ck = latest_checkpoint(run_dir)
    return ck is not None and json.loads((ck / "state.json").read_text()).get("stop_reason") \
        is not None


def run_one(name: str, v: dict[str, Any], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `rls3 run` (or its resume) of variant `name` on `seed`, as a child process; its wall
    and CPU seconds (wait4) are written beside the run."""
    runs = Path(args.runs_dir).resolve()
    d = runs / f"{name}__{seed}"
    usage_file = runs / f"{name}__{seed}.usage.json"
    if _finished(d) and usage_file.is_file():
        return json.loads(usage_file.read_text())
    cmd = [sys.executable, "-m", "rls3.cli", "run", "-q", "--no-report"]
    if d.exists():
        cmd += ["--resume", str(d)]
    else:
        cmd += ["--preset", "quick", "--seed", str(seed), "--agent", v["agent"],
                "--run-dir", str(d)]
        for s in _common_sets(args) + list(v["sets"]):
            cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    runs.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(runs / f"{name}__{seed}.log", "a") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {rc}); see {log.name}")
    usage = {"variant": name, "seed": seed, "run_dir": str(d), "process_wall_s":
             time.perf_counter() - t, "process_cpu_s": ru.ru_utime + ru.ru_stime,
             "maxrss_mb": ru.ru_maxrss / 1024, "resumed": "--resume" in cmd}
    usage_file.write_text(json.dumps(usage, indent=1))
    return usage


def value_of(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """The dataset value of a finished run (cached beside it; with --no-value only a cached
    one, else None)."""
    runs = Path(args.runs_dir).resolve()
    f = runs / f"{name}__{seed}.value.json"
    if f.is_file():
        return json.loads(f.read_text())
    if args.no_value:
        return None
    from rls3.value import dataset_value

    res = dataset_value(runs / f"{name}__{seed}", progress=False)
    f.write_text(json.dumps(res, indent=1))
    return res


def replay_of(name: str, v: dict[str, Any], seed: int, args: argparse.Namespace
              ) -> dict[str, Any]:
    """The schedule replay of variant `name` on the saved batches of `v["replay_of"]` (cached)."""
    runs = Path(args.runs_dir).resolve()
    f = runs / f"{name}__{seed}.replay.json"
    if f.is_file():
        return json.loads(f.read_text())
    from rls3.rundir import load_run_config
    from rls3.value import replay_schedule

    src = runs / f"{v['replay_of']}__{seed}"
    loop = load_run_config(src).override(list(v["sets"])).loop
    t, c = time.perf_counter(), time.process_time()
    res = replay_schedule(src, loop=loop, progress=False)
    res.update(wall_s=time.perf_counter() - t, cpu_s=time.process_time() - c)
    f.write_text(json.dumps(res, indent=1))
    return res


# ------------------------------------------------------------------------------------ summary
def _ci(xs: list[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% t-interval of the mean."""
    import numpy as np
    from scipy import stats

    a = np.asarray(xs, dtype=float)
    n = len(a)
    mean = float(a.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    sd = float(a.std(ddof=1))
    h = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))
    return {"n": n, "mean": mean, "std": sd, "ci95": [mean - h, mean + h]}


def run_curve(name: str, v: dict[str, Any], seed: int, args: argparse.Namespace
              ) -> dict[str, Any]:
    """One (variant, seed): per-iteration test/val, x axes, AUC, final, best-val test, costs."""
    from rls3.rundir import read_metrics

    runs = Path(args.runs_dir).resolve()
    if v.get("replay_of"):
        rep = replay_of(name, v, seed, args)
        src = read_metrics(runs / f"{v['replay_of']}__{seed}")
        src = [r for r in src if isinstance(r.get("iteration"), int)]
        test = [p["test"]["score"] for p in rep["curve"]]
        val = [p["val"]["score"] for p in rep["curve"]]
        valid = [r["cum_valid"] for r in src]
        steps = [r["cum_steps"] for r in src]
        # the data costs what the source run's collection cost; fine-tuning is re-measured
        wall = [0.0] + [r.get("elapsed_s") or 0.0 for r in src[1:]]
        cost = {"wall_s": wall[-1], "replay_wall_s": rep.get("wall_s"), "cpu_s": None}
    else:
        recs = [r for r in read_metrics(runs / f"{name}__{seed}")
                if isinstance(r.get("iteration"), int)]
        test = [r["test"]["score"] for r in recs]
        val = [r["val"]["score"] for r in recs]
        valid = [r["cum_valid"] for r in recs]
        steps = [r["cum_steps"] for r in recs]
        wall = [0.0] + [r.get("elapsed_s") or 0.0 for r in recs[1:]]
        usage = json.loads((runs / f"{name}__{seed}.usage.json").read_text())
        cost = {"wall_s": wall[-1], "process_wall_s": usage["process_wall_s"],
                "cpu_s": usage["process_cpu_s"], "maxrss_mb": usage["maxrss_mb"]}
    best = max(range(1, len(val)), key=lambda i: (val[i], -i)) if len(val) > 1 else 0
    out = {"seed": seed, "test": test, "val": val, "cum_valid": valid, "cum_steps": steps,
           "wall": wall, "auc": sum(test[1:]) / max(1, len(test) - 1), "final": test[-1],
           "val_auc": sum(val[1:]) / max(1, len(val) - 1), "final_val": val[-1],
           "best_val_iteration": best, "best_val_test": test[best], "steps": steps[-1],
           "valid": valid[-1], **cost}
    val_res = None if v.get("replay_of") else value_of(name, seed, args)
    if val_res is not None:
        out["dataset_value"] = val_res["test"]["score"]
        out["dataset_value_val"] = val_res["val"]["score"]
    return out


def _available(name: str, v: dict[str, Any], seed: int, args: argparse.Namespace) -> bool:
    """Whether (variant, seed) can be summarised: its run (or its replay's source run) has
    finished, and with --summarize-only its replay was already computed."""
    runs = Path(args.runs_dir).resolve()
    src = v.get("replay_of") or name
    if not _finished(runs / f"{src}__{seed}"):
        return False
    if v.get("replay_of"):   # --summarize-only computes no replay
        return not args.summarize_only or (runs / f"{name}__{seed}.replay.json").is_file()
    return (runs / f"{name}__{seed}.usage.json").is_file()


def summarize(variants: dict[str, dict[str, Any]], seeds: list[int],
              args: argparse.Namespace) -> dict[str, Any]:
    """Per variant: per-seed curves and the means, and paired differences against random."""
    per: dict[str, list[dict[str, Any]]] = {}
    for name, v in variants.items():
        per[name] = [run_curve(name, v, s, args) for s in seeds if _available(name, v, s, args)]
        if len(per[name]) < len(seeds):
            print(f"{name}: {len(per[name])} of {len(seeds)} seeds finished", flush=True)
    base = per.get("random")
    return {"seeds": seeds, "variants": {name: _entry(variants[name], runs, base)
                                         for name, runs in per.items()}}


def _entry(spec: dict[str, Any], runs: list[dict[str, Any]],
           base: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One variant's means over its runs and its paired differences against random's `base`."""
    keys = ("auc", "final", "best_val_test", "val_auc", "final_val", "dataset_value", "steps",
            "valid", "wall_s", "cpu_s")
    entry: dict[str, Any] = {"spec": spec, "runs": runs}
    for k in keys:
        xs = [r[k] for r in runs if r.get(k) is not None]
        entry[k] = _ci(xs) if xs else None
    if base is not None and base is not runs:
        entry["vs_random"] = _differences(runs, base, _VS_RANDOM)
    valued = [r for r in runs if r.get("dataset_value") is not None]
    if valued:
        entry["loop_minus_value"] = _ci([r["final"] - r["dataset_value"] for r in valued])
    return entry


# ------------------------------------------------------------------------------------ output
def figures(res: dict[str, Any], out: Path) -> list[Path]:
    """Test (mean +- std over seeds) against valid frames, generated steps and wall seconds,
    in the folder `out`."""
    import numpy as np

    plt = pyplot()
    paths = []
    for key, label, fname in (("cum_valid", "valid frames (kept for fine-tuning)",
                               "test_vs_valid.png"),
                              ("cum_steps", "generated env steps (valid or not)",
                               "test_vs_steps.png"),
                              ("wall", "wall seconds of the iterations", "test_vs_wall.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, e in res["variants"].items():
            runs = e["runs"]
            if not runs:
                continue
            n = min(len(r["test"]) for r in runs)
            x = np.mean([r[key][:n] for r in runs], axis=0)
            y = np.array([r["test"][:n] for r in runs])
            m, sd = y.mean(0), y.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)
            ls = "--" if e["spec"].get("replay_of") else "-"
            ax.plot(x, m, ls, marker="o", ms=3, label=f"{name} (n={len(runs)})")
            ax.fill_between(x, m - sd, m + sd, alpha=0.12)
        ax.set_xlabel(label + (" (log)" if key == "cum_steps" else ""))
        if key == "cum_steps":
            ax.set_xscale("symlog", linthresh=100)
        ax.set_ylabel("test accuracy (1000 frames, unseen rooms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("VLM test accuracy per iteration, mean ± std over paired seeds")
        paths.append(save_figure(fig, out / fname, res, rect=(0, 0.04, 1, 1)))
    if res.get("pairs"):
        paths.append(paired_figure(res, out / "paired_differences.png"))
    return paths


def paired_figure(res: dict[str, Any], path: Path) -> Path:
    """Every paired difference of the result (`--pair`s) on test AUC and final test: the mean
    and its 95% t-interval per comparison, with its number of seeds, one row each."""
    plt = pyplot()
    pairs = [(n, p) for n, p in res["pairs"].items() if p.get("auc") and p.get("final")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.32 * len(pairs) + 1.4), sharey=True)
    y = list(range(len(pairs)))[::-1]
    for ax, key, title in zip(axes, ("auc", "final"), ("test AUC (mean over iterations 1..N)",
                                                       "final test"), strict=True):
        for yi, (_, p) in zip(y, pairs, strict=True):
            c = p[key]
            lo, hi = c.get("ci95") or (c["mean"], c["mean"])
            colour = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
            ax.plot([lo, hi], [yi, yi], color=colour, lw=2)
            ax.plot(c["mean"], yi, "o", color=colour, ms=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("paired difference A − B (95% t-interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{n} (n={len(p['seeds'])})" for n, p in pairs], fontsize=7)
    fig.suptitle("Paired differences by seed (green: interval above 0, red: below)", fontsize=10)
    return save_figure(fig, path, res, rect=(0, 0.04, 1, 0.97))


def _fmt(c: dict[str, Any] | None, d: int = 3) -> str:
    if not c:
        return "–"
    s = f"{c['mean']:.{d}f}"
    if c.get("ci95"):
        s += f" [{c['ci95'][0]:.{d}f}, {c['ci95'][1]:.{d}f}]"
    return s


def table(res: dict[str, Any], out: Path | None = None) -> list[str]:
    """The markdown table of every variant (means with 95% intervals over seeds), and a link to
    the hand-written README.md in the folder `out` when there is one."""
    lines = ["| variant | seeds | val AUC | test AUC | final test | best-val test | dataset value "
             "| loop − value | AUC − random | final − random | steps | wall s (iter.) | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in res["variants"].items():
        if not e["runs"]:
            continue
        vs = e.get("vs_random", {})
        lines.append("| " + " | ".join([
            name + (" (offline)" if e["spec"].get("replay_of") else ""),
            str(len(e["runs"])), _fmt(e["val_auc"]), _fmt(e["auc"]), _fmt(e["final"]),
            _fmt(e["best_val_test"]),
            _fmt(e.get("dataset_value")), _fmt(e.get("loop_minus_value")),
            _fmt(vs.get("auc")), _fmt(vs.get("final")),
            f"{e['steps']['mean']:.0f}", f"{e['wall_s']['mean']:.0f}",
            f"{e['cpu_s']['mean']:.0f}" if e.get("cpu_s") else "–"]) + " |")
    if res.get("pairs"):
        lines += ["", "| paired difference (95% t-interval) | seeds | test AUC | final test | "
                  "val AUC | final val |", "|---|---|---|---|---|---|"]
        for name, p in res["pairs"].items():
            lines.append(f"| {name} | {len(p['seeds'])} | {_fmt(p.get('auc'))} | "
                         f"{_fmt(p.get('final'))} | {_fmt(p.get('val_auc'))} | "
                         f"{_fmt(p.get('final_val'))} |")
    if out is not None and (out / "README.md").is_file():
        lines += ["", f"Details: [{out.name}/README.md]({out.name}/README.md)."]
    return lines


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--variants", default="random,sac,sac-cosine,random-cosine")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "sampler"))
    ap.add_argument("--data-dir", default=str(ROOT / "data" / "sampler"))
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--data-seed", type=int, default=1,
                    help="fixed sets' seed (quick's settings were chosen on seed 0's sets)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every run (e.g. loop.iterations=3 for a smoke test)")
    ap.add_argument("--no-value", action="store_true",
                    help="do not compute the datasets' own value (use those already computed)")
    ap.add_argument("--summarize-only", action="store_true", help="no new runs")
    ap.add_argument("--merge", metavar="JSON",
                    help="an earlier result of this script: its variants that are not run now "
                         "are kept (runs made elsewhere, e.g. on another machine)")
    ap.add_argument("--pair", action="append", default=[], metavar="A:B",
                    help="also report the paired differences A - B by seed (besides each "
                         "variant against random)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    seeds = ints(args.seeds)
    variants = dict(parse_variant(s) for s in args.variants.split(","))
    info = machine_info()
    if not args.summarize_only:
        runs = [n for n, v in variants.items() if not v.get("replay_of")]
        first_sac = next((n for n in runs if variants[n]["agent"] == "sac"), None)
        # the first SAC run of a seed pre-trains its agent (cached): every seed's first SAC run
        # goes before the other SAC variants, so no two processes pre-train the same agent
        jobs = [(n, variants[n], s) for s in seeds for n in runs if n == first_sac] + \
               [(n, variants[n], s) for s in seeds for n in runs if n != first_sac]
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for u in pool.map(lambda j: run_one(*j, args), jobs):
                print(f"done: {u['variant']} seed {u['seed']}: {u['process_wall_s']:.0f} s wall, "
                      f"{u['process_cpu_s']:.0f} s CPU", flush=True)
    res = summarize(variants, seeds, args)
    if args.merge:
        res = merge(json.loads(Path(args.merge).read_text()), res)
    res["pairs"] = {f"{a} − {b}": paired(res["variants"], a, b)
                    for a, b in (p.split(":", 1) for p in args.pair)}
    res.update(machine=info, command=command_line(), machine_after=machine_info())
    return res


_PAIRED = ("auc", "final", "best_val_test", "val_auc", "final_val", "wall_s")
_VS_RANDOM = ("auc", "final", "best_val_test", "val_auc", "wall_s")


def _differences(a: list[dict[str, Any]], b: list[dict[str, Any]], keys: tuple[str, ...]
                 ) -> dict[str, Any]:
    """Runs `a` - runs `b`, seed by seed over the seeds both have: each measure of `keys` that
    every pair has."""
    by_seed = {r["seed"]: r for r in b}
    pairs = [(r, by_seed[r["seed"]]) for r in a if r["seed"] in by_seed]
    return {k: _ci([x[k] - y[k] for x, y in pairs]) for k in keys
            if pairs and all(x.get(k) is not None and y.get(k) is not None for x, y in pairs)}


def paired(variants: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """Differences a - b of each per-seed measure over the seeds both variants have."""
    if a not in variants or b not in variants:
        raise SystemExit(f"--pair {a}:{b}: both must be variants of the result")
    seeds = {r["seed"] for r in variants[b]["runs"]}
    return {"seeds": [r["seed"] for r in variants[a]["runs"] if r["seed"] in seeds],
            **_differences(variants[a]["runs"], variants[b]["runs"], _PAIRED)}


def merge(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """`now` with the runs of `earlier` it does not have: its variants, and its seeds of a
    variant both hold (a variant's means and every difference against random are recomputed
    over the merged runs)."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for res in (earlier, now):  # now's run of a seed replaces earlier's
        for name, e in res["variants"].items():
            specs[name] = e["spec"]
            runs.setdefault(name, {}).update({r["seed"]: r for r in e["runs"]})
    per = {n: [by_seed[s] for s in sorted(by_seed)] for n, by_seed in runs.items()}
    base = per.get("random")
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    return {**now, "seeds": seeds,
            "variants": {n: _entry(specs[n], per[n], base) for n in per},
            "merged_from": earlier.get("command")}


if __name__ == "__main__":
    sys.exit(main(__name__))
