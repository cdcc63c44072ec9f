"""Names and path safety: every traversal form is refused before any file is opened."""

from __future__ import annotations

import pytest

from mlplat.errors import InvalidName, UnsafePath
from mlplat.names import parse_serving_id, serving_id, validate_name
from mlplat.storage import safe_join

TRAVERSALS = [
    "../x",
    "%2e%2e%2f",
    "%252e%252e%252f",
    "..\\x",
    "/abs/path",
    "s3://other/",
    "file://etc/passwd",
    "a\x00b",
    "a/../../b",
    "~/x",
    "",
    ".",
    "a//b",
    ".tmp-123-x",
]


@pytest.mark.parametrize("part", TRAVERSALS)
def test_safe_join_rejects(part):
    with pytest.raises(UnsafePath) as info:
        safe_join("/root", "models", part)
    assert repr(part) in str(info.value)


def test_safe_join_rejects_non_strings():
    with pytest.raises(UnsafePath):
        safe_join("/root", 3)  # type: ignore[arg-type]


def test_safe_join_accepts_plain_and_hive_paths():
    assert safe_join("/root", "datasets/clicks/v1", "date=2026-11-27", "part-0.parquet") == (
        "/root/datasets/clicks/v1/date=2026-11-27/part-0.parquet"
    )
    assert safe_join("bucket/prefix", "a") == "bucket/prefix/a"


@pytest.mark.parametrize("name", ["churn", "a", "m-1_x", "a" * 63])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "1abc", "-a", "a" * 64, "a b", "a/b", "../x", "a.b", None, 7, "é"])
def test_invalid_names(name):
    with pytest.raises(InvalidName) as info:
        validate_name(name, "model name")
    assert "model name" in str(info.value)


def test_serving_id_round_trip():
    assert serving_id("churn", 7) == "churn@v7"
    assert parse_serving_id("churn@v7") == ("churn", 7)
    for bad in ["churn", "churn@7", "churn@v0", "../x@v1", "churn@v1/x"]:
        with pytest.raises(InvalidName):
            parse_serving_id(bad)
