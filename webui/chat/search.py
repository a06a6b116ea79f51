"""Full-text search over a person's own conversations: titles and message text.

One public function, ``search_conversations``; it picks the implementation by database:
PostgreSQL full-text search (django.contrib.postgres, GIN expression indexes) or SQLite
FTS5 (external-content tables kept in sync by triggers). Both are created by migration
0005_search.

Queries are words, not a query language: the person's input is cut into words (letters
and digits), and a conversation matches when its title, or one of its messages, contains
every word (as a word prefix: "poem" finds "poems"). Nothing the person types reaches the
database as query syntax, so input such as ``"`` or ``AND(`` is just an empty or literal
search, never an error.

Archived conversations are included (search is how they are found again); results are
newest first, like the sidebar.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Q

from webui.chat.models import Conversation, Message

DEFAULT_LIMIT = 50
MAX_TERMS = 12
MAX_TERM_CHARS = 64
# Snippet highlight markers: control characters that never appear in what people type, so
# the highlighted parts can be split out and the template escapes every part.
_START, _STOP = "\x02", "\x03"
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class SnippetPart:
    text: str
    hit: bool = False


@dataclass(frozen=True)
class SearchHit:
    """One matching conversation. ``snippet`` is empty when only the title matched."""

    conversation_id: int
    title: str
    archived: bool
    pinned: bool
    updated_at: datetime
    snippet: list[SnippetPart] = field(default_factory=list)


def search_terms(query: str) -> list[str]:
    """The words of a query: letters and digits only, lowercased, at most MAX_TERMS."""
    words = _WORD.findall((query or "").lower())
    return [word[:MAX_TERM_CHARS] for word in words[:MAX_TERMS]]


def search_conversations(
    user: AbstractBaseUser | AnonymousUser, query: str, limit: int = DEFAULT_LIMIT
) -> list[SearchHit]:
    """The person's conversations whose title or messages contain every word of ``query``
    (as word prefixes), newest first, each with a short snippet of a matching message."""
    terms = search_terms(query)
    if not terms or user.pk is None or limit < 1:
        return []
    if connection.vendor == "postgresql":
        return _search_postgresql(user.pk, terms, limit)
    if connection.vendor == "sqlite":
        return _search_sqlite(user.pk, terms, limit)
    raise NotImplementedError(f"Search supports PostgreSQL and SQLite, not {connection.vendor}.")


def _parts(marked: str) -> list[SnippetPart]:
    """Split text carrying _START/_STOP markers into plain and highlighted parts."""
    parts: list[SnippetPart] = []
    for chunk in marked.split(_START):
        hit, sep, rest = chunk.partition(_STOP)
        if sep:
            if hit:
                parts.append(SnippetPart(hit, True))
            chunk = rest
        if chunk:
            parts.append(SnippetPart(chunk.replace(_STOP, "")))
    return parts


def _hits(conversations: list[Conversation], snippets: dict[int, str]) -> list[SearchHit]:
    return [
        SearchHit(
            conversation_id=c.pk,
            title=str(c),
            archived=c.archived,
            pinned=c.pinned,
            updated_at=c.updated_at,
            snippet=_parts(snippets[c.pk]) if c.pk in snippets else [],
        )
        for c in conversations
    ]


def _owned_newest_first(owner_id: int, condition: Q, limit: int) -> list[Conversation]:
    return list(
        Conversation.objects.filter(condition, owner_id=owner_id)
        .only("id", "title", "archived", "pinned", "updated_at")
        .order_by("-updated_at", "-id")[:limit]
    )


# PostgreSQL ---------------------------------------------------------------------------


def _search_postgresql(owner_id: int, terms: list[str], limit: int) -> list[SearchHit]:
    from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchVector

    # Terms are letters and digits only, so this raw tsquery has no syntax of the user's.
    query = SearchQuery(
        " & ".join(f"{term}:*" for term in terms), search_type="raw", config="simple"
    )
    # Exactly the indexed expressions (migration 0005), so both subqueries are GIN scans.
    titled = (
        Conversation.objects.annotate(fts=SearchVector("title", config="simple"))
        .filter(fts=query, owner_id=owner_id)
        .values("pk")
    )
    mentioned = (
        Message.objects.annotate(fts=SearchVector("content", config="simple"))
        .filter(fts=query)
        .values("conversation_id")
    )
    conversations = _owned_newest_first(owner_id, Q(pk__in=titled) | Q(pk__in=mentioned), limit)
    if not conversations:
        return []
    first_matches = (
        Message.objects.annotate(fts=SearchVector("content", config="simple"))
        .filter(fts=query, conversation_id__in=[c.pk for c in conversations])
        .order_by("conversation_id", "id")
        .distinct("conversation_id")
        .annotate(
            snippet=SearchHeadline(
                "content",
                query,
                config="simple",
                start_sel=_START,
                stop_sel=_STOP,
                max_words=24,
                min_words=12,
                max_fragments=1,
                fragment_delimiter=" … ",
            )
        )
        .values_list("conversation_id", "snippet")
    )
    return _hits(conversations, dict(first_matches))


# SQLite -------------------------------------------------------------------------------


def _fts5_query(terms: list[str]) -> str:
    """Every term as a quoted FTS5 string with a prefix star (implicit AND between them).
    Quoting makes any character literal; doubling quotes escapes them inside."""
    return " ".join('"{}"*'.format(term.replace('"', '""')) for term in terms)


def _search_sqlite(owner_id: int, terms: list[str], limit: int) -> list[SearchHit]:
    match = _fts5_query(terms)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id FROM chat_conversation c WHERE c.owner_id = %s AND ("
            " c.id IN (SELECT rowid FROM chat_conversation_fts"
            "          WHERE chat_conversation_fts MATCH %s)"
            " OR c.id IN (SELECT m.conversation_id FROM chat_message_fts"
            "             JOIN chat_message m ON m.id = chat_message_fts.rowid"
            "             WHERE chat_message_fts MATCH %s))"
            " ORDER BY c.updated_at DESC, c.id DESC LIMIT %s",
            [owner_id, match, match, limit],
        )
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return []
    conversations = _owned_newest_first(owner_id, Q(pk__in=ids), limit)
    snippets: dict[int, str] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.conversation_id,"
            " snippet(chat_message_fts, 0, %s, %s, ' … ', 24)"
            " FROM chat_message_fts JOIN chat_message m ON m.id = chat_message_fts.rowid"
            " WHERE chat_message_fts MATCH %s"
            " AND m.conversation_id IN (SELECT value FROM json_each(%s))"
            " ORDER BY m.conversation_id, m.id",
            [_START, _STOP, match, json.dumps(ids)],
        )
        for conversation_id, snippet in cursor.fetchall():
            snippets.setdefault(conversation_id, snippet)
    return _hits(conversations, snippets)
