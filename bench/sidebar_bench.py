"""Sidebar and search at scale: one person with many conversations, on PostgreSQL.

Fills its own database (dropped and created again unless --reuse) with one person who has
--conversations conversations of --messages messages each (a few pinned, some archived)
and --others other people with a few conversations each, then measures with Django's test
client, in this process (no web server, no network):

- the conversation page ``/c/<id>/`` of random conversations of that person (sidebar
  included: its first keyset page), and of a deep sidebar page (``?older=<cursor>``);
- ``/search/?q=...`` for a rare word, a common word and two words together.

Conversations and users go in with ``bulk_create``; the messages with COPY. Then VACUUM
ANALYZE, a warm-up, and --requests timed requests of each kind (p50, p95, max).

    createdb -h 127.0.0.1 -U postgres corral_bench_sidebar   # or let the bench create it
    .venv/bin/python bench/sidebar_bench.py \\
        --database-url postgres://postgres@127.0.0.1:5432/corral_bench_sidebar [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RARE_WORD = "quagga"  # in a handful of conversations
COMMON_WORD = "river"  # in about a third of the messages
SECOND_WORD = "stone"  # in about a tenth
_VOCABULARY = (
    "the a of to and in is it you that for on with as this was be at by not are from or have "
    "an they which one had word but what all were when we there can your use each she do how "
    "their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part over new sound "
    "take only little work know place year live me back give most very after thing our just "
    "name good sentence man think say great where help through much before line right too "
    "mean old any same tell boy follow came want show also around form three small set put "
    "end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air "
    "away animal house point page letter mother answer found study still learn should world"
)
WORDS = _VOCABULARY.split(" ")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/corral_bench_sidebar"
        ),
        help="a PostgreSQL database of its own: it is dropped and created again",
    )
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=20, help="per conversation")
    parser.add_argument("--others", type=int, default=100, help="other people")
    parser.add_argument("--others-conversations", type=int, default=5, help="each")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database and its data if already filled"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("this benchmark needs PostgreSQL (--database-url postgres://...)")
    return args


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def recreate_database(url: str, reuse: bool) -> None:
    """Drop and create the bench database through the server's `postgres` database."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"unexpected database name {name!r}")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and reuse:
            return
        if exists:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "webui.settings"
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="corral-sidebar-bench-"))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def text_for(rng: random.Random, words: int, extra: list[str]) -> str:
    chosen = [rng.choice(WORDS) for _ in range(words)] + extra
    rng.shuffle(chosen)
    return " ".join(chosen).capitalize() + "."


def fill(args: argparse.Namespace) -> dict[str, Any]:
    """Users, conversations (bulk_create), messages (COPY); returns what was made."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from webui.chat.models import Conversation, Message

    user_model = get_user_model()
    owner = user_model.objects.filter(username="bench-owner").first()
    if owner is not None and Conversation.objects.filter(owner=owner).exists():
        log("reusing the filled database")
        return {"owner_id": owner.pk, "load_s": None}
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with transaction.atomic():
        owner = user_model(username="bench-owner")
        owner.set_unusable_password()
        others = []
        for i in range(args.others):
            other = user_model(username=f"bench-other-{i}")
            other.set_unusable_password()
            others.append(other)
        user_model.objects.bulk_create([owner, *others])
        owner = user_model.objects.get(username="bench-owner")
        other_ids = list(
            user_model.objects.exclude(pk=owner.pk).order_by("pk").values_list("pk", flat=True)
        )
        plan = [(owner.pk, i) for i in range(args.conversations)]
        plan += [(uid, i) for uid in other_ids for i in range(args.others_conversations)]
        conversations = [
            Conversation(
                owner_id=uid,
                title=text_for(rng, 4, [])[:-1],
                pinned=uid == owner.pk and i % 2000 == 0,
                archived=uid == owner.pk and i % 100 == 50,
            )
            for uid, i in plan
        ]
        Conversation.objects.bulk_create(conversations, batch_size=2000)
        log(f"{len(conversations)} conversations in {time.perf_counter() - started:.1f} s")
        rare = set(rng.sample(range(args.conversations), 8))
        columns = "conversation_id, parent_id, role, content, status, error, seq, attempts, "
        columns += "version, worker, created_at"
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(pg_get_serial_sequence('chat_message', 'id'))")
            next_id = cursor.fetchone()[0]
            with cursor.cursor.copy(f"COPY chat_message (id, {columns}) FROM STDIN") as copy:
                for n, conversation in enumerate(conversations):
                    parent = None
                    for k in range(args.messages):
                        role = "user" if k % 2 == 0 else "assistant"
                        extra = []
                        if rng.random() < 0.33:
                            extra.append(COMMON_WORD)
                        if rng.random() < 0.1:
                            extra.append(SECOND_WORD)
                        if n in rare and k == 3:
                            extra.append(RARE_WORD)
                        content = text_for(rng, 12 if role == "user" else 50, extra)
                        copy.write_row(
                            (
                                next_id,
                                conversation.pk,
                                parent,
                                role,
                                content,
                                "done",
                                "",
                                0,
                                0,
                                0,
                                "",
                                "now",
                            )
                        )
                        parent = next_id
                        next_id += 1
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('chat_message', 'id'), %s)", [next_id]
            )
            # The last message is on screen; activity spread over the past months.
            cursor.execute(
                "UPDATE chat_conversation c SET current_leaf_id = m.leaf,"
                " updated_at = now() - (c.id * interval '7 minutes'),"
                " created_at = now() - (c.id * interval '7 minutes') - interval '1 hour'"
                " FROM (SELECT conversation_id, max(id) AS leaf FROM chat_message"
                "       GROUP BY conversation_id) m WHERE m.conversation_id = c.id"
            )
    load_s = time.perf_counter() - started
    log(f"{Message.objects.count()} messages loaded in {load_s:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"owner_id": owner.pk, "load_s": round(load_s, 1)}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1] * 1000, 1)}


def measure(args: argparse.Namespace, owner_id: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from webui.chat import conversations
    from webui.chat.models import Conversation

    owner = get_user_model().objects.get(pk=owner_id)
    client = Client(HTTP_HOST="localhost")
    client.force_login(owner)
    rng = random.Random(args.seed + 1)
    ids = list(Conversation.objects.filter(owner=owner).values_list("pk", flat=True))
    # A cursor half-way down the sidebar: the keyset page a long scroll reaches.
    deep = conversations.sidebar_page(owner, limit=len(ids) // 2).next_cursor

    def timed(name: str, url: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        for _ in range(3):  # warm-up
            assert client.get(url.format(id=ids[0]), data).status_code == 200
        samples = []
        for _ in range(args.requests):
            target = url.format(id=rng.choice(ids))
            started = time.perf_counter()
            response = client.get(target, data)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (target, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url.format(id=ids[0]), data)
        return {"name": name, **percentiles(samples), "queries": len(queries)}

    results = [
        timed("conversation page /c/<id>/ (sidebar page 1)", "/c/{id}/"),
        timed("conversation page, deep sidebar page", "/c/{id}/", {"older": deep}),
        timed(f"search '{RARE_WORD}' (rare)", "/search/", {"q": RARE_WORD}),
        timed(f"search '{COMMON_WORD}' (in ~1/3 of messages)", "/search/", {"q": COMMON_WORD}),
        timed(
            f"search '{COMMON_WORD} {SECOND_WORD}'",
            "/search/",
            {"q": f"{COMMON_WORD} {SECOND_WORD}"},
        ),
    ]
    from webui.chat.search import search_conversations

    hits = {
        RARE_WORD: len(search_conversations(owner, RARE_WORD)),
        COMMON_WORD: len(search_conversations(owner, COMMON_WORD)),
    }
    return {"results": results, "hits": hits}


def machine() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    return (
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, PostgreSQL {version} on 127.0.0.1"
    )


def main() -> None:
    args = parse_args()
    recreate_database(args.database_url, args.reuse)
    setup_django(args.database_url)
    from webui.chat.models import Conversation, Message

    filled = fill(args)
    figures = {
        "conversations_of_owner": Conversation.objects.filter(owner_id=filled["owner_id"]).count(),
        "conversations": Conversation.objects.count(),
        "messages": Message.objects.count(),
        "load_s": filled["load_s"],
        "requests": args.requests,
        "machine": machine(),
        **measure(args, filled["owner_id"]),
    }
    report(figures, args.json)


def report(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    f = figures
    print(
        f"owner: {f['conversations_of_owner']} conversations; all: {f['conversations']} "
        f"conversations, {f['messages']} messages (loaded in {f['load_s']} s)"
    )
    print(f"{f['machine']}; {f['requests']} timed requests per row, Django test client")
    print()
    print("| request | p50 ms | p95 ms | max ms | SQL queries |")
    print("|---|---|---|---|---|")
    for row in f["results"]:
        print(f"| {row['name']} | {row['p50']} | {row['p95']} | {row['max']} | {row['queries']} |")
    print()
    print(f"search hits (capped at 50): {f['hits']}")


if __name__ == "__main__":
    main()
