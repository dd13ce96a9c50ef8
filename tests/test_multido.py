"""MultiGet / MultiDo / MultiSet against key-value stores on a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from insectarium.dripline import Endpoint, MsgOp, ReplyError, Service, ThrowReply
from insectarium.services.kv_store import KeyValueStore
from insectarium.services.multido import (
    MultiDo,
    MultiGet,
    MultiSet,
    Target,
    check_value,
    tolerance_for,
)

from .runtime_support import running, unique


class Slow(Endpoint):
    """Answers get after a delay, so that it finishes last when read concurrently."""

    def __init__(self, name: str, delay: float, value: Any) -> None:
        super().__init__(name)
        self.delay, self.value = delay, value

    async def on_get(self) -> Any:
        await asyncio.sleep(self.delay)
        return {"value_raw": self.value, "value_cal": self.value}


class Broken(Endpoint):
    def on_get(self) -> Any:
        raise ThrowReply("service_error_invalid_value", "sensor unplugged")


@pytest.fixture
async def stores(mesh, auth):
    """A kv service (peaches, chips, waffles, cheese, slow, broken) under unique names."""
    p = unique("md")
    names = {k: f"{p}_{k}" for k in ("peaches", "chips", "waffles", "cheese", "slow", "broken")}
    svc = Service(p, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(
        KeyValueStore(names["peaches"], initial_value=0.75, calibration="2*{}", get_on_set=True)
    )
    svc.add_endpoint(KeyValueStore(names["chips"], initial_value=1.5, calibration="times3({})"))
    svc.add_endpoint(KeyValueStore(names["waffles"], initial_value=4.0, calibration="{} + 273.15"))
    svc.add_endpoint(KeyValueStore(names["cheese"], initial_value="gouda"))
    svc.add_endpoint(Slow(names["slow"], 0.3, 42))
    svc.add_endpoint(Broken(names["broken"]))
    async with running(svc):
        yield names


@pytest.fixture
async def host(mesh, auth):
    """Start a service hosting the given multi-endpoints (they reach the stores over the broker).

    Endpoints are bound when a service starts, so each test hands its endpoints over first.
    """
    started: list[Service] = []

    async def start(*endpoints: Endpoint) -> Service:
        svc = Service(
            unique("mdhost"), dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0
        )
        for endpoint in endpoints:
            svc.add_endpoint(endpoint)
        await svc.start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        await svc.stop()


async def test_multiget_reports_every_target_in_order_and_survives_failures(
    stores, host, client
) -> None:
    missing = unique("nosuch")
    mg = MultiGet(
        unique("run_metadata"),
        targets=[
            {"target": stores["slow"], "payload_field": "value_raw"},
            {"target": stores["peaches"], "payload_field": "value_cal", "units": "$"},
            {"target": stores["chips"], "payload_field": "value_raw"},
            {"target": stores["broken"]},
            {"target": stores["waffles"], "payload_field": "value_raw", "formatter": "w={}"},
            {"target": stores["cheese"], "payload_field": "value_raw"},
            {"target": stores["cheese"] + ".initial_value_nope"},
            {"target": missing},
            {"target": stores["cheese"], "payload_field": "value_cal"},
        ],
        get_timeout_s=5,
    )
    await host(mg)
    reply = await client.get(mg.name)
    raw = reply["value_raw"]
    # order is configuration order even though the slow target answered last
    assert next(iter(raw)) == stores["slow"]
    assert raw[stores["slow"]] == 42
    assert raw[stores["peaches"]] == 1.5
    assert raw[stores["chips"]] == 1.5
    assert raw[stores["broken"]] is None
    assert raw[stores["waffles"]] == 4.0
    assert raw[missing] is None
    lines = reply["value_cal"].split("\n")
    assert lines[0] == f"{stores['slow']} -> 42"
    assert lines[1] == f"{stores['peaches']} -> 1.5 [$]"
    assert lines[2] == f"{stores['chips']} -> 1.5"
    assert lines[3] == f"{stores['broken']} -> returned error <304>:sensor unplugged"
    assert lines[4] == "w=4.0"
    assert lines[6].startswith(f"{stores['cheese']}.initial_value_nope -> returned error <310>:")
    assert lines[7].startswith(f"{missing} -> returned error <403>:")
    # a string entity has no value_cal: dragonfly's KeyError line
    assert lines[8] == (
        f"{stores['cheese']} -> returned error <KeyError>:value_cal not in ['value_raw']"
    )
    # cheese appears three times as a key; the last read wins, as with dragonfly's dict
    assert stores["cheese"] in raw


async def test_multiget_refuses_set(stores, host, client) -> None:
    mg = MultiGet(unique("mg"), targets=[{"target": stores["peaches"]}])
    await host(mg)
    reply = await client.request(mg.name, MsgOp.SET, {"values": [1]})
    assert reply.return_code == 306


async def test_multido_sets_and_checks(stores, host, client) -> None:
    md = MultiDo(
        unique("kv_multido"),
        targets=[
            {"target": stores["peaches"], "payload_field": "value_raw", "tolerance": "1%"},
            {"target": stores["chips"], "payload_field": "value_raw", "default_set": 2.5},
            {"target": stores["waffles"], "get_only": True},
        ],
    )
    await host(md)
    assert await client.set(md.name, 1.25) == "set and check successful"
    assert (await client.get(stores["peaches"]))["value_raw"] == 1.25
    assert (await client.get(stores["chips"]))["value_raw"] == 2.5  # default_set wins
    assert (await client.get(stores["waffles"]))["value_raw"] == 4.0  # get_only: untouched
    got = await client.get(md.name)
    assert got["value_raw"] == {
        stores["peaches"]: 1.25,
        stores["chips"]: 2.5,
        stores["waffles"]: 277.15,
    }


async def test_multido_tolerance_mismatch_is_304_and_stops(stores, host, client) -> None:
    # value_cal of peaches is 2*raw, so checking value_cal against the set value must fail
    md = MultiDo(
        unique("kv_multido"),
        targets=[
            {"target": stores["peaches"], "check_field": "value_cal", "tolerance": 0.1},
            {"target": stores["chips"], "payload_field": "value_raw"},
        ],
    )
    await host(md)
    with pytest.raises(ReplyError) as err:
        await client.set(md.name, 5)
    assert err.value.return_code.value == 304
    assert "NOT included" in err.value.message
    assert (await client.get(stores["peaches"]))["value_raw"] == 5
    assert (await client.get(stores["chips"]))["value_raw"] == 1.5  # not reached


async def test_multido_check_against_other_endpoint_and_target_value(stores, host, client) -> None:
    md = MultiDo(
        unique("md"),
        targets=[
            {
                "target": stores["cheese"],
                "get_target": stores["chips"],
                "check_field": "value_raw",
                "target_value": 1.5,
            }
        ],
    )
    await host(md)
    assert await client.set(md.name, "brie") == "set and check successful"
    assert (await client.get(stores["cheese"]))["value_raw"] == "brie"


async def test_multiset_sets_without_checking_and_refuses_get(stores, host, client) -> None:
    ms = MultiSet(
        unique("ms"),
        targets=[{"target": stores["peaches"], "check_field": "value_cal", "tolerance": 0.001}],
    )
    await host(ms)
    assert await client.set(ms.name, 7) == "set and check successful"  # no check: no 304
    assert (await client.get(stores["peaches"]))["value_raw"] == 7
    assert (await client.request(ms.name, MsgOp.GET, {})).return_code == 306


async def test_set_condition_dict_applies_a_set(stores, host, client) -> None:
    md = MultiDo(
        unique("md"),
        targets=[{"target": stores["chips"], "payload_field": "value_raw"}],
        set_condition_dict={10: 0},
    )
    await host(md)
    reply = await client.request(md.name, MsgOp.CMD, {"values": [10]}, specifier="set_condition")
    assert reply.return_code == 0, reply.return_message
    assert (await client.get(stores["chips"]))["value_raw"] == 0
    other = await client.request(md.name, MsgOp.CMD, {"values": [3]}, specifier="set_condition")
    assert other.return_message.startswith("No action taken")
    # the hook itself is not a command
    hook = await client.request(md.name, MsgOp.CMD, {"values": [10]}, specifier="on_set_condition")
    assert hook.return_code == 306


@pytest.mark.parametrize(
    ("got", "expected", "tolerance", "ok"),
    [
        (1.0, 1.5, 0.99, True),
        (1.0, 2.5, 0.99, False),
        (10.0, 10.4, "5%", True),
        (10.0, 11.0, "5%", False),
        (5.0, 5.9, 0, True),  # dl2: a tolerance of 0 means 1
        ("5.0", 5, 0.1, True),
        ("on", "enabled", 0.99, True),
        ("off", True, 0.99, False),
        ("gouda", "gouda", 0.99, True),
        ("gouda", "brie", 0.99, False),
        (True, True, 0.99, True),
        (True, 1, 0.99, False),  # booleans are not numbers
        ([1, 2], [1, 2], 0.99, True),
    ],
)
def test_check_rules(got: Any, expected: Any, tolerance: Any, ok: bool) -> None:
    target = Target(target="x", tolerance=tolerance)
    if ok:
        check_value(target, got, expected)
    else:
        with pytest.raises(ThrowReply) as err:
            check_value(target, got, expected)
        assert err.value.return_code.value == 304


def test_tolerance_forms() -> None:
    assert tolerance_for(0.5, 10) == 0.5
    assert tolerance_for("0.25", 10) == 0.25
    assert tolerance_for("10%", -20) == 2.0
    assert tolerance_for(0, 3) == 1.0


@pytest.mark.parametrize(
    "targets",
    [
        [],
        [{"payload_field": "value_raw"}],
        [{"target": "a", "units": "K", "formatter": "{}"}],
        [{"target": "a", "tolerence": 1}],
        [{"target": "a", "tolerance": "lots"}],
        [{"target": "a", "delay_check": -1}],
    ],
)
def test_bad_target_configs_are_refused(targets: list[Any]) -> None:
    with pytest.raises(ValueError):
        MultiDo("md", targets=targets)


def test_lab_config_builds() -> None:
    from pathlib import Path

    from insectarium.dripline.config import load_file
    from insectarium.dripline.factory import create_service

    cfg = load_file(Path(__file__).resolve().parents[1] / "files/configs/status_multigets.yaml")
    svc = create_service(cfg, source="status_multigets.yaml")
    assert svc.name == "not-status_multido"
    assert svc.sync_children["run_metadata"].target_names == [
        "peaches",
        "chips",
        "waffles",
        "cheese",
    ]
    assert isinstance(svc.sync_children["kv_multido"], MultiDo)
