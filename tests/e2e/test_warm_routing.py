"""Warm routing with two real Celery workers of one pool: an answer goes to the idle
worker that already has its model loaded, so neither loads a model again; a model loaded
nowhere goes to the worker with nothing loaded, not to one that would give its model up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import _stop, start_worker
from tests.e2e.conftest import FAST_REAPER, POOL
from tests.hf_models import tiny_llama_gguf
from webui.chat import fleet, services
from webui.chat.models import LanguageModel, Message
from webui.chat.warm_routing import node_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _tiny_model(tmp_path: Path, name: str, seed: int) -> LanguageModel:
    path = tiny_llama_gguf(tmp_path, f"{name}.gguf", seed=seed)
    return LanguageModel.objects.create(
        name=name,
        backend="llama_cpp",
        target=str(path),
        pool=POOL,
        settings={"n_ctx": 128, "batch_size": 2},
        parameters={"max_tokens": 8, "temperature": 0.0},
    )


def _answer(user, model: LanguageModel) -> Message:
    _, _, answer = services.send_message(
        user=user, conversation_id=None, text="hello", model_id=model.pk
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer.refresh_from_db()
        if answer.status not in (Message.Status.QUEUED, Message.Status.RUNNING):
            assert answer.status == Message.Status.DONE, answer.error
            return answer
        time.sleep(0.1)
    raise AssertionError(f"answer {answer.pk} still {answer.status}")


def _settled(nodes: set[str], loaded: dict[str, list[str]] | None = None) -> dict[str, list]:
    """Wait until every worker of ``nodes`` reported itself idle (and, if given, with those
    models loaded); return what each has loaded."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reports = {
            node_of(e["report"]["worker"]): e["report"]
            for e in fleet.fleet()
            if not e["lost"] and POOL in e["report"]["pools"]
        }
        if set(reports) >= nodes and all(reports[n]["answers"] == 0 for n in nodes):
            state = {n: reports[n]["models"] for n in nodes}
            if loaded is None or state == loaded:
                return state
        time.sleep(0.2)
    raise AssertionError(f"the fleet did not settle: {fleet.fleet()}")


def test_answers_go_to_the_worker_that_has_their_model_loaded(stack_env, tmp_path, alice, bob):
    first_model = _tiny_model(tmp_path, "tiny-one", seed=1)
    second_model = _tiny_model(tmp_path, "tiny-two", seed=2)
    # Titles off: an idle worker writing a title loads that conversation's model wherever
    # it is loaded already (titles are not warm-routed), which is not what this checks.
    env = {**stack_env, **FAST_REAPER, "CORRAL_MAX_LOADED_MODELS": "1", "CORRAL_AUTO_TITLE": "0"}
    workers = []
    try:
        workers.append(start_worker(env, tmp_path / "one.log", queues=POOL, label="warm-one"))
        one = node_of(_answer(alice, first_model).worker)
        workers.append(start_worker(env, tmp_path / "two.log", queues=POOL, label="warm-two"))
        two = next(node_of(e["report"]["worker"]) for e in _wait_for_second(one))
        _settled({one, two}, {one: [first_model.target], two: []})

        # Loaded nowhere: the worker with nothing loaded takes it; the first keeps its model.
        assert node_of(_answer(bob, second_model).worker) == two
        placed = {one: [first_model.target], two: [second_model.target]}
        _settled({one, two}, placed)

        # From now on each answer goes where its model is: no model is loaded again.
        for user, model, expected in [
            (alice, first_model, one),
            (bob, second_model, two),
            (alice, second_model, two),
            (bob, first_model, one),
        ]:
            assert node_of(_answer(user, model).worker) == expected, model.name
            assert _settled({one, two}) == placed
    finally:
        for worker in workers:
            _stop(worker.process)


def _wait_for_second(first: str) -> list[dict]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        others = [
            e
            for e in fleet.fleet()
            if not e["lost"]
            and POOL in e["report"]["pools"]
            and node_of(e["report"]["worker"]) != first
        ]
        if others:
            return others
        time.sleep(0.2)
    raise AssertionError("the second worker never reported")
