"""Two people use the first-admin link at the same moment: exactly one becomes the admin,
the other is told the link no longer works (on PostgreSQL as on SQLite)."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from webui.accounts import services
from webui.accounts.models import SiteSettings

STRONG = "a-long-unusual-passphrase-42"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("settings_row", ["present", "missing"])
def test_simultaneous_setups_make_one_admin(settings_row):
    # The migration makes the row; a flushed test database may have lost it. Both must hold.
    if settings_row == "present":
        SiteSettings.objects.get_or_create(pk=1)
    else:
        SiteSettings.objects.filter(pk=1).delete()
    url = f"/setup/{services.make_setup_token()}/"
    barrier = threading.Barrier(2)
    results: dict[str, tuple[int, str]] = {}
    errors: list[BaseException] = []

    def attempt(username: str) -> None:
        try:
            client = Client()
            assert client.get(url).status_code == 200  # both see a working link
            barrier.wait(timeout=30)
            response = client.post(
                url, {"username": username, "password": STRONG, "password2": STRONG}
            )
            results[username] = (response.status_code, response.content.decode())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=attempt, args=(name,)) for name in ("ann", "ben")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(not thread.is_alive() for thread in threads)

    admins = list(get_user_model().objects.values_list("username", "is_superuser"))
    assert len(admins) == 1 and admins[0][1] is True, admins
    winner = admins[0][0]
    loser = "ben" if winner == "ann" else "ann"
    assert results[winner][0] == 302
    status, page = results[loser]
    assert status == 400 and "This setup link is no longer valid." in page
