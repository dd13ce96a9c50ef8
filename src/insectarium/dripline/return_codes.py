"""Dripline return codes and the exception that carries one back to the requester.

The table mirrors dripline-cpp's ``return_codes.cc`` so that a code we send is named the same way
by a C++ peer.  Codes of 1000 and above are application defined; they can be registered at run
time (``register_return_code``) or from the mesh configuration (``dripline_mesh.return_codes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReturnCode:
    value: int
    name: str
    description: str

    @property
    def is_error(self) -> bool:
        return self.value >= 100

    @property
    def exit_status(self) -> int:
        """Process exit status of a CLI that received this code (dl-agent: ``code // 100``)."""
        return self.value // 100


_BUILTIN: tuple[tuple[int, str, str], ...] = (
    (0, "success", "Success"),
    (1, "warning_no_action_taken", "No Action Taken"),
    (2, "warning_deprecated_feature", "Deprecated Feature"),
    (3, "warning_dry_run", "Dry Run"),
    (4, "warning_offline", "Offline"),
    (5, "warning_sub_service", "Sub-Service Warning"),
    (100, "amqp_error", "Generic AMQP Error"),
    (101, "amqp_error_broker_connection", "AMQP Connection Error"),
    (102, "amqp_error_routingkey_notfound", "Invalid AMQP Routing Key"),
    (200, "resource_error", "Generic Resource Error"),
    (201, "resource_error_connection", "Resource Connection Error"),
    (202, "resource_error_no_response", "No Response Error"),
    (203, "resource_error_sub_service", "Sub-Service Error"),
    (300, "service_error", "Generic Service Error"),
    (301, "service_error_no_encoding", "Invalid Message Encoding"),
    (302, "service_error_decoding_fail", "Decoding Failed"),
    (303, "service_error_bad_payload", "Invalid Payload"),
    (304, "service_error_invalid_value", "Invalid Value"),
    (305, "service_error_timeout", "Timeout Handling Message"),
    (306, "service_error_invalid_method", "Invalid Command"),
    (307, "service_error_access_denied", "Access Denied"),
    (308, "service_error_invalid_key", "Invalid Lockout Key"),
    (310, "service_error_invalid_specifier", "Invalid Specifier"),
    (400, "client_error", "Generic Client Error"),
    (401, "client_error_invalid_request", "Invalid Request"),
    (402, "client_error_handling_reply", "Error Handling Reply"),
    (403, "client_error_unable_to_send", "Unable to Send"),
    (404, "client_error_timeout", "Client Timeout"),
    (999, "unhandled_exception", "Unhandled Exception"),
)

# Application codes used by the Project 8 DAQ and database services (dripline 2 ``exceptions.py``).
_LAB_CODES: tuple[tuple[int, str, str], ...] = (
    (1100, "daq_error", "Generic DAQ Error"),
    (1101, "daq_not_enabled", "DAQ Not Enabled"),
    (1102, "daq_running", "DAQ Is Running"),
    (1200, "database_error", "Database Error"),
)

_by_value: dict[int, ReturnCode] = {}
_by_name: dict[str, ReturnCode] = {}


def register_return_code(value: int, name: str, description: str) -> ReturnCode:
    """Register an application code (>= 1000), or re-register an identical one.

    Raises ``ValueError`` when the number or the name is already taken by a different code, so two
    plugins cannot silently disagree on what a number means.
    """
    if value < 1000 and value not in _by_value:
        raise ValueError(f"return code {value} is reserved by the standard (use >= 1000)")
    code = ReturnCode(int(value), str(name), str(description))
    for existing in (_by_value.get(code.value), _by_name.get(code.name)):
        if existing is not None and existing != code:
            raise ValueError(f"return code {code} conflicts with registered {existing}")
    _by_value[code.value] = code
    _by_name[code.name] = code
    return code


for _v, _n, _d in _BUILTIN:
    _by_value[_v] = _by_name[_n] = ReturnCode(_v, _n, _d)
for _v, _n, _d in _LAB_CODES:
    register_return_code(_v, _n, _d)


def lookup(code: int | str) -> ReturnCode:
    """Find a code by number or name; unknown numbers get a synthetic entry, unknown names 300."""
    if isinstance(code, ReturnCode):
        return code
    if isinstance(code, int):
        return _by_value.get(code) or ReturnCode(code, f"code_{code}", f"Return code {code}")
    return _by_name.get(code) or _by_value[300]


def all_return_codes() -> list[ReturnCode]:
    return sorted(_by_value.values(), key=lambda c: c.value)


class ThrowReply(Exception):
    """Raise inside a handler to answer the request with a given return code.

    ``ThrowReply('service_error_invalid_value', 'temperature must be positive')`` becomes a reply
    with code 304 and that message; ``payload`` (any JSON value) goes into the reply body.
    """

    def __init__(self, return_code: int | str | ReturnCode, message: str = "", payload: Any = None):
        self.return_code = lookup(return_code)
        self.message = message or self.return_code.description
        self.payload = payload
        super().__init__(f"{self.return_code.value} {self.return_code.name}: {self.message}")
