"""The admission queue, pure asyncio: FIFO admission as capacity appears, resuming streams first,
503 with Retry-After only when the queue is full or the wait runs out, invalid requests at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from moeplane.api.enums import Role
from moeplane.workers.frontend.admission import AdmissionQueue
from moeplane.workers.frontend.errors import InvalidRequest, NoCapacity
from moeplane.workers.frontend.router import Route

from moeplane.bus.registry import WorkerGroup

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]

GROUP = WorkerGroup(
    group_id="d0", role=Role.DECODE, address="127.0.0.1:1", model="tiny", ep_size=1, block_size_tokens=16,
    kv_blocks_total=8, kv_blocks_free=8, max_blocks_per_rank=8, queue_depth=0, heartbeat_at_s=1.0,
)


class Capacity:
    """Admits while `slots` > 0; each admission takes one."""

    def __init__(self, slots: int = 0) -> None:
        self.slots = slots

    def route(self) -> Route:
        if self.slots <= 0:
            raise NoCapacity("no decode group has 1 free KV blocks", retry_after_s=1)
        self.slots -= 1
        return Route(GROUP, None, 1)


def later(s: float = 60.0) -> float:
    return time.monotonic() + s


async def test_requests_wait_in_fifo_order_and_go_as_capacity_appears() -> None:
    q, cap = AdmissionQueue(max_queued_requests=8, queue_timeout_s=60), Capacity()
    order: list[int] = []

    async def request(i: int) -> None:
        await q.admit(cap.route, resuming=False, deadline_s=later())
        order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(request(i)))
        await asyncio.sleep(0)  # arrive in this order
    while q.num_waiting < 4:
        await asyncio.sleep(0)
    cap.slots = 1
    q.wake()
    while not order:
        await asyncio.sleep(0.01)
    assert order == [0] and q.num_waiting == 3
    cap.slots = 3
    q.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [0, 1, 2, 3] and q.num_waiting == 0


async def test_a_resuming_stream_goes_ahead_of_new_requests_and_past_the_bound() -> None:
    q, cap = AdmissionQueue(max_queued_requests=1, queue_timeout_s=60), Capacity()
    order: list[str] = []

    async def request(name: str, resuming: bool) -> None:
        await q.admit(cap.route, resuming=resuming, deadline_s=later())
        order.append(name)

    new = asyncio.create_task(request("new", False))
    while q.num_waiting < 1:
        await asyncio.sleep(0)
    resumed = asyncio.create_task(request("resumed", True))  # the bound counts new requests only
    while q.num_waiting < 2:
        await asyncio.sleep(0)
    cap.slots = 2
    q.wake()
    await asyncio.wait_for(asyncio.gather(new, resumed), 10)
    assert order == ["resumed", "new"]


async def test_503_with_retry_after_only_past_the_queue() -> None:
    q, cap = AdmissionQueue(max_queued_requests=2, queue_timeout_s=60, retry_after_s=3), Capacity()
    waiting = [asyncio.create_task(q.admit(cap.route, resuming=False, deadline_s=later())) for _ in range(2)]
    while q.num_waiting < 2:
        await asyncio.sleep(0)
    with pytest.raises(NoCapacity, match=r"2 requests are already queued \(maxQueuedRequests 2\)") as full:
        await q.admit(cap.route, resuming=False, deadline_s=later())
    assert full.value.headers() == {"Retry-After": "3"} and q.num_rejected_full == 1
    cap.slots = 2
    q.wake()
    assert len(await asyncio.wait_for(asyncio.gather(*waiting), 10)) == 2


async def test_a_wait_that_runs_out_is_503_naming_the_wait() -> None:
    q = AdmissionQueue(max_queued_requests=4, queue_timeout_s=0.2)
    started = time.monotonic()
    waited = r"no capacity came free in [\d.]+ s .*queueTimeoutSeconds 0.2"
    with pytest.raises(NoCapacity, match=waited) as info:
        await q.admit(Capacity().route, resuming=False, deadline_s=later())
    assert time.monotonic() - started >= 0.2  # it did wait its turn before refusing
    assert info.value.http_status == 503 and "Retry-After" in info.value.headers()
    assert q.num_waiting == 0 and q.num_timed_out == 1


async def test_an_invalid_request_is_refused_at_once_and_leaves_the_queue() -> None:
    q = AdmissionQueue(max_queued_requests=4, queue_timeout_s=60)

    def too_big() -> Route:
        raise InvalidRequest("prompt + max_tokens needs 99 KV blocks on one rank", param="max_tokens")

    with pytest.raises(InvalidRequest):
        await q.admit(too_big, resuming=False, deadline_s=later())
    assert q.num_waiting == 0
    cap = Capacity(slots=1)
    assert (await q.admit(cap.route, resuming=False, deadline_s=later())).decode is GROUP


async def test_closing_refuses_the_waiting_and_later_requests_at_once() -> None:
    q, cap = AdmissionQueue(max_queued_requests=4, queue_timeout_s=60), Capacity()
    waiting = [
        asyncio.ensure_future(q.admit(cap.route, resuming=r, deadline_s=later())) for r in (False, True)
    ]
    while q.num_waiting < 2:
        await asyncio.sleep(0)
    q.close("this frontend is shutting down; retry")
    for task in waiting:
        with pytest.raises(NoCapacity, match="shutting down"):
            await task
    cap.slots = 1
    with pytest.raises(NoCapacity, match="shutting down"):
        await q.admit(cap.route, resuming=False, deadline_s=later())
    assert q.num_waiting == 0 and cap.slots == 1
