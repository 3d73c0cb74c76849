"""`llmux run` as a user runs it: a real process, the bundled example, signals, bad configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ONE_MODEL = {"a": {"port": 8000, "wake": "true", "sleep": "true"}}
EXAMPLE = Path(__file__).parents[2] / "examples" / "config.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def llmux(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmux", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def state_dir(tmp_path: Path) -> Path:
    """Where llmux keeps the example's pid files: its default state directory, under the
    XDG_STATE_HOME that example_server gives it."""
    return tmp_path / "state" / "llmux"


def left_behind(tmp_path: Path) -> list[str]:
    """What the example left in its state and temporary directories: nothing, once its
    models sleep."""
    return sorted(
        str(path.relative_to(tmp_path))
        for where in (state_dir(tmp_path), tmp_path / "tmp")
        for path in where.rglob("*")
    )


@contextmanager
def example_server(
    tmp_path: Path, events: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The bundled example on free ports, as it ships: its state (pid files) in llmux's default
    state directory, here under `tmp_path` through XDG_STATE_HOME, and its temporary files in
    `tmp_path/tmp`; the log events before `listening` are appended to `events`."""
    path = tmp_path / "config.json"
    if not path.exists():
        config = json.loads(EXAMPLE.read_text())
        for model in config["models"].values():
            model["port"] = free_port()
        path.write_text(json.dumps(config))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TMPDIR": str(tmp_path / "tmp"),
    }
    process = llmux("run", str(path), "--port", "0", env=env)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            record = json.loads(line)
            if events is not None:
                events.append(record["event"])
            if record["event"] == "listening":
                yield process, f"http://127.0.0.1:{record['port']}"
                break
        else:
            pytest.fail(f"llmux exited with {process.wait()} before listening")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_bundled_example_serves_switches_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    with example_server(tmp_path) as (process, url):
        models = httpx.get(f"{url}/v1/models").json()["data"]
        names = [model["id"] for model in models]
        assert names == ["llama-large", "qwen-small"]
        for name in [*names, *names]:
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == name
        assert left_behind(tmp_path) == ["state/llmux/qwen-small.pid"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
    # The awake model was put to sleep: its stand-in server is gone, and so is its pid file.
    assert state_dir(tmp_path).is_dir()
    assert left_behind(tmp_path) == []


def test_a_restarted_llmux_adopts_the_model_left_awake(tmp_path: Path) -> None:
    chat = {"model": "qwen-small", "messages": []}
    with example_server(tmp_path) as (process, url):
        assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).status_code == 200
        process.kill()  # a crash: qwen-small's stand-in server lives on
        process.wait()
    assert left_behind(tmp_path) == ["state/llmux/qwen-small.pid"]
    events: list[str] = []
    with example_server(tmp_path, events) as (process, url):
        assert "model_adopted" in events
        reply = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30)
        assert reply.status_code == 200
        assert reply.json()["request_number"] == 1, "served by the same, adopted server"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert left_behind(tmp_path) == []


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"models": {"a": {"port": "x", "wake": "true", "sleep": "true"}}}, "models.a.port"),
        ({"models": {"a": {"port": 1, "wake": "true"}}}, "models.a"),
        ({"models": {}}, "models"),
        ({"models": ONE_MODEL, "polcy": {}}, "polcy"),
        (
            {"models": {"a": {**ONE_MODEL["a"], "health_interval_secs": 5}}},
            "models.a.health_interval_secs: needs an `alive` hook",
        ),
        ({"models": ONE_MODEL, "limits": {"max_headers": 0}}, "limits.max_headers"),
        ({"models": ONE_MODEL, "api_keys": [""]}, "api_keys"),
        ({"models": ONE_MODEL, "policy": {"request_timeout_secs": -1}}, "request_timeout_secs"),
        ({"models": ONE_MODEL, "policy": {"type": "no-such-policy"}}, "no-such-policy"),
        (
            {"models": ONE_MODEL, "policy": {"type": "cost_quantum", "max_wait_secs": -1}},
            "policy.type: policy 'cost_quantum' rejected its options (max_wait_secs)",
        ),
        ({"models": ONE_MODEL, "policy": {"type": "fifo", "colour": "red"}}, "colour"),
    ],
)
def test_a_bad_config_prints_one_line_naming_the_field_and_exits_2(
    tmp_path: Path, config: dict[str, object], complaint: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = llmux("run", str(path))
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert complaint in err
    assert "Traceback" not in err


def test_a_missing_config_and_unparseable_yaml_are_config_errors(tmp_path: Path) -> None:
    missing = llmux("run", str(tmp_path / "nope.json"))
    assert missing.wait(timeout=30) == 2
    bad = tmp_path / "config.yaml"
    bad.write_text("models: [unclosed\n")
    process = llmux("run", str(bad))
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.startswith("llmux: config error:")


def test_version() -> None:
    process = llmux("--version")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.startswith("llmux ")
