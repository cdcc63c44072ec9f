"""Records of the data catalog and feature sets (filled in by the data/features issue)."""

from __future__ import annotations

__all__: list[str] = []
