"""An ingress replica's telemetry after the request path: when to flush, the write in the
flush thread, the files handed to the catalog thread."""

from __future__ import annotations

import asyncio
import logging

from mlplat.serving.telemetry import (
    FLUSH_CHECK_S,
    TelemetryWriter,
    flush_due,
)
from mlplat.serving.telemetry_catalog import CatalogSync

__all__ = ["TelemetryFlusher"]

log = logging.getLogger("mlplat.serving")


class TelemetryFlusher:
    """Flushes a :class:`TelemetryWriter` every ``flush_s``, and early once it holds half of
    its ``max_rows`` (:func:`flush_due`, checked every :data:`FLUSH_CHECK_S`); the files written go
    to ``catalog`` when given (a queue append: a flush never waits for the registry)."""

    def __init__(self, writer: TelemetryWriter, catalog: CatalogSync | None, *, flush_s: float):
        self.writer, self.catalog, self._flush_s = writer, catalog, flush_s

    async def run(self) -> None:
        """The flush loop (a task on the replica's event loop, for its life)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(min(self._flush_s, FLUSH_CHECK_S))
            if not flush_due(self.writer.pending_rows, self.writer.max_rows, loop.time() - last, self._flush_s):
                continue
            last = loop.time()
            try:
                await self.flush_async()
            except Exception:  # never let telemetry take serving down
                log.exception("telemetry flush failed")

    async def flush_async(self) -> int:
        """Write the buffer in the flush thread (:meth:`flush`); returns the rows written."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush)

    def flush(self) -> int:
        """The flush thread: write the buffered telemetry and queue the files for the catalog.
        Returns the rows written."""
        files = self.writer.flush()
        if self.catalog is not None:
            self.catalog.add(files)
        return sum(f.num_rows for f in files)

    async def flush_now(self, catalog_timeout_s: float) -> int:
        """Write the buffer, then have the catalog thread register everything queued, waiting
        up to ``catalog_timeout_s`` for it (tests, shutdown). Returns the rows written."""
        rows = await self.flush_async()
        if self.catalog is not None:
            self.catalog.start()
            if not await asyncio.get_running_loop().run_in_executor(None, self.catalog.sync_now, catalog_timeout_s):
                log.warning("telemetry catalog registration still running after %.0f s", catalog_timeout_s)
        return rows
