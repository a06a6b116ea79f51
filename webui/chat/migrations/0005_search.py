"""Full-text search over conversation titles and message text (webui/chat/search.py).

PostgreSQL: GIN expression indexes on to_tsvector('simple', ...), the exact expressions
django.contrib.postgres's SearchVector(..., config="simple") produces, so queries use them.

SQLite: FTS5 external-content tables over chat_conversation.title and chat_message.content,
kept in sync by triggers. A later migration that makes SQLite rebuild one of those tables
(Django's "remake table" for some ALTERs) drops the triggers: tests/chat/test_search.py
checks they exist after every migration.
"""

from django.db import migrations

POSTGRES_FORWARD = [
    "CREATE INDEX IF NOT EXISTS chat_conversation_title_fts ON chat_conversation "
    "USING GIN (to_tsvector('simple'::regconfig, COALESCE(title, '')))",
    "CREATE INDEX IF NOT EXISTS chat_message_content_fts ON chat_message "
    "USING GIN (to_tsvector('simple'::regconfig, COALESCE(content, '')))",
]
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS chat_message_content_fts",
    "DROP INDEX IF EXISTS chat_conversation_title_fts",
]

_TOKENIZE = "tokenize = 'unicode61 remove_diacritics 2'"


def _sqlite_fts(table: str, column: str) -> list[str]:
    fts = f"{table}_fts"
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5("
        f"{column}, content='{table}', content_rowid='id', {_TOKENIZE})",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ai AFTER INSERT ON {table} BEGIN "
        f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column}); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ad AFTER DELETE ON {table} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.id, old.{column}); "
        "END",
        # Only when the text changes: heartbeats and status updates leave the index alone.
        f"CREATE TRIGGER IF NOT EXISTS {fts}_au AFTER UPDATE OF {column} ON {table} "
        f"WHEN old.{column} IS NOT new.{column} BEGIN "
        f"INSERT INTO {fts}({fts}, rowid, {column}) VALUES ('delete', old.id, old.{column}); "
        f"INSERT INTO {fts}(rowid, {column}) VALUES (new.id, new.{column}); END",
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    ]


SQLITE_FORWARD = _sqlite_fts("chat_conversation", "title") + _sqlite_fts("chat_message", "content")
SQLITE_BACKWARD = [
    f"DROP {kind} IF EXISTS {table}_fts{suffix}"
    for table in ("chat_message", "chat_conversation")
    for kind, suffix in (("TRIGGER", "_ai"), ("TRIGGER", "_ad"), ("TRIGGER", "_au"), ("TABLE", ""))
]


def _run(schema_editor, statements_by_vendor):
    statements = statements_by_vendor.get(schema_editor.connection.vendor, [])
    for statement in statements:
        schema_editor.execute(statement, params=None)


def forward(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES_FORWARD, "sqlite": SQLITE_FORWARD})


def backward(apps, schema_editor):
    _run(schema_editor, {"postgresql": POSTGRES_BACKWARD, "sqlite": SQLITE_BACKWARD})


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0004_team"),
    ]

    operations = [
        migrations.RunPython(forward, backward),
    ]
