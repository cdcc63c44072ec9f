"""mlplat benchmarks: each module exposes ``run() -> list[dict]``; ``python -m bench [name]`` runs them."""
