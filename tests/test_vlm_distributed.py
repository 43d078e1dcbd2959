"""Data-parallel VLM (rls3.vlm.distributed): 2 CPU processes (gloo, launched by torchrun) give the
same losses, feedback, metrics and weights as 1 process on the same global batch; the pieces
(shards, gradient scaling, round-robin reassembly, the sample codec, the launch checks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rls3.vlm.common import batches
from rls3.vlm.distributed import (DEFAULT_TIMEOUT_S, TIMEOUT_VAR, SampleCodec, Shards,
                                  check_processes, collective_timeout, deal, launched_world_size,
                                  scale_grad, undeal)

WORKER = Path(__file__).with_name("_dp_worker.py")
STALL = Path(__file__).with_name("_dp_stall.py")
ROOT = Path(__file__).resolve().parents[1]


def _launch(out: Path, nproc: int) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    d = tmp_path_factory.mktemp("dp")
    env_backup = {k: os.environ.pop(k) for k in ("WORLD_SIZE",) if k in os.environ}
    try:
        sys.path.insert(0, str(WORKER.parent))
        import _dp_worker

        one = {case[0]: _dp_worker.run(*case) for case in _dp_worker.CASES}
    finally:
        sys.path.remove(str(WORKER.parent))
        os.environ.update(env_backup)
    _launch(d / "two.pt", 2)
    two = torch.load(d / "two.pt", weights_only=False)
    return one, two


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip-tiny", "lite", "paligemma-tiny"])
def test_two_processes_match_one(one_and_two, name):
    one, two = one_and_two[0][name], one_and_two[1][name]
    assert one["world"] == 1 and two["world"] == 2
    # feedback and evaluation: the same groups computed the same way, gathered in order
    np.testing.assert_allclose(two["feedback"][0], one["feedback"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["feedback"][2], one["feedback"][2], rtol=1e-5, atol=1e-6)
    assert two["feedback"][1] == pytest.approx(one["feedback"][1], rel=1e-5)
    # fine-tuning: every step's loss over the global mini-batch, and the weights after epoch 1
    assert len(one["losses"]) == {"clip-tiny": 6, "lite": 3, "paligemma-tiny": 3}[name]
    assert len(one["group_losses"]) == {"clip-tiny": 3, "lite": 1, "paligemma-tiny": 1}[name]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(one["group_losses"], two["group_losses"], strict=True):
        assert g1.keys() == g2.keys()
        np.testing.assert_allclose(list(g2.values()), list(g1.values()), rtol=1e-5, atol=1e-6)
    moved = max(float((one["weights"][k] - one["before"][k]).abs().max())
                for k in one["weights"])
    assert moved > 1e-4       # the comparison below is not of untouched weights
    for k, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][k], w, rtol=1e-5, atol=1e-5, msg=k)
    m1, m2 = one["metrics"], two["metrics"]
    assert m2["score"] == m1["score"] and m2["per_term"] == m1["per_term"]
    assert m2["n"] == m1["n"] and m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)


# ------------------------------------------------------------------------------------ pieces
def test_shards_split_contiguously():
    s = Shards.of(7, 3)
    assert s.sizes == (3, 2, 2) and s.starts == (0, 3, 5) and s.widest == 3
    assert Shards.of(1, 2).sizes == (1, 0)


def test_scale_grad_keeps_value_scales_gradient():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_grad(x, 3.0)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_dealt_groups_come_back_in_sample_order():
    # 7 samples in groups of 2 -> groups 0,1,2,3 (sizes 2,2,2,1); process 0 has 0 and 2
    groups = list(batches(7, 2))
    shares = [deal(groups, q, 2) for q in range(2)]
    assert shares == [[groups[0], groups[2]], [groups[1], groups[3]]]

    def arrays(sl):  # a process's per-group results (what the adapters gather)
        a = np.arange(sl.start, sl.stop, dtype=float)
        return [a, a > 2, -a]
    parts = [[arrays(sl) for sl in share] for share in shares]
    losses, correct, hard = (np.concatenate(f) for f in zip(*undeal(parts, len(groups)), strict=True))
    assert losses.tolist() == list(range(7))
    assert correct.tolist() == [i > 2 for i in range(7)] and hard.tolist() == [-i for i in range(7)]


def test_sample_codec_sends_each_sample_once_and_forgets_in_step():
    send, recv = SampleCodec(capacity=2), SampleCodec()
    a, b, c = object(), object(), object()
    wire, dropped = send.encode([a, b])
    assert all(isinstance(w, tuple) for w in wire) and dropped == []
    got = recv.decode(wire, dropped)
    assert got == [a, b]
    wire, dropped = send.encode([a, c])           # a known, c new; b falls out (capacity 2)
    assert wire[0] == 0 and isinstance(wire[1], tuple) and dropped == [1]
    got2 = recv.decode(wire, dropped)
    assert got2[0] is got[0] and 1 not in recv._held


def test_launch_checks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_world_size() == 2
    monkeypatch.setenv("WORLD_SIZE", "zwei")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        launched_world_size()
    monkeypatch.delenv("WORLD_SIZE")
    assert launched_world_size() == 1
    check_processes(None, 2)
    check_processes(2, 2)
    with pytest.raises(ValueError, match=r"vlm.processes is 4 but 2 process\(es\) were launched"):
        check_processes(4, 2)


# ------------------------------------------------------------------------ `rls3 run` on 2 processes
def _tiny_run_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = {"env.t0": 4, "env.image_size": 32, "loop.episodes": 2, "loop.iterations": 1,
            "loop.k": 1, "vlm.name": "clip-tiny", "data.dir": root / "data",
            "data.val_size": 6, "data.test_size": 6, "runs_dir": root / "runs",
            "backend.train_scenes": "[kitchen, bedroom]", "backend.test_scenes": "[test_kitchen]",
            "loop.feedback": "episode", "loop.reward_norm": "none"}
    args = ["run", "-q", "--preset", "quick", "--agent", "random", "--no-report",
            "--run-dir", str(run_dir)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def _metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rls3_run_on_two_processes_matches_one(tmp_path):
    """`torchrun --nproc_per_node 2 -m rls3 run`: the main process alone writes the run directory
    and the metrics equal a one-process run's within float tolerance."""
    from rls3.cli import main

    assert main(_tiny_run_args(tmp_path, tmp_path / "one")) == 0
    proc = _torchrun(_tiny_run_args(tmp_path, tmp_path / "two"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run ") == 1            # one summary line: the main process's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["iteration"] for r in two] == [r["iteration"] for r in one] == [0, 1]
    for a, b in zip(one, two, strict=True):
        for split in ("val", "test"):
            assert b[split]["score"] == a[split]["score"]
            assert b[split]["loss"] == pytest.approx(a[split]["loss"], rel=1e-5)
    np.testing.assert_allclose(two[1]["finetune_losses"], one[1]["finetune_losses"], rtol=1e-5)
    # `rls3 eval` on 2 processes: the same metrics, printed and written once
    import json

    dataset = next((tmp_path / "data").rglob("metadata.jsonl")).parent
    assert main(["eval", str(tmp_path / "two"), str(dataset), "-q",
                 "--json", str(tmp_path / "e1.json")]) == 0
    proc = _torchrun(["eval", str(tmp_path / "two"), str(dataset), "-q",
                      "--json", str(tmp_path / "e2.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("score") == 1
    e1, e2 = (json.loads((tmp_path / f).read_text()) for f in ("e1.json", "e2.json"))
    assert e2["score"] == e1["score"] and e2["per_term"] == e1["per_term"]
    assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-6)


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "rls3", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_launch_that_disagrees_with_the_config_stops_every_process(tmp_path):
    proc = _torchrun(_tiny_run_args(tmp_path, tmp_path / "r", "--set", "vlm.processes=3"))
    assert proc.returncode != 0 and not (tmp_path / "r").exists()
    want = "vlm.processes is 3 but 2 process(es) were launched (WORLD_SIZE=2)"
    assert proc.stderr.count(want) == 2          # both processes stop with the same error


def test_processes_that_disagree_with_the_launch_are_refused(tmp_path, capsys, monkeypatch):
    from rls3.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(_tiny_run_args(tmp_path, tmp_path / "r", "--set", "vlm.processes=2"))
    assert code == 2 and not (tmp_path / "r").exists()
    err = capsys.readouterr().err
    assert "vlm.processes is 2 but 1 process(es) were launched" in err
    assert "torchrun --nproc_per_node 2" in err
    code = main(_tiny_run_args(tmp_path, tmp_path / "r", "--set", "vlm.processes=0"))
    assert code == 2 and "vlm.processes" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["scenes", "--out", str(tmp_path / "s.png")]) == 2
    assert "`rls3 scenes` runs in one process, but 2 were launched" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ stalls
def test_collective_timeout_is_read_from_the_environment():
    assert collective_timeout({}) == DEFAULT_TIMEOUT_S == 1800
    assert collective_timeout({TIMEOUT_VAR: " 60 "}) == 60.0
    for bad in ("0", "-5", "soon", "nan", "inf", "1e9"):
        with pytest.raises(ValueError, match=f"{TIMEOUT_VAR}={bad!r} must be a number of "
                                             f"seconds"):
            collective_timeout({TIMEOUT_VAR: bad})


def test_a_stalled_process_ends_the_main_one_with_a_named_error(tmp_path):
    """Process 1 stops (SIGSTOP) after joining the group: the main process's next collective
    ends after RLS3_COLLECTIVE_TIMEOUT seconds with a CollectiveTimeoutError naming the call and
    the limit, instead of waiting silently."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    go = tmp_path / "go"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   **{TIMEOUT_VAR: "4"})
        procs.append(subprocess.Popen([sys.executable, str(STALL), str(go)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:   # both imported: they join the group within the short timeout
            assert p.stdout.readline().strip() == "ready", p.communicate()[1][-2000:]
        go.touch()
        out, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()          # process 1 is still stopped
            p.wait()
    assert procs[0].returncode == 3, err[-3000:]
    assert "the all-gather got no answer from the other processes within 4 s" in out
    assert TIMEOUT_VAR in out
    waited = float(out.split("named after ")[1].split("s:")[0])
    assert 3.5 <= waited < 60
