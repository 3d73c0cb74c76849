"""The configuration file: JSON, YAML or TOML (by extension), validated with msgspec.

Names and defaults follow llmux 2.4. Unknown fields are errors rather than silently ignored,
because a misspelt `min_active_sec` that does nothing is worse than a refusal to start. The
`policy` block is the exception: keys it does not know are handed to the chosen policy's
constructor, which refuses the ones it does not take.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import msgspec

from llmux.config_capacity import capacity_problem
from llmux.config_engine import EngineConfig, with_engine_hooks
from llmux.config_paths import default_state_dir, resolve_state_dir
from llmux.core.messages import Hook
from llmux.policies import PolicyLoadError, build_policy, resolve_policy_class
from llmux.policies.options import unknown_option

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
ListenPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ResourceName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Amount = Annotated[float, msgspec.Meta(ge=0)]
PositiveAmount = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """One line that says what is wrong and where."""

    def __init__(self, message: str) -> None:
        # A model name or a value may hold a line break; the message must stay one line.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    port: Port
    # Required unless an `engine` provides them (an explicit hook overrides the engine's).
    wake: str | None = None
    sleep: str | None = None
    alive: str | None = None
    engine: EngineConfig | None = None
    # A hook past its time is killed with its whole process group and counts as failed.
    wake_timeout_secs: PositiveSeconds = 600.0
    sleep_timeout_secs: PositiveSeconds = 300.0
    alive_timeout_secs: PositiveSeconds = 10.0
    # While Active, run `alive` this often; a failed probe takes the model out of service.
    # null: never (the model is still probed once at start-up when it has an `alive` hook).
    health_interval_secs: PositiveSeconds | None = None
    # Requests allowed to wait for this model; more get 503 with Retry-After.
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 1024
    # Requests forwarded to this model at once; while it is full the rest wait, in order,
    # as requests for a sleeping model do (max_queue and request_timeout_secs apply).
    # null: no limit.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Put the model to sleep after this long active with nothing in flight or waiting.
    idle_sleep_secs: PositiveSeconds | None = None
    # What it holds of the top-level `resources` while not asleep (GiB, GPUs: the user's
    # units). Required when `resources` is declared; without, a model holds the one slot.
    needs: dict[ResourceName, Amount] | None = None
    # Never evicted to make room for another model.
    persistent: bool = False

    def hook(self, hook: Hook) -> tuple[str | None, float]:
        """The shell command that runs `hook` (None: no alive hook) and its time limit."""
        if hook is Hook.WAKE:
            return self.wake, self.wake_timeout_secs
        if hook is Hook.SLEEP:
            return self.sleep, self.sleep_timeout_secs
        return self.alive, self.alive_timeout_secs


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024 * 1024
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=1)] = 100
    # From a connection's first byte (or the end of its previous response) to the end of the
    # request's headers: a client that trickles its headers is cut off (slowloris).
    header_timeout_secs: PositiveSeconds = 10.0
    # Longest pause between two reads of a request body.
    body_timeout_secs: PositiveSeconds = 60.0
    keepalive_idle_secs: PositiveSeconds = 120.0


class PolicySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    type: str = "fifo"
    request_timeout_secs: PositiveSeconds | None = None
    drain_before_switch: bool = True
    min_active_secs: Seconds = 0.0


class _RawConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Validated model by model below, so an error can name the model.
    models: dict[ModelName, dict[str, Any]]
    policy: dict[str, Any] = {}
    port: ListenPort = 3000
    host: str = "127.0.0.1"
    shutdown_grace_secs: Seconds = 30.0
    api_keys: list[Annotated[str, msgspec.Meta(min_length=1)]] = []
    limits: Limits = Limits()
    # What the models share, with capacities: {"gpu0": 80}. null: one model awake at a time.
    resources: dict[ResourceName, PositiveAmount] | None = None
    # Models to wake at start-up, in order (those that fit beside any found awake).
    preload: ModelName | list[ModelName] | None = None
    # Where hooks keep their state (pid files, sockets), as LLMUX_STATE_DIR; null: the XDG
    # default (see default_state_dir).
    state_dir: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    # One JSON line per finished request; false silences them.
    log_requests: bool = True


class Config(msgspec.Struct, frozen=True):
    models: dict[str, ModelConfig]
    policy: PolicySettings = PolicySettings()
    policy_options: dict[str, Any] = {}
    port: int = 3000
    host: str = "127.0.0.1"
    shutdown_grace_secs: float = 30.0
    api_keys: list[str] = []
    limits: Limits = Limits()
    resources: dict[str, float] | None = None
    # One model or a list (a Config built in code may still give one name, or None).
    preload: str | list[str] | None = None
    log_requests: bool = True
    # Hooks run here, so a relative path in a hook means "next to the config file"; policy
    # modules (`policy.type: "module:Class"`) are imported from here first, likewise.
    base_dir: str = "."
    # Absolute; created at start-up and given to every hook as LLMUX_STATE_DIR.
    state_dir: str = msgspec.field(default_factory=default_state_dir)

    def preload_list(self) -> list[str]:
        return _names(self.preload)


_DECODERS = {
    ".json": msgspec.json.decode,
    ".yaml": msgspec.yaml.decode,
    ".yml": msgspec.yaml.decode,
    ".toml": msgspec.toml.decode,
    # No extension at all (`/dev/stdin`, `<(generate-config)`) has always meant JSON.
    "": msgspec.json.decode,
}


def load_config(path: str | Path) -> Config:
    path = Path(path)
    decode = _DECODERS.get(path.suffix.lower())
    if decode is None:
        # Parsing `llmux.conf` as JSON would blame its syntax for a format it never claimed.
        raise ConfigError(
            f"{path}: unknown config file extension {path.suffix!r}: use .json, .yaml/.yml or .toml"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    try:
        raw = decode(data, type=_RawConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_with_field(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        # msgspec hands YAML bytes, not the file, to the parser, which then places the error
        # `in "<byte string>"`; name the file instead.
        detail = str(exc).replace("<byte string>", str(path))
        # YAML's parser explains itself over several lines; the CLI promises one.
        detail = " ".join(detail.split())
        kind = path.suffix.lstrip(".").upper() or "JSON"
        raise ConfigError(f"{path}: not valid {kind}: {detail}") from exc
    return build_config(raw, base_dir=str(path.resolve().parent), origin=str(path))


def parse_config(data: dict[str, Any], *, base_dir: str = ".") -> Config:
    """Validate an already-decoded config (tests and embedding)."""
    try:
        raw = msgspec.convert(data, type=_RawConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(_with_field(str(exc))) from exc
    return build_config(raw, base_dir=base_dir, origin="config")


def build_config(raw: _RawConfig, *, base_dir: str, origin: str) -> Config:
    if not raw.models:
        raise ConfigError(f"{origin}: models: name at least one model")
    models: dict[str, ModelConfig] = {}
    for name, fields in raw.models.items():
        try:
            models[name] = msgspec.convert(fields, type=ModelConfig)
        except msgspec.ValidationError as exc:
            where = f"models.{name}"
            raise ConfigError(f"{origin}: {_with_field(str(exc), prefix=where)}") from exc
        resolved = with_engine_hooks(name, models[name])
        if isinstance(resolved, str):
            raise ConfigError(f"{origin}: {resolved}")
        models[name] = resolved
        if models[name].health_interval_secs is not None and models[name].alive is None:
            raise ConfigError(
                f"{origin}: models.{name}.health_interval_secs: needs an `alive` hook to run"
            )
    preload = _names(raw.preload)
    problem = capacity_problem(models, raw.resources, preload)
    if problem is not None:
        raise ConfigError(f"{origin}: {problem}")
    _check_ports(models, raw.port, origin)
    settings, options = _policy_settings(raw.policy, origin)
    try:
        cls = resolve_policy_class(settings.type, search_path=base_dir)
    except PolicyLoadError as exc:
        raise ConfigError(f"{origin}: policy.type: {exc}") from exc
    _check_policy_options(cls, options, origin)
    try:
        # Built once here, only to check it: options it refuses are a config error, not a
        # traceback at start-up. (The app builds its own instance; policies may keep state.)
        build_policy(settings.type, options, search_path=base_dir)
    except PolicyLoadError as exc:
        raise ConfigError(f"{origin}: policy.type: {exc}") from exc
    return Config(
        models=models,
        policy=settings,
        policy_options=options,
        port=raw.port,
        host=raw.host,
        shutdown_grace_secs=raw.shutdown_grace_secs,
        api_keys=raw.api_keys,
        limits=raw.limits,
        resources=raw.resources,
        preload=preload,
        log_requests=raw.log_requests,
        base_dir=base_dir,
        state_dir=resolve_state_dir(raw.state_dir, base_dir),
    )


def _names(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def check_listen_port(config: Config, port: int) -> None:
    """Refuse a listen port (`--port`) that a model already uses: llmux would proxy to itself,
    or one of the two could not listen. Port 0 (any free one) never collides."""
    for name, model in config.models.items():
        if port != 0 and model.port == port:
            raise ConfigError(f"--port {port}: models.{name}.port is {port} too")


def _check_ports(models: dict[str, ModelConfig], listen_port: int, origin: str) -> None:
    """Two models on one port, or a model on llmux's own, would be proxied to the wrong
    process (or to llmux itself); only one of them could ever be listening."""
    owner: dict[int, str] = {}
    for name, model in models.items():
        if model.port in owner:
            raise ConfigError(
                f"{origin}: models.{name}.port: {model.port} is also "
                f"models.{owner[model.port]}.port"
            )
        owner[model.port] = name
    if listen_port in owner:
        raise ConfigError(
            f"{origin}: models.{owner[listen_port]}.port: {listen_port} is also llmux's own `port`"
        )


def _policy_settings(policy: dict[str, Any], origin: str) -> tuple[PolicySettings, dict[str, Any]]:
    """Split the `policy` block into llmux's own fields and the policy's constructor options."""
    known = set(PolicySettings.__struct_fields__)
    settings_part = {k: v for k, v in policy.items() if k in known}
    options = {k: v for k, v in policy.items() if k not in known}
    try:
        settings = msgspec.convert(settings_part, type=PolicySettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_with_field(str(exc), prefix='policy')}") from exc
    return settings, options


def _check_policy_options(cls: type[Any], options: dict[str, Any], origin: str) -> None:
    found = unknown_option(cls, options, list(PolicySettings.__struct_fields__))
    if found is not None:
        option, detail = found
        raise ConfigError(f"{origin}: policy.{option}: unknown option; {detail}")


def _with_field(message: str, prefix: str = "") -> str:
    """msgspec says "... - at `$.models.a.port`"; say "models.a.port: ..." instead."""
    match = re.search(r"^(.*) - at `\$(.*)`$", message)
    if not match:
        return f"{prefix}: {message}" if prefix else message
    detail, where = match.groups()
    where = where.lstrip(".")
    field = ".".join(part for part in (prefix, where) if part)
    return f"{field}: {detail}" if field else detail
