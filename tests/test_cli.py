"""The `rls3` command: bad input gives exit code 2 and one line; each subcommand works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_config

from rls3.cli import main
from rls3.config import preset
from rls3.data import write_dataset
from rls3.rundir import METRICS_FILE, create_run
from rls3.vlm.synthetic import make_samples


#: `main` configures the "rls3" logger for a terminal: every test here gives it back after
pytestmark = pytest.mark.usefixtures("restore_rls3_logging")


def call(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, words", [
    (["run", "--preset", "nope"], ["--preset", "nope"]),
    (["run", "--set", "loop.eta=1.5"], ["loop.eta=1.5", "(0, 1]"]),
    (["run", "--set", "env.t0=-3"], ["env.t0=-3"]),
    (["run", "--agent", "ppo"], ["agent.name='ppo'", "sac"]),
    (["run", "--vlm", "gpt-9"], ["vlm.name='gpt-9'", "lite"]),
    (["run", "--backend", "unreal"], ["backend.name='unreal'", "sim"]),
    (["run", "--set", "loop"], ["section.key=value"]),
    (["run", "--seed", "x"], ["--seed", "invalid int"]),
    (["run", "--config", "/no/such.yaml"], ["/no/such.yaml", "does not exist"]),
    (["run", "--resume", "/no/such/run"], ["does not exist"]),
    (["run", "--resume", ".", "--seed", "2"], ["--resume", "drop --seed"]),
    (["run", "--workers", "0"], ["env.workers=0", "integer >= 1"]),
    (["run", "--resume", ".", "--workers", "2"], ["--resume", "drop --workers"]),
    (["run", "--workers", "2", "--backend", "unity", "--unity-editor"],
     ["env.workers=2", "Editor serves one"]),
    (["run", "--budget-from", "/no/such/run"], ["--budget-from", "does not exist"]),
    (["eval", "/no/ckpt", "/no/ds"], ["checkpoint", "does not exist"]),
    (["report", "."], ["not an rls3 run directory"]),
    (["scenes", "--layouts", "0"], ["--layouts"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["required"]),
])
def test_bad_input_exits_2_with_one_line(argv, words, capsys):
    code, out, err = call(argv, capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip() and "pybullet build time" not in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_console_entry_point_reports_errors_without_traceback():
    exe = Path(sys.executable).with_name("rls3")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rls3.cli"]
    p = subprocess.run(cmd + ["run", "--set", "loop.eta=7"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert "loop.eta=7" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture()
def tiny_yaml(tmp_path):
    f = tmp_path / "tiny.yaml"
    tiny_cli_config(tmp_path).to_yaml(f)
    return f


def test_generate(tiny_yaml, tmp_path, capsys):
    code, out, _ = call(["generate", "--config", tiny_yaml, "-q"], capsys)
    assert code == 0 and out.count("samples") == 2
    assert len(list((tmp_path / "data").iterdir())) == 2
    code, out, _ = call(["generate", "--config", tiny_yaml, "--split", "val"], capsys)
    assert code == 0 and "already there" in out and "test" not in out.split(":")[0]


@pytest.mark.slow
def test_run_writes_a_report_and_eval_reads_the_run(tiny_yaml, tmp_path, capsys):
    d = tmp_path / "runs" / "r"
    code, out, err = call(["run", "--config", tiny_yaml, "--run-dir", d, "-q"], capsys)
    assert code == 0, err
    assert "1 iterations" in out and (d / "report" / "report.md").is_file()
    ds = next(p for p in (tmp_path / "data").iterdir() if "-test-" in p.name)
    code, out, _ = call(["eval", d, ds, "-q", "--json", tmp_path / "m.json"], capsys)
    assert code == 0 and "score" in out and "complexity" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 3 and 0.0 <= m["score"] <= 1.0
    code, out, _ = call(["report", d, "--out", tmp_path / "rep"], capsys)
    assert code == 0 and (tmp_path / "rep" / "report.md").is_file()


def test_eval_of_a_vlm_folder_on_a_dataset(tmp_path, capsys):
    from rls3.vlm import build_vlm

    vlm = build_vlm("clip-tiny", progress=False)
    vlm.save(tmp_path / "vlm")
    ds = write_dataset(tmp_path / "ds", make_samples(4, seed=0, size=32))
    code, out, _ = call(["eval", tmp_path / "vlm", ds, "-q"], capsys)
    assert code == 0 and "(4 samples)" in out and "term" in out
    (ds / "00002.png").write_bytes(b"not a png")
    code, _, err = call(["eval", tmp_path / "vlm", ds], capsys)
    assert code == 2 and "00002.png" in err
    code, _, err = call(["eval", tmp_path, ds], capsys)
    assert code == 2 and "not an rls3 VLM checkpoint" in err


def test_report_refuses_a_run_without_metrics(tmp_path, capsys):
    """`rls3 report` on a run that has not finished its first evaluation says so and leaves no
    report behind (issue 13, item 9)."""
    d = create_run(preset("quick"), run_dir=tmp_path / "fresh")
    code, _, err = call(["report", d], capsys)
    assert code == 2 and "no metrics.jsonl" in err
    assert not (d / "report").exists()


def test_report_of_several_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = []
    for agent, seed, score in (("sac", 0, 0.6), ("sac", 1, 0.7), ("random", 0, 0.5)):
        cfg = preset("quick").override({"agent.name": agent, "seed": seed})
        d = create_run(cfg, run_dir=tmp_path / f"{agent}{seed}")
        recs = [{"iteration": 0, "cum_steps": 0, "cum_valid": 0, "test": {"score": 0.4}},
                {"iteration": 1, "cum_steps": 100, "cum_valid": 40, "cum_yield": 0.4,
                 "feedback_j2": 2.0, "test": {"score": score, "per_term": {"left": score}},
                 "early_stopping": {"best_iteration": 1, "best_score": score},
                 "stop_reason": "max_iterations"}]
        (d / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
        dirs.append(d)
    code, out, _ = call(["report", *dirs], capsys)
    assert code == 0
    text = (tmp_path / "report" / "report.md").read_text()
    # quick's SAC gets per-sample feedback: the report names it so
    assert "| sac-sample | 2 |" in text and "| random | 1 |" in text and "0.650 ± 0.050" in text


def test_scenes_contact_sheet(tmp_path, capsys):
    out_png = tmp_path / "sheet.png"
    code, out, _ = call(["scenes", "--out", out_png, "--size", "32", "--split", "test"], capsys)
    assert code == 0 and out_png.is_file()
    from PIL import Image

    assert Image.open(out_png).width == 32


def test_unity_bridge_errors_are_one_line_and_logged(tmp_path, capsys, monkeypatch):
    """A Unity failure mid-run: one line with the error and the resume hint (exit 3), and run.log
    records why the run stopped (issue 13, item 5)."""
    from rls3.bridges.errors import UnityDisconnectedError
    from rls3.loop import Loop
    from rls3.rundir import LOG_FILE

    def dropped(self):
        raise UnityDisconnectedError("the Unity player exited (code -9) during STEP on port 5005")

    monkeypatch.setattr(Loop, "_run", dropped)
    d = tmp_path / "r"
    code, _, err = call(["run", "--run-dir", d, "--set", f"runs_dir={tmp_path}", "-q",
                         "--no-report"], capsys)
    assert code == 3
    assert err.count("\n") <= 2 and "UnityDisconnectedError" in err and "--resume" in err
    assert "Traceback" not in err
    assert "run stopped by UnityDisconnectedError" in (d / LOG_FILE).read_text()


@pytest.mark.parametrize("override, words", [
    ("backend.options={bogus: 1}", ["backend.options", "bogus"]),
    ("backend.train_scenes=[nosuch]", ["backend.train_scenes", "nosuch", "known scenes"]),
    ("backend.objects=[mug, cup, unicorn]", ["backend.objects", "unicorn"]),
    ("agent.ent_coef=auto_abc", ["agent.ent_coef", "auto_abc"]),
    ("agent.buffer_size=1e12", ["agent.buffer_size", "GiB"]),
    ("loop.beta=.inf", ["loop.beta", "finite"]),
    ("vlm.options={bogus: 1}", ["vlm.options", "bogus", "allowed"]),
    ("vlm.options={cache_dtype: int8}", ["vlm.options", "cache_dtype", "float16"]),
    ("vlm.cache_dtype=float64", ["vlm.cache_dtype", "float64", "bfloat16"]),
    ("loop.keep=hardest", ["loop.keep", "eta < 1"]),
    ("loop.caption_pair=moving", ["loop.caption_pair", "moving", "'moved'"]),
    ("loop.term_balance=-1", ["loop.term_balance", ">= 0"]),
    ("env.action=teleport", ["env.action", "teleport", "'place'"]),
])
def test_everything_checkable_is_checked_before_a_run_folder_exists(override, words, tmp_path,
                                                                    capsys, monkeypatch):
    """Issue 13, item 3: each of these once passed validation, then left a traceback and a run
    folder behind."""
    monkeypatch.chdir(tmp_path)
    code, out, err = call(["run", "-q", "--set", override, "--set", f"runs_dir={tmp_path}/runs"],
                          capsys)
    assert code == 2, err
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    for w in words:
        assert w in line, (w, line)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_quiet_output_has_no_banner_and_bars_print_plain_lines(tmp_path, capsys, monkeypatch):
    """Issue 13, item 9: `-q` shows neither pybullet's banner nor transformers' loading bars, and
    progress written to a file or pipe is one plain line per update, not carriage returns."""
    out = subprocess.run([sys.executable, "-m", "rls3.cli", "scenes", "-q", "--size", "32",
                          "--split", "test", "--out", str(tmp_path / "s.png")],
                         capture_output=True, text=True, check=True)
    assert "pybullet" not in out.stdout + out.stderr
    assert out.stdout.strip().startswith("scenes:") and out.stderr == ""
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    call(["scenes", "-q", "--size", "32", "--split", "test", "--out", tmp_path / "t.png"], capsys)
    import os

    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"
    import io

    from rls3 import progress

    buf = io.StringIO()           # not a terminal
    monkeypatch.setattr(progress.sys, "stderr", buf)
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with progress.progress_bar(total=3, desc="work", unit="img") as bar:
        for _ in range(3):
            bar.update(1)
    text = buf.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 2 <= len(lines) <= 5 and lines[-1].startswith("work") and "3/3" in lines[-1]
    # at the real interval, postfix refreshes (which bypass tqdm's own rate limit) print nothing
    # extra: the first line and the final one
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 30.0)
    buf.seek(0)
    buf.truncate(0)
    with progress.progress_bar(total=100, desc="busy", unit="img") as bar:
        for i in range(100):
            bar.set_postfix(loss=f"{i}")
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "100/100" in lines[-1]
    buf.seek(0)
    buf.truncate(0)
    with progress.progress_bar(total=3, desc="off", enabled=False) as bar:
        bar.update(3)
    assert buf.getvalue().strip("\x00") == ""


# ------------------------------------------------------------------ OpenAI-CLIP / open_clip files
@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    """A tiny CLIP of OpenAI's own code saved as open_clip / NegCLIP training checkpoints are:
    {'epoch', 'name', 'state_dict' (DDP's 'module.' prefix)}."""
    import torch
    from conftest import tiny_openai_clip

    f = tmp_path_factory.mktemp("ckpt") / "tiny_negclip.pth"
    sd = tiny_openai_clip().state_dict()
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v
                                                           for k, v in sd.items()}}, f)
    return f


def _fake_run(root: Path, score: float) -> Path:
    d = create_run(preset("quick"), run_dir=root)
    recs = [{"iteration": 0, "cum_steps": 0, "test": {"score": 0.3, "per_term": {"left": 0.3}}},
            {"iteration": 1, "cum_steps": 100, "test": {"score": score,
                                                        "per_term": {"left": score}}}]
    (d / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_convert_eval_and_a_report_baseline(tiny_pth, tmp_path, capsys):
    ds = write_dataset(tmp_path / "ds", make_samples(6, seed=0, size=32))
    code, out, err = call(["convert", tiny_pth, tmp_path / "conv", "-q"], capsys)
    assert code == 0, err
    assert "ViT 2x128 patch 8 at 32 px; text 2x128, 77 tokens; embed 32" in out
    code, _, err = call(["convert", tiny_pth, tmp_path / "conv", "-q"], capsys)
    assert code == 2 and "already exists and is not empty" in err
    code, out, err = call(["eval", tiny_pth, ds, "-q", "--json", tmp_path / "file.json"], capsys)
    assert code == 0 and "(6 samples)" in out, err
    code, out, err = call(["eval", tmp_path / "conv", ds, "-q", "--json",
                           tmp_path / "folder.json"], capsys)
    assert code == 0, err
    a = json.loads((tmp_path / "file.json").read_text())
    b = json.loads((tmp_path / "folder.json").read_text())
    assert a["n"] == b["n"] == 6 and a["score"] == b["score"] and a["vlm"] == "clip"
    assert a["per_term"] == b["per_term"] and a["checkpoint"] == str(tiny_pth.resolve())
    run = _fake_run(tmp_path / "run", 0.5)
    code, out, err = call(["report", run, "--out", tmp_path / "rep", "--baseline",
                           f"NegCLIP-tiny={tmp_path / 'file.json'}"], capsys)
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| NegCLIP-tiny (baseline) |" in md and f"test {a['score']:.3f} on 6 samples" in md


def test_bad_checkpoints_and_baselines_are_one_line_cli_errors(tiny_pth, tmp_path, capsys,
                                                               monkeypatch):
    import torch
    from conftest import openai_clip_file

    resnet = tmp_path / "rn50.pt"
    rn = openai_clip_file("openai_clip_model", "clip/model.py").CLIP(
        32, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1)
    torch.save(rn.state_dict(), resnet)
    other = tmp_path / "mlp.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(tiny_pth.read_bytes()[:100_000])
    ds = write_dataset(tmp_path / "ds", make_samples(2, seed=0, size=32))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"score": 0.5, "n": 2}))
    run = _fake_run(tmp_path / "run", 0.5)
    monkeypatch.chdir(tmp_path)
    runs = f"runs_dir={tmp_path}/runs"
    cases = [
        (["convert", resnet, tmp_path / "o1"], ["rn50.pt", "ResNet CLIP", "ViT"]),
        (["convert", other, tmp_path / "o2"], ["mlp.pth", "not a CLIP ViT state dict"]),
        (["convert", truncated, tmp_path / "o3"], ["cut.pth", "truncated"]),
        (["convert", tiny_pth, tmp_path / "o4", "--vision-heads", "3"], ["width 128", "3"]),
        (["convert", tmp_path / "nope.pt", tmp_path / "o5"], ["nope.pt", "does not exist"]),
        (["eval", resnet, ds], ["rn50.pt", "ResNet CLIP"]),
        (["eval", truncated, ds, "--json", tmp_path / "o6.json"], ["cut.pth", "truncated"]),
        (["eval", tiny_pth, ds, "--vlm", "lite"], ["only the clip adapter", "lite"]),
        (["run", "--vlm", "clip", "--set", f"vlm.weights={resnet}", "--set", runs],
         ["vlm.weights=", "ResNet CLIP"]),
        (["run", "--preset", "paper-clip", "--set", f"vlm.weights={truncated}",
          "--set", runs], ["vlm.weights=", "truncated"]),
        (["report", run, "--baseline", "NegCLIP"], ["NAME=EVAL.json"]),
        (["report", run, "--baseline", f"x={tmp_path / 'none.json'}"], ["does not exist"]),
        (["report", run, "--baseline", f"x={good}", "--baseline", f"x={good}"],
         ["names must differ"]),
    ]
    for argv, words in cases:
        code, _, err = call(argv + ["-q"], capsys)        # -q: no progress lines on stderr
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
        for w in words:
            assert w in lines[0], (w, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["rn50.pt", "mlp.pth", "cut.pth", "ds", "good.json", "run"])
    assert not (run / "report").exists()


def test_tiny_run_on_an_openai_checkpoint(tiny_pth, tmp_path, capsys, monkeypatch):
    """`rls3 run --vlm clip --set vlm.weights=FILE.pth` converts the file in memory, records its
    absolute path (resumable from anywhere), fine-tunes and checkpoints it as a transformers
    folder; `rls3 eval` of the file on the run's test set is a baseline for its report."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_pth, tmp_path / "negclip.pth")
    f = tmp_path / "tiny.yaml"
    tiny_cli_config(tmp_path).override({"vlm.name": "clip"}).to_yaml(f)
    d = tmp_path / "runs" / "r"
    code, out, err = call(["run", "--config", f, "--set", "vlm.weights=negclip.pth", "--run-dir",
                           d, "-q", "--no-report"], capsys)
    assert code == 0, err
    assert f"weights: {tmp_path / 'negclip.pth'}" in (d / "config.yaml").read_text()
    recs = [json.loads(ln) for ln in (d / METRICS_FILE).read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1] and recs[1]["test"]["n"] == 3
    ds = next(p for p in (tmp_path / "data").iterdir() if "-test-" in p.name)
    code, _, err = call(["eval", "negclip.pth", ds, "-q", "--json", "base.json"], capsys)
    assert code == 0, err
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["score"] == pytest.approx(recs[0]["test"]["score"])   # iteration 0 = the file
    code, _, err = call(["report", d, "--baseline", "NegCLIP=base.json"], capsys)
    assert code == 0, err
    assert "| NegCLIP (baseline) |" in (d / "report" / "report.md").read_text()
    assert (d / "report" / "fig5_score_vs_data.png").is_file()


def test_an_image_size_the_renderer_cannot_draw_is_one_line_before_a_run_folder(tmp_path,
                                                                                 capsys):
    """env.image_size=100000: exit 2 with one line naming the value and this machine's limit
    (the OpenGL maximum), and no run folder (was: a run folder, then a raw GLError)."""
    tiny_cli_config(tmp_path).to_yaml(tmp_path / "c.yaml")
    code, _, err = call(["run", "--config", tmp_path / "c.yaml", "-q", "--set",
                         "env.image_size=100000"], capsys)
    from rls3.sim.render import max_image_size

    top = max_image_size()
    assert 1024 <= top < 100000
    lines = [ln for ln in err.splitlines() if ln.strip() and "pybullet build time" not in ln]
    assert code == 2 and len(lines) == 1, err
    assert f"env.image_size=100000: must be an integer in [8, {top}]" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
