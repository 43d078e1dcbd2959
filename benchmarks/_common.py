"""Shared helpers of the benchmark scripts: the machine/version stamp, JSON output, figure stamps."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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
            "cpus": os.cpu_count(), "loadavg": load, "versions": versions()}


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
