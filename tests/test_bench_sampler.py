"""benchmarks/bench_sampler.py end to end on a tiny configuration: paired runs, an offline
schedule variant, datasets' values, paired differences, figures, and a restart that reuses
finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import SAMPLER_FAST as TINY  # noqa: E402  (run_all --fast runs the same)


@pytest.mark.slow
def test_tiny_sampler_benchmark(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sampler.py"), "--seeds", "0,1",
           "--variants", "random,sac,random-cosine", "--val-size", "3", "--test-size", "3",
           "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
           "--out", str(tmp_path / "out"), "--parallel", "2"]
    for s in TINY:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "sampler.json").read_text())
    assert res["seeds"] == [0, 1] and set(res["variants"]) == {"random", "sac", "random-cosine"}
    sac, rnd = res["variants"]["sac"], res["variants"]["random"]
    for e in (sac, rnd):
        assert len(e["runs"]) == 2 and e["auc"]["n"] == 2 and e["dataset_value"]["n"] == 2
        for r in e["runs"]:
            assert len(r["test"]) == 3 and r["auc"] == pytest.approx(sum(r["test"][1:]) / 2)
            assert r["cpu_s"] > 0 and r["steps"] >= r["valid"] > 0
    diff = sac["vs_random"]["final"]
    assert diff["mean"] == pytest.approx(sac["final"]["mean"] - rnd["final"]["mean"])
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    # the offline variant replays random's batches: same data, its own test curve
    off = res["variants"]["random-cosine"]
    assert [r["cum_valid"] for r in off["runs"]] == [r["cum_valid"] for r in rnd["runs"]]
    assert [r["test"][0] for r in off["runs"]] == [r["test"][0] for r in rnd["runs"]]
    for f in ("test_vs_valid.png", "test_vs_steps.png", "test_vs_wall.png"):
        assert (tmp_path / "out" / f).stat().st_size > 10_000
    # a second start finds every run finished and only summarises
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
    assert json.loads((tmp_path / "out" / "sampler.json").read_text())["variants"]["sac"][
        "runs"] == sac["runs"]
    # summarising part of the variants into an earlier result keeps the others, and --pair
    # reports the paired differences of any two
    first = tmp_path / "first.json"
    first.write_text((tmp_path / "out" / "sampler.json").read_text())
    i = cmd.index("--variants")
    merged = cmd[:i + 1] + ["sac"] + cmd[i + 2:]
    merged[merged.index("--out") + 1] = str(tmp_path / "out2")
    merged += ["--summarize-only", "--merge", str(first), "--pair", "sac:random-cosine",
               "--pair", "sac:random"]
    p = subprocess.run(merged, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res2 = json.loads((tmp_path / "out2" / "sampler.json").read_text())
    assert set(res2["variants"]) == {"random", "sac", "random-cosine"}
    assert res2["variants"]["sac"]["runs"] == sac["runs"]
    pair = res2["pairs"]["sac − random"]
    assert pair["seeds"] == [0, 1] and pair["final"]["mean"] == pytest.approx(
        sac["vs_random"]["final"]["mean"])
    assert res2["pairs"]["sac − random-cosine"]["auc"]["mean"] == pytest.approx(
        sac["auc"]["mean"] - off["auc"]["mean"])
    assert (tmp_path / "out2" / "paired_differences.png").stat().st_size > 10_000
    assert not (tmp_path / "out" / "paired_differences.png").exists()  # no --pair, no figure
    # seeds summarised apart and merged give the variant's runs, means and differences of all
    # seeds at once
    parts = []
    for seed in ("0", "1"):
        part = cmd[:]
        part[part.index("--seeds") + 1] = seed
        part[part.index("--out") + 1] = str(tmp_path / f"seed{seed}")
        part += ["--summarize-only", "--no-value"]
        if parts:
            part += ["--merge", str(parts[-1])]
        p = subprocess.run(part, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        parts.append(tmp_path / f"seed{seed}" / "sampler.json")
    res3 = json.loads(parts[-1].read_text())
    assert res3["seeds"] == [0, 1]
    for name in ("random", "sac", "random-cosine"):
        e3, e = res3["variants"][name], res["variants"][name]
        assert [r["seed"] for r in e3["runs"]] == [0, 1]
        assert e3["auc"] == e["auc"] and e3["final"] == e["final"]
    assert res3["variants"]["sac"]["vs_random"] == sac["vs_random"]
