"""Preflight: what is refused before a run directory exists (`rls3.preflight.check_runnable`)."""

from __future__ import annotations

import socket

import pytest

from rls3 import preflight
from rls3.config import ConfigError, preset
from rls3.env import relative_size
from rls3.preflight import check_runnable, replay_buffer_bytes


def test_workers_the_backend_cannot_serve_are_named_before_anything_starts():
    """Issue 14: N Unity workers need a player build and N free ports (base_port + worker_id +
    1..N); the Editor serves one. Named by `check_runnable`, before a run directory exists."""
    editor = preset("quick").override({"backend.name": "unity", "env.workers": 2,
                                       "backend.options": {"editor": True}})
    with pytest.raises(ConfigError, match="env.workers=2: the Unity Editor serves one"):
        check_runnable(editor)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cfg = preset("quick").override({"backend.name": "unity", "env.workers": 3,
                                        "backend.options": {"build": "/nonexistent/player",
                                                            "base_port": busy - 2}})
        with pytest.raises(ConfigError) as e:
            check_runnable(cfg)
    msg = str(e.value)
    assert "env.workers=3" in msg and f"[{busy}] are in use" in msg
    assert f"{busy - 1}-{busy + 1}" in msg and "worker ids 1-3" in msg
    # the main process keeps worker id 0; one worker needs no extra port
    check_runnable(cfg.override({"env.workers": 1}))


def test_a_replay_buffer_larger_than_memory_is_refused(monkeypatch):
    cfg = preset("quick")
    need = replay_buffer_bytes(cfg)
    assert need == cfg.agent.buffer_size * (2 * relative_size(9, 5) + 3 + 3) * 4
    monkeypatch.setattr(preflight, "available_memory", lambda: need)
    with pytest.raises(ConfigError, match=r"agent.buffer_size=50000: SAC's replay buffer"):
        preflight.check_memory(cfg)
    preflight.check_memory(cfg.override({"agent.name": "random"}))      # keeps no buffer
    monkeypatch.setattr(preflight, "available_memory", lambda: None)     # unknown: not refused
    preflight.check_memory(cfg)


def test_unknown_vlm_options_are_named():
    with pytest.raises(ConfigError, match=r"invalid vlm.options=\{'colour': 1\}"):
        preflight.check_vlm(preset("quick").override({"vlm.options": {"colour": 1}}))
