"""The console's configuration file (YAML, written by the ``lab_console`` role; 0600).

One file holds everything the console needs: where it listens (and its TLS pair), who may log in,
the read-only database account, and the supervisord of every lab host.  Every key is checked by
pydantic, so a typo fails at start with the file, the key and the problem (``--check`` does only
that), and no password is ever shown in an error.

.. code-block:: yaml

    listen: {host: 0.0.0.0, port: 8080}
    tls: {cert: /etc/ssl/lab/console.pem, key: /etc/ssl/lab/console.key}   # optional
    secret_key: <32+ random characters: signs the session cookie>
    users:
      - {name: lab, password: ..., role: operator}     # may start/stop programs
      - {name: shifter, password: ..., role: viewer}   # may look
    database: {host: sc-db, port: 5432, dbname: sc_db, user: sc_console, password: ...,
               sslmode: verify-full, sslrootcert: /etc/insectarium/tls/ca.pem}   # TLS: optional
    supervisors:
      - {host: glenlivet, url: http://127.0.0.1:9001/RPC2, username: lab, password: ...}
    data_directory: /var/lib/insectarium/data
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ..dripline.config import ConfigError, format_validation_error, load_file

CONFIG_ENV = "INSECTARIUM_CONSOLE_CONFIG"
DEFAULT_CONFIG = "/etc/insectarium/console.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)


class TLS(_Strict):
    """A certificate/key pair (PEM files): the console then serves HTTPS only."""

    cert: Path
    key: Path


class User(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: SecretStr
    #: viewer: every page; operator: also start/stop/restart programs
    role: Literal["viewer", "operator"] = "viewer"

    @field_validator("password")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 8:
            raise ValueError("must have at least 8 characters")
        return v


class Database(_Strict):
    host: str = "localhost"
    port: int = Field(5432, ge=1, le=65535)
    dbname: str = "sc_db"
    user: str
    password: SecretStr
    connect_timeout_s: float = Field(5.0, gt=0)
    #: a statement running longer is cancelled (a console page must never hog the database)
    statement_timeout_s: float = Field(20.0, gt=0)
    pool_size: int = Field(4, ge=1, le=32)
    #: libpq's sslmode; the lab's TLS switch sets ``verify-full`` (the server then accepts
    #: ``hostssl`` connections only, and the console checks the server's certificate and name)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    #: the CA that signed the database server's certificate (for ``verify-ca``/``verify-full``)
    sslrootcert: str | None = None


class Supervisor(_Strict):
    """One supervisord ``[inet_http_server]`` (XML-RPC at ``…/RPC2``)."""

    host: str = Field(min_length=1, description="name shown in the console")
    url: str = Field(pattern=r"^https?://")
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(5.0, gt=0)


class ConsoleConfig(_Strict):
    listen: Listen = Listen()
    tls: TLS | None = None
    secret_key: SecretStr
    users: list[User] = Field(min_length=1)
    database: Database
    supervisors: list[Supervisor] = Field(default_factory=list)
    data_directory: Path = Path("/var/lib/insectarium/data")
    #: browsers poll the services page this often (state changes show within that time)
    refresh_s: float = Field(2.0, ge=0.5, le=60)
    #: at most this many points per endpoint in a plot (longer windows are aggregated)
    max_points: int = Field(1200, ge=50, le=20000)
    #: a session cookie older than this asks for the password again
    session_max_age_s: int = Field(12 * 3600, ge=60)
    #: behind a TLS-terminating proxy: mark the session cookie Secure even without ``tls``
    secure_cookies: bool = False
    title: str = "insectarium lab console"

    @field_validator("secret_key")
    @classmethod
    def _key_long_enough(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("must have at least 16 characters")
        return v

    @field_validator("users")
    @classmethod
    def _unique_users(cls, v: list[User]) -> list[User]:
        _no_duplicates([u.name for u in v], "user names")
        return v

    @field_validator("supervisors")
    @classmethod
    def _unique_hosts(cls, v: list[Supervisor]) -> list[Supervisor]:
        _no_duplicates([s.host for s in v], "supervisor host names")
        return v


def _no_duplicates(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique: {', '.join(dupes)}")


def load_config(path: str | os.PathLike[str] | None = None) -> ConsoleConfig:
    """Read and check the configuration; a problem raises :class:`ConfigError`."""
    source = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    data = load_file(source)
    if not isinstance(data, dict):
        raise ConfigError("must be a mapping of keys to values", source=source)
    try:
        config = ConsoleConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(source))) from None
    if config.tls is not None:
        for which in ("cert", "key"):
            file = getattr(config.tls, which)
            if not Path(file).is_file():
                raise ConfigError(
                    f"{file} is not a readable file", source=source, key=f"tls.{which}"
                )
    rootcert = config.database.sslrootcert
    if rootcert and not Path(rootcert).is_file():
        raise ConfigError(
            f"{rootcert} is not a readable file", source=source, key="database.sslrootcert"
        )
    return config
