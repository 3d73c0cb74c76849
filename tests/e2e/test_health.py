"""The `alive` hook: adopting a model found awake at start-up, and taking a dead one out of
service while it is active."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import running
from tests.waiting import wait_until


async def test_a_model_awake_at_start_up_is_adopted_not_woken(tmp_path: Path) -> None:
    async with running(tmp_path, awake_at_start=("b",)) as rig:
        reply = await rig.chat("b")
        assert reply.status_code == 200
        assert rig.hook_runs() == [], "b was served without running its wake hook"
        assert rig.app.scheduler.core.active == "b"
        assert (await rig.chat("a")).status_code == 200
        assert rig.hook_runs() == ["b:sleep", "a:wake"]


async def test_of_several_awake_models_one_is_adopted_and_the_rest_put_to_sleep(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, ("a", "b", "c"), awake_at_start=("b", "c")) as rig:
        # Config order decides: b is kept, c was put to sleep before llmux served anything.
        assert rig.hook_runs() == ["c:sleep"]
        assert rig.app.scheduler.core.active == "b"
        assert (await rig.chat("b")).status_code == 200
        assert rig.hook_runs() == ["c:sleep"]


async def test_a_model_that_dies_while_active_is_woken_again_by_the_next_request(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, health_interval_secs=0.2) as rig:
        assert (await rig.chat("a")).status_code == 200
        # The model's server crashes (the backend now refuses requests).
        (tmp_path / "a.awake").unlink()
        await rig.hooks_become(["a:wake", "a:sleep"])  # out of service, cleaned up
        assert await rig.metric("llmux_model_deaths_total", model="a") == 1
        reply = await rig.chat("a")
        assert reply.status_code == 200
        assert rig.hook_runs() == ["a:wake", "a:sleep", "a:wake"]
        # Healthy again: probes keep passing (three more, 0.2 s apart) and nothing else happens.
        probes = {"model": "a", "hook": "alive"}
        before = await rig.metric("llmux_hook_duration_seconds_count", **probes)

        async def three_more_probes() -> bool:
            return await rig.metric("llmux_hook_duration_seconds_count", **probes) >= before + 3

        await wait_until(three_more_probes, what="three more alive probes of a")
        assert await rig.metric("llmux_hook_failures_total", **probes) == 1
        assert rig.hook_runs() == ["a:wake", "a:sleep", "a:wake"]


async def test_a_backend_that_stops_listening_leaves_service_even_without_an_alive_hook(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, alive=False) as rig:
        assert (await rig.chat("a")).status_code == 200
        rig.kill_backend("a")  # crashed, or another process slept it: nothing tells llmux
        for _ in range(2):
            reply = await rig.chat("a")
            assert reply.status_code == 502
            assert "cannot connect" in reply.json()["error"]["message"]
        # Two requests in a row could not connect: out of service, cleaned up.
        await rig.hooks_become(["a:wake", "a:sleep"])
        assert await rig.metric("llmux_model_deaths_total", model="a") == 1
        await rig.restart_backend("a")
        assert (await rig.chat("a")).status_code == 200  # woken again
        assert rig.hook_runs() == ["a:wake", "a:sleep", "a:wake"]


async def test_with_an_alive_hook_one_unreachable_request_has_the_model_probed(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as rig:  # no health_interval_secs: never probed on a timer
        assert (await rig.chat("a")).status_code == 200
        rig.kill_backend("a")
        (tmp_path / "a.awake").unlink()  # its alive hook now fails
        assert (await rig.chat("a")).status_code == 502
        await rig.hooks_become(["a:wake", "a:sleep"])
        assert await rig.metric("llmux_model_deaths_total", model="a") == 1
        await rig.restart_backend("a")
        assert (await rig.chat("a")).status_code == 200
        assert rig.hook_runs() == ["a:wake", "a:sleep", "a:wake"]
