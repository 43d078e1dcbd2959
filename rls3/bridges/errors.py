"""Exceptions of the Unity bridge: one base class, one subclass per way a bridge call can fail.

Every error leaves the Python side in a clean state (the gRPC port is freed, the player process is
stopped) so the caller can reconnect, and the loop's run stays resumable: the bridge raises, it
never hangs. Each message names what happened, the port and the operation that was in flight.
"""

from __future__ import annotations


class UnityBridgeError(RuntimeError):
    """Base class: anything that went wrong between `UnityBackend` and Unity."""


class UnityLaunchError(UnityBridgeError):
    """The player could not be started or never completed the ML-Agents handshake (after retries),
    the port is taken, or the connected build does not speak this bridge's protocol."""


class UnityTimeoutError(UnityBridgeError):
    """Unity did not answer an operation within the configured timeout."""


class UnityDisconnectedError(UnityBridgeError):
    """The Unity process exited or crashed, or it dropped the gRPC connection."""


class UnityProtocolError(UnityBridgeError):
    """Unity answered, but not in the documented format (`rls3.bridges.messages`): malformed or
    missing metadata, a wrong sequence number, an unexpected behaviour or observation spec."""


class MetadataError(UnityProtocolError):
    """The metadata side-channel message could not be parsed or fails validation."""


class UnityRemoteError(UnityBridgeError):
    """Unity received the operation but reported that it failed (the message carries its text).
    The connection stays usable."""
