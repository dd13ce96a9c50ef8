"""``dl-mon``: watch dripline traffic live (requests, replies, alerts).

``dl-mon -r KEYS… -a KEYS…`` binds a private queue on the requests exchange with the ``-r`` keys
and on the alerts exchange with the ``-a`` keys, and prints every message as one readable line
(or as JSON).  It runs on :class:`~insectarium.dripline.listener.Listener` (one blocking socket,
no asyncio or aio-pika: listening within ~100 ms of launch), which reconnects by itself when the
broker restarts and restores its queue and bindings.  Note, as with dripline-cpp's dl-mon: while
it listens on requests, a request to a dead endpoint is no longer "returned" (dl-mon counts as a
consumer).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..dripline.limits import clip
from .common import add_connection_options, mesh_overrides, printable, setup_logging

if TYPE_CHECKING:
    from rich.text import Text

OPS = {0: "set", 1: "get", 9: "cmd"}
TYPES = {2: "reply", 3: "request", 4: "alert"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-mon",
        description="Print dripline messages as they pass through the broker.",
        epilog="examples:\n  dl-mon -a 'sensor_value.#' 'heartbeat.#'\n  dl-mon -r '#' -a '#'\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    parser.add_argument(
        "-r",
        "--requests-keys",
        nargs="+",
        default=[],
        metavar="KEY",
        help="binding keys on the requests exchange (requests and replies)",
    )
    parser.add_argument(
        "-a",
        "--alerts-keys",
        nargs="+",
        default=[],
        metavar="KEY",
        help="binding keys on the alerts exchange",
    )
    parser.add_argument(
        "--json-print", action="store_true", help="one compact JSON object per message"
    )
    parser.add_argument("--pretty-print", action="store_true", help="indented JSON per message")
    parser.add_argument("-n", "--count", type=int, default=0, help="exit after this many messages")
    return parser


def describe_line(msg: Any, exchange: str) -> Text:
    """One line per message, as rich ``Text``: wire text is never read as markup or emoji
    codes, and control characters in it are shown escaped."""
    from rich.text import Text

    kind = TYPES.get(msg.message_type, f"type{msg.message_type}")
    when = msg.timestamp[11:23] if len(msg.timestamp) >= 23 else msg.timestamp
    sender = msg.sender_info.get("service_name") or "?"
    host = msg.sender_info.get("hostname") or "?"
    line = Text()
    line.append(printable(when), style="dim").append(" ")
    line.append(f"{kind:7}", style="bold").append(" ")
    if msg.message_type == 3:
        line.append(f"{OPS.get(msg.message_operation, msg.message_operation)} ")
    line.append(printable(clip(msg.routing_key, 200)), style="cyan")
    if msg.specifier:
        line.append(f" -s {printable(clip(msg.specifier, 200))}")
    if msg.message_type == 2:
        colour = "green" if msg.return_code < 100 else "red"
        line.append(f" {msg.return_code}", style=colour)
        line.append(f" {printable(clip(msg.return_message, 300))}")
    line.append(f" from {printable(clip(f'{sender}@{host}', 200))}")
    if not msg.is_valid:
        return line.append(f" INVALID: {printable(clip(msg.error, 300))}", style="red")
    body = json.dumps(msg.payload, default=str)
    if len(body) > 200:
        body = body[:197] + "..."
    return line.append(f" → {body}")


def monitor(args: argparse.Namespace) -> int:
    """Listen until ``-n`` messages were shown, or SIGINT/SIGTERM; survives broker restarts."""
    from ..dripline.config_files import Authentication
    from ..dripline.listener import Listener
    from ..dripline.quick_mesh import load_mesh_quick

    mesh = load_mesh_quick(mesh_overrides(args))
    auth = Authentication.load(
        args.auth_file,
        username=args.username,
        password=args.password,
        password_file=args.password_file,
    )
    bindings = [(mesh.requests_exchange, k) for k in args.requests_keys] + [
        (mesh.alerts_exchange, k) for k in args.alerts_keys
    ]
    listener = Listener(mesh, auth.dripline, bindings, name="dl-mon")
    listener.start()
    seen = 0
    console: Any = None

    def show(msg: Any) -> None:
        nonlocal seen, console
        if args.count and seen >= args.count:
            return  # -n N shows exactly N, even if more were already read
        seen += 1
        if args.json_print or args.pretty_print:
            print(
                json.dumps(msg.to_dict(), indent=4 if args.pretty_print else None, default=str),
                flush=True,
            )
        else:
            if console is None:  # rich costs ~25 ms to import: not before we listen
                from rich.console import Console

                console = Console(highlight=False, emoji=False)
            console.print(describe_line(msg, ""), soft_wrap=True)
        if args.count and seen >= args.count:
            listener.stop()

    keys = [f"requests:{k}" for k in args.requests_keys] + [f"alerts:{k}" for k in args.alerts_keys]
    print(
        f"dl-mon listening on {listener.url_for_humans} for {', '.join(keys)} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        listener.run(show)
    finally:
        listener.close()
    return 0


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not args.requests_keys and not args.alerts_keys:
        print(
            "dl-mon: give at least one key with -r and/or -a (e.g. -a 'sensor_value.#')",
            file=sys.stderr,
        )
        return 4
    from ..dripline.config_files import ConfigError
    from ..dripline.errors import BrokerUnavailable
    from ..dripline.listener import BindRefused

    signal.signal(signal.SIGTERM, _interrupt)  # supervisorctl stop, kill: a clean exit 0
    try:
        return monitor(args)
    except ConfigError as exc:
        print(f"dl-mon: configuration error:\n{exc}", file=sys.stderr)
        return 4
    except BrokerUnavailable as exc:
        print(f"dl-mon: {exc}", file=sys.stderr)
        return 1
    except BindRefused as exc:
        print(f"dl-mon: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
