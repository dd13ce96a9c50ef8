"""The metadata receiver: writes the JSON files of a run (dragonfly ``MDReceiver``).

The DAQ sends the run's metadata here (``cmd metadata -s write_json contents=… filename=…``) and
the snapshot service sends the sensor snapshot; both end up as files next to the run's data.

Behaviour of dragonfly v1.19.6 (dragonfly-services.md §6): ``mkdir -p`` the directory, refuse
empty contents (303) and an existing file (200), write ``json.dumps(contents, indent=4,
sort_keys=True, separators=(",", ":"))``.  Added for a lab where the receiver is reachable by
anyone on the broker: a filename must stay inside the service's ``data_directory`` (304
otherwise; relative names are taken relative to it), and the file appears atomically, so a
reader never sees half a file and two writers cannot both "win".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..dripline import Endpoint, ThrowReply
from ..dripline.memory import release_soon
from .daq import data_directory_of


class MDReceiver(Endpoint):
    """Endpoint with one command, ``write_json(contents, filename)``."""

    def __init__(self, name: str, directory_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.directory_path = directory_path

    @property
    def root(self) -> Path:
        """Where files may be written: ``directory_path`` or the service's ``data_directory``."""
        if self.directory_path:
            return Path(self.directory_path).expanduser()
        return data_directory_of(self)

    def _resolve(self, filename: str) -> Path:
        """The absolute path for ``filename``; 304 when it would leave :attr:`root`."""
        if not isinstance(filename, str) or not filename.strip():
            raise ThrowReply("service_error_bad_payload", "filename must be a non-empty string")
        root = self.root.resolve()
        path = Path(filename).expanduser()
        if not path.is_absolute():
            path = root / path
        path = path.resolve()
        if path == root or not path.is_relative_to(root):
            raise ThrowReply(
                "service_error_invalid_value",
                f"refusing to write {filename}: outside the data directory {root}",
            )
        return path

    async def write_json(self, contents: Any = None, filename: str = "") -> str:
        """Write ``contents`` as JSON to ``filename``; returns the absolute path written."""
        if contents is None or (isinstance(contents, dict | list | str) and not contents):
            raise ThrowReply("service_error_bad_payload", "no contents to write")
        path = self._resolve(filename)
        try:
            await asyncio.to_thread(write_new_file, path, contents)
        except FileExistsError:
            raise ThrowReply(
                "resource_error", f"file {path} already exists: not overwritten"
            ) from None
        except OSError as exc:
            raise ThrowReply(
                "resource_error", f"cannot write {path}: {exc.strerror or exc}"
            ) from None
        self.log.info("wrote %s", path)
        release_soon()  # a snapshot's worth of JSON is dropped with this request
        return str(path)


#: write buffer of the JSON file: the indenting encoder yields millions of small pieces
WRITE_BUFFER = 1 << 20


def write_new_file(path: Path, contents: Any) -> None:
    """Create ``path`` with ``contents`` as indented JSON, atomically, never replacing an
    existing file.

    The JSON is streamed into the file as it is encoded (``indent`` has no C encoder, and
    ``json.dumps`` holds every piece before joining them: ~300 MB extra at the peak for a
    360 000-value snapshot, against ~1 MB of buffer here; same bytes, same CPU).  It goes to a
    temporary file in the same directory, which is then hard-linked to the final name:
    ``link`` fails if the name exists, so there is no check-then-write race.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise FileExistsError(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=WRITE_BUFFER) as out:
            json.dump(contents, out, indent=4, sort_keys=True, separators=(",", ":"), default=str)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
