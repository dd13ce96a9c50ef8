"""TLS (amqps) end to end on a private broker whose plain listener is off, as the lab runs it.

Certificates come from a throw-away CA (trustme); the broker verifies client certificates when a
client presents one.  Every refusal is tried for real: wrong CA, wrong host name, plain AMQP on
the TLS port, a client certificate from another CA.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from insectarium.dripline import Authentication, ConfigError, Interface, Service
from insectarium.dripline.config import MeshConfig, load_mesh, tls_context
from insectarium.dripline.connection import BrokerUnavailable, Connection
from insectarium.services.kv_store import KeyValueStore
from insectarium.testing.servers import RabbitMQServer, TLSFiles

from .runtime_support import dl_mon_one_alert, run_cli, running, unique


class PKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("localhost")  # not 127.0.0.1: host names are checked
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("shifter@lab")
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        other = trustme.CA()
        self.other_ca_file = directory / "other-ca.pem"
        other.cert_pem.write_to_path(str(self.other_ca_file))
        stranger = other.issue_cert("shifter@elsewhere")
        self.stranger_cert = directory / "stranger.pem"
        self.stranger_key = directory / "stranger.key"
        stranger.cert_chain_pems[0].write_to_path(str(self.stranger_cert))
        stranger.private_key_pem.write_to_path(str(self.stranger_key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: PKI) -> Iterator[RabbitMQServer]:
    with RabbitMQServer(
        tls=TLSFiles(pki.ca_file, pki.server_cert, pki.server_key), plain=False
    ) as mq:
        yield mq


def tls_mesh(mq: RabbitMQServer, pki: PKI, **extra: object) -> MeshConfig:
    values = {
        "broker": "localhost",
        "broker_port": mq.tls_port,
        "tls": True,
        "tls_ca_file": str(pki.ca_file),
        "max_connection_attempts": 2,
        **extra,
    }
    return MeshConfig(**values)


def tls_auth(mq: RabbitMQServer, **extra: str) -> Authentication:
    return Authentication(
        groups={"dripline": {"username": mq.user, "password": mq.password, **extra}}
    )


# --------------------------------------------------------------------------- configuration
def test_amqps_url_sets_tls_and_its_port() -> None:
    mesh = load_mesh({"broker": "amqps://rabbit-broker"}, use_home_file=False)
    assert (mesh.broker, mesh.broker_port, mesh.tls) == ("rabbit-broker", 5671, True)
    mesh = load_mesh({"broker": "amqps://rabbit-broker:6671"}, use_home_file=False)
    assert (mesh.broker_port, mesh.url_for_humans) == (6671, "amqps://rabbit-broker:6671/")
    plain = load_mesh({"broker": "amqp://rabbit-broker"}, use_home_file=False)
    assert (plain.broker_port, plain.tls) == (5672, False)
    assert load_mesh({"tls": True}, use_home_file=False).broker_port == 5671
    assert load_mesh({"tls": True, "broker_port": 7000}, use_home_file=False).broker_port == 7000


def test_broker_url_refuses_credentials_and_paths() -> None:
    with pytest.raises(ConfigError, match="auth file"):
        load_mesh({"broker": "amqps://lab:secret@rabbit-broker"}, use_home_file=False)
    with pytest.raises(ConfigError, match="vhost"):
        load_mesh({"broker": "amqps://rabbit-broker/lab"}, use_home_file=False)


def test_missing_ca_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls_ca_file.*file not found"):
        load_mesh({"tls": True, "tls_ca_file": str(tmp_path / "nope.pem")}, use_home_file=False)


def test_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    mesh = load_mesh({"tls": True, "tls_ca_file": str(bad)}, use_home_file=False)
    with pytest.raises(ConfigError, match="tls_ca_file"):
        tls_context(mesh)


def test_tls_context_verifies_host_and_certificate(pki: PKI) -> None:
    import ssl

    ctx = tls_context(load_mesh({"tls": True, "tls_ca_file": str(pki.ca_file)}))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- against the broker
async def test_service_and_client_talk_over_tls(tls_broker: RabbitMQServer, pki: PKI) -> None:
    mesh = tls_mesh(tls_broker, pki)
    name = unique("tls")
    svc = Service(
        name,
        endpoints=[KeyValueStore(f"{name}_peaches", initial_value=0.75)],
        dripline_mesh=mesh,
        authentication=tls_auth(tls_broker),
        heartbeat_interval_s=0,
    )
    async with (
        running(svc),
        Interface(dripline_mesh=mesh, authentication=tls_auth(tls_broker), timeout_s=5) as dl,
    ):
        assert svc.connection is not None
        assert svc.connection.url_for_humans.startswith("amqps://")
        assert (await dl.get(f"{name}_peaches"))["value_raw"] == 0.75


async def test_client_certificate_is_presented(tls_broker: RabbitMQServer, pki: PKI) -> None:
    """A certificate of the lab CA (from the auth file) is accepted."""
    auth = tls_auth(
        tls_broker, tls_cert_file=str(pki.client_cert), tls_key_file=str(pki.client_key)
    )
    good = Connection(tls_mesh(tls_broker, pki), auth.dripline)
    await good.connect()
    await good.close()


def _amqp_start_frame(port: int, ca: Path, cert: Path, key: Path) -> bytes:
    """Open TLS with a client certificate, send the AMQP header, return the broker's answer."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    with (
        socket.create_connection(("localhost", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(7)


def test_client_certificate_of_another_ca_is_refused(tls_broker: RabbitMQServer, pki: PKI) -> None:
    """The broker checks a presented client certificate (verify_peer): one of the lab CA gets
    the AMQP Connection.Start frame, one signed by another CA a TLS alert.  (Tried with a raw
    TLS socket: under TLS 1.3 the refusal comes after the client's side of the handshake, which
    aio-pika's robust connection answers by reconnecting forever.)"""
    import ssl

    frame = _amqp_start_frame(tls_broker.tls_port, pki.ca_file, pki.client_cert, pki.client_key)
    assert len(frame) == 7 and frame[0] == 1
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        frame = _amqp_start_frame(
            tls_broker.tls_port, pki.ca_file, pki.stranger_cert, pki.stranger_key
        )
        if not frame:
            raise ConnectionResetError("closed without an AMQP answer")
    assert not isinstance(refused.value, ssl.SSLCertVerificationError)  # the broker refused us


async def test_wrong_ca_fails_at_once_with_a_clear_message(
    tls_broker: RabbitMQServer, pki: PKI
) -> None:
    conn = Connection(
        tls_mesh(tls_broker, pki, tls_ca_file=str(pki.other_ca_file), max_connection_attempts=10),
        tls_auth(tls_broker).dripline,
    )
    with pytest.raises(BrokerUnavailable, match=r"TLS: cannot verify broker amqps://"):
        await conn.connect()


async def test_host_name_must_match_the_certificate(tls_broker: RabbitMQServer, pki: PKI) -> None:
    conn = Connection(tls_mesh(tls_broker, pki, broker="127.0.0.1"), tls_auth(tls_broker).dripline)
    with pytest.raises(BrokerUnavailable, match=r"mismatch|doesn.t match"):
        await conn.connect()


def test_plain_amqp_is_refused(tls_broker: RabbitMQServer) -> None:
    """No plain listener at all, and plain AMQP on the TLS port gets no AMQP answer."""
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", tls_broker.port))
    with socket.create_connection(("127.0.0.1", tls_broker.tls_port), timeout=15) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        try:
            answer = s.recv(7)
        except (TimeoutError, ConnectionError):
            answer = b""
    assert not (len(answer) == 7 and answer[0] == 1), "plain AMQP got a Connection.Start frame"
    assert answer[:1] in (b"", b"\x15")  # closed, or a TLS alert record


def test_cli_speaks_amqps(tls_broker: RabbitMQServer, pki: PKI, tmp_path: Path) -> None:
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f"dripline:\n  username: {tls_broker.user}\n  password: {tls_broker.password}\n"
    )
    common = ["--auth-file", str(auth), "--tls-ca-file", str(pki.ca_file)]
    # nothing serves this key: the request reaches the broker over TLS and comes back unroutable
    flags = run_cli(
        "agent", "-b", "localhost", "-p", str(tls_broker.tls_port), "--tls", *common,
        "get", unique("nobody"),
    )  # fmt: skip
    assert flags.returncode == 4, flags.stderr
    assert "403" in flags.stdout and "NO_ROUTE" in flags.stdout
    url = run_cli(
        "agent", "-b", f"amqps://localhost:{tls_broker.tls_port}", *common, "get", unique("x")
    )
    assert url.returncode == 4 and "NO_ROUTE" in url.stdout, url.stderr
    wrong = run_cli(
        "agent", "-b", f"amqps://localhost:{tls_broker.tls_port}", "--auth-file", str(auth),
        "--tls-ca-file", str(pki.other_ca_file), "get", "x",
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "TLS: cannot verify broker" in wrong.stderr


def test_cli_names_a_missing_ca_file(tmp_path: Path) -> None:
    out = run_cli("agent", "--tls", "--tls-ca-file", str(tmp_path / "ca.pem"), "get", "x")
    assert out.returncode == 4
    assert "tls_ca_file" in out.stderr and "file not found" in out.stderr
    assert "Traceback" not in out.stderr, sys.executable


def test_dl_mon_listens_over_amqps(tls_broker: RabbitMQServer, pki: PKI, tmp_path: Path) -> None:
    """dl-mon's one-socket listener speaks TLS as dl-agent does (same client underneath)."""
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f"dripline:\n  username: {tls_broker.user}\n  password: {tls_broker.password}\n"
    )
    common = ["-b", f"amqps://localhost:{tls_broker.tls_port}", "--auth-file", str(auth)]
    common += ["--tls-ca-file", str(pki.ca_file)]
    key = f"sensor_value.{unique('tls')}"

    def send() -> None:
        sent = run_cli("agent", *common, "alert", key, "value_raw=6.5")
        assert sent.returncode == 0, sent.stderr

    returncode, out, said = dl_mon_one_alert([*common, "-a", key], send)
    assert "listening" in said
    assert returncode == 0 and key in out and '"value_raw": 6.5' in out
    wrong = run_cli(
        "mon", "-b", f"amqps://localhost:{tls_broker.tls_port}", "--auth-file", str(auth),
        "--tls-ca-file", str(pki.other_ca_file), "-a", key,
    )  # fmt: skip
    assert wrong.returncode == 1 and "TLS: cannot verify broker" in wrong.stderr
    assert "Traceback" not in wrong.stderr
