"""Shared helpers of the benchmark scripts: the machine/version stamp, JSON output, figure stamps.

Importing it makes a benchmark script run under the allocator rls3 runs under (tcmalloc when the
machine has it; ``RLS3_ALLOCATOR=system`` keeps glibc malloc): the script re-executes itself once,
as the `rls3` command does, so that figures describe what users get.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rls3 import runtime  # noqa: E402

if Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent:  # a benchmark script
    runtime.ensure()

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


def finish(res: dict[str, Any], out: str | Path, markdown: Any) -> None:
    """Stamp a script's result with its command line, write its JSON and print its table."""
    res["command"] = command_line()
    write_json(out, res)
    print("\n".join(markdown(res)))
    print(f"wrote {out}")


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
