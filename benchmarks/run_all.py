"""Run every rls3 benchmark and write JSON, plots and a markdown table under benchmarks/results/.

    benchmarks/run_all                 # the full set (the data-efficiency comparison takes long)
    benchmarks/run_all --fast          # a smoke check in a few minutes -> benchmarks/results/fast/
    benchmarks/run_all --only yield,loop
    benchmarks/run_all --skip data_efficiency     # e.g. when the comparison ran on its own
    benchmarks/run_all --readme-only   # rebuild README.md and the plots from the JSON files

Each benchmark is its own script (benchmarks/bench_*.py, runnable alone) and runs here in its own
process; a failing benchmark is reported and the others still run. README.md and every plot carry
the machine (platform, CPUs, load), the versions (rls3, torch, pybullet, pyrender) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import machine_info, stamp_figure, stamp_markdown, write_json  # noqa: E402

PY = sys.executable
#: why a section has no results yet, where that is known in advance
NOT_RUN = {"gpu": "no GPU was available where these results were made; on a GPU machine run "
                  "`python benchmarks/bench_gpu.py` (about 5-8 minutes on an H100)"}
ORDER = ["yield", "agent_settings", "throughput", "allocator", "learning", "replay", "loop",
         "scaling", "workers", "data_efficiency", "sampler", "dp"]
#: `--fast`: the sampler benchmark's runs shrunk to seconds (tests/test_bench_sampler.py uses these)
SAMPLER_FAST = ("env.t0=4", "env.image_size=32", "loop.episodes=1", "loop.iterations=2",
                "loop.k=1", "vlm.name=clip-tiny", "agent.pretrain_steps=100",
                "agent.learning_starts=50", "agent.batch_size=16", "agent.buffer_size=2000",
                "agent.net_arch=[16, 16]", "backend.train_scenes=[kitchen]",
                "backend.test_scenes=[test_study]")


def commands(out: Path, fast: bool) -> dict[str, list[str]]:
    b = lambda name: [PY, str(HERE / name)]  # noqa: E731
    if fast:
        tiny = ["--set", "env.t0=4", "--set", "loop.episodes=1", "--set", "env.image_size=48",
                "--set", "loop.k=1", "--set", "data.val_size=10", "--set", "data.test_size=10",
                "--set", "agent.pretrain_steps=100"]
        return {
            "yield": b("bench_yield.py") + ["--seeds", "0", "--steps", "60",
                                             "--pretrain-steps", "100", "--out",
                                             str(out / "yield.json")],
            "agent_settings": b("bench_agent_settings.py") + [
                "--steps", "400", "--chunk", "200", "--eval-steps", "50", "--variants", "quick",
                "--out", str(out / "agent_settings.json")],
            "throughput": b("bench_throughput.py") + ["--fast", "--size", "96", "--out",
                                                      str(out / "throughput.json")],
            "learning": b("bench_learning.py") + [
                "--train", "32", "--heldout", "16", "--test", "16", "--epochs", "2", "--every", "1",
                "--data-dir", str(ROOT / "runs" / "bench-fast-learning-data"),
                "--out", str(out / "learning.json")],
            "replay": b("bench_replay.py") + [
                "--seeds", "0", "--iterations", "2", "--batch", "16", "--k", "1",
                "--heldout", "16", "--test", "16",
                "--data-dir", str(ROOT / "runs" / "bench-fast-learning-data"),
                "--out", str(out / "replay.json")],
            "allocator": b("bench_vlm.py") + ["--vlm", "clip-tiny", "--n", "16", "--repeats", "1",
                                              "--epochs", "1", "--episode", "4", "--out",
                                              str(out / "vlm_allocator.json")],
            "loop": b("bench_loop.py") + tiny + ["--out", str(out / "loop.json")],
            "scaling": b("bench_scaling.py") + ["--fast", "--out", str(out / "scaling.json")],
            "workers": b("bench_workers.py") + ["--fast", "--out", str(out / "workers.json")],
            "data_efficiency": b("bench_data_efficiency.py") + [
                "--seeds", "0", "--parallel", "1", "--runs-dir", str(ROOT / "runs" / "bench-fast"),
                "--out", str(out / "comparison")] + tiny + ["--set", "loop.iterations=2"],
            "sampler": b("bench_sampler.py") + [
                "--seeds", "0,1", "--variants", "random,sac,random-cosine", "--val-size", "3",
                "--test-size", "3", "--runs-dir", str(ROOT / "runs" / "bench-fast-sampler"),
                "--data-dir", str(ROOT / "runs" / "bench-fast-sampler-data"),
                "--out", str(out / "sampler")] + [a for s in SAMPLER_FAST for a in ("--set", s)],
            "dp": b("bench_dp.py") + ["--vlm", "clip-tiny", "--samples", "16", "--epochs", "1",
                                      "--out", str(out / "dp.json")],
        }
    return {
        "yield": b("bench_yield.py") + ["--out", str(out / "yield.json")],
        "agent_settings": b("bench_agent_settings.py") + [
            "--out", str(out / "agent_settings.json")],
        "throughput": b("bench_throughput.py") + ["--out", str(out / "throughput.json")],
        "learning": b("bench_learning.py") + [
            "--variants", "default,no-mirror,192px", "--epochs", "25",
            "--out", str(out / "learning.json")],
        "replay": b("bench_replay.py") + ["--out", str(out / "replay.json")],
        "allocator": b("bench_vlm.py") + ["--n", "64", "--repeats", "2", "--epochs", "1",
                                          "--out", str(out / "vlm_allocator.json")],
        "loop": b("bench_loop.py") + ["--timer", "cpu", "--out", str(out / "loop.json")],
        "scaling": b("bench_scaling.py") + ["--out", str(out / "scaling.json")],
        "workers": b("bench_workers.py") + ["--repeats", "2", "--out", str(out / "workers.json")],
        "data_efficiency": b("bench_data_efficiency.py") + ["--out", str(out / "comparison")],
        "sampler": b("bench_sampler.py") + ["--out", str(out / "sampler")],
        "dp": b("bench_dp.py") + ["--repeats", "2", "--out", str(out / "dp.json")],
    }


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------ plots
def _plots(out: Path, res: dict[str, dict]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, Path] = {}

    def save(fig, name: str, r: dict) -> None:
        stamp_figure(fig, r.get("machine") or machine_info(), r.get("command", "?"))
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        p = out / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made[name] = p

    y = res.get("yield")
    if y:
        rows = y["rows"]
        x = np.arange(len(rows))
        fig, ax = plt.subplots(figsize=(7, 4.4))
        ax.bar(x - 0.2, [r["random_yield"] or 0 for r in rows], 0.4, label="random",
               color="tab:orange")
        ax.bar(x + 0.2, [r["sac_yield"] or 0 for r in rows], 0.4,
               label=f"SAC (pre-trained {y['pretrain_steps']} steps)", color="tab:blue")
        ax.axhline(y["target_sac_yield"], color="0.4", ls="--", lw=0.8, label="target 0.95")
        ax.set_xticks(x)
        ax.set_xticklabels([r["scene"] for r in rows])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("valid samples / env step")
        ax.set_title("Sampling yield per training scene")
        ax.legend(fontsize=8)
        save(fig, "yield.png", y)
    t = res.get("throughput")
    if t:
        fig, ax = plt.subplots(figsize=(7, 4.4))
        tab = t["table"]
        labels = [r["what"] for r in tab]
        xs = np.arange(len(tab))
        ax.bar(xs - 0.2, [r["value"] or 0 for r in tab], 0.4, label="measured")
        ax.bar(xs + 0.2, [r["raw_value"] or 0 for r in tab], 0.4, label="raw counterpart")
        for i, r in enumerate(tab):
            if r["ratio"]:
                ax.text(i, max(r["value"] or 0, r["raw_value"] or 0), f"×{r['ratio']:.2f}",
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=12, fontsize=7)
        ax.set_ylabel("per second")
        ax.set_yscale("log")
        ax.set_title(f"Throughput vs raw counterparts ({t['image_size']} px)")
        ax.legend(fontsize=8)
        save(fig, "throughput.png", t)
    lp = res.get("loop")
    if lp:
        items = sorted(lp["fractions"].items(), key=lambda kv: -kv[1])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.barh([k for k, _ in items][::-1], [100 * v for _, v in items][::-1],
                color=["tab:red" if k == "overhead" else "tab:blue" for k, _ in items][::-1])
        ax.axvline(100 * lp["target_overhead"], color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("% of one iteration")
        ax.set_title(f"Where one iteration goes ({lp['iteration_s']:.1f} s, "
                     f"{lp['preset']}, {lp['agent']})")
        save(fig, "loop_breakdown.png", lp)
    sc = res.get("scaling")
    if sc:
        knobs = list(dict.fromkeys(r["knob"] for r in sc["rows"]))
        fig, axes = plt.subplots(1, len(knobs) + 1, figsize=(4 * (len(knobs) + 1), 3.8))
        for ax, k in zip(axes, knobs):
            rs = [r for r in sc["rows"] if r["knob"] == k]
            ax.plot([r["value"] for r in rs], [r["iteration_s"] for r in rs], "o-")
            ax.set_xlabel(k)
            ax.set_ylabel("s / iteration")
            ax.grid(alpha=0.3)
        v = sc["vec_envs"]
        axes[-1].bar([f"{x['kind']}\nx{x['n_envs']}" for x in v], [x["steps_per_s"] for x in v])
        axes[-1].set_ylabel("env steps/s")
        axes[-1].set_title("SB3 VecEnv")
        fig.suptitle("Scaling")
        save(fig, "scaling.png", sc)
    de = res.get("data_efficiency")
    if de and de.get("run_dirs") and all(Path(d).is_dir() for d in de["run_dirs"]):
        from rls3.plots import plot_score_vs_data, plot_yield

        made["data_efficiency.png"] = plot_score_vs_data(de["run_dirs"], out,
                                                         name="data_efficiency.png")
        made["comparison_yield.png"] = plot_yield(de["run_dirs"], out,
                                                  name="comparison_yield.png")
    return made


# ------------------------------------------------------------------------------------ README
def write_readme(out: Path, res: dict[str, dict], status: dict[str, str], command: str) -> Path:
    import bench_agent_settings
    import bench_data_efficiency
    import bench_dp
    import bench_gpu
    import bench_learning
    import bench_loop
    import bench_replay
    import bench_sampler
    import bench_scaling
    import bench_throughput
    import bench_vlm
    import bench_workers
    import bench_yield

    plots = _plots(out, res)
    lines = ["# rls3 benchmarks", "", stamp_markdown(machine_info(), command), "",
             "Each section below names its own command; machine load and versions at the time of "
             "each measurement are in its JSON file. The machine is a shared 2-core VM: absolute "
             "times move with its load, the ratios measured side by side move much less.", ""]
    notes = out / "NOTES.md"   # hand-written findings, kept across regenerations
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    sections = [("yield", "Sampling yield (valid samples per env step)", bench_yield.markdown,
                 "yield.json", ["yield.png"]),
                ("agent_settings", "SAC settings for the agent (yield and moves during "
                 "pre-training)", bench_agent_settings.markdown, "agent_settings.json", []),
                ("throughput", "Throughput against raw counterparts", bench_throughput.markdown,
                 "throughput.json", ["throughput.png"]),
                ("allocator", "Memory allocator: the VLM under tcmalloc and glibc malloc",
                 bench_vlm.markdown_allocators, "vlm_allocator.json", []),
                ("learning", "Does the VLM learn from renders? (`lite`, fixed rendered sets)",
                 bench_learning.markdown, "learning.json", ["learning.png"]),
                ("replay", "Does replay make the VLM learn inside the loop? (fine-tuning "
                 "schedule, with and without `loop.replay`)", bench_replay.markdown,
                 "replay.json", ["replay.png"]),
                ("loop", "Loop breakdown (one iteration, cProfile)", bench_loop.markdown,
                 "loop.json", ["loop_breakdown.png"]),
                ("scaling", "Scaling", bench_scaling.markdown, "scaling.json", ["scaling.png"]),
                ("workers", "Parallel scene workers (`--workers N`)", bench_workers.markdown,
                 "workers.json", []),
                ("data_efficiency", "Data efficiency: random vs SAC (episode feedback) vs SAC "
                 "(per-sample feedback)",
                 lambda r: bench_data_efficiency.markdown_table(r)
                 + ["", "Full report with all figures: [comparison/report.md]"
                        "(comparison/report.md)."],
                 "comparison/comparison.json", ["data_efficiency.png", "comparison_yield.png"]),
                ("sampler", "Does the agent's data teach more than random's? (paired seeds, "
                 "500/1000-frame sets, in the loop and as a dataset)",
                 lambda r: bench_sampler.table(r) + ["", "Details: [sampler/README.md]"
                                                         "(sampler/README.md)."],
                 "sampler/sampler.json", ["sampler/test_vs_valid.png"]),
                ("dp", "Data-parallel VLM fine-tuning on CPUs (1 vs 2 processes, accelerate)",
                 bench_dp.markdown, "dp.json", []),
                ("gpu", "Paper-size VLMs on one GPU (`benchmarks/bench_gpu.py`, not in "
                 "run_all: needs CUDA)", bench_gpu.markdown, "gpu.json", [])]
    for key, title, md, js, pngs in sections:
        lines += [f"## {title}", ""]
        r = res.get(key)
        if r is None:
            lines += [f"_not run_ ({status.get(key, NOT_RUN.get(key, 'no results'))})", ""]
            continue
        lines += [f"`{r.get('command', '?')}` → [{js}]({js})", ""]
        lines += md(r) + [""]
        before = _load(out / "loop_before_eval_cache.json") if key == "loop" else None
        if before:
            sb, fb = before["seconds"], before["fractions"]
            lines += [f"Before the frozen-prefix evaluation cache (same preset, same machine, "
                      f"[loop_before_eval_cache.json](loop_before_eval_cache.json)): "
                      f"{before['iteration_s']:.1f} s per iteration, evaluation "
                      f"{sb['evaluation']:.1f} s ({100 * fb['evaluation']:.1f}%) — then the "
                      f"largest category; validation + test phases "
                      f"{before['loop_time_s']['validate'] + before['loop_time_s']['test']:.1f} s "
                      f"vs {r['loop_time_s']['validate'] + r['loop_time_s']['test']:.1f} s now. "
                      "Absolute seconds depend on the machine's load at the time "
                      f"(load average {before['machine']['loadavg'][0]:.1f} before, "
                      f"{r['machine']['loadavg'][0]:.1f} now).", ""]
        for p in pngs:
            if p in plots or (out / p).is_file():
                lines += [f"![{p}]({p})", ""]
    if status:
        lines += ["## This run", "", "| benchmark | status |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in status.items()] + [""]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def collect(out: Path) -> dict[str, dict]:
    files = {"yield": "yield.json", "agent_settings": "agent_settings.json",
             "throughput": "throughput.json", "allocator": "vlm_allocator.json",
             "learning": "learning.json", "replay": "replay.json", "loop": "loop.json",
             "scaling": "scaling.json", "workers": "workers.json",
             "data_efficiency": "comparison/comparison.json", "sampler": "sampler/sampler.json",
             "dp": "dp.json", "gpu": "gpu.json"}
    return {k: r for k, f in files.items() if (r := _load(out / f)) is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="small smoke run into results/fast/")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {ORDER}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--readme-only", action="store_true")
    a = ap.parse_args()
    out = a.out or (HERE / "results" / ("fast" if a.fast else ""))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/run_all " + " ".join(sys.argv[1:])
    only = [x for x in a.only.split(",") if x] or ORDER
    skip = {x for x in a.skip.split(",") if x}
    bad = (set(only) | skip) - set(ORDER)
    if bad:
        raise SystemExit(f"unknown benchmark(s) {sorted(bad)}; allowed: {ORDER}")
    status: dict[str, str] = {}
    if not a.readme_only:
        cmds = commands(out, a.fast)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ORDER:
            if name not in only or name in skip:
                continue
            print(f"=== {name}: {' '.join(cmds[name][1:])}", flush=True)
            t = time.perf_counter()
            rc = subprocess.run(cmds[name], cwd=ROOT, env=env).returncode
            dt = time.perf_counter() - t
            status[name] = f"ok in {dt:.0f} s" if rc == 0 else f"FAILED (exit {rc}) after {dt:.0f} s"
            print(f"=== {name}: {status[name]}", flush=True)
    res = collect(out)
    write_json(out / "summary.json", {"command": command, "machine": machine_info(),
                                       "status": status, "results": sorted(res)})
    readme = write_readme(out, res, status, command)
    print(f"wrote {readme}")
    if any(s.startswith("FAILED") for s in status.values()):
        sys.exit(1)


import numpy as np  # noqa: E402  (used by the plots)

if __name__ == "__main__":
    main()
