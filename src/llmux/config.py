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

from llmux.core.messages import Hook
from llmux.policies import PolicyLoadError, build_policy

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
ListenPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ConfigError(Exception):
    """One line that says what is wrong and where."""

    def __init__(self, message: str) -> None:
        # A model name or a value may hold a line break; the message must stay one line.
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    port: Port
    wake: str
    sleep: str
    alive: str | None = None
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
    # A model to wake at start-up (unless another one is found awake and adopted).
    preload: str | None = None


class Config(msgspec.Struct, frozen=True):
    models: dict[str, ModelConfig]
    policy: PolicySettings = PolicySettings()
    policy_options: dict[str, Any] = {}
    port: int = 3000
    host: str = "127.0.0.1"
    shutdown_grace_secs: float = 30.0
    api_keys: list[str] = []
    limits: Limits = Limits()
    preload: str | None = None
    # Hooks run here, so a relative path in a hook means "next to the config file".
    base_dir: str = "."


_DECODERS = {
    ".json": msgspec.json.decode,
    ".yaml": msgspec.yaml.decode,
    ".yml": msgspec.yaml.decode,
    ".toml": msgspec.toml.decode,
}


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    decode = _DECODERS.get(path.suffix.lower(), msgspec.json.decode)
    try:
        raw = decode(data, type=_RawConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_with_field(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        # YAML's parser explains itself over several lines; the CLI promises one.
        detail = " ".join(str(exc).split())
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
        if models[name].health_interval_secs is not None and models[name].alive is None:
            raise ConfigError(
                f"{origin}: models.{name}.health_interval_secs: needs an `alive` hook to run"
            )
    if raw.preload is not None and raw.preload not in models:
        raise ConfigError(f"{origin}: preload: {raw.preload!r} is not a configured model")
    known = set(PolicySettings.__struct_fields__)
    settings_part = {k: v for k, v in raw.policy.items() if k in known}
    options = {k: v for k, v in raw.policy.items() if k not in known}
    try:
        settings = msgspec.convert(settings_part, type=PolicySettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_with_field(str(exc), prefix='policy')}") from exc
    try:
        # Built once here, only to check it: options it refuses are a config error, not a
        # traceback at start-up. (The app builds its own instance; policies may keep state.)
        build_policy(settings.type, options)
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
        preload=raw.preload,
        base_dir=base_dir,
    )


def _with_field(message: str, prefix: str = "") -> str:
    """msgspec says "... - at `$.models.a.port`"; say "models.a.port: ..." instead."""
    match = re.search(r"^(.*) - at `\$(.*)`$", message)
    if not match:
        return f"{prefix}: {message}" if prefix else message
    detail, where = match.groups()
    where = where.lstrip(".")
    field = ".".join(part for part in (prefix, where) if part)
    return f"{field}: {detail}" if field else detail
