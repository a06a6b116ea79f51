"""Load: many websocket clients asking at once, on the real stack.

One Celery worker for the ``cpu`` pool (concurrency 1) and one uvicorn, a private DATA_DIR,
SQLite and an embedded redis-server on a unix socket. N clients across U users (one
conversation each) send one message with the default Gemma model at the same moment, then
read the stream as the browser does (tests/e2e/helpers.py::ChatClient).

    .venv/bin/python bench/load_bench.py --clients 32 --users 4 --tokens 48 [--raw] [--json]
    .venv/bin/python bench/load_bench.py --rounds 1,8 --users 8 --tokens 128 [--json]

``--rounds`` runs several loads one after the other on the same stack (e.g. one answer
alone, then eight at once: the batching ratio). ``--raw`` first measures raw
llama-cpp-python generating one answer alone (same model, prompt style, tokens and
threads, in a process of its own before the stack starts): aggregate ÷ raw.

Figures:
- stream integrity: gaps (deltas that did not line up), duplicates (a delta whose seq the
  client already had for that attempt), answers whose streamed text differs from the DB;
- delivery lag: the bench joins every conversation's channel-layer group itself and notes
  when each delta reaches that in-process subscriber (the "publish" time: the same Redis
  hop uvicorn's consumer waits on); lag = the client's websocket receipt minus that time,
  i.e. what the web process (consumer, JSON, websocket) and the client add;
- queue-wait fairness: per user, started_at - created_at from the DB, and the order in
  which the users' answers started (round robin: a user's k-th answer, once it waits,
  starts before anyone's (k+2)-th; an answer that finds a free slot before the others
  are sent starts at once);
- wall time from the sends to the last answer, answers done, aggregate tokens/s.
- admission, from the DB: how long the sends took to reach it, each answer's wait for a
  claim, and the worker's own time to first token.

Before each round the bench waits until the worker is idle: no answer queued or running
and no title waiting or being written (the previous round's titles would otherwise share
the next round's batch: "one answer alone" would not be alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TERMINAL = ("done", "failed", "stopped")
TOPICS = (
    "the moon",
    "rivers",
    "bees",
    "volcanoes",
    "glass",
    "owls",
    "deserts",
    "bridges",
    "salt",
    "comets",
    "maple trees",
    "coral reefs",
    "clocks",
    "penguins",
    "thunder",
    "paper",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--rounds", default="", help="comma-separated client counts, run one after another"
    )
    parser.add_argument(
        "--raw", action="store_true", help="measure raw llama-cpp-python alone first"
    )
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens of every answer")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: default)")
    parser.add_argument(
        "--web-processes", type=int, default=0, help="uvicorn processes (0: CORRAL_WEB_PROCESSES)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="deadline of the load phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the private DATA_DIR (database, stack.log)"
    )
    parser.add_argument(
        "--model", default="", help="a GGUF file (default: the packaged Gemma, gemma format)"
    )
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="-1: every layer")
    parser.add_argument(
        "--batch-size", type=int, default=0, help="answers per worker process (0: default)"
    )
    parser.add_argument("--n-ctx", type=int, default=0, help="context per answer (0: default)")
    args = parser.parse_args()
    args.round_sizes = [int(n) for n in args.rounds.split(",") if n] or [args.clients]
    args.clients = max(args.round_sizes)
    if min(args.round_sizes) < 1 or not args.users >= 1:
        parser.error("need client counts >= 1 and --users >= 1")
    return args


RAW_SCRIPT = """
import sys, time
from llama_cpp import Llama
path, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n_gpu_layers, chat_format = int(sys.argv[4]), sys.argv[5] or None
llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers, chat_format=chat_format, verbose=False)
rates = []
for i in range(3):
    messages = [{"role": "user", "content": f"In one or two sentences, tell me something "
                 f"about rivers (question {i + 1})."}]
    start = time.perf_counter()
    n = 0
    for chunk in llm.create_chat_completion(messages=messages, stream=True, max_tokens=tokens,
                                            temperature=0.0, repeat_penalty=1.1, seed=1):
        n += bool(chunk["choices"][0]["delta"].get("content"))
    rates.append(n / (time.perf_counter() - start))
print(sorted(rates)[1])
"""


def raw_tok_s(
    model_path: str, tokens: int, threads: int, n_gpu_layers: int = 0, chat_format: str = ""
) -> float:
    """Raw llama-cpp-python, one answer alone, median of three (chunks per second, prompt
    evaluation included, as a client of Corral counts)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RAW_SCRIPT,
            model_path,
            str(tokens),
            str(threads),
            str(n_gpu_layers),
            chat_format,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def set_environment(tmp: Path, per_user: int, clients: int) -> None:
    """Before anything imports webui.config (it reads the environment once, at import)."""
    os.environ["DATA_DIR"] = str(tmp)
    os.environ.setdefault("MODELS_DIR", str(REPO / "data" / "models"))
    os.environ.pop("DATABASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "webui.settings"
    os.environ["CORRAL_MAX_ACTIVE_PER_USER"] = str(max(8, per_user))
    os.environ["CORRAL_MAX_QUEUED_PER_POOL"] = str(max(100, clients))
    os.environ["CORRAL_MESSAGES_PER_MINUTE"] = "0"  # the bench sends in bursts
    # Always our own redis-server: nothing outside this run is touched.
    os.environ["REDIS_URL"] = f"unix://{tmp / 'redis.sock'}"


def prepare_environment(tmp: Path) -> subprocess.Popen[bytes]:
    """Private redis-server and SQLite in ``tmp``."""
    from webui import config
    from webui.run.processes import die_with_parent, redis_server_argv, wait_for_unix_socket

    sock = tmp / "redis.sock"
    if tmp.resolve() != config.DATA_DIR or config.redis_url() != f"unix://{sock}":
        raise RuntimeError("webui.config was imported before the environment was set")
    argv = redis_server_argv(sock, tmp)
    argv[argv.index("--appendonly") + 1] = "no"
    redis = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent
    )
    wait_for_unix_socket(sock)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if not Path(settings.DATABASES["default"]["NAME"]).resolve().is_relative_to(tmp.resolve()):
        raise RuntimeError("the database is not the private one")
    call_command("migrate", verbosity=0)
    return redis


@contextlib.contextmanager
def output_to(path: Path):
    """Children started inside inherit stdout/stderr pointing at ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


class Subscriber(threading.Thread):
    """Joins the conversations' groups on the channel layer and stamps every delta."""

    def __init__(self, conversation_ids: list[int]) -> None:
        super().__init__(name="bench-subscriber", daemon=True)
        self.conversation_ids = conversation_ids
        self.arrivals: dict[tuple[int, int, int], float] = {}
        self.counts: dict[str, int] = defaultdict(int)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: str = ""

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    async def _main(self) -> None:
        from channels.layers import get_channel_layer

        from webui.chat import streams

        layer = get_channel_layer()
        channel = await layer.new_channel()
        for conversation_id in self.conversation_ids:
            await layer.group_add(streams.group_name(conversation_id), channel)
        # The pub/sub layer's reader may sleep a moment after its first subscription:
        # ready once a message to ourselves came back, or a round's first deltas look late.
        await layer.send(channel, {"type": "bench.probe"})
        while (await asyncio.wait_for(layer.receive(channel), 5)).get("type") != "bench.probe":
            pass
        pump = asyncio.create_task(self._pump(layer, channel))
        self.ready.set()
        while not self.stopping.is_set() and not pump.done():
            await asyncio.sleep(0.1)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        with contextlib.suppress(Exception):
            await layer.flush()

    async def _pump(self, layer, channel: str) -> None:
        while True:
            event = await layer.receive(channel)
            now = time.perf_counter()
            self.counts[event.get("type", "?")] += 1
            if event.get("type") == "message.delta":
                key = (event["message"], event["attempt"], event["seq"])
                self.arrivals.setdefault(key, now)


@dataclass
class Result:
    index: int
    user: str
    conversation_id: int
    sent_at: float = 0.0
    first_delta_at: float | None = None
    finished_at: float | None = None
    answer_id: int | None = None
    final: dict[str, Any] | None = None
    assembled: str | None = None
    deltas: int = 0
    gaps: int = 0
    duplicates: int = 0
    queue_events: int = 0
    state_events: int = 0
    admitted_at: float | None = None
    receipts: dict[tuple[int, int, int], float] = field(default_factory=dict)
    error: str = ""


def run_client(client, result: Result, text: str, model_id: int, barrier, deadline: float):
    """One thread: wait for the others, send, then read until the answer is final."""
    try:
        barrier.wait()
        result.sent_at = time.perf_counter()
        client.send({"type": "send", "text": text, "model": model_id})
        seen: set[tuple[int, int, int]] = set()
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                result.error = "deadline passed before the answer was final"
                return
            before = {
                mid: (m["attempt"], m["seq"], m["content"])
                for mid, m in client.messages.items()
                if m["role"] == "assistant"
            }
            try:
                event = client.receive(timeout=min(remaining, 5))
            except TimeoutError:
                continue
            now = time.perf_counter()
            kind = event["type"]
            if kind == "delta":
                key = (event["message"], event["attempt"], event["seq"])
                prior = before.get(event["message"])
                if key in seen or (
                    prior and prior[0] == event["attempt"] and event["seq"] <= prior[1]
                ):
                    result.duplicates += 1
                seen.add(key)
                result.deltas += 1
                result.receipts.setdefault(key, now)
                result.first_delta_at = result.first_delta_at or now
            elif kind == "queue":
                result.queue_events += 1
            elif kind == "error":
                result.error = event["message"]
                return
            elif kind == "message":
                result.state_events += 1
                message = event["message"]
                if message["role"] == "assistant" and result.admitted_at is None:
                    result.admitted_at = now
                if message["role"] == "assistant" and message["status"] in TERMINAL:
                    result.finished_at = now
                    result.answer_id = message["id"]
                    result.final = message
                    # What snapshot + deltas had built before the final state replaced it.
                    result.assembled = before.get(message["id"], (0, 0, ""))[2]
                    return
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.gaps = client.gaps


def warm_up(base_url: str, user, cookie: str, model_id: int) -> None:
    """One answer first: the worker loads the model (not part of the figures)."""
    from tests.e2e.helpers import ChatClient
    from webui.chat.models import Conversation

    conversation = Conversation.objects.create(owner=user)
    client = ChatClient.open(base_url, conversation.pk, user, cookie=cookie)
    try:
        client.send({"type": "send", "text": "Say hello.", "model": model_id})
        client.wait_until(
            lambda c: any(
                m["role"] == "assistant" and m["status"] in TERMINAL for m in c.messages.values()
            ),
            timeout=180,
        )
        if client.answer()["status"] != "done":
            raise RuntimeError(f"warm-up answer: {client.answer()}")
    finally:
        client.close()


def nearest_rank(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def fairness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-user queue waits and whether starts went round robin."""
    per_user: dict[str, list[float]] = defaultdict(list)
    started = sorted((r for r in rows if r["started_at"]), key=lambda r: r["started_at"])
    rank: dict[str, int] = defaultdict(int)
    order = []
    for row in started:
        per_user[row["user"]].append((row["started_at"] - row["created_at"]).total_seconds())
        rank[row["user"]] += 1
        order.append((row["user"], rank[row["user"]], row))
    # A violation: someone's (k+2)-th (or later) answer started while another's k-th was
    # already waiting, which started later. An answer that finds a free slot before the
    # others are even sent starts at once: the order is fair among answers that wait.
    violations = sum(
        1
        for i, (_, k_late, late) in enumerate(order)
        for _, k_early, early in order[i + 1 :]
        if k_late >= k_early + 2 and early["created_at"] < late["started_at"]
    )
    return {
        "wait_s": {
            user: {
                "answers": len(waits),
                "median": round(statistics.median(waits), 2),
                "max": round(max(waits), 2),
            }
            for user, waits in sorted(per_user.items())
        },
        "start_order": " ".join(f"{user}{k}" for user, k, _ in order),
        "round_robin_violations": violations,
    }


def main() -> None:
    args = parse_args()
    per_user = math.ceil(args.clients / args.users)
    tmp = Path(tempfile.mkdtemp(prefix="corral-load-"))
    set_environment(tmp, per_user, args.clients)
    from webui.run import processes

    processes.install_stop_handlers()  # `timeout` sends SIGTERM: clean up all the same
    redis = None
    supervisor = None
    clients: list[Any] = []
    raw = None
    ok = False
    stack_log = tmp / "stack.log"
    try:
        redis = prepare_environment(tmp)
        from django.contrib.auth import get_user_model

        from tests.conftest import free_port
        from tests.e2e.helpers import login_cookie
        from webui import config
        from webui.chat.models import LanguageModel
        from webui.chat.services import prepare_default_model

        if args.model:  # its own chat template
            model = LanguageModel.objects.create(
                name="bench", backend="llama_cpp", target=args.model
            )
        else:
            model = prepare_default_model()  # the default Gemma, as `make run` registers it
        # As the raw run samples (RAW_SCRIPT): greedy, llama.cpp's repeat penalty included.
        model.parameters = {
            "max_tokens": args.tokens,
            "temperature": 0.0,
            "repeat_penalty": 1.1,
            "seed": 1,
        }
        extra = {
            "n_threads": args.threads,
            "n_gpu_layers": args.n_gpu_layers,
            "batch_size": args.batch_size,
            "n_ctx": args.n_ctx,
        }
        model.settings = {**model.settings, **{k: v for k, v in extra.items() if v}}
        model.save(update_fields=["parameters", "settings"])
        if args.raw:
            log("raw llama-cpp-python, one answer alone…")
            raw = raw_tok_s(
                model.target,
                args.tokens,
                args.threads or config.N_THREADS,
                args.n_gpu_layers,
                model.settings.get("chat_format", ""),
            )
        users_model = get_user_model()
        users = [
            users_model.objects.create_user(f"user{chr(65 + i)}", password="bench-password-123")
            for i in range(args.users)
        ]
        cookies = {user.pk: login_cookie(user) for user in users}
        warm_user = users_model.objects.create_user("warmup", password="bench-password-123")

        supervisor = processes.Supervisor()  # copies os.environ: the limits above included
        supervisor.env.update(PYTHONUNBUFFERED="1")
        port = free_port()
        with output_to(stack_log):
            worker = supervisor.start("worker", processes.worker_argv(["cpu"], 1, "load@%h"))
            web_processes = args.web_processes or config.WEB_PROCESSES
            web = supervisor.start(
                "web", processes.web_argv("127.0.0.1", port, processes=web_processes)
            )
        processes.wait_for_port(
            "127.0.0.1", port, alive={"worker": worker.process, "web": web.process}
        )
        base_url = f"http://127.0.0.1:{port}"
        log(f"stack up on {base_url}; warming up (model load)…")
        warm_up(base_url, warm_user, login_cookie(warm_user), model.pk)

        rounds = []
        for size in args.round_sizes:
            users_now = users[: min(args.users, size)]
            log(f"round: {size} clients of {len(users_now)} users")
            rounds.append(
                run_round(args, size, users_now, cookies, model, base_url, supervisor, clients)
            )
        figures = rounds[-1] if len(rounds) == 1 else {"rounds": rounds}
        # The baseline is the median of every round the size of the first (one answer
        # alone lasts a fraction of a second at GPU speed: `--rounds 1,1,1,8,32`).
        baseline = statistics.median(
            r["aggregate_tok_s"] or 0 for r in rounds if r["clients"] == rounds[0]["clients"]
        )
        if len(rounds) > 1 and baseline:
            figures["baseline_tok_s"] = rounded(baseline, 2)
            figures["ratio_to_first_round"] = [
                rounded((r["aggregate_tok_s"] or 0) / baseline, 2) for r in rounds
            ]
        if raw is not None:
            figures["raw_tok_s"] = round(raw, 2)
            for r in rounds:
                r["ratio_to_raw"] = rounded((r["aggregate_tok_s"] or 0) / raw, 2)
        for r in rounds:
            r["n_threads"] = args.threads or config.N_THREADS
            r["batch_size"] = args.batch_size or config.BATCH_SIZE
            r["n_gpu_layers"] = args.n_gpu_layers
            r["web_processes"] = web_processes
        ok = True
    except KeyboardInterrupt:
        log("interrupted")
        raise
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        if supervisor is not None:
            supervisor.stop()
        if redis is not None:
            redis.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                redis.wait(10)
            redis.kill()
            redis.wait()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif ok:
            log(f"kept {tmp} (database, stack.log)")
        else:
            log(f"failed: the worker and web output is in {stack_log}")
    report(figures, args.json)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (Linux /proc; 0 elsewhere)."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def stack_cpu(supervisor) -> dict[str, float]:
    return {c.name: cpu_seconds(c.process.pid) for c in supervisor.children}


def wait_until_idle(limit_s: float = 120) -> float:
    """Wait until no answer is queued or running and no title is waiting or being written:
    the previous round's titles (low-priority work the worker does when idle) must not
    share the next round's batch. Seconds waited."""
    from webui.chat.models import Conversation, Message, TitleStatus

    start = time.perf_counter()
    titling = (TitleStatus.PENDING, TitleStatus.RUNNING)
    while time.perf_counter() - start < limit_s:
        busy = Message.objects.filter(status__in=Message.ACTIVE).exists()
        if not busy and not Conversation.objects.filter(title_status__in=titling).exists():
            time.sleep(0.3)  # the worker's loop notices it has nothing left and ends
            return time.perf_counter() - start
        time.sleep(0.1)
    raise RuntimeError(f"the worker was still busy after {limit_s} s")


def run_round(
    args, size: int, users, cookies, model, base_url: str, supervisor, clients: list[Any]
) -> dict[str, Any]:
    """``size`` clients send at once and read their answers to the end; the figures."""
    from tests.e2e.helpers import ChatClient
    from webui.chat.models import Conversation, Message

    waited = wait_until_idle()
    results = []
    for i in range(size):
        user = users[i % len(users)]
        conversation = Conversation.objects.create(owner=user, model=model)
        clients.append(ChatClient.open(base_url, conversation.pk, user, cookie=cookies[user.pk]))
        results.append(Result(i, user.username.removeprefix("user"), conversation.pk))
    subscriber = Subscriber([r.conversation_id for r in results])
    subscriber.start()
    if not subscriber.ready.wait(30) or subscriber.error:
        raise RuntimeError(f"channel-layer subscriber: {subscriber.error or 'not ready'}")

    barrier = threading.Barrier(size + 1, timeout=60)
    deadline = time.perf_counter() + args.timeout
    threads = [
        threading.Thread(
            target=run_client,
            args=(
                client,
                result,
                f"In one or two sentences, tell me something about "
                f"{TOPICS[i % len(TOPICS)]} (question {i + 1}).",
                model.pk,
                barrier,
                deadline,
            ),
            name=f"client-{i}",
            daemon=True,
        )
        for i, (client, result) in enumerate(zip(clients, results, strict=True))
    ]
    for thread in threads:
        thread.start()
    log(f"{size} clients of {len(users)} users sending now…")
    cpu_before = stack_cpu(supervisor)
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()) + 10)
    cpu_after = stack_cpu(supervisor)
    time.sleep(0.2)  # the subscriber saw each delta before the client: nothing pending
    subscriber.stopping.set()
    subscriber.join(10)
    if (exited := supervisor.first_exit()) is not None:
        raise RuntimeError(f"{exited.name} exited with {exited.process.returncode}")

    answers = {
        m.conversation_id: m
        for m in Message.objects.filter(
            conversation_id__in=[r.conversation_id for r in results], role="assistant"
        ).select_related("conversation__owner")
    }
    rows = [
        {
            "user": m.conversation.owner.username.removeprefix("user"),
            "created_at": m.created_at,
            "started_at": m.started_at,
        }
        for m in answers.values()
    ]
    figures = summarize(args, results, answers, rows, subscriber, started, size, len(users))
    figures["idle_wait_s"] = rounded(waited, 2)
    # What each process spent per answer, whatever else ran on the machine: on a machine
    # with more cores the same work takes less of the round.
    figures["cpu_ms_per_answer"] = {
        name: rounded((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / size)
        for name in cpu_after
    }
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
    clients.clear()
    return figures


def summarize(
    args, results, answers, rows, subscriber, started: float, size: int, n_users: int
) -> dict[str, Any]:
    lags, steady, missing, worst, worst_at = [], [], 0, 0.0, None
    admitted = max((r.admitted_at for r in results if r.admitted_at), default=started)
    for result in results:
        for key, received in result.receipts.items():
            published = subscriber.arrivals.get(key)
            if published is None:
                missing += 1
                continue
            lag = (received - published) * 1000
            if worst_at is None or lag > worst:
                worst, worst_at = lag, received - started
            lags.append(lag)
            if received > admitted:
                steady.append(lag)
    mismatched, not_done, errors = [], [], []
    tokens = 0
    for result in results:
        answer = answers.get(result.conversation_id)
        if result.error or answer is None:
            errors.append(f"client {result.index}: {result.error or 'no answer in the DB'}")
            continue
        if answer.status != "done":
            not_done.append(answer.pk)
        tokens += answer.completion_tokens or 0
        if result.assembled != answer.content:
            mismatched.append(answer.pk)
    finishes = [r.finished_at for r in results if r.finished_at]
    wall = (max(finishes) - started) if finishes else None
    ttfts = [(r.first_delta_at - r.sent_at) * 1000 for r in results if r.first_delta_at]
    worker_rates = [a.tokens_per_second for a in answers.values() if a.tokens_per_second]
    return {
        "admission": admission(list(answers.values())),
        "clients": size,
        "users": n_users,
        "max_tokens": args.tokens,
        "answers_done": sum(1 for a in answers.values() if a.status == "done"),
        "wall_s": rounded(wall, 2),
        "completion_tokens": tokens,
        "aggregate_tok_s": rounded(tokens / wall if wall else None, 2),
        "worker_tok_s_median": rounded(statistics.median(worker_rates), 2)
        if worker_rates
        else None,
        "deltas": sum(r.deltas for r in results),
        "gaps": sum(r.gaps for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "text_mismatches": len(mismatched),
        "mismatched_ids": mismatched,
        "not_done_ids": not_done,
        "errors": errors,
        "events_clients": {
            "delta": sum(r.deltas for r in results),
            "state": sum(r.state_events for r in results),
            "queue": sum(r.queue_events for r in results),
        },
        "events_subscriber": {
            "delta": subscriber.counts["message.delta"],
            "state": subscriber.counts["message.state"],
            "queue": subscriber.counts["message.queue"],
        },
        "ttft_ms": {
            "p50": rounded(nearest_rank(ttfts, 0.5)),
            "max": rounded(max(ttfts, default=0)),
        },
        "lag_ms": {
            "method": "client websocket receipt - arrival of the same delta "
            "(message, attempt, seq) at an in-process channel-layer subscriber "
            "of the conversation groups",
            "samples": len(lags),
            "unmatched": missing,
            "p50": rounded(nearest_rank(lags, 0.5), 2),
            "p99": rounded(nearest_rank(lags, 0.99), 2),
            "max": rounded(max(lags, default=0.0), 2),
            "min": rounded(min(lags, default=0.0), 2),
            "max_at_s": rounded(worst_at, 2),
            "after_admission": {
                "from_s": round(admitted - started, 2),
                "samples": len(steady),
                "p50": rounded(nearest_rank(steady, 0.5), 2),
                "p99": rounded(nearest_rank(steady, 0.99), 2),
                "max": rounded(max(steady, default=0.0), 2),
            },
        },
        **fairness(rows),
    }


def admission(answers: list[Any]) -> dict[str, Any]:
    """Where a round's first tokens wait, from the database: the sends reaching it (first
    to last answer saved), each answer's wait for a worker's claim (started_at -
    created_at, the database's clock), and the worker's own time to first token (from
    the claim's start of generation: prompt building, prefill, the first step)."""
    created = [a.created_at for a in answers]
    claims = [(a.started_at - a.created_at).total_seconds() * 1000 for a in answers if a.started_at]
    worker_ttfts = [a.time_to_first_token_ms for a in answers if a.time_to_first_token_ms]
    return {
        "sends_over_ms": rounded((max(created) - min(created)).total_seconds() * 1000)
        if created
        else None,
        "claim_wait_ms": {
            "p50": rounded(nearest_rank(claims, 0.5)),
            "max": rounded(max(claims, default=0)),
        },
        "worker_ttft_ms": {
            "p50": rounded(nearest_rank(worker_ttfts, 0.5)),
            "max": rounded(max(worker_ttfts, default=0)),
        },
    }


def report(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    for f in figures.get("rounds", [figures]):
        report_round(f)
        if "ratio_to_raw" in f:
            print(
                f"aggregate / raw llama-cpp-python alone ({figures['raw_tok_s']} tok/s): "
                f"{f['ratio_to_raw']}x"
            )
        print()
    if "ratio_to_first_round" in figures:
        sizes = [r["clients"] for r in figures["rounds"]]
        alike = sizes.count(sizes[0])
        print(
            f"aggregate tok/s over the {sizes[0]}-client round"
            + (
                f"s' median ({alike} rounds, {figures['baseline_tok_s']} tok/s)"
                if alike > 1
                else ""
            )
            + ": ",
            end="",
        )
        print(
            ", ".join(
                f"{n} clients {x}x"
                for n, x in zip(sizes, figures["ratio_to_first_round"], strict=True)
            )
        )


def report_round(f: dict[str, Any]) -> None:
    print(
        f"{f['clients']} clients, {f['users']} users, max_tokens={f['max_tokens']}, "
        f"1 cpu worker (one process, batch size {f['batch_size']}, "
        f"n_threads={f['n_threads']}), uvicorn with {f['web_processes']} process(es)"
    )
    print(
        f"answers done: {f['answers_done']}/{f['clients']}  wall: {f['wall_s']} s  "
        f"tokens: {f['completion_tokens']}  aggregate: {f['aggregate_tok_s']} tok/s  "
        f"(worker-side median {f['worker_tok_s_median']} tok/s per answer)"
    )
    a = f["admission"]
    print(
        f"admission: sends reached the DB over {a['sends_over_ms']} ms; wait for a claim "
        f"p50={a['claim_wait_ms']['p50']} max={a['claim_wait_ms']['max']} ms; worker's TTFT "
        f"p50={a['worker_ttft_ms']['p50']} max={a['worker_ttft_ms']['max']} ms; "
        f"idle wait before the round {f['idle_wait_s']} s"
    )
    cpu = ", ".join(f"{name} {ms}" for name, ms in f["cpu_ms_per_answer"].items())
    print(f"CPU ms per answer: {cpu}")
    print(
        f"stream: {f['deltas']} deltas, gaps={f['gaps']}, duplicates={f['duplicates']}, "
        f"text != DB: {f['text_mismatches']} {f['mismatched_ids'] or ''}"
    )
    lag = f["lag_ms"]
    print(
        f"delivery lag ms: p50={lag['p50']} p99={lag['p99']} max={lag['max']} "
        f"min={lag['min']} (n={lag['samples']}, unmatched={lag['unmatched']}; "
        f"max at {lag['max_at_s']} s after the sends)"
    )
    steady = lag["after_admission"]
    print(
        f"  after the last send was admitted ({steady['from_s']} s): p50={steady['p50']} "
        f"p99={steady['p99']} max={steady['max']} (n={steady['samples']})"
    )
    print(f"  method: {lag['method']}")
    print(f"TTFT ms (send -> first delta): p50={f['ttft_ms']['p50']} max={f['ttft_ms']['max']}")
    print("queue wait (started_at - created_at), s:")
    for user, wait in f["wait_s"].items():
        print(
            f"  user {user}: {wait['answers']} answers, median {wait['median']}, max {wait['max']}"
        )
    print(f"start order: {f['start_order']}")
    print(
        "round-robin violations (a k+2-th start while a k-th waited): "
        f"{f['round_robin_violations']}"
    )
    print(
        f"events (delta/state/queue): clients {f['events_clients']}, "
        f"bench subscriber {f['events_subscriber']}"
    )
    if f["errors"] or f["not_done_ids"]:
        print(f"errors: {f['errors']}  not done: {f['not_done_ids']}")


if __name__ == "__main__":
    main()
