"""Switching: what llmux adds to a switch beyond its hooks, and how fast a queue is admitted.

One stand-in backend; llmux is configured with two models, `a` and `b`, both served by it.

1. Switch overhead. Hooks are `sleep 0.2` (wake and sleep). A client alternates requests
   between `a` and `b` on a keep-alive connection, so each request waits for a full switch
   (drain, the old model's sleep hook, the new model's wake hook). For each switch:
   overhead = what the client saw - the two hooks' run times (from llmux's `hook_completed`
   log events, which time the `sh -c` process from spawn to exit) - a plain request to an
   awake model (median, measured in the same run). Also shown: llmux's own switch duration
   (`model_activated`, from the sleep hook's start to activation) minus the hooks.
2. Admission of a queue. `b`'s wake hook waits for a flag file. N requests (10,000 by
   default; `max_queue` is raised to fit), each on its own connection, queue behind the switch
   to `b`; then the flag is created and `b` becomes Active. Reported: from activation (the
   `model_activated` log event) to the first and to the last response, next to the same N
   requests sent at once straight to the backend on open connections (the backend's own time
   to answer them: the floor for any proxy). Also the pure admission step: ModelCore granting
   N queued requests on activation, in-process.
3. Memory per queued request: llmux's RSS with N idle connections open, then with a request
   queued on each: (difference) / N. The request body is ~100 bytes.

    .venv/bin/python benchmarks/switching.py
    .venv/bin/python benchmarks/switching.py --switches 20 --queued 10000 --json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _bench as b
import trio

from llmux.core.messages import Acquire, Hook, HookDone, Wake
from llmux.core.world import Settings, model_core

HOOK_SECS = 0.2
# A switch takes a little over two hooks: the idle gap before the "idle" plain request.
IDLE_BEFORE_PLAIN_SECS = 2 * HOOK_SECS


def request_bytes(model: str) -> bytes:
    payload = b.body(model=model)
    return (
        f"POST {b.PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def exchange(stream: trio.SocketStream, request: bytes) -> bytes:
    """One request on an open connection; the response, read up to its declared length."""
    await stream.send_all(request)
    data = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(rest) >= int(value):
                    return data


def _wall(ts: str) -> float:
    """A log line's `ts` (UTC, millisecond precision) as a Unix time."""
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def log_since(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    text = path.read_bytes()
    entries = b.read_log_text(text[offset:].decode(errors="replace"))
    return entries, len(text)


# ------------------------------------------------------------------------ 1. switch overhead


async def switch_overhead(port: int, log_file: Path, switches: int) -> dict[str, Any]:
    rows = []
    async with await trio.open_tcp_stream(b.HOST, port) as stream:
        await exchange(stream, request_bytes("a"))  # cold start of a
        plain = []
        for _ in range(50):
            started = time.perf_counter()
            await exchange(stream, request_bytes("a"))
            plain.append(time.perf_counter() - started)
        plain_ms = statistics.median(plain) * 1000
        # The same request after the machine sat idle as long as a switch takes: every process
        # involved (client, llmux, backend) wakes from a wait, whether or not llmux switched.
        idle = []
        for _ in range(max(switches // 2, 5)):
            await trio.sleep(IDLE_BEFORE_PLAIN_SECS)
            started = time.perf_counter()
            await exchange(stream, request_bytes("a"))
            idle.append(time.perf_counter() - started)
        idle_plain_ms = statistics.median(idle) * 1000
        _, offset = log_since(log_file, 0)
        for i in range(switches):
            target = "b" if i % 2 == 0 else "a"
            started = time.perf_counter()
            response = await exchange(stream, request_bytes(target))
            seen_ms = (time.perf_counter() - started) * 1000
            if _status(response) != 200:
                raise RuntimeError(f"switch to {target} answered {response[:200]!r}")
            await trio.sleep(0.05)  # let the log line land
            entries, offset = log_since(log_file, offset)
            hooks = [e for e in entries if e.get("event") == "hook_completed"]
            hook_ms = sum(e["duration_secs"] for e in hooks) * 1000
            activated = [e for e in entries if e.get("event") == "model_activated"]
            switch_ms = activated[-1]["duration_secs"] * 1000 if activated else float("nan")
            rows.append(
                {
                    "to": target,
                    "client_ms": seen_ms,
                    "hooks_ms": hook_ms,
                    "hooks": len(hooks),
                    "llmux_switch_ms": switch_ms,
                    "overhead_ms": seen_ms - hook_ms - plain_ms,
                    "overhead_vs_idle_ms": seen_ms - hook_ms - idle_plain_ms,
                    "internal_overhead_ms": switch_ms - hook_ms,
                }
            )
            b.log(
                f"switch {i + 1}/{switches} -> {target}: client {seen_ms:.1f} ms, hooks "
                f"{hook_ms:.1f} ms ({len(hooks)}), overhead {rows[-1]['overhead_ms']:.2f} ms"
            )
    overheads = sorted(r["overhead_ms"] for r in rows)
    internal = sorted(r["internal_overhead_ms"] for r in rows)
    versus_idle = sorted(r["overhead_vs_idle_ms"] for r in rows)
    return {
        "plain_request_ms": plain_ms,
        "idle_plain_request_ms": idle_plain_ms,
        "overhead_vs_idle_p50_ms": b.percentile(versus_idle, 0.5),
        "overhead_vs_idle_p90_ms": b.percentile(versus_idle, 0.9),
        "overhead_vs_idle_max_ms": versus_idle[-1],
        "switches": rows,
        "overhead_p50_ms": b.percentile(overheads, 0.5),
        "overhead_p90_ms": b.percentile(overheads, 0.9),
        "overhead_max_ms": overheads[-1],
        "internal_p50_ms": b.percentile(internal, 0.5),
        "internal_max_ms": internal[-1],
        "hooks_p50_ms": statistics.median(r["hooks_ms"] for r in rows),
        "client_p50_ms": statistics.median(r["client_ms"] for r in rows),
    }


# ------------------------------------------------------------------- 2 + 3. a queue of N


async def open_many(port: int, n: int) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        streams.append(await trio.open_tcp_stream(b.HOST, port))

    for start in range(0, n, 500):  # in batches: the listen backlog is finite
        async with trio.open_nursery() as nursery:
            for _ in range(min(500, n - start)):
                nursery.start_soon(one)
    return streams


async def fire(streams: list[trio.SocketStream], request: bytes) -> list[tuple[float, int, str]]:
    """Send `request` on every connection at once; (wall time, status, error) of each."""
    done: list[tuple[float, int, str]] = []

    async def one(stream: trio.SocketStream) -> None:
        try:
            response = await exchange(stream, request)
        except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
            done.append((time.time(), 0, type(exc).__name__))
            return
        status = _status(response)
        why = "" if status == 200 else response.partition(b"\r\n\r\n")[2][:120].decode()
        done.append((time.time(), status, why))

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
    return done


async def queue_run(llmux: b.Server, backend_port: int, flag: Path, n: int) -> dict[str, Any]:
    log_file = llmux.extra["log"]
    async with await trio.open_tcp_stream(b.HOST, llmux.port) as stream:
        await exchange(stream, request_bytes("a"))  # a is active
    await trio.sleep(0.5)
    rss_start = b.process_rss(llmux.pid)
    streams = await open_many(llmux.port, n)
    await trio.sleep(1.0)
    rss_connections = b.process_rss(llmux.pid)
    _, offset = log_since(log_file, 0)
    results: list[tuple[float, int, str]] = []
    reached: dict[str, float] = {}  # wall times, and how many reached it

    finished = trio.Event()

    async def watch_backend() -> None:
        """When the backend received the first and the last of the requests (until all are
        answered: a request refused with a 502 never reaches it)."""
        async with await trio.open_tcp_stream(b.HOST, backend_port) as stats:
            get = b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n"
            base: int | None = None
            last = -1
            while True:
                # One more poll after the last answer: a small burst can be over between polls.
                done = finished.is_set()
                answer = await exchange(stats, get)
                count = int(answer.rpartition(b":")[2].strip(b"} \r\n"))
                now = time.time()
                if base is None:
                    base = last = count
                if count > last:
                    reached.setdefault("first", now)
                    reached["last"] = now
                    reached["count"] = count - base
                    last = count
                if done:
                    break
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_backend)

        async def go() -> None:
            results.extend(await fire(streams, request_bytes("b")))
            finished.set()

        nursery.start_soon(go)
        deadline = trio.current_time() + 60
        while True:  # until every request waits in b's queue
            await trio.sleep(0.2)
            depth = await trio.to_thread.run_sync(
                lambda: b.metric_values(llmux.port, "llmux_request_queue_depth")
            )
            if depth.get('llmux_request_queue_depth{model="b"}', 0) >= n:
                break
            if trio.current_time() > deadline:
                raise RuntimeError(f"only {depth} queued after 60 s")
        await trio.sleep(0.5)
        rss_queued = b.process_rss(llmux.pid)
        await trio.Path(flag).touch()
    for s in streams:
        await s.aclose()
    entries, _ = log_since(log_file, offset)
    # Activation: the wake hook's completion, after which b's actor grants the whole queue in
    # its next step. (The `model_activated` line comes from the scheduler, which under this
    # load runs only after the 10,000 woken requests have each taken a first step.)
    woke = next(
        e for e in entries if e.get("event") == "hook_completed" and e.get("hook") == "wake"
    )
    at = _wall(woke["ts"])
    activated = next(e for e in entries if e.get("event") == "model_activated")
    scheduler_lag_ms = (_wall(activated["ts"]) - at) * 1000
    times = sorted(t for t, status, _ in results if status == 200)
    errors = sum(1 for _, status, _ in results if status != 200)
    assert rss_start is not None and rss_connections is not None and rss_queued is not None
    return {
        "queued": n,
        "errors": errors,
        "first_forwarded_after_activation_ms": (reached["first"] - at) * 1000,
        "all_forwarded_after_activation_ms": (reached["last"] - at) * 1000,
        "reached_backend": reached.get("count", 0),
        "model_activated_logged_after_ms": scheduler_lag_ms,
        "error_kinds": dict(Counter(why for _, status, why in results if status != 200)),
        "first_response_after_activation_ms": (times[0] - at) * 1000 if times else None,
        "last_response_after_activation_ms": (times[-1] - at) * 1000 if times else None,
        "rss_start_mb": rss_start / 2**20,
        "rss_with_connections_mb": rss_connections / 2**20,
        "rss_with_queue_mb": rss_queued / 2**20,
        "bytes_per_connection": (rss_connections - rss_start) / n,
        "bytes_per_queued_request": (rss_queued - rss_connections) / n,
        "bytes_per_connection_and_request": (rss_queued - rss_start) / n,
    }


async def direct_burst(port: int, n: int) -> dict[str, Any]:
    streams = await open_many(port, n)
    await trio.sleep(0.5)
    started = time.time()
    results = await fire(streams, request_bytes("standin"))
    for s in streams:
        await s.aclose()
    times = sorted(t for t, status, _ in results if status == 200)
    return {
        "errors": sum(1 for _, status, _ in results if status != 200),
        "first_response_ms": (times[0] - started) * 1000 if times else None,
        "last_response_ms": (times[-1] - started) * 1000 if times else None,
    }


def core_admission(n: int) -> dict[str, float]:
    """ModelCore alone: N requests queued during a wake, then the wake hook succeeds."""
    core = model_core("b", Settings(max_queue=n))
    core.handle(Wake("bench"), 0.0)
    for i in range(n):
        core.handle(Acquire(i), 0.001)
    started = time.perf_counter()
    effects = core.handle(HookDone(Hook.WAKE, True, ""), 0.002)
    elapsed = time.perf_counter() - started
    assert len(core.in_flight) == n, (len(effects), len(core.in_flight))
    return {"grant_all_ms": elapsed * 1000, "per_request_us": elapsed / n * 1e6}


# ------------------------------------------------------------------------------------ driving


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta = b.machine_notes()
    meta["command"] = b.command_line("switching.py")
    meta.update(
        switches=args.switches,
        queued=args.queued,
        hook_secs=HOOK_SECS,
        max_in_flight=args.max_in_flight,
    )
    # llmux holds a client and an upstream connection per admitted request.
    meta["nofile"] = b.raise_nofile(3 * args.queued + 4096)
    if meta["nofile"] < 2 * args.queued + 100:
        b.log(
            f"open-file limit {meta['nofile']} (cannot be raised here) is below 2 x {args.queued}"
            ": llmux may run out of descriptors when the whole queue is forwarded at once"
        )
    out: dict[str, Any] = {"meta": meta}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmux-sw-")))
        backend = stack.enter_context(b.standin())
        hooks = {"wake": f"sleep {HOOK_SECS}", "sleep": f"sleep {HOOK_SECS}"}
        config = {
            "models": {
                "a": {"port": backend.port, **hooks},
                "b": {"port": backend.port, **hooks},
            }
        }
        with b.llmux(config) as server:
            b.log("1. switch overhead")
            out["overhead"] = trio.run(
                switch_overhead, server.port, server.extra["log"], args.switches
            )
        flag = scratch / "go"
        config = {
            "models": {
                "a": {"port": backend.port, "wake": "true", "sleep": "true"},
                "b": {
                    "port": backend.port,
                    "wake": f"while [ ! -e '{flag}' ]; do sleep 0.005; done",
                    "sleep": "true",
                    "max_queue": args.queued * 2,
                    "max_in_flight": args.max_in_flight,
                },
            },
            "limits": {"header_timeout_secs": 120},
        }
        b.log(f"2. direct burst of {args.queued}")
        out["direct_burst"] = trio.run(direct_burst, backend.port, args.queued)
        b.log(f"2. {args.queued} requests queued behind a switch")
        with b.llmux(config) as server:
            out["queue"] = trio.run(queue_run, server, backend.port, flag, args.queued)
        out["core_admission"] = core_admission(args.queued)
    meta["loadavg_after"] = list(b.os.getloadavg())
    out["targets"] = targets(out)
    return out


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    o, q = out["overhead"], out["queue"]
    last = q["last_response_after_activation_ms"]
    per_request = q["bytes_per_queued_request"]
    return [
        {
            "target": "switch overhead beyond the hooks (client-seen, p50 / max)",
            "measured": f"{o['overhead_p50_ms']:.2f} / {o['overhead_max_ms']:.2f} ms",
            "goal": "≤ 5 ms",
            "ok": o["overhead_p50_ms"] <= 5,
        },
        {
            "target": "switch overhead beyond the hooks, against a plain request after the "
            "same idle time (p50 / max)",
            "measured": (
                f"{o['overhead_vs_idle_p50_ms']:.2f} / {o['overhead_vs_idle_max_ms']:.2f} ms"
            ),
            "goal": "≤ 5 ms",
            "ok": o["overhead_vs_idle_p50_ms"] <= 5,
        },
        {
            "target": f"{q['queued']:,} queued requests admitted after activation: all "
            "forwarded to the backend",
            "measured": f"{q['all_forwarded_after_activation_ms']:,.0f} ms",
            "goal": "≤ 1 s",
            "ok": q["all_forwarded_after_activation_ms"] <= 1000,
        },
        {
            "target": f"{q['queued']:,} queued requests: last response after activation",
            "measured": "n/a" if last is None else f"{last:,.0f} ms",
            "goal": "(≤ 1 s)",
            "ok": None if last is None else last <= 1000,
        },
        {
            "target": "memory per queued request (besides its connection)",
            "measured": f"{per_request / 1024:.1f} KB",
            "goal": "≤ 10 KB",
            "ok": per_request <= 10 * 1024,
        },
        {
            "target": "memory per queued request including its connection",
            "measured": f"{q['bytes_per_connection_and_request'] / 1024:.1f} KB",
            "goal": "(≤ 10 KB)",
            "ok": q["bytes_per_connection_and_request"] <= 10 * 1024,
        },
    ]


def markdown(out: dict[str, Any]) -> str:
    meta, o, q, d, c = (
        out["meta"],
        out["overhead"],
        out["queue"],
        out["direct_burst"],
        out["core_admission"],
    )
    lines = [
        f"`{meta['command']}` — {meta['date']}, Python {meta['python']}, trio {meta['trio']}, "
        f"{meta['cpus']} CPUs, open-file limit {meta['nofile']}, load average "
        f"{meta['loadavg_before'][0]:.2f} before / "
        f"{meta['loadavg_after'][0]:.2f} after",
        "",
        f"Switch overhead ({len(o['switches'])} switches a <-> b, hooks `sleep {HOOK_SECS}`; "
        f"a plain request to the awake model takes {o['plain_request_ms']:.2f} ms):",
        "",
        "| | p50 | p90 | max |",
        "|---|---:|---:|---:|",
        f"| client-seen switch, ms | {o['client_p50_ms']:.1f} | | |",
        f"| both hooks' run time, ms | {o['hooks_p50_ms']:.1f} | | |",
        f"| **overhead beyond the hooks** (client-seen - hooks - plain request), ms "
        f"| **{o['overhead_p50_ms']:.2f}** | {o['overhead_p90_ms']:.2f} "
        f"| {o['overhead_max_ms']:.2f} |",
        "| **overhead beyond the hooks, against a plain request after "
        f"{IDLE_BEFORE_PLAIN_SECS:g} s idle** ({o['idle_plain_request_ms']:.2f} ms), ms "
        f"| **{o['overhead_vs_idle_p50_ms']:.2f}** | {o['overhead_vs_idle_p90_ms']:.2f} "
        f"| {o['overhead_vs_idle_max_ms']:.2f} |",
        f"| llmux's own switch duration - hooks, ms | {o['internal_p50_ms']:.2f} | "
        f"| {o['internal_max_ms']:.2f} |",
        "",
        f"A queue of {q['queued']:,} requests, each on its own connection"
        + (
            f" (`max_in_flight` {out['meta']['max_in_flight']})"
            if out["meta"].get("max_in_flight")
            else ""
        )
        + ", admitted when the "
        "model becomes Active:",
        "",
        "| | first response ms | last response ms | errors |",
        "|---|---:|---:|---:|",
        f"| llmux: after activation | {b.num(q['first_response_after_activation_ms'], 1)} "
        f"| {b.num(q['last_response_after_activation_ms'], 1)} | {q['errors']} |",
        f"| llmux: after activation, request reached the backend (its /stats, polled every "
        f"10 ms) | {b.num(q['first_forwarded_after_activation_ms'], 1)} "
        f"| {b.num(q['all_forwarded_after_activation_ms'], 1)} | |",
        f"| direct: the same burst straight to the backend | {b.num(d['first_response_ms'], 1)} "
        f"| {b.num(d['last_response_ms'], 1)} | {d['errors']} |",
        f"| ModelCore alone: granting all on activation | | {c['grant_all_ms']:.1f} "
        f"({c['per_request_us']:.2f} µs each) | |",
        "",
        "Activation = the wake hook's `hook_completed` log line (millisecond timestamps; "
        "llmux's `model_activated` line came "
        f"{q['model_activated_logged_after_ms']:,.0f} ms later). "
        f"{q['reached_backend']:,} of the {q['queued']:,} reached the backend; errors: "
        + ("; ".join(f"{count} x {why!r}" for why, count in q["error_kinds"].items()) or "none"),
        "",
        "| llmux RSS | MB | per connection / request |",
        "|---|---:|---:|",
        f"| at start (a awake) | {q['rss_start_mb']:.1f} | |",
        f"| + {q['queued']:,} idle connections | {q['rss_with_connections_mb']:.1f} "
        f"| {q['bytes_per_connection'] / 1024:.1f} KB per connection |",
        f"| + a request queued on each | {q['rss_with_queue_mb']:.1f} "
        f"| {q['bytes_per_queued_request'] / 1024:.1f} KB per queued request |",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
    ]
    for t in out["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['goal']} | {b.verdict(t['ok'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="the queued model's max_in_flight (default: none, the whole queue at once)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(args)
    b.emit(results, args.json, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
