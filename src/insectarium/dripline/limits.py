"""Every size a peer, a user or an outage controls, bounded in one place.

A dripline process reads whatever the broker hands it: message ids, header text, bodies of any
size, chunk sets that never complete, calibration input.  Each bound below names what it limits;
together they keep one message from exhausting a service's memory, blocking its event loop or
making the broker close its connection (a header larger than the broker's ``frame_max``, 128 kB
by default, closes the whole connection with ``frame_too_large``).

Checks against these numbers sit on hot paths: they are length comparisons, never a parse.
The ones marked *configurable* have a default here and a setting elsewhere (named in the text).
"""

from __future__ import annotations

MAX_HEADER_TEXT = 1024
"""Characters of request-derived text a reply header may carry (``return_message``), and of
peer-controlled text in one log line; longer text is cut and marked (:func:`clip`)."""

MAX_HEADER_FIELD = 32 * 1024
"""Characters of one text header we send (a request's ``specifier``): far below ``frame_max``,
far above any real specifier.  A longer one is refused before it reaches the broker."""

MAX_ECHO_BYTES = 4096
"""Characters of an undecodable body echoed back in a 302 reply's ``invalid`` field."""

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Bytes of one (reassembled) message a receiver accepts.  *Configurable*:
``dripline_mesh.max_message_size``.  A message id announcing more chunks than fit
(``total * max_payload_size``) is answered 302 at once, before anything is allocated."""

MAX_PENDING_MESSAGES = 256
"""Incomplete chunk sets one receiver holds at a time; beyond it the oldest is dropped."""

MAX_PENDING_BYTES = DEFAULT_MAX_MESSAGE_SIZE
"""Bytes of chunks one receiver holds for incomplete messages; beyond it the oldest is dropped.
Raised to ``max_message_size`` when that is configured larger, so one message always fits."""

MAX_CALIBRATION_EXPRESSION = 2000
"""Characters of a calibration expression after the raw value is formatted into it."""

MAX_CALIBRATION_NODES = 400
"""Syntax-tree nodes of one calibration expression (bounds evaluation work and recursion)."""

MAX_CALIBRATION_INT_BITS = 4096
"""Bits of an integer a calibration may compute (``9**999`` needs 3170): bounds the cost of
``**`` and ``*`` on integers, which Python would otherwise carry to millions of digits."""

MAX_CALIBRATION_SEQUENCE = 100_000
"""Items of a string or list a calibration may build with ``*``."""

MAX_INTERVAL_S = 366 * 24 * 3600.0
"""Longest interval or duration (``log_interval``, ``max_interval``, a run's length), seconds."""

MIN_LOG_INTERVAL_S = 0.05
"""Shortest scheduled-logging interval: ``set <entity> -s log_interval 0.0001`` would make the
service publish ten thousand alerts a second."""

SCHEDULED_ALERTS_IN_FLIGHT = 64
"""Scheduled values of one entity whose publish is still waiting for the broker's confirm; the
logging loop goes on ticking up to this many (a broker that shuts down holds confirms for
seconds), then waits for one to finish."""

CHUNKS_IN_FLIGHT = 64
"""Chunks of one large message published before their confirms are awaited: one broker round
trip per window instead of per chunk (a 32 MB snapshot is 3 200 chunks of 10 kB)."""

MAX_NAME_LENGTH = 255
"""Characters of a name a request gives (a run name); names are indexed and shown in tables."""

MAX_TRACKED_NAMES = 100
"""Distinct names a service keeps per-name bookkeeping for (the logger's unknown endpoints);
further names are counted together."""

ALERT_BUFFER_MESSAGES = 10_000
"""Alerts a service keeps while the broker is away (*configurable*: ``alert_buffer_messages``)."""

ALERT_BUFFER_BYTES = 16 * 1024 * 1024
"""Bytes of alert payloads kept while the broker is away (*configurable*:
``alert_buffer_bytes``); beyond either bound the oldest alert is dropped and counted."""

REPORT_INTERVAL_S = 60.0
"""Repeated events (drops, a broker still away) are logged at most once per this interval."""

REBIND_INTERVAL_S = 15.0
"""How often a consumer binds its queues again: deleting an exchange drops every binding to it,
and the broker tells no consumer (services, clients, the logger and ``dl-mon`` do this)."""


def clip(text: str, limit: int = MAX_HEADER_TEXT) -> str:
    """``text`` in at most ``limit`` characters, saying how much was cut (cheap when it fits;
    clipping clipped text changes nothing)."""
    if len(text) <= limit:
        return text
    kept = max(0, limit - 40)  # room for the marker
    return f"{text[:kept]}… [{len(text) - kept} characters cut]"
