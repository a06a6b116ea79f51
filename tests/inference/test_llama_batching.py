"""Continuous batching in the llama.cpp backend, with the real default model.

Several answers share one llama.cpp context; each keeps its own sampling options, stop
strings and limits, and ends or leaves without disturbing the others.
"""

from __future__ import annotations

import threading
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

SETTINGS = {"chat_format": "gemma", "n_ctx": 512, "batch_size": 4}
QUESTION = ChatMessage("user", "Tell me about horses crossing a river.")


def request(path: Path, text: ChatMessage = QUESTION, **options) -> GenerationRequest:
    return GenerationRequest(
        model=ModelSpec("llama_cpp", str(path), SETTINGS),
        messages=(text,),
        options=SamplingOptions(**{"max_tokens": 32, "temperature": 0.8, "seed": 7, **options}),
    )


def answer(stream) -> tuple[str, Finished]:
    items = list(stream)
    assert isinstance(items[-1], Finished)
    return "".join(i.text for i in items if isinstance(i, TextChunk)), items[-1]


def together(*requests: GenerationRequest) -> list[tuple[str, Finished]]:
    """Run the requests at the same time, one thread each, as a worker does."""
    backend = get_backend("llama_cpp")
    results: list[tuple[str, Finished] | None] = [None] * len(requests)
    started = threading.Barrier(len(requests))

    def run(i: int) -> None:
        started.wait()
        results[i] = answer(backend.stream(requests[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_one_answer_alone_matches_raw_llama_cpp_python(gemma_path):
    """The batched engine builds the prompt, sampler chain and text the way
    llama-cpp-python's create_chat_completion does: the same seed gives the same text."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gemma_path), n_ctx=512, n_threads=2, chat_format="gemma", verbose=False
    )
    raw = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": QUESTION.content}],
            stream=True,
            temperature=0.8,
            top_p=0.95,
            top_k=40,
            repeat_penalty=1.1,
            max_tokens=32,
            seed=7,
        )
    )
    del llm
    text, finished = answer(get_backend("llama_cpp").stream(request(gemma_path)))
    assert text == raw and text
    assert finished.usage.completion_tokens <= 32


def test_answers_in_one_batch_keep_their_own_limits_and_stop_strings(gemma_path):
    """Each answer of a batch ends by its own rules: token limits and stop strings are
    never shared. (Texts are not compared with a lone run: a batch computes logits in other
    float orders, so sampled words may differ.)"""
    results = together(
        request(gemma_path, max_tokens=48, stop=("e",)),
        request(gemma_path, max_tokens=48, temperature=1.5, top_k=5, seed=99),
        request(gemma_path, max_tokens=5, seed=1),
        request(gemma_path, max_tokens=9, seed=2, temperature=0.0),
    )
    (stopped, stopped_end), (free, free_end), (five, five_end), (nine, nine_end) = results
    assert "e" not in stopped and stopped_end.reason == "stop"
    assert "e" in free + five + nine  # the stop string of the first is nobody else's
    for end, limit in ((five_end, 5), (nine_end, 9), (free_end, 48)):
        assert end.usage.completion_tokens == limit or end.reason == "stop"
        assert end.usage.completion_tokens <= limit


def test_closing_one_stream_frees_its_slot_for_the_next(gemma_path):
    """With every slot taken, a closed stream lets a waiting one in at once."""
    backend = get_backend("llama_cpp")
    long = [backend.stream(request(gemma_path, max_tokens=400, seed=i)) for i in range(4)]
    for stream in long:
        assert isinstance(next(stream), TextChunk)  # all four are generating
    engine = backend.load(str(gemma_path), SETTINGS).engine
    assert engine.busy == 4
    long[0].close()
    text, finished = answer(backend.stream(request(gemma_path, max_tokens=8)))
    assert finished.usage.completion_tokens == 8
    for stream in long[1:]:
        stream.close()


def test_a_long_prompt_is_read_in_chunks_while_another_answer_streams(gemma_path):
    """A long prompt joining does not freeze an answer that is streaming: read a chunk a
    step beside it, the streaming answer puts out all its tokens before the long prompt
    has been read (in one go, it would wait for the whole prompt first)."""
    from inference.llama_engine import BatchEngine, EngineConfig

    engine = BatchEngine(
        str(gemma_path),
        EngineConfig(
            n_ctx_per_seq=1536, n_seq_max=2, n_threads=2, n_gpu_layers=0, prefill_chunk=64
        ),
    )
    try:
        seen: list[tuple[float, str]] = []
        running = engine.generate(
            engine.tokenize("Write a long story about a herd of horses:", add_bos=True),
            SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=12),
            (),
        )
        assert isinstance(next(running), TextChunk)  # streaming now
        words = " ".join(f"the herd crossed river {n}." for n in range(300))
        long_prompt = engine.tokenize(words, add_bos=True)[:1200]  # 19 chunks of 64

        def join() -> None:
            options = SamplingOptions(temperature=0.0, max_tokens=2)
            for item in engine.generate(long_prompt, options, ()):
                seen.append((time.monotonic(), f"long prompt's first {type(item).__name__}"))
                return

        joining = threading.Thread(target=join)
        joining.start()
        finished = [item for item in running if isinstance(item, Finished)]
        seen.append((time.monotonic(), "streaming answer finished"))
        joining.join(timeout=120)
        assert finished and finished[0].usage.completion_tokens == 12
        assert [what for _, what in sorted(seen)] == [
            "streaming answer finished",
            "long prompt's first TextChunk",
        ]
    finally:
        engine.close()


def greedy(path: Path, *messages: ChatMessage, settings=SETTINGS) -> GenerationRequest:
    return GenerationRequest(
        model=ModelSpec("llama_cpp", str(path), settings),
        messages=messages,
        options=SamplingOptions(max_tokens=16, temperature=0.0, repeat_penalty=1.0),
    )


def test_a_follow_up_reuses_the_cells_of_its_conversation(gemma_path):
    """The prompt cache: a follow-up (the question, its answer, a new question) evaluates
    only what its conversation has not put in the KV cache yet, even with another
    conversation in between. It writes what llama-cpp-python writes when it reuses its own
    cache the same way (a token decoded alone and the same token in a prompt batch differ
    in the last bits, so the cells are not those of a fresh context)."""
    from llama_cpp import Llama

    backend = get_backend("llama_cpp")
    own = {**SETTINGS, "batch_size": 3}  # a context of its own: no earlier test's cells
    first, first_end = answer(backend.stream(greedy(gemma_path, QUESTION, settings=own)))
    engine = backend.load(str(gemma_path), own).engine
    assert engine.reused_tokens == 0
    other = ChatMessage("user", "Name three kinds of cheese.")
    answer(backend.stream(greedy(gemma_path, other, settings=own)))  # another free id
    follow_up = (QUESTION, ChatMessage("assistant", first), ChatMessage("user", "And then?"))
    cached_text, end = answer(backend.stream(greedy(gemma_path, *follow_up, settings=own)))
    assert engine.reused_tokens >= first_end.usage.prompt_tokens
    assert end.usage.prompt_tokens > first_end.usage.prompt_tokens  # counted whole

    llm = Llama(
        model_path=str(gemma_path), n_ctx=512, n_threads=2, chat_format="gemma", verbose=False
    )

    def raw(*messages: ChatMessage) -> str:
        out = llm.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            max_tokens=16,
            temperature=0.0,
            repeat_penalty=1.0,
        )
        return out["choices"][0]["message"]["content"] or ""

    assert raw(QUESTION) == first
    assert raw(*follow_up) == cached_text and cached_text


def test_a_step_sampled_on_two_threads_gives_each_sequence_its_own_token(gemma_path):
    """The engine samples a step's sequences on several threads: each still gets the token
    its own chain draws from its own logits, in order, as on one thread."""
    from inference.llama_engine import BatchEngine, EngineConfig, _Samplers

    engine = BatchEngine(
        str(gemma_path), EngineConfig(n_ctx_per_seq=128, n_seq_max=4, n_threads=2, n_gpu_layers=0)
    )
    try:
        llama_cpp, batch = engine._llama_cpp, engine._batch
        outputs, n = [], 0
        # The engine's loop is idle (no sequence joined): this thread decodes one step of
        # four prompts itself.
        for seq_id, topic in enumerate(("horses", "rivers", "cheese", "storms")):
            prompt = engine.tokenize(f"A short story about {topic}:", add_bos=True)
            for pos, token in enumerate(prompt):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = pos == len(prompt) - 1
                if batch.logits[n]:
                    outputs.append(n)
                n += 1
        batch.n_tokens = n
        assert llama_cpp.llama_decode(engine.context.ctx, batch) == 0

        def draws(threads: int) -> list[list[int]]:
            chains = [
                engine._sampler(SamplingOptions(temperature=1.0, top_k=200, seed=seed))
                for seed in (1, 2, 3, 4)
            ]
            samplers = _Samplers(llama_cpp, engine.context.ctx, threads)
            try:
                jobs = [(c.sampler, index) for c, index in zip(chains, outputs, strict=True)]
                return [samplers.tokens(jobs) for _ in range(5)]  # each chain draws on
            finally:
                samplers.close()
                for chain in chains:
                    chain.close()

        one_thread = draws(1)
        assert draws(2) == one_thread
        assert len({tuple(step) for step in one_thread}) > 1  # the draws are not all alike
    finally:
        engine.close()


def test_the_shortlist_draws_what_the_whole_vocabulary_would(gemma_path):
    """With a repeat penalty the engine samples from a shortlist of the highest logits
    (llama_engine.shortlist_size): over a run where the penalty changes every choice, it
    draws exactly the tokens llama-cpp-python's chain draws from the whole vocabulary."""
    from inference.llama_engine import BatchEngine, EngineConfig, shortlist_size

    engine = BatchEngine(
        str(gemma_path), EngineConfig(n_ctx_per_seq=128, n_seq_max=1, n_threads=2, n_gpu_layers=0)
    )
    try:
        llama_cpp, batch = engine._llama_cpp, engine._batch
        prompt = engine.tokenize("A short story about horses crossing a river:", add_bos=True)
        for pos, token in enumerate(prompt):
            batch.token[pos], batch.pos[pos], batch.n_seq_id[pos] = token, pos, 1
            batch.seq_id[pos][0] = 0
            batch.logits[pos] = pos == len(prompt) - 1
        batch.n_tokens = len(prompt)
        assert llama_cpp.llama_decode(engine.context.ctx, batch) == 0

        def draws(options: SamplingOptions, shortlist: bool) -> list[int]:
            # The same logits drawn from again and again: each drawn token joins the
            # penalty's window, so later draws must go past every token drawn before.
            chain = engine._sampler(options, shortlist=shortlist)
            try:
                return [
                    llama_cpp.llama_sampler_sample(chain.sampler, engine.context.ctx, -1)
                    for _ in range(80)
                ]
            finally:
                chain.close()

        for options in (
            SamplingOptions(temperature=0.0, repeat_penalty=2.0),
            SamplingOptions(temperature=1.0, top_k=40, repeat_penalty=2.0, seed=3),
            SamplingOptions(temperature=0.7, top_k=5, repeat_penalty=1.3, seed=11),
        ):
            assert shortlist_size(options) > 0
            whole = draws(options, shortlist=False)
            assert len(set(whole)) > 20  # the penalty moved the choices along
            assert draws(options, shortlist=True) == whole
    finally:
        engine.close()


def _cells(engine, seq_id: int) -> tuple[int, int]:
    memory = engine.context.memory
    llama_cpp = engine._llama_cpp
    return (
        llama_cpp.llama_memory_seq_pos_min(memory, seq_id),
        llama_cpp.llama_memory_seq_pos_max(memory, seq_id),
    )


def test_a_follow_up_moves_its_cells_beside_the_running_answers(gemma_path):
    """llama.cpp decodes only consecutive sequence ids together: a follow-up whose cached
    cells lie apart from the running answers moves them to a free id beside those, so a
    step stays one pass over the weights, and it still reuses them."""
    from inference.llama_engine import BatchEngine, EngineConfig

    engine = BatchEngine(
        str(gemma_path), EngineConfig(n_ctx_per_seq=256, n_seq_max=4, n_threads=2, n_gpu_layers=0)
    )
    options = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=8)
    try:
        first_prompt = engine.tokenize("A short story about horses:", add_bos=True)
        first = list(engine.generate(first_prompt, options, ()))  # id 0, cached after
        list(engine.generate(engine.tokenize("Cheese:", add_bos=True), options, ()))  # id 1
        held = _cells(engine, 0)
        assert held[0] == 0 and held[1] >= len(first_prompt)

        running = engine.generate(
            engine.tokenize("A long story about rivers:", add_bos=True),
            options.model_copy(update={"max_tokens": 200}),
            (),
        )
        assert isinstance(next(running), TextChunk)  # id 2: the least recently used
        text = "".join(i.text for i in first if isinstance(i, TextChunk))
        follow_up = first_prompt + engine.tokenize(text + " Then the herd", special=False)
        before = engine.reused_tokens
        joined = engine.generate(follow_up, options, ())
        assert isinstance(next(joined), TextChunk)
        ids = sorted(s.seq_id for s in engine._active)
        assert len(ids) == 2 and ids[1] - ids[0] == 1, ids  # side by side
        assert engine.reused_tokens - before >= len(first_prompt)  # its cells came along
        assert _cells(engine, 0) == (-1, -1)  # and left their old id
        assert [i for i in joined if isinstance(i, Finished)]
        running.close()
    finally:
        engine.close()


def test_moved_cells_give_the_logits_they_gave_before(gemma_path):
    """The KV data itself moves, not only the bookkeeping: the next token decoded on the
    new id has exactly the logits it has on the old one."""
    from inference.llama_engine import BatchEngine, EngineConfig

    def next_logits(move: bool) -> list[float]:
        engine = BatchEngine(
            str(gemma_path),
            EngineConfig(n_ctx_per_seq=128, n_seq_max=3, n_threads=2, n_gpu_layers=0),
        )
        try:
            options = SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=6)
            prompt = engine.tokenize("A short story about horses:", add_bos=True)
            list(engine.generate(prompt, options, ()))  # id 0
            seq_id = 0
            with engine._lock:  # the loop frees the id just after sending the end
                assert engine._lock.wait_for(lambda: not engine._active, timeout=30)
                if move:
                    engine._free_ids.remove(0)
                    seq_id = engine._move_cells(0, 2)
            assert seq_id == (2 if move else 0)
            llama_cpp, batch = engine._llama_cpp, engine._batch
            position = _cells(engine, seq_id)[1] + 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = prompt[1], position, 1
            batch.seq_id[0][0] = seq_id
            batch.logits[0] = 1
            batch.n_tokens = 1
            assert llama_cpp.llama_decode(engine.context.ctx, batch) == 0
            logits = llama_cpp.llama_get_logits_ith(engine.context.ctx, 0)
            return [logits[i] for i in range(engine.n_vocab)]
        finally:
            engine.close()

    assert next_logits(move=True) == next_logits(move=False)


def test_a_reader_resting_between_texts_gets_the_end_at_once(gemma_path):
    """Readers rest between takes so they do not wake for every token; the end of an
    answer cuts the rest short, so its last words and Finished are not held back."""
    from inference.llama_engine import BatchEngine, EngineConfig

    engine = BatchEngine(
        str(gemma_path),
        EngineConfig(
            n_ctx_per_seq=128, n_seq_max=1, n_threads=2, n_gpu_layers=0, reader_interval_s=30
        ),
    )
    try:
        started = time.monotonic()
        items = list(
            engine.generate(
                engine.tokenize("A short story about horses:", add_bos=True),
                SamplingOptions(temperature=0.0, repeat_penalty=1.0, max_tokens=6),
                (),
            )
        )
        assert isinstance(items[-1], Finished)
        assert time.monotonic() - started < 20  # one rest would be 30 s
    finally:
        engine.close()


def test_an_answer_that_cannot_join_fails_alone(gemma_path, monkeypatch):
    """An error while an answer joins the batch (its sampler chain, its sequence id) fails
    that answer; the decode loop goes on with the others and takes later ones."""
    backend = get_backend("llama_cpp")
    engine = backend.load(str(gemma_path), SETTINGS).engine
    running = backend.stream(request(gemma_path, max_tokens=40, seed=1))
    assert isinstance(next(running), TextChunk)
    make_sampler = engine._sampler

    def failing_for_seed_13(options, *args, **kwargs):
        if options.seed == 13:
            raise RuntimeError("no sampler for you")
        return make_sampler(options, *args, **kwargs)

    monkeypatch.setattr(engine, "_sampler", failing_for_seed_13)
    for _ in range(SETTINGS["batch_size"] + 1):  # each failure gives its sequence id back
        with pytest.raises(BackendError, match="could not start this answer"):
            answer(backend.stream(request(gemma_path, seed=13)))
    take_id = engine._take_id

    def failing_after_taking_an_id(prompt):
        take_id(prompt)
        raise RuntimeError("no cells for you")

    monkeypatch.setattr(engine, "_take_id", failing_after_taking_an_id)
    for _ in range(SETTINGS["batch_size"] + 1):  # an id taken halfway comes back too
        with pytest.raises(BackendError, match="could not start this answer"):
            answer(backend.stream(request(gemma_path, seed=14)))
    monkeypatch.setattr(engine, "_take_id", take_id)
    rest, finished = answer(running)
    assert finished.reason == "length"
    assert finished.usage.completion_tokens == 40
    text, finished = answer(backend.stream(request(gemma_path, max_tokens=8, seed=2)))
    assert finished.usage.completion_tokens == 8
    deadline = time.monotonic() + 5  # an ending is read before its id is freed
    while engine.busy:
        assert time.monotonic() < deadline, "a sequence id was never freed"
        time.sleep(0.01)
