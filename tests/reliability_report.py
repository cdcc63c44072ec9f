"""docs/reliability.md from a test run: one table of faults and bad inputs, each with its
test, its criterion and what the last run of that test measured.

    python -m tests.reliability_report --run                 # run every row's tests, write the table
    python -m tests.reliability_report --run --rows F6,F9    # only these rows; other rows keep their last result
    python -m tests.reliability_report                       # write the table from the recorded results
    python -m pytest -p tests.reliability_report ...         # any pytest run records the rows' tests it ran

Results are kept per test in docs/reliability.json (outcome, seconds, when, and what the test
measured: a test reports numbers with pytest's ``record_property(name, value)``). A row shows
"not run" until one of its tests has run, so the table never claims more than a run showed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "reliability.json"
TABLE = REPO / "docs" / "reliability.md"

I = "tests/integration/"  # noqa: E741 - short prefixes keep the rows readable
U = "tests/unit/"


@dataclass(frozen=True)
class Row:
    id: str
    fault: str
    criterion: str
    #: test node ids or prefixes of them (a prefix takes every parametrization)
    tests: tuple[str, ...]
    note: str = ""


ROWS: tuple[Row, ...] = (
    # -- faults (quality-bar.md) --------------------------------------------------------------
    Row("F1", "kill a Serve replica (`ray.kill`) under steady load",
        "failures <= requests in flight on it; 0 once the replacement runs; 0 with one client retry on 5xx",
        (I + "test_serving_faults.py::test_f1_kill_pool_replica_under_load",)),
    Row("F2", "hot-swap to a new version, then roll back, under load",
        "0 non-2xx; every response names the old or the new version; after rollback 100% old",
        (I + "test_rollout.py::test_f2_swap_then_rollback_under_load",)),
    Row("F3", "deploy a bad version (constructor raises, NaN output, checksum mismatch)",
        "the old version keeps serving with 0 5xx; the bad one ends REJECTED",
        (I + "test_rollout.py::test_f3_bad_versions_never_take_traffic",)),
    Row("F4", "kill the Serve controller under load", "0 failed requests",
        (I + "test_serving_faults.py::test_f4_kill_serve_controller_under_load",)),
    Row("F5", "SIGKILL the registry actor during 1,000 writes with idempotency keys",
        "every acknowledged write present; no duplicates; no illegal transition",
        (I + "test_registry_actor.py::test_f5_sigkill_actor_during_1000_idempotent_writes",)),
    Row("F6", "kill the driver mid-registration: at each step (registered, TRAINING, mid-weights, weights, "
              "mid-bundle.json, bundle, committed) and at random moments; local disk and S3; and a registry "
              "client killed mid-batch",
        "each version absent (unfinished, no bundle) or complete with matching sha256; the next driver registers",
        (I + "test_f6_registration_kill.py::", I + "test_registry_actor.py::test_f6_client_killed_mid_registration")),
    Row("F7", "kill a training worker mid-epoch (max_failures >= 1)",
        "resumes from the last checkpoint: first step = checkpoint step + 1, loss not back at its start",
        (I + "test_training.py::test_f7_worker_killed_mid_epoch_resumes",)),
    Row("F8", "corrupt the latest checkpoint", "detected by its checksum; training falls back to the previous one",
        (I + "test_training.py::test_f8_corrupted_latest_checkpoint_falls_back",)),
    Row("F9", "storage full (RLIMIT_FSIZE), a read-only directory, the S3 server killed mid-upload, "
              "the storage root gone while serving",
        "clean error naming the path; nothing half-written visible; serving answers from memory; "
        "work resumes when storage returns",
        (I + "test_storage_faults.py::", I + "test_storage.py::test_storage_full_is_a_clean_error",
         I + "test_storage.py::test_writer_killed_mid_write_leaves_nothing_complete")),
    Row("F10", "lose a node of a multi-node cluster (`Cluster.remove_node`)",
        "registry and serving recover; acknowledged state intact",
        (I + "test_multinode.py::test_f10_",)),
    # -- bad input (quality-bar.md and issue 17) ------------------------------------------------
    Row("B1", "malformed JSON, wrong top-level shape, invalid UTF-8, duplicate keys, a 5,000-digit integer",
        "400 naming the field, no Python internals in the message",
        (I + "test_serving.py::test_bad_bodies_are_4xx_naming_the_field", U + "test_request_bad_input.py::")),
    Row("B2", "wrong feature names, tensor shape or datatype, NaN/Inf, numbers out of range",
        "422 with the offending field",
        (I + "test_serving.py::test_bad_v2_requests", U + "test_request_bad_input.py::test_malformed_tensors",
         U + "test_request_bad_input.py::test_numbers_beyond")),
    Row("B3", "body over the limit, deeply nested JSON", "413",
        (I + "test_serving.py::test_bad_bodies_are_4xx_naming_the_field",)),
    Row("B4", "model names `../x`, `%2e%2e%2f`, `%252e%252e%252f`, `..\\x`, absolute paths, NUL, `s3://`, `file://`",
        "400, no file opened",
        (I + "test_serving.py::test_unsafe_model_names_are_400", U + "test_names_and_paths.py::",
         I + "test_storage.py::test_traversal_never_opens_a_file")),
    Row("B5", "unknown model or version", "404, no load attempted",
        (I + "test_serving.py::test_unknown_model_or_version_is_404",)),
    Row("B6", "missing, wrong, empty bearer token", "401", (I + "test_serving.py::test_auth",)),
    Row("B7", "a weights file that is a pickle", "rejected; nothing executed",
        (I + "test_storage.py::test_pickle_posing_as_weights_is_refused_unexecuted",)),
    Row("B8", "config YAML with unknown keys or wrong types", "one clear error naming the key",
        (U + "test_config.py::test_unknown_key_is_named_by_dotted_path", U + "test_config.py::test_wrong_type")),
    Row("B9", "headers without a body, a body at 1 byte per 0.25 s, a Content-Length 100 bytes longer than the body",
        "408 within the body deadline + 5 s; other requests and health answered meanwhile",
        (I + "test_overload.py::test_headers_without_a_body_get_408_and_others_are_served_meanwhile",
         I + "test_overload.py::test_more_stuck_clients_than_slots_never_starve_health",
         I + "test_overload.py::test_content_length_longer_than_the_body_gets_408_within_the_deadline",
         I + "test_overload.py::test_a_body_at_one_byte_per_interval_gets_408_after_the_deadline")),
    Row("B10", "load past capacity (32 clients on a 0.5 s model that takes 1 at a time)",
        "503 + Retry-After within 2 s, the API's error body; only 200/503; health < 2 s; within 10 s after: "
        "requests succeed and normal-load p99 <= 3x its level before + 0.2 s",
        (I + "test_overload.py::test_overload_is_shed_with_503_and_retry_after_while_health_answers",
         U + "test_load_shedding.py::")),
    Row("B11", "schemathesis on /openapi.json (all checks, bodies fuzzed); undeclared methods; the document "
               "itself; /openapi.json and /docs without a token",
        "0 failures; 405 with Allow; every POST declares its body and every status its real error body; 401",
        (I + "test_openapi_fuzz.py::", U + "test_openapi_document.py::"), note="issue 17, OpenAPI part"),
    Row("B12", "property-based names, configs, encoder specs, request bodies (hypothesis)",
        "valid, or one clear 4xx / config error; never an unhandled exception", (U + "test_properties.py::",),
        note="issue 17, properties part"),
    Row("B13", "tokens and S3 keys used in a run", "never in logs, answers or error messages",
        (I + "test_secrets.py::",), note="issue 17, security part"),
    Row("B14", "HAProxy stats (:8404) and metrics (:9101)", "bound to loopback only",
        (U + "test_haproxy_loopback.py::",), note="issue 17, security part"),
)


# -- pytest plugin: record the outcome of every row test that runs -----------------------------

_recorded: dict[str, dict[str, Any]] = {}


def _is_row_test(nodeid: str) -> bool:
    return any(nodeid.startswith(prefix) for row in ROWS for prefix in row.tests)


def pytest_runtest_logreport(report: Any) -> None:
    """Keep each row test's outcome: the call phase, or a setup that failed or skipped."""
    if not _is_row_test(report.nodeid):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _recorded[report.nodeid] = {
            "outcome": report.outcome, "seconds": round(report.duration, 2), "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "measured": {str(k): v for k, v in getattr(report, "user_properties", [])}}


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    if _recorded:
        results = load_results()
        results.update(_recorded)
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")


# -- the table -------------------------------------------------------------------------------------

def load_results() -> dict[str, dict[str, Any]]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def _short(nodeid: str) -> str:
    """``test_file.py::test_name`` without the directory and parameters."""
    return nodeid.split("/")[-1].split("[")[0]


def measured_cell(row: Row, results: dict[str, dict[str, Any]]) -> str:
    """What the recorded run showed for ``row``: passed/failed counts and time, then the numbers
    its tests recorded (pure: unit-testable over a results dict)."""
    mine = {k: v for k, v in sorted(results.items()) if any(k.startswith(p) for p in row.tests)}
    if not mine:
        return f"not run ({row.note})" if row.note else "not run"
    passed = [k for k, v in mine.items() if v["outcome"] == "passed"]
    failed = [k for k, v in mine.items() if v["outcome"] == "failed"]
    skipped = [k for k, v in mine.items() if v["outcome"] == "skipped"]
    seconds = sum(v["seconds"] for v in mine.values())
    parts = [f"{'**FAILED**' if failed else 'pass'}: {len(passed)}/{len(mine)} passed in {seconds:.0f} s"]
    if skipped:
        parts.append(f"{len(skipped)} skipped")
    if failed:
        parts.append("failed: " + ", ".join(sorted({_short(k) for k in failed})))
    for result in mine.values():
        for key, value in result.get("measured", {}).items():
            parts.append(f"{key} {value}")
    dates = sorted(v["at"] for v in mine.values())
    parts.append(f"run {dates[-1]}")
    return "; ".join(parts)


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Reliability: faults and bad inputs, measured",
        "",
        "Generated by `python -m tests.reliability_report --run` from the results of the tests named in",
        "each row (docs/reliability.json); do not edit by hand. The fault ids are quality-bar.md's;",
        "B-rows are its bad-input table and issue 17's. \"measured\" is what the last recorded run of the",
        "row's tests showed; a row whose tests did not run says so.",
        "",
        "| id | fault or input | test | criterion | measured result |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        tests = sorted({_short(t) if "::" in t and not t.endswith("::") else t.split("/")[-1].removesuffix("::")
                        for t in row.tests})
        cell = "<br>".join(f"`{t}`" for t in tests)
        lines.append(f"| {row.id} | {_escape(row.fault)} | {cell} | {_escape(row.criterion)} | "
                     f"{_escape(measured_cell(row, results))} |")
    return "\n".join(lines + ["", NOTES])


#: How the serving rows are met (settings in mlplat/config/serve.py ServeSettings), kept beside the table.
NOTES = """## How B9 and B10 are met

- **Load shedding.** An ingress replica admits at most `serve.ingress_max_ongoing_requests -
  serve.ingress_health_headroom` inference requests at once (default 256 - 16) and answers the
  rest at once with 503, `Retry-After: serve.retry_after_s` and the API's error body `{"error": ...}`
  (mlplat/serving/admission.py). Health and metadata routes are never counted, so the headroom
  keeps them answering. Behind it every deployment has a bounded Serve queue per caller
  (`serve.ingress_max_queued_requests`, `serve.pool.max_queued_requests`,
  `serve.dedicated.max_queued_requests`): a pool or dedicated queue that is full is a 503 with the
  same body; a full ingress queue is answered by Serve's proxy itself (503 + `Retry-After`, a
  plain-text body: Serve 2.60 has no hook for its text). The ingress waits at most
  `serve.backend_timeout_s` for a backend before a 503.
- **Slow and broken clients.** The whole request body must arrive within
  `serve.body_read_timeout_s` (default 10 s), else 408: headers without a body, a trickling body,
  a Content-Length longer than the body. A request waiting for its body holds one admission slot,
  never a health slot. On the direct port (`serve.direct_port`) the headers have the same
  deadline, from the request's first byte (from the connection's opening for its first
  request): past it the replica answers 408 and closes the connection, so a client trickling
  header bytes, or sending nothing, does not hold a connection for ever
  (`tests/unit/test_serving_direct.py::test_headers_that_do_not_arrive_in_time_get_a_408_and_the_connection_closes`).
- **HAProxy mode** (`serve.haproxy`). mlplat sets `RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S` from
  `serve.haproxy_timeout_client_s` (default 30 s; Serve's own is 3600 s). Serve 2.60 renders
  `timeout http-request` only from a field of its `HAProxyConfig` that no environment variable
  sets, and has no request buffering; mlplat's HAProxy wrapper (the one that keeps the stats and
  metrics listeners on loopback) adds `timeout http-request <serve.body_read_timeout_s>` and
  `option http-buffer-request` to the config's `defaults`, so HAProxy itself answers 408 to
  headers or a body that do not arrive in time, before a replica is involved
  (`tests/unit/test_haproxy_loopback.py::test_the_wrapper_runs_real_haproxy_with_stats_and_metrics_on_loopback_only`).
  The ingress's own body deadline stays for Serve's default proxy.
"""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the rows' tests first (pytest -p tests.reliability_report)")
    parser.add_argument("--rows", default="", help="comma-separated row ids to run (default: all)")
    args = parser.parse_args(argv)
    code = 0
    if args.run:
        wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
        unknown = wanted - {row.id for row in ROWS}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; rows are {[row.id for row in ROWS]}")
        targets = sorted({_target(t) for row in ROWS if not wanted or row.id in wanted for t in row.tests})
        present = [t for t in targets if (REPO / t.split("::")[0]).exists()]
        if present:
            code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.reliability_report", *present],
                                  cwd=REPO).returncode
    TABLE.write_text(render(load_results()))
    print(f"wrote {TABLE.relative_to(REPO)}")
    return code


def _target(test: str) -> str:
    """What pytest is given for a row's test: the whole file for a file prefix, the test
    function for a function-name prefix (``-k`` would be needed for partial names, so a
    partial name runs its whole file and only the matching results are kept)."""
    path, _, name = test.partition("::")
    return path if not name else f"{path}::{name}" if _is_full_name(path, name) else path


def _is_full_name(path: str, name: str) -> bool:
    file = REPO / path
    return file.exists() and (f"def {name}(" in file.read_text())


if __name__ == "__main__":
    sys.exit(main())
