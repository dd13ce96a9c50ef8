"""``python -m insectarium.db migrate --dsn … [--seed]`` and ``… status``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

DSN_ENV = "INSECTARIUM_PG_DSN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m insectarium.db",
        description="Apply the lab's SQL migrations (files/sql/NNN_*.sql) to a PostgreSQL "
        "database, recording them in public.schema_migrations.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("migrate", "apply pending migrations (and optionally the seed)"),
        ("status", "list migrations as applied / pending / changed"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--dsn",
            default=os.environ.get(DSN_ENV, ""),
            help=f"libpq conninfo or postgresql:// URL (default ${DSN_ENV}, else the PG* "
            "environment variables)",
        )
        p.add_argument(
            "--sql-dir",
            default=None,
            help="migrations directory (default $INSECTARIUM_SQL_DIR, else files/sql)",
        )
        if name == "migrate":
            p.add_argument(
                "--seed",
                action="store_true",
                help="also apply the seed (re-runnable data, e.g. the lab's endpoints)",
            )
            p.add_argument(
                "--seed-path", default=None, help="seed file or directory (default <sql-dir>/seed)"
            )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each file applied")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    import psycopg

    from insectarium.db import migrations

    try:
        if args.command == "status":
            for m, state in migrations.status(args.dsn, args.sql_dir):
                print(f"{state:8} {m.filename}")
            return 0
        applied = migrations.migrate(
            args.dsn, args.sql_dir, seed=args.seed, seed_path=args.seed_path
        )
    except migrations.MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"error: database: {exc}".rstrip(), file=sys.stderr)
        return 2
    if applied:
        print("applied: " + ", ".join(m.filename for m in applied))
    else:
        print("up to date")
    if args.seed:
        print("seed applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
