"""Packs: the weights of many small models ("members") in a few safetensors shards.

Layout of a pack directory (anywhere under the storage root)::

    shard-00000.safetensors   a valid safetensors file; tensor keys are ``<member>/<tensor>``
    shard-00001.safetensors   ...
    index.json                written last: the pack is complete once it exists

Each member's tensors are contiguous in its shard's data section, so one member is one byte
range; members are never split across shards. A :class:`PackedRef` holds everything a load
needs (shard, offset, length, sha256, tensor table), so loading a member is exactly one ranged
read and no index read: the ref is stored where the member is used (its bundle.json), and
index.json exists for listing, verification and tools that read safetensors.

Within a member, tensors are ordered by element size (largest first), so each tensor starts at
a multiple of its element size from the member's first byte: the tensors are built straight
from the member's bytes. Members themselves may start anywhere in the shard; safetensors reads
such files fine.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlplat.errors import AlreadyExists, IntegrityError, NotFound, ValidationError, WeightsFormatError
from mlplat.storage import Storage, sha256_bytes

__all__ = [
    "PACK_INDEX_FILE",
    "PACK_FORMAT",
    "TensorSlice",
    "PackedRef",
    "PackIndex",
    "write_pack",
    "read_member",
    "read_index",
    "verify_pack",
    "shard_file_name",
    "tensor_nbytes",
]

PACK_INDEX_FILE = "index.json"
PACK_FORMAT = 1
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@=+-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# safetensors dtype names <-> torch dtype names (attribute of the torch module), element size in bytes
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8),
}


def shard_file_name(index: int) -> str:
    """``shard-00000.safetensors`` for index 0."""
    return f"shard-{index:05d}.safetensors"


def tensor_nbytes(tensor: Any) -> int:
    """Bytes of a tensor's data (what safetensors stores)."""
    return int(tensor.numel()) * int(tensor.element_size())


@dataclass(frozen=True)
class TensorSlice:
    """One tensor of a member: its dtype (safetensors name), shape, and byte range relative to
    the member's first byte."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "start": self.start, "end": self.end}


@dataclass(frozen=True)
class PackedRef:
    """Where one member's weights are: ``pack`` (the pack directory, relative to the storage
    root), ``shard`` (file name in it), ``offset``/``length`` (absolute byte range in the shard),
    ``sha256`` of those bytes, and the member's tensor table. JSON-able via :meth:`to_dict`."""

    pack: str
    shard: str
    member: str
    offset: int
    length: int
    sha256: str
    tensors: tuple[TensorSlice, ...]

    @property
    def pack_parts(self) -> tuple[str, ...]:
        return tuple(self.pack.split("/"))

    def to_dict(self) -> dict[str, Any]:
        return {"pack": self.pack, "shard": self.shard, "member": self.member, "offset": self.offset,
                "length": self.length, "sha256": self.sha256, "tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "packed ref") -> PackedRef:
        """Parse and check a ref (from bundle.json or index.json); IntegrityError naming ``where``
        and the problem if it is malformed."""
        def bad(reason: str) -> IntegrityError:
            return IntegrityError(f"{where} is not a valid packed-weights reference: {reason}; expected the dict "
                                  "PackedRef.to_dict() writes (pack, shard, member, offset, length, sha256, tensors)")

        if not isinstance(data, Mapping):
            raise bad(f"got {type(data).__name__}")
        try:
            ref = cls(pack=_str(data["pack"]), shard=_str(data["shard"]), member=_str(data["member"]),
                      offset=_nonneg(data["offset"]), length=_nonneg(data["length"]), sha256=_str(data["sha256"]),
                      tensors=tuple(TensorSlice(name=_str(t["name"]), dtype=_str(t["dtype"]),
                                                shape=tuple(_nonneg(d) for d in t["shape"]),
                                                start=_nonneg(t["start"]), end=_nonneg(t["end"]))
                                    for t in data["tensors"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"{type(exc).__name__}: {exc}") from None
        if not _SHA256.fullmatch(ref.sha256):
            raise bad(f"sha256 {ref.sha256!r} is not 64 lowercase hex digits")
        for t in ref.tensors:
            if t.dtype not in _DTYPES:
                raise bad(f"tensor {t.name!r} has unknown dtype {t.dtype!r}")
            if not t.start <= t.end <= ref.length or t.end - t.start != math.prod(t.shape) * _DTYPES[t.dtype][1]:
                raise bad(f"tensor {t.name!r} range {t.start}..{t.end} does not fit its shape {list(t.shape)} "
                          f"and dtype {t.dtype} inside the member's {ref.length} bytes")
        return ref


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value


def _nonneg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PackIndex:
    """A complete pack's index.json: members and the sha256/size of every shard."""

    pack: str
    members: dict[str, PackedRef]
    shards: dict[str, dict[str, Any]]

    def ref(self, member: str) -> PackedRef:
        """The ref of ``member``; NotFound naming the member and the pack if it is not in it."""
        try:
            return self.members[member]
        except KeyError:
            shown = ", ".join(sorted(self.members)[:5]) + (", ..." if len(self.members) > 5 else "")
            raise NotFound(f"member {member!r} is not in pack {self.pack!r} ({len(self.members)} members: {shown}); "
                           "check the member name or the pack directory") from None


# -- writing ---------------------------------------------------------------------------------------

def _torch_dtype_name(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    for st_name, (torch_name, _) in _DTYPES.items():
        if torch_name == name:
            return st_name
    raise WeightsFormatError(f"tensor dtype {tensor.dtype} cannot be stored in safetensors by mlplat; "
                             f"convert it to one of {sorted(t for t, _ in _DTYPES.values())}")


def _plan_member(member: str, tensors: Mapping[str, Any]) -> tuple[list[TensorSlice], list[Any], int]:
    import torch

    if not isinstance(member, str) or not _MEMBER.fullmatch(member):
        raise ValidationError(f"pack member name {member!r} is not usable: expected 1-200 characters of letters, digits, "
                         "'_', '.', '@', '=', '+' or '-', starting with a letter or digit (no '/')")
    if not isinstance(tensors, Mapping) or not tensors:
        raise ValidationError(f"pack member {member!r}: expected a non-empty mapping of tensor name -> torch.Tensor")
    items = []
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValidationError(f"pack member {member!r}: tensor names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ValidationError(f"pack member {member!r}: {name!r} is a {type(tensor).__name__}, expected a torch.Tensor")
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        items.append((name, tensor if tensor.is_contiguous() else tensor.contiguous()))
    items.sort(key=lambda item: (-item[1].element_size(), item[0]))  # alignment: see the module docstring
    slices, datas, position = [], [], 0
    for name, tensor in items:
        n = tensor_nbytes(tensor)
        slices.append(TensorSlice(name=name, dtype=_torch_dtype_name(tensor), shape=tuple(int(d) for d in tensor.shape),
                                  start=position, end=position + n))
        datas.append(tensor)
        position += n
    return slices, datas, position


def _tensor_bytes(tensor: Any) -> memoryview:
    import torch

    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def write_pack(storage: Storage, members: Mapping[str, Mapping[str, Any]], *pack_dir_parts: str,
               shard_max_bytes: int) -> dict[str, PackedRef]:
    """Write ``members`` (member -> {tensor name -> tensor}) as a pack under ``pack_dir_parts``
    and return each member's :class:`PackedRef`. A shard takes members in the given order while
    its data stays within ``shard_max_bytes`` (a bigger member gets a shard of its own). Each
    file is written atomically; index.json goes last. A pack is immutable: writing to a
    directory that already holds a complete pack raises AlreadyExists.

    >>> refs = write_pack(storage, {"churn-eu": model_a.state_dict(), "churn-us": model_b.state_dict()},
    ...                   "packs", "churn-2026-11", shard_max_bytes=64 << 20)  # doctest: +SKIP
    >>> read_member(storage, refs["churn-eu"]).keys()  # doctest: +SKIP
    """
    if isinstance(shard_max_bytes, bool) or not isinstance(shard_max_bytes, int) or shard_max_bytes < 1:
        raise ValidationError(f"shard_max_bytes must be a positive int, got {shard_max_bytes!r}")
    if not isinstance(members, Mapping) or not members:
        raise ValidationError("write_pack needs a non-empty mapping of member name -> {tensor name: tensor}")
    storage.path(*pack_dir_parts)  # UnsafePath before any work
    pack = "/".join(pack_dir_parts)
    if storage.exists(*pack_dir_parts, PACK_INDEX_FILE):
        raise AlreadyExists(f"pack {storage.uri_of(*pack_dir_parts)} is complete already and packs are immutable "
                            "(bundles refer to its bytes); write the new members to a new pack directory")
    planned = [(member, *_plan_member(member, tensors)) for member, tensors in members.items()]
    shards: list[list[tuple[str, list[TensorSlice], list[Any], int]]] = [[]]
    used = 0
    for entry in planned:
        size = entry[3]
        if shards[-1] and used + size > shard_max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += size
    refs: dict[str, PackedRef] = {}
    shard_info: dict[str, dict[str, Any]] = {}
    for index, shard_members in enumerate(shards):
        name = shard_file_name(index)
        shard_refs, info = _write_shard(storage, pack, pack_dir_parts, name, shard_members)
        refs.update(shard_refs)
        shard_info[name] = info
    document = {"format": PACK_FORMAT, "shards": shard_info, "members": {m: ref.to_dict() for m, ref in refs.items()}}
    # compact: json's C encoder (indent= falls back to the pure-Python one, ~20x slower on large packs)
    storage.write_bytes(json.dumps(document, separators=(",", ":")).encode(), *pack_dir_parts, PACK_INDEX_FILE)
    return refs


def _write_shard(storage: Storage, pack: str, pack_dir_parts: tuple[str, ...], name: str,
                 shard_members: list[tuple[str, list[TensorSlice], list[Any], int]],
                 ) -> tuple[dict[str, PackedRef], dict[str, Any]]:
    header: dict[str, Any] = {}
    position = 0
    for member, slices, _, size in shard_members:
        for s in slices:
            header[f"{member}/{s.name}"] = {"dtype": s.dtype, "shape": list(s.shape),
                                            "data_offsets": [position + s.start, position + s.end]}
        position += size
    header["__metadata__"] = {"format": "pt", "mlplat_pack": str(PACK_FORMAT)}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data section 8-aligned, as safetensors writes it
    data_start = 8 + len(header_bytes)
    refs: dict[str, PackedRef] = {}
    shard_digest = hashlib.sha256()
    with storage.open_write(*pack_dir_parts, name) as handle:
        prefix = struct.pack("<Q", len(header_bytes)) + header_bytes
        handle.write(prefix)
        shard_digest.update(prefix)
        offset = data_start
        for member, slices, datas, size in shard_members:
            digest = hashlib.sha256()
            for tensor in datas:
                chunk = _tensor_bytes(tensor)
                handle.write(chunk)
                digest.update(chunk)
                shard_digest.update(chunk)
            refs[member] = PackedRef(pack=pack, shard=name, member=member, offset=offset, length=size,
                                     sha256=digest.hexdigest(), tensors=tuple(slices))
            offset += size
    return refs, {"sha256": shard_digest.hexdigest(), "size_bytes": offset}


# -- reading ---------------------------------------------------------------------------------------

def read_member(storage: Storage, ref: PackedRef) -> dict[str, Any]:
    """The tensors of one member: one ranged read of its bytes, checked against ``ref.sha256``
    (IntegrityError naming the member and pack on mismatch), tensors built from the bytes
    (no pickle, no safetensors header parse)."""
    import torch

    where = f"member {ref.member!r} of pack {storage.uri_of(*ref.pack_parts)}"
    try:
        data = storage.read_range(*ref.pack_parts, ref.shard, offset=ref.offset, length=ref.length)
    except NotFound:
        raise NotFound(f"{where}: shard {ref.shard} does not exist; the pack was moved or deleted") from None
    actual = sha256_bytes(data)
    if actual != ref.sha256:
        raise IntegrityError(f"{where} ({ref.shard} bytes {ref.offset}..{ref.offset + ref.length}) has sha256 "
                             f"{actual[:12]}..., expected {ref.sha256[:12]}...: the shard was changed or corrupted; "
                             "re-write the pack")
    buffer = bytearray(data)  # writable and owned: the tensors below are views of it (one copy in all)
    del data
    out: dict[str, Any] = {}
    for t in ref.tensors:
        dtype = getattr(torch, _DTYPES[t.dtype][0])
        count = math.prod(t.shape)
        if count == 0:
            out[t.name] = torch.empty(t.shape, dtype=dtype)
        else:
            out[t.name] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=t.start).reshape(t.shape)
    return out


def read_index(storage: Storage, *pack_dir_parts: str) -> PackIndex:
    """The index of a complete pack; NotFound if the pack was never completed (no index.json)."""
    pack = "/".join(pack_dir_parts)
    try:
        raw = storage.read_json(*pack_dir_parts, PACK_INDEX_FILE)
    except NotFound:
        raise NotFound(f"pack {storage.uri_of(*pack_dir_parts)} has no {PACK_INDEX_FILE}: it does not exist or was "
                       "never completed") from None
    where = storage.uri_of(*pack_dir_parts, PACK_INDEX_FILE)
    if not isinstance(raw, dict) or not isinstance(raw.get("members"), dict) or not isinstance(raw.get("shards"), dict):
        raise IntegrityError(f"{where} is not a pack index: expected an object with 'members' and 'shards'")
    members = {m: PackedRef.from_dict(r, where=f"{where} member {m!r}") for m, r in raw["members"].items()}
    return PackIndex(pack=pack, members=members, shards=dict(raw["shards"]))


def verify_pack(storage: Storage, *pack_dir_parts: str) -> PackIndex:
    """Read the index and check every shard's sha256 (reads every byte); IntegrityError naming
    the shard on mismatch."""
    index = read_index(storage, *pack_dir_parts)
    for name, info in index.shards.items():
        try:
            actual = storage.sha256(*pack_dir_parts, name)
        except NotFound:
            raise IntegrityError(f"{storage.uri_of(*pack_dir_parts, name)} is listed in the pack index but missing") from None
        if actual != info.get("sha256"):
            raise IntegrityError(f"{storage.uri_of(*pack_dir_parts, name)} has sha256 {actual[:12]}..., the pack index "
                                 f"says {str(info.get('sha256'))[:12]}...: the shard was changed or corrupted")
    return index
