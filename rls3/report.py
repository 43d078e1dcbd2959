"""Reports from run directories: a markdown summary of each run and of each agent over seeds.

Everything here reads only a run's `config.yaml` and `metrics.jsonl` (see `rls3.loop` for the record
fields: `iteration`, `cum_steps`, `cum_valid`, `yield`, `feedback_j2`, `finetune_losses`, `val` /
`test` with `score`, `per_term`, `per_complexity`, `terms_generated`, `early_stopping`, ...).
The report leads with the answer to "did the VLM get better on the unseen test rooms?" (test score
before -> at the best validation iteration -> final, 95% intervals, per term), then the run
tables and the paper's figures (`rls3.plots`). Reference models evaluated with `rls3 eval --json`
(the paper's NegCLIP) join as baselines: a line in Fig. 5 and a row of the per-term table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from rls3.rundir import load_run_config, read_metrics

REPORT_FILE = "report.md"
#: confidence level of every interval in the report
LEVEL = 0.95


@dataclass(frozen=True)
class RunAnswer:
    """One run's test score before fine-tuning, at the best validation iteration and at the end.

    Intervals (`*_ci`) are 95% Wilson intervals over the test samples for accuracies (None for
    mean S_PG scores, which carry no per-sample spread in the metrics); `significant` says
    whether the iteration-0 score lies outside the final score's interval."""

    run: str
    agent: str
    seed: int | None
    n: int | None
    before: float | None
    best: float | None
    best_iteration: int | None
    final: float | None
    final_iteration: int | None
    before_ci: tuple[float, float] | None
    final_ci: tuple[float, float] | None
    per_term_before: dict[str, float]
    per_term_best: dict[str, float]
    per_term_final: dict[str, float]

    @property
    def gain(self) -> float | None:
        return None if self.before is None or self.final is None else self.final - self.before

    @property
    def best_gain(self) -> float | None:
        return None if self.before is None or self.best is None else self.best - self.before

    @property
    def significant(self) -> bool | None:
        if self.final_ci is None or self.before is None:
            return None
        lo, hi = self.final_ci
        return not lo <= self.before <= hi


@dataclass(frozen=True)
class Baseline:
    """A reference model's score on a test set, from `rls3 eval --json` (the paper draws NegCLIP
    so in Fig. 5): a horizontal line in Fig. 5 and a row of the report's per-term table."""

    name: str
    score: float
    per_term: dict[str, float]
    n: int | None = None
    source: str = ""


def read_baseline(spec: str) -> Baseline:
    """A `NAME=EVAL.json` baseline: the metrics `rls3 eval --json` wrote (`score`, `per_term`,
    `n`). ValueError, in one line naming the value and what is allowed, for anything else."""
    name, sep, file = spec.partition("=")
    name, file = name.strip(), file.strip()
    if not sep or not name or not file:
        raise ValueError(f"--baseline {spec!r}: expected NAME=EVAL.json (a file written by "
                         f"`rls3 eval ... --json EVAL.json`)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ValueError(f"--baseline {spec!r}: file {file!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--baseline {spec!r}: {file!r} is not a JSON file ({e})") from None
    score = data.get("score") if isinstance(data, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"--baseline {spec!r}: {file!r} has no numeric 'score' (expected the "
                         f"metrics of `rls3 eval --json`)")
    terms = data.get("per_term") or {}
    if not isinstance(terms, dict) or not all(isinstance(v, (int, float)) for v in terms.values()):
        raise ValueError(f"--baseline {spec!r}: {file!r} has a malformed 'per_term' (expected "
                         f"term -> score)")
    n = data.get("n")
    return Baseline(name=name, score=float(score),
                    per_term={str(t): float(v) for t, v in terms.items()},
                    n=int(n) if isinstance(n, int) and not isinstance(n, bool) else None,
                    source=str(data.get("checkpoint") or path))


def wilson_interval(score: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of an accuracy `score` measured on `n` samples."""
    from scipy.stats import binomtest

    ci = binomtest(int(round(score * n)), n).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: Sequence[float], level: float = LEVEL
                  ) -> tuple[float, float | None, float | None]:
    """Mean and Student-t interval of the mean over runs (no interval for a single run)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, None, None
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def run_answer(run_dir: str | Path, records: Sequence[dict[str, Any]] | None = None,
                accuracy: bool | None = None) -> RunAnswer:
    """The test-score answer of one run (from its metrics records)."""
    run_dir = Path(run_dir)
    recs = list(records) if records is not None else read_metrics(run_dir)
    first = next((r for r in recs if r.get("iteration") == 0), {})
    done = [r for r in recs if isinstance(r.get("iteration"), int) and r["iteration"] > 0]
    last = done[-1] if done else {}
    es = last.get("early_stopping") or {}
    best_it = es.get("best_iteration")
    best = next((r for r in recs if r.get("iteration") == best_it), {})
    from rls3.plots import agent_label

    mode = next((r["feedback_mode"] for r in done if r.get("feedback_mode")), None)
    agent = agent_label(str(first.get("agent") or last.get("agent") or "?"), mode)
    vlm = first.get("vlm") or last.get("vlm") or ""
    if accuracy is None:
        accuracy = "paligemma" not in str(vlm)

    def score(r: dict[str, Any]) -> float | None:
        v = (r.get("test") or {}).get("score")
        return None if v is None else float(v)

    def ci(r: dict[str, Any]) -> tuple[float, float] | None:
        t = r.get("test") or {}
        if not accuracy or t.get("score") is None or not t.get("n"):
            return None
        return wilson_interval(float(t["score"]), int(t["n"]))

    def terms(r: dict[str, Any]) -> dict[str, float]:
        return dict((r.get("test") or {}).get("per_term") or {})

    return RunAnswer(
        run=run_dir.name, agent=str(agent), seed=first.get("seed", last.get("seed")),
        n=(first.get("test") or {}).get("n"), before=score(first),
        best=score(best) if best else None, best_iteration=best_it if best else None,
        final=score(last) if last else None, final_iteration=last.get("iteration"),
        before_ci=ci(first) if first else None, final_ci=ci(last) if last else None,
        per_term_before=terms(first), per_term_best=terms(best), per_term_final=terms(last))


def _ci(c: tuple[float, float] | None) -> str:
    return "" if c is None else f" [{c[0]:.3f}, {c[1]:.3f}]"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def summary_line(a: RunAnswer) -> str:
    """One line: test before -> best (iteration) -> final with intervals and the verdict."""
    if a.before is None:
        return "test score: not measured yet"
    text = f"test {a.before:.3f}{_ci(a.before_ci)}"
    if a.final is None:
        return text + " (no fine-tuning iteration finished)"
    if a.best is not None:
        text += f" -> best-val {a.best:.3f} (iteration {a.best_iteration})"
    text += f" -> final {a.final:.3f}{_ci(a.final_ci)} (iteration {a.final_iteration}); "
    text += f"change {_signed(a.gain)}"
    if a.significant is not None:
        text += (" (significant: the iteration-0 score lies outside the final's 95% interval)"
                 if a.significant else
                 " (not significant: the iteration-0 score lies inside the final's 95% interval)")
    return text


def answer_lines(answers: Sequence[RunAnswer], baselines: Sequence[Baseline] = ()
                 ) -> list[str]:
    """Markdown lines answering "did the VLM get better on the unseen test rooms?", with the
    reference models' scores (`baselines`) beside the runs'."""
    lines = ["## Did the VLM get better on the unseen test rooms?", ""]
    for a in answers:
        lines.append(f"- **{a.run}** ({a.agent}, seed {a.seed}): {summary_line(a)}")
    for b in baselines:
        lines.append(f"- baseline **{b.name}**: test {b.score:.3f}"
                     + (f" on {b.n} samples" if b.n else "") + f" (`{b.source}`)")
    groups: dict[str, list[RunAnswer]] = {}
    for a in answers:
        if a.gain is not None:
            groups.setdefault(a.agent, []).append(a)
    if groups:
        lines += ["", "Over runs (mean, 95% t-interval over seeds; the change is 'outside' when "
                  "its interval excludes 0):", "",
                  "| agent | runs | before | best-val | final | change at best-val | "
                  "final change | outside? |", "|---|---|---|---|---|---|---|---|"]
        for agent, rs in sorted(groups.items()):
            cells = []
            for vals in ([a.before for a in rs], [a.best for a in rs], [a.final for a in rs],
                         [a.best_gain for a in rs], [a.gain for a in rs]):
                v = [x for x in vals if x is not None]
                m, lo, hi = mean_interval(v) if v else (math.nan, None, None)
                cells.append(f"{m:.3f}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]"))
            _, lo, hi = mean_interval([cast(float, a.gain) for a in rs])  # grouped: set
            verdict = "-" if lo is None or hi is None else ("yes" if lo > 0 or hi < 0 else "no")
            lines.append(f"| {agent} | {len(rs)} | " + " | ".join(cells) + f" | {verdict} |")
    terms = sorted({t for a in answers for t in a.per_term_before}
                   | {t for b in baselines for t in b.per_term})
    if terms:
        lines += ["", "Per term, test score before → best-val → final (baselines: their "
                  "score):", "",
                  "| run | " + " | ".join(terms) + " |", "|---|" + "---|" * len(terms)]
        for a in answers:
            cells = [f"{_fmt(a.per_term_before.get(t), 2)} → {_fmt(a.per_term_best.get(t), 2)} "
                     f"→ {_fmt(a.per_term_final.get(t), 2)}" for t in terms]
            lines.append(f"| {a.run} | " + " | ".join(cells) + " |")
        for b in baselines:
            cells = [_fmt(b.per_term.get(t), 2) for t in terms]
            lines.append(f"| {b.name} (baseline) | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _run_summary(run_dir: Path, recs: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = load_run_config(run_dir)
    base = next((r for r in recs if r.get("iteration") == 0), {})
    last = recs[-1] if recs else {}
    es = last.get("early_stopping") or {}
    best_it = es.get("best_iteration")
    best = next((r for r in recs if r.get("iteration") == best_it), {})
    from rls3.plots import agent_label

    hard = [r["hardness_mean"] for r in recs if r.get("hardness_mean") is not None]
    distinct = sum(int(r.get("distinct") or 0) for r in recs)
    return {"run": run_dir.name, "agent": agent_label(cfg.agent.name, cfg.loop.feedback),
            "vlm": cfg.vlm.name, "seed": cfg.seed,
            "hardness": float(np.mean(hard)) if hard else None,
            "yield_distinct": distinct / last["cum_steps"] if last.get("cum_steps") and
            any("distinct" in r for r in recs) else None,
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
            "elapsed_s": last.get("elapsed_s")}


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path,
                 baselines: Sequence[Baseline] = ()) -> Path:
    """Write `out_dir/report.md` summarising the runs, with `baselines` (reference models, see
    `read_baseline`) beside them; returns its path."""
    if not run_dirs:
        raise ValueError("write_report needs at least one run directory")
    records = [(Path(d), read_metrics(d)) for d in run_dirs]    # each run read once
    runs = [_run_summary(d, recs) for d, recs in records]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# RLS3 report", ""]
    lines += answer_lines([run_answer(d, recs) for d, recs in records], baselines)
    lines += ["## Runs", "",
              "| run | agent | VLM | seed | iterations | stop | generated (steps) | valid | "
              "yield | yield (distinct) | mean J2 | mean hardness | test before | test after | "
              "best val (iter) | test at best val |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['agent']} | {r['vlm']} | {r['seed']} | {r['iterations']} "
                     f"| {r['stop']} | {r['cum_steps']} | {r['cum_valid']} | {_fmt(r['yield'], 2)} "
                     f"| {_fmt(r['yield_distinct'], 2)} | {_fmt(r['j2'])} | "
                     f"{_fmt(r['hardness'])} | {_fmt(r['test0'])} | {_fmt(r['test'])} | "
                     f"{_fmt(r['val_best'])} ({_fmt(r['best_iteration'])}) | "
                     f"{_fmt(r['test_at_best'])} |")
    agents: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        agents.setdefault(r["agent"], []).append(r)
    lines += ["", "## By agent (mean ± std over runs)", "",
              "| agent | runs | generated (steps) | yield | yield (distinct) | mean hardness | "
              "test before | test after |",
              "|---|---|---|---|---|---|---|---|"]

    def ms(vals: list[Any], digits: int = 3) -> str:
        v = [float(x) for x in vals if x is not None]
        if not v:
            return "-"
        return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}"

    for name, rs in sorted(agents.items()):
        lines.append(f"| {name} | {len(rs)} | {ms([r['cum_steps'] for r in rs], 0)} | "
                     f"{ms([r['yield'] for r in rs], 2)} | "
                     f"{ms([r['yield_distinct'] for r in rs], 2)} | "
                     f"{ms([r['hardness'] for r in rs])} | {ms([r['test0'] for r in rs])} | "
                     f"{ms([r['test'] for r in rs])} |")
    # per-term scores (before -> best-val -> final) are in the answer section at the top
    from rls3.plots import FIGURES, plot_all

    figures = plot_all(run_dirs, out, baselines)
    if figures:
        lines += ["", "## Figures", ""]
        for key, png in figures.items():
            lines += [f"### {FIGURES[key][0]}", "", f"![{key}]({png.name})", ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
