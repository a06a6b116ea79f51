"""The batched engine against raw llama-cpp-python, on one machine in one run.

Raw: ``Llama.create_completion`` streaming one answer alone. Engine: Corral's
``BatchEngine`` (inference/llama_engine.py) with B answers at once, one thread each, as a
worker runs them. Same model, prompt style, greedy sampling, token count and offload. No web
server, database or Redis: this isolates the generation loop (the whole path is
bench/load_bench.py).

    .venv/bin/python bench/engine_bench.py --model data/models/gemma-3-270m-q4_k_m.gguf \\
        --batches 1,8 --tokens 128
    python3 bench/engine_bench.py --model MODEL.gguf --n-gpu-layers -1 --batches 1,8,32 --json
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


if __name__ == "__main__":
    main()
