"""Where a model version's weights go, by their size: a pure decision, no storage.

``packed`` (small): many tiny models as files of their own cost one object and one request
each on every cold load, which dominates when there are thousands of them; packed weights
share a file with other bytes that are read anyway. ``file`` (medium): one
``model.safetensors``, read and verified whole. ``sharded`` (very large): one whole-file read
would hold the full weights in memory twice (bytes and tensors), so they are split into
shards that are read, verified and loaded one at a time.
"""

from __future__ import annotations

from typing import Literal

from mlplat.config import WeightStorageSettings

__all__ = ["PlacementKind", "PLACEMENT_KINDS", "choose_placement"]

PlacementKind = Literal["packed", "file", "sharded"]
PLACEMENT_KINDS: tuple[PlacementKind, ...] = ("packed", "file", "sharded")


def choose_placement(weight_bytes: int, settings: WeightStorageSettings) -> PlacementKind:
    """The placement of weights of ``weight_bytes`` bytes (the sum of their tensors' data).

    At most ``packed_max_bytes`` (when that is not 0): packed; at most ``file_max_bytes``:
    one file; above: sharded.

    >>> s = WeightStorageSettings(packed_max_bytes=1024, file_max_bytes=4096)
    >>> [choose_placement(n, s) for n in (0, 1024, 1025, 4096, 4097)]
    ['packed', 'packed', 'file', 'file', 'sharded']
    >>> choose_placement(10, WeightStorageSettings(packed_max_bytes=0))
    'file'
    """
    if isinstance(weight_bytes, bool) or not isinstance(weight_bytes, int) or weight_bytes < 0:
        raise ValueError(f"weight_bytes must be a non-negative int (bytes of tensor data), got {weight_bytes!r}")
    if settings.packed_max_bytes > 0 and weight_bytes <= settings.packed_max_bytes:
        return "packed"
    if weight_bytes <= settings.file_max_bytes:
        return "file"
    return "sharded"
