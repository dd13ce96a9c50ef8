"""Options and helpers shared by the command-line tools (scarab's habits)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..dripline.constants import DRIPLINE_VERSION

LOG_FORMAT = "%(asctime)s [%(levelname)-7s] %(name)s: %(message)s"


def add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The global options of dl-agent / dl-serve / dl-mon.

    With ``suppress`` the defaults are not set, so the same options can be given before or after
    the subcommand without the later parser overwriting the earlier value.
    """
    d = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("connection")
    g.add_argument(
        "-b", "--broker", default=d, help="broker host (default: localhost or the mesh file)"
    )
    g.add_argument("-p", "--port", type=int, default=d, help="broker port (default 5672)")
    g.add_argument("-u", "--username", default=d, help="broker user name")
    g.add_argument("--password", default=d, help="broker password (prefer --password-file)")
    g.add_argument("--password-file", default=d, help="file holding the broker password")
    g.add_argument(
        "--auth-file", default=d, help="JSON/YAML file with auth groups (dripline, postgres)"
    )
    g.add_argument("--requests-exchange", default=d)
    g.add_argument("--alerts-exchange", default=d)
    g.add_argument("--max-payload", type=int, default=d, help="max payload bytes per chunk (10000)")
    g.add_argument("--heartbeat-routing-key", default=d)
    g.add_argument("--max-connection-attempts", type=int, default=d)
    t = parser.add_argument_group("TLS (amqps; or give -b amqps://host[:port])")
    t.add_argument(
        "--tls",
        action="store_const",
        const=True,
        default=d,
        help="connect with TLS (port 5671 unless -p), verifying the broker's certificate",
    )
    t.add_argument("--tls-ca-file", default=d, help="CA certificate(s) to verify the broker with")
    t.add_argument("--tls-cert-file", default=d, help="client certificate (PEM), if required")
    t.add_argument("--tls-key-file", default=d, help="key of the client certificate (PEM)")
    o = parser.add_argument_group("general")
    o.add_argument("-c", "--config", default=d, help="YAML/JSON configuration file")
    o.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more output (repeatable)",
    )
    o.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="less output (repeatable)",
    )
    o.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"%(prog)s (insectarium {__version__}, dripline {DRIPLINE_VERSION})",
    )


def mesh_overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "broker": "broker",
        "port": "broker_port",
        "requests_exchange": "requests_exchange",
        "alerts_exchange": "alerts_exchange",
        "max_payload": "max_payload_size",
        "heartbeat_routing_key": "heartbeat_routing_key",
        "max_connection_attempts": "max_connection_attempts",
        "tls": "tls",
        "tls_ca_file": "tls_ca_file",
        "tls_cert_file": "tls_cert_file",
        "tls_key_file": "tls_key_file",
    }
    return {k: getattr(args, a) for a, k in mapping.items() if getattr(args, a, None) is not None}


def setup_logging(verbose: int, quiet: int, base: int = logging.WARNING) -> None:
    level = min(logging.CRITICAL, max(logging.DEBUG, base - 10 * verbose + 10 * quiet))
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    if level > logging.DEBUG:
        logging.getLogger("aiormq").setLevel(max(level, logging.WARNING))
        logging.getLogger("aio_pika").setLevel(max(level, logging.WARNING))
        # aio-pika reports its own channel-restore callbacks as errors during a reconnect
        logging.getLogger("aio_pika.tools").setLevel(logging.CRITICAL)


def parse_allowing_trailing_values(
    parser: argparse.ArgumentParser, argv: list[str] | None, dest: str
) -> argparse.Namespace:
    """Parse, letting values follow options (``cmd daq -s start_timed_run run1 60``).

    argparse's subparsers stop collecting positionals at the first option, so words left over
    are values too (negative numbers included); anything else that looks like an option is an
    error.  The leftovers are appended to ``args.<dest>``.
    """
    args, rest = parser.parse_known_args(argv)
    stray = [r for r in rest if r.startswith("-") and not _is_number(r)]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    setattr(args, dest, [*getattr(args, dest, []), *rest])
    return args


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_scalar(text: str) -> Any:
    """scarab's typing of command-line values: null, bool, number, else string."""
    if text == "":
        return None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    body = text[1:] if text[:1] in "+-" else text
    if body and all(c.isdigit() or c in ".eE+-" for c in body) and any(c.isdigit() for c in body):
        try:
            if any(c in body for c in ".eE"):
                return float(text)
            return int(text)
        except ValueError:
            return text
    return text


def set_address(tree: dict[str, Any], address: str, value: Any) -> None:
    """``a.b.0=3`` → ``{"a": {"b": [3]}}`` (scarab's keyword addresses)."""
    parts = address.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt: Any = value if last else ([] if parts[i + 1].isdigit() else {})
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append(None)
            if last or node[idx] is None:
                node[idx] = nxt
            node = node[idx]
        else:
            if last or part not in node or not isinstance(node[part], dict | list):
                node[part] = nxt
            node = node[part]


def split_arguments(items: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Positional words → ordered values; ``key=value`` words → keyword tree."""
    values: list[Any] = []
    keywords: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if sep and key and not key.startswith(("-", "{", "[")) and " " not in key:
            set_address(keywords, key, parse_scalar(raw))
        else:
            values.append(parse_scalar(item))
    return values, keywords


def printable(value: object) -> str:
    """Text from the lab (names, values, messages) as plain terminal text.

    Characters that would act on the terminal instead of being shown — control characters
    (an escape sequence in a run name recolours or rewrites the screen), line breaks, and the
    Unicode format characters that reorder or hide text (bidi overrides, zero-width) — are
    shown as their Python escapes (``\\x1b``, ``\\n``, ``\\u202e``).  Cheap when there is
    nothing to escape.  Printed through rich, pass the result as ``rich.text.Text`` so that no
    markup (``[bold]``) or emoji code (``:smile:``) is interpreted.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def mask(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config for printing, with anything password-like hidden."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out[k] = mask(v)
        elif "password" in str(k).lower() or "secret" in str(k).lower():
            out[k] = "***"
        else:
            out[k] = v
    return out


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
