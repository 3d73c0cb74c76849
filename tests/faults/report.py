"""Turn the fault suite's JSON-lines report into the table of docs/reliability.md.

    LLMUX_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/pytest tests/faults
    .venv/bin/python -m tests.faults.report /tmp/faults.jsonl                # print the table
    .venv/bin/python -m tests.faults.report /tmp/faults.jsonl --write docs/reliability.md

For each scenario the latest record wins, so re-running one scenario updates its row only.
`--write` replaces what lies between the two marker comments of the document.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- fault-table:begin -->"
END = "<!-- fault-table:end -->"


def _order(scenario: str) -> tuple[int, str]:
    """1, 2, ..., 9, 9b, 10."""
    digits = re.match(r"\d*", scenario).group()  # type: ignore[union-attr]
    return (int(digits or 0), scenario)


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_scenario: dict[str, dict[str, Any]] = {}
    for record in records:
        by_scenario[str(record["scenario"])] = record
    return [by_scenario[key] for key in sorted(by_scenario, key=_order)]


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{status}: {count}" for status, count in statuses.items()) or "-"


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| # | Scenario | Result | Sent | Answered | Cancelled | Lost | Statuses | Wakes "
        "| Max up | Time |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in latest(records):
        result = r["outcome"]
        if r.get("cut"):
            result += f" ({r['cut']} cut)"
        lines.append(
            f"| {r['scenario']} | {r['name']} | {result} | {r['sent']} | {r['answered']} "
            f"| {r['cancelled']} | {r['lost']} | {_statuses(r['statuses'])} | {r['wakes']} "
            f"| {r.get('max_backends_up', '?')} | {r['duration_secs']:.0f} s |"
        )
    total = sum(r["duration_secs"] for r in latest(records))
    lines.append("")
    lines.append(f"Total scenario time: {total:.0f} s.")
    return "\n".join(lines)


def write(doc: Path, text: str) -> None:
    content = doc.read_text()
    head, begin, rest = content.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{doc}: the markers {BEGIN} and {END} are missing")
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    from tests.faults.conftest import report_path

    parser = argparse.ArgumentParser(prog="python -m tests.faults.report", description=__doc__)
    parser.add_argument("report", nargs="?", type=Path, default=None, help="JSON-lines report")
    parser.add_argument("--write", type=Path, metavar="DOC", help="update the table in DOC")
    args = parser.parse_args(argv)
    path: Path = args.report or report_path()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        print(f"{path}: no records", file=sys.stderr)
        return 1
    text = table(records)
    if args.write:
        write(args.write, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
