"""``insectarium-console``: serve the lab console (or only check its configuration).

``insectarium-console -c /etc/insectarium/console.yaml [--check] [--log-level info]``

Listens where the configuration says, with TLS when it names a certificate and key.  A bad
configuration exits with status 2 and a message naming the file, the key and the problem.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..dripline.config import ConfigError
from .config import CONFIG_ENV, DEFAULT_CONFIG, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="insectarium-console",
        description="The insectarium lab console: services, sensor values and runs in a browser.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        help=f"configuration file (default ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--check", action="store_true", help="check the configuration and exit (0 = fine)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"insectarium-console: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(
            f"configuration OK: {len(config.users)} users, {len(config.supervisors)} "
            f"supervisord hosts, database {config.database.dbname} on {config.database.host}"
        )
        return 0
    import uvicorn

    from .app import create_app

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    scheme = "https" if config.tls else "http"
    logging.getLogger(__name__).info(
        "console on %s://%s:%d", scheme, config.listen.host, config.listen.port
    )
    uvicorn.run(
        create_app(config),
        host=config.listen.host,
        port=config.listen.port,
        ssl_certfile=str(config.tls.cert) if config.tls else None,
        ssl_keyfile=str(config.tls.key) if config.tls else None,
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        limit_concurrency=200,
        h11_max_incomplete_event_size=64 * 1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
