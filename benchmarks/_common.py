"""Shared helpers of the benchmark scripts: the contract every script follows, the machine/version
stamp, JSON output, figures, the fixed rendered sets.

Importing it makes a benchmark script run under the allocator rls3 runs under (tcmalloc when the
machine has it; ``RLS3_ALLOCATOR=system`` keeps glibc malloc): the script re-executes itself once,
as the `rls3` command does, so that figures describe what users get. It also puts the repository
root on ``sys.path`` (a script's own folder is there already), so scripts need no path set-up.

The contract. A benchmark is a module ``benchmarks/bench_NAME.py`` with

    OUT = "NAME.json"                  # its default --out, under benchmarks/results/
    RESULT = "NAME.json"               # only when --out is a folder: the JSON's name inside it
    def add_args(ap) -> None           # its command-line options (`--out` is added for it)
    def run(args) -> dict | None       # measure; the JSON-ready result (None: a mode that writes
                                       # nothing of its own, e.g. a worker of a multi-process run)
    def table(result, out) -> list[str]        # markdown lines summing the result up
    def figures(result, out) -> list[Path]     # optional: draw its figures next to `out` (when it
                                               # can) and return those that exist

and ends with ``if __name__ == "__main__": sys.exit(main(__name__))``. `main` parses the command
line, runs, stamps the result with the command line, writes the JSON (`result_path`), draws the
figures and prints the table. `out` above is the script's `--out`. `run_all` runs each benchmark by
name from its one table and builds the summary from these functions alone; a benchmark that needs
another one's numbers runs it with `run_script` (a child process, as on its own).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import platform
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: where `rls3` is imported from: this checkout, or the "before" tree a --before child names
CODE = os.environ.get("RLS3_BENCH_CODE", str(ROOT))
if CODE not in sys.path:
    sys.path.insert(0, CODE)

from rls3 import runtime  # noqa: E402

if Path(sys.argv[0]).resolve().parent == HERE:  # a benchmark script
    runtime.ensure()

log = logging.getLogger("benchmarks")


class Unavailable(Exception):
    """This machine cannot run the benchmark (no CUDA, a missing package): `main` reports it and
    exits with status 2."""


# ------------------------------------------------------------------------------------ contract
def load(name: str) -> ModuleType:
    """The benchmark module `name` (``bench_yield`` or ``yield``)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name if name.startswith("bench_") else f"bench_{name}")


def parser(bench: ModuleType) -> argparse.ArgumentParser:
    """The benchmark's command line: its own options and `--out` (default results/OUT)."""
    doc = (bench.__doc__ or "").strip().split("\n\n")[0]
    ap = argparse.ArgumentParser(prog=f"{Path(bench.__file__).name}",
                                 description=" ".join(doc.split()))
    bench.add_args(ap)
    kind = "folder" if getattr(bench, "RESULT", "") else "JSON file"
    ap.add_argument("--out", type=Path, default=RESULTS / bench.OUT,
                    help=f"result {kind} (default: benchmarks/results/{bench.OUT})")
    return ap


def result_path(bench: ModuleType, out: str | Path) -> Path:
    """Where the benchmark's JSON lies for `--out` `out`: `out` itself, or `out`/RESULT."""
    result = getattr(bench, "RESULT", "")
    return Path(out) / result if result else Path(out)


def figures(bench: ModuleType, result: dict[str, Any], out: str | Path) -> list[Path]:
    """The benchmark's figures for `result` (none when it draws none)."""
    draw = getattr(bench, "figures", None)
    return list(draw(result, Path(out))) if draw is not None else []


def main(bench: ModuleType | str, argv: list[str] | None = None) -> int:
    """A benchmark's command line: parse, run, write the JSON (stamped with the command line
    unless the result names its own), draw the figures, print the table. Returns the exit
    status (2: `Unavailable` on this machine)."""
    if isinstance(bench, str):
        bench = sys.modules[bench]
    args = parser(bench).parse_args(argv)
    try:
        res = bench.run(args)
    except Unavailable as e:
        log.error("%s: %s", Path(bench.__file__).name, e)
        return 2
    if res is None:
        return 0
    res.setdefault("command", command_line())
    out = Path(args.out)
    path = write_json(result_path(bench, out), res)
    figs = figures(bench, res, out)
    print("\n".join(bench.table(res, out)))
    for p in (path, *figs):
        print(f"wrote {p}")
    return 0


def run_script(name: str, args: list[str]) -> dict[str, Any]:
    """Run benchmark `name` with `args` in a child process, as it runs alone (its own allocator
    re-execution, its own memory), and return its result."""
    import subprocess
    import tempfile

    bench = load(name)
    with tempfile.TemporaryDirectory(prefix="rls3-bench-") as tmp:
        out = Path(tmp) / bench.OUT
        cmd = [sys.executable, str(HERE / f"{bench.__name__}.py"), *args, "--out", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True)
        return json.loads(result_path(bench, out).read_text())


# ------------------------------------------------------------------------------------ arguments
def ints(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]."""
    return [int(s) for s in text.split(",") if s.strip()]


def names(text: str) -> list[str]:
    """`a, b,` -> ["a", "b"]."""
    return [s.strip() for s in text.split(",") if s.strip()]


def overrides(sets: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` arguments as config overrides (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for s in sets:
        k, v = s.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


# ------------------------------------------------------------------------------------ stamps
PACKAGES = ("rls3", "torch", "pybullet", "pyrender", "stable-baselines3", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "missing"
    return out


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, load average and package versions, recorded with every result."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg": load, "allocator": runtime.active_allocator(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "versions": versions()}


def stamp_text(info: dict[str, Any], command: str) -> str:
    """One or two lines naming the machine, versions and command (for figures)."""
    v = info["versions"]
    return (f"{info['platform']}, {info['cpus']} CPUs, load {info['loadavg'][0]:.1f} | "
            f"rls3 {v['rls3']}, torch {v['torch']}, pybullet {v['pybullet']}, "
            f"pyrender {v['pyrender']}\n$ {command}"
            if info.get("loadavg") else
            f"{info['platform']}, {info['cpus']} CPUs | rls3 {v['rls3']}, torch {v['torch']}, "
            f"pybullet {v['pybullet']}, pyrender {v['pyrender']}\n$ {command}")


def stamp_markdown(info: dict[str, Any], command: str) -> str:
    v = info["versions"]
    load = f", load average {info['loadavg'][0]:.1f}" if info.get("loadavg") else ""
    return (f"> Machine: {info['platform']}, {info['cpus']} CPUs{load}. Versions: rls3 {v['rls3']}, "
            f"torch {v['torch']}, pybullet {v['pybullet']}, pyrender {v['pyrender']}, "
            f"stable-baselines3 {v['stable-baselines3']}, Python {v['python']}.  \n"
            f"> Command: `{command}`\n")


def stamp_figure(fig: Any, info: dict[str, Any], command: str) -> None:
    """Write the stamp at the bottom of a matplotlib figure."""
    fig.text(0.005, 0.005, stamp_text(info, command), fontsize=6, color="0.35", ha="left",
             va="bottom", family="monospace")


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def command_line() -> str:
    return "python " + " ".join(sys.argv)


# ------------------------------------------------------------------------------------ figures
def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, result: dict[str, Any], dpi: int = 110,
                rect: tuple[float, float, float, float] = (0, 0.07, 1, 1)) -> Path:
    """Stamp `fig` with the machine and command of `result`, lay it out above the stamp, write
    it to `path` and close it."""
    machine = result.get("machine")
    stamp_figure(fig, machine if isinstance(machine, dict) else machine_info(),
                 result.get("command", "?"))
    fig.tight_layout(rect=rect)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


# ------------------------------------------------------------------------------------ before/after
@contextlib.contextmanager
def git_worktree(rev: str, path: Path) -> Iterator[Path]:
    """The code at git revision `rev`, checked out (detached) at `path` for the block and removed
    after it (the "before" side of bench_iteration and bench_run)."""
    import subprocess

    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT,
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


# ------------------------------------------------------------------------------------ yield
def roll_yield(env: Any, act: Any, steps: int, seed: int) -> dict[str, dict[str, Any]]:
    """`steps` env steps with `act(obs)` from a reset with `seed`; per scene: steps, valid and
    distinct frames, move lengths and invalid reasons (bench_yield, bench_pretrain)."""
    obs, info = env.reset(seed=seed)
    tally: dict[str, dict[str, Any]] = {}
    for _ in range(steps):
        obs, _, term, trunc, info = env.step(act(obs))
        t = tally.setdefault(info["scene"], {"steps": 0, "valid": 0, "distinct": 0, "moves": []})
        t["steps"] += 1
        t["valid"] += int(info["valid"])
        t["distinct"] += int(info["distinct"])
        if info["valid"]:
            t["moves"].append(info["move"])
        if not info["valid"]:
            key = f"invalid:{info.get('reason', '?')}"
            t[key] = t.get(key, 0) + 1
        if term or trunc:
            obs, info = env.reset()
    return tally


def add_tally(rows: dict[str, dict[str, Any]], tally: dict[str, dict[str, Any]]) -> None:
    """Add one rollout's per-scene counts (and move lengths) to an agent's running totals."""
    for scene, c in tally.items():
        acc = rows.setdefault(scene, {"moves": []})
        for k, v in c.items():
            acc[k] = acc.get(k, 0) + v if k != "moves" else acc[k] + v


# ------------------------------------------------------------------------------------ data
#: the fixed rendered sets: name -> (scene split, seed offset)
SETS = {"train": ("train", 1), "heldout": ("train", 2), "test": ("test", 3)}


def rendered_sets(sizes: dict[str, int], image_size: int, seed: int, data_dir: str | Path
                  ) -> tuple[dict[str, list], dict[str, float | None]]:
    """The fixed sets of `SETS` (`train`: random valid layouts of the training rooms, `heldout`:
    other layouts of the same rooms, `test`: the unseen test rooms) at `sizes`, rendered by the
    embedded simulator, or read back from `data_dir` when rendered before; and the seconds each
    took to render (None for a set read back)."""
    import time

    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    from rls3.data import DatasetError, generate_samples, read_dataset, write_dataset
    from rls3.sim import SimBackend

    out: dict[str, list] = {}
    seconds: dict[str, float | None] = {}
    for name, (split, offset) in SETS.items():
        folder = Path(data_dir) / f"{name}-n{sizes[name]}-{image_size}px-seed{seed}"
        if folder.exists():
            try:
                out[name] = read_dataset(folder)
                seconds[name] = None      # read back, not rendered in this run
                continue
            except DatasetError as e:
                print(f"re-rendering {name}: {e}", flush=True)
        t = time.perf_counter()
        backend = SimBackend(scenes=split)
        try:
            samples = generate_samples(backend, sizes[name], image_size,
                                       seed=seed * 100 + offset, progress=True, desc=name)
        finally:
            backend.close()
        write_dataset(folder, samples, info={"kind": "bench_learning", "set": name},
                      overwrite=True)
        out[name], seconds[name] = samples, time.perf_counter() - t
    return out, seconds


# ------------------------------------------------------------------------------------ usage
def rusage_now() -> dict[str, float]:
    """This process's CPU seconds, page faults and thread count so far (for per-phase deltas)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = 0
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minflt": r.ru_minflt,
            "majflt": r.ru_majflt, "threads": threads, "thread_cpu": thread_cpu()}


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, summed by thread name (llvmpipe-N are the
    software renderer's, the rest Python's and torch's OpenMP pool's)."""
    import re

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        group = re.sub(r"[-:]?\d+$", "", name) or name
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def run_per_allocator(child_cmd: Any, allocators: list[str]
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run a benchmark's child once per allocator, one after the other: `child_cmd(name, out)` is
    the command writing its JSON to `out`. Returns (each child's JSON, each child's
    `run_child` usage), both by allocator."""
    import tempfile

    results: dict[str, dict[str, Any]] = {}
    usage: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rls3-bench-") as tmp:
        for name in allocators:
            out = Path(tmp) / f"{name}.json"
            usage[name] = run_child(child_cmd(name, out), name)
            results[name] = json.loads(out.read_text())
    return results, usage


def run_child(cmd: list[str], allocator_name: str, cwd: str | Path = ROOT,
              extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a benchmark child with RLS3_ALLOCATOR set; its wall/user/system time and page faults.

    The child's own rusage comes from wait4, so it counts only that process (and nothing else the
    machine runs); the load average before and after is recorded with it.
    """
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the child chooses
    env.update(RLS3_ALLOCATOR=allocator_name, **(extra_env or {}))
    load0 = os.getloadavg()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"benchmark child failed (exit {p.returncode}) under {allocator_name}: "
                         + " ".join(cmd))
    return {"allocator": allocator_name, "wall_s": wall, "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime, "minflt": ru.ru_minflt, "majflt": ru.ru_majflt,
            "maxrss_mb": ru.ru_maxrss / 1024, "loadavg_before": list(load0),
            "loadavg_after": list(os.getloadavg())}
