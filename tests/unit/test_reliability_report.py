"""The reliability table is rendered from recorded results only (pure, no test run)."""

from __future__ import annotations

from tests.reliability_report import ROWS, Row, measured_cell, render

ROW = Row("F6", "kill the driver", "absent or complete", ("tests/integration/test_f6.py::",))


def test_a_row_without_results_says_not_run_and_why():
    assert measured_cell(ROW, {}) == "not run"
    assert measured_cell(Row("F10", "x", "y", ("t.py::",), note="other issue"), {}) == "not run (other issue)"


def test_a_row_shows_counts_time_and_what_its_tests_measured():
    results = {
        "tests/integration/test_f6.py::test_a[local]": {"outcome": "passed", "seconds": 2.0, "at": "2026-11-30 10:00 UTC",
                                                        "measured": {"kills": 7}},
        "tests/integration/test_f6.py::test_a[s3]": {"outcome": "passed", "seconds": 3.0, "at": "2026-11-30 10:01 UTC",
                                                     "measured": {}},
        "tests/integration/other.py::test_b": {"outcome": "failed", "seconds": 1.0, "at": "x", "measured": {}},
    }
    assert measured_cell(ROW, results) == "pass: 2/2 passed in 5 s; kills 7; run 2026-11-30 10:01 UTC"


def test_a_failure_is_named_and_never_reads_as_a_pass():
    results = {"tests/integration/test_f6.py::test_a[s3]": {"outcome": "failed", "seconds": 1.0, "at": "t", "measured": {}}}
    cell = measured_cell(ROW, results)
    assert cell.startswith("**FAILED**: 0/1 passed") and "failed: test_f6.py::test_a" in cell


def test_the_table_lists_f1_to_f10_and_escapes_pipes():
    ids = [row.id for row in ROWS]
    assert [i for i in ids if i.startswith("F")] == [f"F{n}" for n in range(1, 11)]
    table = render({})
    assert table.count("\n| F") == 10 and "| B9 |" in table
    import re

    for line in table.splitlines():
        if line.startswith("| F") or line.startswith("| B"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 6, line  # five cells: no unescaped | inside one
