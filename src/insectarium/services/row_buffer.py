"""The sensor logger's buffered numeric values, held as ``COPY`` text instead of Python objects.

A value waits in the logger from its delivery until its transaction commits; during a burst that
is thousands of values at a time (up to the alert prefetch count).  As a tuple
``(endpoint_id, timestamp, value_raw, value_cal)`` each one was four small objects (the tuple, a
datetime, two floats: ~190 bytes in CPython's small-object arenas), and arenas that a burst had
filled stayed resident after it, pinned by the few objects that outlive a burst (bench/README,
"the logger's growth").  :class:`NumericRows` appends each value's row to one ``bytearray`` in
the text format ``COPY … FROM STDIN`` reads — one growing buffer, handed back to the C library as
a whole once the batch is stored — and the batch is written with a single ``Copy.write`` instead
of a ``write_row`` per value.

Rows of the other kinds (text and JSON values, rare in a lab) stay tuples written by psycopg,
which escapes them.  The conflict-tolerant and one-by-one paths (a redelivered batch, a value the
database refuses) read the rows back as tuples by iterating.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg

# one row as written: endpoint_id, timestamp (naive UTC), value_raw, value_cal
Row = tuple[int, dt.datetime, Any, Any]

NULL = b"\\N"
#: bytes handed to psycopg at a time (its own buffer size for ``write_row``)
COPY_PIECE = 32 * 1024


def copy_time(text: str, timestamp: dt.datetime) -> str:
    """``timestamp`` (parsed from the alert's header ``text``) as ``COPY`` text.

    The plain dripline form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` is passed on as its own first 26
    characters (what ``isoformat`` would give, without its cost); anything else is formatted.
    """
    if (
        len(text) == 27
        and text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
        and text[19] == "."
        and text[26] == "Z"
        and timestamp.tzinfo is None
    ):
        return text[:26]
    return timestamp.isoformat()


def _number(value: float | None) -> bytes:
    return NULL if value is None else repr(value).encode()


def _parse_number(field: bytes) -> float | None:
    return None if field == NULL else float(field)


class NumericRows:
    """Rows of a numeric data table as ``COPY`` text (tab-separated, ``\\N`` for NULL).

    Values are finite floats (the logger drops NaN and infinities), written with ``repr``,
    which PostgreSQL's ``float8`` input reads back exactly.
    """

    __slots__ = ("count", "data")

    def __init__(self) -> None:
        self.data = bytearray()
        self.count = 0

    def add(self, endpoint_id: int, stamp: str, raw: float | None, cal: float | None) -> None:
        """One row; ``stamp`` as :func:`copy_time` gives it."""
        if raw is not None and cal is not None:
            self.data += b"%d\t%s\t%r\t%r\n" % (endpoint_id, stamp.encode(), raw, cal)
        else:
            self.data += b"%d\t%s\t%s\t%s\n" % (
                endpoint_id,
                stamp.encode(),
                _number(raw),
                _number(cal),
            )
        self.count += 1

    async def copy_to(self, copy: psycopg.AsyncCopy) -> None:
        """Write the rows to a ``COPY … FROM STDIN`` in pieces of :data:`COPY_PIECE` bytes:
        libpq's output buffer grows to the largest piece and keeps that size for the
        connection's life (psycopg passes up to 128 KiB at once)."""
        with memoryview(self.data) as view:
            for start in range(0, len(view), COPY_PIECE):
                await copy.write(view[start : start + COPY_PIECE])

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Row]:
        """The rows as tuples (for the paths that cannot use ``COPY``)."""
        for line in bytes(self.data).splitlines():
            endpoint_id, stamp, raw, cal = line.split(b"\t")
            yield (
                int(endpoint_id),
                dt.datetime.fromisoformat(stamp.decode()),
                _parse_number(raw),
                _parse_number(cal),
            )
