"""The ingress's coalescing of pool calls (serving/coalesce.py), without Ray."""

from __future__ import annotations

import asyncio

import pytest

from mlplat.serving.coalesce import Coalescer


class Backend:
    def __init__(self, delay_s: float = 0.02, fail: BaseException | None = None):
        self.calls: list[tuple[str, list[int]]] = []
        self.delay_s, self.fail = delay_s, fail
        self.concurrent = self.max_concurrent = 0

    async def send(self, key, payloads):
        self.calls.append((key, list(payloads)))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail is not None:
                raise self.fail
            return [ValueError(f"bad {p}") if p < 0 else (key, p * 2) for p in payloads]
        finally:
            self.concurrent -= 1


def test_a_lone_request_goes_at_once_and_load_is_coalesced_per_key():
    async def run():
        backend = Backend()
        c = Coalescer(backend.send, max_in_flight=2, max_batch=5)
        lone = await c.submit("a", 1)
        results = await asyncio.gather(*(c.submit(key, p) for p in range(20) for key in ("a", "b")))
        return backend, lone, results, c.pending()

    backend, lone, results, pending = asyncio.run(run())
    assert lone == ("a", 2) and backend.calls[0] == ("a", [1])
    assert results == [(key, p * 2) for p in range(20) for key in ("a", "b")]  # every answer to its own waiter
    later = backend.calls[1:]
    assert all(len(payloads) <= 5 for _, payloads in later)
    assert sorted(p for key, payloads in later if key == "a" for p in payloads) == list(range(20))
    assert len(later) < 40 and backend.max_concurrent <= 4  # 2 per key
    assert pending == 0


def test_errors_stay_with_their_request_or_reach_the_whole_batch():
    async def run():
        c = Coalescer(Backend().send, max_in_flight=1)
        mixed = await asyncio.gather(*(c.submit("k", p) for p in (1, -2, 3)), return_exceptions=True)
        broken = Coalescer(Backend(fail=ConnectionError("replica died")).send, max_in_flight=1)
        failed = await asyncio.gather(*(broken.submit("k", p) for p in (1, 2, 3)), return_exceptions=True)
        return mixed, failed

    mixed, failed = asyncio.run(run())
    assert mixed[0] == ("k", 2) and isinstance(mixed[1], ValueError) and mixed[2] == ("k", 6)
    assert all(isinstance(e, ConnectionError) for e in failed)


def test_a_waiter_that_gives_up_leaves_the_others_and_the_key_usable():
    async def run():
        backend = Backend(delay_s=0.05)
        c = Coalescer(backend.send, max_in_flight=1)
        first = asyncio.ensure_future(c.submit("k", 1))
        await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await c.submit("k", 2)  # queued behind the first call, then abandoned
        others = await asyncio.gather(first, c.submit("k", 3))
        await asyncio.sleep(0.2)
        return backend, others, c.pending()

    backend, others, pending = asyncio.run(run())
    assert others == [("k", 2), ("k", 6)]
    assert [p for _, payloads in backend.calls for p in payloads] == [1, 3]  # the abandoned one was never sent
    assert pending == 0


def test_a_short_answer_is_an_error_for_every_waiter():
    async def send(key, payloads):
        return payloads[:-1]

    async def run():
        c = Coalescer(send, max_in_flight=1)
        await c.submit("k", 0)  # a batch of one answered with nothing
        return None

    with pytest.raises(RuntimeError, match="answered 0 of 1"):
        asyncio.run(run())
    with pytest.raises(ValueError):
        Coalescer(send, max_in_flight=0)
