"""Packed, single-file and sharded weights on local disk and on a real S3 server (SeaweedFS):
ranged reads, packs, and every placement through save_bundle/load_bundle. No Ray."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mlplat.config import WeightStorageSettings
from mlplat.errors import AlreadyExists, IntegrityError, NotFound, ValidationError
from mlplat.models import ModelSpec, build_model, load_bundle, read_member, save_bundle, write_pack
from mlplat.models.bundle import BUNDLE_FILE, SHARD_INDEX_FILE, WEIGHTS_FILE, bundle_dir
from mlplat.models.packed import PACK_INDEX_FILE, PackedRef, read_index, verify_pack

SPEC = ModelSpec(task="regression", architecture="mlp", hidden=[16, 8])
INPUTS = [f"x{i}" for i in range(6)]


def _members(count: int) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return {f"member-{i:03d}": {"layer.weight": torch.randn(4, 3 + i % 5, generator=gen),
                                "layer.bias": torch.randn(4, generator=gen).to(torch.bfloat16),
                                "steps": torch.tensor(i, dtype=torch.int64),
                                "mask": torch.rand(i % 4, generator=gen) > 0.5,   # empty for every 4th member
                                "scale": torch.randn(2, generator=gen).half()}
            for i in range(count)}


class Counting:
    """Wraps a Storage instance's read methods to count calls (the real methods still run)."""

    def __init__(self, storage):
        self.calls: list[tuple[str, tuple]] = []
        for method in ("read_range", "read_bytes"):
            real = getattr(storage, method)

            def wrapped(*parts, _real=real, _method=method, **kwargs):
                self.calls.append((_method, parts))
                return _real(*parts, **kwargs)

            object.__setattr__(storage, method, wrapped)  # Storage is a frozen dataclass

    def of(self, method: str) -> list[tuple]:
        return [parts for m, parts in self.calls if m == method]


def _local_copy(storage, tmp_path, *parts) -> str:
    path = tmp_path / parts[-1]
    path.write_bytes(storage.read_bytes(*parts))
    return str(path)


# -- Storage.read_range -------------------------------------------------------------------------------

def test_read_range(storage):
    data = bytes(range(256)) * 40
    storage.write_bytes(data, "blobs", "a.bin")
    assert storage.read_range("blobs", "a.bin", offset=0, length=10) == data[:10]
    assert storage.read_range("blobs", "a.bin", offset=1000, length=5000) == data[1000:6000]
    assert storage.read_range("blobs", "a.bin", offset=len(data) - 3, length=3) == data[-3:]
    assert storage.read_range("blobs", "a.bin", offset=len(data), length=0) == b""
    with pytest.raises(IntegrityError) as info:
        storage.read_range("blobs", "a.bin", offset=len(data) - 3, length=4)
    message = str(info.value)
    assert "blobs/a.bin" in message and f"offset {len(data) - 3}" in message and "length 4" in message
    assert f"{len(data)} bytes" in message
    with pytest.raises(IntegrityError, match="non-negative"):
        storage.read_range("blobs", "a.bin", offset=-1, length=2)
    with pytest.raises(NotFound, match="blobs/missing.bin"):
        storage.read_range("blobs", "missing.bin", offset=0, length=1)


# -- packs ----------------------------------------------------------------------------------------------

def test_pack_round_trip_across_shards_one_read_per_member(storage, tmp_path):
    members = _members(60)
    refs = write_pack(storage, members, "packs", "p1", shard_max_bytes=600)
    shards = sorted({ref.shard for ref in refs.values()})
    assert len(shards) >= 3, shards
    assert sorted(storage.list_dir("packs", "p1")) == sorted([*shards, PACK_INDEX_FILE])
    counting = Counting(storage)
    for member, tensors in members.items():
        ref = PackedRef.from_dict(json.loads(json.dumps(refs[member].to_dict())))  # as stored in a bundle
        before = len(counting.calls)
        loaded = read_member(storage, ref)
        assert counting.calls[before:] == [("read_range", ("packs", "p1", ref.shard))]
        assert set(loaded) == set(tensors)
        for name, tensor in tensors.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), (member, name)
    # index: complete, every shard's sha256 right, members findable
    index = verify_pack(storage, "packs", "p1")
    assert set(index.members) == set(members) and index.ref("member-007") == refs["member-007"]


def test_shard_is_valid_safetensors_with_member_keys(storage, tmp_path):
    members = _members(8)
    refs = write_pack(storage, members, "packs", "p2", shard_max_bytes=10_000)
    assert {ref.shard for ref in refs.values()} == {"shard-00000.safetensors"}
    path = _local_copy(storage, tmp_path, "packs", "p2", "shard-00000.safetensors")
    with safe_open(path, "pt") as handle:
        keys = set(handle.keys())
        assert keys == {f"{m}/{t}" for m, tensors in members.items() for t in tensors}
        assert torch.equal(handle.get_tensor("member-003/layer.weight"), members["member-003"]["layer.weight"])
        assert handle.metadata()["format"] == "pt"


def test_corrupt_member_fails_alone(storage):
    members = _members(10)
    refs = write_pack(storage, members, "packs", "p3", shard_max_bytes=100_000)
    victim = refs["member-004"]
    raw = bytearray(storage.read_bytes("packs", "p3", victim.shard))
    raw[victim.offset + victim.length // 2] ^= 0xFF
    storage.write_bytes(bytes(raw), "packs", "p3", victim.shard)
    with pytest.raises(IntegrityError) as info:
        read_member(storage, victim)
    assert "member-004" in str(info.value) and "packs/p3" in str(info.value)
    for member in ("member-003", "member-005", "member-009"):
        assert torch.equal(read_member(storage, refs[member])["layer.weight"], members[member]["layer.weight"])
    with pytest.raises(IntegrityError, match="shard-00000"):
        verify_pack(storage, "packs", "p3")


def test_missing_member_pack_and_stale_ref(storage):
    refs = write_pack(storage, _members(3), "packs", "p4", shard_max_bytes=100_000)
    index = read_index(storage, "packs", "p4")
    with pytest.raises(NotFound) as info:
        index.ref("member-999")
    assert "member-999" in str(info.value) and "packs/p4" in str(info.value)
    with pytest.raises(NotFound, match="packs/nowhere"):
        read_index(storage, "packs", "nowhere")
    ref = refs["member-001"]
    past_end = PackedRef(**{**ref.__dict__, "offset": ref.offset + 10_000})
    with pytest.raises(IntegrityError, match="past the end"):
        read_member(storage, past_end)
    gone = PackedRef(**{**ref.__dict__, "shard": "shard-00042.safetensors"})
    with pytest.raises(NotFound, match="member-001"):
        read_member(storage, gone)


def test_pack_input_checks(storage):
    write_pack(storage, _members(2), "packs", "p5", shard_max_bytes=1000)
    with pytest.raises(AlreadyExists, match="immutable"):
        write_pack(storage, _members(2), "packs", "p5", shard_max_bytes=1000)
    with pytest.raises(ValidationError, match="member name"):
        write_pack(storage, {"a/b": {"w": torch.zeros(1)}}, "packs", "p6", shard_max_bytes=1000)
    with pytest.raises(ValidationError, match="torch.Tensor"):
        write_pack(storage, {"a": {"w": [1.0]}}, "packs", "p6", shard_max_bytes=1000)
    with pytest.raises(IntegrityError, match="valid packed-weights reference"):
        PackedRef.from_dict({"pack": "p", "shard": "s"})


# -- every placement through save_bundle / load_bundle ---------------------------------------------------

def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(SPEC, len(INPUTS))


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


@pytest.mark.parametrize(("settings", "kind", "files"), [
    (None, "file", {BUNDLE_FILE, WEIGHTS_FILE}),
    (WeightStorageSettings(), "packed", {BUNDLE_FILE}),
    (WeightStorageSettings(packed_max_bytes=0), "file", {BUNDLE_FILE, WEIGHTS_FILE}),
    (WeightStorageSettings(packed_max_bytes=0, file_max_bytes=100, shard_max_bytes=300), "sharded",
     {BUNDLE_FILE, SHARD_INDEX_FILE, *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5))}),
])
def test_each_placement_round_trips(storage, settings, kind, files):
    model = _model()  # tensors of 384, 64, 512, 32, 32 and 4 bytes: 4 shards of at most 300 bytes, big tensors alone
    ref = save_bundle(storage, "churn", 1, model, spec=SPEC, input_columns=INPUTS, weights=settings)
    assert set(storage.list_dir(*bundle_dir("churn", 1))) == files
    counting = Counting(storage)
    loaded = load_bundle(storage, "churn", 1, expected_sha256=ref.sha256)
    assert loaded.placement == kind and loaded.meta["weight_bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values())
    assert _same_weights(model, loaded.model) and not loaded.model.training
    reads = [parts[-1] for _, parts in counting.calls]
    expected_reads = {"file": [BUNDLE_FILE, WEIGHTS_FILE], "packed": [BUNDLE_FILE],
                      "sharded": [BUNDLE_FILE, *sorted(files - {BUNDLE_FILE, SHARD_INDEX_FILE})]}[kind]
    assert reads == expected_reads  # the sharded index is for tools: a load never reads it


def test_packed_ref_bundle_is_two_reads(storage):
    models = {f"m{i}": _model(i) for i in range(5)}
    refs = write_pack(storage, {n: m.state_dict() for n, m in models.items()}, "models", "fam", "packs", "p1",
                      shard_max_bytes=2000)
    bundles = {n: save_bundle(storage, n, 1, m, spec=SPEC, input_columns=INPUTS, placement=refs[n])
               for n, m in models.items()}
    assert storage.list_dir(*bundle_dir("m3", 1)) == [BUNDLE_FILE]
    counting = Counting(storage)
    loaded = load_bundle(storage, "m3", 1, expected_sha256=bundles["m3"].sha256)
    assert _same_weights(models["m3"], loaded.model) and loaded.placement == "packed"
    assert [m for m, _ in counting.calls] == ["read_bytes", "read_range"]
    with pytest.raises(IntegrityError, match="does not hold the weights"):
        other = ModelSpec(task="regression", architecture="mlp", hidden=[4])
        save_bundle(storage, "m9", 1, build_model(other, len(INPUTS)), spec=other, input_columns=INPUTS,
                    placement=refs["m1"])


def test_sharded_shard_corruption_and_device(storage):
    settings = WeightStorageSettings(packed_max_bytes=0, file_max_bytes=100, shard_max_bytes=300)
    model = _model()
    ref = save_bundle(storage, "big", 1, model, spec=SPEC, input_columns=INPUTS, weights=settings)
    loaded = load_bundle(storage, "big", 1, expected_sha256=ref.sha256, device="cpu")
    assert _same_weights(model, loaded.model)
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}
    index = storage.read_json(*bundle_dir("big", 1), SHARD_INDEX_FILE)  # the Hugging Face index, for tools
    assert set(index["weight_map"]) == set(model.state_dict()) and index["metadata"]["total_size"] > 0
    second = "model-00002-of-00004.safetensors"
    raw = bytearray(storage.read_bytes(*bundle_dir("big", 1), second))
    raw[-1] ^= 0xFF
    storage.write_bytes(bytes(raw), *bundle_dir("big", 1), second)
    with pytest.raises(IntegrityError, match=second):
        load_bundle(storage, "big", 1, expected_sha256=ref.sha256)


def test_bundle_without_placement_still_loads(storage):
    """A bundle written before placements existed (format 1: no placement, no weight_bytes)."""
    model = _model()
    save_bundle(storage, "old", 1, model, spec=SPEC, input_columns=INPUTS)
    meta = storage.read_json(*bundle_dir("old", 1), BUNDLE_FILE)
    del meta["placement"], meta["weight_bytes"]
    assert meta["format"] == 1 and set(meta["files"]) == {WEIGHTS_FILE}
    old = storage.write_bytes(json.dumps(meta, indent=2, sort_keys=True).encode(), *bundle_dir("old", 1), BUNDLE_FILE)
    loaded = load_bundle(storage, "old", 1, expected_sha256=old.sha256)
    assert loaded.placement == "file" and _same_weights(model, loaded.model)


def test_inline_weights_tampered_or_unknown_placement(storage):
    model = _model()
    save_bundle(storage, "tiny", 1, model, spec=SPEC, input_columns=INPUTS, weights=WeightStorageSettings())
    meta = storage.read_json(*bundle_dir("tiny", 1), BUNDLE_FILE)
    assert meta["format"] == 2 and meta["placement"]["kind"] == "packed" and meta["files"] == {}
    meta["placement"]["inline"]["sha256"] = "0" * 64  # without the registry's sha256 the inline one still guards
    storage.write_json(meta, *bundle_dir("tiny", 1), BUNDLE_FILE)
    with pytest.raises(IntegrityError, match="inline weights"):
        load_bundle(storage, "tiny", 1, expected_sha256=None)
    meta["placement"] = {"kind": "tape"}
    storage.write_json(meta, *bundle_dir("tiny", 1), BUNDLE_FILE)
    with pytest.raises(IntegrityError, match="newer mlplat"):
        load_bundle(storage, "tiny", 1, expected_sha256=None)
