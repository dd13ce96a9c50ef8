"""``dragonfly``: the dripline 2 command line users know, speaking dripline 3.

Lab users type what the seed taught them::

    dragonfly cmd -vv -b rabbit_broker daq_interface.start_timed_run virtual_run 100
    dragonfly get peaches
    dragonfly set peaches.log_interval 5
    dragonfly get run_metadata --pretty-print

and get dragonfly's one-line answers (``<target>-><v1>(ret:<code>): [<sender>]-> <payload>``).
What changes under the hood is the wire: in dripline 2 the target ``endpoint.specifier`` was the
routing key; dripline 3 routes on ``endpoint`` and carries the specifier in a header, so the target
is split at its first dot.

Habits kept from dragonfly 1.x (dripline-3-wire.md §4.4): ``-b`` without a value means
``localhost``; each value is read with ``ast.literal_eval`` (then ``true``/``false``/``none``/
``null``/``nil`` in any case), ``key=value`` words become keyword arguments; a ``broadcast``
target collects every reply until ``--timeout``; ``--pretty-print`` prints the reply's
``value_cal``; and the **exit status is 0** whatever the replies said — dragonfly only logged
errors.  Scripts that want to know should pass ``--strict``: the status is then the worst reply's
``return_code // 100`` (as ``dl-agent``).  A broker that cannot be reached, a bad configuration
file or lockout key exit 1 either way (dragonfly died with a traceback there).

Differences worth knowing: error replies always print their ``return message`` (dragonfly showed
it at its default log level); other replies show it with ``-v``.  ``dragonfly serve …`` runs
``dl-serve …`` and ``dragonfly monitor …`` runs ``dl-mon …`` with the same arguments.  Broker and
authentication options are those of ``dl-agent`` (``-p``, ``-u``, ``--auth-file`` …).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import uuid
from typing import Any

from .common import (
    add_connection_options,
    mesh_overrides,
    parse_allowing_trailing_values,
    printable,
    set_address,
    setup_logging,
)

OPERATIONS = ("get", "set", "cmd")
DELEGATES = {"serve": "serve", "monitor": "mon"}
#: broadcast commands sent without asking (dragonfly asked before any other broadcast)
SAFE_BROADCASTS = ("lock", "unlock", "ping", "set_condition")

EPILOG = """\
examples:
  dragonfly get peaches
  dragonfly set peaches 0.9
  dragonfly set peaches.log_interval 5
  dragonfly cmd -vv -b rabbit_broker daq_interface.start_timed_run virtual_run 100
  dragonfly get run_metadata --pretty-print
  dragonfly cmd broadcast.ping
  dragonfly serve -c files/configs/kv_store_tutorial.yaml     (= dl-serve …)
  dragonfly monitor -a 'sensor_value.#'                        (= dl-mon …)

exit status: 0 (as dragonfly), or with --strict the worst reply's return code // 100
"""


def cast(text: str) -> Any:
    """dragonfly's value typing: a Python literal, else true/false/none/null/nil, else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null", "nil"):
        return None
    return text


def split_values(items: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Words → ordered values and ``key=value`` keywords (``a.b=1`` builds ``{"a": {"b": 1}}``)."""
    values: list[Any] = []
    keywords: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if sep and key and key.replace(".", "").replace("_", "").replace("-", "").isalnum():
            set_address(keywords, key, cast(raw))
        else:
            values.append(cast(item))
    return values, keywords


def split_target(target: str) -> tuple[str, str]:
    """``daq_interface.start_timed_run`` → (``daq_interface``, ``start_timed_run``)."""
    endpoint, _, specifier = target.partition(".")
    return endpoint, specifier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragonfly",
        description="dripline 2's dragonfly command line, speaking dripline 3.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser)
    sub = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
    helps = {
        "get": "read a value",
        "set": "write a value (needs a value)",
        "cmd": "run a command: target is endpoint.method",
    }
    for op, text in helps.items():
        p = sub.add_parser(op, help=text, description=text, epilog=EPILOG)
        add_options(p, suppress=True)
        p.add_argument("target", help="endpoint[.specifier]")
        p.add_argument("values", nargs="*", help="values, or key=value keyword arguments")
    sub.add_parser("serve", help="run a service (dl-serve; same arguments)", add_help=False)
    sub.add_parser("monitor", help="watch messages (dl-mon; same arguments)", add_help=False)
    return parser


def add_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    d = argparse.SUPPRESS if suppress else None
    add_connection_options(parser, suppress=suppress)
    for action in parser._actions:  # dragonfly: a bare -b means localhost
        if "-b" in action.option_strings:
            action.nargs, action.const, action.metavar = "?", "localhost", "BROKER"
    g = parser.add_argument_group("dragonfly")
    g.add_argument("--timeout", type=float, default=d, help="seconds to wait for replies (10)")
    g.add_argument("--lockout-key", default=d, help="lockout key (UUID or 32 hex digits)")
    flag = {"action": "store_true", "default": argparse.SUPPRESS if suppress else False}
    g.add_argument("--pretty-print", **flag, help="print the reply's value_cal only")
    g.add_argument("--strict", **flag, help="exit with the worst return code // 100")
    g.add_argument("-y", "--yes", **flag, help="send a broadcast without asking")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse, letting values come after options (``target v1 --timeout 5 v2``) as dragonfly did."""
    return parse_allowing_trailing_values(build_parser(), argv, "values")


def format_reply(target: str, values: list[Any], reply: Any) -> str:
    """dragonfly's line: ``<target>-><v1>-><v2>(ret:<code>): [<sender>]-> <payload>``."""
    sender = (reply.sender_info or {}).get("service_name", "")
    if sender == "unknown":  # a reply made by the client itself (403 unroutable, 404 timeout)
        sender = ""
    head = "->".join([target, *(str(v) for v in values)])
    line = f"{head}(ret:{reply.return_code}): [{sender}]-> {reply.payload!r}"
    return printable(line)


def pretty(payload: Any) -> str:
    if isinstance(payload, dict) and "value_cal" in payload:
        value = payload["value_cal"]
        return printable(value) if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(payload, indent=4, default=str)


class Printer:
    """Plain lines; on a terminal, error lines in red through rich (as plain text: no markup,
    no emoji codes).  rich is loaded only when there is an error line for a terminal: a plain
    line looks the same either way, and rich's import would double a quick call's run time."""

    def __init__(self) -> None:
        self.console: Any = None
        self.tty = sys.stdout.isatty()

    def line(self, text: str, error: bool = False) -> None:
        text = printable(text)
        if not (error and self.tty):
            print(text, flush=True)
            return
        if self.console is None:
            from rich.console import Console

            self.console = Console(highlight=False, emoji=False, soft_wrap=True)
        from rich.text import Text

        self.console.print(Text(text, style="red"))


def run(args: argparse.Namespace) -> int:
    from ..dripline.config_files import Authentication, ConfigError, load_file
    from ..dripline.constants import MsgOp
    from ..dripline.message import Message
    from ..dripline.oneshot import OneShotClient
    from ..dripline.quick_mesh import load_mesh_quick

    file_cfg: dict[str, Any] = {}
    if getattr(args, "config", None):
        loaded = load_file(args.config) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("expected a mapping", source=args.config)
        file_cfg = loaded
    values, keywords = split_values(args.values)
    op = args.operation
    if op == "set" and not values:
        print("dragonfly: 'set' needs a value", file=sys.stderr)
        return 4 if getattr(args, "strict", False) else 0
    timeout = float(getattr(args, "timeout", None) or file_cfg.get("timeout", 10))
    endpoint, specifier = split_target(args.target)
    broadcast = endpoint == file_cfg.get("broadcast_key", "broadcast")
    if broadcast and specifier.split(".")[0] not in SAFE_BROADCASTS and not confirm(args):
        print("dragonfly: broadcast not sent", file=sys.stderr)
        return 0
    lockout_key = getattr(args, "lockout_key", None)
    if lockout_key:
        try:
            lockout_key = str(uuid.UUID(lockout_key.strip().strip("{}")))
        except ValueError:
            print(f"dragonfly: invalid lockout key {lockout_key!r}", file=sys.stderr)
            return 1

    mesh = load_mesh_quick(
        file_cfg.get("dripline_mesh"), mesh_overrides(args), source=args.config or ""
    )
    auth = Authentication.load(
        getattr(args, "auth_file", None) or file_cfg.get("auth_file"),
        username=getattr(args, "username", None),
        password=getattr(args, "password", None),
        password_file=getattr(args, "password_file", None),
    )
    msg = Message.request(
        endpoint,
        MsgOp.from_name(op),
        {**keywords, "values": values},
        specifier=specifier,
        lockout_key=lockout_key,
        sender="dragonfly",
    )
    with OneShotClient(mesh, auth.dripline, name="dragonfly client", timeout_s=timeout) as client:
        replies = client.send_request(msg, timeout_s=timeout, collect=broadcast)

    printer = Printer()
    show_message = getattr(args, "verbose", 0) > 0
    for reply in replies:
        error = reply.return_code >= 100
        if getattr(args, "pretty_print", False) and not error:
            printer.line(pretty(reply.payload))
        else:
            printer.line(format_reply(args.target, values, reply), error=error)
        if (error or show_message) and reply.return_message:
            printer.line(f"return message: {reply.return_message}", error=error)
    if getattr(args, "strict", False):
        return max(r.return_code for r in replies) // 100
    return 0


def confirm(args: argparse.Namespace) -> bool:
    """dragonfly asked before broadcasting anything but lock/unlock/ping/set_condition."""
    if getattr(args, "yes", False) or not sys.stdin.isatty():
        return True
    answer = input(f"send {args.operation} {args.target} to every service? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def delegate(argv: list[str]) -> int | None:
    """``dragonfly [opts] serve|monitor …`` → dl-serve / dl-mon with the other arguments."""
    for i, word in enumerate(argv):
        if word in OPERATIONS:
            return None
        if word in DELEGATES:
            import importlib

            module = importlib.import_module(f"{__package__}.{DELEGATES[word]}")
            return int(module.main(argv[:i] + argv[i + 1 :]) or 0)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = delegate(argv)
    if delegated is not None:
        return delegated
    args = parse(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    from ..dripline.config_files import ConfigError
    from ..dripline.errors import BrokerUnavailable

    try:
        return run(args)
    except KeyboardInterrupt:
        return 0
    except BrokerUnavailable as exc:
        print(f"dragonfly: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"dragonfly: configuration error:\n{exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
