"""Config: paper defaults, presets, YAML round trip, overrides, validation messages, and the
backend settings a run fills in."""

from __future__ import annotations

import pytest
import yaml

from rls3.config import (PRESETS, STEP_CAP_T0, Config, ConfigError, EarlyStoppingConfig, LoopConfig,
                         parse_assignment, preset)
from rls3.seeding import child_seed


def test_defaults_are_the_papers_numbers():
    c = Config()
    assert c.env.t0 == 200
    assert (c.loop.eta, c.loop.episodes, c.loop.beta, c.loop.k) == (0.5, 20, 10.0, 10)
    assert (c.early_stopping.patience, c.early_stopping.min_iterations) == (5, 10)
    assert (c.data.val_size, c.data.test_size) == (500, 1000)
    assert c.agent.pretrain_steps == 100_000 and c.agent.name == "sac" and c.vlm.name == "lite"
    pg = preset("paper-paligemma")
    assert pg.loop.k == 256 and pg.vlm.name == "paligemma"
    assert (pg.early_stopping.patience, pg.early_stopping.min_iterations) == (10, 15)
    clip = preset("paper-clip")
    assert clip.loop.k == 10 and clip.vlm.name == "clip" and clip.env.t0 == 200
    for p in (c, pg, clip):  # the paper's agent and feedback; the departures stay in quick
        assert (p.loop.feedback, p.loop.reward_norm, p.env.observation) == (
            "episode", "none", "paper")
        assert p.vlm.cache_dtype is None and not p.vlm.options
        assert p.agent.gamma == 0.99 and p.agent.net_arch == (256, 256)
        assert p.agent.target_entropy is None and p.loop.replay.capacity == 0


def test_quick_preset_is_small():
    q = preset("quick")
    assert q.env.t0 <= 32 and q.env.image_size <= 224 and q.loop.episodes * q.env.t0 <= 128
    assert q.loop.k <= 10 and q.agent.pretrain_steps <= 50_000  # <= 10 CPU minutes
    assert (q.loop.feedback, q.loop.reward_norm, q.env.observation) == (
        "sample", "running", "relative")
    assert q.data.val_size <= 200 and q.data.test_size <= 200 and q.vlm.name == "lite"


def test_quick_cache_dtype_follows_the_vlm_to_adapters_that_take_it():
    """quick's 16-bit prefix cache reaches lite and is left out for adapters without one, so
    `--vlm clip-tiny` on quick builds (it once refused the option)."""
    q = preset("quick")
    assert q.vlm.cache_dtype == "float16" and q.vlm.build_kwargs()["cache_dtype"] == "float16"
    for name in ("clip-tiny", "paligemma-tiny"):
        assert "cache_dtype" not in q.override({"vlm.name": name}).vlm.build_kwargs()
    assert "cache_dtype" not in q.override({"vlm.cache_dtype": None}).vlm.build_kwargs()
    with pytest.raises(ConfigError, match="vlm.cache_dtype.*int8"):
        q.override({"vlm.cache_dtype": "int8"})
    with pytest.raises(ConfigError, match="vlm.options.cache_dtype.*bfloat16"):
        q.override({"vlm.options.cache_dtype": "bfloat16"})  # two settings that disagree
    same = q.override({"vlm.cache_dtype": None, "vlm.options.cache_dtype": "bfloat16"})
    assert same.vlm.build_kwargs()["cache_dtype"] == "bfloat16"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_round_trip(name, tmp_path):
    c = preset(name)
    f = tmp_path / "c.yaml"
    c.to_yaml(f)
    assert Config.from_yaml(f) == c
    assert Config.from_dict(yaml.safe_load(c.to_yaml())) == c


def test_partial_yaml_applies_on_its_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: quick\nseed: 3\nloop:\n  eta: 0.25\n"
                 "backend:\n  train_scenes: [kitchen]\n")
    c = Config.from_yaml(f)
    assert c.preset == "quick" and c.seed == 3 and c.loop.eta == 0.25
    assert c.loop.k == preset("quick").loop.k
    assert c.backend.train_scenes == ("kitchen",)


def test_bad_config_files_are_named(tmp_path):
    """Duplicate keys, a directory and a binary file give a ConfigError naming the file
    (issue 13, items 5 and 9)."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("loop:\n  eta: 0.5\n  k: 3\n  eta: 0.25\n")
    with pytest.raises(ConfigError, match="duplicate key 'eta'"):
        Config.from_yaml(dup)
    top = tmp_path / "top.yaml"
    top.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        Config.from_yaml(top)
    with pytest.raises(ConfigError, match="is a directory"):
        Config.from_yaml(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        Config.from_yaml(binary)


def test_overrides():
    c = preset("quick").override(["loop.eta=0.3", "env.t0=8", "vlm.device=null",
                                  "agent.net_arch=[64, 64]", "loop.budget_from=runs/x"])
    assert c.loop.eta == 0.3 and c.env.t0 == 8 and c.vlm.device is None
    assert c.agent.net_arch == (64, 64) and c.loop.budget_from == "runs/x"
    assert c.override({"seed": 5}).seed == 5
    assert parse_assignment("a.b=null") == ("a.b", None)
    assert preset("quick").override(["vlm.lr=1e-5"]).vlm.lr == 1e-5


@pytest.mark.parametrize("override, words", [
    ("env.t0=-5", ["env.t0=-5", ">= 1"]),
    ("loop.eta=0", ["loop.eta=0.0", "(0, 1]"]),
    ("loop.eta=1.5", ["loop.eta=1.5", "(0, 1]"]),
    ("loop.k=0", ["loop.k=0", ">= 1"]),
    ("loop.k=2.5", ["loop.k=2.5", "integer"]),
    ("preset=fancy", ["preset='fancy'", "quick"]),
    ("backend.name=blender", ["backend.name='blender'", "sim", "unity"]),
    ("vlm.name=gpt", ["vlm.name='gpt'", "lite"]),
    ("agent.name=ppo", ["agent.name='ppo'", "random"]),
    ("loop.budget_unit=hours", ["loop.budget_unit='hours'", "steps"]),
    ("loop.etaa=0.3", ["loop.etaa", "allowed", "eta"]),
    ("envv.t0=3", ["envv", "allowed"]),
    ("early_stopping.patience=0", ["early_stopping.patience=0"]),
    ("agent.ent_coef=-1", ["agent.ent_coef", "auto"]),
    ("env.t0=abc", ["env.t0='abc'", "integer"]),
    ("progress=maybe", ["progress='maybe'", "true or false"]),
    ("env.workers=0", ["env.workers=0", "integer >= 1"]),
    ("env.workers=-2", ["env.workers=-2", "integer >= 1"]),
    ("env.workers=1.5", ["env.workers=1.5", "integer"]),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        preset("quick").override([override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_assignment_and_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        preset("quick").override(["loop"])
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
    with pytest.raises(ConfigError, match="eta \\* t0"):
        preset("quick").override(["env.t0=1", "loop.eta=0.4"])


def test_sections_validate_directly():
    with pytest.raises(ConfigError):
        LoopConfig(eta=-0.1)
    with pytest.raises(ConfigError):
        EarlyStoppingConfig(min_delta=-1)
    assert LoopConfig(k=10).validation_points == (10,)
    assert LoopConfig(k=10, val_every=4).validation_points == (4, 8, 10)
    assert LoopConfig(k=256, val_every=64).validation_points == (64, 128, 192, 256)


def test_env_step_cap_resolves():
    c = preset("quick")
    assert c.env.max_steps == 0 and c.env_config.max_steps == STEP_CAP_T0 * c.env.t0
    assert c.override(["env.max_steps=500"]).env_config.max_steps == 500


@pytest.mark.parametrize("assignment, key", [
    ("loop.feedback=step", "loop.feedback"), ("loop.reward_norm=zscore", "loop.reward_norm"),
    ("env.observation=pixels", "env.observation"),
    ("agent.target_entropy=.inf", "agent.target_entropy")])
def test_feedback_norm_and_observation_are_checked(assignment, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        preset("quick").override([assignment])


def test_backend_options_merge_and_unity_runs_get_size_logs_and_build_identity(tmp_path):
    """Issue 13, item 7: `--set backend.options.image_size=64` keeps the build path (null
    removes an option); a Unity run asks the player for the env's image size and logs into the
    run directory; caches key on the build file's identity."""
    from rls3.backends import backend_identity

    build = tmp_path / "Player.x86_64"
    build.write_bytes(b"v1")
    c = preset("quick").override({"backend.name": "unity",
                                  "backend.options": {"build": str(build), "timeout_s": 30}})
    c = c.override(["backend.options.image_size=64"])
    assert c.backend.options == {"build": str(build), "timeout_s": 30, "image_size": 64}
    assert c.override(["backend.options.timeout_s=null"]).backend.options == {
        "build": str(build), "image_size": 64}
    plain = preset("quick").override({"backend.name": "unity",
                                      "backend.options": {"build": str(build)}})
    run_cfg = plain.backend_config(log_folder=tmp_path / "logs")
    assert run_cfg.options == {"build": str(build), "image_size": plain.env.image_size,
                               "log_folder": str(tmp_path / "logs"),
                               "seed": child_seed(plain.seed, "backend")}
    assert plain.override({"seed": 1}).backend_config().options["seed"] != run_cfg.options["seed"]
    assert c.backend_config().options["image_size"] == 64          # an explicit size stays
    assert preset("quick").backend_config(log_folder="x") == preset("quick").backend  # sim
    first = backend_identity(plain.backend)
    assert first.startswith("unity-") and backend_identity(preset("quick").backend) == "sim"
    import os
    import time

    build.write_bytes(b"v2, rebuilt")
    os.utime(build, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert backend_identity(plain.backend) != first


def test_resolved_makes_local_vlm_weights_absolute_and_keeps_hub_ids(tmp_path):
    """A run records `vlm.weights=negclip.pth` as an absolute path (it resumes from anywhere);
    a hub id, or a name that is no local path, stays as written."""
    (tmp_path / "negclip.pth").write_bytes(b"x")
    (tmp_path / "models" / "clip").mkdir(parents=True)
    for given, want in (("negclip.pth", str(tmp_path / "negclip.pth")),
                        ("models/clip", str(tmp_path / "models" / "clip")),
                        ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
                        (None, None)):
        cfg = preset("paper-clip").override({"vlm.weights": given})
        assert cfg.resolved(cwd=tmp_path).vlm.weights == want, given
