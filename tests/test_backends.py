"""Backends as specs (`rls3.backends`): the registry, a new backend as one spec (its flags
included), the built-in specs, and the import layering they allow (the schema imports nothing above
it; the CLI loads no mlagents_envs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rls3.config
from rls3 import cli
from rls3.backends import (BackendConfig, BackendSpec, CliOption, available_backends,
                           backend_identity, get_backend_spec, make_backend, register_backend,
                           unregister_backend)
from rls3.config import ConfigError, preset

ROOT = Path(__file__).resolve().parents[1]


def _loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (from this checkout)."""
    code += "\nimport sys\nprint('\\nLOADED', *sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.rsplit("\nLOADED", 1)[1].split())


def test_a_new_backend_is_one_spec():
    made = []

    def factory(cfg, split):
        made.append((cfg.options["port"], split))
        return "a backend"

    register_backend(BackendSpec("fake", factory, cli_options=(
        CliOption("port", "port", "the port it listens on", int, "N"),)))
    try:
        assert "fake" in available_backends()
        c = preset("quick").override(["backend.name=fake", "backend.options={port: 5004}"])
        assert make_backend(c.backend, "test") == "a backend" and made == [(5004, "test")]
        with pytest.raises(ValueError, match="split"):
            make_backend(c.backend, "val")
        assert backend_identity(c.backend) == "fake" and c.backend_config("logs") == c.backend
        with pytest.raises(ValueError, match="already registered"):
            register_backend(get_backend_spec("fake"))
        # its option is a flag `--fake-port` of `rls3 run`, for `--backend fake` only
        args = cli.build_parser().parse_args(["run", "--backend", "fake", "--fake-port", "7"])
        assert cli.resolve_config(args).backend.options == {"port": 7}
        with pytest.raises(ConfigError, match=r"--fake-\* options need --backend fake"):
            cli.resolve_config(cli.build_parser().parse_args(["run", "--fake-port", "7"]))
    finally:
        unregister_backend("fake")
    with pytest.raises(ConfigError, match="backend.name='fake'"):
        c.override({"seed": 1})


def test_the_test_peer_as_a_backend_of_its_own():
    """The test peer is a build of the unity backend (`--unity-build testpeer[:SCENES[:toy]]`,
    parsed by `rls3.bridges.spec` alone); as a backend of its own it is one spec."""
    from rls3.bridges import connect_test_peer

    register_backend(BackendSpec("peer", lambda cfg, split: connect_test_peer(
        cfg.train_scenes if split == "train" else cfg.test_scenes, backend="toy", image_size=16,
        timeout_s=20, objects=cfg.objects)))
    try:
        with make_backend(BackendConfig(name="peer", train_scenes=("toy_room",)), "train") as b:
            assert b.scene_names == ("toy_room",) and b.load_scene(0, seed=1).scene_index == 0
    finally:
        unregister_backend("peer")


def test_the_built_in_specs():
    sim, unity = get_backend_spec("sim"), get_backend_spec("unity")
    assert available_backends() == ("sim", "unity")
    assert sim.check is not None and sim.image_limit is not None and sim.cli_options == ()
    assert (unity.image_option, unity.log_option, unity.seed_option) == (
        "image_size", "log_folder", "seed")
    # scene workers: a Unity player each, with its own worker id; the sim's settings unchanged
    cfg = BackendConfig(name="unity", options={"build": "x", "worker_id": 2})
    assert unity.config_for_worker(cfg, 0).options == {"build": "x", "worker_id": 3}
    assert unity.config_for_worker(cfg, 1).options["worker_id"] == 4
    assert cfg.options["worker_id"] == 2
    assert sim.config_for_worker(BackendConfig(), 3) == BackendConfig()
    flags = {f"--unity-{o.flag}": o.key for o in unity.cli_options}
    assert flags == {"--unity-build": "build", "--unity-editor": "editor",
                     "--unity-worker-id": "worker_id", "--unity-base-port": "base_port",
                     "--unity-timeout": "timeout_s", "--unity-no-graphics": "no_graphics"}
    args = cli.build_parser().parse_args(["generate", "--backend", "unity", "--unity-editor",
                                          "--unity-timeout", "9", "--unity-worker-id", "0"])
    assert cli.resolve_config(args).backend.options == {"editor": True, "worker_id": 0,
                                                        "timeout_s": 9.0}


def test_the_bridge_ports_are_ml_agents_defaults():
    import rls3.bridges.unity  # noqa: F401  (mlagents_envs, imported quietly)
    from mlagents_envs.environment import UnityEnvironment

    from rls3.bridges.spec import EDITOR_PORT, PLAYER_BASE_PORT

    assert (EDITOR_PORT, PLAYER_BASE_PORT) == (UnityEnvironment.DEFAULT_EDITOR_PORT,
                                               UnityEnvironment.BASE_ENVIRONMENT_PORT)


def test_config_imports_nothing_above_it():
    """The schema's project imports are low modules none of which imports it back."""
    tree = ast.parse(Path(rls3.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                if n.module and n.module.split(".")[0] == "rls3"}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                 if a.name.split(".")[0] == "rls3"}
    assert imported == {"rls3.backends", "rls3.coerce", "rls3.configerror", "rls3.envconfig",
                        "rls3.seeding", "rls3.vlm"}
    loaded = _loaded_modules("import " + ", ".join(sorted(imported)) + "\n"
                             "rls3.backends.backend_specs()   # the built-in specs, too")
    assert "rls3.config" not in loaded
    # a config (every section checked) loads no engine: no env, simulator or bridge
    loaded = _loaded_modules("from rls3.config import Config, preset\n"
                             "preset('quick').override({'backend.name': 'unity'}).backend_config()")
    heavy = {"rls3.env", "rls3.sim.backend", "rls3.bridges.unity", "mlagents_envs", "pybullet",
             "pyrender"}
    assert not heavy & loaded


def test_cli_help_loads_no_mlagents():
    loaded = _loaded_modules(
        "import rls3.cli\n"
        "for argv in ([], ['--help'], ['run', '--help'], ['generate', '--help']):\n"
        "    try:\n"
        "        rls3.cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n")
    assert not {m for m in loaded if m.split(".")[0] in ("mlagents_envs", "pybullet", "pyrender")}
