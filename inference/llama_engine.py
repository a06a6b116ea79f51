"""Continuous batching: one loaded GGUF, one llama.cpp context, several answers at once.

A thread owns the context and runs the decode loop. Each step puts one token of every
generating sequence, plus a bounded chunk of a joining sequence's prompt, into one
``llama_decode``; then each sequence samples from its own logits with its own sampler
chain (the chain llama-cpp-python builds, so a sequence alone gives the text
``create_chat_completion`` gives for the same seed). A sequence joins at the next step and
its sequence id is free again the step after it ends or its reader goes away.

Prompt cache: a free sequence id keeps the KV cells of the last sequence that used it.
A joining sequence takes the free id whose cells share the longest prefix with its prompt
and evaluates only the rest, as llama.cpp's server does with its slots: a follow-up in a
conversation skips re-reading the history, and a repeated prompt costs one token.

Readers (the worker's answer threads) get text through a queue per sequence.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from inference.base import BackendError, Finished, SamplingOptions, StreamItem, TextChunk, Usage
from inference.llama_text import TextDecoder

logger = logging.getLogger("corral.llama_engine")

# As llama-cpp-python's defaults for create_chat_completion: the penalty window, min_p and
# typical_p are not Corral options, and must match for a batch of one to give the same text.
PENALTY_LAST_N = 64
MIN_P = 0.05
TYPICAL_P = 1.0


@dataclass
class EngineConfig:
    n_ctx_per_seq: int
    n_seq_max: int
    n_threads: int | None
    n_gpu_layers: int
    # Prompt tokens a joining answer may add to a step while others are generating: bounds
    # how long their next token waits for it.
    prefill_chunk: int = 128
    # The same for background work (titles), even alone: an answer arriving meanwhile
    # waits at most one such step.
    background_chunk: int = 32
    n_batch: int = 512
    # How long a reader rests after taking what was ready (its text is published at most
    # every 50 ms anyway).
    reader_interval_s: float = 0.03
    # Sequences are sampled on several threads only for vocabularies at least this big:
    # below it, one sample takes microseconds and handing work to threads costs more.
    parallel_sampling_min_vocab: int = 16384


@dataclass(eq=False)
class _Sequence:
    prompt: list[int]
    options: SamplingOptions
    decoder: TextDecoder
    out: queue.SimpleQueue[StreamItem | BaseException] = field(default_factory=queue.SimpleQueue)
    closed: threading.Event = field(default_factory=threading.Event)  # by its reader
    # Set with the last item, so a resting reader takes it at once (an answer's end is
    # not held up by the rest).
    ended: threading.Event = field(default_factory=threading.Event)
    seq_id: int = -1
    evaluated: int = 0  # prompt tokens in the KV cache
    decoded: list[int] = field(default_factory=list)  # completion tokens in the KV cache
    next_token: int | None = None  # sampled, not yet in the KV cache
    completion: int = 0
    sampler: Any = None
    background: bool = False

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.prompt)

    def end(self, last: Finished | BaseException) -> None:
        self.out.put(last)
        self.ended.set()


class _Samplers:
    """Samples the sequences of one step on several threads at once.

    Each sequence's chain runs in llama.cpp (``llama_sampler_sample``: it copies the whole
    vocabulary's logits into candidates, then applies the chain), which ctypes calls with
    the GIL released. With Gemma's 262k-token vocabulary and a repeat penalty that is
    about 2.5 ms a sequence on this project's CPUs: 8 sequences sampled one after another
    took a fifth of each step, while llama.cpp's other threads waited. Sequences have
    their own chains and read only the context's logits, so they can run side by side.
    """

    def __init__(self, llama_cpp: Any, ctx: Any, threads: int) -> None:
        self._llama_cpp = llama_cpp
        self._ctx = ctx
        self._threads = max(1, threads)
        self._helpers = (
            ThreadPoolExecutor(self._threads - 1, thread_name_prefix="corral-llama-sample")
            if self._threads > 1
            else None
        )

    def _sample(self, jobs: list[tuple[Any, int]]) -> list[int]:
        sample = self._llama_cpp.llama_sampler_sample
        return [sample(sampler, self._ctx, index) for sampler, index in jobs]

    def tokens(self, jobs: list[tuple[Any, int]]) -> list[int]:
        """The next token of each (sampler, output index), in order."""
        parts = min(self._threads, len(jobs))
        if parts < 2 or self._helpers is None:
            return self._sample(jobs)
        # The first read of the logits synchronizes the context (and reorders its
        # outputs): once, here, before several threads read them.
        self._llama_cpp.llama_get_logits_ith(self._ctx, jobs[0][1])
        size = -(-len(jobs) // parts)
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        others = [self._helpers.submit(self._sample, chunk) for chunk in chunks[1:]]
        tokens = self._sample(chunks[0])
        for other in others:
            tokens += other.result()
        return tokens

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)


class _BatchSlots:
    """Writes a step's tokens into a ``llama_batch`` through array views made once: a
    ctypes field read per token and field costs microseconds, paid for every sequence of
    every step."""

    def __init__(self, batch: Any, size: int) -> None:
        def view(pointer: Any, kind: Any) -> Any:
            return ctypes.cast(pointer, ctypes.POINTER(kind * size)).contents

        self._batch = batch
        self._tokens = view(batch.token, ctypes.c_int32)
        self._positions = view(batch.pos, ctypes.c_int32)
        self._logits = view(batch.logits, ctypes.c_int8)
        view(batch.n_seq_id, ctypes.c_int32)[:] = [1] * size  # one sequence per token
        # llama_batch_init gives every token its own one-id array.
        self._seq_ids = [batch.seq_id[i] for i in range(size)]

    def fill(
        self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[int]
    ) -> None:
        n = len(tokens)
        self._tokens[:n] = tokens
        self._positions[:n] = positions
        self._logits[:n] = logits
        slots = self._seq_ids
        for i, seq_id in enumerate(seq_ids):
            slots[i][0] = seq_id
        self._batch.n_tokens = n


def shortlist_size(options: SamplingOptions) -> int:
    """How many of the highest logits hold every token the sampler chain can draw, or 0
    (keep them all).

    The repeat penalty looks up each candidate in a hash map: over Gemma's 262,144 tokens
    that was three quarters of the ~1.6 ms a sampled token cost here, paid again for every
    sequence of every step. A penalty above 1 only lowers logits, and lowers at most
    ``PENALTY_LAST_N`` distinct tokens (its window). So among the ``n + PENALTY_LAST_N``
    highest logits at least ``n`` are untouched, and each of them still beats every token
    outside, penalized or not: the ``n`` best after the penalty lie inside (ties apart).
    ``n`` is 1 for greedy and ``top_k`` otherwise (top_k runs right after the penalty and
    the rest of the chain sees only its survivors), so the chain draws what it would draw
    from the whole vocabulary, with the same seed. Without a penalty there is nothing to
    save, with top_k off every token may be drawn, and a penalty below 1 raises logits.
    """
    if options.repeat_penalty <= 1.0:
        return 0
    if options.temperature == 0:
        return 1 + PENALTY_LAST_N
    if options.top_k <= 0:
        return 0
    return options.top_k + PENALTY_LAST_N


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _neighbours(seq_id: int, running: set[int]) -> int:
    """How many of the ids either side of ``seq_id`` are running."""
    return (seq_id - 1 in running) + (seq_id + 1 in running)


def _joined(items: list[StreamItem | BaseException]) -> list[StreamItem | BaseException]:
    """Consecutive text chunks as one."""
    out: list[StreamItem | BaseException] = []
    for item in items:
        if isinstance(item, TextChunk) and out and isinstance(out[-1], TextChunk):
            out[-1] = TextChunk(out[-1].text + item.text)
        else:
            out.append(item)
    return out


class BatchEngine:
    """A loaded model and its batched context. Thread-safe: any thread may call
    :meth:`generate`; one internal thread decodes."""

    def __init__(self, path: str, config: EngineConfig) -> None:
        import llama_cpp  # heavy: only where a model is really loaded
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp's own log: errors only, as Llama(verbose=False)

        self._llama_cpp = llama_cpp
        self._internals = _internals
        self.config = config
        self._lock = threading.Condition()
        self._joining: list[_Sequence] = []
        # Least recently used first; each keeps the tokens its KV cells hold (prompt cache).
        self._free_ids = list(range(config.n_seq_max))
        self._cached: dict[int, list[int]] = {}
        # Prompt tokens taken from the cache instead of evaluated (tests, benches).
        self.reused_tokens = 0
        self._active: list[_Sequence] = []
        self._closing = False
        self._piece = ctypes.create_string_buffer(256)
        # The context is created in the thread that decodes with it: llama.cpp's CPU
        # threads then work together (created in one thread and used from another, two
        # threads decoded no faster than one, measured here).
        loaded = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(path, loaded, failure), name="corral-llama-batch", daemon=True
        )
        self._thread.start()
        loaded.wait()
        if failure:
            raise failure[0]

    def _load(self, path: str) -> None:
        llama_cpp, config = self._llama_cpp, self.config
        model_params = llama_cpp.llama_model_default_params()
        # As Llama() passes it: -1 means every layer.
        model_params.n_gpu_layers = 0x7FFFFFFF if config.n_gpu_layers == -1 else config.n_gpu_layers
        self.model = self._internals.LlamaModel(path_model=path, params=model_params, verbose=False)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = config.n_ctx_per_seq * config.n_seq_max
        ctx_params.n_seq_max = config.n_seq_max
        ctx_params.n_batch = config.n_batch
        ctx_params.n_ubatch = config.n_batch
        threads = config.n_threads or ctx_params.n_threads
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama()
        try:
            self.context = self._internals.LlamaContext(
                model=self.model, params=ctx_params, verbose=False
            )
        except ValueError:
            self.model.close()
            raise
        self.n_ctx_per_seq = llama_cpp.llama_n_ctx_seq(self.context.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._n_swa = llama_cpp.llama_model_n_swa(self.model.model)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._slots = _BatchSlots(self._batch, config.n_batch)
        parallel = self.n_vocab >= config.parallel_sampling_min_vocab
        self._samplers = _Samplers(llama_cpp, self.context.ctx, threads if parallel else 1)
        # Each token's text and whether it ends generation, asked of llama.cpp once (two
        # ctypes calls per token otherwise).
        self._pieces: dict[int, tuple[bytes, bool]] = {}

    # -- the readers' side ------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)  # type: ignore[no-any-return]

    def token_text(self, token: int) -> str:
        text: str = self.model.token_get_text(token)
        return text

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._active) + len(self._joining)

    def generate(
        self,
        prompt: list[int],
        options: SamplingOptions,
        stop: tuple[str, ...],
        cancel: threading.Event | None = None,
        background: bool = False,
    ) -> Iterator[StreamItem]:
        """Text chunks of one sequence, then Finished. Closing the iterator (or setting
        ``cancel``) ends the sequence and frees its cells. A ``background`` sequence's
        prompt always goes in bounded chunks, so a step never takes long because of it."""
        if len(prompt) >= self.n_ctx_per_seq:
            raise BackendError(
                f"The prompt has {len(prompt)} tokens; this model's context holds "
                f"{self.n_ctx_per_seq}."
            )
        sequence = _Sequence(
            prompt=prompt, options=options, decoder=TextDecoder(stop), background=background
        )
        with self._lock:
            if self._closing:
                raise BackendError("The model is being unloaded.")
            self._joining.append(sequence)
            self._lock.notify_all()
        try:
            while True:
                try:
                    item = sequence.out.get(timeout=0.1)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                # Whatever else is ready goes out with it, and the reader then rests a
                # moment: a thread woken for every token competes for the cores with the
                # decode loop (llama.cpp's threads spin between steps).
                items = [item]
                while True:
                    try:
                        items.append(sequence.out.get_nowait())
                    except queue.Empty:
                        break
                for item in _joined(items):
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Finished):
                        return
                sequence.ended.wait(self.config.reader_interval_s)
        finally:
            sequence.closed.set()
            with self._lock:
                self._lock.notify_all()

    def close(self) -> None:
        """Stop the loop (the running sequences are told) and free the model."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout=30)

    # -- the decode loop -------------------------------------------------------------

    def _run(self, path: str, loaded: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._load(path)
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            loaded.set()
        try:
            self._loop()
        finally:
            self._samplers.close()
            self._llama_cpp.llama_batch_free(self._batch)
            self.context.close()
            self.model.close()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not self._active and not self._joining:
                    self._lock.wait()
                if self._closing:
                    for sequence in self._active + self._joining:
                        sequence.end(BackendError("The model was unloaded."))
                    return
                self._admit()
            try:
                self._drop_closed()
                if not self._active:
                    continue
                self._step()
            except Exception as exc:  # a failed decode fails the answers it carried
                logger.exception("batched decode failed")
                for sequence in list(self._active):
                    sequence.end(BackendError("llama.cpp failed.", detail=str(exc)))
                    self._release(sequence, keep_cells=False)

    def _admit(self) -> None:
        # Called with the lock held: joining sequences take free sequence ids in order.
        while self._joining and self._free_ids:
            sequence = self._joining.pop(0)
            if sequence.closed.is_set():
                continue
            try:
                sequence.seq_id, sequence.evaluated = self._take_id(sequence.prompt)
                sequence.sampler = self._sampler(sequence.options)
            except Exception as exc:
                # This answer fails; the loop, and every other answer, goes on.
                logger.exception("could not start a sequence")
                self._refuse(sequence, exc)
                continue
            self.reused_tokens += sequence.evaluated
            self._active.append(sequence)
        # Batches go in sequence-id order: llama.cpp then views the per-sequence KV streams
        # as one run; out of order, every decode step cost half as much again (measured).
        self._active.sort(key=lambda s: s.seq_id)

    def _refuse(self, sequence: _Sequence, exc: Exception) -> None:
        """End a sequence that could not join. Whatever id it had taken (the failure may
        have come halfway through taking one, or moving cells) is free again, empty."""
        sequence.end(BackendError("llama.cpp could not start this answer.", detail=str(exc)))
        sequence.seq_id = -1
        held = {s.seq_id for s in self._active} | set(self._free_ids)
        for seq_id in range(self.config.n_seq_max):
            if seq_id not in held:
                self._cached.pop(seq_id, None)
                try:
                    self._llama_cpp.llama_memory_seq_rm(self.context.memory, seq_id, -1, -1)
                finally:
                    self._free_ids.append(seq_id)

    def _take_id(self, prompt: list[int]) -> tuple[int, int]:
        """A free sequence id for ``prompt``, and how many of its tokens that id's cells
        already hold. The id whose cells ``prompt`` mostly continues (or which hold most of
        ``prompt``) wins; else the least recently used beside the running ids
        (``_compact_id``), so an unrelated prompt that merely starts with the same
        chat-template tokens does not evict a conversation's cells."""
        shares = {i: _shared_prefix(self._cached.get(i, []), prompt) for i in self._free_ids}
        running = {s.seq_id for s in self._active}
        compact = self._compact_id(running)
        best, best_shared = compact, 0
        for seq_id, shared in shares.items():
            held = len(self._cached.get(seq_id, []))
            worth_it = shared * 2 >= max(held, 1) or shared * 2 >= len(prompt)
            if worth_it and shared > best_shared:
                best, best_shared = seq_id, shared
        shared = shares[best]
        self._free_ids.remove(best)
        cached = self._cached.pop(best, [])
        # At least the last prompt token is evaluated again: its logits give the first token.
        keep = min(shared, len(prompt) - 1)
        memory = self.context.memory
        if keep > 0 and keep < len(cached) and self._n_swa > 0:
            # A sliding-window cache dropped the cells older than its window: going back
            # needs the window before ``keep`` (llama.cpp's server checks the same).
            pos_min = self._llama_cpp.llama_memory_seq_pos_min(memory, best)
            if pos_min > max(0, keep - self._n_swa):
                keep = 0
        if keep > 0 and not self._llama_cpp.llama_memory_seq_rm(memory, best, keep, -1):
            keep = 0  # this memory cannot drop a tail (recurrent models)
        if keep == 0 and cached:
            self._llama_cpp.llama_memory_seq_rm(memory, best, -1, -1)
        if keep > 0 and _neighbours(compact, running) > _neighbours(best, running):
            best = self._move_cells(best, compact)
        return best, keep

    def _move_cells(self, source: int, target: int) -> int:
        """Move ``source``'s cells to the free id ``target`` (it loses its own cache); the
        id that holds them after. llama.cpp copies the KV stream on the GPU or in memory at
        the next decode, before that decode's tokens are written."""
        llama_cpp, memory = self._llama_cpp, self.context.memory
        span = (
            llama_cpp.llama_memory_seq_pos_min(memory, source),
            llama_cpp.llama_memory_seq_pos_max(memory, source),
        )
        llama_cpp.llama_memory_seq_rm(memory, target, -1, -1)
        self._cached.pop(target, None)
        llama_cpp.llama_memory_seq_cp(memory, source, target, -1, -1)
        copied = (
            llama_cpp.llama_memory_seq_pos_min(memory, target),
            llama_cpp.llama_memory_seq_pos_max(memory, target),
        )
        if copied != span:  # a memory that does not copy across sequences: stay put
            llama_cpp.llama_memory_seq_rm(memory, target, -1, -1)
            return source
        llama_cpp.llama_memory_seq_rm(memory, source, -1, -1)
        self._free_ids.remove(target)
        self._free_ids.insert(0, source)  # empty now: the first to reuse
        return target

    def _compact_id(self, running: set[int]) -> int:
        """The free id that keeps the running ids in the fewest runs of consecutive ids,
        least recently used first. With a KV stream per sequence llama.cpp decodes only
        consecutive ids together: each further run is another pass over the weights in
        every step (``llama_batch_allocr::split_equal``)."""
        # max keeps the first (least recently used) of equals
        return max(self._free_ids, key=lambda seq_id: _neighbours(seq_id, running))

    def _drop_closed(self) -> None:
        for sequence in list(self._active):
            if sequence.closed.is_set():
                self._release(sequence)

    def _release(self, sequence: _Sequence, keep_cells: bool = True) -> None:
        """Free the sequence's id; its cells stay as that id's prompt cache."""
        if keep_cells:
            self._cached[sequence.seq_id] = sequence.prompt[: sequence.evaluated] + sequence.decoded
        else:
            self._llama_cpp.llama_memory_seq_rm(self.context.memory, sequence.seq_id, -1, -1)
        if sequence.sampler is not None:
            sequence.sampler.close()
            sequence.sampler = None
        with self._lock:
            self._active.remove(sequence)
            self._free_ids.append(sequence.seq_id)
            self._lock.notify_all()

    def _sampler(self, options: SamplingOptions, shortlist: bool = True) -> Any:
        # The chain llama-cpp-python's Llama._init_sampler builds, in its order, after a
        # shortlist that never changes what it draws (shortlist_size).
        sampler = self._internals.LlamaSampler()
        size = shortlist_size(options) if shortlist else 0
        if size:
            sampler.add_top_k(size)
        sampler.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=PENALTY_LAST_N,
            penalty_repeat=options.repeat_penalty,
            penalty_freq=0.0,
            penalty_present=0.0,
        )
        if options.temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(options.top_k)
            sampler.add_typical(TYPICAL_P, 1)
            sampler.add_top_p(options.top_p, 1)
            sampler.add_min_p(MIN_P, 1)
            sampler.add_temp(options.temperature)
            seed = options.seed if options.seed is not None else random.getrandbits(32)
            sampler.add_dist(seed)
        return sampler

    def _step(self) -> None:
        # Each step's Python work is paid per sequence while the GPU waits for the next
        # decode, so the batch is filled from lists in one go (not field by field).
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        logits: list[int] = []
        sample_at: list[tuple[_Sequence, int]] = []

        generating = [s for s in self._active if not s.prefilling]
        for sequence in generating:
            assert sequence.next_token is not None
            sequence.decoded.append(sequence.next_token)
            sample_at.append((sequence, len(tokens)))
            tokens.append(sequence.next_token)
            positions.append(len(sequence.prompt) + sequence.completion - 1)
            seq_ids.append(sequence.seq_id)
            logits.append(1)
        # Alone, a prompt goes in as llama-cpp-python evaluates it (n_batch at a time);
        # beside running streams, in bounded chunks so their next token is not held up.
        budget = self.config.n_batch - len(tokens)
        # Background prompts wait while any other sequence is in the batch.
        foreground = any(not s.background for s in self._active)
        for sequence in self._active:
            if not sequence.prefilling or budget <= 0 or (sequence.background and foreground):
                continue
            if sequence.background:
                chunk = self.config.background_chunk
            else:
                chunk = self.config.prefill_chunk if generating else budget
            start = sequence.evaluated
            take = min(len(sequence.prompt) - start, budget, chunk)
            tokens += sequence.prompt[start : start + take]
            positions += range(start, start + take)
            seq_ids += [sequence.seq_id] * take
            logits += [0] * take
            if start + take == len(sequence.prompt):
                logits[-1] = 1
                sample_at.append((sequence, len(tokens) - 1))
            sequence.evaluated += take
            budget -= take
        self._slots.fill(tokens, positions, seq_ids, logits)
        status = self._llama_cpp.llama_decode(self.context.ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        sampled = self._samplers.tokens([(s.sampler.sampler, index) for s, index in sample_at])
        for (sequence, _), token in zip(sample_at, sampled, strict=True):
            self._accept(sequence, token)

    def _accept(self, sequence: _Sequence, token: int) -> None:
        known = self._pieces.get(token)
        if known is None:
            llama_cpp = self._llama_cpp
            size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, 256, 0, False)
            ends = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
            known = self._pieces[token] = (self._piece.raw[: max(size, 0)], ends)
        piece, ends = known
        if ends:
            self._finish(sequence, "stop")
            return
        sequence.completion += 1
        text = sequence.decoder.feed(piece)
        if text:
            sequence.out.put(TextChunk(text))
        if sequence.decoder.stopped:
            self._finish(sequence, "stop")
        elif (
            sequence.completion >= sequence.options.max_tokens
            or len(sequence.prompt) + sequence.completion >= self.n_ctx_per_seq
        ):
            self._finish(sequence, "length")
        else:
            sequence.next_token = token

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        rest = sequence.decoder.finish()
        if rest:
            sequence.out.put(TextChunk(rest))
        sequence.end(
            Finished(
                reason=reason,
                usage=Usage(
                    prompt_tokens=len(sequence.prompt), completion_tokens=sequence.completion
                ),
            )
        )
        self._release(sequence)
