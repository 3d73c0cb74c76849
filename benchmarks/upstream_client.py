"""Benchmark the upstream hop: httpx.AsyncClient under trio vs llmux's own UpstreamPool.

Both contenders POST the same small chat-completion body to the same stand-in backend
(`python -m llmux.standin serve`), which runs in its own process so that client and server
do not share one trio loop or one core. For each concurrency level, N workers each send one
request at a time over keep-alive connections; after a warm-up, every request completed inside
the measurement window is counted and its latency recorded. The contenders alternate within
a round and swap order between rounds (httpx, pool / pool, httpx / ...) so drifting machine
noise hits both; the table shows the median over rounds of each figure, plus the CPU used by
the client, by the backend and by everything else on the machine (the noise to watch).
httpx keeps its default limits (raising max_keepalive_connections makes httpcore 1.0.9 slower;
try it with --httpx-keepalive). Background: docs/upstream-client.md.

    .venv/bin/python benchmarks/upstream_client.py
    .venv/bin/python benchmarks/upstream_client.py --connections 50 --seconds 5 --rounds 3
    .venv/bin/python benchmarks/upstream_client.py --json > results.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import trio

from llmux.upstream import UpstreamPool

PATH = "/v1/chat/completions"
BODY = json.dumps(
    {
        "model": "standin",
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 8,
    },
    separators=(",", ":"),
).encode()
CONTENT_TYPE = (b"content-type", b"application/json")
REQUEST_TIMEOUT = 30.0
DEFAULT_HTTPX_MAX_CONNECTIONS = 100  # httpx.Limits defaults in httpx 0.28
DEFAULT_HTTPX_KEEPALIVE = 20
DEFAULT_POOL_MAX_IDLE = 64  # UpstreamPool's default max_idle_per_port
BACKEND_START_TIMEOUT = 15.0

HTTPX = "httpx.AsyncClient"
POOL = "UpstreamPool"
CLIENTS = (HTTPX, POOL)

# One request: returns the response status once the whole body has been read.
Exchange = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class Setup:
    """What a contender needs to build its client."""

    port: int
    connections: int
    httpx_keepalive: int


Contender = Callable[[Setup], contextlib.AbstractAsyncContextManager[Exchange]]


# ------------------------------------------------------------------------------ contenders


@contextlib.asynccontextmanager
async def httpx_contender(setup: Setup) -> AsyncIterator[Exchange]:
    """httpx's default pool; max_connections is raised if the concurrency is above it.

    max_keepalive_connections stays at httpx's default (20) unless --httpx-keepalive says
    otherwise: raising it to the concurrency makes httpcore 1.0.9 slower, not faster, since
    its pool scans every connection on each pass (see docs/upstream-client.md).
    """
    limits = httpx.Limits(
        max_connections=max(setup.connections, DEFAULT_HTTPX_MAX_CONNECTIONS),
        max_keepalive_connections=setup.httpx_keepalive,
    )
    url = f"http://127.0.0.1:{setup.port}{PATH}"
    headers = {"content-type": "application/json"}
    # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute loopback traffic.
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT, trust_env=False) as client:

        async def exchange() -> int:
            # Streamed like a proxy would: relay the body as it arrives, no decoding.
            async with client.stream("POST", url, content=BODY, headers=headers) as response:
                async for _ in response.aiter_raw():
                    pass
                return response.status_code

        yield exchange


@contextlib.asynccontextmanager
async def pool_contender(setup: Setup) -> AsyncIterator[Exchange]:
    """llmux's h11 client; the idle list is widened only if the concurrency is above 64."""
    pool = UpstreamPool(max_idle_per_port=max(setup.connections, DEFAULT_POOL_MAX_IDLE))
    port = setup.port
    headers = [CONTENT_TYPE]

    async def exchange() -> int:
        async with pool.request(port, b"POST", PATH.encode(), headers, BODY) as response:
            async for _ in response.iter_body():
                pass
            return response.status_code

    try:
        yield exchange
    finally:
        await pool.aclose()


CONTENDERS: dict[str, Contender] = {HTTPX: httpx_contender, POOL: pool_contender}


# ----------------------------------------------------------------------------- measurement


@dataclass
class Sample:
    """One contender, one concurrency level, one round."""

    client: str
    connections: int
    round: int
    seconds: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_us_per_request: float
    backend_cpu_percent: float | None
    other_cpu_percent: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def _ticks_to_seconds(ticks: int) -> float:
    return ticks / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of another process, from /proc; None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # After the ")" the fields start at index 3 of proc(5): utime is 14, stime is 15.
    return _ticks_to_seconds(int(fields[11]) + int(fields[12]))


def machine_busy_seconds() -> float | None:
    """CPU time spent by all cores on anything but idling, from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return _ticks_to_seconds(user + nice + system + irq + softirq + steal)


@dataclass(frozen=True)
class CpuSnapshot:
    client: float
    backend: float | None
    machine: float | None

    @classmethod
    def take(cls, backend_pid: int) -> CpuSnapshot:
        return cls(time.process_time(), process_cpu_seconds(backend_pid), machine_busy_seconds())


def _percent(start: float | None, end: float | None, seconds: float) -> float | None:
    return None if start is None or end is None else (end - start) / seconds * 100


async def measure(
    client: str,
    setup: Setup,
    backend_pid: int,
    warmup: float,
    seconds: float,
    round_number: int,
) -> Sample:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    snapshots: list[CpuSnapshot] = []

    connections = setup.connections
    async with CONTENDERS[client](setup) as exchange:
        window_start = trio.current_time() + warmup
        window_end = window_start + seconds

        async def worker() -> None:
            while True:
                started = trio.current_time()
                if started >= window_end:
                    return
                kind: str | None
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        status = await exchange()
                    kind = None if status == 200 else f"HTTP {status}"
                except Exception as exc:  # any failure is a data point, not a crash
                    kind = type(exc).__name__
                finished = trio.current_time()
                if window_start <= finished < window_end:
                    if kind is None:
                        latencies.append(finished - started)
                    else:
                        errors[kind] += 1
                if kind is not None:
                    await trio.sleep(0.001)  # a dead backend must not become a busy loop

        async def clock() -> None:
            await trio.sleep_until(window_start)
            snapshots.append(CpuSnapshot.take(backend_pid))
            await trio.sleep_until(window_end)
            snapshots.append(CpuSnapshot.take(backend_pid))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock)
            for _ in range(connections):
                nursery.start_soon(worker)

    latencies.sort()
    done = len(latencies) + errors.total()
    first, last = snapshots
    client_cpu = last.client - first.client
    backend_percent = _percent(first.backend, last.backend, seconds)
    machine_percent = _percent(first.machine, last.machine, seconds)
    # Whatever else ran on the machine meanwhile (other jobs, the kernel): the noise to watch.
    other_percent = (
        None
        if machine_percent is None
        else max(0.0, machine_percent - client_cpu / seconds * 100 - (backend_percent or 0.0))
    )
    return Sample(
        client=client,
        connections=connections,
        round=round_number,
        seconds=seconds,
        requests=len(latencies),
        errors=errors.total(),
        rps=len(latencies) / seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        client_cpu_us_per_request=client_cpu / done * 1e6 if done else float("nan"),
        backend_cpu_percent=backend_percent,
        other_cpu_percent=other_percent,
        error_kinds=dict(errors),
    )


# --------------------------------------------------------------------------------- backend


@contextlib.contextmanager
def standin_backend() -> Iterator[tuple[int, int]]:
    """Run the stand-in in a child process on a free port; yields (port, pid)."""
    with tempfile.TemporaryDirectory(prefix="llmux-bench-") as scratch:
        ready = Path(scratch) / "ready"
        log = Path(scratch) / "standin.log"
        command = [
            *(sys.executable, "-m", "llmux.standin", "serve", "--port", "0"),
            *("--name", "standin", "--ready-file", str(ready)),
        ]
        with log.open("wb") as out:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + BACKEND_START_TIMEOUT
            while not ready.exists():
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"stand-in did not start:\n{log.read_text()}")
                time.sleep(0.02)
            yield int(ready.read_text()), child.pid
        finally:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# --------------------------------------------------------------------------------- driving


@dataclass
class Summary:
    """Median over rounds of one contender at one concurrency level."""

    client: str
    connections: int
    rounds: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # summed over rounds
    client_cpu_us_per_request: float
    backend_cpu_percent: float | None
    other_cpu_percent: float | None


def _median_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def summarise(samples: Sequence[Sample]) -> Summary:
    return Summary(
        client=samples[0].client,
        connections=samples[0].connections,
        rounds=len(samples),
        rps=statistics.median(s.rps for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        errors=sum(s.errors for s in samples),
        client_cpu_us_per_request=statistics.median(s.client_cpu_us_per_request for s in samples),
        backend_cpu_percent=_median_known(s.backend_cpu_percent for s in samples),
        other_cpu_percent=_median_known(s.other_cpu_percent for s in samples),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/upstream_client.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        **{name: version(name) for name in ("trio", "httpx", "httpcore", "h11")},
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "connections": args.connections,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "body_bytes": len(BODY),
        "httpx_limits": {
            "max_connections": f"max(connections, {DEFAULT_HTTPX_MAX_CONNECTIONS})",
            "max_keepalive_connections": args.httpx_keepalive,
        },
        "pool_max_idle_per_port": f"max(connections, {DEFAULT_POOL_MAX_IDLE})",
        "loadavg_before": list(os.getloadavg()),
    }
    samples: list[Sample] = []
    with standin_backend() as (port, pid):
        for connections in args.connections:
            for round_number in range(1, args.rounds + 1):
                order = CLIENTS if round_number % 2 else tuple(reversed(CLIENTS))
                for client in order:
                    gc.collect()
                    sample = trio.run(
                        measure,
                        client,
                        Setup(port, connections, args.httpx_keepalive),
                        pid,
                        args.warmup,
                        args.seconds,
                        round_number,
                    )
                    samples.append(sample)
                    print(
                        f"connections={connections} round {round_number}/{args.rounds} "
                        f"{client:<17} {sample.rps:8.0f} req/s  p50 {sample.p50_ms:7.2f} ms  "
                        f"p99 {sample.p99_ms:7.2f} ms  errors {sample.errors}  "
                        f"other CPU {_num(sample.other_cpu_percent, 0)} %",
                        file=sys.stderr,
                        flush=True,
                    )
    meta["loadavg_after"] = list(os.getloadavg())

    summaries: list[Summary] = []
    ratios: list[dict[str, Any]] = []
    for connections in args.connections:
        by_client = {
            client: summarise(
                [s for s in samples if s.client == client and s.connections == connections]
            )
            for client in CLIENTS
        }
        summaries.extend(by_client.values())
        pool, base = by_client[POOL], by_client[HTTPX]
        ratios.append(
            {
                "connections": connections,
                "throughput": pool.rps / base.rps if base.rps else None,
                "p99": pool.p99_ms / base.p99_ms if base.p99_ms else None,
            }
        )
    return {
        "meta": meta,
        "summary": [asdict(s) for s in summaries],
        "ratios": ratios,
        "samples": [asdict(s) for s in samples],
    }


def _json_safe(value: Any) -> Any:
    """NaN (no successful request) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None or value != value else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"`{meta['command']}` — {meta['date']}, Python {meta['python']}, trio {meta['trio']}, "
        f"httpx {meta['httpx']}, httpcore {meta['httpcore']}, h11 {meta['h11']}, "
        f"{meta['cpus']} CPUs, load average {meta['loadavg_before'][0]:.2f} before / "
        f"{meta['loadavg_after'][0]:.2f} after",
        "",
        f"Median of {meta['rounds']} rounds of {meta['seconds']:g} s "
        f"(after {meta['warmup']:g} s warm-up); errors summed over rounds. httpx limits: "
        f"max_connections={meta['httpx_limits']['max_connections']}, "
        f"max_keepalive_connections={meta['httpx_limits']['max_keepalive_connections']}; "
        f"UpstreamPool max_idle_per_port={meta['pool_max_idle_per_port']}. "
        "Other CPU % = whole-machine busy time minus client and backend (100 % = one core): "
        "the noise from other jobs.",
        "",
        "| connections | client | req/s | p50 ms | p99 ms | errors | client CPU µs/req "
        "| backend CPU % | other CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {r["connections"]: r for r in results["ratios"]}
    for row in results["summary"]:
        lines.append(
            f"| {row['connections']} | {row['client']} | {_num(row['rps'], 0)} "
            f"| {_num(row['p50_ms'], 2)} | {_num(row['p99_ms'], 2)} | {row['errors']} "
            f"| {_num(row['client_cpu_us_per_request'], 0)} "
            f"| {_num(row['backend_cpu_percent'], 0)} | {_num(row['other_cpu_percent'], 0)} |"
        )
        if row["client"] == POOL:
            ratio = ratios[row["connections"]]
            lines.append(
                f"| {row['connections']} | **UpstreamPool / httpx** "
                f"| **{_num(ratio['throughput'], 2)}x** | | **{_num(ratio['p99'], 2)}x** "
                "| | | | |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 50],
        help="concurrency levels: workers = connections (default: 1 50)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    parser.add_argument(
        "--httpx-keepalive",
        type=int,
        default=DEFAULT_HTTPX_KEEPALIVE,
        help=f"httpx max_keepalive_connections (default: httpx's own, {DEFAULT_HTTPX_KEEPALIVE})",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    if min(args.connections) < 1 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("connections and rounds must be >= 1, seconds > 0, warmup >= 0")

    results = run(args)
    if args.json:
        print(json.dumps(_json_safe(results), indent=2, allow_nan=False))
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
