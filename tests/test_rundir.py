"""One owner per run directory (the OS lock, atomic creation), the path checks made before a run
folder exists, and reading metrics."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import tiny_cli_config

from rls3.cli import main
from rls3.config import ConfigError
from rls3.rundir import (CHECKPOINTS, CONFIG_FILE, LATEST_FILE, LOCK_FILE, METRICS_FILE, RUN_FILE,
                         STATE_FILE, RunDirError, check_run_paths, create_run, latest_checkpoint,
                         loading, lock_run, read_checkpoint_state, read_metrics,
                         write_checkpoint)


#: `main` configures the "rls3" logger for a terminal: every test here gives it back after
pytestmark = pytest.mark.usefixtures("restore_rls3_logging")


def _stderr_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and "pybullet build time" not in ln]


# ------------------------------------------------------------------------------------ creation
def _create_at_once(cfg, run_dir, barrier, out) -> None:
    """Child process: wait for the others, then create a run; report the folder or the error."""
    barrier.wait()
    try:
        out.put(str(create_run(cfg, run_dir)))
    except RunDirError as e:
        out.put(f"error: {e}")


def _create_together(cfg, run_dir, n: int) -> list[str]:
    ctx = multiprocessing.get_context("fork")   # create_run touches no torch, GL or threads
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_create_at_once, args=(cfg, run_dir, barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_runs_created_in_the_same_second_get_their_own_folders(tmp_path):
    cfg = tiny_cli_config(tmp_path).resolved()
    for _ in range(12):   # check-then-create collided in about half of such rounds
        got = _create_together(cfg, None, 4)
        assert len(set(got)) == 4, got
        for d in map(Path, got):
            assert (d / RUN_FILE).is_file() and (d / CONFIG_FILE).is_file()
    assert len(list((tmp_path / "runs").iterdir())) == 48
    # one folder named by every process: exactly one of them gets it
    got = _create_together(cfg, tmp_path / "given", 4)
    assert got.count(str(tmp_path / "given")) == 1, got
    assert all("already exists" in g for g in got if g != str(tmp_path / "given"))


# ------------------------------------------------------------------------------------ the lock
HOLD = textwrap.dedent("""
    import sys, time
    from rls3.rundir import lock_run
    lock = lock_run(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path, capsys):
    d = create_run(tiny_cli_config(tmp_path).resolved(), tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert (d / LOCK_FILE).read_text().strip() == str(holder.pid)
        with pytest.raises(RunDirError, match=rf"in use by process {holder.pid}\b"):
            lock_run(d)
        assert main(["run", "--resume", str(d)]) == 2  # the CLI refuses it in one line too
        lines = _stderr_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"in use by process {holder.pid} " in lines[0]
    finally:
        holder.kill()           # SIGKILL: no clean-up, the lock file stays behind
        holder.wait()
    assert (d / LOCK_FILE).is_file()
    lock = lock_run(d)          # ... but its lock died with the process
    assert (d / LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()
    assert not (d / LOCK_FILE).exists()
    lock.release()              # idempotent


WAIT_AT_COLLECT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import rls3.loop
    from rls3.cli import main

    go = Path(sys.argv[2])
    phase = rls3.loop.Loop._phase

    def held(self, i, name):  # a long collection: hold iteration 1 until the test says go
        if (i, name) == (1, "collect"):
            (go.parent / f"waiting-{os.getpid()}").touch()
            while not go.exists():
                time.sleep(0.05)
        phase(self, i, name)

    rls3.loop.Loop._phase = held
    sys.exit(main(["run", "--resume", sys.argv[1], "--no-report", "-q"]))
""")


@pytest.mark.slow
def test_two_resumes_at_once_one_runs_the_other_is_refused(tmp_path):
    """Two `rls3 run --resume RUN` started together: the one that owns the folder runs (held in
    its first collection until the other has ended), the other exits 2 with one line naming the
    owner's PID, and metrics.jsonl holds each iteration once."""
    cfg = tiny_cli_config(tmp_path, **{"agent.name": "random", "progress": False})
    d = create_run(cfg.resolved(), tmp_path / "run")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WAIT_AT_COLLECT, str(d), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.time() + 400
    while (time.time() < deadline and all(p.poll() is None for p in procs)
           and len(list(tmp_path.glob("waiting-*"))) < 2):
        time.sleep(0.1)
    go.touch()
    results = [(p, *p.communicate(timeout=400)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    err = next(e for p, _, e in results if p.returncode == 2)
    lines = _stderr_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"is in use by process {winner.pid} " in lines[0] and str(d) in lines[0]
    iterations = [r["iteration"] for r in read_metrics(d)]
    assert iterations == [0, 1]
    assert not (d / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------ paths
@pytest.fixture()
def read_only_dir(tmp_path):
    """An empty folder this process cannot write: permissions, or (as root, whom permissions
    do not stop) a read-only tmpfs mounted on it."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    mounted = False
    if os.access(d, os.W_OK):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("cannot make a read-only folder here (root without mount)")
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=True)
    d.chmod(0o755)


@pytest.mark.parametrize("where", ["--run-dir", "runs_dir", "data.dir", "agent.pretrained_dir"])
def test_a_file_where_a_folder_goes_is_one_line_before_any_run_folder(where, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "sub" if where == "data.dir" else blocker  # a file above it, or at it
    extra = ["--run-dir", str(target)] if where == "--run-dir" else \
        ["--set", f"{where}={target}"]
    tiny_cli_config(tmp_path).to_yaml(tmp_path / "c.yaml")
    code = main(["run", "--config", str(tmp_path / "c.yaml"), "-q", *extra])
    lines = _stderr_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1, lines
    assert str(blocker) in lines[0] and "is a file, not a folder" in lines[0]
    if where != "--run-dir":
        assert f"{where}=" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_read_only_locations_are_named_before_any_run_folder(read_only_dir, tmp_path):
    cfg = tiny_cli_config(tmp_path).resolved()
    with pytest.raises(RunDirError, match=r"cannot use run directory .*(read-only|not writable)"):
        check_run_paths(cfg, read_only_dir / "run")
    with pytest.raises(RunDirError, match="(read-only|not writable)"):
        check_run_paths(cfg, read_only_dir)
    for key in ("runs_dir", "data.dir", "agent.pretrained_dir"):
        bad = cfg.override({key: str(read_only_dir / "sub")})
        with pytest.raises(ConfigError, match=rf"invalid {key}=.*(read-only|not writable)"):
            check_run_paths(bad)
    # an existing read-only cache folder is fine: it may hold every set the run reuses
    check_run_paths(cfg.override({"data.dir": str(read_only_dir)}), tmp_path / "run")
    check_run_paths(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_file_says_so(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert main(["run", "--resume", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        create_run(tiny_cli_config(tmp_path), run_dir=f)


# ------------------------------------------------------------------------------------ metrics
def test_a_torn_metrics_line_is_warned_about_once_per_report(tmp_path, caplog):
    """`rls3 report` reads each run once per figure: the torn last line of a crashed run is
    reported once, not once per figure."""
    from rls3.report import write_report

    d = create_run(tiny_cli_config(tmp_path).resolved(), tmp_path / "run")
    rec = ('{"iteration": 0, "agent": "sac", "seed": 0, "cum_steps": 0, "cum_valid": 0, '
           '"test": {"score": 0.5, "n": 3}, "val": {"score": 0.5, "n": 3}}')
    (d / METRICS_FILE).write_text(rec + "\n" + rec[:20])
    with caplog.at_level(logging.WARNING, logger="rls3"):
        write_report([d], tmp_path / "report")
        write_report([d], tmp_path / "report2")
    torn = [r for r in caplog.records if "torn last line" in r.getMessage()]
    assert len(torn) == 1, [r.getMessage() for r in caplog.records]
    with open(d / METRICS_FILE, "a") as f:   # the file changed: worth a new warning
        f.write("x")
    with caplog.at_level(logging.WARNING, logger="rls3"):
        read_metrics(d)
    assert len([r for r in caplog.records if "torn last line" in r.getMessage()]) == 2


def test_a_checkpoint_is_committed_read_back_and_replaces_the_last(tmp_path):
    """`write_checkpoint` commits the parts, the counters and a manifest, points LATEST.json at
    them and removes the older checkpoint; `read_checkpoint_state` gives the counters back and
    refuses a metrics file shorter than they record; `loading` names an unreadable part."""
    (tmp_path / METRICS_FILE).write_text("{}\n")

    def parts(folder):
        (folder / "vlm").mkdir()
        (folder / "vlm" / "w.bin").write_bytes(b"weights")

    first = write_checkpoint(tmp_path, 1, {"iteration": 1, "metrics_bytes": 3}, parts)
    (tmp_path / CHECKPOINTS / ".iter_0002.tmp").mkdir()     # left by a crashed write
    ck = write_checkpoint(tmp_path, 2, {"iteration": 2, "metrics_bytes": 3}, parts)
    assert latest_checkpoint(tmp_path) == ck == tmp_path / CHECKPOINTS / "iter_0002"
    assert not first.exists() and sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) \
        == [LATEST_FILE, "iter_0002"]
    assert read_checkpoint_state(tmp_path, ck) == {"iteration": 2, "metrics_bytes": 3}
    (tmp_path / METRICS_FILE).write_text("{")
    with pytest.raises(RunDirError, match="shorter than checkpoint iter_0002"):
        read_checkpoint_state(tmp_path, ck)
    (ck / STATE_FILE).write_text("[1]")
    with pytest.raises(RunDirError, match=f"is corrupt: bad {STATE_FILE}"):
        read_checkpoint_state(tmp_path, ck)
    with pytest.raises(RunDirError, match="cannot be loaded: .*nothing was changed"), \
            loading(ck, tmp_path):
        (ck / "agent" / "missing.json").read_text()
