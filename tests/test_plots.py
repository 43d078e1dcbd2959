"""rls3.plots: every figure draws the numbers the synthetic run directories hold (read back from
the matplotlib Figure), copes with missing fields and single-iteration runs, is written as a PNG,
and write_report embeds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rls3
from rls3 import plots
from rls3.config import preset
from rls3.rundir import RUN_FILE, RUN_FORMAT, RUN_FORMAT_VERSION

TERMS = ["above", "behind", "below", "in front", "left", "right"]


def _metrics(i: int, rng: np.random.Generator) -> dict:
    score = 0.2 + 0.03 * i + 0.02 * rng.random()
    return {"score": score, "per_term": {t: score + 0.05 * rng.standard_normal() for t in TERMS},
            "per_complexity": {"1": score + 0.1, "2": score, "3": score - 0.1},
            "loss": 4.0 - 0.1 * i, "n": 90}


def make_run(root: Path, agent: str, seed: int, iterations: int, steps_per_it: int = 500,
             full: bool = True) -> Path:
    d = root / f"quick__{agent}__{seed}__20260101-000000"
    d.mkdir(parents=True)
    cfg = preset("quick").override({"agent.name": agent, "seed": seed})
    (d / "config.yaml").write_text(cfg.to_yaml())
    (d / RUN_FILE).write_text(json.dumps({"format": RUN_FORMAT, "format_version":
                                          RUN_FORMAT_VERSION, "rls3_version": rls3.__version__}))
    rng = np.random.default_rng(seed)
    recs, cum_steps, cum_valid, cum_terms = [], 0, 0, {t: 0 for t in TERMS}
    for i in range(iterations + 1):
        rec = {"iteration": i, "agent": agent, "vlm": "lite", "seed": seed, "preset": "quick",
               "cum_steps": cum_steps, "cum_valid": cum_valid,
               "cum_terms_generated": dict(cum_terms), "val": _metrics(i, rng),
               "test": _metrics(i, rng)}
        if i > 0:
            steps = steps_per_it + int(rng.integers(0, 50))
            valid = 128
            cum_steps += steps
            cum_valid += valid
            for t in TERMS:
                cum_terms[t] += int(rng.integers(10, 40))
            rec.update(cum_steps=cum_steps, cum_valid=cum_valid, cum_yield=cum_valid / cum_steps,
                       cum_terms_generated=dict(cum_terms), steps=steps, valid=valid,
                       yield_=None, finetune_losses=list(4.0 - 0.05 * i - 0.1 * rng.random(4)))
            rec["yield"] = valid / steps
            del rec["yield_"]
            rec["early_stopping"] = {"best_iteration": max(1, i - 1), "best_score": 0.3,
                                     "since_best": 1, "stop": i == iterations}
            rec["stop_reason"] = "early_stopping" if i == iterations else None
        if not full:  # an older/partial record: only the essentials
            rec = {k: rec[k] for k in ("iteration", "agent", "cum_steps") if k in rec}
        recs.append(rec)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return ([make_run(tmp_path / "runs", "sac", s, 4, 300) for s in range(3)]
            + [make_run(tmp_path / "runs", "random", s, 3, 900) for s in range(3)])


def _is_png(p: Path, min_bytes: int = 8000) -> bool:
    data = p.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def test_every_figure_is_written(runs: list[Path], tmp_path: Path) -> None:
    out = plots.plot_all(runs, tmp_path / "fig")
    assert set(out) == set(plots.FIGURES)
    for name, p in out.items():
        assert p.parent == tmp_path / "fig" and _is_png(p), name


def records(run: Path) -> list[dict]:
    """The records `make_run` wrote, in iteration order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _close_figures():
    """The `*_figure` builders hand back open pyplot figures: close them after each test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _labelled(ax) -> dict:
    """The axes' lines by label (unlabelled ones, "_child..", left out)."""
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _bars(ax) -> dict[str, list[float]]:
    """Bar heights per bar group (legend label), in x order."""
    from matplotlib.container import BarContainer

    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers
            if isinstance(c, BarContainer)}


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_score_vs_data_draws_every_run_and_the_mean_over_seeds(runs: list[Path]) -> None:
    ax = plots.score_vs_data_figure(runs).axes[0]
    thin = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
    assert len(thin) == len(runs)            # sac seeds first, then random (the fixture's order)
    for ln, run in zip(thin, runs, strict=True):
        want = [(r["cum_steps"], r["test"]["score"]) for r in records(run)]
        np.testing.assert_allclose(ln.get_xydata(), want)
    bands = _labelled(ax)
    assert set(bands) == {"sac (n=3)", "random (n=3)"}
    for agent, rs in (("sac", runs[:3]), ("random", runs[3:])):
        x, y = bands[f"{agent} (n=3)"].get_xdata(), bands[f"{agent} (n=3)"].get_ydata()
        curves = [([r["cum_steps"] for r in recs], [r["test"]["score"] for r in recs])
                  for recs in map(records, rs)]
        assert x[0] == 0 and x[-1] <= min(xs[-1] for xs, _ in curves)  # where every run has data
        want = np.mean([np.interp(x, xs, ys) for xs, ys in curves], axis=0)
        np.testing.assert_allclose(y, want)


def test_per_term_bars_are_the_mean_scores_before_after_and_terms_generated(runs) -> None:
    left, right = plots.per_term_figure(runs).axes
    assert [t.get_text() for t in left.get_xticklabels()] == TERMS
    first = [records(run)[0]["test"]["per_term"] for run in runs]
    last = {agent: [records(run)[-1] for run in rs]
            for agent, rs in (("sac", runs[:3]), ("random", runs[3:]))}
    bars = _bars(left)
    assert list(bars) == ["before (iteration 0)", "sac after", "random after"]
    assert bars["before (iteration 0)"] == pytest.approx(
        [np.mean([p[t] for p in first]) for t in TERMS])
    for agent, recs in last.items():
        assert bars[f"{agent} after"] == pytest.approx(
            [np.mean([r["test"]["per_term"][t] for r in recs]) for t in TERMS])
    generated = _bars(right)
    assert list(generated) == ["sac", "random"]
    for agent, recs in last.items():
        assert generated[agent] == pytest.approx(
            [np.mean([r["cum_terms_generated"][t] for r in recs]) for t in TERMS])


def test_by_complexity_has_one_panel_per_agent_with_the_mean_per_iteration(runs) -> None:
    axes = plots.by_complexity_figure(runs).axes
    assert [ax.get_title().split(":")[0] for ax in axes] == ["sac", "random"]
    for ax, rs, n_it in ((axes[0], runs[:3], 4), (axes[1], runs[3:], 3)):
        lines = _labelled(ax)
        assert list(lines) == ["1 term", "2 terms", "3 terms"]
        for c, label in (("1", "1 term"), ("2", "2 terms"), ("3", "3 terms")):
            assert list(lines[label].get_xdata()) == list(range(n_it + 1))
            want = np.mean([[r["test"]["per_complexity"][c] for r in records(run)]
                            for run in rs], axis=0)
            np.testing.assert_allclose(lines[label].get_ydata(), want)


def test_finetune_loss_draws_every_step_and_each_iterations_ends(runs) -> None:
    top, _, bottom, _ = plots.finetune_loss_figure(runs).axes   # 2 rows x (sac, random)
    lines, ends = _labelled(top), _labelled(bottom)
    for seed, run in enumerate(runs[:3]):
        losses = [r["finetune_losses"] for r in records(run)[1:]]     # 4 steps per iteration
        np.testing.assert_allclose(lines[f"seed {seed}"].get_ydata(), np.concatenate(losses))
        start, end = (ends[f"seed {seed}: all samples, {at}"] for at in ("start", "end"))
        assert list(start.get_xdata()) == [1, 2, 3, 4]
        np.testing.assert_allclose(start.get_ydata(), [v[0] for v in losses])  # first tenth
        np.testing.assert_allclose(end.get_ydata(), [v[-1] for v in losses])
    bounds = [ln.get_xdata()[0] for ln in top.get_lines() if ln.get_linestyle() == ":"]
    assert bounds == [4.5, 8.5, 12.5]                                   # iteration ends


def test_validation_marks_each_runs_best_and_early_stop(runs: list[Path]) -> None:
    ax = plots.validation_figure(runs).axes[0]
    curves, stars, crosses = ([ln for ln in ax.get_lines() if ln.get_marker() == m]
                              for m in (".", "*", "X"))
    assert len(curves) == len(stars) == len(crosses) == len(runs)
    assert [ln.get_label() for ln in curves][::3] == ["sac", "random"]   # one legend entry each
    for run, curve, star, cross in zip(runs, curves, stars, crosses, strict=True):
        recs = records(run)
        val = [r["val"]["score"] for r in recs]
        np.testing.assert_allclose(curve.get_xydata(), list(enumerate(val)))
        best = recs[-1]["early_stopping"]["best_iteration"]
        np.testing.assert_allclose(star.get_xydata(), [(best, val[best])])
        np.testing.assert_allclose(cross.get_xydata(), [(len(val) - 1, val[-1])])


def test_yield_is_the_mean_over_seeds_per_iteration(runs: list[Path]) -> None:
    lines = _labelled(plots.yield_figure(runs).axes[0])
    for agent, rs in (("sac", runs[:3]), ("random", runs[3:])):
        recs = [records(run)[1:] for run in rs]
        overall = np.mean([r[-1]["cum_yield"] for r in recs])
        line = lines[f"{agent} (n=3, overall {overall:.2f})"]
        assert list(line.get_xdata()) == [r["iteration"] for r in recs[0]]
        np.testing.assert_allclose(line.get_ydata(),
                                   np.mean([[r["yield"] for r in rr] for rr in recs], axis=0))
    assert list(lines["target 0.9 (distinct)"].get_ydata()) == [0.9, 0.9]


def test_mean_std_on_grid_respects_each_range() -> None:
    grid, m, s, n = plots.mean_std_on_grid([(np.array([0, 10]), np.array([0.0, 1.0])),
                                            (np.array([0, 5]), np.array([0.0, 1.0]))], n=11)
    assert grid[0] == 0 and grid[-1] == 10
    assert n[0] == 2 and n[-1] == 1          # the short run stops at x=5
    assert m[5] == pytest.approx((0.5 + 1.0) / 2) and m[-1] == pytest.approx(1.0)
    assert s[0] == 0.0


def test_single_iteration_and_missing_fields(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / "r", "sac", 0, 0),               # only the iteration-0 record
            make_run(tmp_path / "r", "random", 1, 2, full=False)]  # no scores at all
    figs = {name: getattr(plots, f"{name}_figure")(runs) for name in plots.FIGURES}
    for name, fig in figs.items():   # nothing to draw after iteration 0: said so, not an error
        said = any(t.startswith("no data") for t in _texts(fig))
        assert said == (name in ("finetune_loss", "yield", "hardness")), name
    first = records(runs[0])[0]                  # the sac run's iteration 0 is drawn
    np.testing.assert_allclose(_labelled(figs["score_vs_data"].axes[0])["sac (n=1)"].get_xydata(),
                               [(0, first["test"]["score"])])
    np.testing.assert_allclose(_labelled(figs["validation"].axes[0])["sac"].get_xydata(),
                               [(0, first["val"]["score"])])
    bars = _bars(figs["per_term"].axes[0])
    assert "sac after" not in bars
    assert bars["before (iteration 0)"] == pytest.approx([first["test"]["per_term"][t]
                                                          for t in TERMS])
    for name, (_, fn) in plots.FIGURES.items():
        p = fn(runs, tmp_path / "fig")
        assert _is_png(p, 3000), name
    # no runs / unreadable runs: still a figure saying so
    assert _texts(plots.score_vs_data_figure([tmp_path / "nope"])) == ["no data: test scores"]
    assert _is_png(plots.plot_score_vs_data([tmp_path / "nope"], tmp_path / "fig2"), 3000)


def write_eval_json(path: Path, score: float, n: int = 90) -> Path:
    """What `rls3 eval --json` writes (metrics plus the model and data it measured)."""
    terms = {t: score + 0.01 * i for i, t in enumerate(TERMS)}
    path.write_text(json.dumps({"score": score, "per_term": terms, "per_complexity": {"1": score},
                                "loss": 1.0, "n": n, "vlm": "clip", "checkpoint": "/m/negclip.pt",
                                "dataset": "/data/test"}))
    return path


def test_report_command_loads_neither_torch_nor_stable_baselines3(runs: list[Path],
                                                                   tmp_path: Path) -> None:
    """`rls3 report` reads run directories through rls3.rundir (and baselines as JSON): no
    deep-learning stack loaded."""
    import subprocess
    import sys

    base = write_eval_json(tmp_path / "negclip.json", 0.41)
    code = ("import sys; from rls3.cli import main; rc = main(['report', *sys.argv[1:], '-q']); "
            "print(rc, sorted(m for m in ('torch', 'stable_baselines3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, runs), "--out",
                          str(tmp_path / "rep"), "--baseline", f"NegCLIP={base}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert "| NegCLIP (baseline) |" in (tmp_path / "rep" / "report.md").read_text()


def test_baselines_are_horizontal_lines_in_fig5_and_rows_of_the_term_table(
        runs: list[Path], tmp_path: Path) -> None:
    from rls3.report import read_baseline, write_report

    a = read_baseline(f"NegCLIP={write_eval_json(tmp_path / 'a.json', 0.41, n=1000)}")
    b = read_baseline(f"CLIP = {write_eval_json(tmp_path / 'b.json', 0.27)}")
    assert (a.name, a.score, a.n, a.source) == ("NegCLIP", 0.41, 1000, "/m/negclip.pt")
    assert b.name == "CLIP" and b.per_term["left"] == pytest.approx(0.27 + 0.04)
    ax = plots.score_vs_data_figure(runs, baselines=[a, b]).axes[0]
    lines = _labelled(ax)
    assert set(lines) == {"sac (n=3)", "random (n=3)", "NegCLIP 0.410 (n=1000)",
                          "CLIP 0.270 (n=90)"}
    for label, score in (("NegCLIP 0.410 (n=1000)", 0.41), ("CLIP 0.270 (n=90)", 0.27)):
        ln = lines[label]
        np.testing.assert_allclose(ln.get_ydata(), [score, score])
        np.testing.assert_allclose(ln.get_xdata(), [0, 1])       # axes fraction: full width
    assert [t.get_text() for t in ax.get_legend().get_texts()][-2:] == [
        "NegCLIP 0.410 (n=1000)", "CLIP 0.270 (n=90)"]
    # no runs with data: the baselines alone still make a figure
    only = plots.score_vs_data_figure([tmp_path / "nope"], baselines=[a]).axes[0]
    assert set(_labelled(only)) == {"NegCLIP 0.410 (n=1000)"}
    md = write_report(runs[:1], tmp_path / "rep", baselines=[a, b]).read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| NegCLIP (baseline) |"))
    assert row.split(" | ")[1:3] == [f"{0.41:.2f}", f"{0.42:.2f}"]      # above, behind
    assert "baseline **NegCLIP**: test 0.410 on 1000 samples" in md
    assert _is_png(tmp_path / "rep" / "fig5_score_vs_data.png")


@pytest.mark.parametrize("spec, words", [
    ("NegCLIP", "expected NAME=EVAL.json"),
    ("=x.json", "expected NAME=EVAL.json"),
    ("N=/no/such.json", "does not exist"),
    ("N={bad}", "not a JSON file"),
    ("N={noscore}", "no numeric 'score'"),
    ("N={terms}", "malformed 'per_term'"),
])
def test_bad_baselines_are_one_line_errors(spec: str, words: str, tmp_path: Path) -> None:
    from rls3.report import read_baseline

    files = {"bad": tmp_path / "bad.json", "noscore": tmp_path / "n.json",
             "terms": tmp_path / "t.json"}
    files["bad"].write_text("{not json")
    files["noscore"].write_text(json.dumps({"loss": 1.0, "score": "high"}))
    files["terms"].write_text(json.dumps({"score": 0.5, "per_term": ["left"]}))
    spec = spec.format(**files)
    with pytest.raises(ValueError) as info:
        read_baseline(spec)
    assert words in str(info.value) and spec in str(info.value)
    assert "\n" not in str(info.value)


def test_report_embeds_the_figures(runs: list[Path], tmp_path: Path) -> None:
    from rls3.report import write_report

    md = write_report(runs, tmp_path / "report")
    text = md.read_text()
    for p in (tmp_path / "report").glob("*.png"):
        assert f"]({p.name})" in text
    assert len(list((tmp_path / "report").glob("*.png"))) == len(plots.FIGURES)


def _with_replay_losses(run: Path) -> Path:
    """Give a synthetic run per-step new/replayed fine-tuning losses (as the loop records)."""
    mf = run / "metrics.jsonl"
    recs = [json.loads(line) for line in mf.read_text().splitlines()]
    for r in recs:
        if r["iteration"] > 0:
            n = len(r["finetune_losses"])
            r["finetune_losses_new"] = [3.0 + 0.1 * r["iteration"]] * n
            r["finetune_losses_replay"] = ([None] * n if r["iteration"] == 1 else
                                           [1.0 + 0.1 * r["iteration"]] * n)
    mf.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_fig8_draws_new_and_replayed_losses(tmp_path: Path) -> None:
    run = _with_replay_losses(make_run(tmp_path / "r", "sac", 0, 3))
    top, bottom = plots.finetune_loss_figure([run]).axes[:2]
    lines = {ln.get_label(): ln for ln in top.get_lines() if not ln.get_label().startswith("_")}
    new, rep = lines["seed 0: new batch"], lines["seed 0: replayed"]
    assert list(new.get_ydata()) == pytest.approx([3.1] * 4 + [3.2] * 4 + [3.3] * 4)
    y = np.asarray(rep.get_ydata(), dtype=float)
    assert np.isnan(y[:4]).all() and y[4:] == pytest.approx([1.2] * 4 + [1.3] * 4)
    per_it = {ln.get_label(): ln for ln in bottom.get_lines()}
    start = per_it["seed 0: replayed, start"]
    assert list(start.get_xdata()) == [1, 2, 3]
    assert np.isnan(start.get_ydata()[0]) and list(start.get_ydata()[1:]) == pytest.approx(
        [1.2, 1.3])


def test_report_leads_with_the_test_answer(runs: list[Path], tmp_path: Path) -> None:
    from rls3.report import mean_interval, run_answer, summary_line, wilson_interval, \
        write_report

    text = write_report(runs, tmp_path / "report").read_text()
    first = text.splitlines()[2]
    assert first.startswith("## Did the VLM get better on the unseen test rooms?")
    recs = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    a = run_answer(runs[0])
    assert a.before == recs[0]["test"]["score"] and a.final == recs[-1]["test"]["score"]
    assert a.best_iteration == recs[-1]["early_stopping"]["best_iteration"] == 3
    assert a.best == recs[3]["test"]["score"]
    lo, hi = a.final_ci
    assert lo < a.final < hi and a.significant == (not lo <= a.before <= hi)
    line = summary_line(a)
    assert f"{a.before:.3f}" in line and "(iteration 3)" in line and f"{a.gain:+.3f}" in line
    assert runs[0].name in text and "| sac | 3 |" in text
    # intervals: Wilson contains the estimate and narrows with n; t-interval over seeds
    assert wilson_interval(0.5, 100)[1] - wilson_interval(0.5, 100)[0] > \
        wilson_interval(0.5, 1000)[1] - wilson_interval(0.5, 1000)[0]
    m, lo, hi = mean_interval([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and lo < 0.1 and hi > 0.3      # t(2) = 4.30 is wide
    assert mean_interval([0.2]) == (0.2, None, None)


def _with_hardness(run: Path, base: float, mode: str) -> Path:
    """Give a synthetic run the loop's hardness fields (hardness = base + iteration / 10)."""
    mf = run / "metrics.jsonl"
    recs = [json.loads(line) for line in mf.read_text().splitlines()]
    for r in recs:
        if r["iteration"] > 0:
            h = base + r["iteration"] / 10
            r.update(feedback_mode=mode, hardness_mean=h, hardness_std=0.1, hardness_n=128,
                     hardness_by_term={"left": h, "above": h + 1}, distinct=100,
                     yield_distinct=100 / r["steps"])
    mf.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return run


def test_hardness_figure_plots_each_agent_and_feedback_mode(tmp_path: Path) -> None:
    runs = ([_with_hardness(make_run(tmp_path / "a", "sac", s, 3), 2.0, "sample")
             for s in range(2)]
            + [_with_hardness(make_run(tmp_path / "b", "random", s, 3), 1.0, "episode")
               for s in range(2)])
    left, right = plots.hardness_figure(runs).axes[:2]
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    assert set(lines) == {"sac-sample (n=2)", "random (n=2)"}
    assert list(lines["sac-sample (n=2)"].get_ydata()) == pytest.approx([2.1, 2.2, 2.3])
    assert list(lines["random (n=2)"].get_xdata()) == [1, 2, 3]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in right.containers}
    # terms sorted (above, left); later half of iterations 1-3 = iterations 2 and 3
    assert bars["sac-sample"] == pytest.approx([3.25, 2.25])
    assert bars["random"] == pytest.approx([2.25, 1.25])
    dotted = [ln for ln in plots.yield_figure(runs).axes[0].get_lines()
              if ln.get_linestyle() == ":"]
    assert {ln.get_label() for ln in dotted} == {"sac-sample: distinct layouts",
                                                 "random: distinct layouts"}
