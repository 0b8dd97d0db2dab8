"""The extended tier: tests CI leaves out to stay within its time budget,
skipped with a reason that says how to run them (README: "What CI leaves
out").  `GUESTFAIL_EXTENDED=1 .ci/test` runs everything."""

from __future__ import annotations

import os

import pytest

EXTENDED = os.environ.get("GUESTFAIL_EXTENDED") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if EXTENDED:
        return
    why = "extended tier, outside CI's time budget: run with GUESTFAIL_EXTENDED=1 (README)"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("extended") is not None:
            item.add_marker(skip)
