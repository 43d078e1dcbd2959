"""The Unity ML-Agents backend (Python half of the bridge).

`make_unity_backend` is the one entry point for the CLI and the loop (``--backend unity``);
`connect_test_peer` gives a connected backend over the test peer (no Unity needed). The message
format is documented in `rls3.bridges.messages`; the C# half lives in ``bridges/unity/``.

Importing this package is light: its errors (`rls3.bridges.errors`) and its backend spec
(`rls3.bridges.spec`: ports, options, the test peer's build syntax) need nothing else, and
``mlagents-envs`` (installed by setup.sh with ``--no-deps``) loads with the first name below that
needs it (`UnityBackend`, `TestPeer`, `make_unity_backend`, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rls3.bridges.errors import (
    MetadataError,
    UnityBridgeError,
    UnityDisconnectedError,
    UnityLaunchError,
    UnityProtocolError,
    UnityRemoteError,
    UnityTimeoutError,
)
from rls3.bridges.spec import EDITOR_PORT, PLAYER_BASE_PORT, UNITY_OPTIONS

if TYPE_CHECKING:
    from rls3.bridges.connect import connect_test_peer, make_unity_backend, unity_backend_factory
    from rls3.bridges.testpeer import PeerFaults, TestPeer
    from rls3.bridges.unity import UnityBackend, free_port

__all__ = [
    "EDITOR_PORT", "PLAYER_BASE_PORT", "MetadataError", "PeerFaults", "TestPeer", "UnityBackend",
    "UnityBridgeError", "UnityDisconnectedError", "UnityLaunchError", "UnityProtocolError",
    "UnityRemoteError", "UnityTimeoutError", "UNITY_OPTIONS", "connect_test_peer", "free_port",
    "make_unity_backend", "unity_backend_factory",
]

#: names that need mlagents_envs -> the module holding them (imported on first use)
_LAZY = {
    "PeerFaults": "rls3.bridges.testpeer", "TestPeer": "rls3.bridges.testpeer",
    "UnityBackend": "rls3.bridges.unity", "free_port": "rls3.bridges.unity",
    "connect_test_peer": "rls3.bridges.connect", "make_unity_backend": "rls3.bridges.connect",
    "unity_backend_factory": "rls3.bridges.connect",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
