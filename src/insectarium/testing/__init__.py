"""Throw-away PostgreSQL and RabbitMQ servers for tests and benchmarks, and pytest fixtures."""

from __future__ import annotations

from insectarium.testing.servers import PostgresServer, RabbitMQServer, ServerError

__all__ = ["PostgresServer", "RabbitMQServer", "ServerError"]
