"""Request round trip: ``get peaches`` on not-glenlivet through our Interface vs a raw aio-pika RPC.

Both servers run as their own processes on the same broker; both clients live in this process,
one kept connection and one reply queue each.  Repetitions alternate raw/ours so slow drifts of a
shared machine hit both alike; the verdicts compare ratios of the same run, never absolute figures
from elsewhere.  Also ``dl-agent get peaches`` as a whole process (start-up included).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .baselines import ECHO_READY, RawRpcClient
from .env import Environment, NotRunnable, ServiceProcess
from .results import Report, Row, at_least, at_most, percentile

Call = Callable[[], Awaitable[object]]
RAW_BODY = b'{"value_raw":0.75,"value_cal":1.5}'


@dataclass
class Sizes:
    repeat: int
    warmup: int
    sequential: int
    concurrent: int
    in_flight: int
    agent_runs: int


def sizes(quick: bool, repeat: int | None) -> Sizes:
    if quick:
        return Sizes(repeat or 2, 20, 100, 300, 16, 2)
    return Sizes(repeat or 5, 50, 300, 1000, 16, 10)


async def sequential(call: Call, n: int) -> list[float]:
    """Latencies (ms) of ``n`` calls, one at a time."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def concurrent(call: Call, n: int, in_flight: int) -> tuple[float, list[float]]:
    """Throughput (calls/s) and latencies (ms) of ``n`` calls with ``in_flight`` outstanding."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - t0), latencies


async def _measure(
    env: Environment, sz: Sizes, servers: dict[str, ServiceProcess]
) -> dict[str, dict[str, list[float]]]:
    from insectarium.dripline import Interface

    assert env.broker is not None
    iface = Interface(
        dripline_mesh=env.broker.mesh(),
        username=env.broker.user,
        password=env.broker.password,
        name="bench",
    )
    raw = RawRpcClient(env.broker.url)
    await iface.start()
    await raw.start()

    async def ours() -> object:
        value = await iface.get("peaches")
        if value is None:
            raise RuntimeError("get peaches returned nothing")
        return value

    async def baseline() -> object:
        return await raw.call(RAW_BODY)

    calls: dict[str, Call] = {"raw": baseline, "ours": ours}
    figures: dict[str, dict[str, list[float]]] = {
        k: {"p50": [], "p99": [], "rps": [], "p50_loaded": [], "server_cpu": [], "client_cpu": []}
        for k in calls
    }
    try:
        for _ in range(sz.repeat):
            for name, call in calls.items():
                await sequential(call, sz.warmup)
                server0, client0 = servers[name].cpu_s(), time.process_time()
                lat = await sequential(call, sz.sequential)
                rps, loaded = await concurrent(call, sz.concurrent, sz.in_flight)
                server1, client1 = servers[name].cpu_s(), time.process_time()
                f = figures[name]
                calls_made = sz.sequential + sz.concurrent
                if server0 is not None and server1 is not None:
                    f["server_cpu"].append((server1 - server0) / calls_made * 1e6)
                f["client_cpu"].append((client1 - client0) / calls_made * 1e6)
                f["p50"].append(percentile(lat, 50))
                f["p99"].append(percentile(lat, 99))
                f["rps"].append(rps)
                f["p50_loaded"].append(percentile(loaded, 50))
    finally:
        await iface.close()
        await raw.close()
    return figures


def run(env: Environment, report: Report, quick: bool, repeat: int | None) -> None:
    sz = sizes(quick, repeat)
    kv = ServiceProcess.dl_serve(env, "not-glenlivet", "kv_store_tutorial.yaml")
    echo = ServiceProcess.baseline(env, "echo-server", ECHO_READY)
    try:
        kv.start()
        echo.start()
        figures = asyncio.run(_measure(env, sz, {"raw": echo, "ours": kv}))
        kv.phase = f"{sz.repeat * (sz.warmup + sz.sequential + sz.concurrent)} gets"
        kv.rss()
        echo.stop()
        agent_rows = run_agent(env, sz)
    finally:
        echo.stop()
        kv.stop()
    raw, ours = figures["raw"], figures["ours"]
    b = "request round trip"
    n = f"{sz.sequential} sequential gets"
    report.add(Row(b, "raw aio-pika p50", "ms", raw["p50"], note=n, digits=2))
    report.add(Row(b, "ours p50", "ms", ours["p50"], note=n, digits=2))
    report.add(Row(b, "raw aio-pika p99", "ms", raw["p99"], digits=2))
    report.add(Row(b, "ours p99", "ms", ours["p99"], digits=2))
    report.add(
        Row(
            b,
            "p50 ours / raw",
            "x",
            [o / r for o, r in zip(ours["p50"], raw["p50"], strict=True)],
            at_most(1.5, "<= 1.5x"),
            note="per repetition",
            digits=2,
        )
    )
    c = f"{sz.concurrent} gets, {sz.in_flight} in flight"
    report.add(Row(b, "raw aio-pika throughput", "req/s", raw["rps"], note=c, digits=0))
    report.add(Row(b, "ours throughput", "req/s", ours["rps"], note=c, digits=0))
    report.add(Row(b, "ours p50 under load", "ms", ours["p50_loaded"], note=c, digits=1))
    report.add(
        Row(
            b,
            "throughput ours / raw",
            "%",
            [100 * o / r for o, r in zip(ours["rps"], raw["rps"], strict=True)],
            at_least(70, ">= 70 %"),
            note="per repetition",
            digits=0,
        )
    )
    cpu = "user+sys CPU per request, sequential and concurrent phases"
    report.add(Row(b, "raw server CPU", "us", raw["server_cpu"], note=cpu, digits=0))
    report.add(Row(b, "ours server CPU", "us", ours["server_cpu"], note=cpu, digits=0))
    report.add(Row(b, "raw client CPU", "us", raw["client_cpu"], note=cpu, digits=0))
    report.add(Row(b, "ours client CPU", "us", ours["client_cpu"], note=cpu, digits=0))
    for row in agent_rows:
        report.add(row)


def run_agent(env: Environment, sz: Sizes) -> list[Row]:
    """``dl-agent get peaches`` as a whole process, hyperfine-style (1 warm-up, N timed runs)."""
    agent = env.tool("dl-agent")
    times: list[float] = []
    bare: list[float] = []
    for i in range(sz.agent_runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(
            [agent, "get", "peaches"],
            check=False,
            capture_output=True,
            text=True,
            env=env.child_env(),
            timeout=60,
        )
        elapsed = (time.perf_counter() - t0) * 1000
        if out.returncode != 0:
            raise NotRunnable(f"dl-agent get peaches failed ({out.returncode}): {out.stderr}")
        if i:
            times.append(elapsed)
    for _ in range(sz.agent_runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env.child_env())
        bare.append((time.perf_counter() - t0) * 1000)
    b = "dl-agent get peaches"
    extra = statistics.median(times) - statistics.median(bare)
    return [
        Row(b, "whole process", "ms", times, note=f"{len(times)} runs after 1 warm-up"),
        Row(
            b,
            "python -c pass",
            "ms",
            bare,
            note=f"interpreter start-up alone; the agent costs {extra:.0f} ms more",
        ),
    ]
