"""The yardsticks our services are measured against, written as simply as honest code allows.

* a raw aio-pika RPC echo: server (its own process, like a dripline service) and client (one kept
  connection, one exclusive reply queue, replies matched by correlation id) — what any AMQP
  request/reply costs on this broker, without dripline's headers, routing and dispatch;
* a naive sensor logger: one INSERT through the ``numeric_data`` trigger view and one transaction
  per alert — what the lab would get without batching;
* raw consumers (pika, aiormq, aio-pika): drain a queue of the same alerts with the logger's
  prefetch and one ``multiple`` ack per :data:`RAW_ACK_EVERY` messages, no database — the cheapest
  any Python logger could receive them.

Run the servers as processes: ``python -m bench.baselines echo-server`` (or ``naive-logger``,
``raw-pika`` …); they read ``BENCH_AMQP_URL`` / ``BENCH_PG_DSN`` from
the environment (never a password on a command line) and print a ready line once consuming.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

ECHO_QUEUE = "bench_raw_echo"
ECHO_READY = "raw echo ready"
NAIVE_QUEUE = "bench_naive_alerts"
NAIVE_READY = "naive logger ready"
RAW_CONSUMERS = ("pika", "aiormq", "aio-pika")
RAW_READY = "raw consumer ready"
RAW_ACK_EVERY = 2000
#: the logger's alert_prefetch_count (files/configs/slow_control_table.yaml)
RAW_PREFETCH = 10000


# --------------------------------------------------------------------------- raw RPC
async def echo_server(url: str, prefetch: int = 32) -> None:
    """Reply to every message on :data:`ECHO_QUEUE` with its own body, concurrently."""
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(ECHO_QUEUE, exclusive=True, auto_delete=True)
    exchange = channel.default_exchange

    async def on_message(message: AbstractIncomingMessage) -> None:
        headers = None
        if message.headers:
            # dripline-shaped (rpc benchmark): answer with a reply's headers, as any raw server
            # speaking the protocol must (decoded and re-encoded, nested sender_info included)
            headers = {**message.headers, "message_type": 2, "return_code": 0}
            headers["return_message"] = ""
        reply = aio_pika.Message(
            body=message.body,
            headers=headers,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            content_type="application/json",
        )
        await exchange.publish(reply, routing_key=message.reply_to or "")
        await message.ack()

    await queue.consume(on_message)
    print(ECHO_READY, flush=True)
    await _wait_for_signal()
    await connection.close()


class RawRpcClient:
    """One connection, one exclusive reply queue, futures keyed by correlation id."""

    def __init__(self, url: str, target: str = ECHO_QUEUE) -> None:
        self.url = url
        self.target = target
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    async def start(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)
        self.channel = await self.connection.channel()
        self.reply_queue = await self.channel.declare_queue(
            f"bench_raw_reply_{uuid.uuid4().hex}", exclusive=True, auto_delete=True
        )
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(
        self, body: bytes, timeout_s: float = 10.0, headers: dict[str, Any] | None = None
    ) -> bytes:
        """One request/reply; with ``headers`` (a dripline request's, as :func:`shaped_headers`
        makes them) the message has dripline's shape: a fresh timestamp and a chunk message id."""
        cid = str(uuid.uuid4())
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = future
        message_id = None
        if headers is not None:
            import datetime as dt

            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            headers = {**headers, "timestamp": stamp}
            message_id = f"{uuid.uuid4()}/0/1"
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body=body,
                headers=headers,
                correlation_id=cid,
                message_id=message_id,
                reply_to=self.reply_queue.name,
                content_type="application/json",
            ),
            routing_key=self.target,
        )
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(cid, None)

    async def close(self) -> None:
        await self.connection.close()


def shaped_headers(target: str = "peaches") -> dict[str, Any]:
    """The headers of a dripline ``get`` exactly as our codec writes them (``'i'`` integers,
    the nested ``sender_info`` table): the raw client then sends dripline's bytes."""
    from insectarium.dripline.constants import MsgOp
    from insectarium.dripline.message import Message, headers_of

    return headers_of(Message.request(target, MsgOp.GET, {}, sender="bench"))


# --------------------------------------------------------------------------- naive logger
async def naive_logger(url: str, dsn: str, alerts_exchange: str = "alerts") -> None:
    """One alert → one INSERT into the trigger view → one commit → ack; strictly in order."""
    import json

    import psycopg

    from insectarium.dripline.message import parse_timestamp

    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)
    exchange = await channel.declare_exchange(
        alerts_exchange, aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=False
    )
    queue = await channel.declare_queue(NAIVE_QUEUE, durable=False, auto_delete=False)
    await queue.bind(exchange, routing_key="sensor_value.#")
    sql = (
        'INSERT INTO numeric_data (endpoint_name, "timestamp", value_raw, value_cal) '
        "VALUES (%s, %s, %s, %s)"
    )

    async def consume() -> None:
        async with queue.iterator() as messages:
            print(NAIVE_READY, flush=True)
            async for message in messages:
                name = (message.routing_key or "").split(".", 1)[-1]
                stamp = parse_timestamp(str(message.headers["timestamp"])).replace(tzinfo=None)
                payload = json.loads(message.body)
                try:
                    await db.execute(
                        sql, (name, stamp, payload.get("value_raw"), payload.get("value_cal"))
                    )
                except psycopg.Error as exc:
                    print(f"insert failed for {name}: {exc}", file=sys.stderr, flush=True)
                await message.ack()

    task = asyncio.create_task(consume())
    await _wait_for_signal()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await connection.close()
    await db.close()


# --------------------------------------------------------------------------- raw consumers
class _Clock:
    """Wall and CPU time from the first delivery to the ``expect``-th (then a JSON line)."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.n = 0
        self.t0 = self.c0 = 0.0

    def tick(self) -> bool:
        """Count one delivery; ``True`` once ``expect`` have arrived."""
        import time

        if self.n == 0:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.n += 1
        if self.n < self.expect:
            return False
        import json

        seconds = time.perf_counter() - self.t0
        cpu = time.process_time() - self.c0
        print(json.dumps({"n": self.n, "seconds": seconds, "cpu_s": cpu}), flush=True)
        return True


def raw_pika(url: str, queue: str, expect: int) -> None:
    import pika

    clock = _Clock(expect)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=RAW_PREFETCH)

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        done = clock.tick()
        if done or clock.n % RAW_ACK_EVERY == 0:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if done:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    print(RAW_READY, flush=True)
    channel.start_consuming()
    connection.close()


async def raw_aiormq(url: str, queue: str, expect: int) -> None:
    import aiormq

    clock = _Clock(expect)
    finished = asyncio.Event()
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=RAW_PREFETCH)

    async def on_message(message: Any) -> None:
        done = clock.tick()
        if done or clock.n % RAW_ACK_EVERY == 0:
            await channel.basic_ack(message.delivery.delivery_tag, multiple=True)
        if done:
            finished.set()

    await channel.basic_consume(queue, on_message)
    print(RAW_READY, flush=True)
    await finished.wait()
    await connection.close()


async def raw_aio_pika(url: str, queue: str, expect: int) -> None:
    clock = _Clock(expect)
    finished = asyncio.Event()
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=RAW_PREFETCH)
    declared = await channel.declare_queue(queue, passive=True)

    async def on_message(message: AbstractIncomingMessage) -> None:
        done = clock.tick()
        if done or clock.n % RAW_ACK_EVERY == 0:
            await message.ack(multiple=True)
        if done:
            finished.set()

    await declared.consume(on_message)
    print(RAW_READY, flush=True)
    await finished.wait()
    await connection.close()


# --------------------------------------------------------------------------- CLI
async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument(
        "what", choices=["echo-server", "naive-logger", *(f"raw-{c}" for c in RAW_CONSUMERS)]
    )
    parser.add_argument("--queue", help="raw consumers: the queue to drain")
    parser.add_argument("--expect", type=int, default=0, help="raw consumers: messages to drain")
    args = parser.parse_args(argv)
    url = os.environ["BENCH_AMQP_URL"]
    if args.what == "raw-pika":
        raw_pika(url, args.queue, args.expect)
    elif args.what == "raw-aiormq":
        asyncio.run(raw_aiormq(url, args.queue, args.expect))
    elif args.what == "raw-aio-pika":
        asyncio.run(raw_aio_pika(url, args.queue, args.expect))
    elif args.what == "echo-server":
        asyncio.run(echo_server(url))
    else:
        asyncio.run(naive_logger(url, os.environ["BENCH_PG_DSN"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
