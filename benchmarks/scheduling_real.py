"""The simulator's policy comparison, checked on the real server, in real time, scaled down.

For each switch-cost / service-time ratio, and each built-in `llmux simulate` profile, this
runs one `llmux run` per policy (fifo, drain-first, cost_quantum; the three side by side, so
machine noise hits them alike) in front of always-on stand-in backends
(`python -m llmux.standin serve`, one per model, shared), with hooks that only `sleep` for
the scaled switch time and append to a log (so switches are counted as `llmux simulate`
counts them: wake hooks run). An async client replays the profile's requests at their
scaled arrival times; each asks the stand-in to stream for its scaled service time
(`stream: true, max_tokens: 0, chunk_delay: SERVICE`). From client-side timestamps:

- wait: from sending the request to receiving the response head (llmux forwards the head as
  soon as the model is active and the request admitted, so this is the queueing delay plus
  a few milliseconds of proxying);
- service interval: from the head to the end of the stream; GPU busy fraction: the union of
  service intervals over the makespan (first request sent to last response ended).

Every time is scaled by `--scale` (default 0.1: a 10 s switch takes 1 s, a 0.5 s request
50 ms, a 300 s profile 30 s), the policies' time options with it (cost_quantum's
`max_wait_secs` and `prior_switch_secs`, drain-first's `gap_secs`), and the table reports
times divided by the scale, i.e. in the simulator's seconds. Beside each real figure is the
simulator's prediction for the very same scaled requests, hooks and options.

    .venv/bin/python benchmarks/scheduling_real.py                 # all four ratios, ~14 min
    .venv/bin/python benchmarks/scheduling_real.py --ratios 10     # one ratio, ~3.5 min
    .venv/bin/python benchmarks/scheduling_real.py --profile dominant --duration 120 --json

Each ratio runs the seven profiles one after another (`--duration` virtual seconds each,
300 by default), the three servers in parallel: about 7 x (duration x scale + 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from llmux.core.world import HookScript, Settings
from llmux.simulate import (
    TraceRequest,
    Workload,
    generate_profile,
    percentile,
    union_length,
)
from llmux.upstream import UpstreamPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduling_sim import (
    CONFIG_MODELS,
    DRAIN_FIRST,
    LABELS,
    ONE_AT_A_TIME,
    POLICIES,
    add_common_arguments,
    hooks_for,
    run_one,
)

SCALE = 0.1
DURATION = 300.0
START_TIMEOUT = 20.0
# Policy options in seconds, at full scale (the sim table's); scaled with everything else.
TIME_OPTIONS: dict[str, dict[str, float]] = {
    "fifo": {},
    DRAIN_FIRST: {"gap_secs": 0.5},
    "cost_quantum": {"max_wait_secs": 60.0, "prior_switch_secs": 10.0},
}
MODELS = ("a", "b", "c")
PATH = b"/v1/chat/completions"
HEADERS = [(b"content-type", b"application/json")]


# ---- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, child: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{what} exited with status {child.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT:g}s")


def stop(child: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace`; only ever the process we started."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.contextmanager
def standins(
    workdir: Path, tag: str = "", slots: int | None = None, models: Sequence[str] = MODELS
) -> Iterator[dict[str, int]]:
    ports = {m: free_port() for m in models}
    children: list[subprocess.Popen[bytes]] = []
    capacity = [] if slots is None else ["--slots", str(slots)]
    try:
        for model, port in ports.items():
            log = open(workdir / f"standin-{tag}{model}.log", "wb")  # noqa: SIM115
            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "llmux.standin",
                        "serve",
                        "--port",
                        str(port),
                        "--name",
                        model,
                        *capacity,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for child, (model, port) in zip(children, ports.items(), strict=True):
            wait_listening(port, child, f"standin {model}")
        yield ports
    finally:
        for child in children:
            stop(child)


@dataclass
class Server:
    policy: str
    port: int
    wake_log: Path
    process: subprocess.Popen[bytes]

    def switches(self) -> int:
        try:
            return len(self.wake_log.read_text().split())
        except FileNotFoundError:
            return 0


def start_server(
    workdir: Path,
    policy: str,
    options: Mapping[str, Any],
    backends: Mapping[str, int],
    hooks: HookScript,
    *,
    resources: Mapping[str, float] | None = None,
    needs: Mapping[str, Mapping[str, float]] | None = None,
    tag: str = "",
) -> Server:
    label = tag + LABELS.get(policy, policy).replace(":", "_")
    wake_log = workdir / f"wakes-{label}.log"
    wake_log.unlink(missing_ok=True)
    port = free_port()
    config = {
        "models": {
            model: {
                "port": backend,
                "wake": f'sleep {hooks.wake_secs:.4f} && echo "$LLMUX_MODEL" >> {wake_log}',
                "sleep": f"sleep {hooks.sleep_secs:.4f}",
                **({} if needs is None else {"needs": dict(needs[model])}),
            }
            for model, backend in backends.items()
        },
        **({} if resources is None else {"resources": dict(resources)}),
        "policy": {"type": policy, **options},
        "port": port,
        "shutdown_grace_secs": 5,
    }
    path = workdir / f"config-{label}.json"
    path.write_text(json.dumps(config, indent=2))
    log = open(workdir / f"llmux-{label}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "llmux", "run", str(path)], stdout=log, stderr=subprocess.STDOUT
    )
    wait_listening(port, process, f"llmux ({policy})")
    return Server(policy, port, wake_log, process)


# ---- the client ------------------------------------------------------------------------------


@dataclass
class Outcome:
    model: str
    sent: float
    head: float | None = None
    end: float | None = None
    status: int | None = None
    error: str | None = None


async def one_request(
    pool: UpstreamPool, port: int, request: TraceRequest, scale: float, t0: float
) -> Outcome:
    body = json.dumps(
        {
            "model": request.model,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 0,
            "chunk_delay": request.service * scale,
        }
    ).encode()
    await trio.sleep_until(t0 + request.at * scale)
    outcome = Outcome(request.model, trio.current_time())
    try:
        async with pool.request(port, b"POST", PATH, HEADERS, body) as response:
            outcome.head = trio.current_time()
            outcome.status = response.status_code
            async for _ in response.iter_body():
                pass
            outcome.end = trio.current_time()
    except Exception as exc:  # counted as a failure; the table says how many
        outcome.error = repr(exc)
    return outcome


async def replay(port: int, workload: Workload, scale: float, t0: float) -> list[Outcome]:
    pool = UpstreamPool(max_idle_per_port=256)
    outcomes: list[Outcome] = []

    async def run(request: TraceRequest) -> None:
        outcomes.append(await one_request(pool, port, request, scale, t0))

    async with trio.open_nursery() as nursery:
        for request in workload.requests:
            nursery.start_soon(run, request)
    await pool.aclose()
    return outcomes


# ---- measuring -------------------------------------------------------------------------------


@dataclass
class Measured:
    switches: int = 0
    busy_secs: float = 0.0
    makespan: float = 0.0
    waits: list[float] = field(default_factory=list)
    failed: int = 0

    def add_real(self, outcomes: Sequence[Outcome], switches: int, scale: float) -> None:
        ok = [o for o in outcomes if o.status == 200 and o.head is not None and o.end]
        failed = [o for o in outcomes if o not in ok]
        self.failed += len(failed)
        for o in failed[:3]:
            print(f"  failed: {o}", file=sys.stderr)
        self.switches += switches
        self.waits.extend((o.head - o.sent) / scale for o in ok if o.head is not None)
        intervals = [(o.head, o.end) for o in ok if o.head is not None and o.end is not None]
        self.busy_secs += union_length(intervals) / scale
        ends = [o.end for o in ok if o.end is not None]
        if ends:
            self.makespan += (max(ends) - min(o.sent for o in outcomes)) / scale

    def add_sim(self, switches: int, busy: float, makespan: float, waits: list[float]) -> None:
        self.switches += switches
        self.busy_secs += busy
        self.makespan += makespan
        self.waits.extend(waits)

    def merge(self, other: Measured) -> None:
        self.switches += other.switches
        self.busy_secs += other.busy_secs
        self.makespan += other.makespan
        self.waits.extend(other.waits)
        self.failed += other.failed

    def percentile(self, percent: int) -> float:
        value = percentile(sorted(self.waits), percent)
        return math.nan if value is None else value

    def summary(self) -> dict[str, Any]:
        return {
            "switches": self.switches,
            "busy_fraction": round(self.busy_secs / self.makespan, 4) if self.makespan else 0,
            "wait_p50": round(self.percentile(50), 3),
            "wait_p99": round(self.percentile(99), 3),
            "wait_max": round(self.percentile(100), 3),
            "failed": self.failed,
        }


def scaled_options(policy: str, scale: float) -> dict[str, float]:
    return {k: v * scale for k, v in TIME_OPTIONS.get(policy, {}).items()}


def scaled_workload(workload: Workload, scale: float) -> Workload:
    requests = tuple(
        TraceRequest(r.at * scale, r.model, r.service * scale) for r in workload.requests
    )
    return Workload(workload.name, requests, synthetic=workload.synthetic)


def simulate_scaled(
    workload: Workload, policy: str, hooks: HookScript, scale: float, slots: int | None
) -> tuple[int, float, float, list[float]]:
    """The simulator's figures for the same scaled run, in unscaled seconds."""
    models = [*CONFIG_MODELS, *workload.synthetic]
    script = HookScript(hooks.wake_secs * scale, hooks.sleep_secs * scale)
    result, waits, _ = run_one(
        scaled_workload(workload, scale),
        policy,
        scaled_options(policy, scale),
        dict.fromkeys(models, script),
        Settings(backend_slots=slots),
    )
    return (
        result.switches,
        result.busy_secs / scale,
        result.makespan / scale,
        [w / scale for w in waits],
    )


async def run_profile(
    servers: Sequence[Server], workload: Workload, scale: float
) -> dict[str, list[Outcome]]:
    """Replay one profile against every server at once; the outcomes per policy."""
    results: dict[str, list[Outcome]] = {}
    t0 = trio.current_time() + 0.5

    async def one(server: Server) -> None:
        results[server.policy] = await replay(server.port, workload, scale, t0)

    async with trio.open_nursery() as nursery:
        for server in servers:
            nursery.start_soon(one, server)
    return results


def compare(
    ratios: Sequence[float],
    policies: Sequence[str],
    profiles: Sequence[str],
    *,
    scale: float,
    duration: float,
    seed: int,
    keep: Path | None,
    slots: int | None = None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    workloads = [
        generate_profile(name, CONFIG_MODELS, seed=seed, duration=duration) for name in profiles
    ]
    with contextlib.ExitStack() as stack:
        if keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmux-sched-")))
        else:
            workdir = keep
            workdir.mkdir(parents=True, exist_ok=True)
        # Backends with finite capacity are per policy, or the policies would share it.
        if slots is None:
            shared = stack.enter_context(standins(workdir))
            backends = dict.fromkeys(policies, shared)
        else:
            backends = {
                p: stack.enter_context(standins(workdir, f"{i}-", slots))
                for i, p in enumerate(policies)
            }
        for ratio in ratios:
            hooks = hooks_for(ratio)
            scaled = HookScript(hooks.wake_secs * scale, hooks.sleep_secs * scale)
            real = {p: Measured() for p in policies}
            sim = {p: Measured() for p in policies}
            per_profile: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
            started = time.monotonic()
            for workload in workloads:
                models = [*CONFIG_MODELS, *workload.synthetic]
                servers = [
                    start_server(
                        workdir,
                        p,
                        scaled_options(p, scale),
                        {m: backends[p][m] for m in models},
                        scaled,
                    )
                    for p in policies
                ]
                try:
                    outcomes = trio.run(run_profile, servers, workload, scale)
                finally:
                    for server in servers:
                        stop(server.process)
                for server in servers:
                    one_real, one_sim = Measured(), Measured()
                    one_real.add_real(outcomes[server.policy], server.switches(), scale)
                    one_sim.add_sim(*simulate_scaled(workload, server.policy, hooks, scale, slots))
                    real[server.policy].merge(one_real)
                    sim[server.policy].merge(one_sim)
                    per_profile[server.policy].append(
                        {
                            "profile": workload.name,
                            "real": one_real.summary(),
                            "sim": one_sim.summary(),
                        }
                    )
                print(
                    f"ratio {ratio:g}: {workload.name} done ({time.monotonic() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            for p in policies:
                rows.append(
                    {
                        "ratio": ratio,
                        "policy": LABELS.get(p, p),
                        "real": real[p].summary(),
                        "sim": sim[p].summary(),
                        "per_profile": per_profile[p],
                    }
                )
    return rows


def profile_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| ratio | policy | profile | switches real (sim) | busy real (sim) "
        "| p99 real (sim) | max real (sim) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for one in row.get("per_profile", []):
            r, s = one["real"], one["sim"]
            lines.append(
                f"| {row['ratio']:g} | {row['policy']} | {one['profile']} "
                f"| {r['switches']} ({s['switches']}) "
                f"| {100 * r['busy_fraction']:.1f}% ({100 * s['busy_fraction']:.1f}%) "
                f"| {r['wait_p99']:.2f} s ({s['wait_p99']:.2f} s) "
                f"| {r['wait_max']:.2f} s ({s['wait_max']:.2f} s) |"
            )
    return "\n".join(lines) + "\n"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| switch/service | policy | switches real (sim) | GPU busy real (sim) "
        "| wait p50 real (sim) | wait p99 real (sim) | wait max real (sim) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, s = row["real"], row["sim"]
        failed = f", {r['failed']} failed" if r["failed"] else ""
        lines.append(
            f"| {row['ratio']:g} | {row['policy']} | {r['switches']} ({s['switches']}){failed} "
            f"| {100 * r['busy_fraction']:.1f}% ({100 * s['busy_fraction']:.1f}%) "
            f"| {r['wait_p50']:.2f} s ({s['wait_p50']:.2f} s) "
            f"| {r['wait_p99']:.2f} s ({s['wait_p99']:.2f} s) "
            f"| {r['wait_max']:.2f} s ({s['wait_max']:.2f} s) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--policy", action="append", default=[], help="default: all three")
    parser.add_argument("--profile", action="append", default=[], choices=list(ONE_AT_A_TIME))
    parser.add_argument("--scale", type=float, default=SCALE, help="real / simulated time")
    parser.add_argument(
        "--duration", type=float, default=DURATION, help="virtual seconds of each profile"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this directory")
    parser.add_argument("--per-profile", action="store_true", help="also each profile's rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = compare(
        args.ratios,
        args.policy or list(POLICIES),
        args.profile or list(ONE_AT_A_TIME),
        scale=args.scale,
        duration=args.duration,
        seed=args.seed,
        keep=args.keep,
        slots=args.backend_slots,
    )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(rows))
        if args.per_profile:
            sys.stdout.write("\n" + profile_table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
