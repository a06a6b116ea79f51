"""Groups of people, and which models each group may use. A model with no groups is open
to everyone; membership changes apply to the next message (every send re-checks)."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet

from webui.chat.models import LanguageModel


def groups_overview() -> QuerySet[Group]:
    return Group.objects.annotate(
        members=Count("user", distinct=True), models=Count("language_models", distinct=True)
    ).order_by("name")


def create_group(name: str) -> Group:
    name = " ".join(name.split())
    if not name:
        raise ValidationError("Give the group a name.")
    if len(name) > 150:
        raise ValidationError("Group names are at most 150 characters.")
    try:
        with transaction.atomic():
            return Group.objects.create(name=name)
    except IntegrityError:
        raise ValidationError(f"A group named “{name}” exists already.") from None


def delete_group(group: Group) -> None:
    group.delete()


def add_member(group: Group, username: str) -> None:
    person = get_user_model().objects.filter(username__iexact=username.strip()).first()
    if person is None:
        raise ValidationError(f"Nobody is called “{username.strip()}”.")
    group.user_set.add(person)


def remove_member(group: Group, user_id: int) -> None:
    group.user_set.remove(user_id)


def set_group_models(group: Group, model_ids: Iterable[int]) -> None:
    """The models restricted to this group, among others (a model in no group is open)."""
    group.language_models.set(LanguageModel.objects.filter(pk__in=list(model_ids)))


def set_model_groups(model: LanguageModel, group_ids: Iterable[int], enabled: bool) -> None:
    """Who may use ``model``: these groups, or everyone when there are none."""
    with transaction.atomic():
        model.groups.set(Group.objects.filter(pk__in=list(group_ids)))
        if model.enabled != enabled:
            model.enabled = enabled
            model.save(update_fields=["enabled"])
