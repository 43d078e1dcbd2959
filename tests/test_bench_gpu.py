"""benchmarks/bench_gpu.py: its CPU smoke mode runs the GPU benchmark's code path (feedback,
fine-tuning, evaluation through the adapters, the paper-iteration extrapolation, the JSON) with
tiny models; without CUDA the real mode refuses with a clear message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _common import load, main  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    return load("bench_gpu")


def test_cpu_smoke_writes_every_model(bench, tmp_path):
    out = tmp_path / "gpu.json"
    assert main(bench, ["--cpu-smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cpu_smoke"] and res["device"] == "cpu"
    assert [m["model"] for m in res["models"]] == list(bench.PAPER_MODELS)
    for m in res["models"]:
        for phase in ("feedback", "finetune", "evaluate"):
            assert m[phase]["samples"] > 0 and m[phase]["images_per_s"] > 0
        parts = m["paper_iteration_parts_s"]
        assert m["paper_iteration_s"] == pytest.approx(sum(parts.values()))
    assert res["models"][2]["k_unit"] == "optimizer steps"


def test_without_cuda_it_refuses(bench, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert main(bench, ["--out", str(out)]) == 2
    assert not out.exists() and "no CUDA device" in caplog.text
