"""The pydantic-free half of the configuration: files, errors, credentials and TLS.

Split from :mod:`.config` so that a one-shot command (``dl-agent get peaches``) can read its
files, credentials and certificates without importing pydantic (~70 ms of a 150 ms budget);
:mod:`.config` re-exports every name here, so ``from .config import ConfigError`` keeps working.
YAML is imported only when a YAML file is actually read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl

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
    # both parsers recurse once per level of nesting: a file nested thousands of levels deep
    # would end in a RecursionError traceback instead of a message naming the file
    too_deep = "nested too deeply (more levels of lists or mappings than can be read)"
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON at line {exc.lineno}: {exc.msg}", source=p) from None
        except RecursionError:
            raise ConfigError(too_deep, source=p) from None
    import yaml

    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(too_deep, source=p) from None
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


def suggest(name: str, candidates: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def merge_mesh_layers(
    *layers: Mapping[str, Any] | None, use_home_file: bool = True
) -> dict[str, Any]:
    """``~/.dripline_mesh.yaml`` then each layer (lowest first), hyphens read as underscores;
    a ``None`` value in a layer leaves the lower one in place.  Not validated here."""
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
    return merged


class TlsMesh(Protocol):
    """What :func:`tls_context` reads of a mesh (a ``MeshConfig`` or a ``QuickMesh``)."""

    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


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
def tls_context(mesh: TlsMesh, credentials: Credentials | None = None) -> ssl.SSLContext:
    """The client-side TLS context for ``mesh``: verify the broker, optionally present a cert.

    The broker's certificate is checked against ``tls_ca_file`` (or the system's CAs) and must
    name the broker host; TLS 1.2 is the minimum.  A client certificate comes from the
    credentials (auth file) or else from the mesh.  Unreadable files raise :class:`ConfigError`
    naming the key.
    """
    import ssl

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
