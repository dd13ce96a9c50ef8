"""Broker-level errors a client reports, shared by the async runtime and the one-shot client.

They live apart from :mod:`.connection` (aio-pika) so that :mod:`.oneshot` raises the very same
classes without importing the async stack; :mod:`.connection` re-exports them.
"""

from __future__ import annotations

from typing import Any


class UnroutableError(Exception):
    """The broker returned a mandatory message: nothing is bound to its routing key."""


class NotConnected(ConnectionError):
    """The broker connection is down for now; the robust connection is re-establishing it."""


class BrokerUnavailable(ConnectionError):
    """Could not reach the broker within the attempts or the time allowed (one-line message)."""


class PublishRefused(PermissionError):
    """The broker refused a publish (ACCESS_REFUSED): this user may not use that routing key."""


# The one-line messages both clients give when connecting fails (same words for dl-agent,
# dragonfly, dl-mon and the services).


def credentials_refused(url: str, username: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"broker {url} refused the credentials of user {username!r}")


def broker_not_verified(url: str, unverified: Any, ca_file: str | None) -> BrokerUnavailable:
    """Retrying cannot help: the broker's certificate is not one we trust."""
    return BrokerUnavailable(
        f"TLS: cannot verify broker {url}: {unverified.verify_message} "
        f"(CA file: {ca_file or 'system default'})"
    )


def broker_unreachable(url: str, why: str, attempts: int, elapsed_s: float) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"cannot reach broker {url}: {why} "
        f"({attempts} attempt{'s' if attempts > 1 else ''} in {elapsed_s:.1f} s)"
    )


def exchanges_refused(url: str, username: str, text: str) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"broker {url} does not let user {username!r} use the dripline exchanges: {text}"
    )


def cert_verification_error(exc: BaseException) -> Any:
    """The certificate check failure behind a connection error (aiormq and ssl wrap it), if
    any: an ``ssl.SSLCertVerificationError`` or ``None``."""
    import ssl  # here, not at import: the one-shot client loads ssl only for TLS

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
