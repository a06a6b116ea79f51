from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from webui.accounts import services

pytestmark = pytest.mark.django_db

STRONG = "a-long-unusual-passphrase-42"


def test_setup_link_creates_the_first_admin_once(client):
    token = services.make_setup_token()
    url = f"/setup/{token}/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"username": "root", "password": STRONG, "password2": STRONG})
    assert response.status_code == 302
    admin = get_user_model().objects.get()
    assert admin.is_superuser and admin.is_staff and admin.check_password(STRONG)
    # Once any user exists, the same link (and any other) is dead.
    client.logout()
    assert client.get(url).status_code == 404
    assert (
        client.post(url, {"username": "evil", "password": STRONG, "password2": STRONG}).status_code
        == 404
    )
    assert get_user_model().objects.count() == 1


def test_forged_or_weak_setup_attempts_are_refused(client):
    assert client.get("/setup/not-a-token/").status_code == 404
    token = services.make_setup_token()
    response = client.post(
        f"/setup/{token}/", {"username": "root", "password": "123", "password2": "123"}
    )
    assert response.status_code == 400
    assert "too short" in response.content.decode()
    assert not get_user_model().objects.exists()


def test_setup_link_command_refuses_when_users_exist(alice, capsys):
    with pytest.raises(CommandError, match="createsuperuser"):
        call_command("corral_setup_link")


def test_setup_link_command_prints_a_working_link(client, capsys):
    call_command("corral_setup_link", base_url="http://corral.test")
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://corral.test/setup/")
    assert client.get(link.removeprefix("http://corral.test")).status_code == 200
