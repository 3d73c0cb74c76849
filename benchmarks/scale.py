"""Scale: 100 configured models, 1,000 concurrent streams, 1,000 idle keep-alive connections.

One stand-in backend serves every model. Two llmux instances run side by side: one configured
with 1 model, one with 100 (`m0` .. `m99`, all pointing at the stand-in, hooks `true`), `m0`
woken in both. Each round measures, with wrk (64 connections, the hot-path POST):

- llmux, 1 model;
- llmux, 100 models;
- llmux, 100 models, while 1,000 idle keep-alive connections are open on it (each has made
  one request first, so it is a used keep-alive connection, waiting for its next request);
- llmux, 100 models, while 1,000 streams to `m0` run through it (one event every
  `--stream-delay` seconds each, for the whole wrk window).

Reported: requests/s and p99 of each, their ratio to "100 models" alone in the same round
(does service to the active model degrade?), llmux's RSS in each state, and for the 1,000
streams whether every event arrived and the gaps between events (nominal: the stream delay).

    .venv/bin/python benchmarks/scale.py
    .venv/bin/python benchmarks/scale.py --rounds 5 --json > scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _bench as b
import trio
from streaming import one_stream, stream_request

ONE, HUNDRED, IDLE, STREAMS = (
    "1 model",
    "100 models",
    "100 models + 1,000 idle connections",
    "100 models + 1,000 streams",
)


@dataclass
class Sample:
    scenario: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb: float | None
    # Growth during this run (Python keeps freed memory for reuse, so a later round of the
    # same scenario grows less: the largest growth is the one reported).
    rss_growth_mb: float | None
    llmux_cpu: float | None
    other_cpu: float | None
    stream_errors: int | None = None
    stream_events: int | None = None
    stream_gap_p50_ms: float | None = None
    stream_gap_p99_ms: float | None = None
    stream_gap_max_ms: float | None = None


def many_models_config(port: int, count: int) -> dict[str, Any]:
    return {
        "models": {f"m{i}": {"port": port, "wake": "true", "sleep": "true"} for i in range(count)},
        "limits": {"header_timeout_secs": 120},
    }


def model_body(model: str) -> bytes:
    return b.body(model=model)


async def measure(
    scenario: str,
    server: b.Server,
    backend_pid: int,
    script: Path,
    round_number: int,
    args: argparse.Namespace,
) -> Sample:
    extra: list[trio.SocketStream] = []
    stream_stats: dict[str, Any] = {}
    rss_before = b.process_rss(server.pid)
    async with trio.open_nursery() as nursery:
        if scenario == IDLE:
            request = (
                f"POST {b.PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: "
                f"{len(model_body('m0'))}\r\n\r\n"
            ).encode() + model_body("m0")

            async def idle_one() -> None:
                stream = await trio.open_tcp_stream(b.HOST, server.port)
                extra.append(stream)
                await stream.send_all(request)
                got = b""
                while b'"finish_reason"' not in got:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk

            for start in range(0, args.connections, 250):
                async with trio.open_nursery() as opening:
                    for _ in range(min(250, args.connections - start)):
                        opening.start_soon(idle_one)
        if scenario == STREAMS:
            events = int((args.seconds + 3) / args.stream_delay) + 2
            request = stream_request(server.port, events, args.stream_delay, model="m0")
            gaps: list[float] = []
            counts = {"errors": 0, "events": 0}
            started = trio.Event()
            opened = 0

            async def stream_one() -> None:
                nonlocal opened
                try:
                    async with await trio.open_tcp_stream(b.HOST, server.port) as stream:
                        opened += 1
                        if opened == args.connections:
                            started.set()
                        _, arrivals = await one_stream(stream, request)
                except (OSError, ConnectionError, trio.BrokenResourceError):
                    counts["errors"] += 1
                    return
                if len(arrivals) != events + 2:
                    counts["errors"] += 1
                counts["events"] += len(arrivals)
                gaps.extend(y - x for x, y in itertools.pairwise(arrivals))

            streams_done = trio.Event()

            async def all_streams() -> None:
                async with trio.open_nursery() as inner:
                    for i in range(args.connections):
                        inner.start_soon(stream_one)
                        if i % 100 == 99:
                            await trio.sleep(0.01)
                streams_done.set()

            nursery.start_soon(all_streams)
            with trio.move_on_after(30):
                await started.wait()
            await trio.sleep(1.0)  # every stream is under way
        await trio.to_thread.run_sync(
            lambda: b.wrk(server.port, script, connections=64, seconds=1)  # warm-up
        )
        window = b.CpuWindow({"llmux": server.pid, "backend": backend_pid}, children="wrk")
        result = await trio.to_thread.run_sync(
            lambda: b.wrk(server.port, script, connections=64, seconds=args.seconds)
        )
        cpu = window.stop()
        rss = b.process_rss(server.pid)  # the extra connections are still open here
        if scenario == STREAMS:
            await streams_done.wait()
            gaps.sort()
            stream_stats = {
                "stream_errors": counts["errors"],
                "stream_events": counts["events"],
                "stream_gap_p50_ms": b.percentile(gaps, 0.5) * 1000,
                "stream_gap_p99_ms": b.percentile(gaps, 0.99) * 1000,
                "stream_gap_max_ms": (gaps[-1] if gaps else float("nan")) * 1000,
            }
        for stream in extra:
            await stream.aclose()
    return Sample(
        scenario=scenario,
        round=round_number,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors,
        rss_mb=rss / 2**20 if rss else None,
        rss_growth_mb=(rss - rss_before) / 2**20 if rss and rss_before else None,
        llmux_cpu=cpu.get("llmux"),
        other_cpu=cpu.get("other"),
        **stream_stats,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = b.machine_notes()
    meta["command"] = b.command_line("scale.py")
    meta.update(
        rounds=args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        models=args.models,
        stream_delay=args.stream_delay,
    )
    meta["nofile"] = b.raise_nofile(4 * args.connections + 4096)
    samples: list[Sample] = []
    rss_at_start: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmux-scale-")))
        backend = stack.enter_context(b.standin())
        one = stack.enter_context(b.llmux(b.one_model_config(backend.port)))
        many = stack.enter_context(b.llmux(many_models_config(backend.port, args.models)))
        for server, model in ((one, b.MODEL), (many, "m0")):
            status, answer = b.fetch(server.port, "POST", b.PATH, model_body(model))
            if status != 200:
                raise RuntimeError(f"llmux answered {status}: {answer[:300]!r}")
        rss_at_start = {
            ONE: (b.process_rss(one.pid) or 0) / 2**20,
            HUNDRED: (b.process_rss(many.pid) or 0) / 2**20,
        }
        scripts = {
            one.port: b.lua_script(scratch, model_body(b.MODEL)),
            many.port: b.lua_script(scratch, model_body("m0")),
        }
        plan = [(ONE, one), (HUNDRED, many), (IDLE, many), (STREAMS, many)]
        for round_number in range(1, args.rounds + 1):
            shift = (round_number - 1) % len(plan)
            for scenario, server in plan[shift:] + plan[:shift]:
                sample = trio.run(
                    measure,
                    scenario,
                    server,
                    backend.pid,
                    scripts[server.port],
                    round_number,
                    args,
                )
                samples.append(sample)
                b.log(
                    f"round {round_number} {scenario:<38} {sample.rps:7,.0f} req/s "
                    f"p99 {sample.p99_ms:7.2f} ms errors {sample.errors} RSS "
                    f"{b.num(sample.rss_mb, 1)} MB stream errors {sample.stream_errors} "
                    f"other CPU {b.num(sample.other_cpu)} %"
                )
    meta["loadavg_after"] = list(b.os.getloadavg())
    return summarise(meta, samples, rss_at_start, args)


def summarise(
    meta: dict[str, Any],
    samples: list[Sample],
    rss_at_start: dict[str, float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    rows = []
    for scenario in (ONE, HUNDRED, IDLE, STREAMS):
        mine = [s for s in samples if s.scenario == scenario]
        row: dict[str, Any] = {"scenario": scenario}
        for key in ("rps", "p50_ms", "p99_ms", "rss_mb", "llmux_cpu", "other_cpu"):
            row[key] = b.median(getattr(s, key) for s in mine)
        row["errors"] = sum(s.errors for s in mine)
        base = [s for s in samples if s.scenario == HUNDRED]
        row["rps_vs_100_models"] = b.median(
            b.ratio(s.rps, x.rps) for s in mine for x in base if x.round == s.round
        )
        row["p99_vs_100_models"] = b.median(
            b.ratio(s.p99_ms, x.p99_ms) for s in mine for x in base if x.round == s.round
        )
        if scenario == STREAMS:
            row["stream_errors"] = sum(s.stream_errors or 0 for s in mine)
            row["stream_events"] = sum(s.stream_events or 0 for s in mine)
            for key in ("stream_gap_p50_ms", "stream_gap_p99_ms", "stream_gap_max_ms"):
                row[key] = b.median(getattr(s, key) for s in mine)
        rows.append(row)

    def growth(scenario: str) -> float | None:
        values = [s.rss_growth_mb for s in samples if s.scenario == scenario]
        known = [v for v in values if v is not None]
        return max(known) * 2**20 / args.connections if known else None

    idle_mem = growth(IDLE)
    stream_mem = growth(STREAMS)
    memory = {
        "rss_1_model_mb": rss_at_start.get(ONE),
        "rss_100_models_mb": rss_at_start.get(HUNDRED),
        "bytes_per_configured_model": (
            (rss_at_start[HUNDRED] - rss_at_start[ONE]) * 2**20 / (args.models - 1)
            if rss_at_start and args.models > 1
            else None
        ),
        "bytes_per_idle_connection": idle_mem,
        "bytes_per_stream": stream_mem,
    }
    return {
        "meta": meta,
        "summary": rows,
        "memory": memory,
        "samples": [asdict(s) for s in samples],
    }


def markdown(results: dict[str, Any]) -> str:
    meta, mem = results["meta"], results["memory"]
    lines = [
        f"`{meta['command']}` — {meta['date']}, Python {meta['python']}, trio {meta['trio']}, "
        f"{meta['cpus']} CPUs, open-file limit {meta['nofile']}, load average "
        f"{meta['loadavg_before'][0]:.2f} before / {meta['loadavg_after'][0]:.2f} after",
        "",
        f"wrk at 64 connections to the active model, {meta['seconds']:g} s per run, medians of "
        f'{meta["rounds"]} rounds; ratios against "100 models" alone in the same round. '
        f"RSS is llmux's, sampled at the end of each run.",
        "",
        "| scenario | req/s | vs 100 models | p50 ms | p99 ms | p99 vs 100 models | errors "
        "| llmux RSS MB | llmux CPU % | other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["summary"]:
        lines.append(
            f"| {r['scenario']} | {b.num(r['rps'])} | {b.num(r['rps_vs_100_models'], 2)}x "
            f"| {b.num(r['p50_ms'], 2)} | {b.num(r['p99_ms'], 2)} "
            f"| {b.num(r['p99_vs_100_models'], 2)}x | {r['errors']} | {b.num(r['rss_mb'], 1)} "
            f"| {b.num(r['llmux_cpu'])} | {b.num(r['other_cpu'])} |"
        )
    streams = next(r for r in results["summary"] if r["scenario"] == STREAMS)
    lines += [
        "",
        f"The {meta['connections']:,} streams (one event every {meta['stream_delay']:g} s): "
        f"{streams['stream_events']:,} events received, {streams['stream_errors']} streams "
        f"failed or incomplete; gap between events p50 {b.num(streams['stream_gap_p50_ms'], 1)} "
        f"ms, p99 {b.num(streams['stream_gap_p99_ms'], 1)} ms, max "
        f"{b.num(streams['stream_gap_max_ms'], 1)} ms.",
        "",
        "| memory | |",
        "|---|---:|",
        f"| llmux RSS, 1 model configured (awake) | {b.num(mem['rss_1_model_mb'], 1)} MB |",
        f"| llmux RSS, 100 models configured | {b.num(mem['rss_100_models_mb'], 1)} MB |",
        f"| per configured model | {b.num((mem['bytes_per_configured_model'] or 0) / 1024, 1)}"
        " KB |",
        f"| per idle keep-alive connection (largest RSS growth while open / count) | "
        f"{b.num((mem['bytes_per_idle_connection'] or 0) / 1024, 1)} KB |",
        f"| per running stream (client and upstream connection, task; same way) | "
        f"{b.num((mem['bytes_per_stream'] or 0) / 1024, 1)} KB |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--connections", type=int, default=1000, help="idle conns / streams")
    parser.add_argument("--stream-delay", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args)
    b.emit(results, args.json, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
