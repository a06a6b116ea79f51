"""The batched engine against raw llama-cpp-python, on one machine in one run.

Raw: ``Llama.create_completion`` streaming one answer alone. Engine: Corral's
``BatchEngine`` (inference/llama_engine.py) with B answers at once, one thread each, as a
worker runs them. Same model, prompt style, greedy sampling, token count and offload. No web
server, database or Redis: this isolates the generation loop (the whole path is
bench/load_bench.py).

    .venv/bin/python bench/engine_bench.py --model data/models/gemma-3-270m-q4_k_m.gguf \\
        --batches 1,8 --tokens 128
    python3 bench/engine_bench.py --model MODEL.gguf --n-gpu-layers -1 --batches 1,8,32 --json

``--join N`` also measures a prompt of about N tokens joining a running answer, with the
engine's prefill chunk and with none (the whole batch, ``n_batch``, in one step): the
running answer's longest wait between two pieces of text while the prompt is read, and
the joining answer's time to first token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Question {i}: write a long story about a herd of horses crossing a river."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n-ctx", type=int, default=1024, help="per answer")
    parser.add_argument("--join", type=int, default=0, help="long prompt tokens (0: skip)")
    parser.add_argument(
        "--parallel-sampling-min-vocab",
        type=int,
        default=None,
        help="sample on several threads from this vocabulary size (0: always)",
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def raw_tok_s(args: argparse.Namespace) -> float:
    """Raw llama-cpp-python, one answer alone, in a thread of its own (as the engine's
    decode thread is): generated tokens per second, median of the runs."""
    from llama_cpp import Llama

    rates: list[float] = []

    def run() -> None:
        llm = Llama(
            model_path=args.model,
            n_ctx=args.n_ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            n_gpu_layers=args.n_gpu_layers,
            verbose=False,
        )
        for i in range(args.runs + 1):  # the first run warms up
            start = time.perf_counter()
            n = 0
            for _ in llm.create_completion(
                PROMPT.format(i=i), max_tokens=args.tokens, temperature=0.0, stream=True
            ):
                n += 1
            if i:
                rates.append(n / (time.perf_counter() - start))
        del llm

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return statistics.median(rates)


def engine_tok_s(args: argparse.Namespace, batches: list[int]) -> dict[int, float]:
    from inference.base import Finished, SamplingOptions
    from inference.llama_engine import BatchEngine, EngineConfig

    engine = BatchEngine(
        args.model,
        EngineConfig(
            n_ctx_per_seq=args.n_ctx,
            n_seq_max=max(batches),
            n_threads=args.threads,
            n_gpu_layers=args.n_gpu_layers,
            **(
                {"parallel_sampling_min_vocab": args.parallel_sampling_min_vocab}
                if args.parallel_sampling_min_vocab is not None
                else {}
            ),
        ),
    )
    options = SamplingOptions(temperature=0.0, max_tokens=args.tokens, repeat_penalty=1.0)
    figures: dict[int, float] = {}

    def round_of(size: int) -> float:
        done: list[int] = []

        def answer(i: int) -> None:
            tokens = engine.tokenize(PROMPT.format(i=i), add_bos=True)
            for item in engine.generate(tokens, options, ()):
                if isinstance(item, Finished):
                    done.append(item.usage.completion_tokens)

        threads = [threading.Thread(target=answer, args=(i,)) for i in range(size)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - start)

    try:
        round_of(1)  # warm-up
        for size in batches:
            figures[size] = statistics.median(round_of(size) for _ in range(args.runs))
    finally:
        engine.close()
    return figures


def join_once(engine: Any, run: int, join_tokens: int) -> tuple[float, float]:
    """One answer streams; a prompt of ``join_tokens`` joins it. The streaming answer's
    longest wait between two pieces of text until the joining one's first text, and that
    time to first token (ms)."""
    from inference.base import SamplingOptions, TextChunk

    options = SamplingOptions(temperature=0.0, max_tokens=32768, repeat_penalty=1.0)
    filler = " ".join(f"river{n % 97}" for n in range(join_tokens))
    long = engine.tokenize(f"Run {run}. {filler}", add_bos=True)[:join_tokens]
    running = engine.generate(engine.tokenize(PROMPT.format(i=run), add_bos=True), options, ())
    next(running)  # streaming now
    first: list[float] = []

    def join() -> None:
        limited = options.model_copy(update={"max_tokens": 4})
        for item in engine.generate(long, limited, ()):
            if isinstance(item, TextChunk):
                first.append(time.perf_counter())
                return

    joiner = threading.Thread(target=join)
    joined_at = last = time.perf_counter()
    joiner.start()
    longest = 0.0
    for _ in running:
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        if first or not joiner.is_alive():
            break
    running.close()
    joiner.join()
    return longest * 1000, ((first[0] if first else last) - joined_at) * 1000


def join_figures(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``join_once`` with the engine's prefill chunk and with none (medians of the runs)."""
    from inference.llama_engine import BatchEngine, EngineConfig

    default = EngineConfig(n_ctx_per_seq=0, n_seq_max=2, n_threads=None, n_gpu_layers=0)
    figures: dict[str, dict[str, float]] = {}
    for name, chunk in (("chunked", default.prefill_chunk), ("unchunked", default.n_batch)):
        engine = BatchEngine(
            args.model,
            EngineConfig(
                n_ctx_per_seq=args.join + args.tokens + 64,
                n_seq_max=2,
                n_threads=args.threads,
                n_gpu_layers=args.n_gpu_layers,
                prefill_chunk=chunk,
            ),
        )
        try:
            runs = [join_once(engine, run, args.join) for run in range(args.runs + 1)][1:]
        finally:
            engine.close()
        figures[name] = {
            "prefill_chunk": chunk,
            "running_longest_gap_ms": round(statistics.median(r[0] for r in runs), 1),
            "joining_ttft_ms": round(statistics.median(r[1] for r in runs), 1),
        }
    return figures


def main() -> None:
    args = parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    raw = raw_tok_s(args)
    engine = engine_tok_s(args, batches)
    one = engine.get(1)
    result = {
        "model": Path(args.model).name,
        "n_gpu_layers": args.n_gpu_layers,
        "threads": args.threads,
        "tokens": args.tokens,
        "raw_tok_s": round(raw, 1),
        "engine_tok_s": {b: round(v, 1) for b, v in engine.items()},
        "engine_over_raw": {b: round(v / raw, 2) for b, v in engine.items()},
        "engine_over_engine_1": {b: round(v / one, 2) for b, v in engine.items()} if one else {},
    }
    if args.join:
        result["join"] = join_figures(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}, n_gpu_layers={args.n_gpu_layers}, threads={args.threads}")
    print(f"raw llama-cpp-python, one answer: {result['raw_tok_s']} tok/s")
    for b, v in result["engine_tok_s"].items():
        print(
            f"engine, {b} at once: {v} tok/s aggregate = {result['engine_over_raw'][b]}x raw"
            + (f", {result['engine_over_engine_1'][b]}x one" if one else "")
        )
    for name, join in result.get("join", {}).items():
        print(
            f"a {args.join}-token prompt joining one answer, {name} "
            f"(prefill_chunk {join['prefill_chunk']}): the answer's longest wait "
            f"{join['running_longest_gap_ms']} ms, the joining answer's TTFT "
            f"{join['joining_ttft_ms']} ms"
        )


if __name__ == "__main__":
    main()
