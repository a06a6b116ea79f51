"""Admin pages in the app: people, invites, groups, model access, sign-up settings.
Every view is admin-only (404 for anyone else); changes are POSTs."""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from inference.quantize import TARGET_TYPES
from webui import config
from webui.accounts import groups, invites, people
from webui.accounts.decorators import admin_required
from webui.accounts.models import Role, SignupMode, SiteSettings
from webui.chat import model_library, model_settings
from webui.chat.models import LanguageModel, Pool
from webui.library import actions as library_actions
from webui.library import jobs as library_jobs
from webui.library import selectors as library_selectors
from webui.library import uploads as library_uploads

PEOPLE_PER_PAGE = 50


@admin_required
def people_page(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")[:100]
    page = Paginator(people.search_people(query), PEOPLE_PER_PAGE).get_page(request.GET.get("page"))
    context = {"page": page, "q": query, "pending": people.pending_count()}
    return render(request, "manage/people.html", context)


def _person(user_id: int):
    return get_object_or_404(get_user_model().objects.select_related("profile"), pk=user_id)


PERSON_ACTIONS = {
    "approve": lambda actor, person: people.approve(person),
    "deactivate": people.deactivate,
    "reactivate": lambda actor, person: people.reactivate(person),
    "promote": lambda actor, person: people.promote(person),
    "demote": people.demote,
}


@admin_required
@require_POST
def person_action(request: HttpRequest, user_id: int, action: str) -> HttpResponse:
    person = _person(user_id)
    if action == "reset-password":
        link = request.build_absolute_uri(people.password_reset_path(person))
        return render(request, "manage/reset_link.html", {"person": person, "link": link})
    if action not in PERSON_ACTIONS:
        return redirect("manage:people")
    try:
        PERSON_ACTIONS[action](request.user, person)
    except ValidationError as exc:
        flash.error(request, " ".join(exc.messages))
    else:
        flash.success(request, f"{person.get_username()}: {action} done.")
    return redirect("manage:people")


@admin_required
def person_delete(request: HttpRequest, user_id: int) -> HttpResponse:
    person = _person(user_id)
    if request.method == "POST":
        try:
            people.delete(request.user, person)
        except ValidationError as exc:
            flash.error(request, " ".join(exc.messages))
        else:
            flash.success(request, f"Deleted {person.get_username()} and their conversations.")
        return redirect("manage:people")
    count = person.conversations.count()
    return render(request, "manage/person_delete.html", {"person": person, "count": count})


@admin_required
def invites_page(request: HttpRequest) -> HttpResponse:
    new_link = ""
    if request.method == "POST":
        try:
            days = int(request.POST.get("days") or SiteSettings.load().invite_days)
            _, token = invites.create_invite(
                created_by=request.user,
                role=request.POST.get("role", Role.USER),
                note=request.POST.get("note", ""),
                days=days,
            )
        except (ValueError, ValidationError) as exc:
            message = " ".join(exc.messages) if isinstance(exc, ValidationError) else "Bad days."
            flash.error(request, message)
        else:
            new_link = request.build_absolute_uri(f"/invite/{token}/")
    context = {
        "invites": invites.usable_invites().select_related("created_by"),
        "new_link": new_link,
        "roles": Role.choices,
        "invite_days": SiteSettings.load().invite_days,
    }
    return render(request, "manage/invites.html", context)


@admin_required
@require_POST
def invite_revoke(request: HttpRequest, invite_id: int) -> HttpResponse:
    invites.revoke_invite(invite_id)
    flash.success(request, "Invite revoked.")
    return redirect("manage:invites")


@admin_required
def settings_page(request: HttpRequest) -> HttpResponse:
    site = SiteSettings.load()
    if request.method == "POST":
        try:
            days = int(request.POST.get("invite_days") or site.invite_days)
            invites.set_signup_mode(request.POST.get("signup_mode", ""), days)
        except (ValueError, ValidationError) as exc:
            message = " ".join(exc.messages) if isinstance(exc, ValidationError) else "Bad days."
            flash.error(request, message)
        else:
            flash.success(request, "Settings saved.")
        return redirect("manage:settings")
    return render(request, "manage/settings.html", {"site": site, "modes": SignupMode.choices})


@admin_required
def groups_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            group = groups.create_group(request.POST.get("name", ""))
        except ValidationError as exc:
            flash.error(request, " ".join(exc.messages))
        else:
            return redirect("manage:group", group_id=group.pk)
    return render(request, "manage/groups.html", {"groups": groups.groups_overview()})


@admin_required
def group_page(request: HttpRequest, group_id: int) -> HttpResponse:
    group = get_object_or_404(Group, pk=group_id)
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "add":
                groups.add_member(group, request.POST.get("username", ""))
            elif action == "remove":
                groups.remove_member(group, int(request.POST.get("user_id", "0")))
            elif action == "models":
                groups.set_group_models(group, _ids(request.POST.getlist("models")))
            elif action == "delete":
                groups.delete_group(group)
                flash.success(request, f"Deleted the group {group.name}.")
                return redirect("manage:groups")
        except ValidationError as exc:
            flash.error(request, " ".join(exc.messages))
        return redirect("manage:group", group_id=group.pk)
    context = {
        "group": group,
        "members": group.user_set.order_by("username"),
        "models": LanguageModel.objects.order_by("name"),
        "group_models": set(group.language_models.values_list("pk", flat=True)),
    }
    return render(request, "manage/group.html", context)


@admin_required
def models_page(request: HttpRequest) -> HttpResponse:
    """Who may use which model: chosen groups, or everyone."""
    if request.method == "POST":
        chosen = _ids([request.POST.get("model", "")])
        model = get_object_or_404(LanguageModel, pk=chosen[0] if chosen else 0)
        groups.set_model_groups(
            model, _ids(request.POST.getlist("groups")), request.POST.get("enabled") == "on"
        )
        flash.success(request, f"Saved who may use {model.name}.")
        return redirect("manage:models")
    rows = library_selectors.library_rows()
    context = {
        "rows": rows,
        "models": [row.model for row in rows],
        "groups": Group.objects.order_by("name"),
        "files": model_library.unregistered_ggufs(),
        "folders": model_library.hf_folders(),
        "pools": Pool.choices,
        "chat_formats": model_library.CHAT_FORMATS,
        "jobs": [library_jobs.describe(job) for job in library_jobs.recent_jobs()],
        "quantizable": library_actions.quantizable_models(),
        "target_types": TARGET_TYPES,
        "outtypes": library_actions.OUTTYPES,
        "default_installed": library_actions.default_model_installed(),
        "unfinished_uploads": library_uploads.resumable(),
        "jobs_worker_alive": library_jobs.worker_alive(),
        "max_upload": config.MAX_UPLOAD_BYTES,
    }
    return render(request, "manage/models.html", context)


@admin_required
def model_page(request: HttpRequest, model_id: int) -> HttpResponse:
    """One model's settings: name, pool, loading, default sampling, system prompt."""
    model = get_object_or_404(LanguageModel, pk=model_id)
    if request.method == "POST":
        try:
            model_settings.update_model_settings(model, request.POST)
        except model_settings.ModelSettingsError as exc:
            flash.error(request, str(exc))
        else:
            flash.success(request, f"Saved the settings of {model.name}.")
        return redirect("manage:model", model_id=model.pk)
    context = {
        "model": model,
        "pools": Pool.choices,
        "chat_formats": model_library.CHAT_FORMATS,
        "load_fields": model_settings.LOAD_FIELDS,
        "sampling_fields": list(model_settings.SAMPLING_FIELDS),
    }
    return render(request, "manage/model.html", context)


@admin_required
@require_POST
def register_model(request: HttpRequest) -> HttpResponse:
    """Register a GGUF that is already in the models folder, once its header checks out."""
    try:
        model = model_library.register_gguf(
            name=request.POST.get("name", ""),
            relative_path=request.POST.get("file", ""),
            pool=request.POST.get("pool", ""),
            chat_format=request.POST.get("chat_format", ""),
        )
    except model_library.ModelFileError as exc:
        flash.error(request, str(exc))
    else:
        flash.success(request, f"Registered {model.name}.")
    return redirect("manage:models")


def _ids(values: list[str]) -> list[int]:
    return [int(value) for value in values if value.isdigit()]
