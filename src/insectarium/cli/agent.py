"""``dl-agent``: send one dripline request (or reply, or alert) and print the answer.

Arguments and exit status follow dripline-cpp's dl-agent: ``dl-agent [options] get|set|cmd|reply|
alert <routing_key> [values…] [key=value…]``; the exit status is the reply's return code // 100
(0 success, 3 service error, 4 client error such as 403 unroutable or 404 timeout, 9 unhandled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import (
    add_connection_options,
    mesh_overrides,
    parse_allowing_trailing_values,
    printable,
    setup_logging,
    split_arguments,
)

# Keys the agent consumes itself; they never reach the payload (dl-agent's list).
AGENT_KEYS = frozenset(
    {
        "dripline_mesh",
        "auth_file",
        "auth_groups",
        "timeout",
        "json_print",
        "pretty_print",
        "suppress_output",
        "rk",
        "specifier",
        "lockout_key",
        "return",
        "save",
        "values",
        "option_values",
        "dry_run_msg",
    }
)

EPILOG = """\
examples:
  dl-agent get peaches
  dl-agent set peaches 0.9
  dl-agent get peaches -s log_interval
  dl-agent cmd daq_interface -s start_timed_run virtual_run 60
  dl-agent cmd broadcast -s ping
  dl-agent -b rabbit-broker --auth-file ~/auth.yaml --json-print get chips

exit status: the reply's return code // 100 (0 ok, 3 service error, 4 client error, 9 unhandled)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-agent",
        description="Send a dripline 3 request, reply or alert and print the answer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    add_message_options(parser)
    sub = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    helps = {
        "get": "read a value (OP_GET)",
        "set": "write a value (OP_SET; needs at least one value)",
        "cmd": "run a command (OP_CMD; the method is the specifier)",
        "reply": "send a reply message to a routing key",
        "alert": "send an alert message",
    }
    for op, text in helps.items():
        p = sub.add_parser(
            op,
            help=text,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_connection_options(p, suppress=True)
        add_message_options(p, suppress=True)
        p.add_argument(
            "rk", metavar="routing_key", help="endpoint[.anything]; the first word routes"
        )
        p.add_argument(
            "arguments",
            nargs="*",
            metavar="value|key=value",
            help="ordered values, or key=value keyword arguments",
        )
    return parser


def add_message_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    d = argparse.SUPPRESS if suppress else None
    g = parser.add_argument_group("message")
    g.add_argument("-s", "--specifier", default=d, help="attribute or method name")
    g.add_argument("-P", "--payload", default=d, help="JSON object merged into the payload")
    g.add_argument(
        "--values", nargs="+", default=d, help="ordered values appended after positional ones"
    )
    g.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=d,
        help="seconds to wait for a reply (10; 0 = forever)",
    )
    g.add_argument("-k", "--lockout-key", default=d, help="lockout key (UUID)")
    g.add_argument("--return-code", type=int, default=d, help="return code of a 'reply'")
    g.add_argument("--return-msg", default=d, help="return message of a 'reply'")
    g.add_argument("--save", default=d, help="write the reply payload to this JSON/YAML file")
    out = parser.add_argument_group("output")
    flag = {"action": "store_true", "default": argparse.SUPPRESS if suppress else False}
    out.add_argument("--suppress-output", **flag, help="print nothing")
    out.add_argument("--json-print", **flag, help="print the reply as compact JSON")
    out.add_argument("--pretty-print", **flag, help="print the reply as indented JSON")
    out.add_argument("--dry-run-msg", **flag, help="print the message instead of sending it")


def text_dump(msg: Any) -> str:
    """dl-agent's reply dump; text from the wire is printed as plain, escaped text."""
    lines = [
        f"Routing key: {printable(msg.routing_key)}",
        f"Correlation ID: {printable(msg.correlation_id)}",
        f"Return Code: {msg.return_code}",
        f"Return Message: {printable(msg.return_message)}",
        f"Payload: {json.dumps(msg.payload, default=str)}",  # JSON escapes control characters
    ]
    return "\n".join(lines)


def save_payload(path: str, payload: Any) -> None:
    p = Path(path).expanduser()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        p.write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")
    else:
        p.write_text(json.dumps(payload, indent=4, default=str) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    """Build the message, send it over a one-shot connection (no asyncio, no aio-pika, no
    pydantic unless a mesh needs the full validator), print the answer; the exit status."""
    from ..dripline.config_files import Authentication, ConfigError, load_file
    from ..dripline.constants import MsgOp
    from ..dripline.errors import BrokerUnavailable, PublishRefused
    from ..dripline.message import Message
    from ..dripline.oneshot import OneShotClient
    from ..dripline.quick_mesh import load_mesh_quick

    file_cfg: dict[str, Any] = {}
    if getattr(args, "config", None):
        loaded = load_file(args.config) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("expected a mapping", source=args.config)
        file_cfg = loaded
    values, keywords = split_arguments(args.arguments)
    values += [v for v in split_arguments(getattr(args, "values", None) or [])[0]]
    timeout = float(
        keywords.pop("timeout", getattr(args, "timeout", None) or file_cfg.get("timeout", 10))
    )
    save = keywords.pop("save", None) or getattr(args, "save", None)
    for key in AGENT_KEYS & set(keywords):
        keywords.pop(key)
    if getattr(args, "payload", None):
        try:
            extra = json.loads(args.payload)
        except ValueError as exc:
            print(f"dl-agent: --payload is not valid JSON: {exc}", file=sys.stderr)
            return 4
        if not isinstance(extra, dict):
            print("dl-agent: --payload must be a JSON object", file=sys.stderr)
            return 4
        keywords = {**extra, **keywords}

    payload: Any = {**keywords, "values": values} if (values or keywords) else {}
    op = args.operation
    if op == "set" and not values:
        print("dl-agent: 'set' needs a value (return code 401: Invalid Request)", file=sys.stderr)
        return 4

    mesh = load_mesh_quick(
        file_cfg.get("dripline_mesh"), mesh_overrides(args), source=args.config or ""
    )
    auth = Authentication.load(
        getattr(args, "auth_file", None) or file_cfg.get("auth_file"),
        username=getattr(args, "username", None),
        password=getattr(args, "password", None),
        password_file=getattr(args, "password_file", None),
    )
    specifier = getattr(args, "specifier", None) or ""
    lockout_key = getattr(args, "lockout_key", None)

    if op in ("get", "set", "cmd"):
        msg = Message.request(
            args.rk, MsgOp.from_name(op), payload, specifier=specifier, lockout_key=lockout_key
        )
    elif op == "alert":
        msg = Message.alert(args.rk, payload)
        msg.specifier = specifier
    else:
        msg = Message(
            message_type=2,
            routing_key=args.rk,
            payload=payload,
            specifier=specifier,
            return_code=getattr(args, "return_code", None) or 0,
            return_message=getattr(args, "return_msg", None) or "",
        )

    if getattr(args, "dry_run_msg", False):
        print(json.dumps(msg.to_dict(), indent=4, default=str))
        return 0

    name = "dl-agent" if op in ("alert", "reply") else "unknown client"
    try:
        with OneShotClient(mesh, auth.dripline, name=name, timeout_s=timeout) as client:
            if op in ("alert", "reply"):
                try:
                    # confirmed, so that a routing key this user may not use is an error here
                    client.publish(msg)
                except PublishRefused as exc:
                    print(f"dl-agent: {op} not sent: {exc}", file=sys.stderr)
                    return 4  # 403 client_error_unable_to_send // 100
                return 0
            reply = client.send_request(msg, timeout_s=timeout)[0]
    except BrokerUnavailable as exc:
        print(f"dl-agent: {exc}", file=sys.stderr)
        return 1  # 101 amqp_error_broker_connection // 100

    if not getattr(args, "suppress_output", False):
        if getattr(args, "pretty_print", False):
            print(json.dumps(reply.to_dict(), indent=4, default=str))
        elif getattr(args, "json_print", False):
            print(json.dumps(reply.to_dict(), separators=(",", ":"), default=str))
        else:
            print(text_dump(reply))
    if save and reply.return_code < 100:
        save_payload(save, reply.payload)
    return reply.return_code // 100


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_allowing_trailing_values(parser, argv, "arguments")
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    from ..dripline.config_files import ConfigError

    try:
        status = run(args)
    except KeyboardInterrupt:
        return 0
    except ConfigError as exc:
        print(f"dl-agent: configuration error:\n{exc}", file=sys.stderr)
        return 4
    return status


if __name__ == "__main__":
    sys.exit(main())
