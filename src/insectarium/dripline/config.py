"""Configuration: the mesh block, authentication, config files and their errors.

Precedence follows dripline-python 5 / scarab so that existing habits carry over:
built-in defaults < ``~/.dripline_mesh.yaml`` < the ``dripline_mesh`` block of a config file <
command-line options; for credentials: ``guest``/``guest`` < auth file < ``DRIPLINE_USER`` /
``DRIPLINE_PASSWORD`` < ``--password-file`` < ``-u``/``--password``.

Every problem is reported as a :class:`ConfigError` that names the file, the key and what is
wrong, and never echoes a password.

TLS (``amqps``) is an insectarium addition (dripline-cpp has none), spelled in dripline's style:
mesh keys ``tls``, ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file`` (the client certificate
may instead sit with the credentials, in the auth file's ``dripline`` group), the options
``--tls``, ``--tls-ca-file``, ``--tls-cert-file``, ``--tls-key-file``, or a broker given as
``amqps://host[:port]``.  With TLS on, the broker's certificate is always verified (against
``tls_ca_file``, else the system's CAs) and must name the broker host.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import return_codes
from .config_files import (
    DEFAULT_AUTH_FILES,
    MESH_FILE,
    Authentication,
    ConfigError,
    Credentials,
    load_file,
    merge_mesh_layers,
    substitute_env,
    suggest,
    tls_context,
    underscore_keys,
)
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

__all__ = [
    "DEFAULT_AUTH_FILES",
    "MESH_FILE",
    "Authentication",
    "ConfigError",
    "Credentials",
    "MeshConfig",
    "ReturnCodeSpec",
    "format_validation_error",
    "load_file",
    "load_mesh",
    "merge_mesh_layers",
    "substitute_env",
    "suggest",
    "tls_context",
    "underscore_keys",
]


def format_validation_error(exc: ValidationError, *, source: str = "", prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(": ".join(p for p in (source, loc, msg) if p))
    return "\n".join(lines)


# --------------------------------------------------------------------------- mesh
class ReturnCodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    value: int = Field(ge=1000)
    description: str = ""


class MeshConfig(BaseModel):
    """The ``dripline_mesh`` block: where the broker is and how messages are routed."""

    model_config = ConfigDict(extra="forbid")

    broker: str = DEFAULT_BROKER
    broker_port: int = Field(DEFAULT_BROKER_PORT, ge=1, le=65535)
    vhost: str = "/"
    requests_exchange: str = DEFAULT_REQUESTS_EXCHANGE
    alerts_exchange: str = DEFAULT_ALERTS_EXCHANGE
    max_payload_size: int = Field(DEFAULT_MAX_PAYLOAD_SIZE, gt=0)
    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    heartbeat_routing_key: str = DEFAULT_HEARTBEAT_ROUTING_KEY
    max_connection_attempts: int = Field(10, ge=0)
    return_codes: list[ReturnCodeSpec] | str | None = None
    # TLS (amqps): off unless asked for; the port then defaults to 5671
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _broker_url(cls, data: Any) -> Any:
        """``amqp://host[:port]`` / ``amqps://host[:port]`` set the host, port and TLS."""
        if not isinstance(data, Mapping) or "://" not in str(data.get("broker") or ""):
            return data
        from urllib.parse import urlsplit

        url = urlsplit(str(data["broker"]))
        if url.scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"broker: unknown scheme {url.scheme!r} (give a host name, or amqp:// / amqps://)"
            )
        if url.username or url.password:
            raise ValueError("broker: put credentials in the auth file, not in the broker URL")
        if url.path not in ("", "/") or url.query:
            raise ValueError("broker: give amqp[s]://host[:port] only (use vhost for the vhost)")
        try:
            port = url.port
        except ValueError as exc:
            raise ValueError(f"broker: {exc}") from None
        out = dict(data)
        out["broker"] = url.hostname or DEFAULT_BROKER
        out["tls"] = url.scheme == "amqps"
        if port is not None:
            out["broker_port"] = port
        return out

    @field_validator("broker")
    @classmethod
    def _no_scheme(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("give a host name, not a URL (use broker_port for the port)")
        return v

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _readable_file(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"file not found: {path}")
        return str(path)

    @model_validator(mode="after")
    def _tls_defaults(self) -> MeshConfig:
        if self.tls and "broker_port" not in self.model_fields_set:
            self.broker_port = DEFAULT_BROKER_TLS_PORT
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file is given without tls_cert_file")
        return self

    @property
    def url_for_humans(self) -> str:
        """Where the broker is, without credentials (for messages)."""
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.broker}:{self.broker_port}{self.vhost}"

    def register_return_codes(self, source: str = "") -> None:
        specs = self.return_codes
        if isinstance(specs, str):
            data = load_file(specs)
            try:
                specs = [ReturnCodeSpec.model_validate(d) for d in data or []]
            except (ValidationError, TypeError) as exc:
                raise ConfigError(f"bad return code list: {exc}", source=specs) from None
        for spec in specs or []:
            try:
                return_codes.register_return_code(spec.value, spec.name, spec.description)
            except ValueError as exc:
                raise ConfigError(
                    str(exc), source=source, key="dripline_mesh.return_codes"
                ) from None


def load_mesh(
    *layers: Mapping[str, Any] | None, source: str = "", use_home_file: bool = True
) -> MeshConfig:
    """Merge mesh layers (lowest first) over the defaults and ``~/.dripline_mesh.yaml``."""
    merged = merge_mesh_layers(*layers, use_home_file=use_home_file)
    try:
        return MeshConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, prefix="dripline_mesh"), source=source
        ) from None
