"""Fixtures of the fault suite, and its machine-readable report.

Each scenario appends one JSON line to the file named by `LLMUX_FAULT_REPORT` (default:
`.pytest_cache/d/llmux-faults/report.jsonl` in this checkout): requests sent / answered /
cancelled / lost, statuses, wakes, duration and outcome. `python -m tests.faults.report` turns
the latest run into the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import Clients, Llmux, Tally, llmux_running

RUN_ID = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}-{os.getpid()}"


def report_path() -> Path:
    # The report outlives a run (re-running one scenario replaces its row), so it is not in a
    # test's tmp_path; but it is this checkout's, next to pytest's own cache, not a fixed file
    # in /tmp that every checkout and user on the machine would append to.
    default = Path(__file__).parents[2] / ".pytest_cache" / "d" / "llmux-faults" / "report.jsonl"
    return Path(os.environ.get("LLMUX_FAULT_REPORT") or default)


@dataclass
class Scenario:
    """What a scenario test fills in; written to the report when the test is over."""

    number: int | str
    name: str
    dir: Path
    tally: Tally = field(default_factory=Tally)
    server: Llmux | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @asynccontextmanager
    async def run(
        self,
        models: Mapping[str, Mapping[str, Any]],
        *,
        prepare: Callable[[Llmux], None] | None = None,
        **config: Any,
    ) -> AsyncIterator[tuple[Llmux, Clients]]:
        """llmux with `models`, and tallied clients; checked and stopped on the way out."""
        async with llmux_running(self.dir, models, prepare=prepare, **config) as server:
            self.server = server
            async with Clients(server.url, self.tally) as clients:
                yield server, clients


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = (
            "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        )
        if hasattr(report, "wasxfail") and report.passed:
            item.stash[_OUTCOME] = "xpassed"
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            item.stash[_FAILURE] = str(crash.message)[:2000]
    return report


_OUTCOME = pytest.StashKey[str]()
_FAILURE = pytest.StashKey[str]()


@pytest.fixture
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    marker = request.node.get_closest_marker("scenario")
    assert marker is not None, "fault tests carry @pytest.mark.scenario(NUMBER, NAME)"
    number, name = marker.args
    started = time.monotonic()
    current = Scenario(number, name, tmp_path)
    yield current
    server = current.server
    xfail = request.node.get_closest_marker("xfail")
    record = {
        "run": RUN_ID,
        "scenario": number,
        "name": name,
        "test": request.node.nodeid,
        "outcome": request.node.stash.get(_OUTCOME, "error"),
        **current.tally.summary(),
        "wakes": server.wakes() if server is not None else 0,
        # At most one stand-in backend process may ever run; sampled from /proc every 100 ms.
        "max_backends_up": server.sampler.max_seen if server is not None else None,
        "backend_samples": server.sampler.samples if server is not None else 0,
        "llmux_exit": server.exit_code if server is not None else None,
        "exit_secs": round(server.exit_secs, 2) if server and server.exit_secs else None,
        "duration_secs": round(time.monotonic() - started, 1),
        "failure": request.node.stash.get(_FAILURE, None),
        "xfail_reason": xfail.kwargs.get("reason") if xfail is not None else None,
        **current.notes,
    }
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(number, name): a fault-suite scenario")
