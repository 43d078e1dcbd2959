"""benchmarks/: every script follows the contract of `_common` and is named in run_all's one
table with arguments its own parser accepts; run_all rebuilds README.md from the committed
results through the scripts' `table` and `figures` alone. Nothing is measured here."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402
import run_all  # noqa: E402

SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))


def test_every_script_is_in_the_table():
    assert sorted({b.script for b in run_all.BENCHMARKS.values()}) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_follows_the_contract(script):
    bench = _common.load(script)
    assert isinstance(bench.OUT, str) and bench.OUT
    for fn in ("add_args", "run", "table"):
        assert callable(getattr(bench, fn)), fn
    src = (ROOT / "benchmarks" / f"{script}.py").read_text()
    assert "sys.path" not in src and "argparse.ArgumentParser(" not in src
    assert 'sys.exit(main(__name__))' in src


@pytest.mark.parametrize("name", list(run_all.BENCHMARKS))
def test_table_arguments_parse(name, tmp_path):
    b = run_all.BENCHMARKS[name]
    ap = _common.parser(_common.load(b.script))
    for mode in ("fast", "full"):
        cmd = run_all.command(name, tmp_path, mode == "fast")
        assert cmd[1] == str(ROOT / "benchmarks" / f"{b.script}.py")
        args = ap.parse_args(cmd[2:])
        assert args.out == tmp_path / b.out


def test_choice_of_benchmarks():
    default = run_all.chosen("", "")
    assert "gpu" not in default and "yield" in default
    assert run_all.chosen("gpu,yield", "") == ["yield", "gpu"]     # table order
    assert "loop" not in run_all.chosen("", "loop")
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.chosen("nope", "")


def test_readme_rebuilt_from_committed_results(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", out)
    assert run_all.main(["--readme-only", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    for name, b in run_all.BENCHMARKS.items():
        bench = _common.load(b.script)
        if _common.result_path(bench, ROOT / "benchmarks" / "results" / b.out).is_file():
            head = f"## {b.title}\n\n`"
            assert head in text, name            # a section with its command, not "_not run_"
    assert "_no table" not in text and "_no figures" not in text
    for fig in ("yield.png", "throughput.png", "loop_breakdown.png", "scaling.png",
                "learning.png", "replay.png", "sampler/test_vs_valid.png"):
        assert f"![{fig}]({fig})" in text and (out / fig).stat().st_size > 10_000
