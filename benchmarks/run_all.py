"""Run every rls3 benchmark and write JSON, plots and a markdown table under benchmarks/results/.

    benchmarks/run_all                 # the default set (the data-efficiency comparison takes long)
    benchmarks/run_all --fast          # a smoke check in a few minutes -> benchmarks/results/fast/
    benchmarks/run_all --only yield,loop
    benchmarks/run_all --skip data_efficiency     # e.g. when the comparison ran on its own
    benchmarks/run_all --only gpu      # an optional benchmark (see BENCHMARKS) runs when named
    benchmarks/run_all --readme-only   # rebuild README.md and the plots from the JSON files

`BENCHMARKS` below names every benchmark script with its arguments for `--fast` and for the full
run. Each script follows the contract of `_common` (`run`, `table`, `figures`; runnable alone) and
runs here in its own process; a failing benchmark is reported and the others still run. README.md
is built from each script's own `table` and `figures` of its JSON; it and every plot carry the
machine (platform, CPUs, load), the versions (rls3, torch, pybullet, pyrender) and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from _common import (HERE, RESULTS, ROOT, figures, load, machine_info, result_path,
                     stamp_markdown, write_json)

PY = sys.executable


class Bench(NamedTuple):
    """One benchmark as run_all runs it."""

    script: str            # benchmarks/<script>.py
    out: str               # its --out, inside the results folder
    title: str             # its section of README.md
    fast: list[str]        # its arguments under `--fast`
    full: list[str]        # its arguments in the full run
    optional: str = ""     # why it runs only when named in --only ("": in the default set)


FAST_RUNS = ROOT / "runs"
#: the loop's quick preset shrunk to seconds
TINY = ["--set", "env.t0=4", "--set", "loop.episodes=1", "--set", "env.image_size=48",
        "--set", "loop.k=1", "--set", "data.val_size=10", "--set", "data.test_size=10",
        "--set", "agent.pretrain_steps=100"]
#: `--fast`: the sampler benchmark's runs shrunk to seconds (tests/test_bench_sampler.py uses these)
SAMPLER_FAST = ("env.t0=4", "env.image_size=32", "loop.episodes=1", "loop.iterations=2",
                "loop.k=1", "vlm.name=clip-tiny", "agent.pretrain_steps=100",
                "agent.learning_starts=50", "agent.batch_size=16", "agent.buffer_size=2000",
                "agent.net_arch=[16, 16]", "backend.train_scenes=[kitchen]",
                "backend.test_scenes=[test_study]")
LEARNING_FAST_DATA = ["--data-dir", str(FAST_RUNS / "bench-fast-learning-data")]

#: every benchmark, in the order it runs and appears in README.md
BENCHMARKS: dict[str, Bench] = {
    "yield": Bench(
        "bench_yield", "yield.json", "Sampling yield (valid samples per env step)",
        fast=["--seeds", "0", "--steps", "60", "--pretrain-steps", "100"],
        full=[]),
    "agent_settings": Bench(
        "bench_agent_settings", "agent_settings.json",
        "SAC settings for the agent (yield and moves during pre-training)",
        fast=["--steps", "400", "--chunk", "200", "--eval-steps", "50", "--variants", "quick"],
        full=[]),
    "throughput": Bench(
        "bench_throughput", "throughput.json", "Throughput against raw counterparts",
        fast=["--fast", "--size", "96"],
        full=[]),
    "allocator": Bench(
        "bench_vlm", "vlm_allocator.json",
        "Memory allocator: the VLM under tcmalloc and glibc malloc",
        fast=["--vlm", "clip-tiny", "--n", "16", "--repeats", "1", "--epochs", "1",
              "--episode", "4"],
        full=["--n", "64", "--repeats", "2", "--epochs", "1"]),
    "learning": Bench(
        "bench_learning", "learning.json",
        "Does the VLM learn from renders? (`lite`, fixed rendered sets)",
        fast=["--train", "32", "--heldout", "16", "--test", "16", "--epochs", "2", "--every", "1",
              *LEARNING_FAST_DATA],
        full=["--variants", "default,no-mirror,192px", "--epochs", "25"]),
    "replay": Bench(
        "bench_replay", "replay.json",
        "Does replay make the VLM learn inside the loop? (fine-tuning schedule, with and "
        "without `loop.replay`)",
        fast=["--seeds", "0", "--iterations", "2", "--batch", "16", "--k", "1", "--heldout", "16",
              "--test", "16", *LEARNING_FAST_DATA],
        full=[]),
    "loop": Bench(
        "bench_loop", "loop.json", "Loop breakdown (one iteration, cProfile)",
        fast=TINY,
        full=["--timer", "cpu"]),
    "scaling": Bench(
        "bench_scaling", "scaling.json", "Scaling",
        fast=["--fast"],
        full=[]),
    "workers": Bench(
        "bench_workers", "workers.json", "Parallel scene workers (`--workers N`)",
        fast=["--fast"],
        full=["--repeats", "2"]),
    "data_efficiency": Bench(
        "bench_data_efficiency", "comparison",
        "Data efficiency: random vs SAC (episode feedback) vs SAC (per-sample feedback)",
        fast=["--seeds", "0", "--parallel", "1", "--runs-dir", str(FAST_RUNS / "bench-fast"),
              *TINY, "--set", "loop.iterations=2"],
        full=[]),
    "sampler": Bench(
        "bench_sampler", "sampler",
        "Does the agent's data teach more than random's? (paired seeds, 500/1000-frame sets, "
        "in the loop and as a dataset)",
        fast=["--seeds", "0,1", "--variants", "random,sac,random-cosine", "--val-size", "3",
              "--test-size", "3", "--runs-dir", str(FAST_RUNS / "bench-fast-sampler"),
              "--data-dir", str(FAST_RUNS / "bench-fast-sampler-data"),
              *(a for s in SAMPLER_FAST for a in ("--set", s))],
        full=[]),
    "feedback_signal": Bench(
        "bench_feedback_signal", "feedback_signal.json",
        "What the agent's per-sample reward tells it (caption draw against layout)",
        fast=["--runs", str(FAST_RUNS / "bench-fast-sampler" / "sac__0"), "--frames", "4"],
        full=["--runs", ",".join(str(ROOT / "runs" / "sampler" / r) for r in
                                 ("sac-place__0", "random-place__0"))],
        optional="reads finished bench_sampler runs: `benchmarks/bench_feedback_signal.py "
                 "--runs RUN_DIR,...`"),
    "dp": Bench(
        "bench_dp", "dp.json", "Data-parallel VLM fine-tuning on CPUs (1 vs 2 processes, "
        "accelerate)",
        fast=["--vlm", "clip-tiny", "--samples", "16", "--epochs", "1"],
        full=["--repeats", "2"]),
    "gpu": Bench(
        "bench_gpu", "gpu.json", "Paper-size VLMs on one GPU (`benchmarks/run_all --only gpu`: "
        "needs CUDA)",
        fast=["--cpu-smoke"],
        full=[],
        optional="needs CUDA: on a GPU machine run `benchmarks/run_all --only gpu` (about 5-8 "
                 "minutes on an H100)"),
    "iteration": Bench(
        "bench_iteration", "iteration.json",
        "Before/after: one `rls3 run` under two code versions side by side",
        fast=["--before", "HEAD", "--iterations", "1", *TINY],
        full=["--before", "HEAD"],
        optional="compares two code versions: `benchmarks/run_all --only iteration` measures "
                 "the working tree against HEAD (give other revisions with the script's own "
                 "--before)"),
    "run": Bench(
        "bench_run", "run.json",
        "Before/after: the default `rls3 run` from a fresh folder, per phase (wall, CPU, RSS)",
        fast=["--before", "HEAD", *TINY, "--set", "loop.iterations=1"],
        full=["--before", "HEAD"],
        optional="compares two code versions over whole runs (about 15 minutes): "
                 "`benchmarks/run_all --only run` measures the working tree against HEAD"),
    "pretrain": Bench(
        "bench_pretrain", "pretrain.json",
        "SAC pre-training: the loop's update schedule against the preset's",
        fast=["--seeds", "0", "--steps", "30", "--pretrain-steps", "200"],
        full=[]),
    "optim": Bench(
        "bench_optim", "optim.json",
        "Multi-tensor Adam against torch's per-parameter loop (lite fine-tuning, SAC pre-training)",
        fast=["--n", "8", "--epochs", "1", "--sac-steps", "200", "--repeats", "1"],
        full=[]),
    "dtype": Bench(
        "bench_dtype", "dtype.json",
        "lite on the CPU in float32 against bfloat16 (autocast): feedback, fine-tuning, evaluation",
        fast=["--n", "8", "--feedback", "2", "--epochs", "1", "--repeats", "1"],
        full=[]),
    "render": Bench(
        "bench_render", "render.json", "Env steps against raw renders of the same layouts",
        fast=["--size", "96", "--steps", "30", "--scenes", "kitchen,bedroom"],
        full=["--steps", "200"],
        optional="measured inside `throughput`; alone: `benchmarks/run_all --only render`"),
    "bridge": Bench(
        "bench_bridge", "bridge.json",
        "Unity bridge against the embedded backend (test peer, same scenes and actions)",
        fast=["--size", "96", "--steps", "20", "--blocks", "2", "--action-scales", "0.5"],
        full=[],
        optional="measured inside `throughput`; alone: `benchmarks/run_all --only bridge`"),
    "openclip_gpu": Bench(
        "bench_openclip_gpu", "openclip_gpu.json",
        "open_clip checkpoints through rls3's converter, paper size on one GPU",
        fast=["--models", "ViT-B-32-quickgelu", "--samples", "32"],
        full=[],
        optional="needs CUDA, open_clip and torchvision: `benchmarks/run_all --only "
                 "openclip_gpu` on a GPU machine"),
}


def command(name: str, out: Path, fast: bool) -> list[str]:
    """The command line running benchmark `name` into the results folder `out`."""
    b = BENCHMARKS[name]
    return [PY, str(HERE / f"{b.script}.py"), *(b.fast if fast else b.full),
            "--out", str(out / b.out)]


def chosen(only: str, skip: str) -> list[str]:
    """The benchmarks to run, in table order: those named in `only` (default: every one that is
    not optional) less those in `skip`."""
    named = {x for x in only.split(",") if x}
    left_out = {x for x in skip.split(",") if x}
    bad = (named | left_out) - set(BENCHMARKS)
    if bad:
        raise SystemExit(f"unknown benchmark(s) {sorted(bad)}; known: {list(BENCHMARKS)}")
    return [n for n, b in BENCHMARKS.items()
            if (n in named if named else not b.optional) and n not in left_out]


def collect(out: Path) -> dict[str, tuple[Any, Path, dict]]:
    """Each benchmark with a result in `out`: (its module, its --out, its result)."""
    found = {}
    for name, b in BENCHMARKS.items():
        bench = load(b.script)
        path = out / b.out
        try:
            found[name] = (bench, path, json.loads(result_path(bench, path).read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def section(name: str, out: Path, found: tuple[Any, Path, dict] | None, status: str) -> list[str]:
    """README.md's section of benchmark `name`: its command, table and figures."""
    b = BENCHMARKS[name]
    lines = [f"## {b.title}", ""]
    if found is None:
        return lines + [f"_not run_ ({status or b.optional or 'no results'})", ""]
    bench, path, res = found
    js = result_path(bench, path).relative_to(out)
    lines += [f"`{res.get('command', '?')}` → [{js}]({js})", ""]
    try:    # one unreadable result must not cost the others their sections
        lines += bench.table(res, path) + [""]
    except Exception as e:  # noqa: BLE001
        lines += [f"_no table: {type(e).__name__}: {e}_", ""]
    try:
        figs = figures(bench, res, path)
    except Exception as e:  # noqa: BLE001
        figs = []
        lines += [f"_no figures: {type(e).__name__}: {e}_", ""]
    for p in figs:
        rel = os.path.relpath(p, out)
        lines += [f"![{rel}]({rel})", ""]
    return lines


def write_readme(out: Path, found: dict[str, tuple[Any, Path, dict]], status: dict[str, str],
                 command_text: str) -> Path:
    lines = ["# rls3 benchmarks", "", stamp_markdown(machine_info(), command_text), "",
             "Each section below names its own command; machine load and versions at the time of "
             "each measurement are in its JSON file. The machine is a shared 2-core VM: absolute "
             "times move with its load, the ratios measured side by side move much less.", ""]
    notes = out / "NOTES.md"   # hand-written findings, kept across regenerations
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    for name in BENCHMARKS:
        lines += section(name, out, found.get(name), status.get(name, ""))
    if status:
        lines += ["## This run", "", "| benchmark | status |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in status.items()] + [""]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="small smoke run into results/fast/")
    ap.add_argument("--only", default="",
                    help=f"comma-separated subset of {list(BENCHMARKS)} (optional ones run only "
                         "when named here)")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    ap.add_argument("--readme-only", action="store_true",
                    help="run nothing: rebuild README.md and the plots from the JSON files")
    a = ap.parse_args(argv)
    out = (a.out or (RESULTS / "fast" if a.fast else RESULTS)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command_text = "benchmarks/run_all " + " ".join(sys.argv[1:] if argv is None else argv)
    names = chosen(a.only, a.skip)
    status: dict[str, str] = {}
    if not a.readme_only:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in names:
            cmd = command(name, out, a.fast)
            print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
            t = time.perf_counter()
            rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
            dt = time.perf_counter() - t
            status[name] = (f"ok in {dt:.0f} s" if rc == 0 else
                            f"FAILED (exit {rc}) after {dt:.0f} s")
            print(f"=== {name}: {status[name]}", flush=True)
    found = collect(out)
    write_json(out / "summary.json", {"command": command_text, "machine": machine_info(),
                                       "status": status, "results": sorted(found)})
    readme = write_readme(out, found, status, command_text)
    print(f"wrote {readme}")
    return 1 if any(s.startswith("FAILED") for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
