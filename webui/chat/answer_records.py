"""The usage ledger: one AnswerRecord per admitted answer, written when the answer is
queued and brought up to date when it ends. Quotas and usage pages read only these."""

from __future__ import annotations

from webui.chat.models import AnswerRecord, Conversation, Message


def record_admitted(answer: Message, conversation: Conversation) -> None:
    """Call in the transaction that queues ``answer``."""
    AnswerRecord.objects.create(
        owner_id=conversation.owner_id,
        answer=answer,
        model_id=answer.model_id,
        created_at=answer.created_at,
    )


def record_outcome(answer: Message) -> None:
    """Copy what the ended ``answer`` used (tokens, start and finish) into its record."""
    AnswerRecord.objects.filter(answer_id=answer.pk).update(
        started_at=answer.started_at,
        finished_at=answer.finished_at,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        time_to_first_token_ms=answer.time_to_first_token_ms,
        tokens_per_second=answer.tokens_per_second,
    )
