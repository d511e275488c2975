"""The generic batcher with plain asyncio: windows, limits, dedup, failures and cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.concurrency.batcher import Batched, Batcher


class Recorder:
    """A send that records every batch and answers each item with (group, item)."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.delay = delay
        self.fail = fail
        self.inflight = 0
        self.peak = 0

    async def __call__(self, group: str, items: list[int]) -> list[tuple[str, int]]:
        self.batches.append((group, list(items)))
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        if self.fail is not None:
            raise self.fail
        return [(group, i) for i in items]


def batcher(send: Recorder, **kw: object) -> Batcher[str, int, int, tuple[str, int]]:
    opts: dict[str, object] = {"window": 0.02, "max_items": 50, **kw}
    return Batcher(send, **opts)  # type: ignore[arg-type]


async def test_one_send_per_group_per_window_and_each_gets_its_own_result() -> None:
    send = Recorder()
    b = batcher(send)
    jobs = [(g, i) for g in ("judge", "betts", "soto") for i in range(10)]
    results = await asyncio.gather(*(b.submit(g, i, i) for g, i in jobs))
    assert sorted(send.batches) == [(g, list(range(10))) for g in ("betts", "judge", "soto")]
    assert [r.result for r in results] == jobs
    assert {r.size for r in results} == {10}
    assert not any(r.shared for r in results)
    assert len(b) == 0 and b.sent == 3


async def test_window_closes_after_its_duration_from_the_first_submit() -> None:
    send = Recorder()
    b = batcher(send, window=0.05)
    t0 = time.perf_counter()
    first = asyncio.ensure_future(b.submit("g", 1, 1))
    await asyncio.sleep(0.03)
    second = await b.submit("g", 2, 2)
    assert 0.045 <= time.perf_counter() - t0 < 0.2
    assert (await first).size == second.size == 2
    third = await b.submit("g", 3, 3)  # a new window, a new batch
    assert third.size == 1 and send.batches == [("g", [1, 2]), ("g", [3])]


async def test_full_batch_goes_at_once_and_never_holds_more_than_max_items() -> None:
    send = Recorder()
    b = batcher(send, window=10.0, max_items=4)
    t0 = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(b.submit("g", i, i) for i in range(8))), 1.0)
    assert time.perf_counter() - t0 < 0.5  # not the 10 s window
    assert send.batches == [("g", [0, 1, 2, 3]), ("g", [4, 5, 6, 7])]
    assert [r.result for r in results] == [("g", i) for i in range(8)]


async def test_identical_items_in_one_window_are_sent_once() -> None:
    send = Recorder()
    b = batcher(send)
    results = await asyncio.gather(*(b.submit("g", i % 3, i % 3) for i in range(9)))
    assert send.batches == [("g", [0, 1, 2])]
    assert [r.result for r in results] == [("g", i % 3) for i in range(9)]
    assert sum(r.shared for r in results) == 6 and b.deduplicated == 6
    assert {r.size for r in results} == {3}


async def test_send_failure_reaches_every_submitter_and_the_next_window_is_fresh() -> None:
    send = Recorder(fail=RuntimeError("down"))
    b = batcher(send)
    results = await asyncio.gather(*(b.submit("g", i, i) for i in range(5)), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError] * 5
    send.fail = None
    assert (await b.submit("g", 1, 1)).result == ("g", 1)


async def test_wrong_number_of_results_is_an_error_for_everyone() -> None:
    async def short(group: str, items: list[int]) -> list[int]:
        return items[:-1]

    b: Batcher[str, int, int, int] = Batcher(short, window=0.01, max_items=10)
    results = await asyncio.gather(*(b.submit("g", i, i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_cancelled_submitter_never_cancels_the_batch_for_the_others() -> None:
    send = Recorder(delay=0.05)
    b = batcher(send)
    leaver = asyncio.ensure_future(b.submit("g", 1, 1))
    stayers = [asyncio.ensure_future(b.submit("g", i, i)) for i in (1, 2, 3)]  # 1: the same item as the leaver
    await asyncio.sleep(0.01)
    leaver.cancel()  # while the window is open
    await asyncio.sleep(0.03)
    stayers.append(asyncio.ensure_future(b.submit("g", 4, 4)))  # next window
    late_leaver = stayers[-1]
    await asyncio.sleep(0.03)
    late_leaver.cancel()  # while its batch is in flight
    results = await asyncio.gather(*stayers[:3])
    assert [r.result for r in results] == [("g", 1), ("g", 2), ("g", 3)]
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await asyncio.sleep(0.06)
    assert send.batches == [("g", [1, 2, 3]), ("g", [4])]  # the late leaver's batch still went out
    assert len(b) == 0


async def test_batches_in_flight_are_bounded() -> None:
    send = Recorder(delay=0.05)
    b = batcher(send, calls=2)
    await asyncio.gather(*(b.submit(f"g{g}", i, i) for g in range(6) for i in range(3)))
    assert len(send.batches) == 6
    assert send.peak == 2


async def test_a_semaphore_is_shared_between_batchers() -> None:
    send = Recorder(delay=0.05)
    limit = asyncio.Semaphore(1)
    b1, b2 = batcher(send, calls=limit), batcher(send, calls=limit)
    await asyncio.gather(b1.submit("a", 1, 1), b2.submit("b", 1, 1), b1.submit("c", 1, 1))
    assert send.peak == 1 and len(send.batches) == 3


async def test_flush_sends_the_open_window_now() -> None:
    send = Recorder()
    b = batcher(send, window=10.0)
    pending = [asyncio.ensure_future(b.submit("g", i, i)) for i in range(3)]
    await asyncio.sleep(0)
    b.flush("g")
    b.flush("nobody")
    results = await asyncio.wait_for(asyncio.gather(*pending), 1.0)
    assert [r.size for r in results] == [3, 3, 3]


async def test_aclose_cancels_open_windows() -> None:
    send = Recorder()
    b = batcher(send, window=10.0)
    pending = asyncio.ensure_future(b.submit("g", 1, 1))
    await asyncio.sleep(0)
    await b.aclose()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert send.batches == [] and len(b) == 0


async def test_idle_closes_the_window_early_once_no_item_joins() -> None:
    sent: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def send(group: str, items: list[int]) -> list[int]:
        sent.append((loop.time() - t0, items))
        return items

    b: Batcher[str, int, int, int] = Batcher(send, window=0.5, max_items=50, idle=0.03)

    async def later(delay: float, n: int) -> Batched[int]:
        await asyncio.sleep(delay)
        return await b.submit("g", n, n)

    # a burst whose items keep arriving within `idle` of each other stays one batch...
    results = await asyncio.gather(*(later(0.01 * i, i) for i in range(5)))
    assert [r.result for r in results] == list(range(5))
    assert len(sent) == 1 and sent[0][1] == list(range(5))
    assert 0.06 <= sent[0][0] < 0.2  # ...and goes about `idle` after its last item, long before the 0.5 s window
    # a lone item waits `idle`, not the window
    t1 = loop.time()
    assert (await b.submit("g", 99, 99)).result == 99
    assert loop.time() - t1 < 0.2


async def test_idle_never_extends_past_the_window() -> None:
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def send(group: str, items: list[int]) -> list[int]:
        sent.append(loop.time() - t0)
        return items

    b: Batcher[str, int, int, int] = Batcher(send, window=0.1, max_items=50, idle=0.04)

    async def later(delay: float, n: int) -> None:
        await asyncio.sleep(delay)
        await b.submit("g", n, n)

    await asyncio.gather(*(later(0.02 * i, i) for i in range(10)))  # one every 20 ms for 200 ms
    assert 0.09 <= sent[0] < 0.16  # the first batch still goes when its 100 ms window ends


async def test_a_batch_waiting_for_a_call_slot_keeps_taking_items() -> None:
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(group: str, items: list[int]) -> list[int]:
        sent.append(list(items))
        if len(sent) == 1:
            await gate.wait()  # the only call slot stays busy
        return items

    b: Batcher[str, int, int, int] = Batcher(send, window=0.02, max_items=4, calls=1)
    first = asyncio.ensure_future(b.submit("a", 0, 0))
    await asyncio.sleep(0.05)  # a's batch is being sent and holds the slot
    waiting = [asyncio.ensure_future(b.submit("b", n, n)) for n in (1, 2)]
    await asyncio.sleep(0.05)  # b's window has closed, but it has no slot yet...
    late = [asyncio.ensure_future(b.submit("b", n, n)) for n in (3, 4, 5)]  # ...so these join it, up to max_items
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *waiting, *late)
    assert sent == [[0], [1, 2, 3, 4], [5]]


async def test_linger_sends_a_burst_once_it_stops_arriving_not_when_the_window_ends() -> None:
    send = Recorder()
    b = batcher(send, window=30.0, linger=0.001)
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(g, i, i) for g in "abc" for i in range(5))), 10)
    assert [r.size for r in results] == [5] * 15
    assert sorted(send.batches) == [(g, list(range(5))) for g in "abc"]


async def test_linger_keeps_items_that_arrive_a_few_loop_turns_apart_in_one_batch() -> None:
    send = Recorder()
    b = batcher(send, window=30.0, linger=1e-6, idle=0.5)  # time alone would send the first item on its own

    async def chain() -> list[Batched[tuple[str, int]]]:
        pending = []
        for i in range(6):
            pending.append(asyncio.ensure_future(b.submit("g", i, i)))
            for _ in range(3):  # three loop turns, as a request takes from socket to submit (read, handler, fill)
                await asyncio.sleep(0)
        return list(await asyncio.gather(*pending))

    results = await asyncio.wait_for(chain(), 10)
    assert send.batches == [("g", list(range(6)))]
    assert {r.size for r in results} == {6}


async def test_linger_zero_waits_the_window_as_before() -> None:
    send = Recorder()
    b = batcher(send, window=0.05, linger=0.0)
    first = asyncio.ensure_future(b.submit("g", 1, 1))
    await asyncio.sleep(0.01)  # long after any linger, well inside the window
    second = await b.submit("g", 2, 2)
    assert (await first).size == second.size == 2


async def test_calls_are_bounded_by_each_of_several_semaphores() -> None:
    send = Recorder(delay=0.05)
    shared = asyncio.Semaphore(3)
    b1 = batcher(send, calls=(asyncio.Semaphore(2), shared), linger=0.001)
    b2 = batcher(send, calls=(asyncio.Semaphore(2), shared), linger=0.001)
    await asyncio.gather(*(b1.submit(f"a{g}", 1, 1) for g in range(4)))
    assert send.peak == 2  # b1's own bound
    send.peak = 0
    await asyncio.gather(*(bt.submit(f"b{g}", 1, 1) for g in range(4) for bt in (b1, b2)))
    assert send.peak == 3  # the shared one, across both


async def test_a_group_whose_items_came_apart_waits_idle_through_a_pause_not_just_linger() -> None:
    send = Recorder()
    b = batcher(send, window=30.0, linger=0.005, idle=0.5)
    first = asyncio.ensure_future(b.submit("g", 0, 0))
    await asyncio.sleep(0)
    time.sleep(0.01)  # a long loop turn, as when the proxy reads a big burst: the next item comes 10 ms later
    second = asyncio.ensure_future(b.submit("g", 1, 1))
    await asyncio.sleep(0.05)  # then a pause (a client that stalls) well past linger, within idle
    third = await asyncio.wait_for(b.submit("g", 2, 2), 10)
    assert third.size == 3 and (await first).size == (await second).size == 3
    assert send.batches == [("g", [0, 1, 2])]


async def test_batches_cut_by_the_window_share_cut_calls_and_keep_taking_items_meanwhile() -> None:
    send = Recorder(delay=0.1)
    b = batcher(send, window=0.02, calls=8, cut_calls=1)
    first = [asyncio.ensure_future(b.submit("a", 0, 0))]
    await asyncio.sleep(0.005)  # a's window closes first and takes the one cut slot
    first += [asyncio.ensure_future(b.submit(g, 0, 0)) for g in "bc"]
    await asyncio.sleep(0.06)  # every window closed; only one cut batch may be in flight, b and c wait...
    late = [asyncio.ensure_future(b.submit(g, 1, 1)) for g in "bc"]  # ...so these still join them
    await asyncio.gather(*first, *late)
    assert send.peak == 1
    assert sorted(send.batches) == [("a", [0]), ("b", [0, 1]), ("c", [0, 1])]


async def test_linger_waits_while_requests_are_still_arriving_and_idle_still_ends_it() -> None:
    """A browser's first round: its first request comes on the first connection opened, the others on connections
    opened at the same time that have sent nothing yet (`arriving`)."""
    send = Recorder()
    arriving = [True]
    b = batcher(send, window=30.0, linger=0.001, idle=0.2, arriving=lambda: arriving[0])
    first = asyncio.ensure_future(b.submit("g", 0, 0))
    await asyncio.sleep(0.02)  # many lingers later, still arriving
    rest = [asyncio.ensure_future(b.submit("g", i, i)) for i in range(1, 6)]
    arriving[0] = False
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert send.batches == [("g", list(range(6)))]
    assert {r.size for r in results} == {6}
    arriving[0] = True  # never stops: `idle` after the last item sends it all the same
    t0 = asyncio.get_running_loop().time()
    alone = await asyncio.wait_for(b.submit("h", 9, 9), 10)
    assert alone.size == 1 and 0.15 <= asyncio.get_running_loop().time() - t0 < 2
