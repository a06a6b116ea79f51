"""HTTP edge of usage and quotas: people's own usage, everyone's for admins, and the
admins' quota forms. Figures come from webui.accounts.usage, limits from quotas."""

from __future__ import annotations

from django.contrib import messages as flash
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from webui.accounts import quotas, usage
from webui.accounts.decorators import admin_required
from webui.accounts.forms_quota import QuotaForm


def my_usage(request: HttpRequest) -> HttpResponse:
    """The signed-in person's own figures; nobody else's can be asked for here."""
    period = usage.period_from(request.GET.get("period"))
    return render(request, "accounts/usage.html", usage.personal_report(request.user, period))


@admin_required
def everyone_usage(request: HttpRequest) -> HttpResponse:
    period = usage.period_from(request.GET.get("period"))
    sort = usage.sort_from(request.GET.get("sort"))
    if request.GET.get("format") == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        filename = usage.csv_filename(period)
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        usage.write_people_csv(response, usage.per_person(period, sort))
        return response
    person = None
    if request.GET.get("person", "").isdigit():
        person = get_object_or_404(get_user_model(), pk=int(request.GET["person"]))
    context = usage.everyone_report(period, sort, person)
    return render(request, "accounts/usage_everyone.html", context)


def _quota_page(request: HttpRequest, owner: dict, context: dict) -> HttpResponse:
    """GET shows the form; POST stores it (all blank removes the level's quota)."""
    data = request.POST if request.method == "POST" else None
    form = QuotaForm(data, initial=quotas.quota_values(**owner))
    if request.method == "POST" and form.is_valid():
        quotas.set_quota(**owner, **form.cleaned_data)
        flash.success(request, "Quota saved.")
        return redirect(request.path)
    status = 400 if form.is_bound else 200
    defaults = {kind: quotas.site_default(kind) for kind in quotas.KINDS}
    context = {**context, "form": form, "defaults": defaults}
    return render(request, "accounts/quota_form.html", context, status=status)


@admin_required
def person_quota(request: HttpRequest, user_id: int) -> HttpResponse:
    person = get_object_or_404(get_user_model(), pk=user_id)
    context = {
        "person": person,
        "limits": quotas.effective_limits(person),
        "now": quotas.current_usage(person),
        "groups": person.groups.order_by("name"),
    }
    return _quota_page(request, {"user": person}, context)


@admin_required
def group_quota(request: HttpRequest, group_id: int) -> HttpResponse:
    group = get_object_or_404(Group, pk=group_id)
    context = {"group": group, "members": group.user_set.order_by("username")}
    return _quota_page(request, {"group": group}, context)
