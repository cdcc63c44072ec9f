"""Storage benchmark: weights save+load round trips, safetensors vs torch.save/torch.load.

Same tensors (~67 MB float32 in 12 layers), same local disk, interleaved repeats in one run:
- mlplat's path: safetensors bytes, atomic write with fsync, sha256 on write and verified on load;
- plain safetensors ``save_file`` + ``load_file`` (the format alone; tensors touched so the
  lazy mmap load is paid for);
- baseline: ``torch.save`` + ``torch.load(weights_only=True)`` (no fsync, no checksum).
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from bench.common import row
from mlplat.storage import load_weights, open_root, save_weights


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(1024, 1365, generator=gen) for i in range(12)}


def run(repeats: int = 7) -> list[dict]:
    tensors = _tensors()
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_root(tmp)

        def mlplat_path():
            ref = save_weights(storage, tensors, "model.safetensors")
            load_weights(storage, "model.safetensors", expected_sha256=ref.sha256)

        def plain_safetensors():
            save_file(tensors, f"{tmp}/plain.safetensors")
            loaded = load_file(f"{tmp}/plain.safetensors")
            for t in loaded.values():
                t.sum()

        def torch_pickle():
            torch.save(tensors, f"{tmp}/model.pt")
            loaded = torch.load(f"{tmp}/model.pt", weights_only=True)
            for t in loaded.values():
                t.sum()

        sides = {"mlplat": mlplat_path, "plain": plain_safetensors, "torch": torch_pickle}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for fn in sides.values():
            fn()  # warm-up
        for _ in range(repeats):
            for name, fn in sides.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    mbs = {name: size_mb / statistics.median(t) for name, t in times.items()}
    baseline = "torch.save + torch.load(weights_only=True), no fsync/checksum"
    return [
        row("storage", f"mlplat save_weights+load_weights, {size_mb:.0f} MB (fsync + sha256 write & verify)", mbs["mlplat"],
            "MB/s", baseline=baseline, baseline_value=mbs["torch"], target="informational"),
        row("storage", f"plain safetensors save_file+load_file, {size_mb:.0f} MB", mbs["plain"], "MB/s",
            baseline=baseline, baseline_value=mbs["torch"], target="informational"),
    ]


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
