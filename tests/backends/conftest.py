"""The session's SeaweedFS (started on first use, stopped by PID at the end), and its
log's tail attached to the report of every failed test that used it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from weed import start_weed

from petrel.testing.seaweedfs import SeaweedFS

_LOG_TAIL_BYTES = 6000


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = start_weed(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.kill()  # throwaway data: no need to wait for a clean exit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "weed" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("weed") if hasattr(item, "funcargs") else None
        if isinstance(server, SeaweedFS):
            report.sections.append((f"SeaweedFS log (tail of {server.log_path})",
                                    server.log_tail(_LOG_TAIL_BYTES)))
