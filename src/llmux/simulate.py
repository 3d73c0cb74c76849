"""`llmux simulate`: replay traffic through the scheduler in virtual time and compare policies.

The simulator runs the same cores the server runs (`llmux.core.world.World`): the same
admission, the same switch sequence, the same policy calls. Only time is virtual, so ten
minutes of traffic take a fraction of a second, and the same inputs always give the same
numbers.

Traffic
-------
A *trace* is a JSON-lines file, one request per line (blank lines are skipped)::

    {"at": 0.0, "model": "qwen-small", "service": 0.5}
    {"at": 1.25, "model": "llama-large", "service": 2.0, "cancel_after": 10}

- ``at``: arrival time in seconds from the start of the trace (>= 0; any order).
- ``model``: the model the request asks for. From the CLI it must be one of the config's
  models; from the Python API an unknown model simply joins the simulated world.
- ``service``: seconds the request takes once granted (>= 0).
- ``cancel_after`` (optional): the client gives up that many seconds after arriving, whether
  the request is still queued or already being served.

Unknown keys are an error, so a misspelt key is not silently ignored.

A *profile* is a built-in synthetic workload, seeded and deterministic (see `PROFILES`):
``single``, ``alternating``, ``bursty``, ``dominant``, ``interleaved``, ``surge``, ``three``.
Profiles last 600 s of virtual time unless told otherwise and draw service times uniformly
from 0.25-0.75 s. They use the config's models, in the config's order; when a profile needs
more models than the config has, the missing ones are synthetic (``a``, ``b``, ``c``, ...,
skipping names already taken) and the table header says so.

Hooks
-----
The config's hooks are shell commands, so their durations are stated on the command line:
``--hook-secs WAKE,SLEEP`` sets every model, ``--hook-secs MODEL=WAKE,SLEEP`` one model (the
later option wins). The default is 2 s to wake and 1 s to sleep. Request timeout,
drain-before-switch and min-active come from the config's ``policy`` block.

Policies
--------
``--policy TYPE`` (repeatable) is a built-in name or ``module:Class`` (imported with the
config file's directory first on the path, as ``llmux run`` imports ``policy.type``). The
config's policy options are passed when TYPE is the config's own policy type; other
policies get their defaults. Without ``--policy``: the config's policy, then every built-in
one.

Measures (per workload and policy)
----------------------------------
- requests, served (granted), rejected (by reason: ``timeout``, ``hook_failed``), cancelled
  (the client left before a grant), unserved (never granted, rejected or cancelled: only a
  policy that never switches leaves these);
- switches: wake hooks run, the first cold start included; failed_switches among them;
- switch_secs: time hooks were running (the GPU was changing models, serving nobody);
  drain_secs: time spent draining the old model before its sleep hook;
- makespan: first arrival to the moment the last request was over;
  busy_fraction: share of the makespan during which at least one request was being served;
- waits (arrival to grant, served requests only): p50, p99 (nearest rank), max and mean,
  overall and per model.

Python API: `simulate(workload, policies, hooks, settings) -> list[Result]`, with
`generate_profile`, `load_trace` and `parse_trace` to build workloads.

This module is the public API; the code lives in `llmux.simulation` (workloads, run, cli).
"""

from __future__ import annotations

from llmux.build import settings_from_config
from llmux.simulation.cli import add_parser, main
from llmux.simulation.measure import ModelStats, Result, percentile, union_length
from llmux.simulation.run import PolicySpec, SimulationError, simulate
from llmux.simulation.workloads import (
    CAPACITY_PROFILES,
    DEFAULT_HOOK,
    PROFILES,
    Profile,
    TraceError,
    TraceRequest,
    Workload,
    dump_trace,
    generate_profile,
    load_trace,
    parse_trace,
)

__all__ = [
    "CAPACITY_PROFILES",
    "DEFAULT_HOOK",
    "PROFILES",
    "ModelStats",
    "PolicySpec",
    "Profile",
    "Result",
    "SimulationError",
    "TraceError",
    "TraceRequest",
    "Workload",
    "add_parser",
    "dump_trace",
    "generate_profile",
    "load_trace",
    "main",
    "parse_trace",
    "percentile",
    "settings_from_config",
    "simulate",
    "union_length",
]
