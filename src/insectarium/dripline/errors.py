"""Broker-level errors a client reports, shared by the async runtime and the one-shot client.

They live apart from :mod:`.connection` (aio-pika) so that :mod:`.oneshot` raises the very same
classes without importing the async stack; :mod:`.connection` re-exports them.
"""

from __future__ import annotations


class UnroutableError(Exception):
    """The broker returned a mandatory message: nothing is bound to its routing key."""


class NotConnected(ConnectionError):
    """The broker connection is down for now; the robust connection is re-establishing it."""


class BrokerUnavailable(ConnectionError):
    """Could not reach the broker within the attempts or the time allowed (one-line message)."""


class PublishRefused(PermissionError):
    """The broker refused a publish (ACCESS_REFUSED): this user may not use that routing key."""
