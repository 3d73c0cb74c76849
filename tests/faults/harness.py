"""The fault suite's harness: llmux as a real subprocess, real `sh` hooks, real backends.

Everything is observed from the outside, the way an operator would:

- llmux runs as `python -m llmux run CONFIG --port 0`; its JSON log lines (stderr) are read by a
  thread, so the pipe never fills, and kept for the checks;
- each model's hooks are `sh hook.sh ...`, which start and stop a stand-in backend process and
  append timestamped lines to a hook log;
- a sampler thread watches /proc for stand-in processes on the models' ports: at most one may
  exist at any time;
- clients are httpx under trio, and every request they send is tallied: answered (with its
  status), deliberately cancelled, or lost. Lost must be 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from llmux.build import settings_from_config
from llmux.config import parse_config
from llmux.core.capacity import Capacity
from tests.hooklog import (
    HookEvent,
    capacity_violations,
    read_hook_log,
    single_awake_violations,
)
from tests.waiting import wait_until

HOOK = Path(__file__).with_name("hook.sh")
PATH = "/v1/chat/completions"
# Generous bounds everywhere: the suite shares two cores with other jobs.
LISTEN_TIMEOUT = 60.0
EXIT_TIMEOUT = 40.0
REQUEST_TIMEOUT = 90.0
SAMPLE_INTERVAL = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- processes, from /proc --------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The /proc state letter, or None once the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody reaped holds no port and no GPU)."""
    state = process_state(pid)
    return state is not None and state != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def standin_processes(ports: Mapping[int, str], dir: Path) -> dict[int, str]:
    """Running stand-in servers (`llmux.standin serve`) on `ports` started by this scenario's
    hooks: pid -> model. Hooks run in the scenario's directory and the servers inherit it as
    their working directory, which tells them apart from other test runs on the machine that
    happen to reuse a port."""
    found: dict[int, str] = {}
    where = str(dir.resolve())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = cmdline(pid)
        if "llmux.standin" not in args or "serve" not in args or "--port" not in args:
            continue
        try:
            port = int(args[args.index("--port") + 1])
        except (IndexError, ValueError):
            continue
        if port in ports and process_cwd(pid) == where and process_running(pid):
            found[pid] = ports[port]
    # A server's own short-lived child between fork and exec still shows the server's command
    # line (Python runs `ldconfig -p` at start-up through ctypes): not a second server.
    return {pid: model for pid, model in found.items() if parent(pid) not in found}


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class StandinSampler:
    """Samples the running stand-ins every SAMPLE_INTERVAL: the models up must fit the
    declared capacity (without resources: at most one model up)."""

    def __init__(self, ports: Mapping[int, str], dir: Path, capacity: Capacity) -> None:
        self.ports = dict(ports)
        self.dir = dir
        self.capacity = capacity
        self.samples = 0
        self.max_seen = 0
        # (when, {pid: "model state=S cwd=... started=TICKS"}) for every sample that saw more
        # than fits
        self.overlaps: list[tuple[float, dict[int, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            running = standin_processes(self.ports, self.dir)
            self.samples += 1
            self.max_seen = max(self.max_seen, len(running))
            if self.capacity.over(running.values()):
                self.overlaps.append(
                    (time.time(), {p: _describe(p, m) for p, m in running.items()})
                )


def _describe(pid: int, model: str) -> str:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        state, ppid, started = fields[0], fields[1], fields[19]
    except (OSError, IndexError):
        return f"{model} (gone)"
    return f"{model} state={state} ppid={ppid} started={started} cwd={process_cwd(pid)}"


# ---- llmux, the process -----------------------------------------------------------------------


class Llmux:
    """One llmux process, its models' hooks and knobs, in directory `dir`."""

    def __init__(
        self,
        dir: Path,
        models: Mapping[str, Mapping[str, Any]],
        **top: Any,
    ) -> None:
        self.dir = dir
        self.hook_log = dir / "hooks.log"
        self.ports = {name: free_port() for name in models}
        hook = shlex.quote(str(HOOK))
        where = shlex.quote(str(dir))
        config_models = {
            name: {
                "port": self.ports[name],
                "wake": f"sh {hook} wake {where}",
                "sleep": f"sh {hook} sleep {where}",
                **({"alive": f"sh {hook} alive {where}"} if options.get("alive") else {}),
                **{key: value for key, value in options.items() if key != "alive"},
            }
            for name, options in models.items()
        }
        policy = {"request_timeout_secs": 60, **top.pop("policy", {})}
        self.state_dir = dir / "state"
        self.config = {
            "models": config_models,
            "policy": policy,
            "shutdown_grace_secs": 10,
            # The scenario's own, not the user's ~/.local/state/llmux.
            "state_dir": str(self.state_dir),
            **top,
        }
        self.config_path = dir / "llmux.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.process: subprocess.Popen[str] | None = None
        self.records: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self.port: int | None = None
        self.terminated = False
        self.exit_code: int | None = None
        self.exit_secs: float | None = None
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        # The capacity llmux runs with, from the very config it is given.
        parsed = parse_config(self.config, base_dir=str(dir))
        self.capacity = settings_from_config(parsed).capacity(parsed.models)
        self.sampler = StandinSampler(self.by_port(), dir, self.capacity)
        # Log records of known llmux bugs that a scenario chooses to look past (see tolerate).
        self._tolerated: list[Callable[[dict[str, Any]], bool]] = []

    def by_port(self) -> dict[int, str]:
        return {port: name for name, port in self.ports.items()}

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    # ---- running -----------------------------------------------------------------------------

    def spawn(self) -> None:
        self.sampler.start()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llmux", "run", str(self.config_path), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.dir,
        )
        self._reader = threading.Thread(target=self._read_stderr, name="llmux-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with (self.dir / "llmux.log").open("a") as copy:
            for line in self.process.stderr:
                copy.write(line)
                copy.flush()
                try:
                    record = json.loads(line)
                except ValueError:
                    self.other_lines.append(line.rstrip("\n"))
                    continue
                self.records.append(record)
                if record.get("event") == "listening":
                    self.port = int(record["port"])
                    self._listening.set()
        self._listening.set()  # exited: stop anyone waiting

    async def start(self) -> None:
        self.spawn()
        await trio.to_thread.run_sync(self._listening.wait, LISTEN_TIMEOUT)
        if self.port is None:
            stderr = self.other_lines[-20:]
            raise AssertionError(f"llmux did not listen within {LISTEN_TIMEOUT:g} s: {stderr}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def terminate(self, within: float = EXIT_TIMEOUT) -> int | None:
        """SIGTERM, then wait (bounded) for the exit; returns the exit status (None: hung)."""
        assert self.process is not None
        process = self.process
        self.terminated = True
        started = time.monotonic()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

        def wait() -> int | None:
            try:
                return process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                return None

        self.exit_code = await trio.to_thread.run_sync(wait)
        self.exit_secs = time.monotonic() - started
        if self.exit_code is not None and self._reader is not None:
            # Once llmux has exited, its last log lines are still in the pipe: the checks (and
            # the tests) look at every record only once the reader has reached the end.
            await trio.to_thread.run_sync(self._reader.join, 10.0)
        return self.exit_code

    def cleanup(self) -> None:
        """Whatever happened: no llmux, no stand-in, no hook child is left behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.sampler.stop()
        for pid in standin_processes(self.by_port(), self.dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for hung in self.dir.glob("*.hang.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(hung.read_text())
                if "sleep" in cmdline(pid) and process_cwd(pid) == str(self.dir.resolve()):
                    os.kill(pid, signal.SIGKILL)

    # ---- knobs ---------------------------------------------------------------------------------

    def _knob(self, model: str, name: str, value: str | None) -> None:
        path = self.dir / f"{model}.{name}"
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{value}\n")

    def delay(self, model: str, action: str, secs: float | None) -> None:
        self._knob(model, f"{action}_delay", None if secs is None else str(secs))

    def fail_wakes(self, model: str, times: int) -> None:
        self._knob(model, "fail_wake", str(times) if times else None)

    def hang_wake(self, model: str, hang: bool = True) -> None:
        self._knob(model, "hang_wake", "" if hang else None)

    def alive_lies(self, model: str, lies: bool = True) -> None:
        self._knob(model, "alive_lies", "" if lies else None)

    # ---- what happened ---------------------------------------------------------------------

    def hook_events(self) -> list[HookEvent]:
        return read_hook_log(self.hook_log)

    def hook_runs(self) -> list[str]:
        """`model:action` for every wake and sleep that started, in order."""
        return [f"{e.model}:{e.action}" for e in self.hook_events() if e.phase == "start"]

    async def hooks_become(self, expected: list[str], within: float = 30.0) -> None:
        """Wait (bounded) until the hook log shows exactly `expected`; hooks are other
        processes, so polling their log is the only way to see them."""
        await wait_until(
            lambda: self.hook_runs() == expected,
            timeout=within,
            interval=0.05,
            what=lambda: f"hook runs {expected}; they are {self.hook_runs()}",
        )

    def wakes(self) -> int:
        return sum(1 for e in self.hook_events() if e.action == "wake" and e.phase == "start")

    def run_hook_now(self, model: str, action: str) -> None:
        """Run a model's hook as llmux would, from the test (e.g. to have it awake before
        llmux starts)."""
        self.state_dir.mkdir(exist_ok=True)  # as llmux makes sure before any hook of its own
        env = {
            **os.environ,
            "LLMUX_MODEL": model,
            "LLMUX_PORT": str(self.ports[model]),
            "LLMUX_PYTHON": sys.executable,
            "LLMUX_STATE_DIR": str(self.state_dir),
        }
        subprocess.run(
            ["sh", str(HOOK), action, str(self.dir)],
            cwd=self.dir,
            env=env,
            check=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )

    def standin_pid(self, model: str) -> int | None:
        try:
            return int((self.dir / f"{model}.pid").read_text())
        except (OSError, ValueError):
            return None

    def tolerate(self, known_bug: Callable[[dict[str, Any]], bool]) -> None:
        """Do not fail the end-of-scenario checks on log records matching `known_bug` (a bug
        that another, xfail-marked, scenario pins)."""
        self._tolerated.append(known_bug)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [record for record in list(self.records) if record.get("event") == name]

    async def metrics(self, client: httpx.AsyncClient) -> dict[tuple[str, frozenset[Any]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = (await client.get(f"{self.url}/metrics")).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def metric(self, client: httpx.AsyncClient, name: str, **labels: str) -> float:
        return (await self.metrics(client)).get((name, frozenset(labels.items())), 0.0)

    # ---- the checks every scenario ends with ---------------------------------------------------

    def check_after_exit(self) -> None:
        """After a SIGTERM: exit 0 in bounded time, nothing left, invariants held throughout."""
        assert self.exit_code == 0, (
            f"llmux exited with {self.exit_code} after SIGTERM "
            f"({'hung' if self.exit_code is None else 'status'}); log tail: {self.records[-5:]}"
        )
        assert self.exit_secs is not None and self.exit_secs < EXIT_TIMEOUT
        # The stand-in server of the awake model was put to sleep; give the sampler's view and
        # a last direct look.
        left = standin_processes(self.by_port(), self.dir)
        assert not left, f"stand-in processes left after llmux exited: {left}"
        if self.config.get("resources") is None:
            problems = single_awake_violations(self.hook_events())
        else:
            problems = capacity_violations(self.hook_events(), self.capacity)
        assert not problems, f"more models awake than fit: {problems}"
        overlaps = self.sampler.overlaps[:3]
        assert not overlaps, f"more stand-ins ran at once than fit: {overlaps}"
        anomalies = self.events("anomaly")
        assert not anomalies, f"llmux refused impossible transitions: {anomalies[:3]}"
        crashes = [
            r
            for r in self.records
            if "exception" in r and not any(known(r) for known in self._tolerated)
        ]
        assert not crashes, f"llmux logged exceptions: {crashes[:2]}"
        tracebacks = [line for line in self.other_lines if "Traceback" in line]
        assert not tracebacks, f"llmux printed a traceback: {self.other_lines[-30:]}"
        assert not _unfinished(self.hook_events()), "a hook was still running when llmux exited"


def _unfinished(events: list[HookEvent]) -> list[str]:
    """Hooks that started but neither ended nor failed (a killed hook counts as unfinished
    only until the model's next hook starts)."""
    open_hooks: dict[str, str] = {}
    for event in events:
        if event.phase == "start":
            open_hooks[event.model] = event.action
        else:
            open_hooks.pop(event.model, None)
    return [f"{model}:{action}" for model, action in open_hooks.items()]


@contextlib.asynccontextmanager
async def llmux_running(
    dir: Path,
    models: Mapping[str, Mapping[str, Any]],
    *,
    prepare: Callable[[Llmux], None] | None = None,
    **top: Any,
) -> AsyncIterator[Llmux]:
    """Start llmux (after `prepare`, if given, has seen its ports and directory); on the way
    out, SIGTERM it (unless the test already did) and run the checks every scenario ends
    with. Whatever happens, nothing is left running."""
    server = Llmux(dir, models, **top)
    try:
        if prepare is not None:
            prepare(server)
        await server.start()
        yield server
        if not server.terminated:
            await server.terminate()
        server.check_after_exit()
    finally:
        server.cleanup()


# ---- clients and the tally --------------------------------------------------------------------


@dataclass
class Outcome:
    model: str
    stream: bool
    sent_at: float
    status: int | None = None
    # complete | cut (headers came, the body broke off) | cancelled (by the client) | lost
    result: str = "lost"
    detail: str = ""
    backend: str | None = None
    events: int = 0
    done_at: float | None = None


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def answered(self) -> int:
        return self.count("complete") + self.count("cut")

    @property
    def cancelled(self) -> int:
        return self.count("cancelled")

    @property
    def lost(self) -> int:
        return self.count("lost")

    def statuses(self) -> Counter[int]:
        return Counter(
            o.status for o in self.outcomes if o.status is not None and o.result != "cancelled"
        )

    def with_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status and o.result != "cancelled"]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "cancelled": self.cancelled,
            "lost": self.lost,
            "cut": self.count("cut"),
            "statuses": {str(k): v for k, v in sorted(self.statuses().items())},
        }

    def check(self, allowed: Iterable[int] = (200,), *, cut_ok: bool = False) -> None:
        """No request lost, only `allowed` statuses, every 200 from the right backend and every
        stream complete."""
        lost = [o for o in self.outcomes if o.result == "lost"]
        assert not lost, f"{len(lost)} of {self.sent} requests lost, e.g. {lost[:3]}"
        unexpected = [
            o
            for o in self.outcomes
            if o.status is not None and o.result != "cancelled" and o.status not in set(allowed)
        ]
        assert not unexpected, (
            f"unexpected statuses {Counter(o.status for o in unexpected)}, e.g. {unexpected[:3]}"
        )
        misrouted = [
            o for o in self.outcomes if o.status == 200 and o.backend not in (None, o.model)
        ]
        assert not misrouted, f"answered by the wrong backend: {misrouted[:3]}"
        if not cut_ok:
            cut = [o for o in self.outcomes if o.result == "cut"]
            assert not cut, f"{len(cut)} responses broke off mid-body, e.g. {cut[:3]}"


class Clients:
    """httpx under trio, every request tallied."""

    def __init__(self, url: str, tally: Tally, *, connections: int = 200) -> None:
        self.url = url
        self.tally = tally
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=30.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> Clients:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)  # type: ignore[arg-type]

    async def storm(
        self, models: str, rng: random.Random, *, concurrency: int, secs: float
    ) -> None:
        """`concurrency` clients, each sending one request after another to a random model of
        `models` (a quarter of them streamed) for `secs` seconds, bounded."""
        deadline = trio.current_time() + secs

        async def client() -> None:
            while trio.current_time() < deadline:
                stream = rng.random() < 0.25
                await self.chat(
                    rng.choice(models),
                    stream=stream,
                    max_tokens=rng.randint(1, 16),
                    chunk_delay=0.01 if stream else None,
                )

        with trio.fail_after(secs + 120):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(client)

    async def chat(
        self,
        model: str,
        *,
        stream: bool = False,
        max_tokens: int = 8,
        chunk_delay: float | None = None,
        abandon_after_events: int | None = None,
        cancel_after: float | None = None,
        first_event: trio.Event | None = None,
    ) -> Outcome:
        """One chat completion. `abandon_after_events`: hang up mid-stream after that many SSE
        events; `cancel_after`: give up (hang up) after that many seconds. Both count as
        cancelled by the client, never as lost."""
        outcome = Outcome(model, stream, time.time())
        self.tally.outcomes.append(outcome)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if chunk_delay is not None:
            body["chunk_delay"] = chunk_delay
        with trio.move_on_after(cancel_after if cancel_after is not None else math.inf) as scope:
            try:
                await self._exchange(outcome, body, abandon_after_events, first_event)
            except httpx.HTTPError as exc:
                outcome.result = "cut" if outcome.status is not None else "lost"
                outcome.detail = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            outcome.result = "cancelled"
        outcome.done_at = time.time()
        if first_event is not None:
            first_event.set()
        return outcome

    async def reset_mid_stream(self, model: str, *, after_events: int = 2) -> Outcome:
        """A raw connection that asks for a long stream, reads `after_events` SSE events, then
        resets the connection (SO_LINGER 0: an RST, not a FIN). Counted as cancelled."""
        outcome = Outcome(model, True, time.time())
        self.tally.outcomes.append(outcome)
        body = json.dumps(
            {"model": model, "stream": True, "max_tokens": 2000, "chunk_delay": 0.05}
        ).encode()
        head = (
            f"POST {PATH} HTTP/1.1\r\nhost: llmux\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        host, _, port = self.url.removeprefix("http://").partition(":")
        with trio.move_on_after(REQUEST_TIMEOUT):
            stream = await trio.open_tcp_stream(host, int(port))
            try:
                await stream.send_all(head + body)
                received = b""
                while received.count(b"data: ") < after_events:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    received += data
                if received.startswith(b"HTTP/1.1 "):
                    outcome.status = int(received[9:12])
                outcome.events = received.count(b"data: ")
                if outcome.events >= after_events:
                    outcome.result = "cancelled"
                else:
                    outcome.detail = f"connection closed after {received[:200]!r}"
            finally:
                linger = struct.pack("ii", 1, 0)
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                await stream.aclose()
        outcome.done_at = time.time()
        return outcome

    async def _exchange(
        self,
        outcome: Outcome,
        body: dict[str, Any],
        abandon_after_events: int | None,
        first_event: trio.Event | None,
    ) -> None:
        async with self.client.stream("POST", PATH, json=body) as response:
            outcome.status = response.status_code
            outcome.backend = response.headers.get("x-standin-backend")
            if response.status_code != 200 or not outcome.stream:
                data = await response.aread()
                outcome.result = "complete"
                if response.status_code != 200:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        outcome.detail = json.loads(data)["error"]["message"]
                return
            received = bytearray()
            async for chunk in response.aiter_bytes():
                received += chunk
                outcome.events = received.count(b"data: ")
                if outcome.events and first_event is not None:
                    first_event.set()
                if abandon_after_events is not None and outcome.events >= abandon_after_events:
                    outcome.result = "cancelled"
                    return  # leaving the block closes the connection mid-stream
            expected = body["max_tokens"] + 2  # one per token, the final chunk, [DONE]
            if received.endswith(b"data: [DONE]\n\n") and outcome.events == expected:
                outcome.result = "complete"
            else:
                outcome.result = "cut"
                outcome.detail = f"stream ended after {outcome.events}/{expected} events"
