"""The metadata side channel (Python end) and ML-Agents' side-channel framing.

`MetadataChannel` collects the raw JSON payloads Unity sends on `messages.CHANNEL_ID`; it never
parses inside ML-Agents' callback, so a malformed message surfaces as one clear `MetadataError`
from `UnityBackend` instead of an exception half-way through `UnityEnvironment.step`.
`pack`/`unpack` implement the framing (channel UUID in .NET byte order, int32 length, payload) for
the test peer, which plays Unity's part.
"""

from __future__ import annotations

import struct
import uuid
import warnings
from collections.abc import Iterable

with warnings.catch_warnings():  # mlagents_envs' generated protobuf code and its distutils import
    warnings.simplefilter("ignore", DeprecationWarning)
    from mlagents_envs.side_channel import IncomingMessage, OutgoingMessage, SideChannel

from rls3.bridges.errors import UnityProtocolError
from rls3.bridges.messages import CHANNEL_ID


class MetadataChannel(SideChannel):
    """Receives the bridge's JSON metadata as raw bytes (``read_string`` is ASCII-only)."""

    def __init__(self, channel_id: uuid.UUID = CHANNEL_ID) -> None:
        super().__init__(channel_id)
        self._received: list[bytes] = []

    def on_message_received(self, msg: IncomingMessage) -> None:
        self._received.append(bytes(msg.get_raw_bytes()))

    def take(self) -> list[bytes]:
        """The payloads received since the last call, oldest first."""
        out, self._received = self._received, []
        return out

    def send_json(self, payload: bytes) -> None:
        """Queue raw bytes for Unity (sent with the next step; unused by format version 1)."""
        msg = OutgoingMessage()
        msg.set_raw_bytes(bytearray(payload))
        self.queue_message_to_send(msg)


def pack(messages: Iterable[tuple[uuid.UUID, bytes]]) -> bytes:
    """Frame side-channel messages the way Unity (and `SideChannelManager`) does."""
    out = bytearray()
    for channel, payload in messages:
        out += channel.bytes_le + struct.pack("<i", len(payload)) + payload
    return bytes(out)


def unpack(data: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """Split framed side-channel data into (channel, payload) pairs."""
    out, offset = [], 0
    while offset < len(data):
        if offset + 20 > len(data):
            raise UnityProtocolError(f"side-channel data truncated at byte {offset} of {len(data)}")
        channel = uuid.UUID(bytes_le=bytes(data[offset:offset + 16]))
        (n,) = struct.unpack_from("<i", data, offset + 16)
        offset += 20
        if n < 0 or offset + n > len(data):
            raise UnityProtocolError(f"side-channel message on {channel} claims {n} bytes, "
                                     f"{len(data) - offset} left")
        out.append((channel, bytes(data[offset:offset + n])))
        offset += n
    return out
