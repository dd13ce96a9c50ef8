"""Numbers and names fixed by the dripline 3.0.0 standard.

They live in one place because every other module (codec, service, CLI) must agree on them
byte for byte with dripline-cpp peers.
"""

from __future__ import annotations

import enum

DRIPLINE_VERSION = "3.0.0"
"""Protocol version we announce in ``sender_info.versions.dripline``."""

CONTENT_ENCODING = "application/json"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""Timestamp format of the ``timestamp`` header (UTC, microseconds, trailing ``Z``)."""

DEFAULT_MAX_PAYLOAD_SIZE = 10_000
DEFAULT_BROKER = "localhost"
DEFAULT_BROKER_PORT = 5672
DEFAULT_BROKER_TLS_PORT = 5671
DEFAULT_REQUESTS_EXCHANGE = "requests"
DEFAULT_ALERTS_EXCHANGE = "alerts"
DEFAULT_HEARTBEAT_ROUTING_KEY = "heartbeat"
DEFAULT_BROADCAST_KEY = "broadcast"
DEFAULT_LOG_ROUTING_KEY_PREFIX = "sensor_value"


class MsgType(enum.IntEnum):
    """``message_type`` header values."""

    REPLY = 2
    REQUEST = 3
    ALERT = 4


class MsgOp(enum.IntEnum):
    """``message_operation`` header values (dripline 3 keeps only set, get and cmd)."""

    SET = 0
    GET = 1
    CMD = 9

    @classmethod
    def from_name(cls, name: str) -> MsgOp:
        return cls[name.upper()]
