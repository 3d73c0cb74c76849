"""Streaming (SSE) relay: direct vs llmux vs nginx, side by side, per-chunk delay and chunks/s.

Same stand-in backend for all (`python -m llmux.standin serve`); it streams `max_tokens + 2`
server-sent events per response (one per token, a final one, `data: [DONE]`), each written
on its own, `chunk_delay` seconds apart (the request sets it). Three measurements, contenders
alternating within each round and rotating their order between rounds:

1. Latency, with a Python (trio) client that reads raw bytes and timestamps every event:
   S concurrent streams (1 and 64) of `--tokens` events `--chunk-delay` apart. Reported: the
   time to the first event (p50/p99 over streams) and the gap between consecutive events
   (p50/p99 over all gaps). A relay adds its own delay to each event: to the first event
   (together with forwarding the request) and, as jitter, to every gap. "Added" figures are
   llmux's (or nginx's) minus direct's in the same round.
2. Throughput, with wrk: streams with no delay between events, at 1 and 64 connections;
   chunks/s = responses/s x events per response.
3. No buffering: one stream of 5 events 0.2 s apart through llmux; the first event must
   arrive long before the last (a proxy that buffered the response would deliver both at once).

    .venv/bin/python benchmarks/streaming.py
    .venv/bin/python benchmarks/streaming.py --rounds 5 --json > streaming.json
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

DIRECT, NGINX, LLMUX = "direct", "nginx", "llmux"


@dataclass
class StreamSample:
    contender: str
    streams: int
    round: int
    events: int
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    errors: int
    other_cpu: float | None


@dataclass
class ThroughputSample:
    contender: str
    connections: int
    round: int
    responses_per_s: float
    chunks_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    proxy_cpu: float | None
    other_cpu: float | None


async def one_stream(stream: trio.SocketStream, request: bytes) -> tuple[float, list[float]]:
    """Send one streamed request; returns (start, arrival time of each event)."""
    start = trio.current_time()
    await stream.send_all(request)
    arrivals: list[float] = []
    tail = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("closed before the end of the stream")
        now = trio.current_time()
        seen = tail + data
        # Every SSE event ends with a blank line; chunk-size lines hold none.
        arrivals.extend([now] * (seen.count(b"\n\n") - tail.count(b"\n\n")))
        if b"[DONE]" in seen and seen.endswith(b"0\r\n\r\n"):
            return start, arrivals
        tail = seen[-16:]


def stream_request(port: int, tokens: int, delay: float, model: str = b.MODEL) -> bytes:
    payload = b.body(stream=True, max_tokens=tokens, chunk_delay=delay, model=model)
    return (
        f"POST {b.PATH} HTTP/1.1\r\nhost: {b.HOST}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def stream_round(port: int, streams: int, tokens: int, delay: float) -> dict[str, Any]:
    request = stream_request(port, tokens, delay)
    warm_up = stream_request(port, 0, 0.0)
    ttfb: list[float] = []
    gaps: list[float] = []
    errors = 0
    events = 0

    async def run_one() -> None:
        nonlocal errors, events
        try:
            with trio.fail_after(60):
                # The connection (and llmux's upstream one) is set up by a short stream
                # first: what is measured is the relay, not connection set-up.
                async with await trio.open_tcp_stream(b.HOST, port) as stream:
                    await one_stream(stream, warm_up)
                    await ready.wait()
                    start, arrivals = await one_stream(stream, request)
        except (OSError, ConnectionError, trio.TooSlowError):
            errors += 1
            return
        if len(arrivals) != tokens + 2:
            errors += 1
        events += len(arrivals)
        if arrivals:
            ttfb.append(arrivals[0] - start)
            gaps.extend(later - earlier for earlier, later in itertools.pairwise(arrivals))

    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(run_one)
        await trio.sleep(0.5)  # every connection is open and warm: start all streams at once
        ready.set()
    ttfb.sort()
    gaps.sort()
    return {
        "events": events,
        "errors": errors,
        "ttfb_p50_ms": b.percentile(ttfb, 0.5) * 1000,
        "ttfb_p99_ms": b.percentile(ttfb, 0.99) * 1000,
        "gap_p50_ms": b.percentile(gaps, 0.5) * 1000,
        "gap_p99_ms": b.percentile(gaps, 0.99) * 1000,
        "gap_max_ms": (gaps[-1] if gaps else float("nan")) * 1000,
    }


async def first_and_last(port: int) -> tuple[float, float]:
    async with await trio.open_tcp_stream(b.HOST, port) as stream:
        start, arrivals = await one_stream(stream, stream_request(port, 3, 0.2))
    return (arrivals[0] - start) * 1000, (arrivals[-1] - start) * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = b.machine_notes()
    meta["command"] = b.command_line("streaming.py")
    meta.update(
        rounds=args.rounds,
        tokens=args.tokens,
        chunk_delay=args.chunk_delay,
        streams=args.streams,
        wrk_seconds=args.seconds,
        wrk_tokens=args.wrk_tokens,
    )
    latency: list[StreamSample] = []
    throughput: list[ThroughputSample] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmux-sse-")))
        backend = stack.enter_context(b.standin())
        ports = {DIRECT: (backend.port, [])}
        if not args.no_nginx:
            server = stack.enter_context(b.nginx(backend.port))
            ports[NGINX] = (server.port, [server.pid, *b.nginx_worker_pids(server.pid)])
        server = stack.enter_context(b.llmux(b.one_model_config(backend.port)))
        status, answer = b.fetch(server.port, "POST", b.PATH, b.body())
        if status != 200:
            raise RuntimeError(f"llmux answered {status}: {answer[:300]!r}")
        ports[LLMUX] = (server.port, [server.pid])
        script = b.lua_script(
            scratch, b.body(stream=True, max_tokens=args.wrk_tokens, chunk_delay=0.0)
        )
        names = list(ports)
        for round_number in range(1, args.rounds + 1):
            shift = (round_number - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                port, pids = ports[name]
                for streams in args.streams:
                    window = b.CpuWindow(
                        {
                            "backend": backend.pid,
                            "client": b.os.getpid(),
                            **({"proxy": pids} if pids else {}),
                        }
                    )
                    got = trio.run(stream_round, port, streams, args.tokens, args.chunk_delay)
                    cpu = window.stop()
                    sample = StreamSample(
                        name, streams, round_number, other_cpu=cpu["other"], **got
                    )
                    latency.append(sample)
                    b.log(
                        f"round {round_number} {name:<7} streams={streams:<3} "
                        f"first event p50 {sample.ttfb_p50_ms:6.2f} p99 {sample.ttfb_p99_ms:6.2f} "
                        f"ms, gap p50 {sample.gap_p50_ms:6.2f} p99 {sample.gap_p99_ms:6.2f} ms, "
                        f"errors {sample.errors}, other CPU {b.num(sample.other_cpu)} %"
                    )
                for connections in args.connections:
                    b.wrk(port, script, connections=connections, seconds=1)  # warm-up
                    window = b.CpuWindow(
                        {"backend": backend.pid, **({"proxy": pids} if pids else {})},
                        children="wrk",
                    )
                    result = b.wrk(port, script, connections=connections, seconds=args.seconds)
                    cpu = window.stop()
                    per_response = args.wrk_tokens + 2
                    throughput.append(
                        ThroughputSample(
                            name,
                            connections,
                            round_number,
                            result.rps,
                            result.rps * per_response,
                            result.p50_ms,
                            result.p99_ms,
                            result.errors,
                            cpu.get("proxy"),
                            cpu.get("other"),
                        )
                    )
                    b.log(
                        f"round {round_number} {name:<7} wrk c={connections:<3} "
                        f"{result.rps * per_response:9,.0f} chunks/s, errors {result.errors}"
                    )
        unbuffered = {name: trio.run(first_and_last, ports[name][0]) for name in names}
    meta["loadavg_after"] = list(b.os.getloadavg())
    return summarise(meta, names, latency, throughput, unbuffered, args)


def summarise(
    meta: dict[str, Any],
    names: list[str],
    latency: list[StreamSample],
    throughput: list[ThroughputSample],
    unbuffered: dict[str, tuple[float, float]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    lat_rows = []
    for streams in args.streams:
        for name in names:
            mine = [s for s in latency if s.contender == name and s.streams == streams]
            row: dict[str, Any] = {"contender": name, "streams": streams}
            for key in ("ttfb_p50_ms", "ttfb_p99_ms", "gap_p50_ms", "gap_p99_ms", "gap_max_ms"):
                row[key] = b.median(getattr(s, key) for s in mine)
            row["errors"] = sum(s.errors for s in mine)
            row["other_cpu"] = b.median(s.other_cpu for s in mine)
            if name != DIRECT:
                for key in ("ttfb_p50_ms", "ttfb_p99_ms", "gap_p50_ms", "gap_p99_ms"):
                    row[f"added_{key}"] = b.median(
                        getattr(s, key) - getattr(d, key)
                        for s in mine
                        for d in latency
                        if d.contender == DIRECT and d.streams == streams and d.round == s.round
                    )
            lat_rows.append(row)
    tp_rows = []
    for connections in args.connections:
        for name in names:
            mine = [s for s in throughput if s.contender == name and s.connections == connections]
            row = {"contender": name, "connections": connections}
            for key in ("responses_per_s", "chunks_per_s", "p50_ms", "p99_ms", "proxy_cpu"):
                row[key] = b.median(getattr(s, key) for s in mine)
            row["errors"] = sum(s.errors for s in mine)
            row["other_cpu"] = b.median(s.other_cpu for s in mine)
            row["proxy_us_per_chunk"] = (
                row["proxy_cpu"] * 10_000 / row["chunks_per_s"]
                if row["proxy_cpu"] is not None and row["chunks_per_s"]
                else None
            )
            row["vs_direct"] = b.median(
                b.ratio(s.chunks_per_s, d.chunks_per_s)
                for s in mine
                for d in throughput
                if d.contender == DIRECT and d.connections == connections and d.round == s.round
            )
            tp_rows.append(row)
    llmux_rows = [r for r in lat_rows if r["contender"] == LLMUX]
    worst_ttfb = max((r["added_ttfb_p99_ms"] or 0) for r in llmux_rows) if llmux_rows else None
    worst_gap = max((r["added_gap_p99_ms"] or 0) for r in llmux_rows) if llmux_rows else None
    first, last = unbuffered.get(LLMUX, (float("nan"), float("nan")))
    targets = [
        {
            "target": "added delay per chunk at p99 (gap p99, worst of 1 and 64 streams)",
            "measured": f"{worst_gap:+.2f} ms" if worst_gap is not None else "n/a",
            "goal": "≤ 1 ms",
            "ok": None if worst_gap is None else worst_gap <= 1.0,
        },
        {
            "target": "added delay to the first event at p99, worst case (forwarding the "
            "request included: no target, for reference)",
            "measured": f"{worst_ttfb:+.2f} ms" if worst_ttfb is not None else "n/a",
            "goal": "—",
            "ok": None,
        },
        {
            "target": "never buffers a whole response (first of 5 events 0.2 s apart)",
            "measured": f"first event at {first:.1f} ms, last at {last:.1f} ms",
            "goal": "first ≪ last",
            "ok": first < last / 4,
        },
    ]
    return {
        "meta": meta,
        "latency": lat_rows,
        "throughput": tp_rows,
        "unbuffered_ms": {k: {"first": v[0], "last": v[1]} for k, v in unbuffered.items()},
        "targets": targets,
        "samples": {
            "latency": [asdict(s) for s in latency],
            "throughput": [asdict(s) for s in throughput],
        },
    }


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"`{meta['command']}` — {meta['date']}, Python {meta['python']}, trio {meta['trio']}, "
        f"h11 {meta['h11']}, {meta['cpus']} CPUs, load average "
        f"{meta['loadavg_before'][0]:.2f} before / {meta['loadavg_after'][0]:.2f} after",
        "",
        f"Latency: {meta['tokens'] + 2} events per stream, {meta['chunk_delay'] * 1000:g} ms "
        f'apart; medians of {meta["rounds"]} rounds; "added" = minus direct in the same round.',
        "",
        "| streams | contender | first event p50 ms | p99 ms | added p50 / p99 ms "
        "| gap p50 ms | gap p99 ms | added gap p50 / p99 ms | gap max ms | errors | other CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["latency"]:
        added = (
            f"{r['added_ttfb_p50_ms']:+.2f} / {r['added_ttfb_p99_ms']:+.2f}"
            if "added_ttfb_p50_ms" in r
            else ""
        )
        added_gap = (
            f"{r['added_gap_p50_ms']:+.2f} / {r['added_gap_p99_ms']:+.2f}"
            if "added_gap_p50_ms" in r
            else ""
        )
        lines.append(
            f"| {r['streams']} | {r['contender']} | {b.num(r['ttfb_p50_ms'], 2)} "
            f"| {b.num(r['ttfb_p99_ms'], 2)} | {added} | {b.num(r['gap_p50_ms'], 2)} "
            f"| {b.num(r['gap_p99_ms'], 2)} | {added_gap} | {b.num(r['gap_max_ms'], 2)} "
            f"| {r['errors']} | {b.num(r['other_cpu'])} |"
        )
    lines += [
        "",
        f"Throughput (wrk, {meta['wrk_tokens'] + 2} events per response, no delay, "
        f"{meta['wrk_seconds']:g} s per run):",
        "",
        "| connections | contender | responses/s | chunks/s | vs direct | p50 ms | p99 ms "
        "| errors | proxy CPU % | proxy CPU µs/chunk | other CPU % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        lines.append(
            f"| {r['connections']} | {r['contender']} | {b.num(r['responses_per_s'])} "
            f"| {b.num(r['chunks_per_s'])} | {b.num(r['vs_direct'], 2)}x "
            f"| {b.num(r['p50_ms'], 2)} | {b.num(r['p99_ms'], 2)} | {r['errors']} "
            f"| {b.num(r['proxy_cpu'])} | {b.num(r['proxy_us_per_chunk'])} "
            f"| {b.num(r['other_cpu'])} |"
        )
    lines += ["", "| no buffering: 5 events 0.2 s apart | first event ms | last event ms |"]
    lines += ["|---|---:|---:|"]
    for name, v in results["unbuffered_ms"].items():
        lines.append(f"| {name} | {v['first']:.1f} | {v['last']:.1f} |")
    lines += ["", "| target | measured | goal | |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {b.verdict(t['ok'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--tokens", type=int, default=50, help="tokens per latency stream")
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--wrk-tokens", type=int, default=50, help="tokens per wrk stream")
    parser.add_argument("--seconds", type=float, default=4.0, help="wrk seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    b.raise_nofile(4096)
    results = run(args)
    b.emit(results, args.json, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
