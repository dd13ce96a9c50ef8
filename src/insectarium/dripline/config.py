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

import difflib
import json
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import return_codes
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

MESH_FILE = "~/.dripline_mesh.yaml"
DEFAULT_AUTH_FILES = ("~/.dripline_authentications.yaml", "~/.dripline_authentications.json")


class ConfigError(Exception):
    """A configuration problem, phrased as ``<file>: <key>: <problem>``."""

    def __init__(
        self, problem: str, *, source: str | os.PathLike[str] | None = None, key: str = ""
    ):
        self.source = str(source) if source else ""
        self.key = key
        self.problem = problem
        parts = [p for p in (self.source, key) if p]
        super().__init__(": ".join([*parts, problem]))


# --------------------------------------------------------------------------- files
def load_file(path: str | os.PathLike[str]) -> Any:
    """Read a YAML or JSON file (by extension; YAML otherwise), with a clear error on failure."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=p) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=p) from None
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON at line {exc.lineno}: {exc.msg}", source=p) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", source=p) from None


_ENV_RE = re.compile(r"ENV\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute_env(value: Any, *, source: str = "", key: str = "") -> Any:
    """Replace ``ENV{VAR}`` in every string of a config tree; a missing variable is an error."""
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"environment variable {name} is not set", source=source, key=key)
            return os.environ[name]

        return _ENV_RE.sub(repl, value)
    if isinstance(value, Mapping):
        return {
            k: substitute_env(v, source=source, key=f"{key}.{k}" if key else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def underscore_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """dripline-python 4 used hyphenated keys (``broker-port``); accept them as underscores."""
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def format_validation_error(exc: ValidationError, *, source: str = "", prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(": ".join(p for p in (source, loc, msg) if p))
    return "\n".join(lines)


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    merged: dict[str, Any] = {}
    home = Path(MESH_FILE).expanduser()
    if use_home_file and home.is_file():
        data = load_file(home) or {}
        if not isinstance(data, Mapping):
            raise ConfigError("expected a mapping of mesh keys", source=home)
        merged.update(underscore_keys(data.get("dripline_mesh", data)))
    for layer in layers:
        if layer:
            merged.update({k: v for k, v in underscore_keys(layer).items() if v is not None})
    try:
        return MeshConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, prefix="dripline_mesh"), source=source
        ) from None


# --------------------------------------------------------------------------- authentication
@dataclass
class Credentials:
    """A user name and password, plus an optional TLS client certificate (PEM files)."""

    username: str
    password: str = field(repr=False)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass
class Authentication:
    """Credential groups (``dripline``, ``postgres`` …) as dripline 3's scarab auth holds them."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    source: str = ""

    @classmethod
    def load(
        cls,
        auth_file: str | os.PathLike[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        password_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Authentication:
        env = os.environ if environ is None else environ
        groups: dict[str, dict[str, Any]] = {}
        source = ""
        path = Path(auth_file).expanduser() if auth_file else None
        if path is None:
            for candidate in DEFAULT_AUTH_FILES:
                if Path(candidate).expanduser().is_file():
                    path = Path(candidate).expanduser()
                    break
        if path is not None:
            data = load_file(path) or {}
            if not isinstance(data, Mapping):
                raise ConfigError("expected a mapping of groups (e.g. 'dripline:')", source=path)
            source = str(path)
            for name, group in data.items():
                if not isinstance(group, Mapping):
                    raise ConfigError(
                        "expected a mapping of username/password", source=path, key=name
                    )
                groups[str(name)] = underscore_keys(group)
            # dripline-python 4 files use group 'amqp'; dragonfly 1 used 'postgresql'
            if "dripline" not in groups and "amqp" in groups:
                groups["dripline"] = groups["amqp"]
            if "postgres" not in groups and "postgresql" in groups:
                groups["postgres"] = groups["postgresql"]
        dl = groups.setdefault("dripline", {})
        pg = groups.setdefault("postgres", {})
        for group, prefix in ((dl, "DRIPLINE"), (pg, "POSTGRES")):
            if env.get(f"{prefix}_USER"):
                group["username"] = env[f"{prefix}_USER"]
            if env.get(f"{prefix}_PASSWORD"):
                group["password"] = env[f"{prefix}_PASSWORD"]
        if password_file:
            pf = Path(password_file).expanduser()
            try:
                dl["password"] = pf.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read password file: {exc.strerror}", source=pf) from None
        if username:
            dl["username"] = username
        if password:
            dl["password"] = password
        return cls(groups=groups, source=source)

    def get(
        self,
        group: str,
        default_user: str = "guest",
        default_password: str = "guest",  # noqa: S107 - dripline's documented default
    ) -> Credentials:
        g = self.groups.get(group, {})
        return Credentials(
            username=str(g.get("username") or default_user),
            password=str(g.get("password") or default_password),
            tls_cert_file=str(g["tls_cert_file"]) if g.get("tls_cert_file") else None,
            tls_key_file=str(g["tls_key_file"]) if g.get("tls_key_file") else None,
        )

    @property
    def dripline(self) -> Credentials:
        return self.get("dripline")

    @property
    def postgres(self) -> Credentials:
        return self.get("postgres", "postgres", "postgres")

    def __repr__(self) -> str:
        return f"Authentication(groups={sorted(self.groups)}, source={self.source!r})"


# --------------------------------------------------------------------------- TLS
def tls_context(mesh: MeshConfig, credentials: Credentials | None = None) -> ssl.SSLContext:
    """The client-side TLS context for ``mesh``: verify the broker, optionally present a cert.

    The broker's certificate is checked against ``tls_ca_file`` (or the system's CAs) and must
    name the broker host; TLS 1.2 is the minimum.  A client certificate comes from the
    credentials (auth file) or else from the mesh.  Unreadable files raise :class:`ConfigError`
    naming the key.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=mesh.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load CA certificates: {exc}",
            source=mesh.tls_ca_file or "",
            key="dripline_mesh.tls_ca_file",
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = (credentials.tls_cert_file if credentials else None) or mesh.tls_cert_file
    key = (credentials.tls_key_file if credentials else None) or mesh.tls_key_file
    if credentials and credentials.tls_cert_file and not credentials.tls_key_file:
        key = None
    if cert:
        try:
            ctx.load_cert_chain(str(Path(cert).expanduser()), key and str(Path(key).expanduser()))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the client certificate/key: {exc}",
                source=cert,
                key="tls_cert_file",
            ) from None
    return ctx
