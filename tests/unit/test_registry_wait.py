"""The followers' long poll: RegistryActor.wait_events (the actor class run in place, no Ray)
and next_events, which the route table and the pre-warm follower read the log with."""

from __future__ import annotations

import asyncio
import time

from mlplat.registry import RegistryStore
from mlplat.registry.actor import WRITE_CALLS, RegistryActor
from mlplat.serving.routes import next_events


def test_write_calls_are_the_ones_with_an_idempotency_key():
    assert {"append_event", "create_model", "batch", "set_alias"} <= WRITE_CALLS
    assert not {"events_since", "last_seq", "resolve", "get_model", "read_batch"} & WRITE_CALLS


def test_a_wait_ends_at_once_on_a_write_through_the_actor_and_at_the_timeout_without_one(tmp_path):
    actor = RegistryActor(str(tmp_path / "r.db"))

    async def scenario() -> None:
        seq = await actor.call("last_seq", {})
        started = time.monotonic()
        assert await actor.wait_events(seq, timeout_s=0.3, poll_s=0.1) == []  # nothing happened
        assert 0.25 < time.monotonic() - started < 2.0

        async def write_soon() -> None:
            await asyncio.sleep(0.2)
            await actor.call("append_event", {"kind": "note", "subject": "model:churn", "payload": {}})

        writer = asyncio.create_task(write_soon())
        started = time.monotonic()
        events = await actor.wait_events(seq, timeout_s=30, poll_s=30)  # only the write can end it early
        waited = time.monotonic() - started
        await writer
        assert [e.subject for e in events] == ["model:churn"]
        assert waited < 5, waited
        started = time.monotonic()
        assert len(await actor.wait_events(seq, timeout_s=30, poll_s=30)) == 1  # already there: no wait
        assert time.monotonic() - started < 1

    asyncio.run(scenario())


def test_a_write_by_another_process_shows_within_poll_s(tmp_path):
    actor = RegistryActor(str(tmp_path / "r.db"))
    other = RegistryStore(tmp_path / "r.db")  # another connection: the actor hears nothing of it

    async def scenario() -> None:
        seq = await actor.call("last_seq", {})

        async def write_soon() -> None:
            await asyncio.sleep(0.2)
            other.append_event("note", "model:churn", {})

        writer = asyncio.create_task(write_soon())
        started = time.monotonic()
        events = await actor.wait_events(seq, timeout_s=30, poll_s=0.1)
        await writer
        assert len(events) == 1 and time.monotonic() - started < 5

    asyncio.run(scenario())


def test_waiting_followers_share_one_watcher_of_the_log(tmp_path):
    """Forty followers waiting with poll_s 0.05 for 1 s: the log itself is read once per
    follower (and once more after the other process's write), its last seq ~20 times by the one
    watcher, not forty reads of the log every 0.05 s (800)."""
    actor = RegistryActor(str(tmp_path / "r.db"))
    other = RegistryStore(tmp_path / "r.db")
    store = actor._opened()  # noqa: SLF001 - count the actor's reads of its store
    reads = {"events_since": 0, "last_seq": 0}
    for name in reads:
        def counted(*args, _read=getattr(store, name), _name=name, **kwargs):
            reads[_name] += 1
            return _read(*args, **kwargs)
        setattr(store, name, counted)
    followers = 40

    async def scenario() -> list[list]:
        seq = other.last_seq()

        async def write_late() -> None:
            await asyncio.sleep(1.0)
            other.append_event("note", "model:churn", {})

        writer = asyncio.create_task(write_late())
        answers = await asyncio.gather(*(actor.wait_events(seq, timeout_s=30, poll_s=0.05) for _ in range(followers)))
        await writer
        return answers

    answers = asyncio.run(scenario())
    assert all(len(a) == 1 for a in answers), answers
    assert reads["events_since"] == 2 * followers, reads
    assert reads["last_seq"] < followers, reads  # ~20 ticks of 0.05 s, and 1 when the watcher starts


class _PollingReader:
    """A reader that cannot wait (like LocalRegistryReader): next_events sleeps between reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def events_since(self, seq, *, limit, kinds=None):
        self.reads += 1
        return []


class _ImpatientReader(_PollingReader):
    """A waiting reader whose wait returns at once (an old actor, a bug): still no spin."""

    async def wait_events(self, seq, *, limit, kinds=None, timeout_s, poll_s):
        self.reads += 1
        return []


def test_next_events_never_spins_on_an_empty_log():
    async def scenario(reader) -> int:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            await next_events(reader, 0, limit=10, wait_s=10, poll_s=0.1)
        return reader.reads

    for reader in (_PollingReader(), _ImpatientReader()):
        assert 3 <= asyncio.run(scenario(reader)) <= 7  # one read per poll_s
