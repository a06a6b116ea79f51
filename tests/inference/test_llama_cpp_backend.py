"""The llama.cpp backend against the real default model and small broken GGUF files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inference import (
    BackendError,
    ChatMessage,
    Finished,
    GenerationRequest,
    ModelSpec,
    SamplingOptions,
    TextChunk,
    get_backend,
)
from inference.llama_cpp import fit_context
from tests.gguf_files import write_tiny_llama


def request(path: Path | str, *messages: ChatMessage, **options) -> GenerationRequest:
    return GenerationRequest(
        model=ModelSpec("llama_cpp", str(path), {"chat_format": "gemma", "n_ctx": 512}),
        messages=messages or (ChatMessage("user", "Name three colours."),),
        options=SamplingOptions(**{"max_tokens": 24, "temperature": 0.0, "seed": 3, **options}),
    )


def test_streams_text_then_usage(gemma_path):
    items = list(get_backend("llama_cpp").stream(request(gemma_path)))
    chunks = [i for i in items if isinstance(i, TextChunk)]
    assert len(chunks) >= 2 and all(c.text for c in chunks)
    assert isinstance(items[-1], Finished)
    usage = items[-1].usage
    assert 0 < usage.completion_tokens <= 24
    assert 10 < usage.prompt_tokens < 40  # "<start_of_turn>user\n…<start_of_turn>model\n"


def test_same_seed_gives_the_same_answer_and_model_stays_loaded(gemma_path):
    backend = get_backend("llama_cpp")
    first = "".join(i.text for i in backend.stream(request(gemma_path)) if isinstance(i, TextChunk))
    loaded = backend.load(str(gemma_path), {"chat_format": "gemma", "n_ctx": 512}).engine
    second = "".join(
        i.text for i in backend.stream(request(gemma_path)) if isinstance(i, TextChunk)
    )
    assert first == second
    assert backend.load(str(gemma_path), {"chat_format": "gemma", "n_ctx": 512}).engine is loaded


def test_closing_the_stream_stops_generation(gemma_path):
    stream = get_backend("llama_cpp").stream(request(gemma_path, max_tokens=400))
    assert isinstance(next(stream), TextChunk)
    stream.close()
    # The backend is free again at once: a new stream runs to its end.
    items = list(get_backend("llama_cpp").stream(request(gemma_path)))
    assert isinstance(items[-1], Finished)


def test_missing_file_is_a_clear_error(tmp_path):
    started = time.monotonic()
    with pytest.raises(BackendError, match="Model file not found"):
        list(get_backend("llama_cpp").stream(request(tmp_path / "nope.gguf")))
    assert time.monotonic() - started < 5


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOTAGGUF" + bytes(1024))
    with pytest.raises(BackendError, match="Could not load junk.gguf"):
        list(get_backend("llama_cpp").stream(request(junk)))


def test_gguf_without_template_or_configured_format_is_refused(tmp_path):
    """A random-weight GGUF written with the `gguf` package loads, but cannot be chatted
    with: it has no chat template and no chat format was configured."""
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    spec = ModelSpec("llama_cpp", str(path), {"n_ctx": 64})
    with pytest.raises(BackendError, match="has no chat template; set a chat format"):
        list(
            get_backend("llama_cpp").stream(GenerationRequest(spec, (ChatMessage("user", "abc"),)))
        )


def test_long_history_is_trimmed_to_the_context_oldest_first(gemma_path):
    backend = get_backend("llama_cpp")
    backend.stream(request(gemma_path))  # generator: nothing runs yet
    engine = backend.load(str(gemma_path), {"chat_format": "gemma", "n_ctx": 512}).engine
    system = ChatMessage("system", "Be brief.")
    turns = []
    for i in range(12):
        turns += [
            ChatMessage("user", f"question {i} " + "word " * 40),
            ChatMessage("assistant", f"answer {i} " + "word " * 40),
        ]
    last = ChatMessage("user", "final question")
    kept = fit_context(engine, (system, *turns, last), max_tokens=64)
    assert kept[0] == system and kept[-1] == last
    assert kept[1].role == "user" and len(kept) < len(turns) + 2
    assert kept[1:-1] == tuple(turns[len(turns) - (len(kept) - 2) :])

    with pytest.raises(BackendError, match="Shorten the message"):
        fit_context(engine, (ChatMessage("user", "word " * 2000),), max_tokens=64)


def test_gemma_gets_the_system_prompt_in_its_first_user_turn():
    """llama-cpp-python's "gemma" format drops system messages; Corral folds them in."""
    from llama_cpp.llama_chat_format import format_gemma

    from inference.base import ChatMessage
    from inference.llama_cpp import fold_system_prompt

    messages = (
        ChatMessage("system", "Answer like a pirate."),
        ChatMessage("user", "Hello"),
        ChatMessage("assistant", "Ahoy"),
        ChatMessage("user", "Bye"),
    )
    folded = fold_system_prompt(messages)
    prompt = format_gemma(messages=[{"role": m.role, "content": m.content} for m in folded]).prompt
    assert "Answer like a pirate.\n\nHello" in prompt
    assert [m.role for m in folded] == ["user", "assistant", "user"]
    assert fold_system_prompt(messages[1:]) == messages[1:]


def test_an_unknown_chat_format_is_a_clear_error(gemma_path):
    spec = ModelSpec("llama_cpp", str(gemma_path), {"chat_format": "no-such-format", "n_ctx": 512})
    with pytest.raises(BackendError, match="Unknown chat format 'no-such-format'"):
        list(get_backend("llama_cpp").stream(GenerationRequest(spec, (ChatMessage("user", "hi"),))))


def _tiny(tmp_path: Path, name: str) -> str:
    """A tiny random Llama with a real byte-level tokenizer and a chat template."""
    from tests.hf_models import tiny_llama_gguf

    return str(tiny_llama_gguf(tmp_path, name))


def test_models_stay_loaded_until_the_least_recently_used_one_must_go(tmp_path):
    from inference.llama_cpp import LlamaCppBackend

    a, b, c = (_tiny(tmp_path, f"{n}.gguf") for n in "abc")
    settings = {"n_ctx": 64, "batch_size": 1}
    backend = LlamaCppBackend(max_loaded=2)
    first = backend.load(a, settings).engine
    backend.load(b, settings)
    assert backend.load(a, settings).engine is first  # warm: not loaded again
    assert backend.loaded() == [b, a]  # least recently used first
    backend.load(c, settings)
    assert backend.loaded() == [a, c]  # b had been used least recently


def test_a_model_that_is_answering_is_not_given_up(tmp_path, gemma_path):
    import threading

    from inference.llama_cpp import LlamaCppBackend

    other = _tiny(tmp_path, "other.gguf")
    backend = LlamaCppBackend(max_loaded=1)
    busy = backend.stream(request(gemma_path, max_tokens=400))
    assert isinstance(next(busy), TextChunk)  # Gemma is answering (seconds of work left)
    stop = threading.Event()
    stop.set()
    with pytest.raises(BackendError, match="waiting for another model"):
        backend.load(other, {"n_ctx": 64, "batch_size": 1}, cancel=stop)
    assert backend.loaded() == [str(gemma_path)]
    busy.close()
    backend.load(other, {"n_ctx": 64, "batch_size": 1})
    assert backend.loaded() == [other]


def test_a_model_handed_to_a_stream_is_kept_until_the_stream_lets_go(tmp_path):
    """Between load and the first token (prompt fitting, tokenizing) the engine is idle:
    the lease keeps another thread's load from giving it up under the stream."""
    import threading

    from inference.llama_cpp import LlamaCppBackend

    a, b = _tiny(tmp_path, "a.gguf"), _tiny(tmp_path, "b.gguf")
    settings = {"n_ctx": 64, "batch_size": 1}
    backend = LlamaCppBackend(max_loaded=1)
    held = backend.load(a, settings, lease=True)
    assert held.engine.busy == 0  # idle, yet in use
    stop = threading.Event()
    stop.set()
    with pytest.raises(BackendError, match="waiting for another model"):
        backend.load(b, settings, cancel=stop)
    backend.release(held)
    backend.load(b, settings)
    assert backend.loaded() == [b]


def test_answers_of_a_loaded_model_go_on_while_another_model_loads(tmp_path):
    """Loading a model takes seconds (a title model, a second model on the same worker):
    meanwhile answers of the model already loaded start and end, and a second caller of
    the same load waits for it instead of loading the file twice."""
    import threading

    from inference.llama_cpp import LlamaCppBackend

    a, b = _tiny(tmp_path, "a.gguf"), _tiny(tmp_path, "b.gguf")
    settings = {"n_ctx": 64, "batch_size": 1}
    gate = threading.Event()
    opened: list[str] = []

    class SlowToLoad(LlamaCppBackend):  # the file of b takes until the gate opens
        def _open(self, file, config):
            opened.append(file.name)
            if file.name == "b.gguf":
                gate.wait(timeout=30)
            return super()._open(file, config)

    backend = SlowToLoad(max_loaded=2)
    backend.load(a, settings)
    loads = [threading.Thread(target=backend.load, args=(b, settings)) for _ in range(2)]
    for load in loads:
        load.start()
    try:
        deadline = time.monotonic() + 5
        while "b.gguf" not in opened:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done: list[Finished] = []
        hello = GenerationRequest(
            ModelSpec("llama_cpp", a, settings),
            (ChatMessage("user", "hi"),),
            SamplingOptions(max_tokens=4),
        )
        answer = threading.Thread(
            target=lambda: done.extend(
                item for item in backend.stream(hello) if isinstance(item, Finished)
            )
        )
        answer.start()
        answer.join(timeout=10)
        assert done, "an answer of the loaded model waited for another model's load"
    finally:
        gate.set()
        for load in loads:
            load.join(timeout=30)
    assert opened.count("b.gguf") == 1
    assert sorted(backend.loaded()) == sorted([a, b])
