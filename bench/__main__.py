"""Run benchmarks: ``python -m bench`` (all) or ``python -m bench storage registry``.

Each ``bench/<name>.py`` exposes ``run() -> list[dict]``. Results go to
``bench/results/<name>.json`` and every result file is collected into docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from bench.common import stamp, table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "benchmarks.md"
SKIP = {"__init__", "__main__", "common", "builders", "serving_load", "serving_cpu", "gpu_validation", "kserve_side",
        "pool_scale", "capacity"}  # capacity: the docs/scaling.md model; builders, serving_load, serving_cpu, kserve_side: helpers; gpu_validation: a GPU-machine check,
# pool_scale: a three-node cluster of its own (python -m bench.pool_scale); neither has run()


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP)


def main(names: list[str]) -> int:
    names = names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        rows = stamp(importlib.import_module(f"bench.{name}").run())
        (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(table(rows), flush=True)
    write_doc()
    return 0


def write_doc() -> None:
    """Collect every bench/results/*.json into the results table of docs/benchmarks.md."""
    sections = []
    for path in sorted(RESULTS.glob("*.json")):
        rows = json.loads(path.read_text())
        sections.append(f"### {path.stem}\n\n{table(rows)}\n")
    marker = "<!-- results -->"
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{marker}\n"
    head = text.split(marker)[0]
    DOC.write_text(head + marker + "\n\n" + "\n".join(sections))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
