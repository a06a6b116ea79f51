"""Sign-in throttling (django-axes): wrong passwords lock a username from one address, the
lockout page says why, admins see and lift lockouts, the admin site is throttled too."""

from __future__ import annotations

import re

import httpx
import pytest
from django.conf import settings
from django.http import HttpRequest
from django.test import Client

from tests.conftest import PASSWORD
from webui.accounts import lockouts

pytestmark = pytest.mark.django_db

WRONG = "not-the-password"


def message() -> str:
    minutes = lockouts.cooloff_minutes()
    return (
        "Too many failed sign-ins for this username from your address. "
        f"Try again in {minutes} minutes, or ask an admin to unlock it."
    )


def sign_in(client: Client, username: str, password: str, path: str = "/login/", **extra):
    return client.post(path, {"username": username, "password": password}, **extra)


def fail_until_locked(client: Client, username: str, path: str = "/login/", **extra) -> list[int]:
    """Wrong passwords up to the limit; the statuses the person saw."""
    return [
        sign_in(client, username, WRONG, path, **extra).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT)
    ]


def signed_in(client: Client) -> bool:
    return client.get("/").status_code == 200


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_user(
        "root", password=PASSWORD, is_staff=True, is_superuser=True
    )


def test_wrong_passwords_lock_that_username_from_that_address(client, alice, bob):
    statuses = fail_until_locked(client, "alice")
    # Each failure but the last shows the form again; the last one locks.
    assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]

    response = sign_in(client, "alice", PASSWORD)  # even the right password
    assert response.status_code == 429
    assert message() in response.content.decode()
    assert not signed_in(client)

    # Another username from the same address is not locked...
    assert sign_in(Client(), "bob", PASSWORD).status_code == 302
    # ...nor the same username from another address.
    elsewhere = Client(REMOTE_ADDR="192.0.2.7")
    assert sign_in(elsewhere, "alice", PASSWORD).status_code == 302
    assert signed_in(elsewhere)


def test_a_success_forgets_earlier_failures(client, alice):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "alice", WRONG).status_code == 200
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "alice", WRONG).status_code == 200
    assert sign_in(client, "alice", PASSWORD).status_code == 302


def test_admin_login_is_throttled_too(client, admin):
    statuses = fail_until_locked(client, "root", "/admin/login/")
    assert statuses[-1] == 429
    response = sign_in(client, "root", PASSWORD, "/admin/login/")
    assert response.status_code == 429
    assert message() in response.content.decode()
    assert client.get("/admin/").status_code == 302  # still not signed in
    # The same lockout holds on the app's own sign-in page.
    assert sign_in(client, "root", PASSWORD).status_code == 429


def test_admin_sees_and_lifts_a_lockout(client, alice, admin):
    attacker = Client(REMOTE_ADDR="198.51.100.23")
    fail_until_locked(attacker, "alice")
    assert sign_in(attacker, "alice", PASSWORD).status_code == 429

    client.force_login(admin)
    page = client.get("/manage/lockouts/")
    assert page.status_code == 200
    rows = re.findall(r'<tr data-username="([^"]*)">(.*?)</tr>', page.content.decode(), re.S)
    assert [(name, "198.51.100.23" in row, ">Unlock</button>" in row) for name, row in rows] == [
        ("alice", True, True)
    ]

    unlocked = client.post("/manage/lockouts/unlock/", {"username": "alice"})
    assert unlocked.status_code == 302 and unlocked.url == "/manage/lockouts/"
    after = client.get("/manage/lockouts/").content.decode()
    assert "alice can sign in again." in after and "Nobody is locked out." in after

    assert sign_in(attacker, "alice", PASSWORD).status_code == 302


def test_lockout_page_is_not_found_for_anyone_but_admins(client, alice, bob):
    fail_until_locked(Client(), "alice")
    client.force_login(bob)
    assert client.get("/manage/lockouts/").status_code == 404
    assert client.post("/manage/lockouts/unlock/", {"username": "alice"}).status_code == 404
    assert [lock.username for lock in lockouts.locked_out()] == ["alice"]  # still locked
    client.logout()
    # Signed out: the sign-in page, which says nothing about the page.
    assert client.get("/manage/lockouts/").status_code == 302


def test_forwarded_for_is_ignored_unless_a_proxy_is_declared(client, alice):
    # Without a declared proxy, a client's X-Forwarded-For does not give it fresh addresses.
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "alice", WRONG, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")
    assert sign_in(client, "alice", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.99").status_code == (
        429
    )
    assert [(lock.username, lock.ip_address) for lock in lockouts.locked_out()] == [
        ("alice", "127.0.0.1")
    ]


def test_a_declared_proxy_counts_the_address_it_saw(client, alice, settings):
    settings.AXES_IPWARE_PROXY_COUNT = 1
    # The proxy appends the address it saw; entries left of it are the client's claims.
    behind = {"HTTP_X_FORWARDED_FOR": "10.9.9.9, 203.0.113.5"}
    fail_until_locked(client, "alice", **behind)
    spoofed = {"HTTP_X_FORWARDED_FOR": "10.1.1.1, 203.0.113.5"}
    assert sign_in(client, "alice", PASSWORD, **spoofed).status_code == 429
    other = {"HTTP_X_FORWARDED_FOR": "203.0.113.6"}
    assert sign_in(Client(), "alice", PASSWORD, **other).status_code == 302
    assert [(lock.username, lock.ip_address) for lock in lockouts.locked_out()] == [
        ("alice", "203.0.113.5")
    ]


def test_force_login_and_login_with_a_request_work(client, alice):
    # force_login never calls authenticate(); login() must hand axes a request.
    client.force_login(alice)
    assert signed_in(client)
    other = Client()
    assert other.login(request=HttpRequest(), username="alice", password=PASSWORD)
    assert signed_in(other)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_lockout_through_the_real_server(web_server, django_user_model):
    """uvicorn runs Django's async handler, where axes takes another code path."""
    django_user_model.objects.create_user("carol", password=PASSWORD)
    with httpx.Client(base_url=web_server.url, timeout=10) as http:

        def post(password: str) -> httpx.Response:
            page = http.get("/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            data = {"csrfmiddlewaretoken": token.group(1), "username": "carol"}
            return http.post("/login/", data={**data, "password": password})

        statuses = [post(WRONG).status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
        assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
        refused = post(PASSWORD)
        assert refused.status_code == 429 and message() in refused.text
        assert http.get("/", follow_redirects=False).status_code == 302
