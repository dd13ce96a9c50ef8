"""The alert feed's thread reads only so far ahead of a busy loop (dripline/alert_feed.py).

Deliveries the loop has not taken yet are whole Python objects (~0.8 kB each); with a prefetch
of 10 000 the thread could hold thousands of them while the loop was busy writing a batch, and
the memory they took stayed with the process after the burst.  The rest of the prefetch window
must wait in the socket, and nothing may be lost or reordered by waiting.
"""

from __future__ import annotations

import asyncio
import time

import pika

from insectarium.dripline import alert_feed
from insectarium.dripline.alert_feed import AlertFeed, FeedDelivery, connection_parameters

from .runtime_support import auth_for, eventually, mesh_for, unique

N = 3000
#: the size of a dripline alert with its headers, about
SIZE = 500
#: what one ``process_data_events`` of pika's reads (a few 4 kB reads) may add beyond the bound
SLACK = 100


async def test_a_busy_loop_is_not_read_ahead_of_by_more_than_the_bound(amqp_url: str) -> None:
    queue = unique("read_ahead")
    parameters = connection_parameters(
        mesh_for(amqp_url), auth_for(amqp_url).dripline, "test read-ahead"
    )
    setup = pika.BlockingConnection(parameters)
    channel = setup.channel()
    channel.queue_declare(queue, auto_delete=False)
    try:
        for i in range(N):
            channel.basic_publish("", queue, str(i).encode().ljust(SIZE))
        got: list[FeedDelivery] = []
        feed = AlertFeed(
            parameters,
            queue,
            prefetch=N,  # the broker would hand over everything at once
            deliver=got.extend,
            loop=asyncio.get_running_loop(),
        )
        feed.start()
        try:
            await feed.wait_consuming(timeout_s=30)
            largest = 0
            for _ in range(20):  # the loop is busy for 1 s: nothing is taken meanwhile
                time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is the point
                largest = max(largest, len(feed._received))
            assert largest >= alert_feed.READ_AHEAD // 2, "the feed did not read ahead at all"
            assert largest <= alert_feed.READ_AHEAD + SLACK
            await eventually(lambda: len(got) == N)
            assert [int(d.body) for d in got] == list(range(N))  # none lost, none reordered
            await got[-1].ack(multiple=True)
        finally:
            await feed.stop()
        # everything was acknowledged once taken: the queue is empty
        left = channel.queue_declare(queue, passive=True).method.message_count
        assert left == 0
    finally:
        channel.queue_delete(queue)
        setup.close()
