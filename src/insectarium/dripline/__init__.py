"""A dripline 3.0.0 runtime in pure Python, wire-compatible with dripline-cpp / dripline-python 5.

Modules, one concept each:

* :mod:`.constants`, :mod:`.return_codes` — protocol numbers and names;
* :mod:`.message`, :mod:`.chunking` — the message codec and chunk reassembly;
* :mod:`.config` — mesh block, authentication, config files;
* :mod:`.connection` — the robust AMQP connection;
* :mod:`.endpoint`, :mod:`.entity`, :mod:`.calibration` — request handling, values, calibration;
* :mod:`.service`, :mod:`.alert_consumer` — processes that host endpoints / consume alerts;
* :mod:`.client` — :class:`Interface` for scripts and services;
* :mod:`.factory` — building services from YAML (``dl-serve``).
"""

import importlib
from typing import TYPE_CHECKING, Any

# Imported lazily (PEP 562): the CLIs start faster when ``--help`` or a constant does not pull in
# aio-pika and pydantic (a service
# whose configuration is plainly valid never imports pydantic: see factory.py and quick_mesh.py).
_EXPORTS = {
    "AlertConsumer": "alert_consumer",
    "Authentication": "config_files",
    "BlockingInterface": "client",
    "ConfigError": "config_files",
    "Endpoint": "endpoint",
    "Entity": "entity",
    "Interface": "client",
    "MeshConfig": "config",
    "Message": "message",
    "MsgOp": "constants",
    "MsgType": "constants",
    "Reply": "endpoint",
    "ReplyError": "client",
    "ReturnCode": "return_codes",
    "Service": "service",
    "ThrowReply": "return_codes",
    "current_request": "endpoint",
    "register_return_code": "return_codes",
}

if TYPE_CHECKING:
    from .alert_consumer import AlertConsumer
    from .client import BlockingInterface, Interface, ReplyError
    from .config import Authentication, ConfigError, MeshConfig
    from .constants import MsgOp, MsgType
    from .endpoint import Endpoint, Reply, current_request
    from .entity import Entity
    from .message import Message
    from .return_codes import ReturnCode, ThrowReply, register_return_code
    from .service import Service


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AlertConsumer",
    "Authentication",
    "BlockingInterface",
    "ConfigError",
    "Endpoint",
    "Entity",
    "Interface",
    "MeshConfig",
    "Message",
    "MsgOp",
    "MsgType",
    "Reply",
    "ReplyError",
    "ReturnCode",
    "Service",
    "ThrowReply",
    "current_request",
    "register_return_code",
]
