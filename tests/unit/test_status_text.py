"""`llmux status`: a URL without a scheme, and `--watch` until Ctrl-C."""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmux.cli.status import CLEAR_SCREEN, StatusError, add_parser, normalize_url, watch

STATUS = {
    "scheduler": {
        "policy": "fifo",
        "active": "a",
        "pinned": None,
        "phase": "Idle",
        "switch": None,
        "last_decision": "none yet",
    },
    "machines": {
        "ModelLifecycle": {"states": ["Sleeping", "Waking", "Active", "Draining", "SleepingDown"]},
        "SwitchSequence": {"states": ["Idle", "Settling"]},
    },
    "models": {
        "a": {
            "state": "Active",
            "in_flight": 0,
            "queue_depth": 0,
            "oldest_wait_secs": None,
            "last_transition": None,
        }
    },
    "switch_costs": [],
}


@contextmanager
def fake_llmux() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1 answering /llmux/status; its port and the paths asked."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps(STATUS).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()


def status_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmux", "status", *args]


def test_a_url_without_a_scheme_means_http() -> None:
    assert normalize_url("127.0.0.1:3000") == "http://127.0.0.1:3000"
    assert normalize_url("localhost:3000/") == "http://localhost:3000"
    assert normalize_url("https://llmux.example:443") == "https://llmux.example:443"


def test_status_reaches_a_url_given_without_a_scheme() -> None:
    with fake_llmux() as (port, asked):
        done = subprocess.run(
            status_command("--url", f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert f"llmux at http://127.0.0.1:{port}  policy fifo  active a" in done.stdout
    assert asked == ["/llmux/status"]


def test_watch_defaults_to_two_seconds_and_takes_its_own() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["status"]).watch is None
    assert parser.parse_args(["status", "--watch"]).watch == 2.0
    assert parser.parse_args(["status", "--watch", "0.5"]).watch == 0.5


class Frames:
    """A fetch that counts its calls, and a sleep that is Ctrl-C on its `stop_at`th call."""

    def __init__(self, stop_at: int) -> None:
        self.fetches = 0
        self.sleeps: list[float] = []
        self.stop_at = stop_at

    def fetch(self) -> str:
        self.fetches += 1
        if self.fetches == 2:
            raise StatusError("cannot reach http://127.0.0.1:1: refused")
        return f"frame {self.fetches}\n"

    def sleep(self, secs: float) -> None:
        self.sleeps.append(secs)
        if len(self.sleeps) == self.stop_at:
            raise KeyboardInterrupt


def test_watch_clears_a_terminal_between_frames_and_ctrl_c_exits_0() -> None:
    frames = Frames(stop_at=3)
    out = io.StringIO()
    assert watch(frames.fetch, 2.0, out=out, clear=True, sleep=frames.sleep) == 0
    assert frames.sleeps == [2.0, 2.0, 2.0]
    assert out.getvalue() == (
        f"{CLEAR_SCREEN}frame 1\n"
        f"{CLEAR_SCREEN}llmux status: cannot reach http://127.0.0.1:1: refused\n"
        f"{CLEAR_SCREEN}frame 3\n"
    )


def test_watch_into_a_pipe_never_writes_escapes() -> None:
    frames = Frames(stop_at=1)
    out = io.StringIO()
    assert watch(frames.fetch, 1.0, out=out, clear=False, sleep=frames.sleep) == 0
    assert out.getvalue() == "frame 1\n\n"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_watch_refreshes_until_ctrl_c_and_exits_0_without_a_traceback() -> None:
    with fake_llmux() as (port, asked):
        process = subprocess.Popen(
            status_command("--url", f"127.0.0.1:{port}", "--watch", "0.1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A signal mask is inherited through exec: whatever this test process blocks
            # (a library's thread, an earlier test), the child must be able to get Ctrl-C.
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}),
        )
        watchdog = threading.Timer(30, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            headers = 0
            for line in process.stdout:
                headers += line.startswith("llmux at ")
                if headers == 2:
                    break
            process.send_signal(signal.SIGINT)
            rest, err = process.communicate(timeout=30)
        finally:
            watchdog.cancel()
    assert headers == 2, "two frames before Ctrl-C"
    assert process.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "\x1b[" not in rest, "stdout is a pipe: no screen clearing"
    assert len(asked) >= 2


def test_the_text_shows_every_awake_model_each_resource_and_each_models_needs() -> None:
    from llmux.cli.status import render

    status = json.loads(json.dumps(STATUS))
    status["scheduler"] |= {"active": "b", "awake": ["a", "b"]}
    status["models"]["a"] |= {"needs": {"gpu0": 30.0}, "persistent": True}
    status["models"]["b"] = dict(status["models"]["a"], needs={"gpu0": 40.0}, persistent=False)
    status["resources"] = [{"name": "gpu0", "used": 70.0, "capacity": 80.0}]
    text = render(status, "http://127.0.0.1:3000", now=0.0)
    assert text.splitlines()[:2] == [
        "llmux at http://127.0.0.1:3000  policy fifo  awake a, b",
        "resources: gpu0 70/80",
    ]
    assert "needs gpu0 30, persistent" in text and "needs gpu0 40\n" in text


def test_the_implicit_resource_of_one_model_at_a_time_is_not_shown() -> None:
    from llmux.cli.status import render

    status = json.loads(json.dumps(STATUS))
    status["resources"] = [{"name": "default", "used": 1.0, "capacity": 1.0}]
    text = render(status, "http://127.0.0.1:3000", now=0.0)
    assert "resources" not in text and "needs" not in text
