"""Connection balancing among the replicas that share one direct port.

``SO_REUSEPORT`` hands each new connection to a listener by a hash of its addresses, so a
client's keep-alive connections land where the hash puts them: 16 connections over 2 replicas
split 13/3 about as often as 8/8, and the replica with 13 answers every request late while the
other idles. HAProxy would send each request to the least busy replica; here a connection stays
where it started, so the replicas even out the connections themselves, when they open:

- each replica publishes its count of open connections in an 8-byte file of the port's
  directory (``<tmp>/mlplat-direct-<host>-<port>/<id>.count``, read by the others through ``mmap``);
- a replica that accepts a connection while it has more than one connection above the
  least-loaded peer (:func:`handoff_target`) sends the socket to that peer over a Unix datagram
  socket (``<id>.sock``, ``SCM_RIGHTS``) and closes its own copy; the peer serves it as if it
  had accepted it (or hands it on by the same rule, up to :data:`MAX_HANDOFFS` hand-overs in
  all: counts read a moment late can make a first hand-over a poor one). A connection moves
  only before anything of it was read.

Anything that fails (a peer gone without a trace, its queue full, a path too long for a Unix
socket, a directory owned by another user) keeps the connection where the kernel put it. A
peer that vanished is forgotten (and its files removed) at the first hand-over that fails.
"""

from __future__ import annotations

import array
import logging
import mmap
import os
import re
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping

__all__ = ["ConnectionBalancer", "handoff_target", "balance_directory"]

log = logging.getLogger("mlplat.serving")

_COUNT = struct.Struct("=q")
#: How often a replica lists the port's directory for peers that started or stopped.
PEER_RESCAN_S = 1.0
#: For this long after a hand-over a peer counts at least what it had plus the connections
#: sent to it since (its own count may not show them yet).
HANDOFF_SETTLE_S = 0.005
#: A connection is handed over at most this many times (counts seen a moment late can make the
#: first hand-over a poor one; a bound keeps a connection from travelling on).
MAX_HANDOFFS = 2
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its NUL


def handoff_target(own: int, peers: Mapping[str, int]) -> str | None:
    """The peer to hand a new connection to, or None to keep it: the peer with the fewest open
    connections, when ``own`` (this replica's open connections, the new one included) is more
    than one above it.

    >>> handoff_target(9, {"b": 7}), handoff_target(8, {"b": 7}), handoff_target(1, {})
    ('b', None, None)
    >>> handoff_target(9, {"b": 8, "c": 3})
    'c'
    """
    if not peers:
        return None
    peer = min(peers, key=lambda p: (peers[p], p))
    return peer if own > peers[peer] + 1 else None


def balance_directory(host: str, port: int) -> str:
    """Where the replicas listening on ``host:port`` publish their counts and sockets.

    >>> balance_directory("0.0.0.0", 8001).endswith("mlplat-direct-0.0.0.0-8001")
    True
    """
    return os.path.join(tempfile.gettempdir(), "mlplat-direct-" + re.sub(r"[^A-Za-z0-9.]", "_", host) + f"-{port}")


class ConnectionBalancer:
    """One replica's side of the balancing (module docstring). :meth:`start` on the replica's
    event loop; :meth:`opened`/:meth:`closed` as the connections it accepted open and close (a
    handed-over one is counted from its arrival: its :meth:`closed` only); :meth:`offer` for each
    connection it accepts; ``adopt`` is called with each socket a peer hands over (and must see
    to :meth:`closed` if setting it up fails)."""

    def __init__(self, host: str, port: int, *, directory: str | None = None):
        self.directory = directory or balance_directory(host, port)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.open_connections = 0
        #: Connections this replica sent to a peer / took from one.
        self.handed_off = 0
        self.adopted = 0
        self._peers: dict[str, mmap.mmap] = {}
        self._rescanned_at = float("-inf")
        self._expected: dict[str, tuple[float, int]] = {}  # peer -> (until, at least this many)
        self._sock: socket.socket | None = None
        self._count: mmap.mmap | None = None
        self._adopt: Callable[[socket.socket], None] | None = None
        self._loop: object = None

    def _path(self, replica: str, suffix: str) -> str:
        return os.path.join(self.directory, f"{replica}.{suffix}")

    def start(self, loop: object, adopt: Callable[[socket.socket], None]) -> bool:
        """Publish this replica and listen for handed-over connections. False (balancing off
        for this replica, logged) when the directory or socket cannot be set up."""
        sock_path = self._path(self.id, "sock")
        if len(os.fsencode(sock_path)) > _MAX_UNIX_PATH:
            log.warning("direct port: no connection balancing, %s is too long for a Unix socket path", sock_path)
            return False
        sock: socket.socket | None = None
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if os.stat(self.directory).st_uid != os.getuid():
                raise PermissionError(f"{self.directory} belongs to another user")
            count_path = self._path(self.id, "count")
            with open(count_path, "wb") as f:
                f.write(_COUNT.pack(0))
            with open(count_path, "r+b") as f:
                self._count = mmap.mmap(f.fileno(), _COUNT.size)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(sock_path)
        except OSError as e:
            log.warning("direct port: no connection balancing (%s)", e)
            if sock is not None:
                sock.close()
            self.stop()  # the count file and its map, if made
            return False
        self._sock, self._adopt, self._loop = sock, adopt, loop
        loop.add_reader(sock.fileno(), self._receive)  # type: ignore[attr-defined]
        self._publish()
        return True

    def stop(self) -> None:
        """Stop taking connections and remove this replica's files."""
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())  # type: ignore[attr-defined]
            except Exception:  # the loop is closed already
                pass
            self._sock.close()
            self._sock = None
        self._remove_own_files()
        for m in self._peers.values():
            m.close()
        self._peers.clear()
        if self._count is not None:
            self._count.close()
            self._count = None

    def _remove_own_files(self) -> None:
        for suffix in ("sock", "count"):
            try:
                os.unlink(self._path(self.id, suffix))
            except OSError:
                pass

    # -- counts ------------------------------------------------------------------------------
    def opened(self) -> None:
        self.open_connections += 1
        self._publish()

    def closed(self) -> None:
        self.open_connections -= 1
        self._publish()

    def _publish(self) -> None:
        if self._count is not None:
            _COUNT.pack_into(self._count, 0, self.open_connections)

    def peer_counts(self) -> dict[str, int]:
        """Each live peer's open connections as it publishes them -- for
        :data:`HANDOFF_SETTLE_S` after a hand-over to it, at least its count then plus the
        connections sent to it since."""
        now = time.monotonic()
        if now - self._rescanned_at > PEER_RESCAN_S:
            self._rescan()
            self._rescanned_at = now
        counts: dict[str, int] = {}
        for peer, m in self._peers.items():
            count = _COUNT.unpack_from(m, 0)[0]
            expected = self._expected.get(peer)
            if expected is not None and now < expected[0]:
                count = max(count, expected[1])
            counts[peer] = count
        return counts

    def _rescan(self) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        live = {n[: -len(".count")] for n in names if n.endswith(".count")} - {self.id}
        for peer in list(self._peers):
            if peer not in live:
                self._forget(peer, unlink=False)
        for peer in live - self._peers.keys():
            try:
                with open(self._path(peer, "count"), "rb") as f:
                    self._peers[peer] = mmap.mmap(f.fileno(), _COUNT.size, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # gone meanwhile, or not written yet
                pass

    def _forget(self, peer: str, *, unlink: bool) -> None:
        m = self._peers.pop(peer, None)
        if m is not None:
            m.close()
        self._expected.pop(peer, None)
        if unlink:
            for suffix in ("sock", "count"):
                try:
                    os.unlink(self._path(peer, suffix))
                except OSError:
                    pass

    # -- hand-over ---------------------------------------------------------------------------
    def offer(self, fd: int, handoffs: int = 0) -> bool:
        """Hand the connection ``fd`` (just accepted, or handed over ``handoffs`` times) to a
        peer if :func:`handoff_target` says so. True: the peer has it, the caller closes its
        copy. False: keep it."""
        if self._sock is None or handoffs >= MAX_HANDOFFS:
            return False
        counts = self.peer_counts()
        target = handoff_target(self.open_connections + 1, counts)
        if target is None:
            return False
        try:
            self._sock.sendmsg([bytes([handoffs + 1])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                               0, self._path(target, "sock"))
        except (ConnectionRefusedError, FileNotFoundError):  # nobody listens there: a dead replica's files
            self._forget(target, unlink=True)
            return False
        except OSError:  # its queue is full, ...: keep the connection
            return False
        self._expected[target] = (time.monotonic() + HANDOFF_SETTLE_S, counts[target] + 1)
        self.handed_off += 1
        return True

    def _receive(self) -> None:
        while self._sock is not None:
            try:
                data, ancdata, _, _ = self._sock.recvmsg(16, socket.CMSG_SPACE(16 * array.array("i").itemsize))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.warning("direct port: reading a handed-over connection failed", exc_info=True)
                return
            handoffs = data[0] if data else MAX_HANDOFFS
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        self._take(fd, handoffs)

    def _take(self, fd: int, handoffs: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.close()  # only TCP connections are served
            return
        if self.offer(fd, handoffs):
            sock.close()  # the next peer has it
            return
        sock.setblocking(False)
        self.adopted += 1
        self.opened()  # counted from now, so that peers see it before the connection is set up
        assert self._adopt is not None
        try:
            self._adopt(sock)
        except Exception:
            log.warning("direct port: serving a handed-over connection failed", exc_info=True)
            self.closed()
            sock.close()
