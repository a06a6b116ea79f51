"""Sign-up modes, invites, approval, and what admins do to people, through the pages."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.utils import timezone

from tests.conftest import PASSWORD
from webui.accounts import invites, people
from webui.accounts.models import Invite, Profile, SignupMode, SiteSettings
from webui.chat import services, stop_flags
from webui.chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

STRONG = "a-long-unusual-passphrase-42"


def _mode(mode: str) -> None:
    SiteSettings.objects.update_or_create(pk=1, defaults={"signup_mode": mode})


def _signup(client: Client, url: str, username: str):
    return client.post(url, {"username": username, "password1": STRONG, "password2": STRONG})


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_user(
        "root", password=PASSWORD, is_staff=True, is_superuser=True
    )


@pytest.fixture
def admin_client(admin) -> Client:
    client = Client()
    client.force_login(admin)
    return client


def test_closed_mode_refuses_sign_up_without_an_invite(client):
    _mode(SignupMode.CLOSED)
    assert client.get("/signup/").status_code == 403
    assert _signup(client, "/signup/", "eve").status_code == 403
    assert not get_user_model().objects.filter(username="eve").exists()


def test_open_mode_lets_anyone_in_at_once(client):
    _mode(SignupMode.OPEN)
    response = _signup(client, "/signup/", "dora")
    assert response.status_code == 302
    assert client.get("/").status_code == 200  # chatting, no waiting page
    dora = get_user_model().objects.get(username="dora")
    assert dora.profile.approved and not dora.is_staff


def test_approval_mode_waits_until_an_admin_approves(client, admin_client):
    _mode(SignupMode.APPROVAL)
    assert _signup(client, "/signup/", "dora").status_code == 302
    dora = get_user_model().objects.get(username="dora")
    assert not dora.profile.approved
    # Every page but the waiting page (and sign-out) sends them to it.
    for path in ("/", "/account/", "/usage/", "/c/new/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"] == "/waiting/", path
    assert "Waiting for approval" in client.get("/waiting/").content.decode()
    with pytest.raises(PermissionDenied):
        services.send_message(user=dora, conversation_id=None, text="hi", model_id=None)
    page = admin_client.get("/manage/people/").content.decode()
    assert "1 account waiting for approval" in page
    admin_client.post(f"/manage/people/{dora.pk}/do/approve/")
    assert client.get("/").status_code == 200
    assert client.get("/waiting/").status_code == 302


def test_an_invite_works_once_carries_its_role_and_expires(client, admin_client, admin):
    _mode(SignupMode.CLOSED)
    page = admin_client.post("/manage/invites/", {"role": "admin", "days": "7", "note": "Ann"})
    link = re.search(r'value="(http://testserver/invite/[^"]+)"', page.content.decode()).group(1)
    path = link.removeprefix("http://testserver")
    assert client.get(path).status_code == 200
    assert _signup(client, path, "ann").status_code == 302
    ann = get_user_model().objects.get(username="ann")
    assert ann.is_staff and ann.profile.approved
    other = Client()
    assert other.get(path).status_code == 404  # one-time
    assert _signup(other, path, "mallory").status_code == 404
    # Expired and revoked invites are dead too.
    invite, token = invites.create_invite(created_by=admin)
    Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert other.get(f"/invite/{token}/").status_code == 404
    invite, token = invites.create_invite(created_by=admin)
    admin_client.post(f"/manage/invites/{invite.pk}/revoke/")
    assert other.get(f"/invite/{token}/").status_code == 404


def test_an_invite_dies_with_its_creators_rights(client, admin, alice, django_user_model):
    """A deactivated admin's links stop working; a demoted admin's admin invites too (a
    link kept by someone who lost the role must not make a new admin)."""
    _mode(SignupMode.CLOSED)
    other = django_user_model.objects.create_user("root2", password="x", is_staff=True)
    _, kept_admin = invites.create_invite(created_by=other, role="admin")
    _, kept_user = invites.create_invite(created_by=other)
    people.demote(admin, other)
    assert client.get(f"/invite/{kept_admin}/").status_code == 404
    assert _signup(client, f"/invite/{kept_admin}/", "rogue").status_code == 404
    assert client.get(f"/invite/{kept_user}/").status_code == 200  # still a person's invite
    people.deactivate(admin, other)
    assert client.get(f"/invite/{kept_user}/").status_code == 404
    assert not get_user_model().objects.filter(username="rogue").exists()
    # Another admin's invites are untouched.
    _, token = invites.create_invite(created_by=admin, role="admin")
    assert _signup(client, f"/invite/{token}/", "ann").status_code == 302
    # A deleted admin's kept links die with the account.
    client.logout()  # signed in as ann
    gone = django_user_model.objects.create_user("root3", password="x", is_staff=True)
    _, kept_admin = invites.create_invite(created_by=gone, role="admin")
    _, kept_user = invites.create_invite(created_by=gone)
    assert client.get(f"/invite/{kept_admin}/").status_code == 200
    gone.delete()
    for token in (kept_admin, kept_user):
        assert client.get(f"/invite/{token}/").status_code == 404
        assert _signup(client, f"/invite/{token}/", "rogue2").status_code == 404
    assert not get_user_model().objects.filter(username="rogue2").exists()


def test_invited_people_wait_for_approval_in_approval_mode(client, admin):
    _mode(SignupMode.APPROVAL)
    _, token = invites.create_invite(created_by=admin)
    _signup(client, f"/invite/{token}/", "ann")
    assert not Profile.objects.get(user__username="ann").approved


def test_admins_change_settings_and_only_admins(admin_client, alice):
    admin_client.post("/manage/settings/", {"signup_mode": "open", "invite_days": "3"})
    site = SiteSettings.load()
    assert site.signup_mode == "open" and site.invite_days == 3
    person = Client()
    person.force_login(alice)
    assert person.post("/manage/settings/", {"signup_mode": "closed"}).status_code == 404
    assert SiteSettings.load().signup_mode == "open"


def test_people_page_searches_and_acts(admin_client, alice, bob):
    page = admin_client.get("/manage/people/?q=ali").content.decode()
    assert 'data-username="alice"' in page and 'data-username="bob"' not in page
    admin_client.post(f"/manage/people/{alice.pk}/do/promote/")
    alice.refresh_from_db()
    assert alice.is_staff and alice.is_superuser
    admin_client.post(f"/manage/people/{alice.pk}/do/demote/")
    admin_client.post(f"/manage/people/{alice.pk}/do/deactivate/")
    alice.refresh_from_db()
    assert not alice.is_staff and not alice.is_active
    admin_client.post(f"/manage/people/{alice.pk}/do/reactivate/")
    alice.refresh_from_db()
    assert alice.is_active


def test_an_admin_cannot_lock_themselves_out(admin_client, admin):
    for action in ("demote", "deactivate"):
        admin_client.post(f"/manage/people/{admin.pk}/do/{action}/")
    admin_client.post(f"/manage/people/{admin.pk}/delete/")
    admin.refresh_from_db()
    assert admin.is_staff and admin.is_active


def test_deactivation_signs_the_person_out_of_every_session(admin_client, alice):
    person = Client()
    person.post("/login/", {"username": "alice", "password": PASSWORD})
    assert person.get("/").status_code == 200
    admin_client.post(f"/manage/people/{alice.pk}/do/deactivate/")
    assert person.get("/").status_code == 302
    assert not Session.objects.filter(session_key=person.session.session_key).exists()


def test_reset_link_works_once_and_never_shows_a_password(admin_client, alice):
    page = admin_client.post(f"/manage/people/{alice.pk}/do/reset-password/").content.decode()
    assert PASSWORD not in page
    link = re.search(r'value="http://testserver(/reset/[^"]+)"', page).group(1)
    person = Client()
    response = person.get(link, follow=True)  # Django swaps the token for a session mark
    assert "Set a new password" in response.content.decode()
    form_url = response.redirect_chain[-1][0]
    new = "another-long-passphrase-77"
    response = person.post(form_url, {"new_password1": new, "new_password2": new})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)
    assert "does not work any more" in Client().get(link, follow=True).content.decode()


def test_deactivating_someone_stops_their_answers(admin, alice, bob, gemma):
    """Queued answers end, running ones are told to stop (their worker honours the flag,
    or the reaper does): a deactivated account's work does not go on using the workers;
    other people's answers are untouched."""
    from workers import claims

    _, _, running = services.send_message(
        user=alice, conversation_id=None, text="one", model_id=gemma.pk
    )
    claimed = claims.claim_next(gemma.pool, worker="w")
    assert claimed is not None and claimed.pk == running.pk
    _, _, queued = services.send_message(
        user=alice, conversation_id=None, text="two", model_id=gemma.pk
    )
    _, _, others = services.send_message(
        user=bob, conversation_id=None, text="three", model_id=gemma.pk
    )
    try:
        people.deactivate(admin, alice)
        queued.refresh_from_db()
        assert queued.status == Message.Status.STOPPED
        assert stop_flags.stop_requested(running.pk, 1)
        others.refresh_from_db()
        assert others.status == Message.Status.QUEUED
    finally:
        stop_flags.clear(running.pk, 1)


def test_delete_needs_confirmation_and_takes_conversations(admin_client, alice, gemma):
    services.send_message(user=alice, conversation_id=None, text="hi", model_id=gemma.pk)
    page = admin_client.get(f"/manage/people/{alice.pk}/delete/").content.decode()
    assert "1 conversation" in page
    assert get_user_model().objects.filter(pk=alice.pk).exists()
    admin_client.post(f"/manage/people/{alice.pk}/delete/")
    assert not get_user_model().objects.filter(pk=alice.pk).exists()
    assert not Conversation.objects.exists()


def test_people_change_their_password_and_sign_out_everywhere(alice):
    here, elsewhere = Client(), Client()
    for client in (here, elsewhere):
        client.post("/login/", {"username": "alice", "password": PASSWORD})
    new = "another-long-passphrase-77"
    here.post(
        "/account/",
        {"form": "password", "old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert here.get("/").status_code == 200  # this session stays
    assert elsewhere.get("/").status_code == 302  # the other one is signed out
    here.post("/account/sign-out-everywhere/")
    assert here.get("/").status_code == 302


def test_groups_decide_who_sees_a_model(admin_client, alice, bob, gemma):
    from webui.chat.models import LanguageModel

    secret = LanguageModel.objects.create(
        name="secret-model", backend="llama_cpp", target=gemma.target, pool="gpu"
    )
    admin_client.post("/manage/groups/", {"name": "Research"})
    research = Group.objects.get(name="Research")
    admin_client.post(f"/manage/groups/{research.pk}/", {"action": "add", "username": "bob"})
    admin_client.post(f"/manage/groups/{research.pk}/", {"action": "models", "models": [secret.pk]})
    assert list(secret.groups.all()) == [research]
    alice_client, bob_client = Client(), Client()
    alice_client.force_login(alice)
    bob_client.force_login(bob)
    assert "secret-model" not in alice_client.get("/").content.decode()
    assert "secret-model" in bob_client.get("/").content.decode()
    response = alice_client.post("/c/new/", {"text": "hi", "model": secret.pk})
    assert response.status_code == 400 and "not available" in response.content.decode()
    assert not Conversation.objects.filter(owner=alice).exists()
    # From the model's side: open it to everyone again.
    admin_client.post("/manage/models/", {"model": secret.pk, "enabled": "on"})
    assert "secret-model" in alice_client.get("/").content.decode()


def test_changes_made_in_djangos_admin_sign_the_person_out_too(admin_client, alice):
    from webui.accounts.models import UserSession

    person = Client()
    person.post("/login/", {"username": "alice", "password": PASSWORD})
    assert UserSession.objects.filter(user=alice).count() == 1
    page = admin_client.get(f"/admin/auth/user/{alice.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "password"}
    data.update(
        {
            "username": "alice",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "last_login_0": "",
            "last_login_1": "",
            "groups": [],
            "user_permissions": [],
        }
    )
    data.pop("is_active", None)  # unticked: deactivated
    data.pop("date_joined", None)
    data.pop("last_login", None)
    response = admin_client.post(f"/admin/auth/user/{alice.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    alice.refresh_from_db()
    assert not alice.is_active
    assert person.get("/").status_code == 302
    assert not UserSession.objects.filter(user=alice).exists()


def test_a_conversation_whose_model_was_restricted_says_so_and_refuses_it(alice, gemma):
    from webui.chat.models import Message

    gemma.pool = "gpu"
    gemma.save()
    conversation, question, answer = services.send_message(
        user=alice, conversation_id=None, text="hi", model_id=gemma.pk
    )
    Message.objects.filter(pk=answer.pk).update(status=Message.Status.DONE, content="Hello")
    gemma.groups.add(Group.objects.create(name="Research"))  # alice is not in it
    client = Client()
    client.force_login(alice)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "is no longer available to you" in page
    assert f'<option value="{gemma.pk}"' not in page
    for attempt in (
        lambda: services.send_message(
            user=alice, conversation_id=conversation.pk, text="again", model_id=gemma.pk
        ),
        lambda: services.regenerate(user=alice, message_id=answer.pk, model_id=gemma.pk),
        lambda: services.edit_message(
            user=alice, message_id=question.pk, text="edited", model_id=gemma.pk
        ),
    ):
        with pytest.raises(ValidationError, match="not available"):
            attempt()
    assert conversation.messages.count() == 2
