"""The storage layer on local disk and on a real S3 server (SeaweedFS), parametrized."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mlplat.errors import IntegrityError, NotFound, StorageError, UnsafePath, WeightsFormatError
from mlplat.storage import MANIFEST_NAME, TMP_PREFIX, load_weights, open_root, save_weights


def test_round_trip(storage):
    ref = storage.write_bytes(b"hello", "notes", "a.txt")
    assert ref.path == "notes/a.txt" and ref.size_bytes == 5
    assert storage.read_bytes("notes", "a.txt") == b"hello"
    assert storage.sha256("notes", "a.txt") == ref.sha256
    assert storage.exists("notes", "a.txt") and storage.is_dir("notes")
    assert storage.list_dir("notes") == ["a.txt"]
    storage.write_json({"k": [1, 2]}, "notes", "b.json")
    assert storage.read_json("notes", "b.json") == {"k": [1, 2]}
    storage.delete("notes", "a.txt")
    assert not storage.exists("notes", "a.txt")
    with pytest.raises(NotFound, match="a.txt"):
        storage.read_bytes("notes", "a.txt")


def test_overwrite_is_atomic_replace(storage):
    storage.write_bytes(b"one", "x.bin")
    storage.write_bytes(b"two", "x.bin")
    assert storage.read_bytes("x.bin") == b"two"


def test_failed_write_leaves_nothing(storage):
    with pytest.raises(RuntimeError):
        with storage.open_write("d", "half.bin") as handle:
            handle.write(b"x" * 1000)
            raise RuntimeError("writer died")
    assert not storage.exists("d", "half.bin")
    assert storage.list_dir("d") == []
    assert not [n for n in storage.fs.get_file_info(_selector(storage.path("d"))) if n.base_name.startswith(TMP_PREFIX)]


def _selector(path):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, allow_not_found=True)


def test_traversal_never_opens_a_file(storage):
    for bad in ["../x", "%2e%2e%2f", "s3://other/", "/etc/passwd"]:
        with pytest.raises(UnsafePath):
            storage.read_bytes("models", bad)
        with pytest.raises(UnsafePath):
            storage.write_bytes(b"x", bad)


def test_manifest_detects_corruption(storage):
    files = {name: storage.write_bytes(name.encode() * 10, "art", name).sha256 for name in ("a.bin", "b.bin")}
    storage.write_manifest(files, "art", kind="test")
    assert storage.verify_manifest("art")["kind"] == "test"
    storage.write_bytes(b"tampered", "art", "b.bin")
    with pytest.raises(IntegrityError, match="b.bin"):
        storage.verify_manifest("art")
    storage.delete("art", "a.bin")
    with pytest.raises(IntegrityError, match="missing"):
        storage.verify_manifest("art")
    with pytest.raises(NotFound, match=MANIFEST_NAME):
        storage.verify_manifest("never-written")


def test_weights_round_trip_bit_identical(storage):
    tensors = {"w": torch.randn(64, 32), "b": torch.arange(10, dtype=torch.int64), "h": torch.randn(3).half()}
    ref = save_weights(storage, tensors, "models", "m", "v1", "model.safetensors", metadata={"arch": "mlp"})
    loaded = load_weights(storage, "models", "m", "v1", "model.safetensors", expected_sha256=ref.sha256)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_weights_checksum_mismatch(storage):
    ref = save_weights(storage, {"w": torch.ones(4)}, "m.safetensors")
    save_weights(storage, {"w": torch.zeros(4)}, "m.safetensors")
    with pytest.raises(IntegrityError, match=ref.sha256[:12]):
        load_weights(storage, "m.safetensors", expected_sha256=ref.sha256)


class _Exploit:
    """Unpickling this would create a marker file: the test proves it never runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_posing_as_weights_is_refused_unexecuted(storage, tmp_path):
    marker = tmp_path / "pwned"
    storage.write_bytes(pickle.dumps(_Exploit(str(marker))), "evil.safetensors")
    with pytest.raises(WeightsFormatError, match="pickle"):
        load_weights(storage, "evil.safetensors", expected_sha256=None)
    # torch.save produces a zip with a pickle inside
    buffer_path = tmp_path / "t.pt"
    torch.save({"w": torch.ones(2), "x": _Exploit(str(marker))}, buffer_path)
    storage.write_bytes(buffer_path.read_bytes(), "evil2.safetensors")
    with pytest.raises(WeightsFormatError, match="torch.save"):
        load_weights(storage, "evil2.safetensors", expected_sha256=None)
    storage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not-json-header", "junk.safetensors")
    with pytest.raises(WeightsFormatError):
        load_weights(storage, "junk.safetensors", expected_sha256=None)
    assert not marker.exists()


def test_unusable_roots(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StorageError, match=str(a_file)):
        open_root(str(a_file))
    with pytest.raises(StorageError, match="cannot be created"):
        open_root(str(a_file / "below"))
    with pytest.raises(StorageError, match="unsupported scheme"):
        open_root("ftp://host/x")
    with pytest.raises(StorageError, match="no bucket"):
        open_root("s3://")


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from mlplat.config import S3Settings
    from mlplat.storage import open_root
    uri, endpoint, key, secret = sys.argv[1:5]
    storage = open_root(uri, S3Settings(endpoint_url=endpoint or None, access_key=key or None, secret_key=secret or None))
    with storage.open_write("big", "weights.bin") as handle:
        print("writing", flush=True)
        for _ in range(100000):
            handle.write(b"x" * 65536)
            time.sleep(0.001)
""")


def test_writer_killed_mid_write_leaves_nothing_complete(storage, request):
    """SIGKILL a writer mid-write: no object at the final name, ever."""
    s3 = request.getfixturevalue("s3_settings") if not storage.is_local else None
    args = [storage.uri, s3.endpoint_url if s3 else "", s3.access_key.get_secret_value() if s3 else "",
            s3.secret_key.get_secret_value() if s3 else ""]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(1.0)
    proc.kill()
    proc.wait(timeout=10)
    assert not storage.exists("big", "weights.bin")
    assert storage.list_dir("big") == []


_FULL_DISK_WRITER = textwrap.dedent("""
    import resource, signal, sys
    from mlplat.errors import StorageError
    from mlplat.storage import open_root
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    storage = open_root(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # the "disk" holds 64 KiB
    try:
        storage.write_bytes(b"x" * (1024 * 1024), "models", "m", "model.safetensors")
    except StorageError as exc:
        print("StorageError:", exc)
""")


def test_storage_full_is_a_clean_error(tmp_path):
    """F9: a write that runs out of space names the path and leaves no file behind."""
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-c", _FULL_DISK_WRITER, str(root)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("StorageError:"), out.stdout + out.stderr
    assert "models/m/model.safetensors" in out.stdout
    assert os.listdir(root / "models" / "m") == []


@pytest.mark.parametrize("shape", [(8, 4), (3,), (128, 7), (1, 1, 1, 5)])
def test_weights_whose_header_length_starts_like_a_pickle_load(storage, shape):
    """A safetensors header length of 128..255 bytes begins with 0x80, pickle's opcode."""
    tensors = {"weight": torch.randn(*shape), "bias": torch.zeros(4)}
    ref = save_weights(storage, tensors, "w.safetensors")
    loaded = load_weights(storage, "w.safetensors", expected_sha256=ref.sha256)
    assert torch.equal(loaded["weight"], tensors["weight"])
