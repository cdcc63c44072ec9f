"""Concurrent requests for one pooled model become one call to the pool (serving/ingress.py).

A call from the ingress to a pool replica costs far more CPU (Serve's router, Ray's actor call,
the replica's request handling, on both sides) than predicting a few rows. The coalescer sends a
model's first request at once; requests for the same model that arrive while ``max_in_flight``
calls are out wait for the next call, which carries all of them (up to ``max_batch``). No timer:
a lone request never waits, and under load each call carries what queued during the last one.

Each request keeps its own answer or its own error: the backend answers a list, one entry per
request, where an entry may be an exception. A waiter that gives up (its deadline) leaves the
others alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Coalescer"]

Send = Callable[[Any, list[Any]], Awaitable[list[Any]]]


@dataclass
class _Key:
    pending: list[tuple[Any, asyncio.Future[Any]]] = field(default_factory=list)
    in_flight: int = 0


class Coalescer:
    """``await submit(key, payload)`` -> the backend's answer for ``payload``.

    ``send(key, payloads)`` makes one backend call for a batch and returns one entry per
    payload, in order: the answer, or an exception instance raised to that payload's waiter.
    An exception raised by ``send`` itself goes to every waiter of the batch.

    >>> async def demo():
    ...     calls = []
    ...     async def send(key, payloads):
    ...         calls.append(list(payloads))
    ...         await asyncio.sleep(0.01)
    ...         return [p * 10 if p >= 0 else ValueError(f"negative {p}") for p in payloads]
    ...     c = Coalescer(send, max_in_flight=1)
    ...     results = await asyncio.gather(*(c.submit("m", p) for p in (1, 2, -3, 4)), return_exceptions=True)
    ...     return calls, results
    >>> calls, results = asyncio.run(demo())
    >>> calls
    [[1], [2, -3, 4]]
    >>> results
    [10, 20, ValueError('negative -3'), 40]
    """

    def __init__(self, send: Send, *, max_in_flight: int = 2, max_batch: int = 64):
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be >= 1")
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._keys: dict[Hashable, _Key] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until they finish

    async def submit(self, key: Hashable, payload: Any) -> Any:
        state = self._keys.setdefault(key, _Key())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        state.pending.append((payload, future))
        if state.in_flight < self._max_in_flight:
            self._start(key, state)
        return await future

    def _start(self, key: Hashable, state: _Key) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        while state.pending and not batch:  # skip waiters that already gave up
            batch = [(p, f) for p, f in state.pending[: self._max_batch] if not f.done()]
            del state.pending[: self._max_batch]
        if not batch:
            if not state.in_flight:
                self._keys.pop(key, None)
            return
        state.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._call(key, state, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, key: Hashable, state: _Key, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            answers = await self._send(key, [payload for payload, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"the backend answered {len(answers)} of {len(batch)} requests")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every waiter of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue  # its waiter gave up
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        finally:
            state.in_flight -= 1
            if state.pending:
                self._start(key, state)
            elif not state.in_flight:
                self._keys.pop(key, None)

    def pending(self) -> int:
        """Requests waiting for a call (not those in a call)."""
        return sum(len(state.pending) for state in self._keys.values())
