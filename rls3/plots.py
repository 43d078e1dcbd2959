"""The paper's figures from run directories (matplotlib, Agg backend; PNG files).

Every figure is built by a `*_figure` function that takes run directories (their `metrics.jsonl`,
see `rls3.loop` for the fields; the agent comes from the records or `config.yaml`) and returns the
matplotlib Figure (tests read the plotted data from it); its `plot_*` twin writes that figure as
one PNG into `out_dir` and returns the path.
Runs are grouped by agent (SAC against random) and, where several seeds exist, drawn as mean ± std
over seeds. Missing fields, runs with only the iteration-0 record, or no runs with data at all give
a figure that says so instead of an error.

  plot_score_vs_data     Fig. 5: test score vs cumulative generated samples (env steps), with
                         reference models (`rls3.report.Baseline`, e.g. NegCLIP) as lines
  plot_per_term          Fig. 6: per-term test score before/after + cumulative count generated
  plot_by_complexity     Fig. 7: test score by complexity (1/2/3 terms) per iteration
  plot_finetune_loss     Fig. 8: fine-tuning loss per step and per iteration, new batch vs replayed
  plot_validation        Fig. 9: validation score per iteration, early-stopping point marked
  plot_yield             valid-sample yield per iteration for each agent
  plot_hardness          hardness of the generated samples per iteration and per term
  plot_all               all of the above; returns {name: path}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from rls3.report import Baseline

log = logging.getLogger(__name__)

RunDirs = Sequence[str | Path]
#: agent name -> colour (others cycle through the default palette)
AGENT_COLORS = {"sac": "tab:blue", "random": "tab:orange", "sac-sample": "tab:green"}
DPI = 110


@dataclass(frozen=True)
class Run:
    """One run's records and the labels the figures need."""

    path: Path
    agent: str
    seed: int | None
    records: list[dict[str, Any]]


#: line styles of successive baselines in Fig. 5
BASELINE_STYLES = ("--", ":", "-.")


def agent_label(agent: str, feedback: str | None) -> str:
    """How figures and reports name a run's agent: "sac" (the paper's episode feedback),
    "sac-sample" (per-sample feedback), "random"."""
    return f"{agent}-sample" if agent == "sac" and feedback == "sample" else agent


def load_runs(run_dirs: RunDirs) -> list[Run]:
    """Read every run's metrics; unreadable runs are skipped with a warning."""
    from rls3.rundir import RunDirError, load_run_config, read_metrics

    runs = []
    for d in run_dirs:
        d = Path(d)
        try:
            recs = read_metrics(d)
        except (OSError, RunDirError) as e:
            log.warning("skipping run %s: %s", d, e)
            continue
        agent = next((r["agent"] for r in recs if r.get("agent")), None)
        seed = next((r["seed"] for r in recs if r.get("seed") is not None), None)
        if agent is None:
            try:
                cfg = load_run_config(d)
                agent, seed = cfg.agent.name, cfg.seed
            except (OSError, ValueError) as e:
                log.warning("run %s: no agent in its records or config (%s)", d, e)
                agent = "?"
        recs = sorted((r for r in recs if isinstance(r.get("iteration"), int)),
                      key=lambda r: r["iteration"])
        mode = next((r["feedback_mode"] for r in recs if r.get("feedback_mode")), None)
        runs.append(Run(d, agent_label(str(agent), mode), seed, recs))
    return runs


def _by_agent(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.agent, []).append(r)
    # SAC first, random second, others alphabetically
    order = {"sac": 0, "sac-sample": 0.5, "random": 1}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])))


def _color(agent: str, i: int = 0) -> str:
    return AGENT_COLORS.get(agent, f"C{(i + 2) % 10}")


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _get(rec: dict[str, Any], *keys: str) -> Any:
    cur: Any = rec
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def _score_label(runs: list[Run]) -> str:
    vlms = {r.records[0].get("vlm") for r in runs if r.records}
    return "mean S_PG (1-5)" if vlms and all(v and "paligemma" in str(v) for v in vlms) \
        else "accuracy"


def _finish(fig: Figure, out_dir: str | Path, name: str) -> Path:
    """Lay out `fig`, write it as `out_dir/name` and close it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes,
            color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def mean_std_on_grid(curves: list[tuple[np.ndarray, np.ndarray]], n: int = 60
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Interpolate (x, y) curves onto a common grid from 0 to the longest x.

    Each curve counts only inside its own x range (a shorter run does not pretend to go on).
    Returns grid, mean, std and the number of curves at each grid point."""
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves]
    curves = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in curves]
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        e = np.array([])
        return e, e, e, e
    hi = max(float(x.max()) for x, _ in curves)
    lo = min(float(x.min()) for x, _ in curves)
    grid = np.linspace(lo, hi, n) if hi > lo else np.array([lo])
    ys = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x.min() - 1e-9) & (grid <= x.max() + 1e-9)
        ys[i, inside] = np.interp(grid[inside], x, y)
    count = np.sum(np.isfinite(ys), axis=0)
    with np.errstate(all="ignore"), _quiet_nan():
        mean = np.nanmean(ys, axis=0)
        std = np.nanstd(ys, axis=0)
    return grid, mean, std, count


class _quiet_nan:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def _per_iteration(runs: list[Run], value: Callable[[dict[str, Any]], Any],
                   start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean/std over runs of `value(record)` at each iteration number (NaN where missing)."""
    its = sorted({r["iteration"] for run in runs for r in run.records if r["iteration"] >= start})
    if not its:
        e = np.array([])
        return e, e, e
    ys = np.full((len(runs), len(its)), np.nan)
    for i, run in enumerate(runs):
        for r in run.records:
            if r["iteration"] in its:
                ys[i, its.index(r["iteration"])] = _num(value(r))
    with _quiet_nan():
        return np.array(its), np.nanmean(ys, axis=0), np.nanstd(ys, axis=0)


def _band(ax: Any, x: np.ndarray, m: np.ndarray, s: np.ndarray, color: str, label: str,
          marker: str | None = "o") -> None:
    ok = np.isfinite(m)
    if not ok.any():
        return
    ax.plot(x[ok], m[ok], color=color, label=label, marker=marker if ok.sum() < 25 else None,
            ms=4)
    ax.fill_between(x[ok], (m - s)[ok], (m + s)[ok], color=color, alpha=0.2, lw=0)


# ------------------------------------------------------------------------------------ figures
def score_vs_data_figure(run_dirs: RunDirs, split: str = "test", x_key: str = "cum_steps",
                         baselines: Sequence[Baseline] = ()) -> Figure:
    """Fig. 5: `split` score against cumulative generated samples, mean ± std over seeds per agent
    (runs interpolated onto a common grid; the band covers the range every run of the agent
    reached; thin lines: the runs themselves); each of `baselines` is a labelled horizontal
    line."""
    runs = load_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, (agent, rs) in enumerate(_by_agent(runs).items()):
        curves = []
        for run in rs:
            pts = [(_num(r.get(x_key, 0)), _num(_get(r, split, "score"))) for r in run.records]
            pts = [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
            if pts:
                xs, ys = map(np.array, zip(*pts, strict=True))
                curves.append((xs, ys))
                ax.plot(xs, ys, color=_color(agent, i), alpha=0.3, lw=0.8, marker=".", ms=3)
        if not curves:
            continue
        drawn = True
        grid, m, s, n = mean_std_on_grid(curves)
        common = n == len(curves)    # mean ± std only where every run of the agent has data
        _band(ax, grid[common], m[common], s[common], _color(agent, i),
              f"{agent} (n={len(curves)})", marker=None)
    for j, b in enumerate(baselines):
        drawn = True
        ax.axhline(b.score, color="0.15", lw=1.2, ls=BASELINE_STYLES[j % len(BASELINE_STYLES)],
                   label=f"{b.name} {b.score:.3f}" + (f" (n={b.n})" if b.n else ""))
    if drawn:
        ax.set_xlabel("cumulative generated samples (env steps)" if x_key == "cum_steps"
                      else f"cumulative {x_key}")
        ax.set_ylabel(f"{split} {_score_label(runs)}")
        ax.set_title(f"{split.capitalize()} score vs generated data (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    else:
        _empty(ax, f"{split} scores")
    return fig


def plot_score_vs_data(run_dirs: RunDirs, out_dir: str | Path, split: str = "test",
                       x_key: str = "cum_steps", name: str = "fig5_score_vs_data.png",
                       baselines: Sequence[Baseline] = ()) -> Path:
    """Fig. 5 (`score_vs_data_figure`) written as `out_dir/name`."""
    return _finish(score_vs_data_figure(run_dirs, split, x_key, baselines), out_dir, name)


def per_term_figure(run_dirs: RunDirs, split: str = "test") -> Figure:
    """Fig. 6: per-term score before (iteration 0) and after (last iteration), mean over seeds per
    agent, and the cumulative number of samples generated with each term."""
    runs = load_runs(run_dirs)
    groups = _by_agent(runs)
    terms = sorted({t for run in runs for r in run.records
                    for t in (_get(r, split, "per_term") or {})})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2),
                                  gridspec_kw={"width_ratios": [3, 2]})
    if not terms:
        _empty(ax, f"{split} per-term scores")
    else:
        bars = []  # (label, values, color, hatch)
        before = [_num(_get(run.records[0], split, "per_term", t)) if run.records else math.nan
                  for run in runs for t in terms]
        # "before" is the untouched VLM, shared by all agents of the same seeds: mean over runs
        b = np.array(before, float).reshape(len(runs), len(terms)) if runs else np.zeros((0, 0))
        with _quiet_nan():
            bars.append(("before (iteration 0)", np.nanmean(b, axis=0), "0.6", None))
        for i, (agent, rs) in enumerate(groups.items()):
            a = np.array([[_num(_get(run.records[-1], split, "per_term", t)) for t in terms]
                          for run in rs if run.records and run.records[-1]["iteration"] > 0])
            if a.size:
                with _quiet_nan():
                    bars.append((f"{agent} after", np.nanmean(a, axis=0), _color(agent, i), None))
        width = 0.8 / len(bars)
        xs = np.arange(len(terms))
        for k, (label, vals, color, hatch) in enumerate(bars):
            ax.bar(xs + (k - (len(bars) - 1) / 2) * width, np.nan_to_num(vals), width,
                   label=label, color=color, hatch=hatch)
        ax.set_xticks(xs)
        ax.set_xticklabels(terms, rotation=20)
        ax.set_ylabel(f"{split} {_score_label(runs)}")
        ax.set_title(f"Per-term {split} score before / after (mean over seeds)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    gen_terms = sorted({t for run in runs for r in run.records
                        for t in (r.get("cum_terms_generated") or {})})
    if not gen_terms:
        _empty(ax2, "terms generated")
    else:
        xs = np.arange(len(gen_terms))
        width = 0.8 / max(len(groups), 1)
        for i, (agent, rs) in enumerate(groups.items()):
            c = np.array([[_num((run.records[-1].get("cum_terms_generated") or {}).get(t, 0))
                           for t in gen_terms] for run in rs if run.records])
            if c.size:
                ax2.bar(xs + (i - (len(groups) - 1) / 2) * width, np.nanmean(c, axis=0), width,
                        yerr=np.nanstd(c, axis=0) if len(c) > 1 else None,
                        color=_color(agent, i), label=agent, capsize=2)
        ax2.set_xticks(xs)
        ax2.set_xticklabels(gen_terms, rotation=20)
        ax2.set_ylabel("valid samples generated (cumulative)")
        ax2.set_title("Terms generated")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=8)
        ax2.grid(axis="y", alpha=0.3)
    return fig


def plot_per_term(run_dirs: RunDirs, out_dir: str | Path, split: str = "test",
                  name: str = "fig6_per_term.png") -> Path:
    """Fig. 6 (`per_term_figure`) written as `out_dir/name`."""
    return _finish(per_term_figure(run_dirs, split), out_dir, name)


def by_complexity_figure(run_dirs: RunDirs, split: str = "test") -> Figure:
    """Fig. 7: score per complexity (1/2/3 spatial terms) per iteration; one panel per agent,
    mean ± std over seeds."""
    runs = load_runs(run_dirs)
    groups = _by_agent(runs)
    levels = sorted({c for run in runs for r in run.records
                     for c in (_get(r, split, "per_complexity") or {})}, key=str)
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5.2 * max(len(groups), 1), 4),
                             squeeze=False, sharey=True)
    if not levels:
        _empty(axes[0][0], f"{split} scores by complexity")
        return fig
    for ax, (agent, rs) in zip(axes[0], groups.items(), strict=True):
        for j, c in enumerate(levels):
            its, m, s = _per_iteration(rs, _complexity_score(split, c))
            _band(ax, its, m, s, f"C{j}", f"{c} term{'s' if str(c) != '1' else ''}")
        ax.set_title(f"{agent}: {split} score by complexity (n={len(rs)})")
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{split} {_score_label(runs)}")
    return fig


def plot_by_complexity(run_dirs: RunDirs, out_dir: str | Path, split: str = "test",
                       name: str = "fig7_by_complexity.png") -> Path:
    """Fig. 7 (`by_complexity_figure`) written as `out_dir/name`."""
    return _finish(by_complexity_figure(run_dirs, split), out_dir, name)


def _complexity_score(split: str, c: Any) -> Callable[[dict[str, Any]], Any]:
    """A record's `split` score at complexity `c` (for `_per_iteration`)."""
    return lambda r: _get(r, split, "per_complexity", c)


def _iteration_losses(run: Run) -> list[tuple[int, list[float], list[float], list[float]]]:
    """Per fine-tuning iteration: (iteration, all-step losses, new-batch losses per step,
    replayed-sample losses per step), NaN where a step had none of that group."""
    out = []
    for r in run.records:
        if r["iteration"] <= 0:
            continue
        allv = [_num(v) for v in r.get("finetune_losses") or []]
        new = [_num(v) for v in r.get("finetune_losses_new") or []] or [math.nan] * len(allv)
        rep = [_num(v) for v in r.get("finetune_losses_replay") or []] or [math.nan] * len(allv)
        out.append((r["iteration"], allv, new, rep))
    return out


def _ends(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last tenth (at least one step) of an iteration's losses."""
    v = np.asarray(values, dtype=float)
    m = max(1, len(v) // 10)
    with _quiet_nan():
        return float(np.nanmean(v[:m])), float(np.nanmean(v[-m:]))


def finetune_loss_figure(run_dirs: RunDirs) -> Figure:
    """Fig. 8: fine-tuning loss. Top: every optimizer step, concatenated over iterations, split
    into the new batch (solid) and the replayed earlier samples (dashed) where the run recorded
    them (iteration ends dotted). Bottom: per iteration, each part's loss at the start and the
    end of its fine-tuning (first / last tenth of the steps): a replayed part that starts far
    above where it ended the iteration before shows forgetting."""
    runs = load_runs(run_dirs)
    groups = _by_agent(runs)
    ncol = max(len(groups), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(5.8 * ncol, 7.2), squeeze=False)
    for col, (agent, rs) in enumerate(groups.items()):
        ax, bx = axes[0][col], axes[1][col]
        bounds_drawn = any_here = False
        for j, run in enumerate(rs):
            drawn = _finetune_run(ax, bx, run, f"C{j % 10}", bounds_drawn)
            any_here = any_here or drawn
            bounds_drawn = bounds_drawn or drawn
        _finetune_axes(ax, bx, agent, any_here)
    if not groups:
        _empty(axes[0][0], "fine-tuning losses")
        _empty(axes[1][0], "fine-tuning losses")
    return fig


def _finetune_run(ax: Any, bx: Any, run: Run, color: str, bounds_drawn: bool) -> bool:
    """One run's curves of `finetune_loss_figure` (the iteration ends too unless
    `bounds_drawn`); whether it had any losses to draw."""
    its = _iteration_losses(run)
    allv = [v for _, a, _, _ in its for v in a]
    if not allv:
        return False
    x = np.arange(1, len(allv) + 1)
    new = np.array([v for _, _, n, _ in its for v in n], dtype=float)
    rep = np.array([v for _, _, _, r in its for v in r], dtype=float)
    if np.isfinite(new).any():
        ax.plot(x, new, lw=1, color=color, label=f"seed {run.seed}: new batch")
        if np.isfinite(rep).any():
            ax.plot(x, rep, lw=1, ls="--", color=color,
                    label=f"seed {run.seed}: replayed")
    else:
        ax.plot(x, allv, lw=1, color=color, label=f"seed {run.seed}")
    if not bounds_drawn:
        pos = np.cumsum([len(a) for _, a, _, _ in its])
        for p in pos[:-1]:
            ax.axvline(p + 0.5, color="0.5", ls=":", lw=0.8)
    it = [i for i, *_ in its]
    parts = ((2, "-", "new"), (3, "--", "replayed")) if np.isfinite(new).any() else \
        ((1, "-", "all samples"),)         # runs recorded before the split existed
    for vals, style, what in parts:
        ends = np.array([_ends(cast("list[float]", t[vals])) for t in its], dtype=float)
        if not np.isfinite(ends).any():
            continue
        bx.plot(it, ends[:, 0], style, marker="o", ms=4, color=color,
                label=f"seed {run.seed}: {what}, start")
        bx.plot(it, ends[:, 1], style, marker="x", ms=4, color=color, alpha=0.6,
                label=f"seed {run.seed}: {what}, end")
    return True


def _finetune_axes(ax: Any, bx: Any, agent: str, any_here: bool) -> None:
    """Titles, labels and legends of one agent's two `finetune_loss_figure` panels."""
    ax.set_title(f"{agent}: fine-tuning loss per step (dotted: iteration ends)")
    ax.set_xlabel("optimizer step (concatenated over iterations)")
    bx.set_title(f"{agent}: loss at the start (o) and end (x) of each iteration")
    bx.set_xlabel("iteration")
    bx.xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.set_ylabel("training loss")
    if any_here:
        ax.legend(fontsize=7)
        if bx.get_legend_handles_labels()[0]:
            bx.legend(fontsize=6, ncol=2)
    else:
        _empty(ax, "fine-tuning losses")
        _empty(bx, "fine-tuning losses")


def plot_finetune_loss(run_dirs: RunDirs, out_dir: str | Path,
                       name: str = "fig8_finetune_loss.png") -> Path:
    """Fig. 8 (`finetune_loss_figure`) written as `out_dir/name`."""
    return _finish(finetune_loss_figure(run_dirs), out_dir, name)


def validation_figure(run_dirs: RunDirs) -> Figure:
    """Fig. 9: validation score per iteration for every run; a star at the best (early-stopping)
    iteration and a cross where a run stopped early."""
    runs = load_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, (agent, rs) in enumerate(_by_agent(runs).items()):
        for k, run in enumerate(rs):
            pts = [(r["iteration"], _num(_get(r, "val", "score"))) for r in run.records]
            pts = [(a, b) for a, b in pts if math.isfinite(b)]
            if not pts:
                continue
            drawn = True
            xs, ys = map(np.array, zip(*pts, strict=True))
            col = _color(agent, i)
            ax.plot(xs, ys, color=col, alpha=0.75, marker=".", lw=1,
                    label=agent if k == 0 else None)
            es = run.records[-1].get("early_stopping") or {}
            best = es.get("best_iteration")
            if best is not None and best in xs:
                ax.plot([best], [ys[list(xs).index(best)]], marker="*", ms=12, color=col,
                        mec="k", mew=0.5, label="best (early-stopping point)"
                        if i == 0 and k == 0 else None)
            if run.records[-1].get("stop_reason") == "early_stopping":
                ax.plot([xs[-1]], [ys[-1]], marker="X", ms=8, color=col, mec="k", mew=0.5,
                        label="stopped early" if not any(
                            t.get_label() == "stopped early" for t in ax.lines) else None)
    if drawn:
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"validation {_score_label(runs)}")
        ax.set_title("Validation score per iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    else:
        _empty(ax, "validation scores")
    return fig


def plot_validation(run_dirs: RunDirs, out_dir: str | Path,
                    name: str = "fig9_validation.png") -> Path:
    """Fig. 9 (`validation_figure`) written as `out_dir/name`."""
    return _finish(validation_figure(run_dirs), out_dir, name)


def yield_figure(run_dirs: RunDirs) -> Figure:
    """Valid-sample yield (valid frames / env steps) per iteration, mean ± std over seeds per
    agent, with each agent's cumulative yield in the legend."""
    runs = load_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, (agent, rs) in enumerate(_by_agent(runs).items()):
        its, m, s = _per_iteration(rs, lambda r: r.get("yield"), start=1)
        if not np.isfinite(m).any():
            continue
        drawn = True
        cum = [_num(run.records[-1].get("cum_yield")) for run in rs if run.records]
        cum = [c for c in cum if math.isfinite(c)]
        label = f"{agent} (n={len(rs)}, overall {np.mean(cum):.2f})" if cum else agent
        _band(ax, its, m, s, _color(agent, i), label)
        its, m, _ = _per_iteration(rs, lambda r: r.get("yield_distinct"), start=1)
        ok = np.isfinite(m)
        if ok.any():
            ax.plot(its[ok], m[ok], color=_color(agent, i), ls=":", lw=1.2,
                    label=f"{agent}: distinct layouts")
    if drawn:
        ax.set_ylim(0, 1.02)
        ax.axhline(0.9, color="0.5", ls="--", lw=0.8, label="target 0.9 (distinct)")
        _per_iteration_axes(ax, "valid samples / env steps", "Valid-sample yield per iteration")
    else:
        _empty(ax, "yield")
    return fig


def plot_yield(run_dirs: RunDirs, out_dir: str | Path, name: str = "yield.png") -> Path:
    """The yield figure (`yield_figure`) written as `out_dir/name`."""
    return _finish(yield_figure(run_dirs), out_dir, name)


def _per_iteration_axes(ax: Any, ylabel: str, title: str) -> None:
    """Labels, integer iteration ticks, grid and legend of a per-iteration panel."""
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def hardness_figure(run_dirs: RunDirs) -> Figure:
    """Hardness of the generated samples under the VLM as it was when they were generated (mean
    per-sample loss against the hard negatives, or 6 - S_PG), per iteration, mean ± std over
    seeds per agent; right: per spatial term, averaged over the later half of the iterations."""
    runs = load_runs(run_dirs)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = _by_agent(runs)
    drawn = False
    for i, (agent, rs) in enumerate(groups.items()):
        its, m, s = _per_iteration(rs, lambda r: r.get("hardness_mean"), start=1)
        if np.isfinite(m).any():
            drawn = True
            _band(ax, its, m, s, _color(agent, i), f"{agent} (n={len(rs)})")
    if not drawn:
        _empty(ax, "hardness (no VLM feedback recorded)")
        _empty(bx, "hardness per term")
        return fig
    _per_iteration_axes(ax, "mean hardness of generated samples",
                        "Hardness under the VLM of the moment")
    terms = sorted({t for run in runs for r in run.records for t in
                    (r.get("hardness_by_term") or {})})
    width = 0.8 / max(len(groups), 1)
    for i, (agent, rs) in enumerate(groups.items()):
        vals = []
        for t in terms:
            per_run = []
            for run in rs:
                late = [r for r in run.records if r["iteration"] >= 1]
                late = late[len(late) // 2:]
                v = [_num((r.get("hardness_by_term") or {}).get(t)) for r in late]
                v = [x for x in v if math.isfinite(x)]
                if v:
                    per_run.append(float(np.mean(v)))
            vals.append(np.mean(per_run) if per_run else np.nan)
        bx.bar(np.arange(len(terms)) + i * width, vals, width, color=_color(agent, i),
               label=agent)
    bx.set_xticks(np.arange(len(terms)) + width * (len(groups) - 1) / 2)
    bx.set_xticklabels(terms, rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("mean hardness (later half of the iterations)")
    bx.set_title("Hardness by spatial term")
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    return fig


def plot_hardness(run_dirs: RunDirs, out_dir: str | Path, name: str = "hardness.png") -> Path:
    """The hardness figure (`hardness_figure`) written as `out_dir/name`."""
    return _finish(hardness_figure(run_dirs), out_dir, name)


FIGURES: dict[str, tuple[str, Callable[..., Path]]] = {
    "score_vs_data": ("Test score vs generated data (Fig. 5)", plot_score_vs_data),
    "per_term": ("Per-term test score before/after and terms generated (Fig. 6)", plot_per_term),
    "by_complexity": ("Test score by complexity per iteration (Fig. 7)", plot_by_complexity),
    "finetune_loss": ("Fine-tuning loss across iterations (Fig. 8)", plot_finetune_loss),
    "validation": ("Validation score per iteration, early-stopping point (Fig. 9)",
                   plot_validation),
    "yield": ("Valid-sample yield per iteration", plot_yield),
    "hardness": ("Hardness of the generated samples per iteration and per term",
                 plot_hardness),
}


#: figures that draw the reference models (`plot_all`'s `baselines`)
BASELINE_FIGURES = ("score_vs_data",)


def plot_all(run_dirs: RunDirs, out_dir: str | Path, baselines: Sequence[Baseline] = ()
             ) -> dict[str, Path]:
    """Every figure of `FIGURES` into `out_dir` (`baselines` drawn in those of
    `BASELINE_FIGURES`); returns {name: png path}. A figure that fails is logged and left out
    rather than losing the others."""
    out: dict[str, Path] = {}
    for key, (_, fn) in FIGURES.items():
        try:
            out[key] = (fn(run_dirs, out_dir, baselines=baselines) if key in BASELINE_FIGURES
                        else fn(run_dirs, out_dir))
        except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
            log.warning("figure %s failed: %s", key, e)
            plt.close("all")
    return out
