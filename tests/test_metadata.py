"""The metadata receiver (``write_json``) on a real broker, writing into a temporary directory."""

from __future__ import annotations

import json

import pytest

from insectarium.dripline import ReplyError
from insectarium.services.daq import DAQService
from insectarium.services.metadata import MDReceiver, write_new_file

from .runtime_support import running, unique


@pytest.fixture
async def receiver(mesh, auth, tmp_path):
    data = tmp_path / "data"
    name = unique("md_svc")
    svc = DAQService(
        name,
        data_directory=str(data),
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    md = MDReceiver(f"{name}_metadata")
    svc.add_endpoint(md)
    async with running(svc):
        yield md.name, data


async def test_write_json_creates_directories_and_sorts_keys(receiver, client) -> None:
    name, data = receiver
    target = data / "000yyyxxx" / "000000xxx" / "000000042" / "rid000000042_meta.json"
    contents = {"run_id": 42, "DAQ": "generic_daq", "peaches": 1.5}
    written = await client.cmd(
        name, "write_json", [], {"contents": contents, "filename": str(target)}
    )
    assert written == str(target)
    text = target.read_text()
    assert json.loads(text) == contents
    assert text.startswith('{\n    "DAQ":"generic_daq",\n    "peaches":1.5,\n    "run_id":42\n}')
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left


async def test_relative_filename_goes_under_data_directory(receiver, client) -> None:
    name, data = receiver
    await client.cmd(name, "write_json", [{"a": 1}, "sub/dir/file.json"])
    assert json.loads((data / "sub/dir/file.json").read_text()) == {"a": 1}


async def test_existing_file_is_refused_and_kept(receiver, client) -> None:
    name, data = receiver
    await client.cmd(name, "write_json", [], {"contents": {"v": 1}, "filename": "x.json"})
    with pytest.raises(ReplyError) as err:
        await client.cmd(name, "write_json", [], {"contents": {"v": 2}, "filename": "x.json"})
    assert err.value.return_code.value == 200
    assert json.loads((data / "x.json").read_text()) == {"v": 1}


@pytest.mark.parametrize("contents", [None, {}, [], ""])
async def test_empty_contents_are_refused(receiver, client, contents) -> None:
    name, data = receiver
    with pytest.raises(ReplyError) as err:
        await client.cmd(name, "write_json", [], {"contents": contents, "filename": "e.json"})
    assert err.value.return_code.value == 303
    assert not (data / "e.json").exists()


@pytest.mark.parametrize(
    "filename", ["../escape.json", "/tmp/escape_{u}.json", "a/../../b.json", "."]
)
async def test_paths_outside_the_data_directory_are_refused(receiver, client, filename) -> None:
    from pathlib import Path

    name, data = receiver
    filename = filename.format(u=unique("x"))
    with pytest.raises(ReplyError) as err:
        await client.cmd(name, "write_json", [], {"contents": {"a": 1}, "filename": filename})
    assert err.value.return_code.value == 304
    if filename.startswith("/"):
        assert not Path(filename).exists()  # noqa: ASYNC240
    assert not (data.parent / "escape.json").exists()
    assert not (data.parent / "b.json").exists()


async def test_symlink_out_of_the_data_directory_is_refused(receiver, client, tmp_path) -> None:
    name, data = receiver
    outside = tmp_path / "outside"
    outside.mkdir()
    data.mkdir(parents=True, exist_ok=True)
    (data / "link").symlink_to(outside)
    with pytest.raises(ReplyError) as err:
        await client.cmd(name, "write_json", [{"a": 1}, "link/f.json"])
    assert err.value.return_code.value == 304
    assert not (outside / "f.json").exists()


def test_streamed_file_is_byte_identical_to_the_indented_dump(tmp_path) -> None:
    """The file is encoded as it is written (no whole-document string in memory): the bytes
    must be what ``json.dumps(indent=4, sort_keys=True)`` gave, for every kind of value."""
    point = {"timestamp": "2026-03-01T12:00:00.000000Z", "value_raw": 0.1 + 0.2, "value_cal": None}
    contents = {
        "b": [point] * 3000,  # several write buffers' worth
        "a": {"nan": float("nan"), "inf": float("-inf"), "s": "grüße \ud800 \x01", "n": [1, []]},
    }
    path = tmp_path / "d" / "x_snapshot.json"
    write_new_file(path, contents)
    expected = json.dumps(contents, indent=4, sort_keys=True, separators=(",", ":")) + "\n"
    assert path.read_bytes() == expected.encode("utf-8")
    with pytest.raises(FileExistsError):
        write_new_file(path, {"other": 1})
    assert path.read_bytes() == expected.encode("utf-8")
