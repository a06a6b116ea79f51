"""A burst of sends through the web side alone: how fast uvicorn admits them.

With answers of a few hundred tokens at GPU speed, a round of the load bench is mostly
admission: N people press Send at once, and the last answer cannot start before the web
process has saved its message. This bench times that part by itself: one uvicorn (with
``--web-processes`` of them behind one port), a private DATA_DIR, SQLite and an embedded
redis-server, and no worker, so nothing else competes for the cores and the answers stay
queued. N websocket clients send one message each at the same moment and wait for
``accepted``.

    .venv/bin/python bench/send_bench.py --rounds 8,32 --users 8 --repeats 5 [--json]

Figures per round size (medians over the repeats):
- burst_ms: from the moment the clients send to the last ``accepted``;
- accepted_ms p50 / max: one client's send to its ``accepted``;
- db_span_ms: from the first to the last question's ``created_at`` in the database;
- sends_per_s: clients ÷ burst.
Between repeats the queued answers are marked stopped (a person may have only so many
active answers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from load_bench import (  # noqa: E402
    log,
    nearest_rank,
    output_to,
    prepare_environment,
    rounded,
    set_environment,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", default="8,32", help="clients per round, e.g. 1,8,32")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--web-processes",
        type=int,
        default=0,
        help="uvicorn worker processes (default: CORRAL_WEB_PROCESSES's default)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.round_sizes = [int(n) for n in args.rounds.split(",") if n.strip()]
    return args


def send_and_wait(client, model_id: int, text: str, barrier, out: dict[str, Any]) -> None:
    try:
        barrier.wait()
        out["sent"] = time.perf_counter()
        client.send({"type": "send", "text": text, "model": model_id})
        while True:
            event = client.receive(timeout=30)
            if event["type"] == "accepted":
                out["accepted"] = time.perf_counter()
                return
            if event["type"] == "error":
                out["error"] = event["message"]
                return
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"


def one_burst(size: int, users, cookies, model, base_url: str) -> dict[str, Any]:
    from tests.e2e.helpers import ChatClient
    from webui.chat.models import Conversation, Message

    conversations = [
        Conversation.objects.create(owner=users[i % len(users)], model=model) for i in range(size)
    ]
    clients = [
        ChatClient.open(base_url, c.pk, c.owner, cookie=cookies[c.owner_id]) for c in conversations
    ]
    outs: list[dict[str, Any]] = [{} for _ in range(size)]
    barrier = threading.Barrier(size + 1, timeout=60)
    threads = [
        threading.Thread(
            target=send_and_wait,
            args=(client, model.pk, f"Tell me something (question {i + 1}).", barrier, out),
            daemon=True,
        )
        for i, (client, out) in enumerate(zip(clients, outs, strict=True))
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join(60)
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
    errors = [out["error"] for out in outs if "error" in out or "accepted" not in out]
    if errors:
        raise RuntimeError(f"{len(errors)} sends failed: {errors[:3]}")
    questions = Message.objects.filter(conversation__in=conversations, role="user")
    created = sorted(q.created_at for q in questions)
    if len(created) != size:
        raise RuntimeError(f"{len(created)} questions saved of {size}")
    Message.objects.filter(conversation__in=conversations, status="queued").update(status="stopped")
    first_sent = min(out["sent"] for out in outs)
    accepted = [(out["accepted"] - out["sent"]) * 1000 for out in outs]
    return {
        "burst_ms": (max(out["accepted"] for out in outs) - first_sent) * 1000,
        "accepted_p50_ms": nearest_rank(accepted, 0.5),
        "accepted_max_ms": max(accepted),
        "db_span_ms": (created[-1] - created[0]).total_seconds() * 1000,
    }


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-send-"))
    clients_max = max(args.round_sizes)
    set_environment(tmp, clients_max, clients_max * args.repeats)
    from webui.run import processes

    processes.install_stop_handlers()
    redis = supervisor = None
    ok = False
    figures: dict[str, Any] = {}
    try:
        redis = prepare_environment(tmp)
        from django.contrib.auth import get_user_model

        from tests.conftest import free_port
        from tests.e2e.helpers import login_cookie
        from webui import config
        from webui.chat.models import LanguageModel

        # Never loaded: no worker runs, the answers only wait in the queue.
        model = LanguageModel.objects.create(name="bench", backend="llama_cpp", target="x.gguf")
        users_model = get_user_model()
        users = [
            users_model.objects.create_user(f"user{chr(65 + i)}", password="bench-password-123")
            for i in range(args.users)
        ]
        cookies = {user.pk: login_cookie(user) for user in users}
        web_processes = args.web_processes or config.WEB_PROCESSES
        supervisor = processes.Supervisor()
        port = free_port()
        with output_to(tmp / "stack.log"):
            web = supervisor.start(
                "web", processes.web_argv("127.0.0.1", port, processes=web_processes)
            )
        processes.wait_for_port("127.0.0.1", port, alive={"web": web.process})
        base_url = f"http://127.0.0.1:{port}"
        one_burst(2, users, cookies, model, base_url)  # warm: imports, connections
        rounds = []
        for size in args.round_sizes:
            log(f"{size} clients at once, {args.repeats} times…")
            bursts = [
                one_burst(size, users[: min(size, args.users)], cookies, model, base_url)
                for _ in range(args.repeats)
            ]
            summary = {
                key: rounded(statistics.median(b[key] for b in bursts))
                for key in ("burst_ms", "accepted_p50_ms", "accepted_max_ms", "db_span_ms")
            }
            summary["clients"] = size
            summary["sends_per_s"] = rounded(size / (summary["burst_ms"] / 1000))
            summary["burst_ms_each"] = [rounded(b["burst_ms"]) for b in bursts]
            rounds.append(summary)
        figures = {"web_processes": web_processes, "users": args.users, "rounds": rounds}
        ok = True
    finally:
        if supervisor is not None:
            supervisor.stop()
        if redis is not None:
            redis.terminate()
            with contextlib.suppress(Exception):
                redis.wait(10)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"failed: the web output is in {tmp / 'stack.log'}")
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"web processes: {figures['web_processes']}, {figures['users']} people, SQLite")
    for r in figures["rounds"]:
        print(
            f"{r['clients']:>3} at once: burst {r['burst_ms']} ms ({r['sends_per_s']} sends/s), "
            f"accepted p50 {r['accepted_p50_ms']} max {r['accepted_max_ms']} ms, "
            f"saved over {r['db_span_ms']} ms; bursts {r['burst_ms_each']}"
        )


if __name__ == "__main__":
    main()
