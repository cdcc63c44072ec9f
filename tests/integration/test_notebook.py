"""examples/quickstart.ipynb runs top to bottom in its own kernel (nbclient).

The kernel starts its own small Ray (``address="local"``, 2 CPUs) and stops it, and Serve, at
the end. The kernel's environment has no RAY_ADDRESS or MLPLAT_* variables, and the test checks
that the notebook's Ray is not the session's and that nothing of it is left afterwards: the
session Ray has no new named actors, and nothing answers on the notebook's GCS and Serve
ports."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="dev dependency: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="dev dependency: pip install -e '.[dev]'")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 240
#: Appended after the cell that starts Ray: tells the test which Ray and port the notebook uses.
PROBE = 'print("PROBE", ray.get_runtime_context().gcs_address, port)'

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _listening(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts.append(data.get("text/html", "") + data.get("text/plain", ""))
    return "".join(parts)


def _durations(nb) -> list[float]:
    """Each executed code cell's wall time (nbclient's timestamps), for the log of a slow run."""
    from datetime import datetime

    out = []
    for cell in nb.cells:
        times = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.status.busy" in times and "shell.execute_reply" in times:
            start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00")) for k in ("iopub.status.busy",
                                                                                            "shell.execute_reply"))
            out.append(round((end - start).total_seconds(), 1))
    return out


def _kernel_env() -> dict[str, str]:
    """This process's environment without what would point the notebook at another Ray or
    another platform: it must start and use its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("MLPLAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NOTEBOOK.parents[1]), env.get("PYTHONPATH")]))
    return env


@pytest.mark.timeout(420)
def test_quickstart_notebook_runs_top_to_bottom(ray_session, tmp_path):
    import ray

    session_gcs = ray.get_runtime_context().gcs_address
    session_actors = sorted(map(str, ray.util.list_named_actors(all_namespaces=True)))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    init = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "ray.init(" in c.source)
    assert 'address="local"' in nb.cells[init].source  # never joins the session's (or any other) Ray
    nb.cells.insert(init + 1, nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=_kernel_env())  # raises CellExecutionError naming the cell on any error
    finally:
        print(f"kernel: {sys.executable}; seconds per code cell: {_durations(nb)}")

    _, notebook_gcs, port = _text(nb.cells[init + 1]).split()
    assert notebook_gcs != session_gcs
    by_source = {c.source: c for c in nb.cells if c.cell_type == "code"}
    outcome = next(c for s, c in by_source.items() if s.startswith("outcome = p.validate"))
    version = next(c for s, c in by_source.items() if s.startswith("p.registry.get_version"))
    answer = next(c for s, c in by_source.items() if "answer = p.predict" in s)
    trained = next(c for s, c in by_source.items() if s.startswith("run = p.train("))
    assert "2/2" in _text(trained), _text(trained)[-2000:]  # p.train(wait=True) in a kernel: a bar over the epochs
    html = [o["data"]["text/html"] for c in (outcome, version) for o in c.outputs if "text/html" in o.get("data", {})]
    assert len(html) == 2 and "ValidationOutcome clicks-ctr v1 · VALIDATED" in html[0]
    assert "ModelVersion clicks-ctr v1 · PRODUCTION" in html[1] and "metrics.validation.auc" in html[1]
    assert "'model_version': '1'" in _text(answer) and "'predictions': [" in _text(answer)

    # the notebook stopped its Ray and Serve, and left nothing in the session's Ray
    assert not _listening(notebook_gcs), f"the notebook's Ray still answers at {notebook_gcs}"
    assert not _listening(f"127.0.0.1:{port}"), f"the notebook's Serve still answers on port {port}"
    appeared = set(map(str, ray.util.list_named_actors(all_namespaces=True))) - set(session_actors)
    assert not appeared, f"the notebook created actors in the session's Ray: {sorted(appeared)}"
