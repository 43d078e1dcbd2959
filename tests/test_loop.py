"""Algorithm 1 end to end on a tiny configuration: SAC and random (equal budget), the run
directory, early stopping, resume after a crash / Ctrl-C, and bad run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import kill_after_first_checkpoint, plant_payload, tiny_cli_config

from rls3.config import Config, ConfigError
from rls3.data import read_dataset
from rls3.loop import Loop, resume, run
from rls3.replay import ReplayError
from rls3.rundir import (CHECKPOINTS, CONFIG_FILE, LATEST_FILE, RUN_FILE, RunDirError,
                         budget_from_run, create_run, latest_checkpoint, load_run_config,
                         read_metrics, without_timings)
from rls3.stopping import early_stopping, should_stop

def tiny_config(root: Path, **over) -> Config:
    values = {
        "loop.episodes": 2, "loop.iterations": 2, "agent.pretrain_steps": 150,
        "agent.batch_size": 32, "agent.buffer_size": 4000, "agent.net_arch": [32, 32],
        "data.val_size": 6, "data.test_size": 6, "progress": False,
        "backend.train_scenes": ["kitchen", "bedroom"], "backend.test_scenes": ["test_kitchen"],
        "loop.feedback": "episode", "loop.reward_norm": "none", "loop.beta": 10.0,
    }
    values.update(over)
    return tiny_cli_config(root, **values)


def interrupt_at(iteration: int, phase: str):
    """An `on_phase` hook that raises KeyboardInterrupt (Ctrl-C) when the loop starts `phase` of
    `iteration`."""

    def hook(i: int, p: str) -> None:
        if (i, p) == (iteration, phase):
            raise KeyboardInterrupt

    return hook


def comparable(records):
    return [without_timings(r) for r in records]


# ------------------------------------------------------------------------------------ pure logic
def test_early_stopping_on_a_synthetic_sequence():
    # baseline 0.3, improves until iteration 4 (0.6), then flat
    scores = [0.3, 0.4, 0.5, 0.55, 0.6, 0.6, 0.59, 0.58, 0.6, 0.57, 0.6]
    stops = [should_stop(scores[:n + 1], patience=5, min_iterations=6) for n in range(11)]
    assert stops == [False] * 9 + [True] * 2
    s = early_stopping(scores, 5, 6)
    assert (s.best_iteration, s.best_score, s.since_best, s.stop) == (4, 0.6, 6, True)
    # not before min_iterations even when nothing improves
    flat = [0.5] * 8
    assert not should_stop(flat[:5], patience=2, min_iterations=5)
    assert should_stop(flat[:6], patience=2, min_iterations=5)
    # min_delta: tiny gains are not significant
    creep = [0.5, 0.501, 0.502, 0.503, 0.504]
    assert should_stop(creep, patience=3, min_iterations=1, min_delta=0.01)
    assert not should_stop(creep, patience=3, min_iterations=1, min_delta=0.0)
    # NaN never improves; an improvement resets patience
    assert early_stopping([math.nan, 0.2, math.nan], 1, 1).best_iteration == 1
    assert not should_stop([0.1, 0.1, 0.1, 0.9], patience=2, min_iterations=1)
    with pytest.raises(ValueError):
        early_stopping([], 1, 1)


# ------------------------------------------------------------------------------------ full loops
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("loop")


@pytest.fixture(scope="module")
def sac_run(root):
    """The one tiny full loop that `pytest -m "not slow"` still runs: tests that only read it stay
    unmarked."""
    return run(tiny_config(root), run_dir=root / "runs" / "sac")


def test_tiny_sac_run(sac_run, root):
    d = sac_run.run_dir
    assert sac_run.iterations == 2 and sac_run.stop_reason == "max_iterations"
    marker = json.loads((d / RUN_FILE).read_text())
    assert marker["format"] == "rls3-run" and marker["format_version"] == 3
    cfg = Config.from_yaml(d / CONFIG_FILE)
    assert cfg == tiny_config(root)
    recs = read_metrics(d)
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert recs[0]["cum_steps"] == 0 and recs[0]["test"]["n"] == 6
    last = recs[-1]
    for key in ("cum_steps", "cum_valid", "yield", "feedback_j2", "finetune_losses", "val", "test",
                "terms_generated", "complexity_generated", "time_s", "early_stopping",
                "cum_terms_generated", "batch_size", "truncated_episodes"):
        assert key in last, key
    assert last["episodes"] == 2 and last["batch_size"] == 2 * 4  # E * eta * T0 (quick: eta 1)
    # replay (on in quick): iteration 2 fine-tunes its 8 new samples and iteration 1's 8
    assert [r.get("replayed") for r in recs[1:]] == [0, 8]
    assert last["replay_stored"] == 8 and last["finetune_set"] == 16
    assert all(v is not None for v in last["finetune_losses_new"])
    assert last["finetune_loss_replay"] is not None
    assert len(last["finetune_losses_replay"]) == len(last["finetune_losses"])
    assert recs[1]["finetune_loss_replay"] is None
    assert last["cum_steps"] == recs[1]["steps"] + last["steps"] >= last["cum_valid"] >= 8
    assert last["feedback_j2"] > 0 and len(last["feedback_j2_episodes"]) == 2
    assert set(last["test"]) >= {"score", "per_term", "per_complexity", "loss", "n"}
    assert set(last["time_s"]) >= {"generate", "feedback", "finetune", "validate", "test", "total"}
    assert sum(last["terms_generated"].values()) >= 8
    # data, checkpoints, TensorBoard, best VLM
    batch = read_dataset(d / "data" / "iter_0002")
    assert len(batch) == 8
    ck = latest_checkpoint(d)
    assert ck is not None and ck.name == "iter_0002"
    assert {p.name for p in ck.iterdir()} >= {"vlm", "agent", "rng.json", "rng.safetensors",
                                              "state.json", "manifest.json"}
    assert [p.name for p in (d / CHECKPOINTS).iterdir() if p.name.startswith("iter_")] == [
        "iter_0002"]
    assert any((d / "tb").iterdir()) and (d / "best_vlm").is_dir()
    # the fixed sets were generated once and are shared
    assert len(list((root / "data").iterdir())) == 2
    # a finished run resumes to a no-op
    again = resume(d)
    assert again.iterations == 2 and len(read_metrics(d)) == 3


@pytest.mark.slow
def test_random_agent_with_the_sac_budget(sac_run, root):
    budget = budget_from_run(sac_run.run_dir)
    assert budget == sac_run.final["cum_steps"]
    cfg = tiny_config(root, **{"agent.name": "random", "loop.budget_from": str(sac_run.run_dir),
                               "loop.iterations": 1})
    res = run(cfg, run_dir=root / "runs" / "random")
    assert res.stop_reason == "budget"
    recs = read_metrics(res.run_dir)
    assert recs[-1]["cum_steps"] >= budget > recs[-2]["cum_steps"]
    assert Config.from_yaml(res.run_dir / CONFIG_FILE).loop.budget == budget
    assert all(r["agent"] == "random" for r in recs)
    assert recs[-1]["feedback_j2"] is not None  # logged for comparison, ignored by the agent


@pytest.fixture(scope="module")
def interrupted_run(root):
    """`sac_run`'s configuration stopped by Ctrl-C in iteration 2 (during fine-tuning), left as
    it stopped: tests resume or edit copies of it."""
    d = root / "runs" / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(root), run_dir=d, on_phase=interrupt_at(2, "finetune"))
    return d


@pytest.mark.slow
def test_resume_after_an_interrupt_matches_the_uninterrupted_run(sac_run, interrupted_run,
                                                                  tmp_path):
    """Ctrl-C in iteration 2 (during fine-tuning) leaves a resumable run; resuming it ends in the
    same metrics and weights as the run that was never interrupted."""
    import shutil

    assert [r["iteration"] for r in read_metrics(interrupted_run)] == [0, 1]
    assert latest_checkpoint(interrupted_run).name == "iter_0001"
    d = tmp_path / "interrupted"
    shutil.copytree(interrupted_run, d)
    res = resume(d)
    assert res.iterations == 2
    assert comparable(read_metrics(d)) == comparable(read_metrics(sac_run.run_dir))
    _same_weights(d, sac_run.run_dir)


def _same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    ca, cb = latest_checkpoint(a), latest_checkpoint(b)
    wa, wb = load_file(str(ca / "vlm" / "model.safetensors")), load_file(
        str(cb / "vlm" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    from rls3.agents import MODEL_FILE

    pa = load_file(str(ca / "agent" / MODEL_FILE))
    pb = load_file(str(cb / "agent" / MODEL_FILE))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    import numpy as np

    from rls3.agents import BUFFER_FILE

    with np.load(ca / "agent" / BUFFER_FILE) as ba, np.load(cb / "agent" / BUFFER_FILE) as bb:
        assert ba.files == bb.files and all(np.array_equal(ba[k], bb[k]) for k in ba.files)


def _killed_run_resumes_like(cfg: Config, d: Path, reference: Path) -> None:
    """`rls3 run` of `cfg` into `d`, killed by SIGKILL after its first checkpoint and resumed,
    ends with the metrics and weights of the uninterrupted run in `reference`."""
    kill_after_first_checkpoint(cfg, d)
    assert latest_checkpoint(d).name == "iter_0001"
    resume(d)
    assert comparable(read_metrics(d)) == comparable(read_metrics(reference))
    _same_weights(d, reference)


def test_bad_run_directories_are_refused_untouched(sac_run, root, tmp_path):
    import shutil

    src = sac_run.run_dir
    # another version
    d = tmp_path / "old"
    shutil.copytree(src, d)
    marker = json.loads((d / RUN_FILE).read_text())
    marker["format_version"] = 0
    (d / RUN_FILE).write_text(json.dumps(marker))
    with pytest.raises(RunDirError, match="format version"):
        Loop(d)
    # a corrupt checkpoint: nothing is written
    d2 = tmp_path / "corrupt"
    shutil.copytree(src, d2)
    state = d2 / CHECKPOINTS / "iter_0002" / "state.json"
    state.write_text(state.read_text().replace('"iteration": 2', '"iteration": 1'))
    before = {p: p.stat().st_mtime_ns for p in d2.rglob("*")}
    with pytest.raises(RunDirError, match="corrupt.*state.json altered"):
        resume(d2)
    assert {p: p.stat().st_mtime_ns for p in d2.rglob("*")} == before
    # not a run directory at all; a run directory that exists already
    with pytest.raises(RunDirError, match="not an rls3 run"):
        resume(tmp_path)
    with pytest.raises(RunDirError, match="already exists"):
        create_run(tiny_config(root), run_dir=src)
    (d2 / CHECKPOINTS / LATEST_FILE).write_text("{")
    with pytest.raises(RunDirError, match="corrupt"):
        resume(d2)


def test_resume_never_drops_finished_iterations(sac_run, tmp_path):
    """A finished run whose checkpoints were deleted (to free space) is refused, not restarted
    from scratch over its results (issue 13, item 1)."""
    import shutil

    d = tmp_path / "no_checkpoints"
    shutil.copytree(sac_run.run_dir, d)
    shutil.rmtree(d / CHECKPOINTS)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}
    with pytest.raises(RunDirError, match="2 finished iteration.*no checkpoint.*nothing was "
                                          "changed"):
        resume(d)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")} == before


def test_garbled_checkpoint_json_is_a_named_error(sac_run, tmp_path):
    """Bytes flipped in a checkpoint's manifest.json or in LATEST.json: RunDirError, not a
    UnicodeDecodeError traceback (issue 13, item 5)."""
    import shutil

    from rls3.manifest import MANIFEST_FILE

    for name in (MANIFEST_FILE, LATEST_FILE):
        d = tmp_path / name
        shutil.copytree(sac_run.run_dir, d)
        f = d / CHECKPOINTS / (name if name == LATEST_FILE else f"iter_0002/{name}")
        f.write_bytes(b"\xff\xfe" + f.read_bytes()[2:])
        with pytest.raises(RunDirError, match="corrupt"):
            resume(d)


def test_a_corrupt_best_vlm_is_named(sac_run, tmp_path, capsys):
    """Flipped bytes in best_vlm: `rls3 eval RUN` names the altered file instead of scoring the
    damaged weights (issue 13, item 2)."""
    import shutil

    import rls3.cli
    from rls3.rundir import BEST_VLM, vlm_checkpoint

    d = tmp_path / "run"
    shutil.copytree(sac_run.run_dir, d)
    assert vlm_checkpoint(d) == d / BEST_VLM                  # intact: used as before
    f = d / BEST_VLM / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-4096:] = bytes(4096)
    f.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="model.safetensors altered"):
        vlm_checkpoint(d)
    with pytest.raises(RunDirError, match="model.safetensors altered"):
        vlm_checkpoint(d / BEST_VLM)
    assert rls3.cli.main(["eval", str(d), str(sac_run.run_dir / "data" / "iter_0001")]) == 2
    assert "model.safetensors altered" in capsys.readouterr().err


def test_bad_budget_source(tmp_path, root):
    with pytest.raises(RunDirError):
        budget_from_run(tmp_path)
    cfg = tiny_config(root)
    d = create_run(cfg, run_dir=tmp_path / "empty")
    with pytest.raises(RunDirError, match="no finished iteration"):
        budget_from_run(d)
    with pytest.raises(ConfigError):
        budget_from_run(d, unit="hours")


@pytest.mark.slow
def test_resume_after_the_process_is_killed(sac_run, root, tmp_path):
    """`rls3 run` killed with SIGKILL after its first checkpoint resumes to the same result,
    with fine-tuning replay on: iteration 2 replays iteration 1's batch read back from disk."""
    d = tmp_path / "killed"
    kill_after_first_checkpoint(tiny_config(root), d)
    assert latest_checkpoint(d).name == "iter_0001"
    res = resume(d)
    assert res.iterations == 2
    recs = read_metrics(d)
    assert load_run_config(d).loop.replay.enabled and recs[-1]["replayed"] == 8
    assert comparable(recs) == comparable(read_metrics(sac_run.run_dir))
    _same_weights(d, sac_run.run_dir)


def test_config_yaml_of_a_run_is_complete(sac_run):
    data = yaml.safe_load((sac_run.run_dir / CONFIG_FILE).read_text())
    assert set(data) >= {"env", "loop", "early_stopping", "vlm", "agent", "data", "backend"}
    assert data["loop"]["eta"] == 1.0 and data["env"]["t0"] == 4
    assert data["loop"]["replay"] == {"capacity": 1024, "fraction": 1.0, "limit": 0}


@pytest.mark.slow
def test_tiny_loop_through_the_unity_bridge(sac_run, root, tmp_path):
    """The CLI's `--backend unity --unity-build testpeer`: the whole loop over the real ML-Agents
    protocol (the test peer plays Unity with the embedded simulator) gives the same metrics as the
    embedded backend for the same seed."""
    import rls3.cli

    cfg = tiny_config(root, **{"data.dir": str(tmp_path / "data")})
    cfg_file = tmp_path / "c.yaml"
    cfg.to_yaml(cfg_file)
    d = tmp_path / "unity_run"
    assert rls3.cli.main(["run", "--config", str(cfg_file), "--run-dir", str(d), "--no-report",
                          "-q", "--backend", "unity", "--unity-build", "testpeer"]) == 0
    recs = read_metrics(d)
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert load_run_config(d).backend.name == "unity"
    ref = read_metrics(sac_run.run_dir)
    assert [r["cum_steps"] for r in recs] == [r["cum_steps"] for r in ref]
    assert [r["cum_valid"] for r in recs] == [r["cum_valid"] for r in ref]
    # issue 13, item 7: the player rendered at the env's size (nothing resized) and logged into
    # the run directory; the fixed sets are keyed by the build's identity, not "unity" alone
    assert "resizing" not in (d / "run.log").read_text()
    assert any((d / "backend_logs").iterdir())
    assert all(p.name.startswith("unity-") for p in (tmp_path / "data").iterdir())


def test_unity_flags_need_the_unity_backend(tmp_path, capsys):
    import rls3.cli

    assert rls3.cli.main(["run", "--unity-build", "testpeer", "--set", f"runs_dir={tmp_path}"]) == 2
    assert "--backend unity" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_resume_refuses_what_replay_cannot_restore(sac_run, interrupted_run, tmp_path):
    """Replay state lives in the checkpoint and the saved batches: a run directory from before
    replay existed, a checkpoint without replay state, or a deleted batch give a named error
    and change nothing."""
    import shutil

    from rls3.rundir import STATE_FILE
    from rls3.manifest import MANIFEST_FILE, write_manifest
    from rls3.report import write_report

    # a finished run written in run format 1 (no replay): readable, not continuable
    old = tmp_path / "v1"
    shutil.copytree(sac_run.run_dir, old)
    marker = json.loads((old / RUN_FILE).read_text())
    marker["format_version"] = 1
    (old / RUN_FILE).write_text(json.dumps(marker))
    before = {p: p.stat().st_mtime_ns for p in old.rglob("*")}
    with pytest.raises(RunDirError, match="before fine-tuning replay.*nothing was changed"):
        resume(old)
    assert {p: p.stat().st_mtime_ns for p in old.rglob("*")} == before
    assert budget_from_run(old) == sac_run.final["cum_steps"]
    assert write_report([old], tmp_path / "rep").is_file()

    # an unfinished run (stopped in iteration 2) whose replay holds iteration 1's batch
    d = interrupted_run
    ck = latest_checkpoint(d)
    assert ck.name == "iter_0001"
    state = json.loads((ck / STATE_FILE).read_text())
    assert state["replay"]["refs"] == [[1, i] for i in range(8)]

    gone = tmp_path / "gone"
    shutil.copytree(d, gone)
    shutil.rmtree(gone / "data" / "iter_0001")
    with pytest.raises(RunDirError, match="iter_0001.*missing"):
        resume(gone)
    assert [r["iteration"] for r in read_metrics(gone)] == [0, 1]

    edited = tmp_path / "edited"
    shutil.copytree(d, edited)
    ck2 = latest_checkpoint(edited)
    del state["replay"]
    (ck2 / STATE_FILE).write_text(json.dumps(state))
    (ck2 / MANIFEST_FILE).unlink()
    write_manifest(ck2)
    with pytest.raises(RunDirError, match="no fine-tuning replay state"):
        resume(edited)


@pytest.mark.slow
def test_disk_full_while_saving_is_named_cleaned_up_and_resumable(sac_run, root, monkeypatch):
    """ENOSPC while writing the best VLM, then while writing a checkpoint: each time one
    RunDirError naming the folder, no temporary folder left behind, and the run resumes to the
    uninterrupted result (issue 13, item 4)."""
    import errno

    import rls3.rundir as rundir_mod
    from rls3 import atomic

    full = {"on": False}

    def out_of_space(real):
        def wrapped(*a, **k):
            if full["on"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, **k)
        return wrapped

    def fill_at(iteration_phase):
        def hook(iteration, name):
            full["on"] = (iteration, name) == iteration_phase or full["on"] and \
                name == iteration_phase[1]
        return hook

    monkeypatch.setattr(atomic, "replace_folder", out_of_space(atomic.replace_folder))
    monkeypatch.setattr(rundir_mod, "write_manifest", out_of_space(rundir_mod.write_manifest))
    d = root / "runs" / "disk_full"
    # iteration 0 always saves the best VLM (after its test phase), before its first checkpoint
    with pytest.raises(RunDirError, match=r"cannot write .*best_vlm.*No space left"):
        run(tiny_config(root), run_dir=d, on_phase=fill_at((0, "test")))
    assert not list(d.glob(".best_vlm.*")) and latest_checkpoint(d) is None
    full["on"] = False
    with pytest.raises(RunDirError, match=r"cannot write .*checkpoints.*iter_0002.*No space left"):
        Loop(d, on_phase=fill_at((2, "checkpoint"))).run()
    assert not list((d / CHECKPOINTS).glob(".*"))
    assert latest_checkpoint(d).name == "iter_0001"
    full["on"] = False
    res = resume(d)
    assert res.iterations == 2
    assert comparable(read_metrics(d)) == comparable(read_metrics(sac_run.run_dir))
    _same_weights(d, sac_run.run_dir)


def test_running_norm_standardises_and_round_trips():
    from rls3.collector import RunningNorm

    xs = [3.0, 5.0, 4.0, 10.0, 4.5]
    n = RunningNorm()
    out = [n(x) for x in xs]
    assert out[0] == 0.0
    import numpy as np

    for k in range(2, len(xs) + 1):  # standardised by the mean/std of the values so far
        seen = np.array(xs[:k])
        assert out[k - 1] == pytest.approx((seen[-1] - seen.mean()) / seen.std(ddof=1))
    m = RunningNorm(json.loads(json.dumps(n.state())))
    assert m(7.0) == n(7.0) and m.state() == n.state()


@pytest.mark.slow
def test_sample_feedback_with_running_norm_resumes_bit_identically(root):
    """loop.feedback=sample, loop.reward_norm=running, env.observation=relative: the metrics
    carry every valid frame's hardness, and a run interrupted in iteration 2 resumes to the
    uninterrupted metrics and weights (the running statistics come back from the checkpoint)."""
    over = {"loop.feedback": "sample", "loop.reward_norm": "running",
            "env.observation": "relative", "agent.gamma": 0.0}
    full = run(tiny_config(root, **over), run_dir=root / "runs" / "sample_full")
    recs = read_metrics(full.run_dir)
    for r in recs[1:]:
        assert r["feedback_mode"] == "sample" and r["feedback_j2"] is None
        assert r["hardness_n"] == r["valid"] and r["hardness_mean"] > 0
        assert 0 < r["yield_distinct"] <= r["yield"] and r["move_median"] >= 0
        assert set(r["hardness_by_term"]) <= set(r["terms_generated"])
    state = json.loads((latest_checkpoint(full.run_dir) / "state.json").read_text())
    assert state["reward_norm"]["count"] == sum(r["valid"] for r in recs[1:])

    d = root / "runs" / "sample_interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(root, **over), run_dir=d, on_phase=interrupt_at(2, "finetune"))
    resume(d)
    assert comparable(read_metrics(d)) == comparable(recs)
    _same_weights(d, full.run_dir)


@pytest.mark.slow
def test_batched_sample_feedback_resumes_bit_identically_after_sigkill(root, tmp_path):
    """`loop.feedback_batch` (frames scored 4 at a time at the end of each 4-step SAC rollout):
    every valid frame is scored, and `rls3 run` killed by SIGKILL after its first checkpoint
    resumes to the uninterrupted run's metrics and weights."""
    over = {"loop.feedback": "sample", "loop.reward_norm": "running", "loop.feedback_batch": 4,
            "agent.train_freq": 4, "agent.gradient_steps": 4, "loop.iterations": 3}
    full = run(tiny_config(root, **over), run_dir=tmp_path / "full")
    recs = read_metrics(full.run_dir)
    for r in recs[1:]:
        assert r["hardness_n"] == r["valid"] and r["extrinsic_mean"] is not None
    _killed_run_resumes_like(tiny_config(root, **over), tmp_path / "killed", full.run_dir)


@pytest.mark.slow
def test_keep_hardest_resumes_bit_identically_after_sigkill(root, tmp_path):
    """`loop.keep: hardest` (each episode's 2 hardest of T0 = 4 frames fine-tune the VLM): the
    batch is eta * T0 * E samples, and `rls3 run` killed by SIGKILL after its first checkpoint
    resumes to the uninterrupted run's metrics and weights."""
    over = {"loop.feedback": "sample", "loop.eta": 0.5, "loop.keep": "hardest",
            "loop.iterations": 2}
    full = run(tiny_config(root, **over), run_dir=tmp_path / "full")
    recs = read_metrics(full.run_dir)
    for r in recs[1:]:
        assert r["hardness_n"] == r["valid"] and r["batch_size"] == r["valid"] // 2
    _killed_run_resumes_like(tiny_config(root, **over), tmp_path / "killed", full.run_dir)


@pytest.mark.slow
def test_caption_pair_moved_resumes_bit_identically_after_sigkill(root, tmp_path):
    """`loop.caption_pair: moved` (captions about the moved object): `rls3 run` killed by
    SIGKILL after its first checkpoint resumes to the uninterrupted run's metrics and weights."""
    over = {"loop.feedback": "sample", "loop.caption_pair": "moved", "loop.iterations": 2}
    full = run(tiny_config(root, **over), run_dir=tmp_path / "full")
    assert [r["iteration"] for r in read_metrics(full.run_dir)] == [0, 1, 2]
    _killed_run_resumes_like(tiny_config(root, **over), tmp_path / "killed", full.run_dir)


@pytest.mark.slow
def test_place_action_resumes_bit_identically_after_sigkill(root, tmp_path):
    """`env.action: place` (the agent says where on its surface the object goes): `rls3 run`
    killed by SIGKILL after its first checkpoint resumes to the uninterrupted run's metrics and
    weights."""
    over = {"loop.feedback": "sample", "env.action": "place", "loop.caption_pair": "moved",
            "loop.iterations": 2}
    full = run(tiny_config(root, **over), run_dir=tmp_path / "full")
    assert [r["iteration"] for r in read_metrics(full.run_dir)] == [0, 1, 2]
    _killed_run_resumes_like(tiny_config(root, **over), tmp_path / "killed", full.run_dir)


@pytest.mark.slow
def test_term_balance_resumes_bit_identically_after_sigkill(root, tmp_path):
    """`loop.term_balance` (its term counts carried across iterations in the checkpoint):
    `rls3 run` killed by SIGKILL after its first checkpoint resumes to the uninterrupted run's
    metrics and weights; the counts cover every valid frame."""
    over = {"loop.feedback": "sample", "loop.term_balance": 1.0, "loop.iterations": 2}
    full = run(tiny_config(root, **over), run_dir=tmp_path / "full")
    recs = read_metrics(full.run_dir)
    assert all(r["term_rarity_mean"] is not None for r in recs[1:])
    state = json.loads((latest_checkpoint(full.run_dir) / "state.json").read_text())
    counted = sum(state["term_counts"].values())
    # every captioned frame, including those of episodes cut by the step cap
    assert counted >= sum(sum(r["terms_generated"].values()) for r in recs[1:]) > 0
    _killed_run_resumes_like(tiny_config(root, **over), tmp_path / "killed", full.run_dir)


@pytest.mark.slow
def test_relative_paths_are_recorded_absolute_and_resume_from_anywhere(root, tmp_path,
                                                                      monkeypatch):
    """Issue 13, item 6: data.dir, runs_dir and the pre-training cache are resolved once when
    the run is made (the cache under runs_dir unless set); resuming from another directory uses
    them instead of regenerating them there."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    cfg = tiny_config(root, **{"data.dir": "d", "runs_dir": "r", "agent.pretrained_dir": None,
                               "loop.iterations": 1})

    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir="r/one", on_phase=interrupt_at(1, "finetune"))
    saved = load_run_config(here / "r" / "one")
    assert saved.data.dir == str(here / "d") and saved.runs_dir == str(here / "r")
    assert saved.agent.pretrained_dir == str(here / "r" / "_pretrained")
    assert (here / "r" / "_pretrained").is_dir() and (here / "d").is_dir()
    monkeypatch.chdir(elsewhere)
    assert resume(here / "r" / "one").iterations == 1
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------------ scene workers
@pytest.fixture(scope="module")
def workers_run(root):
    return run(tiny_config(root, **{"env.workers": 2, "loop.episodes": 3}),
               run_dir=root / "runs" / "workers2")


@pytest.mark.slow
def test_two_scene_workers_count_e_episodes_across_workers(workers_run):
    """Issue 14: with env.workers=2 an iteration ends after E completed episodes in total, each
    with its own feedback and eta * T0 batch samples; the other worker's unfinished episode is
    abandoned at the boundary (its steps count as generated samples)."""
    recs = read_metrics(workers_run.run_dir)
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    assert workers_run.stop_reason == "max_iterations"
    for r in recs[1:]:
        assert r["workers"] == 2 and r["episodes"] == 3
        assert len(r["feedback_j2_episodes"]) == 3 and r["batch_size"] == 3 * 4
        assert r["abandoned_episodes"] >= 1   # the other worker was mid-episode
        assert r["steps"] >= r["valid"] >= 3 * 4
    assert recs[-1]["cum_steps"] == recs[1]["steps"] + recs[2]["steps"]
    assert recs[-1]["cum_episodes"] == 6
    assert load_run_config(workers_run.run_dir).env.workers == 2


@pytest.mark.slow
def test_two_scene_workers_reproduce_and_resume_bit_identically(workers_run, root):
    """Same (N, seed) -> the same metrics; Ctrl-C in iteration 2 at N=2 and resume -> the
    uninterrupted run's metrics and weights (iteration 1 is recomputed from scratch here)."""
    d = root / "runs" / "workers2_interrupted"
    cfg = tiny_config(root, **{"env.workers": 2, "loop.episodes": 3})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir=d, on_phase=interrupt_at(2, "finetune"))
    ref = comparable(read_metrics(workers_run.run_dir))
    assert comparable(read_metrics(d)) == ref[:2]
    res = resume(d)
    assert res.iterations == 2
    assert comparable(read_metrics(d)) == ref
    _same_weights(d, workers_run.run_dir)


@pytest.mark.slow
def test_two_scene_workers_through_the_unity_bridge(workers_run, root, tmp_path):
    """Each worker runs its own Unity player (the test peer) on its own port; the collection is
    the embedded backend's, step for step."""
    cfg = tiny_config(root, **{"env.workers": 2, "loop.episodes": 3, "loop.iterations": 1,
                               "data.dir": str(tmp_path / "data"), "backend.name": "unity",
                               "backend.options": {"build": "testpeer"}})
    got = read_metrics(run(cfg, run_dir=tmp_path / "unity_workers").run_dir)[1]
    ref = read_metrics(workers_run.run_dir)[1]
    for key in ("steps", "valid", "episodes", "abandoned_episodes", "workers"):
        assert got[key] == ref[key], key


def test_one_worker_records_stay_as_before(sac_run):
    """N = 1 keeps the in-process path: its records carry no worker fields."""
    last = read_metrics(sac_run.run_dir)[-1]
    assert "workers" not in last and "abandoned_episodes" not in last
    assert load_run_config(sac_run.run_dir).env.workers == 1
    assert "overlap" not in last   # nor overlap fields without loop.overlap


@pytest.mark.slow
def test_random_agent_with_two_scene_workers(root):
    """The random agent drives the workers too: E episodes across them, per-sample feedback
    scored in the main process for every valid frame."""
    cfg = tiny_config(root, **{"env.workers": 2, "agent.name": "random", "loop.iterations": 1,
                               "loop.feedback": "sample"})
    recs = read_metrics(run(cfg, run_dir=root / "runs" / "workers2_random").run_dir)
    last = recs[-1]
    assert last["episodes"] == 2 and last["batch_size"] == 8 and last["workers"] == 2
    assert last["hardness_n"] == last["valid"]


# ------------------------------------------------------------------------------------ issue 25
# a run directory is data, never code: whatever a received run holds, resuming it runs none of it
# ------------------------------------------------------------------------------------ overlap
OVERLAP = {"loop.overlap": True, "loop.feedback": "sample", "loop.reward_norm": "running",
           "env.observation": "relative", "agent.gamma": 0.0, "loop.iterations": 3}


@pytest.fixture(scope="module")
def overlap_run(root):
    return run(tiny_config(root, **OVERLAP), run_dir=root / "runs" / "overlap")


def _fresh_hardness(run_dir: Path, i: int) -> float:
    """Mean hardness of iteration i's saved batch as the untouched VLM scores it, frame by
    frame (as per-sample feedback does)."""
    import numpy as np

    from rls3.vlm.launch import build_vlm_from_config

    vlm = build_vlm_from_config(load_run_config(run_dir))
    batch = read_dataset(run_dir / "data" / f"iter_{i:04d}")
    return float(np.mean([vlm.feedback([s]).hardness[0] for s in batch]))


def test_overlap_feeds_back_from_the_vlm_before_the_fine_tuning_beside_it(overlap_run):
    """loop.overlap: iteration 2 is collected beside iteration 1's fine-tuning, so its frames
    were scored by the untouched VLM, as iteration 1's were; iteration 3's by the VLM after
    fine-tuning 1 (with eta = 1 the batch holds every scored frame)."""
    d = overlap_run.run_dir
    recs = read_metrics(d)
    assert overlap_run.stop_reason == "max_iterations"
    assert [r["iteration"] for r in recs] == [0, 1, 2, 3]
    assert all(r["overlap"] for r in recs[1:]) and "overlap" not in recs[0]
    for r in recs[1:]:
        assert r["truncated_episodes"] == 0 and r["hardness_n"] == r["batch_size"] == 8
    assert _fresh_hardness(d, 1) == pytest.approx(recs[1]["hardness_mean"], abs=1e-6)
    assert _fresh_hardness(d, 2) == pytest.approx(recs[2]["hardness_mean"], abs=1e-6)
    assert _fresh_hardness(d, 3) != pytest.approx(recs[3]["hardness_mean"], abs=1e-3)
    assert recs[-1]["cum_steps"] == sum(r["steps"] for r in recs[1:])
    state = json.loads((latest_checkpoint(d) / "state.json").read_text())
    assert state["pending"] is None and set(state["batch_digests"]) == {"1", "2", "3"}


def test_overlap_drops_the_collection_beside_an_early_stop(root, tmp_path):
    """An early stop after iteration 1 leaves iteration 2's collection, made beside its
    fine-tuning, unused: its batch and digest are gone and nothing of it is counted."""
    over = {**OVERLAP, "early_stopping.min_iterations": 1, "early_stopping.patience": 1,
            "early_stopping.min_delta": 1.0}
    res = run(tiny_config(root, **over), run_dir=tmp_path / "stop")
    d = res.run_dir
    assert res.stop_reason == "early_stopping" and res.iterations == 1
    assert (d / "data" / "iter_0001").is_dir() and not (d / "data" / "iter_0002").exists()
    state = json.loads((latest_checkpoint(d) / "state.json").read_text())
    assert state["pending"] is None and set(state["batch_digests"]) == {"1"}
    recs = read_metrics(d)
    assert recs[-1]["cum_steps"] == recs[1]["steps"]


@pytest.mark.slow
def test_overlap_resumes_bit_identically_between_a_collection_and_its_fine_tuning(
        overlap_run, root, tmp_path):
    """`rls3 run` killed by SIGKILL after its first checkpoint, which holds iteration 2's
    collection (made beside iteration 1's fine-tuning) for the fine-tuning to come, resumes to
    the uninterrupted run's metrics and weights; so does a Ctrl-C in the fine-tuning thread."""
    cfg = tiny_config(root, **OVERLAP)
    d = tmp_path / "killed"
    kill_after_first_checkpoint(cfg, d)
    state = json.loads((latest_checkpoint(d) / "state.json").read_text())
    assert state["pending"]["iteration"] == 2 and set(state["batch_digests"]) == {"1", "2"}
    resume(d)
    ref = comparable(read_metrics(overlap_run.run_dir))
    assert comparable(read_metrics(d)) == ref
    _same_weights(d, overlap_run.run_dir)
    d = tmp_path / "ctrl_c"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir=d, on_phase=interrupt_at(2, "finetune"))
    assert comparable(read_metrics(d)) == ref[:2]
    resume(d)
    assert comparable(read_metrics(d)) == ref
    _same_weights(d, overlap_run.run_dir)


def test_overlap_needs_a_vlm_with_a_feedback_twin_and_saved_batches(root, tmp_path):
    """PaliGemma has no cheap copy to score feedback with: refused before anything is written;
    so is overlap without saved batches."""
    with pytest.raises(ConfigError, match="loop.overlap"):
        run(tiny_config(root, **{"loop.overlap": True, "vlm.name": "paligemma-tiny"}),
            run_dir=tmp_path / "pg")
    assert not (tmp_path / "pg").exists()
    with pytest.raises(ConfigError, match="loop.save_batches"):
        tiny_config(root, **{"loop.overlap": True, "loop.save_batches": False,
                             "loop.replay.capacity": 0})


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _reseal(run: Path, changed: Path) -> None:
    """Rewrite the manifests (and the recorded batch digest) that cover `changed`, as whoever
    edits a run directory can: only the content can tell a bad file then."""
    from rls3.manifest import MANIFEST_FILE, sha256, write_manifest

    ck = next((run / CHECKPOINTS).glob("iter_*"))
    if changed.parent.parent == run / "data":   # a saved batch: its manifest, then its digest
        if changed.name != MANIFEST_FILE:
            write_manifest(changed.parent)
        state = json.loads((ck / "state.json").read_text())
        state["batch_digests"][str(int(changed.parent.name[5:]))] = sha256(
            changed.parent / MANIFEST_FILE)
        (ck / "state.json").write_text(json.dumps(state))
        changed = ck / "state.json"
    if ck in changed.parents and changed != ck / MANIFEST_FILE:
        write_manifest(ck)


def _stamps(run: Path) -> dict[Path, int]:
    """Every file's modification time but the log's (a refused resume logs why)."""
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "run.log"}


def _resume_files(run: Path) -> list[str]:
    """Every file a resume of `run` reads (relative paths), plus the pickled names of the
    previous checkpoint format."""
    ck = f"{CHECKPOINTS}/iter_0001"
    files = [str(p.relative_to(run)) for p in sorted((run / ck).rglob("*")) if p.is_file()]
    files += [str(p.relative_to(run)) for p in sorted((run / "data" / "iter_0001").iterdir())]
    files += [f"{CHECKPOINTS}/{LATEST_FILE}", RUN_FILE, CONFIG_FILE]
    return files + [f"{ck}/rng.pkl", f"{ck}/agent/sac.zip", f"{ck}/agent/replay_buffer.pkl"]


@pytest.mark.slow
def test_a_pickle_payload_in_any_file_a_resume_reads_never_runs(interrupted_run, tmp_path):
    """Issue 25, item 1: a payload whose unpickling creates a marker file, planted in each file
    a resume reads (checkpoint, agent, RNG states, VLM, replayed batch, old pickled names) with
    the manifests rewritten to match: the marker never appears, each resume is a RunDirError
    and the run directory is left as it was."""
    import pickle

    probe = tmp_path / "probe"
    plant_payload(tmp_path / "probe.pkl", probe)
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert probe.exists()                    # the payload does run when unpickled
    marker = tmp_path / "marker"
    files = _resume_files(interrupted_run)
    assert {"checkpoints/iter_0001/rng.json", "checkpoints/iter_0001/agent/sac_buffer.npz",
            "checkpoints/iter_0001/agent/sac_optimizers.pt",
            "checkpoints/iter_0001/vlm/optimizer.pt"} <= set(files)
    outcomes = {}
    for i, rel in enumerate(files):
        d = _copy(interrupted_run, tmp_path / f"run{i}")
        plant_payload(d / rel, marker)
        _reseal(d, d / rel)
        before = _stamps(d)
        with pytest.raises(RunDirError) as e:
            resume(d)
        outcomes[rel] = str(e.value)
        assert not marker.exists(), rel
        assert _stamps(d) == before, rel
    assert all("\n" not in m for m in outcomes.values())
    assert "pickle, which is never loaded" in outcomes["checkpoints/iter_0001/rng.pkl"]


def test_a_run_of_the_pickled_format_is_refused_unread(sac_run, tmp_path):
    """Issue 25, item 1: a run directory of run format 2 (its checkpoints held pickles) is not
    continued, and its rng.pkl is never opened: one RunDirError saying how to go on."""
    d = _copy(sac_run.run_dir, tmp_path / "v2")
    marker = tmp_path / "marker"
    plant_payload(d / CHECKPOINTS / "iter_0002" / "rng.pkl", marker)
    _reseal(d, d / CHECKPOINTS / "iter_0002" / "rng.pkl")
    run_json = json.loads((d / RUN_FILE).read_text())
    run_json["format_version"] = 2
    (d / RUN_FILE).write_text(json.dumps(run_json))
    with pytest.raises(RunDirError, match=r"format 2, when checkpoints held pickles.*nothing was "
                                          r"changed.*rls3 run --config"):
        resume(d)
    assert not marker.exists()
    assert budget_from_run(d) == sac_run.final["cum_steps"]  # still readable


def test_the_library_never_unpickles_a_file():
    """Issue 25, item 1: no pickle/cloudpickle load and no SB3 zip or buffer load anywhere in
    rls3; torch.load only with weights_only=True, np.load only with allow_pickle=False."""
    import ast

    import rls3

    bad = []
    for path in sorted(Path(rls3.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if (name.split(".")[-1] in ("load_replay_buffer", "load_from_zip_file")
                    or name in ("pickle.load", "pickle.loads", "cloudpickle.load",
                                "cloudpickle.loads", "SAC.load", "dill.load", "joblib.load")
                    or name == "torch.load" and kw.get("weights_only") != "True"
                    or name == "np.load" and kw.get("allow_pickle") != "False"):
                bad.append(f"{path.name}:{node.lineno} {name}")
    assert bad == []


def test_an_edited_config_yaml_is_refused_on_resume(sac_run, tmp_path):
    """Issue 25, item 3: a config.yaml changed after the run was made is refused (the run would
    mix two configurations); layout and comments do not count."""
    d = _copy(sac_run.run_dir, tmp_path / "edited")
    cfg_file = d / CONFIG_FILE
    text = cfg_file.read_text()
    cfg_file.write_text("# a comment\n" + text.replace("\n", "\n\n"))
    assert load_run_config(d, resume=True) == load_run_config(sac_run.run_dir)
    cfg_file.write_text(text.replace("seed: 0\n", "seed: 1\n", 1))
    assert load_run_config(d).seed == 1
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*")}
    with pytest.raises(RunDirError, match=r"config\.yaml' differs from the configuration the run "
                                          r"was made with.*nothing was changed"):
        resume(d)
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*")} == before


def test_a_folder_made_before_a_setting_existed_resumes(sac_run, tmp_path):
    """A config.yaml written by an older rls3 lacks settings added since; unedited, it still
    matches the digest that version recorded, and the new settings take their defaults. An edit
    to such a file is still refused."""
    import hashlib

    d = _copy(sac_run.run_dir, tmp_path / "older")
    cfg_file, marker_file = d / CONFIG_FILE, d / RUN_FILE
    older = cfg_file.read_text().replace("  feedback_batch: 1\n", "")
    assert older != cfg_file.read_text()
    cfg_file.write_text(older)
    marker = json.loads(marker_file.read_text())
    marker["config_sha256"] = hashlib.sha256(older.encode()).hexdigest()
    marker_file.write_text(json.dumps(marker))
    assert load_run_config(d, resume=True) == load_run_config(sac_run.run_dir)
    cfg_file.write_text(older.replace("seed: 0\n", "seed: 1\n", 1))
    with pytest.raises(RunDirError, match=r"differs from the configuration the run"):
        load_run_config(d, resume=True)


def test_a_truncated_best_vlm_is_named_on_resume(sac_run, tmp_path):
    """Issue 25, item 4: resume verifies best_vlm/ against its manifest: a truncated
    model.safetensors is a RunDirError naming it, and nothing is rewritten."""
    from rls3.rundir import BEST_VLM

    d = _copy(sac_run.run_dir, tmp_path / "best")
    f = d / BEST_VLM / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    before = {p: p.stat().st_mtime_ns for p in d.rglob("*")}
    with pytest.raises(RunDirError, match=r"best_vlm.*model\.safetensors altered.*nothing was "
                                          r"changed"):
        resume(d)
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*")} == before


def test_latest_json_may_only_name_a_checkpoint_of_its_run(sac_run, tmp_path):
    """Issue 25, item 4: LATEST.json naming a path out of its checkpoints folder (../, absolute,
    another run's checkpoint through a link) or a folder of another iteration is corrupt."""
    other = _copy(sac_run.run_dir, tmp_path / "other")
    d = _copy(sac_run.run_dir, tmp_path / "run")
    latest = d / CHECKPOINTS / LATEST_FILE
    target = other / CHECKPOINTS / "iter_0002"
    for ptr in ({"dir": f"../../other/{CHECKPOINTS}/iter_0002", "iteration": 2},
                {"dir": str(target), "iteration": 2},
                {"dir": "iter_0002/../iter_0002", "iteration": 2},
                {"dir": "iter_0002", "iteration": 1}, {"dir": 2, "iteration": 2}):
        latest.write_text(json.dumps(ptr))
        with pytest.raises(RunDirError, match="LATEST.json' is corrupt"):
            resume(d)
    (d / CHECKPOINTS / "iter_0003").symlink_to(target)
    latest.write_text(json.dumps({"dir": "iter_0003", "iteration": 3}))
    with pytest.raises(RunDirError, match="symbolic link"):
        resume(d)
    latest.write_text(json.dumps({"dir": "iter_0002", "iteration": 2}))
    assert latest_checkpoint(d) == d / CHECKPOINTS / "iter_0002"


def test_a_replaced_replay_image_is_refused(sac_run, tmp_path):
    """Issue 25, item 5: a valid PNG swapped into a saved batch (or the batch's manifest
    rewritten to match it) is noticed when replay reads the batch back on resume."""
    from rls3.manifest import write_manifest

    d = _copy(sac_run.run_dir, tmp_path / "swapped")
    batch = d / "data" / "iter_0001"
    (batch / "00000.png").write_bytes((batch / "00001.png").read_bytes())
    loop = Loop(d)
    with pytest.raises(ReplayError, match=r"iter_0001' is not the batch this run saved "
                                          r"\(00000\.png altered\)"):
        loop._saved_batch(1)
    write_manifest(batch)
    with pytest.raises(ReplayError, match=r"manifest\.json altered"):
        loop._saved_batch(1)
    assert len(Loop(sac_run.run_dir)._saved_batch(1)) == 8   # the intact batch reads back


@pytest.mark.slow
def test_resume_with_a_replaced_replay_image_is_refused(interrupted_run, tmp_path):
    """Issue 25, item 5, end to end: resuming a run whose replayed batch holds another (valid)
    image is a RunDirError naming the batch, and changes nothing."""
    d = _copy(interrupted_run, tmp_path / "swapped")
    batch = d / "data" / "iter_0001"
    (batch / "00003.png").write_bytes((batch / "00004.png").read_bytes())
    before = _stamps(d)
    with pytest.raises(RunDirError, match=r"iter_0001' is not the batch this run saved"):
        resume(d)
    assert _stamps(d) == before
