"""The mesh block read without pydantic, for commands that must start in a blink.

:class:`~.config.MeshConfig` (pydantic) stays the one definition of what a mesh block may hold
and of how a bad one is reported.  :func:`load_mesh_quick` only takes the common, plainly valid
case on a fast path — known keys, values already of the right type and in range, TLS files that
exist — and hands anything else (a URL as broker, strings to coerce, ``return_codes``, any error)
to :func:`~.config.load_mesh`, which either accepts it (same result) or raises the usual
:class:`~.config_files.ConfigError` naming the file and key.  So a value is never accepted here
that the full validator would refuse; ``tests/test_oneshot.py`` checks both agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .constants import (
    DEFAULT_ALERTS_EXCHANGE,
    DEFAULT_BROKER,
    DEFAULT_BROKER_PORT,
    DEFAULT_BROKER_TLS_PORT,
    DEFAULT_HEARTBEAT_ROUTING_KEY,
    DEFAULT_MAX_PAYLOAD_SIZE,
    DEFAULT_REQUESTS_EXCHANGE,
)
from .limits import DEFAULT_MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from .config import MeshConfig


@dataclass(frozen=True)
class QuickMesh:
    """The fields of :class:`~.config.MeshConfig` a client uses, same names and defaults."""

    broker: str = DEFAULT_BROKER
    broker_port: int = DEFAULT_BROKER_PORT
    vhost: str = "/"
    requests_exchange: str = DEFAULT_REQUESTS_EXCHANGE
    alerts_exchange: str = DEFAULT_ALERTS_EXCHANGE
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    heartbeat_routing_key: str = DEFAULT_HEARTBEAT_ROUTING_KEY
    max_connection_attempts: int = 10
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def url_for_humans(self) -> str:
        """Where the broker is, without credentials (as ``MeshConfig.url_for_humans``)."""
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.broker}:{self.broker_port}{self.vhost}"

    def register_return_codes(self, source: str = "") -> None:
        """Nothing to register: a mesh with ``return_codes`` is never quick (see
        :func:`quick_mesh`), so it is a ``MeshConfig`` and registers them itself."""


_TEXT = ("broker", "vhost", "requests_exchange", "alerts_exchange", "heartbeat_routing_key")
#: integer keys and the smallest (and largest) value MeshConfig accepts
_INTS = {
    "broker_port": (1, 65535),
    "max_payload_size": (1, None),
    "max_message_size": (1, None),
    "max_connection_attempts": (0, None),
}
_FILES = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def quick_mesh(merged: Mapping[str, Any]) -> QuickMesh | None:
    """``merged`` (layers already merged) as a :class:`QuickMesh`, or ``None`` when it is not
    plainly valid and the full validator must decide."""
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _TEXT:
            if type(value) is not str:
                return None
            values[key] = value
        elif key in _INTS:
            low, high = _INTS[key]
            if type(value) is not int or value < low or (high is not None and value > high):
                return None
            values[key] = value
        elif key == "tls":
            if type(value) is not bool:
                return None
            values[key] = value
        elif key in _FILES:
            if value in (None, ""):
                continue
            if type(value) is not str:
                return None
            path = Path(value).expanduser()
            if not path.is_file():
                return None
            values[key] = str(path)
        else:  # unknown keys, return_codes: the full validator's business
            return None
    if "://" in values.get("broker", ""):
        return None
    if values.get("tls_key_file") and not values.get("tls_cert_file"):
        return None
    if values.get("tls") and "broker_port" not in values:
        values["broker_port"] = DEFAULT_BROKER_TLS_PORT
    return QuickMesh(**values)


def load_mesh_quick(
    *layers: Mapping[str, Any] | None, source: str = "", use_home_file: bool = True
) -> QuickMesh | MeshConfig:
    """:func:`~.config.load_mesh` without importing pydantic when the mesh is plainly valid."""
    from .config_files import merge_mesh_layers

    merged = merge_mesh_layers(*layers, use_home_file=use_home_file)
    fast = quick_mesh(merged)
    if fast is not None:
        return fast
    from .config import load_mesh

    return load_mesh(*layers, source=source, use_home_file=use_home_file)


def as_mesh(
    dripline_mesh: Mapping[str, Any] | QuickMesh | MeshConfig | None,
) -> QuickMesh | MeshConfig:
    """A mesh given to a service or client: a validated mesh as it is, a mapping (or ``None``,
    the defaults and ``~/.dripline_mesh.yaml``) read by :func:`load_mesh_quick`."""
    if dripline_mesh is None or isinstance(dripline_mesh, Mapping):
        return load_mesh_quick(dripline_mesh)
    return dripline_mesh
