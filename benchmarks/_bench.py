"""Shared plumbing for the benchmarks in this folder (not a benchmark itself).

Everything here binds or connects to 127.0.0.1 only. Processes are started as children of the
benchmark and stopped by pid when it ends. The pieces:

- `standin`, `llmux`, `nginx`, `litellm`: context managers that start one server each and
  yield a `Server` (port, pid);
- `wrk`: runs wrk with a generated Lua script and returns its figures (a Lua `done()` hook
  prints them as JSON, so nothing is scraped from wrk's human-readable output);
- `CpuWindow`: CPU used by given processes and by the whole machine over a window, so every
  table can say how busy the machine was with other jobs;
- `percentile`, `median`, `num`, `ratio`: table helpers.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MODEL = "standin"
START_TIMEOUT = 20.0
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Pinned: newer releases' `proxy` extra needs `litellm-proxy`, which the registry here lacks;
# the releases flagged as compromised are avoided.
LITELLM_VERSION = "1.106.12"
LITELLM_MASTER_KEY = "sk-llmux-bench"


def body(
    *,
    stream: bool = False,
    max_tokens: int = 8,
    chunk_delay: float | None = None,
    model: str = MODEL,
) -> bytes:
    """The chat-completion request every contender gets (108 bytes when not streamed)."""
    fields: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": max_tokens,
    }
    if stream:
        fields["stream"] = True
    if chunk_delay is not None:
        fields["chunk_delay"] = chunk_delay
    return json.dumps(fields, separators=(",", ":")).encode()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- the machine


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    with contextlib.suppress(ValueError, OSError):
        # As root the hard limit may be raised too (up to fs.nr_open).
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
        return target
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_notes() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **{name: _version(name) for name in ("trio", "h11", "msgspec")},
        "wrk": _first_line([WRK, "--version"]),
        "nginx": _first_line([NGINX, "-v"]),
        "loadavg_before": list(os.getloadavg()),
    }


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:
        return None


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else None


def command_line(script: str) -> str:
    return " ".join([".venv/bin/python", f"benchmarks/{script}", *sys.argv[1:]])


def _ticks(value: int) -> float:
    return value / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """User + system seconds of a process and its reaped children, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return _ticks(sum(int(v) for v in fields[11:15]))


def process_rss(pid: int) -> int | None:
    """Resident set size in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_busy() -> float | None:
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return _ticks(user + nice + system + irq + softirq + steal)


class CpuWindow:
    """CPU % (100 = one core) of named processes and of everything else over a window."""

    def __init__(
        self, pids: dict[str, int | Sequence[int]], *, children: str | None = None
    ) -> None:
        # `children`: also count the CPU of this process's children reaped meanwhile (wrk),
        # under that name.
        self.pids = {n: [p] if isinstance(p, int) else list(p) for n, p in pids.items()}
        self.children = children
        self.start = self._take()
        self.started = time.monotonic()

    def _take(self) -> dict[str, float | None]:
        taken: dict[str, float | None] = {}
        for name, pids in self.pids.items():
            each = [process_cpu(pid) for pid in pids]
            taken[name] = None if None in each else sum(v for v in each if v is not None)
        if self.children:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            taken[self.children] = used.ru_utime + used.ru_stime
        taken["machine"] = machine_busy()
        return taken

    def stop(self) -> dict[str, float | None]:
        end = self._take()
        seconds = max(time.monotonic() - self.started, 1e-9)
        out: dict[str, float | None] = {}
        for name in end:
            a, b = self.start[name], end[name]
            out[name] = None if a is None or b is None else (b - a) / seconds * 100
        machine = out.pop("machine")
        mine = sum(v for v in out.values() if v is not None)
        out["other"] = None if machine is None else max(0.0, machine - mine)
        return out


# ------------------------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    port: int
    pid: int
    scratch: Path
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def _stop(child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait_for(check: Any, child: subprocess.Popen[bytes], what: str, log_file: Path) -> Any:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        found = check()
        if found:
            return found
        if child.poll() is not None or time.monotonic() > deadline:
            tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"{what} did not start:\n{tail}")
        time.sleep(0.02)


@contextlib.contextmanager
def standin(
    *, chunk_delay: float = 0.0, cpus: str | None = None, name: str = MODEL
) -> Iterator[Server]:
    """`python -m llmux.standin serve` on a free port."""
    with tempfile.TemporaryDirectory(prefix="llmux-bench-standin-") as tmp:
        scratch = Path(tmp)
        ready, out = scratch / "ready", scratch / "standin.log"
        command = [
            *_taskset(cpus),
            *(PYTHON, "-m", "llmux.standin", "serve", "--port", "0", "--name", name),
            *("--chunk-delay", repr(chunk_delay), "--ready-file", str(ready)),
        ]
        with out.open("wb") as sink:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        try:
            _wait_for(ready.exists, child, "stand-in", out)
            yield Server("standin", int(ready.read_text()), child.pid, scratch)
        finally:
            _stop(child)


def one_model_config(port: int, **model: Any) -> dict[str, Any]:
    return {"models": {MODEL: {"port": port, "wake": "true", "sleep": "true", **model}}}


@contextlib.contextmanager
def llmux(
    config: dict[str, Any],
    *,
    cpus: str | None = None,
    src: str | None = None,
    name: str = "llmux",
) -> Iterator[Server]:
    """`python -m llmux run CONFIG --port 0`; the port comes from the `listening` log event.

    `src`: a directory holding another `llmux` package (a copy of an older tree) to run
    instead of the installed one, for before/after comparisons in the same run.
    """
    with tempfile.TemporaryDirectory(prefix="llmux-bench-llmux-") as tmp:
        scratch = Path(tmp)
        config_file, out = scratch / "config.json", scratch / "llmux.log"
        config_file.write_text(json.dumps(config))
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        command = [*_taskset(cpus), PYTHON, "-m", "llmux", "run", str(config_file), "--port", "0"]
        with out.open("wb") as sink:
            child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, cwd=scratch
            )

        def listening() -> int | None:
            for entry in read_log(out):
                if entry.get("event") == "listening":
                    return int(entry["port"])
            return None

        try:
            port = _wait_for(listening, child, name, out)
            yield Server(name, port, child.pid, scratch, {"log": out})
        finally:
            _stop(child, grace=10.0)


def read_log(path: Path) -> list[dict[str, Any]]:
    """llmux's JSON log lines (others are skipped)."""
    try:
        return read_log_text(path.read_text(errors="replace"))
    except OSError:
        return []


def read_log_text(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
    return entries


@contextlib.contextmanager
def nginx(backend_port: int, *, cpus: str | None = None, workers: int = 1) -> Iterator[Server]:
    """nginx as a reverse proxy with a keep-alive upstream, from a generated config."""
    with tempfile.TemporaryDirectory(prefix="llmux-bench-nginx-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        conf = scratch / "nginx.conf"
        conf.write_text(
            f"""
worker_processes {workers};
daemon off;
master_process on;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {scratch}/body;
    proxy_temp_path {scratch}/proxy;
    fastcgi_temp_path {scratch}/fastcgi;
    uwsgi_temp_path {scratch}/uwsgi;
    scgi_temp_path {scratch}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {HOST}:{backend_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
        location = /nginx-static {{
            return 200 "ok";
        }}
    }}
}}
"""
        )
        log_file = scratch / "nginx.out"
        with log_file.open("wb") as sink:
            child = subprocess.Popen(
                [*_taskset(cpus), NGINX, "-c", str(conf), "-p", str(scratch)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        try:
            _wait_for(lambda: _accepts(port), child, "nginx", log_file)
            yield Server("nginx", port, child.pid, scratch)
        finally:
            _stop(child)


def nginx_worker_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def litellm_venv(path: Path) -> tuple[Path | None, str]:
    """A separate virtualenv with the LiteLLM proxy (created on first use, never the project's).

    Returns (the `litellm` executable or None, what happened).
    """
    exe = path / "bin" / "litellm"
    if exe.exists():
        return exe, f"LiteLLM {LITELLM_VERSION} from {path}"
    log(f"installing LiteLLM {LITELLM_VERSION} into {path} (one-off, a few minutes) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
        done = subprocess.run(
            [str(path / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"LiteLLM could not be installed: {exc}"
    if done.returncode != 0 or not exe.exists():
        lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING")]
        return None, "LiteLLM could not be installed: " + " / ".join(lines[-2:])
    return exe, f"LiteLLM {LITELLM_VERSION} installed into {path}"


@contextlib.contextmanager
def litellm(exe: Path, backend_port: int, *, cpus: str | None = None) -> Iterator[Server]:
    """`litellm --config` with one OpenAI-compatible model pointing at the stand-in."""
    with tempfile.TemporaryDirectory(prefix="llmux-bench-litellm-") as tmp:
        scratch = Path(tmp)
        port = free_port()
        conf = scratch / "config.yaml"
        conf.write_text(
            f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://{HOST}:{backend_port}/v1
      api_key: unused
general_settings:
  master_key: {LITELLM_MASTER_KEY}
litellm_settings:
  telemetry: false
  drop_params: true
"""
        )
        env = dict(os.environ)
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the price list at start-up
            LITELLM_TELEMETRY="False",
            LITELLM_LOG="ERROR",
            NO_PROXY="*",
            no_proxy="*",
        )
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            env.pop(proxy, None)
        log_file = scratch / "litellm.log"
        with log_file.open("wb") as sink:
            child = subprocess.Popen(
                [
                    *_taskset(cpus),
                    *(str(exe), "--config", str(conf), "--host", HOST, "--port", str(port)),
                    *("--num_workers", "1"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=env,
                cwd=scratch,
            )
        try:
            deadline = time.monotonic() + 120  # LiteLLM imports a lot
            while not _accepts(port):
                if child.poll() is not None or time.monotonic() > deadline:
                    tail = log_file.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"LiteLLM did not start:\n{tail}")
                time.sleep(0.2)
            yield Server("litellm", port, child.pid, scratch)
        finally:
            _stop(child)


def fetch(
    port: int,
    method: str,
    path: str,
    data: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One blocking HTTP/1.1 exchange over a fresh connection (set-up steps only)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=data or None, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def metric_values(port: int, name: str) -> dict[str, float]:
    """Every sample of one metric from llmux's /metrics, keyed by its label text."""
    _, text = fetch(port, "GET", "/metrics")
    values: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


# ---------------------------------------------------------------------------------------- wrk

_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,\\"connect\\":%d,"
    .. "\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,"
    .. "\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"p999\\":%d,\\"max\\":%d,\\"mean\\":%f}}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def lua_script(directory: Path, data: bytes, headers: dict[str, str] | None = None) -> Path:
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    path = directory / f"post-{len(list(directory.glob('post-*.lua')))}.lua"
    path.write_text(_LUA.format(body=_lua_string(data.decode()), headers="\n".join(lines)))
    return path


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: int
    error_kinds: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    bytes: int


def wrk(
    port: int,
    script: Path,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    path: str = PATH,
    timeout: float = 10.0,
    cpus: str | None = None,
) -> WrkResult:
    command = [
        *_taskset(cpus),
        *(WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"),
        *(f"--timeout={max(1, round(timeout))}s", "-s", str(script), f"http://{HOST}:{port}{path}"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    kinds = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    secs = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        seconds=secs,
        rps=raw["requests"] / secs if secs else 0.0,
        errors=sum(kinds.values()),
        error_kinds=kinds,
        p50_ms=raw["p50"] / 1000,
        p90_ms=raw["p90"] / 1000,
        p99_ms=raw["p99"] / 1000,
        p999_ms=raw["p999"] / 1000,
        max_ms=raw["max"] / 1000,
        mean_ms=raw["mean"] / 1000,
        bytes=raw["bytes"],
    )


# ------------------------------------------------------------------------------------ helpers


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(known) if known else None


def num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(results: dict[str, Any], as_json: bool, table: str) -> None:
    if as_json:
        print(json.dumps(json_safe(results), indent=2, allow_nan=False))
    else:
        print(table)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")
