"""The registry's two databases behind one interface: SQLite (embedded) and PostgreSQL (shared).

``registry.url`` (env ``MLPLAT_REGISTRY_URL``) picks one:
- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's form, as MLflow
  uses it) or a plain file path: one file on the registry node's disk;
- ``postgresql://user:password@host:5432/db`` (``?host=/socket/dir`` for a Unix socket): one
  server that several Ray clusters share.

Both run the same SQL (written with ``?`` placeholders; :class:`Dialect` holds the few
differences) and the same migrations. A write transaction excludes every other writer — SQLite's
``BEGIN IMMEDIATE``, a transaction-scoped advisory lock on PostgreSQL — so a version number or an
event sequence number is read and written by one writer at a time: the event log is gap-free and
its order is the commit order, whichever process or cluster writes.
"""

from __future__ import annotations

import functools
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlplat.config import REGISTRY_URL_SETTING as _SETTING
from mlplat.config import normalize_registry_url, redact_url
from mlplat.errors import ConfigError, DatabaseUnavailable, StorageError

__all__ = ["Backend", "Dialect", "Row", "SqliteBackend", "PostgresBackend", "open_backend", "SQLITE",
           "POSTGRES"]

#: A result row: column name -> value (``sqlite3.Row`` or psycopg's ``dict_row``).
Row = Mapping[str, Any]
#: The key of PostgreSQL's advisory lock that write transactions hold (any constant would do).
_PG_WRITE_LOCK_KEY = 0x6D6C706C6174  # "mlplat"


@dataclass(frozen=True)
class Dialect:
    """What differs between the two SQL dialects in the registry's queries and DDL."""

    name: str
    float_type: str
    seq_column: str  # the events table's key

    def json_array_contains(self, column: str) -> str:
        """SQL true when the JSON array text in ``column`` contains the string parameter."""
        if self.name == "postgresql":
            return f"(({column})::jsonb @> jsonb_build_array(CAST(? AS text)))"
        return f"EXISTS (SELECT 1 FROM json_each({column}) j WHERE j.value = ?)"

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text value of top-level ``key`` in the JSON object text in ``column``."""
        if self.name == "postgresql":
            return f"(({column})::jsonb ->> '{key}')"
        return f"json_extract({column}, '$.{key}')"


SQLITE = Dialect("sqlite", "REAL", "INTEGER PRIMARY KEY AUTOINCREMENT")
POSTGRES = Dialect("postgresql", "DOUBLE PRECISION", "BIGINT PRIMARY KEY")


class Backend(ABC):
    """One connection to the registry database; the store serializes its use with a lock."""

    dialect: Dialect
    url: str

    @abstractmethod
    def begin_write(self) -> None:
        """Start a transaction that excludes every other writer until commit/rollback."""

    @abstractmethod
    def begin_read(self) -> None:
        """Start a read-only transaction that sees one consistent snapshot."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns a cursor (``fetchone``, ``rowcount``)."""

    @abstractmethod
    def execute_script(self, sql: str) -> None:
        """Run several ``;``-separated DDL statements (inside the caller's transaction)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def storage_error(self, exc: BaseException) -> StorageError | None:
        """The clean error for a database failure (disk full, server gone), else None."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r})"


class SqliteBackend(Backend):
    """SQLite in WAL mode; ``synchronous=FULL`` by default, so a returned write survives a power cut."""

    dialect = SQLITE

    def __init__(self, path: str, *, synchronous: str = "FULL"):
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.path = path
        self.url = "sqlite:///:memory:" if path == ":memory:" else f"sqlite:///{path}"
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.row_factory = sqlite3.Row
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if path != ":memory:" and str(mode).lower() != "wal":
                raise StorageError(f"registry database {path!r} could not switch to WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"registry database {path!r} cannot be opened: {exc}") from None

    def begin_write(self) -> None:
        self.rollback()  # a call that failed half-way left its transaction open
        self._conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.rollback()
        self._conn.execute("BEGIN")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, tuple(params))

    def execute_script(self, sql: str) -> None:
        for statement in _statements(sql):
            self._conn.execute(statement)

    def close(self) -> None:
        self._conn.close()

    def storage_error(self, exc: BaseException) -> StorageError | None:
        if isinstance(exc, sqlite3.OperationalError):  # disk full, read-only file, locked too long
            return StorageError(f"registry database {self.path!r}: {exc}; nothing was written")
        return None


class PostgresBackend(Backend):
    """PostgreSQL through psycopg 3; a lost connection fails the call and is reopened on the next."""

    dialect = POSTGRES

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0):
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise ConfigError(f"{_SETTING} is a PostgreSQL URL, but psycopg is not installed: pip install 'psycopg[binary]'") from None
        self._psycopg, self._dict_row = psycopg, dict_row
        self.url, self._timeout_s = url, connect_timeout_s
        self._conn: Any = None
        self._connect()

    def _connect(self) -> None:
        # Keepalives notice a dead peer in about a minute; a session stuck inside a transaction
        # (its client hung mid-call) is ended after a minute, so it cannot hold the registry's
        # write lock, which every cluster sharing this database waits on.
        extra: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
        if "options=" not in self.url:
            extra["options"] = "-c idle_in_transaction_session_timeout=60000"
        try:
            self._conn = self._psycopg.connect(self.url, autocommit=True, row_factory=self._dict_row,
                                               connect_timeout=max(1, int(self._timeout_s)), **extra)
        except self._psycopg.Error as exc:
            self._conn = None
            raise DatabaseUnavailable(
                f"registry database {redact_url(self.url)} cannot be reached: {_first_line(exc)}; "
                f"check {_SETTING} and that the server is running"
            ) from None

    def _live(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._connect()
        return self._conn

    def _idle(self) -> Any:
        """The connection, outside any transaction, at the start of a call."""
        conn = self._live()
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")  # a call that failed half-way left its transaction open
        return conn

    def begin_write(self) -> None:
        conn = self._idle()
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK_KEY,))

    def begin_read(self) -> None:
        self._idle().execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            try:
                self._conn.execute("ROLLBACK")
            except self._psycopg.Error:
                self._conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._live().execute(_pg_placeholders(sql), tuple(params))

    def execute_script(self, sql: str) -> None:
        for statement in _statements(sql):
            self._live().execute(statement)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def storage_error(self, exc: BaseException) -> StorageError | None:
        if isinstance(exc, self._psycopg.OperationalError | self._psycopg.InterfaceError):
            # The connection may have died during COMMIT, after the server applied it: say so.
            return DatabaseUnavailable(
                f"registry database {redact_url(self.url)}: {_first_line(exc)}; the call may or may not "
                "have been applied: retry it with the same idempotency key (a keyed write applies once)"
            )
        return None


@functools.lru_cache(maxsize=512)
def _pg_placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def open_backend(url_or_path: str | Path, *, synchronous: str = "FULL") -> Backend:
    """The backend for a ``registry.url`` or a SQLite file path."""
    url = normalize_registry_url(url_or_path)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url.removeprefix("sqlite:///"), synchronous=synchronous)
    return PostgresBackend(url)
