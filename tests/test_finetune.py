"""The iteration's fine-tuning (rls3.finetune), its options (loop.finetune) and the offline
measures of a run's data (rls3.value, `rls3 value`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import kill_after_first_checkpoint, tiny_cli_config

from rls3.cli import main
from rls3.config import Config, ConfigError, LoopConfig, preset
from rls3.finetune import MAX_LR_CHUNKS, chunks, cosine_factor
from rls3.loop import resume, run
from rls3.rundir import RunDirError, latest_checkpoint, read_metrics, without_timings
from rls3.value import (dataset_value, loop_sample_passes, read_run_data, replay_schedule,
                        trainer_for)
from rls3.vlm import build_vlm


# ------------------------------------------------------------------------------------ pure
def test_cosine_factor_runs_from_one_to_lr_min():
    assert cosine_factor(0.0, 0.1) == pytest.approx(1.0)
    assert cosine_factor(1.0, 0.1) == pytest.approx(0.1)
    assert cosine_factor(0.5, 0.0) == pytest.approx(0.5)
    xs = [cosine_factor(t / 10, 0.2) for t in range(11)]
    assert all(a > b for a, b in zip(xs, xs[1:], strict=False))


def test_chunks_of_an_iteration():
    # constant: one call per validation point, the paper's shape
    assert [c[:2] for c in chunks(6, (6,), "constant")] == [(0, 6)]
    assert [c[:2] for c in chunks(6, (2, 4, 6), "constant")] == [(0, 2), (2, 2), (4, 2)]
    # cosine: one call per epoch up to MAX_LR_CHUNKS, validation points kept as cuts
    cos = chunks(6, (6,), "cosine")
    assert [c[:2] for c in cos] == [(j, 1) for j in range(6)]
    assert [c[2] for c in cos] == pytest.approx([(2 * j + 1) / 12 for j in range(6)])
    assert [c[:2] for c in chunks(5, (3, 5), "cosine")] == [(j, 1) for j in range(5)]
    big = chunks(256, (256,), "cosine")
    assert len(big) == MAX_LR_CHUNKS and sum(c[1] for c in big) == 256
    assert [c[0] + c[1] for c in chunks(10, (4, 8, 10), "cosine")][-1] == 10
    for k, pts in ((7, (7,)), (10, (4, 8, 10)), (300, (100, 200, 300))):
        cs = chunks(k, pts, "cosine")
        ends = {a + n for a, n, _ in cs}
        assert set(pts) <= ends and sum(n for _, n, _ in cs) == k
        assert all(n >= 1 for _, n, _ in cs)


# ------------------------------------------------------------------------------------ config
def test_finetune_options_are_checked_and_round_trip(tmp_path):
    for key, bad in (("lr_schedule", "linear"), ("lr_min", 1.5), ("lr_min", -0.1),
                     ("shrink", 2.0), ("shrink", -1)):
        with pytest.raises(ConfigError, match=f"loop.finetune.{key}"):
            preset("quick").override({f"loop.finetune.{key}": bad})
    cfg = preset("quick").override({"loop.finetune.lr_schedule": "cosine",
                                    "loop.finetune.shrink": 0.5})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg
    for name in ("paper-clip", "paper-paligemma"):
        assert preset(name).loop.finetune.is_paper
    assert not LoopConfig(finetune=cfg.loop.finetune).finetune.is_paper


def test_rls3_run_refuses_a_bad_finetune_option_before_a_run_folder_exists(tmp_path, capsys):
    cfg = tiny_cli_config(tmp_path)
    rc = main(["run", "-q", "--set", f"runs_dir={cfg.runs_dir}",
               "--set", "loop.finetune.lr_schedule=step"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "loop.finetune.lr_schedule" in err[0]
    assert not Path(cfg.runs_dir).exists()


# ------------------------------------------------------------------------------------ adapters
def _trainable(vlm):
    return {n: p.detach().clone() for n, p in vlm.trainable_parameters()}


@pytest.mark.parametrize("name", ["clip-tiny", "paligemma-tiny"])
def test_lr_scale_and_shrink_on_the_adapters(name, tmp_path, sample_set):
    vlm = build_vlm(name, seed=0, progress=False)
    with pytest.raises(RuntimeError, match="remember_initial"):
        vlm.shrink(0.5)
    vlm.remember_initial()
    w0 = _trainable(vlm)
    base = [g["lr"] for g in vlm.optimizer.param_groups]
    vlm.set_lr_scale(0.25)
    assert [g["lr"] for g in vlm.optimizer.param_groups] == pytest.approx([b / 4 for b in base])
    vlm.set_lr_scale(1.0)
    assert [g["lr"] for g in vlm.optimizer.param_groups] == pytest.approx(base)
    with pytest.raises(ValueError):
        vlm.set_lr_scale(-1.0)
    vlm.finetune(sample_set, 2)
    w1 = _trainable(vlm)
    assert any(not torch.equal(w0[n], w1[n]) for n in w0)
    vlm.shrink(0.5)
    for n, p in vlm.trainable_parameters():
        assert torch.allclose(p, w0[n] + 0.5 * (w1[n] - w0[n]), atol=1e-6)
    vlm.shrink(0.0)
    assert all(torch.equal(p, w0[n]) for n, p in vlm.trainable_parameters())
    # the base rate travels with the optimizer state
    vlm.set_lr_scale(0.5)
    vlm.save(tmp_path / "v")
    other = build_vlm(name, seed=0, progress=False)
    other.load(tmp_path / "v")
    other.set_lr_scale(1.0)
    assert [g["lr"] for g in other.optimizer.param_groups] == pytest.approx(base)


@pytest.fixture(scope="module")
def sample_set():
    from rls3.data import generate_samples
    from rls3.sim import SimBackend

    be = SimBackend(["kitchen"], shadows=False)
    try:
        return generate_samples(be, 6, 32, seed=0)
    finally:
        be.close()


# ------------------------------------------------------------------------------------ loop
def _cfg(root: Path, **over) -> Config:
    values = {"loop.episodes": 1, "loop.iterations": 2, "loop.k": 2, "agent.name": "random",
              "data.val_size": 6, "data.test_size": 6, "progress": False,
              "backend.train_scenes": ["kitchen"], "env.t0": 4}
    values.update(over)
    return tiny_cli_config(root, **values)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def random_run(root):
    """A tiny random-agent run with the paper's fine-tuning (and quick's replay)."""
    return run(_cfg(root), run_dir=root / "runs" / "random")


def test_cosine_and_shrink_in_the_loop(root, random_run):
    """With lr_schedule cosine (K = 2: two calls per iteration, factors at 1/4 and 3/4) and
    shrink, the run records its factors; the paper's schedule records none."""
    over = {"loop.finetune.lr_schedule": "cosine", "loop.finetune.lr_min": 0.0,
            "loop.finetune.shrink": 0.5}
    res = run(_cfg(root, **over), run_dir=root / "runs" / "cosine")
    recs = read_metrics(res.run_dir)
    for r in recs[1:]:
        assert r["finetune_lr_factors"] == pytest.approx([cosine_factor(0.25, 0.0),
                                                          cosine_factor(0.75, 0.0)])
        assert len(r["finetune_losses"]) > 0
    assert all("finetune_lr_factors" not in r for r in read_metrics(random_run.run_dir))
    # the random agent's data does not depend on the VLM: same batches, other test scores
    same = [r["cum_valid"] for r in recs] == [r["cum_valid"] for r in
                                              read_metrics(random_run.run_dir)]
    assert same
    assert [r["test"]["loss"] for r in recs[1:]] != \
        [r["test"]["loss"] for r in read_metrics(random_run.run_dir)[1:]]


@pytest.mark.slow
def test_finetune_options_resume_bit_identically_after_sigkill(root, tmp_path):
    """`rls3 run` with cosine + shrink killed by SIGKILL after its first checkpoint resumes to
    the uninterrupted run's metrics and weights (w0 comes back from the rebuilt VLM, the base
    learning rate from the optimizer state)."""
    over = {"loop.finetune.lr_schedule": "cosine", "loop.finetune.shrink": 0.5,
            "loop.iterations": 3}
    full = run(_cfg(root, **over), run_dir=tmp_path / "full")
    d = tmp_path / "killed"
    kill_after_first_checkpoint(_cfg(root, **over), d)
    assert latest_checkpoint(d).name == "iter_0001"
    resume(d)
    a, b = read_metrics(d), read_metrics(full.run_dir)
    assert [without_timings(r) for r in a] == [without_timings(r) for r in b]
    from safetensors.torch import load_file

    wa = load_file(str(latest_checkpoint(d) / "vlm" / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(full.run_dir) / "vlm" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------ value
def test_replaying_the_schedule_reproduces_a_random_run(random_run):
    """The random agent ignores the VLM, so re-running the loop's fine-tuning on its saved
    batches gives the loop's own validation and test scores."""
    res = replay_schedule(random_run.run_dir, progress=False)
    recs = read_metrics(random_run.run_dir)
    assert [p["iteration"] for p in res["curve"]] == [0, 1, 2]
    for p, r in zip(res["curve"], recs, strict=True):
        assert p["test"]["score"] == r["test"]["score"]
        assert p["val"]["score"] == r["val"]["score"]
        assert math.isclose(p["test"]["loss"], r["test"]["loss"], rel_tol=1e-6)


def test_one_trainer_serves_several_schedules_as_fresh_vlms_would(random_run):
    """A Trainer keeps its frozen-prefix caches between schedules but starts each from the
    built VLM: the same numbers as a new process per schedule."""
    shrink = load_loop(random_run, {"loop.finetune.shrink": 0.5})
    t = trainer_for(random_run.run_dir, progress=False)
    value = dataset_value(random_run.run_dir, progress=False, trainer=t)
    shared = replay_schedule(random_run.run_dir, loop=shrink, progress=False, trainer=t)
    again = replay_schedule(random_run.run_dir, progress=False, trainer=t)
    assert shared == replay_schedule(random_run.run_dir, loop=shrink, progress=False)
    assert again == replay_schedule(random_run.run_dir, progress=False)
    assert value == dataset_value(random_run.run_dir, progress=False)


def load_loop(res, over):
    from rls3.rundir import load_run_config

    return load_run_config(res.run_dir).override(over).loop


def test_dataset_value_trains_a_fresh_vlm_at_the_loops_compute(random_run):
    rd = read_run_data(random_run.run_dir)
    n = len(rd.samples)
    # iteration 1: K=2 epochs over 4; iteration 2: over 4 new + 4 replayed
    assert n == 8 and loop_sample_passes(rd.cfg, rd.records) == 2 * 4 + 2 * 8
    res = dataset_value(random_run.run_dir, progress=False)
    assert res["units"] == 3 and res["sample_passes"] == 24 == res["loop_sample_passes"]
    assert 0.0 <= res["test"]["score"] <= 1.0 and res["test"]["n"] == 6
    assert res["loop_final_test"] == read_metrics(random_run.run_dir)[-1]["test"]["score"]
    again = dataset_value(random_run.run_dir, progress=False)
    assert again["test"] == res["test"]   # seeded
    one = dataset_value(random_run.run_dir, iterations=1, passes=4, progress=False)
    assert one["samples"] == 4 and one["units"] == 1


def test_rls3_value_command(random_run, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["value", "-q", str(random_run.run_dir), "--json", str(out)]) == 0
    assert "dataset value" in capsys.readouterr().out
    assert json.loads(out.read_text())["sample_passes"] == 24
    assert main(["value", "-q", str(random_run.run_dir), "--schedule", "--set",
                 "loop.finetune.shrink=0.5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["loop"]["finetune"]["shrink"] == 0.5
    plain = json.loads(out.read_text())["curve"]
    assert main(["value", "-q", str(random_run.run_dir), "--schedule", "--set",
                 "loop.finetune.shrink=0.5", "--set", "vlm.options.mirror_augment=true",
                 "--json", str(out)]) == 0
    flipped = json.loads(out.read_text())
    assert flipped["vlm"]["options"]["mirror_augment"] is True
    assert flipped["curve"][0] == plain[0] and flipped["curve"][1:] != plain[1:]
    # bad input: one line, nothing written
    for argv, what in (([str(random_run.run_dir), "--set", "loop.k=3"], "--schedule"),
                       ([str(random_run.run_dir), "--schedule", "--set", "seed=3"], "loop.*"),
                       ([str(random_run.run_dir), "--schedule", "--set",
                         "loop.finetune.shrink=7"], "loop.finetune.shrink"),
                       ([str(random_run.run_dir), "--schedule", "--set",
                         "vlm.options.cache_dtype=float16"], "cache_dtype"),  # not a clip option
                       ([str(random_run.run_dir), "--passes", "0"], "--passes"),
                       ([str(tmp_path / "nope")], "nope")):
        capsys.readouterr()
        assert main(["value", "-q", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], err


def test_value_of_a_run_without_saved_batches_is_named(random_run, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(random_run.run_dir, d)
    shutil.rmtree(d / "data" / "iter_0002")
    with pytest.raises(RunDirError, match="iter_0002"):
        read_run_data(d)
    assert len(read_run_data(d, iterations=1).batches) == 1
