"""Reports from run directories: a markdown summary of each run and of each agent over seeds.

Everything here reads only a run's `config.yaml` and `metrics.jsonl` (see `rls3.loop` for the record
fields: `iteration`, `cum_steps`, `cum_valid`, `yield`, `feedback_j2`, `finetune_losses`, `val` /
`test` with `score`, `per_term`, `per_complexity`, `terms_generated`, `early_stopping`, ...).
(Plots of the paper's figures are to be added here.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rls3.loop import load_run_config, read_metrics

REPORT_FILE = "report.md"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _run_summary(run_dir: Path) -> dict[str, Any]:
    cfg = load_run_config(run_dir)
    recs = read_metrics(run_dir)
    base = next((r for r in recs if r.get("iteration") == 0), {})
    last = recs[-1] if recs else {}
    es = last.get("early_stopping") or {}
    best_it = es.get("best_iteration")
    best = next((r for r in recs if r.get("iteration") == best_it), {})
    return {"run": run_dir.name, "agent": cfg.agent.name, "vlm": cfg.vlm.name, "seed": cfg.seed,
            "preset": cfg.preset, "iterations": last.get("iteration", 0),
            "stop": last.get("stop_reason") or "running",
            "cum_steps": last.get("cum_steps", 0), "cum_valid": last.get("cum_valid", 0),
            "yield": last.get("cum_yield"),
            "j2": float(np.mean([r["feedback_j2"] for r in recs
                                 if r.get("feedback_j2") is not None]))
            if any(r.get("feedback_j2") is not None for r in recs) else None,
            "test0": (base.get("test") or {}).get("score"),
            "test": (last.get("test") or {}).get("score"),
            "val_best": es.get("best_score"), "best_iteration": best_it,
            "test_at_best": (best.get("test") or {}).get("score"),
            "per_term0": (base.get("test") or {}).get("per_term") or {},
            "per_term": (last.get("test") or {}).get("per_term") or {},
            "elapsed_s": last.get("elapsed_s")}


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write `out_dir/report.md` summarising the runs; returns its path."""
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    runs = [_run_summary(Path(d)) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# RLS3 report", ""]
    lines += ["## Runs", "",
              "| run | agent | VLM | seed | iterations | stop | generated (steps) | valid | "
              "yield | mean J2 | test before | test after | best val (iter) | test at best val |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['agent']} | {r['vlm']} | {r['seed']} | {r['iterations']} "
                     f"| {r['stop']} | {r['cum_steps']} | {r['cum_valid']} | {_fmt(r['yield'], 2)} "
                     f"| {_fmt(r['j2'])} | {_fmt(r['test0'])} | {_fmt(r['test'])} | "
                     f"{_fmt(r['val_best'])} ({_fmt(r['best_iteration'])}) | "
                     f"{_fmt(r['test_at_best'])} |")
    agents: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        agents.setdefault(r["agent"], []).append(r)
    lines += ["", "## By agent (mean ± std over runs)", "",
              "| agent | runs | generated (steps) | yield | test before | test after |",
              "|---|---|---|---|---|---|"]

    def ms(vals: list[Any], digits: int = 3) -> str:
        v = [float(x) for x in vals if x is not None]
        if not v:
            return "-"
        return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}"

    for name, rs in sorted(agents.items()):
        lines.append(f"| {name} | {len(rs)} | {ms([r['cum_steps'] for r in rs], 0)} | "
                     f"{ms([r['yield'] for r in rs], 2)} | {ms([r['test0'] for r in rs])} | "
                     f"{ms([r['test'] for r in rs])} |")
    terms = sorted({t for r in runs for t in list(r["per_term"]) + list(r["per_term0"])})
    if terms:
        lines += ["", "## Test score per term (before → after)", "",
                  "| run | " + " | ".join(terms) + " |", "|---|" + "---|" * len(terms)]
        for r in runs:
            cells = [f"{_fmt(r['per_term0'].get(t), 2)} → {_fmt(r['per_term'].get(t), 2)}"
                     for t in terms]
            lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    from rls3.plots import FIGURES, plot_all

    figures = plot_all(run_dirs, out)
    if figures:
        lines += ["", "## Figures", ""]
        for key, png in figures.items():
            lines += [f"### {FIGURES[key][0]}", "", f"![{key}]({png.name})", ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
