"""`llmux run` starting and stopping as a process: binding before anything touches a model,
one-line errors, request logs, and a forced stop that leaves no hook process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.e2e.test_cli import free_port


def _start(config: dict[str, object], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"state_dir": str(tmp_path / "state"), **config}))
    return subprocess.Popen(
        [sys.executable, "-m", "llmux", "run", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def _wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextmanager
def _listening(process: subprocess.Popen[str]) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """Until llmux says it listens; yields its URL and the log records read so far."""
    assert process.stderr is not None
    records: list[dict[str, object]] = []
    try:
        for line in process.stderr:
            records.append(json.loads(line))
            if records[-1]["event"] == "listening":
                yield f"http://127.0.0.1:{records[-1]['port']}", records
                return
        raise AssertionError(f"llmux exited before listening: {records}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_port_in_use_is_one_line_and_exit_2_before_any_hook_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        probed = tmp_path / "probed"
        model = {"port": free_port(), "wake": "true", "sleep": "true", "alive": f"touch {probed}"}
        process = _start({"models": {"a": model}}, tmp_path, "--port", str(port))
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        f"llmux: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert not probed.exists(), "the alive probe ran before llmux could listen"


def test_an_unusable_host_is_one_line_and_exit_2(tmp_path: Path) -> None:
    model = {"port": free_port(), "wake": "true", "sleep": "true"}
    process = _start({"models": {"a": model}}, tmp_path, "--port", "0", "--host", "no.such.host.")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("llmux: cannot listen on no.such.host.:0: ")


def test_a_port_override_on_a_models_port_is_a_config_error(tmp_path: Path) -> None:
    port = free_port()
    process = _start(
        {"models": {"a": {"port": port, "wake": "true", "sleep": "true"}}},
        tmp_path,
        "--port",
        str(port),
    )
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("llmux: config error: ") and str(port) in line


def test_a_second_signal_stops_at_once_and_kills_the_hooks_process_groups(
    tmp_path: Path,
) -> None:
    backend_port = free_port()
    # The wake hook starts a backend in the background, in the hook's own process group (as
    # `vllm serve ... &` would), and the sleep hook takes far longer than anyone will wait.
    python = sys.executable
    wake = (
        f"{python} -m llmux.standin serve --port {backend_port} --name a >/dev/null 2>&1 & "
        "echo $! > backend.pid; "
        f"for i in $(seq 200); do {python} -m llmux.standin alive --port {backend_port} "
        "2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    )
    sleep = "echo $$ > sleep.pid; exec sleep 300"
    model = {"port": backend_port, "wake": wake, "sleep": sleep}
    process = _start({"models": {"a": model}, "port": 0}, tmp_path)
    with _listening(process) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions", json={"model": "a"}, timeout=30)
        assert reply.status_code == 200
        backend = int((tmp_path / "backend.pid").read_text())
        process.send_signal(signal.SIGINT)  # graceful: the sleep hook starts, and hangs
        _wait_until(lambda: (tmp_path / "sleep.pid").exists())
        sleeper = int((tmp_path / "sleep.pid").read_text())
        process.send_signal(signal.SIGINT)  # forced
        _, rest = process.communicate(timeout=20)
    assert process.returncode == 1, "the exit status says the shutdown was forced"
    assert "Traceback" not in rest
    events = [json.loads(line)["event"] for line in rest.strip().splitlines()]  # all JSON
    assert "shutdown_forced" in events
    _wait_until(lambda: not _alive(sleeper) and not _alive(backend), timeout=5)


def test_each_finished_request_is_one_log_line_unless_silenced(tmp_path: Path) -> None:
    port = free_port()
    wake = f"{sys.executable} -m llmux.standin start --port {port} --name a --pidfile a.pid"
    sleep = f"{sys.executable} -m llmux.standin stop --pidfile a.pid"
    model = {"port": port, "wake": wake, "sleep": sleep}
    for log_requests in (True, False):
        process = _start(
            {"models": {"a": model}, "port": 0, "log_requests": log_requests}, tmp_path
        )
        with _listening(process) as (url, _):
            with httpx.Client(base_url=url, timeout=30) as client:
                assert client.post("/v1/chat/completions", json={"model": "a"}).status_code == 200
                body = {"model": "a", "stream": True, "max_tokens": 2}
                assert client.post("/v1/chat/completions", json=body).status_code == 200
                assert client.post("/v1/chat/completions", json={"model": "x"}).status_code == 404
            process.send_signal(signal.SIGTERM)
            _, rest = process.communicate(timeout=30)
        requests = [r for r in map(json.loads, rest.splitlines()) if r["event"] == "request"]
        if not log_requests:
            assert requests == []
            continue
        plain, streamed = requests
        assert plain["model"] == "a" and plain["status"] == 200 and plain["level"] == "info"
        assert plain["streamed"] is False and plain["bytes"] > 0
        assert plain["queue_wait_secs"] > 0  # it waited for the wake
        assert plain["duration_secs"] >= plain["queue_wait_secs"]
        assert streamed["streamed"] is True and streamed["queue_wait_secs"] == 0


def test_a_stream_cut_by_the_end_of_the_grace_period_is_logged_and_forces_the_exit(
    tmp_path: Path,
) -> None:
    port = free_port()
    wake = f"{sys.executable} -m llmux.standin start --port {port} --name a --pidfile a.pid"
    sleep = f"{sys.executable} -m llmux.standin stop --pidfile a.pid"
    config = {
        "models": {"a": {"port": port, "wake": wake, "sleep": sleep}},
        "port": 0,
        "shutdown_grace_secs": 0.5,
    }
    process = _start(config, tmp_path)
    with _listening(process) as (url, _):
        body = {"model": "a", "stream": True, "max_tokens": 50, "chunk_delay": 1.0}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as reply:
            # The first event (not closing the iterator: that would hang up on llmux).
            chunks = reply.iter_bytes()  # kept: a collected iterator closes the response
            received = len(next(chunks))
            process.send_signal(signal.SIGTERM)
            _, rest = process.communicate(timeout=30)
    records = [json.loads(line) for line in rest.splitlines()]
    assert process.returncode == 1, records
    (cut,) = [r for r in records if r["event"] == "request_cut"]
    assert cut["model"] == "a" and cut["streamed"] is True and cut["bytes"] >= received
    assert records[-1]["event"] == "shutdown_complete"  # the model was still put to sleep
    assert not (tmp_path / "a.pid").exists()
