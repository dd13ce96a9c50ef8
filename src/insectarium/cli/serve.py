"""``dl-serve -c config.yaml``: run a dripline service described by a YAML file.

Configuration precedence (dripline-python 5): built-in defaults < ``~/.dripline_mesh.yaml`` <
the ``-c`` file < ``key=value`` arguments < command-line options; then ``ENV{VAR}`` substitution.
A bad file stops here with the file, the key and the problem; exit status 0 after a clean stop
(SIGINT/SIGTERM), 100 if the service failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from .common import add_connection_options, mesh_overrides, setup_logging, split_arguments

log = logging.getLogger("dl-serve")

EPILOG = """\
examples:
  dl-serve -c files/configs/kv_store_tutorial.yaml
  dl-serve -c slow_control_table.yaml -b rabbit-broker \\
           --auth-file /etc/insectarium/auth/not-sc_db.yaml \\
           database_server=sc-db
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dl-serve",
        description="Run a dripline service from a YAML configuration file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser)
    parser.add_argument("--heartbeat-interval-s", type=float, default=None)
    parser.add_argument("--loop-timeout-ms", type=int, default=None)
    parser.add_argument("--message-wait-ms", type=int, default=None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print it (passwords hidden) and exit",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override top-level config keys (e.g. database_server=sc-db)",
    )
    return parser


def assemble_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from ..dripline.config_files import ConfigError, load_file, substitute_env, underscore_keys

    source = args.config or ""
    config: dict[str, Any] = {}
    if args.config:
        loaded = load_file(args.config) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("expected a mapping at the top level", source=source)
        config = dict(loaded)
    for legacy in ("runtime-config", "runtime_config"):
        if legacy in config:
            log.warning(
                "%s: the '%s' block is deprecated; its keys are used at the top level",
                source,
                legacy,
            )
            block = config.pop(legacy) or {}
            config = {**underscore_keys(block), **config}
    values, keywords = split_arguments(args.overrides)
    if values:
        raise ConfigError(f"unexpected argument(s) {values}; overrides look like key=value")
    config.update(keywords)
    for opt, key in (
        ("heartbeat_interval_s", "heartbeat_interval_s"),
        ("loop_timeout_ms", "loop_timeout_ms"),
        ("message_wait_ms", "message_wait_ms"),
    ):
        if getattr(args, opt) is not None:
            config[key] = getattr(args, opt)
    config = substitute_env(config, source=source)
    if "name" not in config:
        config["name"] = "dlpy_service"
    return config, source


async def serve(service: Any) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.request_stop)
    await service.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet, base=logging.INFO)
    from ..dripline.config_files import Authentication, ConfigError
    from ..dripline.connection import BrokerUnavailable
    from ..dripline.factory import create_service
    from ..dripline.quick_mesh import load_mesh_quick
    from ..dripline.service import ServiceAlreadyRunning

    try:
        config, source = assemble_config(args)
        # pydantic is imported only if the mesh is not plainly valid (see quick_mesh.py)
        mesh = load_mesh_quick(
            config.pop("dripline_mesh", None), mesh_overrides(args), source=source
        )
        auth = Authentication.load(
            args.auth_file or config.get("auth_file"),
            username=args.username,
            password=args.password,
            password_file=args.password_file,
        )
        service = create_service(config, source=source, dripline_mesh=mesh, authentication=auth)
    except ConfigError as exc:
        print(f"dl-serve: configuration error:\n{exc}", file=sys.stderr)
        return 100
    if args.check:
        from .common import mask

        print(
            f"{source or '(no file)'}: OK — service {service.name!r} ({type(service).__name__}) "
            f"with endpoints {', '.join(service.sync_children) or '-'}; broker "
            f"{mesh.broker}:{mesh.broker_port} as {auth.dripline.username}"
        )
        log.debug("config: %s", mask(config))
        return 0
    from ..dripline.memory import limit_arenas

    limit_arenas()  # before any thread: see dripline/memory.py for what was measured
    try:
        return asyncio.run(serve(service))
    except (BrokerUnavailable, ServiceAlreadyRunning) as exc:
        log.error("%s", exc)
        return 100
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("service %s failed", config.get("name"))
        return 100


if __name__ == "__main__":
    sys.exit(main())
