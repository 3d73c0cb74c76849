"""`llmux simulate`: workloads, the measures, the Python API and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import llmux.simulation.run
from llmux import simulate as sim
from llmux.cli import main
from llmux.core.policy import BasePolicy, Defer, PendingContext, PolicyDecision, SwitchNow
from llmux.core.world import HookScript, Settings
from llmux.simulate import (
    PROFILES,
    PolicySpec,
    SimulationError,
    TraceError,
    TraceRequest,
    Workload,
    generate_profile,
    parse_trace,
    simulate,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "examples" / "config.json")
EXAMPLE_TRACE = str(ROOT / "examples" / "traces" / "small.jsonl")
HOOKS = {"a": HookScript(2.0, 1.0), "b": HookScript(2.0, 1.0)}


class Patient(BasePolicy):
    """Switches away from an active model only once the oldest waiter has waited 5 s."""

    name = "patient"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        if ctx.active_model is None or ctx.oldest_waiting >= 5.0 - 1e-9:
            return SwitchNow("waited long enough")
        return Defer(5.0 - ctx.oldest_waiting, "batching")


class Broken(BasePolicy):
    name = "broken"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        raise ZeroDivisionError("oops")


class Spinner(BasePolicy):
    name = "spinner"

    def on_pending(self, ctx: PendingContext) -> PolicyDecision:
        return SwitchNow() if ctx.active_model is None else Defer(0.0, "never")


# ---- profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_profiles_are_deterministic_per_seed(name: str) -> None:
    first = generate_profile(name, ["x", "y", "z"], seed=7, duration=120)
    again = generate_profile(name, ["x", "y", "z"], seed=7, duration=120)
    other = generate_profile(name, ["x", "y", "z"], seed=8, duration=120)
    assert first == again
    assert first.requests != other.requests
    assert len(first.models) == PROFILES[name].models
    # The given models first, topped up with synthetic ones for a profile that needs more.
    assert set(first.models) - set(first.synthetic) <= {"x", "y", "z"}
    assert all(0 <= r.at < 120 and 0.25 <= r.service <= 0.75 for r in first.requests)
    ats = [r.at for r in first.requests]
    assert ats == sorted(ats)


def test_profiles_default_to_ten_minutes_at_about_five_requests_a_second() -> None:
    workload = generate_profile("interleaved", ["x", "y"])
    assert workload.span == 600
    assert 2700 < len(workload.requests) < 3300
    assert workload.kind == "profile" and workload.seed == 0


def test_a_profile_tops_up_missing_models_with_synthetic_names() -> None:
    workload = generate_profile("three", ["a", "big"], duration=30)
    assert sorted(workload.models) == ["a", "b", "big"]
    assert workload.synthetic == ("b",)
    assert generate_profile("single", duration=10).models == ["a"]


def test_dominant_sends_about_ninety_percent_to_the_first_model() -> None:
    workload = generate_profile("dominant", ["big", "small"])
    share = sum(r.model == "big" for r in workload.requests) / len(workload.requests)
    assert 0.87 < share < 0.93


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        generate_profile("nope")


# ---- measures --------------------------------------------------------------------------------


def test_a_hand_computed_trace_gives_the_expected_waits_and_switches() -> None:
    # a arrives at 0: cold wake 0-2, served 2-3. b arrives at 0.5: fifo switches as soon as a
    # is active, so a drains until 3, sleeps 3-4, b wakes 4-6 and is served 6-7.
    trace = [TraceRequest(0.0, "a", 1.0), TraceRequest(0.5, "b", 1.0)]
    (result,) = simulate(trace, ["fifo"], HOOKS)
    assert (result.requests, result.served, result.rejected, result.cancelled) == (2, 2, 0, 0)
    assert result.switches == 2  # the cold start, then a -> b
    assert result.switch_secs == 5.0  # wake a 2 + sleep a 1 + wake b 2
    assert result.drain_secs == 1.0
    assert result.makespan == 7.0
    assert result.busy_secs == 2.0
    assert result.busy_fraction == round(2 / 7, 6)
    assert (result.wait_p50, result.wait_p99, result.wait_max) == (2.0, 5.5, 5.5)
    assert result.wait_mean == 3.75
    assert result.per_model["b"].wait_max == 5.5
    assert result.anomalies == 0 and result.unserved == 0


def test_timeouts_are_counted_apart_from_the_waits() -> None:
    trace = [TraceRequest(0.0, "a", 0.1), TraceRequest(1.0, "a", 0.1)]
    (result,) = simulate(
        trace, "fifo", {"a": HookScript(100.0, 1.0)}, Settings(request_timeout=30.0)
    )
    assert result.served == 0
    assert result.rejected == 2 and result.rejected_by_reason == {"timeout": 2}
    assert result.wait_p50 is None and result.wait_max is None
    assert result.makespan == 31.0  # the last one is refused 30 s after its arrival at 1.0


def test_backend_slots_queue_requests_inside_the_backend_and_lengthen_the_drain() -> None:
    # One slot: a's three requests (at 0) run 2-3, 3-4, 4-5 after the cold wake 0-2; their
    # waits run to the start of service. b (at 0.5) waits for the whole backlog to drain
    # (until 5), a's sleep 5-6 and b's wake 6-8.
    trace = [TraceRequest(0.0, "a", 1.0) for _ in range(3)] + [TraceRequest(0.5, "b", 1.0)]
    (result,) = simulate(trace, "fifo", HOOKS, Settings(backend_slots=1))
    assert result.per_model["a"].wait_max == 4.0
    assert result.per_model["b"].wait_max == 7.5
    assert result.busy_secs == 4.0 and result.makespan == 9.0
    (unlimited,) = simulate(trace, "fifo", HOOKS)
    assert unlimited.per_model["a"].wait_max == 2.0
    assert unlimited.per_model["b"].wait_max == 5.5


def test_max_in_flight_holds_requests_in_llmux_until_one_finishes() -> None:
    # a wakes 0-2; with max_in_flight 1 its second request is granted when the first ends.
    trace = [TraceRequest(0.0, "a", 1.0), TraceRequest(0.0, "a", 1.0)]
    (result,) = simulate(trace, "fifo", HOOKS, Settings(max_in_flight={"a": 1}))
    assert result.per_model["a"].wait_max == 3.0
    assert result.makespan == 4.0


def test_a_client_leaving_frees_its_backend_slot() -> None:
    # The first of a's requests runs 2-12 but its client leaves at 3: the second starts then.
    trace = [TraceRequest(0.0, "a", 10.0, cancel_after=3.0), TraceRequest(0.0, "a", 1.0)]
    (result,) = simulate(trace, "fifo", HOOKS, Settings(backend_slots=1))
    assert result.served == 2  # served means started, as a granted request counts without slots
    assert result.wait_max == 3.0 and result.makespan == 4.0


def test_a_client_that_leaves_while_queued_counts_as_cancelled() -> None:
    trace = [TraceRequest(0.0, "a", 0.5), TraceRequest(0.0, "b", 0.5, cancel_after=1.0)]
    (result,) = simulate(trace, "fifo", HOOKS)
    assert result.cancelled == 1 and result.served == 1
    assert result.switches == 1


def test_policies_are_compared_on_the_same_workload() -> None:
    workload = generate_profile("interleaved", ["a", "b"], duration=120)
    fifo, patient = simulate(workload, ["fifo", PolicySpec("patient", Patient)], HOOKS)
    assert (fifo.policy, patient.policy) == ("fifo", "patient")
    assert fifo.requests == patient.requests == len(workload.requests)
    assert patient.switches < fifo.switches
    assert fifo.wall_secs < 5.0


def test_a_run_is_deterministic_apart_from_wall_time() -> None:
    runs = [simulate("bursty", "fifo", HOOKS, duration=60)[0] for _ in range(2)]
    first, second = (msgspec.structs.replace(r, wall_secs=0.0) for r in runs)
    assert first == second


def test_models_without_a_hook_script_get_the_default() -> None:
    (result,) = simulate([TraceRequest(0.0, "solo", 1.0)], "fifo")
    assert result.switch_secs == sim.DEFAULT_HOOK.wake_secs


def test_a_policy_that_raises_is_named() -> None:
    trace = [TraceRequest(0.0, "a", 1.0)]
    with pytest.raises(SimulationError, match=r"policy 'broken' raised in on_pending at t=0\.000s"):
        simulate(trace, Broken(), HOOKS)


def test_a_policy_that_defers_by_zero_forever_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llmux.simulation.run, "MAX_DECISIONS_PER_INSTANT", 100)
    trace = [TraceRequest(0.0, "a", 1.0), TraceRequest(0.5, "b", 1.0)]
    with pytest.raises(SimulationError, match="without time passing"):
        simulate(trace, Spinner(), HOOKS)


# ---- traces ----------------------------------------------------------------------------------


def test_traces_parse_and_round_trip() -> None:
    workload = parse_trace(
        [
            '{"at": 0, "model": "a", "service": 0.5}',
            "",
            '{"at": 1.5, "model": "b", "service": 2, "cancel_after": 3}',
        ]
    )
    assert workload.requests == (
        TraceRequest(0.0, "a", 0.5),
        TraceRequest(1.5, "b", 2.0, cancel_after=3.0),
    )
    text = sim.dump_trace(workload)
    assert '"cancel_after"' not in text.splitlines()[0]
    assert parse_trace(text.splitlines()).requests == workload.requests


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"at": 0, "model": "a", "service": "slow"}', "t.jsonl:2: service: Expected `float`"),
        ('{"at": -1, "model": "a", "service": 1}', "t.jsonl:2: at: Expected `float` >= 0"),
        ('{"at": 0, "model": "a"}', "t.jsonl:2: Object missing required field `service`"),
        ('{"at": 0, "model": "a", "service": 1, "x": 1}', "t.jsonl:2: Object contains unknown"),
        ("{not json", "t.jsonl:2: not a JSON object"),
    ],
)
def test_a_bad_trace_line_is_named(line: str, message: str) -> None:
    good = '{"at": 0, "model": "a", "service": 1}'
    with pytest.raises(TraceError) as info:
        parse_trace([good, line], origin="t.jsonl")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_example_trace_is_valid() -> None:
    workload = sim.load_trace(EXAMPLE_TRACE)
    assert set(workload.models) == {"qwen-small", "llama-large"}


# ---- command line ----------------------------------------------------------------------------


def test_cli_prints_a_table_per_profile(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["simulate", CONFIG, "--profile", "alternating", "--profile", "three", "--duration", "60"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "== alternating: 2 models (qwen-small, llama-large)" in out
    assert "== three: 3 models (qwen-small, llama-large, a)" in out
    assert "synthetic: a" in out
    assert "wait p99" in out
    assert len([line for line in out.splitlines() if line.startswith("fifo ")]) == 2


def test_cli_json_compares_policies_on_a_trace(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    status = main(
        [
            "simulate",
            CONFIG,
            "--trace",
            EXAMPLE_TRACE,
            "--policy",
            "fifo",
            "--policy",
            "tests.unit.test_simulate:Patient",
            "--hook-secs",
            "3,1",
            "--hook-secs",
            "llama-large=5,2",
            "--json",
        ]
    )
    assert status == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["workload"] == "small.jsonl" and report["kind"] == "trace"
    assert report["hooks"]["qwen-small"]["wake_secs"] == 3.0
    assert report["hooks"]["llama-large"]["sleep_secs"] == 2.0
    assert report["settings"]["request_timeout"] == 60.0
    policies = [r["policy"] for r in report["results"]]
    assert policies == ["fifo", "tests.unit.test_simulate:Patient"]
    assert all(r["requests"] == 20 and r["cancelled"] >= 1 for r in report["results"])


def test_cli_duration_cuts_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["simulate", CONFIG, "--trace", EXAMPLE_TRACE, "--duration", "5", "--json"])
    assert status == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["requests"] == 8


def test_cli_bad_trace_line_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"at": 0, "model": "qwen-small", "service": 1}\n{"at": "soon"}\n')
    assert main(["simulate", CONFIG, "--trace", str(trace)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith(f"llmux: simulate: {trace}:2: at: Expected `float`, got `str`")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "/nonexistent.jsonl"], "cannot read trace '/nonexistent.jsonl'"),
        (["--policy", "nope"], "unknown policy type 'nope'"),
        (["--hook-secs", "gpt=1,1", "--profile", "single"], "--hook-secs: no model named 'gpt'"),
    ],
)
def test_cli_refuses_bad_options_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", CONFIG, *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_trace_model_not_in_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"at": 0, "model": "gpt", "service": 1}\n')
    assert main(["simulate", CONFIG, "--trace", str(trace)]) == 2
    assert "request 1: model 'gpt' is not in the config" in capsys.readouterr().err


def test_cli_rejects_malformed_hook_secs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", CONFIG, "--hook-secs", "2"])
    assert info.value.code == 2
    assert "expected WAKE,SLEEP or MODEL=WAKE,SLEEP" in capsys.readouterr().err


def test_cli_reports_a_failing_policy_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["simulate", CONFIG, "--profile", "single", "--policy", "tests.unit.test_simulate:Broken"]
    )
    assert status == 1
    assert "policy 'tests.unit.test_simulate:Broken' raised" in capsys.readouterr().err


def test_the_installed_command_runs_end_to_end() -> None:
    script = Path(sys.executable).parent / "llmux"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llmux"]
    proc = subprocess.run(
        [*command, "simulate", "examples/config.json", "--profile", "alternating"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "== alternating: 2 models (qwen-small, llama-large)" in proc.stdout
    assert proc.stdout.count("\nfifo ") == 1


def test_workload_models_are_in_order_of_first_appearance() -> None:
    workload = Workload("w", (TraceRequest(0, "b", 1), TraceRequest(1, "a", 1)))
    assert workload.models == ["b", "a"]
    assert workload.span == 1
