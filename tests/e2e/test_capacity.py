"""Several models awake within declared resources, over real sockets with real `sh` hooks:
two that fit serve at once, a third that does not fit evicts only what it must while the
survivor keeps answering, a persistent model is never evicted, and an impossible config is
one line at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from tests.e2e.conftest import Rig, running
from tests.waiting import wait_until

GPU = {"gpu0": 80.0}
# a and b fit together (70 of 80); c (50) fits beside a, not beside b.
NEEDS = {"a": {"gpu0": 30.0}, "b": {"gpu0": 40.0}, "c": {"gpu0": 50.0}}
MODELS = ("a", "b", "c")


async def _stream(rig: Rig, model: str, started: trio.Event, chunks: list[bytes]) -> None:
    request = {"model": model, "stream": True, "max_tokens": 20, "chunk_delay": 0.05}
    async with rig.client.stream("POST", "/v1/chat/completions", json=request) as reply:
        assert reply.status_code == 200
        async for chunk in reply.aiter_bytes():
            chunks.append(chunk)
            started.set()


async def test_two_models_that_fit_are_both_awake_and_stream_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, MODELS, resources=GPU, needs=NEEDS) as rig:
        assert (await rig.chat("a")).status_code == 200
        a_started, b_started = trio.Event(), trio.Event()
        a_chunks: list[bytes] = []
        b_chunks: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream, rig, "a", a_started, a_chunks)
            await a_started.wait()
            # b wakes beside a while a's stream is in flight: a is never drained for it.
            nursery.start_soon(_stream, rig, "b", b_started, b_chunks)
            await b_started.wait()
            assert rig.state("a") == rig.state("b") == "Active"
            assert await rig.metric("llmux_model_in_flight", model="a") == 1
            assert await rig.metric("llmux_model_in_flight", model="b") == 1
        for chunks in (a_chunks, b_chunks):
            assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
        assert rig.hook_runs() == ["a:wake", "b:wake"]
        status = (await rig.client.get("/llmux/status")).json()
        assert status["scheduler"]["awake"] == ["a", "b"]
        assert status["resources"] == [{"name": "gpu0", "used": 70.0, "capacity": 80.0}]
        assert status["models"]["b"]["needs"] == {"gpu0": 40.0}
        assert await rig.metric("llmux_resource_used", resource="gpu0") == 70.0
        assert await rig.metric("llmux_resource_capacity", resource="gpu0") == 80.0


async def test_a_model_that_does_not_fit_evicts_only_what_it_must_and_the_survivor_answers(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, MODELS, resources=GPU, needs=NEEDS) as rig:
        assert (await rig.chat("a")).status_code == 200
        assert (await rig.chat("b")).status_code == 200
        rig.hold_wake("c")
        answers: list[int] = []

        async def ask_c() -> None:
            answers.append((await rig.chat("c")).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_c)
            await rig.hooks_become(["a:wake", "b:wake", "b:sleep", "c:wake"])
            # c's wake is held: the eviction is under way. a keeps answering meanwhile.
            for _ in range(3):
                reply = await rig.chat("a")
                assert reply.status_code == 200
                assert rig.state("c") == "Waking", "a's request waited for the eviction"
            rig.hold_wake("c", holding=False)
        assert answers == [200]
        assert rig.state("a") == "Active" and rig.state("b") == "Sleeping"
        assert await rig.metric("llmux_resource_used", resource="gpu0") == 80.0


async def test_a_persistent_model_is_never_evicted(tmp_path: Path) -> None:
    needs = {"a": {"gpu0": 20.0}, "b": {"gpu0": 40.0}, "c": {"gpu0": 40.0}}
    async with running(tmp_path, MODELS, resources=GPU, needs=needs, persistent=("a",)) as rig:
        # a was used first and is idle longest: the cheapest victim, were it not persistent
        # (evicting a alone would make room for c beside b).
        for model in ("a", "b", "c", "b", "c"):
            assert (await rig.chat(model)).status_code == 200
        assert "a:sleep" not in rig.hook_runs()
        assert rig.hook_runs() == [
            "a:wake",
            "b:wake",
            "b:sleep",
            "c:wake",
            "c:sleep",
            "b:wake",
            "b:sleep",
            "c:wake",
        ]
        await wait_until(lambda: rig.state("c") == "Active", what="c active")


def test_a_model_that_can_never_fit_is_one_line_at_start_up(tmp_path: Path) -> None:
    config = {
        "resources": {"gpu0": 80},
        "models": {
            "embed": {
                "port": 9301,
                "wake": "true",
                "sleep": "true",
                "needs": {"gpu0": 16},
                "persistent": True,
            },
            "big": {"port": 9302, "wake": "true", "sleep": "true", "needs": {"gpu0": 70}},
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = subprocess.run(
        [sys.executable, "-m", "llmux", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        f"llmux: config error: {path}: models.big.needs: it can never wake: needs 70 of "
        "'gpu0', but the persistent embed hold 16 of its 80"
    ]


async def test_two_gpus_wake_two_models_at_once(tmp_path: Path) -> None:
    gpus = {"gpu0": 80.0, "gpu1": 80.0}
    needs = {"a": {"gpu0": 70.0}, "b": {"gpu1": 70.0}}
    async with running(tmp_path, ("a", "b"), resources=gpus, needs=needs) as rig:
        rig.hold_wake("a")
        rig.hold_wake("b")
        answers: list[int] = []

        async def ask(model: str) -> None:
            answers.append((await rig.chat(model)).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "a")
            nursery.start_soon(ask, "b")
            # Both wake hooks are running at once: neither waited for the other.
            await wait_until(
                lambda: sorted(rig.hook_runs()) == ["a:wake", "b:wake"],
                what="both wakes started",
            )
            status = (await rig.client.get("/llmux/status")).json()
            assert sorted(s["to"] for s in status["scheduler"]["switches"]) == ["a", "b"]
            rig.hold_wake("a", holding=False)
            rig.hold_wake("b", holding=False)
        assert answers == [200, 200]


async def test_a_preload_list_wakes_every_listed_model_that_fits_at_start_up(
    tmp_path: Path,
) -> None:
    async with running(
        tmp_path, MODELS, resources=GPU, needs=NEEDS, preload=["a", "b"], persistent=("a",)
    ) as rig:
        await wait_until(
            lambda: rig.state("a") == rig.state("b") == "Active", what="a and b preloaded"
        )
        assert rig.hook_runs() == ["a:wake", "b:wake"]
        # c evicts b, never the persistent a.
        assert (await rig.chat("c")).status_code == 200
        assert rig.hook_runs() == ["a:wake", "b:wake", "b:sleep", "c:wake"]


async def test_models_found_awake_are_adopted_as_long_as_they_fit(tmp_path: Path) -> None:
    # a and c both answer their alive hook at start-up, and they fit together (80 of 80).
    async with running(
        tmp_path, MODELS, resources=GPU, needs=NEEDS, awake_at_start=("a", "c")
    ) as rig:
        assert rig.state("a") == rig.state("c") == "Active"
        assert rig.hook_runs() == []
        assert (await rig.chat("a")).status_code == 200
        assert (await rig.chat("c")).status_code == 200
        assert rig.hook_runs() == []
